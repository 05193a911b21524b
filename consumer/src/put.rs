//! `consumer put NAME`: one stream (STDIN) or N pipes into object storage, in parallel, proven before it counts.
//!
//! ```text
//! stream i ─► reader i (StreamSource: parse, CRC, marker) ─► pack i (a pool buffer; whole chunks, verbatim)
//!                                                               │ full (--object-size)
//!                                                               ▼
//!                                        uploaders (--parallel) ─► <NAME>/<i>/<seq>.xbs
//! all streams ended cleanly ─► prove (marker ⇒ manifest, stream counts) ─► backup-manifest.json ─► index.json LAST
//! ```
//!
//! The same reader code as `extract` ([`crate::source`]). Packs are pool buffers (`--memory-limit`), handed to the
//! HTTP client without a copy; an uploader returns its buffer when the request is done, so uploads in flight ×
//! object size is what the budget holds. The index is written only after every pack's PUT succeeded and the
//! streams proved complete: a put that fails or is interrupted leaves no index, and `get` and `list` know it is
//! incomplete.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use crossbeam_channel::Receiver;
use proto::cancel::{recv, send, Cancel};
use proto::chunk::{encode_eof, encode_payload_header, MAX_HEADER_LEN};
use proto::manifest::{Manifest, MANIFEST_NAME};
use proto::pool::{BufferPool, PooledBuffer};
use proto::{ChunkKind, CrcPiece};
use runtime::failure::Failure;
use runtime::progress::{Counters, Progress, ProgressMode};
use runtime::signals::Signals;
use runtime::size::human;
use store::Store;

use crate::input::{open_inputs, Input, InputStream};
use crate::layout::{self, BackupIndex, Pack, StoredStream};
use crate::source::{check_markers, missing_manifest, SameBackup, StreamEnd, StreamSource};

/// Validated `put` settings.
#[derive(Debug, Clone)]
pub struct PutConfig {
    /// The backup's name.
    pub name: String,
    /// Where the streams come from.
    pub input: Input,
    /// `--idle-timeout`.
    pub idle_timeout: Option<std::time::Duration>,
    /// Largest chunk payload accepted.
    pub max_chunk: usize,
    /// Target pack size.
    pub object_size: usize,
    /// Pack buffers (the memory budget's share for packs).
    pub packs: usize,
    /// Uploads in flight.
    pub parallel: usize,
    /// Largest manifest accepted (held in memory).
    pub manifest_limit: u64,
    /// Progress display.
    pub progress: ProgressMode,
}

/// What one reader hands an uploader.
struct Upload {
    key: String,
    data: PooledBuffer,
}

/// A stream's packs and what its chunks said, once it has ended.
struct StreamPut {
    end: StreamEnd,
    packs: Vec<Pack>,
    files: u64,
    bytes: u64,
    manifest: Option<Vec<u8>>,
}

/// Runs a put; returns the one-line summary. Any failure says how to clean up.
pub fn run(config: &PutConfig, store: &dyn Store, signals: &Signals) -> Result<String> {
    let cancel = Cancel::new();
    signals.watch(&cancel);
    let started = Instant::now();
    let result = put(config, store, signals, &cancel);
    let result = match signals.error() {
        Some(error) => Err(error),
        None => result,
    };
    result
        .map_err(|e| {
            // Whether anything was stored decides the advice (a refused existing NAME is not ours to delete).
            let exists = e.to_string().contains("already exists");
            let delete = format!("`consumer delete {} --storage {}`", config.name, store.describe());
            let advice = match store.list(&config.name) {
                _ if exists => String::new(),
                Ok(objects) if objects.is_empty() => String::new(),
                Ok(_) => format!("; remove what it stored with {delete}"),
                // The store cannot say (it is down): it may hold some objects.
                Err(_) => format!("; once the store answers again, remove what it may have stored with {delete}"),
            };
            e.context(format!(
                "the put of {} to {} did not complete and is not listed as complete{advice}",
                config.name,
                store.describe()
            ))
        })
        .map(|summary| format!("{summary} in {:.2} s", started.elapsed().as_secs_f64()))
}

fn put(config: &PutConfig, store: &dyn Store, signals: &Signals, cancel: &Cancel) -> Result<String> {
    layout::check_name(&config.name)?;
    store.ensure_container()?;
    if !store.list(&config.name)?.is_empty() {
        bail!(
            "backup {} already exists in {} (choose another name, or remove it with `consumer delete {}`)",
            config.name,
            store.describe(),
            config.name
        );
    }
    let (inputs, _fifos) = open_inputs(&config.input, config.idle_timeout, cancel)?;
    put_streams(config, store, inputs, signals, cancel)
}

/// Stores `inputs` (the streams, in order) as backup `config.name`: the whole put once the streams are open.
pub fn put_streams(
    config: &PutConfig,
    store: &dyn Store,
    inputs: Vec<InputStream>,
    signals: &Signals,
    cancel: &Cancel,
) -> Result<String> {
    let stream_count = inputs.len();
    let capacity = config.object_size.max(config.max_chunk + MAX_HEADER_LEN);
    let packs = BufferPool::new(config.packs, capacity);
    let failure = Failure::new(cancel.clone());
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(config.progress, Arc::clone(&counters), "put");
    let same_backup = Arc::new(SameBackup::default());
    let uploaded = AtomicU64::new(0);
    let (upload_sender, upload_receiver) = crossbeam_channel::bounded::<Upload>(config.packs);

    let streams: Vec<Option<StreamPut>> = thread::scope(|scope| {
        let uploaders: Vec<_> = (0..config.parallel)
            .map(|index| {
                let (jobs, failure, uploaded) = (upload_receiver.clone(), &failure, &uploaded);
                let name = format!("upload-{index}");
                thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, move || {
                        failure.run_stage(&name, || upload(&jobs, store, cancel, uploaded));
                    })
                    .expect("spawn uploader")
            })
            .collect();
        drop(upload_receiver);
        let readers: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| {
                let source = StreamSource::new(
                    index,
                    input,
                    config.max_chunk as u64,
                    false,
                    stream_count,
                    Arc::clone(&same_backup),
                )
                .pass_marker(true);
                let (uploads, packs, failure, counters) = (upload_sender.clone(), &packs, &failure, &counters);
                let name = format!("reader-{index}");
                thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, move || {
                        failure.run_stage(&name, || read_stream(config, source, &uploads, packs, cancel, counters))
                    })
                    .expect("spawn reader")
            })
            .collect();
        drop(upload_sender);
        let streams = readers.into_iter().map(|r| failure.joined(r.join(), "reader").flatten()).collect();
        for uploader in uploaders {
            failure.joined(uploader.join(), "upload");
        }
        streams
    });
    progress.stop();
    if let Some(error) = signals.error() {
        return Err(error);
    }
    if let Some(error) = failure.take() {
        return Err(error);
    }
    let streams: Vec<StreamPut> = streams
        .into_iter()
        .map(|s| s.ok_or_else(|| anyhow!("a stream reader stopped unexpectedly")))
        .collect::<Result<_>>()?;
    let ends: Vec<StreamEnd> = streams.iter().map(|s| s.end.clone()).collect();
    if ends.iter().all(|end| end.chunks == 0) {
        bail!("no data: every stream ended before its first chunk (did the producer fail?)");
    }

    // Prove before claiming: a stream of ours must carry its manifest, and match it chunk for chunk.
    let ours = check_markers(&ends)?;
    let manifest_bytes = streams.iter().find_map(|s| s.manifest.clone());
    let manifest = match (&ours, &manifest_bytes) {
        (Some(id), None) => return Err(missing_manifest(&ends, id)),
        (_, Some(bytes)) => Some(Manifest::from_json(bytes).context("cannot read the stream's manifest")?),
        (None, None) => {
            log::warn!(
                "the stream carries no {MANIFEST_NAME} (not made by our producer?): stored as it came, but its \
                 completeness is unproven (chunk CRCs and offsets were checked)"
            );
            None
        }
    };
    if let Some(manifest) = &manifest {
        if manifest.backup_id != ours {
            bail!("the manifest's backup id does not match the streams' markers: refusing it");
        }
        crate::extract::check_streams(manifest, &ends)?;
        store.put(
            &layout::object_key(&config.name, layout::MANIFEST_OBJECT),
            Bytes::from(manifest_bytes.clone().unwrap_or_default()),
        )?;
    }
    let files = match &manifest {
        Some(manifest) => manifest.files.len() as u64,
        None => streams.iter().map(|s| s.files).sum(),
    };
    let bytes = match &manifest {
        Some(manifest) => manifest.files.iter().map(|f| f.size).sum(),
        None => streams.iter().map(|s| s.bytes).sum(),
    };
    let index = BackupIndex {
        format: layout::INDEX_FORMAT,
        name: config.name.clone(),
        tool: format!("consumer {}", env!("CARGO_PKG_VERSION")),
        created_unix: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        backup_id: ours,
        proven: manifest.is_some(),
        files,
        bytes,
        streams: streams
            .into_iter()
            .map(|s| StoredStream {
                index: s.end.index as u32,
                chunks: s.end.chunks,
                bytes: s.end.bytes,
                packs: s.packs,
            })
            .collect(),
    };
    let objects: usize = index.streams.iter().map(|s| s.packs.len()).sum();
    // The index last: its existence is what makes the backup complete.
    store.put(&layout::object_key(&config.name, layout::INDEX_NAME), Bytes::from(index.to_json()))?;
    let proof = if index.proven { "proven against its manifest" } else { "completeness unproven (no manifest)" };
    Ok(format!(
        "stored {} as {files} files, {} of content, {} streamed, in {objects} objects to {}; {proof}",
        config.name,
        human(bytes),
        human(index.streams.iter().map(|s| s.bytes).sum()),
        store.describe()
    ))
}

/// One reader: its stream's chunks, verbatim, into packs; full packs to the uploaders.
fn read_stream(
    config: &PutConfig,
    mut source: StreamSource,
    uploads: &crossbeam_channel::Sender<Upload>,
    packs: &BufferPool,
    cancel: &Cancel,
    counters: &Counters,
) -> Result<StreamPut> {
    let index = source.index();
    let mut payload = Vec::new();
    let mut header = Vec::with_capacity(MAX_HEADER_LEN);
    let mut pack: Option<PooledBuffer> = None;
    let mut meta = Vec::new();
    let (mut pack_chunks, mut pack_crc) = (0u64, CrcPiece::default());
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut manifest: Option<Vec<u8>> = None;
    let mut flush = |pack: &mut Option<PooledBuffer>, chunks: &mut u64, crc: &mut CrcPiece| -> Result<()> {
        let Some(data) = pack.take() else { return Ok(()) };
        let key = layout::pack_key(&config.name, index, meta.len() as u64);
        meta.push(Pack { key: key.clone(), size: data.len() as u64, chunks: *chunks, crc32: crc.crc });
        (*chunks, *crc) = (0, CrcPiece::default());
        send(uploads, Upload { key, data }, cancel)?;
        Ok(())
    };
    while let Some(chunk) = source.next_chunk(&mut payload)? {
        let h = &chunk.header;
        header.clear();
        match h.kind {
            ChunkKind::Payload => encode_payload_header(&mut header, &h.path, h.file_offset, h.payload_len, h.checksum),
            ChunkKind::Eof => encode_eof(&mut header, &h.path),
        }
        let need = header.len() + payload.len() * usize::from(h.kind == ChunkKind::Payload);
        if pack.as_ref().is_some_and(|p| p.len() + need > config.object_size) {
            flush(&mut pack, &mut pack_chunks, &mut pack_crc)?;
        }
        let buffer = match &mut pack {
            Some(buffer) => buffer,
            None => pack.insert(packs.take(cancel)?),
        };
        let start = buffer.len();
        buffer.set_len(start + need);
        buffer[start..start + header.len()].copy_from_slice(&header);
        if h.kind == ChunkKind::Payload {
            buffer[start + header.len()..].copy_from_slice(&payload);
        }
        pack_crc = pack_crc.append(CrcPiece::of(&buffer[start..]));
        pack_chunks += 1;
        if chunk.marker {
            continue;
        }
        match h.kind {
            ChunkKind::Payload => {
                bytes += h.payload_len;
                counters.bytes_done.fetch_add(h.payload_len, Ordering::Relaxed);
                if h.path == MANIFEST_NAME.as_bytes() {
                    let captured = manifest.get_or_insert_with(Vec::new);
                    if h.file_offset != captured.len() as u64 || h.file_offset + h.payload_len > config.manifest_limit {
                        bail!(
                            "{}: {MANIFEST_NAME} chunks out of order or larger than --memory-limit",
                            source.describe()
                        );
                    }
                    captured.extend_from_slice(&payload);
                }
            }
            ChunkKind::Eof => files += 1,
        }
    }
    flush(&mut pack, &mut pack_chunks, &mut pack_crc)?;
    let end = source.finish();
    // The manifest and the marker are not files of the backup.
    let files = files.saturating_sub(u64::from(manifest.is_some()));
    Ok(StreamPut { end, packs: meta, files, bytes, manifest })
}

/// One uploader: packs to the store; the pack's buffer goes back to the pool when the client is done with it.
fn upload(jobs: &Receiver<Upload>, store: &dyn Store, cancel: &Cancel, uploaded: &AtomicU64) -> Result<()> {
    while let Some(Upload { key, data }) = recv(jobs, cancel)? {
        let size = data.len() as u64;
        store.put(&key, Bytes::from_owner(data))?;
        uploaded.fetch_add(size, Ordering::Relaxed);
    }
    Ok(())
}
