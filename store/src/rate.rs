//! `--limit-rate`: every byte a run sends to or takes from a store, all requests together, held to one rate.
//!
//! [`RateLimited`] wraps any [`Store`]. A put waits for its body's bytes before it is sent, then goes at full
//! speed. A get takes each piece of the body only once the limiter allows it: the client stops reading the socket
//! meanwhile, so TCP's flow control slows the server to the same rate. Gets take turns: one at a time has the
//! whole rate, rather than many sharing it so thinly that each outlasts the per-request timeout (a pack must still
//! download within `--timeout` at the rate: 8 MiB at 200K a second takes 42 s). The limiter is `governor`'s (GCRA,
//! the algorithm behind token buckets), shared by every thread. Its burst is one second's worth of bytes.
//! Listings, deletes and other small requests are not counted.

use std::num::NonZeroU32;
use std::ops::Range;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::{ObjectInfo, Result, Store};

/// The largest rate a limiter takes, in bytes a second: its cells are `u32`.
pub const MAX_RATE: u64 = u32::MAX as u64;

/// A store whose transfers, all together, stay within a number of bytes a second.
pub struct RateLimited {
    inner: Box<dyn Store>,
    limiter: DefaultDirectRateLimiter,
    /// Bytes a second, for messages.
    rate: u64,
    /// The most bytes taken in one wait: the burst.
    burst: u32,
    /// Held by the get that has the rate.
    turn: std::sync::Mutex<()>,
}

impl RateLimited {
    /// `inner`, held to `bytes_per_second` (1 to [`MAX_RATE`]).
    pub fn new(inner: Box<dyn Store>, bytes_per_second: u64) -> anyhow::Result<RateLimited> {
        let rate = u32::try_from(bytes_per_second)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| anyhow::anyhow!("--limit-rate must be between 1 byte and {MAX_RATE} bytes a second"))?;
        Ok(RateLimited {
            inner,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            rate: bytes_per_second,
            burst: rate.get(),
            turn: std::sync::Mutex::new(()),
        })
    }

    /// Waits until `bytes` more may pass, in bursts at most.
    fn take(&self, bytes: usize) {
        let mut left = bytes as u64;
        while left > 0 {
            let now = left.min(u64::from(self.burst)) as u32;
            let cells = NonZeroU32::new(now).expect("a positive count");
            // At most the burst: never refused for lack of capacity.
            let _ = futures::executor::block_on(self.limiter.until_n_ready(cells));
            left -= u64::from(now);
        }
    }

    /// A consumer that waits for each piece's bytes before handing it on.
    fn paced<'a>(
        &'a self,
        consume: &'a mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> impl FnMut(&[u8]) -> anyhow::Result<()> + 'a {
        move |piece| {
            self.take(piece.len());
            consume(piece)
        }
    }
}

impl std::fmt::Debug for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimited").field("store", &self.inner.describe()).field("rate", &self.rate).finish()
    }
}

impl Store for RateLimited {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn ensure_container(&self) -> Result<()> {
        self.inner.ensure_container()
    }

    fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.take(body.len());
        self.inner.put(key, body)
    }

    fn put_new(&self, key: &str, body: Bytes) -> Result<()> {
        self.take(body.len());
        self.inner.put_new(key, body)
    }

    fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> Result<u64> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.get(key, &mut self.paced(consume))
    }

    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.get_range(key, range, &mut self.paced(consume))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_dirs(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::memory::MemoryStore;

    /// 3 MiB through a store held to 1 MiB a second: the first second's burst passes at once, the rest waits — at
    /// least about two seconds in all, puts and gets alike; the bytes are unchanged. (A lower bound: the limit is
    /// a promise that a run is never faster; how much slower a loaded machine makes it is not asserted.)
    #[test]
    fn transfers_wait_for_the_rate() {
        let store = RateLimited::new(Box::new(MemoryStore::new()), 1 << 20).unwrap();
        let body = Bytes::from(vec![7u8; 3 << 20]);
        let started = Instant::now();
        store.put("k", body.clone()).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1800), "put: {:?}", started.elapsed());
        let started = Instant::now();
        let got = crate::get_small(&store, "k", 4 << 20).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1800), "get: {:?}", started.elapsed());
        assert!(got == body);
        assert!(RateLimited::new(Box::new(MemoryStore::new()), 0).is_err());
        assert!(RateLimited::new(Box::new(MemoryStore::new()), MAX_RATE + 1).is_err());
    }
}
