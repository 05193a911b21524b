//! What a finished backup reports: `--stats-json`, and the one-line summary the producer prints.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use runtime::lock::Locked;
use runtime::pool::BufferPool;
use runtime::size::human;
use runtime::stats::{peak_rss_bytes, StreamStats};
use transport::Endpoint;

use crate::config::{Config, Output};
use crate::output::stream_name;
use crate::router::Router;
use crate::sink::SinkReport;
use crate::stats::{PageStats, Stats};
use crate::validate::PageCounters;

/// What the run measured, for the summary.
pub(crate) struct RunFacts<'a> {
    /// The router, with every record and directory.
    pub(crate) router: Router,
    /// What each stream's writer reported.
    pub(crate) reports: Vec<SinkReport>,
    /// Chunks read by each read thread.
    pub(crate) reads_per_thread: &'a [AtomicU64],
    /// Entries the pre-scan skipped.
    pub(crate) skipped: u64,
    /// The memory budget, for its peak use.
    pub(crate) pool: &'a BufferPool,
    /// `--validate-pages` tallies.
    pub(crate) page_counters: &'a PageCounters,
    /// Seconds since the run started.
    pub(crate) elapsed: f64,
}

/// Writes `--stats-json` (if asked) and returns the summary line.
pub(crate) fn summarize(config: &Config, facts: RunFacts<'_>) -> Result<String> {
    let RunFacts { router, reports, reads_per_thread, skipped, pool, page_counters, elapsed } = facts;
    // The SHA-1 list is not counted among the files (it is recorded after the stats were taken).
    // Nor are the placeholders of `--dir-placeholders`: they are not in the source.
    let placeholders = router.directories.locked().iter().filter(|directory| directory.placeholder).count() as u64;
    let files = router.recorded.0.load(Ordering::Relaxed) - placeholders;
    let bytes = router.recorded.1.load(Ordering::Relaxed);
    let stats = Stats {
        files,
        bytes,
        chunks: reads_per_thread.iter().map(|r| r.load(Ordering::Relaxed)).sum(),
        skipped,
        chunks_read_per_thread: reads_per_thread.iter().map(|r| r.load(Ordering::Relaxed)).collect(),
        streams: reports
            .into_iter()
            .enumerate()
            .map(|(index, report)| StreamStats {
                index,
                name: stream_name(config, index),
                bytes: report.bytes,
                chunks: report.chunks,
                sha1: report.sha1,
            })
            .collect(),
        wall_seconds: elapsed,
        mb_per_second: bytes as f64 / elapsed.max(1e-9) / 1e6,
        chunk_size: config.chunk_size,
        buffers: pool.count(),
        peak_buffers_in_use: pool.peak_in_use(),
        peak_rss_bytes: peak_rss_bytes(),
        pages: config.validate_pages.as_ref().map(|_| PageStats {
            checked: page_counters.checked.load(Ordering::Relaxed),
            rereads: page_counters.rereads.load(Ordering::Relaxed),
            recovered: page_counters.recovered.load(Ordering::Relaxed),
            corrupt_logged: page_counters.logged.load(Ordering::Relaxed),
            unverifiable: page_counters.unverifiable.load(Ordering::Relaxed),
        }),
    };
    if let Some(path) = &config.stats_json {
        stats.write(path)?;
    }
    let destination = match &config.output {
        Output::Directory(dir) => dir.display().to_string(),
        Output::Streams { endpoint: Endpoint::Stdio, .. } => "STDOUT".to_string(),
        Output::Streams { endpoint: Endpoint::Fifos { dir, count, .. }, .. } => {
            format!("{count} pipes in {}", dir.display())
        }
    };
    let pages = match &stats.pages {
        Some(pages) if pages.corrupt_logged > 0 => format!(
            "; {} InnoDB pages checked, {} CORRUPT (recorded in the manifest)",
            pages.checked, pages.corrupt_logged
        ),
        Some(pages) => format!("; {} InnoDB pages checked, all intact", pages.checked),
        None => String::new(),
    };
    let placeholders = match placeholders {
        0 => String::new(),
        n => format!(" (and {n} directory placeholders)"),
    };
    // Encrypted: the key's fingerprint, which every decryption reports too (a forged backup has another).
    let encrypted = match &config.encryption {
        Some(key) => format!("; encrypted (age), backup key {}", key.fingerprint()),
        None => String::new(),
    };
    Ok(format!(
        "backed up {files} files{placeholders}, {} in {elapsed:.2} s ({:.0} MB/s) to {destination}; {} lists them\
         {pages}{encrypted}",
        human(bytes),
        stats.mb_per_second,
        proto::MANIFEST_NAME
    ))
}
