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
    /// The headers of a [`ChunkWriter::write_whole_files`] call, kept for the next one.
    headers: Vec<u8>,
    position: u64,
}

/// One small file for [`ChunkWriter::write_whole_files`]: all its bytes, and their CRC-32.
#[derive(Debug, Clone, Copy)]
pub struct WholeFile<'a> {
    /// Its path on the wire.
    pub path: &'a [u8],
    /// Every byte of it.
    pub payload: &'a [u8],
    /// CRC-32 of `payload` (computed by the caller, on another thread).
    pub checksum: u32,
}

impl<W: Write> ChunkWriter<W> {
    /// Wraps a sink.
    pub fn new(inner: W) -> ChunkWriter<W> {
        ChunkWriter { inner, header: Vec::with_capacity(MAX_HEADER_LEN), headers: Vec::new(), position: 0 }
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

    /// Writes small files whole, in order: for each a payload chunk at offset 0 (none for an empty file) and its
    /// `E` chunk. Their headers are encoded into one buffer and everything goes to the sink as one vectored write
    /// (looped until done), so the payloads are not copied on the way when the sink passes large vectored writes
    /// straight to its descriptor. Returns the number of chunks written. On failure nothing tells how much of the
    /// lot went out; the error names the chunk being written and its stream offset.
    pub fn write_whole_files(&mut self, files: &[WholeFile<'_>]) -> Result<u64, WriteError> {
        for file in files {
            check_path(file.path)?;
        }
        // Every header into one buffer, noting where each ends.
        self.headers.clear();
        let mut header_ends = Vec::with_capacity(2 * files.len());
        for file in files {
            if !file.payload.is_empty() {
                encode_payload_header(&mut self.headers, file.path, 0, file.payload.len() as u64, file.checksum);
                header_ends.push(self.headers.len());
            }
            encode_eof(&mut self.headers, file.path);
            header_ends.push(self.headers.len());
        }
        // The slices in stream order, and for each the file it belongs to.
        let mut slices = Vec::with_capacity(3 * files.len());
        let mut owners = Vec::with_capacity(3 * files.len());
        let mut headers =
            header_ends.iter().scan(0, |start, &end| Some(&self.headers[std::mem::replace(start, end)..end]));
        for (index, file) in files.iter().enumerate() {
            if !file.payload.is_empty() {
                slices.extend([IoSlice::new(headers.next().expect("a header")), IoSlice::new(file.payload)]);
                owners.extend([index, index]);
            }
            slices.push(IoSlice::new(headers.next().expect("a header")));
            owners.push(index);
        }
        let lengths: Vec<usize> = slices.iter().map(|slice| slice.len()).collect();
        let total: usize = lengths.iter().sum();
        if let Err((written, cause)) = write_all_vectored_counted(&mut self.inner, &mut slices) {
            // The file whose slice the sink failed in.
            let mut end = 0;
            let failed = owners.iter().zip(&lengths).find_map(|(&owner, &len)| {
                end += len;
                (end > written).then_some(owner)
            });
            let failed = failed.unwrap_or(files.len().saturating_sub(1));
            return Err(WriteError::Io {
                path: String::from_utf8_lossy(files[failed].path).into_owned(),
                stream_offset: self.position + written as u64,
                cause,
            });
        }
        self.position += total as u64;
        Ok(header_ends.len() as u64)
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
fn write_all_vectored<W: Write>(sink: &mut W, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    write_all_vectored_counted(sink, slices).map_err(|(_, e)| e)
}

/// [`write_all_vectored`], saying on failure how many bytes were written before it.
fn write_all_vectored_counted<W: Write>(
    sink: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> Result<(), (usize, io::Error)> {
    IoSlice::advance_slices(&mut slices, 0);
    let mut written = 0;
    while !slices.is_empty() {
        match sink.write_vectored(slices) {
            Ok(0) => return Err((written, io::Error::new(io::ErrorKind::WriteZero, "sink accepted no bytes"))),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}
