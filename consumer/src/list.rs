//! `consumer extract --list`: what a stream holds, as `tar -t` would say it; nothing is written.
//!
//! Every chunk is read and checked (magic, CRC, path safety) exactly as for an extraction, so a listing that exits
//! 0 also says the stream is intact.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use proto::{ChunkKind, ChunkReader};

use crate::config::ExtractConfig;
use crate::coverage::Coverage;
use crate::input::{open_inputs, HashingReader};

#[derive(Default)]
struct Listed {
    coverage: Coverage,
    chunks: u64,
    ended: bool,
}

/// Lists every file of the stream(s) on STDOUT: `size  chunks  path`, sorted by path.
pub fn run(config: &ExtractConfig) -> Result<String> {
    let (inputs, _fifos) = open_inputs(&config.input)?;
    let mut files: BTreeMap<Vec<u8>, Listed> = BTreeMap::new();
    // Streams are read one after another: pipes have kernel buffers, and a listing is not a hot path.
    for (index, input) in inputs.into_iter().enumerate() {
        let context = || format!("stream {index} ({})", input.name);
        let mut reader =
            ChunkReader::new(HashingReader::new(&input.file, false)).with_max_payload(config.buffer_size as u64);
        let mut payload = Vec::new();
        while let Some(header) = reader.read_chunk(&mut payload).with_context(context)? {
            proto::safe_relative_path(&header.path).with_context(context)?;
            let entry = files.entry(header.path.clone()).or_default();
            match header.kind {
                ChunkKind::Payload => {
                    entry.chunks += 1;
                    entry
                        .coverage
                        .insert(header.file_offset, proto::CrcPiece { crc: header.checksum, len: header.payload_len })
                        .map_err(|e| anyhow::anyhow!("{}: {e}", header.display_path()))
                        .with_context(context)?;
                }
                ChunkKind::Eof => entry.ended = true,
            }
        }
    }
    if files.is_empty() {
        anyhow::bail!("no data: every stream ended before its first chunk (did the producer fail?)");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut total = 0;
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
        writeln!(out, "{size:>14}  {:>6}  {}{note}", listed.chunks, String::from_utf8_lossy(path))?;
    }
    out.flush()?;
    Ok(format!("{} files, {} bytes", files.len(), total))
}
