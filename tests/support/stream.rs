//! xbstream bytes in memory: a stream parsed into its chunks and encoded back (to damage or forge one chunk of a
//! real producer stream), and a reader that hands them over a few bytes at a time (to flush out partial-read bugs).

use std::io::{self, Read};

use proto::{ChunkHeader, ChunkKind, ChunkReader, ChunkWriter};

/// A stream's chunks in order: each header with its payload.
pub type Chunks = Vec<(ChunkHeader, Vec<u8>)>;

/// Every chunk of a well-formed `stream` (panics on a malformed one: the tests parse streams they made).
pub fn parse(stream: &[u8]) -> Chunks {
    ChunkReader::new(stream).collect::<Result<_, _>>().unwrap()
}

/// `chunks` written again as a stream (headers and CRCs recomputed from the payloads): [`parse`]'s inverse.
pub fn encode(chunks: &Chunks) -> Vec<u8> {
    let mut writer = ChunkWriter::new(Vec::new());
    for (header, payload) in chunks {
        match header.kind {
            ChunkKind::Payload => writer.write_payload(&header.path, header.file_offset, payload).unwrap(),
            ChunkKind::Eof => writer.write_eof(&header.path).unwrap(),
        }
    }
    writer.into_inner()
}

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
