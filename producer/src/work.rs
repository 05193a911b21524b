//! What moves between the producer's stages: the jobs the scanner hands the read threads, what a read thread hands
//! the process threads (a chunk, or a batch of small files read whole), and the [`BatchOutlet`] batches go to
//! (released chunks go to a [`crate::file::Outlet`]).

use std::sync::Arc;

use anyhow::Result;
use runtime::pool::PooledBuffer;

use crate::file::{ChunkJob, FileState, ReadChunk};

/// Where batches of small files go once their CRCs are taken (the router: they are never compressed or
/// encrypted): each file is concluded ([`FileState::conclude_batched`]) and the batch goes out as one item.
pub trait BatchOutlet: Sync {
    /// Small files read whole into one buffer, their CRCs taken.
    fn batch(&self, batch: ReadBatch) -> Result<()>;
}

/// Largest file that travels in a batch ([`Job::Batch`]): one read thread reads many such files into one buffer, and
/// the batch crosses every stage as one hand-off. Larger files are cut into chunks read in parallel.
pub const BATCH_FILE_MAX: u64 = 64 << 10;

/// Most files in one batch, so a batch of empty files still goes out promptly.
pub const BATCH_FILES_MAX: usize = 512;

/// Most bytes in one batch (or the buffer size, if smaller). A batch's bytes are what its buffer's pages are
/// touched for: batches as large as the 2 MiB buffers touched every page of every buffer in flight (44 MB of
/// page faults, 8 % of the producer's CPU with 100,000 small files); at 256 KiB the producer peaks at 14 MB and
/// spends 5 % less CPU, its batches still 50 files or more.
pub const BATCH_BYTES_MAX: usize = 256 << 10;

/// Work for a read thread.
#[derive(Debug)]
pub enum Job {
    /// One chunk of a file.
    Chunk(ChunkJob),
    /// Small files (single-job, uncompressed, unencrypted, not page-validated), each read whole, one after
    /// another, into one pool buffer: the sum of their sizes plus one probe byte each fits in the buffer.
    Batch(Vec<Arc<FileState>>),
}

/// What a read thread hands the process threads.
#[derive(Debug)]
pub enum Read {
    /// One chunk.
    Chunk(ReadChunk),
    /// A batch of small files.
    Batch(ReadBatch),
}

/// Small files read into one pool buffer, one after another.
#[derive(Debug)]
pub struct ReadBatch {
    /// The files' bytes, back to back.
    pub data: PooledBuffer,
    /// Each file's place in `data`, in the order read.
    pub files: Vec<BatchedFile>,
}

/// One file of a [`ReadBatch`].
#[derive(Debug)]
pub struct BatchedFile {
    /// The file.
    pub file: Arc<FileState>,
    /// Where its bytes start in the batch buffer.
    pub start: usize,
    /// How many bytes were read (fewer than scanned if it shrank; at most the scanned size).
    pub len: usize,
    /// The file was gone when opened.
    pub vanished: bool,
    /// The file had more bytes than scanned (the probe byte was read).
    pub grew: bool,
    /// CRC-32 of its bytes, filled in by a process thread.
    pub crc: u32,
}

impl ReadBatch {
    /// Reads each of `files` whole into `data`, back to back (see [`Job::Batch`]).
    pub fn read(files: Vec<Arc<FileState>>, mut data: PooledBuffer) -> Result<ReadBatch> {
        data.set_len(0);
        let mut read = Vec::with_capacity(files.len());
        for file in files {
            let start = data.len();
            let (len, vanished, grew) = file.read_whole(&mut data)?;
            read.push(BatchedFile { file, start, len, vanished, grew, crc: 0 });
        }
        Ok(ReadBatch { data, files: read })
    }

    /// The bytes of `file` (one of [`ReadBatch::files`]).
    pub fn bytes(&self, file: &BatchedFile) -> &[u8] {
        &self.data[file.start..file.start + file.len]
    }
}
