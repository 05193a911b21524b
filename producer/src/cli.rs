//! Raw command-line arguments (clap derive), and nothing else: [`crate::app`] is the entry point, and arguments
//! are validated into a [`crate::config::Config`] before anything runs.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Back up a directory tree as xbstream: to STDOUT, to N named pipes, or as a plain copy.
///
/// Every file is split into chunks that parallel read threads take from one queue, so one huge file uses every
/// thread. Memory is a fixed pool of chunk buffers (--memory-limit). A manifest listing every file, its size and
/// checksum is written last, so the consumer can prove the backup complete.
#[derive(Debug, Parser)]
#[command(name = "producer", version, about, long_about, max_term_width = 110)]
pub struct Args {
    /// Directory to back up (a stopped or snapshotted datadir, or any tree).
    #[arg(long, value_name = "DIR")]
    pub source: PathBuf,

    /// Without --stream: copy the tree into DIR (which must be empty or absent). With --stream and --fifo-streams:
    /// the default --fifo-dir.
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,

    /// Write an xbstream: to STDOUT, or to the pipes in --fifo-dir.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub stream: Option<StreamFormat>,

    /// The named-pipe transport.
    #[command(flatten)]
    pub fifo: transport::args::FifoArgs,

    /// How chunks are spread over pipes: `chunk` sends each chunk to the pipe with the shortest queue, so a slow
    /// pipe gets fewer (a file may span pipes; our consumer reassembles it); `file` keeps each file whole and in
    /// order on one pipe — the least loaded on which `mbstream -x` can already create its directory — so every pipe
    /// alone extracts with `mbstream -x` (what xtrabackup does) when every directory holds a file or
    /// `--dir-placeholders` is given.
    #[arg(long, value_enum, default_value_t = Binding::Chunk)]
    pub fifo_binding: Binding,

    /// Chunk size: files are read and streamed in pieces of this size (suffixes K, M, G). 2M measured fastest
    /// here; xtrabackup uses 10M.
    #[arg(long, default_value = "2M", value_name = "SIZE")]
    pub read_buffer_size: String,

    /// Pipe buffer to ask for (F_SETPIPE_SZ) on every output pipe, STDOUT included; 0 keeps the kernel's default
    /// (64K). Above /proc/sys/fs/pipe-max-size it needs privilege.
    #[arg(long, default_value = "1M", value_name = "SIZE")]
    pub pipe_buffer_size: String,

    /// Read threads: every file's chunks are read by this many threads at once (xtrabackup's --parallel copies
    /// whole files per thread instead). Default: the machine's cores, at least 4.
    #[arg(long, default_value_t = runtime::machine::threads(4), value_name = "N")]
    pub parallel: usize,

    /// Process threads (checksums, and encryption's sealing), and with --compress as many compress threads.
    /// Default: the machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub compress_threads: usize,

    /// Compress every file (but empty ones and the manifest): each chunk becomes one zstd frame and the file
    /// travels as `<path>.zst`, which `zstd -d` restores; `consumer extract --decompress` restores on the fly.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "zstd", value_name = "METHOD")]
    pub compress: Option<CompressArg>,

    /// Encryption: every file as `<path>.age` (`<path>.zst.age` with --compress), an age file stock `age -d`
    /// decrypts; the manifest too (docs/security.md).
    #[command(flatten)]
    pub encrypt: crypt::args::EncryptArgs,

    /// zstd level for --compress (1 = fastest, 19 = smallest).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compress_level: i32,

    /// Hard cap on chunk buffers in memory (suffixes K, M, G). The pool uses at most twice MEB's rule of
    /// read + process + write + max(read, process, write) buffers, and never more than this. Default: 256M, or
    /// 16M a core beyond 16 cores.
    #[arg(long, default_value_t = runtime::machine::memory_limit(16), value_name = "SIZE")]
    pub memory_limit: String,

    /// Content checksum recorded per file: `crc32` (free: combined from chunk CRCs) or `sha1` (also written as
    /// backup-manifest.sha1 for `sha1sum -c`, and hashes every stream's bytes for --stats-json); `stream-sha1`:
    /// crc32 per file and the streams' SHA-1s in --stats-json only.
    #[arg(long, value_enum, default_value_t = DigestArg::Crc32)]
    pub digest: DigestArg,

    /// Do not call posix_fadvise (by default: SEQUENTIAL on open, DONTNEED after each chunk, so the backup does not
    /// evict the database's cache).
    #[arg(long)]
    pub no_fadvise: bool,

    /// Limit reads to N chunks per second (xtrabackup's unit: with 1 MiB chunks, N MiB/s); a batch of small files,
    /// at most one chunk's size, counts as one read.
    #[arg(long, value_name = "N")]
    pub throttle: Option<u32>,

    /// Fail when a file changes size or vanishes while it is copied (default: warn and record what was copied).
    /// A file written in place while it is read fails the run either way, unless its copy matches it afterwards.
    #[arg(long)]
    pub strict: bool,

    /// Back up a source that holds no file at all (by default that is an error: an unmounted snapshot, the wrong
    /// directory).
    #[arg(long)]
    pub allow_empty: bool,

    /// Put an empty file (`xbkit-directory-placeholder`) in each directory that holds no file of its own, so that
    /// `mbstream -x` / `xbstream -x` create it (they create a directory only for a file in it, and lose the files
    /// below a directory they could not create). `consumer extract` removes the placeholders; the real tools leave
    /// them. Without it, such directories are named in a warning, and only `consumer` restores them.
    #[arg(long)]
    pub dir_placeholders: bool,

    /// Write run statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,

    /// Check every page of InnoDB tablespaces (`*.ibd`, `*.ibu`, `ibdata*`, `undo*`) as it is copied, with the
    /// algorithm it was written with (crc32, full_crc32, innodb, none); a chunk with a bad page is re-read up to
    /// 10 times, 100 ms apart, then the run fails naming the file and page.
    #[arg(long)]
    pub validate_pages: bool,

    /// With --validate-pages: record pages still corrupt after the re-reads in the manifest and go on, instead of
    /// failing (MariaDB's --log-innodb-page-corruption).
    #[arg(long, alias = "log-innodb-page-corruption", requires = "validate_pages")]
    pub log_page_corruption: bool,

    /// Log progress as plain periodic lines (also when stderr is not a terminal), and more detail.
    #[arg(short, long)]
    pub verbose: bool,

    /// No progress bar and no periodic lines; warnings and errors only.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// Stream formats (only xbstream; the flag exists so the command line reads like xtrabackup's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamFormat {
    /// XBSTCK01 chunks, as xbstream / mbstream read them.
    Xbstream,
}

/// `--fifo-binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Binding {
    /// Each chunk goes to the pipe with the shortest queue (from the next one in turn).
    Chunk,
    /// Each file goes whole to one pipe.
    File,
}

/// `--compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressArg {
    /// zstd frames (xtrabackup 8.0's default method).
    Zstd,
}

/// `--digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DigestArg {
    /// CRC-32 per file.
    Crc32,
    /// CRC-32 and SHA-1 per file.
    Sha1,
    /// CRC-32 per file, and a SHA-1 of every stream in --stats-json only: for checking a transport end to end
    /// (the recipes in scripts/transport/) without hashing every file too.
    StreamSha1,
}
