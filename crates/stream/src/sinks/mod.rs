//! One sink per destination, the way Vector lays out its sinks: each
//! module builds the bodies and requests its destination documents; the
//! HTTP sending, compression and answer classification are shared
//! ([`http`]).

pub mod compress;
pub mod gcs;
pub mod http;
pub mod object;
pub mod s3;
pub mod splunk;
pub mod syslog;
pub mod webhook;

use crate::config::{DestinationType, EndpointConfig, LogType};
use std::time::Duration;

/// One stored entry to deliver.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Store position.
    pub position: u64,
    /// Receive time, Unix ns.
    pub time: i64,
    /// The entry as stored (JSON).
    pub body: Vec<u8>,
}

/// What one delivered batch cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Requests made.
    pub requests: u64,
    /// Bytes sent (bodies as sent, compressed).
    pub bytes: u64,
    /// Largest body.
    pub max_body: u64,
}

/// A delivery that did not go through: what the destination said, and
/// when it asked to be tried again (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What failed, for `lastError`.
    pub message: String,
    /// The destination's `Retry-After`, if it gave one.
    pub retry_after: Option<Duration>,
    /// Requests that succeeded before this one (their entries may arrive
    /// twice when the batch is retried).
    pub delivered: Delivery,
}

/// A configured destination.
pub enum Sink {
    /// Splunk HEC (and Cribl's HEC-compatible source).
    Splunk(splunk::Splunk),
    /// Signed JSON webhook.
    Webhook(webhook::Webhook),
    /// RFC 5424 syslog over TLS.
    Syslog(syslog::Syslog),
    /// An object store (S3, S3-compatible, GCS): one object per upload.
    Objects(object::Objects),
}

/// `client`, or one trusting only `ca_pem` when given (a destination
/// with a private CA).
fn client_for(
    client: reqwest::Client,
    ca_pem: &str,
) -> Result<reqwest::Client, crate::ConfigError> {
    if ca_pem.trim().is_empty() {
        return Ok(client);
    }
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
        .map_err(|e| crate::ConfigError(format!("caCertificate is not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(crate::ConfigError(
            "caCertificate holds no PEM certificate".into(),
        ));
    }
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
        .tls_certs_only(certs)
        .build()
        .map_err(|e| crate::ConfigError(format!("caCertificate: {e}")))
}

impl Sink {
    /// The sink for a validated configuration (with its secrets) and log type.
    pub fn new(
        config: &EndpointConfig,
        log_type: LogType,
        client: reqwest::Client,
    ) -> Result<Self, crate::ConfigError> {
        let (url, plain) = config.validate()?;
        let token = config.token.clone().unwrap_or_default();
        if config.destination_type == DestinationType::Syslog {
            return Ok(Sink::Syslog(syslog::Syslog::new(
                &url,
                &config.ca_certificate,
                log_type,
            )?));
        }
        match config.destination_type {
            DestinationType::S3 => return Ok(Sink::Objects(s3::objects(config, log_type, plain)?)),
            DestinationType::Gcs => return Ok(Sink::Objects(gcs::objects(config, log_type)?)),
            _ => {}
        }
        let client = client_for(client, &config.ca_certificate)?;
        let http = http::Http::new(client, url, config.compression_format);
        Ok(match config.destination_type {
            DestinationType::Splunk | DestinationType::Cribl => {
                Sink::Splunk(splunk::Splunk::new(http, token, log_type))
            }
            DestinationType::Webhook => Sink::Webhook(webhook::Webhook::new(http, token, log_type)),
            other => {
                return Err(crate::ConfigError(format!(
                    "destinationType {} is not delivered by this version of Tally yet",
                    other.name()
                )));
            }
        })
    }

    /// Delivers `entries` in order, in as many requests as the body limit
    /// needs; Ok only when the destination confirmed every one.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        match self {
            Sink::Splunk(s) => s.deliver(entries).await,
            Sink::Webhook(w) => w.deliver(entries).await,
            Sink::Syslog(s) => s.deliver(entries).await,
            Sink::Objects(o) => o.deliver(entries).await,
        }
    }
}

/// Splits `items` (encoded entries) into bodies of at most `max` bytes
/// (an item larger than `max` goes alone); returns index ranges.
pub fn chunks(items: &[Vec<u8>], max: usize, overhead: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let add = it.len() + overhead;
        if i > start && size + add > max {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += add;
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_stay_under_the_limit() {
        let items: Vec<Vec<u8>> = (0..10).map(|i| vec![b'x'; 30 + i]).collect();
        let c = super::chunks(&items, 100, 1);
        assert_eq!(c.iter().map(|r| r.len()).sum::<usize>(), 10);
        for r in &c {
            let size: usize = items[r.clone()].iter().map(|i| i.len() + 1).sum();
            assert!(size <= 100 || r.len() == 1, "{r:?}");
        }
        assert_eq!(super::chunks(&[vec![0; 500]], 100, 0), vec![0..1]);
    }
}
