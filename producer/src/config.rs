//! Validated settings: everything [`crate::pipeline::run`] needs, derived once from the raw [`crate::cli::Args`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use proto::Digest;

use crate::cli::{Args, Binding, DigestArg};
use runtime::budget::MemoryBudget;
use runtime::progress::ProgressMode;
use runtime::size::{human, size_arg};
use transport::{End, Endpoint};

/// Where the backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A plain copy of the tree (no stream), plus the manifest.
    Directory(PathBuf),
    /// One xbstream on STDOUT, or N on named pipes `dir/thread_<i>`.
    Streams {
        /// STDOUT or the pipes.
        endpoint: Endpoint,
        /// How chunks are spread over the pipes (always by file on STDOUT).
        binding: Binding,
    },
}

impl Output {
    /// Number of output streams (1 for a directory or STDOUT).
    pub fn stream_count(&self) -> usize {
        match self {
            Output::Directory(_) => 1,
            Output::Streams { endpoint, .. } => endpoint.stream_count(),
        }
    }
}

/// Validated producer settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tree to back up.
    pub source: PathBuf,
    /// Where it goes.
    pub output: Output,
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// F_SETPIPE_SZ for output pipes (0: leave the default).
    pub pipe_buffer_size: usize,
    /// How long a write to a stream may make no progress (`--idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// Read threads.
    pub read_threads: usize,
    /// `--memory-limit` and what it was divided into.
    pub budget: MemoryBudget,
    /// Process threads (and, when compressing, as many compress threads).
    pub process_threads: usize,
    /// zstd level when compressing.
    pub compress_level: Option<i32>,
    /// The backup's key when encrypting: one age header, one recipient wrap, for every file.
    pub encryption: Option<Arc<crypt::BackupKey>>,
    /// Size of each pool buffer: a chunk, or room for a chunk's worst-case zstd frame, padding and age overhead.
    pub buffer_size: usize,
    /// Buffers in the pool (memory limit / chunk size).
    pub buffers: usize,
    /// Per-file checksums.
    pub digest: Digest,
    /// Whether every stream's bytes are hashed (SHA-1) for `--stats-json` (`--digest sha1` or `stream-sha1`).
    pub stream_sha1: bool,
    /// Whether to call posix_fadvise.
    pub fadvise: bool,
    /// Chunk reads per second, if limited.
    pub throttle: Option<u32>,
    /// Fail on files that change while copied.
    pub strict: bool,
    /// `--allow-empty`: a source without a file is backed up rather than refused.
    pub allow_empty: bool,
    /// `--dir-placeholders`: an empty file in each directory without a file of its own.
    pub dir_placeholders: bool,
    /// Where to write statistics.
    pub stats_json: Option<PathBuf>,
    /// `--validate-pages`: how InnoDB pages are checked (`None`: not at all).
    pub validate_pages: Option<crate::validate::PageValidation>,
    /// Progress display.
    pub progress: ProgressMode,
}

impl Config {
    /// What every file's wire name gets: `.zst` when compressing, `.age` when encrypting, `.zst.age` both.
    pub fn wire_suffix(&self) -> &'static str {
        match (self.compress_level.is_some(), self.encryption.is_some()) {
            (false, false) => "",
            (true, false) => proto::ZSTD_SUFFIX,
            (false, true) => ".age",
            (true, true) => ".zst.age",
        }
    }

    /// Validates raw arguments.
    pub fn from_args(args: &Args) -> Result<Config> {
        let meta = std::fs::metadata(&args.source)
            .with_context(|| format!("cannot read --source {}", args.source.display()))?;
        if !meta.is_dir() {
            bail!("--source {} is not a directory", args.source.display());
        }
        // A source given as a symlink (`/var/lib/mysql` often is one) is resolved once, here: the walk never follows
        // a symlink, and every file is then opened below the real directory.
        let source = std::fs::canonicalize(&args.source)
            .with_context(|| format!("cannot resolve --source {}", args.source.display()))?;
        if std::fs::symlink_metadata(&args.source).is_ok_and(|m| m.file_type().is_symlink()) {
            log::info!("--source {} is a symlink: backing up {}", args.source.display(), source.display());
        }
        let output = match (&args.stream, &args.target_dir) {
            (None, None) => bail!("say where the backup goes: --stream=xbstream (STDOUT or pipes) or --target-dir DIR"),
            (None, Some(dir)) => {
                if args.fifo.fifo_dir.is_some() || args.fifo.fifo_streams != 1 {
                    bail!("--fifo-dir and --fifo-streams need --stream=xbstream");
                }
                Output::Directory(dir.clone())
            }
            (Some(_), target_dir) => {
                // With several pipes and no --fifo-dir, the pipes go in --target-dir (xtrabackup's habit).
                let fifo_dir = args
                    .fifo
                    .fifo_dir
                    .clone()
                    .or_else(|| (args.fifo.fifo_streams > 1).then(|| target_dir.clone()).flatten());
                let timeout = Duration::from_secs(args.fifo.fifo_timeout);
                let endpoint = Endpoint::new(fifo_dir, args.fifo.fifo_streams, timeout, End::Write)?;
                let binding = match endpoint {
                    Endpoint::Stdio => Binding::File,
                    Endpoint::Fifos { .. } => args.fifo_binding,
                };
                Output::Streams { endpoint, binding }
            }
        };

        let chunk_size = size_arg(&args.read_buffer_size, "--read-buffer-size")?;
        if !(4096..=proto::DEFAULT_MAX_PAYLOAD).contains(&chunk_size) {
            bail!(
                "--read-buffer-size must be between 4K and {} (readers reject larger chunks)",
                human(proto::DEFAULT_MAX_PAYLOAD)
            );
        }
        // Pages are checked within one chunk, so no page may straddle two: 64K is the largest InnoDB page.
        if args.validate_pages && chunk_size % (64 << 10) != 0 {
            bail!("--validate-pages needs a --read-buffer-size that is a multiple of 64K (the largest InnoDB page)");
        }
        let encryption = encryption(args, chunk_size)?;
        let pipe_buffer_size = size_arg(&args.pipe_buffer_size, "--pipe-buffer-size")?;
        let memory_limit = size_arg(&args.memory_limit, "--memory-limit")?;
        if args.parallel == 0 || args.compress_threads == 0 {
            bail!("--parallel and --compress-threads must be at least 1");
        }
        // Each buffer holds a chunk, or its worst-case zstd frame, or (encrypted) that sealed behind the header:
        // the limit is divided by what a buffer really takes.
        let buffer_size = buffer_size(chunk_size as usize, args.compress.is_some(), encryption.as_deref());
        let allowed = (memory_limit / buffer_size as u64) as usize;
        if allowed < 2 {
            bail!(
                "--memory-limit {} holds fewer than 2 buffers of {} (--read-buffer-size {}{})",
                human(memory_limit),
                human(buffer_size as u64),
                human(chunk_size),
                if buffer_size as u64 > chunk_size { ", with room for compression or encryption" } else { "" }
            );
        }
        let (rt, pt, wt) = (args.parallel, args.compress_threads, output.stream_count());
        // Each compress thread keeps one buffer as scratch, on top of MEB's rule.
        let ct = if args.compress.is_some() { pt } else { 0 };
        let wanted = rt + pt + wt + rt.max(pt).max(wt) + ct;
        // The limit is a cap, not a target: twice MEB's rule keeps every thread busy with room to reorder, and
        // more buffers only cost page faults and cache misses (measured: 256 × 1 MiB ran ~25% slower than 22 × 2 MiB).
        let mut budget = MemoryBudget::new(memory_limit);
        // Counted at the chunk size the limit was divided by; with --compress each buffer is a little larger
        // (room for the worst-case frame: `compress::buffer_size`).
        let buffers = budget.buffers("chunk buffers", allowed.min(2 * wanted), buffer_size as u64);
        // The manifest's pieces on their way, apart from the chunk pool (`documents.rs`): half a megabyte.
        budget.buffers("manifest pieces", crate::documents::DOCUMENT_BUFFERS, crate::documents::DOCUMENT_PIECE as u64);
        // Besides the scratches: one to read into, one to move, and with encryption one held back per file.
        let needed = ct + 2 + usize::from(encryption.is_some());
        if buffers < needed {
            bail!(
                "--memory-limit {} holds {buffers} buffers of {}: too few for {ct} compress threads{} (at least \
                 {needed})",
                human(memory_limit),
                human(buffer_size as u64),
                if encryption.is_some() { " and encryption" } else { "" }
            );
        }
        if buffers < wanted {
            log::warn!(
                "--memory-limit {} holds {buffers} buffers of {}; {wanted} would keep all {rt} read, {pt} process and {wt} \
                 write threads busy (MEB's rule), so the pipeline will run less parallel",
                human(memory_limit),
                human(chunk_size)
            );
        }

        let progress = ProgressMode::choose(args.verbose, args.quiet, true);

        Ok(Config {
            source,
            output,
            chunk_size: chunk_size as usize,
            pipe_buffer_size: pipe_buffer_size as usize,
            idle_timeout: args.fifo.idle_timeout(),
            read_threads: rt,
            process_threads: pt,
            compress_level: args.compress.map(|_| args.compress_level),
            encryption,
            buffer_size,
            buffers,
            budget,
            digest: match args.digest {
                DigestArg::Crc32 | DigestArg::StreamSha1 => Digest::Crc32,
                DigestArg::Sha1 => Digest::Sha1,
            },
            stream_sha1: args.digest != DigestArg::Crc32,
            fadvise: !args.no_fadvise,
            throttle: args.throttle.filter(|&n| n > 0),
            strict: args.strict,
            allow_empty: args.allow_empty,
            dir_placeholders: args.dir_placeholders,
            stats_json: args.stats_json.clone(),
            validate_pages: args.validate_pages.then(|| crate::validate::PageValidation {
                log_corruption: args.log_page_corruption,
                ..Default::default()
            }),
            progress,
        })
    }
}

/// The backup's key when any encryption option was given, once the settings encryption cannot take are refused.
fn encryption(args: &Args, chunk_size: u64) -> Result<Option<Arc<crypt::BackupKey>>> {
    let Some(key) = args.encrypt.backup_key()? else { return Ok(None) };
    // Every chunk but a file's last must be whole age segments, to be sealed alone.
    if chunk_size % crypt::SEGMENT != 0 {
        bail!("encryption needs a --read-buffer-size that is a multiple of 64K (age's segment)");
    }
    if args.digest == DigestArg::Sha1 {
        bail!(
            "--digest sha1 cannot be combined with encryption yet: backup-manifest.sha1 would show every file's \
             SHA-1 in the clear (use --digest crc32 or stream-sha1)"
        );
    }
    Ok(Some(Arc::new(key)))
}

/// What one pool buffer must hold: a chunk of `chunk_size`, or its worst-case zstd frame when compressing, sealed
/// behind the header when encrypting.
fn buffer_size(chunk_size: usize, compress: bool, key: Option<&crypt::BackupKey>) -> usize {
    let compressed = if compress { crate::compress::buffer_size(chunk_size) } else { chunk_size };
    match key {
        Some(key) => crate::encrypt::buffer_size(compressed, compress, key.header().len()),
        None => compressed,
    }
}
