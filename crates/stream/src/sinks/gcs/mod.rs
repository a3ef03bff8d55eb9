//! Google Cloud Storage (`destinationType` `gcs`): one object per upload
//! period in `gcsBucket` under `gcsKeyPrefix` (see [`super::object`] for
//! the key layout and body), authenticated with the service-account key
//! JSON given in `gcsCredentials`.

use super::object::Objects;
use crate::config::{ConfigError, EndpointConfig, LogType};
use std::sync::Arc;

/// Builds the bucket client of a configuration (checked by `validate`).
pub fn objects(config: &EndpointConfig, log_type: LogType) -> Result<Objects, ConfigError> {
    let store = object_store::gcp::GoogleCloudStorageBuilder::new()
        .with_bucket_name(&config.gcs_bucket)
        .with_service_account_key(config.gcs_credentials.as_deref().unwrap_or_default())
        .with_client_options(
            object_store::ClientOptions::new().with_timeout(std::time::Duration::from_secs(120)),
        )
        .build()
        .map_err(|e| ConfigError(format!("gcs: {e}")))?;
    Ok(Objects::new(
        Arc::new(store),
        format!("gs://{}", config.gcs_bucket),
        &config.gcs_key_prefix,
        log_type,
        config.compression_format,
    ))
}

/// Checks the GCS fields: a bucket and a service-account key.
pub fn validate(config: &EndpointConfig) -> Result<(), ConfigError> {
    if config.gcs_bucket.is_empty() {
        return Err(ConfigError("gcs needs gcsBucket".into()));
    }
    let creds = config.gcs_credentials.as_deref().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(creds).map_err(|_| {
        ConfigError("gcs needs gcsCredentials: a service-account key (JSON)".into())
    })?;
    if v.get("private_key").is_none() || v.get("client_email").is_none() {
        return Err(ConfigError(
            "gcsCredentials is not a service-account key (no private_key or client_email)".into(),
        ));
    }
    Ok(())
}
