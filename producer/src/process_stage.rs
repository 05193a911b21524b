//! The process stage: InnoDB pages checked, CRC-32 taken, each chunk handed to its file's in-order sequencer.

use anyhow::Result;
use crossbeam_channel::Receiver;
use runtime::cancel::{recv, Cancel};

use crate::config::Config;
use crate::file::Outlet;
use crate::validate::PageCounters;
use crate::work::{BatchOutlet, Read};

/// One process thread: InnoDB pages checked (`--validate-pages`; a re-read may replace the bytes), CRC-32 taken,
/// and the chunk handed to its file's in-order sequencer ([`crate::file::FileState::arrive`]); a batch's files
/// each get their CRC and the batch goes on whole.
pub(crate) fn process_chunks(
    config: &Config,
    read: Receiver<Read>,
    outlet: &dyn Outlet,
    batches: &dyn BatchOutlet,
    page_counters: &PageCounters,
    cancel: &Cancel,
) -> Result<()> {
    while let Some(done) = recv(&read, cancel)? {
        let mut chunk = match done {
            Read::Chunk(chunk) => chunk,
            Read::Batch(mut batch) => {
                for index in 0..batch.files.len() {
                    batch.files[index].crc = proto::CrcPiece::of(batch.bytes(&batch.files[index])).crc;
                }
                batches.batch(batch)?;
                continue;
            }
        };
        // Pages first: a re-read may replace the bytes the CRC is taken of.
        if let Some(validation) = &config.validate_pages {
            crate::validate::validate_chunk(&mut chunk, validation, page_counters, cancel)?;
        }
        chunk.crc = proto::CrcPiece::of(&chunk.data).crc;
        let file = std::sync::Arc::clone(&chunk.file);
        file.arrive(chunk, outlet)?;
    }
    Ok(())
}
