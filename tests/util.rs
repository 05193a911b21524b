//! Helpers shared by every integration test: scratch directories, a short-read reader, the real tools.

#![allow(dead_code)]

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs a command to completion, asserting success, and returns its stdout.
pub fn run_ok(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
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
pub fn produce_with_change(
    command: &mut Command,
    first_bytes: usize,
    meanwhile: impl FnOnce(),
) -> (std::process::ExitStatus, Vec<u8>, String) {
    use std::io::Read as _;
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stream = vec![0u8; first_bytes];
    stdout.read_exact(&mut stream).unwrap();
    meanwhile();
    stdout.read_to_end(&mut stream).unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status, stream, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A `producer` command (the binary built with these tests).
pub fn producer() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(env!("CARGO_BIN_EXE_producer"));
    command.timeout(std::time::Duration::from_secs(120));
    command
}

/// A `consumer` command (the binary built with these tests).
pub fn consumer() -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(env!("CARGO_BIN_EXE_consumer"));
    command.timeout(std::time::Duration::from_secs(120));
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

/// Extracts an xbstream with the real `mbstream -x` into `out`, asserting it succeeds with nothing on stderr.
pub fn mbstream_extract(stream: &[u8], out: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(out).unwrap();
    let mut child = Command::new(tool("mbstream"))
        .args(["-x", "-C"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stream).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "mbstream -x: {}\n{stderr}", output.status);
}

/// The manifest in an extracted or copied tree.
pub fn read_manifest(dir: &Path) -> proto::Manifest {
    let bytes = std::fs::read(dir.join(proto::MANIFEST_NAME)).expect("the manifest is present");
    proto::Manifest::from_json(&bytes).unwrap()
}

/// Asserts that `out` holds exactly the files of `src` plus the producer's own manifest files and stream markers
/// (which `mbstream -x` extracts too), byte for byte.
pub fn assert_same_tree(src: &Path, out: &Path) {
    let meta = [proto::MANIFEST_NAME, proto::manifest::SHA1SUMS_NAME];
    let is_meta = |p: &Path| {
        meta.iter().any(|m| p.as_os_str() == *m) || proto::marker::is_marker_name(p.as_os_str().as_encoded_bytes())
    };
    let restored: Vec<_> = read_tree(out).into_iter().filter(|(p, _)| !is_meta(p)).collect();
    let original = read_tree(src);
    assert_eq!(restored.len(), original.len(), "file count");
    for ((a, da), (b, db)) in original.iter().zip(&restored) {
        assert_eq!(a, b);
        assert!(da == db, "{} differs", a.display());
    }
}

/// Parses a `--stats-json` file.
pub fn read_stats(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs producer → consumer through `pipes` named pipes (0: STDOUT → STDIN) and returns the consumer's stderr.
pub fn round_trip(src: &Path, out: &Path, pipes: usize, producer_args: &[&str], consumer_args: &[&str]) -> String {
    let mut producer_command = Command::new(env!("CARGO_BIN_EXE_producer"));
    producer_command
        .arg("--source")
        .arg(src)
        .arg("--stream=xbstream")
        .args(producer_args)
        .stderr(std::process::Stdio::piped());
    let mut consumer_command = Command::new(env!("CARGO_BIN_EXE_consumer"));
    consumer_command.arg("extract").arg("-C").arg(out).args(consumer_args).stderr(std::process::Stdio::piped());
    let (producer_output, consumer_output) = if pipes == 0 {
        let mut producer = producer_command.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let consumer = consumer_command.stdin(producer.stdout.take().unwrap()).spawn().unwrap();
        (producer.wait_with_output().unwrap(), consumer.wait_with_output().unwrap())
    } else {
        let fifo_dir = out.with_extension("fifos");
        let count = pipes.to_string();
        let fifo_args = ["--fifo-streams", &count, "--fifo-timeout", "30"];
        let consumer = consumer_command.args(fifo_args).arg("--fifo-dir").arg(&fifo_dir).spawn().unwrap();
        let producer = producer_command.args(fifo_args).arg("--fifo-dir").arg(&fifo_dir).spawn().unwrap();
        let outputs = (producer.wait_with_output().unwrap(), consumer.wait_with_output().unwrap());
        assert_eq!(std::fs::read_dir(&fifo_dir).unwrap().count(), 0, "pipes are removed");
        outputs
    };
    let consumer_stderr = String::from_utf8_lossy(&consumer_output.stderr).into_owned();
    assert!(producer_output.status.success(), "producer: {}", String::from_utf8_lossy(&producer_output.stderr));
    assert!(consumer_output.status.success(), "consumer: {consumer_stderr}");
    consumer_stderr
}
