//! CRC-32 pieces: the chunk checksum the format computes anyway, folded into a whole-file checksum.
//!
//! Each chunk's CRC is computed where the chunk is (in parallel); appending pieces in file order with
//! [`crc32fast::Hasher::combine`] gives the CRC of the whole file without reading it twice.

/// The CRC-32 (zlib / ISO-3309) of a run of bytes, with its length, so that runs can be concatenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrcPiece {
    /// CRC-32 of the bytes.
    pub crc: u32,
    /// Number of bytes covered.
    pub len: u64,
}

impl CrcPiece {
    /// The checksum of `bytes`.
    pub fn of(bytes: &[u8]) -> CrcPiece {
        CrcPiece { crc: crc32fast::hash(bytes), len: bytes.len() as u64 }
    }

    /// The checksum of `self` followed by `next`.
    pub fn append(self, next: CrcPiece) -> CrcPiece {
        let mut hasher = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(next.crc, next.len));
        CrcPiece { crc: hasher.finalize(), len: self.len + next.len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn appended_pieces_equal_the_crc_of_the_concatenation(a in proptest::collection::vec(any::<u8>(), 0..300),
                                                              b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
            prop_assert_eq!(CrcPiece::of(&a).append(CrcPiece::of(&b)), CrcPiece::of(&whole));
        }
    }

    #[test]
    fn empty_piece_is_the_identity() {
        let p = CrcPiece::of(b"hello");
        assert_eq!(CrcPiece::default().append(p), p);
        assert_eq!(p.append(CrcPiece::default()), p);
    }
}
