//! A whole small file written at once (its one payload and its `E` came together), and the descriptors kept open
//! for records to come ([`Ended::held`]), so mode and mtime are set on them rather than by name.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use proto::{ChunkHeader, CrcPiece, FileRecord, MANIFEST_NAME};
use sha1::{Digest as _, Sha1};

use super::{Ended, Writer};
use crate::dispatch::checked_path;
use crate::file_check::check_file;

impl Writer<'_> {
    /// A whole small file, new to this writer: its one payload (`header`, at offset 0, `data`) and its `E`, which
    /// came next. Created, written, closed and recorded as ended at once.
    pub(super) fn write_whole(
        &mut self,
        stream: usize,
        header: &ChunkHeader,
        relative: &Path,
        data: &[u8],
    ) -> Result<()> {
        let key = header.path.as_slice();
        let (partial, file) = self.create(relative)?;
        self.target
            .sparse()
            .write_at(&file, data, 0)
            .with_context(|| format!("cannot write {}", partial.display().display()))?;
        let got = CrcPiece { crc: header.checksum, len: data.len() as u64 };
        let hash = || self.announced.hash_files.load(Ordering::SeqCst).then(|| Sha1::digest(data).into());
        // Its record came first, and says this is all of it: checked now, its mode and mtime set on the descriptor.
        let whole = |record: &FileRecord| record.path.0 == key && record.size == got.len;
        if let Some(record) = self.parked.remove(key) {
            if whole(&record) {
                check_file(key, &record, &partial, got, None, hash(), Some(file))?;
                self.found.on_descriptor += 1;
                self.found.files += 1;
                self.found.bytes += got.len;
                if !self.streams_ended {
                    self.found.during_stream += 1;
                }
                return Ok(());
            }
            self.parked.insert(key.into(), record);
        }
        let awaited = self.parked.contains_key(key);
        if !awaited && self.forgets(key, got) {
            // Over the bound: the manifest that must follow will name it, and it is checked from disk then.
            partial.close(file)?;
            self.forgotten += 1;
            return Ok(());
        }
        let sha1 = hash().map(Box::new);
        // Kept open for its record (the manifest itself has none).
        let held = match self.held_limit > 0 && key != MANIFEST_NAME.as_bytes() {
            true => Some(file),
            false => {
                partial.close(file)?;
                None
            }
        };
        if held.is_some() {
            self.make_room_to_hold()?;
            self.held.push_back(key.into());
        }
        drop(partial);
        let ended = Ended { got, stored: None, sealed: None, stream: stream as u32, sha1, verified: false, held };
        self.ended.insert(key.into(), ended);
        if awaited {
            self.has_ended(key)?;
        }
        Ok(())
    }

    /// Closes the oldest descriptor held for a record ([`Ended::held`]) if this writer holds its limit.
    fn make_room_to_hold(&mut self) -> Result<()> {
        if self.held.len() < self.held_limit {
            return Ok(());
        }
        let Some(oldest) = self.held.pop_front() else { return Ok(()) };
        match self.ended.get_mut(&oldest).and_then(|ended| ended.held.take()) {
            Some(file) => nix::unistd::close(file).with_context(|| {
                format!("cannot close {} (staged)", self.target.path().join(checked_path(&oldest)).display())
            }),
            None => Ok(()),
        }
    }
}
