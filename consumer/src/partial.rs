//! `consumer get NAME --include PATTERN [--exclude PATTERN] -C OUT`: some files of a stored backup, extracted and
//! proven, reading only the bytes that hold them.
//!
//! ```text
//! index.json ─► the manifest ─► files chosen by the patterns (their paths in the backup)
//!            ─► each stream's table of contents ─► the runs of the chosen files' chunks, the start marker's and the
//!               manifest's, in stream order, neighbours joined
//!            ─► range reads, one stream per thread ─► the extract pipeline, proving the chosen files only
//! ```
//!
//! Each stream as read is a valid xbstream: its start marker, the chosen files' chunks and the manifest's, in the
//! order the producer sent them. The extraction checks every chunk, every chosen file against its record (size,
//! CRC-32, and with `--decrypt` its authentication), and that none is missing. It does not check the streams'
//! tallies or the directories, which belong to the whole backup, and it leaves the manifest out of OUT, which would
//! say OUT holds the whole backup.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use globset::{GlobSet, GlobSetBuilder};
use proto::{is_marker_name, Manifest, MANIFEST_NAME, SECRET_MANIFEST_NAME};
use runtime::cancel::{recv, send, Cancel};
use runtime::signals::Signals;
use runtime::size::human;
use store::Store;

use crate::config::ExtractConfig;
use crate::input::InputStream;
use crate::layout::{BackupIndex, TocRun};

/// `--include` and `--exclude`: shell globs on the paths in the backup (`*` and `?` stay inside one directory,
/// `**` crosses them, `[...]` a class).
#[derive(Debug, Clone)]
pub struct Patterns {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// As given, for messages.
    said: String,
}

impl Patterns {
    /// The patterns, or `None` when neither flag was given (the whole backup).
    pub fn from_args(include: &[String], exclude: &[String]) -> Result<Option<Patterns>> {
        if include.is_empty() && exclude.is_empty() {
            return Ok(None);
        }
        let set = |patterns: &[String], flag: &str| -> Result<Option<GlobSet>> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                let glob = globset::GlobBuilder::new(pattern.trim_start_matches("./"))
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .with_context(|| format!("{flag} {pattern:?} is not a pattern"))?;
                builder.add(glob);
            }
            Ok(Some(builder.build()?))
        };
        let said = include
            .iter()
            .map(|p| format!("--include {p:?}"))
            .chain(exclude.iter().map(|p| format!("--exclude {p:?}")))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Some(Patterns { include: set(include, "--include")?, exclude: set(exclude, "--exclude")?, said }))
    }

    /// Whether the file at `path` (in the backup) is chosen: matched by an include (or there is none) and by no
    /// exclude.
    pub fn chooses(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(path))
            && !self.exclude.as_ref().is_some_and(|set| set.is_match(path))
    }
}

/// The byte ranges of one stream to read, in order: (pack key, from, to).
type Ranges = Vec<(String, u64, u64)>;

/// What a partial get read, for the summary.
struct Fetched {
    bytes: AtomicU64,
    requests: AtomicU64,
}

/// Extracts the files `patterns` choose of backup `index` into `extract.target`, proven; returns the summary.
pub(crate) fn get(
    patterns: &Patterns,
    index: &BackupIndex,
    extract: &ExtractConfig,
    store: &dyn Store,
    memory_limit: u64,
    signals: &Signals,
    cancel: &Cancel,
) -> Result<String> {
    if !index.proven {
        bail!(
            "backup {} was stored without a manifest: --include needs one to choose files by; get it whole",
            index.name
        );
    }
    if let Some(stream) = index.streams.iter().find(|s| !s.packs.is_empty() && s.toc.is_empty()) {
        bail!(
            "backup {} was stored before put kept a table of contents (stream {} has none): --include cannot find \
             its files' bytes; get it whole",
            index.name,
            stream.index
        );
    }
    let fetched = Fetched { bytes: AtomicU64::new(0), requests: AtomicU64::new(0) };
    let manifest_key = index.manifest_key();
    let manifest_bytes = store::get_small(store, &manifest_key, memory_limit)
        .with_context(|| format!("the manifest {manifest_key} must fit in --memory-limit to choose files from it"))?;
    count(&fetched, manifest_bytes.len() as u64);
    let manifest = Manifest::from_json(&manifest_bytes).with_context(|| format!("cannot read {manifest_key}"))?;
    drop(manifest_bytes);

    // The chosen files, by their paths on the wire; the encrypted manifest comes too (it is what --decrypt proves
    // the files against).
    let mut selection = crate::config::Selection::new();
    let mut chosen_bytes = 0u64;
    // Encrypted, the manifest stored beside the packs lists the sealed files (`<path>.age`, `<path>.zst.age`):
    // the patterns are on the paths they restore to.
    let encrypted = manifest.encryption.is_some();
    let restored = |path: String| -> String {
        match path.strip_suffix(".age").filter(|_| encrypted) {
            Some(clear) => clear.strip_suffix(".zst").unwrap_or(clear).to_string(),
            None => path,
        }
    };
    for record in &manifest.files {
        let secret = record.path.0 == SECRET_MANIFEST_NAME.as_bytes();
        if secret || patterns.chooses(&restored(record.path.display())) {
            selection.insert(record.as_sent().0.to_vec());
            chosen_bytes += if secret { 0 } else { record.size };
        }
    }
    let chosen =
        selection.len() - usize::from(manifest.files.iter().any(|r| r.path.0 == SECRET_MANIFEST_NAME.as_bytes()));
    if chosen == 0 {
        bail!(
            "no file of backup {} matches {} (paths as `consumer get NAME | mbstream -x` would write them)",
            index.name,
            patterns.said
        );
    }
    let wanted = |path: &[u8]| path == MANIFEST_NAME.as_bytes() || is_marker_name(path) || selection.contains(path);
    let plans =
        index.streams.iter().map(|stream| plan(store, stream, &wanted, &fetched)).collect::<Result<Vec<Ranges>>>()?;
    let planned: u64 = plans.iter().flatten().map(|(_, from, to)| to - from).sum();
    let stored: u64 = index.streams.iter().flat_map(|s| s.packs.iter().chain(s.toc.iter())).map(|p| p.size).sum();
    log::info!("{chosen} files chosen ({}); reading {} of the packs' bytes", human(chosen_bytes), human(planned));

    let config = ExtractConfig { selection: Some(Arc::new(selection)), ..extract.clone() };
    // Each stream's reads come through a short channel of pieces (at most PIECES × PIECE bytes a stream in flight).
    let summary = std::thread::scope(|scope| -> Result<String> {
        let mut inputs = Vec::with_capacity(plans.len());
        for (i, ranges) in plans.iter().enumerate() {
            let (pieces, receiver) = crossbeam_channel::bounded(PIECES);
            let fetched = &fetched;
            scope.spawn(move || read_ranges(store, ranges, &pieces, fetched, cancel));
            inputs.push(InputStream {
                name: format!("stored stream {i} (ranges)"),
                file: Box::new(PieceReader {
                    pieces: receiver,
                    current: Vec::new(),
                    position: 0,
                    cancel: cancel.clone(),
                }),
            });
        }
        let result = crate::extract::extract(&config, inputs, signals, cancel);
        if result.is_err() {
            cancel.cancel();
        }
        result
    })?;
    Ok(format!(
        "{summary}; {chosen} of {} files chosen by {}; read {} of the {} stored ({:.1} %) in {} requests",
        manifest.files.len(),
        patterns.said,
        human(fetched.bytes.load(Ordering::Relaxed)),
        human(stored),
        100.0 * fetched.bytes.load(Ordering::Relaxed) as f64 / stored.max(1) as f64,
        fetched.requests.load(Ordering::Relaxed)
    ))
}

fn count(fetched: &Fetched, bytes: u64) {
    fetched.bytes.fetch_add(bytes, Ordering::Relaxed);
    fetched.requests.fetch_add(1, Ordering::Relaxed);
}

/// One stream's ranges: its table of contents read part by part, the runs of `wanted` paths kept, in stream
/// order, neighbours in one pack joined into one read.
fn plan(
    store: &dyn Store,
    stream: &crate::layout::StoredStream,
    wanted: &dyn Fn(&[u8]) -> bool,
    fetched: &Fetched,
) -> Result<Ranges> {
    let mut runs: Vec<TocRun> = Vec::new();
    for part in &stream.toc {
        let bytes = store::get_small(store, &part.key, (crate::layout::TOC_PART as u64) * 4)?;
        count(fetched, bytes.len() as u64);
        if bytes.len() as u64 != part.size || proto::CrcPiece::of(&bytes).crc != part.crc32 {
            bail!("{}: the table of contents is not as the index recorded it (size or CRC-32)", part.key);
        }
        for (number, line) in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let run: TocRun = serde_json::from_slice(line)
                .with_context(|| format!("{}: line {} is not a run of the table of contents", part.key, number + 1))?;
            if wanted(&run.path.0) {
                runs.push(run);
            }
        }
    }
    runs.sort_by_key(|run| (run.pack, run.from));
    let mut ranges: Ranges = Vec::new();
    for run in runs {
        let pack = stream.packs.get(run.pack as usize).with_context(|| {
            format!("stream {}: the table of contents names pack {}, which the index does not", stream.index, run.pack)
        })?;
        if run.from >= run.to || run.to > pack.size {
            bail!(
                "{}: the table of contents names bytes {}..{} of a {}-byte pack",
                pack.key,
                run.from,
                run.to,
                pack.size
            );
        }
        match ranges.last_mut() {
            Some((key, _, to)) if *key == pack.key && *to == run.from => *to = run.to,
            _ => ranges.push((pack.key.clone(), run.from, run.to)),
        }
    }
    Ok(ranges)
}

/// Pieces in flight per stream, and their largest size.
const PIECES: usize = 4;
const PIECE: u64 = 4 << 20;

/// One stream's reader: its ranges read in order, in pieces of at most [`PIECE`] bytes, each sent on.
fn read_ranges(
    store: &dyn Store,
    ranges: &Ranges,
    pieces: &Sender<io::Result<Vec<u8>>>,
    fetched: &Fetched,
    cancel: &Cancel,
) {
    for (key, from, to) in ranges {
        let mut at = *from;
        while at < *to {
            let end = (at + PIECE).min(*to);
            let mut piece = Vec::with_capacity((end - at) as usize);
            let result = store.get_range(key, at..end, &mut |bytes| {
                piece.extend_from_slice(bytes);
                Ok(())
            });
            count(fetched, end - at);
            let message = result
                .map(|_| piece)
                .map_err(|e| io::Error::other(crate::storage::FlatError::new(&anyhow::Error::from(e))));
            let failed = message.is_err();
            if send(pieces, message, cancel).is_err() || failed {
                return;
            }
            at = end;
        }
    }
}

/// A stream read from its pieces, as they come.
struct PieceReader {
    pieces: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
    cancel: Cancel,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match recv(&self.pieces, &self.cancel).map_err(io::Error::other)? {
                None => return Ok(0),
                Some(piece) => (self.current, self.position) = (piece?, 0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(include: &[&str], exclude: &[&str]) -> Patterns {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Patterns::from_args(&owned(include), &owned(exclude)).unwrap().unwrap()
    }

    #[test]
    fn patterns_are_shell_globs_on_paths_in_the_backup() {
        let table = patterns(&["shop/orders.*"], &[]);
        assert!(table.chooses("shop/orders.ibd") && table.chooses("shop/orders.frm"));
        assert!(!table.chooses("shop/orders_archive.ibd") && !table.chooses("shop/sub/orders.ibd"));
        // `*` stays inside a directory; `**` crosses them.
        assert!(!patterns(&["*.ibd"], &[]).chooses("shop/t.ibd"));
        assert!(patterns(&["**/*.ibd"], &[]).chooses("shop/t.ibd"));
        assert!(patterns(&["./ibdata1"], &[]).chooses("ibdata1"));
        // Excludes win; without includes, everything else.
        let all_but = patterns(&[], &["shop/*"]);
        assert!(all_but.chooses("ibdata1") && !all_but.chooses("shop/t.ibd"));
        assert!(!patterns(&["shop/*"], &["shop/t.*"]).chooses("shop/t.ibd"));
        assert!(Patterns::from_args(&[], &[]).unwrap().is_none());
        assert!(Patterns::from_args(&["shop/[".into()], &[]).is_err());
    }
}
