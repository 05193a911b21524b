//! `get` to STDOUT of a backup stored from several streams: the streams merged into one that `mbstream -x` can
//! extract.
//!
//! The merge needs one chunk of look-ahead per stream: the producer releases a file's chunk k to its stream before
//! chunk k+1 to any stream, so on every stream a file's chunks are in order and some stream's next chunk is always
//! the next one its file needs (an end-of-file chunk is due once the manifest's count of payload chunks for that
//! file has gone out). Files the manifest does not list (a foreign multi-pipe backup, where files never span pipes)
//! are emitted in their stream's order. Among the chunks that are due, one that `mbstream -x` can place goes first:
//! a file's first chunk waits while its directory cannot be created yet (`mbstream` creates only a file's immediate
//! parent), as long as another stream has a chunk due; when none has, it goes anyway (the stored order leaves no
//! other: that is the producer's ordering to fix).

use std::collections::{HashMap, VecDeque};
use std::io::{BufWriter, Write};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use proto::ChunkKind;
use proto::{marker_name, MarkerBinding, StreamMarker};
use proto::{ChunkHeader, ChunkWriter};
use proto::{Manifest, StreamRecord, MANIFEST_NAME};

use crate::input::InputStream;
use crate::sent_check::SentCheck;
use crate::source::{SameBackup, StreamSource};

/// The directories `mbstream -x` has created for the files the merge has put out so far. It creates only a file's
/// immediate parent (`../shared/xbstream-spec.md` §2), and exits 0 after failing to: a file can go out safely once
/// its directory exists, or that directory's parent does (the top directory always exists).
#[derive(Default)]
struct MadeDirectories(std::collections::HashSet<Vec<u8>>);

impl MadeDirectories {
    /// Whether `mbstream -x` could create `path` now.
    fn can_place(&self, path: &[u8]) -> bool {
        let dir = parent_directory(path);
        let up = parent_directory(dir);
        dir.is_empty() || self.0.contains(dir) || up.is_empty() || self.0.contains(up)
    }

    /// Notes that a chunk of `path` went out (and so its directory was created).
    fn placed(&mut self, path: &[u8]) {
        let dir = parent_directory(path);
        if !dir.is_empty() && !self.0.contains(dir) {
            self.0.insert(dir.to_vec());
        }
    }
}

/// The directory part of a wire path (empty at the top).
fn parent_directory(path: &[u8]) -> &[u8] {
    path.iter().rposition(|&b| b == b'/').map_or(&[][..], |slash| &path[..slash])
}

/// What the merge knows of a file the manifest lists.
struct Due {
    /// Payload chunks the file has.
    chunks: u64,
    /// Payload chunks gone out.
    emitted: u64,
    /// The offset its next payload chunk must have.
    next_offset: u64,
}

/// Merges the stored streams `inputs` into one, each file's chunks in order, planned from the stored `manifest`
/// (which is written out last with its stream counts made those of the merged stream), every file checked against
/// it before its end goes out; chunks up to `max_chunk` bytes. Returns the bytes written.
pub fn merge(inputs: Vec<InputStream>, max_chunk: u64, mut manifest: Manifest, out: &mut impl Write) -> Result<u64> {
    let count = inputs.len();
    let same = Arc::new(SameBackup::default());
    let mut sources: Vec<StreamSource> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| StreamSource::new(i, input, max_chunk, false, count, Arc::clone(&same)))
        .collect();
    let mut heads: Vec<Option<(ChunkHeader, Vec<u8>)>> = Vec::with_capacity(count);
    // Payload buffers of chunks gone out, reused (a fresh one per chunk costs an allocation and its page faults).
    let mut spare: Vec<Vec<u8>> = Vec::with_capacity(count);
    for source in &mut sources {
        let mut payload = Vec::new();
        heads.push(source.next_chunk(&mut payload)?.map(|chunk| (chunk.header, payload)));
    }
    let original = sources[0].marker().cloned().ok_or_else(|| anyhow!("stored stream 0 has no start marker"))?;
    let mut writer = ChunkWriter::new(BufWriter::with_capacity(256 << 10, out));
    let mut chunks = 0u64;
    // A new marker: one stream now, each file whole and in order on it.
    let marker = StreamMarker { stream: 0, streams: 1, binding: MarkerBinding::File, ..original };
    let marker_name = marker_name(0).into_bytes();
    writer.write_payload(&marker_name, 0, &marker.to_json())?;
    writer.write_eof(&marker_name)?;
    chunks += 2;
    // Every file the manifest lists, by its path on the wire, with its count of payload chunks.
    let mut due: HashMap<Vec<u8>, Due> = manifest
        .files
        .iter()
        .map(|record| {
            let wire = record.stored.as_ref().map_or(&record.path, |stored| &stored.path);
            (wire.0.clone(), Due { chunks: record.chunks, emitted: 0, next_offset: 0 })
        })
        .collect();
    let mut pending: VecDeque<usize> = (0..count).collect();
    let mut made = MadeDirectories::default();
    // Every file against its manifest record, before its end-of-file chunk goes out.
    let mut check = SentCheck::new(&manifest)?;
    loop {
        // Refill empty heads.
        for (i, source) in sources.iter_mut().enumerate() {
            if heads[i].is_none() && pending.contains(&i) {
                let mut payload = spare.pop().unwrap_or_default();
                match source.next_chunk(&mut payload)? {
                    Some(chunk) => heads[i] = Some((chunk.header, payload)),
                    None => {
                        pending.retain(|&p| p != i);
                        spare.push(payload);
                    }
                }
            }
        }
        if heads.iter().all(Option::is_none) {
            break;
        }
        // The first head that is due, preferring one that `mbstream -x` can place: a file's first chunk waits while
        // its directory cannot be created yet and another stream has a chunk due.
        let is_due = |head: &Option<(ChunkHeader, Vec<u8>)>| {
            let Some((header, _)) = head else { return false };
            if header.path == MANIFEST_NAME.as_bytes() {
                return true;
            }
            match (due.get(&header.path), header.kind) {
                (None, _) => true,
                (Some(file), ChunkKind::Payload) => header.file_offset == file.next_offset,
                (Some(file), ChunkKind::Eof) => file.emitted == file.chunks,
            }
        };
        let placeable = |head: &Option<(ChunkHeader, Vec<u8>)>| {
            let Some((header, _)) = head else { return false };
            let starts_file = due.get(&header.path).is_some_and(|file| file.emitted == 0);
            !starts_file || made.can_place(&header.path)
        };
        let pick =
            heads.iter().position(|head| is_due(head) && placeable(head)).or_else(|| heads.iter().position(is_due));
        let Some(i) = pick else {
            bail!("the stored streams cannot be merged in order (is the backup damaged?)");
        };
        let (header, payload) = heads[i].take().expect("picked a head");
        if header.path == MANIFEST_NAME.as_bytes() {
            // The stream's own manifest (last on stream 0) is replaced by the rewritten one below.
            continue;
        }
        made.placed(&header.path);
        check.chunk(&header)?;
        match header.kind {
            ChunkKind::Payload => {
                writer.write_payload_with_checksum(&header.path, header.file_offset, &payload, header.checksum)?;
                if let Some(file) = due.get_mut(&header.path) {
                    file.emitted += 1;
                    file.next_offset = header.file_offset + header.payload_len;
                }
            }
            ChunkKind::Eof => {
                writer.write_eof(&header.path)?;
                due.remove(&header.path);
            }
        }
        chunks += 1;
        spare.push(payload);
    }
    if let Some(path) = due.keys().next() {
        bail!("{} never ended in the stored streams", String::from_utf8_lossy(path));
    }
    check.finish()?;
    let bytes_before = writer.position();
    manifest.streams = vec![StreamRecord { index: 0, chunks, bytes: bytes_before }];
    // Rewritten in this build's layout.
    manifest.format = proto::MANIFEST_FORMAT;
    let json = manifest.to_json();
    let piece = manifest.chunk_size.max(1) as usize;
    for (n, part) in json.chunks(piece).enumerate() {
        writer.write_payload(MANIFEST_NAME.as_bytes(), (n * piece) as u64, part)?;
    }
    writer.write_eof(MANIFEST_NAME.as_bytes())?;
    let written = writer.position();
    writer.flush()?;
    Ok(written)
}
