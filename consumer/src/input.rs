//! The consumer's input streams: an opened [`Endpoint`] (STDIN or N pipes) or stored streams, read as one kind, and
//! the per-stream SHA-1 (`--digest sha1`).

use std::io::{self, Read};
use std::time::Duration;

use anyhow::Result;
use runtime::cancel::Cancel;
use sha1::{Digest as _, Sha1};
use transport::{End, Endpoint, FifoSet};

/// One opened input stream.
pub struct InputStream {
    /// `STDIN`, the pipe's path, or the stored stream, for messages.
    pub name: String,
    /// Its bytes: a pipe or STDIN (with the `--idle-timeout` deadline on every read), or a stored stream.
    pub file: Box<dyn Read + Send>,
}

/// Opens every input of `endpoint` ([`Endpoint::open`]): for pipes, creates any that are missing (the producer
/// may start later) and waits for the producer to open them all; the returned [`FifoSet`] removes them when
/// dropped. Every read then fails after `idle` without progress, and promptly once `cancel` fires.
pub fn open_inputs(
    endpoint: &Endpoint,
    idle: Option<Duration>,
    cancel: &Cancel,
) -> Result<(Vec<InputStream>, Option<FifoSet>)> {
    let opened = endpoint.open(End::Read, idle, cancel)?;
    let streams = opened
        .streams
        .into_iter()
        .map(|stream| InputStream { name: stream.name, file: Box::new(stream.pipe) })
        .collect();
    Ok((streams, opened.fifos))
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
