//! Helpers shared by every integration test: scratch directories, a short-read reader, the real tools.

#![allow(dead_code)]

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

/// A reader that returns between 1 and `max` bytes per `read()`, chosen by a seeded generator, to flush out
/// partial-read bugs (tar-rs' `RandomReader`).
pub struct ShortReader<R> {
    inner: R,
    max: usize,
    state: u64,
}

impl<R: Read> ShortReader<R> {
    /// Wraps `inner`; `seed` makes the read sizes reproducible.
    pub fn new(inner: R, max: usize, seed: u64) -> ShortReader<R> {
        ShortReader { inner, max: max.max(1), state: seed | 1 }
    }

    fn next_len(&mut self) -> usize {
        // xorshift64: enough to vary read sizes, reproducible from the seed.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % self.max as u64) as usize
    }
}

impl<R: Read> Read for ShortReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = self.next_len().min(buf.len());
        self.inner.read(&mut buf[..len])
    }
}

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
    let child = spawn(command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()));
    let name = child.name().to_owned();
    let output = child.wait_output(timeout);
    assert!(
        output.status.success(),
        "{name} failed with {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

// ---------------------------------------------------------------------------------------------------------------
// Waiting with a deadline: every wait on a child process or a thread goes through these.

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

/// Waits for `path` to exist (a pipe the producer or consumer makes), polling every 10 ms, for at most `timeout`.
pub fn wait_for_path(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {timeout:?}", path.display());
        thread::sleep(Duration::from_millis(10));
    }
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

/// Runs a producer whose stream goes to /dev/null through a pipe (as a consumer would read it); asserts success
/// and returns the number of bytes streamed.
pub fn run_to_null(command: &mut Command) -> u64 {
    let mut child = spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let mut stdout = child.stdout();
    let drain = spawn_named("stdout drain", move || io::copy(&mut stdout, &mut io::sink()).expect("drain STDOUT"));
    let output = child.wait_output(LONG);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    join_within(drain, SHORT)
}

/// Deterministic pseudo-random bytes (a cheap LCG stream), for file contents.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(&state.to_le_bytes()[..(len - out.len()).min(8)]);
    }
    out
}

/// Every regular file under `root`, as (relative path, contents), sorted by path.
pub fn read_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let relative = entry.path().strip_prefix(root).unwrap().to_path_buf();
                files.push((relative, std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Runs a producer whose stream is piped back: once its first `first_bytes` have arrived (so the scan is done and
/// copying has begun), runs `meanwhile`, then collects the whole stream. Returns (exit status, stream, stderr).
///
/// Nothing more is read from the pipe until `meanwhile` has returned, so back-pressure holds the producer meanwhile:
/// it cannot have read more of its source than `first_bytes` plus what its pipe, its write-coalescing buffer and its
/// buffer pool hold (with `--pipe-buffer-size 64K --memory-limit 64K` and 4 KiB chunks, under 400 KiB). A change
/// `meanwhile` makes beyond that point is certain to happen before the producer gets there: no timing involved.
pub fn produce_with_change(
    command: &mut Command,
    first_bytes: usize,
    meanwhile: impl FnOnce(),
) -> (ExitStatus, Vec<u8>, String) {
    let mut child = spawn(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let mut stdout = child.stdout();
    let (arrived, first) = mpsc::channel();
    let (go, proceed) = mpsc::channel::<()>();
    let reader = spawn_named("stream reader", move || -> io::Result<Vec<u8>> {
        let mut stream = vec![0u8; first_bytes];
        let result = stdout.read_exact(&mut stream);
        let failed = result.is_err();
        let _ = arrived.send(result);
        if failed {
            return Ok(Vec::new());
        }
        // Hold the pipe still until `meanwhile` is done (or the test gave up: then the sender is gone).
        let _ = proceed.recv();
        stdout.read_to_end(&mut stream)?;
        Ok(stream)
    });
    match first.recv_timeout(SHORT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let output = child.wait_output(SHORT);
            panic!(
                "the stream ended before its first {first_bytes} bytes ({e}): {}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(_) => panic!("the first {first_bytes} bytes of the stream did not arrive within {SHORT:?}"),
    }
    meanwhile();
    go.send(()).expect("the stream reader waits for the go");
    let output = child.wait_output(LONG);
    let stream = join_within(reader, SHORT).expect("read the stream");
    (output.status, stream, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A `producer` command (the binary built with these tests).
pub fn producer() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(env!("CARGO_BIN_EXE_producer"));
    command.timeout(LONG);
    command
}

/// A `consumer` command (the binary built with these tests).
pub fn consumer() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(env!("CARGO_BIN_EXE_consumer"));
    command.timeout(LONG);
    command
}

/// Writes `files` (relative path, contents) under `root`, creating directories.
pub fn write_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (path, data) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, data).unwrap();
    }
}

/// A small mixed tree: an empty file, a 1-byte file, files around the chunk size, a nested directory.
pub fn sample_files(chunk: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("one", vec![42]),
        ("ibdata1", pseudo_random_bytes(3 * chunk + 17, 1)),
        ("exact", pseudo_random_bytes(chunk, 2)),
        ("less", pseudo_random_bytes(chunk - 1, 3)),
        ("more", pseudo_random_bytes(chunk + 1, 4)),
        ("db/t1.ibd", pseudo_random_bytes(2 * chunk, 5)),
        ("db/t1.frm", b"frm".to_vec()),
    ]
}

/// Runs the real `mbstream -x -C out` on `stream` and returns its output, whatever its outcome.
pub fn mbstream_x(stream: &[u8], out: &Path) -> Output {
    std::fs::create_dir_all(out).unwrap();
    let mut child =
        spawn(Command::new(tool("mbstream")).args(["-x", "-C"]).arg(out).stdin(Stdio::piped()).stderr(Stdio::piped()));
    let feeder = child.feed_stdin(stream.to_vec());
    let output = child.wait_output(LONG);
    // A failed write only means mbstream stopped reading; its exit status is the verdict.
    let _ = join_within(feeder, SHORT);
    output
}

/// Extracts an xbstream with the real `mbstream -x` into `out`, asserting it succeeds with nothing on stderr.
pub fn mbstream_extract(stream: &[u8], out: &Path) {
    let output = mbstream_x(stream, out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "mbstream -x: {}\n{stderr}", output.status);
}

/// The manifest in an extracted or copied tree.
pub fn read_manifest(dir: &Path) -> proto::Manifest {
    let bytes = std::fs::read(dir.join(proto::MANIFEST_NAME)).expect("the manifest is present");
    proto::Manifest::from_json(&bytes).unwrap()
}

/// Every regular file under `root`, as a relative path, sorted.
pub fn list_tree(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Whether two files hold the same bytes (compared 1 MiB at a time: the trees of the big tests are hundreds of MB).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    if fb.metadata().unwrap().len() != len {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// Asserts that `out` holds exactly the files of `src` plus the producer's own manifest files and stream markers
/// (which `mbstream -x` extracts too), byte for byte.
pub fn assert_same_tree(src: &Path, out: &Path) {
    let meta = [proto::MANIFEST_NAME, proto::SHA1SUMS_NAME];
    let is_meta =
        |p: &Path| meta.iter().any(|m| p.as_os_str() == *m) || proto::is_marker_name(p.as_os_str().as_encoded_bytes());
    let restored: Vec<_> = list_tree(out).into_iter().filter(|p| !is_meta(p)).collect();
    let original = list_tree(src);
    assert_eq!(restored, original, "the same file names");
    for path in &original {
        assert!(same_contents(&src.join(path), &out.join(path)), "{} differs", path.display());
    }
}

/// Parses a `--stats-json` file.
pub fn read_stats(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs producer → consumer through `pipes` named pipes (0: STDOUT → STDIN) and returns the consumer's stderr.
pub fn round_trip(src: &Path, out: &Path, pipes: usize, producer_args: &[&str], consumer_args: &[&str]) -> String {
    let mut producer_command = Command::new(env!("CARGO_BIN_EXE_producer"));
    producer_command.arg("--source").arg(src).arg("--stream=xbstream").args(producer_args).stderr(Stdio::piped());
    let mut consumer_command = Command::new(env!("CARGO_BIN_EXE_consumer"));
    consumer_command.arg("extract").arg("-C").arg(out).args(consumer_args).stderr(Stdio::piped());
    let (producer_output, consumer_output) = if pipes == 0 {
        let mut producer = spawn(producer_command.stdout(Stdio::piped()));
        let consumer = spawn(consumer_command.stdin(producer.stdout()));
        (producer.wait_output(LONG), consumer.wait_output(LONG))
    } else {
        let fifo_dir = out.with_extension("fifos");
        let count = pipes.to_string();
        let fifo_args = ["--fifo-streams", &count, "--fifo-timeout", "30"];
        let consumer = spawn(consumer_command.args(fifo_args).arg("--fifo-dir").arg(&fifo_dir));
        let producer = spawn(producer_command.args(fifo_args).arg("--fifo-dir").arg(&fifo_dir));
        let outputs = (producer.wait_output(LONG), consumer.wait_output(LONG));
        assert_eq!(std::fs::read_dir(&fifo_dir).unwrap().count(), 0, "pipes are removed");
        outputs
    };
    let consumer_stderr = String::from_utf8_lossy(&consumer_output.stderr).into_owned();
    assert!(producer_output.status.success(), "producer: {}", String::from_utf8_lossy(&producer_output.stderr));
    assert!(consumer_output.status.success(), "consumer: {consumer_stderr}");
    consumer_stderr
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

/// `producer --source SRC --stream=xbstream` with `extra` arguments, writing `count` pipes in `fifo_dir` (30 s open
/// timeout), STDERR piped: the producer half of a pipe test.
pub fn producer_on_pipes(src: &Path, count: usize, fifo_dir: &Path, extra: &[&str]) -> Running {
    spawn(
        Command::new(env!("CARGO_BIN_EXE_producer"))
            .arg("--source")
            .arg(src)
            .arg("--stream=xbstream")
            .args(extra)
            .args(["--fifo-streams", &count.to_string(), "--fifo-timeout", "30", "--fifo-dir"])
            .arg(fifo_dir)
            .stderr(std::process::Stdio::piped()),
    )
}

/// Runs the producer on `src` into `count` pipes (`extra` arguments) and returns what each pipe carried (each read
/// whole by a thread of its own).
pub fn produce_pipes(src: &Path, count: usize, extra: &[&str]) -> Vec<Vec<u8>> {
    let work = tempfile::tempdir().unwrap();
    let fifo_dir = work.path().join("fifos");
    let producer = producer_on_pipes(src, count, &fifo_dir, extra);
    let readers: Vec<_> = (0..count)
        .map(|i| {
            let path = fifo_dir.join(format!("thread_{i}"));
            spawn_named("pipe reader", move || {
                wait_for_path(&path, SHORT);
                std::fs::read(&path).unwrap()
            })
        })
        .collect();
    let output = producer.wait_output(LONG);
    assert!(output.status.success(), "producer: {}", String::from_utf8_lossy(&output.stderr));
    readers.into_iter().map(|reader| join_within(reader, SHORT)).collect()
}

/// `consumer ARGS…` (e.g. `extract -C OUT`, `put NAME --storage URL`) reading or writing `count` pipes in
/// `fifo_dir` (30 s open timeout), STDERR piped: the consumer half of a pipe test.
pub fn consumer_on_pipes<S: AsRef<std::ffi::OsStr>>(args: &[S], count: usize, fifo_dir: &Path) -> Running {
    spawn(
        Command::new(env!("CARGO_BIN_EXE_consumer"))
            .args(args)
            .args(["--fifo-streams", &count.to_string(), "--fifo-timeout", "30", "--fifo-dir"])
            .arg(fifo_dir)
            .stderr(std::process::Stdio::piped()),
    )
}

/// `producer` on `src` (`producer_args`) into `count` pipes in `fifo_dir`, read by `consumer ARGS` (a `put`, with
/// its storage options), run together; asserts both succeed and returns the consumer's STDERR.
pub fn put_from_pipes<S: AsRef<std::ffi::OsStr>>(
    src: &Path,
    producer_args: &[&str],
    args: &[S],
    count: usize,
    fifo_dir: &Path,
) -> String {
    let put = consumer_on_pipes(args, count, fifo_dir);
    let produced = producer_on_pipes(src, count, fifo_dir, producer_args).wait_output(LONG);
    assert!(produced.status.success(), "producer: {}", String::from_utf8_lossy(&produced.stderr));
    let put = put.wait_output(LONG);
    let stderr = String::from_utf8_lossy(&put.stderr).into_owned();
    assert!(put.status.success(), "consumer put failed with {}\nstderr:\n{stderr}", put.status);
    stderr
}

/// `consumer ARGS` (a `get`, with its storage options) into `count` pipes in `fifo_dir`, read by `consumer extract
/// -C out`, run together; asserts both succeed.
pub fn get_into_pipes_and_extract<S: AsRef<std::ffi::OsStr>>(args: &[S], count: usize, fifo_dir: &Path, out: &Path) {
    let extract = consumer_on_pipes(&["extract".as_ref(), "-C".as_ref(), out.as_os_str()], count, fifo_dir);
    let got = consumer_on_pipes(args, count, fifo_dir).wait_output(LONG);
    assert!(got.status.success(), "consumer get: {}", String::from_utf8_lossy(&got.stderr));
    let extracted = extract.wait_output(LONG);
    assert!(extracted.status.success(), "consumer extract: {}", String::from_utf8_lossy(&extracted.stderr));
}

/// Pack `seq` of stream `stream` of backup `name` in a store kept in directory `root` (a `file://` store, or an S3
/// server's bucket directory), whichever put stored it: `root/<name>/<put>/<stream>/<seq>.xbs`.
pub fn stored_pack(root: &Path, name: &str, stream: usize, seq: u64) -> Option<PathBuf> {
    let puts = std::fs::read_dir(root.join(name)).ok()?;
    puts.filter_map(Result::ok)
        .map(|put| put.path().join(stream.to_string()).join(format!("{seq:010}.xbs")))
        .find(|pack| pack.is_file())
}

/// Every pack of stream `stream` of backup `name` in a store kept in directory `root` (see [`stored_pack`]).
pub fn stored_packs(root: &Path, name: &str, stream: usize) -> Vec<PathBuf> {
    match stored_pack(root, name, stream, 0) {
        Some(first) => list_tree(first.parent().expect("a pack has a directory")),
        None => Vec::new(),
    }
}

/// Whether an extraction into `out` has staged at least one file (in `OUT/.xbkit-partial-<pid>/`): the event that
/// says a run is under way.
pub fn has_staged_a_file(out: &Path) -> bool {
    std::fs::read_dir(out)
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(|entry| entry.ok())
        .is_some_and(|staging| std::fs::read_dir(staging.path()).is_ok_and(|mut files| files.next().is_some()))
}

/// Sends `signal` (`"TERM"`, `"KILL"`, …) to the child.
pub fn send_signal(child: &Running, signal: &str) {
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(sent.success(), "kill -{signal} {}", child.name());
}

/// A port nobody listens on right now (bound on 127.0.0.1 with port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A base port `p` such that `p ..= p + count` are all free on 127.0.0.1 right now (for a recipe that uses
/// consecutive ports).
pub fn free_port_run(count: u16) -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut seed = std::process::id() as u64 ^ now.as_nanos() as u64;
    for _ in 0..200 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let base = 20000 + (seed >> 33) as u16 % 20000;
        let bound: Vec<_> =
            (0..=count).map_while(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if bound.len() == count as usize + 1 {
            return base;
        }
    }
    panic!("no {} consecutive free ports on 127.0.0.1", count + 1);
}

/// `consumer ARGS` with `stream` on STDIN.
pub fn consume(args: &[&str], stream: &[u8]) -> Output {
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_consumer"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let feeder = child.feed_stdin(stream.to_vec());
    let output = child.wait_output(LONG);
    // A write error only means the consumer stopped reading; its exit status is the verdict.
    let _ = join_within(feeder, SHORT);
    output
}

// ---------------------------------------------------------------------------------------------------------------
// Servers the tests start (an S3 server, the cloud emulators), and the consumer's store commands.

/// A server process on 127.0.0.1: a free port, a temporary directory (its data, and `server.log` with its output),
/// killed and reaped when dropped.
pub struct LocalServer {
    // Declared first so that it is dropped (killed) before its directory is removed.
    process: Running,
    /// The port it listens on.
    pub port: u16,
    /// Its directory.
    pub dir: tempfile::TempDir,
}

impl LocalServer {
    /// Starts `make(port, dir)` (with its output in `dir/server.log`) and waits (polling a connect, with a
    /// deadline) until it accepts connections. The port is picked by binding port 0 and releasing it; if another
    /// process takes it meanwhile the server exits, and it is started again on another port (a few times).
    pub fn start(name: &str, make: impl Fn(u16, &Path) -> Command) -> LocalServer {
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let log_path = dir.path().join("server.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let port = free_port();
            let process =
                spawn(make(port, dir.path()).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log));
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(30);
            let ready = loop {
                if has_exited(process.id()) {
                    break false;
                }
                if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                    // Connected: to our server, unless it lost the port to someone else and is exiting.
                    break !has_exited(process.id());
                }
                assert!(Instant::now() < deadline, "{name} did not accept connections on {address} within 30 s");
                thread::sleep(Duration::from_millis(10));
            };
            if ready {
                return LocalServer { process, port, dir };
            }
            failures.push(format!("port {port}: {}", std::fs::read_to_string(&log_path).unwrap_or_default()));
        }
        panic!("{name} did not start:\n{}", failures.join("\n"));
    }

    /// Kills the server at once (SIGKILL), as a crash would; its directory stays until it is dropped.
    pub fn kill(&self) {
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
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

/// A `consumer` command (std, for running beside another process) with its STDERR piped.
pub fn consumer_command(args: &[&str], storage: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consumer"));
    command.args(args).args(storage).stderr(Stdio::piped());
    command
}

/// Runs `consumer ARGS STORAGE` with STDIN from `stdin` (or nothing) to completion; returns its output.
pub fn run_consumer(args: &[&str], storage: &[String], stdin: Option<&Path>) -> Output {
    let mut command = consumer_command(args, storage);
    command.stdout(Stdio::piped());
    match stdin {
        Some(path) => command.stdin(std::fs::File::open(path).unwrap()),
        None => command.stdin(Stdio::null()),
    };
    spawn(&mut command).wait_output(LONG)
}

/// Asserts that `output` is a success; returns its STDERR.
pub fn assert_success(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{what} failed with {}\nstderr:\n{stderr}", output.status);
    stderr
}

/// Asserts that `output` is exit 1; returns its STDERR.
pub fn assert_failure(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{what} must fail with exit 1\nstderr:\n{stderr}");
    stderr
}

/// `consumer list --json`: the backups in the store.
pub fn list_json(storage: &[String]) -> Vec<serde_json::Value> {
    let output = run_consumer(&["list", "--json"], storage, None);
    assert_success(&output, "consumer list --json");
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
        .as_array()
        .expect("list --json is an array")
        .clone()
}

/// The entry for backup `name` in a `list --json`.
pub fn listed<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("{name} is not listed: {list:?}"))
}
