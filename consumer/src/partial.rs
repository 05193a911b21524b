//! `consumer get NAME --include PATTERN [--exclude PATTERN] -C OUT`: some files of a stored backup, extracted and
//! proven, reading only the bytes that hold them.
//!
//! ```text
//! index.json ─► the manifest ─► files chosen by the patterns (their paths in the backup)
//!            ─► each stream's table of contents ─► the runs of the chosen files' chunks, the start marker's and the
//!               manifest's, in stream order, neighbours joined
//!            ─► range reads (--parallel in flight, each stream a window ahead) ─► the extract pipeline, proving the
//!               chosen files only (the manifest, read whole already, sent as chunks at the end of stream 0)
//! ```
//!
//! Each stream as read is a valid xbstream: its start marker and the chosen files' chunks, in the order the
//! producer sent them; stream 0 ends with the manifest. The extraction checks every chunk, every chosen file against its record (size,
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
use crate::get::{GetConfig, GetOutput};
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

/// What one stream is made of, in order.
type Ranges = Vec<Segment>;

/// A piece of a stream as the partial get reads it.
enum Segment {
    /// Bytes `from..to` of pack `key` (at most [`PIECE`] of them).
    Range {
        /// The pack.
        key: String,
        /// First byte.
        from: u64,
        /// One past the last.
        to: u64,
    },
    /// Bytes made here (the manifest's chunks).
    Here(Vec<u8>),
}

impl Segment {
    /// Bytes to read from the store for it.
    fn len(&self) -> u64 {
        match self {
            Segment::Range { from, to, .. } => to - from,
            Segment::Here(_) => 0,
        }
    }
}

/// The manifest as xbstream chunks (pieces of at most [`PIECE`] bytes at their offsets, then its end-of-file
/// chunk), as the producer sends it.
fn manifest_chunks(manifest: &[u8]) -> Vec<u8> {
    let path = MANIFEST_NAME.as_bytes();
    let mut out = Vec::with_capacity(manifest.len() + 1024);
    for (i, piece) in manifest.chunks(PIECE as usize).enumerate() {
        let offset = i as u64 * PIECE;
        proto::encode_payload_header(&mut out, path, offset, piece.len() as u64, proto::CrcPiece::of(piece).crc);
        out.extend_from_slice(piece);
    }
    proto::encode_eof(&mut out, path);
    out
}

/// What a partial get read, for the summary.
struct Fetched {
    bytes: AtomicU64,
    requests: AtomicU64,
}

/// Extracts the files `config.patterns` choose of backup `index` into `-C OUT`, proven; returns the summary.
pub(crate) fn get(
    config: &GetConfig,
    index: &BackupIndex,
    store: &dyn Store,
    signals: &Signals,
    cancel: &Cancel,
) -> Result<String> {
    let (Some(patterns), GetOutput::Extract(extract)) = (&config.patterns, &config.output) else {
        bail!("--include and --exclude restore into a directory: give -C OUT");
    };
    let (memory_limit, parallel) = (config.memory_limit, config.parallel);
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
    let manifest_bytes = store::get_small(store, &manifest_key, memory_limit).with_context(|| {
        format!("the manifest {manifest_key} must fit in half of --memory-limit to choose files from it")
    })?;
    count(&fetched, manifest_bytes.len() as u64);
    let manifest = Manifest::from_json(&manifest_bytes).with_context(|| format!("cannot read {manifest_key}"))?;

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
    // The manifest travels in stream 0 as many small pieces spread over the packs; it was just read whole, so it is
    // sent to the extraction as chunks made here, at the end of stream 0, instead of a range read per piece.
    let secret_seen = std::cell::Cell::new(false);
    let wanted = |path: &[u8]| {
        secret_seen.set(secret_seen.get() || path == SECRET_MANIFEST_NAME.as_bytes());
        is_marker_name(path) || selection.contains(path)
    };
    let mut plans = index
        .streams
        .iter()
        .map(|stream| plan(store, stream, &wanted, &fetched, memory_limit))
        .collect::<Result<Vec<Ranges>>>()?;
    let secret_located = secret_seen.get();
    let planned: u64 = plans.iter().flatten().map(Segment::len).sum();
    // The encrypted manifest must come: a backup whose sealed manifest the table of contents does not locate (one
    // that `put --encrypt-recipient` sealed, which adds it after the streams) cannot be restored in part.
    let secret = SECRET_MANIFEST_NAME.as_bytes();
    if selection.contains(secret) && !secret_located {
        bail!(
            "the table of contents of backup {} does not locate its {SECRET_MANIFEST_NAME} (sealed by `put \
             --encrypt-recipient`): --include cannot restore it in part; get it whole",
            index.name
        );
    }
    let files_in_backup = manifest.files.len();
    drop(manifest);
    if let Some(first) = plans.first_mut() {
        first.push(Segment::Here(manifest_chunks(&manifest_bytes)));
    }
    drop(manifest_bytes);
    let stored: u64 = index.streams.iter().flat_map(|s| s.packs.iter().chain(s.toc.iter())).map(|p| p.size).sum();
    log::info!("{chosen} files chosen ({}); reading {} of the packs' bytes", human(chosen_bytes), human(planned));

    // The manifest is sent at the end of stream 0 whatever the streams carry: without it nothing is proven.
    let config =
        ExtractConfig { selection: Some(Arc::new(selection)), require_manifest: true, ..ExtractConfig::clone(extract) };
    // Range reads in flight: `parallel` at once over all streams, each stream at most `window` pieces ahead of its
    // extraction (each piece at most PIECE bytes, all within --memory-limit).
    let window = (memory_limit / plans.len().max(1) as u64 / PIECE).clamp(1, 16) as usize;
    let summary = std::thread::scope(|scope| -> Result<String> {
        let (jobs, job_receiver) = crossbeam_channel::bounded::<Job>(plans.len() * window);
        for _ in 0..parallel.max(1) {
            let (jobs, fetched) = (job_receiver.clone(), &fetched);
            scope.spawn(move || fetch(store, &jobs, fetched, cancel));
        }
        drop(job_receiver);
        let mut inputs = Vec::with_capacity(plans.len());
        for (i, segments) in plans.into_iter().enumerate() {
            let (order, ordered) = crossbeam_channel::bounded(window);
            let jobs = jobs.clone();
            scope.spawn(move || queue(segments, &jobs, &order, cancel));
            inputs.push(InputStream {
                name: format!("stored stream {i} (ranges)"),
                file: Box::new(PieceReader { ordered, current: Vec::new(), position: 0, cancel: cancel.clone() }),
            });
        }
        drop(jobs);
        let result = crate::extract::extract(&config, inputs, signals, cancel);
        if result.is_err() {
            cancel.cancel();
        }
        result
    })?;
    Ok(format!(
        "{summary}; {chosen} of {} files chosen by {}; read {} of the {} stored ({:.1} %) in {} requests",
        files_in_backup,
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
    memory_limit: u64,
) -> Result<Ranges> {
    let mut runs: Vec<TocRun> = Vec::new();
    for part in &stream.toc {
        // As large as the index says, within the get's memory (the index is checked against the listing).
        let bytes = store::get_small(store, &part.key, part.size.min(memory_limit))?;
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
    let mut joined: Vec<(usize, u64, u64)> = Vec::new();
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
        match joined.last_mut() {
            Some((last, _, to)) if *last == run.pack as usize && *to == run.from => *to = run.to,
            Some((last, _, to)) if *last == run.pack as usize && *to > run.from => {
                bail!("{}: the table of contents names overlapping runs at byte {}", pack.key, run.from)
            }
            _ => joined.push((run.pack as usize, run.from, run.to)),
        }
    }
    // Each run in pieces of at most PIECE bytes: the unit of a read and of the memory it holds.
    let mut segments = Vec::new();
    for (pack, from, to) in joined {
        let key = &stream.packs[pack].key;
        let mut at = from;
        while at < to {
            let end = at + (to - at).min(PIECE);
            segments.push(Segment::Range { key: key.clone(), from: at, to: end });
            at = end;
        }
    }
    Ok(segments)
}

/// The largest piece read at once (and held in memory until the extraction takes it).
const PIECE: u64 = 4 << 20;

/// A range read, and where its bytes go.
struct Job {
    key: String,
    range: std::ops::Range<u64>,
    reply: Sender<io::Result<Vec<u8>>>,
}

/// One stream's planner: for each of its segments, in order, hands the reader the receiver of its bytes, and the
/// downloaders the read (bytes made here are sent at once).
fn queue(segments: Ranges, jobs: &Sender<Job>, order: &Sender<Receiver<io::Result<Vec<u8>>>>, cancel: &Cancel) {
    for segment in segments {
        let (reply, result) = crossbeam_channel::bounded(1);
        if send(order, result, cancel).is_err() {
            return;
        }
        let sent = match segment {
            Segment::Here(bytes) => reply.send(Ok(bytes)).map_err(|_| ()),
            Segment::Range { key, from, to } => send(jobs, Job { key, range: from..to, reply }, cancel).map_err(|_| ()),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// One downloader: range reads, each whole into its own buffer, to whichever stream asked.
fn fetch(store: &dyn Store, jobs: &Receiver<Job>, fetched: &Fetched, cancel: &Cancel) {
    while let Ok(Some(Job { key, range, reply })) = recv(jobs, cancel) {
        let mut piece = Vec::with_capacity((range.end - range.start) as usize);
        let result = store.get_range(&key, range.clone(), &mut |bytes| {
            // The extraction failed: stop this transfer rather than finish it.
            cancel.check()?;
            piece.extend_from_slice(bytes);
            Ok(())
        });
        count(fetched, range.end - range.start);
        let message = result.map(|_| piece).map_err(|e| {
            let e = anyhow::Error::from(e).context(format!("bytes {}..{} of {key}", range.start, range.end));
            io::Error::other(crate::storage::FlatError::new(&e))
        });
        // A reader that stopped (the extraction failed) no longer waits for it.
        let _ = reply.send(message);
    }
}

/// A stream read from its pieces, in order, as they download.
struct PieceReader {
    ordered: Receiver<Receiver<io::Result<Vec<u8>>>>,
    current: Vec<u8>,
    position: usize,
    cancel: Cancel,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            let Some(next) = recv(&self.ordered, &self.cancel).map_err(io::Error::other)? else { return Ok(0) };
            let piece = recv(&next, &self.cancel)
                .map_err(io::Error::other)?
                .ok_or_else(|| io::Error::other("a download stopped"))??;
            (self.current, self.position) = (piece, 0);
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
