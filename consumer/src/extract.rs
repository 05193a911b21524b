//! `consumer extract`: N streams back into files, in parallel, with proof.
//!
//! ```text
//! stream 0 ─► reader 0 ─┐                    ┌─► writer 0 ─► pwrite at offset into the staging directory
//! stream 1 ─► reader 1 ─┼─ by path (hash) ──►┼─► writer 1
//!    …                  │                    └─► …
//! ```
//!
//! One reader thread per stream parses chunks into pool buffers (CRC checked) and validates each path; chunks are
//! dispatched to a writer chosen by a hash of the path, so one writer owns each file's state and no locks are
//! needed, while chunks of one file may come from any stream in any order. Small chunks travel in batches
//! ([`crate::batch`]): one pool buffer and one message for many files. When every stream has ended cleanly the run
//! proves the result in phases, so that nothing unproven ever looks complete:
//!
//! 1. *end of streams*: the writer that holds the manifest hands it over (as its staged file);
//! 2. *verify*: the manifest is read a record at a time and each record goes to the writer that owns its file,
//!    which checks it (ended, contiguous, size, CRC-32, SHA-1) and sets its mode and mtime; then every writer
//!    reports what it holds that no record named, and the run checks that no record went unmatched and that every
//!    stream carried what the manifest says;
//! 3. *commit*: partial files are renamed into place, the filesystem is synced, and the manifest is renamed last.
//!
//! Per-file memory is bounded: a writer keeps a few dozen bytes for each ended file, up to an eighth of
//! `--memory-limit`, and beyond that (for streams of ours, where a manifest must follow) forgets whole small files
//! and checks each from disk when its record comes.
//!
//! Any failure removes every partial file; the manifest never appears in an unproven tree.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use proto::{parse_offset_frame, strip_zstd_suffix, ChunkHeader, ChunkKind, CrcPiece};
use proto::{Digest, FileRecord, Manifest, StreamingError, MANIFEST_NAME};
use runtime::cancel::{recv, send, Cancel};
use runtime::failure::Failure;
use runtime::pool::{BufferPool, PooledBuffer};
use runtime::progress::{Counters, Progress};
use runtime::signals::Signals;
use runtime::size::human;
use runtime::stats::{peak_rss_bytes, StreamStats};
use serde::Serialize;
use sha1::{Digest as _, Sha1};

use crate::batch::{BatchedChunk, ChunkBatch, Destination};
use crate::config::ExtractConfig;
use crate::coverage::Coverage;
use crate::input::{open_inputs, InputStream};
use crate::source::{check_markers, missing_manifest, SameBackup, SourceChunk, StreamEnd, StreamSource};
use crate::target::{PartialFile, Target};

/// Runs an extraction; returns the one-line summary. A stop signal (`signals`) ends it as a failure.
pub fn run(config: &ExtractConfig, signals: &Signals) -> Result<String> {
    let cancel = Cancel::new();
    signals.watch(&cancel);
    let result = open_inputs(&config.input, config.idle_timeout, &cancel)
        .and_then(|(inputs, _fifos)| extract(config, inputs, signals, &cancel));
    // A stop signal is the cause of whatever else failed, wherever the run was when it came.
    match signals.error() {
        Some(error) => Err(error),
        None => result,
    }
}

/// Extracts `inputs` (the streams, in order) as configured: the whole run once the streams are open.
pub fn extract(config: &ExtractConfig, inputs: Vec<InputStream>, signals: &Signals, cancel: &Cancel) -> Result<String> {
    let started = Instant::now();
    let target = Target::open(&config.target, config.overwrite)?;
    let stream_count = inputs.len();
    let pool = BufferPool::new(config.buffers, config.buffer_size);
    let failure = Failure::new(cancel.clone());
    // Whether writers hash files as they arrive: asked for (--digest sha1), or announced by the streams' markers.
    let announced = Announced { hash_files: AtomicBool::new(config.stream_sha1), marked: AtomicBool::new(false) };
    let same_backup = Arc::new(SameBackup::default());
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(config.progress, Arc::clone(&counters), "extract");

    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..config.writers).map(|_| crossbeam_channel::bounded::<WriterMessage>(config.buffers)).unzip();

    let outcome = thread::scope(|scope| -> Result<Outcome> {
        let writers: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(index, receiver)| {
                let (target, cancel, failure, announced) = (&target, &cancel, &failure, &announced);
                let single_stream = stream_count == 1;
                let name = format!("writer-{index}");
                thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, move || {
                        let mut writer = Writer::new(index, target, single_stream, config, announced);
                        failure.run_stage(&name, || writer.serve(&receiver, cancel));
                    })
                    .expect("spawn writer")
            })
            .collect();

        let (decompress_sender, decompress_receiver) = crossbeam_channel::bounded::<ChunkMessage>(config.buffers);
        // Scratch buffers are taken before any reader starts: had the readers taken every buffer first, no chunk
        // could ever be decompressed.
        let scratches: Vec<PooledBuffer> = (0..if config.decompress { config.decompress_threads } else { 0 })
            .map(|_| pool.take(cancel))
            .collect::<Result<_, _>>()?;
        let decompressors: Vec<_> = scratches
            .into_iter()
            .enumerate()
            .map(|(index, scratch)| {
                let (jobs, senders) = (decompress_receiver.clone(), senders.clone());
                let (cancel, failure) = (&cancel, &failure);
                let name = format!("decompress-{index}");
                thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, move || {
                        failure.run_stage(&name, || decompress_stream(&jobs, &senders, scratch, cancel));
                    })
                    .expect("spawn decompress thread")
            })
            .collect();
        drop(decompress_receiver);

        let readers: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| {
                let (senders, decompress_sender) = (senders.clone(), decompress_sender.clone());
                let (pool, cancel, failure, counters, announced) = (&pool, &cancel, &failure, &counters, &announced);
                let name = format!("reader-{index}");
                let same_backup = Arc::clone(&same_backup);
                thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, move || {
                        let source = StreamSource::new(
                            index,
                            input,
                            pool.buffer_size() as u64,
                            config.stream_sha1,
                            stream_count,
                            same_backup,
                        );
                        let readers = Readers {
                            config,
                            writers: &senders,
                            decompressors: &decompress_sender,
                            pool,
                            cancel,
                            counters,
                            announced,
                        };
                        failure.run_stage(&name, || read_stream(source, &readers))
                    })
                    .expect("spawn reader")
            })
            .collect();
        let streams: Vec<_> = readers.into_iter().map(|r| failure.joined(r.join(), "reader").flatten()).collect();
        drop(decompress_sender);
        for decompressor in decompressors {
            failure.joined(decompressor.join(), "decompress");
        }

        let result = (|| -> Result<Outcome> {
            if let Some(error) = signals.error() {
                return Err(error);
            }
            if let Some(error) = failure.take() {
                return Err(error);
            }
            // Every thread records its error or panic, so this cannot happen; if it does, it is a failure, never
            // a partial success.
            let streams: Vec<StreamEnd> = streams
                .into_iter()
                .map(|s| s.ok_or_else(|| anyhow!("a stream reader stopped unexpectedly")))
                .collect::<Result<_>>()?;
            log::info!("all {} stream(s) ended after {:.2} s", streams.len(), started.elapsed().as_secs_f64());
            prove_and_commit(config, &target, &senders, &streams, cancel)
        })();
        if result.is_err() {
            cancel.cancel();
        }
        drop(senders);
        for writer in writers {
            failure.joined(writer.join(), "writer");
        }
        // A stop signal is the cause of whatever else failed.
        if let Some(error) = signals.error() {
            return Err(error);
        }
        // The first real error wins: a phase that failed only because a writer had already failed reports
        // `Cancelled`, and the writer's own error says why.
        match result {
            Ok(outcome) => failure.take().map_or(Ok(outcome), Err),
            Err(e) => {
                failure.record(e);
                Err(failure.take().expect("just recorded"))
            }
        }
    });
    progress.stop();
    let outcome = outcome?;

    let elapsed = started.elapsed().as_secs_f64();
    let stats = ExtractStats {
        files: outcome.files,
        bytes: outcome.bytes,
        proven_by_manifest: outcome.proven,
        streams: outcome.streams,
        wall_seconds: elapsed,
        mb_per_second: outcome.bytes as f64 / elapsed.max(1e-9) / 1e6,
        buffer_size: pool.buffer_size(),
        buffers: pool.count(),
        peak_buffers_in_use: pool.peak_in_use(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    if let Some(path) = &config.stats_json {
        let json = serde_json::to_vec_pretty(&stats).expect("stats serialise");
        std::fs::write(path, json).with_context(|| format!("cannot write --stats-json {}", path.display()))?;
    }
    let proof = if outcome.proven {
        format!("all verified against {MANIFEST_NAME}")
    } else {
        "completeness unproven (no manifest)".to_string()
    };
    Ok(format!(
        "extracted {} files, {} in {elapsed:.2} s ({:.0} MB/s) from {stream_count} stream{} into {}; {proof}",
        outcome.files,
        human(outcome.bytes),
        stats.mb_per_second,
        if stream_count == 1 { "" } else { "s" },
        config.target.display()
    ))
}

/// What `--stats-json` writes for an extraction.
#[derive(Debug, Serialize)]
struct ExtractStats {
    files: u64,
    bytes: u64,
    proven_by_manifest: bool,
    streams: Vec<StreamStats>,
    wall_seconds: f64,
    mb_per_second: f64,
    buffer_size: usize,
    buffers: usize,
    peak_buffers_in_use: usize,
    peak_rss_bytes: u64,
}

struct Outcome {
    files: u64,
    bytes: u64,
    proven: bool,
    streams: Vec<StreamStats>,
}

/// What every reader thread shares.
struct Readers<'a> {
    config: &'a ExtractConfig,
    writers: &'a [Sender<WriterMessage>],
    decompressors: &'a Sender<ChunkMessage>,
    pool: &'a BufferPool,
    cancel: &'a Cancel,
    counters: &'a Counters,
    announced: &'a Announced,
}

/// What the streams' markers announced, shared by readers (who learn it from the first chunk) and writers.
struct Announced {
    /// Hash files as they arrive: `--digest sha1`, or the producer recorded SHA-1s.
    hash_files: AtomicBool,
    /// The streams are ours (marked): a manifest must follow, so ended small files may be forgotten and checked
    /// from disk against it (see [`Writer::check`]).
    marked: AtomicBool,
}

/// A chunk on its way to the writer that owns its file.
struct ChunkMessage {
    stream: usize,
    header: ChunkHeader,
    /// The file it belongs to on disk: the wire path, or with --decompress the path without `.zst`.
    key: Vec<u8>,
    relative: PathBuf,
    data: PooledBuffer,
    /// Set once a decompress thread has turned the payload back into original bytes.
    decoded: Option<Decoded>,
}

/// Where a decompressed chunk came from and where it goes.
#[derive(Debug, Clone, Copy)]
struct Decoded {
    /// Offset of the original bytes (now in `data`).
    offset: u64,
    /// CRC-32 of the original bytes.
    crc: u32,
    /// The compressed payload's place in `<path>.zst`, length and CRC-32 (checked against the manifest's stored form).
    stored: (u64, CrcPiece),
}

impl ChunkMessage {
    fn writer(&self, writers: usize) -> usize {
        owner(&self.key, writers)
    }
}

/// The writer (of `writers`) that owns the file `key`: every chunk of a file goes to the same one.
fn owner(key: &[u8], writers: usize) -> usize {
    CrcPiece::of(key).crc as usize % writers
}

/// Manifest records on their way to the writer that owns their files, each with the key the file is held under
/// (its path, or its stored `.zst` path when a compressed file is extracted as it travelled).
type Records = Vec<(Vec<u8>, FileRecord)>;

/// How many records go to a writer at once.
const RECORDS_PER_MESSAGE: usize = 1024;

/// What a writer verified, and what the manifest lists that it does not hold.
#[derive(Debug, Default)]
struct Verified {
    files: u64,
    bytes: u64,
    /// Manifest files that never arrived: how many, and the first few paths.
    missing: u64,
    missing_examples: Vec<String>,
}

/// How many missing files an error names.
const MISSING_EXAMPLES: usize = 10;

/// What a writer thread is asked to do: write a chunk, or take part in one of the closing phases.
enum WriterMessage {
    Chunk(ChunkMessage),
    Batch(Arc<ChunkBatch>),
    /// Hand over the manifest (opened for reading) if this writer holds it.
    EndOfStreams(Sender<Option<File>>),
    /// Check these files against their records.
    Check(Records),
    /// Every record has been sent (`true`; `false`: there is no manifest): finish and report.
    Verify(bool, Sender<Result<Verified>>),
}

/// One reader thread: chunks of its stream to the writers (or, compressed, to the decompress threads). Small
/// chunks go in batches ([`crate::batch`]), except with `--decompress`.
fn read_stream(mut source: StreamSource, shared: &Readers) -> Result<StreamEnd> {
    let Readers { config, writers, pool, cancel, counters, announced, .. } = *shared;
    let index = source.index();
    let mut own: Option<PooledBuffer> = None;
    let mut batch: Option<ChunkBatch> = None;
    // Hands the batch gathered so far to its writers (every writer gets the same shared batch and takes its own
    // chunks); an empty batch's buffer goes back to the pool.
    let flush = |batch: &mut Option<ChunkBatch>| -> Result<()> {
        let Some(batch) = batch.take().filter(|b| !b.chunks.is_empty()) else { return Ok(()) };
        let batch = Arc::new(batch);
        let mut owners = vec![false; writers.len()];
        for chunk in &batch.chunks {
            owners[chunk.writer] = true;
        }
        for (writer, _) in owners.iter().enumerate().filter(|(_, owns)| **owns) {
            send(&writers[writer], WriterMessage::Batch(Arc::clone(&batch)), cancel)?;
        }
        Ok(())
    };
    loop {
        if own.is_none() {
            own = Some(match pool.try_take() {
                Some(buffer) => buffer,
                None => {
                    // About to wait on the pool: what is held back goes first (and may be what frees a buffer).
                    flush(&mut batch)?;
                    pool.take(cancel)?
                }
            });
        }
        if batch.is_none() && !config.decompress {
            batch = pool.try_take().map(|data| ChunkBatch::new(index, data));
        }
        let mut destination = Destination::new(own.as_mut().expect("taken above"), batch.as_mut());
        let Some(SourceChunk { header, relative, .. }) = source.next_chunk(&mut destination)? else { break };
        let in_batch = destination.in_batch();
        if let Some(marker) = source.marker() {
            announced.marked.store(true, Ordering::SeqCst);
            if marker.digest == Digest::Sha1 {
                // The producer announced SHA-1s: hash files as they arrive rather than re-read them at the end.
                announced.hash_files.store(true, Ordering::SeqCst);
            }
        }
        counters.bytes_done.fetch_add(header.payload_len, Ordering::Relaxed);
        let writer = owner(&header.path, writers.len());
        match (&mut batch, in_batch) {
            (Some(gathering), Some(range)) => {
                gathering.chunks.push(BatchedChunk { writer, header, relative, range });
            }
            (Some(gathering), None) if header.kind == ChunkKind::Eof => {
                gathering.chunks.push(BatchedChunk { writer, header, relative, range: 0..0 });
            }
            _ => {
                // A chunk on its own: the batch goes first, so each file's chunks reach its writer in order.
                flush(&mut batch)?;
                let data = own.take().expect("taken above");
                forward_chunk(&source, header, relative, data, shared)?;
            }
        }
        if batch.as_ref().is_some_and(ChunkBatch::is_full) || !source.next_chunk_is_buffered() {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    Ok(source.finish())
}

/// Sends one chunk in its own buffer to the writer that owns its file, or (compressed, with `--decompress`) to the
/// decompress threads.
fn forward_chunk(
    source: &StreamSource,
    header: ChunkHeader,
    relative: PathBuf,
    data: PooledBuffer,
    shared: &Readers,
) -> Result<()> {
    let Readers { config, writers, decompressors, cancel, .. } = *shared;
    let index = source.index();
    let original = if config.decompress { strip_zstd_suffix(&header.path) } else { None };
    let Some(original) = original.map(<[u8]>::to_vec) else {
        let key = header.path.clone();
        let chunk = ChunkMessage { stream: index, header, key, relative, data, decoded: None };
        send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(chunk), cancel)?;
        return Ok(());
    };
    let relative = proto::safe_relative_path(&original)?;
    let chunk = ChunkMessage { stream: index, header, key: original, relative, data, decoded: None };
    if chunk.header.kind == ChunkKind::Eof {
        send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(chunk), cancel)?;
    } else if parse_offset_frame(&chunk.data).is_none() {
        bail!(
            "{}: {} (chunk at stream offset {:#x}) was not compressed by our producer (no offset frame): extract \
             without --decompress, then run `consumer decompress`",
            source.describe(),
            chunk.header.display_path(),
            chunk.header.stream_offset
        );
    } else {
        send(decompressors, chunk, cancel)?;
    }
    Ok(())
}

/// One decompress thread (`--decompress`): a reused zstd context and one pool buffer as scratch, swapped with each
/// chunk's buffer, so it never waits on the pool. Decompressed chunks go to the writer that owns their file.
fn decompress_stream(
    jobs: &Receiver<ChunkMessage>,
    writers: &[Sender<WriterMessage>],
    mut scratch: PooledBuffer,
    cancel: &Cancel,
) -> Result<()> {
    let mut decompressor = zstd::bulk::Decompressor::new().context("cannot create a zstd context")?;
    while let Some(mut chunk) = recv(jobs, cancel)? {
        let header = &chunk.header;
        let context = || {
            format!(
                "{} at offset {} (chunk at stream {}, offset {:#x})",
                header.display_path(),
                header.file_offset,
                chunk.stream,
                header.stream_offset
            )
        };
        let (range, frame) = parse_offset_frame(&chunk.data).expect("checked by the reader");
        if range.len as usize > scratch.capacity() {
            bail!("{}: decompresses to {} bytes, more than --max-chunk-size", context(), range.len);
        }
        scratch.set_len(scratch.capacity());
        let written = decompressor
            .decompress_to_buffer(frame, &mut scratch[..])
            .map_err(|e| anyhow!("{}: damaged zstd frame: {e}", context()))?;
        if written != range.len as usize {
            bail!("{}: the frame decompressed to {written} bytes, its header says {}", context(), range.len);
        }
        scratch.set_len(written);
        let stored = (header.file_offset, CrcPiece { crc: header.checksum, len: header.payload_len });
        std::mem::swap(&mut chunk.data, &mut scratch);
        chunk.decoded = Some(Decoded { offset: range.offset, crc: CrcPiece::of(&chunk.data).crc, stored });
        send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(chunk), cancel)?;
    }
    Ok(())
}

/// Phases 1–3 (see the module doc), run once every stream has ended cleanly.
fn prove_and_commit(
    config: &ExtractConfig,
    target: &Target,
    writers: &[Sender<WriterMessage>],
    streams: &[StreamEnd],
    cancel: &Cancel,
) -> Result<Outcome> {
    // An empty stream is what a failed producer leaves behind (`producer ... | consumer` without pipefail):
    // never a successful restore.
    if streams.iter().all(|end| end.chunks == 0) {
        bail!("no data: every stream ended before its first chunk (did the producer fail?)");
    }
    // Ours (every stream starts with a marker of one backup) or foreign (none does).
    let ours = check_markers(streams)?;
    // 1. End of streams: collect the manifest.
    let phase = Instant::now();
    let mut manifest_file = None;
    for writer in writers {
        let (reply, answer) = crossbeam_channel::bounded(1);
        send(writer, WriterMessage::EndOfStreams(reply), cancel)?;
        if let Some(found) = recv(&answer, cancel)?.flatten() {
            manifest_file = Some(found);
        }
    }
    {
        let head = match manifest_file {
            Some(file) => Some(check_against_manifest(config, writers, ours.as_deref(), file, cancel)?),
            None if ours.is_some() => return Err(missing_manifest(streams, ours.as_deref().unwrap_or_default())),
            None if config.require_manifest => {
                bail!("the stream carries no {MANIFEST_NAME} (--require-manifest): completeness cannot be proven")
            }
            None => {
                log::warn!(
                    "the stream carries no {MANIFEST_NAME} (not made by our producer?): extracted as mbstream -x would, \
                     but completeness is unproven (chunk CRCs, offsets and end-of-file chunks were checked)"
                );
                None
            }
        };
        let proven = head.is_some();
        // 2. Verify: every writer finishes its checks at the same time.
        let mut answers = Vec::with_capacity(writers.len());
        for writer in writers {
            let (reply, answer) = crossbeam_channel::bounded(1);
            send(writer, WriterMessage::Verify(proven, reply), cancel)?;
            answers.push(answer);
        }
        let mut found = Verified::default();
        for answer in answers {
            let verified = recv(&answer, cancel)?.ok_or_else(|| anyhow!("a writer stopped"))??;
            found.files += verified.files;
            found.bytes += verified.bytes;
            found.missing += verified.missing;
            found.missing_examples.extend(verified.missing_examples);
        }
        if found.missing > 0 {
            found.missing_examples.sort();
            found.missing_examples.truncate(MISSING_EXAMPLES);
            bail!(
                "{} file(s) listed in the manifest never arrived: {}{}",
                found.missing,
                found.missing_examples.join(", "),
                if found.missing > found.missing_examples.len() as u64 { ", …" } else { "" }
            );
        }
        if let Some(head) = &head {
            check_streams(head, streams)?;
            // Placeholders are not part of the backed-up tree: not counted among its files.
            found.files -= target.stage_directories(&head.directories)?;
        }

        log::info!("verified {} files in {:.2} s", found.files, phase.elapsed().as_secs_f64());
        let phase = Instant::now();
        // 3. Commit: move the staged tree into place (every conflict checked first), sync, manifest last.
        let last = proven.then(|| std::ffi::OsStr::new(MANIFEST_NAME));
        target.commit(last, config.fsync)?;
        if let Some(head) = &head {
            target.restore_directories(&head.directories, config.fsync)?;
        }
        log::info!("committed in {:.2} s", phase.elapsed().as_secs_f64());
        Ok(Outcome {
            files: found.files,
            bytes: found.bytes,
            proven,
            streams: streams
                .iter()
                .map(|end| StreamStats {
                    index: end.index,
                    name: end.name.clone(),
                    bytes: end.bytes,
                    chunks: end.chunks,
                    sha1: end.sha1.clone(),
                })
                .collect(),
        })
    }
}

/// Phase 2's first half: reads the manifest from its staged file record by record (it is never all in memory, so
/// its size, a hundred bytes a file, does not count against the budget), checks that it belongs to the streams'
/// backup (`ours`: their markers' id), and sends each record to the writer that owns its file, which checks the
/// file then. Returns the manifest without its files.
fn check_against_manifest(
    config: &ExtractConfig,
    writers: &[Sender<WriterMessage>],
    ours: Option<&str>,
    file: File,
    cancel: &Cancel,
) -> Result<Manifest> {
    let mut pending: Vec<Records> = (0..writers.len()).map(|_| Vec::new()).collect();
    let head = Manifest::read_streaming(
        std::io::BufReader::with_capacity(1 << 20, file),
        |head: &Manifest| -> Result<()> {
            if head.backup_id.as_deref() != ours {
                bail!(
                    "the manifest is from backup {}, but the streams' markers say backup {}: refusing it",
                    head.backup_id.as_deref().unwrap_or("(none)"),
                    ours.unwrap_or("(none: a foreign stream)")
                );
            }
            Ok(())
        },
        |record| -> Result<()> {
            crate::verify::report_corrupt_record(&record);
            // The file is held under the name it was written as: its `.zst` name when it is not decompressed.
            let key = match &record.stored {
                Some(stored) if !config.decompress => stored.path.0.clone(),
                _ => record.path.0.clone(),
            };
            let writer = owner(&key, writers.len());
            pending[writer].push((key, record));
            if pending[writer].len() >= RECORDS_PER_MESSAGE {
                send(&writers[writer], WriterMessage::Check(std::mem::take(&mut pending[writer])), cancel)?;
            }
            Ok(())
        },
    )
    .map_err(|e| match e {
        StreamingError::Manifest(e) => anyhow::Error::new(e).context("cannot read the stream's manifest"),
        StreamingError::Stopped(e) => e,
    })?;
    for (writer, records) in pending.into_iter().enumerate().filter(|(_, records)| !records.is_empty()) {
        send(&writers[writer], WriterMessage::Check(records), cancel)?;
    }
    Ok(head)
}

/// Every stream carried exactly what the manifest says it was sent.
pub(crate) fn check_streams(manifest: &Manifest, streams: &[StreamEnd]) -> Result<()> {
    if manifest.streams.len() != streams.len() {
        bail!(
            "the manifest says the backup was written to {} stream(s), but {} were read: use --fifo-streams {}",
            manifest.streams.len(),
            streams.len(),
            manifest.streams.len()
        );
    }
    for (record, end) in manifest.streams.iter().zip(streams) {
        let counted = end.counted;
        if record.chunks != counted.chunks || record.bytes != counted.bytes {
            bail!(
                "stream {} ({}) carried {} chunks, {} bytes; the manifest says {} chunks, {} bytes",
                end.index,
                end.name,
                counted.chunks,
                counted.bytes,
                record.chunks,
                record.bytes
            );
        }
    }
    Ok(())
}

/// One writer's files.
struct Writer<'a> {
    /// Its number: the chunks of a batch it owns carry it.
    index: usize,
    target: &'a Target,
    /// Files still being written, or ended with bytes out of order, decompressed, or the manifest.
    files: HashMap<Vec<u8>, Slot>,
    /// Files ended with every byte in order, closed: ~150 bytes each with the map's overhead, up to
    /// `ended_limit` of them.
    ended: HashMap<Box<[u8]>, Ended>,
    /// How many ended files are kept in memory; further whole small files of a marked stream are forgotten.
    ended_limit: usize,
    /// Whole small files written and forgotten: each is checked from disk against its record ([`Writer::check`]).
    forgotten: u64,
    /// Records checked against a forgotten file.
    recalled: u64,
    /// The buffer forgotten files are read back through.
    read_back: Vec<u8>,
    /// The staging directory files were last created in (files of one directory come one after another).
    last_dir: Option<(PathBuf, Arc<std::os::fd::OwnedFd>)>,
    /// What the checks found so far.
    found: Verified,
    single_stream: bool,
    fadvise: bool,
    /// What the markers announced: whether to hash files as they arrive, so a SHA-1 need not be re-read (read
    /// when a file's first chunk arrives), and whether a manifest must follow.
    announced: &'a Announced,
}

/// Memory per ended file kept by a writer, for [`Writer::ended_limit`]: its key, its record and the map's share.
const ENDED_BYTES: u64 = 200;

/// A file whose end-of-file chunk came after all its bytes, in order, and is closed: what its final check needs.
/// Its directory, name and path come back from its key ([`Target::partial`]): it holds no descriptor, so a backup
/// of more directories than RLIMIT_NOFILE does not run out of them.
struct Ended {
    got: CrcPiece,
    stream: u32,
    /// Checked against its manifest record.
    verified: bool,
    /// The SHA-1 of its bytes, when files are hashed as they arrive (boxed: most backups do not hash files).
    sha1: Option<Box<[u8; 20]>>,
}

/// A file being extracted.
struct Slot {
    partial: PartialFile,
    file: Option<File>,
    /// The file's bytes as written (original bytes when decompressed).
    coverage: Coverage,
    /// For a decompressed file, its compressed bytes as they travelled (checked against the manifest's stored form).
    stored: Option<Coverage>,
    ended: bool,
    /// Checked against its manifest record.
    verified: bool,
    /// The stream the file's latest chunk came on, for messages.
    stream: usize,
    /// With `--digest sha1`: the SHA-1 of the bytes so far, while they arrive in order (dropped at the first chunk
    /// out of order; the file is then re-read to check it).
    sha1: Option<Sha1>,
}

impl<'a> Writer<'a> {
    fn new(
        index: usize,
        target: &'a Target,
        single_stream: bool,
        config: &ExtractConfig,
        announced: &'a Announced,
    ) -> Writer<'a> {
        // An eighth of the budget, shared by the writers, holds ended files (at 256M: 167,000 of them).
        let ended_limit = (config.memory_limit / 8 / ENDED_BYTES / config.writers as u64).max(1024) as usize;
        Writer {
            index,
            target,
            files: HashMap::new(),
            ended: HashMap::new(),
            ended_limit,
            forgotten: 0,
            recalled: 0,
            read_back: Vec::new(),
            last_dir: None,
            found: Verified::default(),
            single_stream,
            fadvise: config.fadvise,
            announced,
        }
    }

    fn serve(&mut self, receiver: &Receiver<WriterMessage>, cancel: &Cancel) -> Result<()> {
        while let Some(message) = recv(receiver, cancel)? {
            match message {
                WriterMessage::Chunk(chunk) => {
                    let ChunkMessage { header, key, relative, data, decoded, stream } = chunk;
                    self.write(stream, &header, &key, &relative, &data, decoded)
                        .with_context(|| chunk_context(&header, stream))?;
                }
                WriterMessage::Batch(batch) => {
                    let me = self.index;
                    let mut chunks = batch.chunks.iter().filter(|chunk| chunk.writer == me).peekable();
                    while let Some(chunk) = chunks.next() {
                        let (header, data) = (&chunk.header, &batch.data[chunk.range.clone()]);
                        let whole = header.kind == ChunkKind::Payload
                            && header.file_offset == 0
                            && chunks.peek().is_some_and(|next| {
                                next.header.kind == ChunkKind::Eof && next.header.path == header.path
                            });
                        let result = if whole && self.is_new(&header.path) {
                            chunks.next();
                            self.write_whole(batch.stream, header, &chunk.relative, data)
                        } else {
                            self.write(batch.stream, header, &header.path, &chunk.relative, data, None)
                        };
                        result.with_context(|| chunk_context(header, batch.stream))?;
                    }
                }
                WriterMessage::EndOfStreams(reply) => {
                    let manifest = self.take_manifest()?;
                    let _ = reply.send(manifest);
                }
                WriterMessage::Check(records) => {
                    for (key, record) in records {
                        self.check(&key, &record)?;
                    }
                }
                WriterMessage::Verify(proven, reply) => {
                    let _ = reply.send(self.verify(proven));
                }
            }
        }
        Ok(())
    }

    /// Whether nothing of file `key` has arrived yet.
    fn is_new(&self, key: &[u8]) -> bool {
        !self.files.contains_key(key) && !self.ended.contains_key(key)
    }

    /// Creates `relative` in the staging directory, looking its directory up only when it changes.
    fn create(&mut self, relative: &Path) -> Result<(PartialFile, File)> {
        match self.create_or_existing(relative)? {
            Ok(created) => Ok(created),
            Err(existing) => bail!("{} appears twice in the stream", existing.display().display()),
        }
    }

    /// [`Writer::create`], or (`Err`) the file already staged under that name.
    fn create_or_existing(&mut self, relative: &Path) -> Result<Result<(PartialFile, File), PartialFile>> {
        let dir = self.directory_of(relative)?;
        self.target.create_new_in(dir, relative)
    }

    /// The staging directory of `relative`, looked up only when it changes (files of one directory come one after
    /// another, in the stream and in the manifest).
    fn directory_of(&mut self, relative: &Path) -> Result<Arc<std::os::fd::OwnedFd>> {
        let parent = relative.parent().unwrap_or(Path::new(""));
        if let Some((last, dir)) = &self.last_dir {
            if last.as_os_str() == parent.as_os_str() {
                return Ok(Arc::clone(dir));
            }
        }
        let dir = self.target.directory_of(relative)?;
        self.last_dir = Some((parent.to_path_buf(), Arc::clone(&dir)));
        Ok(dir)
    }

    /// Whether an ended file (`key`, `got`) is forgotten rather than kept: over the bound, a stream of ours (a
    /// manifest will name it), small enough to read back cheaply, and not the manifest itself.
    fn forgets(&self, key: &[u8], got: CrcPiece) -> bool {
        self.ended.len() >= self.ended_limit
            && key != MANIFEST_NAME.as_bytes()
            && got.len <= crate::batch::BATCH_PAYLOAD_MAX as u64
            && self.announced.marked.load(Ordering::SeqCst)
    }

    /// A chunk came for a file this writer forgot (chunks of one file on several streams arrive in any order):
    /// it is taken up again from disk, as ended, with the bytes it holds.
    fn take_up(&mut self, partial: PartialFile, stream: usize) -> Result<Slot> {
        let mut coverage = Coverage::default();
        let got = crc_of_file(&partial.reopen_for_read()?, &partial, &mut self.read_back)?;
        coverage.insert(0, got).map_err(|overlap| anyhow!("{overlap}"))?;
        let file = partial.reopen_for_write()?;
        self.forgotten -= 1;
        Ok(Slot { partial, file: Some(file), coverage, stored: None, ended: true, verified: false, stream, sha1: None })
    }

    /// A whole small file, new to this writer: its one payload (`header`, at offset 0, `data`) and its `E`, which
    /// came next. Created, written, closed and recorded as ended at once.
    fn write_whole(&mut self, stream: usize, header: &ChunkHeader, relative: &Path, data: &[u8]) -> Result<()> {
        let (partial, file) = self.create(relative)?;
        self.target
            .sparse()
            .write_at(&file, data, 0)
            .with_context(|| format!("cannot write {}", partial.display().display()))?;
        close(Some(file), &partial)?;
        let got = CrcPiece { crc: header.checksum, len: data.len() as u64 };
        if self.forgets(&header.path, got) {
            // Over the bound: the manifest that must follow will name it, and it is checked from disk then.
            self.forgotten += 1;
            return Ok(());
        }
        let sha1 = self.announced.hash_files.load(Ordering::SeqCst).then(|| Box::new(Sha1::digest(data).into()));
        drop(partial);
        let ended = Ended { got, stream: stream as u32, sha1, verified: false };
        self.ended.insert(header.path.as_slice().into(), ended);
        Ok(())
    }

    /// Writes one chunk of file `key` (at `relative`), its payload `data` (original bytes if `decoded`).
    fn write(
        &mut self,
        stream: usize,
        header: &ChunkHeader,
        key: &[u8],
        relative: &Path,
        data: &[u8],
        decoded: Option<Decoded>,
    ) -> Result<()> {
        if let Some(ended) = self.ended.remove(key) {
            // More of a file that had ended (chunks of one file on several streams arrive in any order).
            let mut coverage = Coverage::default();
            coverage.insert(0, ended.got).map_err(|overlap| anyhow!("{overlap}"))?;
            let slot = Slot {
                partial: self.target.partial(self.directory_of(relative)?, relative)?,
                file: None,
                coverage,
                stored: None,
                ended: true,
                verified: false,
                stream: ended.stream as usize,
                sha1: None,
            };
            self.files.insert(key.to_vec(), slot);
        }
        if !self.files.contains_key(key) {
            let slot = match self.create_or_existing(relative)? {
                Ok((partial, file)) => Slot {
                    partial,
                    file: Some(file),
                    coverage: Coverage::default(),
                    stored: None,
                    ended: false,
                    verified: false,
                    stream,
                    sha1: self.announced.hash_files.load(Ordering::SeqCst).then(Sha1::new),
                },
                Err(existing) if self.forgotten > 0 => self.take_up(existing, stream)?,
                Err(existing) => bail!("{} appears twice in the stream", existing.display().display()),
            };
            self.files.insert(key.to_vec(), slot);
        }
        let slot = self.files.get_mut(key).expect("inserted above");
        slot.stream = stream;
        match header.kind {
            ChunkKind::Eof => {
                if slot.ended {
                    bail!("a second end-of-file chunk");
                }
                slot.ended = true;
                close(slot.file.take(), &slot.partial)?;
                if slot.coverage.is_contiguous() && slot.stored.is_none() {
                    let got = slot.coverage.prefix();
                    let forget = self.forgets(key, got);
                    let slot = self.files.remove(key).expect("looked up above");
                    if forget {
                        self.forgotten += 1;
                        return Ok(());
                    }
                    let ended = Ended {
                        got: slot.coverage.prefix(),
                        stream: slot.stream as u32,
                        sha1: slot.sha1.map(|sha1| Box::new(sha1.finalize().into())),
                        verified: false,
                    };
                    self.ended.insert(key.into(), ended);
                }
            }
            ChunkKind::Payload => {
                // Decompressed chunks pass through a parallel stage, so their `E` may overtake them.
                if slot.ended && self.single_stream && decoded.is_none() {
                    bail!("a payload chunk after the file's end-of-file chunk");
                }
                let (offset, piece) = match decoded {
                    None => (header.file_offset, CrcPiece { crc: header.checksum, len: header.payload_len }),
                    Some(decoded) => {
                        let (stored_offset, stored_piece) = decoded.stored;
                        slot.stored
                            .get_or_insert_with(Coverage::default)
                            .insert(stored_offset, stored_piece)
                            .map_err(|overlap| anyhow!("{overlap}"))?;
                        (decoded.offset, CrcPiece { crc: decoded.crc, len: data.len() as u64 })
                    }
                };
                let in_order = offset == slot.coverage.prefix().len;
                slot.coverage.insert(offset, piece).map_err(|overlap| anyhow!("{overlap}"))?;
                match &mut slot.sha1 {
                    Some(sha1) if in_order => sha1.update(data),
                    _ => slot.sha1 = None,
                }
                if slot.file.is_none() {
                    slot.file = Some(slot.partial.reopen_for_write()?);
                }
                let file = slot.file.as_ref().expect("opened above");
                self.target
                    .sparse()
                    .write_at(file, data, offset)
                    .with_context(|| format!("cannot write {}", slot.partial.display().display()))?;
                // Dropping a small file's pages from the cache costs a system call and saves nothing.
                if self.fadvise && data.len() > crate::batch::BATCH_PAYLOAD_MAX {
                    let _ = nix::fcntl::posix_fadvise(
                        file,
                        offset as i64,
                        piece.len as i64,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                }
            }
        }
        Ok(())
    }

    /// The manifest, if this writer holds it: complete, and opened for reading (it is not checked against
    /// itself).
    fn take_manifest(&mut self) -> Result<Option<File>> {
        let key = MANIFEST_NAME.as_bytes();
        let partial = match (self.files.remove(key), self.ended.remove(key)) {
            (Some(slot), _) => {
                close(slot.file, &slot.partial)?;
                if !slot.ended || !slot.coverage.is_contiguous() {
                    bail!("stream {}: {MANIFEST_NAME} is incomplete: the stream was cut short", slot.stream);
                }
                slot.partial
            }
            (None, Some(_)) => {
                let relative = Path::new(MANIFEST_NAME);
                self.target.partial(self.directory_of(relative)?, relative)?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(partial.reopen_for_read()?))
    }

    /// Checks the file `key` against its manifest `record`: the stream brought it whole, as the record says. A
    /// file that never arrived is counted (and named) at the end, with all the others.
    fn check(&mut self, key: &[u8], record: &FileRecord) -> Result<()> {
        if let Some(slot) = self.files.get_mut(key) {
            if std::mem::replace(&mut slot.verified, true) {
                bail!("the manifest lists {} twice: refusing it", record.path.display());
            }
            close(slot.file.take(), &slot.partial)?;
            let display = || slot.partial.display().display().to_string();
            if !slot.ended {
                bail!("{}: the stream ended without its end-of-file chunk (cut short?)", display());
            }
            if let Some((start, end)) = slot.coverage.first_gap() {
                bail!("{}: bytes {start}..{end} never arrived", display());
            }
            let sha1 = slot.sha1.take().map(|sha1| sha1.finalize().into());
            let got = slot.coverage.prefix();
            check_file(key, record, &slot.partial, got, slot.stored.as_ref(), sha1)?;
            self.found.files += 1;
            self.found.bytes += got.len;
        } else if let Some(ended) = self.ended.get_mut(key) {
            if std::mem::replace(&mut ended.verified, true) {
                bail!("the manifest lists {} twice: refusing it", record.path.display());
            }
            let (got, sha1) = (ended.got, ended.sha1.as_deref().copied());
            let relative = proto::safe_relative_path(key)?;
            let partial = self.target.partial(self.directory_of(&relative)?, &relative)?;
            check_file(key, record, &partial, got, None, sha1)?;
            self.found.files += 1;
            self.found.bytes += got.len;
        } else if let Some(got) = self.recall(key, record)? {
            self.found.files += 1;
            self.found.bytes += got;
        } else {
            self.found.missing += 1;
            if self.found.missing_examples.len() < MISSING_EXAMPLES {
                self.found.missing_examples.push(record.path.display());
            }
        }
        Ok(())
    }

    /// Checks `record` against a forgotten file, read back from the staging directory: `None` if this writer
    /// forgot no file, or there is no such file (it never arrived). Returns its size.
    fn recall(&mut self, key: &[u8], record: &FileRecord) -> Result<Option<u64>> {
        if self.forgotten == 0 {
            return Ok(None);
        }
        let relative = proto::safe_relative_path(key)?;
        let partial = self.target.partial(self.directory_of(&relative)?, &relative)?;
        let Some(file) = partial.try_reopen_for_read()? else { return Ok(None) };
        let got = crc_of_file(&file, &partial, &mut self.read_back)?;
        // With a SHA-1 in the record, `check_file` reads the file back for it.
        check_file(key, record, &partial, got, None, None)?;
        self.recalled += 1;
        Ok(Some(got.len))
    }

    /// After every record (`proven`), any file not checked is in the stream but not in the manifest. Without a
    /// manifest, every file must have ended whole; it gets mode 0640. Reports what was checked.
    fn verify(&mut self, proven: bool) -> Result<Verified> {
        for slot in self.files.values_mut() {
            if slot.verified {
                continue;
            }
            close(slot.file.take(), &slot.partial)?;
            let display = slot.partial.display().display().to_string();
            if proven {
                bail!("{display} is in the stream but not in the manifest");
            }
            if !slot.ended {
                bail!("{display}: the stream ended without its end-of-file chunk (cut short?)");
            }
            if let Some((start, end)) = slot.coverage.first_gap() {
                bail!("{display}: bytes {start}..{end} never arrived");
            }
            slot.partial.set_metadata(0o640, None)?;
            self.found.files += 1;
            self.found.bytes += slot.coverage.prefix().len;
        }
        if self.forgotten > 0 {
            log::info!(
                "writer {}: {} files over the memory bound were checked from disk against their records",
                self.index,
                self.forgotten
            );
        }
        // Forgotten files were each checked by name when their record came: as many records as files, or some
        // file came without a record (or a record came twice).
        if self.recalled > self.forgotten {
            bail!("the manifest lists a file twice: refusing it");
        }
        if self.recalled < self.forgotten {
            bail!("{} file(s) in the stream are not in the manifest", self.forgotten - self.recalled);
        }
        for (key, ended) in self.ended.iter().filter(|(_, ended)| !ended.verified) {
            let relative = proto::safe_relative_path(key)?;
            let partial = self.target.partial(self.target.directory_of(&relative)?, &relative)?;
            if proven {
                bail!("{} is in the stream but not in the manifest", partial.display().display());
            }
            partial.set_metadata(0o640, None)?;
            self.found.files += 1;
            self.found.bytes += ended.got.len;
        }
        Ok(std::mem::take(&mut self.found))
    }
}

/// Checks one extracted file, held under `key`, against its manifest `record`, and sets its mode and mtime:
/// `got` is what arrived, `stored` (decompressed files) the compressed bytes that travelled, `sha1` the SHA-1
/// taken as it arrived (else, if the record has one, the file is read back). `key` is the record's path, or its
/// stored (`.zst`) path for a compressed file extracted as it travelled.
fn check_file(
    key: &[u8],
    record: &FileRecord,
    partial: &PartialFile,
    got: CrcPiece,
    stored: Option<&Coverage>,
    sha1: Option<[u8; 20]>,
) -> Result<()> {
    let display = || partial.display().display().to_string();
    let is_original = key == record.path.0.as_slice();
    let expected = if is_original {
        CrcPiece { crc: record.crc32, len: record.size }
    } else {
        let stored = record.stored.as_ref().ok_or_else(|| anyhow!("{}: the manifest is inconsistent", display()))?;
        CrcPiece { crc: stored.crc32, len: stored.size }
    };
    check_piece(&display(), got, expected)?;
    if let Some(stored_coverage) = stored {
        // Decompressed: the compressed bytes that travelled must match the manifest's stored form too.
        let stored = record
            .stored
            .as_ref()
            .ok_or_else(|| anyhow!("{}: decompressed, but the manifest says it was not compressed", display()))?;
        if let Some((start, end)) = stored_coverage.first_gap() {
            bail!("{}: compressed bytes {start}..{end} never arrived", display());
        }
        let expected = CrcPiece { crc: stored.crc32, len: stored.size };
        check_piece(&format!("{} (compressed)", display()), stored_coverage.prefix(), expected)?;
    }
    if let (true, Some(expected)) = (is_original, &record.sha1) {
        let actual = match sha1 {
            Some(sha1) => hex::encode(sha1),
            None => sha1_of(&partial.reopen_for_read()?).with_context(|| format!("cannot read back {}", display()))?,
        };
        if &actual != expected {
            bail!("{}: SHA-1 {actual} does not match the manifest's {expected}", display());
        }
    }
    partial.set_metadata(record.mode, Some(record.mtime))
}

/// Where a chunk came from, for a writer's error messages (made only when there is an error).
fn chunk_context(header: &ChunkHeader, stream: usize) -> String {
    format!("{} (chunk at stream {stream}, offset {:#x})", header.display_path(), header.stream_offset)
}

/// Size and CRC-32 of a staged file's bytes, read back through `buffer` (a forgotten file: at most a small
/// file's size).
fn crc_of_file(file: &File, partial: &PartialFile, buffer: &mut Vec<u8>) -> Result<CrcPiece> {
    let mut got = CrcPiece::default();
    buffer.resize(64 << 10, 0);
    loop {
        let n = file
            .read_at(buffer, got.len)
            .with_context(|| format!("cannot read back {}", partial.display().display()))?;
        if n == 0 {
            return Ok(got);
        }
        got = got.append(CrcPiece::of(&buffer[..n]));
    }
}

/// Closes a file explicitly, so that a failed close (an I/O error the kernel reports only then, e.g. on NFS) is an
/// error: a file whose close fails is not complete.
fn close(file: Option<File>, partial: &PartialFile) -> Result<()> {
    match file {
        Some(file) => {
            nix::unistd::close(file).with_context(|| format!("cannot close {} (staged)", partial.display().display()))
        }
        None => Ok(()),
    }
}

/// Size and CRC-32 of what arrived against what the manifest says.
fn check_piece(display: &str, got: CrcPiece, expected: CrcPiece) -> Result<()> {
    if got.len != expected.len {
        bail!("{display}: {} bytes arrived; the manifest says {}", got.len, expected.len);
    }
    if got.crc != expected.crc {
        bail!("{display}: CRC-32 {:08x} does not match the manifest's {:08x}", got.crc, expected.crc);
    }
    Ok(())
}

/// SHA-1 of a whole file, read in 1 MiB pieces.
pub fn sha1_of(file: &File) -> std::io::Result<String> {
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buffer, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}
