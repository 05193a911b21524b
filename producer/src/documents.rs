//! What the producer writes besides files: the start marker at the head of every stream, and on stream 0, as the
//! backup goes, the manifest and (`--digest sha1`) the SHA-1 list, a piece at a time ([`ManifestStream`]).
//!
//! An encrypted backup has two manifests. The encrypted one ([`proto::SECRET_MANIFEST_NAME`], an age file under
//! the backup's header, so nobody without a key can read or forge it) holds the real records: each file's original
//! path, size and CRC-32, and its `.age` form's size, CRC-32 and payload nonce, which binds the path to that
//! ciphertext. The clear one lists every file as it travels (its `.age` path, size and CRC-32; nothing of its
//! content), the encrypted manifest among them, so a consumer without the key still proves every byte arrived.

use std::sync::atomic::Ordering;

use anyhow::Result;
use crossbeam_channel::Sender;
use crypt::{BackupKey, FileCipher, NONCE_LEN};
use proto::{
    Compression, Digest, Encryption, FileRecord, Manifest, ManifestWriter, StreamMarker, StreamRecord, WirePath,
};
use runtime::cancel::{send, Cancel};
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

/// Pieces of documents (the manifests, the SHA-1 list) are one age segment each, so that the encrypted manifest
/// is sealed a piece at a time.
pub(crate) const DOCUMENT_PIECE: usize = crypt::SEGMENT as usize;

/// Buffers the documents fill and send, apart from the chunk pool (a record is never held up by chunks waiting
/// for one): the piece each of three documents is filling, the one the sealed manifest holds back, and a few on
/// their way to stream 0's writer.
pub(crate) const DOCUMENT_BUFFERS: usize = 8;

/// The size of each document buffer: a piece, sealed, behind the backup's header.
pub(crate) fn document_buffer_size(config: &Config) -> usize {
    let header = config.encryption.as_ref().map_or(0, |key| key.header().len());
    crypt::ciphertext_len(header as u64, DOCUMENT_PIECE as u64) as usize
}

/// The manifest (format 2), made as the backup goes: the router hands it each finished file's record, and it goes
/// out on stream 0 a piece at a time, interleaved with the files' chunks, so the consumer checks files while the
/// stream still flows. With `--digest sha1` the SHA-1 list is made the same way; when encrypting, so is the
/// encrypted manifest (sealed piece by piece). Only the end writes the directories, the streams' tallies and
/// each document's end-of-file chunk: a backup that fails never sends one.
pub(crate) struct ManifestStream {
    clear: ManifestWriter<DocumentPieces>,
    secret: Option<ManifestWriter<DocumentPieces>>,
    sha1sums: Option<DocumentPieces>,
    line: Vec<u8>,
    created_unix: u64,
}

impl ManifestStream {
    /// Starts the documents of the backup `backup_id` (their heads are written at once; nothing is sent until a
    /// piece fills). `stream_0` is where their pieces go.
    pub(crate) fn start(
        config: &Config,
        pool: &BufferPool,
        stream_0: Sender<StreamItem>,
        cancel: &Cancel,
        created_unix: u64,
        backup_id: &str,
    ) -> Result<ManifestStream> {
        let pieces = |name: &str, sha1: bool| DocumentPieces {
            pool: pool.clone(),
            sender: stream_0.clone(),
            cancel: cancel.clone(),
            path: name.as_bytes().to_vec(),
            piece: None,
            written: Written::default(),
            crc: proto::CrcPiece::default(),
            sha1: sha1.then(Sha1::new),
            seal: None,
        };
        let mut head = Manifest {
            format: proto::MANIFEST_FORMAT,
            tool: format!("producer {}", env!("CARGO_PKG_VERSION")),
            created_unix,
            backup_id: Some(backup_id.to_string()),
            chunk_size: config.chunk_size as u64,
            compression: compression(config),
            digest: config.digest,
            streams: Vec::new(),
            encryption: config.encryption.as_ref().map(|_| Encryption::Age),
            files: Vec::new(),
            directories: Vec::new(),
        };
        let sha1sums = (config.digest == Digest::Sha1).then(|| pieces(proto::SHA1SUMS_NAME, true));
        let secret = match &config.encryption {
            // The encrypted manifest: the real records, sealed as one more age file of the backup.
            Some(key) => Some(ManifestWriter::new(pieces(proto::SECRET_MANIFEST_NAME, false).sealed(key), &head)?),
            None => None,
        };
        // The clear manifest of an encrypted backup describes the files as they travel: opaque `.age` files,
        // none compressed.
        if secret.is_some() {
            head.compression = Compression::None;
        }
        let clear = ManifestWriter::new(pieces(proto::MANIFEST_NAME, false), &head)?;
        Ok(ManifestStream { clear, secret, sha1sums, line: Vec::new(), created_unix })
    }

    /// A finished file's record, written into each document (pieces that fill go out now).
    pub(crate) fn record(&mut self, record: &FileRecord) -> Result<()> {
        if let Some(list) = &mut self.sha1sums {
            self.line.clear();
            record.sha1sums_line(&mut self.line);
            std::io::Write::write_all(list, &self.line)?;
        }
        match &mut self.secret {
            Some(secret) => {
                secret.record(record)?;
                self.clear.record(&record.as_travelled())?;
            }
            None => self.clear.record(record)?,
        }
        Ok(())
    }

    /// Sends the records written so far now, in a piece that is not full: a batch's records go right after its
    /// files, so the consumer's writer still has them open (`Ended::held` there) and sets their mode and mtime on
    /// the descriptor. Not when encrypting: sealed pieces must be full but the last (no file is batched then).
    pub(crate) fn send_now(&mut self) -> Result<()> {
        if self.secret.is_none() {
            self.clear.get_mut().send_piece()?;
        }
        Ok(())
    }

    /// Every file has ended: the SHA-1 list ends (counted in the stream's tallies and listed in the manifests),
    /// then the encrypted manifest, then the clear one, each with the directories and the streams' tallies.
    pub(crate) fn finish(self, router: &Router) -> Result<()> {
        let ManifestStream { mut clear, mut secret, sha1sums, created_unix, .. } = self;
        if let Some(list) = sha1sums {
            let written = list.finish()?;
            // Counted on stream 0 now, so the manifest's stream totals include it.
            router.count(0, proto::SHA1SUMS_NAME.as_bytes(), written.chunks, written.len);
            let record = written.record(proto::SHA1SUMS_NAME, 0o644, created_unix);
            if let Some(secret) = &mut secret {
                secret.record(&record)?;
            }
            clear.record(&record)?;
        }
        let directories = router.directories.locked();
        if let Some(mut secret) = secret {
            for directory in directories.iter() {
                secret.directory(directory)?;
            }
            // It cannot count itself: its tallies are the streams' before it.
            let written = secret.finish(&stream_records(router))?.finish()?;
            router.count(0, proto::SECRET_MANIFEST_NAME.as_bytes(), written.chunks, written.len);
            clear.record(&written.record(proto::SECRET_MANIFEST_NAME, 0o600, created_unix))?;
        }
        for directory in directories.iter() {
            clear.directory(directory)?;
        }
        clear.finish(&stream_records(router))?.finish()?;
        Ok(())
    }
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

/// A document written to stream 0 as it is made, one piece (a document buffer) at a time.
struct DocumentPieces {
    pool: BufferPool,
    sender: Sender<StreamItem>,
    cancel: Cancel,
    path: Vec<u8>,
    piece: Option<PooledBuffer>,
    written: Written,
    crc: proto::CrcPiece,
    sha1: Option<Sha1>,
    seal: Option<DocumentSeal>,
}

/// A document written as an age file of the backup: each full piece is held back until the next one shows it is
/// not the last, then sealed where it lies (the first behind the header and nonce).
struct DocumentSeal {
    header: Vec<u8>,
    cipher: FileCipher,
    held: Option<PooledBuffer>,
    /// Plaintext offset of the held piece.
    offset: u64,
}

impl DocumentSeal {
    fn seal(&mut self, mut piece: PooledBuffer, last: bool) -> Result<PooledBuffer> {
        let len = piece.len();
        let lead = if self.offset == 0 { self.header.len() + NONCE_LEN } else { 0 };
        piece.set_len(piece.capacity());
        let end = self.cipher.seal_in_place(self.offset, &mut piece, len, last, lead)?;
        if lead > 0 {
            piece[..self.header.len()].copy_from_slice(&self.header);
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

impl Written {
    /// The manifest record of the document written, made by the producer at `created_unix`.
    fn record(self, name: &str, mode: u32, created_unix: u64) -> FileRecord {
        FileRecord {
            path: WirePath(name.as_bytes().to_vec()),
            size: self.len,
            mode,
            mtime: created_unix as i64,
            chunks: self.chunks,
            crc32: self.crc,
            sha1: self.sha1,
            stored: None,
            corrupt_pages: Vec::new(),
            corrupt_pages_total: 0,
        }
    }
}

impl DocumentPieces {
    /// The document as an age file of the backup `key` (its pieces are whole segments).
    fn sealed(mut self, key: &BackupKey) -> Self {
        let header = key.header().to_vec();
        self.seal = Some(DocumentSeal { header, cipher: key.new_file(), held: None, offset: 0 });
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
        let item = StreamItem::DocumentPiece { path: self.path.clone(), offset, data: piece };
        send(&self.sender, item, &self.cancel)?;
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
                    let mut empty = self.pool.take(&self.cancel)?;
                    empty.set_len(0);
                    empty
                }
            };
            let sealed = seal.seal(last, true)?;
            self.emit(sealed)?;
        }
        send(&self.sender, StreamItem::DocumentEnd { path: self.path.clone() }, &self.cancel)?;
        self.written.crc = self.crc.crc;
        self.written.sha1 = self.sha1.take().map(|sha1| hex::encode(sha1.finalize()));
        Ok(self.written)
    }
}

impl std::io::Write for DocumentPieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.piece.is_none() {
            let mut piece = self.pool.take(&self.cancel).map_err(std::io::Error::other)?;
            piece.set_len(0);
            self.piece = Some(piece);
        }
        let piece = self.piece.as_mut().expect("taken above");
        let start = piece.len();
        let n = buf.len().min(DOCUMENT_PIECE - start);
        piece.set_len(start + n);
        piece[start..].copy_from_slice(&buf[..n]);
        if piece.len() == DOCUMENT_PIECE {
            self.send_piece().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
