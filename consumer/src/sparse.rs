//! Sparse in, sparse out: the consumer leaves a hole wherever a whole block of the target file system would hold
//! only zeros, as `cp --sparse=always` does.
//!
//! A stream carries a sparse file's holes as zeros (the xbstream `P` chunk has no way to say "hole" that both real
//! extractors read alike), so a 1 GiB file holding 4 KiB of data arrives as 1 GiB of zeros; written as it came it
//! would take 1 GiB of disk. MariaDB's `PAGE_COMPRESSED` tables punch a hole in every page they compress, so a
//! datadir restored without holes can need many times the disk of the original. Files are written into new files
//! only (the staging directory), where every byte not written reads as zero, so a block of zeros is simply not
//! written. A write whose last block is skipped makes sure the file is at least as long as the write, as a plain
//! `pwrite` would have made it ([`SparseWriter::write_at`]); where other threads write the same file, it says how
//! long the file must be instead, for the file's owner to make it so once no write is in flight
//! ([`SparseWriter::write_leaving_holes`]).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The block size assumed when the file system does not say (or says something odd).
const DEFAULT_BLOCK: usize = 4096;

/// How a target writes file data: whole zero blocks of `block` bytes (aligned to file offsets) become holes.
#[derive(Debug, Clone, Copy)]
pub struct SparseWriter {
    block: usize,
}

impl Default for SparseWriter {
    fn default() -> SparseWriter {
        SparseWriter { block: DEFAULT_BLOCK }
    }
}

impl SparseWriter {
    /// Holes of the block size of the file system that holds `dir` (its `st_blksize`, a power of two from 512 B
    /// to 1 MiB; else 4 KiB).
    pub fn for_directory(dir: &impl std::os::fd::AsFd) -> SparseWriter {
        let block = nix::sys::stat::fstat(dir).map_or(DEFAULT_BLOCK, |stat| stat.st_blksize as usize);
        let block = if block.is_power_of_two() && (512..=1 << 20).contains(&block) { block } else { DEFAULT_BLOCK };
        SparseWriter { block }
    }

    /// The block size holes are made of.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Writes `data` at `offset` of `file` (a new file, whose unwritten bytes read as zero), leaving every whole,
    /// aligned block of zeros unwritten. Afterwards the file is at least `offset + data.len()` bytes long: for a
    /// file no other thread writes at the same time.
    pub fn write_at(&self, file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some(end) = self.write_leaving_holes(file, data, offset)? {
            if file.metadata()?.len() < end {
                file.set_len(end)?;
            }
        }
        Ok(())
    }

    /// [`SparseWriter::write_at`] without the final lengthening, for a file other threads write at the same time
    /// (a check of its length and a `set_len` could cut off what another thread wrote in between): returns the
    /// length the file must reach once every write is done, when the last block was left unwritten.
    pub fn write_leaving_holes(&self, file: &File, data: &[u8], offset: u64) -> std::io::Result<Option<u64>> {
        let block = self.block as u64;
        let mut run: Option<usize> = None;
        let mut at = 0usize;
        let mut tail_skipped = false;
        while at < data.len() {
            // The piece of `data` up to the next block boundary of the file.
            let file_at = offset + at as u64;
            let next = ((file_at / block + 1) * block - file_at) as usize;
            let end = (at + next).min(data.len());
            let whole = file_at % block == 0 && end - at == self.block;
            if whole && is_zero(&data[at..end]) {
                if let Some(start) = run.take() {
                    file.write_all_at(&data[start..at], offset + start as u64)?;
                }
                tail_skipped = end == data.len();
            } else {
                run.get_or_insert(at);
                tail_skipped = false;
            }
            at = end;
        }
        if let Some(start) = run {
            file.write_all_at(&data[start..], offset + start as u64)?;
        }
        Ok(tail_skipped.then_some(offset + data.len() as u64))
    }
}

/// Whether every byte of `bytes` is zero (16 at a time).
fn is_zero(bytes: &[u8]) -> bool {
    let (head, body) = bytes.split_at(bytes.len() % 16);
    head.iter().all(|&b| b == 0)
        && body.chunks_exact(16).all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_the_file_keeps_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let writer = SparseWriter { block: 4096 };
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        // 1 MiB of zeros with 100 bytes of data straddling a block boundary at 8000, written as two unaligned
        // pieces, ending in zeros.
        let mut data = vec![0u8; 1 << 20];
        data[8000..8100].fill(7);
        writer.write_at(&file, &data[..5000], 0).unwrap();
        writer.write_at(&file, &data[5000..], 5000).unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert!(meta.blocks() * 512 <= 5 * 4096, "{} blocks of 512 B allocated", meta.blocks());
        // Data everywhere: written whole.
        let full = dir.path().join("full");
        let file = File::create(&full).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        writer.write_at(&file, &data, 3).unwrap();
        assert_eq!(std::fs::read(&full).unwrap()[3..], data[..]);
        assert!(is_zero(&[0; 33]) && !is_zero(&[0, 0, 0, 1]) && !is_zero(&[[0u8; 31].as_slice(), &[1]].concat()));
    }
}
