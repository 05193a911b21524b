//! Running children and threads with a deadline: every wait in the tests goes through these, so a hang fails the
//! test naming what hung (and kills it) instead of stalling CI. Also the small checks of a finished run (its exit
//! status and STDERR) and the real tools the tests need.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// Deadline for a small run (a few MB, a tool on a sample tree): a hang fails the test instead of stalling CI.
pub const SHORT: Duration = Duration::from_secs(30);

/// Deadline for a run that moves hundreds of MB (a round trip, the memory tests).
pub const LONG: Duration = Duration::from_secs(120);

/// Path of a real tool the tests need; fails the test (never skips it) when the tool is not installed.
pub fn tool(name: &str) -> PathBuf {
    for dir in std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default() {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run .ci/run (or `apt-get install mariadb-backup zstd`) first");
}

/// Runs a command to completion within `timeout`, asserting success, and returns its stdout.
pub fn run_ok(command: &mut Command, timeout: Duration) -> Vec<u8> {
    run_ok_output(command, timeout).stdout
}

/// [`run_ok`] that returns the whole output (STDOUT and STDERR), for a test that checks what a successful run said.
pub fn run_ok_output(command: &mut Command, timeout: Duration) -> Output {
    let child = spawn(command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()));
    let name = child.name().to_owned();
    let output = child.wait_output(timeout);
    assert!(
        output.status.success(),
        "{name} failed with {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `command` with `input` written to its STDIN (on a thread) and its STDOUT and STDERR piped, within
/// [`LONG`]; returns its output whatever its outcome. A failed write only means that the command stopped reading
/// (a refused stream): its exit status is the verdict.
pub fn run_with_stdin(command: &mut Command, input: &[u8]) -> Output {
    let mut child = spawn(command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()));
    let feeder = child.feed_stdin(input.to_vec());
    let output = child.wait_output(LONG);
    let _ = join_within(feeder, SHORT);
    output
}

/// A finished run's STDERR, as text (lossy), for messages and `contains` checks.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that `output` is a success; returns its STDERR.
pub fn assert_success(output: &Output, what: &str) -> String {
    let stderr = stderr(output);
    assert!(output.status.success(), "{what} failed with {}\nstderr:\n{stderr}", output.status);
    stderr
}

/// Asserts that `output` is exit 1; returns its STDERR.
pub fn assert_failure(output: &Output, what: &str) -> String {
    let stderr = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{what} must fail with exit 1\nstderr:\n{stderr}");
    stderr
}

/// A child process, named by its command line for messages, whose STDERR (when piped) is read from the start on a
/// thread, so that a chatty child never blocks on a full pipe. Dropped before it was waited for (a test that failed
/// half-way), it is killed and reaped: no process outlives its test.
pub struct Running {
    child: Child,
    name: String,
    stderr: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
}

/// Spawns `command` (panicking with its command line if it cannot be started).
pub fn spawn(command: &mut Command) -> Running {
    let name = format!("{command:?}");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stderr = child.stderr.take().map(|stderr| read_on_thread(stderr, "stderr reader"));
    Running { child, name, stderr, status: None }
}

impl Running {
    /// The command line, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id (to signal it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's piped STDIN.
    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("STDIN is piped, and taken once")
    }

    /// The child's piped STDOUT.
    pub fn stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("STDOUT is piped, and taken once")
    }

    /// Writes `data` to the child's STDIN on a thread and closes it. The thread's result is the write's: an error
    /// (a broken pipe) usually means that the child stopped reading, and its exit status says why.
    pub fn feed_stdin(&mut self, data: Vec<u8>) -> JoinHandle<io::Result<()>> {
        let mut stdin = self.stdin();
        spawn_named("stdin writer", move || stdin.write_all(&data))
    }

    /// Waits for the child to exit. After `timeout` it is killed, and the test fails naming the command and
    /// showing what it wrote on STDERR.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        match self.child.wait_timeout(timeout).unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name)) {
            Some(status) => {
                self.status = Some(status);
                status
            }
            None => {
                self.kill();
                let stderr =
                    self.stderr.take().and_then(|h| try_join_within(h, Duration::from_secs(5))).unwrap_or_default();
                panic!(
                    "{} did not exit within {timeout:?} and was killed; its stderr:\n{}",
                    self.name,
                    String::from_utf8_lossy(&stderr)
                );
            }
        }
    }

    /// Like [`Child::wait_with_output`], within `timeout`: STDOUT (when piped and not taken) and STDERR are read on
    /// threads while the child runs.
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let stdout = self.child.stdout.take().map(|stdout| read_on_thread(stdout, "stdout reader"));
        let status = self.wait(timeout);
        // The child has exited, so its pipes are closed unless it left a process behind holding them.
        let rest = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        let stdout = stdout.map(|h| join_within(h, rest)).unwrap_or_default();
        let stderr = self.stderr.take().map(|h| join_within(h, rest)).unwrap_or_default();
        Output { status, stdout, stderr }
    }

    /// SIGTERM (a script gets to run its clean-up trap), then SIGKILL if it is still there 5 s later; reaps it.
    fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if let Ok(Some(status)) = self.child.wait_timeout(Duration::from_secs(5)) {
            self.status = Some(status);
            return;
        }
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.status = Some(status);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
        }
    }
}

/// Sends `signal` (`"TERM"`, `"KILL"`, …) to the child.
pub fn send_signal(child: &Running, signal: &str) {
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(sent.success(), "kill -{signal} {}", child.name());
}

/// Whether process `pid` (a child not yet reaped) has exited: a zombie, or gone. Reaping is left to its owner.
pub fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last ')' (comm may hold anything).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
    }
}

/// Spawns a named thread (the name appears when [`join_within`] gives up on it).
pub fn spawn_named<T: Send + 'static>(name: &str, body: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    thread::Builder::new().name(name.to_owned()).spawn(body).expect("spawn a test thread")
}

fn read_on_thread(mut from: impl Read + Send + 'static, name: &str) -> JoinHandle<Vec<u8>> {
    spawn_named(name, move || {
        let mut bytes = Vec::new();
        from.read_to_end(&mut bytes).expect("reading a child's output");
        bytes
    })
}

/// Joins `handle` within `timeout`, or fails the test naming the thread; a panic in the thread is passed on.
pub fn join_within<T: Send + 'static>(handle: JoinHandle<T>, timeout: Duration) -> T {
    let name = handle.thread().name().map_or_else(|| format!("{:?}", handle.thread().id()), str::to_owned);
    try_join_within(handle, timeout).unwrap_or_else(|| panic!("thread `{name}` did not finish within {timeout:?}"))
}

/// [`join_within`] that returns `None` on timeout (the thread is left running, detached).
fn try_join_within<T: Send + 'static>(handle: JoinHandle<T>, timeout: Duration) -> Option<T> {
    if handle.is_finished() {
        return Some(handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
    }
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(handle.join());
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(value)) => Some(value),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => None,
    }
}

/// Polls `condition` every 10 ms until it holds, failing the test (naming `what`) after `limit`: the one way the
/// tests wait for an event they cannot be told about (a file appearing, a pack stored, a process started).
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Opens the named pipe `path` for writing once a reader has it open, waiting at most `timeout` (a plain open would
/// block for ever if the reader died first). The descriptor returned blocks as usual.
pub fn open_pipe_for_writing(path: &Path, timeout: Duration) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opened = None;
    wait_until(timeout, &format!("a reader of {}", path.display()), || {
        opened = std::fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(path).ok();
        opened.is_some()
    });
    let pipe = opened.expect("opened above");
    let flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_GETFL).unwrap());
    nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETFL(flags - nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    pipe
}

/// Waits for `path` to exist (a pipe the producer or consumer makes), for at most `timeout`.
pub fn wait_for_path(path: &Path, timeout: Duration) {
    wait_until(timeout, &format!("{} to appear", path.display()), || path.exists());
}

/// Copies `from` to `to` in 256 KiB reads at no more than `bytes_per_second`: a downstream slower than the
/// producer (rate limiting, not synchronisation). Returns the bytes copied.
pub fn copy_at_rate(mut from: impl Read, mut to: impl Write, bytes_per_second: f64) -> io::Result<u64> {
    let started = Instant::now();
    let mut buffer = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
        total += n as u64;
        let due = started + Duration::from_secs_f64(total as f64 / bytes_per_second);
        if let Some(early) = due.checked_duration_since(Instant::now()) {
            thread::sleep(early);
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------------------------
// The deadline helpers themselves.

/// A child that hangs fails the wait within its deadline, is killed, and the message names the command.
#[test]
fn a_hung_child_fails_its_wait_and_is_killed() {
    let mut child = spawn(Command::new("sleep").arg("600").stderr(Stdio::piped()));
    let pid = nix::unistd::Pid::from_raw(child.child.id() as i32);
    let started = Instant::now();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child.wait(Duration::from_millis(200))))
        .expect_err("the wait gives up");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("\"sleep\" \"600\"") && message.contains("did not exit within"), "{message}");
    // Reaped: the pid is gone.
    assert_eq!(nix::sys::signal::kill(pid, None), Err(nix::errno::Errno::ESRCH));
}

/// A thread that never finishes fails the join within its deadline, naming the thread; a thread's panic passes on.
#[test]
fn a_stuck_thread_fails_its_join() {
    let (_keep, blocked) = mpsc::channel::<()>();
    let stuck = spawn_named("stuck on purpose", move || {
        let _ = blocked.recv();
    });
    let panic =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| join_within(stuck, Duration::from_millis(200))))
            .expect_err("gives up");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("stuck on purpose") && message.contains("did not finish within"), "{message}");
    let failing = spawn_named("failing", || panic!("the thread's own message"));
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| join_within(failing, SHORT)))
        .expect_err("the panic passes on");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the thread's own message"));
}
