//! What the producer writes besides files: the start marker at the head of every stream, and on stream 0, last,
//! the SHA-1 list (`--digest sha1`) and the manifest, written as they are made, a pool buffer at a time.
//!
//! An encrypted backup has two manifests. The encrypted one ([`proto::SECRET_MANIFEST_NAME`], an age file under
//! the backup's header, so nobody without a key can read or forge it) holds the real records: each file's original
//! path, size and CRC-32, and its `.age` form's size, CRC-32 and payload nonce, which binds the path to that
//! ciphertext. The clear one lists every file as it travels (its `.age` path, size and CRC-32; nothing of its
//! content), the encrypted manifest among them, so a consumer without the key still proves every byte arrived.

use std::sync::atomic::Ordering;

use anyhow::Result;
use crypt::{BackupKey, FileCipher, NONCE_LEN};
use proto::{
    Compression, Digest, Encryption, FileRecord, Manifest, ManifestWriter, StreamMarker, StreamRecord, WirePath,
};
use runtime::lock::Locked;
use runtime::pool::{BufferPool, PooledBuffer};
use sha1::{Digest as _, Sha1};

use crate::cli::Binding;
use crate::config::{Config, Output};
use crate::router::Router;
use crate::sink::StreamItem;

/// Every stream starts with its marker, before any file: a consumer knows from the first chunk that the stream is
/// ours and that a manifest must follow.
pub(crate) fn send_markers(config: &Config, router: &Router, backup_id: &str) -> Result<()> {
    let streams = router.stream_count();
    for index in 0..streams {
        let (path, bytes) = start_marker(config, backup_id, index, streams);
        router.count(index, &path, 1, bytes.len() as u64);
        router.send(
            index,
            StreamItem::Document { path, bytes: std::sync::Arc::new(bytes), chunk_size: config.chunk_size },
        )?;
    }
    Ok(())
}

/// The start marker of stream `index`: its wire path and contents.
fn start_marker(config: &Config, backup_id: &str, index: usize, streams: usize) -> (Vec<u8>, Vec<u8>) {
    let marker = StreamMarker {
        format: proto::MARKER_FORMAT,
        tool: format!("producer {}", env!("CARGO_PKG_VERSION")),
        backup_id: backup_id.to_string(),
        stream: index as u32,
        streams: streams as u32,
        chunk_size: config.chunk_size as u64,
        compression: compression(config),
        digest: config.digest,
        binding: match &config.output {
            Output::Streams { binding: Binding::Chunk, .. } if streams > 1 => proto::MarkerBinding::Chunk,
            _ => proto::MarkerBinding::File,
        },
        encryption: config.encryption.as_ref().map(|_| Encryption::Age),
    };
    (proto::marker_name(index).into_bytes(), marker.to_json())
}

fn compression(config: &Config) -> Compression {
    match config.compress_level {
        Some(level) => Compression::Zstd { level },
        None => Compression::None,
    }
}

/// The closing documents, written on stream 0 as they are made, a pool buffer at a time (never whole in memory,
/// whatever the number of files): the SHA-1 list (with `--digest sha1`; counted in the stream totals and listed in
/// the manifest), then the manifest (never counted).
pub(crate) fn send_documents(
    config: &Config,
    router: &Router,
    pool: &BufferPool,
    created_unix: u64,
    backup_id: &str,
) -> Result<()> {
    let mut records = std::mem::take(&mut *router.records.locked());
    if records.spilled() > 0 {
        log::info!("{} of {} manifest records were kept in a temporary file", records.spilled(), records.files());
    }
    if config.digest == Digest::Sha1 {
        let name = proto::SHA1SUMS_NAME.as_bytes().to_vec();
        let mut list = DocumentPieces::new(router, pool, name.clone(), config.chunk_size, true);
        let mut line = Vec::new();
        records.for_each(|record| {
            line.clear();
            record.sha1sums_line(&mut line);
            Ok(std::io::Write::write_all(&mut list, &line)?)
        })?;
        let written = list.finish()?;
        // Counted on stream 0 now, so the manifest's stream totals include it.
        router.count(0, &name, written.chunks, written.len);
        records.push_uncounted(FileRecord {
            path: WirePath(name),
            size: written.len,
            mode: 0o644,
            mtime: created_unix as i64,
            chunks: written.chunks,
            crc32: written.crc,
            sha1: written.sha1,
            stored: None,
            corrupt_pages: Vec::new(),
            corrupt_pages_total: 0,
        })?;
    }
    let mut head = Manifest {
        format: proto::MANIFEST_FORMAT,
        tool: format!("producer {}", env!("CARGO_PKG_VERSION")),
        created_unix,
        backup_id: Some(backup_id.to_string()),
        chunk_size: config.chunk_size as u64,
        compression: compression(config),
        digest: config.digest,
        streams: stream_records(router),
        encryption: config.encryption.as_ref().map(|_| Encryption::Age),
        files: Vec::new(),
        directories: Vec::new(),
    };
    if let Some(key) = &config.encryption {
        // The encrypted manifest: the real records, sealed as one more age file of the backup.
        let name = proto::SECRET_MANIFEST_NAME.as_bytes().to_vec();
        let pieces = DocumentPieces::new(router, pool, name.clone(), config.chunk_size, false).sealed(key);
        let mut manifest = ManifestWriter::new(pieces, &head)?;
        records.for_each(|record| Ok(manifest.record(record)?))?;
        for directory in router.directories.locked().iter() {
            manifest.directory(directory)?;
        }
        let written = manifest.finish()?.finish()?;
        router.count(0, &name, written.chunks, written.len);
        records.push_uncounted(FileRecord {
            path: WirePath(name),
            size: written.len,
            mode: 0o600,
            mtime: created_unix as i64,
            chunks: written.chunks,
            crc32: written.crc,
            sha1: None,
            stored: None,
            corrupt_pages: Vec::new(),
            corrupt_pages_total: 0,
        })?;
        // The clear manifest describes the files as they travel: opaque `.age` files, none compressed.
        head.compression = Compression::None;
        head.streams = stream_records(router);
    }
    let encrypted = config.encryption.is_some();
    let pieces = DocumentPieces::new(router, pool, proto::MANIFEST_NAME.as_bytes().to_vec(), config.chunk_size, false);
    let mut manifest = ManifestWriter::new(pieces, &head)?;
    records.for_each(|record| match encrypted {
        true => Ok(manifest.record(&record.as_travelled())?),
        false => Ok(manifest.record(record)?),
    })?;
    for directory in router.directories.locked().iter() {
        manifest.directory(directory)?;
    }
    manifest.finish()?.finish()?;
    *router.records.locked() = records;
    Ok(())
}

/// What each stream was sent so far.
fn stream_records(router: &Router) -> Vec<StreamRecord> {
    router
        .counts
        .iter()
        .enumerate()
        .map(|(index, count)| StreamRecord {
            index: index as u32,
            chunks: count.chunks.load(Ordering::Relaxed),
            bytes: count.bytes.load(Ordering::Relaxed),
        })
        .collect()
}

/// A document written to stream 0 as it is made, one chunk (in a pool buffer) at a time.
struct DocumentPieces<'r> {
    router: &'r Router,
    pool: &'r BufferPool,
    path: Vec<u8>,
    chunk_size: usize,
    piece: Option<PooledBuffer>,
    written: Written,
    crc: proto::CrcPiece,
    sha1: Option<Sha1>,
    seal: Option<DocumentSeal<'r>>,
}

/// A document written as an age file of the backup: each full piece is held back until the next one shows it is
/// not the last, then sealed where it lies (the first behind the header and nonce).
struct DocumentSeal<'k> {
    header: &'k [u8],
    cipher: FileCipher,
    held: Option<PooledBuffer>,
    /// Plaintext offset of the held piece.
    offset: u64,
}

impl DocumentSeal<'_> {
    fn seal(&mut self, mut piece: PooledBuffer, last: bool) -> Result<PooledBuffer> {
        let len = piece.len();
        let lead = if self.offset == 0 { self.header.len() + NONCE_LEN } else { 0 };
        piece.set_len(piece.capacity());
        let end = self.cipher.seal_in_place(self.offset, &mut piece, len, last, lead)?;
        if lead > 0 {
            piece[..self.header.len()].copy_from_slice(self.header);
            piece[self.header.len()..lead].copy_from_slice(self.cipher.nonce());
        }
        piece.set_len(end);
        self.offset += len as u64;
        Ok(piece)
    }
}

/// What a [`DocumentPieces`] wrote.
#[derive(Debug, Default)]
struct Written {
    len: u64,
    chunks: u64,
    crc: u32,
    sha1: Option<String>,
}

impl<'r> DocumentPieces<'r> {
    fn new(router: &'r Router, pool: &'r BufferPool, path: Vec<u8>, chunk_size: usize, sha1: bool) -> Self {
        DocumentPieces {
            router,
            pool,
            path,
            chunk_size,
            piece: None,
            written: Written::default(),
            crc: proto::CrcPiece::default(),
            sha1: sha1.then(Sha1::new),
            seal: None,
        }
    }

    /// The document as an age file of the backup `key` (its pieces must be whole segments: the chunk size is).
    fn sealed(mut self, key: &'r BackupKey) -> Self {
        self.seal = Some(DocumentSeal { header: key.header(), cipher: key.new_file(), held: None, offset: 0 });
        self
    }

    /// Sends the piece filled so far (nothing if it is empty); when sealing, the piece before it.
    fn send_piece(&mut self) -> Result<()> {
        let Some(piece) = self.piece.take().filter(|piece| !piece.is_empty()) else { return Ok(()) };
        let Some(seal) = &mut self.seal else { return self.emit(piece) };
        match seal.held.replace(piece) {
            Some(held) => {
                let sealed = seal.seal(held, false)?;
                self.emit(sealed)
            }
            None => Ok(()),
        }
    }

    /// Sends one piece as it is, at the end of what was sent.
    fn emit(&mut self, piece: PooledBuffer) -> Result<()> {
        self.crc = self.crc.append(proto::CrcPiece::of(&piece));
        if let Some(sha1) = &mut self.sha1 {
            sha1.update(&piece[..]);
        }
        let (offset, len) = (self.written.len, piece.len() as u64);
        self.router.send(0, StreamItem::DocumentPiece { path: self.path.clone(), offset, data: piece })?;
        self.written.len += len;
        self.written.chunks += 1;
        Ok(())
    }

    /// Sends the last piece and the document's end; reports what was written.
    fn finish(mut self) -> Result<Written> {
        self.send_piece()?;
        if let Some(seal) = &mut self.seal {
            let last = match seal.held.take() {
                Some(held) => held,
                None => {
                    let mut empty = self.pool.take(&self.router.cancel)?;
                    empty.set_len(0);
                    empty
                }
            };
            let sealed = seal.seal(last, true)?;
            self.emit(sealed)?;
        }
        self.router.send(0, StreamItem::DocumentEnd { path: self.path.clone() })?;
        self.written.crc = self.crc.crc;
        self.written.sha1 = self.sha1.take().map(|sha1| hex::encode(sha1.finalize()));
        Ok(self.written)
    }
}

impl std::io::Write for DocumentPieces<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.piece.is_none() {
            let mut piece = self.pool.take(&self.router.cancel).map_err(std::io::Error::other)?;
            piece.set_len(0);
            self.piece = Some(piece);
        }
        let piece = self.piece.as_mut().expect("taken above");
        let start = piece.len();
        let n = buf.len().min(self.chunk_size - start);
        piece.set_len(start + n);
        piece[start..].copy_from_slice(&buf[..n]);
        if piece.len() == self.chunk_size {
            self.send_piece().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
