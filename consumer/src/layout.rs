//! How a backup lies in an object store, the `xbcloud` role done with few, large requests.
//!
//! ```text
//! <NAME>/<stream>/<seq>.xbs     packs: whole xbstream chunks of one stream, verbatim, in stream order, each up to
//!                               --object-size (a pack is itself a valid xbstream; concatenated, a stream's packs
//!                               are exactly the bytes the producer wrote to that stream)
//! <NAME>/backup-manifest.json   the producer's manifest (when the stream carried one), for `get` to plan with
//! <NAME>/index.json             the index, written LAST: it exists iff the put completed, and says which packs
//!                               make up each stream, with their sizes and CRC-32s
//! ```
//!
//! xbcloud makes one object per chunk, so a 1 KiB file costs a request and 100,000 small files cost 100,000; here a
//! request carries megabytes whatever the files. The index names packs by key, so a later backup's index could
//! point at packs an earlier one stored (deduplication), and packs have deterministic names, so an interrupted put
//! could be resumed from the last complete one; neither is done yet.

use serde::{Deserialize, Serialize};

/// The index's object name inside a backup.
pub const INDEX_NAME: &str = "index.json";

/// The producer's manifest's object name inside a backup.
pub const MANIFEST_OBJECT: &str = proto::MANIFEST_NAME;

/// Version of the index layout; `get` refuses versions it does not know.
pub const INDEX_FORMAT: u32 = 1;

/// Largest index `get` reads (held in memory): 64 MiB is ~500,000 packs.
pub const MAX_INDEX: u64 = 64 << 20;

/// The written-last object of a complete backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupIndex {
    /// Layout version ([`INDEX_FORMAT`]).
    pub format: u32,
    /// The backup's name.
    pub name: String,
    /// The program that stored it.
    pub tool: String,
    /// Seconds since the epoch when the put finished.
    pub created_unix: u64,
    /// The producer's backup id (from its start markers), when the stream was ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Whether the streams carried our marker and manifest and matched it chunk for chunk when stored.
    pub proven: bool,
    /// Files in the backup (the manifest's count when proven; end-of-file chunks otherwise).
    pub files: u64,
    /// Bytes of file content (payloads).
    pub bytes: u64,
    /// The streams, in order.
    pub streams: Vec<StoredStream>,
}

/// One stored stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredStream {
    /// Stream number.
    pub index: u32,
    /// Chunks it carried.
    pub chunks: u64,
    /// Bytes it carried.
    pub bytes: u64,
    /// Its packs, in order.
    pub packs: Vec<Pack>,
}

/// One pack object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    /// The object's key (relative to the store's root, so it could name another backup's pack).
    pub key: String,
    /// Its size.
    pub size: u64,
    /// Whole chunks in it.
    pub chunks: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
}

/// Key of pack `seq` of stream `stream` of backup `name`.
pub fn pack_key(name: &str, stream: usize, seq: u64) -> String {
    format!("{name}/{stream}/{seq:010}.xbs")
}

/// Key of an object of backup `name`.
pub fn object_key(name: &str, object: &str) -> String {
    format!("{name}/{object}")
}

/// Checks a backup name: it becomes a key prefix, so it must be one plain path component.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+=@:".contains(&b));
    if !valid {
        anyhow::bail!(
            "backup name {name:?} is not allowed: use letters, digits and . _ - + = @ : (not starting with '.')"
        );
    }
    Ok(())
}

impl BackupIndex {
    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("an index always serialises");
        out.push(b'\n');
        out
    }

    /// Parses and checks the format version.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<BackupIndex> {
        let index: BackupIndex = serde_json::from_slice(bytes)?;
        if index.format != INDEX_FORMAT {
            anyhow::bail!("index format {} is not supported (this build reads format {INDEX_FORMAT})", index.format);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_component() {
        for good in ["NIGHTLY", "2026-12-01T03:00", "db1.full", "a_b+c=d@e"] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "x\u{e9}"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(pack_key("N", 3, 12), "N/3/0000000012.xbs");
    }
}
