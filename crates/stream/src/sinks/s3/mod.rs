//! Amazon S3 and S3-compatible storage (`destinationType` `s3`): one
//! object per upload period (see [`super::object`] for the key layout
//! and body). With `url` empty, AWS S3 in `s3Region`; with `url`, any
//! S3-compatible store at that endpoint with path-style requests (plain
//! `http://` only to a private address). Authentication: `accesskey`
//! (`s3AccessKeyId` + `s3SecretAccessKey`, signed with SigV4). `rolearn`
//! (assuming a role) is refused with a message: this version has no STS
//! client.

use super::object::Objects;
use crate::config::{ConfigError, EndpointConfig, LogType};
use std::sync::Arc;

/// Builds the bucket client of a configuration (checked by `validate`).
pub fn objects(
    config: &EndpointConfig,
    log_type: LogType,
    plain: bool,
) -> Result<Objects, ConfigError> {
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&config.s3_bucket)
        .with_region(if config.s3_region.is_empty() {
            "us-east-1"
        } else {
            config.s3_region.as_str()
        })
        .with_access_key_id(&config.s3_access_key_id)
        .with_secret_access_key(config.s3_secret_access_key.as_deref().unwrap_or_default());
    let mut options = object_store::ClientOptions::new()
        .with_timeout(std::time::Duration::from_secs(120))
        .with_allow_http(plain);
    if !config.ca_certificate.trim().is_empty() {
        for c in object_store::Certificate::from_pem_bundle(config.ca_certificate.as_bytes())
            .map_err(|e| ConfigError(format!("caCertificate is not a PEM certificate: {e}")))?
        {
            options = options.with_root_certificate(c);
        }
    }
    if !config.url.is_empty() {
        b = b
            .with_endpoint(config.url.trim_end_matches('/'))
            .with_virtual_hosted_style_request(false);
    }
    let store = b
        .with_client_options(options)
        .build()
        .map_err(|e| ConfigError(format!("s3: {e}")))?;
    Ok(Objects::new(
        Arc::new(store),
        format!("s3://{}", config.s3_bucket),
        &config.s3_key_prefix,
        log_type,
        config.compression_format,
    ))
}

/// Checks the S3 fields: a bucket, and access keys.
pub fn validate(config: &EndpointConfig) -> Result<(), ConfigError> {
    if config.s3_bucket.is_empty() {
        return Err(ConfigError("s3 needs s3Bucket".into()));
    }
    match config.s3_authentication_type.as_str() {
        "" | "accesskey" => {}
        "rolearn" => {
            return Err(ConfigError(
                "s3AuthenticationType rolearn is not supported by this version of Tally; use accesskey with s3AccessKeyId and s3SecretAccessKey".into(),
            ));
        }
        other => {
            return Err(ConfigError(format!(
                "s3AuthenticationType {other:?}: use accesskey"
            )));
        }
    }
    if config.s3_access_key_id.is_empty()
        || config
            .s3_secret_access_key
            .as_deref()
            .is_none_or(str::is_empty)
    {
        return Err(ConfigError(
            "s3 needs s3AccessKeyId and s3SecretAccessKey".into(),
        ));
    }
    Ok(())
}
