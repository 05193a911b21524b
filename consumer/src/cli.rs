//! Raw command-line arguments (clap derive), and nothing else: [`crate::app`] is the entry point, and each
//! command's arguments are validated into its config before anything runs.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Restore xbstream backups: one stream from STDIN or N from named pipes back into files, proven complete against
/// the producer's manifest.
#[derive(Debug, Parser)]
#[command(name = "consumer", version, about, max_term_width = 110)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Log progress as plain periodic lines, and more detail.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// No progress bar and no summary line; warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Extract one stream (STDIN) or N pipes into a directory, like `xbstream -x`, and prove it complete.
    Extract(ExtractArgs),
    /// Re-read an extracted tree and check every file against its manifest.
    Verify(VerifyArgs),
    /// Decompress every `<path>.zst` of an extracted tree into `<path>` (like xtrabackup --decompress), checked
    /// against the manifest.
    Decompress(DecompressArgs),
    /// Decrypt every `<path>.age` of an encrypted backup's extracted tree (`mbstream -x`, or `extract` without a
    /// key) into `<path>`: every file authenticated and checked against the encrypted manifest, none placed
    /// unless all are.
    Decrypt(DecryptTreeArgs),
    /// Store one stream (STDIN) or N pipes in object storage as backup NAME, like `xbcloud put`; complete only
    /// once every object is stored and the stream proved whole.
    Put(PutArgs),
    /// Bring backup NAME back: one valid xbstream on STDOUT, N pipes, or extracted and proven with `-C OUT`.
    Get(GetArgs),
    /// Prove stored backup NAME whole where it lies, writing nothing: every object there with its size and ETag
    /// (metadata only), and with --read-data a share of its packs downloaded and proven chunk by chunk.
    Check(CheckArgs),
    /// The backups in a store: name, size, files, date, complete or not.
    List(ListArgs),
    /// Remove backup NAME from a store (its index first, so it stops counting as complete at once), or every
    /// backup that retention rules let go: --keep-last N, --older-than AGE, --incomplete (see --dry-run).
    Delete(DeleteArgs),
}

/// `consumer put`.
#[derive(Debug, ClapArgs)]
pub struct PutArgs {
    /// The backup's name in the store.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Where it goes.
    #[command(flatten)]
    pub storage: crate::storage::StorageArgs,

    /// The named-pipe transport (the producer's options).
    #[command(flatten)]
    pub fifo: transport::args::FifoArgs,

    /// Uploads in flight at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,

    /// Target size of each stored object (a pack of whole chunks; suffixes K, M, G).
    #[arg(long, default_value = "8M", value_name = "SIZE")]
    pub object_size: String,

    /// Hard cap on chunk and pack buffers in memory (suffixes K, M, G). Default: 256M, or 32M a core beyond 8.
    #[arg(long, default_value_t = runtime::machine::memory_limit(32), value_name = "SIZE")]
    pub memory_limit: String,

    /// Largest chunk payload accepted (our producer sends 2M, mbstream 10M); each stream holds one such buffer.
    #[arg(long, default_value = "10M", value_name = "SIZE")]
    pub max_chunk_size: String,

    /// Encrypt a foreign stream (mariadb-backup, mbstream -c) file by file on its way to storage, as the producer
    /// encrypts (every file `<path>.age`, an encrypted manifest): `get` gives it back as such, or decrypted with
    /// `-C --decrypt`. (A stream of our producer is encrypted by the producer.)
    #[command(flatten)]
    pub encrypt: crypt::args::EncryptArgs,
}

/// `consumer get`.
#[derive(Debug, ClapArgs)]
pub struct GetArgs {
    /// The backup's name in the store.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Where it is.
    #[command(flatten)]
    pub storage: crate::storage::StorageArgs,

    /// Extract into OUT (created if missing) and prove it, as `extract` does, instead of writing a stream.
    #[arg(short = 'C', long = "directory", value_name = "OUT")]
    pub directory: Option<PathBuf>,

    /// The named-pipe transport: with --fifo-dir, write stream i to thread_i (as many pipes as were stored).
    #[command(flatten)]
    pub fifo: transport::args::FifoArgs,

    /// Downloads in flight at once (more than put's uploads: a server answers each GET at its own pace, and on
    /// S3 and s3s-fs alike many smaller downloads in flight beat a few; see docs/benchmarks.md).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub parallel: usize,

    /// Read a pack larger than SIZE as several ranges of at most SIZE, in flight at once (suffixes K, M, G): a
    /// stream is read in order, so its next pack arriving over several connections keeps the downloads from
    /// waiting on one.
    #[arg(long, default_value = "4M", value_name = "SIZE")]
    pub range_size: String,

    /// Writer threads for -C. Default: the machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub writers: usize,

    /// Hard cap on pack and chunk buffers in memory (suffixes K, M, G). Default: 256M, or 32M a core beyond 8.
    #[arg(long, default_value_t = runtime::machine::memory_limit(32), value_name = "SIZE")]
    pub memory_limit: String,

    /// Largest chunk payload accepted.
    #[arg(long, default_value = "16M", value_name = "SIZE")]
    pub max_chunk_size: String,

    /// Fetch a backup whose put did not finish (no index), as far as it goes; never proven.
    #[arg(long)]
    pub allow_partial: bool,

    /// With -C: restore only the files whose path in the backup matches PATTERN (a shell glob: `shop/orders.*`;
    /// `*` stays inside a directory, `**` crosses them; repeatable), reading only the bytes that hold them, each
    /// proven against the manifest.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,

    /// With -C: leave out the files whose path matches PATTERN (repeatable; wins over --include).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// With -C: replace files that already exist.
    #[arg(long)]
    pub overwrite: bool,

    /// With -C: skip the final sync.
    #[arg(long)]
    pub no_fsync: bool,

    /// With -C: decompress `.zst` files on the fly.
    #[arg(long)]
    pub decompress: bool,

    /// With -C: decrypt an encrypted backup on the fly, as `extract --decrypt` does.
    #[arg(long)]
    pub decrypt: bool,

    /// The key for --decrypt.
    #[command(flatten)]
    pub keys: crypt::args::DecryptArgs,
}

/// `consumer check`.
#[derive(Debug, ClapArgs)]
pub struct CheckArgs {
    /// The backup's name in the store.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Where it is.
    #[command(flatten)]
    pub storage: crate::storage::StorageArgs,

    /// Also download PERCENT of the packs (chosen at random; all of them when no value is given) and prove each:
    /// size, CRC-32, every chunk; with all of them, every file against the manifest.
    #[arg(long, value_name = "PERCENT", num_args = 0..=1, default_missing_value = "100")]
    pub read_data: Option<String>,

    /// Downloads in flight at once (with --read-data).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,

    /// Hard cap on the packs and the manifest held in memory (suffixes K, M, G). Default: 256M, or 32M a core
    /// beyond 8.
    #[arg(long, default_value_t = runtime::machine::memory_limit(32), value_name = "SIZE")]
    pub memory_limit: String,
}

/// `consumer list`.
#[derive(Debug, ClapArgs)]
pub struct ListArgs {
    /// Where the backups are.
    #[command(flatten)]
    pub storage: crate::storage::StorageArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `consumer delete`: one backup by name, or the backups that retention rules let go.
#[derive(Debug, ClapArgs)]
pub struct DeleteArgs {
    /// The backup's name in the store (or, instead, the rules below).
    #[arg(value_name = "NAME", conflicts_with_all = ["keep_last", "older_than", "incomplete"])]
    pub name: Option<String>,

    /// Where it is.
    #[command(flatten)]
    pub storage: crate::storage::StorageArgs,

    /// Keep the N newest complete backups; delete older complete ones (that every other rule given lets go too).
    /// The newest complete backup is never deleted by a rule.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,

    /// Delete complete backups older than AGE (`30d`, `12h`, `2w`), by when their put finished; with
    /// --incomplete, the age an unfinished put's claim must reach before it is removed, if longer than 24h.
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,

    /// Also delete incomplete backups (no index: a put that did not finish) whose put started more than 24h ago
    /// (or --older-than, if longer: a put still at work looks just like an interrupted one).
    #[arg(long)]
    pub incomplete: bool,

    /// Print what would be deleted, and why; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `consumer decompress`.
#[derive(Debug, ClapArgs)]
pub struct DecompressArgs {
    /// The extracted tree.
    #[arg(value_name = "OUT")]
    pub directory: PathBuf,

    /// Delete each `.zst` once its decompressed file is in place.
    #[arg(long)]
    pub remove_original: bool,

    /// Replace decompressed files that already exist.
    #[arg(long)]
    pub overwrite: bool,

    /// Decompress threads (files are spread over them). Default: the machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub parallel: usize,
}

/// `consumer decrypt`.
#[derive(Debug, ClapArgs)]
pub struct DecryptTreeArgs {
    /// The extracted tree.
    #[arg(value_name = "OUT")]
    pub directory: PathBuf,

    /// The key: `--identity FILE` (repeatable) or `--passphrase-file FILE`.
    #[command(flatten)]
    pub keys: crypt::args::DecryptArgs,

    /// Decompress `<path>.zst.age` too, in the same pass (without it they become `<path>.zst`).
    #[arg(long)]
    pub decompress: bool,

    /// Delete each `.age` once every decrypted file is in place.
    #[arg(long)]
    pub remove_original: bool,

    /// Replace decrypted files that already exist.
    #[arg(long)]
    pub overwrite: bool,

    /// Decrypt threads (files are spread over them). Default: the machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub parallel: usize,
}

/// `consumer extract`.
#[derive(Debug, ClapArgs)]
pub struct ExtractArgs {
    /// Directory to extract into (created if missing).
    #[arg(short = 'C', long = "directory", value_name = "OUT", required_unless_present = "list")]
    pub directory: Option<PathBuf>,

    /// List the files in the stream (path, size, chunks) instead of extracting; writes nothing.
    #[arg(long)]
    pub list: bool,

    /// The named-pipe transport (the producer's options).
    #[command(flatten)]
    pub fifo: transport::args::FifoArgs,

    /// Writer threads (files are spread over them by path; with --decrypt, as many decrypt threads). Default: the
    /// machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub parallel: usize,

    /// Hard cap on chunk buffers in memory (suffixes K, M, G). Default: 256M, or 32M a core beyond 8 cores.
    #[arg(long, default_value_t = runtime::machine::memory_limit(32), value_name = "SIZE")]
    pub memory_limit: String,

    /// Largest chunk payload accepted; one buffer's size (our producer sends 2M, mbstream 10M).
    #[arg(long, default_value = "16M", value_name = "SIZE")]
    pub max_chunk_size: String,

    /// Decompress `<path>.zst` files written by `producer --compress` on the fly (in parallel, chunks in any order),
    /// writing `<path>` and checking the original content against the manifest; no `.zst` is written.
    #[arg(long)]
    pub decompress: bool,

    /// Decompress threads for --decompress. Default: the machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub decompress_threads: usize,

    /// Decrypt an encrypted backup (`producer --encrypt-recipient`) on the fly, in parallel: every file written as
    /// `<path>`, each segment authenticated and every file checked against the encrypted manifest (with
    /// --decompress for a compressed one). Needs --identity or --passphrase-file.
    #[arg(long)]
    pub decrypt: bool,

    /// The key for --decrypt.
    #[command(flatten)]
    pub keys: crypt::args::DecryptArgs,

    /// Replace files that already exist in the target directory.
    #[arg(long)]
    pub overwrite: bool,

    /// Skip the final sync of the extracted files and directories.
    #[arg(long)]
    pub no_fsync: bool,

    /// Do not call posix_fadvise(DONTNEED) after writing.
    #[arg(long)]
    pub no_fadvise: bool,

    /// Fail unless the stream carries a manifest (streams from mbstream -c or mariadb-backup do not).
    #[arg(long)]
    pub require_manifest: bool,

    /// `sha1`: hash every byte read on each stream (reported by --stats-json, to compare with the producer's), and
    /// each file as its bytes arrive in order. Files are checked against the manifest's SHA-1s whenever it carries
    /// them; without this flag (or for files whose chunks arrived out of order) they are re-read to do so.
    #[arg(long, value_enum, default_value_t = StreamDigest::None)]
    pub digest: StreamDigest,

    /// Write run statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
}

/// `--digest` for the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamDigest {
    /// No stream hashing.
    None,
    /// SHA-1 of each stream's bytes.
    Sha1,
}

/// `consumer verify`.
#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    /// The extracted tree (holding backup-manifest.json).
    #[arg(value_name = "OUT")]
    pub directory: PathBuf,

    /// Files checked at once (each is read back whole by one thread). Default: the machine's cores, at least 2.
    #[arg(long, default_value_t = runtime::machine::threads(2), value_name = "N")]
    pub parallel: usize,
}
