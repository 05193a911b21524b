//! The demultiplexer: one thread per stream parses its chunks ([`StreamSource`]) into pool buffers and hands each
//! to the writer that owns its file (chosen by a hash of the path), or, compressed with `--decompress`, to the
//! decompress threads. Small chunks travel in batches ([`crate::batch`]): one pool buffer and one message for many
//! files.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::Sender;
use proto::{parse_offset_frame, strip_zstd_suffix, ChunkHeader, ChunkKind, Digest, AGE_SUFFIX, MANIFEST_NAME};
use runtime::cancel::{send, Cancel};
use runtime::pool::{BufferPool, PooledBuffer};
use runtime::progress::Counters;

use crate::batch::{BatchedChunk, ChunkBatch, Destination};
use crate::config::ExtractConfig;
use crate::decrypt_stage::Keyring;
use crate::dispatch::{owner, Announced, ChunkMessage, WriterMessage};
use crate::manifest_feed::FeedPiece;
use crate::source::{SourceChunk, StreamEnd, StreamSource};

/// What every reader thread shares.
pub(crate) struct Readers<'a> {
    pub(crate) config: &'a ExtractConfig,
    pub(crate) writers: &'a [Sender<WriterMessage>],
    pub(crate) decompressors: &'a Sender<ChunkMessage>,
    /// With `--decrypt`: the decrypt threads, and the keyring the readers fill.
    pub(crate) decryptors: &'a Sender<ChunkMessage>,
    pub(crate) keyring: Option<&'a Keyring>,
    pub(crate) pool: &'a BufferPool,
    pub(crate) cancel: &'a Cancel,
    pub(crate) counters: &'a Counters,
    pub(crate) announced: &'a Announced,
    /// Where the manifest's pieces are copied as they come (`manifest_feed.rs`); not when decrypting.
    pub(crate) feed: Option<&'a Sender<FeedPiece>>,
}

/// One reader thread: chunks of its stream to the writers (or, compressed, to the decompress threads). Small
/// chunks go in batches ([`crate::batch`]), except with `--decompress`.
pub(crate) fn read_stream(mut source: StreamSource, shared: &Readers) -> Result<StreamEnd> {
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
        if batch.is_none() && !config.decompress && config.decrypt.is_none() {
            batch = pool.try_take().map(|data| ChunkBatch::new(index, data));
        }
        let mut destination = Destination::new(own.as_mut().expect("taken above"), batch.as_mut());
        let Some(SourceChunk { header, .. }) = source.next_chunk(&mut destination)? else { break };
        if let (Some(feed), ChunkKind::Payload) = (shared.feed, header.kind) {
            if header.path == MANIFEST_NAME.as_bytes() {
                send(feed, FeedPiece { offset: header.file_offset, bytes: destination.to_vec() }, cancel)?;
            }
        }
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
                gathering.chunks.push(BatchedChunk { writer, header, range });
            }
            (Some(gathering), None) if header.kind == ChunkKind::Eof => {
                gathering.chunks.push(BatchedChunk { writer, header, range: 0..0 });
            }
            _ => {
                // A chunk on its own: the batch goes first, so each file's chunks reach its writer in order.
                flush(&mut batch)?;
                let data = own.take().expect("taken above");
                forward_chunk(&source, header, data, shared)?;
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
pub(crate) fn forward_chunk(
    source: &StreamSource,
    header: ChunkHeader,
    data: PooledBuffer,
    shared: &Readers,
) -> Result<()> {
    let Readers { config, writers, decompressors, cancel, .. } = *shared;
    let index = source.index();
    if let Some(keyring) = shared.keyring {
        return forward_encrypted(source, header, data, shared, keyring);
    }
    let original = if config.decompress { strip_zstd_suffix(&header.path) } else { None };
    let Some(original) = original.map(<[u8]>::to_vec) else {
        let key = header.path.clone();
        let chunk = ChunkMessage { stream: index, header, key, data, decoded: None, nonce: None };
        send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(Box::new(chunk)), cancel)?;
        return Ok(());
    };
    proto::checked_relative_path(&original)?;
    let chunk = ChunkMessage { stream: index, header, key: original, data, decoded: None, nonce: None };
    if chunk.header.kind == ChunkKind::Eof {
        send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(Box::new(chunk)), cancel)?;
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

/// With `--decrypt`: a chunk of an encrypted backup, held under its original name (`.age`, and for a compressed
/// backup `.zst`, taken off). A payload goes to the decrypt threads with its file's nonce (learnt from the file's
/// first chunk, which is checked here: see [`Keyring`]); an end goes to the writer. The clear manifest is left
/// out (the encrypted one, decrypted, is the manifest); a file that is not `.age` is refused, so nothing
/// unauthenticated is ever written.
fn forward_encrypted(
    source: &StreamSource,
    header: ChunkHeader,
    data: PooledBuffer,
    shared: &Readers,
    keyring: &Keyring,
) -> Result<()> {
    let Readers { config, writers, decryptors, cancel, .. } = *shared;
    let Some(sealed) = header.path.strip_suffix(AGE_SUFFIX.as_bytes()) else {
        if header.path == MANIFEST_NAME.as_bytes() {
            return Ok(());
        }
        bail!(
            "{}: {} is not encrypted: --decrypt restores an encrypted backup, every file of which is `.age`",
            source.describe(),
            header.display_path()
        );
    };
    let marker = source.marker();
    let compressed = marker.is_some_and(|marker| marker.compression != proto::Compression::None);
    // In a compressed backup every file is `.zst.age` but the encrypted manifest (never compressed).
    let original = match (compressed, strip_zstd_suffix(sealed)) {
        (true, Some(original)) if config.decompress => original,
        (true, Some(_)) => bail!(
            "{}: {} is compressed and encrypted: --decrypt needs --decompress too (or extract without --decrypt, \
             then run `consumer decrypt --decompress`)",
            source.describe(),
            header.display_path()
        ),
        (_, _) => sealed,
    };
    let key = original.to_vec();
    proto::checked_relative_path(&key)?;
    let nonce = match header.kind {
        ChunkKind::Eof => {
            // All of a file's chunks come on one stream, in order, when there is one stream or files are bound to
            // streams: none can follow its end, so its nonce is forgotten.
            let bound = marker.is_some_and(|marker| marker.binding == proto::MarkerBinding::File);
            if bound || marker.is_some_and(|marker| marker.streams == 1) {
                keyring.forget(&header.path);
            }
            let chunk = ChunkMessage { stream: source.index(), header, key, data, decoded: None, nonce: None };
            send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(Box::new(chunk)), cancel)?;
            return Ok(());
        }
        ChunkKind::Payload if header.file_offset == 0 => {
            keyring.start(&header.path, &data).map_err(|e| anyhow!("{}: {e:#}", source.describe()))?
        }
        ChunkKind::Payload => keyring.nonce_of(&header.path, header.file_offset, cancel)?,
    };
    let chunk = ChunkMessage { stream: source.index(), header, key, data, decoded: None, nonce: Some(nonce) };
    send(decryptors, chunk, cancel)?;
    Ok(())
}
