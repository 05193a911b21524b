//! An in-memory store that injects faults on demand, so the put and get logic can be tested against failures a
//! real service produces only by chance: a request that fails, a service that dies after N requests.
//!
//! A fault is what a real client reports once its retries are spent (a 503 that outlasted them): a
//! [`FailureKind::Retryable`] failure — a later run may succeed — on which the caller must fail cleanly (exit
//! non-zero, nothing looking complete) rather than retry. Retrying transient faults is the real client's job
//! (`object_store`), tested against a real server behind a faulty proxy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use crate::{FailureKind, ObjectInfo, Result, Store, StoreError};

/// Which requests fail.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every request after this many has succeeded fails (a service that dies mid-put); `None`: never.
    pub fail_after: Option<u64>,
    /// Puts of keys containing this text fail.
    pub fail_puts_matching: Option<String>,
}

/// Objects in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
    faults: Mutex<Faults>,
    requests: AtomicU64,
}

impl MemoryStore {
    /// An empty store without faults.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Sets the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The stored keys.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    fn request(&self, op: &'static str, key: &str) -> Result<()> {
        let number = self.requests.fetch_add(1, Ordering::Relaxed);
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dead = faults.fail_after.is_some_and(|after| number >= after);
        let matched = op == "put" && faults.fail_puts_matching.as_deref().is_some_and(|m| key.contains(m));
        if dead || matched {
            return Err(StoreError::Failed {
                store: self.describe(),
                op,
                key: key.to_string(),
                message: "injected fault: 503 Service Unavailable after all retries".into(),
                kind: FailureKind::Retryable,
                cause: None,
            });
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory://".into()
    }

    fn ensure_container(&self) -> Result<()> {
        self.request("create bucket", "")
    }

    fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.request("put", key)?;
        // A copy: `body` may own a caller's pool buffer, which must go back when the put returns.
        let copy = Bytes::copy_from_slice(&body);
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), copy);
        Ok(())
    }

    fn put_new(&self, key: &str, body: Bytes) -> Result<()> {
        self.request("put", key)?;
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        if objects.contains_key(key) {
            return Err(StoreError::AlreadyExists { store: self.describe(), key: key.to_string() });
        }
        objects.insert(key.to_string(), Bytes::copy_from_slice(&body));
        Ok(())
    }

    fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> Result<u64> {
        self.request("get", key)?;
        let body = self.objects.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        let body = body.ok_or_else(|| StoreError::NotFound { store: self.describe(), key: key.to_string() })?;
        // In pieces, as a network client would hand them over.
        for piece in body.chunks(64 << 10) {
            consume(piece).map_err(|source| StoreError::Consumer {
                store: self.describe(),
                key: key.to_string(),
                source,
            })?;
        }
        Ok(body.len() as u64)
    }

    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64> {
        self.request("get", key)?;
        let body = self.objects.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        let body = body.ok_or_else(|| StoreError::NotFound { store: self.describe(), key: key.to_string() })?;
        if range.is_empty() {
            return Ok(0);
        }
        if range.end > body.len() as u64 {
            let got = (body.len() as u64).saturating_sub(range.start);
            return Err(crate::short_object(self.describe(), key, &range, got));
        }
        for piece in body[range.start as usize..range.end as usize].chunks(64 << 10) {
            consume(piece).map_err(|source| StoreError::Consumer {
                store: self.describe(),
                key: key.to_string(),
                source,
            })?;
        }
        Ok(range.end.saturating_sub(range.start))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.request("list", prefix)?;
        // Below `prefix/`; everything for the root (`""`), as the other stores list it.
        let start = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        Ok(objects
            .range(start.clone()..)
            .take_while(|(key, _)| key.starts_with(&start))
            .map(|(key, body)| ObjectInfo {
                key: key.clone(),
                size: body.len() as u64,
                e_tag: Some(format!("{:08x}", crc32fast::hash(body))),
            })
            .collect())
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.request("list", prefix)?;
        let start = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let mut dirs: Vec<String> = objects
            .keys()
            .filter_map(|key| key.strip_prefix(&start))
            .filter_map(|rest| rest.split_once('/').map(|(dir, _)| dir.to_string()))
            .collect();
        dirs.dedup();
        Ok(dirs)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.request("delete", key)?;
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fail_requests_as_configured() {
        let store = MemoryStore::new();
        store.put("a/1", Bytes::from_static(b"x")).unwrap();
        store.set_faults(Faults { fail_puts_matching: Some("index".into()), ..Faults::default() });
        store.put("a/2", Bytes::from_static(b"y")).unwrap();
        let err = store.put("a/index.json", Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        // A 503 that outlasted the client's retries: a later run may succeed.
        assert_eq!(err.kind(), Some(FailureKind::Retryable), "{err:?}");
        assert!(err.is_retryable());
        store.set_faults(Faults { fail_after: Some(store.requests() + 1), ..Faults::default() });
        assert_eq!(store.list("a").unwrap().len(), 2);
        assert!(store.list("a").is_err(), "dead after one more request");
        assert_eq!(store.keys(), ["a/1", "a/2"]);
    }

    /// `""` is the root: every object, as the directory store and the clouds list it (the consumer's catalog and
    /// the tests' raw listings take it so).
    #[test]
    fn the_empty_prefix_lists_every_object() {
        let store = MemoryStore::new();
        for key in ["b/2", "a/1", "a/sub/3", "top"] {
            store.put(key, Bytes::from_static(b"x")).unwrap();
        }
        let keys: Vec<String> = store.list("").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["a/1", "a/sub/3", "b/2", "top"]);
        assert_eq!(store.list("a").unwrap().len(), 2, "a prefix still lists only what is below it");
    }
}
