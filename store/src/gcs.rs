//! `gs://bucket/prefix`: Google Cloud Storage through the `object_store` crate, which gets OAuth tokens (from a
//! service-account key, the application default credentials or the instance's metadata server), reads, lists and
//! deletes. Two requests are ours, sent with `object_store`'s own token: creating a bucket (`POST
//! /storage/v1/b?project=P`, which `object_store` does not do), and storing an object, through the JSON API's
//! simple upload (`POST /upload/storage/v1/b/B/o?uploadType=media&name=K`) rather than `object_store`'s XML-API
//! `PUT`: both are Google's documented ways to write an object whole, and the JSON one is the one that Google's
//! emulator `fake-gcs-server` implements, so it is the one the tests can prove. Its retries follow the same
//! policy as `object_store`'s (5xx, 408, 429 and transport failures, capped exponential backoff).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::path::Path;
use object_store::ObjectStore;

use crate::cloud::{error_message, refused, send_retrying, Cloud, CloudError, CloudStore, PutRefused, RequestOptions};

/// Google's endpoint, when none is given.
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// Everything needed to reach a bucket. What is not given here comes from the standard variables
/// (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_CLOUD_PROJECT`), then from the instance's
/// metadata server, as Google's tools do.
#[derive(Debug, Clone, Default)]
pub struct GcsOptions {
    /// A service-account key file (JSON).
    pub service_account: Option<PathBuf>,
    /// The service's URL (`http://127.0.0.1:4443` for an emulator); `None`: Google, or the key file's
    /// `gcs_base_url`.
    pub endpoint: Option<String>,
    /// The project a new bucket is created in (default: `GOOGLE_CLOUD_PROJECT`, else the key file's
    /// `project_id`). Only bucket creation needs it.
    pub project: Option<String>,
}

/// A Google Cloud Storage bucket, as a [`CloudStore`].
pub type GcsStore = CloudStore<Gcs>;

/// How to reach one Google Cloud Storage bucket.
pub struct Gcs {
    builder: GoogleCloudStorageBuilder,
    bucket: String,
    endpoint: String,
    project: Option<String>,
    requests: RequestOptions,
    /// The key file, for messages.
    key_file: Option<PathBuf>,
}

/// A lane's clients: `object_store`'s, and a plain HTTP client (with its own connections, driven by the same lane)
/// for the requests that are ours.
pub struct GcsClient {
    objects: GoogleCloudStorage,
    http: reqwest::Client,
}

/// The fields of a service-account key file that `object_store` does not expose.
#[derive(serde::Deserialize, Default)]
struct KeyFileFacts {
    project_id: Option<String>,
    gcs_base_url: Option<String>,
}

impl Gcs {
    /// The bucket `bucket`, reached as `options` and `requests` say. A key file that cannot be read is an error
    /// naming it.
    pub fn new(bucket: &str, options: &GcsOptions, requests: &RequestOptions) -> anyhow::Result<Gcs> {
        let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
        let mut facts = KeyFileFacts::default();
        if let Some(path) = &options.service_account {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the service-account key {}: {e}", path.display()))?;
            facts = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("the service-account key {} is not a key file (JSON): {e}", path.display())
            })?;
            builder = builder.with_service_account_path(path.to_string_lossy());
        }
        let endpoint = options.endpoint.clone().or(facts.gcs_base_url).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        builder = builder.with_base_url(&endpoint);
        let plain_http = endpoint.starts_with("http://");
        let builder =
            builder.with_retry(requests.retry_config()).with_client_options(requests.client_options(plain_http));
        let project =
            options.project.clone().or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok()).or(facts.project_id);
        Ok(Gcs {
            builder,
            bucket: bucket.to_string(),
            endpoint,
            project,
            requests: requests.clone(),
            key_file: options.service_account.clone(),
        })
    }
}

impl Gcs {
    /// `request` with the client's current OAuth token (none with an emulator's `disable_oauth` key).
    /// `object_store` caches the token and renews it before it expires.
    async fn authorized(
        &self,
        client: &GcsClient,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, CloudError> {
        let credential = client.objects.credentials().get_credential().await?;
        Ok(if credential.bearer.is_empty() { request } else { request.bearer_auth(&credential.bearer) })
    }

    /// `{endpoint}/{path}` with `path`'s segments escaped.
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, CloudError> {
        let mut url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| CloudError::permanent(format!("{}: {e}", self.endpoint)).caused_by(e))?;
        url.path_segments_mut()
            .map_err(|()| CloudError::permanent(format!("{} cannot be a base URL", self.endpoint)))?
            .extend(segments);
        Ok(url)
    }
}

impl Cloud for Gcs {
    type Client = GcsClient;
    const SCHEME: &'static str = "gs";
    const CONTAINER: &'static str = "bucket";

    fn container(&self) -> &str {
        &self.bucket
    }

    fn connect(&self) -> anyhow::Result<GcsClient> {
        let http = reqwest::Client::builder()
            .timeout(self.requests.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let objects = self.builder.clone().build().map_err(|e| match &self.key_file {
            Some(path) => anyhow::anyhow!("the service-account key {}: {}", path.display(), error_message(&e)),
            None => anyhow::anyhow!(error_message(&e)),
        })?;
        Ok(GcsClient { objects, http })
    }

    fn objects<'a>(&self, client: &'a GcsClient) -> &'a dyn ObjectStore {
        &client.objects
    }

    fn requests(&self) -> &RequestOptions {
        &self.requests
    }

    /// The JSON API's simple upload, retried like `object_store`'s requests; create-only with
    /// `ifGenerationMatch=0` (Google's precondition "no live object of this name"), refused with a 412.
    async fn put(&self, client: &GcsClient, path: &Path, body: Bytes, create_only: bool) -> Result<(), PutRefused> {
        let mut url = self.url(&["upload", "storage", "v1", "b", &self.bucket, "o"])?;
        // With a storage class, the object's metadata goes with its bytes: a multipart upload (one copy of the body).
        let (kind, body) = match &self.requests.storage_class {
            None => {
                url.query_pairs_mut().append_pair("uploadType", "media").append_pair("name", path.as_ref());
                ("application/octet-stream".to_string(), body)
            }
            Some(class) => {
                url.query_pairs_mut().append_pair("uploadType", "multipart");
                let metadata = serde_json::json!({ "name": path.as_ref(), "storageClass": class });
                multipart(&metadata, &body)
            }
        };
        if create_only {
            url.query_pairs_mut().append_pair("ifGenerationMatch", "0");
        }
        let response = send_retrying(&self.requests, &format!("put {path}"), async || {
            let request = client
                .http
                .post(url.clone())
                .header("content-type", kind.as_str())
                .body(reqwest::Body::from(body.clone()));
            self.authorized(client, request).await
        })
        .await?;
        match response.status() {
            status if status.is_success() => Ok(()),
            reqwest::StatusCode::PRECONDITION_FAILED if create_only => Err(PutRefused::Exists),
            _ => Err(PutRefused::Failed(refused(response).await)),
        }
    }

    fn is_missing_container(&self, error: &object_store::Error) -> bool {
        matches!(error, object_store::Error::NotFound { .. }) || error_message(error).contains("404 Not Found")
    }

    /// `GET /storage/v1/b/BUCKET` (JSON API): a listing of a missing bucket is not always a 404 (the emulator
    /// answers 500, which is retried); anything but a 200 or a 404 (no permission to read bucket metadata, say)
    /// falls back to the listing.
    async fn container_exists(&self, client: &GcsClient, probe: &Path) -> Result<bool, CloudError> {
        let request =
            self.authorized(client, client.http.get(self.url(&["storage", "v1", "b", &self.bucket])?)).await?;
        match request.send().await.map(|response| response.status()) {
            Ok(status) if status.is_success() => Ok(true),
            Ok(reqwest::StatusCode::NOT_FOUND) => Ok(false),
            _ => match client.objects.list_with_delimiter(Some(probe)).await {
                Ok(_) => Ok(true),
                Err(e) if self.is_missing_container(&e) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// `POST /storage/v1/b?project=P` with `{"name": bucket}`, authorized by `object_store`'s token.
    async fn create_container(&self, client: &GcsClient) -> Result<(), CloudError> {
        let project = self.project.as_deref().ok_or_else(|| {
            CloudError::permanent(
                "creating a bucket needs a project: give --google-project, GOOGLE_CLOUD_PROJECT, or a key file with \
                 project_id (or create the bucket first)",
            )
        })?;
        let mut url = self.url(&["storage", "v1", "b"])?;
        url.query_pairs_mut().append_pair("project", project);
        let body = serde_json::to_vec(&serde_json::json!({ "name": self.bucket }))
            .map_err(|e| CloudError::permanent(e.to_string()).caused_by(e))?;
        let response = send_retrying(&self.requests, "create bucket", async || {
            let request = client.http.post(url.clone()).header("content-type", "application/json").body(body.clone());
            self.authorized(client, request).await
        })
        .await?;
        if response.status().is_success() {
            return Ok(());
        }
        // 409 "you already own it": another put created it meanwhile (a name owned by someone else is a 409 too,
        // and stays an error).
        let refused = refused(response).await;
        if refused.message.starts_with("409") && refused.message.contains("already own") {
            Ok(())
        } else {
            Err(refused)
        }
    }
}

/// A `multipart/related` upload body (the JSON API's metadata and media in one request): its content type and
/// bytes. The boundary is made longer until it occurs nowhere in the media.
fn multipart(metadata: &serde_json::Value, media: &[u8]) -> (String, Bytes) {
    let mut boundary = format!("xbkit-part-{:08x}", crc32fast::hash(media));
    while media.windows(boundary.len()).any(|w| w == boundary.as_bytes()) {
        boundary.push('x');
    }
    let mut body = Vec::with_capacity(media.len() + 512);
    body.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n").as_bytes());
    body.extend_from_slice(metadata.to_string().as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(media);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/related; boundary={boundary}"), Bytes::from(body))
}
