//! What the three clouds share: a bucket (or container) and a prefix in it, reached through an `object_store`
//! client, behind the synchronous [`Store`] trait.
//!
//! `object_store` does the signing, the retries (capped exponential backoff with jitter; only 5xx, 408, 429,
//! connection resets and timeouts are retried, any other 4xx fails at once with the service's message) and the
//! wire format of each service. It is asynchronous; a [`CloudStore`] keeps a few *lanes*, each a single-threaded
//! tokio runtime with its own client and connection pool, and a call blocks on a lane it has to itself, so the rest
//! of the program stays plain threads. With one lane per calling thread, the thread that waits for a response is
//! the one that reads its socket: no hand-off to an I/O thread and back for every piece of a body (on two cores
//! that hand-off cost a download a third of its client CPU).
//!
//! What differs per service lives in its [`Cloud`]: how a client is built, how a missing bucket shows, and how a
//! bucket is created (the one thing `object_store` does not do).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::{ObjectInfo, Result, Store, StoreError};

/// How requests are retried and timed out: the same for every service.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Retries of a retryable failure before it is reported.
    pub max_retries: usize,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// Longest a single request may take (connect, send, receive).
    pub request_timeout: Duration,
}

impl Default for RequestOptions {
    fn default() -> RequestOptions {
        RequestOptions {
            max_retries: 10,
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl RequestOptions {
    /// `object_store`'s retry policy for these options.
    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: Duration::from_secs(15 * 60),
        }
    }

    /// `object_store`'s client options for these options; `plain_http` allows `http://` endpoints.
    pub(crate) fn client_options(&self, plain_http: bool) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(Duration::from_secs(10))
            .with_allow_http(plain_http)
    }
}

/// One service: everything [`CloudStore`] needs that is not the same for all of them.
pub trait Cloud: Send + Sync + 'static {
    /// What a lane keeps to talk to the service: an `object_store` client, and whatever else the service needs.
    type Client: Send;

    /// The URL scheme users write (`s3`, `gs`, `az`).
    const SCHEME: &'static str;

    /// What the service calls a bucket (`bucket`, `container`), for messages.
    const CONTAINER: &'static str;

    /// The bucket (or container) name.
    fn container(&self) -> &str;

    /// A new client (one per lane).
    fn connect(&self) -> anyhow::Result<Self::Client>;

    /// The `object_store` client in `client`.
    fn objects<'a>(&self, client: &'a Self::Client) -> &'a dyn ObjectStore;

    /// Stores `body` as `path`, whole, replacing any object of that name, or with `create_only` only if there is
    /// none (the service's conditional create). `object_store`'s put, unless the service has a reason to do
    /// otherwise.
    fn put(
        &self,
        client: &Self::Client,
        path: &Path,
        body: Bytes,
        create_only: bool,
    ) -> impl Future<Output = std::result::Result<(), PutRefused>> {
        async move {
            let mode = if create_only { PutMode::Create } else { PutMode::Overwrite };
            let options = PutOptions { mode, ..PutOptions::default() };
            match self.objects(client).put_opts(path, PutPayload::from_bytes(body), options).await {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => Err(PutRefused::Exists),
                Err(e) => Err(PutRefused::Failed(error_message(&e))),
            }
        }
    }

    /// Whether a listing failed because the bucket does not exist.
    fn is_missing_container(&self, error: &object_store::Error) -> bool;

    /// Whether the bucket exists: by listing `probe` (the store's prefix), unless the service has a better way.
    fn container_exists(
        &self,
        client: &Self::Client,
        probe: &Path,
    ) -> impl Future<Output = std::result::Result<bool, String>> {
        async move {
            match self.objects(client).list_with_delimiter(Some(probe)).await {
                Ok(_) => Ok(true),
                Err(e) if self.is_missing_container(&e) => Ok(false),
                Err(e) => Err(error_message(&e)),
            }
        }
    }

    /// Creates the bucket; an error is the service's own message. A bucket that another `put` created meanwhile
    /// is not an error.
    fn create_container(&self, client: &Self::Client) -> impl Future<Output = std::result::Result<(), String>>;
}

/// Why a cloud did not store an object.
#[derive(Debug)]
pub enum PutRefused {
    /// A create-only put found an object of that name.
    Exists,
    /// Anything else: the service's own message.
    Failed(String),
}

impl From<String> for PutRefused {
    fn from(message: String) -> PutRefused {
        PutRefused::Failed(message)
    }
}

/// A bucket (and a prefix in it) of one of the clouds, used as an object store.
pub struct CloudStore<C: Cloud> {
    cloud: C,
    /// Idle lanes; a call takes one (or builds one when all are busy) and puts it back.
    lanes: Mutex<Vec<Lane<C::Client>>>,
    prefix: String,
}

/// One client and the single-threaded runtime that drives its connections. A lane's connections are only ever
/// used from its own runtime, which runs only while a call blocks on it.
struct Lane<T> {
    runtime: tokio::runtime::Runtime,
    client: T,
}

impl<C: Cloud> CloudStore<C> {
    /// A store for `cloud`'s bucket, keys below `prefix` (may be empty). The first client is built now, so a bad
    /// configuration (an unreadable key file, a malformed key) is reported before anything starts.
    pub fn new(cloud: C, prefix: &str) -> anyhow::Result<CloudStore<C>> {
        let first = Self::lane(&cloud)?;
        Ok(CloudStore { cloud, lanes: Mutex::new(vec![first]), prefix: prefix.trim_matches('/').to_string() })
    }

    fn lane(cloud: &C) -> anyhow::Result<Lane<C::Client>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Lane { runtime, client: cloud.connect()? })
    }

    /// Runs `work` on a lane of its own: an idle one, or a new one when every lane is busy (so there are never more
    /// lanes than threads that used the store at once).
    fn on_lane<T>(&self, op: &'static str, key: &str, work: impl AsyncFnOnce(&C::Client) -> Result<T>) -> Result<T> {
        let idle = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let lane = match idle {
            Some(lane) => lane,
            None => Self::lane(&self.cloud).map_err(|e| StoreError::Failed {
                store: self.describe(),
                op,
                key: key.to_string(),
                message: format!("cannot make a client: {e:#}"),
            })?,
        };
        let result = lane.runtime.block_on(work(&lane.client));
        self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(lane);
        result
    }

    fn objects<'a>(&self, client: &'a C::Client) -> &'a dyn ObjectStore {
        self.cloud.objects(client)
    }

    /// A put, create-only or not (see [`Cloud::put`]).
    fn store(&self, key: &str, body: Bytes, create_only: bool) -> Result<()> {
        let path = self.path(key);
        self.on_lane("put", key, async |client| {
            self.cloud.put(client, &path, body, create_only).await.map_err(|refused| match refused {
                PutRefused::Exists => StoreError::AlreadyExists { store: self.describe(), key: key.to_string() },
                PutRefused::Failed(message) => {
                    StoreError::Failed { store: self.describe(), op: "put", key: key.to_string(), message }
                }
            })
        })
    }

    fn path(&self, key: &str) -> Path {
        Path::from(crate::join_key(&[&self.prefix, key]))
    }

    fn failed(&self, op: &'static str, key: &str, error: &object_store::Error) -> StoreError {
        if matches!(error, object_store::Error::NotFound { .. }) && op == "get" {
            return StoreError::NotFound { store: self.describe(), key: key.to_string() };
        }
        StoreError::Failed { store: self.describe(), op, key: key.to_string(), message: error_message(error) }
    }
}

impl<C: Cloud> std::fmt::Debug for CloudStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStore").field("store", &self.describe()).finish()
    }
}

/// The service's own words, without `object_store`'s nesting noise where possible.
pub(crate) fn error_message(error: &object_store::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Sends the request `make` builds (afresh for each attempt) until it gets an answer that is not worth retrying,
/// with `object_store`'s policy: 5xx, 408, 429 and transport failures are retried, up to `options.max_retries`
/// times, waiting 100 ms, 200 ms, 400 ms … at most `options.max_backoff` between attempts. Returns that answer
/// (a success, or a refusal for the caller to read), or the last failure once the retries are spent. For the
/// few requests `object_store` does not make for us.
pub(crate) async fn send_retrying(
    options: &RequestOptions,
    what: &str,
    mut make: impl AsyncFnMut() -> std::result::Result<reqwest::RequestBuilder, String>,
) -> std::result::Result<reqwest::Response, String> {
    let mut attempt = 0;
    loop {
        let failure = match make().await?.send().await {
            Ok(response) => {
                let status = response.status();
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    return Ok(response);
                }
                refused(response).await
            }
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                message
            }
        };
        if attempt >= options.max_retries {
            return Err(format!("{failure} (after {attempt} retries)"));
        }
        let backoff = Duration::from_millis(100).saturating_mul(1 << attempt.min(20)).min(options.max_backoff);
        log::debug!("{what}: {failure}; retrying in {backoff:?}");
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
}

/// A response's status and body as one message, for the requests `object_store` does not make for us.
pub(crate) async fn refused(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    format!("{status}: {}", body.trim())
}

/// `location`'s key below `root` (the store's prefix), as it was put. A key's characters that an `object_store`
/// path does not take as they are (non-ASCII letters, `%`, `#`, …) are stored percent-encoded, and listed so:
/// each part is decoded back (`Path::from` encodes `%` too, so decoding undoes exactly what it did).
fn listed_key(root: &Path, location: &Path) -> String {
    let parts: Vec<String> = match location.prefix_match(root) {
        Some(parts) => parts.map(|part| decoded(part.as_ref())).collect(),
        None => location.parts().map(|part| decoded(part.as_ref())).collect(),
    };
    parts.join("/")
}

/// A listed path part (`object_store`'s raw, percent-encoded form) as it was put; as it is if it does not decode
/// to UTF-8 (a name some other program stored).
fn decoded(part: &str) -> String {
    match percent_encoding::percent_decode_str(part).decode_utf8() {
        Ok(text) => text.into_owned(),
        Err(_) => part.to_string(),
    }
}

impl<C: Cloud> Store for CloudStore<C> {
    fn describe(&self) -> String {
        format!("{}://{}", C::SCHEME, crate::join_key(&[self.cloud.container(), &self.prefix]))
    }

    fn ensure_container(&self) -> Result<()> {
        let root = self.path("");
        let failed = |op: &'static str, message: String| StoreError::Failed {
            store: self.describe(),
            op,
            key: if op == "list" { String::new() } else { self.cloud.container().to_string() },
            message,
        };
        let exists = self.on_lane("list", "", async |client| {
            self.cloud.container_exists(client, &root).await.map_err(|message| failed("list", message))
        })?;
        if exists {
            return Ok(());
        }
        log::info!("{} {} does not exist: creating it", C::CONTAINER, self.cloud.container());
        let op = if C::CONTAINER == "bucket" { "create bucket" } else { "create container" };
        self.on_lane(op, self.cloud.container(), async |client| {
            match self.cloud.create_container(client).await {
                Ok(()) => Ok(()),
                // Another put (of another name) created it meanwhile, and the service says so in its own words
                // (`BucketAlreadyExists`, "already exists"): it is there now, and ours to use if we can list it.
                Err(message) => match self.cloud.container_exists(client, &root).await {
                    Ok(true) => Ok(()),
                    _ => Err(failed(op, message)),
                },
            }
        })
    }

    fn put(&self, key: &str, body: Bytes) -> Result<()> {
        self.store(key, body, false)
    }

    fn put_new(&self, key: &str, body: Bytes) -> Result<()> {
        self.store(key, body, true)
    }

    fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> Result<u64> {
        let path = self.path(key);
        self.on_lane("get", key, async |client| {
            let result = self.objects(client).get(&path).await.map_err(|e| self.failed("get", key, &e))?;
            let mut stream = result.into_stream();
            let mut total = 0u64;
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| self.failed("get", key, &e))?;
                consume(&piece).map_err(|source| StoreError::Consumer {
                    store: self.describe(),
                    key: key.to_string(),
                    source,
                })?;
                total += piece.len() as u64;
            }
            Ok(total)
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(prefix);
        let root = Path::from(self.prefix.as_str());
        self.on_lane("list", prefix, async |client| {
            let mut stream = self.objects(client).list(Some(&path));
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| self.failed("list", prefix, &e))?;
                found.push(ObjectInfo { key: listed_key(&root, &meta.location), size: meta.size });
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.path(prefix);
        let listed = self.on_lane("list", prefix, async |client| {
            self.objects(client).list_with_delimiter(Some(&path)).await.map_err(|e| self.failed("list", prefix, &e))
        })?;
        let mut names: Vec<String> = listed.common_prefixes.iter().filter_map(|p| p.filename().map(decoded)).collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self.on_lane("delete", key, async |client| Ok(self.objects(client).delete(&path).await))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listed keys come back as they were put: `object_store`'s percent-encoding of a path undone, part by part,
    /// below the store's prefix.
    #[test]
    fn listed_keys_are_decoded_below_the_prefix() {
        for key in ["odd/ünï/cödé", "a/100%/x", "a/%2F/b", "b#c/[d]/e f", "plain/0000000000.xbs", "x/./y"] {
            for prefix in ["", "pre", "pré/fix"] {
                let location = Path::from(crate::join_key(&[prefix, key]));
                assert_eq!(listed_key(&Path::from(prefix), &location), key, "{prefix:?} {key:?} as {location}");
            }
        }
        // A name some other program stored that does not decode to UTF-8 stays as listed.
        assert_eq!(listed_key(&Path::ROOT, &Path::parse("a/%FF").unwrap()), "a/%FF");
    }
}
