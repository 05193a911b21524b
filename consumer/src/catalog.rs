//! `consumer list` and `consumer delete NAME`: the backups in a store, and removing one.
//!
//! A backup is complete iff its index exists, can be read, and every pack it names (and, when proven, its
//! manifest) is in the store with the size the index says ([`BackupIndex::damage`]); `list` reads each index for
//! the figures and shows the others as incomplete (no index: a put that did not finish, or one still at work, as
//! its claim says) or damaged (an index that cannot be read, or objects that do not match it), each with the reason.
//! One damaged backup never hides the others: it is listed as such, and `list` exits non-zero after listing them
//! all. `delete` removes the index first — from that moment the backup no longer counts as complete, whatever
//! happens next — then every other object under the name.

use anyhow::{bail, Result};
use serde::Serialize;
use store::Store;

use crate::layout::{self, BackupIndex, Claim};

/// One backup as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredBackup {
    /// Its name.
    pub name: String,
    /// Whether the put completed (the index exists, and every object it names is there).
    pub complete: bool,
    /// Whether it was proven against the producer's manifest when stored.
    pub proven: bool,
    /// Why it cannot be restored although it has an index (unreadable, or objects that do not match it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// For a backup without an index: the put that claimed it (still at work, or interrupted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<Claim>,
    /// Claims listed under the name (a claim that is listed but cannot be read leaves `claimed_by` empty: a put
    /// may still be at work).
    #[serde(skip_serializing_if = "is_zero")]
    pub claims: u64,
    /// Files (0 when incomplete: unknown).
    pub files: u64,
    /// Bytes of file content (incomplete: the bytes stored so far).
    pub bytes: u64,
    /// Seconds since the epoch when the put finished (0 when incomplete).
    pub created_unix: u64,
    /// Objects stored.
    pub objects: u64,
}

impl StoredBackup {
    /// The status column of the table.
    fn status(&self) -> String {
        match (&self.damaged, self.complete, self.proven, &self.claimed_by) {
            (Some(why), ..) => format!("DAMAGED: {why}"),
            (None, true, true, _) => "complete, proven".into(),
            (None, true, false, _) => "complete, unproven (no manifest)".into(),
            (None, false, _, Some(claim)) => {
                format!("INCOMPLETE (no index: {} is at work, or was interrupted)", claim.describe())
            }
            (None, false, _, None) => "INCOMPLETE (no index: a put that did not finish)".into(),
        }
    }
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// Every backup in `store`, by name. A backup that cannot be read is listed as damaged, with the reason; only a
/// store that cannot be listed at all is an error.
pub fn list(store: &dyn Store) -> Result<Vec<StoredBackup>> {
    let mut found = Vec::new();
    for name in store.list_dirs("")? {
        if layout::check_name(&name).is_err() {
            continue;
        }
        let objects = match store.list(&name) {
            Ok(objects) => objects,
            // One backup the store will not list (no permission on its directory, say) hides no other.
            Err(e) => {
                found.push(StoredBackup {
                    name,
                    complete: false,
                    proven: false,
                    damaged: Some(format!("cannot be listed: {e}")),
                    claimed_by: None,
                    claims: 0,
                    files: 0,
                    bytes: 0,
                    created_unix: 0,
                    objects: 0,
                });
                continue;
            }
        };
        let claims = objects.iter().filter(|o| layout::claim_of(&name, &o.key).is_some()).count() as u64;
        let mut listed = StoredBackup {
            name,
            complete: false,
            proven: false,
            damaged: None,
            claimed_by: None,
            claims,
            files: 0,
            bytes: objects.iter().map(|o| o.size).sum(),
            created_unix: 0,
            objects: objects.len() as u64,
        };
        let index_key = layout::object_key(&listed.name, layout::INDEX_NAME);
        if objects.iter().any(|o| o.key == index_key) {
            match read_index(store, &index_key) {
                Ok(index) => {
                    listed.damaged = index.damage(&objects);
                    listed.complete = listed.damaged.is_none();
                    listed.proven = index.proven;
                    listed.files = index.files;
                    listed.bytes = index.bytes;
                    listed.created_unix = index.created_unix;
                }
                Err(why) => listed.damaged = Some(why),
            }
        } else {
            listed.claimed_by = objects
                .iter()
                .filter(|o| layout::claim_of(&listed.name, &o.key).is_some())
                .find_map(|o| store::get_small(store, &o.key, 64 << 10).ok())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        }
        found.push(listed);
    }
    Ok(found)
}

/// A backup's index, or why it cannot be read (for the listing).
fn read_index(store: &dyn Store, key: &str) -> std::result::Result<BackupIndex, String> {
    let bytes = store::get_small(store, key, layout::MAX_INDEX).map_err(|e| format!("{e:#}"))?;
    BackupIndex::from_json(&bytes).map_err(|e| format!("{key} cannot be read: {e:#}"))
}

/// Prints the list as a table (or JSON); fails, after listing every backup, if any is damaged.
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
            writeln!(
                out,
                "{:<32} {:>10} {:>8} {:>14}  {:<20} {}",
                b.name,
                runtime::size::human(b.bytes),
                b.files,
                b.bytes,
                layout::date(b.created_unix),
                b.status()
            )?;
        }
    }
    out.flush()?;
    let damaged: Vec<&str> = backups.iter().filter(|b| b.damaged.is_some()).map(|b| b.name.as_str()).collect();
    if !damaged.is_empty() {
        bail!(
            "{} of the {} backups in {} are damaged and cannot be restored: {}",
            damaged.len(),
            backups.len(),
            store.describe(),
            damaged.join(", ")
        );
    }
    Ok(format!("{} backup(s) in {}", backups.len(), store.describe()))
}

/// `consumer delete NAME`: removes backup `name` ([`delete`]), or with `dry_run` only says what that would remove.
pub fn delete_named(store: &dyn Store, name: &str, dry_run: bool) -> Result<String> {
    if !dry_run {
        return delete(store, name);
    }
    layout::check_name(name)?;
    let objects = store.list(name)?;
    if objects.is_empty() {
        bail!("no backup named {name} in {}", store.describe());
    }
    let bytes: u64 = objects.iter().map(|o| o.size).sum();
    Ok(format!(
        "dry run: deleting {name} would remove {} objects ({}) from {}; nothing was deleted",
        objects.len(),
        runtime::size::human(bytes),
        store.describe()
    ))
}

/// Removes an incomplete backup `name` (no index), its claims first: a put still at work that finds its claim gone
/// fails before it writes an index over what is being removed.
pub fn delete_incomplete(store: &dyn Store, name: &str) -> Result<String> {
    layout::check_name(name)?;
    let objects = store.list(name)?;
    if objects.iter().any(|o| o.key == layout::object_key(name, layout::INDEX_NAME)) {
        bail!("{name} has an index now: it is no longer incomplete, and is kept");
    }
    let (claims, rest): (Vec<_>, Vec<_>) = objects.iter().partition(|o| layout::claim_of(name, &o.key).is_some());
    for object in claims.iter().chain(rest.iter()) {
        store.delete(&object.key)?;
    }
    Ok(format!("deleted {name}: {} objects from {}", objects.len(), store.describe()))
}

/// Removes every object of backup `name`, the index first.
pub fn delete(store: &dyn Store, name: &str) -> Result<String> {
    layout::check_name(name)?;
    let objects = store.list(name)?;
    if objects.is_empty() {
        bail!("no backup named {name} in {}", store.describe());
    }
    let index_key = layout::object_key(name, layout::INDEX_NAME);
    let mut removed = 0;
    if objects.iter().any(|o| o.key == index_key) {
        store.delete(&index_key)?;
        removed += 1;
    }
    for object in objects.iter().filter(|o| o.key != index_key) {
        store.delete(&object.key)?;
        removed += 1;
    }
    Ok(format!("deleted {name}: {removed} objects from {}", store.describe()))
}
