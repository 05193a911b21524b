//! The manifest as it arrives. A producer of ours sends the manifest (format 2) a piece at a time through the
//! whole backup, each file's record soon after the file. The reader that meets a piece copies it here; one thread
//! parses the pieces as one JSON document and hands each record to the writer that owns its file, which checks
//! the file then (or when it ends, if the record came first: `writer.rs`). So the per-file checks run while the
//! stream still flows, and the proof after it only counts.
//!
//! Pieces must come in order (they do: the producer sends them all on stream 0). A piece out of order (a stream
//! of another tool, or pieces spread over pipes) stops the parse where it is: the proof then reads the rest of the
//! manifest from its staged file, skipping the records already handed over. With `--decrypt` nothing is fed (the
//! manifest that counts is the encrypted one, decrypted by the decrypt threads): the proof reads it from disk.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::rc::Rc;

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};
use proto::{FileRecord, Manifest, StreamingError};
use runtime::cancel::{recv, send, Cancel};

use crate::config::ExtractConfig;
use crate::dispatch::{owner, Records, WriterMessage, RECORDS_PER_MESSAGE};

/// Pieces waiting for the manifest thread: a reader blocks (rarely: records are a small share of a stream) once
/// this many are queued.
pub(crate) const FEED_DEPTH: usize = 16;

/// One piece of the manifest, as a reader met it.
pub(crate) struct FeedPiece {
    /// Where it starts in the manifest.
    pub(crate) offset: u64,
    /// Its bytes (a copy: the chunk itself goes on to the writer that stages the manifest).
    pub(crate) bytes: Vec<u8>,
}

/// What the manifest thread made of the manifest.
#[derive(Default)]
pub(crate) struct Fed {
    /// The manifest without its files (head, directories, streams), when it was read to its end as it came.
    pub(crate) manifest: Option<Manifest>,
    /// Records handed to the writers: a read from disk after this one skips them.
    pub(crate) records: u64,
    /// Why the parse failed, when the pieces came in order and whole (a damaged or foreign manifest).
    pub(crate) error: Option<anyhow::Error>,
}

/// The key a writer holds a file under: its path, or its `.zst` path when a compressed file is not decompressed.
/// Decrypted, it is held under its original path (a compressed one is decompressed too).
pub(crate) fn record_key(config: &ExtractConfig, record: &FileRecord) -> Vec<u8> {
    match &record.stored {
        Some(stored) if !config.decompress && config.decrypt.is_none() => stored.path.0.clone(),
        _ => record.path.0.clone(),
    }
}

/// Records on their way to the writers, a message's worth per writer.
pub(crate) struct RecordDispatch<'w> {
    writers: &'w [Sender<WriterMessage>],
    pending: Vec<Records>,
    /// A partial restore's files: the records of the others are passed over.
    selection: Option<&'w crate::config::Selection>,
    /// Records handed over (or, in a partial restore, passed over) so far.
    pub(crate) sent: u64,
}

impl<'w> RecordDispatch<'w> {
    pub(crate) fn new(config: &'w ExtractConfig, writers: &'w [Sender<WriterMessage>]) -> RecordDispatch<'w> {
        RecordDispatch {
            writers,
            pending: (0..writers.len()).map(|_| Vec::new()).collect(),
            selection: config.selection.as_deref(),
            sent: 0,
        }
    }

    /// Queues `record` for the writer that owns `key`; sends that writer's queue once it is full. In a partial
    /// restore, a record of a file not selected is passed over: its file does not come.
    pub(crate) fn push(&mut self, key: Vec<u8>, record: FileRecord, cancel: &Cancel) -> Result<()> {
        if self.selection.is_some_and(|selection| !selection.contains(record.as_sent().0)) {
            self.sent += 1;
            return Ok(());
        }
        crate::verify::report_corrupt_record(&record);
        let writer = owner(&key, self.writers.len());
        self.pending[writer].push((key, record));
        self.sent += 1;
        if self.pending[writer].len() >= RECORDS_PER_MESSAGE {
            send(&self.writers[writer], WriterMessage::Check(std::mem::take(&mut self.pending[writer])), cancel)?;
        }
        Ok(())
    }

    /// Sends every queued record.
    pub(crate) fn flush(&mut self, cancel: &Cancel) -> Result<()> {
        for (writer, records) in self.pending.iter_mut().enumerate().filter(|(_, records)| !records.is_empty()) {
            send(&self.writers[writer], WriterMessage::Check(std::mem::take(records)), cancel)?;
        }
        Ok(())
    }
}

/// The manifest thread: parses the pieces the readers send until they are all done, handing every record over as
/// soon as it is read. Always drains its channel, so no reader is left blocked on it.
pub(crate) fn parse_as_it_comes(
    config: &ExtractConfig,
    pieces: &Receiver<FeedPiece>,
    writers: &[Sender<WriterMessage>],
    cancel: &Cancel,
) -> Result<Fed> {
    let dispatch = Rc::new(RefCell::new(RecordDispatch::new(config, writers)));
    let disordered = Rc::new(Cell::new(false));
    let fed_any = Rc::new(Cell::new(false));
    let reader = FeedReader {
        pieces,
        cancel,
        next_offset: 0,
        current: Vec::new(),
        at: 0,
        disordered: Rc::clone(&disordered),
        dispatch: Rc::clone(&dispatch),
        fed_any: Rc::clone(&fed_any),
    };
    let parsed = Manifest::read_streaming(
        reader,
        |_: &Manifest| Ok(()),
        |record| -> Result<()> { dispatch.borrow_mut().push(record_key(config, &record), record, cancel) },
    );
    dispatch.borrow_mut().flush(cancel)?;
    // Whatever is left (after a piece out of order, or a parse that failed) is drained: the staged file has it.
    let mut fed = Fed { records: dispatch.borrow().sent, ..Fed::default() };
    while recv(pieces, cancel)?.is_some() {}
    match parsed {
        Ok(manifest) => fed.manifest = Some(manifest),
        Err(StreamingError::Stopped(e)) => return Err(e),
        // Out of order: the proof reads the rest from disk. Nothing came (a decrypted backup, a foreign stream):
        // nothing to report.
        Err(StreamingError::Manifest(_)) if disordered.get() || !fed_any.get() => {}
        Err(StreamingError::Manifest(e)) => {
            fed.error = Some(anyhow::Error::new(e).context("cannot read the stream's manifest"));
        }
    }
    Ok(fed)
}

/// The pieces, in order, as one byte stream; it ends at the first piece out of order (`disordered`) or when every
/// reader is done. Records parsed so far are sent before it waits for the next piece.
struct FeedReader<'a, 'w> {
    pieces: &'a Receiver<FeedPiece>,
    cancel: &'a Cancel,
    next_offset: u64,
    current: Vec<u8>,
    at: usize,
    disordered: Rc<Cell<bool>>,
    dispatch: Rc<RefCell<RecordDispatch<'w>>>,
    /// Whether any piece came.
    fed_any: Rc<Cell<bool>>,
}

impl Read for FeedReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            if self.disordered.get() {
                return Ok(0);
            }
            let piece = match self.pieces.try_recv() {
                Ok(piece) => Some(piece),
                Err(_) => {
                    // About to wait: the records read so far go to their writers first.
                    self.dispatch.borrow_mut().flush(self.cancel).map_err(std::io::Error::other)?;
                    recv(self.pieces, self.cancel).map_err(std::io::Error::other)?
                }
            };
            let Some(piece) = piece else { return Ok(0) };
            if piece.offset != self.next_offset {
                self.disordered.set(true);
                return Ok(0);
            }
            self.fed_any.set(true);
            self.next_offset += piece.bytes.len() as u64;
            self.current = piece.bytes;
            self.at = 0;
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
