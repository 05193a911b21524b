//! How a backup lies in an object store, the `xbcloud` role done with few, large requests.
//!
//! ```text
//! <NAME>/claim-<PUT>.json              written first by put <PUT> (an id of its own): who is storing NAME, since
//!                                      when; a put goes on only if, once its claim is stored, the listing of NAME
//!                                      shows nothing else (see `put`), so two puts of one NAME never both write
//! <NAME>/<PUT>/<stream>/<seq>.xbs      packs: whole xbstream chunks of one stream, verbatim, in stream order, each
//!                                      up to --object-size (a pack is itself a valid xbstream; concatenated, a
//!                                      stream's packs are exactly the bytes the producer wrote to that stream)
//! <NAME>/<PUT>/backup-manifest.json    the producer's manifest (when the stream carried one), for `get` to check
//!                                      and plan with
//! <NAME>/index.json                    the index, written LAST and only if it does not exist yet (a create-only
//!                                      put): it exists iff a put completed, names that put, and says which packs
//!                                      make up each stream, with their sizes and CRC-32s
//! ```
//!
//! Every put writes under names of its own (`<PUT>/`), so even two puts that both got past the claim (a store
//! whose listing lags its writes) cannot mix their packs: the one index that gets stored names one put's packs,
//! all of them whole, and the other put removes its own. Backups stored before put ids (index format 1) keep
//! their packs at `<NAME>/<stream>/<seq>.xbs` and their manifest at `<NAME>/backup-manifest.json`; both are read.
//!
//! xbcloud makes one object per chunk, so a 1 KiB file costs a request and 100,000 small files cost 100,000; here a
//! request carries megabytes whatever the files. The index names packs by key, so a later backup's index could
//! point at packs an earlier one stored (deduplication), and packs have deterministic names within a put, so an
//! interrupted put could be resumed from the last complete one; neither is done yet.

use serde::{Deserialize, Serialize};

/// The index's object name inside a backup.
pub const INDEX_NAME: &str = "index.json";

/// The producer's manifest's object name inside a backup.
pub const MANIFEST_OBJECT: &str = proto::MANIFEST_NAME;

/// Version of the index layout this build writes: 2 since packs live under their put's id. `get` refuses versions
/// it does not know (so an older build refuses a format-2 index instead of looking for its manifest in the wrong
/// place).
pub const INDEX_FORMAT: u32 = 2;

/// The oldest index layout this build reads (packs and manifest directly under the name).
pub const INDEX_FORMAT_OLDEST: u32 = 1;

/// Prefix of a put's claim object inside a backup: `claim-<PUT>.json`.
pub const CLAIM_PREFIX: &str = "claim-";

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
    /// The put that stored it (format 2 on): its packs and manifest lie under `<NAME>/<PUT>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put_id: Option<String>,
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
    /// Where each file's chunks lie in the packs ([`TocRun`] lines, in parts of about [`TOC_PART`] bytes, in
    /// order): what `get --include` plans its range reads with. Empty in backups stored before it was kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub toc: Vec<Pack>,
}

/// About how large a part of a stream's table of contents grows before it is stored (its own object).
pub const TOC_PART: usize = 1 << 20;

/// One line of a stream's table of contents: bytes `from..to` of pack `pack` (its position in the stream's list)
/// are whole chunks of file `path`, consecutive in the pack. A file's chunks may lie in several runs, in several
/// packs and streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocRun {
    /// The pack's position in its stream's list of packs.
    pub pack: u64,
    /// The file's path as the stream carries it (the chunks' path).
    pub path: proto::WirePath,
    /// First byte in the pack.
    pub from: u64,
    /// One past the last byte.
    pub to: u64,
}

/// Key of part `seq` of the table of contents of stream `stream` stored by put `put` of backup `name`.
pub fn toc_key(name: &str, put: &str, stream: usize, seq: u64) -> String {
    format!("{name}/{put}/toc/{stream}/{seq:010}.jsonl")
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
    /// The store's ETag for it, as listed once every pack was stored ([`store::ObjectInfo::e_tag`]): `consumer
    /// check` holds the listing against it, so a pack replaced behind the backup's back is found without reading it.
    /// Absent in indexes written before, and where the store gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

/// Key of pack `seq` of stream `stream` stored by put `put` of backup `name`.
pub fn pack_key(name: &str, put: &str, stream: usize, seq: u64) -> String {
    format!("{name}/{put}/{stream}/{seq:010}.xbs")
}

/// Key of an object of backup `name`.
pub fn object_key(name: &str, object: &str) -> String {
    format!("{name}/{object}")
}

/// Key of the producer's manifest as put `put` stores it; `None`: where backups before put ids kept it.
pub fn manifest_key(name: &str, put: Option<&str>) -> String {
    match put {
        Some(put) => format!("{name}/{put}/{MANIFEST_OBJECT}"),
        None => object_key(name, MANIFEST_OBJECT),
    }
}

/// Key of put `put`'s claim on backup `name`.
pub fn claim_key(name: &str, put: &str) -> String {
    format!("{name}/{CLAIM_PREFIX}{put}.json")
}

/// The put id in a claim's key (`<NAME>/claim-<PUT>.json`), if `key` is one of backup `name`'s claims.
pub fn claim_of<'a>(name: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(name)?.strip_prefix('/')?.strip_prefix(CLAIM_PREFIX)?.strip_suffix(".json")
}

/// What a put says about itself in its claim, so that whoever finds NAME taken knows by whom and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The put's id.
    pub put_id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// Seconds since the epoch when it started.
    pub started_unix: u64,
    /// The program.
    pub tool: String,
}

impl Claim {
    /// A claim for a new put, on this host, now.
    pub fn new() -> Claim {
        Claim {
            put_id: proto::new_backup_id(),
            host: nix::unistd::gethostname().map_or_else(|_| "?".into(), |h| h.to_string_lossy().into_owned()),
            pid: std::process::id(),
            started_unix: unix_now(),
            tool: format!("consumer {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// One line of JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a claim always serialises")
    }

    /// Who and since when, for messages: `put 18f…-2f89-… (host db1, pid 4242, started 2026-12-04 03:00:00 UTC)`.
    pub fn describe(&self) -> String {
        format!("put {} (host {}, pid {}, started {} UTC)", self.put_id, self.host, self.pid, date(self.started_unix))
    }
}

impl Default for Claim {
    fn default() -> Claim {
        Claim::new()
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (UTC), `-` for 0.
pub fn date(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let (days, seconds) = ((unix / 86_400) as i64, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
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
        if !(INDEX_FORMAT_OLDEST..=INDEX_FORMAT).contains(&index.format) {
            anyhow::bail!(
                "index format {} is not supported (this build reads formats {INDEX_FORMAT_OLDEST} to {INDEX_FORMAT})",
                index.format
            );
        }
        Ok(index)
    }

    /// Key of the producer's manifest stored with this backup.
    pub fn manifest_key(&self) -> String {
        manifest_key(&self.name, self.put_id.as_deref())
    }

    /// What is wrong with this index, held against the objects `listed` under its name: a pack it names that is
    /// missing or of another size, or (proven) a missing manifest. `None`: every object it needs is there, as it
    /// says. A backup that fails this is never listed as complete.
    pub fn damage(&self, listed: &[store::ObjectInfo]) -> Option<String> {
        let sizes: std::collections::HashMap<&str, u64> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
        for pack in self.streams.iter().flat_map(|s| s.packs.iter()) {
            match sizes.get(pack.key.as_str()) {
                None => return Some(format!("pack {} is missing", pack.key)),
                Some(&size) if size != pack.size => {
                    return Some(format!("pack {} holds {size} bytes; the index says {}", pack.key, pack.size))
                }
                Some(_) => {}
            }
        }
        let manifest = self.manifest_key();
        if self.proven && !sizes.contains_key(manifest.as_str()) {
            return Some(format!("its manifest {manifest} is missing"));
        }
        None
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
        assert_eq!(pack_key("N", "P", 3, 12), "N/P/3/0000000012.xbs");
        assert_eq!(claim_of("N", &claim_key("N", "p-1")), Some("p-1"));
        assert_eq!(claim_of("N", "N/index.json"), None);
        assert_eq!(claim_of("N", "NX/claim-p.json"), None);
        assert_eq!(manifest_key("N", None), "N/backup-manifest.json");
        assert_eq!(manifest_key("N", Some("P")), "N/P/backup-manifest.json");
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date(0), "-");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00");
    }
}
