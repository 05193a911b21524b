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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use crate::{Cause, FailureKind, ObjectInfo, Result, Store, StoreError};

/// How requests are retried and timed out: the same for every service.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Retries of a retryable failure before it is reported.
    pub max_retries: usize,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// Longest a single request may take (connect, send, receive).
    pub request_timeout: Duration,
    /// The storage class every object is stored in (`--storage-class`): S3's `x-amz-storage-class`
    /// (`STANDARD_IA`, `GLACIER_IR`, …), Google's storage class (`NEARLINE`, `COLDLINE`, …), Azure's access tier
    /// (`Cool`, `Cold`, …). `None`: the bucket's default.
    pub storage_class: Option<String>,
}

impl Default for RequestOptions {
    fn default() -> RequestOptions {
        RequestOptions {
            max_retries: 10,
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            storage_class: None,
        }
    }
}

impl RequestOptions {
    /// `object_store`'s retry policy for these options. The first wait is 100 ms, or `max_backoff` when that is
    /// shorter (at least 1 ms): `object_store` draws each wait between the first and twice the one before, and
    /// panics when that range is empty (a longest wait below half the first one did that on the third try).
    pub(crate) fn retry_config(&self) -> RetryConfig {
        let max_backoff = self.max_backoff.max(Duration::from_millis(1));
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100).min(max_backoff),
                max_backoff,
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

    /// How requests are made, and what every object is stored as.
    fn requests(&self) -> &RequestOptions;

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
            let mut attributes = object_store::Attributes::new();
            if let Some(class) = &self.requests().storage_class {
                attributes.insert(object_store::Attribute::StorageClass, class.clone().into());
            }
            let options = PutOptions { mode, attributes, ..PutOptions::default() };
            match self.objects(client).put_opts(path, PutPayload::from_bytes(body), options).await {
                Ok(_) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => Err(PutRefused::Exists),
                Err(e) => Err(PutRefused::Failed(e.into())),
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
    ) -> impl Future<Output = std::result::Result<bool, CloudError>> {
        async move {
            match self.objects(client).list_with_delimiter(Some(probe)).await {
                Ok(_) => Ok(true),
                Err(e) if self.is_missing_container(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }

    /// Creates the bucket; an error carries the service's own message. A bucket that another `put` created
    /// meanwhile is not an error.
    fn create_container(&self, client: &Self::Client) -> impl Future<Output = std::result::Result<(), CloudError>>;
}

/// Why a cloud did not store an object.
#[derive(Debug)]
pub enum PutRefused {
    /// A create-only put found an object of that name.
    Exists,
    /// Anything else: the service's own message, and whether a retry may help.
    Failed(CloudError),
}

impl From<CloudError> for PutRefused {
    fn from(error: CloudError) -> PutRefused {
        PutRefused::Failed(error)
    }
}

/// A request to a cloud that failed, as a [`Cloud`] reports it to [`CloudStore`] (which makes it a
/// [`StoreError::Failed`]): the text shown, whether retrying may help, and the error behind it.
#[derive(Debug, Clone)]
pub struct CloudError {
    /// What is shown: the service's own words (or ours, for a request that could not be made).
    pub message: String,
    /// Whether a later run may succeed.
    pub kind: FailureKind,
    /// The error behind the message (`object_store`'s, the HTTP client's), when there is one.
    pub cause: Option<Cause>,
}

impl CloudError {
    /// A failure that no retry mends (a URL that cannot be built, a setting that is missing), without a cause.
    pub fn permanent(message: impl Into<String>) -> CloudError {
        CloudError { message: message.into(), kind: FailureKind::Permanent, cause: None }
    }

    /// The same failure, with `cause` kept as the error behind it.
    pub fn caused_by(self, cause: impl std::error::Error + Send + Sync + 'static) -> CloudError {
        CloudError { cause: Some(Arc::new(cause)), ..self }
    }

    /// A request that got no answer (it could not connect, send or receive): retryable, as every client retries
    /// it; one that could not even be built (a bad URL or header) is permanent. The message is the error's chain.
    pub fn of_transport(error: reqwest::Error) -> CloudError {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        let kind = if error.is_builder() { FailureKind::Permanent } else { FailureKind::Retryable };
        CloudError { message, kind, cause: Some(Arc::new(error)) }
    }
}

impl From<object_store::Error> for CloudError {
    /// The service's own words (the error's chain, without repeats), classified by [`failure_kind`], the error kept.
    fn from(error: object_store::Error) -> CloudError {
        CloudError { message: error_message(&error), kind: failure_kind(&error), cause: Some(Arc::new(error)) }
    }
}

/// Whether retrying may help after `error`, which `object_store` reports once its own retries are spent.
///
/// Permanent: what `object_store` has a variant for — no permission (403), no valid credentials (401), a path it
/// does not take, an operation or configuration key the service does not support, a failed precondition (412),
/// and the answers `NotFound`, `AlreadyExists`, `NotModified` where the caller did not expect them. The rest
/// (`Generic`, a task that did not join) is retryable — a 5xx, 408 or 429 that outlasted the retries, a
/// connection that failed, a response cut short — unless its message shows a status that says otherwise (a 400, a
/// 405, a 403 on a listing, which `object_store` reports as generic) or a redirect that cannot be followed (a
/// wrong region).
pub fn failure_kind(error: &object_store::Error) -> FailureKind {
    use object_store::Error as E;
    match error {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::Precondition { .. }
        | E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::NotModified { .. } => FailureKind::Permanent,
        _ => {
            let message = error_message(error);
            match status_in(&message) {
                Some(status) => FailureKind::of_status(status),
                None if message.contains("redirect without LOCATION") => FailureKind::Permanent,
                None => FailureKind::Retryable,
            }
        }
    }
}

/// The HTTP status `object_store` shows in a message (`… status code: 403 Forbidden: …`), if it shows one.
fn status_in(message: &str) -> Option<http::StatusCode> {
    let (_, after) = message.split_once("status code: ")?;
    http::StatusCode::from_bytes(after.get(..3)?.as_bytes()).ok()
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
            None => Self::lane(&self.cloud).map_err(|e| {
                // The configuration was checked when the first lane was made: what fails now is the system's.
                let kind = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<std::io::Error>())
                    .map_or(FailureKind::Permanent, FailureKind::of_io);
                let message = format!("cannot make a client: {e:#}");
                let cause: Box<dyn std::error::Error + Send + Sync> = e.into();
                self.store_error(op, key, CloudError { message, kind, cause: Some(Arc::from(cause)) })
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
                PutRefused::Failed(error) => self.store_error("put", key, error),
            })
        })
    }

    /// Reads `range` of `key` (the whole object: `None`). A body that breaks part way is resumed by
    /// `object_store` from the byte where it stopped (a range request, with `If-Match` on the first answer's ETag,
    /// so a resumed read never splices two versions of an object), within its retry budget.
    fn read(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64> {
        let path = self.path(key);
        self.on_lane("get", key, async |client| {
            let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
            let result = self.objects(client).get_opts(&path, options).await.map_err(|e| self.failed("get", key, e))?;
            let mut stream = result.into_stream();
            let mut total = 0u64;
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| self.failed("get", key, e))?;
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

    fn path(&self, key: &str) -> Path {
        Path::from(crate::join_key(&[&self.prefix, key]))
    }

    /// `object_store`'s `error` from `op` of `key`: a missing object for a `get`, a failure otherwise.
    fn failed(&self, op: &'static str, key: &str, error: object_store::Error) -> StoreError {
        if matches!(error, object_store::Error::NotFound { .. }) && op == "get" {
            return StoreError::NotFound { store: self.describe(), key: key.to_string() };
        }
        self.store_error(op, key, error.into())
    }

    /// The failure `error` of `op` of `key`.
    fn store_error(&self, op: &'static str, key: &str, error: CloudError) -> StoreError {
        let CloudError { message, kind, cause } = error;
        StoreError::Failed { store: self.describe(), op, key: key.to_string(), message, kind, cause }
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
    mut make: impl AsyncFnMut() -> std::result::Result<reqwest::RequestBuilder, CloudError>,
) -> std::result::Result<reqwest::Response, CloudError> {
    let mut attempt = 0;
    loop {
        let failure = match make().await?.send().await {
            Ok(response) => {
                if FailureKind::of_status(response.status()) == FailureKind::Permanent {
                    return Ok(response);
                }
                refused(response).await
            }
            Err(e) => CloudError::of_transport(e),
        };
        if failure.kind == FailureKind::Permanent {
            return Err(failure);
        }
        if attempt >= options.max_retries {
            return Err(CloudError { message: format!("{} (after {attempt} retries)", failure.message), ..failure });
        }
        let backoff = Duration::from_millis(100).saturating_mul(1 << attempt.min(20)).min(options.max_backoff);
        log::debug!("{what}: {}; retrying in {backoff:?}", failure.message);
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
}

/// A response the caller will not take, for the requests `object_store` does not make for us: its status and
/// body as the message, classified by its status ([`FailureKind::of_status`]: 5xx, 408 and 429 retryable, any
/// other 4xx permanent), the HTTP client's error for the status kept as the cause.
pub(crate) async fn refused(response: reqwest::Response) -> CloudError {
    let status = response.status();
    let cause = response.error_for_status_ref().err();
    let body = response.text().await.unwrap_or_default();
    let refused =
        CloudError { message: format!("{status}: {}", body.trim()), kind: FailureKind::of_status(status), cause: None };
    match cause {
        Some(cause) => refused.caused_by(cause),
        None => refused,
    }
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
        let failed = |op: &'static str, error: CloudError| {
            self.store_error(op, if op == "list" { "" } else { self.cloud.container() }, error)
        };
        let exists = self.on_lane("list", "", async |client| {
            self.cloud.container_exists(client, &root).await.map_err(|error| failed("list", error))
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
                Err(error) => match self.cloud.container_exists(client, &root).await {
                    Ok(true) => Ok(()),
                    _ => Err(failed(op, error)),
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
        self.read(key, None, consume)
    }

    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> Result<u64> {
        if range.is_empty() {
            return Ok(0);
        }
        let got = self.read(key, Some(range.clone()), consume)?;
        if got != range.end - range.start {
            return Err(crate::short_object(self.describe(), key, &range, got));
        }
        Ok(got)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(prefix);
        let root = Path::from(self.prefix.as_str());
        self.on_lane("list", prefix, async |client| {
            let mut stream = self.objects(client).list(Some(&path));
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| self.failed("list", prefix, e))?;
                found.push(ObjectInfo { key: listed_key(&root, &meta.location), size: meta.size, e_tag: meta.e_tag });
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.path(prefix);
        let listed = self.on_lane("list", prefix, async |client| {
            self.objects(client).list_with_delimiter(Some(&path)).await.map_err(|e| self.failed("list", prefix, e))
        })?;
        let mut names: Vec<String> = listed.common_prefixes.iter().filter_map(|p| p.filename().map(decoded)).collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self.on_lane("delete", key, async |client| Ok(self.objects(client).delete(&path).await))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests;
