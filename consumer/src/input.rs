//! Where streams come from: STDIN, or N named pipes opened (in parallel, each with a deadline) for reading.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use proto::fifo::{End, FifoSet};
use sha1::{Digest as _, Sha1};

/// The configured input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One stream on STDIN.
    Stdin,
    /// N streams on `dir/thread_<i>`.
    Fifos {
        /// The pipes' directory.
        dir: PathBuf,
        /// How many.
        count: usize,
        /// How long to wait for the producer to open each.
        timeout: Duration,
    },
}

impl Input {
    /// Number of streams.
    pub fn stream_count(&self) -> usize {
        match self {
            Input::Stdin => 1,
            Input::Fifos { count, .. } => *count,
        }
    }
}

/// One opened input stream.
#[derive(Debug)]
pub struct InputStream {
    /// `STDIN` or the pipe's path, for messages.
    pub name: String,
    /// The descriptor.
    pub file: File,
}

/// Opens every input. For pipes, creates any that are missing (the producer may start later) and waits for the
/// producer to open them all; the returned [`FifoSet`] removes them when dropped.
pub fn open_inputs(input: &Input) -> Result<(Vec<InputStream>, Option<FifoSet>)> {
    match input {
        Input::Stdin => {
            let fd = std::os::fd::AsFd::as_fd(&io::stdin()).try_clone_to_owned().context("cannot use STDIN")?;
            Ok((vec![InputStream { name: "STDIN".into(), file: File::from(fd) }], None))
        }
        Input::Fifos { dir, count, timeout } => {
            let set = FifoSet::create(dir, *count)?;
            let opened = set.open_all(End::Read, *timeout)?;
            let mut streams = Vec::with_capacity(*count);
            for (path, file) in set.paths().iter().zip(opened) {
                streams.push(InputStream { name: path.display().to_string(), file });
            }
            Ok((streams, Some(set)))
        }
    }
}

/// A `Read` that feeds every byte it returns into an optional SHA-1 (`--digest sha1`: the hash of each stream, to
/// compare with the producer's `--stats-json`).
pub struct HashingReader<R> {
    inner: R,
    sha1: Option<Sha1>,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`, hashing when `hash` is set.
    pub fn new(inner: R, hash: bool) -> HashingReader<R> {
        HashingReader { inner, sha1: hash.then(Sha1::new) }
    }

    /// The hex SHA-1 of everything read, if hashing.
    pub fn finish(self) -> Option<String> {
        self.sha1.map(|h| hex::encode(h.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(sha1) = &mut self.sha1 {
            sha1.update(&buf[..n]);
        }
        Ok(n)
    }
}
