//! One sink per destination, the way Vector lays out its sinks: one
//! folder per destination, whose module doc states the wire protocol it
//! implements, with its encoder (how an entry becomes an item of a body)
//! and how it reads its destination's answer. The delivery loop (encode,
//! split into bodies under the destination's limits, post each, retry
//! refused items, count the [`Delivery`]), compression and the
//! classification of answers are shared ([`http`]).

pub mod axiom;
pub mod compress;
pub mod datadog;
pub mod elastic;
pub mod gcs;
pub mod http;
mod json;
pub mod object;
pub mod panther;
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
    /// Elasticsearch `_bulk` into a data stream.
    Elastic(elastic::Elastic),
    /// Datadog logs intake.
    Datadog(datadog::Datadog),
    /// Panther HTTP source.
    Panther(panther::Panther),
    /// Axiom ingest.
    Axiom(axiom::Axiom),
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
    /// The sink for a configuration (with its secrets) and log type, once
    /// [`EndpointConfig::validate`] accepts it: `splunk` and `cribl` a
    /// [`splunk::Splunk`] (token), `elastic` an [`elastic::Elastic`]
    /// (`user` and token), `datadog` a [`datadog::Datadog`] (token as the
    /// API key), `panther` a [`panther::Panther`] and `axiom` an
    /// [`axiom::Axiom`] (token as bearer token), `webhook` a
    /// [`webhook::Webhook`] (token as signing key); each posting to `url`
    /// with `client`, compressed as `compressionFormat` says.
    pub fn new(
        config: &EndpointConfig,
        log_type: LogType,
        client: reqwest::Client,
    ) -> Result<Self, crate::ConfigError> {
        let (url, plain) = config.validate()?;
        let token = config.token.clone().unwrap_or_default();
        let http = |url| -> Result<http::Http, crate::ConfigError> {
            let client = client_for(client, &config.ca_certificate)?;
            Ok(http::Http::new(client, url, config.compression_format))
        };
        Ok(match config.destination_type {
            DestinationType::Syslog => {
                Sink::Syslog(syslog::Syslog::new(&url, &config.ca_certificate, log_type)?)
            }
            DestinationType::S3 => Sink::Objects(s3::objects(config, log_type, plain)?),
            DestinationType::Gcs => Sink::Objects(gcs::objects(config, log_type)?),
            DestinationType::Splunk | DestinationType::Cribl => {
                Sink::Splunk(splunk::Splunk::new(http(url)?, token, log_type))
            }
            DestinationType::Elastic => {
                Sink::Elastic(elastic::Elastic::new(http(url)?, &config.user, &token))
            }
            DestinationType::Datadog => {
                Sink::Datadog(datadog::Datadog::new(http(url)?, token, log_type))
            }
            DestinationType::Panther => Sink::Panther(panther::Panther::new(http(url)?, &token)),
            DestinationType::Axiom => Sink::Axiom(axiom::Axiom::new(http(url)?, &token)),
            DestinationType::Webhook => {
                Sink::Webhook(webhook::Webhook::new(http(url)?, token, log_type))
            }
        })
    }

    /// Delivers `entries` in order, in as many requests as the
    /// destination's limits need (entries it refused as overloaded are
    /// sent again alone, after the others); Ok only when the destination
    /// confirmed every one.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        match self {
            Sink::Splunk(s) => s.deliver(entries).await,
            Sink::Elastic(s) => s.deliver(entries).await,
            Sink::Datadog(s) => s.deliver(entries).await,
            Sink::Panther(s) => s.deliver(entries).await,
            Sink::Axiom(s) => s.deliver(entries).await,
            Sink::Webhook(s) => s.deliver(entries).await,
            Sink::Syslog(s) => s.deliver(entries).await,
            Sink::Objects(o) => o.deliver(entries).await,
        }
    }
}

/// Splits `items` (encoded entries) into bodies of at most `max` bytes and
/// `max_items` items, counting `overhead` bytes per item (an item larger
/// than `max` goes alone); returns index ranges.
pub fn chunks(
    items: &[Vec<u8>],
    max: usize,
    max_items: usize,
    overhead: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let add = it.len() + overhead;
        if i > start && (size + add > max || i - start >= max_items) {
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
        let c = super::chunks(&items, 100, usize::MAX, 1);
        assert_eq!(c.iter().map(|r| r.len()).sum::<usize>(), 10);
        for r in &c {
            let size: usize = items[r.clone()].iter().map(|i| i.len() + 1).sum();
            assert!(size <= 100 || r.len() == 1, "{r:?}");
        }
        assert_eq!(super::chunks(&[vec![0; 500]], 100, 9, 0), vec![0..1]);
        let small: Vec<Vec<u8>> = (0..7).map(|_| vec![0; 1]).collect();
        assert_eq!(super::chunks(&small, 1000, 3, 0), vec![0..3, 3..6, 6..7]);
    }
}
