//! `put --encrypt-recipient`: a foreign stream (`mariadb-backup --stream`, `mbstream -c`) encrypted file by file on
//! its way to storage, so that what is stored is an encrypted backup of ours: every file `<path>.age` (an age file
//! stock `age -d` decrypts once `mbstream -x` has extracted it), then an encrypted manifest binding each path to its
//! file's nonce and a clear one listing the `.age` files ([`manifests`]), exactly as the producer makes them.
//!
//! A foreign stream is cut wherever its writer cut it, and its files interleave; each file's chunks come in order
//! (as `mbstream -x` needs). So each file is sealed front to back as its chunks come
//! ([`crypt::SequentialSealer`]: whole segments as soon as a later byte shows they are not the last, the final
//! segment at the file's end), and the sealed bytes go out as chunks that each start on a segment, as the
//! producer's do, so `extract --decrypt` opens them in parallel.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use crypt::{BackupKey, SequentialSealer, NONCE_LEN, SEGMENT, TAG_LEN};
use proto::{
    Compression, CrcPiece, Digest, Encryption, FileRecord, Manifest, StoredForm, StreamRecord, WirePath, AGE_SUFFIX,
    MANIFEST_NAME, SECRET_MANIFEST_NAME,
};

/// Sealed segments per chunk that goes out (1 MiB of plaintext, as the producer's chunks are a few MiB).
const SEGMENTS_PER_CHUNK: u64 = 16;

/// The largest chunk a sealed file goes out in: its first, the header and nonce in front of whole segments.
pub(crate) fn largest_chunk(key: &BackupKey) -> usize {
    key.header().len() + NONCE_LEN + (SEGMENTS_PER_CHUNK * (SEGMENT + TAG_LEN)) as usize
}

/// Where sealed chunks go: `(wire path, offset in the `.age` file, bytes)`.
pub(crate) type Emit<'e> = dyn FnMut(&[u8], u64, &[u8]) -> Result<()> + 'e;

/// One file being sealed.
struct Sealing {
    sealer: SequentialSealer,
    /// The offset its next chunk must start at (chunks come in order).
    next: u64,
    plain: CrcPiece,
    sent: Sent,
}

/// What went out of one `.age` file: its bytes' size and CRC-32, and in how many chunks.
#[derive(Default)]
struct Sent {
    sealed: CrcPiece,
    chunks: u64,
}

/// Every file of one stream being sealed, and the records of those that ended.
pub(crate) struct ForeignSealer<'k> {
    key: &'k BackupKey,
    open: HashMap<Vec<u8>, Sealing>,
    ended: HashSet<Vec<u8>>,
    records: Vec<FileRecord>,
    mtime: i64,
    out: Vec<u8>,
}

impl<'k> ForeignSealer<'k> {
    /// Seals under `key`; every record gets mode 0640 and `mtime` (a foreign stream carries neither).
    pub(crate) fn new(key: &'k BackupKey, mtime: i64) -> ForeignSealer<'k> {
        ForeignSealer { key, open: HashMap::new(), ended: HashSet::new(), records: Vec::new(), mtime, out: Vec::new() }
    }

    /// A payload chunk of `path` at `offset`.
    pub(crate) fn payload(&mut self, path: &[u8], offset: u64, data: &[u8], emit: &mut Emit) -> Result<()> {
        self.state(path)?;
        let header_len = self.key.header().len();
        let (state, out) = (self.open.get_mut(path).expect("made by state()"), &mut self.out);
        if offset != state.next {
            bail!(
                "{}: a chunk at offset {offset}, where {} was expected: a stream whose files' chunks are not in order \
                 cannot be encrypted on its way",
                String::from_utf8_lossy(path),
                state.next
            );
        }
        state.next += data.len() as u64;
        state.plain = state.plain.append(CrcPiece::of(data));
        out.clear();
        state.sealer.push(data, out)?;
        send_sealed(&mut state.sent, path, header_len, out, emit)
    }

    /// The end of `path`: its last segment goes out, and its record is kept for the manifests. Returns the path
    /// its end-of-file chunk goes out under (`<path>.age`).
    pub(crate) fn end(&mut self, path: &[u8], emit: &mut Emit) -> Result<Vec<u8>> {
        self.state(path)?;
        let mut state = self.open.remove(path).expect("made by state()");
        let nonce = *state.sealer.nonce();
        let sealer = std::mem::replace(&mut state.sealer, SequentialSealer::new(self.key));
        self.out.clear();
        sealer.finish(&mut self.out)?;
        send_sealed(&mut state.sent, path, self.key.header().len(), &self.out, emit)?;
        let wire = age_path(path);
        self.ended.insert(path.to_vec());
        self.records.push(FileRecord {
            path: WirePath(path.to_vec()),
            size: state.plain.len,
            mode: 0o640,
            mtime: self.mtime,
            chunks: state.sent.chunks,
            crc32: state.plain.crc,
            sha1: None,
            stored: Some(StoredForm {
                path: WirePath(wire.clone()),
                size: state.sent.sealed.len,
                crc32: state.sent.sealed.crc,
                nonce: Some(hex::encode(nonce)),
            }),
            corrupt_pages: Vec::new(),
            corrupt_pages_total: 0,
        });
        Ok(wire)
    }

    /// The stream has ended: every file must have ended too. Returns their records.
    pub(crate) fn finish(self) -> Result<Vec<FileRecord>> {
        if let Some(path) = self.open.keys().next() {
            bail!("the stream ended inside {} (no end-of-file chunk): cut short?", String::from_utf8_lossy(path));
        }
        Ok(self.records)
    }

    /// The file `path`'s state, made at its first chunk.
    fn state(&mut self, path: &[u8]) -> Result<&mut Sealing> {
        if !self.open.contains_key(path) {
            let shown = String::from_utf8_lossy(path);
            if self.ended.contains(path) {
                bail!("{shown} appears twice in the stream");
            }
            if path == MANIFEST_NAME.as_bytes() || path == SECRET_MANIFEST_NAME.as_bytes() {
                bail!("{shown}: the stream holds a file named as our manifests; it cannot be encrypted as ours");
            }
            let sealing = Sealing {
                sealer: SequentialSealer::new(self.key),
                next: 0,
                plain: CrcPiece::default(),
                sent: Sent::default(),
            };
            self.open.insert(path.to_vec(), sealing);
        }
        Ok(self.open.get_mut(path).expect("inserted above"))
    }
}

/// `<path>.age`.
fn age_path(path: &[u8]) -> Vec<u8> {
    [path, AGE_SUFFIX.as_bytes()].concat()
}

/// Sends `sealed` (the next bytes of `path`'s `.age` file) as chunks that each start on a sealed segment (the
/// first behind the header and nonce) and hold at most [`SEGMENTS_PER_CHUNK`] segments.
fn send_sealed(sent: &mut Sent, path: &[u8], header_len: usize, sealed: &[u8], emit: &mut Emit) -> Result<()> {
    let wire = age_path(path);
    let lead = (header_len + NONCE_LEN) as u64;
    let run = SEGMENTS_PER_CHUNK * (SEGMENT + TAG_LEN);
    let mut rest = sealed;
    while !rest.is_empty() {
        let at = sent.sealed.len;
        // The next boundary after `at`: lead + k × run.
        let boundary = if at < lead { lead + run } else { lead + ((at - lead) / run + 1) * run };
        let take = ((boundary - at) as usize).min(rest.len());
        let (piece, after) = rest.split_at(take);
        emit(&wire, at, piece)?;
        sent.sealed = sent.sealed.append(CrcPiece::of(piece));
        sent.chunks += 1;
        rest = after;
    }
    Ok(())
}

/// The two manifests of a foreign stream encrypted by `put`, as encoded chunks for the end of stream 0: the
/// encrypted one (`records`, sealed as one more file of the backup) and the clear one (every file as it travels,
/// the encrypted manifest among them). `streams` are what each stream's chunks came to (chunks and encoded bytes),
/// to which the encrypted manifest's own are added on stream 0. Returns the chunks' bytes, their number, and the
/// clear manifest (which is what `put` stores beside the packs).
pub(crate) fn manifests(
    key: &BackupKey,
    records: Vec<FileRecord>,
    mut streams: Vec<StreamRecord>,
    created_unix: u64,
) -> Result<(Vec<u8>, u64, Vec<u8>)> {
    let tool = format!("consumer {} put --encrypt", env!("CARGO_PKG_VERSION"));
    let secret = Manifest {
        format: proto::MANIFEST_FORMAT,
        tool: tool.clone(),
        created_unix,
        backup_id: None,
        chunk_size: 0,
        compression: Compression::None,
        digest: Digest::Crc32,
        streams: streams.clone(),
        encryption: Some(Encryption::Age),
        files: records,
        directories: Vec::new(),
    };
    // The encrypted manifest: one more `.age` file of the backup, in chunks like every other.
    let mut sealed_manifest = Vec::new();
    let mut sealer = SequentialSealer::new(key);
    sealer.push(&secret.to_json(), &mut sealed_manifest)?;
    sealer.finish(&mut sealed_manifest)?;
    let name = SECRET_MANIFEST_NAME.as_bytes();
    let original = name.strip_suffix(AGE_SUFFIX.as_bytes()).expect("named .age");
    let mut secret_chunks = proto::ChunkWriter::new(Vec::new());
    let mut sent = Sent::default();
    send_sealed(&mut sent, original, key.header().len(), &sealed_manifest, &mut |path, offset, bytes| {
        secret_chunks.write_payload(path, offset, bytes).map_err(|e| anyhow!("{e}"))
    })?;
    secret_chunks.write_eof(name).map_err(|e| anyhow!("{e}"))?;
    let mut chunks = sent.chunks + 1;
    let mut out = secret_chunks.into_inner();
    // Counted on stream 0, as every file's chunks are; the clear manifest counts everything but itself.
    streams[0].chunks += chunks;
    streams[0].bytes += out.len() as u64;
    let mut clear = Manifest { tool, encryption: Some(Encryption::Age), streams, ..secret };
    clear.files = clear.files.iter().map(FileRecord::as_travelled).collect();
    clear.files.push(FileRecord {
        path: WirePath(name.to_vec()),
        size: sent.sealed.len,
        mode: 0o600,
        mtime: created_unix as i64,
        chunks: sent.chunks,
        crc32: sent.sealed.crc,
        sha1: None,
        stored: None,
        corrupt_pages: Vec::new(),
        corrupt_pages_total: 0,
    });
    let clear_json = clear.to_json();
    let mut clear_chunks = proto::ChunkWriter::new(Vec::new());
    for (index, piece) in clear_json.chunks(1 << 20).enumerate() {
        clear_chunks
            .write_payload(MANIFEST_NAME.as_bytes(), (index << 20) as u64, piece)
            .map_err(|e| anyhow!("{e}"))?;
        chunks += 1;
    }
    clear_chunks.write_eof(MANIFEST_NAME.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    chunks += 1;
    out.extend_from_slice(&clear_chunks.into_inner());
    Ok((out, chunks, clear_json))
}
