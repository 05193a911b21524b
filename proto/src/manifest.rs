//! The backup manifest: a JSON document the producer streams as the last file of every backup, so a consumer can
//! prove that nothing is missing, duplicated or damaged.
//!
//! It is named [`MANIFEST_NAME`] (`backup-manifest.json`): a name `mbstream -x` accepts (it rejects names starting
//! with `.`). With `--digest sha1` the producer also streams [`SHA1SUMS_NAME`] (`backup-manifest.sha1`) just before
//! it, in `sha1sum` format, so a restored tree can be checked with plain `sha1sum -c backup-manifest.sha1`.
//!
//! A source tree that already holds a top-level file with either name (typically a tree restored from an earlier
//! backup) does not get it copied: the producer skips it with a warning and writes its own. The file list, sizes and
//! checksums in the new manifest describe every other file.
//!
//! Counting conventions, shared by both sides:
//! - a file's `chunks` is its number of payload (`P`) chunks; an empty file has 0 (it travels as one `E` chunk);
//! - a stream's `chunks` and `bytes` count everything written to that stream *except* the manifest file's own
//!   chunks (the manifest cannot count itself); `bytes` are encoded bytes (headers included). The start marker
//!   ([`crate::marker`]) is counted.

use serde::{Deserialize, Serialize};

/// File name of the manifest, at the top of the backup.
pub const MANIFEST_NAME: &str = "backup-manifest.json";

/// File name of the `sha1sum -c` list streamed with `--digest sha1`.
pub const SHA1SUMS_NAME: &str = "backup-manifest.sha1";

/// Version of the manifest layout; a consumer refuses versions it does not know.
pub const MANIFEST_FORMAT: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The program and version that wrote it, e.g. `"producer 0.1.0"`.
    pub tool: String,
    /// Seconds since the Unix epoch when the backup started.
    pub created_unix: u64,
    /// The id every stream's start marker carries ([`crate::marker`]); absent for a copy with no stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Size of the payload chunks the files were split into (the last chunk of a file may be shorter).
    pub chunk_size: u64,
    /// How payloads were transformed before streaming.
    pub compression: Compression,
    /// Which content checksums the file records carry.
    pub digest: Digest,
    /// One record per output stream, in stream order.
    pub streams: Vec<StreamRecord>,
    /// Every file in the backup except the manifest itself, in the order they were completed.
    pub files: Vec<FileRecord>,
}

/// Payload transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Compression {
    /// Payload bytes are the file's bytes.
    None,
    /// Each chunk is one zstd frame; the file travels as `<path>.zst`.
    Zstd {
        /// The zstd level used.
        level: i32,
    },
}

/// Which checksums of the original content the manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Digest {
    /// CRC-32 only (combined from the chunk CRCs: free).
    Crc32,
    /// CRC-32 and SHA-1.
    Sha1,
}

/// What one output stream carried (the manifest's own chunks excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Stream number: 0 for STDOUT or `thread_0`.
    pub index: u32,
    /// Chunks written, `P` and `E`.
    pub chunks: u64,
    /// Encoded bytes written, headers included.
    pub bytes: u64,
}

/// One backed-up file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative path: a string when it is UTF-8, otherwise `{"hex": "..."}` of its bytes.
    pub path: WirePath,
    /// Size of the original content, exactly as copied.
    pub size: u64,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Number of payload chunks.
    pub chunks: u64,
    /// CRC-32 (zlib) of the original content.
    pub crc32: u32,
    /// SHA-1 of the original content, lowercase hex, with `--digest sha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    /// How the file travels when that differs from the original (compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredForm>,
    /// InnoDB pages found corrupt while copying and still corrupt after every re-read, recorded with
    /// `producer --validate-pages --log-page-corruption` (the copy is faithful: these pages were bad at the source).
    /// (At most the first 1024 such pages are listed; `corrupt_pages_total` counts them all.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt_pages: Vec<u64>,
    /// How many pages were recorded corrupt, listed or not (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupt_pages_total: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The on-the-wire form of a file whose payload was transformed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredForm {
    /// Path on the wire, e.g. `db/t1.ibd.zst`.
    pub path: WirePath,
    /// Bytes on the wire.
    pub size: u64,
    /// CRC-32 of the bytes on the wire.
    pub crc32: u32,
}

/// A path as raw bytes, serialised as a JSON string when it is UTF-8 (the usual case) and as `{"hex": "..."}`
/// otherwise, since JSON strings cannot carry arbitrary bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WirePath(pub Vec<u8>);

impl WirePath {
    /// The path for messages: lossy UTF-8.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WirePathRepr {
    Text(String),
    Bytes { hex: String },
}

impl Serialize for WirePath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => WirePathRepr::Text(text.to_string()),
            Err(_) => WirePathRepr::Bytes { hex: hex::encode(&self.0) },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for WirePath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match WirePathRepr::deserialize(deserializer)? {
            WirePathRepr::Text(text) => Ok(WirePath(text.into_bytes())),
            WirePathRepr::Bytes { hex } => hex::decode(hex).map(WirePath).map_err(serde::de::Error::custom),
        }
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid JSON, or not this layout.
    #[error("manifest is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A layout version this build does not know.
    #[error("manifest format {found} is not supported (this build reads format {MANIFEST_FORMAT})")]
    UnsupportedFormat {
        /// The version found.
        found: u32,
    },
}

impl Manifest {
    /// Serialises to pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }

    /// Parses and checks the format version.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat { found: manifest.format });
        }
        Ok(manifest)
    }

    /// The `sha1sum -c` list of the files that carry a SHA-1 (`<hex>  <path>` lines). Non-UTF-8 paths are written
    /// as raw bytes, which `sha1sum` also reads.
    pub fn sha1sums(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for file in &self.files {
            if let Some(sha1) = &file.sha1 {
                out.extend_from_slice(sha1.as_bytes());
                out.extend_from_slice(b"  ");
                out.extend_from_slice(&file.path.0);
                out.push(b'\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            tool: "producer 0.1.0".into(),
            created_unix: 1_700_000_000,
            backup_id: Some("id".into()),
            chunk_size: 1 << 20,
            compression: Compression::None,
            digest: Digest::Sha1,
            streams: vec![StreamRecord { index: 0, chunks: 3, bytes: 100 }],
            files: vec![
                FileRecord {
                    path: WirePath(b"db/t1.ibd".to_vec()),
                    size: 5,
                    mode: 0o640,
                    mtime: 1,
                    chunks: 1,
                    crc32: 0x3610a686,
                    sha1: Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into()),
                    stored: None,
                    corrupt_pages: vec![3, 9],
                    corrupt_pages_total: 2,
                },
                FileRecord {
                    path: WirePath(b"bad\xffname".to_vec()),
                    size: 0,
                    mode: 0o600,
                    mtime: 2,
                    chunks: 0,
                    crc32: 0,
                    sha1: None,
                    stored: None,
                    corrupt_pages: Vec::new(),
                    corrupt_pages_total: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trips_through_json_including_non_utf8_paths() {
        let manifest = sample();
        let json = manifest.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"path\": \"db/t1.ibd\""), "{text}");
        assert!(text.contains("\"hex\": \"626164ff6e616d65\""), "{text}");
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
    }

    #[test]
    fn rejects_unknown_format_and_garbage() {
        let mut manifest = sample();
        manifest.format = 99;
        let err = Manifest::from_json(&manifest.to_json()).unwrap_err();
        assert_eq!(err.to_string(), "manifest format 99 is not supported (this build reads format 1)");
        let err = Manifest::from_json(b"{\"format\": 1").unwrap_err();
        assert!(err.to_string().starts_with("manifest is not valid: "), "{err}");
    }

    #[test]
    fn sha1sums_lists_files_with_a_sha1() {
        assert_eq!(sample().sha1sums(), b"aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d  db/t1.ibd\n".to_vec());
    }

    #[test]
    fn manifest_names_are_accepted_by_mbstream() {
        for name in [MANIFEST_NAME, SHA1SUMS_NAME] {
            assert!(!name.starts_with('.') && !name.starts_with('/'));
            crate::safe_relative_path(name.as_bytes()).unwrap();
        }
    }
}
