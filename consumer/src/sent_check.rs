//! What `get` checks when it sends a stored backup on (to STDOUT or into pipes) rather than extracting it: every
//! file the streams carry arrives whole, with the size and CRC-32 its manifest records, and nothing arrives that the
//! manifest does not list.
//!
//! The packs were already checked against the index (size, CRC-32), but whoever can write to the bucket can change
//! a pack and fix both its chunks' CRCs and the index; the manifest travels in the same streams and says what each
//! file must be. A file's CRC-32 is combined from its chunks' (each payload checked against its chunk's CRC as it
//! is parsed), so the check costs one pass of CRC-32 over the data. A file's state lives from its first chunk to
//! the moment it is whole and checked; the manifest's expectations (one entry per file) are held in memory, as
//! the merge to STDOUT already holds them.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use proto::is_marker_name;
use proto::{ChunkHeader, ChunkKind, ChunkReader, CrcPiece};
use proto::{Manifest, MANIFEST_NAME};

use crate::coverage::Coverage;

/// A file of the manifest.
struct Expected {
    piece: CrcPiece,
    checked: bool,
}

/// A file on its way: the bytes that went by, and whether its end-of-file chunk did.
#[derive(Default)]
struct Passing {
    coverage: Coverage,
    ended: bool,
}

/// The files of a backup as its manifest lists them, checked as their chunks go by.
pub struct SentCheck {
    /// Every file of the manifest, by path on the wire: its size and CRC-32 there, and whether it went by whole.
    expected: HashMap<Vec<u8>, Expected>,
    /// Files some of whose chunks went by.
    passing: HashMap<Vec<u8>, Passing>,
    /// Files found whole and as the manifest says.
    checked: u64,
}

impl SentCheck {
    /// Expectations from `manifest`; a manifest that lists a path twice is refused.
    pub fn new(manifest: &Manifest) -> Result<SentCheck> {
        let mut expected = HashMap::with_capacity(manifest.files.len());
        for record in &manifest.files {
            let (path, piece) = record.as_sent();
            if expected.insert(path.to_vec(), Expected { piece, checked: false }).is_some() {
                bail!("the manifest lists {} twice: refusing it", record.path.display());
            }
        }
        Ok(SentCheck { expected, passing: HashMap::new(), checked: 0 })
    }

    /// Takes one chunk (its payload already checked against the chunk's CRC-32): an error once a file is known not
    /// to be what the manifest says. Start markers and the manifest itself are not files of the backup.
    pub fn chunk(&mut self, header: &ChunkHeader) -> Result<()> {
        let path = header.path.as_slice();
        if path == MANIFEST_NAME.as_bytes() || is_marker_name(path) {
            return Ok(());
        }
        let display = || header.display_path();
        let expected = match self.expected.get(path) {
            None => bail!("{} is in the stored streams but not in the backup's manifest", display()),
            Some(file) if file.checked => {
                bail!("{}: a chunk came after the whole file had (a duplicated chunk?)", display())
            }
            Some(file) => file.piece,
        };
        let passing = self.passing.entry(path.to_vec()).or_default();
        match header.kind {
            ChunkKind::Payload => {
                let piece = CrcPiece { crc: header.checksum, len: header.payload_len };
                passing.coverage.insert(header.file_offset, piece).map_err(|e| anyhow!("{}: {e}", display()))?;
                if passing.coverage.prefix().len > expected.len {
                    bail!("{}: more bytes than the manifest's {} arrived", display(), expected.len);
                }
            }
            ChunkKind::Eof if passing.ended => bail!("{}: a second end-of-file chunk", display()),
            ChunkKind::Eof => passing.ended = true,
        }
        let got = passing.coverage.prefix();
        if passing.ended && passing.coverage.is_contiguous() && got.len == expected.len {
            if got.crc != expected.crc {
                bail!(
                    "{}: CRC-32 {:08x} of the stored bytes does not match the manifest's {:08x} (a pack was changed \
                     in the store)",
                    display(),
                    got.crc,
                    expected.crc
                );
            }
            self.passing.remove(path);
            self.expected.get_mut(path).expect("looked up above").checked = true;
            self.checked += 1;
        }
        Ok(())
    }

    /// Takes the chunks of one pack, as [`parse_pack`] found them.
    pub fn pack(&mut self, headers: &[ChunkHeader]) -> Result<()> {
        headers.iter().try_for_each(|header| self.chunk(header))
    }

    /// After the last chunk: every file the manifest lists went by whole. Returns how many files were checked.
    pub fn finish(self) -> Result<u64> {
        if let Some((path, passing)) = self.passing.iter().next() {
            let display = String::from_utf8_lossy(path);
            let expected = self.expected[path].piece;
            let got = passing.coverage.prefix();
            if !passing.ended {
                bail!("{display}: its end-of-file chunk is not in the stored streams");
            }
            bail!("{display}: {} bytes arrived whole; the manifest says {}", got.len, expected.len);
        }
        let missing: Vec<&Vec<u8>> = self.expected.iter().filter(|(_, file)| !file.checked).map(|(p, _)| p).collect();
        if let Some(path) = missing.first() {
            bail!(
                "{} file(s) the manifest lists are not in the stored streams, e.g. {}",
                missing.len(),
                String::from_utf8_lossy(path)
            );
        }
        Ok(self.checked)
    }
}

/// The chunks of one pack (whole chunks, verbatim), every payload checked against its chunk's CRC-32; `name` is
/// the pack's stream, for messages. Apart from [`SentCheck`], so that the streams of a get parse their packs at the
/// same time and share only the bookkeeping.
pub fn parse_pack(bytes: &[u8], name: &str) -> Result<Vec<ChunkHeader>> {
    let mut reader = ChunkReader::new(bytes).with_max_payload(bytes.len() as u64);
    let mut headers = Vec::new();
    while let Some((header, _)) = reader.read_borrowed().map_err(|e| anyhow!("{name}: {e}"))? {
        headers.push(header);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{FileRecord, WirePath};

    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        let mut manifest: Manifest = serde_json::from_str(
            r#"{"format":1,"tool":"t","created_unix":0,"chunk_size":4,"compression":{"method":"none"},
                "digest":"crc32","streams":[],"files":[]}"#,
        )
        .unwrap();
        manifest.files = files
            .iter()
            .map(|(path, data)| FileRecord {
                path: WirePath(path.as_bytes().to_vec()),
                size: data.len() as u64,
                mode: 0o640,
                mtime: 0,
                chunks: data.len().div_ceil(4) as u64,
                crc32: CrcPiece::of(data).crc,
                sha1: None,
                stored: None,
                corrupt_pages: Vec::new(),
                corrupt_pages_total: 0,
            })
            .collect();
        manifest
    }

    fn payload(path: &str, offset: u64, data: &[u8]) -> ChunkHeader {
        ChunkHeader {
            kind: ChunkKind::Payload,
            path: path.as_bytes().to_vec(),
            payload_len: data.len() as u64,
            file_offset: offset,
            checksum: CrcPiece::of(data).crc,
            stream_offset: 0,
        }
    }

    fn eof(path: &str) -> ChunkHeader {
        ChunkHeader { kind: ChunkKind::Eof, ..payload(path, 0, b"") }
    }

    #[test]
    fn whole_files_pass_in_any_order_and_forged_or_missing_ones_fail() {
        let m = manifest(&[("a", b"abcdefgh"), ("b", b"xy")]);
        // Chunks out of order, the end-of-file chunk before the last payload (pipes): fine.
        let mut check = SentCheck::new(&m).unwrap();
        for header in [payload("a", 4, b"efgh"), eof("a"), payload("b", 0, b"xy"), eof("b"), payload("a", 0, b"abcd")] {
            check.chunk(&header).unwrap();
        }
        assert_eq!(check.finish().unwrap(), 2);

        // A payload whose chunk CRC was recomputed after a change: the file's CRC gives it away at its end.
        let mut check = SentCheck::new(&m).unwrap();
        check.chunk(&payload("a", 0, b"abcd")).unwrap();
        check.chunk(&payload("a", 4, b"efgX")).unwrap();
        let err = check.chunk(&eof("a")).unwrap_err().to_string();
        assert!(err.starts_with("a: CRC-32") && err.contains("does not match the manifest's"), "{err}");

        // A chunk again after its file was whole.
        let mut check = SentCheck::new(&m).unwrap();
        check.chunk(&payload("b", 0, b"xy")).unwrap();
        check.chunk(&eof("b")).unwrap();
        let err = check.chunk(&payload("b", 0, b"xy")).unwrap_err().to_string();
        assert!(err.contains("b: a chunk came after the whole file had"), "{err}");

        // A file missing, one cut short, one not in the manifest.
        let mut check = SentCheck::new(&m).unwrap();
        check.chunk(&payload("b", 0, b"xy")).unwrap();
        check.chunk(&eof("b")).unwrap();
        let err = check.finish().unwrap_err().to_string();
        assert!(err.contains("1 file(s) the manifest lists are not in the stored streams, e.g. a"), "{err}");
        let mut check = SentCheck::new(&m).unwrap();
        check.chunk(&payload("a", 0, b"abcd")).unwrap();
        check.chunk(&eof("a")).unwrap();
        assert!(check.finish().unwrap_err().to_string().contains("a: 4 bytes arrived whole; the manifest says 8"));
        let mut check = SentCheck::new(&m).unwrap();
        assert!(check.chunk(&eof("c")).unwrap_err().to_string().contains("c is in the stored streams but not in"));
        // Markers and the manifest pass through.
        let mut check = SentCheck::new(&manifest(&[])).unwrap();
        check.chunk(&payload("backup-stream-0.json", 0, b"{}")).unwrap();
        check.chunk(&payload(MANIFEST_NAME, 0, b"{}")).unwrap();
        assert_eq!(check.finish().unwrap(), 0);
    }
}
