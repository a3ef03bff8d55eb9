//! Tally's signed webhook: each request is a JSON object
//! `{"logType": ..., "entries": [...]}`; headers `Tally-Timestamp` (Unix
//! seconds) and `Tally-Signature: v1=<hex HMAC-SHA256(key, timestamp + "." +
//! body)>` let the receiver check who sent it and when (reject old
//! timestamps to stop replays). Any 2xx confirms the batch.

use super::http::Http;
use super::{Delivery, Entry, SinkError, chunks};
use crate::config::LogType;

/// Largest body.
pub const MAX_BODY: usize = 4 << 20;

/// A webhook endpoint.
pub struct Webhook {
    http: Http,
    key: ring::hmac::Key,
    log_type: LogType,
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
            log_type,
        }
    }

    /// Delivers entries in bodies of at most [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        let items: Vec<Vec<u8>> = entries.iter().map(|e| e.body.clone()).collect();
        let mut done = Delivery::default();
        for r in chunks(&items, MAX_BODY, 1) {
            let mut body =
                format!("{{\"logType\":\"{}\",\"entries\":[", self.log_type.name()).into_bytes();
            for (i, it) in items[r].iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(it);
            }
            body.extend_from_slice(b"]}");
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sig = sign(&self.key, ts, &body);
            let sent = self
                .http
                .post(
                    body,
                    "application/json",
                    &[
                        ("tally-timestamp", ts.to_string()),
                        ("tally-signature", sig),
                    ],
                    |_| Ok(()),
                    done,
                )
                .await?;
            done.requests += 1;
            done.bytes += sent;
            done.max_body = done.max_body.max(sent);
        }
        Ok(done)
    }
}
