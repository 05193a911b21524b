//! Wide writes: a large chunk is written by whichever writer thread is free, not only by the one that owns its
//! file, so one huge file is restored by every writer at once (issue #22), as many files are.
//!
//! The writer that owns a file keeps all of its bookkeeping and does it in the order chunks reach it (created in
//! staging, which bytes arrived, their CRC-32 pieces, the SHA-1 of bytes in order, the end-of-file chunk); only the
//! positional write of a large chunk's bytes is handed over ([`WideWrites::hand_over`]), on a descriptor the
//! writers share ([`OpenFile`]). A failed write fails the run, so the bookkeeping may run ahead of the bytes: a file
//! whose end-of-file chunk comes while a write still holds it is set aside by its owner until none does
//! ([`FileLength::is_open`]), and before the proof closes, reads or checks any file, [`WideWrites::settle`] waits
//! until no handed-over write is left at all.
//!
//! Zero blocks are left as holes, so a write ending in one does not lengthen the file: the length it needs is
//! noted ([`FileLength`]) and set by the owner once no write is in flight. A `set_len` while another thread may
//! still write could cut off what it wrote.
//!
//! A handed-over write holds its pool buffer until it is done, and the queue has room for every buffer of the
//! pool: handing over never waits. If the queue is full anyway, the owner writes the chunk itself.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{select, Receiver, Sender, TryRecvError, TrySendError};
use runtime::cancel::{Cancel, Cancelled};
use runtime::pool::PooledBuffer;

use crate::batch::BATCH_PAYLOAD_MAX;
use crate::sparse::SparseWriter;
use crate::target::PartialFile;

/// The length a staged file must at least have: the furthest end of a write whose last block, all zeros, was left
/// as a hole (see [`SparseWriter::write_leaving_holes`]). Shared by the file's owner and every descriptor open on
/// it, so it also tells whether one is ([`FileLength::is_open`]).
#[derive(Debug, Default)]
pub(crate) struct FileLength(Arc<AtomicU64>);

impl FileLength {
    /// A descriptor on the file, just opened for writing; `display` names the file in messages.
    pub(crate) fn open(&self, file: File, display: &Path) -> Arc<OpenFile> {
        Arc::new(OpenFile { file, length: Arc::clone(&self.0), display: display.to_path_buf() })
    }

    /// Whether a descriptor is still open on the file (the owner's, or one a handed-over write holds).
    pub(crate) fn is_open(&self) -> bool {
        if Arc::strong_count(&self.0) > 1 {
            return true;
        }
        // The count is read relaxed; the last descriptor let go of its share with a release, after its writes
        // noted the lengths they need: this fence makes those lengths visible to `apply`.
        std::sync::atomic::fence(Ordering::Acquire);
        false
    }

    /// Gives the file the length its writes need; called by its owner once no descriptor is open on it
    /// ([`FileLength::is_open`]), so that nothing is written while the length is set.
    pub(crate) fn apply(&self, partial: &PartialFile) -> Result<()> {
        let needed = self.0.load(Ordering::SeqCst);
        if needed == 0 {
            return Ok(());
        }
        let file = partial.reopen_for_write()?;
        let display = partial.display().display();
        let len = file.metadata().with_context(|| format!("cannot stat {display} (staged)"))?.len();
        if len < needed {
            file.set_len(needed).with_context(|| format!("cannot lengthen {display} (staged)"))?;
        }
        nix::unistd::close(file).with_context(|| format!("cannot close {display} (staged)"))
    }
}

/// A staged file's descriptor, shared by its owner and the writers that write its chunks.
#[derive(Debug)]
pub(crate) struct OpenFile {
    file: File,
    length: Arc<AtomicU64>,
    /// The file's final path, for messages.
    display: PathBuf,
}

impl OpenFile {
    /// Writes `data` at `offset`, zero blocks left as holes.
    pub(crate) fn write(&self, sparse: &SparseWriter, data: &[u8], offset: u64) -> Result<()> {
        let end = sparse
            .write_leaving_holes(&self.file, data, offset)
            .with_context(|| format!("cannot write {}", self.display.display()))?;
        if let Some(end) = end {
            self.length.fetch_max(end, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Drops the pages just written from the page cache (a large chunk's: for a small one the system call costs
    /// more than it saves).
    fn drop_cached(&self, offset: u64, len: usize) {
        let _ = nix::fcntl::posix_fadvise(
            self.file.as_fd(),
            offset as i64,
            len as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    /// Lets go of the owner's share of the descriptor: closed now if no handed-over write holds it, else by the
    /// last write that does. The close is explicit so that an I/O error the kernel reports only then (e.g. on NFS)
    /// fails the run: a file whose close fails is not complete.
    pub(crate) fn release(this: Arc<OpenFile>) -> Result<()> {
        match Arc::into_inner(this) {
            Some(open) => open.close(),
            None => Ok(()),
        }
    }

    fn close(self) -> Result<()> {
        let OpenFile { file, display, .. } = self;
        nix::unistd::close(file).with_context(|| format!("cannot close {} (staged)", display.display()))
    }
}

/// One large chunk's bytes on their way to any writer.
pub(crate) struct WriteJob {
    pub(crate) file: Arc<OpenFile>,
    pub(crate) data: PooledBuffer,
    pub(crate) offset: u64,
    /// The writer that owns the file.
    pub(crate) owner: usize,
    /// Where the chunk was: its stream and its offset there, for messages.
    pub(crate) stream: usize,
    pub(crate) stream_offset: u64,
}

/// The queue of handed-over writes that every writer thread serves, and how many are not done yet.
pub(crate) struct WideWrites {
    sender: Sender<WriteJob>,
    receiver: Receiver<WriteJob>,
    /// Writes handed over and not yet done (queued or being written).
    in_flight: AtomicUsize,
    /// Writes done by a writer other than the file's owner (for `--stats-json`).
    by_others: AtomicU64,
    /// Whether writes are handed over at all: not with one writer.
    enabled: bool,
    sparse: SparseWriter,
    fadvise: bool,
}

/// How long [`WideWrites::settle`] waits for another writer's write before looking again.
const SETTLE_POLL: Duration = Duration::from_millis(1);

impl WideWrites {
    /// A queue for `writers` writer threads sharing a pool of `buffers` buffers; `fadvise`: drop written pages
    /// from the cache.
    pub(crate) fn new(writers: usize, buffers: usize, sparse: SparseWriter, fadvise: bool) -> WideWrites {
        let (sender, receiver) = crossbeam_channel::bounded(buffers.max(1));
        let in_flight = AtomicUsize::new(0);
        WideWrites { sender, receiver, in_flight, by_others: AtomicU64::new(0), enabled: writers > 1, sparse, fadvise }
    }

    /// How file data is written.
    pub(crate) fn sparse(&self) -> &SparseWriter {
        &self.sparse
    }

    /// The queue, for a writer's `select!`.
    pub(crate) fn receiver(&self) -> &Receiver<WriteJob> {
        &self.receiver
    }

    /// Has `job` written by whichever writer is free: a large chunk with more than one writer; else (or when the
    /// queue is full) it is written here and now.
    pub(crate) fn hand_over(&self, job: WriteJob) -> Result<()> {
        if !self.enabled || job.data.len() <= BATCH_PAYLOAD_MAX {
            return self.write(job);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.write(job)
            }
        }
    }

    /// Writes a job taken from the queue by writer `me`.
    pub(crate) fn run(&self, job: WriteJob, me: usize) -> Result<()> {
        // Counted done even when it fails: the failure cancels the run, and nothing waits forever.
        let _done = InFlight(&self.in_flight);
        if job.owner != me {
            self.by_others.fetch_add(1, Ordering::Relaxed);
        }
        self.write(job)
    }

    /// How many chunks a writer other than their file's owner wrote.
    pub(crate) fn written_by_others(&self) -> u64 {
        self.by_others.load(Ordering::Relaxed)
    }

    fn write(&self, job: WriteJob) -> Result<()> {
        let WriteJob { file, data, offset, stream, stream_offset, .. } = job;
        file.write(&self.sparse, &data, offset)
            .with_context(|| format!("chunk at stream {stream}, offset {stream_offset:#x}"))?;
        if self.fadvise && data.len() > BATCH_PAYLOAD_MAX {
            file.drop_cached(offset, data.len());
        }
        OpenFile::release(file)
    }

    /// Writes queued jobs until none is left anywhere, queued or being written by another writer. Called by each
    /// writer when every chunk has reached the writers, before the proof: once every writer has settled, every
    /// byte is written (each hand-over happened before its owner settled, and the owner waited for it).
    pub(crate) fn settle(&self, me: usize, cancel: &Cancel) -> Result<()> {
        loop {
            cancel.check()?;
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            match self.receiver.try_recv() {
                Ok(job) => self.run(job, me)?,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    select! {
                        recv(self.receiver) -> job => if let Ok(job) = job { self.run(job, me)? },
                        recv(cancel.receiver()) -> _ => return Err(Cancelled.into()),
                        default(SETTLE_POLL) => {}
                    }
                }
            }
        }
    }
}

/// Counts a handed-over write done when dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
