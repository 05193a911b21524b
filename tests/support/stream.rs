//! xbstream bytes in memory: a stream parsed into its chunks and encoded back (to damage or forge one chunk of a
//! real producer stream; its manifest rewritten, in this layout or format 1's), and a reader that hands them over a few
//! bytes at a time (to flush out partial-read bugs).

use std::io::{self, Read};

use proto::{ChunkHeader, ChunkKind, ChunkReader, ChunkWriter};

/// A stream's chunks in order: each header with its payload.
pub type Chunks = Vec<(ChunkHeader, Vec<u8>)>;

/// Every chunk of a well-formed `stream` (panics on a malformed one: the tests parse streams they made).
pub fn parse(stream: &[u8]) -> Chunks {
    ChunkReader::new(stream).collect::<Result<_, _>>().unwrap()
}

/// `chunks` written again as a stream (headers and CRCs recomputed from the payloads): [`parse`]'s inverse.
pub fn encode(chunks: &Chunks) -> Vec<u8> {
    let mut writer = ChunkWriter::new(Vec::new());
    for (header, payload) in chunks {
        match header.kind {
            ChunkKind::Payload => writer.write_payload(&header.path, header.file_offset, payload).unwrap(),
            ChunkKind::Eof => writer.write_eof(&header.path).unwrap(),
        }
    }
    writer.into_inner()
}

/// A reader that returns between 1 and `max` bytes per `read()`, chosen by a seeded generator, to flush out
/// partial-read bugs (tar-rs' `RandomReader`).
pub struct ShortReader<R> {
    inner: R,
    max: usize,
    state: u64,
}

impl<R: Read> ShortReader<R> {
    /// Wraps `inner`; `seed` makes the read sizes reproducible.
    pub fn new(inner: R, max: usize, seed: u64) -> ShortReader<R> {
        ShortReader { inner, max: max.max(1), state: seed | 1 }
    }

    fn next_len(&mut self) -> usize {
        // xorshift64: enough to vary read sizes, reproducible from the seed.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % self.max as u64) as usize
    }
}

impl<R: Read> Read for ShortReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = self.next_len().min(buf.len());
        self.inner.read(&mut buf[..len])
    }
}

/// The stream with its manifest (read whole, changed by `change`) written again in one place, at its end-of-file
/// chunk, in `layout` (4 KiB chunks, CRCs recomputed; the manifest's own chunks are not counted in the streams'
/// tallies, so they stay right).
pub fn rewrite_manifest(
    stream: &[u8],
    change: impl Fn(&mut proto::Manifest),
    layout: impl Fn(&proto::Manifest) -> Vec<u8>,
) -> Vec<u8> {
    let mut writer = ChunkWriter::new(Vec::new());
    let mut manifest = Vec::new();
    for (header, payload) in &parse(stream) {
        match header.kind {
            ChunkKind::Payload if header.path == proto::MANIFEST_NAME.as_bytes() => manifest.extend_from_slice(payload),
            ChunkKind::Payload => writer.write_payload(&header.path, header.file_offset, payload).unwrap(),
            ChunkKind::Eof if header.path == proto::MANIFEST_NAME.as_bytes() => {
                let mut parsed = proto::Manifest::from_json(&manifest).unwrap();
                change(&mut parsed);
                for (i, piece) in layout(&parsed).chunks(4096).enumerate() {
                    writer.write_payload(&header.path, (i * 4096) as u64, piece).unwrap();
                }
                writer.write_eof(&header.path).unwrap();
            }
            ChunkKind::Eof => writer.write_eof(&header.path).unwrap(),
        }
    }
    writer.into_inner()
}

/// The stream's manifest changed, in this build's layout, at the end.
pub fn with_manifest(stream: &[u8], change: impl Fn(&mut proto::Manifest)) -> Vec<u8> {
    rewrite_manifest(stream, change, proto::Manifest::to_json)
}

/// The stream's manifest changed, in format 1's layout (the streams' tallies before the files), as earlier
/// producers wrote it.
pub fn with_format_1_manifest(stream: &[u8], change: impl Fn(&mut proto::Manifest)) -> Vec<u8> {
    rewrite_manifest(stream, change, |manifest| {
        let text = String::from_utf8(proto::Manifest { format: 1, ..manifest.clone() }.to_json()).unwrap();
        let (body, streams) = text.split_once(",\"streams\":").unwrap();
        let streams = streams.strip_suffix("}\n").unwrap();
        format!("{}}}\n", body.replacen(",\"files\":[", &format!(",\"streams\":{streams},\"files\":["), 1)).into_bytes()
    })
}

/// The stream with its manifest's chunks all moved to the end, in their order: the stream as producers before
/// manifest format 2 sent it, every record after every file (so a consumer holds every ended file until the end,
/// and reaches its memory bound).
pub fn manifest_last(stream: &[u8]) -> Vec<u8> {
    let (manifest, mut files): (Chunks, Chunks) =
        parse(stream).into_iter().partition(|(header, _)| header.path == proto::MANIFEST_NAME.as_bytes());
    files.extend(manifest);
    encode(&files)
}
