//! The decompress stage of `extract --decompress`: compressed chunks (decrypted first with `--decrypt`) back into
//! original bytes, in parallel, on their way to the writer that owns their file.

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use proto::{parse_offset_frame, CrcPiece};
use runtime::cancel::{recv, send, Cancel};
use runtime::pool::PooledBuffer;

use crate::dispatch::{ChunkMessage, Decoded, WriterMessage};

/// One decompress thread (`--decompress`): a reused zstd context and one pool buffer as scratch, swapped with each
/// chunk's buffer, so it never waits on the pool. Decompressed chunks go to the writer that owns their file.
pub(crate) fn decompress_stream(
    jobs: &Receiver<ChunkMessage>,
    writers: &[Sender<WriterMessage>],
    mut scratch: PooledBuffer,
    cancel: &Cancel,
) -> Result<()> {
    let mut decompressor = zstd::bulk::Decompressor::new().context("cannot create a zstd context")?;
    while let Some(mut chunk) = recv(jobs, cancel)? {
        let header = &chunk.header;
        let context = || chunk.describe();
        // Checked by the reader, or (decrypted first) only now.
        let Some((range, frame)) = parse_offset_frame(&chunk.data) else {
            bail!("{}: not a chunk compressed by our producer (no offset frame)", context());
        };
        if range.len as usize > scratch.capacity() {
            bail!("{}: decompresses to {} bytes, more than --max-chunk-size", context(), range.len);
        }
        scratch.set_len(scratch.capacity());
        let written = decompressor
            .decompress_to_buffer(frame, &mut scratch[..])
            .map_err(|e| anyhow!("{}: damaged zstd frame: {e}", context()))?;
        if written != range.len as usize {
            bail!("{}: the frame decompressed to {written} bytes, its header says {}", context(), range.len);
        }
        scratch.set_len(written);
        // Decrypted first: the payload as it travelled, and its segments, are the decrypt stage's.
        let (stored, sealed) = match chunk.decoded {
            Some(decrypted) => (decrypted.stored, decrypted.sealed),
            None => ((header.file_offset, CrcPiece { crc: header.checksum, len: header.payload_len }), None),
        };
        std::mem::swap(&mut chunk.data, &mut scratch);
        chunk.decoded = Some(Decoded { offset: range.offset, crc: CrcPiece::of(&chunk.data).crc, stored, sealed });
        send(&writers[chunk.writer(writers.len())], WriterMessage::Chunk(Box::new(chunk)), cancel)?;
    }
    Ok(())
}
