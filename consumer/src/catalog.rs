//! `consumer list` and `consumer delete NAME`: the backups in a store, and removing one.
//!
//! A backup is complete iff its index exists ([`crate::layout`]); `list` reads each index for the figures and
//! shows the others as incomplete, with what the listing says. `delete` removes the index first — from that moment
//! the backup no longer counts as complete, whatever happens next — then every other object under the name.

use anyhow::{bail, Result};
use serde::Serialize;
use store::Store;

use crate::layout::{self, BackupIndex};

/// One backup as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// Whether the put completed (the index exists).
    pub complete: bool,
    /// Whether it was proven against the producer's manifest when stored.
    pub proven: bool,
    /// Files (0 when incomplete: unknown).
    pub files: u64,
    /// Bytes of file content (incomplete: the bytes stored so far).
    pub bytes: u64,
    /// Seconds since the epoch when the put finished (0 when incomplete).
    pub created_unix: u64,
    /// Objects stored.
    pub objects: u64,
}

/// Every backup in `store`, by name.
pub fn list(store: &dyn Store) -> Result<Vec<Listed>> {
    let mut found = Vec::new();
    for name in store.list_dirs("")? {
        if layout::check_name(&name).is_err() {
            continue;
        }
        let objects = store.list(&name)?;
        let index_key = layout::object_key(&name, layout::INDEX_NAME);
        let listed = match objects.iter().any(|o| o.key == index_key) {
            true => {
                let index = BackupIndex::from_json(&store::get_small(store, &index_key, layout::MAX_INDEX)?)?;
                Listed {
                    name,
                    complete: true,
                    proven: index.proven,
                    files: index.files,
                    bytes: index.bytes,
                    created_unix: index.created_unix,
                    objects: objects.len() as u64,
                }
            }
            false => Listed {
                name,
                complete: false,
                proven: false,
                files: 0,
                bytes: objects.iter().map(|o| o.size).sum(),
                created_unix: 0,
                objects: objects.len() as u64,
            },
        };
        found.push(listed);
    }
    Ok(found)
}

/// Prints the list as a table (or JSON).
pub fn run_list(store: &dyn Store, json: bool) -> Result<String> {
    let backups = list(store)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    if json {
        serde_json::to_writer_pretty(&mut out, &backups)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{:<32} {:>10} {:>8} {:>14}  {:<20} status", "NAME", "SIZE", "FILES", "BYTES", "DATE (UTC)")?;
        for b in &backups {
            let status = match (b.complete, b.proven) {
                (true, true) => "complete, proven",
                (true, false) => "complete, unproven (no manifest)",
                (false, _) => "INCOMPLETE (no index: a put that did not finish)",
            };
            writeln!(
                out,
                "{:<32} {:>10} {:>8} {:>14}  {:<20} {status}",
                b.name,
                runtime::size::human(b.bytes),
                b.files,
                b.bytes,
                date(b.created_unix)
            )?;
        }
    }
    out.flush()?;
    Ok(format!("{} backup(s) in {}", backups.len(), store.describe()))
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (UTC), `-` for 0.
fn date(unix: u64) -> String {
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

/// Removes every object of backup `name`, the index first.
pub fn delete(store: &dyn Store, name: &str) -> Result<String> {
    layout::check_name(name)?;
    let objects = store.list(name)?;
    if objects.is_empty() {
        bail!("no backup named {name} in {}", store.describe());
    }
    let index_key = layout::object_key(name, layout::INDEX_NAME);
    store.delete(&index_key)?;
    let mut removed = 1;
    for object in objects.iter().filter(|o| o.key != index_key) {
        store.delete(&object.key)?;
        removed += 1;
    }
    Ok(format!("deleted {name}: {removed} objects from {}", store.describe()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(super::date(0), "-");
        assert_eq!(super::date(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(super::date(951_782_400), "2000-02-29 00:00:00");
    }
}
