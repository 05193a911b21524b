//! Validated extraction settings, derived once from the raw [`crate::cli::ExtractArgs`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use runtime::budget::MemoryBudget;
use runtime::progress::ProgressMode;
use runtime::size::{human, size_arg};

use crate::cli::{ExtractArgs, StreamDigest};
use transport::{End, Endpoint};

/// Validated `extract` settings.
#[derive(Debug, Clone)]
pub struct ExtractConfig {
    /// Where the streams come from.
    pub input: Endpoint,
    /// Where files go (empty for `--list`).
    pub target: PathBuf,
    /// How long a read of a stream may make no progress (`--idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// Writer threads.
    pub writers: usize,
    /// Buffers in the pool.
    pub buffers: usize,
    /// What the writers may spend remembering ended files (an eighth of `--memory-limit`): past it they forget
    /// whole small files and check them from disk when their records come.
    pub ended_files_memory: u64,
    /// The largest manifest `--list` holds in memory (`--memory-limit`).
    pub manifest_limit: u64,
    /// Size of each buffer = the largest payload accepted.
    pub buffer_size: usize,
    /// Replace existing files.
    pub overwrite: bool,
    /// Sync before reporting success.
    pub fsync: bool,
    /// DONTNEED after writing.
    pub fadvise: bool,
    /// Fail without a manifest.
    pub require_manifest: bool,
    /// Hash each stream's bytes.
    pub stream_sha1: bool,
    /// Decompress `.zst` files on the fly.
    pub decompress: bool,
    /// Decompress threads.
    pub decompress_threads: usize,
    /// Where to write statistics.
    pub stats_json: Option<PathBuf>,
    /// Progress display.
    pub progress: ProgressMode,
}

impl ExtractConfig {
    /// Validates raw arguments.
    pub fn from_args(args: &ExtractArgs, verbose: bool, quiet: bool) -> Result<ExtractConfig> {
        let input = Endpoint::from_args(&args.fifo, End::Read)?;
        let buffer_size = size_arg(&args.max_chunk_size, "--max-chunk-size")?;
        if !(4096..=1 << 30).contains(&buffer_size) {
            bail!("--max-chunk-size must be between 4K and 1G");
        }
        let memory_limit = size_arg(&args.memory_limit, "--memory-limit")?;
        if args.parallel == 0 {
            bail!("--parallel must be at least 1");
        }
        let streams = input.stream_count();
        let allowed = (memory_limit / buffer_size) as usize;
        let decompress_threads = if args.decompress { args.decompress_threads.max(1) } else { 0 };
        // One buffer per reader in flight, one to move, and one scratch buffer per decompress thread.
        let needed = streams + 1 + decompress_threads;
        if allowed < needed {
            bail!(
                "--memory-limit {} holds {allowed} buffers of --max-chunk-size {}; {streams} stream(s) need at least {needed}",
                human(memory_limit),
                human(buffer_size)
            );
        }
        // As in the producer, the limit is a cap: a few buffers per thread keep everything busy.
        let mut budget = MemoryBudget::new(memory_limit);
        let buffers = budget.buffers(
            "chunk buffers",
            allowed.min(2 * (2 * streams + args.parallel) + decompress_threads),
            buffer_size,
        );
        let ended_files_memory = budget.assign("ended files", memory_limit / 8);
        log::debug!("{budget}");
        let progress = ProgressMode::choose(verbose, quiet, !args.list);
        Ok(ExtractConfig {
            input,
            target: args.directory.clone().unwrap_or_default(),
            idle_timeout: args.fifo.idle_timeout(),
            writers: args.parallel,
            buffers,
            ended_files_memory,
            manifest_limit: memory_limit,
            buffer_size: buffer_size as usize,
            overwrite: args.overwrite,
            fsync: !args.no_fsync,
            fadvise: !args.no_fadvise,
            require_manifest: args.require_manifest,
            stream_sha1: args.digest == StreamDigest::Sha1,
            decompress: args.decompress,
            decompress_threads,
            stats_json: args.stats_json.clone(),
            progress,
        })
    }
}

/// Validates `put` arguments.
pub fn put_config(args: &crate::cli::PutArgs, verbose: bool, quiet: bool) -> Result<crate::put::PutConfig> {
    crate::layout::check_name(&args.name)?;
    let input = Endpoint::from_args(&args.fifo, End::Read)?;
    let max_chunk = size_arg(&args.max_chunk_size, "--max-chunk-size")?;
    if !(4096..=1 << 30).contains(&max_chunk) {
        bail!("--max-chunk-size must be between 4K and 1G");
    }
    let object_size = size_arg(&args.object_size, "--object-size")?;
    if !(64 << 10..=4 << 30).contains(&object_size) {
        bail!("--object-size must be between 64K and 4G");
    }
    let memory_limit = size_arg(&args.memory_limit, "--memory-limit")?;
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let streams = input.stream_count() as u64;
    let capacity = object_size.max(max_chunk + proto::MAX_HEADER_LEN as u64);
    // Each reader holds one chunk being parsed and fills one pack; the rest are uploads in flight.
    let for_packs = memory_limit.saturating_sub(streams * max_chunk);
    let packs = (for_packs / capacity) as usize;
    let needed = streams as usize + 1;
    if packs < needed {
        bail!(
            "--memory-limit {} holds {packs} packs of {} after {streams} chunk buffers of --max-chunk-size {}; {needed} \
             are needed (one per stream and one uploading): raise --memory-limit or lower --object-size",
            human(memory_limit),
            human(capacity),
            human(max_chunk)
        );
    }
    let mut budget = MemoryBudget::new(memory_limit);
    budget.buffers("chunk buffers", streams as usize, max_chunk);
    let packs = budget.buffers("packs", packs.min(streams as usize + args.parallel), capacity);
    log::debug!("{budget}");
    Ok(crate::put::PutConfig {
        name: args.name.clone(),
        input,
        idle_timeout: args.fifo.idle_timeout(),
        max_chunk: max_chunk as usize,
        object_size: object_size as usize,
        packs,
        parallel: args.parallel,
        manifest_limit: memory_limit,
        progress: ProgressMode::choose(verbose, quiet, true),
    })
}

/// Validates `get` arguments.
pub fn get_config(args: &crate::cli::GetArgs, verbose: bool, quiet: bool) -> Result<crate::get::GetConfig> {
    crate::layout::check_name(&args.name)?;
    let max_chunk = size_arg(&args.max_chunk_size, "--max-chunk-size")?;
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
            crate::get::GetOutput::Extract(Box::new(ExtractConfig {
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
                decompress_threads: if args.decompress { 2 } else { 0 },
                stats_json: None,
                progress: ProgressMode::choose(verbose, quiet, true),
            }))
        }
        (None, _) => match Endpoint::from_args(&args.fifo, End::Write) {
            Err(transport::EndpointError::TerminalOut) => {
                bail!("refusing to write a binary stream to a terminal: redirect STDOUT, or use -C or --fifo-dir")
            }
            endpoint => crate::get::GetOutput::Stream(endpoint?),
        },
    };
    let memory_for_packs = match &output {
        crate::get::GetOutput::Extract(_) => memory_limit / 2,
        _ => memory_limit,
    };
    Ok(crate::get::GetConfig {
        name: args.name.clone(),
        output,
        parallel: args.parallel,
        memory_limit: memory_for_packs,
        max_chunk: max_chunk as usize,
        allow_partial: args.allow_partial,
        idle_timeout: args.fifo.idle_timeout(),
    })
}
