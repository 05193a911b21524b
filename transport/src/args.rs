//! Command-line options both binaries take, spelled as xtrabackup and xbstream spell them (clap derive; each
//! binary flattens them into its own arguments).

use std::path::PathBuf;

/// The named-pipe options, the same on both sides (the consumer flattens them into `extract`, `put` and `get`).
#[derive(Debug, Clone, clap::Args)]
pub struct FifoArgs {
    /// Number of named pipes, thread_0 … thread_{N-1} in --fifo-dir, used in parallel; must be the same on both
    /// sides. Without --fifo-dir the stream is STDOUT / STDIN (and N must be 1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub fifo_streams: usize,

    /// Directory of the named pipes (created with mode 0700 by whichever side starts first). The producer defaults
    /// it to --target-dir when --fifo-streams is above 1.
    #[arg(long, value_name = "DIR")]
    pub fifo_dir: Option<PathBuf>,

    /// Seconds to wait for the other side to open each pipe.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub fifo_timeout: u64,

    /// Seconds a read or write of a stream (STDIN/STDOUT or a pipe) may make no progress before the run fails
    /// naming the stream: a stalled peer (SIGSTOP, a hung ssh) must not hang us forever. 0 = wait forever.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub idle_timeout: u64,
}

impl FifoArgs {
    /// `--idle-timeout` as a deadline (`None` = none).
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        (self.idle_timeout > 0).then(|| std::time::Duration::from_secs(self.idle_timeout))
    }
}
