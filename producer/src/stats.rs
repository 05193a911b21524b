//! Run statistics (`--stats-json`) and the one-line summary.

use std::path::Path;

use anyhow::{Context, Result};
use runtime::stats::StreamStats;
use serde::Serialize;

/// Everything `--stats-json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Files backed up (the manifest and SHA-1 list not counted).
    pub files: u64,
    /// Bytes of file content backed up.
    pub bytes: u64,
    /// Payload chunks read.
    pub chunks: u64,
    /// Entries skipped by the scan (symlinks, special files, a stale manifest).
    pub skipped: u64,
    /// Chunks read by each read thread, in thread order.
    pub chunks_read_per_thread: Vec<u64>,
    /// Per output stream: what it carried, manifest included.
    pub streams: Vec<StreamStats>,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// File bytes per second, in MB/s (10^6).
    pub mb_per_second: f64,
    /// Chunk size.
    pub chunk_size: usize,
    /// Buffers in the pool.
    pub buffers: usize,
    /// Most buffers in use at once.
    pub peak_buffers_in_use: usize,
    /// Peak resident memory of the process (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// `--validate-pages`: what the page checks did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<PageStats>,
}

/// What `--validate-pages` did.
#[derive(Debug, Clone, Serialize)]
pub struct PageStats {
    /// Pages checked.
    pub checked: u64,
    /// Chunks re-read because a page failed its check.
    pub rereads: u64,
    /// Pages bad at first and intact on a re-read.
    pub recovered: u64,
    /// Pages still corrupt after every re-read, recorded in the manifest (`--log-page-corruption`).
    pub corrupt_logged: u64,
    /// Pages of a kind the checks cannot verify (classic-format page_compressed ones), copied unchecked.
    pub unverifiable: u64,
}

impl Stats {
    /// Writes the JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("stats always serialise");
        std::fs::write(path, json).with_context(|| format!("cannot write --stats-json {}", path.display()))
    }
}
