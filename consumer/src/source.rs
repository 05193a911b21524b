//! One input stream as a source of checked chunks: every reader of the consumer (`extract`, `--list`) reads its
//! streams through a [`StreamSource`].
//!
//! It parses chunks (magic, lengths, CRC — [`proto::ChunkReader`]), checks every path ([`proto::safe_relative_path`]),
//! takes the producer's start marker ([`proto::StreamMarker`]) off the head of the stream and checks that it belongs
//! there (this stream's number, the number of streams being read), and keeps the tallies the manifest is checked
//! against: chunks and encoded bytes, with and without the manifest's own chunks, and the stream's SHA-1.

use runtime::lock::Locked;
use std::io::{BufReader, Read};

use anyhow::{bail, Context, Result};
use proto::MANIFEST_NAME;
use proto::{is_marker_name, StreamMarker, MAX_MARKER_LEN};
use proto::{ChunkHeader, ChunkKind, ChunkReader, PayloadBuffer};

use transport::SkipControlByte;

use crate::input::{HashingReader, InputStream};

/// Read-ahead per stream (matches the producer's write coalescing).
pub const READ_BUFFER: usize = 256 << 10;

/// Chunks and encoded bytes of a stream, the manifest's own chunks excluded (the manifest's counting convention).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    /// Chunks.
    pub chunks: u64,
    /// Encoded bytes, headers included.
    pub bytes: u64,
}

/// A chunk of a file, its payload in the caller's buffer. Its path has passed [`proto::checked_relative_path`]
/// (unless it is a marker's).
#[derive(Debug)]
pub struct SourceChunk {
    /// The header as read.
    pub header: ChunkHeader,
    /// One of the start marker's chunks (only with [`StreamSource::pass_marker`]).
    pub marker: bool,
}

/// What a stream carried, once it has ended cleanly (at a chunk boundary).
#[derive(Debug, Clone)]
pub struct StreamEnd {
    /// Stream number.
    pub index: usize,
    /// `STDIN` or the pipe's path.
    pub name: String,
    /// The producer's start marker, if the stream had one (then it is ours and a manifest must follow).
    pub marker: Option<StreamMarker>,
    /// Every chunk read, marker and manifest included.
    pub chunks: u64,
    /// Every byte read.
    pub bytes: u64,
    /// Chunks and bytes without the manifest's own.
    pub counted: Counted,
    /// SHA-1 of the stream's bytes, when hashing.
    pub sha1: Option<String>,
}

/// What the first stream to start said about its backup, shared by every stream of a run so that pipes that do not
/// belong together are refused before any of their chunks is used: all marked with one backup id, or none marked.
#[derive(Debug, Default)]
pub struct SameBackup {
    first: std::sync::Mutex<Option<(usize, String, Option<String>)>>,
}

impl SameBackup {
    /// Checks stream `index` (`name`), whose marker carries `id` (`None`: no marker), against the first stream seen.
    fn check(&self, index: usize, name: &str, id: Option<&str>) -> Result<()> {
        let mut first = self.first.locked();
        let Some((first_index, first_name, first_id)) = &*first else {
            *first = Some((index, name.to_string(), id.map(str::to_string)));
            return Ok(());
        };
        match (first_id.as_deref(), id) {
            (Some(a), Some(b)) if a != b => bail!(
                "stream {index} ({name}) is from backup {b}, but stream {first_index} ({first_name}) is from backup \
                 {a}: the pipes of two backups are mixed up"
            ),
            (Some(a), None) => bail!(
                "stream {index} ({name}) has no start marker, but stream {first_index} ({first_name}) is from our \
                 producer (backup {a}): are the pipes from different producers?"
            ),
            (None, Some(b)) => bail!(
                "stream {first_index} ({first_name}) has no start marker, but stream {index} ({name}) is from our \
                 producer (backup {b}): are the pipes from different producers?"
            ),
            _ => Ok(()),
        }
    }
}

/// A stream's bytes as the chunk reader gets them: read ahead, hashed, the Percona control byte skipped.
type Buffered = BufReader<HashingReader<SkipControlByte<Box<dyn Read + Send>>>>;

/// One stream being read.
pub struct StreamSource {
    index: usize,
    name: String,
    reader: ChunkReader<Buffered>,
    expected_streams: usize,
    started: bool,
    marker: Option<StreamMarker>,
    chunks: u64,
    bytes: u64,
    counted: Counted,
    same_backup: std::sync::Arc<SameBackup>,
    pass_marker: bool,
    /// The marker's path, until its end-of-file chunk has been read.
    marker_end_pending: Option<Vec<u8>>,
}

impl StreamSource {
    /// A source over `input`, stream `index` of `expected_streams`; payloads above `max_payload` are refused
    /// before anything is allocated; `hash` keeps the stream's SHA-1; `same_backup` is shared by the run's streams.
    pub fn new(
        index: usize,
        input: InputStream,
        max_payload: u64,
        hash: bool,
        expected_streams: usize,
        same_backup: std::sync::Arc<SameBackup>,
    ) -> StreamSource {
        // A read buffer turns the three small header reads of each chunk into one system call per many small
        // chunks; payloads as large as the buffer bypass it and land directly in the caller's buffer.
        let skipping = SkipControlByte::new(input.file);
        let buffered = BufReader::with_capacity(READ_BUFFER, HashingReader::new(skipping, hash));
        StreamSource {
            index,
            name: input.name,
            reader: ChunkReader::new(buffered).with_max_payload(max_payload),
            expected_streams,
            started: false,
            marker: None,
            chunks: 0,
            bytes: 0,
            counted: Counted::default(),
            same_backup,
            pass_marker: false,
            marker_end_pending: None,
        }
    }

    /// The stream number.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `stream <i> (<name>)`, for messages.
    pub fn describe(&self) -> String {
        format!("stream {} ({})", self.index, self.name)
    }

    /// Whether the next chunk is already whole in the read-ahead buffer, so reading it will not wait on the input:
    /// a reader holding chunks back hands them on before a read that may wait.
    pub fn next_chunk_is_buffered(&self) -> bool {
        let buffered = self.reader.get_ref().buffer();
        proto::encoded_len_at(buffered).is_some_and(|len| len <= buffered.len() as u64)
    }

    /// The start marker, once the first chunk has been read.
    pub fn marker(&self) -> Option<&StreamMarker> {
        self.marker.as_ref()
    }

    /// With `pass`, [`StreamSource::next_chunk`] also returns the start marker's two chunks (flagged
    /// [`SourceChunk::marker`]), checked as usual: `put` stores streams verbatim.
    pub fn pass_marker(mut self, pass: bool) -> StreamSource {
        self.pass_marker = pass;
        self
    }

    /// The next chunk of a file, its payload in `payload`; `None` when the stream has ended at a chunk boundary.
    /// The start marker is taken off first (and checked); it is returned only with [`StreamSource::pass_marker`].
    pub fn next_chunk<P>(&mut self, payload: &mut P) -> Result<Option<SourceChunk>>
    where
        P: PayloadBuffer + std::ops::Deref<Target = [u8]>,
    {
        loop {
            let Some(header) = self.read(payload)? else {
                if let Some(path) = &self.marker_end_pending {
                    bail!(
                        "{}: the stream ended after the start marker {} without its end-of-file chunk",
                        self.describe(),
                        String::from_utf8_lossy(path)
                    );
                }
                return Ok(None);
            };
            if let Some(path) = self.marker_end_pending.take() {
                if header.kind != ChunkKind::Eof || header.path != path {
                    bail!(
                        "{}: the start marker {} is not followed by its end-of-file chunk (chunk at stream offset \
                         {:#x})",
                        self.describe(),
                        String::from_utf8_lossy(&path),
                        header.stream_offset
                    );
                }
                if self.pass_marker {
                    return Ok(Some(SourceChunk { header, marker: true }));
                }
                continue;
            }
            let first = !std::mem::replace(&mut self.started, true);
            if first && is_marker_name(&header.path) {
                self.take_marker(&header, &payload[..])?;
                let id = self.marker.as_ref().map(|m| m.backup_id.as_str());
                self.same_backup.check(self.index, &self.name, id)?;
                self.marker_end_pending = Some(header.path.clone());
                if self.pass_marker {
                    return Ok(Some(SourceChunk { header, marker: true }));
                }
                continue;
            }
            if first {
                self.same_backup.check(self.index, &self.name, None)?;
            }
            proto::checked_relative_path(&header.path).with_context(|| {
                format!(
                    "{}: unsafe path in the chunk at stream offset {:#x}; nothing is written outside -C",
                    self.describe(),
                    header.stream_offset
                )
            })?;
            return Ok(Some(SourceChunk { header, marker: false }));
        }
    }

    /// Reads one chunk and counts it.
    fn read(&mut self, payload: &mut impl PayloadBuffer) -> Result<Option<ChunkHeader>> {
        let header = self.reader.read_chunk(payload).with_context(|| self.describe())?;
        if let Some(header) = &header {
            let encoded = header.encoded_len();
            self.chunks += 1;
            self.bytes += encoded;
            if header.path != MANIFEST_NAME.as_bytes() {
                self.counted.chunks += 1;
                self.counted.bytes += encoded;
            }
        }
        Ok(header)
    }

    fn take_marker(&mut self, header: &ChunkHeader, payload: &[u8]) -> Result<()> {
        let what = || {
            format!(
                "{}: its start marker {} (stream offset {:#x})",
                self.describe(),
                header.display_path(),
                header.stream_offset
            )
        };
        if header.kind != ChunkKind::Payload || header.file_offset != 0 || header.payload_len > MAX_MARKER_LEN {
            bail!("{} is not one small payload chunk", what());
        }
        let marker = StreamMarker::from_json(payload).with_context(what)?;
        if header.path != proto::marker_name(marker.stream as usize).as_bytes() {
            bail!("{} names stream {}", what(), marker.stream);
        }
        if marker.streams as usize != self.expected_streams || marker.stream as usize != self.index {
            bail!(
                "{} says it is stream {} of {} of backup {}, but this is stream {} of {} being read: the pipes must \
                 be read with --fifo-streams {} from the producer's --fifo-dir, in order",
                self.describe(),
                marker.stream,
                marker.streams,
                marker.backup_id,
                self.index,
                self.expected_streams,
                marker.streams
            );
        }
        self.marker = Some(marker);
        Ok(())
    }

    /// The stream's tallies, once [`StreamSource::next_chunk`] has returned `None`.
    pub fn finish(self) -> StreamEnd {
        StreamEnd {
            index: self.index,
            name: self.name,
            marker: self.marker,
            chunks: self.chunks,
            bytes: self.bytes,
            counted: self.counted,
            sha1: self.reader.into_inner().into_inner().finish(),
        }
    }
}

/// Checks what the streams' start markers say about the backup as a whole, once they have all ended: either no
/// stream has a marker (a foreign stream: `mbstream -c`, `mariadb-backup`), or every stream has one, from the same
/// backup. Returns the backup id of a stream of ours.
pub fn check_markers(ends: &[StreamEnd]) -> Result<Option<String>> {
    let Some(first) = ends.iter().find_map(|end| end.marker.as_ref().map(|m| (end, m))) else { return Ok(None) };
    for end in ends {
        match &end.marker {
            None => bail!(
                "stream {} ({}) has no start marker, but stream {} ({}) is from our producer (backup {}): are the \
                 pipes from different producers?",
                end.index,
                end.name,
                first.0.index,
                first.0.name,
                first.1.backup_id
            ),
            Some(marker) if marker.backup_id != first.1.backup_id => bail!(
                "stream {} ({}) is from backup {}, but stream {} ({}) is from backup {}: the pipes of two backups \
                 are mixed up",
                end.index,
                end.name,
                marker.backup_id,
                first.0.index,
                first.0.name,
                first.1.backup_id
            ),
            Some(_) => {}
        }
    }
    Ok(Some(first.1.backup_id.clone()))
}

/// The error for a stream of ours that ended without its manifest: names the stream that should have carried it
/// (stream 0 carries the manifest last) and the offset where it ended.
pub fn missing_manifest(ends: &[StreamEnd], backup_id: &str) -> anyhow::Error {
    let first = &ends[0];
    anyhow::anyhow!(
        "stream {} ({}) is from our producer (backup {backup_id}) but ended at stream offset {:#x} ({} bytes) without \
         the backup's {MANIFEST_NAME}: the producer did not finish (killed, or failed: see its error); nothing was \
         extracted as complete",
        first.index,
        first.name,
        first.bytes,
        first.bytes
    )
}
