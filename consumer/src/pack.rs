//! A stream's packs as `put` fills them: whole encoded chunks appended to a pool buffer (`--object-size`), each
//! full pack handed to the uploaders with its key, size, chunk count and CRC-32 recorded for the index; and the
//! stream's table of contents (where each file's chunks lie in the packs, [`layout::TocRun`]), stored in parts of
//! about [`layout::TOC_PART`] bytes as it grows, so that `get --include` can read one file's bytes alone.

use anyhow::Result;
use crossbeam_channel::Sender;
use proto::{encode_eof, encode_payload_header, ChunkKind, CrcPiece};
use runtime::cancel::{send, Cancel};
use runtime::pool::{BufferPool, PooledBuffer};

use crate::layout::{self, Pack};
use crate::put::PutConfig;

/// What one reader hands an uploader: a pack (a pool buffer, handed over without a copy) or a part of a table of
/// contents.
pub(crate) struct Upload {
    pub(crate) key: String,
    pub(crate) data: bytes::Bytes,
}

/// A stream's packs being filled: whole encoded chunks into a pool buffer, a full one to the uploaders.
pub(crate) struct Packer<'a> {
    config: &'a PutConfig,
    put: &'a str,
    stream: usize,
    uploads: &'a Sender<Upload>,
    packs: &'a BufferPool,
    cancel: &'a Cancel,
    pack: Option<PooledBuffer>,
    chunks: u64,
    crc: CrcPiece,
    header: Vec<u8>,
    meta: Vec<Pack>,
    /// Every chunk and encoded byte packed.
    written: (u64, u64),
    /// The runs of the pack being filled: (path, from, to).
    runs: Vec<(Vec<u8>, u64, u64)>,
    /// The table of contents not stored yet (JSON lines).
    toc: Vec<u8>,
    /// The parts of the table of contents stored.
    toc_parts: Vec<Pack>,
}

impl<'a> Packer<'a> {
    /// An empty pack for stream `stream` of put `put`, its buffers from `packs`, full ones to `uploads`.
    pub(crate) fn new(
        config: &'a PutConfig,
        put: &'a str,
        stream: usize,
        uploads: &'a Sender<Upload>,
        packs: &'a BufferPool,
        cancel: &'a Cancel,
    ) -> Packer<'a> {
        Packer {
            config,
            put,
            stream,
            uploads,
            packs,
            cancel,
            pack: None,
            chunks: 0,
            crc: CrcPiece::default(),
            header: Vec::with_capacity(proto::MAX_HEADER_LEN),
            meta: Vec::new(),
            written: (0, 0),
            runs: Vec::new(),
            toc: Vec::new(),
            toc_parts: Vec::new(),
        }
    }

    /// Every chunk and encoded byte packed so far.
    pub(crate) fn written(&self) -> (u64, u64) {
        self.written
    }

    /// The packs sent and the parts of the table of contents, for the index (after [`Packer::finish`]).
    pub(crate) fn into_packs(self) -> (Vec<Pack>, Vec<Pack>) {
        (self.meta, self.toc_parts)
    }

    /// Sends the last pack and the rest of the table of contents.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.store_toc()
    }

    /// Sends the table of contents gathered so far as its next part.
    fn store_toc(&mut self) -> Result<()> {
        if self.toc.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.toc);
        let key = layout::toc_key(&self.config.name, self.put, self.stream, self.toc_parts.len() as u64);
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        self.toc_parts.push(Pack {
            key: key.clone(),
            size: data.len() as u64,
            chunks: lines,
            crc32: CrcPiece::of(&data).crc,
            e_tag: None,
        });
        send(self.uploads, Upload { key, data: bytes::Bytes::from(data) }, self.cancel)?;
        Ok(())
    }

    /// Appends one chunk (`checksum`: its payload's CRC-32).
    pub(crate) fn append(
        &mut self,
        kind: ChunkKind,
        path: &[u8],
        offset: u64,
        payload: &[u8],
        checksum: u32,
    ) -> Result<()> {
        self.header.clear();
        match kind {
            ChunkKind::Payload => encode_payload_header(&mut self.header, path, offset, payload.len() as u64, checksum),
            ChunkKind::Eof => encode_eof(&mut self.header, path),
        }
        let body = if kind == ChunkKind::Payload { payload } else { &[] };
        let need = self.header.len() + body.len();
        if self.pack.as_ref().is_some_and(|p| p.len() + need > self.config.object_size) {
            self.flush()?;
        }
        let buffer = match &mut self.pack {
            Some(buffer) => buffer,
            None => self.pack.insert(self.packs.take(self.cancel)?),
        };
        let start = buffer.len();
        let (from, to) = (start as u64, (start + need) as u64);
        match self.runs.last_mut() {
            Some((last, _, end)) if *end == from && last.as_slice() == path => *end = to,
            _ => self.runs.push((path.to_vec(), from, to)),
        }
        buffer.set_len(start + need);
        buffer[start..start + self.header.len()].copy_from_slice(&self.header);
        buffer[start + self.header.len()..].copy_from_slice(body);
        // The payload's CRC is known (the stream's reader checked it, or the sealer computed it): only the header
        // is hashed here, and the two are combined, so put reads each payload once less.
        debug_assert!(body.is_empty() || checksum == CrcPiece::of(body).crc, "a payload with the wrong CRC");
        let body_crc = CrcPiece { crc: if body.is_empty() { 0 } else { checksum }, len: body.len() as u64 };
        self.crc = self.crc.append(CrcPiece::of(&self.header)).append(body_crc);
        self.chunks += 1;
        self.written = (self.written.0 + 1, self.written.1 + need as u64);
        Ok(())
    }

    /// Sends the pack filled so far to the uploaders.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let Some(data) = self.pack.take() else { return Ok(()) };
        let seq = self.meta.len() as u64;
        let runs = std::mem::take(&mut self.runs);
        for (path, from, to) in runs {
            let run = layout::TocRun { pack: seq, path: proto::WirePath(path), from, to };
            serde_json::to_writer(&mut self.toc, &run)?;
            self.toc.push(b'\n');
            // Parts end between lines, inside a pack's runs too (each line names its pack).
            if self.toc.len() >= layout::TOC_PART {
                self.store_toc()?;
            }
        }
        let key = layout::pack_key(&self.config.name, self.put, self.stream, seq);
        self.meta.push(Pack {
            key: key.clone(),
            size: data.len() as u64,
            chunks: self.chunks,
            crc32: self.crc.crc,
            e_tag: None,
        });
        (self.chunks, self.crc) = (0, CrcPiece::default());
        send(self.uploads, Upload { key, data: bytes::Bytes::from_owner(data) }, self.cancel)?;
        Ok(())
    }
}
