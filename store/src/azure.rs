//! `az://container/prefix`: Azure Blob Storage through the `object_store` crate, which signs (Shared Key with an
//! access key, or OAuth, SAS, managed identity) and speaks the REST API. The one thing it lacks is creating a
//! container: a single `PUT /container?restype=container`, signed by `object_store`'s own authorizer.

use object_store::azure::{AzureAuthorizer, AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};

use object_store::ObjectStore;

use crate::cloud::{error_message, refused, send_retrying, Cloud, CloudError, CloudStore, RequestOptions};

/// The account of Azure's storage emulators (Azurite), published by Microsoft.
pub const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";

/// The access key of [`DEVELOPMENT_ACCOUNT`], published by Microsoft (not a secret).
pub const DEVELOPMENT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's default blob endpoint, with the account (emulators address it by path).
pub const DEVELOPMENT_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Everything needed to reach a container. What is not given here comes from the standard variables
/// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_TOKEN`, `AZURE_CLIENT_ID`, …),
/// then from a managed identity, as Azure's tools do.
#[derive(Debug, Clone, Default)]
pub struct AzureOptions {
    /// The storage account.
    pub account: Option<String>,
    /// The account's access key (Shared Key authorization).
    pub access_key: Option<String>,
    /// The account's blob URL (`https://ACCOUNT.blob.core.windows.net` by default; an emulator's is
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: Option<String>,
    /// Use the emulator's well-known account, key and endpoint for whatever is not given.
    pub development_storage: bool,
}

/// An Azure Blob Storage container, as a [`CloudStore`].
pub type AzureStore = CloudStore<Azure>;

/// How to reach one Azure container.
pub struct Azure {
    builder: MicrosoftAzureBuilder,
    container: String,
    account: String,
    endpoint: String,
    requests: RequestOptions,
}

impl Azure {
    /// The container `container`, reached as `options` and `requests` say. No account is an error.
    pub fn new(container: &str, options: &AzureOptions, requests: &RequestOptions) -> anyhow::Result<Azure> {
        let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(container);
        let development = |value: &str| options.development_storage.then(|| value.to_string());
        if let Some(account) = options.account.clone().or_else(|| development(DEVELOPMENT_ACCOUNT)) {
            builder = builder.with_account(account);
        }
        if let Some(key) = options.access_key.clone().or_else(|| development(DEVELOPMENT_KEY)) {
            builder = builder.with_access_key(key);
        }
        let Some(account) = builder.get_config_value(&AzureConfigKey::AccountName) else {
            anyhow::bail!("no Azure storage account: give --azure-storage-account or AZURE_STORAGE_ACCOUNT_NAME");
        };
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| builder.get_config_value(&AzureConfigKey::Endpoint))
            .or_else(|| development(DEVELOPMENT_ENDPOINT))
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let plain_http = endpoint.starts_with("http://");
        let builder = builder
            .with_endpoint(endpoint.clone())
            .with_retry(requests.retry_config())
            .with_client_options(requests.client_options(plain_http));
        Ok(Azure { builder, container: container.to_string(), account, endpoint, requests: requests.clone() })
    }
}

impl Cloud for Azure {
    type Client = MicrosoftAzure;
    const SCHEME: &'static str = "az";
    const CONTAINER: &'static str = "container";

    fn container(&self) -> &str {
        &self.container
    }

    fn connect(&self) -> anyhow::Result<MicrosoftAzure> {
        Ok(self.builder.clone().build()?)
    }

    fn objects<'a>(&self, client: &'a MicrosoftAzure) -> &'a dyn ObjectStore {
        client
    }

    fn requests(&self) -> &RequestOptions {
        &self.requests
    }

    fn is_missing_container(&self, error: &object_store::Error) -> bool {
        matches!(error, object_store::Error::NotFound { .. }) || error_message(error).contains("ContainerNotFound")
    }

    /// `PUT /container?restype=container`, signed by `object_store`'s authorizer with the client's credential
    /// (afresh for each attempt: the signature covers the date), retried like its own requests.
    async fn create_container(&self, client: &MicrosoftAzure) -> Result<(), CloudError> {
        let url = format!("{}/{}?restype=container", self.endpoint, self.container);
        let http = reqwest::Client::new();
        let response = send_retrying(&self.requests, "create container", async || {
            let credential = client.credentials().get_credential().await?;
            let mut request = http::Request::builder()
                .method(http::Method::PUT)
                .uri(&url)
                .header("content-length", "0")
                .body(object_store::client::HttpRequestBody::from(bytes::Bytes::new()))
                .map_err(|e| CloudError::permanent(e.to_string()).caused_by(e))?;
            AzureAuthorizer::new(&credential, &self.account).try_authorize(&mut request)?;
            Ok(http.put(request.uri().to_string()).headers(request.headers().clone()))
        })
        .await?;
        if response.status().is_success() {
            return Ok(());
        }
        // 409 ContainerAlreadyExists: another put created it meanwhile.
        let refused = refused(response).await;
        if refused.message.contains("ContainerAlreadyExists") {
            Ok(())
        } else {
            Err(refused)
        }
    }
}
