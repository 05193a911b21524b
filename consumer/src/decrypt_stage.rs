//! The decrypt stage of `extract --decrypt`: chunks of `.age` files back into their plaintext, in parallel, in place,
//! on their way to the writer that owns their file (through the decompress stage for `.zst.age`).
//!
//! A chunk can be opened alone once its file's payload nonce is known, and the nonce is in the file's first chunk
//! (offset 0, behind the age header). The readers learn it there, in stream order, and keep it in the [`Keyring`]:
//! the first chunk of the backup's first file unwraps the backup's key with the identities given (once per
//! backup), and every file's header must be that same header (a file of another backup, even to the same key, is
//! refused). A chunk at a later offset that comes, on another stream, before its file's first chunk waits for it:
//! the producer puts a file's chunks out in order, so the first is already on its way on another stream; when every
//! other reader is waiting too or has ended, it never will come, and the run fails.
//!
//! What a chunk cannot tell is whether it ends its file (age flags the final segment): each decrypted chunk says
//! where its plaintext ends and whether its final segment was flagged, and the writer checks, at the file's end,
//! that exactly the last chunk was ([`crate::dispatch::SealedPiece`]), and that the nonce is the one the encrypted
//! manifest binds to the path.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{Receiver, Sender};
use crypt::{BackupKey, NONCE_LEN, SEGMENT, TAG_LEN};
use proto::{ChunkHeader, CrcPiece};
use runtime::cancel::{recv, send, Cancel};
use runtime::lock::Locked;

use crate::dispatch::{ChunkMessage, Decoded, SealedPiece, WriterMessage};

/// The backup's key and every started file's nonce, shared by the readers (which learn them) and the decrypt
/// threads.
pub(crate) struct Keyring {
    identities: Vec<crypt::keys::Identity>,
    state: Mutex<KeyState>,
    changed: Condvar,
}

struct KeyState {
    key: Option<Arc<BackupKey>>,
    /// Each started file's payload nonce, by its path on the wire.
    nonces: HashMap<Vec<u8>, [u8; NONCE_LEN]>,
    /// Readers still reading, and the files those that wait for a file's first chunk wait for.
    readers: usize,
    waiting: Vec<Vec<u8>>,
}

impl KeyState {
    /// How many readers wait for a first chunk that has not come: a reader woken by the one it waited for, but
    /// not yet running, does not count (it is about to go on).
    fn stuck(&self) -> usize {
        self.waiting.iter().filter(|path| !self.nonces.contains_key(path.as_slice())).count()
    }
}

impl Keyring {
    /// A keyring for `readers` streams, to unwrap the backup's key with the first of `identities` that can.
    pub(crate) fn new(identities: Vec<crypt::keys::Identity>, readers: usize) -> Keyring {
        let state = KeyState { key: None, nonces: HashMap::new(), readers, waiting: Vec::new() };
        Keyring { identities, state: Mutex::new(state), changed: Condvar::new() }
    }

    /// The backup's key, once a file's first chunk has given it.
    pub(crate) fn key(&self) -> Option<Arc<BackupKey>> {
        self.state.locked().key.clone()
    }

    /// The first chunk of the file `path` (its payload at offset 0, `data`): unwraps the backup's key if it is the
    /// first file, checks that the file's header is the backup's, and learns its nonce.
    pub(crate) fn start(&self, path: &[u8], data: &[u8]) -> Result<[u8; NONCE_LEN]> {
        let shown = String::from_utf8_lossy(path);
        let mut state = self.state.locked();
        let key = match &state.key {
            Some(key) => Arc::clone(key),
            None => {
                let identities: Vec<&dyn age::Identity> =
                    self.identities.iter().map(|id| id.as_ref() as &dyn age::Identity).collect();
                // Once per backup: every later file must carry this very header.
                let key = BackupKey::unwrap(data, &identities).map_err(|e| anyhow!("{shown}: {e}"))?;
                log::info!("the backup's key was unwrapped from the header of {shown}");
                let key = Arc::new(key);
                state.key = Some(Arc::clone(&key));
                key
            }
        };
        if !data.starts_with(key.header()) {
            bail!("{shown}: its age header is not the backup's (a file of another backup, or made for other keys)");
        }
        let at = key.header().len();
        let nonce: [u8; NONCE_LEN] = data
            .get(at..at + NONCE_LEN)
            .and_then(|nonce| nonce.try_into().ok())
            .ok_or_else(|| anyhow!("{shown}: its first chunk ends inside its nonce"))?;
        if state.nonces.insert(path.to_vec(), nonce).is_some() {
            bail!("{shown}: a second first chunk (offset 0)");
        }
        self.changed.notify_all();
        Ok(nonce)
    }

    /// The nonce of the file `path`, for a chunk at `offset` > 0: waits while its first chunk is still on its way
    /// on another stream, and fails once no reader is left to bring it.
    pub(crate) fn nonce_of(&self, path: &[u8], offset: u64, cancel: &Cancel) -> Result<[u8; NONCE_LEN]> {
        let mut state = self.state.locked();
        loop {
            if let Some(nonce) = state.nonces.get(path) {
                return Ok(*nonce);
            }
            if state.stuck() + 1 >= state.readers {
                bail!(
                    "{}: a chunk at offset {offset} arrived, but the file's first chunk (its age header and nonce) \
                     never did",
                    String::from_utf8_lossy(path)
                );
            }
            state.waiting.push(path.to_vec());
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(50))
                .map(|(state, _)| state)
                .unwrap_or_else(|e| e.into_inner().0);
            let me = state.waiting.iter().position(|waited| waited == path).expect("pushed above");
            state.waiting.swap_remove(me);
            cancel.check()?;
        }
    }

    /// No chunk of the file `path` can come any more (all its chunks travel on one stream, in order, and its end
    /// came; or every byte of it has arrived): its nonce is forgotten, so memory grows with the files in flight,
    /// not with the backup's.
    pub(crate) fn forget(&self, path: &[u8]) {
        self.state.locked().nonces.remove(path);
    }

    /// A reader has ended (cleanly or not): waiters recount.
    pub(crate) fn reader_done(&self) {
        self.state.locked().readers -= 1;
        self.changed.notify_all();
    }
}

/// Where a chunk of a `.age` file starts in its plaintext, from its offset on the wire: the first chunk carries
/// the header and nonce (`lead` bytes) before its segments; every other starts on a sealed segment.
fn plaintext_place(header: &ChunkHeader, header_len: usize) -> Result<(usize, u64)> {
    let head = (header_len + NONCE_LEN) as u64;
    let wire = header.file_offset;
    if wire == 0 {
        return Ok((head as usize, 0));
    }
    let whole = SEGMENT + TAG_LEN;
    if wire < head || (wire - head) % whole != 0 {
        bail!("offset {wire} is not on an age segment: not a chunk our producer sealed");
    }
    Ok((0, (wire - head) / whole * SEGMENT))
}

/// One decrypt thread: opens each chunk in place (the plaintext moves to the front of its buffer; no second buffer
/// is needed), then hands it to its writer, or to the decompress threads when the file is `.zst.age`.
pub(crate) fn decrypt_chunks(
    jobs: &Receiver<ChunkMessage>,
    keyring: &Keyring,
    writers: &[Sender<WriterMessage>],
    decompressors: &Sender<ChunkMessage>,
    cancel: &Cancel,
) -> Result<()> {
    while let Some(mut chunk) = recv(jobs, cancel)? {
        let key = keyring.key().ok_or_else(|| anyhow!("{}: no key yet (an internal error)", chunk.describe()))?;
        let nonce = chunk.nonce.ok_or_else(|| anyhow!("{}: no nonce (an internal error)", chunk.describe()))?;
        let (lead, offset) =
            plaintext_place(&chunk.header, key.header().len()).map_err(|e| anyhow!("{}: {e}", chunk.describe()))?;
        let opened = key.file(nonce).open_in_place(offset, &mut chunk.data[lead..]);
        let (len, last) = opened.map_err(|e| anyhow!("{}: {e}", chunk.describe()))?;
        let header = &chunk.header;
        let stored = (header.file_offset, CrcPiece { crc: header.checksum, len: header.payload_len });
        chunk.data.copy_within(lead..lead + len, 0);
        chunk.data.set_len(len);
        let sealed = SealedPiece { end: offset + len as u64, last, nonce: (header.file_offset == 0).then_some(nonce) };
        chunk.decoded = Some(Decoded { offset, crc: CrcPiece::of(&chunk.data).crc, stored, sealed: Some(sealed) });
        // The reader held a compressed file under its original name: `.zst.age` taken off its wire path.
        let compressed =
            chunk.header.path.len() == chunk.key.len() + proto::ZSTD_SUFFIX.len() + proto::AGE_SUFFIX.len();
        if compressed {
            send(decompressors, chunk, cancel)?;
        } else {
            send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(Box::new(chunk)), cancel)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's first chunk: the backup's header, a nonce, and (here) nothing more.
    fn first_chunk(key: &BackupKey, nonce: u8) -> Vec<u8> {
        [key.header(), &[nonce; NONCE_LEN]].concat()
    }

    #[test]
    fn a_chunk_waits_for_its_files_first_chunk_and_fails_once_no_reader_can_bring_it() {
        let identity = age::x25519::Identity::generate();
        let key = BackupKey::new(&[&identity.to_public()]).unwrap();
        let keyring = Keyring::new(vec![Box::new(identity)], 2);
        let cancel = Cancel::new();
        std::thread::scope(|scope| {
            // Reader 1 has a later chunk of f; reader 0 brings f's first chunk a little later.
            let waiter = scope.spawn(|| keyring.nonce_of(b"f.age", 65_552, &cancel));
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(keyring.start(b"f.age", &first_chunk(&key, 7)).unwrap(), [7; NONCE_LEN]);
            assert_eq!(waiter.join().unwrap().unwrap(), [7; NONCE_LEN]);
            // g's first chunk never comes: once reader 0 has ended, reader 1 is told.
            let waiter = scope.spawn(|| keyring.nonce_of(b"g.age", 65_552, &cancel));
            std::thread::sleep(Duration::from_millis(100));
            keyring.reader_done();
            let error = waiter.join().unwrap().unwrap_err().to_string();
            assert!(error.contains("g.age") && error.contains("first chunk"), "{error}");
        });
        // A file of another backup (another header), or a first chunk twice, is refused; a forgotten file's
        // nonce is gone.
        let other = BackupKey::new(&[&age::x25519::Identity::generate().to_public()]).unwrap();
        assert!(keyring.start(b"h.age", &first_chunk(&other, 1)).unwrap_err().to_string().contains("not the backup's"));
        assert!(keyring.start(b"f.age", &first_chunk(&key, 8)).is_err(), "f started twice");
        keyring.forget(b"f.age");
        assert!(keyring.state.locked().nonces.is_empty());
    }
}
