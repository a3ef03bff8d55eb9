//! Tally's signed webhook: each request is a JSON object
//! `{"logType": ..., "entries": [...]}` (`Content-Type: application/json`,
//! at most [`MAX_BODY`] bytes); headers `Tally-Timestamp` (Unix seconds)
//! and `Tally-Signature: v1=<hex HMAC-SHA256(key, timestamp + "." +
//! body)>` (over the body before compression) let the receiver check who
//! sent it and when (reject old timestamps to stop replays). Any 2xx
//! confirms the batch.

use super::http::{Framing, Http, HttpDestination, ItemFailure};
use super::{Delivery, Entry, SinkError};
use crate::config::LogType;

/// Largest body.
pub const MAX_BODY: usize = 4 << 20;

/// A webhook endpoint.
pub struct Webhook {
    http: Http,
    key: ring::hmac::Key,
    /// `{"logType":"<type>","entries":[`.
    prefix: Vec<u8>,
}

/// The signature header's value for `body` at `timestamp`.
pub fn signature(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        timestamp,
        body,
    )
}

fn sign(key: &ring::hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

impl Webhook {
    /// An endpoint signing with `key`, for one log type.
    pub fn new(http: Http, key: String, log_type: LogType) -> Self {
        Self {
            http,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()),
            prefix: format!("{{\"logType\":\"{}\",\"entries\":[", log_type.name()).into_bytes(),
        }
    }

    /// Delivers entries in bodies of at most [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        super::http::deliver(&self.http, self, entries).await
    }
}

impl HttpDestination for Webhook {
    const MAX_BODY: usize = MAX_BODY;
    const NAME: &'static str = "the webhook";

    /// The entry as stored.
    fn encode(&self, entry: &Entry) -> Vec<u8> {
        entry.body.clone()
    }

    fn framing(&self) -> Framing<'_> {
        Framing {
            prefix: &self.prefix,
            separator: b",",
            suffix: b"]}",
        }
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        vec![
            ("tally-timestamp", ts.to_string()),
            ("tally-signature", sign(&self.key, ts, body)),
        ]
    }

    fn check(&self, _answer: &[u8], _items: usize) -> Result<Vec<ItemFailure>, String> {
        Ok(Vec::new())
    }
}
