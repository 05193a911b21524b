//! The start marker: the first file of every stream our producer writes, so that a consumer knows from the first
//! chunk that the stream is ours and that a manifest will follow.
//!
//! Without it, a stream of ours cut between two chunks (a producer killed by SIGKILL, the OOM killer, a dead ssh; a
//! pipeline without `pipefail`) looks exactly like a stream from `mbstream -c` or `mariadb-backup`, which never has a
//! manifest: the consumer could only shrug. With it, "no manifest" on a marked stream is an error.
//!
//! The marker is an ordinary small file, so every xbstream reader handles it: stream `i` starts with one payload
//! chunk and one end-of-file chunk of `backup-stream-<i>.json` ([`marker_name`]; a name `mbstream -x` accepts, and one
//! per stream, so the pipes of one backup can be extracted by `mbstream -x` into one directory without a
//! collision). It says which backup the stream belongs to ([`StreamMarker::backup_id`], repeated in the manifest),
//! which stream of how many it is, and what the consumer may want to know before the data: chunk size,
//! compression, digest, how chunks were spread over the pipes.
//!
//! Our consumer reads the marker and does not write it out. A source tree holding a top-level file named like a
//! marker (a tree that `mbstream -x` restored) does not get it copied: the producer skips it, as it skips an old
//! manifest.

use serde::{Deserialize, Serialize};

use crate::manifest::{Compression, Digest};

/// The start of every marker's name; the full name is [`marker_name`].
pub const MARKER_PREFIX: &str = "backup-stream-";

/// The end of every marker's name.
pub const MARKER_SUFFIX: &str = ".json";

/// Version of the marker layout; a consumer refuses versions it does not know.
pub const MARKER_FORMAT: u32 = 1;

/// Largest marker a consumer accepts (a real one is a few hundred bytes).
pub const MAX_MARKER_LEN: u64 = 64 << 10;

/// The name of stream `index`'s marker: `backup-stream-<index>.json`.
pub fn marker_name(index: usize) -> String {
    format!("{MARKER_PREFIX}{index}{MARKER_SUFFIX}")
}

/// Whether `path` (a wire path) is named like a marker: `backup-stream-<digits>.json` at the top level.
pub fn is_marker_name(path: &[u8]) -> bool {
    path.strip_prefix(MARKER_PREFIX.as_bytes())
        .and_then(|rest| rest.strip_suffix(MARKER_SUFFIX.as_bytes()))
        .is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
}

/// How the producer spread chunks over its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// Each chunk goes to the next stream: a file may span streams.
    Chunk,
    /// Each file goes whole, in order, to one stream.
    File,
}

/// What the first file of a stream says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMarker {
    /// Layout version ([`MARKER_FORMAT`]).
    pub format: u32,
    /// The program and version that wrote it, e.g. `"producer 0.1.0"`.
    pub tool: String,
    /// Names this backup run; every stream of the run and its manifest carry the same id, so pipes from two runs
    /// are never mixed up.
    pub backup_id: String,
    /// This stream's number: 0 for STDOUT or `thread_0`.
    pub stream: u32,
    /// How many streams the backup was written to.
    pub streams: u32,
    /// Size of the payload chunks files are split into.
    pub chunk_size: u64,
    /// How payloads are transformed.
    pub compression: Compression,
    /// Which content checksums the manifest will carry.
    pub digest: Digest,
    /// How chunks are spread over the streams.
    pub binding: Binding,
    /// How the files are encrypted (absent: they are not): every file travels as `<path>.age`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::Encryption>,
}

/// Why a marker could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarkerError {
    /// Not valid JSON, or not this layout.
    #[error("start marker is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A layout version this build does not know.
    #[error("start marker format {found} is not supported (this build reads format {MARKER_FORMAT})")]
    UnsupportedFormat {
        /// The version found.
        found: u32,
    },
}

impl StreamMarker {
    /// Serialises to one line of JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("a marker always serialises");
        out.push(b'\n');
        out
    }

    /// Parses and checks the format version.
    pub fn from_json(bytes: &[u8]) -> Result<StreamMarker, MarkerError> {
        let marker: StreamMarker = serde_json::from_slice(bytes)?;
        if marker.format != MARKER_FORMAT {
            return Err(MarkerError::UnsupportedFormat { found: marker.format });
        }
        Ok(marker)
    }
}

/// A backup id that is unique in practice: start time in nanoseconds, process id and a few bytes of the OS's
/// randomness (hashed with the std hasher's random keys), in hex.
pub fn new_backup_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{nanos:x}-{:x}-{:016x}", std::process::id(), hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StreamMarker {
        StreamMarker {
            format: MARKER_FORMAT,
            tool: "producer 0.1.0".into(),
            backup_id: new_backup_id(),
            stream: 2,
            streams: 4,
            chunk_size: 2 << 20,
            compression: Compression::Zstd { level: 1 },
            digest: Digest::Sha1,
            binding: Binding::File,
            encryption: None,
        }
    }

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let marker = sample();
        let json = marker.to_json();
        assert!(json.len() < 512, "a marker is small: {} bytes", json.len());
        assert_eq!(StreamMarker::from_json(&json).unwrap(), marker);
        let mut other = marker;
        other.format = 7;
        let err = StreamMarker::from_json(&other.to_json()).unwrap_err();
        assert_eq!(err.to_string(), "start marker format 7 is not supported (this build reads format 1)");
        assert!(StreamMarker::from_json(b"{}").is_err());
    }

    #[test]
    fn names_are_per_stream_recognised_and_accepted_by_mbstream() {
        for index in [0, 1, 7, 123] {
            let name = marker_name(index);
            assert!(is_marker_name(name.as_bytes()), "{name}");
            assert!(!name.starts_with('.') && !name.starts_with('/'));
            crate::safe_relative_path(name.as_bytes()).unwrap();
        }
        for other in ["backup-stream-.json", "backup-stream-1.jsonx", "db/backup-stream-1.json", "backup-stream-a.json"]
        {
            assert!(!is_marker_name(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn backup_ids_differ() {
        assert_ne!(new_backup_id(), new_backup_id());
    }
}
