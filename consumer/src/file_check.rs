//! What a writer checks of a file once it has come (`writer.rs`): its size and CRC-32 (and SHA-1, and for a
//! decompressed file the compressed bytes that travelled) against its manifest record, and for a decrypted file
//! its nonce binding and last segment; then its mode and mtime are set.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{anyhow, bail, Context, Result};
use proto::{CrcPiece, FileRecord};
use sha1::{Digest as _, Sha1};

use crate::coverage::Coverage;
use crate::dispatch::SealedPiece;
use crate::target::PartialFile;

/// What a decrypted file's final check needs of its segments: its nonce (from its first chunk), the end of the
/// chunk whose final segment was flagged as the file's last, and the furthest end of any chunk.
#[derive(Debug, Default)]
pub(crate) struct SealedEnds {
    nonce: Option<[u8; crypt::NONCE_LEN]>,
    last_end: Option<u64>,
    max_end: u64,
}

impl SealedEnds {
    pub(crate) fn add(&mut self, piece: SealedPiece) -> Result<()> {
        if piece.nonce.is_some() {
            self.nonce = piece.nonce;
        }
        if piece.last && self.last_end.replace(piece.end).is_some() {
            bail!("two segments are flagged as the file's last");
        }
        self.max_end = self.max_end.max(piece.end);
        Ok(())
    }

    /// Whether every byte of the `.age` file (`stored`: what came of it, on the wire) is here, up to the segment
    /// flagged last: then no chunk of it can still come.
    pub(crate) fn is_whole(&self, stored: &Coverage, header_len: usize) -> bool {
        self.last_end.is_some_and(|end| {
            stored.is_contiguous() && stored.prefix().len == crypt::ciphertext_len(header_len as u64, end)
        })
    }

    /// The file ended where its last segment says: not cut short, nothing after it.
    pub(crate) fn check_end(&self, display: &str) -> Result<()> {
        match self.last_end {
            None => bail!("{display}: no segment is flagged as the file's last: it was cut short"),
            Some(end) if end != self.max_end => bail!("{display}: bytes follow the segment flagged as the file's last"),
            Some(_) => Ok(()),
        }
    }
}

/// Checks one extracted file, held under `key`, against its manifest `record`, and sets its mode and mtime:
/// `got` is what arrived, `stored` (decompressed files) the compressed bytes that travelled, `sha1` the SHA-1
/// taken as it arrived (else, if the record has one, the file is read back). `key` is the record's path, or its
/// stored (`.zst`) path for a compressed file extracted as it travelled. `held`: the file still open, to set its
/// mode and mtime on (then closed); else they are set by name.
pub(crate) fn check_file(
    key: &[u8],
    record: &FileRecord,
    partial: &PartialFile,
    got: CrcPiece,
    stored: Option<&Coverage>,
    sha1: Option<[u8; 20]>,
    held: Option<File>,
) -> Result<()> {
    let display = || partial.display().display().to_string();
    let is_original = key == record.path.0.as_slice();
    let expected = if is_original {
        CrcPiece { crc: record.crc32, len: record.size }
    } else {
        let stored = record.stored.as_ref().ok_or_else(|| anyhow!("{}: the manifest is inconsistent", display()))?;
        CrcPiece { crc: stored.crc32, len: stored.size }
    };
    check_piece(&display(), got, expected)?;
    if let Some(stored_coverage) = stored {
        // Decompressed: the compressed bytes that travelled must match the manifest's stored form too.
        let stored = record
            .stored
            .as_ref()
            .ok_or_else(|| anyhow!("{}: decompressed, but the manifest says it was not compressed", display()))?;
        if let Some((start, end)) = stored_coverage.first_gap() {
            bail!("{}: compressed bytes {start}..{end} never arrived", display());
        }
        let expected = CrcPiece { crc: stored.crc32, len: stored.size };
        check_piece(&format!("{} (compressed)", display()), stored_coverage.prefix(), expected)?;
    }
    if let (true, Some(expected)) = (is_original, &record.sha1) {
        let actual = match sha1 {
            Some(sha1) => hex::encode(sha1),
            None => sha1_of(&partial.reopen_for_read()?).with_context(|| format!("cannot read back {}", display()))?,
        };
        if &actual != expected {
            bail!("{}: SHA-1 {actual} does not match the manifest's {expected}", display());
        }
    }
    match held {
        Some(file) => partial.set_metadata_and_close(file, record.mode, record.mtime),
        None => partial.set_metadata(record.mode, Some(record.mtime)),
    }
}

/// A decrypted file against its record in the encrypted manifest: the nonce its first chunk carried is the one the
/// manifest binds to its path (a file swapped for another of the backup fails here), and it ends with its last
/// segment.
pub(crate) fn check_sealed(display: &str, record: &FileRecord, sealed: &SealedEnds) -> Result<()> {
    let expected = record.stored.as_ref().and_then(|stored| stored.nonce.as_deref());
    let Some(expected) = expected else { bail!("{display}: decrypted, but the manifest gives it no nonce") };
    match sealed.nonce {
        None => bail!("{display}: its first chunk (its age header and nonce) never arrived"),
        Some(nonce) if hex::encode(nonce) != expected => {
            bail!("{display}: its nonce is not the one the encrypted manifest binds to this path (a file swapped for another)")
        }
        Some(_) => sealed.check_end(display),
    }
}

/// Size and CRC-32 of a staged file's bytes, read back through `buffer` (a forgotten file: at most a small
/// file's size).
pub(crate) fn crc_of_file(file: &File, partial: &PartialFile, buffer: &mut Vec<u8>) -> Result<CrcPiece> {
    let mut got = CrcPiece::default();
    buffer.resize(64 << 10, 0);
    loop {
        let n = file
            .read_at(buffer, got.len)
            .with_context(|| format!("cannot read back {}", partial.display().display()))?;
        if n == 0 {
            return Ok(got);
        }
        got = got.append(CrcPiece::of(&buffer[..n]));
    }
}

/// The bytes `[0, piece.len)` of a file, as one piece.
pub(crate) fn coverage_of(piece: CrcPiece) -> Result<Coverage> {
    let mut coverage = Coverage::default();
    coverage.insert(0, piece).map_err(|overlap| anyhow!("{overlap}"))?;
    Ok(coverage)
}

/// Size and CRC-32 of what arrived against what the manifest says.
fn check_piece(display: &str, got: CrcPiece, expected: CrcPiece) -> Result<()> {
    if got.len != expected.len {
        bail!("{display}: {} bytes arrived; the manifest says {}", got.len, expected.len);
    }
    if got.crc != expected.crc {
        bail!("{display}: CRC-32 {:08x} does not match the manifest's {:08x}", got.crc, expected.crc);
    }
    Ok(())
}

/// SHA-1 of a whole file, read in 1 MiB pieces.
pub(crate) fn sha1_of(file: &File) -> std::io::Result<String> {
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buffer, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}
