//! `--storage` and the S3 options (xbcloud's names where it has them), turned into a [`store::Store`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use store::local::LocalStore;
use store::s3::{BucketLookup, S3Options, S3Store};
use store::Store;

/// Where backups are kept, and how to reach them.
#[derive(Debug, Clone, ClapArgs)]
pub struct StorageArgs {
    /// `file:///PATH` (a local directory laid out like a bucket) or `s3://BUCKET[/PREFIX]` (any S3-compatible
    /// service).
    #[arg(long, default_value = "file:///var/backups/xbkit", value_name = "URL")]
    pub storage: String,

    /// S3 endpoint (`http://127.0.0.1:9000` for MinIO or a local server; default `AWS_ENDPOINT_URL`, else AWS).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default `AWS_REGION`, else us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// S3 bucket, when `--storage s3://` names none.
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,

    /// S3 access key (default: `AWS_ACCESS_KEY_ID`).
    #[arg(long, value_name = "KEY")]
    pub s3_access_key: Option<String>,

    /// S3 secret key (default: `AWS_SECRET_ACCESS_KEY`).
    #[arg(long, value_name = "KEY")]
    pub s3_secret_key: Option<String>,

    /// S3 session token (default: `AWS_SESSION_TOKEN`).
    #[arg(long, value_name = "TOKEN")]
    pub s3_session_token: Option<String>,

    /// How buckets are addressed: `path` (`host/bucket`), `dns` (`bucket.host`), or `auto` (path style with
    /// --s3-endpoint, DNS style on AWS).
    #[arg(long, value_enum, default_value_t = LookupArg::Auto)]
    pub s3_bucket_lookup: LookupArg,

    /// Retries of a request that failed in a retryable way (5xx, 408, 429, a reset, a timeout); any other error
    /// fails at once.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_retries: usize,

    /// Longest wait between two retries, in milliseconds (waits grow exponentially, with jitter).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub max_backoff: u64,

    /// Longest a single request may take, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub timeout: u64,
}

/// `--s3-bucket-lookup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LookupArg {
    /// Path style with an endpoint, DNS style on AWS.
    Auto,
    /// Virtual-hosted style.
    Dns,
    /// Path style.
    Path,
}

impl StorageArgs {
    /// Opens the store the arguments name.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        if let Some(path) = self.storage.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("--storage {}: a file:// URL needs an absolute path (file:///var/backups)", self.storage);
            }
            return Ok(Box::new(LocalStore::new(PathBuf::from(path))));
        }
        if let Some(rest) = self.storage.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket = match (bucket, &self.s3_bucket) {
                ("", Some(bucket)) => bucket.as_str(),
                ("", None) => bail!("--storage s3:// names no bucket: use s3://BUCKET[/PREFIX] or --s3-bucket"),
                (bucket, _) => bucket,
            };
            let options = S3Options {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                access_key: self.s3_access_key.clone(),
                secret_key: self.s3_secret_key.clone(),
                session_token: self.s3_session_token.clone(),
                bucket_lookup: match self.s3_bucket_lookup {
                    LookupArg::Auto => BucketLookup::Auto,
                    LookupArg::Dns => BucketLookup::Dns,
                    LookupArg::Path => BucketLookup::Path,
                },
                max_retries: self.max_retries,
                max_backoff: Duration::from_millis(self.max_backoff),
                request_timeout: Duration::from_secs(self.timeout.max(1)),
            };
            let store = S3Store::new(bucket, prefix, &options)
                .with_context(|| format!("cannot use --storage {}", self.storage))?;
            return Ok(Box::new(store));
        }
        bail!("--storage {}: use file:///PATH or s3://BUCKET[/PREFIX]", self.storage)
    }
}
