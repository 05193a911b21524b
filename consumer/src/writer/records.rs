//! A writer's manifest records as they come during the stream (`manifest_feed.rs`): a record whose file has come
//! whole is checked at once, and the file's state let go; one that came first waits (`parked`, then `spill`) until
//! its file has ended, or until the end of the streams.

use anyhow::Result;
use proto::FileRecord;

use super::Writer;
use crate::coverage::Coverage;

impl Writer<'_> {
    /// Takes file `key`'s manifest record: checks the file now if it has come whole (or the streams have ended),
    /// else keeps the record until it has.
    pub(super) fn take_record(&mut self, key: Vec<u8>, record: FileRecord) -> Result<()> {
        if self.streams_ended || self.has_come_whole(&key, &record) {
            return self.check_and_let_go(&key, &record);
        }
        // A record with its key is about twice an ended file's compact state: half as many fit the same memory.
        if self.parked.len() < self.ended_limit / 2 {
            self.parked.insert(key.into(), record);
            Ok(())
        } else {
            self.spill.push(&key, &record)
        }
    }

    /// File `key`, whose record came first, has just ended: checked now if it has come whole.
    pub(super) fn has_ended(&mut self, key: &[u8]) -> Result<()> {
        match self.parked.remove(key) {
            Some(record) => self.take_record(key.to_vec(), record),
            None => Ok(()),
        }
    }

    /// Checks file `key` against `record`, then forgets all of it: nothing more of it may come (a chunk that did
    /// would find it staged: "appears twice"), and it is counted as checked.
    fn check_and_let_go(&mut self, key: &[u8], record: &FileRecord) -> Result<()> {
        self.check(key, record)?;
        if !self.streams_ended {
            self.found.during_stream += 1;
        }
        if self.ended.get(key).is_some_and(|ended| ended.verified) {
            self.ended.remove(key);
        }
        if self.files.get(key).is_some_and(|slot| slot.verified) {
            self.files.remove(key);
        }
        Ok(())
    }

    /// Whether file `key` has ended with every byte its record says it has, and no write holds it: then no chunk
    /// of it can still come, and its check is final.
    fn has_come_whole(&self, key: &[u8], record: &FileRecord) -> bool {
        let (expected, stored) = if key == record.path.0.as_slice() {
            (record.size, record.stored.as_ref().map(|stored| stored.size))
        } else {
            match &record.stored {
                Some(stored) => (stored.size, None),
                // Inconsistent: the check says so.
                None => return true,
            }
        };
        if let Some(ended) = self.ended.get(key) {
            return ended.got.len == expected && ended.stored.is_none_or(|got| Some(got.len) == stored);
        }
        let Some(slot) = self.files.get(key) else { return false };
        let whole =
            |coverage: &Coverage, len: Option<u64>| coverage.is_contiguous() && Some(coverage.prefix().len) == len;
        slot.ended
            && !slot.length.is_open()
            && !self.unsettled.iter().any(|unsettled| unsettled.as_slice() == key)
            && whole(&slot.coverage, Some(expected))
            && (slot.stored_lost || slot.stored.as_ref().is_none_or(|coverage| whole(coverage, stored)))
    }

    /// Every stream has ended: the records still waiting are checked, whatever they find (a file that never came
    /// is counted missing; one cut short is an error).
    pub(super) fn check_parked(&mut self) -> Result<()> {
        self.end_settled()?;
        for (key, record) in std::mem::take(&mut self.parked) {
            self.check(&key, &record)?;
        }
        let mut spill = std::mem::take(&mut self.spill);
        if spill.len() > 0 {
            log::info!(
                "writer {}: {} records came far ahead of their files and waited on disk",
                self.index,
                spill.len()
            );
        }
        spill.drain(|key, record| self.check(key, record))
    }

    /// Whether file `key` is in the staging directory.
    pub(super) fn is_staged(&mut self, key: &[u8]) -> Result<bool> {
        let relative = proto::checked_relative_path(key)?;
        let partial = self.target.partial(self.directory_of(relative)?, relative)?;
        Ok(partial.try_reopen_for_read()?.is_some())
    }
}
