//! The writer: one thread owns the files whose paths hash to it, so no locks are needed, while chunks of one file
//! may come from any stream in any order. It keeps what each file's final check needs, writes small chunks at
//! their offsets into the staging directory itself and hands large ones to whichever writer is free (`wide.rs`),
//! and checks each file against its manifest record: when the record comes, while the stream still flows, if the
//! file has come whole; else when it does (`writer/records.rs`), or in the closing phases.
//!
//! Per-file memory is bounded: a writer keeps a few dozen bytes for each ended file, up to an eighth of
//! `--memory-limit`, and beyond that (for streams of ours, where a manifest must follow) forgets whole small files
//! and checks each from disk when its record comes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{select, Receiver};
use proto::{ChunkHeader, ChunkKind, CrcPiece, FileRecord, MANIFEST_NAME};
use runtime::cancel::{Cancel, Cancelled};
use sha1::{Digest as _, Sha1};

use crate::config::ExtractConfig;
use crate::coverage::Coverage;
use crate::decrypt_stage::Keyring;
use crate::dispatch::{checked_path, Announced, ChunkMessage, Decoded, Verified, WriterMessage, MISSING_EXAMPLES};
use crate::file_check::{check_file, check_sealed, coverage_of, crc_of_file, SealedEnds};
use crate::spill::RecordSpill;
use crate::target::{PartialFile, Target};
use crate::wide::{FileLength, OpenFile, WideWrites, WriteJob};

mod records;
mod whole;

/// One writer's files.
pub(crate) struct Writer<'a> {
    /// Its number: the chunks of a batch it owns carry it.
    index: usize,
    target: &'a Target,
    /// Files still being written; ended with bytes out of order, or decoded (decompressed or decrypted); or set
    /// aside at their end while a write still holds them (`unsettled`).
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
    /// Where large chunks' bytes are handed to whichever writer is free.
    wide: &'a WideWrites,
    /// Files whose end-of-file chunk came while a handed-over write still held them, or that got a chunk after it:
    /// ended (see [`Writer::end_file`]) once no write holds them. Looked at with each message: about as many as
    /// writes in flight.
    unsettled: Vec<Vec<u8>>,
    /// What the markers announced: whether to hash files as they arrive, so a SHA-1 need not be re-read (read
    /// when a file's first chunk arrives), and whether a manifest must follow.
    announced: &'a Announced,
    /// With `--decrypt`: the keyring, told when a file has come whole so that its nonce is forgotten.
    keyring: Option<&'a Keyring>,
    /// Manifest records that came before their file had come whole: checked when it has, or at the end. Up to
    /// half `ended_limit` of them (each is about twice an ended file's size); further ones wait in `spill`.
    parked: HashMap<Box<[u8]>, FileRecord>,
    spill: RecordSpill,
    /// The keys of ended files that were given [`Ended::held`], oldest first (some since checked: their
    /// descriptor is gone). Never longer than `held_limit`, so no more descriptors are held.
    held: VecDeque<Box<[u8]>>,
    /// How many descriptors this writer may hold for records to come: a share of RLIMIT_NOFILE (none when
    /// decrypting, where files are checked against the encrypted manifest read at the end).
    held_limit: usize,
    /// Every stream has ended: a record is checked when it comes, whatever it finds.
    streams_ended: bool,
}

/// Memory per ended file kept by a writer, for [`Writer::ended_limit`]: its key, its record and the map's share.
const ENDED_BYTES: u64 = 200;

/// The most descriptors a writer holds for records to come ([`Ended::held`]): a producer of ours sends a batch's
/// records right after the batch (at most 512 files), and a writer gets about its share of them.
const HELD_MAX: usize = 256;

/// A file whose end-of-file chunk came after all its bytes, in order, and is closed: what its final check needs.
/// Its directory, name and path come back from its key ([`Target::partial`]): it holds no descriptor (but for a
/// bounded few, [`Ended::held`]), so a backup of more files or directories than RLIMIT_NOFILE does not run out of
/// them.
struct Ended {
    got: CrcPiece,
    /// A decompressed file's bytes as they travelled (`<path>.zst`), all in order: checked against the manifest's
    /// stored form.
    stored: Option<CrcPiece>,
    /// A decrypted file's nonce and segment ends (boxed: most files are not decrypted).
    sealed: Option<Box<SealedEnds>>,
    stream: u32,
    /// Checked against its manifest record.
    verified: bool,
    /// The SHA-1 of its bytes, when files are hashed as they arrive (boxed: most backups do not hash files).
    sha1: Option<Box<[u8; 20]>>,
    /// A whole small file still open, waiting for its record (which a producer of ours sends right after its
    /// batch), so its mode and mtime are set on the descriptor, not by name. Up to [`Writer::held_limit`] per
    /// writer; past it the oldest is closed.
    held: Option<File>,
}

/// A file being extracted.
struct Slot {
    partial: PartialFile,
    /// Open while chunks are written, shared with the writers writing its large chunks.
    file: Option<Arc<OpenFile>>,
    /// The length its writes need, and whether a descriptor is open on it.
    length: FileLength,
    /// The file's bytes as written (original bytes when decompressed).
    coverage: Coverage,
    /// For a decompressed or decrypted file, its bytes as they travelled (checked against the manifest's stored
    /// form).
    stored: Option<Coverage>,
    /// For a decrypted file: its nonce and where its segments end.
    sealed: Option<SealedEnds>,
    ended: bool,
    /// Checked against its manifest record.
    verified: bool,
    /// The stream the file's latest chunk came on, for messages.
    stream: usize,
    /// With `--digest sha1`: the SHA-1 of the bytes so far, while they arrive in order (dropped at the first chunk
    /// out of order; the file is then re-read to check it).
    sha1: Option<Sha1>,
    /// Taken up from disk with bytes in it after it was forgotten ([`Writer::take_up`]): how its decompressed bytes
    /// travelled is no longer known, so only what it holds is checked (size and CRC-32 against the record, which
    /// prove its bytes).
    stored_lost: bool,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(
        index: usize,
        target: &'a Target,
        single_stream: bool,
        config: &ExtractConfig,
        announced: &'a Announced,
        keyring: Option<&'a Keyring>,
        wide: &'a WideWrites,
    ) -> Writer<'a> {
        // An eighth of the budget, shared by the writers, holds ended files (at 256M: 167,000 of them).
        let ended_limit = (config.ended_files_memory / ENDED_BYTES / config.writers as u64).max(1024) as usize;
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
            wide,
            unsettled: Vec::new(),
            announced,
            keyring,
            parked: HashMap::new(),
            spill: RecordSpill::default(),
            held: VecDeque::new(),
            held_limit: match keyring {
                Some(_) => 0,
                None => (runtime::limits::open_file_limit() as usize / 4 / config.writers.max(1)).min(HELD_MAX),
            },
            streams_ended: false,
        }
    }

    /// Serves its own messages and, between them, any writer's handed-over writes, until every sender is gone.
    pub(crate) fn serve(&mut self, receiver: &Receiver<WriterMessage>, cancel: &Cancel) -> Result<()> {
        loop {
            cancel.check()?;
            let message = select! {
                recv(receiver) -> message => match message {
                    Ok(message) => message,
                    // Every sender is gone: finished, unless the run was cancelled.
                    Err(_) => return cancel.check().map_err(Into::into),
                },
                recv(self.wide.receiver()) -> job => {
                    if let Ok(job) = job {
                        self.wide.run(job, self.index)?;
                    }
                    continue;
                },
                recv(cancel.receiver()) -> _ => return Err(Cancelled.into()),
            };
            match message {
                WriterMessage::Chunk(chunk) => {
                    self.end_settled()?;
                    let ChunkMessage { header, key, data, decoded, stream, .. } = *chunk;
                    let placed = self
                        .write(stream, &header, &key, checked_path(&key), &data, decoded)
                        .with_context(|| chunk_context(&header, stream))?;
                    if let Some(Placed { file, offset }) = placed {
                        let (owner, stream_offset) = (self.index, header.stream_offset);
                        self.wide.hand_over(WriteJob { file, data, offset, owner, stream, stream_offset })?;
                    }
                }
                WriterMessage::Batch(batch) => {
                    self.end_settled()?;
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
                            self.write_whole(batch.stream, header, checked_path(&header.path), data)
                        } else {
                            self.write(batch.stream, header, &header.path, checked_path(&header.path), data, None)
                                .and_then(|placed| match placed {
                                    Some(placed) => placed.write_now(self.wide.sparse(), data),
                                    None => Ok(()),
                                })
                        };
                        result.with_context(|| chunk_context(header, batch.stream))?;
                    }
                }
                WriterMessage::Settle(reply) => {
                    self.wide.settle(self.index, cancel)?;
                    let _ = reply.send(());
                }
                WriterMessage::EndOfStreams(reply) => {
                    self.streams_ended = true;
                    let manifest = self.take_manifest()?;
                    let _ = reply.send(manifest);
                }
                WriterMessage::Check(records) => {
                    self.end_settled()?;
                    for (key, record) in records {
                        self.take_record(key, record)?;
                    }
                }
                WriterMessage::Verify(proven, reply) => {
                    let _ = reply.send(self.check_parked().and_then(|()| self.verify(proven)));
                }
            }
        }
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
        let length = FileLength::default();
        let file = length.open(partial.reopen_for_write()?, partial.display());
        self.forgotten -= 1;
        Ok(Slot {
            partial,
            file: Some(file),
            length,
            coverage,
            stored: None,
            sealed: None,
            ended: true,
            verified: false,
            stream,
            sha1: None,
            // Empty, nothing of it had come: its compressed bytes, if any, are all still to come.
            stored_lost: got.len > 0,
        })
    }

    /// Takes in one chunk of file `key` (at `relative`), its payload `data` (original bytes if `decoded`): the
    /// file created if it is new, and what arrived recorded. Returns where a payload's bytes go, for the caller to
    /// write or hand over (`None` for an end-of-file chunk).
    fn write(
        &mut self,
        stream: usize,
        header: &ChunkHeader,
        key: &[u8],
        relative: &Path,
        data: &[u8],
        decoded: Option<Decoded>,
    ) -> Result<Option<Placed>> {
        if let Some(ended) = self.ended.remove(key) {
            // More of a file that had ended (chunks of one file on several streams arrive in any order).
            let partial = self.target.partial(self.directory_of(relative)?, relative)?;
            if let Some(file) = ended.held {
                partial.close(file)?;
            }
            let slot = Slot {
                partial,
                file: None,
                length: FileLength::default(),
                coverage: coverage_of(ended.got)?,
                stored: ended.stored.map(coverage_of).transpose()?,
                sealed: ended.sealed.map(|sealed| *sealed),
                ended: true,
                verified: false,
                stream: ended.stream as usize,
                sha1: None,
                stored_lost: false,
            };
            self.files.insert(key.to_vec(), slot);
        }
        if !self.files.contains_key(key) {
            let slot = match self.create_or_existing(relative)? {
                Ok((partial, file)) => {
                    let length = FileLength::default();
                    let file = Some(length.open(file, partial.display()));
                    Slot {
                        partial,
                        file,
                        length,
                        coverage: Coverage::default(),
                        stored: None,
                        sealed: None,
                        ended: false,
                        verified: false,
                        stream,
                        sha1: self.announced.hash_files.load(Ordering::SeqCst).then(Sha1::new),
                        stored_lost: false,
                    }
                }
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
                if let Some(file) = slot.file.take() {
                    OpenFile::release(file)?;
                }
                if slot.length.is_open() {
                    // A handed-over write still holds it: ended once none does.
                    self.unsettled.push(key.to_vec());
                } else {
                    // Decrypting, the keyring learns first whether the file came whole (before it is compacted).
                    self.forget_nonce_if_whole(key, &header.path);
                    self.end_file(key)?;
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
                        if let Some(piece) = decoded.sealed {
                            slot.sealed.get_or_insert_with(SealedEnds::default).add(piece)?;
                        }
                        let (stored_offset, stored_piece) = decoded.stored;
                        if !slot.stored_lost {
                            slot.stored
                                .get_or_insert_with(Coverage::default)
                                .insert(stored_offset, stored_piece)
                                .map_err(|overlap| anyhow!("{overlap}"))?;
                        }
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
                    slot.file = Some(slot.length.open(slot.partial.reopen_for_write()?, slot.partial.display()));
                }
                // A chunk after the file's end (from another stream, or decoded after its `E` overtook it): the
                // descriptor goes with the write and is closed after it, so files that end before their last
                // chunk do not each keep one open until the proof; the file is ended again once that write is done.
                let ended = slot.ended;
                let file = match ended {
                    true => slot.file.take().expect("opened above"),
                    false => Arc::clone(slot.file.as_ref().expect("opened above")),
                };
                let placed = Placed { file, offset };
                if ended && !self.unsettled.iter().any(|unsettled| unsettled.as_slice() == key) {
                    self.unsettled.push(key.to_vec());
                }
                self.forget_nonce_if_whole(key, &header.path);
                return Ok(Some(placed));
            }
        }
        self.forget_nonce_if_whole(key, &header.path);
        Ok(None)
    }

    /// A file whose end-of-file chunk came and on which no descriptor is open: given its length, then, if every
    /// byte came in order, closed for good (kept as [`Ended`], or forgotten over the bound: never a decrypted one,
    /// whose nonce is checked against its record). Else it stays a slot.
    fn end_file(&mut self, key: &[u8]) -> Result<()> {
        let Some(slot) = self.files.get(key) else { return Ok(()) };
        let stored_in_order = slot.stored.as_ref().is_none_or(Coverage::is_contiguous);
        if !slot.coverage.is_contiguous() || !stored_in_order || slot.stored_lost {
            return Ok(());
        }
        slot.length.apply(&slot.partial)?;
        let got = slot.coverage.prefix();
        let awaited = self.parked.contains_key(key);
        let forget = slot.sealed.is_none() && !awaited && self.forgets(key, got);
        let slot = self.files.remove(key).expect("looked up above");
        if forget {
            self.forgotten += 1;
            return Ok(());
        }
        let ended = Ended {
            got,
            stored: slot.stored.as_ref().map(Coverage::prefix),
            sealed: slot.sealed.map(Box::new),
            stream: slot.stream as u32,
            sha1: slot.sha1.map(|sha1| Box::new(sha1.finalize().into())),
            verified: false,
            held: None,
        };
        self.ended.insert(key.into(), ended);
        if awaited {
            self.has_ended(key)?;
        }
        Ok(())
    }

    /// Ends the files set aside at their end-of-file chunk that no handed-over write holds any more.
    fn end_settled(&mut self) -> Result<()> {
        if self.unsettled.is_empty() {
            return Ok(());
        }
        for key in std::mem::take(&mut self.unsettled) {
            match self.files.get(&key) {
                Some(slot) if slot.length.is_open() => self.unsettled.push(key),
                Some(slot) if slot.ended => self.end_file(&key)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Decrypting: once file `key` has ended and every byte of its `.age` form (`wire`) is here, no chunk of it
    /// can still come on any stream, so the keyring forgets its nonce (it keeps only files in flight).
    fn forget_nonce_if_whole(&self, key: &[u8], wire: &[u8]) {
        let Some(keyring) = self.keyring else { return };
        let Some(slot) = self.files.get(key) else { return };
        let (Some(sealed), Some(stored), Some(backup)) = (&slot.sealed, &slot.stored, keyring.key()) else { return };
        if slot.ended && sealed.is_whole(stored, backup.header().len()) {
            keyring.forget(wire);
        }
    }

    /// The manifest, if this writer holds it: complete, and opened for reading (it is not checked against
    /// itself).
    fn take_manifest(&mut self) -> Result<Option<File>> {
        let key = MANIFEST_NAME.as_bytes();
        let partial = match (self.files.remove(key), self.ended.remove(key)) {
            (Some(slot), _) => {
                let mut slot = slot;
                finish(&mut slot)?;
                if !slot.ended || !slot.coverage.is_contiguous() {
                    bail!("stream {}: {MANIFEST_NAME} is incomplete: the stream was cut short", slot.stream);
                }
                // Decrypted (the encrypted manifest): it must end with its last segment.
                if let Some(sealed) = &slot.sealed {
                    sealed.check_end(&format!("the encrypted manifest ({MANIFEST_NAME}.age)"))?;
                }
                slot.partial
            }
            (None, Some(ended)) => {
                if let Some(sealed) = &ended.sealed {
                    sealed.check_end(&format!("the encrypted manifest ({MANIFEST_NAME}.age)"))?;
                }
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
            finish(slot)?;
            let display = || slot.partial.display().display().to_string();
            if !slot.ended {
                bail!("{}: the stream ended without its end-of-file chunk (cut short?)", display());
            }
            if let Some((start, end)) = slot.coverage.first_gap() {
                bail!("{}: bytes {start}..{end} never arrived", display());
            }
            let sha1 = slot.sha1.take().map(|sha1| sha1.finalize().into());
            let got = slot.coverage.prefix();
            match (&slot.sealed, self.keyring) {
                (Some(sealed), _) => check_sealed(&display(), record, sealed)?,
                // Decrypting, and not one chunk of it was decrypted: its first chunk never came.
                (None, Some(_)) => bail!("{}: its first chunk (its age header and nonce) never arrived", display()),
                (None, None) => {}
            }
            check_file(key, record, &slot.partial, got, slot.stored.as_ref(), sha1, None)?;
            self.found.files += 1;
            self.found.bytes += got.len;
        } else if let Some(ended) = self.ended.get_mut(key) {
            if std::mem::replace(&mut ended.verified, true) {
                bail!("the manifest lists {} twice: refusing it", record.path.display());
            }
            // Decrypting, an ended file keeps its segments' ends; one that ended without a payload (only its
            // end-of-file chunk came) never gave its nonce.
            match (&ended.sealed, self.keyring) {
                (Some(sealed), _) => check_sealed(&record.path.display(), record, sealed)?,
                (None, Some(_)) => {
                    bail!("{}: its first chunk (its age header and nonce) never arrived", record.path.display())
                }
                (None, None) => {}
            }
            let (got, sha1, held) = (ended.got, ended.sha1.as_deref().copied(), ended.held.take());
            self.found.on_descriptor += u64::from(held.is_some());
            let stored = ended.stored.map(coverage_of).transpose()?;
            let relative = proto::checked_relative_path(key)?;
            let partial = self.target.partial(self.directory_of(relative)?, relative)?;
            check_file(key, record, &partial, got, stored.as_ref(), sha1, held)?;
            self.found.files += 1;
            self.found.bytes += got.len;
        } else if let Some(got) = self.recall(key, record)? {
            self.found.files += 1;
            self.found.bytes += got;
        } else if self.is_staged(key)? {
            // Checked already, when its first record came.
            bail!("the manifest lists {} twice: refusing it", record.path.display());
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
        if self.keyring.is_some() {
            bail!("{}: its first chunk (its age header and nonce) never arrived", record.path.display());
        }
        let relative = proto::checked_relative_path(key)?;
        let partial = self.target.partial(self.directory_of(relative)?, relative)?;
        let Some(file) = partial.try_reopen_for_read()? else { return Ok(None) };
        let got = crc_of_file(&file, &partial, &mut self.read_back)?;
        // With a SHA-1 in the record, `check_file` reads the file back for it.
        check_file(key, record, &partial, got, None, None, None)?;
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
            finish(slot)?;
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
            let relative = proto::checked_relative_path(key)?;
            let partial = self.target.partial(self.target.directory_of(relative)?, relative)?;
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

/// Where a chunk came from, for a writer's error messages (made only when there is an error).
fn chunk_context(header: &ChunkHeader, stream: usize) -> String {
    format!("{} (chunk at stream {stream}, offset {:#x})", header.display_path(), header.stream_offset)
}

/// Closes a slot's file for good, once every write is settled, and gives it the length its writes need.
fn finish(slot: &mut Slot) -> Result<()> {
    if let Some(file) = slot.file.take() {
        OpenFile::release(file)?;
    }
    if slot.length.is_open() {
        bail!("{}: a write was still in flight when the file was checked", slot.partial.display().display());
    }
    slot.length.apply(&slot.partial)
}

/// Where a payload's bytes go: the file's shared descriptor and the offset.
struct Placed {
    file: Arc<OpenFile>,
    offset: u64,
}

impl Placed {
    /// Writes `data` here and now, then lets go of the descriptor (closed if this was its last holder).
    fn write_now(self, sparse: &crate::sparse::SparseWriter, data: &[u8]) -> Result<()> {
        self.file.write(sparse, data, self.offset)?;
        OpenFile::release(self.file)
    }
}
