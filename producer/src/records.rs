//! Every completed file's manifest record, kept until the manifest is written at the end of the backup: in memory
//! up to [`IN_MEMORY_RECORDS`], then appended to an unnamed temporary file (one JSON line each, in `TMPDIR`), so the
//! producer's memory does not grow with the number of files (a record is ~200 bytes: 10,000,000 files would be
//! 2 GB).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};

use anyhow::{Context, Result};
use proto::FileRecord;

/// Records kept in memory before the rest go to the temporary file (~20 MB).
pub const IN_MEMORY_RECORDS: usize = 100_000;

/// The records of a backup, in the order the files completed.
#[derive(Default)]
pub struct RecordLog {
    memory: Vec<FileRecord>,
    spill: Option<BufWriter<File>>,
    spilled: u64,
    files: u64,
    bytes: u64,
}

impl RecordLog {
    /// A log for about `expected` files (the pre-scan's count): one that will spill gets its temporary file now,
    /// so an unwritable TMPDIR fails the backup before a byte is written rather than after 100,000 files.
    pub fn for_files(expected: u64) -> Result<RecordLog> {
        let mut log = RecordLog::default();
        if expected > IN_MEMORY_RECORDS as u64 {
            log.spill_file()?;
        }
        Ok(log)
    }

    fn spill_file(&mut self) -> Result<&mut BufWriter<File>> {
        if self.spill.is_none() {
            let file = tempfile::tempfile().context(
                "cannot create a temporary file in TMPDIR for the manifest's records (set TMPDIR to a writable \
                 directory)",
            )?;
            self.spill = Some(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(self.spill.as_mut().expect("made above"))
    }

    /// Adds a completed file's record.
    pub fn push(&mut self, record: FileRecord) -> Result<()> {
        self.files += 1;
        self.bytes += record.size;
        if self.memory.len() < IN_MEMORY_RECORDS {
            self.memory.push(record);
            return Ok(());
        }
        self.spilled += 1;
        let spill = self.spill_file()?;
        serde_json::to_writer(&mut *spill, &record)
            .map_err(std::io::Error::other)
            .and_then(|()| spill.write_all(b"\n"))
            .context("cannot write the manifest's records to the temporary file in TMPDIR")
    }

    /// Adds the record of a document the producer made (the SHA-1 list): listed in the manifest, not counted
    /// among the backed-up files.
    pub fn push_uncounted(&mut self, record: FileRecord) -> Result<()> {
        let size = record.size;
        self.push(record)?;
        self.files -= 1;
        self.bytes -= size;
        Ok(())
    }

    /// Files recorded.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records kept in the temporary file.
    pub fn spilled(&self) -> u64 {
        self.spilled
    }

    /// Visits every record (in memory first, then those read back from the temporary file).
    pub fn for_each(&mut self, mut visit: impl FnMut(&FileRecord) -> Result<()>) -> Result<()> {
        for record in &self.memory {
            visit(record)?;
        }
        let Some(spill) = &mut self.spill else { return Ok(()) };
        let context = "cannot read the manifest's records back from the temporary file in TMPDIR";
        spill.flush().context(context)?;
        let mut file = spill.get_ref().try_clone().context(context)?;
        file.rewind().context(context)?;
        for line in BufReader::with_capacity(1 << 20, file).lines() {
            let record: FileRecord = serde_json::from_str(&line.context(context)?).context(context)?;
            visit(&record)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::WirePath;

    fn record(i: usize) -> FileRecord {
        FileRecord {
            path: WirePath(format!("db/t{i}").into_bytes()),
            size: i as u64,
            mode: 0o640,
            mtime: 1,
            chunks: 1,
            crc32: i as u32,
            sha1: None,
            stored: None,
            corrupt_pages: Vec::new(),
            corrupt_pages_total: 0,
        }
    }

    #[test]
    fn records_beyond_the_memory_bound_come_back_from_the_temporary_file() {
        let mut log = RecordLog::default();
        let count = IN_MEMORY_RECORDS + 1000;
        for i in 0..count {
            log.push(record(i)).unwrap();
        }
        assert_eq!(log.memory.len(), IN_MEMORY_RECORDS);
        assert_eq!(log.spilled(), 1000);
        assert_eq!(log.files(), count as u64);
        // Read back twice (the SHA-1 list, then the manifest), whole and in order.
        for _ in 0..2 {
            let mut seen = 0;
            log.for_each(|r| {
                assert_eq!(r, &record(seen));
                seen += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, count);
        }
    }
}
