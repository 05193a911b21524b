//! The encryption stage (`--encrypt-recipient`, `--encrypt-recipients-file`, `--encrypt-passphrase-file`): every
//! file travels as `<path>.age` (`<path>.zst.age` with `--compress`), an age v1 file whose 64 KiB segments are
//! sealed in parallel, and a second in-order step puts them back in file order for the streams.
//!
//! ```text
//! FileState::arrive ─► (CompressStage ─► compress threads ─► arrive_stored) ─►
//! (in order)                              (any order)         (in order)
//!
//!     EncryptStage ─► seal threads ─► arrive_sealed ─► Router
//!     (in order,      (any order,      (in order)
//!      holds one back) in place)
//! ```
//!
//! Every file shares the backup's one age header ([`crypt::BackupKey`]: one recipient wrap per backup) and gets a
//! random payload nonce of its own; its first payload carries the header and the nonce in front of its first
//! segments. A segment is sealed knowing whether it is the file's last (age flags the final segment), and only the
//! next payload, or the file's end, tells that (a file that shrinks while it is read ends early), so the stage
//! holds each file's latest payload back until one of them arrives. Deadlock-free: a held payload waits for a chunk
//! of its own file, and a file's jobs are consecutive in the queue, so only the last file handed out can wait for
//! a job not yet taken; every other held payload waits on a read already holding its buffer.
//!
//! A payload is sealed where it lies ([`crypt::FileCipher::seal_in_place`]): its pool buffer has room for the
//! tags and the header ([`buffer_size`]), so sealing needs no second buffer. With `--compress` each zstd frame but a
//! file's last is padded with a skippable frame to a whole number of segments, so every frame starts on a segment
//! boundary and is sealed alone ([`pad_to_segment`]); what that costs is measured in `docs/benchmarks.md`.
//!
//! The record of each file (its original path, size and checksums) gains the `.age` form's size, CRC-32 and
//! payload nonce: the encrypted manifest binds each path to its ciphertext (`documents.rs`).

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use crypt::{BackupKey, FileCipher, NONCE_LEN, SEGMENT};
use proto::{CrcPiece, FileRecord, StoredForm, WirePath};
use runtime::cancel::{recv, send, Cancel, Cancelled};
use runtime::lock::Locked;
use runtime::pool::PooledBuffer;
use runtime::reorder::Reorder;

use crate::file::{FileState, Outlet};

/// The size of a skippable frame's header (magic, then length).
const SKIPPABLE_HEADER: usize = 8;

/// The zstd skippable-frame magic the padding uses (0x184D2A50..5F are all skippable; the offset frame is 5B).
const PADDING_MAGIC: u32 = 0x184D_2A5C;

/// The pool buffer size that holds a payload of at most `payload` bytes sealed, behind the header and nonce, and,
/// when `compressed`, padded to a segment boundary first.
pub fn buffer_size(payload: usize, compressed: bool, header_len: usize) -> usize {
    let padded = if compressed { payload + SEGMENT as usize + SKIPPABLE_HEADER } else { payload };
    header_len + NONCE_LEN + crypt::sealed_len(padded as u64) as usize
}

/// Pads a compressed payload (whole zstd frames) with one skippable frame so that it ends on a segment boundary
/// (zstd skips it; a gap shorter than a frame header takes one more segment).
pub fn pad_to_segment(data: &mut PooledBuffer) {
    let len = data.len();
    let segment = SEGMENT as usize;
    if len % segment == 0 {
        return;
    }
    let mut gap = segment - len % segment;
    if gap < SKIPPABLE_HEADER {
        gap += segment;
    }
    data.set_len(len + gap);
    data[len..len + 4].copy_from_slice(&PADDING_MAGIC.to_le_bytes());
    data[len + 4..len + 8].copy_from_slice(&((gap - SKIPPABLE_HEADER) as u32).to_le_bytes());
    data[len + 8..].fill(0);
}

/// One file's sealing state: its cipher, the payload held back, where it starts in the file as encrypted.
#[derive(Debug, Default)]
pub struct SealState {
    cipher: Option<Arc<FileCipher>>,
    held: Option<PooledBuffer>,
    /// Plaintext offset of the held payload (in the original file, or in the padded `.zst`).
    offset: u64,
    /// Seal jobs sent so far (the next one's index).
    sent: u64,
}

/// The in-order step after the seal threads: sealed payloads and the end, put back in file order.
#[derive(Debug, Default)]
pub struct SealedSequence {
    order: Reorder<Sealed>,
    size: u64,
    crc: CrcPiece,
    chunks: u64,
}

#[derive(Debug)]
enum Sealed {
    Chunk { data: PooledBuffer, offset: u64, crc: u32 },
    End { record: FileRecord, nonce: [u8; NONCE_LEN] },
}

/// Work for a seal thread.
#[derive(Debug)]
pub enum SealJob {
    /// A payload to seal where it lies.
    Chunk {
        /// The file.
        file: Arc<FileState>,
        /// Its cipher.
        cipher: Arc<FileCipher>,
        /// Its place among the file's sealed payloads.
        index: u64,
        /// Where its plaintext starts in the file as encrypted (a segment boundary).
        offset: u64,
        /// The plaintext.
        data: PooledBuffer,
        /// Whether it is the file's last.
        last: bool,
    },
    /// The file's end, after `index` payloads.
    End {
        /// The file.
        file: Arc<FileState>,
        /// Its cipher (for the nonce its record binds).
        cipher: Arc<FileCipher>,
        /// Payloads before it.
        index: u64,
        /// The file's record.
        record: FileRecord,
    },
}

/// The outlet before the seal threads: holds each file's latest payload back until the next one (or the end)
/// says whether it is the last, then hands it to a seal thread.
pub struct EncryptStage<'a> {
    sender: Mutex<Option<Sender<SealJob>>>,
    key: &'a BackupKey,
    next: &'a dyn Outlet,
    cancel: Cancel,
}

impl<'a> EncryptStage<'a> {
    /// A stage sealing under `key`, feeding `sender`; files that vanished go straight to `next`.
    pub fn new(sender: Sender<SealJob>, key: &'a BackupKey, next: &'a dyn Outlet, cancel: Cancel) -> Self {
        EncryptStage { sender: Mutex::new(Some(sender)), key, next, cancel }
    }

    /// Closes the queue, so the seal threads finish once it is drained.
    pub fn close(&self) {
        self.sender.locked().take();
    }

    fn send(&self, job: SealJob) -> Result<()> {
        let sender = self.sender.locked().clone().ok_or(Cancelled)?;
        send(&sender, job, &self.cancel)?;
        Ok(())
    }

    /// Sends the held payload of `file` to be sealed.
    fn seal_held(&self, file: &Arc<FileState>, state: &mut SealState, last: bool) -> Result<()> {
        let Some(mut data) = state.held.take() else { return Ok(()) };
        if file.compressed && !last {
            pad_to_segment(&mut data);
        }
        let offset = state.offset;
        state.offset += data.len() as u64;
        let cipher = Arc::clone(state.cipher.as_ref().expect("set with the first payload"));
        let job = SealJob::Chunk { file: Arc::clone(file), cipher, index: state.sent, offset, data, last };
        state.sent += 1;
        self.send(job)
    }
}

impl Outlet for EncryptStage<'_> {
    fn payload(&self, file: &Arc<FileState>, _index: u64, _offset: u64, data: PooledBuffer, _crc: u32) -> Result<()> {
        let mut state = file.sealing.locked();
        if state.cipher.is_none() {
            state.cipher = Some(Arc::new(self.key.new_file()));
        }
        self.seal_held(file, &mut state, false)?;
        state.held = Some(data);
        Ok(())
    }

    fn end(&self, file: &Arc<FileState>, _chunks: u64, record: FileRecord) -> Result<()> {
        let mut state = file.sealing.locked();
        if state.held.is_none() {
            bail!("{} ended with no payload to seal (an internal error)", file.source().display());
        }
        self.seal_held(file, &mut state, true)?;
        let cipher = Arc::clone(state.cipher.as_ref().expect("set with the first payload"));
        self.send(SealJob::End { file: Arc::clone(file), cipher, index: state.sent, record })
    }

    fn vanished(&self, file: &Arc<FileState>) -> Result<()> {
        self.next.vanished(file)
    }
}

/// One seal thread: seals payloads in place, in any order, and hands them to the in-order step.
pub fn seal_worker(jobs: &Receiver<SealJob>, header: &[u8], next: &dyn Outlet, cancel: &Cancel) -> Result<()> {
    while let Some(job) = recv(jobs, cancel)? {
        match job {
            SealJob::Chunk { file, cipher, index, offset, mut data, last } => {
                let len = data.len();
                // The first payload carries the header and nonce in front of its segments.
                let lead = if offset == 0 { header.len() + NONCE_LEN } else { 0 };
                data.set_len(data.capacity());
                let end = cipher
                    .seal_in_place(offset, &mut data, len, last, lead)
                    .with_context(|| format!("cannot encrypt {} at offset {offset}", file.source().display()))?;
                if lead > 0 {
                    data[..header.len()].copy_from_slice(header);
                    data[header.len()..lead].copy_from_slice(cipher.nonce());
                }
                data.set_len(end);
                let crc = CrcPiece::of(&data).crc;
                let offset = if offset == 0 { 0 } else { cipher.ciphertext_offset(offset) };
                arrive_sealed(&file, index, Sealed::Chunk { data, offset, crc }, next)?;
            }
            SealJob::End { file, cipher, index, record } => {
                arrive_sealed(&file, index, Sealed::End { record, nonce: *cipher.nonce() }, next)?;
            }
        }
    }
    Ok(())
}

/// Puts sealed payloads back in file order; at the end, the record gains the `.age` form.
fn arrive_sealed(file: &Arc<FileState>, index: u64, item: Sealed, next: &dyn Outlet) -> Result<()> {
    let mut sequence = file.sealed.locked();
    sequence.order.insert(index, item);
    while let Some(item) = sequence.order.pop_ready() {
        match item {
            Sealed::Chunk { data, offset, crc } => {
                let len = data.len() as u64;
                sequence.size += len;
                sequence.crc = sequence.crc.append(CrcPiece { crc, len });
                sequence.chunks += 1;
                next.payload(file, sequence.chunks - 1, offset, data, crc)?;
            }
            Sealed::End { mut record, nonce } => {
                record.stored = Some(StoredForm {
                    path: WirePath(file.wire.clone()),
                    size: sequence.size,
                    crc32: sequence.crc.crc,
                    nonce: Some(hex::encode(nonce)),
                });
                next.end(file, sequence.chunks, record)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_ends_a_payload_on_a_segment_with_a_frame_zstd_skips() {
        let segment = SEGMENT as usize;
        let pool = runtime::pool::BufferPool::new(1, 4 * segment);
        let cancel = Cancel::new();
        for len in [1, 1000, segment - 8, segment - 7, segment - 1, segment, segment + 1] {
            let frame = zstd::bulk::compress(&vec![7u8; len], 1).unwrap();
            let mut data = pool.take(&cancel).unwrap();
            // A payload `len` bytes long that starts with a real frame.
            data.set_len(len.max(frame.len()));
            data[..frame.len()].copy_from_slice(&frame);
            let body = data.len();
            if body > frame.len() {
                // Fill the rest with a skippable frame too, as a compressed payload is whole frames.
                let rest = body - frame.len();
                if rest < SKIPPABLE_HEADER {
                    continue;
                }
                data[frame.len()..frame.len() + 4].copy_from_slice(&PADDING_MAGIC.to_le_bytes());
                data[frame.len() + 4..frame.len() + 8].copy_from_slice(&((rest - 8) as u32).to_le_bytes());
            }
            pad_to_segment(&mut data);
            assert_eq!(data.len() % segment, 0, "{len}");
            assert!(data.len() - body < segment + SKIPPABLE_HEADER, "{len}: at most a segment and a header more");
            assert_eq!(zstd::stream::decode_all(&data[..]).unwrap(), vec![7u8; len], "{len}");
        }
    }
}
