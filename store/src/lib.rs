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

[`rate::RateLimited`] wraps any of them to hold a run's transfers to one rate (`--limit-rate`).

Keys are `/`-separated relative names (`NIGHTLY/0/0000000000.xbs`); each backend maps them below its root (a
directory, or a bucket and prefix). What is stored where — the backup layout — is the consumer's business.

A failed operation is a [`StoreError`] that names the store, the operation and the key. A failure of the store
([`StoreError::Failed`]) also says whether retrying may help ([`StoreError::kind`]: [`FailureKind::Retryable`] when
the service was unavailable, throttled or timed out even after the client's own retries, [`FailureKind::Permanent`]
for credentials, permissions, bad requests and local file-system errors) and keeps the error behind it
([`StoreError::cause`]), without showing it a second time.
*/

pub mod azure;
pub mod cloud;
pub mod gcs;
pub mod local;
pub mod memory;
pub mod rate;
pub mod s3;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the store's root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// What the store says identifies this version of the object (S3's, Google's and Azure's ETag; on `file://`
    /// the file's inode, change time and size; in memory a CRC-32 of the bytes): it changes whenever the object is
    /// written again, so an ETag recorded when a backup was stored and listed the same later says the object was
    /// not replaced behind the backup's back. `None` where the service gave none.
    pub e_tag: Option<String>,
}

impl ObjectInfo {
    /// Its key and size alone, for comparisons that do not care about versions.
    pub fn key_size(&self) -> (&str, u64) {
        (&self.key, self.size)
    }
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
    /// after every retry; the message is the service's. `kind` says which (whether a later run may succeed).
    ///
    /// The underlying error is kept in `cause` but is not this error's [`source`](std::error::Error::source):
    /// `message` already shows it, and a chain printed whole (`anyhow`'s `{:#}`) would show it twice.
    #[error("{store}: {op} {key}: {message}")]
    Failed {
        /// The store, for messages.
        store: String,
        /// `put`, `get`, `list`, `delete`, `create bucket`.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the service (or the file system) said: the text shown.
        message: String,
        /// Whether retrying may help.
        kind: FailureKind,
        /// The error the backend got (`object_store`'s, the file system's, the HTTP client's), when there is one.
        cause: Option<Cause>,
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

/// An underlying error kept in a [`StoreError`], shared so that the error can be handed on.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Whether retrying a failed store operation may help: what [`StoreError::kind`] says of a
/// [`StoreError::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The service was unavailable, throttled or timed out (a 5xx, a 408 or a 429, a connection reset or refused,
    /// a timeout) even after the client's own retries: a later run may succeed as it is.
    Retryable,
    /// The request cannot succeed as it is: credentials, permission, a bad request or key, a missing bucket, a
    /// local file-system error (no space left, permission denied, a read-only file system). Retrying does not help
    /// until that is fixed.
    Permanent,
}

impl FailureKind {
    /// The kind of an HTTP answer that is not a success: 5xx, 408 (Request Timeout) and 429 (Too Many Requests)
    /// are retryable (as the clients' own retries have it), any other status permanent.
    pub fn of_status(status: http::StatusCode) -> FailureKind {
        if status.is_server_error()
            || status == http::StatusCode::REQUEST_TIMEOUT
            || status == http::StatusCode::TOO_MANY_REQUESTS
        {
            FailureKind::Retryable
        } else {
            FailureKind::Permanent
        }
    }

    /// The kind of a file-system or socket error: timeouts, interruptions, a busy resource and a connection
    /// that was reset, refused, aborted or cannot be routed are retryable; the rest (no space, no permission, a
    /// read-only file system, an I/O error, a name that is not there or not a directory) permanent.
    pub fn of_io(error: &std::io::Error) -> FailureKind {
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::TimedOut
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::ResourceBusy
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::NetworkDown
            | ErrorKind::NetworkUnreachable
            | ErrorKind::HostUnreachable => FailureKind::Retryable,
            _ => FailureKind::Permanent,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
        })
    }
}

impl StoreError {
    /// Whether retrying may help, for a failure of the store ([`StoreError::Failed`]). `None` for the errors that
    /// are answers rather than failures — [`StoreError::NotFound`] and [`StoreError::AlreadyExists`] (the service
    /// did what it was asked and said so: the same request gets the same answer) — and for
    /// [`StoreError::Consumer`] (the caller's own error, not the store's).
    pub fn kind(&self) -> Option<FailureKind> {
        match self {
            StoreError::Failed { kind, .. } => Some(*kind),
            StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } | StoreError::Consumer { .. } => None,
        }
    }

    /// Whether the store failed in a way that a later try may not meet: unavailable, throttled or timed out after
    /// the client's own retries ([`FailureKind::Retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind() == Some(FailureKind::Retryable)
    }

    /// The underlying error: what the backend got for a [`StoreError::Failed`] (when it got one: a key refused
    /// before any request has none), the caller's error for a [`StoreError::Consumer`]; `None` otherwise.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            StoreError::Failed { cause, .. } => cause.as_deref(),
            StoreError::Consumer { source, .. } => Some(&**source),
            StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } => None,
        }
    }

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

    /// Reads bytes `range` of object `key` (a range read: only those bytes cross the network), handing them to
    /// `consume` in order; returns how many. A range that reaches past the object's end is an error (the object is
    /// shorter than the caller knows it to be), and so is a missing object ([`StoreError::NotFound`]). What resumes
    /// a broken download, and what reads one file's chunks out of a pack.
    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64>;

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

/// The error of a range read that found the object shorter than the range: `got` bytes of `range` came.
pub fn short_object(store: String, key: &str, range: &std::ops::Range<u64>, got: u64) -> StoreError {
    StoreError::Failed {
        store,
        op: "get",
        key: key.to_string(),
        message: format!(
            "the object ends before byte {} (bytes {}..{} asked, {got} came): it is shorter than recorded",
            range.end, range.start, range.end
        ),
        kind: FailureKind::Permanent,
        cause: None,
    }
}

/// Joins key parts with `/`, skipping empty ones.
pub fn join_key(parts: &[&str]) -> String {
    parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/")
}
