//! How a compressed chunk is laid out, so a consumer can decompress chunks in any order.
//!
//! With `--compress` every payload chunk of `<path>.zst` is one *skippable* zstd frame followed by one ordinary zstd
//! frame (content checksum on):
//!
//! ```text
//! 5B 2A 4D 18 | 0C 00 00 00 | original offset u64 | original length u32 | zstd frame of those bytes
//!  magic        frame size     (little-endian)
//! ```
//!
//! Skippable frames are part of the zstd format, so the concatenated payloads are a valid multi-frame `.zst` that
//! stock `zstd -d` decompresses to the original file. The skippable frame tells our consumer where the decompressed
//! bytes belong, so chunks of one file can arrive on different pipes in any order and still be decompressed in
//! parallel and written at once.

/// Suffix of a compressed file on the wire (as xtrabackup names them).
pub const ZSTD_SUFFIX: &str = ".zst";

/// The skippable-frame magic we use (zstd reserves 0x184D2A50..=0x184D2A5F).
pub const OFFSET_FRAME_MAGIC: u32 = 0x184D_2A5B;

/// Length of the skippable frame that leads every compressed chunk.
pub const OFFSET_FRAME_LEN: usize = 20;

/// Where a compressed chunk's content belongs in the original file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalRange {
    /// Offset in the original file.
    pub offset: u64,
    /// Length of the decompressed content.
    pub len: u32,
}

/// Writes the leading skippable frame for `range` into `out[..OFFSET_FRAME_LEN]`.
pub fn encode_offset_frame(out: &mut [u8], range: OriginalRange) {
    out[0..4].copy_from_slice(&OFFSET_FRAME_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&12u32.to_le_bytes());
    out[8..16].copy_from_slice(&range.offset.to_le_bytes());
    out[16..20].copy_from_slice(&range.len.to_le_bytes());
}

/// Splits a chunk payload into its original range and the zstd frame that follows, if it starts with our
/// skippable frame.
pub fn parse_offset_frame(payload: &[u8]) -> Option<(OriginalRange, &[u8])> {
    if payload.len() < OFFSET_FRAME_LEN
        || payload[0..4] != OFFSET_FRAME_MAGIC.to_le_bytes()
        || payload[4..8] != 12u32.to_le_bytes()
    {
        return None;
    }
    let offset = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(payload[16..20].try_into().expect("4 bytes"));
    Some((OriginalRange { offset, len }, &payload[OFFSET_FRAME_LEN..]))
}

/// The original path of a compressed wire path: `a/b.ibd.zst` → `a/b.ibd`; `None` without the suffix.
pub fn strip_zstd_suffix(path: &[u8]) -> Option<&[u8]> {
    path.strip_suffix(ZSTD_SUFFIX.as_bytes()).filter(|rest| !rest.is_empty() && !rest.ends_with(b"/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_frame_round_trips_and_rejects_other_payloads() {
        let mut payload = vec![0u8; OFFSET_FRAME_LEN];
        encode_offset_frame(&mut payload, OriginalRange { offset: 1 << 40, len: 2 << 20 });
        payload.extend_from_slice(b"zstd frame");
        let (range, rest) = parse_offset_frame(&payload).unwrap();
        assert_eq!(range, OriginalRange { offset: 1 << 40, len: 2 << 20 });
        assert_eq!(rest, b"zstd frame");
        assert_eq!(parse_offset_frame(b"\x28\xb5\x2f\xfd plain zstd frame of 20+ bytes"), None);
        assert_eq!(parse_offset_frame(&payload[..19]), None);
    }

    #[test]
    fn strips_only_a_real_suffix() {
        assert_eq!(strip_zstd_suffix(b"db/t1.ibd.zst"), Some(&b"db/t1.ibd"[..]));
        assert_eq!(strip_zstd_suffix(b"db/t1.ibd"), None);
        assert_eq!(strip_zstd_suffix(b".zst"), None);
        assert_eq!(strip_zstd_suffix(b"db/.zst"), None);
    }
}
