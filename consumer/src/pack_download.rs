//! The packs of a stored backup downloaded in parallel, each into one pool buffer, checked against the index, and
//! read back stream by stream in order: what `get` reads a backup through.
//!
//! ```text
//! per stream: a planner ─ a buffer from the stream's window for each pack, in order ─► the pack's parts
//!   (ranges of --range-size, or the whole object) on one job queue ─► downloaders (--parallel) ─► the buffer
//!   ─► the last part to arrive checks the pack (size, CRC-32, and its chunks when asked) ─► the stream's reader
//! ```
//!
//! A large pack is read as several ranges at once, so the pack at the head of a stream (which the reader waits
//! for, in order) arrives as fast as several connections bring it, not one: a stream read in order is held up by
//! its slowest pack, and a single connection's pace is often what limits a download from a real service. A broken
//! range resumes where it stopped ([`Store::get_range`]).

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use proto::{ChunkHeader, CrcPiece};
use runtime::cancel::{recv, send, Cancel};
use runtime::lock::Locked;
use runtime::pool::{BufferPool, PooledBuffer};
use store::Store;

use crate::layout::Pack;
use crate::sent_check::SentCheck;

/// How a stream's packs are fetched: in parts of at most `range_size` bytes (a pack no larger is one whole-object
/// request), each parsed into chunks when `parse` says so.
#[derive(Debug, Clone, Copy)]
pub struct Fetch {
    /// The largest range read at once.
    pub range_size: u64,
    /// Whether the downloaders parse each pack's chunks (and check their CRCs) too, in parallel.
    pub parse: bool,
}

impl Fetch {
    /// The ranges `pack` is read in: one whole-object read (`None`) for a pack no larger than the range size,
    /// otherwise as few near-equal ranges as keep each within it.
    fn parts(&self, size: u64) -> Vec<Option<Range<u64>>> {
        let range_size = self.range_size.max(1);
        if size <= range_size {
            return vec![None];
        }
        let count = size.div_ceil(range_size);
        let each = size.div_ceil(count);
        (0..count).map(|i| Some(i * each..((i + 1) * each).min(size))).collect()
    }
}

/// One request: a part of a pack, into the pack's buffer.
pub struct Download {
    pack: Arc<PackDownload>,
    /// Which part: the index of its CRC in [`Assembly::crcs`].
    part: usize,
    /// The bytes of the pack it reads; `None`: the whole object.
    range: Option<Range<u64>>,
}

/// A pack on its way: where its parts land, and where the checked result goes.
struct PackDownload {
    pack: Pack,
    parse: bool,
    assembly: Mutex<Assembly>,
    reply: Sender<Result<Downloaded>>,
}

/// What the parts of one pack have brought so far.
struct Assembly {
    /// The pack's bytes, `pack.size` long from the start; taken by the part that completes the pack.
    buffer: Option<PooledBuffer>,
    /// Each part's CRC-32, once it has arrived whole.
    crcs: Vec<Option<CrcPiece>>,
    /// Parts still on their way.
    left: usize,
    /// A part failed (and said so): the others stop and say nothing.
    failed: bool,
}

/// A downloaded pack, checked against the index.
pub struct Downloaded {
    /// Its bytes.
    pub data: PooledBuffer,
    /// Its chunks' headers, every payload checked against its CRC-32, when the download was asked to parse it.
    pub chunks: Option<Vec<ChunkHeader>>,
}

/// One stream's planner: takes a buffer from the stream's window for each pack, in order, queues its parts for
/// the downloaders, and hands the reader the receiver of its result, in order.
pub fn plan(
    packs: &[Pack],
    fetch: Fetch,
    pool: &BufferPool,
    jobs: &Sender<Download>,
    order: &Sender<Receiver<Result<Downloaded>>>,
    cancel: &Cancel,
) -> Result<()> {
    for pack in packs {
        let mut buffer = pool.take(cancel)?;
        let parts = fetch.parts(pack.size);
        // A whole-object read fills the buffer as it comes (and finds an object larger than the index says);
        // ranges land at their offsets.
        buffer.set_len(if parts.len() == 1 { 0 } else { pack.size as usize });
        let (reply, result) = crossbeam_channel::bounded(1);
        send(order, result, cancel)?;
        let assembly =
            Assembly { buffer: Some(buffer), crcs: vec![None; parts.len()], left: parts.len(), failed: false };
        let pack =
            Arc::new(PackDownload { pack: pack.clone(), parse: fetch.parse, assembly: Mutex::new(assembly), reply });
        for (part, range) in parts.into_iter().enumerate() {
            send(jobs, Download { pack: Arc::clone(&pack), part, range }, cancel)?;
        }
    }
    Ok(())
}

/// One downloader: parts of packs into their buffers; the part that completes a pack checks it against the index
/// and hands it on. Stops after a failure (the stream's reader reports it, naming the pack) or when cancelled.
pub fn download(jobs: &Receiver<Download>, store: &dyn Store, cancel: &Cancel) -> Result<()> {
    while let Some(Download { pack, part, range }) = recv(jobs, cancel)? {
        let fetched = match &range {
            None => whole(&pack, store, cancel),
            Some(range) => ranged(&pack, range, store, cancel),
        };
        let mut assembly = pack.assembly.locked();
        if assembly.failed {
            // Another part already said why; this one's error (if any) is that it was told to stop.
            return Ok(());
        }
        let crc = match fetched {
            Ok(crc) => crc,
            Err(e) => {
                assembly.failed = true;
                drop(assembly.buffer.take());
                let _ = pack.reply.send(Err(e));
                return Ok(());
            }
        };
        assembly.crcs[part] = Some(crc);
        assembly.left -= 1;
        if assembly.left > 0 {
            continue;
        }
        let buffer = assembly.buffer.take().expect("taken only by the part that completes the pack");
        let crc =
            assembly.crcs.iter().map(|c| c.expect("every part arrived")).fold(CrcPiece::default(), CrcPiece::append);
        drop(assembly);
        let checked = check(&pack, buffer, crc);
        let failed = checked.is_err();
        let _ = pack.reply.send(checked);
        if failed {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads the whole object into the (empty) buffer; returns its CRC-32.
fn whole(pack: &PackDownload, store: &dyn Store, cancel: &Cancel) -> Result<CrcPiece> {
    let mut crc = CrcPiece::default();
    let mut assembly = pack.assembly.locked();
    let buffer = assembly.buffer.as_mut().expect("present until the pack completes");
    store.get(&pack.pack.key, &mut |piece| {
        cancel.check()?;
        let start = buffer.len();
        if start + piece.len() > buffer.capacity() || (start + piece.len()) as u64 > pack.pack.size {
            bail!("it is larger than the index says ({} bytes)", pack.pack.size);
        }
        buffer.set_len(start + piece.len());
        buffer[start..].copy_from_slice(piece);
        crc = crc.append(CrcPiece::of(piece));
        Ok(())
    })?;
    Ok(crc)
}

/// Reads `range` of the pack into its place in the buffer, which the pack's other parts fill beside it; returns
/// the range's CRC-32. The buffer is locked only while a piece is copied in.
fn ranged(pack: &PackDownload, range: &Range<u64>, store: &dyn Store, cancel: &Cancel) -> Result<CrcPiece> {
    let mut crc = CrcPiece::default();
    let mut at = range.start;
    store
        .get_range(&pack.pack.key, range.clone(), &mut |piece| {
            cancel.check()?;
            if at + piece.len() as u64 > range.end {
                bail!("more than bytes {}..{} came", range.start, range.end);
            }
            crc = crc.append(CrcPiece::of(piece));
            let mut assembly = pack.assembly.locked();
            if assembly.failed {
                bail!("another part of the pack failed");
            }
            let buffer = assembly.buffer.as_mut().expect("present until the pack completes");
            buffer[at as usize..at as usize + piece.len()].copy_from_slice(piece);
            at += piece.len() as u64;
            Ok(())
        })
        .with_context(|| format!("bytes {}..{} of {}", range.start, range.end, pack.pack.key))?;
    if at != range.end {
        bail!("{}: bytes {}..{} asked, {} came", pack.pack.key, range.start, range.end, at - range.start);
    }
    Ok(crc)
}

/// The whole pack against the index: its size, its CRC-32 (`crc`, of the bytes as they came), and its chunks when
/// asked.
fn check(pack: &PackDownload, buffer: PooledBuffer, crc: CrcPiece) -> Result<Downloaded> {
    let (key, size) = (&pack.pack.key, pack.pack.size);
    if buffer.len() as u64 != size || crc.len != size {
        bail!("{key}: {} bytes arrived; the index says {size}", crc.len);
    }
    if pack.pack.chunks > 0 && crc.crc != pack.pack.crc32 {
        bail!("{key}: CRC-32 {:08x} does not match the index's {:08x}", crc.crc, pack.pack.crc32);
    }
    let chunks = if pack.parse { Some(crate::sent_check::parse_pack(&buffer, key)?) } else { None };
    Ok(Downloaded { data: buffer, chunks })
}

/// A stored stream's bytes, pack after pack, as they download.
pub struct PackStream {
    ordered: Receiver<Receiver<Result<Downloaded>>>,
    current: Option<PooledBuffer>,
    position: usize,
    cancel: Cancel,
}

impl PackStream {
    /// The stream that reads the packs its planner hands to `ordered`, in order.
    pub fn new(ordered: Receiver<Receiver<Result<Downloaded>>>, cancel: Cancel) -> PackStream {
        PackStream { ordered, current: None, position: 0, cancel }
    }

    /// The next whole pack, in order, once it has downloaded; `None` after the last.
    fn next_pack(&mut self) -> io::Result<Option<Downloaded>> {
        let Some(next) = recv(&self.ordered, &self.cancel).map_err(io::Error::other)? else { return Ok(None) };
        let pack = recv(&next, &self.cancel)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other("a download stopped"))?
            // Shown as before (the chain flattened), the kind of a store failure kept for the advice.
            .map_err(|e| io::Error::other(crate::storage::FlatError::new(&e)))?;
        Ok(Some(pack))
    }

    /// Writes the stream (not read from yet) to `out` a whole pack at a time, straight from the download buffers
    /// (no copy through a small buffer, as `io::copy` would make), each pack's chunks handed to `check` (when the
    /// backup has a manifest) before the pack is written; returns the bytes written. `name` is the stream's, for
    /// messages.
    pub fn copy_to(mut self, out: &mut impl Write, check: Option<&Mutex<SentCheck>>, name: &str) -> Result<u64> {
        debug_assert!(self.current.is_none(), "copy_to starts at a pack boundary");
        let mut copied = 0u64;
        while let Some(Downloaded { data, chunks }) = self.next_pack().with_context(|| name.to_string())? {
            if let Some(check) = check {
                let chunks = match chunks {
                    Some(chunks) => chunks,
                    None => crate::sent_check::parse_pack(&data, name)?,
                };
                check.locked().pack(&chunks)?;
            }
            out.write_all(&data).with_context(|| format!("{name}: cannot write it out"))?;
            copied += data.len() as u64;
        }
        Ok(copied)
    }
}

impl Read for PackStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(current) = &self.current {
                if self.position < current.len() {
                    let n = buf.len().min(current.len() - self.position);
                    buf[..n].copy_from_slice(&current[self.position..self.position + n]);
                    self.position += n;
                    return Ok(n);
                }
                self.current = None;
            }
            let Some(pack) = self.next_pack()? else { return Ok(0) };
            self.current = Some(pack.data);
            self.position = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_larger_than_the_range_size_is_read_in_near_equal_ranges_that_cover_it() {
        let fetch = Fetch { range_size: 2 << 20, parse: false };
        assert_eq!(fetch.parts(2 << 20), vec![None]);
        assert_eq!(fetch.parts(100), vec![None]);
        let parts: Vec<Range<u64>> = fetch.parts((8 << 20) + 5).into_iter().map(Option::unwrap).collect();
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[0].start, 0);
        assert_eq!(parts.last().unwrap().end, (8 << 20) + 5);
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        assert!(parts.iter().all(|r| r.end - r.start <= 2 << 20 && r.end > r.start));
    }
}
