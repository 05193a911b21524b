//! The memory budget: a fixed pool of equal-sized buffers, the only home of chunk data.
//!
//! A pipeline takes a buffer before it reads a chunk and the buffer goes back when the chunk has been written
//! (its [`PooledBuffer`] is dropped). Taking blocks while every buffer is in use: that *is* the back-pressure, and it
//! bounds memory to `count × size` whatever the data size. Channels between stages carry buffers, never copies.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};

use crate::cancel::{Cancel, Cancelled};

/// A fixed set of `count` buffers of `size` bytes each.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    free: Receiver<Vec<u8>>,
    home: Sender<Vec<u8>>,
    count: usize,
    size: usize,
    in_use: AtomicUsize,
    peak_in_use: AtomicUsize,
}

impl BufferPool {
    /// A pool of `count` buffers with capacity `size` each. Pages are committed as the buffers are first filled,
    /// so an idle pool costs address space, not memory.
    pub fn new(count: usize, size: usize) -> BufferPool {
        let count = count.max(1);
        let (home, free) = crossbeam_channel::bounded(count);
        for _ in 0..count {
            home.send(Vec::with_capacity(size)).expect("the pool channel holds every buffer");
        }
        BufferPool {
            inner: Arc::new(PoolInner {
                free,
                home,
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

    /// Takes a free buffer, waiting while none is free, unless cancelled. Its length and contents are whatever
    /// the last user left: set the length you need (`resize`, `truncate` or `clear`).
    pub fn take(&self, cancel: &Cancel) -> Result<PooledBuffer, Cancelled> {
        cancel.check()?;
        let buffer = select! {
            recv(self.inner.free) -> buffer => buffer.expect("the pool owns a sender, so its channel stays open"),
            recv(cancel.receiver()) -> _ => return Err(Cancelled),
        };
        let in_use = self.inner.in_use.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.peak_in_use.fetch_max(in_use, Ordering::Relaxed);
        Ok(PooledBuffer { buffer: Some(buffer), pool: Arc::clone(&self.inner) })
    }
}

/// A buffer on loan from a [`BufferPool`]; dropping it returns it. Dereferences to its `Vec<u8>`.
#[derive(Debug)]
pub struct PooledBuffer {
    buffer: Option<Vec<u8>>,
    pool: Arc<PoolInner>,
}

impl Deref for PooledBuffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        self.buffer.as_mut().expect("present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(mut buffer) = self.buffer.take() {
            // Contents are kept (not cleared): a caller that needs `n` initialised bytes resizes once per buffer
            // instead of zeroing every chunk. A buffer that grew past its size (a caller's mistake) is replaced, so the budget holds.
            if buffer.capacity() > self.pool.size.max(1) * 2 {
                buffer = Vec::with_capacity(self.pool.size);
            }
            self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
            // The channel has room for every buffer, so this never blocks or fails.
            let _ = self.pool.home.try_send(buffer);
        }
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
        b.extend_from_slice(b"data");
        let waiter = {
            let pool = pool.clone();
            let cancel = cancel.clone();
            std::thread::spawn(move || pool.take(&cancel).map(|buf| (buf.len(), buf.capacity())))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third take must wait");
        drop(b);
        let (len, capacity) = waiter.join().unwrap().unwrap();
        assert!(len == 0 || len == 4, "a returned buffer keeps its stale contents");
        assert!(capacity >= 16);
        assert_eq!(pool.peak_in_use(), 2);
        drop(a);
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
