//! The threads and bounded channels of a backup, and the order in which they finish.
//!
//! ```text
//! scanner ──jobs──► readers (--parallel) ──read──► processors (--compress-threads) ──► FileState::arrive
//!                     take a pool buffer,                 CRC-32                          │ in order per file
//!                     then a job; pread                                                   ▼
//!                                                            Router ──stream i──► writer i (one per stream)
//! ```
//!
//! Every channel is bounded by the pool size and carries handles; chunk bytes live only in pool buffers. Any
//! thread's error is recorded in `Failure` and fires the shared [`Cancel`], which wakes every blocked wait, so the
//! run stops promptly and reports the first real error. On success the manifest goes last: streams 1..N are closed
//! and their writers joined first, then the manifest is written to stream 0.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use proto::cancel::{recv, send, Cancel, Cancelled};
use proto::chunk::{encoded_header_len, ChunkKind};
use proto::fifo::{self, End, FifoSet};
use proto::manifest::{self, Compression, Digest, FileRecord, Manifest, StreamRecord, WirePath};
use proto::pool::{BufferPool, PooledBuffer};
use sha1::{Digest as _, Sha1};

use crate::cli::Binding;
use crate::compress::{compress_worker, CompressJob, CompressStage};
use crate::config::{Config, Output};
use crate::failure::Failure;
use crate::file::{ChunkJob, FileState, Outlet, ReadChunk};
use crate::progress::{Counters, Progress};
use crate::scan;
use crate::sink::{DirectorySink, Sink, SinkReport, StreamItem, StreamSink};
use crate::size::human;
use crate::stats::{peak_rss_bytes, Stats, StreamStats};

/// Runs a backup as configured. Returns a one-line summary; an error means the backup is not complete (and, on a
/// stream, that the consumer will not find a manifest).
pub fn run(config: &Config) -> Result<String> {
    let started = Instant::now();
    let created_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());

    // Pre-scan: every path checked and every skip warned about before a byte is written; gives the total.
    let want_total = config.progress != crate::config::ProgressMode::Quiet;
    let suffix = if config.compress_level.is_some() { proto::compressed::ZSTD_SUFFIX } else { "" };
    let pre = scan::walk(&config.source, scan::Pass::Check { stat: want_total }, suffix, |_| Ok(()))?;
    if want_total {
        log::info!("{} files, {} to back up from {}", pre.files, human(pre.bytes), config.source.display());
    }

    let (sinks, _fifos) = open_outputs(config)?;
    let stream_count = sinks.len();
    // Compressed output shares the budget: buffers are sized for the worst-case frame.
    let buffer_size = match config.compress_level {
        Some(_) => crate::compress::buffer_size(config.chunk_size),
        None => config.chunk_size,
    };
    let pool = BufferPool::new(config.buffers, buffer_size);
    let cancel = Cancel::new();
    let failure = Failure::new(cancel.clone());
    let counters = Arc::new(Counters::default());
    counters.bytes_total.store(pre.bytes, Ordering::Relaxed);
    let progress = Progress::start(config.progress, Arc::clone(&counters), "backup");

    let (job_sender, job_receiver) = crossbeam_channel::bounded::<ChunkJob>(config.buffers);
    let (read_sender, read_receiver) = crossbeam_channel::bounded::<ReadChunk>(config.buffers);
    let (stream_senders, stream_receivers): (Vec<_>, Vec<_>) =
        (0..stream_count).map(|_| crossbeam_channel::bounded::<StreamItem>(config.buffers)).unzip();
    let router = Router {
        senders: RwLock::new(stream_senders.into_iter().map(Some).collect()),
        next: AtomicUsize::new(0),
        counts: (0..stream_count).map(|_| StreamCount::default()).collect(),
        records: Mutex::new(Vec::new()),
        cancel: cancel.clone(),
    };
    let (compress_sender, compress_receiver) = crossbeam_channel::bounded::<CompressJob>(config.buffers);
    let compress_stage = CompressStage::new(compress_sender, &router, cancel.clone());
    let outlet: &dyn Outlet = if config.compress_level.is_some() { &compress_stage } else { &router };
    let reads_per_thread: Vec<AtomicU64> = (0..config.read_threads).map(|_| AtomicU64::new(0)).collect();
    let throttle = config.throttle.map(Throttle::new);
    let binding = match &config.output {
        Output::Fifos { binding, .. } => *binding,
        _ => Binding::File,
    };

    // Compress threads' scratch buffers are taken now, while the pool is full (see compress_worker).
    let compress_threads = if config.compress_level.is_some() { config.process_threads } else { 0 };
    let mut scratches: Vec<PooledBuffer> =
        (0..compress_threads).map(|_| pool.take(&cancel)).collect::<Result<_, Cancelled>>()?;

    let reports: Vec<Option<SinkReport>> = thread::scope(|scope| {
        let writers: Vec<_> = sinks
            .into_iter()
            .zip(stream_receivers)
            .enumerate()
            .map(|(index, (sink, receiver))| {
                let (cancel, failure) = (&cancel, &failure);
                thread::Builder::new()
                    .name(format!("writer-{index}"))
                    .spawn_scoped(scope, move || write_stream(index, sink, receiver, cancel, failure))
                    .expect("spawn writer")
            })
            .collect();

        let scanner = {
            let (cancel, failure) = (&cancel, &failure);
            thread::Builder::new()
                .name("scanner".into())
                .spawn_scoped(scope, move || {
                    let mut file_number = 0usize;
                    let result =
                        scan::walk(&config.source, scan::Pass::Stream { strict: config.strict }, suffix, |scanned| {
                            let stream = match binding {
                                Binding::File => Some(file_number % stream_count),
                                Binding::Chunk => None,
                            };
                            file_number += 1;
                            let state = FileState::new(
                                scanned,
                                config.chunk_size as u64,
                                stream,
                                config.strict,
                                config.digest == Digest::Sha1,
                                config.compress_level.is_some(),
                            );
                            for job in state.chunk_jobs(config.chunk_size as u64) {
                                send(&job_sender, job, cancel)?;
                            }
                            Ok(())
                        });
                    drop(job_sender);
                    if let Err(e) = result {
                        failure.record(e);
                    }
                })
                .expect("spawn scanner")
        };

        let mut workers = Vec::new();
        for (thread_index, reads) in reads_per_thread.iter().enumerate() {
            let (jobs, read, pool) = (job_receiver.clone(), read_sender.clone(), &pool);
            let (cancel, failure, counters, throttle) = (&cancel, &failure, &counters, &throttle);
            let handle = thread::Builder::new().name(format!("reader-{thread_index}")).spawn_scoped(scope, move || {
                let result = (|| -> Result<()> {
                    loop {
                        // Buffer first, then the job: the lowest outstanding chunk always holds a buffer.
                        let buffer = pool.take(cancel)?;
                        let Some(job) = recv(&jobs, cancel)? else { return Ok(()) };
                        if let Some(throttle) = throttle {
                            throttle.wait(cancel)?;
                        }
                        let chunk = job.file.read(&job, buffer, config.fadvise)?;
                        counters.bytes_done.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                        reads.fetch_add(1, Ordering::Relaxed);
                        send(&read, chunk, cancel)?;
                    }
                })();
                if let Err(e) = result {
                    failure.record(e);
                }
            });
            workers.push(handle.expect("spawn reader"));
        }
        drop(job_receiver);
        drop(read_sender);

        for thread_index in 0..config.process_threads {
            let read = read_receiver.clone();
            let (cancel, failure) = (&cancel, &failure);
            let handle =
                thread::Builder::new().name(format!("process-{thread_index}")).spawn_scoped(scope, move || {
                    let result = (|| -> Result<()> {
                        while let Some(mut chunk) = recv(&read, cancel)? {
                            chunk.crc = proto::CrcPiece::of(&chunk.data).crc;
                            let file = Arc::clone(&chunk.file);
                            file.arrive(chunk, outlet)?;
                        }
                        Ok(())
                    })();
                    if let Err(e) = result {
                        failure.record(e);
                    }
                });
            workers.push(handle.expect("spawn process thread"));
        }
        drop(read_receiver);

        let mut compressors = Vec::new();
        if let Some(level) = config.compress_level {
            for (thread_index, scratch) in scratches.drain(..).enumerate() {
                let jobs = compress_receiver.clone();
                let (cancel, failure, router) = (&cancel, &failure, &router);
                let handle =
                    thread::Builder::new().name(format!("compress-{thread_index}")).spawn_scoped(scope, move || {
                        if let Err(e) = compress_worker(&jobs, scratch, level, router, cancel) {
                            failure.record(e);
                        }
                    });
                compressors.push(handle.expect("spawn compress thread"));
            }
        }
        drop(compress_receiver);

        let _ = scanner.join();
        for worker in workers {
            let _ = worker.join();
        }
        compress_stage.close();
        for compressor in compressors {
            let _ = compressor.join();
        }

        // Every file is released. Close streams 1..N and wait for their writers, then write the manifest last on
        // stream 0 (or, after a failure, just close everything).
        let mut writers = writers.into_iter();
        let first = writers.next().expect("at least one stream");
        for index in 1..stream_count {
            router.close(index);
        }
        let mut reports = vec![None];
        reports.extend(writers.map(|w| w.join().unwrap_or(None)));
        if !failure.failed() {
            let mut files = std::mem::take(&mut *router.records.lock().unwrap_or_else(|e| e.into_inner()));
            let documents = build_documents(config, &router, &mut files, created_unix);
            for (path, bytes, counted) in documents {
                let item = StreamItem::Document { path, bytes: Arc::new(bytes), chunk_size: config.chunk_size };
                if let Err(e) = router.send_document(item, counted) {
                    failure.record(e);
                    break;
                }
            }
            *router.records.lock().unwrap_or_else(|e| e.into_inner()) = files;
        }
        router.close(0);
        reports[0] = first.join().unwrap_or(None);
        reports
    });
    progress.stop();

    if let Some(error) = failure.take() {
        return Err(error);
    }
    let records = router.records.into_inner().unwrap_or_else(|e| e.into_inner());
    let elapsed = started.elapsed().as_secs_f64();
    let bytes: u64 = records.iter().filter(|r| !is_meta(r)).map(|r| r.size).sum();
    let files = records.iter().filter(|r| !is_meta(r)).count() as u64;
    let stats = Stats {
        files,
        bytes,
        chunks: reads_per_thread.iter().map(|r| r.load(Ordering::Relaxed)).sum(),
        skipped: pre.skipped,
        chunks_read_per_thread: reads_per_thread.iter().map(|r| r.load(Ordering::Relaxed)).collect(),
        streams: reports
            .iter()
            .enumerate()
            .map(|(index, report)| {
                let report = report.clone().unwrap_or_default();
                StreamStats {
                    index,
                    name: stream_name(config, index),
                    bytes: report.bytes,
                    chunks: report.chunks,
                    sha1: report.sha1,
                }
            })
            .collect(),
        wall_seconds: elapsed,
        mb_per_second: bytes as f64 / elapsed.max(1e-9) / 1e6,
        chunk_size: config.chunk_size,
        buffers: pool.count(),
        peak_buffers_in_use: pool.peak_in_use(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    if let Some(path) = &config.stats_json {
        stats.write(path)?;
    }
    let destination = match &config.output {
        Output::Directory(dir) => dir.display().to_string(),
        Output::Stdout => "STDOUT".to_string(),
        Output::Fifos { dir, count, .. } => format!("{count} pipes in {}", dir.display()),
    };
    Ok(format!(
        "backed up {files} files, {} in {elapsed:.2} s ({:.0} MB/s) to {destination}; {} lists them",
        human(bytes),
        stats.mb_per_second,
        manifest::MANIFEST_NAME
    ))
}

fn is_meta(record: &FileRecord) -> bool {
    record.path.0 == manifest::SHA1SUMS_NAME.as_bytes()
}

/// The closing documents, in order: the SHA-1 list (with `--digest sha1`; counted in the stream totals and listed
/// in the manifest) and the manifest itself (never counted). `files` gets the SHA-1 list's record.
fn build_documents(
    config: &Config,
    router: &Router,
    files: &mut Vec<FileRecord>,
    created_unix: u64,
) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut documents = Vec::new();
    let mut manifest = Manifest {
        format: manifest::MANIFEST_FORMAT,
        tool: format!("producer {}", env!("CARGO_PKG_VERSION")),
        created_unix,
        chunk_size: config.chunk_size as u64,
        compression: match config.compress_level {
            Some(level) => Compression::Zstd { level },
            None => Compression::None,
        },
        digest: config.digest,
        streams: Vec::new(),
        files: std::mem::take(files),
    };
    if config.digest == Digest::Sha1 {
        let list = manifest.sha1sums();
        let name = manifest::SHA1SUMS_NAME.as_bytes().to_vec();
        let chunks = list.len().div_ceil(config.chunk_size) as u64;
        manifest.files.push(FileRecord {
            path: WirePath(name.clone()),
            size: list.len() as u64,
            mode: 0o644,
            mtime: created_unix as i64,
            chunks,
            crc32: proto::CrcPiece::of(&list).crc,
            sha1: Some(hex::encode(Sha1::digest(&list))),
            stored: None,
        });
        // Count it on stream 0 now, so the manifest's stream totals include it.
        router.count(0, &name, chunks, list.len() as u64);
        documents.push((name, list, true));
    }
    manifest.streams = router
        .counts
        .iter()
        .enumerate()
        .map(|(index, count)| StreamRecord {
            index: index as u32,
            chunks: count.chunks.load(Ordering::Relaxed),
            bytes: count.bytes.load(Ordering::Relaxed),
        })
        .collect();
    documents.push((manifest::MANIFEST_NAME.as_bytes().to_vec(), manifest.to_json(), false));
    *files = manifest.files;
    documents
}

fn stream_name(config: &Config, index: usize) -> String {
    match &config.output {
        Output::Directory(dir) => dir.display().to_string(),
        Output::Stdout => "STDOUT".to_string(),
        Output::Fifos { dir, .. } => fifo::fifo_path(dir, index).display().to_string(),
    }
}

/// The opened sinks, and the pipes (removed when dropped) if there are any.
type Outputs = (Vec<Box<dyn Sink>>, Option<FifoSet>);

/// Opens every output; for pipes, waits (in parallel, each up to --fifo-timeout) for the consumer to open them.
fn open_outputs(config: &Config) -> Result<Outputs> {
    let hash = config.digest == Digest::Sha1;
    match &config.output {
        Output::Directory(dir) => Ok((vec![Box::new(DirectorySink::create(dir, config.fadvise)?)], None)),
        Output::Stdout => {
            let stdout = std::io::stdout();
            let fd = std::os::fd::AsFd::as_fd(&stdout).try_clone_to_owned().context("cannot use STDOUT")?;
            let file = std::fs::File::from(fd);
            // Larger pipe buffer when STDOUT is a pipe; failing (not a pipe) is harmless.
            raise_pipe_buffer(config, &file, "STDOUT");
            Ok((vec![Box::new(StreamSink::new("STDOUT".into(), file, hash))], None))
        }
        Output::Fifos { dir, count, timeout, .. } => {
            let set = FifoSet::create(dir, *count)?;
            let opened = set.open_all(End::Write, *timeout)?;
            let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(*count);
            for (path, file) in set.paths().iter().zip(opened) {
                raise_pipe_buffer(config, &file, &path.display().to_string());
                sinks.push(Box::new(StreamSink::new(path.display().to_string(), file, hash)));
            }
            Ok((sinks, Some(set)))
        }
    }
}

fn raise_pipe_buffer(config: &Config, file: &std::fs::File, name: &str) {
    if config.pipe_buffer_size > 0 {
        match fifo::set_pipe_size(file, config.pipe_buffer_size) {
            Ok(granted) => log::debug!("{name}: pipe buffer {granted} bytes"),
            Err(e) => log::debug!("{name}: pipe buffer left as it is ({e})"),
        }
    }
}

/// One writer thread: writes every item of its stream, then finishes the sink.
fn write_stream(
    index: usize,
    mut sink: Box<dyn Sink>,
    receiver: Receiver<StreamItem>,
    cancel: &Cancel,
    failure: &Failure,
) -> Option<SinkReport> {
    let name = sink.name();
    let mut drain = || -> Result<()> {
        loop {
            let item = match receiver.try_recv() {
                Ok(item) => item,
                Err(_) => {
                    // Nothing queued: push out what is buffered before waiting.
                    sink.flush()?;
                    match recv(&receiver, cancel)? {
                        Some(item) => item,
                        None => return Ok(()),
                    }
                }
            };
            sink.write(item)?;
        }
    };
    if let Err(e) = drain() {
        // This stream, or another part of the run, failed: end the stream with a broken chunk so that no reader
        // (ours, mbstream, xbstream) mistakes what was written so far for a complete stream.
        sink.poison();
        failure.record(e.context(format!("stream {index} ({name})")));
        return None;
    }
    match sink.finish() {
        Ok(report) => Some(report),
        Err(e) => {
            failure.record(e.context(format!("stream {index} ({name})")));
            None
        }
    }
}

/// Routes released chunks to streams and counts what each stream was sent.
struct Router {
    senders: RwLock<Vec<Option<Sender<StreamItem>>>>,
    next: AtomicUsize,
    counts: Vec<StreamCount>,
    /// Every completed file's record, for the manifest.
    records: Mutex<Vec<FileRecord>>,
    cancel: Cancel,
}

#[derive(Default)]
struct StreamCount {
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl Router {
    fn pick(&self, file: &FileState) -> usize {
        file.stream.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.counts.len())
    }

    fn count(&self, stream: usize, path: &[u8], payload_chunks: u64, payload_bytes: u64) {
        let headers = payload_chunks * encoded_header_len(ChunkKind::Payload, path.len()) as u64
            + encoded_header_len(ChunkKind::Eof, path.len()) as u64;
        self.counts[stream].chunks.fetch_add(payload_chunks + 1, Ordering::Relaxed);
        self.counts[stream].bytes.fetch_add(headers + payload_bytes, Ordering::Relaxed);
    }

    fn send(&self, stream: usize, item: StreamItem) -> Result<()> {
        let sender = self.senders.read().unwrap_or_else(|e| e.into_inner())[stream].clone().ok_or(Cancelled)?;
        send(&sender, item, &self.cancel)?;
        Ok(())
    }

    /// Sends a producer-made document to stream 0; `counted` says whether it belongs in the stream totals (those
    /// were already added by [`Router::count`]).
    fn send_document(&self, item: StreamItem, _counted: bool) -> Result<()> {
        self.send(0, item)
    }

    fn close(&self, stream: usize) {
        self.senders.write().unwrap_or_else(|e| e.into_inner())[stream] = None;
    }
}

impl Outlet for Router {
    /// `offset` is where the payload goes in the file on the wire (for a compressed file, in its `.zst`).
    fn payload(&self, file: &Arc<FileState>, _index: u64, offset: u64, data: PooledBuffer, crc: u32) -> Result<()> {
        let stream = self.pick(file);
        let path_len = file.wire().len();
        self.counts[stream].chunks.fetch_add(1, Ordering::Relaxed);
        self.counts[stream]
            .bytes
            .fetch_add((encoded_header_len(ChunkKind::Payload, path_len) + data.len()) as u64, Ordering::Relaxed);
        self.send(stream, StreamItem::Payload { file: Arc::clone(file), offset, data, crc })
    }

    fn end(&self, file: &Arc<FileState>, _chunks: u64, record: FileRecord) -> Result<()> {
        let stream = self.pick(file);
        self.counts[stream].chunks.fetch_add(1, Ordering::Relaxed);
        self.counts[stream]
            .bytes
            .fetch_add(encoded_header_len(ChunkKind::Eof, file.wire().len()) as u64, Ordering::Relaxed);
        self.send(stream, StreamItem::Eof { file: Arc::clone(file) })?;
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        Ok(())
    }
}

/// `--throttle N`: at most N chunk reads per second across all read threads.
struct Throttle {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Throttle {
    fn new(per_second: u32) -> Throttle {
        Throttle { interval: Duration::from_secs(1) / per_second.max(1), next: Mutex::new(Instant::now()) }
    }

    fn wait(&self, cancel: &Cancel) -> Result<(), Cancelled> {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
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
