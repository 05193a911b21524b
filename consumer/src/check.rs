//! `consumer check NAME [--read-data [PERCENT]]`: proves a stored backup whole where it lies, writing nothing.
//!
//! Without `--read-data` it costs two requests, whatever the size of the backup: the index is read and the backup's
//! objects are listed. Every pack and part of the table of contents the index names must be listed with its
//! recorded size and (where the index recorded one, and the store gives one) its ETag. A different ETag means the
//! object was written again after the backup was stored (or the store was copied): with `--read-data` such packs
//! are read and proven whatever the share. A proven backup's manifest must be there too. Every problem is named,
//! not only the first.
//!
//! `--read-data PERCENT` also downloads that share of the packs, chosen at random (so that checks run night after
//! night cover everything), and proves each one:
//! - its size and CRC-32 against the index;
//! - every chunk in it against its own CRC-32;
//! - with every pack read (`--read-data` alone is 100 %), every file of the manifest against its size and
//!   CRC-32, as `get` checks what it sends on ([`crate::sent_check`]).
//!
//! Nothing is written anywhere. Downloads run `--parallel` at a time, each into one buffer of its pack's size,
//! within `--memory-limit`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use proto::{CrcPiece, Manifest};
use runtime::lock::Locked;
use runtime::size::{human, size_arg};
use store::Store;

use crate::layout::{self, BackupIndex, Pack};
use crate::sent_check::SentCheck;

/// Validated `check` settings.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The backup's name.
    pub name: String,
    /// The share of packs to download and prove, in percent (`None`: metadata only).
    pub read_data: Option<f64>,
    /// Downloads in flight.
    pub parallel: usize,
    /// What the downloads may hold at once (one pack each), and the manifest.
    pub memory_limit: u64,
}

impl CheckConfig {
    /// Validates `check` arguments.
    pub fn from_args(args: &crate::cli::CheckArgs) -> Result<CheckConfig> {
        layout::check_name(&args.name)?;
        let read_data = match args.read_data.as_deref() {
            None => None,
            Some(text) => {
                let number = text.trim().trim_end_matches('%');
                match number.parse::<f64>() {
                    Ok(percent) if percent > 0.0 && percent <= 100.0 => Some(percent),
                    _ => bail!("--read-data {text:?}: give a share of the packs above 0 and up to 100 (e.g. 10%)"),
                }
            }
        };
        if args.parallel == 0 {
            bail!("--parallel must be at least 1");
        }
        let memory_limit = size_arg(&args.memory_limit, "--memory-limit")?;
        Ok(CheckConfig { name: args.name.clone(), read_data, parallel: args.parallel, memory_limit })
    }
}

/// What a listing says of one object the index names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Missing, or of another size: the backup cannot be restored as it is.
    Damaged(String),
    /// There with its size, but written again since it was stored (its ETag changed): what it holds now is only
    /// known by reading it.
    Changed {
        /// The object.
        key: String,
        /// What to say.
        text: String,
    },
}

/// What is wrong with the objects of a backup, as listed: every pack and part of the table of contents the index
/// names that is missing, of another size, or (by its ETag) written again since the backup was stored; a proven
/// backup's missing manifest.
pub fn listing_problems(index: &BackupIndex, listed: &[store::ObjectInfo]) -> Vec<Finding> {
    let objects: HashMap<&str, &store::ObjectInfo> = listed.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut problems = Vec::new();
    for pack in index.streams.iter().flat_map(|s| s.packs.iter().chain(s.toc.iter())) {
        match objects.get(pack.key.as_str()) {
            None => problems.push(Finding::Damaged(format!(
                "MISSING {}: the index names it, the store does not hold it",
                pack.key
            ))),
            Some(object) if object.size != pack.size => problems.push(Finding::Damaged(format!(
                "DAMAGED {}: {} bytes stored; the index says {}",
                pack.key, object.size, pack.size
            ))),
            Some(object) => match (&pack.e_tag, &object.e_tag) {
                (Some(recorded), Some(now)) if recorded != now => problems.push(Finding::Changed {
                    key: pack.key.clone(),
                    text: format!(
                        "CHANGED {}: ETag {now}, recorded {recorded} when the backup was stored (written again since, \
                         or the store was copied)",
                        pack.key
                    ),
                }),
                _ => {}
            },
        }
    }
    let manifest = index.manifest_key();
    if index.proven && !objects.contains_key(manifest.as_str()) {
        problems.push(Finding::Damaged(format!("MISSING {manifest}: the backup's manifest")));
    }
    problems
}

/// Runs a check: prints each problem found on STDOUT, and fails naming how many; returns the summary.
pub fn run(config: &CheckConfig, store: &dyn Store) -> Result<String> {
    let key = layout::object_key(&config.name, layout::INDEX_NAME);
    let listed = store.list(&config.name)?;
    if listed.is_empty() {
        bail!("no backup named {} in {}", config.name, store.describe());
    }
    let bytes = match store::get_small(store, &key, layout::MAX_INDEX) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => bail!(
            "backup {} in {} is INCOMPLETE: it has no {} (a put that did not finish, or one still at work)",
            config.name,
            store.describe(),
            layout::INDEX_NAME
        ),
        Err(e) => return Err(e.into()),
    };
    let index = BackupIndex::from_json(&bytes).with_context(|| format!("cannot read {key}"))?;
    let problems = listing_problems(&index, &listed);
    let packs: Vec<&Pack> = index.streams.iter().flat_map(|s| s.packs.iter()).collect();
    let stored: u64 = packs.iter().map(|p| p.size).sum();
    let versions = packs.iter().filter(|p| p.e_tag.is_some()).count();
    // Changed objects fail a check by metadata; reading the data proves what they hold now, so they are read.
    let fatal = problems.iter().any(|p| matches!(p, Finding::Damaged(_))) || config.read_data.is_none();
    for problem in &problems {
        match problem {
            Finding::Damaged(text) => println!("{text}"),
            Finding::Changed { text, .. } if fatal => println!("{text}; --read-data proves what it holds"),
            Finding::Changed { text, .. } => println!("{text}: read and proven below"),
        }
    }
    if !problems.is_empty() && fatal {
        bail!(
            "backup {} in {} cannot be restored as it is: {} of the objects its index names are missing, damaged or \
             changed",
            config.name,
            store.describe(),
            problems.len()
        );
    }
    let listed_note = format!(
        "{} packs ({}) listed with their sizes{}",
        packs.len(),
        human(stored),
        match versions {
            0 => " (the index records no ETags: stored before they were recorded, or the store gives none)".into(),
            n if n == packs.len() => " and ETags".into(),
            n => format!(", {n} with their ETags"),
        }
    );
    let Some(percent) = config.read_data else {
        return Ok(format!("backup {} in {} is whole: {listed_note}", config.name, store.describe()));
    };
    let changed: Vec<&str> = problems
        .iter()
        .filter_map(|p| match p {
            Finding::Changed { key, .. } => Some(key.as_str()),
            Finding::Damaged(_) => None,
        })
        .collect();
    let mut chosen = sample(&packs, percent);
    for pack in packs.iter().filter(|p| changed.contains(&p.key.as_str())) {
        if !chosen.iter().any(|c| c.key == pack.key) {
            chosen.push(pack);
        }
    }
    let all = chosen.len() == packs.len();
    // The table of contents is read whole (it is small): its size and CRC-32 as recorded.
    let toc: Vec<&Pack> = index.streams.iter().flat_map(|s| s.toc.iter()).collect();
    for part in &toc {
        let bytes = store::get_small(store, &part.key, part.size)?;
        if bytes.len() as u64 != part.size || CrcPiece::of(&bytes).crc != part.crc32 {
            println!("DAMAGED {}: not the table of contents the index recorded (size or CRC-32)", part.key);
            bail!(
                "backup {} in {}: its table of contents is damaged (get --include cannot use it)",
                config.name,
                store.describe()
            );
        }
    }
    let read = read_packs(config, store, &index, &chosen, all)?;
    Ok(format!("backup {} in {} is whole: {listed_note}; {read}", config.name, store.describe()))
}

/// `percent` of `packs` (at least one when there are any), chosen at random, in index order.
fn sample<'a>(packs: &[&'a Pack], percent: f64) -> Vec<&'a Pack> {
    let want = ((packs.len() as f64 * percent / 100.0).ceil() as usize).clamp(packs.len().min(1), packs.len());
    if want == packs.len() {
        return packs.to_vec();
    }
    let mut positions: Vec<usize> = (0..packs.len()).collect();
    fastrand::shuffle(&mut positions);
    positions.truncate(want);
    positions.sort_unstable();
    positions.into_iter().map(|i| packs[i]).collect()
}

/// Downloads `packs` and proves each (size, CRC-32, every chunk's CRC-32); with `all` (every pack of the backup),
/// also every file of its manifest. Returns what was read, for the summary.
fn read_packs(
    config: &CheckConfig,
    store: &dyn Store,
    index: &BackupIndex,
    packs: &[&Pack],
    all: bool,
) -> Result<String> {
    // The manifest proves the files only when every pack is read: a sample does not need it.
    let manifest = match index.proven && all {
        true => {
            let key = index.manifest_key();
            let bytes = store::get_small(store, &key, config.memory_limit / 2)
                .with_context(|| format!("the manifest {key} must fit in half of --memory-limit to be checked"))?;
            Some(Manifest::from_json(&bytes).with_context(|| format!("cannot read {key}"))?)
        }
        false => None,
    };
    let files = match &manifest {
        Some(manifest) => Some(Mutex::new(SentCheck::new(manifest)?)),
        None => None,
    };
    let largest = packs.iter().map(|p| p.size).max().unwrap_or(0).max(1);
    let room = config.memory_limit.saturating_sub(manifest.as_ref().map_or(0, |_| config.memory_limit / 2));
    let parallel = config.parallel.min((room / largest) as usize);
    if parallel == 0 {
        bail!(
            "--memory-limit {} cannot hold one {} pack beside the manifest",
            human(config.memory_limit),
            human(largest)
        );
    }
    let next = AtomicUsize::new(0);
    let read = AtomicU64::new(0);
    let problems = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.min(packs.len()) {
            scope.spawn(|| {
                let mut buffer = Vec::new();
                while let Some(pack) = packs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match prove_pack(store, pack, &mut buffer, files.as_ref()) {
                        Ok(()) => _ = read.fetch_add(pack.size, Ordering::Relaxed),
                        Err(e) => problems.locked().push(format!("DAMAGED {}: {e:#}", pack.key)),
                    }
                }
            });
        }
    });
    let mut problems = problems.into_inner().unwrap_or_else(|e| e.into_inner());
    let checked = match files {
        Some(files) if problems.is_empty() => match files.into_inner().unwrap_or_else(|e| e.into_inner()).finish() {
            Ok(checked) => Some(checked),
            Err(e) => {
                problems.push(format!("DAMAGED {}: {e:#}", index.manifest_key()));
                None
            }
        },
        _ => None,
    };
    if !problems.is_empty() {
        problems.sort();
        for problem in &problems {
            println!("{problem}");
        }
        bail!(
            "backup {} in {} cannot be restored: {} of the {} packs read are damaged",
            config.name,
            store.describe(),
            problems.len(),
            packs.len()
        );
    }
    let total: usize = index.streams.iter().map(|s| s.packs.len()).sum();
    Ok(format!(
        "{} of {total} packs read ({}), every chunk's CRC-32 right{}",
        packs.len(),
        human(read.into_inner()),
        match checked {
            Some(files) => format!(", all {files} files proven against the manifest"),
            None if all => " (no manifest: the files themselves are unproven)".into(),
            None => " (a sample: files are proven against the manifest when every pack is read)".into(),
        }
    ))
}

/// Downloads one pack into `buffer` and proves it: its size and CRC-32 as the index records them, every chunk in
/// it against its own CRC-32; its chunks go to `files` when every pack is read.
fn prove_pack(store: &dyn Store, pack: &Pack, buffer: &mut Vec<u8>, files: Option<&Mutex<SentCheck>>) -> Result<()> {
    buffer.clear();
    // Its size was checked against the listing: one allocation of exactly that much.
    buffer.reserve_exact(pack.size as usize);
    let mut crc = CrcPiece::default();
    store.get(&pack.key, &mut |piece| {
        if (buffer.len() + piece.len()) as u64 > pack.size {
            bail!("it is larger than the index says ({} bytes)", pack.size);
        }
        buffer.extend_from_slice(piece);
        crc = crc.append(CrcPiece::of(piece));
        Ok(())
    })?;
    if buffer.len() as u64 != pack.size {
        bail!("{} bytes arrived; the index says {}", buffer.len(), pack.size);
    }
    if pack.chunks > 0 && crc.crc != pack.crc32 {
        bail!("CRC-32 {:08x} does not match the index's {:08x}", crc.crc, pack.crc32);
    }
    let chunks = crate::sent_check::parse_pack(buffer, &pack.key)?;
    if pack.chunks > 0 && chunks.len() as u64 != pack.chunks {
        bail!("{} chunks in it; the index says {}", chunks.len(), pack.chunks);
    }
    if let Some(files) = files {
        files.locked().pack(&chunks)?;
    }
    Ok(())
}
