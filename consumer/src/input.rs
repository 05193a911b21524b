//! Where streams come from: STDIN, or N named pipes opened (in parallel, each with a deadline) for reading.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use proto::cancel::Cancel;
use proto::fifo::{End, FifoSet};
use std::sync::Arc;

use proto::idle::{Activity, IdlePipe};
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
pub struct InputStream {
    /// `STDIN`, the pipe's path, or the stored stream, for messages.
    pub name: String,
    /// Its bytes: a pipe or STDIN (with the `--idle-timeout` deadline on every read), or a stored stream.
    pub file: Box<dyn Read + Send>,
}

/// Opens every input. For pipes, creates any that are missing (the producer may start later) and waits for the
/// producer to open them all; the returned [`FifoSet`] removes them when dropped. Every read then fails after
/// `idle` without progress, and promptly once `cancel` fires.
pub fn open_inputs(
    input: &Input,
    idle: Option<Duration>,
    cancel: &Cancel,
) -> Result<(Vec<InputStream>, Option<FifoSet>)> {
    match input {
        Input::Stdin => {
            let fd = std::os::fd::AsFd::as_fd(&io::stdin()).try_clone_to_owned().context("cannot use STDIN")?;
            let file = IdlePipe::stdio(File::from(fd), idle, End::Read)
                .context("cannot use STDIN")?
                .with_cancel(cancel.clone());
            Ok((vec![InputStream { name: "STDIN".into(), file: Box::new(file) }], None))
        }
        Input::Fifos { dir, count, timeout } => {
            let set = FifoSet::create(dir, *count)?;
            let opened = set.open_all(End::Read, *timeout, cancel)?;
            let mut streams = Vec::with_capacity(*count);
            // One idle clock for all pipes: with --fifo-binding file a pipe whose files are done stays quiet until
            // the manifest ends the backup on another; only a backup where no pipe moves has stalled.
            let activity = Arc::new(Activity::new());
            for (path, file) in set.paths().iter().zip(opened) {
                let file = IdlePipe::new(file, idle)
                    .with_context(|| format!("cannot use {}", path.display()))?
                    .with_cancel(cancel.clone())
                    .with_activity(Arc::clone(&activity));
                streams.push(InputStream { name: path.display().to_string(), file: Box::new(file) });
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
