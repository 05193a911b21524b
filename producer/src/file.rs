//! One file in flight: its scanned facts, the shared source handle its read threads use, and the sequencer that
//! releases its chunks strictly in offset order.
//!
//! Chunks of one file are read by any thread and finish in any order. [`FileState::arrive`] parks a chunk until
//! every chunk before it has been released, then releases it: it folds the chunk's CRC into the file's CRC, feeds
//! the SHA-1 (`--digest sha1`), and hands the chunk to the [`Outlet`]. After the last chunk the file's `E` chunk
//! follows and its manifest record is returned. Deadlock-free because read threads take a buffer *before* taking a job:
//! the lowest unreleased chunk always already holds its buffer.
//!
//! A file that shrinks while it is copied yields short reads: everything from the first short read on is dropped,
//! so what is streamed is always a contiguous prefix, and the record says exactly what was copied. A file that grows
//! is copied up to its scanned size. Both are warnings, or errors with `--strict`. A file that vanishes before it is
//! first opened is left out of the backup with a warning.
//!
//! A file written while it is read (in place: same size) would be copied torn — some chunks old, some new — so
//! every file's `fstat` after its last read is compared with the one before its first ([`Stamp`]: size,
//! modification and change time; every write sets the change time, and nobody can set it back). When they differ,
//! the copy is checked against the file as it is now: its bytes are read again and their CRC-32 compared with what
//! was streamed. A copy that matches over a read during which the file did not change, or over two reads (a file
//! still appended to), is a version the file really had (an append or a truncation leaves the copied part as it
//! was); one that does not fails the run, naming the file, whatever `--strict` says. A small file read whole in a
//! batch is simply read again, a clock tick later, until a read runs without a change ([`CHANGE_CHECKS`] reads at
//! most).
//!
//! Small files (up to [`crate::work::BATCH_FILE_MAX`], uncompressed, unencrypted, not page-validated) skip the
//! sequencer: the scanner groups them into a [`crate::work::Job::Batch`], one read thread reads them whole into one
//! pool buffer, a process thread takes their CRCs, and the batch reaches a stream writer as one item — one hand-off
//! per stage for hundreds of files, where chunks cost one each. On the wire nothing changes: each file is still its
//! own `P` and `E` chunks, in order.

use runtime::lock::Locked;
use runtime::reorder::Reorder;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use proto::CrcPiece;
use proto::{FileRecord, WirePath};
use runtime::pool::PooledBuffer;
use sha1::{Digest as _, Sha1};

use crate::scan::{ScannedFile, Stamp};

/// Where released chunks go: straight to the stream writers, or first through the compression stage.
pub trait Outlet: Sync {
    /// A payload chunk, released in order: `index` counts this file's released chunks from 0, `offset` is its
    /// place in the original file, `crc` the CRC-32 of `data`.
    fn payload(&self, file: &Arc<FileState>, index: u64, offset: u64, data: PooledBuffer, crc: u32) -> Result<()>;
    /// The file is complete after `chunks` payload chunks; `record` describes its original content.
    fn end(&self, file: &Arc<FileState>, chunks: u64, record: FileRecord) -> Result<()>;
    /// The file vanished before it could be read: nothing of it goes out, and it is done.
    fn vanished(&self, file: &Arc<FileState>) -> Result<()>;
}

/// How a file's payload is transformed on its way out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transform {
    /// `--compress`: every chunk a zstd frame, the file `<path>.zst`.
    pub compress: bool,
    /// Encryption: the file `<path>.age` (after compression).
    pub encrypt: bool,
}

/// Whether `scanned` is checked page by page under `--validate-pages` (a file named like an InnoDB tablespace).
pub fn validates_pages(scanned: &ScannedFile, validate: bool) -> bool {
    validate && scanned.source().file_name().is_some_and(|name| innodb::is_tablespace_name(&name.to_string_lossy()))
}

/// A file being backed up.
#[derive(Debug)]
pub struct FileState {
    /// The scanner's number for this file (0, 1, 2, …), so the run can name a file that never finished.
    pub number: u64,
    /// The scanned facts.
    pub scanned: ScannedFile,
    /// Number of chunk jobs (at least 1: an empty file has one empty job, so its `E` is emitted in order).
    pub jobs: u64,
    /// The stream this file is bound to (`--fifo-binding=file`, or a single stream).
    pub stream: Option<usize>,
    /// The path on the wire: the relative path, plus `.zst` when the file is compressed, plus `.age` when it is
    /// encrypted.
    pub wire: Vec<u8>,
    /// Whether the file's chunks are compressed.
    pub compressed: bool,
    /// Whether the file's chunks are encrypted ([`crate::encrypt`]).
    pub encrypted: bool,
    /// The compression stage's in-order state (unused without compression).
    pub(crate) stored: Mutex<StoredSequence>,
    /// The encryption stage's state: the payload held back, and the in-order step after sealing (unused without
    /// encryption).
    pub(crate) sealing: Mutex<crate::encrypt::SealState>,
    pub(crate) sealed: Mutex<crate::encrypt::SealedSequence>,
    /// With `--validate-pages`, for a file named like an InnoDB tablespace: its format, read once from page 0
    /// (`None` inside: it could not be told, and the file is copied unchecked), and the pages recorded corrupt.
    pages: Option<PageState>,
    handle: Mutex<Handle>,
    sequence: Mutex<Sequence>,
    strict: bool,
    sha1: bool,
}

#[derive(Debug, Default)]
struct PageState {
    tablespace: OnceLock<Option<innodb::Tablespace>>,
    corrupt: Mutex<CorruptPages>,
}

/// Pages recorded corrupt (`--log-page-corruption`): the first [`MAX_LISTED_CORRUPT_PAGES`] numbers and the
/// count, so a tablespace damaged from end to end cannot make the manifest (and memory) grow with its size.
#[derive(Debug, Default)]
struct CorruptPages {
    listed: Vec<u64>,
    total: u64,
}

/// How many corrupt page numbers a file's manifest record lists; beyond that only the count grows.
pub const MAX_LISTED_CORRUPT_PAGES: usize = 1024;

#[derive(Debug)]
enum Handle {
    NotOpened,
    /// Being read: `before` is what `fstat` said when it was opened (`None`: it could not say).
    Open {
        file: Arc<File>,
        reads_left: u64,
        before: Option<Stamp>,
    },
    Vanished,
    /// Every read is done. `changed`: `fstat` says the file changed between its first read and its last, and the
    /// handle is kept to check the copy against the file ([`FileState::check_unchanged`]).
    Closed {
        changed: Option<Arc<File>>,
    },
}

/// How many times a small file that changed while it was read is read again before the run fails: a file still
/// being written after that is not one a backup can copy.
pub const CHANGE_CHECKS: u32 = 10;

/// The pause between two such reads.
const CHANGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// More than one tick of the kernel's coarse clock (at most 10 ms): a file read again after this pause, and held
/// against a stamp taken before it, cannot be written during the read with the stamp's change time.
const TICK_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug)]
struct Sequence {
    /// Chunks back from the process threads, released in chunk order.
    order: Reorder<ReadChunk>,
    copied: u64,
    chunks: u64,
    crc: CrcPiece,
    sha1: Option<Sha1>,
    vanished: bool,
    shrank: bool,
    /// From the last chunk's probe: `Some(true)` grew, `Some(false)` did not, `None` not probed.
    grew: Option<bool>,
}

/// The second in-order step of one file (`--compress`, see [`crate::compress`]): where each compressed frame goes
/// in `<path>.zst`.
#[derive(Debug, Default)]
pub struct StoredSequence {
    /// Frames back from the compress threads, placed in chunk order.
    pub(crate) order: Reorder<Stored>,
    /// Where the next frame goes in `<path>.zst`.
    pub(crate) offset: u64,
    /// CRC-32 of the frames placed so far.
    pub(crate) crc: CrcPiece,
}

/// A compressed chunk, or the file's end, waiting for its turn.
#[derive(Debug)]
pub(crate) enum Stored {
    Chunk { data: PooledBuffer, crc: u32 },
    End { chunks: u64, record: FileRecord },
}

/// A chunk as read: its buffer holds exactly the bytes read (fewer than planned if the file shrank).
#[derive(Debug)]
pub struct ReadChunk {
    /// The file.
    pub file: Arc<FileState>,
    /// Chunk number within the file.
    pub index: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes planned (from the scanned size).
    pub planned: u64,
    /// The bytes read.
    pub data: PooledBuffer,
    /// CRC-32 of `data`, filled in by a process thread.
    pub crc: u32,
    /// The file was gone when first opened.
    pub vanished: bool,
    /// For the last chunk, when it could be probed: whether the file had more bytes than scanned.
    pub grew: Option<bool>,
}

/// One chunk of work for a read thread.
#[derive(Debug, Clone)]
pub struct ChunkJob {
    /// The file.
    pub file: Arc<FileState>,
    /// Chunk number.
    pub index: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes to read.
    pub len: u64,
}

impl FileState {
    /// State for a scanned file cut into `chunk_size` pieces.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        number: u64,
        scanned: ScannedFile,
        chunk_size: u64,
        stream: Option<usize>,
        strict: bool,
        sha1: bool,
        transform: Transform,
        validate_pages: bool,
    ) -> Arc<FileState> {
        let jobs = scanned.size.div_ceil(chunk_size).max(1);
        // Every file is compressed, empty ones included (as one frame of empty content: an empty `.zst` is not a
        // zstd file), so no compressed name can collide with an uncompressed one.
        let compressed = transform.compress;
        let mut wire = scanned.wire.clone();
        if compressed {
            wire.extend_from_slice(proto::ZSTD_SUFFIX.as_bytes());
        }
        if transform.encrypt {
            wire.extend_from_slice(proto::AGE_SUFFIX.as_bytes());
        }
        let pages = validates_pages(&scanned, validate_pages).then(PageState::default);
        Arc::new(FileState {
            number,
            pages,
            scanned,
            jobs,
            stream,
            wire,
            compressed,
            encrypted: transform.encrypt,
            stored: Mutex::default(),
            sealing: Mutex::default(),
            sealed: Mutex::default(),
            handle: Mutex::new(Handle::NotOpened),
            sequence: Mutex::new(Sequence {
                order: Reorder::new(),
                copied: 0,
                chunks: 0,
                crc: CrcPiece::default(),
                sha1: sha1.then(Sha1::new),
                vanished: false,
                shrank: false,
                grew: None,
            }),
            strict,
            sha1,
        })
    }

    /// The chunk jobs of this file, in order.
    pub fn chunk_jobs(self: &Arc<Self>, chunk_size: u64) -> impl Iterator<Item = ChunkJob> + '_ {
        (0..self.jobs).map(move |index| {
            let offset = index * chunk_size;
            ChunkJob { file: Arc::clone(self), index, offset, len: chunk_size.min(self.scanned.size - offset) }
        })
    }

    /// The wire path.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Reads one chunk into `data` (a pool buffer). Opens the file on first use (never following a symlink that
    /// replaced it) and closes it after its last chunk is read.
    pub fn read(self: &Arc<Self>, job: &ChunkJob, mut data: PooledBuffer, fadvise: bool) -> Result<ReadChunk> {
        let handle = self.open(fadvise)?;
        let mut vanished = true;
        let mut grew = false;
        let len = job.len as usize;
        // The last chunk asks for one byte more than planned, when the buffer has room: getting it means the
        // file grew, with no extra system call.
        let last = job.index + 1 == self.jobs;
        let probe = usize::from(last && len < data.capacity());
        data.set_len(len + probe);
        if let Some(file) = &handle {
            vanished = false;
            let mut filled = 0;
            while filled < len + probe {
                match file.read_at(&mut data[filled..], job.offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        bail!(
                            "cannot read {} at offset {}: {e}",
                            self.scanned.source().display(),
                            job.offset + filled as u64
                        )
                    }
                }
            }
            if filled > len {
                grew = true;
                filled = len;
            }
            data.set_len(filled);
            if fadvise && filled > 0 {
                let _ = posix_fadvise(file, job.offset as i64, filled as i64, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            }
        } else {
            data.set_len(0);
        }
        self.chunk_read_done();
        Ok(ReadChunk {
            file: Arc::clone(self),
            index: job.index,
            offset: job.offset,
            planned: job.len,
            data,
            crc: 0,
            vanished,
            grew: (last && probe == 1).then_some(grew),
        })
    }

    /// Reads the whole file (at most its scanned size, plus one probe byte) onto the end of `data`, for a batch:
    /// opened without following a symlink and closed at once. Returns (bytes kept, vanished, grew). The caller
    /// leaves room for `size + 1` bytes.
    pub(crate) fn read_whole(&self, data: &mut PooledBuffer) -> Result<(usize, bool, bool)> {
        let start = data.len();
        let size = self.scanned.size as usize;
        let opened = self.scanned.open();
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, true, false)),
            Err(e) => bail!("cannot open {}: {e}", self.scanned.source().display()),
        };
        // Read until a read runs without the file changing under it: the first read against what the scan saw (no
        // change since the scan, none during the read: one `fstat`), each next one against the stamp taken after
        // the one before.
        let mut before = self.scanned.stamp;
        for attempt in 1..=CHANGE_CHECKS {
            data.set_len(start + size + 1);
            let mut filled = 0;
            while filled < size + 1 {
                let asked = size + 1 - filled;
                match file.read_at(&mut data[start + filled..], filled as u64) {
                    Ok(0) => break,
                    // A short read that brings every byte the scan saw is the end of the file: no read of 0 bytes
                    // to prove it (a system call per file). Had the file grown, the `fstat` below would say so.
                    Ok(n) if n < asked && filled + n == size => {
                        filled += n;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => bail!("cannot read {} at offset {filled}: {e}", self.scanned.source().display()),
                }
            }
            let grew = filled > size;
            let kept = filled.min(size);
            data.set_len(start + kept);
            let after = Stamp::of(&file).ok();
            if before.is_some() && after == before {
                return Ok((kept, false, grew));
            }
            log::debug!(
                "{} changed since it was scanned or while it was read: reading it again",
                self.scanned.source().display()
            );
            // The next read starts more than a clock tick after the stamp it is held against, so that a write
            // during it cannot carry the same (coarse) change time; a file still being written gets longer pauses.
            std::thread::sleep(if attempt == 1 { TICK_PAUSE } else { CHANGE_PAUSE });
            before = after;
        }
        bail!(
            "{} kept changing while it was read ({CHANGE_CHECKS} reads); back up a stopped or snapshotted source",
            self.scanned.source().display()
        )
    }

    /// The file's tablespace format when its pages are to be validated: read from page 0 (from `chunk` itself
    /// when it is chunk 0) the first time a chunk asks. A file whose format cannot be told is copied unchecked,
    /// with one warning.
    pub fn tablespace(&self, chunk: &ReadChunk) -> Option<innodb::Tablespace> {
        let pages = self.pages.as_ref()?;
        *pages.tablespace.get_or_init(|| {
            let source = self.scanned.source();
            let path = source.display();
            let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let header = if chunk.offset == 0 && chunk.data.len() >= innodb::tablespace::HEADER_LEN {
                chunk.data[..innodb::tablespace::HEADER_LEN].to_vec()
            } else {
                let mut header = vec![0u8; innodb::tablespace::HEADER_LEN];
                match self.reread(0, &mut header) {
                    Ok(n) => header.truncate(n),
                    Err(e) => {
                        log::warn!("{path}: pages not validated: {e:#}");
                        return None;
                    }
                }
                header
            };
            match innodb::Tablespace::from_first_page(&header, &name) {
                // Pages are checked whole within a chunk: the chunk size is a multiple of every page size
                // (checked with the options), so no page straddles two chunks.
                Ok(space) => Some(space),
                Err(why) => {
                    log::warn!("{path}: pages not validated: not an InnoDB tablespace this copy can read ({why})");
                    None
                }
            }
        })
    }

    /// Reads `buf.len()` bytes at `offset` again, for a page re-check: through the open handle while read threads
    /// still use it, else opening the file anew (never following a symlink). Returns the bytes read.
    pub fn reread(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let open = match &*self.handle.locked() {
            Handle::Open { file, .. } => Some(Arc::clone(file)),
            _ => None,
        };
        let file = match open {
            Some(file) => file,
            None => Arc::new(
                self.scanned
                    .open()
                    .map_err(|e| anyhow::anyhow!("cannot open {} again: {e}", self.scanned.source().display()))?,
            ),
        };
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    bail!("cannot read {} at offset {}: {e}", self.scanned.source().display(), offset + filled as u64)
                }
            }
        }
        Ok(filled)
    }

    /// Records pages found corrupt (`--log-page-corruption`), for the file's manifest record.
    pub fn record_corrupt_pages(&self, pages: &[u64]) {
        if let Some(state) = &self.pages {
            let mut corrupt = state.corrupt.locked();
            corrupt.total += pages.len() as u64;
            let room = MAX_LISTED_CORRUPT_PAGES.saturating_sub(corrupt.listed.len());
            corrupt.listed.extend(pages.iter().take(room));
        }
    }

    /// The pages recorded corrupt, sorted (at most [`MAX_LISTED_CORRUPT_PAGES`]), and how many there were.
    fn corrupt_pages(&self) -> (Vec<u64>, u64) {
        let Some(pages) = &self.pages else { return (Vec::new(), 0) };
        let corrupt = pages.corrupt.locked();
        let mut listed = corrupt.listed.clone();
        listed.sort_unstable();
        (listed, corrupt.total)
    }

    fn open(&self, fadvise: bool) -> Result<Option<Arc<File>>> {
        let mut handle = self.handle.locked();
        match &*handle {
            Handle::Open { file, .. } => return Ok(Some(Arc::clone(file))),
            Handle::Vanished | Handle::Closed { .. } => return Ok(None),
            Handle::NotOpened => {}
        }
        let opened = self.scanned.open();
        match opened {
            Ok(file) => {
                if fadvise && self.jobs > 1 {
                    let _ = posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
                }
                let before = Stamp::of(&file).ok();
                let file = Arc::new(file);
                *handle = Handle::Open { file: Arc::clone(&file), reads_left: self.jobs, before };
                Ok(Some(file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *handle = Handle::Vanished;
                Ok(None)
            }
            Err(e) => bail!("cannot open {}: {e}", self.scanned.source().display()),
        }
    }

    /// One read of this file is done; after the last, the file is closed — unless `fstat` says it changed since it
    /// was opened, in which case the handle is kept for the check of the copy.
    fn chunk_read_done(&self) {
        let mut handle = self.handle.locked();
        if let Handle::Open { reads_left, file, before } = &mut *handle {
            *reads_left -= 1;
            if *reads_left == 0 {
                let after = Stamp::of(file).ok();
                let changed = (before.is_none() || after != *before).then(|| Arc::clone(file));
                *handle = Handle::Closed { changed };
            }
        }
    }

    /// The handle of a file that changed while it was read, if it did (taken: the check runs once).
    fn take_changed(&self) -> Option<Arc<File>> {
        match &mut *self.handle.locked() {
            Handle::Closed { changed } => changed.take(),
            _ => None,
        }
    }

    /// Checks the copy of a file that changed while it was read: `copied` (size and CRC-32 of what was streamed)
    /// must be what `file` holds now. Read again with no change meanwhile, or read twice (a file still appended
    /// to, say) with the same bytes where the copy lies, the copy is a version the file had; any difference fails
    /// the run naming the file (the copy may be torn).
    fn check_unchanged(&self, file: &File, copied: CrcPiece) -> Result<()> {
        let source = self.scanned.source();
        let path = source.display();
        log::info!("{path} changed while it was read: checking the copy against it");
        let mut scratch = vec![0u8; 256 << 10];
        for read in 1..=2 {
            let before = Stamp::of(file)?;
            let mut now = CrcPiece::default();
            while now.len < copied.len {
                let want = scratch.len().min((copied.len - now.len) as usize);
                let n = match file.read_at(&mut scratch[..want], now.len) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => bail!("cannot read {path} again at offset {}: {e}", now.len),
                };
                now = now.append(CrcPiece::of(&scratch[..n]));
            }
            if now != copied {
                bail!(
                    "{path} changed while it was read: the {} bytes copied (CRC-32 {:08x}) are not what it holds now \
                     ({} bytes, CRC-32 {:08x}), so the copy may be torn; back up a stopped or snapshotted source",
                    copied.len,
                    copied.crc,
                    now.len,
                    now.crc
                );
            }
            if Stamp::of(file)? == before || read == 2 {
                if read == 2 {
                    log::info!(
                        "{path} keeps changing, but not in the {} bytes copied: read twice, the same",
                        copied.len
                    );
                }
                return Ok(());
            }
            std::thread::sleep(CHANGE_PAUSE);
        }
        unreachable!("the second read returns")
    }

    /// Takes a processed chunk; releases it and any parked successors in order; after the last one, hands the
    /// file's record to the outlet (not for a file that vanished).
    pub fn arrive(self: &Arc<Self>, chunk: ReadChunk, outlet: &dyn Outlet) -> Result<()> {
        let mut sequence = self.sequence.locked();
        sequence.order.insert(chunk.index, chunk);
        while let Some(chunk) = sequence.order.pop_ready() {
            self.release(&mut sequence, chunk, outlet)?;
        }
        if sequence.order.next() < self.jobs {
            return Ok(());
        }
        self.finish(&mut sequence, outlet)
    }

    fn release(self: &Arc<Self>, sequence: &mut Sequence, chunk: ReadChunk, outlet: &dyn Outlet) -> Result<()> {
        if chunk.vanished {
            sequence.vanished = true;
            return Ok(());
        }
        if chunk.grew.is_some() {
            sequence.grew = chunk.grew;
        }
        let got = chunk.data.len() as u64;
        if chunk.offset != sequence.copied {
            // An earlier chunk came back short: the file shrank. Keep the streamed data a contiguous prefix.
            sequence.shrank = true;
            return Ok(());
        }
        if got < chunk.planned {
            sequence.shrank = true;
        }
        // An empty compressed or encrypted file still gets its one (empty) payload: a `.zst` or `.age` file is never
        // empty. Nothing follows an empty first payload: the file is empty, or it shrank (later chunks are dropped).
        let only_frame = (self.compressed || self.encrypted) && sequence.chunks == 0;
        if got == 0 && !only_frame {
            return Ok(());
        }
        sequence.crc = sequence.crc.append(CrcPiece { crc: chunk.crc, len: got });
        if let Some(sha1) = &mut sequence.sha1 {
            sha1.update(&chunk.data[..]);
        }
        sequence.copied += got;
        sequence.chunks += 1;
        outlet.payload(self, sequence.chunks - 1, chunk.offset, chunk.data, chunk.crc)
    }

    fn finish(self: &Arc<Self>, sequence: &mut Sequence, outlet: &dyn Outlet) -> Result<()> {
        match self.conclude(sequence)? {
            Some(record) => outlet.end(self, sequence.chunks, record),
            None => outlet.vanished(self),
        }
    }

    /// Concludes a file read whole in a batch: `got` is what was read, `crc` its CRC-32. Returns its record, or
    /// `None` if it vanished (warned about; an error with `--strict`, as a file that shrank or grew).
    pub fn conclude_batched(&self, got: &[u8], crc: u32, vanished: bool, grew: bool) -> Result<Option<FileRecord>> {
        let mut sequence = self.sequence.locked();
        sequence.order.advance_to(self.jobs);
        sequence.vanished = vanished;
        if !vanished {
            sequence.grew = Some(grew);
            sequence.shrank = (got.len() as u64) < self.scanned.size;
            if !got.is_empty() {
                sequence.crc = CrcPiece { crc, len: got.len() as u64 };
                if let Some(sha1) = &mut sequence.sha1 {
                    sha1.update(got);
                }
                sequence.copied = got.len() as u64;
                sequence.chunks = 1;
            }
        }
        self.conclude(&mut sequence)
    }

    /// The file's record once every chunk is released: warns about (or, with `--strict`, fails on) a file that
    /// vanished, shrank or grew. `None`: it vanished, and nothing of it is in the backup.
    fn conclude(&self, sequence: &mut Sequence) -> Result<Option<FileRecord>> {
        let source = self.scanned.source();
        let path = source.display();
        if let (Some(file), false) = (self.take_changed(), sequence.vanished) {
            self.check_unchanged(&file, CrcPiece { crc: sequence.crc.crc, len: sequence.copied })?;
        }
        if sequence.vanished {
            if self.strict {
                bail!("{path} vanished before it could be read (--strict)");
            }
            log::warn!("{path} vanished before it could be read; it is not in the backup");
            return Ok(None);
        }
        let grew = match sequence.grew {
            Some(grew) => grew,
            // Not probed (the last chunk filled its buffer): ask the file system.
            None => std::fs::symlink_metadata(self.scanned.source()).is_ok_and(|m| m.len() > self.scanned.size),
        };
        let changed = if sequence.shrank {
            Some(format!(
                "shrank while being copied; {} bytes copied of {} scanned",
                sequence.copied, self.scanned.size
            ))
        } else if grew {
            Some(format!("grew while being copied; the first {} bytes were copied", self.scanned.size))
        } else {
            None
        };
        if let Some(change) = changed {
            if self.strict {
                bail!("{path} {change} (--strict)");
            }
            log::warn!("{path} {change}");
        }
        let sha1 = sequence.sha1.take().map(|h| hex::encode(h.finalize()));
        debug_assert_eq!(sha1.is_some(), self.sha1);
        let mut record = FileRecord {
            path: WirePath(self.scanned.wire.clone()),
            size: sequence.copied,
            mode: self.scanned.mode,
            mtime: self.scanned.mtime,
            chunks: sequence.chunks,
            crc32: sequence.crc.crc,
            sha1,
            stored: None,
            corrupt_pages: Vec::new(),
            corrupt_pages_total: 0,
        };
        (record.corrupt_pages, record.corrupt_pages_total) = self.corrupt_pages();
        Ok(Some(record))
    }

    /// The path the file came from, for messages.
    pub fn source(&self) -> PathBuf {
        self.scanned.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tablespace(validate: bool) -> Arc<FileState> {
        let scanned = ScannedFile {
            root: Arc::new(crate::scan::SourceRoot::open(std::path::Path::new("/")).unwrap()),
            wire: b"db/t1.ibd".to_vec(),
            size: 0,
            mode: 0o640,
            mtime: 0,
            placeholder: false,
            stamp: None,
        };
        FileState::new(0, scanned, 1 << 20, Some(0), false, false, Transform::default(), validate)
    }

    /// A small file read whole: one that changed since the scan is read again and its new content copied; one
    /// that never stops changing fails naming it after [`CHANGE_CHECKS`] reads.
    #[test]
    fn a_small_file_is_read_again_until_a_read_runs_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.frm");
        std::fs::write(&path, vec![b'a'; 1000]).unwrap();
        let root = Arc::new(crate::scan::SourceRoot::open(dir.path()).unwrap());
        let scanned = |stamp| ScannedFile {
            root: Arc::clone(&root),
            wire: b"t.frm".to_vec(),
            size: 1000,
            mode: 0o640,
            mtime: 0,
            placeholder: false,
            stamp,
        };
        let pool = runtime::pool::BufferPool::new(1, 64 << 10);
        let cancel = runtime::cancel::Cancel::new();
        let read = |file: &Arc<FileState>| {
            let mut data = pool.take(&cancel).unwrap();
            data.set_len(0);
            file.read_whole(&mut data).map(|(kept, _, _)| data[..kept].to_vec())
        };
        // Changed after the scan (in place, same size): read again, the new content.
        let stamp = Stamp::of(&File::open(&path).unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, vec![b'b'; 1000]).unwrap();
        let file = FileState::new(0, scanned(Some(stamp)), 1 << 20, Some(0), false, false, Transform::default(), false);
        assert_eq!(read(&file).unwrap(), vec![b'b'; 1000]);
        // Written every millisecond, through every read.
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let mut byte = 0u8;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    byte = byte.wrapping_add(1);
                    writer.write_all_at(&[byte; 1000], 0).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            let file = FileState::new(1, scanned(None), 1 << 20, Some(0), false, false, Transform::default(), false);
            let err = read(&file).unwrap_err().to_string();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(err.contains("t.frm kept changing while it was read (10 reads)"), "{err}");
        });
    }

    #[test]
    fn corrupt_pages_are_listed_up_to_the_cap_and_all_counted() {
        let file = tablespace(true);
        let pages: Vec<u64> = (0..3000).rev().collect();
        file.record_corrupt_pages(&pages[..1000]);
        file.record_corrupt_pages(&pages[1000..]);
        let (listed, total) = file.corrupt_pages();
        assert_eq!(total, 3000);
        assert_eq!(listed.len(), MAX_LISTED_CORRUPT_PAGES);
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted");
        // Without --validate-pages nothing is recorded.
        let plain = tablespace(false);
        plain.record_corrupt_pages(&[1, 2]);
        assert_eq!(plain.corrupt_pages(), (Vec::new(), 0));
    }
}
