//! The named-pipe transport: `<fifo-dir>/thread_0 … thread_{N-1}`, as Percona's FIFO datasink names them.
//!
//! Either side may start first: both create the directory (0700) and any missing pipe (0600), and accept a pipe
//! the peer already made. Each side opens its end with a deadline ([`open_fifo`]) and removes all N pipes when it is
//! done ([`FifoSet`]'s `Drop`), on success and on failure alike; the open descriptors keep working after the unlink.
//!
//! A pipe carries a plain xbstream and nothing else (unlike Percona's, which first sends one control byte), so
//! `cat <fifo-dir>/thread_0 | mbstream -x` works on its contents.
//!
//! Opening waits without spinning: a helper thread makes the ordinary blocking `open(2)`, which returns the moment a
//! peer opens the other end. If the deadline passes first, we open the other end ourselves, non-blocking, which
//! releases the helper, close both, and report the timeout naming the pipe.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use nix::sys::stat::Mode;
use runtime::cancel::Cancel;

/// Why a pipe could not be made or opened. Every variant names the pipe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FifoError {
    /// `mkdir` or `mkfifo` failed.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The directory or pipe.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Something other than a FIFO is in the way.
    #[error("{path} exists and is not a named pipe")]
    NotAFifo {
        /// The path.
        path: PathBuf,
    },
    /// The directory or a pipe belongs to another user, or others may write to it (they could read the backup or
    /// inject a stream).
    #[error("{path} is not private: it must be owned by this user and not writable by group or others ({why})")]
    NotPrivate {
        /// The directory or pipe.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The run was stopped (a signal, another failure) while waiting for the peer.
    #[error("stopped while waiting for the peer to open {path}")]
    Cancelled {
        /// The pipe.
        path: PathBuf,
    },
    /// No peer opened the other end in time.
    #[error("no {peer} opened {path} within {secs} s (--fifo-timeout); is the {peer} running with the same --fifo-dir and --fifo-streams?", secs = timeout.as_secs_f64())]
    Timeout {
        /// The pipe.
        path: PathBuf,
        /// `"consumer"` when we write, `"producer"` when we read.
        peer: &'static str,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// `open(2)` failed for another reason.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The pipe.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Which end of a pipe to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The producer's end.
    Write,
    /// The consumer's end.
    Read,
}

/// The pipe buffer the producer asks for by default: 1 MiB, the default `/proc/sys/fs/pipe-max-size` (so no
/// privilege is needed). Measured in `docs/benchmarks.md`.
pub const PIPE_SIZE: usize = 1 << 20;

/// Path of pipe `index` in `dir`: `dir/thread_<index>`.
pub fn fifo_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("thread_{index}"))
}

/// The N pipes of one transfer. Dropping it removes them all.
#[derive(Debug)]
pub struct FifoSet {
    paths: Vec<PathBuf>,
}

impl FifoSet {
    /// Creates `dir` (mode 0700, with parents) and each missing `thread_<i>` pipe (mode 0600). A pipe that already
    /// exists is taken as the peer's; anything else at that path is an error.
    pub fn create(dir: &Path, count: usize) -> Result<FifoSet, FifoError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| FifoError::Create { path: dir.to_path_buf(), source })?;
        check_private(dir, 0o022)?;
        let mut set = FifoSet { paths: Vec::with_capacity(count) };
        for index in 0..count {
            let path = fifo_path(dir, index);
            match nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR) {
                Ok(()) => {}
                Err(nix::errno::Errno::EEXIST) => {
                    let is_fifo = fs::symlink_metadata(&path).map(|m| m.file_type().is_fifo()).unwrap_or(false);
                    if !is_fifo {
                        return Err(FifoError::NotAFifo { path });
                    }
                    check_private(&path, 0o077)?;
                }
                Err(errno) => return Err(FifoError::Create { path, source: errno.into() }),
            }
            set.paths.push(path);
        }
        Ok(set)
    }

    /// The pipes, in stream order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Opens `end` of every pipe at once, each waiting at most `timeout` for its peer (and no longer than `cancel`
    /// stays unfired), and returns them in stream order (the first failure, by stream number, if any failed).
    pub fn open_all(&self, end: End, timeout: Duration, cancel: &Cancel) -> Result<Vec<File>, FifoError> {
        let peer = if end == End::Write { "consumer" } else { "producer" };
        log::info!("waiting up to {} s for the {peer} to open {} pipes", timeout.as_secs(), self.paths.len());
        let opened: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> =
                self.paths.iter().map(|path| scope.spawn(move || open_fifo(path, end, timeout, cancel))).collect();
            handles.into_iter().map(|h| h.join().expect("a fifo open thread does not panic")).collect()
        });
        opened.into_iter().collect()
    }
}

impl Drop for FifoSet {
    fn drop(&mut self) {
        for path in &self.paths {
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("could not remove {}: {e}", path.display());
                }
            }
        }
    }
}

/// Fails unless `path` (not followed if a symlink) is owned by the effective user and has none of `forbidden`
/// permission bits.
fn check_private(path: &Path, forbidden: u32) -> Result<(), FifoError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).map_err(|source| FifoError::Open { path: path.to_path_buf(), source })?;
    let why = if meta.file_type().is_symlink() {
        Some("it is a symlink".to_string())
    } else if meta.uid() != nix::unistd::geteuid().as_raw() {
        Some(format!("owned by uid {}", meta.uid()))
    } else if meta.mode() & forbidden != 0 {
        Some(format!("mode {:o}", meta.mode() & 0o7777))
    } else {
        None
    };
    match why {
        Some(why) => Err(FifoError::NotPrivate { path: path.to_path_buf(), why }),
        None => Ok(()),
    }
}

/// Opens one end of the pipe at `path`, waiting at most `timeout` for a peer to open the other end, and giving up
/// within a fraction of a second once `cancel` fires. The returned file is in blocking mode. The writer usually
/// raises the pipe buffer next ([`set_pipe_size`]).
pub fn open_fifo(path: &Path, end: End, timeout: Duration, cancel: &Cancel) -> Result<File, FifoError> {
    let (sender, receiver) = mpsc::sync_channel(1);
    let helper_path = path.to_path_buf();
    let helper = thread::Builder::new()
        .name("fifo-open".into())
        .spawn(move || {
            let opened = OpenOptions::new().read(end == End::Read).write(end == End::Write).open(&helper_path);
            let _ = sender.send(opened);
        })
        .map_err(|source| FifoError::Open { path: path.to_path_buf(), source })?;

    let deadline = std::time::Instant::now() + timeout;
    let result = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match receiver.recv_timeout(left.min(CANCEL_SLICE)) {
            Ok(opened) => break opened.map_err(|source| FifoError::Open { path: path.to_path_buf(), source }),
            Err(_) if cancel.is_cancelled() => {
                release_blocked_open(path, end, &receiver);
                break Err(FifoError::Cancelled { path: path.to_path_buf() });
            }
            Err(_) if left.is_zero() || std::time::Instant::now() >= deadline => {
                release_blocked_open(path, end, &receiver);
                break Err(FifoError::Timeout {
                    path: path.to_path_buf(),
                    peer: if end == End::Write { "consumer" } else { "producer" },
                    timeout,
                });
            }
            Err(_) => {}
        }
    };
    let _ = helper.join();
    result
}

/// How late a wait for the peer may notice that the run was cancelled.
const CANCEL_SLICE: Duration = Duration::from_millis(200);

/// Unblocks a helper thread stuck in `open(2)` by briefly opening the other end without blocking. A non-blocking
/// write open fails with `ENXIO` until the helper's read open has registered, so it is retried briefly.
fn release_blocked_open(path: &Path, end: End, receiver: &mpsc::Receiver<io::Result<File>>) {
    let mut other_end = None;
    loop {
        if other_end.is_none() {
            other_end = OpenOptions::new()
                .read(end == End::Write)
                .write(end == End::Read)
                .custom_flags(OFlag::O_NONBLOCK.bits())
                .open(path)
                .ok();
        }
        match receiver.recv_timeout(Duration::from_millis(10)) {
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Asks for a pipe buffer of `bytes` (`F_SETPIPE_SZ`); returns the size the kernel granted. Works on any pipe,
/// including a STDOUT that is a pipe.
pub fn set_pipe_size(file: &impl std::os::fd::AsFd, bytes: usize) -> io::Result<usize> {
    let granted = fcntl(file.as_fd(), FcntlArg::F_SETPIPE_SZ(bytes as nix::libc::c_int))?;
    Ok(granted as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    #[test]
    fn creates_pipes_and_removes_them_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let fifo_dir = dir.path().join("sub/fifos");
        let set = FifoSet::create(&fifo_dir, 3).unwrap();
        assert_eq!(set.paths().len(), 3);
        for (i, path) in set.paths().iter().enumerate() {
            assert_eq!(path, &fifo_dir.join(format!("thread_{i}")));
            let meta = fs::symlink_metadata(path).unwrap();
            assert!(meta.file_type().is_fifo());
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
        }
        // The peer's set over the same pipes is accepted.
        let peer = FifoSet::create(&fifo_dir, 3).unwrap();
        drop(set);
        drop(peer);
        assert_eq!(fs::read_dir(&fifo_dir).unwrap().count(), 0);
    }

    #[test]
    fn refuses_a_directory_or_pipe_others_may_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let err = FifoSet::create(&shared, 1).unwrap_err();
        assert!(err.to_string().contains("shared is not private") && err.to_string().contains("mode 777"), "{err}");
        let private = dir.path().join("private");
        fs::create_dir(&private).unwrap();
        nix::unistd::mkfifo(&private.join("thread_0"), Mode::from_bits_truncate(0o666)).unwrap();
        fs::set_permissions(private.join("thread_0"), fs::Permissions::from_mode(0o666)).unwrap();
        let err = FifoSet::create(&private, 1).unwrap_err();
        assert!(err.to_string().contains("thread_0 is not private"), "{err}");
    }

    #[test]
    fn refuses_a_regular_file_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("thread_0"), b"x").unwrap();
        let err = FifoSet::create(dir.path(), 1).unwrap_err();
        assert!(err.to_string().ends_with("thread_0 exists and is not a named pipe"), "{err}");
    }

    #[test]
    fn open_times_out_in_both_directions_naming_the_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let set = FifoSet::create(dir.path(), 1).unwrap();
        for end in [End::Write, End::Read] {
            let started = Instant::now();
            let err = open_fifo(&set.paths()[0], end, Duration::from_millis(300), &Cancel::new()).unwrap_err();
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(1300), "{waited:?}");
            let message = err.to_string();
            assert!(message.contains("thread_0 within 0.3 s"), "{message}");
            let peer = if end == End::Write { "no consumer" } else { "no producer" };
            assert!(message.starts_with(peer), "{message}");
        }
    }

    #[test]
    fn a_cancel_ends_the_wait_for_the_peer_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let set = FifoSet::create(dir.path(), 2).unwrap();
        let cancel = Cancel::new();
        let stopper = {
            let cancel = cancel.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(200));
                cancel.cancel();
            })
        };
        let started = Instant::now();
        let err = set.open_all(End::Write, Duration::from_secs(30), &cancel).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(err, FifoError::Cancelled { .. }), "{err}");
        stopper.join().unwrap();
    }

    #[test]
    fn data_crosses_whichever_side_opens_first() {
        let dir = tempfile::tempdir().unwrap();
        let set = FifoSet::create(dir.path(), 2).unwrap();
        for (index, reader_first) in [(0, true), (1, false)] {
            let path = set.paths()[index].clone();
            let reader_path = path.clone();
            let reader = thread::spawn(move || {
                if !reader_first {
                    thread::sleep(Duration::from_millis(100));
                }
                let mut file = open_fifo(&reader_path, End::Read, Duration::from_secs(5), &Cancel::new()).unwrap();
                let mut got = Vec::new();
                file.read_to_end(&mut got).unwrap();
                got
            });
            if reader_first {
                thread::sleep(Duration::from_millis(100));
            }
            let mut writer = open_fifo(&path, End::Write, Duration::from_secs(5), &Cancel::new()).unwrap();
            writer.write_all(b"hello through the pipe").unwrap();
            drop(writer);
            assert_eq!(reader.join().unwrap(), b"hello through the pipe");
        }
    }

    #[test]
    fn the_pipe_buffer_can_be_raised() {
        let dir = tempfile::tempdir().unwrap();
        let set = FifoSet::create(dir.path(), 1).unwrap();
        let path = set.paths()[0].clone();
        let reader =
            thread::spawn(move || open_fifo(&path, End::Read, Duration::from_secs(5), &Cancel::new()).unwrap());
        let writer = open_fifo(&set.paths()[0], End::Write, Duration::from_secs(5), &Cancel::new()).unwrap();
        let before = fcntl(writer.as_fd_ref(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!(before, 65536, "the kernel default");
        assert_eq!(set_pipe_size(&writer, PIPE_SIZE).unwrap(), PIPE_SIZE);
        let granted = fcntl(writer.as_fd_ref(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!(granted as usize, PIPE_SIZE);
        drop(reader.join().unwrap());
    }

    trait AsFdRef {
        fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
    }
    impl AsFdRef for File {
        fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
            std::os::fd::AsFd::as_fd(self)
        }
    }
}
