//! What travels between the threads of an extraction: chunks from the demultiplexers (and decrypt and decompress
//! threads) to the writer that owns their file, and the closing phases' messages from the proof to every writer
//! (a large chunk's bytes, handed from writer to writer, travel in `wide.rs`'s queue).

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use crossbeam_channel::Sender;
use proto::{ChunkHeader, CrcPiece, FileRecord};
use runtime::pool::PooledBuffer;

use crate::batch::ChunkBatch;

/// What the streams' markers announced, shared by readers (who learn it from the first chunk) and writers.
pub(crate) struct Announced {
    /// Hash files as they arrive: `--digest sha1`, or the producer recorded SHA-1s.
    pub(crate) hash_files: AtomicBool,
    /// The streams are ours (marked): a manifest must follow, so ended small files may be forgotten and checked
    /// from disk against it (see `Writer::check`).
    pub(crate) marked: AtomicBool,
}

/// A wire path that has passed [`proto::checked_relative_path`], as the relative path it names (no copy).
pub(crate) fn checked_path(checked: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(checked))
}

/// A chunk on its way to the writer that owns its file.
pub(crate) struct ChunkMessage {
    pub(crate) stream: usize,
    pub(crate) header: ChunkHeader,
    /// The file it belongs to on disk: the wire path, or with --decompress the path without `.zst`.
    pub(crate) key: Vec<u8>,
    pub(crate) data: PooledBuffer,
    /// Set once a decrypt or decompress thread has turned the payload back into original bytes.
    pub(crate) decoded: Option<Decoded>,
    /// With `--decrypt`, for a chunk of a `.age` file: the payload nonce its file started with.
    pub(crate) nonce: Option<[u8; crypt::NONCE_LEN]>,
}

/// Where a decompressed chunk came from and where it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoded {
    /// Offset of the original bytes (now in `data`).
    pub(crate) offset: u64,
    /// CRC-32 of the original bytes.
    pub(crate) crc: u32,
    /// The payload's place in the file as it travelled (`<path>.zst`, `<path>.age`), length and CRC-32 (checked
    /// against the manifest's stored form).
    pub(crate) stored: (u64, CrcPiece),
    /// Decrypted: what the file's final check needs of its segments.
    pub(crate) sealed: Option<SealedPiece>,
}

/// A decrypted chunk's place among its file's age segments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedPiece {
    /// Where its plaintext ends in the file as encrypted (the original, or the padded `.zst`).
    pub(crate) end: u64,
    /// Its final segment is flagged as the file's last.
    pub(crate) last: bool,
    /// For the file's first chunk: the payload nonce after its header (bound to the path by the manifest).
    pub(crate) nonce: Option<[u8; crypt::NONCE_LEN]>,
}

impl ChunkMessage {
    pub(crate) fn writer(&self, writers: usize) -> usize {
        owner(&self.key, writers)
    }

    /// The chunk for a message: its file and offset, and where it was in which stream.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} at offset {} (chunk at stream {}, offset {:#x})",
            self.header.display_path(),
            self.header.file_offset,
            self.stream,
            self.header.stream_offset
        )
    }
}

/// The writer (of `writers`) that owns the file `key`: every chunk of a file goes to the same one.
pub(crate) fn owner(key: &[u8], writers: usize) -> usize {
    CrcPiece::of(key).crc as usize % writers
}

/// Manifest records on their way to the writer that owns their files, each with the key the file is held under
/// (its path, or its stored `.zst` path when a compressed file is extracted as it travelled).
pub(crate) type Records = Vec<(Vec<u8>, FileRecord)>;

/// How many records go to a writer at once.
pub(crate) const RECORDS_PER_MESSAGE: usize = 1024;

/// What a writer verified, and what the manifest lists that it does not hold.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Of `files`, those checked while the streams still flowed (their record came as the manifest arrived).
    pub(crate) during_stream: u64,
    /// Of `files`, those given their mode and mtime on a descriptor still open, not by name.
    pub(crate) on_descriptor: u64,
    /// Manifest files that never arrived: how many, and the first few paths.
    pub(crate) missing: u64,
    pub(crate) missing_examples: Vec<String>,
}

/// How many missing files an error names.
pub(crate) const MISSING_EXAMPLES: usize = 10;

/// What a writer thread is asked to do: write a chunk, or take part in one of the closing phases.
pub(crate) enum WriterMessage {
    /// One chunk (boxed: a chunk's message is large beside the others).
    Chunk(Box<ChunkMessage>),
    Batch(Arc<ChunkBatch>),
    /// Every chunk has reached the writers: finish every handed-over write, then reply (see
    /// `WideWrites::settle`).
    Settle(Sender<()>),
    /// Hand over the manifest (opened for reading) if this writer holds it.
    EndOfStreams(Sender<Option<File>>),
    /// Check these files against their records.
    Check(Records),
    /// Every record has been sent (`true`; `false`: there is no manifest): finish and report.
    Verify(bool, Sender<Result<Verified>>),
}
