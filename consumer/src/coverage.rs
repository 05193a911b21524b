//! Which bytes of a file have arrived, and their CRC-32.
//!
//! Chunks of one file may arrive in any order (on different pipes). [`Coverage`] keeps the contiguous prefix
//! `[0, n)` as one CRC piece and parks later pieces until the gap before them fills, so its memory is bounded by how
//! far out of order chunks arrive, not by the file size. Any overlap — a duplicated chunk, a rewind — is an error.

use std::collections::BTreeMap;

use proto::CrcPiece;

/// Received ranges of one file.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    prefix: CrcPiece,
    pending: BTreeMap<u64, CrcPiece>,
}

/// A chunk that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overlap {
    /// It overlaps bytes already received.
    #[error("bytes {offset}..{end} overlap bytes already received (a duplicated or overlapping chunk)")]
    Overlaps {
        /// Start of the rejected chunk.
        offset: u64,
        /// End of the rejected chunk.
        end: u64,
    },
    /// Its end lies beyond the largest possible file offset.
    #[error("a chunk of {len} bytes at offset {offset} ends beyond the largest possible file offset")]
    OutOfRange {
        /// Start of the rejected chunk.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

impl Coverage {
    /// Records `piece` at `offset`.
    pub fn insert(&mut self, offset: u64, piece: CrcPiece) -> Result<(), Overlap> {
        let end = offset.checked_add(piece.len).ok_or(Overlap::OutOfRange { offset, len: piece.len })?;
        let overlap = Overlap::Overlaps { offset, end };
        if piece.len == 0 {
            return Ok(());
        }
        if offset < self.prefix.len {
            return Err(overlap);
        }
        if let Some((&before, p)) = self.pending.range(..=offset).next_back() {
            if before + p.len > offset {
                return Err(overlap);
            }
        }
        if let Some((&after, _)) = self.pending.range(offset..).next() {
            if after < end {
                return Err(overlap);
            }
        }
        self.pending.insert(offset, piece);
        while let Some(piece) = self.pending.remove(&self.prefix.len) {
            self.prefix = self.prefix.append(piece);
        }
        Ok(())
    }

    /// Whether everything received so far is one contiguous run from offset 0.
    pub fn is_contiguous(&self) -> bool {
        self.pending.is_empty()
    }

    /// Length and CRC-32 of the contiguous prefix.
    pub fn prefix(&self) -> CrcPiece {
        self.prefix
    }

    /// The first missing byte range, if bytes beyond the prefix arrived: `(gap start, gap end)`.
    pub fn first_gap(&self) -> Option<(u64, u64)> {
        self.pending.keys().next().map(|&next| (self.prefix.len, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn piece(data: &[u8]) -> CrcPiece {
        CrcPiece::of(data)
    }

    proptest! {
        /// Chunks of a file inserted in any order give the CRC of the whole file.
        #[test]
        fn any_arrival_order_gives_the_whole_file_crc(
            data in proptest::collection::vec(any::<u8>(), 1..2000),
            cut in 1usize..300,
            order in any::<u64>(),
        ) {
            let mut chunks: Vec<(u64, &[u8])> = data.chunks(cut).enumerate().map(|(i, c)| ((i * cut) as u64, c)).collect();
            let mut state = order | 1;
            for i in (1..chunks.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                chunks.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut coverage = Coverage::default();
            for (offset, bytes) in chunks {
                coverage.insert(offset, piece(bytes)).unwrap();
            }
            prop_assert!(coverage.is_contiguous());
            prop_assert_eq!(coverage.prefix(), CrcPiece::of(&data));
        }
    }

    #[test]
    fn duplicates_and_overlaps_are_rejected() {
        let mut coverage = Coverage::default();
        coverage.insert(0, piece(b"abcd")).unwrap();
        coverage.insert(8, piece(b"ijkl")).unwrap();
        assert_eq!(coverage.insert(0, piece(b"abcd")), Err(Overlap::Overlaps { offset: 0, end: 4 }));
        assert_eq!(coverage.insert(2, piece(b"cd")), Err(Overlap::Overlaps { offset: 2, end: 4 }));
        assert_eq!(coverage.insert(6, piece(b"ghij")), Err(Overlap::Overlaps { offset: 6, end: 10 }));
        assert_eq!(coverage.insert(9, piece(b"j")), Err(Overlap::Overlaps { offset: 9, end: 10 }));
        assert_eq!(coverage.insert(u64::MAX, piece(b"k")), Err(Overlap::OutOfRange { offset: u64::MAX, len: 1 }));
        assert_eq!(coverage.first_gap(), Some((4, 8)));
        coverage.insert(4, piece(b"efgh")).unwrap();
        assert!(coverage.is_contiguous());
        assert_eq!(coverage.prefix(), piece(b"abcdefghijkl"));
    }
}
