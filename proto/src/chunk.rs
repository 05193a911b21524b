//! The `XBSTCK01` chunk layout (all integers little-endian).
//!
//! ```text
//! off  size  field
//!   0     8  magic "XBSTCK01"
//!   8     1  flags (bit 0: "ignorable"; we never write it and reject it on read)
//!   9     1  type: 'P' payload, 'E' end of file
//!  10     4  path length P (u32)
//!  14     P  path bytes ('/' separated, no NUL)
//!             -- 'E' chunks end here --
//! 14+P    8  payload length (u64)
//! 22+P    8  payload offset in the destination file (u64)
//! 30+P    4  CRC-32 (zlib / ISO-3309) of the payload
//! 34+P  len  payload
//! ```
//!
//! See `shared/xbstream-spec.md` §1 for sources.

/// The eight magic bytes that start every chunk.
pub const MAGIC: &[u8; 8] = b"XBSTCK01";

/// Longest path the real readers accept: they reject `pathlen >= 512` (FN_REFLEN).
pub const MAX_PATH_LEN: usize = 511;

/// Size of the fixed part that precedes the path: magic, flags, type, path length.
pub const PREFIX_LEN: usize = 14;

/// Size of the fields that follow the path in a payload chunk: length, offset, checksum.
pub const PAYLOAD_FIELDS_LEN: usize = 20;

/// Largest encoded header (prefix + longest path + payload fields).
pub const MAX_HEADER_LEN: usize = PREFIX_LEN + MAX_PATH_LEN + PAYLOAD_FIELDS_LEN;

/// The flag bit that marks a chunk whose unknown type "may be ignored". Both real extractors mishandle it (they
/// write such a chunk's payload as file data), so our writer never sets it and our reader rejects it.
pub const FLAG_IGNORABLE: u8 = 0x01;

/// The two chunk types that every xbstream implementation accepts, and the only ones we write or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkKind {
    /// `'P'`: a slice of a file's bytes at an offset.
    Payload,
    /// `'E'`: the file is complete; the extractor closes it.
    Eof,
}

impl ChunkKind {
    /// The type byte on the wire.
    pub fn type_byte(self) -> u8 {
        match self {
            ChunkKind::Payload => b'P',
            ChunkKind::Eof => b'E',
        }
    }

    /// Parses a type byte; `None` for every type other than `P` and `E`.
    pub fn from_type_byte(byte: u8) -> Option<ChunkKind> {
        match byte {
            b'P' => Some(ChunkKind::Payload),
            b'E' => Some(ChunkKind::Eof),
            _ => None,
        }
    }
}

/// A decoded chunk header: everything but the payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Payload or end-of-file.
    pub kind: ChunkKind,
    /// The path exactly as it appears on the wire (unvalidated: pass it through [`crate::safe_relative_path`]).
    pub path: Vec<u8>,
    /// Payload length in bytes (0 for `E`).
    pub payload_len: u64,
    /// Where the payload goes in the destination file (0 for `E`).
    pub file_offset: u64,
    /// CRC-32 of the payload as declared on the wire (0 for `E`).
    pub checksum: u32,
    /// Byte position of this chunk's first magic byte in its stream, for error messages.
    pub stream_offset: u64,
}

impl ChunkHeader {
    /// The path for messages: lossy UTF-8.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Encoded size of the whole chunk, header and payload.
    pub fn encoded_len(&self) -> u64 {
        encoded_header_len(self.kind, self.path.len()) as u64 + self.payload_len
    }
}

/// Length of an encoded header for a path of `path_len` bytes.
pub fn encoded_header_len(kind: ChunkKind, path_len: usize) -> usize {
    match kind {
        ChunkKind::Payload => PREFIX_LEN + path_len + PAYLOAD_FIELDS_LEN,
        ChunkKind::Eof => PREFIX_LEN + path_len,
    }
}

/// The encoded length of the chunk that starts `bytes`, if its header is all there (`None`: too few bytes to
/// tell). Lets a reader with buffered input know whether reading the next chunk would wait on its input. The
/// header is not validated here: a damaged one is found (and named) when it is read.
pub fn encoded_len_at(bytes: &[u8]) -> Option<u64> {
    let prefix = bytes.get(..PREFIX_LEN)?;
    let path_len = u32::from_le_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]) as usize;
    if ChunkKind::from_type_byte(prefix[9]) != Some(ChunkKind::Payload) {
        return Some((PREFIX_LEN + path_len) as u64);
    }
    let fields = bytes.get(PREFIX_LEN + path_len..PREFIX_LEN + path_len + PAYLOAD_FIELDS_LEN)?;
    let payload_len = u64::from_le_bytes(fields[0..8].try_into().expect("8 bytes"));
    Some(((PREFIX_LEN + path_len + PAYLOAD_FIELDS_LEN) as u64).saturating_add(payload_len))
}

/// Appends the encoded header of a payload chunk to `out`. The caller guarantees `path.len() <= MAX_PATH_LEN`
/// (the [`crate::ChunkWriter`] checks it).
pub fn encode_payload_header(out: &mut Vec<u8>, path: &[u8], file_offset: u64, payload_len: u64, checksum: u32) {
    encode_prefix(out, ChunkKind::Payload, path);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&file_offset.to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// Appends an encoded end-of-file chunk (which is header only) to `out`.
pub fn encode_eof(out: &mut Vec<u8>, path: &[u8]) {
    encode_prefix(out, ChunkKind::Eof, path);
}

/// The path of the chunk that ends a failed stream (the producer's, or `get`'s): a payload chunk whose payload
/// never comes, so every reader — ours, `mbstream`, `xbstream` — reports a truncated stream, and ours names this
/// path in its message.
pub const POISON_PATH: &[u8] = b"PRODUCER-FAILED: this stream is incomplete, see the producer's error";

/// Appends the broken chunk's header (a payload of 1 byte is announced and never sent) to `out`.
pub fn encode_poison(out: &mut Vec<u8>) {
    encode_payload_header(out, POISON_PATH, 0, 1, 0);
}

fn encode_prefix(out: &mut Vec<u8>, kind: ChunkKind, path: &[u8]) {
    out.extend_from_slice(MAGIC);
    out.push(0);
    out.push(kind.type_byte());
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_header_layout_matches_the_spec() {
        let mut out = Vec::new();
        encode_payload_header(&mut out, b"ab", 0x0102, 3, 0xAABBCCDD);
        assert_eq!(&out[0..8], b"XBSTCK01");
        assert_eq!(out[8], 0);
        assert_eq!(out[9], b'P');
        assert_eq!(&out[10..14], &[2, 0, 0, 0]);
        assert_eq!(&out[14..16], b"ab");
        assert_eq!(&out[16..24], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[24..32], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[32..36], &[0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(out.len(), encoded_header_len(ChunkKind::Payload, 2));
    }

    #[test]
    fn eof_chunk_is_prefix_and_path_only() {
        let mut out = Vec::new();
        encode_eof(&mut out, b"x");
        assert_eq!(out, b"XBSTCK01\0E\x01\0\0\0x");
    }

    #[test]
    fn only_p_and_e_are_known_types() {
        for byte in 0..=255u8 {
            let known = ChunkKind::from_type_byte(byte);
            assert_eq!(known.is_some(), byte == b'P' || byte == b'E', "type byte {byte:#x}");
            if let Some(kind) = known {
                assert_eq!(kind.type_byte(), byte);
            }
        }
    }

    #[test]
    fn encoded_len_at_needs_the_whole_header_and_counts_the_payload() {
        let mut bytes = Vec::new();
        encode_payload_header(&mut bytes, b"db/t.frm", 0, 5, 0);
        bytes.extend_from_slice(b"hello");
        encode_eof(&mut bytes, b"db/t.frm");
        let first = encoded_header_len(ChunkKind::Payload, 8) as u64 + 5;
        for cut in 0..encoded_header_len(ChunkKind::Payload, 8) {
            assert_eq!(encoded_len_at(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(encoded_len_at(&bytes), Some(first));
        assert_eq!(encoded_len_at(&bytes[first as usize..]), Some(encoded_header_len(ChunkKind::Eof, 8) as u64));
    }
}
