//! The read stage: read threads take a pool buffer, then a job, and `pread` the chunk (or a batch of small files)
//! into it; `--throttle` spaces the reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};
use runtime::cancel::{recv, send, Cancel, Cancelled};
use runtime::lock::Locked;
use runtime::pool::BufferPool;
use runtime::progress::Counters;

use crate::config::Config;
use crate::work::{Job, Read, ReadBatch};

/// `--throttle N`: at most N chunk reads per second across all read threads.
pub(crate) struct Throttle {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Throttle {
    pub(crate) fn new(per_second: u32) -> Throttle {
        Throttle { interval: Duration::from_secs(1) / per_second.max(1), next: Mutex::new(Instant::now()) }
    }

    fn wait(&self, cancel: &Cancel) -> Result<(), Cancelled> {
        let slot = {
            let mut next = self.next.locked();
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        loop {
            cancel.check()?;
            let now = Instant::now();
            if now >= slot {
                return Ok(());
            }
            thread::sleep((slot - now).min(Duration::from_millis(100)));
        }
    }
}

/// One read thread: a pool buffer first, then a job (so the lowest outstanding chunk always holds a buffer),
/// read into it and handed to the process threads. Counts bytes for the progress display and chunks for
/// `--stats-json` (`reads`). Ends when the scanner's jobs do.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_chunks(
    config: &Config,
    jobs: Receiver<Job>,
    read: Sender<Read>,
    pool: &BufferPool,
    throttle: Option<&Throttle>,
    counters: &Counters,
    reads: &AtomicU64,
    cancel: &Cancel,
) -> Result<()> {
    loop {
        let buffer = pool.take(cancel)?;
        let Some(job) = recv(&jobs, cancel)? else { return Ok(()) };
        if let Some(throttle) = throttle {
            throttle.wait(cancel)?;
        }
        let done = match job {
            Job::Chunk(job) => Read::Chunk(job.file.read(&job, buffer, config.fadvise)?),
            Job::Batch(files) => Read::Batch(ReadBatch::read(files, buffer)?),
        };
        let (bytes, chunks) = match &done {
            Read::Chunk(chunk) => (chunk.data.len(), 1),
            Read::Batch(batch) => (batch.data.len(), batch.files.len()),
        };
        counters.bytes_done.fetch_add(bytes as u64, Ordering::Relaxed);
        reads.fetch_add(chunks as u64, Ordering::Relaxed);
        send(&read, done, cancel)?;
    }
}
