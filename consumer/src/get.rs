//! `consumer get NAME`: a stored backup back out — as one xbstream on STDOUT, into N pipes, or extracted with
//! proof (`-C OUT`).
//!
//! ```text
//! index.json ─► per stream: packs in order ─► downloaders (--parallel, verified: size, CRC-32) ─► stream i's bytes
//!                  (a window of pool buffers per stream)
//!   ─► -C OUT:  the extract pipeline, reading stream i as if it were pipe i (same proof as `extract`)
//!   ─► N pipes: stream i verbatim into thread_i (N must be the stored count)
//!   ─► STDOUT:  one stream verbatim; several merged so that each file's chunks are in order (what `mbstream -x`
//!               needs), with a new start marker (stream 0 of 1) and the manifest's stream counts rewritten to match
//! ```
//!
//! Whatever goes out verbatim (STDOUT, pipes) is checked file by file against the stored manifest
//! ([`crate::sent_check`]); the merge of several streams lives in [`crate::merge`].

use std::io::{self, Write};
use std::sync::Mutex;
use std::thread;

use anyhow::{bail, Context, Result};
use proto::{Manifest, MANIFEST_NAME};
use runtime::budget::MemoryBudget;
use runtime::cancel::Cancel;
use runtime::failure::Failure;
use runtime::pool::BufferPool;
use runtime::progress::ProgressMode;
use runtime::signals::Signals;
use runtime::size::{human, size_arg};
use store::Store;
use transport::{End, Endpoint, IdlePipe, OpenedStream};

use crate::config::ExtractConfig;
use crate::input::InputStream;
use crate::layout::{self, BackupIndex, Pack};
use crate::pack_download::{self, Download, Fetch, PackStream};
use crate::sent_check::SentCheck;

/// Where a get goes.
#[derive(Debug, Clone)]
pub enum GetOutput {
    /// One xbstream on STDOUT (the stored streams merged in order), or N pipes `dir/thread_<i>` (as many as were
    /// stored).
    Stream(Endpoint),
    /// Extracted and proven, as `extract` does.
    Extract(Box<ExtractConfig>),
}

/// Validated `get` settings.
#[derive(Debug, Clone)]
pub struct GetConfig {
    /// The backup's name.
    pub name: String,
    /// Where it goes.
    pub output: GetOutput,
    /// Downloads in flight.
    pub parallel: usize,
    /// What the get itself may hold (downloaded packs, the manifest it checks against, a merge's chunks):
    /// `--memory-limit`, or half of it with `-C` (the extraction's chunk buffers take the other half). Divided
    /// into named parts once the index says how many streams and how large their packs are.
    pub memory_limit: u64,
    /// Largest chunk payload accepted.
    pub max_chunk: usize,
    /// Fetch a backup without its index (a put that did not finish), as far as it goes.
    pub allow_partial: bool,
    /// `--range-size`: a pack larger than this is read as several ranges at once.
    pub range_size: u64,
    /// `--idle-timeout` on output pipes.
    pub idle_timeout: Option<std::time::Duration>,
    /// `--include` / `--exclude`: only the files they choose (a partial restore, with -C).
    pub patterns: Option<crate::partial::Patterns>,
}

impl GetConfig {
    /// Validates `get` arguments.
    pub fn from_args(args: &crate::cli::GetArgs, verbose: bool, quiet: bool) -> Result<GetConfig> {
        crate::layout::check_name(&args.name)?;
        let max_chunk = size_arg(&args.max_chunk_size, "--max-chunk-size")?;
        let range_size = size_arg(&args.range_size, "--range-size")?;
        if range_size == 0 {
            bail!("--range-size must be at least 1 byte");
        }
        let memory_limit = size_arg(&args.memory_limit, "--memory-limit")?;
        if args.parallel == 0 || args.writers == 0 {
            bail!("--parallel and --writers must be at least 1");
        }
        let output = match (&args.directory, &args.fifo.fifo_dir) {
            (Some(_), Some(_)) => bail!("-C and --fifo-dir exclude each other: extract, or feed pipes"),
            (Some(directory), None) => {
                // The extract pipeline's chunk buffers get half the budget; the downloads the other half.
                let buffers = ((memory_limit / 2) / max_chunk).min(64) as usize;
                if buffers < 3 {
                    bail!("--memory-limit {} is too small for chunks of {}", human(memory_limit), human(max_chunk));
                }
                GetOutput::Extract(Box::new(ExtractConfig {
                    input: Endpoint::Stdio,
                    target: directory.clone(),
                    idle_timeout: None,
                    writers: args.writers,
                    buffers,
                    ended_files_memory: memory_limit / 8,
                    manifest_limit: memory_limit,
                    buffer_size: max_chunk as usize,
                    overwrite: args.overwrite,
                    fsync: !args.no_fsync,
                    fadvise: true,
                    require_manifest: false,
                    stream_sha1: false,
                    decompress: args.decompress,
                    // Two: each keeps a buffer of the few this extraction gets (half the budget, 64 at most).
                    decompress_threads: if args.decompress { 2 } else { 0 },
                    decrypt: crate::config::decryption(args.decrypt, &args.keys)?,
                    decrypt_threads: args.writers.max(2),
                    stats_json: None,
                    progress: ProgressMode::choose(verbose, quiet, true),
                    selection: None,
                }))
            }
            (None, _) => match Endpoint::from_args(&args.fifo, End::Write) {
                Err(transport::EndpointError::TerminalOut) => {
                    bail!("refusing to write a binary stream to a terminal: redirect STDOUT, or use -C or --fifo-dir")
                }
                endpoint => GetOutput::Stream(endpoint?),
            },
        };
        let memory_for_packs = match &output {
            GetOutput::Extract(_) => memory_limit / 2,
            _ => memory_limit,
        };
        let patterns = crate::partial::Patterns::from_args(&args.include, &args.exclude)?;
        if patterns.is_some() && !matches!(output, GetOutput::Extract(_)) {
            bail!("--include and --exclude restore into a directory: give -C OUT");
        }
        if patterns.is_some() && args.allow_partial {
            bail!("--include needs a complete backup (its index says where each file lies): drop --allow-partial");
        }
        Ok(GetConfig {
            patterns,
            name: args.name.clone(),
            output,
            parallel: args.parallel,
            memory_limit: memory_for_packs,
            max_chunk: max_chunk as usize,
            allow_partial: args.allow_partial,
            range_size,
            idle_timeout: args.fifo.idle_timeout(),
        })
    }
}

/// Runs a get; returns the one-line summary.
pub fn run(config: &GetConfig, store: &dyn Store, signals: &Signals) -> Result<String> {
    let started = std::time::Instant::now();
    let summary = signals.run(|cancel| get(config, store, signals, cancel))?;
    Ok(format!("{summary} in {:.2} s", started.elapsed().as_secs_f64()))
}

fn get(config: &GetConfig, store: &dyn Store, signals: &Signals, cancel: &Cancel) -> Result<String> {
    layout::check_name(&config.name)?;
    let index = load_index(config, store)?;
    if config.patterns.is_some() {
        return crate::partial::get(config, &index, store, signals, cancel);
    }
    // The producer's manifest, stored beside the packs: what a merge plans with, and what every file sent on to
    // STDOUT or pipes is checked against (an extraction checks the copy that travels in the streams).
    let (manifest, manifest_bytes) = if index.proven && !matches!(config.output, GetOutput::Extract(_)) {
        let key = index.manifest_key();
        let bytes = store::get_small(store, &key, config.memory_limit)
            .with_context(|| format!("the manifest {key} must fit in --memory-limit for get to check against it"))?;
        let manifest = Manifest::from_json(&bytes).with_context(|| format!("cannot read {key}"))?;
        (Some(manifest), bytes.len() as u64)
    } else {
        (None, 0)
    };
    let streams = index.streams.len();
    if streams == 0 {
        bail!("backup {} in {} holds no stream", config.name, store.describe());
    }
    let largest = index.streams.iter().flat_map(|s| s.packs.iter()).map(|p| p.size).max().unwrap_or(0) as usize;
    // A merge holds one chunk per stream besides the packs, and reads each stream through a buffer: that much of
    // the budget is not for packs. The manifest says how large its producer made chunks (compressed ones a little
    // larger).
    let merge_reserve = manifest.as_ref().map_or(0, |manifest| {
        // Saturating: the manifest is data from the store, and a damaged one must not overflow the sum.
        let chunk = manifest.chunk_size.saturating_add(manifest.chunk_size / 128).saturating_add(4096);
        (streams as u64).saturating_mul(chunk.min(config.max_chunk as u64) + crate::source::READ_BUFFER as u64)
    });
    // The manifest, and what the check against it keeps (a second copy of every path), are held beside the packs.
    let manifest_reserve = manifest.as_ref().map_or(0, |_| manifest_bytes.saturating_mul(2));
    let for_packs = config.memory_limit.saturating_sub(merge_reserve).saturating_sub(manifest_reserve);
    // Each stream gets its own window of pack buffers, so a merge waiting on one stream never starves another.
    let per_stream = (for_packs / streams as u64 / largest.max(1) as u64) as usize;
    if per_stream < 1 {
        bail!(
            "--memory-limit {} cannot hold one {} pack for each of the {streams} streams{}",
            human(config.memory_limit),
            human(largest as u64),
            match manifest_reserve {
                0 => String::new(),
                bytes => format!(" beside the manifest it checks against ({} held)", human(bytes)),
            }
        );
    }
    let window = per_stream.min(config.parallel.max(1) + 1);
    let mut budget = MemoryBudget::new(config.memory_limit);
    budget.assign("merge chunks and read buffers", merge_reserve);
    budget.assign("manifest and its check", manifest_reserve);
    budget.buffers("pack windows", streams * window, largest as u64);
    log::debug!("{budget}");
    // Sent on verbatim and checked against the manifest: the downloaders parse each pack (and check its chunks'
    // CRCs) as they fetch it, in parallel, so the writer only does the bookkeeping. A merge parses as it goes.
    let parse_packs =
        manifest.is_some() && !(streams > 1 && matches!(config.output, GetOutput::Stream(Endpoint::Stdio)));
    let (jobs, job_receiver) = crossbeam_channel::bounded::<Download>(streams * window);
    let failure = Failure::new(cancel.clone());
    let total: u64 = index.streams.iter().map(|s| s.bytes).sum();

    thread::scope(|scope| -> Result<String> {
        let failure = &failure;
        for i in 0..config.parallel.max(1) {
            let jobs = job_receiver.clone();
            failure.spawn_stage(scope, format!("download-{i}"), move || pack_download::download(&jobs, store, cancel));
        }
        drop(job_receiver);
        let mut readers = Vec::with_capacity(streams);
        let fetch = Fetch { range_size: config.range_size, parse: parse_packs };
        for stored in &index.streams {
            let pool = BufferPool::new(window, largest.max(1));
            let (order, ordered) = crossbeam_channel::bounded(window);
            let (jobs, packs) = (jobs.clone(), &stored.packs);
            failure.spawn_stage(scope, format!("plan-{}", stored.index), move || {
                pack_download::plan(packs, fetch, &pool, &jobs, &order, cancel)
            });
            readers.push(PackStream::new(ordered, cancel.clone()));
        }
        drop(jobs);
        let result = deliver(config, &index, manifest, readers, signals, cancel);
        if result.is_err() {
            cancel.cancel();
        }
        // The first real error wins: a thread that stopped because of it reports `Cancelled`.
        result.map_err(|e| {
            failure.record(e);
            failure.take().expect("just recorded")
        })
    })
    .map(|how| {
        format!(
            "got {} ({} files, {} of content, {} streamed) from {}: {how}",
            config.name,
            index.files,
            human(index.bytes),
            human(total),
            store.describe()
        )
    })
}

/// Reads the index, or with `--allow-partial` and no index, makes one from the listing.
fn load_index(config: &GetConfig, store: &dyn Store) -> Result<BackupIndex> {
    let key = layout::object_key(&config.name, layout::INDEX_NAME);
    match store::get_small(store, &key, layout::MAX_INDEX) {
        Ok(bytes) => {
            let index = BackupIndex::from_json(&bytes).with_context(|| format!("cannot read {key}"))?;
            // The index against what the store holds, before anything is planned from its figures.
            if let Some(why) = index.damage(&store.list(&config.name)?) {
                bail!("backup {} in {} is damaged: {why}", config.name, store.describe());
            }
            Ok(index)
        }
        Err(e) if e.is_not_found() => {
            let listed = store.list(&config.name)?;
            if listed.is_empty() {
                bail!("no backup named {} in {}", config.name, store.describe());
            }
            if !config.allow_partial {
                bail!(
                    "backup {} in {} is incomplete: it has no {} (the put did not finish); --allow-partial fetches \
                     what is there, unproven",
                    config.name,
                    store.describe(),
                    layout::INDEX_NAME
                );
            }
            log::warn!("backup {} has no index: fetching the packs that are there, unproven", config.name);
            partial_index(&config.name, &listed)
        }
        Err(e) => Err(e.into()),
    }
}

/// More streams than any producer writes (its `--fifo-streams` is far below): keys naming a higher stream are not
/// packs of a backup.
const MAX_STREAMS: u32 = 4096;

/// An index made from the packs that exist (sizes from the listing; CRCs unknown, so 0 and unchecked): those of
/// the one put that left packs under the name (`<NAME>/<PUT>/<stream>/<seq>.xbs`, or `<NAME>/<stream>/<seq>.xbs`
/// from before put ids).
fn partial_index(name: &str, listed: &[store::ObjectInfo]) -> Result<BackupIndex> {
    // (put, stream, pack) for every pack.
    let packs: Vec<(Option<&str>, u32, &store::ObjectInfo)> = listed
        .iter()
        .filter_map(|object| {
            let rest = object.key.strip_prefix(name)?.strip_prefix('/')?.strip_suffix(".xbs")?;
            let parts: Vec<&str> = rest.split('/').collect();
            let (put, stream) = match parts[..] {
                [stream, _] => (None, stream),
                [put, stream, _] => (Some(put), stream),
                _ => return None,
            };
            // A stream number no producer writes (a hostile key) is not a stream to make room for.
            Some((put, stream.parse::<u32>().ok().filter(|&n| n < MAX_STREAMS)?, object))
        })
        .collect();
    let mut puts: Vec<Option<&str>> = packs.iter().map(|(put, ..)| *put).collect();
    puts.sort_unstable();
    puts.dedup();
    if puts.len() > 1 {
        let puts: Vec<&str> = puts.iter().map(|p| p.unwrap_or("(no put id)")).collect();
        bail!("several puts left packs under {name} ({}): there is no one backup to fetch", puts.join(", "));
    }
    let put = puts.first().copied().flatten();
    let mut streams: Vec<layout::StoredStream> = Vec::new();
    for (_, stream, object) in packs {
        while streams.len() <= stream as usize {
            let index = streams.len() as u32;
            streams.push(layout::StoredStream { index, chunks: 0, bytes: 0, packs: Vec::new(), toc: Vec::new() });
        }
        let entry = &mut streams[stream as usize];
        entry.bytes += object.size;
        entry.packs.push(Pack { key: object.key.clone(), size: object.size, chunks: 0, crc32: 0, e_tag: None });
    }
    // Packs are numbered from 0 without gaps: a stream goes only as far as its first missing pack.
    for stream in &mut streams {
        let expected = |seq: usize| match put {
            Some(put) => layout::pack_key(name, put, stream.index as usize, seq as u64),
            None => format!("{name}/{}/{seq:010}.xbs", stream.index),
        };
        let whole = stream.packs.iter().enumerate().take_while(|(seq, pack)| pack.key == expected(*seq)).count();
        if whole < stream.packs.len() {
            log::warn!("stream {} of {name}: pack {whole} is missing; fetching the {whole} before it", stream.index);
            stream.packs.truncate(whole);
            stream.bytes = stream.packs.iter().map(|p| p.size).sum();
        }
    }
    Ok(BackupIndex {
        format: layout::INDEX_FORMAT,
        name: name.to_string(),
        tool: String::new(),
        created_unix: 0,
        put_id: put.map(str::to_string),
        backup_id: None,
        proven: false,
        files: 0,
        bytes: 0,
        streams,
    })
}

/// Sends the stored streams where the config says; returns how.
fn deliver(
    config: &GetConfig,
    index: &BackupIndex,
    manifest: Option<Manifest>,
    readers: Vec<PackStream>,
    signals: &Signals,
    cancel: &Cancel,
) -> Result<String> {
    let streams = readers.len();
    match &config.output {
        GetOutput::Extract(extract) => {
            if !index.proven && !config.allow_partial {
                log::warn!("backup {} was stored without a manifest: the extraction cannot be proven", config.name);
            }
            crate::extract::extract(extract, stored_inputs(readers), signals, cancel)
        }
        GetOutput::Stream(endpoint) => {
            if let Endpoint::Fifos { count, .. } = endpoint {
                if *count != streams {
                    bail!(
                        "backup {} was stored from {streams} stream(s): get it with --fifo-streams {streams} (or to \
                         STDOUT, which merges them)",
                        config.name
                    );
                }
            }
            let opened = endpoint.open(End::Write, config.idle_timeout, cancel)?;
            match opened.fifos {
                Some(_fifos) => to_pipes(manifest, readers, opened.streams, endpoint, cancel),
                None => {
                    let stdout = opened.streams.into_iter().next().expect("STDOUT is one stream");
                    to_stdout(config, manifest, readers, stdout.pipe)
                }
            }
        }
    }
}

/// Each stored stream to its own pipe, each checked as it goes. Each pipe is ended (cleanly, or with the broken
/// chunk) only once every stream went out and the whole was checked, so that no pipe looks complete while
/// another's files could still prove the backup wrong.
fn to_pipes(
    manifest: Option<Manifest>,
    readers: Vec<PackStream>,
    pipes: Vec<OpenedStream>,
    endpoint: &Endpoint,
    cancel: &Cancel,
) -> Result<String> {
    let count = pipes.len();
    let dir = match endpoint {
        Endpoint::Fifos { dir, .. } => dir.clone(),
        Endpoint::Stdio => std::path::PathBuf::from("STDOUT"),
    };
    let check = manifest.as_ref().map(SentCheck::new).transpose()?.map(Mutex::new);
    // The first pipe to fail says why; the others stop because it did (their "cancelled" is no news).
    let failure = Failure::new(cancel.clone());
    let results: Vec<Option<(PoisonOnDrop, u64)>> = thread::scope(|scope| {
        let handles: Vec<_> = readers
            .into_iter()
            .zip(pipes)
            .map(|(reader, pipe)| {
                let (check, failure) = (check.as_ref(), &failure);
                scope.spawn(move || {
                    let mut out = PoisonOnDrop::new(pipe.pipe);
                    match reader.copy_to(&mut out, check, &format!("stream to {}", pipe.name)) {
                        Ok(copied) => Some((out, copied)),
                        Err(e) => {
                            failure.record(e);
                            None
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| failure.joined(h.join(), "pipe writer").flatten()).collect()
    });
    if let Some(error) = failure.take() {
        return Err(error);
    }
    let outs: Vec<(PoisonOnDrop, u64)> = results.into_iter().flatten().collect();
    let checked = match check {
        Some(check) => Some(check.into_inner().unwrap_or_else(|e| e.into_inner()).finish()?),
        None => None,
    };
    let mut copied = 0;
    for (out, bytes) in outs {
        out.finish()?;
        copied += bytes;
    }
    Ok(format!("{} into {count} pipes in {}{}", human(copied), dir.display(), checked_note(checked)))
}

/// The stored streams as one xbstream on STDOUT: a single stream copied as it was checked, several merged in
/// order (which needs the manifest).
fn to_stdout(
    config: &GetConfig,
    manifest: Option<Manifest>,
    readers: Vec<PackStream>,
    stdout: IdlePipe,
) -> Result<String> {
    let streams = readers.len();
    let mut out = PoisonOnDrop::new(stdout);
    if streams == 1 {
        let reader = readers.into_iter().next().expect("one stream");
        let check = manifest.as_ref().map(SentCheck::new).transpose()?.map(Mutex::new);
        let copied = reader.copy_to(&mut out, check.as_ref(), "stored stream 0 to STDOUT")?;
        let checked = match check {
            Some(check) => Some(check.into_inner().unwrap_or_else(|e| e.into_inner()).finish()?),
            None => None,
        };
        out.finish()?;
        return Ok(format!("{} to STDOUT{}", human(copied), checked_note(checked)));
    }
    let Some(manifest) = manifest else {
        bail!(
            "backup {} was stored from {streams} streams without a manifest, so they cannot be merged in order: get \
             it with --fifo-streams {streams}, or -C OUT",
            config.name
        );
    };
    let files = manifest.files.len() as u64;
    let written = crate::merge::merge(stored_inputs(readers), config.max_chunk as u64, manifest, &mut out)?;
    out.finish()?;
    Ok(format!("{} streams merged into one on STDOUT ({}){}", streams, human(written), checked_note(Some(files))))
}

/// The stored streams as the input streams of an extraction or a merge, named for messages.
fn stored_inputs(readers: Vec<PackStream>) -> Vec<InputStream> {
    readers
        .into_iter()
        .enumerate()
        .map(|(i, reader)| InputStream { name: format!("stored stream {i}"), file: Box::new(reader) })
        .collect()
}

/// What the summary says of the check against the manifest: how many files passed it, or that there was none.
fn checked_note(checked: Option<u64>) -> String {
    match checked {
        Some(files) => format!("; {files} files checked against {MANIFEST_NAME}"),
        None => "; completeness unproven (stored without a manifest)".into(),
    }
}

/// A stream output that ends with the broken chunk unless [`PoisonOnDrop::finish`] was reached, so a get that fails
/// half-way never leaves a valid-looking stream.
struct PoisonOnDrop {
    pipe: IdlePipe,
    done: bool,
}

impl PoisonOnDrop {
    fn new(pipe: IdlePipe) -> PoisonOnDrop {
        PoisonOnDrop { pipe, done: false }
    }

    fn finish(mut self) -> Result<()> {
        self.pipe.flush()?;
        if self.pipe.is_file() {
            self.pipe.get_ref().sync_all().context("cannot sync the output")?;
        }
        self.done = true;
        Ok(())
    }
}

impl Write for PoisonOnDrop {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pipe.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.pipe.flush()
    }
}

impl Drop for PoisonOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.pipe.set_cancel(None);
            self.pipe.set_timeout(Some(std::time::Duration::from_secs(2)));
            let mut header = Vec::new();
            proto::encode_poison(&mut header);
            let _ = self.pipe.write_all(&header);
        }
    }
}
