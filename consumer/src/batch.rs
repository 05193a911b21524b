//! Small chunks travel from a stream's reader to the writers in batches.
//!
//! With hundreds of thousands of small files, a channel hand-off per chunk (two per file: `P` and `E`) costs more
//! than writing the files: each wakes a sleeping writer. A reader therefore reads small payloads back to back into
//! one pool buffer, the batch's, and hands the batch to the writers as one message once it is full, before a read
//! that may wait on the input, before the reader waits on the pool, and before any chunk that travels on its own
//! (a large payload), so a file's chunks still reach its writer in stream order.

use std::ops::{Deref, Range};

use proto::{ChunkHeader, PayloadBuffer};
use runtime::pool::PooledBuffer;

/// Payloads up to this size travel in a batch; larger ones in a buffer of their own.
pub const BATCH_PAYLOAD_MAX: usize = 64 << 10;

/// Bytes of a batch's pool buffer that payloads use: the rest of the buffer is never touched, so a batch costs at
/// most this much memory whatever `--max-chunk-size` is.
pub const BATCH_BYTES: usize = 1 << 20;

/// Most chunks in one batch.
pub const BATCH_CHUNKS_MAX: usize = 4096;

/// Chunks of one stream, their payloads back to back in one pool buffer. Shared (read-only) by every writer that
/// owns one of them; the buffer goes back to the pool when the last writer is done with it.
#[derive(Debug)]
pub struct ChunkBatch {
    /// The stream they came on.
    pub stream: usize,
    /// Their payloads.
    pub data: PooledBuffer,
    /// The chunks, in stream order.
    pub chunks: Vec<BatchedChunk>,
}

/// One chunk of a [`ChunkBatch`].
#[derive(Debug)]
pub struct BatchedChunk {
    /// The writer that owns its file.
    pub writer: usize,
    /// Its header as read.
    pub header: ChunkHeader,
    /// Its payload's place in [`ChunkBatch::data`] (empty for an `E` chunk).
    pub range: Range<usize>,
}

impl ChunkBatch {
    /// An empty batch of stream `stream` filling `data`.
    pub fn new(stream: usize, mut data: PooledBuffer) -> ChunkBatch {
        data.set_len(0);
        ChunkBatch { stream, data, chunks: Vec::new() }
    }

    /// Whether the batch should go now: another chunk, or another small payload, may not fit.
    pub fn is_full(&self) -> bool {
        self.chunks.len() >= BATCH_CHUNKS_MAX || self.room() < BATCH_PAYLOAD_MAX
    }

    fn room(&self) -> usize {
        BATCH_BYTES.min(self.data.capacity()) - self.data.len()
    }
}

/// Where the reader puts the next payload: at the end of the batch's buffer when it is small and fits, else in
/// the reader's own buffer. Dereferences to the payload wherever it went.
pub struct Destination<'a> {
    own: &'a mut PooledBuffer,
    batch: Option<&'a mut ChunkBatch>,
    /// Where the payload went in the batch's buffer, if it went there.
    in_batch: Option<Range<usize>>,
}

impl<'a> Destination<'a> {
    /// A destination preferring `batch` (if there is one) for small payloads.
    pub fn new(own: &'a mut PooledBuffer, batch: Option<&'a mut ChunkBatch>) -> Destination<'a> {
        Destination { own, batch, in_batch: None }
    }

    /// The payload's place in the batch's buffer, if it went there.
    pub fn in_batch(&self) -> Option<Range<usize>> {
        self.in_batch.clone()
    }
}

impl PayloadBuffer for Destination<'_> {
    fn clear(&mut self) {
        self.in_batch = None;
        self.own.set_len(0);
    }

    fn slot(&mut self, len: usize) -> &mut [u8] {
        if let Some(batch) = self.batch.as_deref_mut() {
            if len <= BATCH_PAYLOAD_MAX && len <= batch.room() {
                let start = batch.data.len();
                batch.data.set_len(start + len);
                self.in_batch = Some(start..start + len);
                return &mut batch.data[start..];
            }
        }
        self.own.set_len(len);
        &mut self.own[..]
    }

    fn max_len(&self) -> Option<usize> {
        Some(self.own.capacity())
    }
}

impl Deref for Destination<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match (&self.in_batch, &self.batch) {
            (Some(range), Some(batch)) => &batch.data[range.clone()],
            _ => &self.own[..],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::cancel::Cancel;
    use runtime::pool::BufferPool;

    #[test]
    fn small_payloads_go_to_the_batch_and_large_ones_to_the_own_buffer() {
        let pool = BufferPool::new(2, 4 << 20);
        let cancel = Cancel::new();
        let mut own = pool.take(&cancel).unwrap();
        let mut batch = ChunkBatch::new(0, pool.take(&cancel).unwrap());
        {
            let mut destination = Destination::new(&mut own, Some(&mut batch));
            destination.clear();
            destination.slot(3).copy_from_slice(b"abc");
            assert_eq!(destination.in_batch(), Some(0..3));
            assert_eq!(&destination[..], b"abc");
            destination.clear();
            destination.slot(BATCH_PAYLOAD_MAX + 1);
            assert_eq!(destination.in_batch(), None, "too large for a batch");
            assert_eq!(destination.len(), BATCH_PAYLOAD_MAX + 1);
        }
        assert_eq!(batch.data.len(), 3, "the large payload left the batch alone");
        // The batch fills up to BATCH_BYTES, and says so before a small payload could not fit.
        while !batch.is_full() {
            let mut destination = Destination::new(&mut own, Some(&mut batch));
            destination.clear();
            destination.slot(BATCH_PAYLOAD_MAX);
            assert!(destination.in_batch().is_some());
        }
        assert!(batch.data.len() <= BATCH_BYTES);
        assert!(batch.room() < BATCH_PAYLOAD_MAX);
    }
}
