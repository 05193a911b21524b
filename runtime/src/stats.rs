//! What every stream carried (`--stats-json` of both binaries), and the process's peak memory.

use serde::Serialize;

/// One stream's totals.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStats {
    /// Stream number.
    pub index: usize,
    /// `STDOUT`, a pipe path or the target directory.
    pub name: String,
    /// Bytes written.
    pub bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// SHA-1 of every byte written (`--digest sha1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
}

/// Peak resident set size of this process, from `/proc/self/status` (0 where unavailable).
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
