//! The threads and bounded channels of a backup, and the order in which they finish: this file only wires the
//! stages, each of which has a file of its own.
//!
//! ```text
//! scanner ──jobs──► read threads ──read──► process threads ──► FileState::arrive ──► Router ──stream i──► writer i
//! (scanner.rs)      (read_stage.rs)        (process_stage.rs)   (file.rs, in order   (router.rs)          (output.rs)
//!                    take a pool buffer,    pages, CRC-32        per file; compress.rs
//!                    then a job; pread                           with --compress, then
//!                                                                encrypt.rs encrypting)
//! ```
//!
//! Every channel is bounded by the pool size and carries handles; chunk bytes live only in pool buffers. Small
//! files go as batches (one job, one buffer, one item per stage for many files: [`crate::work::Job::Batch`]). The
//! router holds each file's chunks until every file scanned before it has appeared, so files first appear on the
//! streams in scan order. Any thread's error is recorded in [`Failure`] and fires the shared [`Cancel`], which
//! wakes every blocked wait, so the run stops promptly and reports the first real error. On success the manifest
//! is made as files complete and goes out on stream 0 a piece at a time (`ManifestStream`, `documents.rs`); at
//! the end, streams 1..N are closed and their writers joined first, then the manifest's tail (directories, the
//! streams' tallies) and its end-of-file chunk are written to stream 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use runtime::cancel::{Cancel, Cancelled};
use runtime::failure::Failure;
use runtime::lock::Locked;
use runtime::pool::{BufferPool, PooledBuffer};
use runtime::progress::{Counters, Progress, ProgressMode};
use runtime::signals::Signals;
use runtime::size::human;

use crate::cli::Binding;
use crate::compress::{compress_worker, CompressJob, CompressStage};
use crate::config::{Config, Output};
use crate::documents::{document_buffer_size, ManifestStream, DOCUMENT_BUFFERS};
use crate::encrypt::{seal_worker, EncryptStage, SealJob};
use crate::file::Outlet;
use crate::output::{copy_directories, open_outputs, write_stream};
use crate::process_stage::process_chunks;
use crate::read_stage::{read_chunks, Throttle};
use crate::router::Router;
use crate::scan;
use crate::scanner::{scan_files, ScanPlan};
use crate::sink::{SinkReport, StreamItem};
use crate::summary::{summarize, RunFacts};
use crate::work::{Job, Read};

/// Runs a backup as configured. Returns a one-line summary; an error means the backup is not complete (and, on a
/// stream, that the consumer will not find a manifest). A stop signal (`signals`) is such an error.
pub fn run(config: &Config, signals: &Signals) -> Result<String> {
    signals.run(|cancel| backup(config, signals, cancel))
}

fn backup(config: &Config, signals: &Signals, cancel: &Cancel) -> Result<String> {
    let started = Instant::now();
    let created_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let backup_id = proto::new_backup_id();
    // Inode ctimes come from the kernel's coarse clock, which lags `SystemTime::now()` by up to a timer tick
    // (4-10 ms): an entry changed just after this instant can carry a ctime just before it. The margin keeps such a
    // change from passing unnoticed; its cost is that an entry changed within it before the backup began is
    // reported as changed too.
    let scan_started = SystemTime::now() - Duration::from_millis(100);
    let suffix = config.wire_suffix();
    log::debug!("{}", config.budget);
    let pre = prescan(config, suffix, cancel)?;

    let (sinks, _fifos) = open_outputs(config, cancel)?;
    let stream_count = sinks.len();
    // Compressed or encrypted output shares the budget: buffers are sized for the worst-case frame, sealed.
    let pool = BufferPool::new(config.buffers, config.buffer_size);
    let failure = Failure::new(cancel.clone());
    let counters = Arc::new(Counters::default());
    counters.bytes_total.store(pre.bytes, Ordering::Relaxed);
    let progress = Progress::start(config.progress, Arc::clone(&counters), "backup");

    let (job_sender, job_receiver) = crossbeam_channel::bounded::<Job>(config.buffers);
    let (read_sender, read_receiver) = crossbeam_channel::bounded::<Read>(config.buffers);
    let (stream_senders, stream_receivers): (Vec<_>, Vec<_>) =
        (0..stream_count).map(|_| crossbeam_channel::bounded::<StreamItem>(config.buffers)).unzip();
    let documents = BufferPool::new(DOCUMENT_BUFFERS, document_buffer_size(config));
    let manifest =
        ManifestStream::start(config, &documents, stream_senders[0].clone(), cancel, created_unix, &backup_id)?;
    let router = Router::new(stream_senders, manifest, cancel.clone());
    if !matches!(config.output, Output::Directory(_)) {
        crate::documents::send_markers(config, &router, &backup_id)?;
    }
    // Released chunks go to the router, through the encryption stage when encrypting, and the compression stage
    // before that when compressing.
    let (seal_sender, seal_receiver) = crossbeam_channel::bounded::<SealJob>(config.buffers);
    let encrypt_stage =
        config.encryption.as_deref().map(|key| EncryptStage::new(seal_sender, key, &router, cancel.clone()));
    let after_compress: &dyn Outlet = match &encrypt_stage {
        Some(stage) => stage,
        None => &router,
    };
    let (compress_sender, compress_receiver) = crossbeam_channel::bounded::<CompressJob>(config.buffers);
    let compress_stage = CompressStage::new(compress_sender, after_compress, cancel.clone());
    let outlet: &dyn Outlet = if config.compress_level.is_some() { &compress_stage } else { after_compress };
    let reads_per_thread: Vec<AtomicU64> = (0..config.read_threads).map(|_| AtomicU64::new(0)).collect();
    let page_counters = crate::validate::PageCounters::default();
    let throttle = config.throttle.map(Throttle::new);
    let binding = match &config.output {
        Output::Streams { binding, .. } => *binding,
        Output::Directory(_) => Binding::File,
    };
    let plan = ScanPlan { streams: stream_count, binding, suffix, changed_since: scan_started };

    // Compress threads' scratch buffers are taken now, while the pool is full (see compress_worker).
    let compress_threads = if config.compress_level.is_some() { config.process_threads } else { 0 };
    let scratches: Vec<PooledBuffer> =
        (0..compress_threads).map(|_| pool.take(cancel)).collect::<Result<_, Cancelled>>()?;

    let reports: Vec<Option<SinkReport>> = thread::scope(|scope| {
        let (router, pool, failure, counters) = (&router, &pool, &failure, &counters);
        let writers: Vec<_> = sinks
            .into_iter()
            .zip(stream_receivers)
            .enumerate()
            .map(|(index, (sink, receiver))| {
                failure
                    .spawn_stage(scope, format!("writer-{index}"), move || write_stream(index, sink, receiver, cancel))
            })
            .collect();
        let plan = &plan;
        let scanner =
            failure.spawn_stage(scope, "scanner".into(), move || scan_files(config, router, job_sender, plan, cancel));
        let mut workers = Vec::new();
        for (index, reads) in reads_per_thread.iter().enumerate() {
            let (jobs, read, throttle) = (job_receiver.clone(), read_sender.clone(), throttle.as_ref());
            // Named `reader-N` in panics and failpoints (as before: tests and scripts use the name); the code
            // calls them read threads, and `reader` means a stream parser only in the consumer.
            workers.push(failure.spawn_stage(scope, format!("reader-{index}"), move || {
                read_chunks(config, jobs, read, pool, throttle, counters, reads, cancel)
            }));
        }
        drop((job_receiver, read_sender));
        for index in 0..config.process_threads {
            let (read, page_counters) = (read_receiver.clone(), &page_counters);
            workers.push(failure.spawn_stage(scope, format!("process-{index}"), move || {
                process_chunks(config, read, outlet, router, page_counters, cancel)
            }));
        }
        drop(read_receiver);
        let mut compressors = Vec::new();
        if let Some(level) = config.compress_level {
            for (index, scratch) in scratches.into_iter().enumerate() {
                let jobs = compress_receiver.clone();
                compressors.push(failure.spawn_stage(scope, format!("compress-{index}"), move || {
                    compress_worker(&jobs, scratch, level, after_compress, cancel)
                }));
            }
        }
        drop(compress_receiver);
        let mut sealers = Vec::new();
        if let Some(key) = config.encryption.as_deref() {
            for index in 0..config.process_threads {
                let jobs = seal_receiver.clone();
                sealers.push(failure.spawn_stage(scope, format!("seal-{index}"), move || {
                    seal_worker(&jobs, key.header(), router, cancel)
                }));
            }
        }
        drop(seal_receiver);

        // Every thread runs under `run_stage`, which records its error or panic; a join that still fails (a
        // panic outside it) is a failure too, never an empty report.
        failure.joined(scanner.join(), "scanner");
        for worker in workers {
            failure.joined(worker.join(), "read or process");
        }
        compress_stage.close();
        for compressor in compressors {
            failure.joined(compressor.join(), "compress");
        }
        if let Some(stage) = &encrypt_stage {
            stage.close();
        }
        for sealer in sealers {
            failure.joined(sealer.join(), "seal");
        }
        finish_streams(router, failure, writers)
    });
    progress.stop();
    failure.outcome(signals)?;
    if let Some(index) = reports.iter().position(Option::is_none) {
        bail!("stream {index} reported nothing (an internal error): the backup is not complete");
    }
    let reports: Vec<SinkReport> = reports.into_iter().flatten().collect();
    if let Output::Directory(root) = &config.output {
        copy_directories(root, &router.directories.locked())?;
    }
    let facts = RunFacts {
        router,
        reports,
        reads_per_thread: &reads_per_thread,
        skipped: pre.skipped,
        pool: &pool,
        page_counters: &page_counters,
        elapsed: started.elapsed().as_secs_f64(),
    };
    summarize(config, facts)
}

/// The pre-scan: every path checked and every skip warned about before a byte is written; gives the totals.
fn prescan(config: &Config, suffix: &str, cancel: &Cancel) -> Result<scan::ScanTotals> {
    let want_total = config.progress != ProgressMode::Quiet;
    let pre =
        scan::walk(&config.source, scan::Pass::Check { stat: want_total }, suffix, false, |_| Ok(cancel.check()?))?;
    if want_total {
        log::info!("{} files, {} to back up from {}", pre.files, human(pre.bytes), config.source.display());
    }
    if pre.files == 0 && !config.allow_empty {
        bail!(
            "--source {} holds no file to back up (an unmounted snapshot? the wrong directory?): nothing was \
             written; --allow-empty backs it up anyway",
            config.source.display()
        );
    }
    if let (Some(example), false, false) =
        (&pre.fileless_example, config.dir_placeholders, matches!(config.output, Output::Directory(_)))
    {
        log::warn!(
            "{} of {} directories hold no file of their own (e.g. {}): mbstream -x / xbstream -x cannot create them \
             and lose every file below them; consumer extract restores them from the manifest; --dir-placeholders \
             puts an empty file in each so the real tools can",
            pre.fileless,
            pre.directories,
            example.display()
        );
    }
    Ok(pre)
}

/// Every file is released: closes streams 1..N and waits for their writers, then finishes the manifest on stream 0
/// (or, after a failure, drops it unfinished and just closes everything). Returns each stream's report (`None`:
/// its writer failed).
fn finish_streams(
    router: &Router,
    failure: &Failure,
    writers: Vec<thread::ScopedJoinHandle<'_, Option<SinkReport>>>,
) -> Vec<Option<SinkReport>> {
    let mut writers = writers.into_iter();
    let first = writers.next().expect("at least one stream");
    for index in 1..router.stream_count() {
        router.close(index);
    }
    let mut reports = vec![None];
    reports.extend(writers.map(|w| failure.joined(w.join(), "writer").flatten()));
    if !failure.failed() {
        // Prove before claiming: every file the scanner handed out has ended or vanished.
        if let Some(source) = router.unfinished() {
            failure.record(anyhow::anyhow!(
                "{} was scanned but never finished (an internal error): refusing to finish the manifest",
                source.display()
            ));
        } else if let Some(number) = router.held() {
            failure.record(anyhow::anyhow!(
                "chunks of file {number} were held back and never sent (an internal error): refusing to finish the \
                 manifest"
            ));
        }
    }
    // Taken either way: it holds a sender of stream 0, whose writer ends only once every sender is gone.
    let manifest = router.manifest.locked().take();
    if let (false, Some(manifest)) = (failure.failed(), manifest) {
        if let Err(e) = manifest.finish(router) {
            failure.record(e);
        }
    }
    router.close(0);
    reports[0] = failure.joined(first.join(), "writer").flatten();
    reports
}
