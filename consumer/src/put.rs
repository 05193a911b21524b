//! `consumer put NAME`: one stream (STDIN) or N pipes into object storage, in parallel, proven before it counts.
//!
//! ```text
//! claim NAME ─► stream i ─► reader i (StreamSource: parse, CRC, marker) ─► pack i (a pool buffer; whole chunks)
//!                                                                            │ full (--object-size)
//!                                                                            ▼
//!                                             uploaders (--parallel) ─► <NAME>/<PUT>/<i>/<seq>.xbs
//! all streams ended cleanly ─► prove (marker ⇒ manifest, stream counts) ─► <NAME>/<PUT>/backup-manifest.json
//!   ─► <NAME>/index.json LAST, create-only ─► read back: ours, or another put's (then ours is removed)
//! ```
//!
//! The same reader code as `extract` ([`crate::source`]). Packs are pool buffers (`--memory-limit`), handed to the
//! HTTP client without a copy; an uploader returns its buffer when the request is done, so uploads in flight ×
//! object size is what the budget holds. The index is written only after every pack's PUT succeeded and the
//! streams proved complete: a put that fails or is interrupted leaves no index, and `get` and `list` know it is
//! incomplete.
//!
//! Claiming NAME first, and leaving only what is this put's to leave, is [`crate::claim`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use crossbeam_channel::Receiver;
use proto::MAX_HEADER_LEN;
use proto::{ChunkKind, CrcPiece};
use proto::{Manifest, MANIFEST_NAME};
use runtime::budget::MemoryBudget;
use runtime::cancel::{recv, Cancel};
use runtime::failure::Failure;
use runtime::pool::BufferPool;
use runtime::progress::{Counters, Progress, ProgressMode};
use runtime::signals::Signals;
use runtime::size::{human, size_arg};
use store::Store;

use crate::claim::{claim, release, NameTaken};
use crate::input::{open_inputs, InputStream};
use crate::layout::{self, BackupIndex, Claim, Pack, StoredStream};
use crate::pack::{Packer, Upload};
use crate::source::{check_markers, missing_manifest, SameBackup, StreamEnd, StreamSource};
use transport::{End, Endpoint};

/// Validated `put` settings.
#[derive(Debug, Clone)]
pub struct PutConfig {
    /// The backup's name.
    pub name: String,
    /// Where the streams come from.
    pub input: Endpoint,
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
    /// `--encrypt-recipient` and friends: the key a foreign stream is encrypted with on its way.
    pub encrypt: Option<Arc<crypt::BackupKey>>,
}

/// The size of a pack buffer: `--object-size`, or room for the largest chunk it must take (a foreign chunk, or
/// a sealed one).
fn pack_capacity(object_size: usize, max_chunk: usize, encrypt: Option<&crypt::BackupKey>) -> usize {
    let sealed = encrypt.map_or(0, crate::put_seal::largest_chunk);
    object_size.max(max_chunk.max(sealed) + MAX_HEADER_LEN)
}

/// A stream's packs and what its chunks said, once it has ended.
struct StreamPut {
    end: StreamEnd,
    packs: Vec<Pack>,
    /// The parts of its table of contents.
    toc: Vec<Pack>,
    files: u64,
    bytes: u64,
    manifest: Option<Vec<u8>>,
    /// Encrypting: the records of the files sealed, and what the stored stream came to (chunks, encoded bytes).
    sealed: Option<(Vec<proto::FileRecord>, u64, u64)>,
}

impl PutConfig {
    /// Validates `put` arguments.
    pub fn from_args(args: &crate::cli::PutArgs, verbose: bool, quiet: bool) -> Result<PutConfig> {
        crate::layout::check_name(&args.name)?;
        let input = Endpoint::from_args(&args.fifo, End::Read)?;
        let max_chunk = size_arg(&args.max_chunk_size, "--max-chunk-size")?;
        if !(4096..=1 << 30).contains(&max_chunk) {
            bail!("--max-chunk-size must be between 4K and 1G");
        }
        let object_size = size_arg(&args.object_size, "--object-size")?;
        if !(64 << 10..=4 << 30).contains(&object_size) {
            bail!("--object-size must be between 64K and 4G");
        }
        let memory_limit = size_arg(&args.memory_limit, "--memory-limit")?;
        if args.parallel == 0 {
            bail!("--parallel must be at least 1");
        }
        let streams = input.stream_count() as u64;
        let encrypt = args.encrypt.backup_key()?.map(Arc::new);
        let capacity = pack_capacity(object_size as usize, max_chunk as usize, encrypt.as_deref()) as u64;
        // Each reader holds one chunk being parsed and fills one pack; the rest are uploads in flight. Sealing, a
        // reader also holds what it seals: up to a chunk not yet sealed and a chunk sealed.
        let held = if encrypt.is_some() { 3 } else { 1 };
        let for_packs = memory_limit.saturating_sub(held * streams * max_chunk);
        let packs = (for_packs / capacity) as usize;
        let needed = streams as usize + 1;
        if packs < needed {
            bail!(
            "--memory-limit {} holds {packs} packs of {} after {streams} chunk buffers of --max-chunk-size {}; {needed} \
             are needed (one per stream and one uploading): raise --memory-limit or lower --object-size",
            human(memory_limit),
            human(capacity),
            human(max_chunk)
        );
        }
        let mut budget = MemoryBudget::new(memory_limit);
        budget.buffers("chunk buffers", held as usize * streams as usize, max_chunk);
        let packs = budget.buffers("packs", packs.min(streams as usize + args.parallel), capacity);
        log::debug!("{budget}");
        Ok(PutConfig {
            name: args.name.clone(),
            input,
            idle_timeout: args.fifo.idle_timeout(),
            max_chunk: max_chunk as usize,
            object_size: object_size as usize,
            packs,
            parallel: args.parallel,
            manifest_limit: memory_limit,
            progress: ProgressMode::choose(verbose, quiet, true),
            encrypt,
        })
    }
}

/// Runs a put; returns the one-line summary. Any failure says how to clean up — only ever what this put stored:
/// a NAME another put holds is never this put's to delete. (Whether a later put may succeed is said by the
/// binary, from the error's kind: [`crate::storage::failure_kind`].)
pub fn run(config: &PutConfig, store: &dyn Store, signals: &Signals) -> Result<String> {
    let cancel = Cancel::new();
    signals.watch(&cancel);
    let started = Instant::now();
    let (name, url) = (&config.name, store.describe());
    let claim = match claim(name, store) {
        Ok(claim) => claim,
        Err(e) => {
            let e = signals.error().unwrap_or(e);
            return Err(e.context(format!("the put of {name} to {url} stopped before storing anything")));
        }
    };
    let result = open_inputs(&config.input, config.idle_timeout, &cancel)
        .and_then(|(inputs, _fifos)| put_streams(config, store, &claim, inputs, signals, &cancel));
    match (result, signals.error()) {
        (Ok(summary), None) => Ok(format!("{summary} in {:.2} s", started.elapsed().as_secs_f64())),
        // Stopped once the index was stored: the backup is complete, and the run still says it was stopped.
        (Ok(summary), Some(stop)) => {
            Err(stop.context(format!("{summary}: the backup is complete, but the put was stopped as it ended")))
        }
        // Another put's index was stored first: this put removed its own objects.
        (Err(e), _) if e.downcast_ref::<NameTaken>().is_some() => {
            Err(e.context(format!("the put of {name} to {url} did not store it")))
        }
        (Err(e), stop) => {
            let e = stop.unwrap_or(e);
            release(name, store, &claim);
            // This put holds NAME: whatever is under it is this put's.
            let delete = format!("`consumer delete {name} --storage {url}`");
            let advice = match store.list(name) {
                Ok(objects) if objects.is_empty() => String::new(),
                Ok(_) => format!("; remove what it stored with {delete}"),
                // The store cannot say (it is down): it may hold some objects.
                Err(_) => format!("; once the store answers again, remove what it may have stored with {delete}"),
            };
            Err(e.context(format!("the put of {name} to {url} did not complete and is not listed as complete{advice}")))
        }
    }
}

/// Stores `inputs` (the streams, in order) as backup `config.name`, which `claim` holds (from [`claim`]): the whole
/// put once the streams are open.
pub fn put_streams(
    config: &PutConfig,
    store: &dyn Store,
    claim: &Claim,
    inputs: Vec<InputStream>,
    signals: &Signals,
    cancel: &Cancel,
) -> Result<String> {
    let stream_count = inputs.len();
    let capacity = pack_capacity(config.object_size, config.max_chunk, config.encrypt.as_deref());
    let packs = BufferPool::new(config.packs, capacity);
    let failure = Failure::new(cancel.clone());
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(config.progress, Arc::clone(&counters), "put");
    let same_backup = Arc::new(SameBackup::default());
    let uploaded = AtomicU64::new(0);
    let (upload_sender, upload_receiver) = crossbeam_channel::bounded::<Upload>(config.packs);

    let streams: Vec<Option<StreamPut>> = thread::scope(|scope| {
        let (failure, uploaded) = (&failure, &uploaded);
        let uploaders: Vec<_> = (0..config.parallel)
            .map(|index| {
                let jobs = upload_receiver.clone();
                failure.spawn_stage(scope, format!("upload-{index}"), move || upload(&jobs, store, cancel, uploaded))
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
                let (uploads, packs, counters) = (upload_sender.clone(), &packs, &counters);
                failure.spawn_stage(scope, format!("reader-{index}"), move || {
                    read_stream(config, &claim.put_id, source, &uploads, packs, cancel, counters)
                })
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
    failure.outcome(signals)?;
    let mut streams: Vec<StreamPut> = streams
        .into_iter()
        .map(|s| s.ok_or_else(|| anyhow!("a stream reader stopped unexpectedly")))
        .collect::<Result<_>>()?;
    let ends: Vec<StreamEnd> = streams.iter().map(|s| s.end.clone()).collect();
    if ends.iter().all(|end| end.chunks == 0) {
        bail!("no data: every stream ended before its first chunk (did the producer fail?)");
    }
    // Encrypted on its way: the manifests are made here, from what was sealed, and stored as one more pack of
    // stream 0 (they end it, as the producer's end its stream 0).
    let sealed_manifest = match config.encrypt.as_deref() {
        Some(key) => Some(store_sealed_manifests(config, store, claim, key, &mut streams)?),
        None => None,
    };

    // Prove before claiming: a stream of ours must carry its manifest, and match it chunk for chunk.
    let ours = check_markers(&ends)?;
    let manifest_bytes = sealed_manifest.or_else(|| streams.iter().find_map(|s| s.manifest.clone()));
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
        // Made here when encrypting (from the sealed stream's own counts): nothing to check it against.
        if config.encrypt.is_none() {
            crate::proof::check_streams(manifest, &ends)?;
        }
        store.put(
            &layout::manifest_key(&config.name, Some(&claim.put_id)),
            Bytes::from(manifest_bytes.clone().unwrap_or_default()),
        )?;
    }
    let files = match &manifest {
        // The encrypted manifest of an encrypted backup is listed, but is not one of its files.
        Some(manifest) => {
            manifest.files.iter().filter(|f| f.path.0 != proto::SECRET_MANIFEST_NAME.as_bytes()).count() as u64
        }
        None => streams.iter().map(|s| s.files).sum(),
    };
    let bytes = match &manifest {
        Some(manifest) => manifest.files.iter().map(|f| f.size).sum(),
        None => streams.iter().map(|s| s.bytes).sum(),
    };
    let mut index = BackupIndex {
        format: layout::INDEX_FORMAT,
        name: config.name.clone(),
        tool: format!("consumer {}", env!("CARGO_PKG_VERSION")),
        created_unix: layout::unix_now(),
        put_id: Some(claim.put_id.clone()),
        backup_id: ours,
        proven: manifest.is_some(),
        files,
        bytes,
        streams: streams
            .into_iter()
            .map(|s| {
                // Stored as sealed: what the stored stream holds.
                let (chunks, bytes) = s.sealed.as_ref().map_or((s.end.chunks, s.end.bytes), |&(_, c, b)| (c, b));
                StoredStream { index: s.end.index as u32, chunks, bytes, packs: s.packs, toc: s.toc }
            })
            .collect(),
    };
    let objects: usize = index.streams.iter().map(|s| s.packs.len()).sum();
    record_versions(store, &mut index, claim)?;
    // The index last: its existence is what makes the backup complete.
    commit(store, &index, claim)?;
    let proof = match (index.proven, config.encrypt.as_deref()) {
        (true, Some(key)) => format!("proven against its manifest; encrypted (age), backup key {}", key.fingerprint()),
        (true, None) => "proven against its manifest".to_string(),
        (false, _) => "completeness unproven (no manifest)".to_string(),
    };
    Ok(format!(
        "stored {} as {files} files, {} of content, {} streamed, in {objects} objects to {}; {proof}",
        config.name,
        human(bytes),
        human(index.streams.iter().map(|s| s.bytes).sum()),
        store.describe()
    ))
}

/// The encrypted and clear manifests of a foreign stream sealed on its way ([`crate::put_seal::manifests`]), stored
/// as one more pack at the end of stream 0; returns the clear manifest.
fn store_sealed_manifests(
    config: &PutConfig,
    store: &dyn Store,
    claim: &Claim,
    key: &crypt::BackupKey,
    streams: &mut [StreamPut],
) -> Result<Vec<u8>> {
    let mut records: Vec<proto::FileRecord> = Vec::new();
    let mut counts = Vec::new();
    for (index, stream) in streams.iter_mut().enumerate() {
        let (sealed, chunks, bytes) = stream.sealed.as_mut().expect("every reader seals when encrypting");
        records.append(sealed);
        counts.push(proto::StreamRecord { index: index as u32, chunks: *chunks, bytes: *bytes });
    }
    // A path on two streams would be two files of one name: refused now, not when the backup is restored.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = records.iter().find(|record| !seen.insert(record.path.0.as_slice())) {
        bail!("{} appears on two streams: refusing to store it as one backup", twice.path.display());
    }
    let (chunks_bytes, chunks, clear) = crate::put_seal::manifests(key, records, counts, layout::unix_now())?;
    let first = &mut streams[0];
    let key = layout::pack_key(&config.name, &claim.put_id, 0, first.packs.len() as u64);
    let pack = Pack {
        key: key.clone(),
        size: chunks_bytes.len() as u64,
        chunks,
        crc32: CrcPiece::of(&chunks_bytes).crc,
        e_tag: None,
    };
    let size = pack.size;
    store.put(&key, Bytes::from(chunks_bytes))?;
    first.packs.push(pack);
    if let Some((_, stream_chunks, stream_bytes)) = &mut first.sealed {
        (*stream_chunks, *stream_bytes) = (*stream_chunks + chunks, *stream_bytes + size);
    }
    Ok(clear)
}

/// Lists what this put stored and holds it against `index` before the index is written: this put's claim must
/// still be there (a retention job that removes an unfinished put removes its claim first), every pack and part of
/// the table of contents must be there with the size it was sent with (a store that acknowledged a PUT it did not
/// keep is caught here, not at restore time), and each one's ETag goes into the index for `consumer check`.
fn record_versions(store: &dyn Store, index: &mut BackupIndex, claim: &Claim) -> Result<()> {
    let listed: std::collections::HashMap<String, store::ObjectInfo> =
        store.list(&index.name)?.into_iter().map(|o| (o.key.clone(), o)).collect();
    let claim_key = layout::claim_key(&index.name, &claim.put_id);
    let index_key = layout::object_key(&index.name, layout::INDEX_NAME);
    // With another put's index there, the commit finds the name taken and removes this put's objects.
    if !listed.contains_key(&claim_key) && !listed.contains_key(&index_key) {
        let mine = format!("{}/{}", index.name, claim.put_id);
        for object in store.list(&mine)? {
            store.delete(&object.key)?;
        }
        bail!(
            "this put's claim {claim_key} is gone from {} (removed by `consumer delete`?): its objects were removed \
             and the backup is not stored",
            store.describe()
        );
    }
    for object in index.streams.iter_mut().flat_map(|s| s.packs.iter_mut().chain(s.toc.iter_mut())) {
        match listed.get(&object.key) {
            Some(found) if found.size == object.size => object.e_tag = found.e_tag.clone(),
            Some(found) => bail!(
                "{} lists {} with {} bytes after it was stored with {}: the backup is not complete",
                store.describe(),
                object.key,
                found.size,
                object.size
            ),
            None => bail!(
                "{} does not list {} after it was stored: the backup is not complete",
                store.describe(),
                object.key
            ),
        }
    }
    if index.proven && !listed.contains_key(&index.manifest_key()) {
        bail!("{} does not list {} after it was stored", store.describe(), index.manifest_key());
    }
    if index.to_json().len() as u64 > layout::MAX_INDEX {
        bail!(
            "the index of {} would be larger than the {} a get reads: store it with a larger --object-size",
            index.name,
            human(layout::MAX_INDEX)
        );
    }
    Ok(())
}

/// Stores `index` as the backup's index, only if no index exists, and reads it back: the backup is this put's only
/// if the stored index is this one (a create-only put whose reply was lost and that was sent again finds its own
/// index; a service that ignores the condition is caught by the read). Otherwise this put's objects are removed.
fn commit(store: &dyn Store, index: &BackupIndex, claim: &Claim) -> Result<()> {
    let key = layout::object_key(&index.name, layout::INDEX_NAME);
    let ours = index.to_json();
    let created = match store.put_new(&key, Bytes::from(ours.clone())) {
        Ok(()) => true,
        Err(e) if e.is_already_exists() => false,
        // The request may have failed after the object landed (a timeout on the reply): it is stored iff the
        // store holds exactly this index now.
        Err(e) => match store::get_small(store, &key, layout::MAX_INDEX) {
            Ok(stored) if stored == ours => return Ok(()),
            _ => return Err(e.into()),
        },
    };
    let stored = match store::get_small(store, &key, layout::MAX_INDEX) {
        Ok(stored) => stored,
        // Created (not refused) by a store that honours create-only puts, it is ours; the read only guards against
        // services that ignore the condition.
        Err(e) if created => {
            log::warn!("{key} is stored, but could not be read back to confirm it ({e}); `consumer list` shows it");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if stored == ours {
        return Ok(());
    }
    let winner = BackupIndex::from_json(&stored).ok().and_then(|index| index.put_id).unwrap_or_else(|| "?".into());
    let mine = format!("{}/{}", index.name, claim.put_id);
    for object in store.list(&mine)? {
        store.delete(&object.key)?;
    }
    store.delete(&layout::claim_key(&index.name, &claim.put_id))?;
    Err(NameTaken(format!(
        "another put (put {winner}) stored backup {} first; this put's objects were removed and the stored backup is \
         the other one",
        index.name
    ))
    .into())
}

/// One reader: its stream's chunks into packs, verbatim, or (`--encrypt-recipient`) each file sealed on its way
/// ([`crate::put_seal`]); full packs to the uploaders.
fn read_stream(
    config: &PutConfig,
    put: &str,
    mut source: StreamSource,
    uploads: &crossbeam_channel::Sender<Upload>,
    packs: &BufferPool,
    cancel: &Cancel,
    counters: &Counters,
) -> Result<StreamPut> {
    let index = source.index();
    let mut payload = Vec::new();
    let mut packer = Packer::new(config, put, index, uploads, packs, cancel);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut manifest: Option<Vec<u8>> = None;
    let mtime = layout::unix_now() as i64;
    let mut sealer = config.encrypt.as_deref().map(|key| crate::put_seal::ForeignSealer::new(key, mtime));
    while let Some(chunk) = source.next_chunk(&mut payload)? {
        let h = &chunk.header;
        if let Some(sealer) = &mut sealer {
            if chunk.marker {
                bail!(
                    "{}: this stream was made by our producer: encrypt it there (producer --encrypt-recipient); put \
                     --encrypt-recipient is for foreign streams (mariadb-backup, mbstream -c)",
                    source.describe()
                );
            }
            let mut emit = |path: &[u8], offset: u64, sealed: &[u8]| {
                packer.append(ChunkKind::Payload, path, offset, sealed, CrcPiece::of(sealed).crc)
            };
            match h.kind {
                ChunkKind::Payload => {
                    sealer.payload(&h.path, h.file_offset, &payload, &mut emit)?;
                    bytes += h.payload_len;
                    counters.bytes_done.fetch_add(h.payload_len, Ordering::Relaxed);
                }
                ChunkKind::Eof => {
                    let wire = sealer.end(&h.path, &mut emit)?;
                    packer.append(ChunkKind::Eof, &wire, 0, &[], 0)?;
                    files += 1;
                }
            }
            continue;
        }
        packer.append(h.kind, &h.path, h.file_offset, &payload, h.checksum)?;
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
    packer.finish()?;
    let end = source.finish();
    let sealed = match sealer {
        Some(sealer) => Some((sealer.finish()?, packer.written().0, packer.written().1)),
        None => None,
    };
    // The manifest and the marker are not files of the backup.
    let files = files.saturating_sub(u64::from(manifest.is_some()));
    let (packs, toc) = packer.into_packs();
    Ok(StreamPut { end, packs, toc, files, bytes, manifest, sealed })
}

/// One uploader: packs to the store; the pack's buffer goes back to the pool when the client is done with it.
fn upload(jobs: &Receiver<Upload>, store: &dyn Store, cancel: &Cancel, uploaded: &AtomicU64) -> Result<()> {
    while let Some(Upload { key, data }) = recv(jobs, cancel)? {
        let size = data.len() as u64;
        store.put(&key, data)?;
        uploaded.fetch_add(size, Ordering::Relaxed);
    }
    Ok(())
}
