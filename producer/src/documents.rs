//! What the producer writes besides files: the start marker at the head of every stream, and on stream 0, last,
//! the SHA-1 list (`--digest sha1`) and the manifest, written as they are made, a pool buffer at a time.

use std::sync::atomic::Ordering;

use anyhow::Result;
use proto::{Compression, Digest, FileRecord, Manifest, ManifestWriter, StreamMarker, StreamRecord, WirePath};
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
    let head = Manifest {
        format: proto::MANIFEST_FORMAT,
        tool: format!("producer {}", env!("CARGO_PKG_VERSION")),
        created_unix,
        backup_id: Some(backup_id.to_string()),
        chunk_size: config.chunk_size as u64,
        compression: compression(config),
        digest: config.digest,
        streams: router
            .counts
            .iter()
            .enumerate()
            .map(|(index, count)| StreamRecord {
                index: index as u32,
                chunks: count.chunks.load(Ordering::Relaxed),
                bytes: count.bytes.load(Ordering::Relaxed),
            })
            .collect(),
        files: Vec::new(),
        directories: Vec::new(),
    };
    let pieces = DocumentPieces::new(router, pool, proto::MANIFEST_NAME.as_bytes().to_vec(), config.chunk_size, false);
    let mut manifest = ManifestWriter::new(pieces, &head)?;
    records.for_each(|record| Ok(manifest.record(record)?))?;
    for directory in router.directories.locked().iter() {
        manifest.directory(directory)?;
    }
    manifest.finish()?.finish()?;
    *router.records.locked() = records;
    Ok(())
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
        }
    }

    /// Sends the piece filled so far (nothing if it is empty).
    fn send_piece(&mut self) -> Result<()> {
        let Some(piece) = self.piece.take().filter(|piece| !piece.is_empty()) else { return Ok(()) };
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
