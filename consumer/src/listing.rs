//! `consumer extract --list`: what a stream holds, as `tar -t` would say it; nothing is written.
//!
//! Every chunk is read and checked (magic, CRC, path safety, the start marker) exactly as for an extraction, and the
//! listing ends with the same verdict an extraction would reach without writing a byte: it exits non-zero when a
//! file lacks its end-of-file chunk or has gaps, when a stream of ours has no manifest, or when the manifest
//! disagrees with what arrived (a file missing, a size or CRC-32 wrong, a stream's chunk count wrong). So a listing
//! that exits 0 also says the stream is intact.

use runtime::lock::Locked;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use proto::{ChunkKind, CrcPiece};
use proto::{Manifest, MANIFEST_NAME};

use crate::config::ExtractConfig;
use crate::coverage::Coverage;
use crate::input::open_inputs;
use crate::source::{check_markers, missing_manifest, SameBackup, StreamEnd, StreamSource};

#[derive(Default)]
struct ListedFile {
    coverage: Coverage,
    chunks: u64,
    ended: bool,
}

/// Every file seen so far, by wire path, and the manifest's bytes.
#[derive(Default)]
struct Seen {
    files: BTreeMap<Vec<u8>, ListedFile>,
    manifest: Vec<u8>,
}

fn list_stream(mut source: StreamSource, manifest_limit: u64, seen: &Mutex<Seen>) -> Result<StreamEnd> {
    let mut payload = Vec::new();
    while let Some(chunk) = source.next_chunk(&mut payload)? {
        let header = chunk.header;
        let mut seen = seen.locked();
        let Seen { files, manifest } = &mut *seen;
        let entry = files.entry(header.path.clone()).or_default();
        match header.kind {
            ChunkKind::Payload => {
                entry.chunks += 1;
                entry
                    .coverage
                    .insert(header.file_offset, CrcPiece { crc: header.checksum, len: header.payload_len })
                    .map_err(|e| anyhow!("{}: {}: {e}", source.describe(), header.display_path()))?;
                if header.path == MANIFEST_NAME.as_bytes() {
                    if header.file_offset != manifest.len() as u64
                        || header.file_offset + header.payload_len > manifest_limit
                    {
                        bail!(
                            "{}: {MANIFEST_NAME} chunks out of order or larger than --memory-limit",
                            source.describe()
                        );
                    }
                    manifest.extend_from_slice(&payload);
                }
            }
            ChunkKind::Eof => entry.ended = true,
        }
    }
    Ok(source.finish())
}

/// Lists every file of the stream(s) on STDOUT: `size  chunks  path`, sorted by path; then checks the whole.
pub fn run(config: &ExtractConfig, signals: &runtime::signals::Signals) -> Result<String> {
    let cancel = runtime::cancel::Cancel::new();
    signals.watch(&cancel);
    let (inputs, _fifos) =
        open_inputs(&config.input, config.idle_timeout, &cancel).map_err(|e| signals.error().unwrap_or(e))?;
    let stream_count = inputs.len();
    // One thread per stream, as for an extraction: the producer spreads chunks over every pipe and ends pipe 0
    // last, so reading the pipes one after another would stall it.
    let seen = Mutex::new(Seen::default());
    let same = Arc::new(SameBackup::default());
    let results: Vec<Result<StreamEnd>> = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| {
                let seen = &seen;
                let source =
                    StreamSource::new(index, input, config.buffer_size as u64, false, stream_count, Arc::clone(&same));
                scope.spawn(move || list_stream(source, config.manifest_limit, seen))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|panic| {
                    Err(anyhow!("a reader panicked: {}", runtime::failure::panic_message(panic.as_ref())))
                })
            })
            .collect()
    });
    if let Some(error) = signals.error() {
        return Err(error);
    }
    let ends = results.into_iter().collect::<Result<Vec<StreamEnd>>>()?;
    let Seen { files, manifest } = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    if files.is_empty() {
        bail!("no data: every stream ended before its first chunk (did the producer fail?)");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut total = 0;
    let mut broken = Vec::new();
    for (path, listed) in &files {
        let size = listed.coverage.prefix().len;
        total += size;
        let note = if !listed.ended {
            "  (no end-of-file chunk)"
        } else if !listed.coverage.is_contiguous() {
            "  (has gaps)"
        } else {
            ""
        };
        if !note.is_empty() {
            broken.push(String::from_utf8_lossy(path).into_owned());
        }
        writeln!(out, "{size:>14}  {:>6}  {}{note}", listed.chunks, String::from_utf8_lossy(path))?;
    }
    out.flush()?;
    if !broken.is_empty() {
        bail!("{} file(s) are incomplete in the stream: {}", broken.len(), broken.join(", "));
    }

    let ours = check_markers(&ends)?;
    let has_manifest = files.get(MANIFEST_NAME.as_bytes()).is_some_and(|m| m.ended);
    let proof = match (&ours, has_manifest) {
        (Some(id), false) => return Err(missing_manifest(&ends, id)),
        (None, false) if config.require_manifest => {
            bail!("the stream carries no {MANIFEST_NAME} (--require-manifest): completeness cannot be proven")
        }
        (None, false) => "completeness unproven (no manifest)".to_string(),
        (_, true) => {
            check_against_manifest(&manifest, ours.as_deref(), &files, &ends)?;
            format!("all checked against {MANIFEST_NAME}")
        }
    };
    let listed = files.len() - usize::from(has_manifest);
    Ok(format!("{listed} files, {total} bytes; {proof}"))
}

/// What an extraction would check, without the files: every manifest file arrived whole with its size and CRC-32,
/// nothing arrived that the manifest does not list, every stream carried what the manifest says.
fn check_against_manifest(
    bytes: &[u8],
    ours: Option<&str>,
    files: &BTreeMap<Vec<u8>, ListedFile>,
    ends: &[StreamEnd],
) -> Result<()> {
    let manifest = Manifest::from_json(bytes).context("cannot read the stream's manifest")?;
    if manifest.backup_id.as_deref() != ours {
        bail!("the manifest's backup id does not match the streams' markers: refusing it");
    }
    let mut expected: HashMap<&[u8], CrcPiece> = HashMap::new();
    for record in &manifest.files {
        let (path, piece) = match &record.stored {
            Some(stored) => (&stored.path.0, CrcPiece { crc: stored.crc32, len: stored.size }),
            None => (&record.path.0, CrcPiece { crc: record.crc32, len: record.size }),
        };
        if expected.insert(path.as_slice(), piece).is_some() {
            bail!("the manifest lists {} twice: refusing it", record.path.display());
        }
    }
    for (path, listed) in files {
        if path == MANIFEST_NAME.as_bytes() {
            continue;
        }
        let display = String::from_utf8_lossy(path);
        let Some(piece) = expected.remove(path.as_slice()) else {
            bail!("{display} is in the stream but not in the manifest");
        };
        let got = listed.coverage.prefix();
        if got.len != piece.len || got.crc != piece.crc {
            bail!(
                "{display}: {} bytes with CRC-32 {:08x} arrived; the manifest says {} bytes, {:08x}",
                got.len,
                got.crc,
                piece.len,
                piece.crc
            );
        }
    }
    if let Some(path) = expected.keys().next() {
        bail!(
            "{} file(s) listed in the manifest never arrived, e.g. {}",
            expected.len(),
            String::from_utf8_lossy(path)
        );
    }
    crate::proof::check_streams(&manifest, ends)
}
