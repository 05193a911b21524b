//! An idle deadline on pipe reads and writes: a peer that stalls (SIGSTOP'ed, a hung ssh) must not hang us forever.
//!
//! [`IdlePipe`] wraps a [`File`] and implements [`Read`] and [`Write`] such that any single call that moves no byte
//! for the timeout fails with an [`io::Error`] of kind [`io::ErrorKind::TimedOut`] (inner error [`IdleTimeout`]).
//! The deadline is per call: a call returns as soon as any byte moves, and the next call starts a fresh deadline.
//! Pipes of one run can share an [`Activity`] clock instead ([`IdlePipe::with_activity`]): then a call fails only
//! when *no* pipe of the run has moved a byte for the timeout, so a pipe that is legitimately quiet while the others
//! work (with `--fifo-binding file`, a pipe whose files are all done waits for the manifest on another) is not
//! mistaken for a stalled peer. Every wait also listens, between slices of at most [`POLL_SLICE`], to an optional [`Cancel`], so a SIGTERM ends
//! a run whose peer is stalled.
//!
//! How a call waits depends on the descriptor:
//! - Descriptions we own ([`IdlePipe::new`], and a STDIN/STDOUT pipe reopened by [`IdlePipe::stdio`]) are put in
//!   `O_NONBLOCK` mode: try the syscall, and on `EAGAIN` `poll(2)` until ready or the deadline.
//! - A socket (an inherited STDIN/STDOUT from `nc -e`, `socat EXEC:`, a systemd socket unit) is read and written
//!   with `recv`/`send` and `MSG_DONTWAIT`: non-blocking per call, the shared description's flags untouched.
//! - A regular file or block device never stalls the way a peer does: plain blocking I/O.
//! - Any other shared descriptor (tty, character device, or a pipe we could not reopen) stays blocking, and we
//!   `poll(2)` before every call; writes are then capped at `PIPE_BUF` bytes, which a pipe that polls writable
//!   always accepts without blocking. On a tty a write larger than the free buffer space can still block after
//!   `poll` said ready, and so can a read if another process sharing the description took the data first.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, MsgFlags};

use crate::fifo::End;
use runtime::cancel::Cancel;

/// The longest single `poll(2)`: how late a wait may notice that its [`Cancel`] fired.
pub const POLL_SLICE: Duration = Duration::from_millis(200);

/// The largest write a pipe that polls writable accepts without blocking (POSIX `PIPE_BUF` on Linux).
const PIPE_BUF: usize = 4096;

/// The inner error of a call that made no progress for the whole idle timeout (its [`io::Error`] has kind
/// [`io::ErrorKind::TimedOut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no progress for {secs} s (--idle-timeout)", secs = timeout.as_secs_f64())]
pub struct IdleTimeout {
    /// The deadline that passed.
    pub timeout: Duration,
}

/// When any of the pipes sharing it last moved a byte: the clock of a run's idle deadline.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Nanoseconds after `base` of the latest progress.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// A clock that starts now.
    pub fn new() -> Activity {
        Activity { base: Instant::now(), last: AtomicU64::new(0) }
    }

    /// Records progress now.
    pub fn touch(&self) {
        let now = self.base.elapsed().as_nanos() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// When progress was last recorded.
    pub fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// How a call on the descriptor waits for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Our own `O_NONBLOCK` description: syscall first, `poll` on `EAGAIN`.
    NonBlocking,
    /// A shared blocking description: `poll` before every syscall. `pipe` caps writes at [`PIPE_BUF`].
    PollFirst {
        /// The descriptor is a pipe or FIFO.
        pipe: bool,
    },
    /// A socket shared with others: `recv`/`send` with `MSG_DONTWAIT`, `poll` on `EAGAIN`.
    Socket,
    /// A regular file or block device: plain blocking I/O, never a wait.
    Never,
}

/// A pipe end whose every read and write fails after `timeout` without progress, or promptly once its [`Cancel`]
/// fires. See the [module documentation](self) for how each kind of descriptor waits.
#[derive(Debug)]
pub struct IdlePipe {
    file: File,
    waiting: Waiting,
    timeout: Option<Duration>,
    cancel: Option<Cancel>,
    activity: Option<Arc<Activity>>,
}

impl IdlePipe {
    /// Wraps a descriptor we opened ourselves (one of our named pipes): puts its open file description in
    /// `O_NONBLOCK` mode. `None` waits forever (but stays cancellable). Do not use it on a description other
    /// processes share, such as an inherited STDIN/STDOUT: use [`IdlePipe::stdio`].
    pub fn new(file: File, timeout: Option<Duration>) -> io::Result<IdlePipe> {
        set_nonblocking(&file)?;
        Ok(IdlePipe { file, waiting: Waiting::NonBlocking, timeout, cancel: None, activity: None })
    }

    /// Wraps a dup of STDIN (`end` = [`End::Read`]) or STDOUT ([`End::Write`]), or any descriptor whose open file
    /// description other processes may share, without changing that description's flags.
    ///
    /// A pipe or FIFO is reopened through `/proc/self/fd/<fd>` for `end` only (read-only or write-only, even if
    /// the descriptor was opened read-write: holding the other end ourselves would hide the peer's EOF) plus
    /// `O_NONBLOCK`, which
    /// makes a new open file description of the same pipe that only we use; the dup passed in is then closed (the
    /// caller's fd 0/1 still holds the pipe). If that open fails (`ENXIO`: no reader any more; `EACCES`; no
    /// `/proc`), the dup itself is used, blocking, with a `poll` before every call. A regular file or block device
    /// gets plain blocking I/O; a socket `MSG_DONTWAIT` calls. Anything else (tty, character device) stays blocking
    /// with a `poll` before every call, which bounds the wait for the first byte but not a large write (see the
    /// module documentation).
    pub fn stdio(file: File, timeout: Option<Duration>, end: End) -> io::Result<IdlePipe> {
        let fd = file.as_raw_fd();
        let kind = file
            .metadata()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot fstat descriptor {fd}: {e}")))?
            .file_type();
        let waiting = if kind.is_file() || kind.is_block_device() {
            Waiting::Never
        } else if kind.is_socket() {
            Waiting::Socket
        } else if kind.is_fifo() {
            match reopen_nonblocking(&file, end) {
                Ok(own) => {
                    let waiting = Waiting::NonBlocking;
                    return Ok(IdlePipe { file: own, waiting, timeout, cancel: None, activity: None });
                }
                Err(e) => {
                    log::debug!("cannot reopen pipe descriptor {fd} non-blocking ({e}); polling before each call");
                    Waiting::PollFirst { pipe: true }
                }
            }
        } else {
            Waiting::PollFirst { pipe: false }
        };
        Ok(IdlePipe { file, waiting, timeout, cancel: None, activity: None })
    }

    /// Measures idleness on `activity`, shared with the other pipes of the run, instead of per call (builder).
    pub fn with_activity(mut self, activity: Arc<Activity>) -> IdlePipe {
        self.activity = Some(activity);
        self
    }

    /// Whether the descriptor is a regular file or block device (plain blocking I/O), e.g. to sync it at the end.
    pub fn is_file(&self) -> bool {
        self.waiting == Waiting::Never
    }

    /// Makes every wait also fail, promptly, once `cancel` fires (builder form of [`IdlePipe::set_cancel`]).
    pub fn with_cancel(mut self, cancel: Cancel) -> IdlePipe {
        self.cancel = Some(cancel);
        self
    }

    /// Replaces or drops the cancel signal. Once it has fired, every call fails with
    /// [`Cancelled`](runtime::cancel::Cancelled) (kind [`io::ErrorKind::Other`]), even one that could move bytes;
    /// after a failure a caller drops it (and shortens the timeout with [`IdlePipe::set_timeout`]) to write a last
    /// chunk best-effort.
    pub fn set_cancel(&mut self, cancel: Option<Cancel>) {
        self.cancel = cancel;
    }

    /// Replaces the idle timeout for the following calls; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The idle timeout of each call; `None` waits forever.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The descriptor the I/O goes through (for a reopened STDIN/STDOUT pipe, our own non-blocking description of
    /// it), e.g. for [`crate::fifo::set_pipe_size`].
    pub fn get_ref(&self) -> &File {
        &self.file
    }

    /// Unwraps the descriptor [`IdlePipe::get_ref`] returns; it stays in whatever mode it was put in.
    pub fn into_inner(self) -> File {
        self.file
    }

    /// Runs `op` (one syscall on the descriptor) until it succeeds or fails for a reason other than `EINTR` or
    /// `EAGAIN`, waiting for `interest` in between, within one deadline.
    fn call(&self, interest: PollFlags, mut op: impl FnMut(&File) -> io::Result<usize>) -> io::Result<usize> {
        self.check_cancel()?;
        let started = Instant::now();
        if let Waiting::PollFirst { .. } = self.waiting {
            self.wait(interest, started)?;
        }
        loop {
            match op(&self.file) {
                Ok(n) => {
                    if let Some(activity) = &self.activity {
                        if n > 0 {
                            activity.touch();
                        }
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.check_cancel()?,
                // A shared description someone else made non-blocking also lands here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.waiting != Waiting::Never => {
                    self.wait(interest, started)?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Polls for `interest` in slices of at most [`POLL_SLICE`] until the descriptor is ready (or in error or hung
    /// up, which the next syscall reports), the deadline passes, or the cancel fires. The deadline is the timeout
    /// after the call `started`, or, with a shared [`Activity`], after the latest progress of any of its pipes.
    fn wait(&self, interest: PollFlags, started: Instant) -> io::Result<()> {
        loop {
            let since = match &self.activity {
                Some(activity) => activity.last().max(started),
                None => started,
            };
            let slice = match self.timeout.map(|timeout| since + timeout) {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let timeout = self.timeout.unwrap_or_default();
                        return Err(io::Error::new(io::ErrorKind::TimedOut, IdleTimeout { timeout }));
                    }
                    left.min(POLL_SLICE)
                }
                None => POLL_SLICE,
            };
            // Rounded up, so the last slice does not spin on a zero-millisecond poll.
            let millis = slice.as_nanos().div_ceil(1_000_000) as u16;
            let mut fds = [PollFd::new(self.file.as_fd(), interest)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) | Err(Errno::EINTR) => self.check_cancel()?,
                Ok(_) => return Ok(()),
                Err(errno) => {
                    return Err(io::Error::new(
                        io::Error::from(errno).kind(),
                        format!("poll on descriptor {} failed: {errno}", self.file.as_raw_fd()),
                    ))
                }
            }
        }
    }

    /// Fails with [`Cancelled`](runtime::cancel::Cancelled) once the cancel signal, if any, has fired.
    fn check_cancel(&self) -> io::Result<()> {
        match &self.cancel {
            Some(cancel) => cancel.check().map_err(io::Error::other),
            None => Ok(()),
        }
    }

    /// The most bytes one write may carry without risking a block after `poll` said ready.
    fn write_cap(&self) -> usize {
        match self.waiting {
            Waiting::PollFirst { pipe: true } => PIPE_BUF,
            _ => usize::MAX,
        }
    }
}

impl Read for IdlePipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.waiting == Waiting::Socket {
            return self
                .call(PollFlags::POLLIN, |file| Ok(recv(file.as_raw_fd(), &mut buf[..], MsgFlags::MSG_DONTWAIT)?));
        }
        self.call(PollFlags::POLLIN, |mut file| file.read(buf))
    }
}

impl Write for IdlePipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let buf = &buf[..buf.len().min(self.write_cap())];
        if self.waiting == Waiting::Socket {
            // MSG_NOSIGNAL: a closed peer is EPIPE, never a SIGPIPE.
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            return self.call(PollFlags::POLLOUT, |file| Ok(send(file.as_raw_fd(), buf, flags)?));
        }
        self.call(PollFlags::POLLOUT, |mut file| file.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.write_cap() != usize::MAX || self.waiting == Waiting::Socket {
            // A capped write carries (part of) the first non-empty slice; callers loop.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return self.write(first);
        }
        self.call(PollFlags::POLLOUT, |mut file| file.write_vectored(bufs))
    }

    /// A pipe has no user-space buffer: nothing to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Adds `O_NONBLOCK` to the open file description of `file`.
fn set_nonblocking(file: &File) -> io::Result<()> {
    let context = |errno: Errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("cannot make descriptor {} non-blocking: {errno}", file.as_raw_fd()),
        )
    };
    let flags = OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL).map_err(context)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(file, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(context)?;
    }
    Ok(())
}

/// Opens a new, non-blocking, close-on-exec open file description of the pipe `file` refers to, for `end` only,
/// through `/proc/self/fd`.
fn reopen_nonblocking(file: &File, end: End) -> io::Result<File> {
    // std adds O_CLOEXEC to every open.
    OpenOptions::new()
        .read(end == End::Read)
        .write(end == End::Write)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::cancel::Cancelled;
    use std::sync::mpsc;
    use std::thread;

    /// Runs `f` in a thread and waits at most `limit` for it, so a hang fails the test instead of stalling it.
    fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(f());
        });
        receiver.recv_timeout(limit).expect("the test thread finished in time (or panicked)")
    }

    /// An anonymous pipe: (read end, write end).
    fn pipe() -> (File, File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (File::from(read), File::from(write))
    }

    fn is_nonblocking(file: &impl AsFd) -> bool {
        OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL).unwrap()).contains(OFlag::O_NONBLOCK)
    }

    fn assert_timed_out(err: &io::Error, timeout: Duration) {
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<IdleTimeout>());
        assert_eq!(inner, Some(&IdleTimeout { timeout }), "{err}");
    }

    fn assert_cancelled(err: &io::Error) {
        assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
        assert!(err.get_ref().and_then(|e| e.downcast_ref::<Cancelled>()).is_some(), "{err}");
    }

    /// Checks that `attempt` fails with the idle timeout, and neither before `timeout` nor after `timeout + 1 s`.
    fn fails_in_time(timeout: Duration, attempt: impl FnOnce() -> io::Result<()> + Send + 'static) {
        let (err, waited) = bounded(timeout + Duration::from_secs(5), move || {
            let started = Instant::now();
            let err = attempt().expect_err("the call times out");
            (err, started.elapsed())
        });
        assert_timed_out(&err, timeout);
        assert!(waited >= timeout && waited < timeout + Duration::from_secs(1), "{waited:?}");
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
    }

    #[test]
    fn a_large_payload_crosses_byte_exact() {
        let (read, write) = pipe();
        assert_eq!(fcntl(&write, FcntlArg::F_GETPIPE_SZ).unwrap(), 65536);
        let timeout = Some(Duration::from_secs(5));
        let mut reader = IdlePipe::new(read, timeout).unwrap();
        let mut writer = IdlePipe::new(write, timeout).unwrap();
        assert!(is_nonblocking(reader.get_ref()) && is_nonblocking(writer.get_ref()));
        let payload = pattern(8 << 20);
        let expected = payload.clone();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut got = Vec::new();
            let _ = sender.send(reader.read_to_end(&mut got).map(|_| got));
        });
        let got = bounded(Duration::from_secs(30), move || {
            // The first half with write_all, the rest as header + payload slices through write_vectored.
            let (first, rest) = payload.split_at(4 << 20);
            writer.write_all(first).unwrap();
            let (header, body) = rest.split_at(37);
            let mut slices = [IoSlice::new(header), IoSlice::new(body)];
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                let n = writer.write_vectored(slices).unwrap();
                assert!(n > 0);
                IoSlice::advance_slices(&mut slices, n);
            }
            writer.flush().unwrap();
            drop(writer);
            receiver.recv_timeout(Duration::from_secs(20)).expect("the reader finished").unwrap()
        });
        assert!(got == expected, "{} bytes arrived, not byte-exact", got.len());
    }

    #[test]
    fn a_reader_whose_peer_never_writes_times_out() {
        let timeout = Duration::from_millis(500);
        let (read, write) = pipe();
        let mut reader = IdlePipe::new(read, Some(timeout)).unwrap();
        fails_in_time(timeout, move || {
            let _held_open = write;
            reader.read(&mut [0; 16]).map(drop)
        });
        let err = IdleTimeout { timeout: Duration::from_secs(300) };
        assert_eq!(err.to_string(), "no progress for 300 s (--idle-timeout)");
    }

    #[test]
    fn a_writer_whose_peer_never_reads_times_out_even_inside_one_large_write() {
        let timeout = Duration::from_millis(500);
        // Many small writes until the pipe is full.
        let (read, write) = pipe();
        let mut writer = IdlePipe::new(write, Some(timeout)).unwrap();
        fails_in_time(timeout, move || {
            let _held_open = read;
            loop {
                writer.write_all(&[7; 1000])?;
            }
        });
        // One write_all of 4 MiB into a 64 KiB pipe.
        let (read, write) = pipe();
        let mut writer = IdlePipe::new(write, Some(timeout)).unwrap();
        fails_in_time(timeout, move || {
            let _held_open = read;
            writer.write_all(&pattern(4 << 20))
        });
        // The same through a shared blocking descriptor (the stdio fallback): capped writes never block.
        let (read, write) = pipe();
        let mut writer = IdlePipe {
            file: write,
            waiting: Waiting::PollFirst { pipe: true },
            timeout: None,
            cancel: None,
            activity: None,
        };
        writer.set_timeout(Some(timeout));
        assert_eq!(writer.timeout(), Some(timeout));
        fails_in_time(timeout, move || {
            let _held_open = read;
            let mut slices = [IoSlice::new(&[1; 100]), IoSlice::new(&[2; 1 << 20])];
            let mut slices = &mut slices[..];
            loop {
                let n = writer.write_vectored(slices)?;
                IoSlice::advance_slices(&mut slices, n);
            }
        });
    }

    #[test]
    fn a_cancel_wakes_a_blocked_reader_and_a_blocked_writer() {
        let cancel = Cancel::new();
        let (read, write_held) = pipe();
        let mut reader = IdlePipe::new(read, None).unwrap().with_cancel(cancel.clone());
        let (read_held, write) = pipe();
        let mut writer = IdlePipe::new(write, None).unwrap().with_cancel(cancel.clone());
        let (sender, receiver) = mpsc::channel();
        let reader_sender = sender.clone();
        thread::spawn(move || {
            let _ = reader_sender.send(("reader", reader.read(&mut [0; 16]).map(drop), Instant::now()));
        });
        thread::spawn(move || {
            let _ = sender.send(("writer", writer.write_all(&pattern(4 << 20)), Instant::now()));
        });
        thread::sleep(Duration::from_millis(300));
        assert!(receiver.try_recv().is_err(), "both are still blocked");
        let fired = Instant::now();
        cancel.cancel();
        for _ in 0..2 {
            let (who, result, ended) = receiver.recv_timeout(Duration::from_secs(2)).expect("woke in time");
            assert_cancelled(&result.expect_err(who));
            let after = ended.duration_since(fired);
            assert!(after < Duration::from_millis(600), "{who} woke {after:?} after the cancel");
        }
        drop((write_held, read_held));
    }

    #[test]
    fn after_a_cancel_a_last_write_goes_through_without_it() {
        let cancel = Cancel::new();
        cancel.cancel();
        let (mut read, write) = pipe();
        let mut writer = IdlePipe::new(write, None).unwrap().with_cancel(cancel);
        assert_cancelled(&writer.write(b"more").unwrap_err());
        writer.set_cancel(None);
        writer.set_timeout(Some(Duration::from_millis(100)));
        writer.write_all(b"broken").unwrap();
        drop(writer);
        let mut got = Vec::new();
        read.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"broken");
    }

    #[test]
    fn stdio_on_a_pipe_leaves_the_shared_description_blocking_and_still_times_out() {
        let timeout = Duration::from_millis(500);
        let (read, write) = pipe();
        let mut reader = IdlePipe::stdio(read.try_clone().unwrap(), Some(timeout), End::Read).unwrap();
        let mut writer = IdlePipe::stdio(write.try_clone().unwrap(), Some(timeout), End::Write).unwrap();
        assert!(!is_nonblocking(&read) && !is_nonblocking(&write), "the shared descriptions are untouched");
        assert_eq!(reader.waiting, Waiting::NonBlocking);
        assert_eq!(writer.waiting, Waiting::NonBlocking);
        assert!(is_nonblocking(reader.get_ref()) && is_nonblocking(writer.get_ref()));
        // Our own descriptions have the same access mode.
        let access = |file: &File| OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL).unwrap()) & OFlag::O_ACCMODE;
        assert_eq!(access(reader.get_ref()), OFlag::O_RDONLY);
        assert_eq!(access(writer.get_ref()), OFlag::O_WRONLY);
        // Data still flows, both ways through the originals.
        writer.write_all(b"through our own description").unwrap();
        let mut got = [0; 27];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through our own description");
        (&write).write_all(b"via the original").unwrap();
        let mut got = [0; 16];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"via the original");
        // And both directions time out on a stalled peer.
        fails_in_time(timeout, move || reader.read(&mut [0; 16]).map(drop));
        fails_in_time(timeout, move || writer.write_all(&pattern(4 << 20)));
        assert!(!is_nonblocking(&read) && !is_nonblocking(&write));
    }

    #[test]
    fn stdio_on_a_regular_file_is_plain_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let payload = pattern(300_000);
        let mut writer =
            IdlePipe::stdio(File::create(&path).unwrap(), Some(Duration::from_millis(100)), End::Write).unwrap();
        assert_eq!(writer.waiting, Waiting::Never);
        writer.write_all(&payload).unwrap();
        writer.flush().unwrap();
        assert!(!is_nonblocking(writer.get_ref()));
        drop(writer.into_inner());
        let mut reader =
            IdlePipe::stdio(File::open(&path).unwrap(), Some(Duration::from_millis(100)), End::Read).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert!(got == payload);
        assert_eq!(reader.read(&mut [0; 8]).unwrap(), 0);
    }

    #[test]
    fn stdio_on_a_socket_is_non_blocking_per_call_and_times_out_both_ways() {
        let timeout = Duration::from_millis(500);
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(ours));
        // A writer whose peer never reads: one large write must not block past the deadline (MSG_DONTWAIT).
        let mut writer = IdlePipe::stdio(file.try_clone().unwrap(), Some(timeout), End::Write).unwrap();
        assert_eq!(writer.waiting, Waiting::Socket);
        let held = peer.try_clone().unwrap();
        fails_in_time(timeout, move || {
            let _held_open = held;
            writer.write_all(&vec![7u8; 4 << 20])
        });
        let mut drained = vec![0u8; 8 << 20];
        peer.set_nonblocking(true).unwrap();
        while (&peer).read(&mut drained).is_ok_and(|n| n > 0) {}
        peer.set_nonblocking(false).unwrap();
        let mut reader = IdlePipe::stdio(file.try_clone().unwrap(), Some(timeout), End::Read).unwrap();
        assert_eq!(reader.waiting, Waiting::Socket);
        assert!(!is_nonblocking(reader.get_ref()));
        (&peer).write_all(b"hi").unwrap();
        let mut got = [0; 2];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        fails_in_time(timeout, move || {
            let _held_open = peer;
            reader.read(&mut [0; 16]).map(drop)
        });
    }

    #[test]
    fn pipes_sharing_an_activity_time_out_only_when_none_moves() {
        let timeout = Duration::from_millis(600);
        let activity = Arc::new(Activity::new());
        let (quiet_read, quiet_write) = pipe();
        let (busy_read, busy_write) = pipe();
        let mut quiet = IdlePipe::new(quiet_read, Some(timeout)).unwrap().with_activity(Arc::clone(&activity));
        let mut busy_reader = IdlePipe::new(busy_read, Some(timeout)).unwrap().with_activity(Arc::clone(&activity));
        let busy = thread::spawn(move || {
            // The other pipe moves a byte every 100 ms for 1.5 s (well past one timeout), then stops.
            let mut writer = busy_write;
            for _ in 0..15 {
                writer.write_all(b"x").unwrap();
                thread::sleep(Duration::from_millis(100));
            }
            writer
        });
        let drain = thread::spawn(move || {
            let mut byte = [0u8; 1];
            for _ in 0..15 {
                busy_reader.read_exact(&mut byte).unwrap();
            }
        });
        let started = Instant::now();
        let err = bounded(Duration::from_secs(10), move || {
            let _held_open = quiet_write;
            quiet.read(&mut [0; 1]).unwrap_err()
        });
        let waited = started.elapsed();
        assert_timed_out(&err, timeout);
        assert!(waited >= Duration::from_millis(1500), "not while the other pipe moved: {waited:?}");
        assert!(waited < Duration::from_millis(1500) + timeout + Duration::from_secs(1), "{waited:?}");
        drain.join().unwrap();
        drop(busy.join().unwrap());
    }

    #[test]
    fn eof_is_ok_zero_when_the_writer_closes() {
        for stdio in [false, true] {
            let (read, write) = pipe();
            let timeout = Some(Duration::from_secs(5));
            let mut reader =
                if stdio { IdlePipe::stdio(read, timeout, End::Read) } else { IdlePipe::new(read, timeout) }.unwrap();
            let mut writer = IdlePipe::new(write, timeout).unwrap();
            let got = bounded(Duration::from_secs(5), move || {
                let late = thread::spawn(move || {
                    thread::sleep(Duration::from_millis(100));
                    writer.write_all(b"abc").unwrap();
                });
                let mut got = [0; 3];
                reader.read_exact(&mut got).unwrap();
                late.join().unwrap();
                (got, reader.read(&mut [0; 8]).unwrap(), reader.read(&mut [0; 8]).unwrap())
            });
            assert_eq!(got, (*b"abc", 0, 0), "stdio: {stdio}");
        }
    }

    #[test]
    fn a_write_after_the_reader_left_is_a_broken_pipe() {
        let (read, write) = pipe();
        let mut writer = IdlePipe::new(write, Some(Duration::from_secs(5))).unwrap();
        drop(read);
        let err = bounded(Duration::from_secs(5), move || writer.write(b"x").unwrap_err());
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    }
}
