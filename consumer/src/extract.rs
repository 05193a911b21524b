//! `consumer extract`: N streams back into files, in parallel, with proof.
//!
//! ```text
//! stream 0 ─► reader 0 ─┐                    ┌─► writer 0 ─► pwrite at offset into the staging directory
//! stream 1 ─► reader 1 ─┼─ by path (hash) ──►┼─► writer 1       ▲
//!    …                  │                    └─► …              └─ a large chunk's bytes: any free writer
//! ```
//!
//! One reader thread per stream parses chunks into pool buffers (CRC checked) and validates each path; chunks are
//! dispatched to a writer chosen by a hash of the path, so one writer owns each file's state and no locks are
//! needed, while chunks of one file may come from any stream in any order. The owner writes small chunks itself
//! and hands a large chunk's bytes to whichever writer is free (`wide.rs`), so one huge file is written by every
//! writer. Small chunks travel in batches ([`crate::batch`]): one pool buffer and one message for many files. When
//! every stream has ended cleanly the run proves the result in phases, so that nothing unproven ever looks
//! complete:
//!
//! 1. *end of streams*: every handed-over write is finished, then the writer that holds the manifest hands it over
//!    (as its staged file);
//! 2. *verify*: the manifest is read a record at a time and each record goes to the writer that owns its file,
//!    which checks it (ended, contiguous, size, CRC-32, SHA-1) and sets its mode and mtime; then every writer
//!    reports what it holds that no record named, and the run checks that no record went unmatched and that every
//!    stream carried what the manifest says;
//! 3. *commit*: partial files are renamed into place, the filesystem is synced, and the manifest is renamed last.
//!
//! With `--decrypt`, chunks of `.age` files pass through the decrypt threads (`decrypt_stage.rs`) first, and the
//! manifest is the encrypted one, decrypted like every file.
//!
//! Each stage has a file of its own: `demux.rs` (the readers), `decrypt_stage.rs`, `decompress_stage.rs`,
//! `writer.rs` (which also bounds per-file memory), `wide.rs` (large chunks' bytes, written by any writer),
//! `proof.rs` (the phases); `dispatch.rs` holds what travels between them. This file only wires them.
//!
//! Any failure removes every partial file; the manifest never appears in an unproven tree.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use proto::MANIFEST_NAME;
use runtime::cancel::Cancel;
use runtime::failure::Failure;
use runtime::pool::{BufferPool, PooledBuffer};
use runtime::progress::{Counters, Progress};
use runtime::signals::Signals;
use runtime::size::human;
use runtime::stats::{peak_rss_bytes, StreamStats};
use serde::Serialize;

use crate::config::ExtractConfig;
use crate::decompress_stage::decompress_stream;
use crate::decrypt_stage::{decrypt_chunks, Keyring};
use crate::demux::{read_stream, Readers};
use crate::dispatch::{Announced, ChunkMessage, WriterMessage};
use crate::input::{open_inputs, InputStream};
use crate::manifest_feed::{parse_as_it_comes, FeedPiece, FEED_DEPTH};
use crate::proof::{prove_and_commit, Outcome};
use crate::source::{SameBackup, StreamEnd, StreamSource};
use crate::target::Target;
use crate::wide::WideWrites;
use crate::writer::Writer;

/// Runs an extraction; returns the one-line summary. A stop signal (`signals`) ends it as a failure.
pub fn run(config: &ExtractConfig, signals: &Signals) -> Result<String> {
    signals.run(|cancel| {
        let (inputs, _fifos) = open_inputs(&config.input, config.idle_timeout, cancel)?;
        extract(config, inputs, signals, cancel)
    })
}

/// Extracts `inputs` (the streams, in order) as configured: the whole run once the streams are open.
pub fn extract(config: &ExtractConfig, inputs: Vec<InputStream>, signals: &Signals, cancel: &Cancel) -> Result<String> {
    let started = Instant::now();
    let stream_count = inputs.len();
    // The keys are read before anything is written: a damaged identity file fails here.
    let keyring = match &config.decrypt {
        Some(keys) => Some(Keyring::new(keys.identities()?, stream_count)),
        None => None,
    };
    let target = Target::open(&config.target, config.overwrite)?;
    let pool = BufferPool::new(config.buffers, config.buffer_size);
    let failure = Failure::new(cancel.clone());
    // Whether writers hash files as they arrive: asked for (--digest sha1), or announced by the streams' markers.
    let announced = Announced { hash_files: AtomicBool::new(config.stream_sha1), marked: AtomicBool::new(false) };
    let same_backup = Arc::new(SameBackup::default());
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(config.progress, Arc::clone(&counters), "extract");

    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..config.writers).map(|_| crossbeam_channel::bounded::<WriterMessage>(config.buffers)).unzip();

    // Large chunks' bytes, written by whichever writer is free.
    let wide = WideWrites::new(config.writers, config.buffers, target.sparse(), config.fadvise);

    let outcome = thread::scope(|scope| -> Result<Outcome> {
        let (target, failure, announced, pool, counters) = (&target, &failure, &announced, &pool, &counters);
        let wide = &wide;
        let keyring = keyring.as_ref();
        let writers: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(index, receiver)| {
                let single_stream = stream_count == 1;
                failure.spawn_stage(scope, format!("writer-{index}"), move || {
                    Writer::new(index, target, single_stream, config, announced, keyring, wide).serve(&receiver, cancel)
                })
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
                failure.spawn_stage(scope, format!("decompress-{index}"), move || {
                    decompress_stream(&jobs, &senders, scratch, cancel)
                })
            })
            .collect();
        drop(decompress_receiver);

        let (decrypt_sender, decrypt_receiver) = crossbeam_channel::bounded::<ChunkMessage>(config.buffers);
        let decryptors: Vec<_> = match keyring {
            Some(keyring) => (0..config.decrypt_threads)
                .map(|index| {
                    let (jobs, senders, decompress) =
                        (decrypt_receiver.clone(), senders.clone(), decompress_sender.clone());
                    failure.spawn_stage(scope, format!("decrypt-{index}"), move || {
                        decrypt_chunks(&jobs, keyring, &senders, &decompress, cancel)
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        drop(decrypt_receiver);

        // The manifest, parsed as it arrives, its records handed to the writers (not when decrypting: the
        // manifest that counts is the encrypted one).
        let (feed_sender, feed_receiver) = crossbeam_channel::bounded::<FeedPiece>(FEED_DEPTH);
        let feed = {
            let senders = senders.clone();
            failure.spawn_stage(scope, "manifest".into(), move || {
                parse_as_it_comes(config, &feed_receiver, &senders, cancel)
            })
        };
        let feed_sender = config.decrypt.is_none().then_some(feed_sender);
        let readers: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| {
                let (senders, decompress_sender, decrypt_sender) =
                    (senders.clone(), decompress_sender.clone(), decrypt_sender.clone());
                let feed_sender = feed_sender.clone();
                let same_backup = Arc::clone(&same_backup);
                failure.spawn_stage(scope, format!("reader-{index}"), move || {
                    let max_payload = pool.buffer_size() as u64;
                    let source =
                        StreamSource::new(index, input, max_payload, config.stream_sha1, stream_count, same_backup);
                    let shared = Readers {
                        config,
                        writers: &senders,
                        decompressors: &decompress_sender,
                        decryptors: &decrypt_sender,
                        keyring,
                        pool,
                        cancel,
                        counters,
                        announced,
                        feed: feed_sender.as_ref(),
                    };
                    let ended = read_stream(source, &shared);
                    // Readers waiting for a file's first chunk recount (see `Keyring::nonce_of`).
                    if let Some(keyring) = keyring {
                        keyring.reader_done();
                    }
                    ended
                })
            })
            .collect();
        drop(feed_sender);
        let streams: Vec<_> = readers.into_iter().map(|r| failure.joined(r.join(), "reader").flatten()).collect();
        let fed = failure.joined(feed.join(), "manifest").flatten();
        drop((decrypt_sender, decompress_sender));
        for decryptor in decryptors {
            failure.joined(decryptor.join(), "decrypt");
        }
        for decompressor in decompressors {
            failure.joined(decompressor.join(), "decompress");
        }

        let result = failure.outcome(signals).and_then(|()| {
            // Every thread records its error or panic, so this cannot happen; if it does, it is a failure, never
            // a partial success.
            let streams: Vec<StreamEnd> = streams
                .into_iter()
                .map(|s| s.ok_or_else(|| anyhow!("a stream reader stopped unexpectedly")))
                .collect::<Result<_>>()?;
            log::info!("all {} stream(s) ended after {:.2} s", streams.len(), started.elapsed().as_secs_f64());
            let fed = fed.ok_or_else(|| anyhow!("the manifest thread stopped unexpectedly"))?;
            prove_and_commit(config, keyring, target, &senders, &streams, fed, cancel)
        });
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
    summarize(config, &pool, &wide, outcome, stream_count, started)
}

/// Writes `--stats-json` (if asked) and returns the summary line.
fn summarize(
    config: &ExtractConfig,
    pool: &BufferPool,
    wide: &WideWrites,
    outcome: Outcome,
    stream_count: usize,
    started: Instant,
) -> Result<String> {
    let elapsed = started.elapsed().as_secs_f64();
    let stats = ExtractStats {
        files: outcome.files,
        bytes: outcome.bytes,
        proven_by_manifest: outcome.proven,
        files_checked_during_stream: outcome.checked_during_stream,
        files_set_on_descriptor: outcome.set_on_descriptor,
        streams: outcome.streams,
        wall_seconds: elapsed,
        mb_per_second: outcome.bytes as f64 / elapsed.max(1e-9) / 1e6,
        buffer_size: pool.buffer_size(),
        buffers: pool.count(),
        peak_buffers_in_use: pool.peak_in_use(),
        chunks_written_by_other_writers: wide.written_by_others(),
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
    // An encrypted backup without a key: proven as it travels, its files left as `.age`.
    let proof = match (outcome.encrypted, &outcome.decrypted) {
        (true, _) => {
            format!("{proof}; the files are age-encrypted and kept as <path>.age (age -d -i KEY decrypts each)")
        }
        (false, Some(key)) => format!("{proof}.age, every file decrypted and authenticated (backup key {key})"),
        (false, None) => proof,
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
    /// Files checked against their records while the streams still flowed (the manifest is read as it comes).
    files_checked_during_stream: u64,
    /// Files given their mode and mtime on the descriptor they were written through (their record came while it
    /// was still open), not by name.
    files_set_on_descriptor: u64,
    streams: Vec<StreamStats>,
    wall_seconds: f64,
    mb_per_second: f64,
    buffer_size: usize,
    buffers: usize,
    peak_buffers_in_use: usize,
    /// Large chunks written by a writer other than the one that owns their file (see `wide.rs`).
    chunks_written_by_other_writers: u64,
    peak_rss_bytes: u64,
}
