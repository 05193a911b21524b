//! `s3://bucket/prefix`: any S3-compatible service through the `object_store` crate.
//!
//! `object_store` does the signing (SigV4), the retries (capped exponential backoff with jitter; only 5xx, 408,
//! 429, connection resets and timeouts are retried, any other 4xx fails at once with the service's message) and
//! the XML. It is asynchronous; [`S3Store`] keeps a few *lanes*, each a single-threaded tokio runtime with its own
//! client and connection pool, and a call blocks on a lane it has to itself, so the rest of the program stays plain
//! threads. With one lane per calling thread, the thread that waits for a response is the one that reads its
//! socket: no hand-off to an I/O thread and back for every piece of a body (on two cores that hand-off cost a
//! download a third of its client CPU). The one thing `object_store` lacks is creating a bucket: that is a single
//! `PUT /bucket` request, signed by `object_store`'s own presigner and sent once.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::{ObjectInfo, Result, Store, StoreError};

/// How buckets are addressed (xbcloud's `--s3-bucket-lookup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BucketLookup {
    /// Path style (`http://host/bucket/key`) with a custom endpoint, virtual-hosted style on AWS.
    #[default]
    Auto,
    /// Virtual-hosted style (`http://bucket.host/key`).
    Dns,
    /// Path style (`http://host/bucket/key`).
    Path,
}

/// Everything needed to reach a bucket. Credentials not given here come from the standard `AWS_*` environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, …), then from the instance's metadata service, as the AWS tools do.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// The service's URL (`http://127.0.0.1:9000`); `None`: AWS.
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key: Option<String>,
    /// Secret access key.
    pub secret_key: Option<String>,
    /// Session token.
    pub session_token: Option<String>,
    /// Bucket addressing.
    pub bucket_lookup: BucketLookup,
    /// Retries of a retryable failure before it is reported.
    pub max_retries: usize,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// Longest a single request may take (connect, send, receive).
    pub request_timeout: Duration,
}

/// A bucket (and a prefix in it) used as an object store.
pub struct S3Store {
    /// The configuration every lane's client is built from.
    builder: AmazonS3Builder,
    /// Idle lanes; a call takes one (or builds one when all are busy) and puts it back.
    lanes: Mutex<Vec<Lane>>,
    bucket: String,
    prefix: String,
}

/// One client and the single-threaded runtime that drives its connections. A lane's connections are only ever
/// used from its own runtime, which runs only while a call blocks on it.
struct Lane {
    runtime: tokio::runtime::Runtime,
    client: AmazonS3,
}

impl Lane {
    fn new(builder: &AmazonS3Builder) -> anyhow::Result<Lane> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Lane { runtime, client: builder.clone().build()? })
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("bucket", &self.bucket).field("prefix", &self.prefix).finish()
    }
}

impl S3Store {
    /// A store for `bucket`, keys below `prefix` (may be empty).
    pub fn new(bucket: &str, prefix: &str, options: &S3Options) -> anyhow::Result<S3Store> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        let plain_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(plain_http);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &options.access_key {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &options.session_token {
            builder = builder.with_token(token);
        }
        let virtual_hosted = match options.bucket_lookup {
            BucketLookup::Dns => true,
            BucketLookup::Path => false,
            BucketLookup::Auto => endpoint.is_none(),
        };
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
        // Over TLS the body is already protected, so it is not hashed into the signature (UNSIGNED-PAYLOAD), as
        // boto3 does: that SHA-256 was half of put's CPU. Over plain HTTP every body is signed.
        builder = builder.with_unsigned_payload(!plain_http);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: options.max_backoff,
                base: 2.0,
            },
            max_retries: options.max_retries,
            retry_timeout: Duration::from_secs(15 * 60),
        };
        let client_options = ClientOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(Duration::from_secs(10))
            .with_allow_http(plain_http);
        let builder = builder.with_retry(retry).with_client_options(client_options);
        // The first lane now, so a bad configuration is reported before anything starts.
        let first = Lane::new(&builder)?;
        Ok(S3Store {
            builder,
            lanes: Mutex::new(vec![first]),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// Runs `work` on a lane of its own: an idle one, or a new one when every lane is busy (so there are never more
    /// lanes than threads that used the store at once).
    fn on_lane<T>(&self, op: &'static str, key: &str, work: impl AsyncFnOnce(&AmazonS3) -> Result<T>) -> Result<T> {
        let idle = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let lane = match idle {
            Some(lane) => lane,
            None => Lane::new(&self.builder).map_err(|e| StoreError::Failed {
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

    fn path(&self, key: &str) -> Path {
        Path::from(crate::join_key(&[&self.prefix, key]))
    }

    fn failed(&self, op: &'static str, key: &str, error: &object_store::Error) -> StoreError {
        if matches!(error, object_store::Error::NotFound { .. }) && op == "get" {
            return StoreError::NotFound { store: self.describe(), key: key.to_string() };
        }
        StoreError::Failed { store: self.describe(), op, key: key.to_string(), message: error_message(error) }
    }

    /// Creates the bucket: `PUT /bucket`, presigned by `object_store` (no signing of our own), sent once.
    fn create_bucket(&self) -> Result<()> {
        let failed = |message: String| StoreError::Failed {
            store: self.describe(),
            op: "create bucket",
            key: self.bucket.clone(),
            message,
        };
        self.on_lane("create bucket", &self.bucket, async |client| {
            let url = client
                .signed_url(http::Method::PUT, &Path::from(""), Duration::from_secs(300))
                .await
                .map_err(|e| failed(error_message(&e)))?;
            let response = reqwest::Client::new()
                .put(url)
                .header("content-length", "0")
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            // 409 BucketAlreadyOwnedByYou: another put created it meanwhile.
            if status.is_success() || body.contains("BucketAlreadyOwnedByYou") {
                Ok(())
            } else {
                Err(failed(format!("{status}: {}", body.trim())))
            }
        })
    }
}

/// The service's own words, without `object_store`'s nesting noise where possible.
fn error_message(error: &object_store::Error) -> String {
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

impl Store for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}", crate::join_key(&[&self.bucket, &self.prefix]))
    }

    fn ensure_container(&self) -> Result<()> {
        let root = self.path("");
        let probe = self.on_lane("list", "", async |client| Ok(client.list_with_delimiter(Some(&root)).await))?;
        match probe {
            Ok(_) => Ok(()),
            // A missing bucket is a 404 `NoSuchBucket`, which object_store reports as a generic error.
            Err(e)
                if matches!(e, object_store::Error::NotFound { .. }) || error_message(&e).contains("NoSuchBucket") =>
            {
                log::info!("bucket {} does not exist: creating it", self.bucket);
                self.create_bucket()
            }
            Err(e) => Err(self.failed("list", "", &e)),
        }
    }

    fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let path = self.path(key);
        self.on_lane("put", key, async |client| {
            client.put(&path, PutPayload::from_bytes(body)).await.map(drop).map_err(|e| self.failed("put", key, &e))
        })
    }

    fn get(&self, key: &str, consume: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>) -> Result<u64> {
        let path = self.path(key);
        self.on_lane("get", key, async |client| {
            let result = client.get(&path).await.map_err(|e| self.failed("get", key, &e))?;
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
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        self.on_lane("list", prefix, async |client| {
            let mut stream = client.list(Some(&path));
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| self.failed("list", prefix, &e))?;
                let key = meta.location.as_ref().strip_prefix(&strip).unwrap_or(meta.location.as_ref()).to_string();
                found.push(ObjectInfo { key, size: meta.size });
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.path(prefix);
        let listed = self.on_lane("list", prefix, async |client| {
            client.list_with_delimiter(Some(&path)).await.map_err(|e| self.failed("list", prefix, &e))
        })?;
        let mut names: Vec<String> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self.on_lane("delete", key, async |client| Ok(client.delete(&path).await))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, &e)),
        }
    }
}
