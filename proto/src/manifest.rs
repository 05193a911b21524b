//! The backup manifest: a JSON document the producer streams with every backup, so a consumer can prove that
//! nothing is missing, duplicated or damaged.
//!
//! Format 2 (written since issue #22) is made as the backup goes: the head, then each file's record as the file
//! completes, then the directories, then the streams' tallies, which only the end knows. The producer sends it as
//! one file whose chunks interleave with the files' through the whole run (its end-of-file chunk last), so a
//! consumer checks files while the stream still flows; `mbstream -x` still writes it whole. Format 1 (the streams
//! before the files, the whole manifest sent after every file) is still read.
//!
//! It is named [`MANIFEST_NAME`] (`backup-manifest.json`): a name `mbstream -x` accepts (it rejects names starting
//! with `.`). With `--digest sha1` the producer also streams [`SHA1SUMS_NAME`] (`backup-manifest.sha1`) just before
//! it, in `sha1sum` format, so a restored tree can be checked with plain `sha1sum -c backup-manifest.sha1`.
//!
//! A source tree that already holds a top-level file with either name (typically a tree restored from an earlier
//! backup) does not get it copied: the producer skips it with a warning and writes its own. The file list, sizes and
//! checksums in the new manifest describe every other file.
//!
//! Counting conventions, shared by both sides:
//! - a file's `chunks` is its number of payload (`P`) chunks; an empty file has 0 (it travels as one `E` chunk);
//! - a stream's `chunks` and `bytes` count everything written to that stream *except* the manifest file's own
//!   chunks (the manifest cannot count itself); `bytes` are encoded bytes (headers included). The start marker
//!   ([`crate::StreamMarker`]) is counted.

use crate::CrcPiece;
use serde::{Deserialize, Serialize};

/// File name of the manifest, at the top of the backup.
pub const MANIFEST_NAME: &str = "backup-manifest.json";

/// File name of the `sha1sum -c` list streamed with `--digest sha1`.
pub const SHA1SUMS_NAME: &str = "backup-manifest.sha1";

/// Name of the empty file `producer --dir-placeholders` puts in each directory that holds no file of its own, so
/// that `mbstream -x` (which creates a directory only for a file in it) creates the directory. The manifest marks
/// such directories ([`DirectoryRecord::placeholder`]); our consumer removes the placeholder after the proof. No
/// leading `.`: `mbstream -x` refuses such names.
pub const PLACEHOLDER_NAME: &str = "xbkit-directory-placeholder";

/// The encrypted manifest of an encrypted backup ([`Encryption::Age`]): the full manifest, its records naming
/// each file's original path, size and checksums and binding it to its `.age` form and payload nonce, as one age
/// file under the backup's header. Streamed just before [`MANIFEST_NAME`], which lists it like any other file.
pub const SECRET_MANIFEST_NAME: &str = "backup-manifest.json.age";

/// The suffix of every file of an encrypted backup (`<path>.age`, `<path>.zst.age` when also compressed).
pub const AGE_SUFFIX: &str = ".age";

/// Version of the manifest layout this build writes; a consumer refuses versions it does not know.
pub const MANIFEST_FORMAT: u32 = 2;

/// The oldest manifest layout this build reads (format 1: the same fields, `streams` before `files`).
pub const MANIFEST_FORMAT_OLDEST: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The program and version that wrote it, e.g. `"producer 0.1.0"`.
    pub tool: String,
    /// Seconds since the Unix epoch when the backup started.
    pub created_unix: u64,
    /// The id every stream's start marker carries ([`crate::StreamMarker`]); absent for a copy with no stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Size of the payload chunks the files were split into (the last chunk of a file may be shorter).
    pub chunk_size: u64,
    /// How payloads were transformed before streaming.
    pub compression: Compression,
    /// Which content checksums the file records carry.
    pub digest: Digest,
    /// How the files are encrypted (absent: they are not). In the clear manifest of an encrypted backup every
    /// record describes a file's `.age` form as it travels (so a consumer without the key still proves that every
    /// byte arrived), `compression` is `none`, and the real records are in [`SECRET_MANIFEST_NAME`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    // The head's fields come first, then `files`, `directories` and `streams` ([`ManifestWriter`]).
    /// Every file in the backup except the manifest itself, in the order they were completed.
    pub files: Vec<FileRecord>,
    /// Every directory below the top of the backup, parents before children, with its mode and mtime: xbstream
    /// carries only files, so this is how empty directories and directory modes come back. (Absent in manifests
    /// written before directories were recorded.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<DirectoryRecord>,
    /// One record per output stream, in stream order: what each carried. Written last (format 2), since only the
    /// end of the backup knows it; before the files in format 1.
    pub streams: Vec<StreamRecord>,
}

/// How an encrypted backup's files are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Encryption {
    /// Each file travels as `<path>.age`, an age v1 file; every file of the backup shares one header (one file
    /// key, wrapped once per recipient) and has a payload nonce of its own.
    Age,
}

/// One backed-up directory (the top of the backup is not one: it is the consumer's `-C OUT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRecord {
    /// Relative path, as [`FileRecord::path`].
    pub path: WirePath,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Whether the stream carries a [`PLACEHOLDER_NAME`] file in it (`--dir-placeholders`), which is not part of
    /// the backed-up tree.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placeholder: bool,
}

/// Payload transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Compression {
    /// Payload bytes are the file's bytes.
    None,
    /// Each chunk is one zstd frame; the file travels as `<path>.zst`.
    Zstd {
        /// The zstd level used.
        level: i32,
    },
}

/// Which checksums of the original content the manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Digest {
    /// CRC-32 only (combined from the chunk CRCs: free).
    Crc32,
    /// CRC-32 and SHA-1.
    Sha1,
}

/// What one output stream carried (the manifest's own chunks excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Stream number: 0 for STDOUT or `thread_0`.
    pub index: u32,
    /// Chunks written, `P` and `E`.
    pub chunks: u64,
    /// Encoded bytes written, headers included.
    pub bytes: u64,
}

/// One backed-up file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative path: a string when it is UTF-8, otherwise `{"hex": "..."}` of its bytes.
    pub path: WirePath,
    /// Size of the original content, exactly as copied.
    pub size: u64,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Number of payload chunks.
    pub chunks: u64,
    /// CRC-32 (zlib) of the original content.
    pub crc32: u32,
    /// SHA-1 of the original content, lowercase hex, with `--digest sha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    /// How the file travels when that differs from the original (compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredForm>,
    /// InnoDB pages found corrupt while copying and still corrupt after every re-read, recorded with
    /// `producer --validate-pages --log-page-corruption` (the copy is faithful: these pages were bad at the source).
    /// (At most the first 1024 such pages are listed; `corrupt_pages_total` counts them all.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt_pages: Vec<u64>,
    /// How many pages were recorded corrupt, listed or not (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrupt_pages_total: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The on-the-wire form of a file whose payload was transformed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredForm {
    /// Path on the wire, e.g. `db/t1.ibd.zst`.
    pub path: WirePath,
    /// Bytes on the wire.
    pub size: u64,
    /// CRC-32 of the bytes on the wire.
    pub crc32: u32,
    /// For an `.age` form, in the encrypted manifest: the 16-byte payload nonce that follows its header, lowercase
    /// hex. It binds the path to its ciphertext (each file's payload key derives from it; age authenticates no
    /// name), so a file swapped for another of the same backup is caught.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// A path as raw bytes, serialised as a JSON string when it is UTF-8 (the usual case) and as `{"hex": "..."}`
/// otherwise, since JSON strings cannot carry arbitrary bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WirePath(pub Vec<u8>);

impl WirePath {
    /// The path for messages: lossy UTF-8.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WirePathRepr {
    Text(String),
    Bytes { hex: String },
}

impl Serialize for WirePath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => WirePathRepr::Text(text.to_string()),
            Err(_) => WirePathRepr::Bytes { hex: hex::encode(&self.0) },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for WirePath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match WirePathRepr::deserialize(deserializer)? {
            WirePathRepr::Text(text) => Ok(WirePath(text.into_bytes())),
            WirePathRepr::Bytes { hex } => hex::decode(hex).map(WirePath).map_err(serde::de::Error::custom),
        }
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid JSON, or not this layout.
    #[error("manifest is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A layout version this build does not know.
    #[error(
        "manifest format {found} is not supported (this build reads formats {MANIFEST_FORMAT_OLDEST} to \
         {MANIFEST_FORMAT})"
    )]
    UnsupportedFormat {
        /// The version found.
        found: u32,
    },
}

/// Compact JSON with a line break before each element of the top-level arrays (`files`, `streams`): a million
/// file records cost no indentation to write, send and parse (pretty JSON is half whitespace), and each file is
/// still one line for `grep` (`jq .` shows the rest).
struct RecordPerLine {
    depth: usize,
}

impl serde_json::ser::Formatter for RecordPerLine {
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        writer.write_all(b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        writer.write_all(b"}")
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        writer.write_all(b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        writer.write_all(if self.depth == 1 { b"\n]" } else { b"]" })
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            writer.write_all(b",")?;
        }
        if self.depth == 2 {
            writer.write_all(b"\n")?;
        }
        Ok(())
    }
}

impl Manifest {
    /// Serialises to JSON in this build's layout (format 2: head, files, directories, streams), one line per
    /// file, directory and stream record, with a trailing newline (what [`ManifestWriter`] writes). The `format`
    /// field is written as it is: set it to [`MANIFEST_FORMAT`] when rewriting an older manifest.
    pub fn to_json(&self) -> Vec<u8> {
        let mut writer = ManifestWriter::new(Vec::with_capacity(256 + self.files.len() * 128), self)
            .expect("writing to memory cannot fail");
        for record in &self.files {
            writer.record(record).expect("writing to memory cannot fail");
        }
        for record in &self.directories {
            writer.directory(record).expect("writing to memory cannot fail");
        }
        writer.finish(&self.streams).expect("writing to memory cannot fail")
    }

    /// Parses and checks the format version.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        check_format(manifest.format)?;
        Ok(manifest)
    }

    /// The wire paths of the placeholder files of `--dir-placeholders` ([`PLACEHOLDER_NAME`] in each directory
    /// marked [`DirectoryRecord::placeholder`]): in the stream, not in the backed-up tree.
    pub fn placeholder_paths(&self) -> std::collections::HashSet<Vec<u8>> {
        self.directories
            .iter()
            .filter(|directory| directory.placeholder)
            .map(|directory| [&directory.path.0[..], b"/", PLACEHOLDER_NAME.as_bytes()].concat())
            .collect()
    }

    /// The `sha1sum -c` list of the files that carry a SHA-1 (`<hex>  <path>` lines). Non-UTF-8 paths are written
    /// as raw bytes, which `sha1sum` also reads.
    pub fn sha1sums(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for file in &self.files {
            file.sha1sums_line(&mut out);
        }
        out
    }
}

impl FileRecord {
    /// Appends this file's line of the `sha1sum -c` list (`<hex>  <path>`), if it carries a SHA-1. A path holding
    /// a backslash, a newline or a carriage return is written as GNU `sha1sum` writes it: the line starts with a
    /// backslash and those characters are escaped (`\\`, `\n`, `\r`), so `sha1sum -c` reads it back.
    pub fn sha1sums_line(&self, out: &mut Vec<u8>) {
        let Some(sha1) = &self.sha1 else { return };
        let path = &self.path.0;
        let escape = path.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
        if escape {
            out.push(b'\\');
        }
        out.extend_from_slice(sha1.as_bytes());
        out.extend_from_slice(b"  ");
        if !escape {
            out.extend_from_slice(path);
        } else {
            for &byte in path {
                match byte {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    other => out.push(other),
                }
            }
        }
        out.push(b'\n');
    }

    /// The record of a file as it travels, for the clear manifest of an encrypted backup: its `.age` path, size,
    /// CRC-32 and chunks, and nothing of its content (no original size, checksum or digest). A record without a
    /// stored form is returned as it is.
    pub fn as_travelled(&self) -> FileRecord {
        let Some(stored) = &self.stored else { return self.clone() };
        FileRecord {
            path: stored.path.clone(),
            size: stored.size,
            crc32: stored.crc32,
            sha1: None,
            stored: None,
            ..self.clone()
        }
    }

    /// The file as it travels on the wire: its path there, and the size and CRC-32 of its bytes there (the
    /// compressed form's, when it was compressed).
    pub fn as_sent(&self) -> (&[u8], CrcPiece) {
        match &self.stored {
            Some(stored) => (&stored.path.0, CrcPiece { crc: stored.crc32, len: stored.size }),
            None => (&self.path.0, CrcPiece { crc: self.crc32, len: self.size }),
        }
    }
}

/// A format this build reads, or the error naming it.
fn check_format(found: u32) -> Result<(), ManifestError> {
    match (MANIFEST_FORMAT_OLDEST..=MANIFEST_FORMAT).contains(&found) {
        true => Ok(()),
        false => Err(ManifestError::UnsupportedFormat { found }),
    }
}

/// The head of a manifest as written: every field but the lists, in the order of [`Manifest`].
#[derive(Serialize)]
struct HeadFields<'m> {
    format: u32,
    tool: &'m str,
    created_unix: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_id: &'m Option<String>,
    chunk_size: u64,
    compression: Compression,
    digest: Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<Encryption>,
}

/// Writes a manifest piece by piece as the backup goes — the head, then one file record at a time, then the
/// directory records, then the streams' tallies — so that a producer with millions of files never holds the whole
/// document (or every record) in memory, and sends each record soon after its file. The bytes are exactly
/// [`Manifest::to_json`]'s.
pub struct ManifestWriter<W> {
    out: W,
    records: u64,
    directories: u64,
}

impl<W: std::io::Write> ManifestWriter<W> {
    /// Starts a manifest with `head`'s fields (its lists are not written: the records follow with
    /// [`ManifestWriter::record`] and [`ManifestWriter::directory`], the streams with [`ManifestWriter::finish`]).
    pub fn new(mut out: W, head: &Manifest) -> std::io::Result<ManifestWriter<W>> {
        let fields = HeadFields {
            format: head.format,
            tool: &head.tool,
            created_unix: head.created_unix,
            backup_id: &head.backup_id,
            chunk_size: head.chunk_size,
            compression: head.compression,
            digest: head.digest,
            encryption: head.encryption,
        };
        let mut bytes = serde_json::to_vec(&fields).map_err(std::io::Error::other)?;
        // The head's object stays open: the files list follows.
        bytes.pop();
        bytes.extend_from_slice(b",\"files\":[");
        out.write_all(&bytes)?;
        Ok(ManifestWriter { out, records: 0, directories: 0 })
    }

    /// Appends one file record, on its own line (every file comes before the first directory).
    pub fn record(&mut self, record: &FileRecord) -> std::io::Result<()> {
        assert_eq!(self.directories, 0, "files come before directories");
        self.out.write_all(if self.records == 0 { b"\n" } else { b",\n" })?;
        self.records += 1;
        // At the depth of the files list, so nested lists stay on the record's line.
        let mut serializer = serde_json::Serializer::with_formatter(&mut self.out, RecordPerLine { depth: 2 });
        record.serialize(&mut serializer).map_err(std::io::Error::other)
    }

    /// Appends one directory record, on its own line, after every file record.
    pub fn directory(&mut self, record: &DirectoryRecord) -> std::io::Result<()> {
        if self.directories == 0 {
            // The files list closes, the directories list opens.
            self.out.write_all(b"\n],\"directories\":[\n")?;
        } else {
            self.out.write_all(b",\n")?;
        }
        self.directories += 1;
        let mut serializer = serde_json::Serializer::with_formatter(&mut self.out, RecordPerLine { depth: 2 });
        record.serialize(&mut serializer).map_err(std::io::Error::other)
    }

    /// The writer it writes to (writing to it directly would corrupt the manifest; for a writer's own calls, such
    /// as sending what it holds).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The records written so far (files and directories).
    pub fn records(&self) -> u64 {
        self.records + self.directories
    }

    /// Closes the lists, writes the streams' tallies (`streams`: what only the end knows) and closes the manifest
    /// (with a trailing newline); returns the writer.
    pub fn finish(mut self, streams: &[StreamRecord]) -> std::io::Result<W> {
        self.out.write_all(b"\n],\"streams\":[")?;
        for (n, stream) in streams.iter().enumerate() {
            self.out.write_all(if n == 0 { b"\n" } else { b",\n" })?;
            serde_json::to_writer(&mut self.out, stream).map_err(std::io::Error::other)?;
        }
        self.out.write_all(b"\n]}\n")?;
        Ok(self.out)
    }
}

/// Why [`Manifest::read_streaming`] stopped.
#[derive(Debug)]
pub enum StreamingError<E> {
    /// The manifest is not valid (or not this format).
    Manifest(ManifestError),
    /// A callback stopped the read with this error.
    Stopped(E),
}

/// The most bytes of manifest [`Manifest::read_streaming`] holds at once: the head (every field but the files), or
/// one file record. Ours are a few hundred bytes (a record lists at most 1,024 corrupt pages); a larger one is a
/// hostile or damaged manifest, refused before it can make the reader allocate without bound.
pub const MAX_MANIFEST_PIECE: u64 = 1 << 20;

/// The read buffer [`Manifest::read_streaming`] puts between its reader and the JSON parser, which takes a byte at a
/// time: through a `BufReader` that costs a buffer index, through any other reader a call per byte (that was half
/// the manifest thread's time).
const STREAMING_BUFFER: usize = 32 << 10;

/// A reader that fails once more than [`MAX_MANIFEST_PIECE`] bytes, less a read buffer, have been read since the last
/// mark. It sits below the parser's read buffer, so it counts what the buffer fetched: up to a buffer more or less
/// than what the parser consumed. So a piece over [`MAX_MANIFEST_PIECE`] is always refused, and one of up to
/// `MAX_MANIFEST_PIECE - 2 × STREAMING_BUFFER` (ours are a few hundred bytes) never is.
struct PieceLimit<R> {
    inner: R,
    since_mark: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for PieceLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.since_mark.get() + n as u64;
        self.since_mark.set(total);
        if total > MAX_MANIFEST_PIECE - STREAMING_BUFFER as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a manifest field or file record is larger than {MAX_MANIFEST_PIECE} bytes"),
            ));
        }
        Ok(n)
    }
}

/// What [`Manifest::read_streaming`] calls, and the first error a callback returned.
struct RecordSink<H, F, E> {
    on_head: H,
    on_file: F,
    stopped: Option<StreamingError<E>>,
    /// The [`PieceLimit`]'s count: reset before each record.
    since_mark: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<H, F, E> RecordSink<H, F, E> {
    /// Keeps `error` for the caller; serde gets a placeholder that ends the parse.
    fn stop<D: serde::de::Error>(&mut self, error: StreamingError<E>) -> D {
        self.stopped = Some(error);
        D::custom("stopped")
    }
}

/// Visits the manifest object: every field but `files` into a small map (the head), then `files` one record at a
/// time.
struct ManifestVisitor<'s, H, F, E> {
    sink: &'s mut RecordSink<H, F, E>,
}

/// The head as a manifest without files. Before the files of a format-2 manifest its streams are not known yet
/// (`streams_to_come`): they are given as none.
fn head_of(
    head: &serde_json::Map<String, serde_json::Value>,
    streams_to_come: bool,
) -> Result<Manifest, serde_json::Error> {
    let mut head = head.clone();
    head.insert("files".into(), serde_json::Value::Array(Vec::new()));
    if streams_to_come {
        head.entry("streams").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_value(serde_json::Value::Object(head))
}

impl<'de, H, F, E> serde::de::Visitor<'de> for ManifestVisitor<'_, H, F, E>
where
    H: FnMut(&Manifest) -> Result<(), E>,
    F: FnMut(FileRecord) -> Result<(), E>,
{
    type Value = Manifest;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a manifest object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Manifest, A::Error> {
        use serde::de::Error as _;
        let mut head = serde_json::Map::new();
        let mut files_seen = false;
        let mut directories = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "directories" {
                if directories.is_some() {
                    return Err(A::Error::duplicate_field("directories"));
                }
                directories = Some(map.next_value_seed(DirectoriesSeed { since_mark: &self.sink.since_mark })?);
                continue;
            }
            if key != "files" {
                let value = map.next_value::<serde_json::Value>()?;
                if head.insert(key.clone(), value).is_some() {
                    return Err(A::Error::custom(format!("duplicate field `{key}`")));
                }
                continue;
            }
            if std::mem::replace(&mut files_seen, true) {
                return Err(A::Error::duplicate_field("files"));
            }
            // The head's fields come before the files (the producer writes them so; in format 1 the streams'
            // tallies too): the head is checked before the first record.
            let manifest = head_of(&head, true).map_err(A::Error::custom)?;
            if let Err(error) = check_format(manifest.format) {
                return Err(self.sink.stop(StreamingError::Manifest(error)));
            }
            if let Err(e) = (self.sink.on_head)(&manifest) {
                return Err(self.sink.stop(StreamingError::Stopped(e)));
            }
            map.next_value_seed(FilesSeed { sink: &mut *self.sink })?;
        }
        if !files_seen {
            return Err(A::Error::missing_field("files"));
        }
        let mut manifest = head_of(&head, false).map_err(A::Error::custom)?;
        manifest.directories = directories.unwrap_or_default();
        Ok(manifest)
    }
}

/// The `directories` array, read record by record (each within [`MAX_MANIFEST_PIECE`]) into memory: directories
/// are kept, files are not.
struct DirectoriesSeed<'s> {
    since_mark: &'s std::rc::Rc<std::cell::Cell<u64>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DirectoriesSeed<'_> {
    type Value = Vec<DirectoryRecord>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DirectoriesSeed<'_> {
    type Value = Vec<DirectoryRecord>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a list of directory records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut directories = Vec::new();
        while let Some(record) = {
            self.since_mark.set(0);
            seq.next_element::<DirectoryRecord>()?
        } {
            directories.push(record);
        }
        Ok(directories)
    }
}

/// The `files` array, handed over record by record.
struct FilesSeed<'s, H, F, E> {
    sink: &'s mut RecordSink<H, F, E>,
}

impl<'de, H, F, E> serde::de::DeserializeSeed<'de> for FilesSeed<'_, H, F, E>
where
    F: FnMut(FileRecord) -> Result<(), E>,
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, H, F, E> serde::de::Visitor<'de> for FilesSeed<'_, H, F, E>
where
    F: FnMut(FileRecord) -> Result<(), E>,
{
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a list of file records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(record) = {
            self.sink.since_mark.set(0);
            seq.next_element::<FileRecord>()?
        } {
            if let Err(e) = (self.sink.on_file)(record) {
                return Err(self.sink.stop(StreamingError::Stopped(e)));
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// Reads a manifest from `reader` without ever holding its file list, so its size does not count against
    /// memory: `on_head` gets the manifest without files (every field before them, format checked; a format-2
    /// manifest's streams come after its files, so they are empty there) before the first record, and `on_file`
    /// each file record, in the manifest's order, as soon as it has been read (so a manifest read as it arrives
    /// hands each record over then). A callback's error stops the read and is
    /// returned as [`StreamingError::Stopped`]. Returns the manifest without files (its directories are kept: the
    /// one list that stays in memory). Memory per piece is bounded whatever the manifest says: a head or a record
    /// over [`MAX_MANIFEST_PIECE`] bytes is an error. It buffers its reads
    /// itself.
    pub fn read_streaming<R: std::io::Read, E>(
        reader: R,
        on_head: impl FnMut(&Manifest) -> Result<(), E>,
        on_file: impl FnMut(FileRecord) -> Result<(), E>,
    ) -> Result<Manifest, StreamingError<E>> {
        let since_mark = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut sink = RecordSink { on_head, on_file, stopped: None, since_mark: std::rc::Rc::clone(&since_mark) };
        let limited = PieceLimit { inner: reader, since_mark };
        let mut deserializer =
            serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(STREAMING_BUFFER, limited));
        let parsed = serde::Deserializer::deserialize_map(&mut deserializer, ManifestVisitor { sink: &mut sink })
            .and_then(|manifest| deserializer.end().map(|()| manifest));
        match (sink.stopped, parsed) {
            (Some(stopped), _) => Err(stopped),
            (None, Ok(manifest)) => Ok(manifest),
            (None, Err(e)) => Err(StreamingError::Manifest(ManifestError::Json(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            tool: "producer 0.1.0".into(),
            created_unix: 1_700_000_000,
            backup_id: Some("id".into()),
            chunk_size: 1 << 20,
            compression: Compression::None,
            digest: Digest::Sha1,
            streams: vec![StreamRecord { index: 0, chunks: 3, bytes: 100 }],
            files: vec![
                FileRecord {
                    path: WirePath(b"db/t1.ibd".to_vec()),
                    size: 5,
                    mode: 0o640,
                    mtime: 1,
                    chunks: 1,
                    crc32: 0x3610a686,
                    sha1: Some("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".into()),
                    stored: None,
                    corrupt_pages: vec![3, 9],
                    corrupt_pages_total: 2,
                },
                FileRecord {
                    path: WirePath(b"bad\xffname".to_vec()),
                    size: 0,
                    mode: 0o600,
                    mtime: 2,
                    chunks: 0,
                    crc32: 0,
                    sha1: None,
                    stored: None,
                    corrupt_pages: Vec::new(),
                    corrupt_pages_total: 0,
                },
            ],
            encryption: None,
            directories: vec![
                DirectoryRecord { path: WirePath(b"db".to_vec()), mode: 0o750, mtime: 3, placeholder: false },
                DirectoryRecord { path: WirePath(b"db/empty".to_vec()), mode: 0o700, mtime: 4, placeholder: true },
            ],
        }
    }

    #[test]
    fn round_trips_through_json_including_non_utf8_paths() {
        let manifest = sample();
        let json = manifest.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"path\":\"db/t1.ibd\""), "{text}");
        assert!(text.contains("\"hex\":\"626164ff6e616d65\""), "{text}");
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
        // One line per file record (and per stream), nothing indented.
        let lines: Vec<&str> = text.lines().collect();
        // Two files, then two directories.
        assert_eq!(lines.iter().filter(|line| line.starts_with("{\"path\":")).count(), 4, "{text}");
        assert!(text.contains("\n],\"directories\":[\n{\"path\":\"db\",\"mode\":488,\"mtime\":3}"), "{text}");
        // The streams' tallies last: only the end of a backup knows them.
        assert!(text.contains("\"placeholder\":true}\n],\"streams\":[\n{\"index\":0,"), "{text}");
        assert!(text.ends_with("\"bytes\":100}\n]}\n"), "{text}");
        assert!(lines.iter().any(|line| line.starts_with("{\"index\":0,")), "{text}");
        assert!(!text.contains("  "), "{text}");
    }

    #[test]
    fn read_streaming_hands_over_every_record_after_the_head() {
        let manifest = sample();
        let json = manifest.to_json();
        let (mut heads, mut files) = (Vec::new(), Vec::new());
        let head = Manifest::read_streaming(
            &json[..],
            |head: &Manifest| -> Result<(), String> {
                heads.push(head.clone());
                Ok(())
            },
            |record| {
                files.push(record);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(files, manifest.files);
        // The head comes before the records (so without directories and streams, which follow the files); the
        // manifest returned has them.
        let before_files =
            Manifest { files: Vec::new(), directories: Vec::new(), streams: Vec::new(), ..manifest.clone() };
        assert_eq!(heads, vec![before_files]);
        assert_eq!(head, Manifest { files: Vec::new(), ..manifest.clone() });
        // A callback's error stops the read and comes back as it was.
        let stopped =
            Manifest::read_streaming(&json[..], |_: &Manifest| Ok(()), |_| Err("no".to_string())).unwrap_err();
        assert!(matches!(stopped, StreamingError::Stopped(ref e) if e == "no"), "{stopped:?}");
        // Another format version is refused before any record; garbage and a cut document are errors.
        let mut other = manifest.clone();
        other.format = 99;
        let refused = Manifest::read_streaming(
            &other.to_json()[..],
            |_: &Manifest| Ok::<(), String>(()),
            |_| panic!("no record of an unknown format is handed over"),
        )
        .unwrap_err();
        assert!(matches!(refused, StreamingError::Manifest(ManifestError::UnsupportedFormat { found: 99 })));
        // A field or a record past the limit is refused (the parser never holds it whole).
        let mut padded = manifest.clone();
        padded.tool = "x".repeat(MAX_MANIFEST_PIECE as usize + 1);
        let mut huge = manifest.clone();
        huge.files[1].path = WirePath(vec![b'a'; MAX_MANIFEST_PIECE as usize + 1]);
        let mut huge_directory = manifest.clone();
        huge_directory.directories[1].path = WirePath(vec![b'a'; MAX_MANIFEST_PIECE as usize + 1]);
        for oversized in [padded, huge, huge_directory] {
            let error =
                Manifest::read_streaming(&oversized.to_json()[..], |_: &Manifest| Ok::<(), String>(()), |_| Ok(()))
                    .unwrap_err();
            let StreamingError::Manifest(error) = error else { panic!("{error:?}") };
            assert!(error.to_string().contains("larger than 1048576 bytes"), "{error}");
        }
        for broken in [&json[..json.len() / 2], b"{\"format\": 1}".as_slice(), b"[]".as_slice()] {
            let error = Manifest::read_streaming(broken, |_: &Manifest| Ok::<(), String>(()), |_| Ok(())).unwrap_err();
            assert!(matches!(error, StreamingError::Manifest(ManifestError::Json(_))), "{error:?}");
        }
    }

    #[test]
    fn rejects_unknown_format_and_garbage() {
        let mut manifest = sample();
        manifest.format = 99;
        let err = Manifest::from_json(&manifest.to_json()).unwrap_err();
        assert_eq!(err.to_string(), "manifest format 99 is not supported (this build reads formats 1 to 2)");
        let err = Manifest::from_json(b"{\"format\": 1").unwrap_err();
        assert!(err.to_string().starts_with("manifest is not valid: "), "{err}");
    }

    /// A manifest in format 1's layout (the streams' tallies before the files), as earlier producers wrote it.
    fn format_1(manifest: &Manifest) -> Vec<u8> {
        let text = String::from_utf8(Manifest { format: 1, ..manifest.clone() }.to_json()).unwrap();
        let (body, streams) = text.split_once(",\"streams\":").unwrap();
        let streams = streams.strip_suffix("}\n").unwrap();
        format!("{}}}\n", body.replacen(",\"files\":[", &format!(",\"streams\":{streams},\"files\":["), 1)).into_bytes()
    }

    #[test]
    fn manifests_of_format_1_still_read_and_format_2_needs_its_streams() {
        let manifest = sample();
        let old = String::from_utf8(format_1(&manifest)).unwrap();
        assert!(old.starts_with("{\"format\":1,") && old.find("\"streams\"") < old.find("\"files\""), "{old}");
        let expected = Manifest { format: 1, ..manifest.clone() };
        assert_eq!(Manifest::from_json(old.as_bytes()).unwrap(), expected);
        let mut heads = Vec::new();
        let read = Manifest::read_streaming(
            old.as_bytes(),
            |head: &Manifest| -> Result<(), String> {
                heads.push(head.streams.clone());
                Ok(())
            },
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(read, Manifest { files: Vec::new(), ..expected });
        // Format 1's head carries its streams before the first record.
        assert_eq!(heads, vec![manifest.streams.clone()]);
        // A format-2 manifest that ends without its streams' tallies is refused (it was cut, or forged).
        let text = String::from_utf8(manifest.to_json()).unwrap();
        let (body, _) = text.split_once(",\"streams\":").unwrap();
        let without = format!("{body}}}\n");
        assert!(Manifest::from_json(without.as_bytes()).unwrap_err().to_string().contains("streams"), "{without}");
        let error =
            Manifest::read_streaming(without.as_bytes(), |_: &Manifest| Ok::<(), String>(()), |_| Ok(())).unwrap_err();
        assert!(
            matches!(error, StreamingError::Manifest(ManifestError::Json(ref e)) if e.to_string().contains("streams"))
        );
    }

    #[test]
    fn sha1sums_lists_files_with_a_sha1() {
        assert_eq!(sample().sha1sums(), b"aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d  db/t1.ibd\n".to_vec());
    }

    #[test]
    fn manifest_names_are_accepted_by_mbstream() {
        for name in [MANIFEST_NAME, SHA1SUMS_NAME] {
            assert!(!name.starts_with('.') && !name.starts_with('/'));
            crate::safe_relative_path(name.as_bytes()).unwrap();
        }
    }
}
