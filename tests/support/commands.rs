//! The two binaries built with these tests, and the ways the tests run them: once to completion, beside each
//! other through STDOUT or named pipes, against the real `mbstream`. The only place that names the binaries
//! (`CARGO_BIN_EXE_*`): a test builds its command line from [`producer_command`] / [`consumer_command`] (or the
//! `assert_cmd` forms [`producer`] / [`consumer`]) and adds its own arguments.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;

use super::process::{
    join_within, run_ok, run_ok_output, run_with_stdin, spawn, spawn_named, tool, wait_for_path, Running, LONG, SHORT,
};

/// Path of the `producer` binary built with these tests (for a command line another program runs: `setpriv`,
/// `prlimit`, a script, a shell pipeline, a remote `ssh` command).
pub const PRODUCER: &str = env!("CARGO_BIN_EXE_producer");

/// Path of the `consumer` binary built with these tests (see [`PRODUCER`]).
pub const CONSUMER: &str = env!("CARGO_BIN_EXE_consumer");

/// A `producer` command to run once with `assert_cmd` (`.assert()`, `.write_stdin()`), with a [`LONG`] deadline.
pub fn producer() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(PRODUCER);
    command.timeout(LONG);
    command
}

/// A `consumer` command to run once with `assert_cmd` (`.assert()`, `.write_stdin()`), with a [`LONG`] deadline.
pub fn consumer() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(CONSUMER);
    command.timeout(LONG);
    command
}

/// A bare `producer` command (std), to [`spawn`] beside other processes or to run with [`super::run_ok`]; the
/// deadline is the waiter's.
pub fn producer_command() -> Command {
    Command::new(PRODUCER)
}

/// A bare `consumer` command (std), to [`spawn`] beside other processes or to run with [`super::run_ok`]; the
/// deadline is the waiter's.
pub fn consumer_command() -> Command {
    Command::new(CONSUMER)
}

/// `producer --source SRC --stream=xbstream`: one stream of `src` on STDOUT (or into pipes, with `--fifo-*`).
pub fn producer_to_stdout(src: &Path) -> Command {
    let mut command = producer_command();
    command.arg("--source").arg(src).arg("--stream=xbstream");
    command
}

/// `producer --source SRC --target-dir TARGET`: a plain directory copy of `src`.
pub fn producer_to_dir(src: &Path, target: &Path) -> Command {
    let mut command = producer_command();
    command.arg("--source").arg(src).arg("--target-dir").arg(target);
    command
}

/// Runs the producer on `src` to STDOUT (`extra` arguments after `--stream=xbstream`) within [`LONG`], asserting
/// that it succeeds; returns its output (the stream, and what it said on STDERR).
pub fn produce_output(src: &Path, extra: &[&str]) -> Output {
    run_ok_output(producer_to_stdout(src).args(extra), LONG)
}

/// Runs the producer on `src` to STDOUT (`extra` arguments), asserting that it succeeds; returns its stream.
pub fn produce(src: &Path, extra: &[&str]) -> Vec<u8> {
    produce_output(src, extra).stdout
}

/// `consumer ARGS` with `stream` on STDIN; returns its output, whatever its outcome.
pub fn consume(args: &[&str], stream: &[u8]) -> Output {
    run_with_stdin(consumer_command().args(args), stream)
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

/// Runs producer → consumer through `pipes` named pipes (0: STDOUT → STDIN) and returns the consumer's stderr.
pub fn round_trip(src: &Path, out: &Path, pipes: usize, producer_args: &[&str], consumer_args: &[&str]) -> String {
    let mut producer_command = producer_to_stdout(src);
    producer_command.args(producer_args).stderr(Stdio::piped());
    let mut consumer_command = consumer_command();
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

/// `producer --source SRC --stream=xbstream` with `extra` arguments, writing `count` pipes in `fifo_dir` (30 s open
/// timeout), STDERR piped: the producer half of a pipe test.
pub fn producer_on_pipes(src: &Path, count: usize, fifo_dir: &Path, extra: &[&str]) -> Running {
    spawn(
        producer_to_stdout(src)
            .args(extra)
            .args(["--fifo-streams", &count.to_string(), "--fifo-timeout", "30", "--fifo-dir"])
            .arg(fifo_dir)
            .stderr(Stdio::piped()),
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
pub fn consumer_on_pipes<S: AsRef<OsStr>>(args: &[S], count: usize, fifo_dir: &Path) -> Running {
    spawn(
        consumer_command()
            .args(args)
            .args(["--fifo-streams", &count.to_string(), "--fifo-timeout", "30", "--fifo-dir"])
            .arg(fifo_dir)
            .stderr(Stdio::piped()),
    )
}

/// `producer` on `src` (`producer_args`) into `count` pipes in `fifo_dir`, read by `consumer ARGS` (a `put`, with
/// its storage options), run together; asserts both succeed and returns the consumer's STDERR.
pub fn put_from_pipes<S: AsRef<OsStr>>(
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
pub fn get_into_pipes_and_extract<S: AsRef<OsStr>>(args: &[S], count: usize, fifo_dir: &Path, out: &Path) {
    let extract = consumer_on_pipes(&["extract".as_ref(), "-C".as_ref(), out.as_os_str()], count, fifo_dir);
    let got = consumer_on_pipes(args, count, fifo_dir).wait_output(LONG);
    assert!(got.status.success(), "consumer get: {}", String::from_utf8_lossy(&got.stderr));
    let extracted = extract.wait_output(LONG);
    assert!(extracted.status.success(), "consumer extract: {}", String::from_utf8_lossy(&extracted.stderr));
}

/// A key made by the real `age-keygen` in `dir`: its identity file, and its public recipient (`age1…`).
pub fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run_ok(Command::new(tool("age-keygen")).arg("-o").arg(&key), SHORT);
    let text = std::fs::read_to_string(&key).unwrap();
    let public = text.lines().find_map(|line| line.strip_prefix("# public key: ")).expect("age-keygen's public key");
    (key, public.trim().to_string())
}

/// Runs the real `mbstream -x -C out` on `stream` and returns its output, whatever its outcome.
pub fn mbstream_x(stream: &[u8], out: &Path) -> Output {
    std::fs::create_dir_all(out).unwrap();
    run_with_stdin(Command::new(tool("mbstream")).args(["-x", "-C"]).arg(out), stream)
}

/// Extracts an xbstream with the real `mbstream -x` into `out`, asserting it succeeds with nothing on stderr.
pub fn mbstream_extract(stream: &[u8], out: &Path) {
    let output = mbstream_x(stream, out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "mbstream -x: {}\n{stderr}", output.status);
}

/// Runs `consumer extract` (or `--list`: `out` = None) on `streams` fed through as many pipes; returns its output.
pub fn feed_pipes(streams: &[Vec<u8>], out: Option<&Path>, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let fifo_dir = dir.path().join("fifos");
    let mut command = consumer_command();
    command.arg("extract");
    match out {
        Some(out) => command.arg("-C").arg(out),
        None => command.arg("--list"),
    };
    let consumer = spawn(
        command
            .args(["--fifo-timeout", "30", "--fifo-streams", &streams.len().to_string(), "--fifo-dir"])
            .arg(&fifo_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let writers: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(i, stream)| {
            let path = fifo_dir.join(format!("thread_{i}"));
            let stream = stream.clone();
            spawn_named("pipe", move || {
                wait_for_path(&path, SHORT);
                // The consumer may fail (and close its end) before reading everything: that is fine here.
                if let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let _ = pipe.write_all(&stream);
                }
            })
        })
        .collect();
    let output = consumer.wait_output(LONG);
    for writer in writers {
        join_within(writer, SHORT);
    }
    assert!(!fifo_dir.exists() || std::fs::read_dir(&fifo_dir).unwrap().count() == 0, "pipes are removed");
    output
}
