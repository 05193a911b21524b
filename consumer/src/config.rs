//! Validated extraction settings, derived once from the raw [`crate::cli::ExtractArgs`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use runtime::budget::MemoryBudget;
use runtime::progress::ProgressMode;
use runtime::size::{human, size_arg};

use crate::cli::{ExtractArgs, StreamDigest};
use transport::{End, Endpoint};

/// `--decrypt` and its keys, checked to come together.
pub(crate) fn decryption(decrypt: bool, keys: &crypt::args::DecryptArgs) -> Result<Option<crypt::args::DecryptArgs>> {
    match (decrypt, keys.given()) {
        (true, true) => Ok(Some(keys.clone())),
        (true, false) => bail!("--decrypt needs the key: --identity FILE or --passphrase-file FILE"),
        (false, true) => bail!("--identity and --passphrase-file are for --decrypt"),
        (false, false) => Ok(None),
    }
}

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
    /// `--decrypt`: the keys to decrypt with (read when the run starts).
    pub decrypt: Option<crypt::args::DecryptArgs>,
    /// Decrypt threads (with `--decrypt`).
    pub decrypt_threads: usize,
    /// Where to write statistics.
    pub stats_json: Option<PathBuf>,
    /// Progress display.
    pub progress: ProgressMode,
    /// A partial restore (`get --include`): only these files (their paths as the streams carry them) are expected
    /// and proven; the streams carry only their chunks, so the streams' tallies and the directories are not
    /// checked, and the manifest is not placed in OUT (OUT is not the whole backup). `None`: the whole backup.
    pub selection: Option<std::sync::Arc<Selection>>,
}

/// The files a partial restore brings back, by their paths as the streams carry them.
pub type Selection = std::collections::HashSet<Vec<u8>>;

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
            decrypt: decryption(args.decrypt, &args.keys)?,
            decrypt_threads: args.parallel.max(2),
            stats_json: args.stats_json.clone(),
            progress,
            selection: None,
        })
    }
}
