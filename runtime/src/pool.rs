//! The memory budget: a fixed pool of equal-sized buffers, the only home of chunk data.
//!
//! A pipeline takes a buffer before it reads a chunk and the buffer goes back when the chunk has been written
//! (its [`PooledBuffer`] is dropped). Taking blocks while every buffer is in use: that *is* the back-pressure, and it
//! bounds memory to `count × size` whatever the data size. Channels between stages carry buffers, never copies.
//!
//! Free buffers are handed out last-returned first, so a pipeline that needs only a few buffers at a time keeps
//! reusing the same few and the others are never touched: memory (RSS) follows the buffers actually in use, not
//! the pool's size. (A first-in-first-out pool touches every buffer once as many chunks as buffers have passed.)

use crate::lock::Locked;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{select, Receiver, Sender};

use crate::cancel::{Cancel, Cancelled};

/// Buffers start on a page boundary: the kernel copies to and from page-aligned memory several times faster than
/// to the 16-byte-aligned memory `malloc` returns (measured here: `pread` from the page cache into a 1 MiB buffer,
/// 12 GB/s aligned against 2.6 GB/s unaligned).
pub const BUFFER_ALIGN: usize = 4096;

/// A fixed set of `count` buffers of `size` bytes each.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    /// The free buffers, a stack: the last one returned goes out first.
    free: Mutex<Vec<Vec<u8>>>,
    /// One token per free buffer: waiting for a token is waiting for a buffer (and can listen to a cancel).
    tokens: Receiver<()>,
    token_home: Sender<()>,
    count: usize,
    size: usize,
    in_use: AtomicUsize,
    peak_in_use: AtomicUsize,
}

impl BufferPool {
    /// A pool of `count` buffers of `size` bytes. They are allocated zeroed (`calloc`), so pages are committed only
    /// as the buffers are first filled: an idle pool costs address space, not memory.
    pub fn new(count: usize, size: usize) -> BufferPool {
        let count = count.max(1);
        let (token_home, tokens) = crossbeam_channel::bounded(count);
        let mut free = Vec::with_capacity(count);
        for _ in 0..count {
            free.push(vec![0u8; size + BUFFER_ALIGN]);
            token_home.send(()).expect("the token channel holds one token per buffer");
        }
        BufferPool {
            inner: Arc::new(PoolInner {
                free: Mutex::new(free),
                tokens,
                token_home,
                count,
                size,
                in_use: AtomicUsize::new(0),
                peak_in_use: AtomicUsize::new(0),
            }),
        }
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.inner.count
    }

    /// Capacity of each buffer.
    pub fn buffer_size(&self) -> usize {
        self.inner.size
    }

    /// Most buffers ever in use at once.
    pub fn peak_in_use(&self) -> usize {
        self.inner.peak_in_use.load(Ordering::Relaxed)
    }

    /// Takes a free buffer if one is free now, without waiting: a stage that holds work back (a batch being
    /// gathered) hands it on before it waits.
    pub fn try_take(&self) -> Option<PooledBuffer> {
        self.inner.tokens.try_recv().ok()?;
        Some(self.loan())
    }

    /// Takes a free buffer, waiting while none is free, unless cancelled. It comes back with length 0; its bytes
    /// beyond that are stale, and [`PooledBuffer::set_len`] exposes them without clearing.
    pub fn take(&self, cancel: &Cancel) -> Result<PooledBuffer, Cancelled> {
        cancel.check()?;
        select! {
            recv(self.inner.tokens) -> token => token.expect("the pool owns a sender, so its channel stays open"),
            recv(cancel.receiver()) -> _ => return Err(Cancelled),
        };
        Ok(self.loan())
    }

    /// Lends the buffer of a token just received.
    fn loan(&self) -> PooledBuffer {
        // A token is only sent after its buffer was pushed, so the stack holds one for us.
        let storage = self.inner.free.locked().pop().expect("one buffer per token");
        let in_use = self.inner.in_use.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.peak_in_use.fetch_max(in_use, Ordering::Relaxed);
        let start = storage.as_ptr().align_offset(BUFFER_ALIGN).min(BUFFER_ALIGN);
        PooledBuffer { storage: Some(storage), start, len: 0, pool: Arc::clone(&self.inner) }
    }
}

/// A buffer on loan from a [`BufferPool`]; dropping it returns it. Dereferences to its first [`len`] bytes.
///
/// [`len`]: PooledBuffer::len
#[derive(Debug)]
pub struct PooledBuffer {
    storage: Option<Vec<u8>>,
    start: usize,
    len: usize,
    pool: Arc<PoolInner>,
}

impl PooledBuffer {
    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most bytes the buffer holds.
    pub fn capacity(&self) -> usize {
        self.pool.size
    }

    /// Sets the bytes in use to `len` (at most [`capacity`](Self::capacity)) without clearing them: fill them
    /// before reading them.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.pool.size, "{len} bytes do not fit a {}-byte pool buffer", self.pool.size);
        self.len = len;
    }
}

impl AsRef<[u8]> for PooledBuffer {
    /// The bytes in use: lets a buffer be handed to an HTTP client as the owner of a request body (zero copy),
    /// still counted in the pool until the client drops it.
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage.as_ref().expect("present until drop")[self.start..self.start + self.len]
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        &mut self.storage.as_mut().expect("present until drop")[start..start + len]
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(storage) = self.storage.take() {
            self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
            self.pool.free.locked().push(storage);
            // The channel has room for every token, so this never blocks or fails.
            let _ = self.pool.token_home.try_send(());
        }
    }
}

/// A pooled buffer is where [`proto::ChunkReader::read_chunk`] puts a payload, bounded by the buffer's capacity.
impl proto::PayloadBuffer for PooledBuffer {
    fn clear(&mut self) {
        self.set_len(0);
    }
    fn slot(&mut self, len: usize) -> &mut [u8] {
        self.set_len(len);
        &mut self[..]
    }
    fn max_len(&self) -> Option<usize> {
        Some(self.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn take_blocks_until_a_buffer_returns_and_counts_peak_use() {
        let pool = BufferPool::new(2, 16);
        let cancel = Cancel::new();
        let a = pool.take(&cancel).unwrap();
        let mut b = pool.take(&cancel).unwrap();
        b.set_len(4);
        b.copy_from_slice(b"data");
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGN, 0, "buffers are page-aligned");
        let waiter = {
            let pool = pool.clone();
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                pool.take(&cancel).map(|mut buf| {
                    let len = buf.len();
                    buf.set_len(4);
                    (len, buf.capacity(), buf.to_vec())
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third take must wait");
        drop(b);
        let (len, capacity, stale) = waiter.join().unwrap().unwrap();
        assert_eq!((len, capacity), (0, 16), "a buffer comes back with length 0");
        assert!(stale == b"data" || stale == [0; 4], "set_len exposes stale bytes without clearing");
        assert_eq!(pool.peak_in_use(), 2);
        drop(a);
    }

    #[test]
    fn the_last_buffer_returned_goes_out_first() {
        let pool = BufferPool::new(8, 16);
        let cancel = Cancel::new();
        let first = pool.take(&cancel).unwrap();
        let address = first.as_ptr();
        drop(first);
        for _ in 0..20 {
            let again = pool.take(&cancel).unwrap();
            assert_eq!(again.as_ptr(), address, "an idle pool's other buffers stay untouched");
        }
    }

    #[test]
    fn take_wakes_on_cancel() {
        let pool = BufferPool::new(1, 8);
        let cancel = Cancel::new();
        let _held = pool.take(&cancel).unwrap();
        let waiter = {
            let pool = pool.clone();
            let cancel = cancel.clone();
            std::thread::spawn(move || pool.take(&cancel).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(50));
        cancel.cancel();
        assert_eq!(waiter.join().unwrap(), Err(Cancelled));
    }
}
