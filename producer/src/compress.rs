//! The compression stage (`--compress`): every chunk becomes one zstd frame, compressed in parallel, and a second
//! in-order step gives each frame its place in `<path>.zst`.
//!
//! ```text
//! FileState::arrive (in order: CRC, SHA-1 of the original) ─► CompressStage ─► compress threads ─► arrive_stored
//!                                                               (bounded)      (any order)          (in order: .zst
//!                                                                                                    offsets) ─► Router
//! ```
//!
//! Original-content checksums are taken before compression, in the first in-order step. A frame's size is known
//! only after compression, so offsets in the `.zst` are assigned by a second per-file sequencer, [`crate::file::StoredSequence`].
//! Each compress thread owns one pool buffer as scratch: it compresses into the scratch and swaps it with the
//! chunk's buffer, so compression never waits on the pool (no deadlock) and memory stays within the budget.
//! Each payload starts with a skippable frame carrying its original offset ([`proto::OriginalRange`]).

use runtime::lock::Locked;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use proto::CrcPiece;
use proto::{encode_offset_frame, OriginalRange, OFFSET_FRAME_LEN};
use proto::{FileRecord, StoredForm, WirePath};
use runtime::cancel::{recv, send, Cancel, Cancelled};
use runtime::pool::PooledBuffer;

use crate::file::{FileState, Outlet, Stored};

/// Pool buffer size that holds a compressed chunk of `chunk_size` bytes in the worst case.
pub fn buffer_size(chunk_size: usize) -> usize {
    OFFSET_FRAME_LEN + zstd::zstd_safe::compress_bound(chunk_size)
}

/// Work for a compress thread.
#[derive(Debug)]
pub enum CompressJob {
    /// A chunk of original bytes.
    Chunk {
        /// The file.
        file: Arc<FileState>,
        /// Its release index within the file.
        index: u64,
        /// Offset in the original file.
        offset: u64,
        /// The original bytes.
        data: PooledBuffer,
    },
    /// The end of a file, after `index` chunks.
    End {
        /// The file.
        file: Arc<FileState>,
        /// Number of chunks before it (its own index).
        index: u64,
        /// The original content's record.
        record: FileRecord,
    },
}

/// The first in-order step's outlet when compressing: compressed files go to the compress threads; anything not
/// compressed goes straight on.
pub struct CompressStage<'a> {
    sender: Mutex<Option<Sender<CompressJob>>>,
    next: &'a dyn Outlet,
    cancel: Cancel,
}

impl<'a> CompressStage<'a> {
    /// A stage feeding `sender`, passing uncompressed files to `next`.
    pub fn new(sender: Sender<CompressJob>, next: &'a dyn Outlet, cancel: Cancel) -> CompressStage<'a> {
        CompressStage { sender: Mutex::new(Some(sender)), next, cancel }
    }

    /// Closes the queue, so the compress threads finish once it is drained.
    pub fn close(&self) {
        self.sender.locked().take();
    }

    fn send(&self, job: CompressJob) -> Result<()> {
        let sender = self.sender.locked().clone().ok_or(Cancelled)?;
        send(&sender, job, &self.cancel)?;
        Ok(())
    }
}

impl Outlet for CompressStage<'_> {
    fn payload(&self, file: &Arc<FileState>, index: u64, offset: u64, data: PooledBuffer, crc: u32) -> Result<()> {
        if !file.compressed {
            return self.next.payload(file, index, offset, data, crc);
        }
        self.send(CompressJob::Chunk { file: Arc::clone(file), index, offset, data })
    }

    fn end(&self, file: &Arc<FileState>, chunks: u64, record: FileRecord) -> Result<()> {
        if !file.compressed {
            return self.next.end(file, chunks, record);
        }
        self.send(CompressJob::End { file: Arc::clone(file), index: chunks, record })
    }

    fn vanished(&self, file: &Arc<FileState>) -> Result<()> {
        self.next.vanished(file)
    }
}

/// One compress thread: a reused zstd context (content checksum on) and one scratch buffer from the pool, taken
/// before any read thread starts (had the read threads taken every buffer first, compression could never begin).
pub fn compress_worker(
    jobs: &Receiver<CompressJob>,
    mut scratch: PooledBuffer,
    level: i32,
    next: &dyn Outlet,
    cancel: &Cancel,
) -> Result<()> {
    let mut compressor = zstd::bulk::Compressor::new(level).context("cannot create a zstd context")?;
    compressor.include_checksum(true).context("cannot enable zstd checksums")?;
    while let Some(job) = recv(jobs, cancel)? {
        match job {
            CompressJob::Chunk { file, index, offset, mut data } => {
                scratch.set_len(scratch.capacity());
                encode_offset_frame(&mut scratch[..OFFSET_FRAME_LEN], OriginalRange { offset, len: data.len() as u32 });
                let written = compressor
                    .compress_to_buffer(&data[..], &mut scratch[OFFSET_FRAME_LEN..])
                    .with_context(|| format!("cannot compress {} at offset {offset}", file.source().display()))?;
                scratch.set_len(OFFSET_FRAME_LEN + written);
                std::mem::swap(&mut data, &mut scratch);
                let crc = CrcPiece::of(&data).crc;
                arrive_stored(&file, index, Stored::Chunk { data, crc }, next)?;
            }
            CompressJob::End { file, index, record } => {
                arrive_stored(&file, index, Stored::End { chunks: index, record }, next)?;
            }
        }
    }
    Ok(())
}

fn arrive_stored(file: &Arc<FileState>, index: u64, item: Stored, next: &dyn Outlet) -> Result<()> {
    let mut sequence = file.stored.locked();
    sequence.order.insert(index, item);
    loop {
        let position = sequence.order.next();
        let Some(item) = sequence.order.pop_ready() else { return Ok(()) };
        match item {
            Stored::Chunk { data, crc } => {
                let len = data.len() as u64;
                let offset = sequence.offset;
                sequence.offset += len;
                sequence.crc = sequence.crc.append(CrcPiece { crc, len });
                next.payload(file, position, offset, data, crc)?;
            }
            Stored::End { chunks, mut record } => {
                record.stored = Some(StoredForm {
                    path: WirePath(file.wire.clone()),
                    size: sequence.offset,
                    crc32: sequence.crc.crc,
                    nonce: None,
                });
                next.end(file, chunks, record)?;
            }
        }
    }
}
