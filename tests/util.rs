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
