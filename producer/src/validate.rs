//! `--validate-pages`: every page of an InnoDB tablespace checked as it is copied, on the process threads (never
//! on the read threads), with xtrabackup's re-reads.
//!
//! A chunk holding a page that fails its check is re-read whole, up to [`PageValidation::retries`] times,
//! [`PageValidation::retry_delay`] apart (a page being written while it was read is torn only for a moment). If
//! a re-read passes, the re-read bytes are the ones copied. If the page is still bad after the last re-read, the
//! run fails naming the file and the page; with `--log-page-corruption` the pages are recorded in the manifest
//! and the copy goes on (the copy is faithful: they were bad at the source).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use innodb::{check_page, PageContext, Tablespace, Verdict};
use runtime::cancel::{Cancel, Cancelled};

use crate::file::ReadChunk;

/// How pages are validated.
#[derive(Debug, Clone)]
pub struct PageValidation {
    /// Re-reads of a chunk with a bad page before it counts as corrupt (xtrabackup: 10).
    pub retries: u32,
    /// Wait before each re-read (xtrabackup: 100 ms).
    pub retry_delay: Duration,
    /// Record corrupt pages in the manifest and go on, instead of failing.
    pub log_corruption: bool,
}

impl Default for PageValidation {
    fn default() -> PageValidation {
        PageValidation { retries: 10, retry_delay: Duration::from_millis(100), log_corruption: false }
    }
}

/// What validation did, for `--stats-json` and the summary.
#[derive(Debug, Default)]
pub struct PageCounters {
    /// Pages checked (a page re-read counts once).
    pub checked: AtomicU64,
    /// Chunks re-read because of a bad page.
    pub rereads: AtomicU64,
    /// Pages that were bad at first and good on a re-read.
    pub recovered: AtomicU64,
    /// Pages still bad after every re-read, recorded (`--log-page-corruption`).
    pub logged: AtomicU64,
    /// Pages of a kind the checks cannot verify (see [`innodb::Verdict::Unverifiable`]), copied unchecked.
    pub unverifiable: AtomicU64,
}

/// The bad pages of a chunk: (page number, why); and how many pages could not be verified.
fn bad_pages(data: &[u8], offset: u64, space: Tablespace) -> (Vec<(u64, String)>, u64) {
    let size = space.physical_page_size;
    let first = offset / size as u64;
    let mut unverifiable = 0;
    // A partial page at the end of a file (not a whole page) is not checked.
    let bad = data
        .chunks_exact(size)
        .enumerate()
        .filter_map(|(i, page)| {
            let page_number = first + i as u64;
            match check_page(page, PageContext { space, page_number }) {
                Verdict::Corrupt(why) => Some((page_number, why)),
                Verdict::Unverifiable(_) => {
                    unverifiable += 1;
                    None
                }
                _ => None,
            }
        })
        .collect();
    (bad, unverifiable)
}

/// Checks every page of `chunk` (of a file that is a tablespace), re-reading it as configured; may replace the
/// chunk's bytes by a re-read. Fails naming the file and page, unless corruption is logged.
pub fn validate_chunk(
    chunk: &mut ReadChunk,
    settings: &PageValidation,
    counters: &PageCounters,
    cancel: &Cancel,
) -> Result<()> {
    let Some(space) = chunk.file.tablespace(chunk) else { return Ok(()) };
    let size = space.physical_page_size;
    counters.checked.fetch_add((chunk.data.len() / size) as u64, Ordering::Relaxed);
    let (mut bad, unverifiable) = bad_pages(&chunk.data, chunk.offset, space);
    counters.unverifiable.fetch_add(unverifiable, Ordering::Relaxed);
    if bad.is_empty() {
        return Ok(());
    }
    let path = chunk.file.source().display().to_string();
    let first_bad: Vec<u64> = bad.iter().map(|(n, _)| *n).collect();
    for attempt in 1..=settings.retries {
        log::warn!(
            "{path}: page {} is corrupt ({}); re-reading ({attempt} of {})",
            bad[0].0,
            bad[0].1,
            settings.retries
        );
        // A cancelled run stops waiting at once.
        match cancel.receiver().recv_timeout(settings.retry_delay) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return Err(Cancelled.into()),
        }
        counters.rereads.fetch_add(1, Ordering::Relaxed);
        let len = chunk.data.len();
        let got = chunk.file.reread(chunk.offset, &mut chunk.data[..len])?;
        if got < len {
            bail!("{path} shrank while its corrupt page {} was re-read (read {got} of {len} bytes)", bad[0].0);
        }
        bad = bad_pages(&chunk.data, chunk.offset, space).0;
        if bad.is_empty() {
            counters.recovered.fetch_add(first_bad.len() as u64, Ordering::Relaxed);
            log::warn!("{path}: page(s) {first_bad:?} intact on re-read {attempt}; copied as re-read");
            return Ok(());
        }
    }
    let pages: Vec<u64> = bad.iter().map(|(n, _)| *n).collect();
    if settings.log_corruption {
        log::warn!(
            "{path}: page(s) {pages:?} still corrupt after {} re-reads ({}); recorded in the manifest \
             (--log-page-corruption)",
            settings.retries,
            bad[0].1
        );
        counters.logged.fetch_add(pages.len() as u64, Ordering::Relaxed);
        chunk.file.record_corrupt_pages(&pages);
        return Ok(());
    }
    bail!(
        "{path}: page {} is corrupt ({}) after {} re-reads {} ms apart{}; the backup is not complete \
         (--log-page-corruption records such pages in the manifest and goes on)",
        pages[0],
        bad[0].1,
        settings.retries,
        settings.retry_delay.as_millis(),
        if pages.len() > 1 { format!(", and {} more page(s) of this chunk", pages.len() - 1) } else { String::new() }
    )
}
