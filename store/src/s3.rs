//! `s3://bucket/prefix`: any S3-compatible service (AWS, MinIO, Ceph RGW) through the `object_store` crate, which
//! signs (SigV4) and speaks the XML. The one thing it lacks is creating a bucket: that is a single `PUT /bucket`
//! request, signed by `object_store`'s own presigner and sent once.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::Signer;

use object_store::ObjectStore;

use crate::cloud::{error_message, refused, send_retrying, Cloud, CloudError, CloudStore, RequestOptions};

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
    /// Server-side encryption asked of every put (`--s3-sse`): `AES256` (SSE-S3), `aws:kms` (SSE-KMS),
    /// `aws:kms:dsse`; `None`: the bucket's default.
    pub sse: Option<String>,
    /// The KMS key for `aws:kms` (`--s3-sse-kms-key-id`); `None`: the account's AWS-managed key.
    pub sse_kms_key_id: Option<String>,
}

/// A bucket on an S3-compatible service, as a [`CloudStore`].
pub type S3Store = CloudStore<S3>;

/// How to reach one bucket of an S3-compatible service.
pub struct S3 {
    /// The configuration every lane's client is built from.
    builder: AmazonS3Builder,
    bucket: String,
    requests: RequestOptions,
}

impl S3 {
    /// The bucket `bucket`, reached as `options` and `requests` say.
    pub fn new(bucket: &str, options: &S3Options, requests: &RequestOptions) -> S3 {
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
        // The encryption keys by their configuration names (their enum is not exported).
        let key = |name: &str| name.parse::<AmazonS3ConfigKey>().expect("object_store names this key");
        if let Some(sse) = &options.sse {
            builder = builder.with_config(key("aws_server_side_encryption"), sse);
            if let Some(id) = &options.sse_kms_key_id {
                builder = builder.with_config(key("aws_sse_kms_key_id"), id);
            }
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
        let builder =
            builder.with_retry(requests.retry_config()).with_client_options(requests.client_options(plain_http));
        S3 { builder, bucket: bucket.to_string(), requests: requests.clone() }
    }
}

impl Cloud for S3 {
    type Client = AmazonS3;
    const SCHEME: &'static str = "s3";
    const CONTAINER: &'static str = "bucket";

    fn container(&self) -> &str {
        &self.bucket
    }

    fn connect(&self) -> anyhow::Result<AmazonS3> {
        Ok(self.builder.clone().build()?)
    }

    fn objects<'a>(&self, client: &'a AmazonS3) -> &'a dyn ObjectStore {
        client
    }

    fn requests(&self) -> &RequestOptions {
        &self.requests
    }

    fn is_missing_container(&self, error: &object_store::Error) -> bool {
        // A missing bucket is a 404 `NoSuchBucket`, which object_store reports as a generic error.
        matches!(error, object_store::Error::NotFound { .. }) || error_message(error).contains("NoSuchBucket")
    }

    /// `PUT /bucket`, presigned by `object_store` (no signing of our own), retried like its own requests.
    async fn create_container(&self, client: &AmazonS3) -> Result<(), CloudError> {
        let url = client.signed_url(http::Method::PUT, &Path::from(""), Duration::from_secs(300)).await?;
        let http = reqwest::Client::new();
        let response = send_retrying(&self.requests, "create bucket", async || {
            Ok(http.put(url.clone()).header("content-length", "0"))
        })
        .await?;
        if response.status().is_success() {
            return Ok(());
        }
        // 409 BucketAlreadyOwnedByYou: another put created it meanwhile.
        let refused = refused(response).await;
        if refused.message.contains("BucketAlreadyOwnedByYou") {
            Ok(())
        } else {
            Err(refused)
        }
    }
}
