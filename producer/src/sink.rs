//! Output streams: each has one writer thread that owns a [`Sink`] and writes whole chunks to it.
//!
//! [`StreamSink`] writes xbstream chunks to STDOUT or a pipe (optionally hashing every byte it writes, for the
//! `--stats-json` check). [`DirectorySink`] writes the files themselves into a target directory, for a local copy.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use proto::{ChunkWriter, WholeFile};
use runtime::pool::PooledBuffer;
use sha1::{Digest as _, Sha1};
use transport::idle::IdlePipe;

use crate::file::FileState;

/// What a writer thread is handed.
#[derive(Debug)]
pub enum StreamItem {
    /// A payload chunk of a file.
    Payload {
        /// The file.
        file: Arc<FileState>,
        /// Offset in the file.
        offset: u64,
        /// The bytes (their length is the payload length).
        data: PooledBuffer,
        /// CRC-32 of the bytes.
        crc: u32,
    },
    /// The end of a file.
    Eof {
        /// The file.
        file: Arc<FileState>,
    },
    /// Small files read whole into one buffer ([`crate::work::ReadBatch`]): for each, a payload chunk (unless it
    /// is empty) and an `E`.
    Batch {
        /// The files' bytes, back to back.
        data: PooledBuffer,
        /// Each file and its place in `data`.
        files: Vec<BatchEntry>,
    },
    /// A piece of a document the producer writes as it makes it (the manifest, the SHA-1 list): one payload
    /// chunk at `offset`, in a pool buffer.
    DocumentPiece {
        /// Wire path.
        path: Vec<u8>,
        /// Offset of these bytes in the document.
        offset: u64,
        /// The bytes.
        data: PooledBuffer,
    },
    /// The end of a document sent in pieces.
    DocumentEnd {
        /// Wire path.
        path: Vec<u8>,
    },
    /// A whole small file the producer made itself (a stream's start marker), written as payload chunks of at most
    /// `chunk_size` and an `E`. (The manifest and the SHA-1 list go in pieces: [`StreamItem::DocumentPiece`].)
    Document {
        /// Wire path.
        path: Vec<u8>,
        /// Contents.
        bytes: Arc<Vec<u8>>,
        /// Largest payload per chunk.
        chunk_size: usize,
    },
}

/// One file of a [`StreamItem::Batch`].
#[derive(Debug)]
pub struct BatchEntry {
    /// The file.
    pub file: Arc<FileState>,
    /// Where its bytes are in the batch buffer.
    pub range: std::ops::Range<usize>,
    /// CRC-32 of those bytes.
    pub crc: u32,
}

/// What a finished sink reports.
#[derive(Debug, Clone, Default)]
pub struct SinkReport {
    /// Bytes written (encoded stream bytes, or file bytes for a directory).
    pub bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// SHA-1 of every byte written, when hashing was on.
    pub sha1: Option<String>,
}

/// An output stream.
pub trait Sink: Send {
    /// A name for messages: `STDOUT`, the pipe's path, the directory.
    fn name(&self) -> String;
    /// Writes one item whole (possibly into a buffer: see [`Sink::flush`]).
    fn write(&mut self, item: StreamItem) -> Result<()>;
    /// Pushes buffered bytes out; the writer thread calls it whenever its queue runs dry, so a consumer never
    /// waits on bytes sitting in a buffer.
    fn flush(&mut self) -> Result<()>;
    /// Flushes and closes; reports what was written.
    fn finish(self: Box<Self>) -> Result<SinkReport>;
    /// After a failure: makes the output unmistakably incomplete (best effort; errors are ignored).
    fn poison(&mut self);
}

/// How long a failed stream's writer tries to deliver what it had buffered and the broken chunk.
const POISON_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Small chunks (`E` chunks, small payloads) are gathered into one write of up to this many bytes; writes of
/// [`DIRECT_BYTES`] or more go straight to the descriptor. With 100,000 small files this cuts the system calls on
/// both sides.
pub const COALESCE_BYTES: usize = 256 << 10;

/// xbstream chunks to a file descriptor (STDOUT or a pipe). A sink dropped before [`Sink::finish`] succeeded — a
/// failure, a panic — ends its stream with the broken chunk ([`proto::POISON_PATH`]).
pub struct StreamSink {
    name: String,
    writer: ChunkWriter<Coalescing<HashingWriter<IdlePipe>>>,
    chunks: u64,
    /// `finish` succeeded, or the poison chunk was written: nothing more goes out.
    closed: bool,
}

impl StreamSink {
    /// A sink over `file`, hashing what it writes when `hash` is set.
    pub fn new(name: String, file: IdlePipe, hash: bool) -> StreamSink {
        let hashing = HashingWriter { inner: file, sha1: hash.then(Sha1::new) };
        StreamSink {
            name,
            writer: ChunkWriter::new(Coalescing::new(COALESCE_BYTES, hashing)),
            chunks: 0,
            closed: false,
        }
    }

    /// Bytes that actually reached the descriptor.
    fn delivered(&self) -> u64 {
        self.writer.position() - self.writer.get_ref().buffer().len() as u64
    }
}

impl Sink for StreamSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn write(&mut self, item: StreamItem) -> Result<()> {
        match item {
            StreamItem::Payload { file, offset, data, crc } => {
                self.writer.write_payload_with_checksum(file.wire(), offset, &data, crc)?;
                self.chunks += 1;
            }
            StreamItem::Eof { file } => {
                self.writer.write_eof(file.wire())?;
                self.chunks += 1;
            }
            StreamItem::Batch { data, files } => {
                let whole: Vec<WholeFile> = files
                    .iter()
                    .map(|entry| WholeFile {
                        path: entry.file.wire(),
                        payload: &data[entry.range.clone()],
                        checksum: entry.crc,
                    })
                    .collect();
                self.chunks += self.writer.write_whole_files(&whole)?;
            }
            StreamItem::DocumentPiece { path, offset, data } => {
                self.writer.write_payload(&path, offset, &data)?;
                self.chunks += 1;
            }
            StreamItem::DocumentEnd { path } => {
                self.writer.write_eof(&path)?;
                self.chunks += 1;
            }
            StreamItem::Document { path, bytes, chunk_size } => {
                for (i, piece) in bytes.chunks(chunk_size.max(1)).enumerate() {
                    self.writer.write_payload(&path, (i * chunk_size) as u64, piece)?;
                    self.chunks += 1;
                }
                self.writer.write_eof(&path)?;
                self.chunks += 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let delivered = self.delivered();
        self.writer.flush().with_context(|| format!("write failed at stream offset {delivered}"))
    }

    fn poison(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        // Best effort and bounded: the run may be stopping because this very peer stalled.
        let pipe = &mut self.writer.get_mut().get_mut().inner;
        pipe.set_cancel(None);
        pipe.set_timeout(Some(POISON_DEADLINE));
        let _ = self.writer.flush();
        let mut header = Vec::new();
        proto::encode_poison(&mut header);
        let inner = self.writer.get_mut();
        let _ = inner.write_all(&header);
        let _ = inner.flush();
    }

    fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        self.flush()?;
        let bytes = self.writer.position();
        let pipe = &self.writer.get_mut().get_mut().inner;
        if pipe.is_file() {
            // STDOUT redirected to a file (`producer ... > backup.xbs`): it is complete only once it is durable.
            pipe.get_ref().sync_all().with_context(|| format!("cannot sync {}", self.name))?;
        }
        self.closed = true;
        let sha1 = self.writer.get_mut().get_mut().sha1.take().map(|h| hex::encode(h.finalize()));
        Ok(SinkReport { bytes, chunks: self.chunks, sha1 })
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        self.poison();
    }
}

/// Writes of at least this many bytes (a large chunk, a batch of small files) go straight to the descriptor, after
/// whatever was buffered before them.
pub const DIRECT_BYTES: usize = 64 << 10;

/// A write buffer for small chunks that passes a write of [`DIRECT_BYTES`] or more straight on, vectored writes
/// included: a batch of small files goes out as one `writev` from the buffer it was read into. (`std::io::BufWriter`
/// passes a vectored write on only when its inner writer says it supports them, which only std's own types can
/// say on stable Rust: it copied every small file into itself, 4 % of the producer's CPU with small files.)
struct Coalescing<W: Write> {
    inner: W,
    buffer: Vec<u8>,
    capacity: usize,
}

impl<W: Write> Coalescing<W> {
    fn new(capacity: usize, inner: W) -> Coalescing<W> {
        Coalescing { inner, buffer: Vec::with_capacity(capacity), capacity: capacity.max(DIRECT_BYTES) }
    }

    /// The bytes written to it and not yet passed on.
    fn buffer(&self) -> &[u8] {
        &self.buffer
    }

    fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Passes the buffered bytes on; on failure keeps those not taken.
    fn flush_buffer(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.buffer.len() {
                break Ok(());
            }
            match self.inner.write(&self.buffer[written..]) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "the stream accepted no bytes")),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buffer.drain(..written);
        result
    }
}

impl<W: Write> Write for Coalescing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, data: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = data.iter().map(|slice| slice.len()).sum();
        // Whatever is buffered goes first: before a direct write, or when this would overfill the buffer.
        if total >= DIRECT_BYTES || self.buffer.len() + total > self.capacity {
            self.flush_buffer()?;
        }
        if total >= DIRECT_BYTES {
            return self.inner.write_vectored(data);
        }
        for slice in data {
            self.buffer.extend_from_slice(slice);
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer()?;
        self.inner.flush()
    }
}

/// A `Write` that feeds every byte it has written into a SHA-1.
pub struct HashingWriter<W> {
    inner: W,
    sha1: Option<Sha1>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(sha1) = &mut self.sha1 {
            sha1.update(&buf[..n]);
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        if let Some(sha1) = &mut self.sha1 {
            let mut left = n;
            for buf in bufs {
                let take = left.min(buf.len());
                sha1.update(&buf[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The name the manifest of a local copy is written under until it is complete and everything is durable.
pub const PARTIAL_MANIFEST: &str = ".backup-manifest.json.partial";

/// Files written into a directory at their offsets: a local copy with no stream. Files are created with
/// `O_EXCL` (never overwriting), get their source mode at `E`, and are closed there. The manifest, made as the
/// backup goes, is written as [`PARTIAL_MANIFEST`]; at its end the file system is synced and it takes its name, so
/// a copy with a manifest is a durable copy, and a failed run leaves none.
pub struct DirectorySink {
    root: PathBuf,
    open: HashMap<Vec<u8>, File>,
    bytes: u64,
    chunks: u64,
    fadvise: bool,
}

impl DirectorySink {
    /// A sink into `root`, which must be absent or empty.
    pub fn create(root: &Path, fadvise: bool) -> Result<DirectorySink> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create --target-dir {}", root.display()))?;
        let mut entries = std::fs::read_dir(root).with_context(|| format!("cannot read {}", root.display()))?;
        if entries.next().is_some() {
            anyhow::bail!("--target-dir {} is not empty", root.display());
        }
        Ok(DirectorySink { root: root.to_path_buf(), open: HashMap::new(), bytes: 0, chunks: 0, fadvise })
    }

    fn file(&mut self, wire: &[u8]) -> Result<&File> {
        if !self.open.contains_key(wire) {
            let relative = proto::safe_relative_path(wire)?;
            let path = match wire == proto::MANIFEST_NAME.as_bytes() {
                true => self.root.join(PARTIAL_MANIFEST),
                false => self.root.join(relative),
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            self.open.insert(wire.to_vec(), file);
        }
        Ok(&self.open[wire])
    }

    /// Makes every file written so far durable (`syncfs`).
    fn sync_all_files(&self) -> Result<()> {
        let root = File::open(&self.root).with_context(|| format!("cannot open {}", self.root.display()))?;
        nix::unistd::syncfs(&root).with_context(|| format!("cannot sync {}", self.root.display()))
    }

    fn close(&mut self, wire: &[u8], mode: Option<u32>) -> Result<()> {
        self.file(wire)?;
        let file = self.open.remove(wire).expect("just opened");
        if let Some(mode) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", String::from_utf8_lossy(wire)))?;
        }
        Ok(())
    }
}

impl Sink for DirectorySink {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn write(&mut self, item: StreamItem) -> Result<()> {
        match item {
            StreamItem::Payload { file, offset, data, .. } => {
                let fadvise = self.fadvise;
                let target = self.file(file.wire())?;
                target.write_all_at(&data, offset).with_context(|| {
                    format!("cannot write {} at offset {offset}", String::from_utf8_lossy(file.wire()))
                })?;
                if fadvise {
                    let _ = nix::fcntl::posix_fadvise(
                        target,
                        offset as i64,
                        data.len() as i64,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                }
                self.bytes += data.len() as u64;
                self.chunks += 1;
            }
            StreamItem::Eof { file } => {
                self.close(file.wire(), Some(file.scanned.mode))?;
                self.chunks += 1;
            }
            StreamItem::Batch { data, files } => {
                for entry in files {
                    let wire = entry.file.wire();
                    let target = self.file(wire)?;
                    target
                        .write_all_at(&data[entry.range.clone()], 0)
                        .with_context(|| format!("cannot write {}", String::from_utf8_lossy(wire)))?;
                    self.close(wire, Some(entry.file.scanned.mode))?;
                    self.bytes += entry.range.len() as u64;
                    self.chunks += 1 + u64::from(!entry.range.is_empty());
                }
            }
            StreamItem::DocumentPiece { path, offset, data } => {
                let file = self.file(&path)?;
                file.write_all_at(&data, offset)
                    .with_context(|| format!("cannot write {}", String::from_utf8_lossy(&path)))?;
                self.bytes += data.len() as u64;
                self.chunks += 1;
            }
            StreamItem::DocumentEnd { path } if path == proto::MANIFEST_NAME.as_bytes() => {
                // The manifest says the copy is complete: everything is made durable (the manifest too, under its
                // partial name), then it takes its name.
                self.close(&path, Some(0o644))?;
                self.sync_all_files()?;
                let (partial, manifest) = (self.root.join(PARTIAL_MANIFEST), self.root.join(proto::MANIFEST_NAME));
                std::fs::rename(&partial, &manifest)
                    .with_context(|| format!("cannot rename {} to {}", partial.display(), manifest.display()))?;
                File::open(&self.root)
                    .and_then(|root| root.sync_all())
                    .with_context(|| format!("cannot sync {}", self.root.display()))?;
                self.chunks += 1;
            }
            StreamItem::DocumentEnd { path } => {
                let file = self.file(&path)?;
                file.sync_all().with_context(|| format!("cannot sync {}", String::from_utf8_lossy(&path)))?;
                self.close(&path, Some(0o644))?;
                self.chunks += 1;
            }
            StreamItem::Document { path, bytes, .. } => {
                let file = self.file(&path)?;
                file.write_all_at(&bytes, 0)?;
                file.sync_all().with_context(|| format!("cannot sync {}", String::from_utf8_lossy(&path)))?;
                self.close(&path, Some(0o644))?;
                self.bytes += bytes.len() as u64;
                self.chunks += 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn poison(&mut self) {
        // A copy without a manifest is visibly incomplete; the manifest is only written after every file.
    }

    fn finish(self: Box<Self>) -> Result<SinkReport> {
        Ok(SinkReport { bytes: self.bytes, chunks: self.chunks, sha1: None })
    }
}
