//! `consumer extract --list`: what a stream holds, as `tar -t` would say it; nothing is written.
//!
//! Every chunk is read and checked (magic, CRC, path safety) exactly as for an extraction, so a listing that exits
//! 0 also says the stream is intact.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use anyhow::{Context, Result};
use proto::{ChunkKind, ChunkReader};

use crate::config::ExtractConfig;
use crate::coverage::Coverage;
use crate::input::{open_inputs, InputStream};

#[derive(Default)]
struct Listed {
    coverage: Coverage,
    chunks: u64,
    ended: bool,
}

fn list_stream(index: usize, input: &InputStream, max: u64, files: &Mutex<BTreeMap<Vec<u8>, Listed>>) -> Result<()> {
    let context = || format!("stream {index} ({})", input.name);
    let buffered = std::io::BufReader::with_capacity(256 << 10, &input.file);
    let mut reader = ChunkReader::new(buffered).with_max_payload(max);
    let mut payload = Vec::new();
    while let Some(header) = reader.read_chunk(&mut payload).with_context(context)? {
        proto::safe_relative_path(&header.path).with_context(context)?;
        let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
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
    Ok(())
}

/// Lists every file of the stream(s) on STDOUT: `size  chunks  path`, sorted by path.
pub fn run(config: &ExtractConfig) -> Result<String> {
    let (inputs, _fifos) = open_inputs(&config.input)?;
    // One thread per stream, as for an extraction: the producer spreads chunks over every pipe and ends pipe 0
    // last, so reading the pipes one after another would stall it.
    let files: Mutex<BTreeMap<Vec<u8>, Listed>> = Mutex::new(BTreeMap::new());
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| {
                let files = &files;
                scope.spawn(move || list_stream(index, &input, config.buffer_size as u64, files))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked")))).collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let files = files.into_inner().unwrap_or_else(|e| e.into_inner());
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
