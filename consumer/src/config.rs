//! Validated extraction settings, derived once from the raw [`crate::cli::ExtractArgs`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runtime::progress::ProgressMode;
use runtime::size::{human, parse_size};

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
    /// The --memory-limit: the pool's cap, the largest manifest `--list` holds in memory, and (an eighth of it)
    /// the writers' bound on ended files kept in memory.
    pub memory_limit: u64,
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
        let buffer_size = parse_size(&args.max_chunk_size).map_err(anyhow::Error::msg).context("--max-chunk-size")?;
        if !(4096..=1 << 30).contains(&buffer_size) {
            bail!("--max-chunk-size must be between 4K and 1G");
        }
        let memory_limit = parse_size(&args.memory_limit).map_err(anyhow::Error::msg).context("--memory-limit")?;
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
        let buffers = allowed.min(2 * (2 * streams + args.parallel) + decompress_threads);
        let progress = if quiet {
            ProgressMode::Quiet
        } else if verbose {
            ProgressMode::Lines
        } else if std::io::stderr().is_terminal() && !args.list {
            ProgressMode::Bar
        } else {
            ProgressMode::Quiet
        };
        Ok(ExtractConfig {
            input,
            target: args.directory.clone().unwrap_or_default(),
            idle_timeout: args.fifo.idle_timeout(),
            writers: args.parallel,
            buffers,
            memory_limit,
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

fn size_arg(text: &str, name: &str) -> Result<u64> {
    parse_size(text).map_err(anyhow::Error::msg).with_context(|| name.to_string())
}

fn progress_of(verbose: bool, quiet: bool) -> ProgressMode {
    if quiet {
        ProgressMode::Quiet
    } else if verbose {
        ProgressMode::Lines
    } else if std::io::stderr().is_terminal() {
        ProgressMode::Bar
    } else {
        ProgressMode::Quiet
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
    Ok(crate::put::PutConfig {
        name: args.name.clone(),
        input,
        idle_timeout: args.fifo.idle_timeout(),
        max_chunk: max_chunk as usize,
        object_size: object_size as usize,
        packs: packs.min(streams as usize + args.parallel),
        parallel: args.parallel,
        manifest_limit: memory_limit,
        progress: progress_of(verbose, quiet),
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
                memory_limit,
                buffer_size: max_chunk as usize,
                overwrite: args.overwrite,
                fsync: !args.no_fsync,
                fadvise: true,
                require_manifest: false,
                stream_sha1: false,
                decompress: args.decompress,
                decompress_threads: if args.decompress { 2 } else { 0 },
                stats_json: None,
                progress: progress_of(verbose, quiet),
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
