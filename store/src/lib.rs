/*!
Object storage for backups, behind one small synchronous trait, [`Store`].

The backends:
- [`local::LocalStore`] (`file:///var/backups`, the default): a directory laid out like a bucket; every object is
  written to a temporary name, synced and renamed, so an object either exists whole or not at all;
- the clouds, one [`cloud::CloudStore`] each, through the `object_store` crate, which signs, retries (capped
  exponential backoff with jitter, only what is retryable: 5xx, 408, 429, resets, timeouts) and parses; it runs on
  private tokio runtimes behind the trait: [`s3::S3Store`] (`s3://bucket/prefix`: AWS, MinIO, Ceph RGW, any
  S3-compatible service), [`gcs::GcsStore`] (`gs://bucket/prefix`: Google Cloud Storage) and
  [`azure::AzureStore`] (`az://container/prefix`: Azure Blob Storage);
- [`memory::MemoryStore`]: objects in memory, with faults injected on demand, for tests.

Keys are `/`-separated relative names (`NIGHTLY/0/0000000000.xbs`); each backend maps them below its root (a
directory, or a bucket and prefix). What is stored where — the backup layout — is the consumer's business.
*/

pub mod azure;
pub mod cloud;
pub mod gcs;
pub mod local;
pub mod memory;
pub mod s3;

use std::fmt;

use bytes::Bytes;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the store's root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a store operation failed. Every variant names the key (or prefix) and the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist.
    #[error("{store}: {key}: no such object")]
    NotFound {
        /// The store, for messages.
        store: String,
        /// The key.
        key: String,
    },
    /// A create-only put ([`Store::put_new`]) found the key taken: another writer stored it first.
    #[error("{store}: {key}: already exists")]
    AlreadyExists {
        /// The store, for messages.
        store: String,
        /// The key.
        key: String,
    },
    /// The service refused the request for good (wrong credentials, no permission, a bad request) or kept failing
    /// after every retry; the message is the service's.
    #[error("{store}: {op} {key}: {message}")]
    Failed {
        /// The store, for messages.
        store: String,
        /// `put`, `get`, `list`, `delete`, `create bucket`.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the service (or the file system) said.
        message: String,
    },
    /// The caller's consumer of a downloaded object failed (e.g. the object is larger than it can take).
    #[error("{store}: get {key}: {source}")]
    Consumer {
        /// The store, for messages.
        store: String,
        /// The key.
        key: String,
        /// The caller's error.
        #[source]
        source: anyhow::Error,
    },
}

impl StoreError {
    /// Whether the object was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether a create-only put found the key taken.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StoreError::AlreadyExists { .. })
    }
}

/// Result of a store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// An object store, used from many threads at once. Every call blocks until it is done (retries included).
pub trait Store: Send + Sync + fmt::Debug {
    /// The store as the user named it, for messages: `file:///var/backups`, `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Creates the bucket (or the root directory) if it does not exist yet, as `xbcloud put` does.
    fn ensure_container(&self) -> Result<()>;

    /// Stores `body` as `key`, whole: a reader never sees a partial object. `body` may own a pool buffer of the
    /// caller's (zero copy): an implementation must not keep it after returning, or the pool runs dry.
    fn put(&self, key: &str, body: Bytes) -> Result<()>;

    /// Stores `body` as `key` only if no object has that key yet, atomically: of any number of concurrent
    /// `put_new`s of one key, at most one succeeds and the others get [`StoreError::AlreadyExists`] (on a service
    /// whose conditional create is atomic: a rename that refuses to replace on `file://`, `If-None-Match: *` on
    /// S3 and Azure, `ifGenerationMatch=0` on Google). What commits a backup: the index.
    fn put_new(&self, key: &str, body: Bytes) -> Result<()>;

    /// Reads object `key`, handing its bytes to `consume` in order, piece by piece (so the caller decides where
    /// they go and how much it takes); returns the object's size.
    fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> Result<u64>;

    /// Every object whose key starts with `prefix` followed by `/` (all levels below), sorted by key; for `""`
    /// (the root), every object. Keys are listed as they were put.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// The names one level below `prefix` (`""` for the root) that hold objects: the "directories".
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>>;

    /// Removes object `key`; a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;
}

/// Reads a whole (small) object into memory, refusing one larger than `max` bytes.
pub fn get_small(store: &dyn Store, key: &str, max: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    store.get(key, &mut |piece| {
        if out.len() as u64 + piece.len() as u64 > max {
            anyhow::bail!("the object is larger than {max} bytes");
        }
        out.extend_from_slice(piece);
        Ok(())
    })?;
    Ok(out)
}

/// Joins key parts with `/`, skipping empty ones.
pub fn join_key(parts: &[&str]) -> String {
    parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/")
}
