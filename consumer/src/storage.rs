//! `--storage` and each cloud's options (xbcloud's names where it has them), turned into a [`store::Store`]; and
//! what kind of failure a failed command had, the store's own kinds included ([`failure_kind`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use store::azure::{Azure, AzureOptions};
use store::cloud::{Cloud, CloudStore, RequestOptions};
use store::gcs::{Gcs, GcsOptions};
use store::local::LocalStore;
use store::s3::{BucketLookup, S3Options, S3};
use store::{FailureKind, Store, StoreError};

/// Where backups are kept, and how to reach them.
#[derive(Debug, Clone, ClapArgs)]
pub struct StorageArgs {
    /// `file:///PATH` (a local directory laid out like a bucket), `s3://BUCKET[/PREFIX]` (any S3-compatible
    /// service), `gs://BUCKET[/PREFIX]` (Google Cloud Storage) or `az://CONTAINER[/PREFIX]` (Azure Blob Storage).
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

    /// Google: a service-account key file (JSON; default: `GOOGLE_SERVICE_ACCOUNT`, else
    /// `GOOGLE_APPLICATION_CREDENTIALS`, else the instance's metadata server).
    #[arg(long, value_name = "FILE")]
    pub google_service_account: Option<PathBuf>,

    /// Google: the service's URL (default: `https://storage.googleapis.com`, or the key file's `gcs_base_url`).
    #[arg(long, value_name = "URL")]
    pub google_endpoint: Option<String>,

    /// Google: the bucket, when `--storage gs://` names none.
    #[arg(long, value_name = "BUCKET")]
    pub google_bucket: Option<String>,

    /// Google: the project a missing bucket is created in (default: `GOOGLE_CLOUD_PROJECT`, else the key file's
    /// `project_id`).
    #[arg(long, value_name = "ID")]
    pub google_project: Option<String>,

    /// Azure: the storage account (default: `AZURE_STORAGE_ACCOUNT_NAME`).
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT", value_name = "NAME")]
    pub azure_storage_account: Option<String>,

    /// Azure: the container, when `--storage az://` names none.
    #[arg(long, env = "AZURE_CONTAINER_NAME", value_name = "NAME")]
    pub azure_container_name: Option<String>,

    /// Azure: the account's access key (default: `AZURE_STORAGE_ACCOUNT_KEY`; without one, a SAS token, a client
    /// secret or a managed identity from the standard `AZURE_*` variables).
    #[arg(long, env = "AZURE_ACCESS_KEY", hide_env_values = true, value_name = "KEY")]
    pub azure_access_key: Option<String>,

    /// Azure: the account's blob URL (default: `https://ACCOUNT.blob.core.windows.net`).
    #[arg(long, env = "AZURE_ENDPOINT", value_name = "URL")]
    pub azure_endpoint: Option<String>,

    /// Azure: an emulator (Azurite) — its well-known account, key and endpoint (127.0.0.1:10000) for whatever
    /// is not given.
    #[arg(long)]
    pub azure_development_storage: bool,

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

    /// The storage class of every object stored: S3 `STANDARD_IA`, `INTELLIGENT_TIERING`, `GLACIER_IR`, …;
    /// Google `NEARLINE`, `COLDLINE`, …; Azure access tier `Cool`, `Cold`, … (default: the bucket's).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,

    /// S3 server-side encryption of every object stored: `AES256`, `aws:kms` or `aws:kms:dsse` (default: the
    /// bucket's).
    #[arg(long, value_name = "MODE", value_parser = ["AES256", "aws:kms", "aws:kms:dsse"])]
    pub s3_sse: Option<String>,

    /// S3: the KMS key for `--s3-sse aws:kms` (an id, ARN or alias; default: the account's AWS-managed key).
    #[arg(long, value_name = "KEY", requires = "s3_sse")]
    pub s3_sse_kms_key_id: Option<String>,

    /// Hold every byte sent to or taken from the store, all requests of the run together, to RATE a second
    /// (suffixes K, M, G: `200M`).
    #[arg(long, value_name = "RATE")]
    pub limit_rate: Option<String>,
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
    /// Opens the store the arguments name, held to `--limit-rate` when it is given.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        let store = self.open_unlimited()?;
        match &self.limit_rate {
            None => Ok(store),
            Some(rate) => {
                let rate = runtime::size::size_arg(rate, "--limit-rate")?;
                Ok(Box::new(store::rate::RateLimited::new(store, rate)?))
            }
        }
    }

    fn open_unlimited(&self) -> Result<Box<dyn Store>> {
        if let Some(class) = &self.storage_class {
            // The index, the claim and the manifest must be readable at once: an archive class makes every get
            // (and list) wait for a restore.
            let archive = ["GLACIER", "DEEP_ARCHIVE", "ARCHIVE"];
            if archive.contains(&class.to_ascii_uppercase().as_str()) {
                bail!(
                    "--storage-class {class}: objects in an archive class cannot be read without a restore first; \
                     use an instant-access class (S3 GLACIER_IR, STANDARD_IA; Google COLDLINE; Azure Cold), or a \
                     lifecycle rule on the bucket"
                );
            }
        }
        if self.s3_sse_kms_key_id.is_some() && !self.s3_sse.as_deref().is_some_and(|sse| sse.starts_with("aws:kms")) {
            bail!("--s3-sse-kms-key-id goes with --s3-sse aws:kms or aws:kms:dsse");
        }
        if self.s3_sse.is_some() && !self.storage.starts_with("s3://") {
            bail!("--s3-sse is for s3:// stores (Google and Azure encrypt every object at rest by themselves)");
        }
        if let Some(path) = self.storage.strip_prefix("file://") {
            if self.storage_class.is_some() {
                bail!("--storage-class is for the clouds (s3://, gs://, az://), not for a file:// store");
            }
            if !path.starts_with('/') {
                bail!("--storage {}: a file:// URL needs an absolute path (file:///var/backups)", self.storage);
            }
            return Ok(Box::new(LocalStore::new(PathBuf::from(path))));
        }
        let requests = RequestOptions {
            max_retries: self.max_retries,
            max_backoff: Duration::from_millis(self.max_backoff),
            request_timeout: Duration::from_secs(self.timeout.max(1)),
            storage_class: self.storage_class.clone(),
        };
        if let Some(rest) = self.storage.strip_prefix("s3://") {
            let (bucket, prefix) = self.container(rest, &self.s3_bucket, "--s3-bucket")?;
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
                sse: self.s3_sse.clone(),
                sse_kms_key_id: self.s3_sse_kms_key_id.clone(),
            };
            return self.cloud(Ok(S3::new(bucket, &options, &requests)), prefix);
        }
        if let Some(rest) = self.storage.strip_prefix("gs://") {
            let (bucket, prefix) = self.container(rest, &self.google_bucket, "--google-bucket")?;
            let options = GcsOptions {
                service_account: self.google_service_account.clone(),
                endpoint: self.google_endpoint.clone(),
                project: self.google_project.clone(),
            };
            return self.cloud(Gcs::new(bucket, &options, &requests), prefix);
        }
        if let Some(rest) = self.storage.strip_prefix("az://") {
            let (container, prefix) = self.container(rest, &self.azure_container_name, "--azure-container-name")?;
            let options = AzureOptions {
                account: self.azure_storage_account.clone(),
                access_key: self.azure_access_key.clone(),
                endpoint: self.azure_endpoint.clone(),
                development_storage: self.azure_development_storage,
            };
            return self.cloud(Azure::new(container, &options, &requests), prefix);
        }
        bail!(
            "--storage {}: use file:///PATH, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX]",
            self.storage
        )
    }

    /// The bucket and prefix of `rest` (what follows `s3://`), the bucket from `flag`'s value when `rest` names
    /// none.
    fn container<'a>(&self, rest: &'a str, flag_value: &'a Option<String>, flag: &str) -> Result<(&'a str, &'a str)> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        match (bucket, flag_value) {
            ("", Some(bucket)) => Ok((bucket.as_str(), prefix)),
            ("", None) => {
                let scheme = self.storage.split("://").next().unwrap_or_default();
                bail!("--storage {scheme}:// names no bucket: use {scheme}://BUCKET[/PREFIX] or {flag}")
            }
            (bucket, _) => Ok((bucket, prefix)),
        }
    }

    /// The store of a cloud, or why it cannot be used.
    fn cloud<C: Cloud>(&self, cloud: anyhow::Result<C>, prefix: &str) -> Result<Box<dyn Store>> {
        let store = cloud
            .and_then(|cloud| CloudStore::new(cloud, prefix))
            .with_context(|| format!("cannot use --storage {}", self.storage))?;
        Ok(Box::new(store))
    }
}

/// The kind of the store failure that caused `error`, if one did: the first [`StoreError::Failed`] in its chain,
/// or one carried through an I/O error as a [`FlatError`] (a download read as a stream).
pub fn store_failure_kind(error: &anyhow::Error) -> Option<FailureKind> {
    error.chain().find_map(|cause| {
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return store.kind();
        }
        if let Some(flat) = cause.downcast_ref::<FlatError>() {
            return flat.kind;
        }
        // An I/O error, bare or as a stream reader reports it (which shows its text rather than chain it).
        let io = match cause.downcast_ref::<proto::ReadError>() {
            Some(proto::ReadError::Io { cause, .. }) => Some(cause),
            _ => cause.downcast_ref::<std::io::Error>(),
        };
        io.and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref::<FlatError>()).and_then(|flat| flat.kind)
    })
}

/// The kind of the failure `error` describes, for the last line of a failed run: stopped (a signal, a cancel)
/// first; then the kind of the store failure that caused it, if one did (a service that stayed unavailable may
/// answer a later run; a refusal will not change); otherwise what [`runtime::failure::kind_of`] finds.
pub fn failure_kind(error: &anyhow::Error) -> runtime::failure::FailureKind {
    use runtime::failure::{kind_of, FailureKind as Kind};
    match kind_of(error, transport::failure_kind) {
        Kind::Cancelled => Kind::Cancelled,
        other => match store_failure_kind(error) {
            Some(FailureKind::Retryable) => Kind::Retryable,
            Some(FailureKind::Permanent) => Kind::Permanent,
            None => other,
        },
    }
}

/// An error chain flattened into one message (`{:#}`), for where it must travel as an [`std::io::Error`] (a
/// download read through `Read`), which still says what kind of store failure caused it, if one did.
#[derive(Debug)]
pub struct FlatError {
    message: String,
    kind: Option<FailureKind>,
}

impl FlatError {
    /// `error` flattened, its store failure's kind kept.
    pub fn new(error: &anyhow::Error) -> FlatError {
        FlatError { message: format!("{error:#}"), kind: store_failure_kind(error) }
    }
}

impl std::fmt::Display for FlatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FlatError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: FailureKind) -> StoreError {
        StoreError::Failed {
            store: "memory://".into(),
            op: "get",
            key: "N/index.json".into(),
            message: "503 Service Unavailable".into(),
            kind,
            cause: None,
        }
    }

    /// A store failure's kind is found wherever it is in the chain, even carried through an I/O error as a stream
    /// reader reports it; a signal outranks it; other errors are classified by their causes.
    #[test]
    fn a_failure_is_classified_by_the_store_failure_behind_it() {
        use runtime::failure::FailureKind as Kind;
        let error = anyhow::Error::from(failed(FailureKind::Retryable)).context("the get of N failed");
        assert_eq!(failure_kind(&error), Kind::Retryable);

        let error = anyhow::Error::from(failed(FailureKind::Permanent));
        let flat = std::io::Error::other(FlatError::new(&error.context("pack 3")));
        assert_eq!(flat.to_string(), "pack 3: memory://: get N/index.json: 503 Service Unavailable");
        let read = anyhow::Error::from(proto::ReadError::Io { stream_offset: 0, cause: flat }).context("stream 0");
        assert_eq!(failure_kind(&read), Kind::Permanent);

        let not_found = StoreError::NotFound { store: "memory://".into(), key: "N/index.json".into() };
        assert_eq!(failure_kind(&not_found.into()), Kind::Permanent);
        // As a put reports a stop that came once its index was stored.
        let stopped = anyhow::Error::new(runtime::signals::Stopped(nix::sys::signal::Signal::SIGINT))
            .context("the backup is complete, but the put was stopped as it ended");
        assert_eq!(failure_kind(&stopped), Kind::Cancelled);
        let timeout = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut)).context("STDIN");
        assert_eq!(failure_kind(&timeout), Kind::Retryable);
    }
}
