//! A chunk writer over any `Write`.
//!
//! Each chunk (header and payload) is handed to the sink in one vectored write loop with no other chunk in between,
//! so several threads may share one sink through a lock or a channel without ever tearing a chunk. Only `P` and `E`
//! chunks are written, with flags 0: the subset that Percona `xbstream`, MariaDB `mbstream` and `xbcloud` all accept.

use std::io::{self, IoSlice, Write};

use crate::chunk::{encode_eof, encode_payload_header, MAX_HEADER_LEN, MAX_PATH_LEN};

/// Why a chunk could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The path is longer than the real readers accept; nothing was written.
    #[error("path {path:?} is {len} bytes long; xbstream readers accept at most {max}", max = MAX_PATH_LEN)]
    PathTooLong {
        /// The path (lossy).
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The path is empty; nothing was written.
    #[error("empty path in a chunk")]
    EmptyPath,
    /// The sink failed (for a pipe: the reader went away, `EPIPE`).
    #[error("write of {path:?} failed at stream offset {stream_offset}: {cause}")]
    Io {
        /// The chunk's path (lossy).
        path: String,
        /// Bytes successfully written to the stream before this chunk.
        stream_offset: u64,
        /// The I/O error (in the message, so not also a `source`: it would print twice).
        cause: io::Error,
    },
}

/// Writes xbstream chunks to `W`, counting the bytes it has written.
#[derive(Debug)]
pub struct ChunkWriter<W> {
    inner: W,
    header: Vec<u8>,
    position: u64,
}

impl<W: Write> ChunkWriter<W> {
    /// Wraps a sink.
    pub fn new(inner: W) -> ChunkWriter<W> {
        ChunkWriter { inner, header: Vec::with_capacity(MAX_HEADER_LEN), position: 0 }
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The wrapped sink.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The wrapped sink, mutably (writing to it directly would corrupt the stream).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Unwraps the sink.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes a payload chunk, computing its CRC-32.
    pub fn write_payload(&mut self, path: &[u8], file_offset: u64, payload: &[u8]) -> Result<(), WriteError> {
        self.write_payload_with_checksum(path, file_offset, payload, crc32fast::hash(payload))
    }

    /// Writes a payload chunk whose CRC-32 the caller already computed (on another thread).
    pub fn write_payload_with_checksum(
        &mut self,
        path: &[u8],
        file_offset: u64,
        payload: &[u8],
        checksum: u32,
    ) -> Result<(), WriteError> {
        check_path(path)?;
        self.header.clear();
        encode_payload_header(&mut self.header, path, file_offset, payload.len() as u64, checksum);
        let mut slices = [IoSlice::new(&self.header), IoSlice::new(payload)];
        write_all_vectored(&mut self.inner, &mut slices).map_err(|cause| WriteError::Io {
            path: String::from_utf8_lossy(path).into_owned(),
            stream_offset: self.position,
            cause,
        })?;
        self.position += (self.header.len() + payload.len()) as u64;
        Ok(())
    }

    /// Writes an end-of-file chunk.
    pub fn write_eof(&mut self, path: &[u8]) -> Result<(), WriteError> {
        check_path(path)?;
        self.header.clear();
        encode_eof(&mut self.header, path);
        self.inner.write_all(&self.header).map_err(|cause| WriteError::Io {
            path: String::from_utf8_lossy(path).into_owned(),
            stream_offset: self.position,
            cause,
        })?;
        self.position += self.header.len() as u64;
        Ok(())
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn check_path(path: &[u8]) -> Result<(), WriteError> {
    if path.is_empty() {
        return Err(WriteError::EmptyPath);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(WriteError::PathTooLong { path: String::from_utf8_lossy(path).into_owned(), len: path.len() });
    }
    Ok(())
}

/// `Write::write_all` for several slices (the std one is unstable): loops on `write_vectored` until every slice is
/// written, retrying `EINTR`.
fn write_all_vectored<W: Write>(sink: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match sink.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "sink accepted no bytes")),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
