//! An incremental chunk reader over any `Read`: a pipe, a socket, a file.
//!
//! It reads exactly one chunk per call and never reads ahead, so the stream position it reports is the position of
//! the next unread byte, and a consumer can hand the same `Read` to something else between chunks. Short reads are
//! fine (it loops); `EINTR` is retried. A declared payload length is checked against a maximum *before* any buffer is
//! grown, so hostile input cannot make it allocate more than that maximum. No input makes it panic.

use std::io::{self, Read};

use crate::chunk::{ChunkHeader, ChunkKind, FLAG_IGNORABLE, MAGIC, MAX_PATH_LEN, PAYLOAD_FIELDS_LEN, PREFIX_LEN};

/// Default ceiling on a declared payload length: 64 MiB, six times the real tools' 10 MiB chunks.
pub const DEFAULT_MAX_PAYLOAD: u64 = 64 << 20;

/// Why a stream could not be read. Every variant names the stream offset of the chunk it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The eight bytes where a chunk should start are not `XBSTCK01`.
    #[error("wrong chunk magic at stream offset {stream_offset:#x}: found {found:?}, expected \"XBSTCK01\"")]
    BadMagic {
        /// Where the chunk should have started.
        stream_offset: u64,
        /// What was there instead (lossy text of up to 8 bytes).
        found: String,
    },
    /// The stream ended inside a chunk header (after at least one byte of it).
    #[error("stream truncated inside the chunk header at stream offset {stream_offset:#x}: needed {needed} more bytes, got {got}")]
    TruncatedHeader {
        /// Start of the chunk.
        stream_offset: u64,
        /// Bytes of the header part being read.
        needed: usize,
        /// Bytes actually available before end of stream.
        got: usize,
    },
    /// The stream ended inside a chunk's payload.
    #[error("stream truncated inside the payload of {path:?} (chunk at stream offset {stream_offset:#x}): expected {expected} bytes, got {got}")]
    TruncatedPayload {
        /// The chunk's path.
        path: String,
        /// Start of the chunk.
        stream_offset: u64,
        /// Declared payload length.
        expected: u64,
        /// Bytes actually available before end of stream.
        got: u64,
    },
    /// The payload's CRC-32 does not match the one in its header.
    #[error("checksum mismatch in {path:?} at file offset {file_offset} (chunk at stream offset {stream_offset:#x}): header says {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch {
        /// The chunk's path.
        path: String,
        /// Where the payload belongs in its file.
        file_offset: u64,
        /// Start of the chunk.
        stream_offset: u64,
        /// CRC-32 declared in the header.
        expected: u32,
        /// CRC-32 of the payload as received.
        actual: u32,
    },
    /// The declared path length is 512 or more (the real readers' limit).
    #[error("path length {len} is too large at stream offset {stream_offset:#x} (at most {max} bytes)", max = MAX_PATH_LEN)]
    PathTooLong {
        /// Start of the chunk.
        stream_offset: u64,
        /// Declared path length.
        len: u64,
    },
    /// A type byte other than `P` or `E`.
    #[error("unknown chunk type {type_byte:#04x} ({printable}) at stream offset {stream_offset:#x}; only 'P' and 'E' are supported", printable = printable(*type_byte))]
    UnknownType {
        /// Start of the chunk.
        stream_offset: u64,
        /// The type byte found.
        type_byte: u8,
    },
    /// The chunk carries the "ignorable" flag, which both real extractors mishandle; we never guess.
    #[error("chunk with the 'ignorable' flag (flags {flags:#04x}, type {type_byte:#04x}) at stream offset {stream_offset:#x} is not supported")]
    IgnorableChunk {
        /// Start of the chunk.
        stream_offset: u64,
        /// The flags byte.
        flags: u8,
        /// The type byte.
        type_byte: u8,
    },
    /// The declared payload length is above the reader's maximum; nothing was allocated for it.
    #[error("payload of {len} bytes declared for {path:?} at stream offset {stream_offset:#x} exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// The chunk's path.
        path: String,
        /// Start of the chunk.
        stream_offset: u64,
        /// Declared length.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The underlying reader failed. The message carries the I/O error's own text, so it is not also a `source`
    /// (which would print it twice in an error chain).
    #[error("read error at stream offset {stream_offset:#x}: {cause}")]
    Io {
        /// Position of the next unread byte.
        stream_offset: u64,
        /// The I/O error.
        cause: io::Error,
    },
}

fn printable(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", byte as char)
    } else {
        "non-printable".to_string()
    }
}

impl ChunkHeader {
    /// Checks `payload` against the header's CRC-32.
    pub fn verify_checksum(&self, payload: &[u8]) -> Result<(), ReadError> {
        let actual = crc32fast::hash(payload);
        if actual == self.checksum {
            Ok(())
        } else {
            Err(ReadError::ChecksumMismatch {
                path: self.display_path(),
                file_offset: self.file_offset,
                stream_offset: self.stream_offset,
                expected: self.checksum,
                actual,
            })
        }
    }
}

/// Reads chunks one at a time from `R`.
#[derive(Debug)]
pub struct ChunkReader<R> {
    inner: R,
    position: u64,
    max_payload: u64,
    verify_checksums: bool,
}

impl<R: Read> ChunkReader<R> {
    /// A reader with the default payload maximum ([`DEFAULT_MAX_PAYLOAD`]) that verifies every checksum.
    pub fn new(inner: R) -> ChunkReader<R> {
        ChunkReader { inner, position: 0, max_payload: DEFAULT_MAX_PAYLOAD, verify_checksums: true }
    }

    /// Sets the largest payload length accepted; longer declared lengths fail before any allocation.
    pub fn with_max_payload(mut self, max_payload: u64) -> ChunkReader<R> {
        self.max_payload = max_payload;
        self
    }

    /// Turns CRC verification off, for callers that verify with [`ChunkHeader::verify_checksum`] on another
    /// thread.
    pub fn with_checksum_verification(mut self, verify: bool) -> ChunkReader<R> {
        self.verify_checksums = verify;
        self
    }

    /// Stream offset of the next unread byte (= bytes consumed so far).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The wrapped reader, borrowed (to look at what a buffered reader holds).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next chunk. Its payload replaces the contents of `payload` (whose capacity is reused). Returns
    /// `Ok(None)` at a clean end of stream: end of input exactly at a chunk boundary.
    pub fn read_chunk(&mut self, payload: &mut impl PayloadBuffer) -> Result<Option<ChunkHeader>, ReadError> {
        payload.clear();
        let max = payload.max_len().map_or(self.max_payload, |m| self.max_payload.min(m as u64));
        let Some(header) = self.read_header(max)? else { return Ok(None) };
        if header.kind == ChunkKind::Eof {
            return Ok(Some(header));
        }
        // The length is bounded by max_payload (and the buffer's own capacity), so preparing it is safe.
        let slot = payload.slot(header.payload_len as usize);
        let got = read_full(&mut self.inner, slot, &mut self.position)? as u64;
        if got < header.payload_len {
            return Err(ReadError::TruncatedPayload {
                path: header.display_path(),
                stream_offset: header.stream_offset,
                expected: header.payload_len,
                got,
            });
        }
        if self.verify_checksums {
            header.verify_checksum(slot)?;
        }
        Ok(Some(header))
    }

    /// Reads the next chunk's header (everything but the payload), refusing a payload over `max` bytes.
    fn read_header(&mut self, max: u64) -> Result<Option<ChunkHeader>, ReadError> {
        let stream_offset = self.position;
        let mut prefix = [0u8; PREFIX_LEN];
        let got = self.read_full(&mut prefix)?;
        if got == 0 {
            return Ok(None);
        }
        let magic_seen = got.min(MAGIC.len());
        if prefix[..magic_seen] != MAGIC[..magic_seen] {
            return Err(ReadError::BadMagic {
                stream_offset,
                found: String::from_utf8_lossy(&prefix[..magic_seen]).into_owned(),
            });
        }
        if got < PREFIX_LEN {
            return Err(ReadError::TruncatedHeader { stream_offset, needed: PREFIX_LEN, got });
        }
        let flags = prefix[8];
        let type_byte = prefix[9];
        if flags & FLAG_IGNORABLE != 0 {
            return Err(ReadError::IgnorableChunk { stream_offset, flags, type_byte });
        }
        let kind = ChunkKind::from_type_byte(type_byte).ok_or(ReadError::UnknownType { stream_offset, type_byte })?;
        let path_len = u32::from_le_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]) as u64;
        if path_len > MAX_PATH_LEN as u64 {
            return Err(ReadError::PathTooLong { stream_offset, len: path_len });
        }
        let mut path = vec![0u8; path_len as usize];
        let got = self.read_full(&mut path)?;
        if got < path.len() {
            return Err(ReadError::TruncatedHeader { stream_offset, needed: path.len(), got });
        }

        let mut header = ChunkHeader { kind, path, payload_len: 0, file_offset: 0, checksum: 0, stream_offset };
        if kind == ChunkKind::Eof {
            return Ok(Some(header));
        }

        let mut fields = [0u8; PAYLOAD_FIELDS_LEN];
        let got = self.read_full(&mut fields)?;
        if got < PAYLOAD_FIELDS_LEN {
            return Err(ReadError::TruncatedHeader { stream_offset, needed: PAYLOAD_FIELDS_LEN, got });
        }
        header.payload_len = u64::from_le_bytes(fields[0..8].try_into().expect("8 bytes"));
        header.file_offset = u64::from_le_bytes(fields[8..16].try_into().expect("8 bytes"));
        header.checksum = u32::from_le_bytes(fields[16..20].try_into().expect("4 bytes"));
        if header.payload_len > max {
            return Err(ReadError::PayloadTooLarge {
                path: header.display_path(),
                stream_offset,
                len: header.payload_len,
                max,
            });
        }
        Ok(Some(header))
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        read_full(&mut self.inner, buf, &mut self.position)
    }
}

impl<'a> ChunkReader<&'a [u8]> {
    /// Reads the next chunk of a stream held in memory, its payload borrowed from the input rather than copied
    /// (checked against its CRC-32 like [`ChunkReader::read_chunk`]'s); `Ok(None)` at a clean end.
    pub fn read_borrowed(&mut self) -> Result<Option<(ChunkHeader, &'a [u8])>, ReadError> {
        let Some(header) = self.read_header(self.max_payload)? else { return Ok(None) };
        let len = header.payload_len as usize;
        if self.inner.len() < len {
            return Err(ReadError::TruncatedPayload {
                path: header.display_path(),
                stream_offset: header.stream_offset,
                expected: header.payload_len,
                got: self.inner.len() as u64,
            });
        }
        let (payload, rest) = self.inner.split_at(len);
        self.inner = rest;
        self.position += len as u64;
        if self.verify_checksums && header.kind == ChunkKind::Payload {
            header.verify_checksum(payload)?;
        }
        Ok(Some((header, payload)))
    }
}

/// Fills `buf` unless the input ends first; returns how many bytes were read and advances `position` by them.
fn read_full(reader: &mut impl Read, buf: &mut [u8], position: &mut u64) -> Result<usize, ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                *position += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(cause) => return Err(ReadError::Io { stream_offset: *position, cause }),
        }
    }
    Ok(filled)
}

/// Where a chunk's payload is read to: a plain `Vec<u8>`, or a pooled buffer from the memory budget (`runtime`'s
/// pool implements this trait).
pub trait PayloadBuffer {
    /// Empties the buffer.
    fn clear(&mut self);
    /// Makes the buffer exactly `len` bytes long and returns them for filling (their old contents are stale).
    fn slot(&mut self, len: usize) -> &mut [u8];
    /// The largest payload this buffer can take, if it is bounded.
    fn max_len(&self) -> Option<usize>;
}

impl PayloadBuffer for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn slot(&mut self, len: usize) -> &mut [u8] {
        self.resize(len, 0);
        &mut self[..]
    }
    fn max_len(&self) -> Option<usize> {
        None
    }
}

impl<R: Read> Iterator for ChunkReader<R> {
    type Item = Result<(ChunkHeader, Vec<u8>), ReadError>;

    /// Owned chunks, for tests and listings; pipelines use [`ChunkReader::read_chunk`] with pooled buffers.
    fn next(&mut self) -> Option<Self::Item> {
        let mut payload = Vec::new();
        match self.read_chunk(&mut payload) {
            Ok(Some(header)) => Some(Ok((header, payload))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}
