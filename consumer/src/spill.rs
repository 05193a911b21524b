//! Records a writer must keep but has no room for in memory: manifest records that came far ahead of their files
//! (over several pipes, one stream's data can lag behind the manifest on another). They go to an unnamed
//! temporary file (one JSON line each, in `TMPDIR`) and are checked at the end, so a writer's memory does not grow
//! with how far ahead the manifest runs.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};

use anyhow::{Context, Result};
use proto::{FileRecord, WirePath};

/// Records kept in a temporary file, in the order they came.
#[derive(Default)]
pub(crate) struct RecordSpill {
    file: Option<BufWriter<File>>,
    count: u64,
}

impl RecordSpill {
    /// Adds the record of the file a writer holds under `key`.
    pub(crate) fn push(&mut self, key: &[u8], record: &FileRecord) -> Result<()> {
        if self.file.is_none() {
            let file = tempfile::tempfile().context(
                "cannot create a temporary file in TMPDIR for manifest records that came ahead of their files \
                 (set TMPDIR to a writable directory)",
            )?;
            self.file = Some(BufWriter::with_capacity(64 << 10, file));
        }
        let file = self.file.as_mut().expect("made above");
        self.count += 1;
        serde_json::to_writer(&mut *file, &(WirePath(key.to_vec()), record))
            .map_err(std::io::Error::other)
            .and_then(|()| file.write_all(b"\n"))
            .context("cannot write manifest records to the temporary file in TMPDIR")
    }

    /// Records kept.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Visits every record (with its key) in the order it came, and empties the spill.
    pub(crate) fn drain(&mut self, mut visit: impl FnMut(&[u8], &FileRecord) -> Result<()>) -> Result<()> {
        let Some(spill) = self.file.take() else { return Ok(()) };
        self.count = 0;
        let context = "cannot read manifest records back from the temporary file in TMPDIR";
        let mut file = spill.into_inner().map_err(|e| e.into_error()).context(context)?;
        file.rewind().context(context)?;
        for line in BufReader::with_capacity(64 << 10, file).lines() {
            let (key, record): (WirePath, FileRecord) =
                serde_json::from_str(&line.context(context)?).context(context)?;
            visit(&key.0, &record)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn spilled_records_come_back_whole_and_in_order_with_their_keys() {
        let mut spill = RecordSpill::default();
        for i in 0..1000 {
            spill.push(format!("key\u{ff}{i}").as_bytes(), &record(i)).unwrap();
        }
        assert_eq!(spill.len(), 1000);
        let mut seen = 0;
        spill
            .drain(|key, r| {
                assert_eq!(key, format!("key\u{ff}{seen}").as_bytes());
                assert_eq!(r, &record(seen));
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 1000);
        assert_eq!(spill.len(), 0);
        spill.drain(|_, _| panic!("drained once")).unwrap();
    }
}
