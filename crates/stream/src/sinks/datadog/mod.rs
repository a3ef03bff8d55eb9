//! Datadog logs intake (v2).
//!
//! - Request: `POST <url>` (e.g.
//!   `https://http-intake.logs.datadoghq.com/api/v2/logs`, or the intake
//!   of another Datadog site); `DD-API-KEY: <token>`;
//!   `Content-Type: application/json`; `Content-Encoding: gzip` when
//!   compressed (the intake takes gzip and deflate, not zstd).
//! - Body: a JSON array of logs, one per entry:
//!   `{"ddsource":"tally","service":"tally","ddtags":"logtype:<log type>",
//!   "hostname":"tally","message":"<the entry's JSON, as a string>",
//!   "timestamp":<receive time, Unix ms>}` (Datadog parses a JSON
//!   message into attributes).
//! - Limits, as Datadog documents them: at most 5 MB uncompressed per
//!   payload ([`MAX_BODY`]) and 1000 logs per array ([`MAX_ITEMS`]). A
//!   single log over 1 MB is taken and truncated by Datadog; one over
//!   5 MB goes alone and draws a 413, shown as the stream's `lastError`.
//! - Answer: 202 (any 2xx) confirms the whole payload; 400 (bad payload),
//!   401 (no key), 403 (invalid key), 413 (too large) fail the delivery
//!   with the status; 408, 429 (with `Retry-After`) and 5xx are retried
//!   later by the server.

mod encoder;

use super::http::{Framing, Http, HttpDestination, ItemFailure};
use super::{Delivery, Entry, SinkError};
use crate::config::LogType;

/// Most bytes of one payload, uncompressed (Datadog: 5 MB).
pub const MAX_BODY: usize = 5_000_000;
/// Most logs in one array (Datadog: 1000).
pub const MAX_ITEMS: usize = 1000;

/// A Datadog logs intake.
pub struct Datadog {
    http: Http,
    api_key: String,
    ddtags: String,
}

impl Datadog {
    /// An intake with its API key, for one log type.
    pub fn new(http: Http, api_key: String, log_type: LogType) -> Self {
        Self {
            http,
            api_key,
            ddtags: format!("logtype:{}", log_type.name()),
        }
    }

    /// Delivers entries in arrays of at most [`MAX_ITEMS`] logs and
    /// [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        super::http::deliver(&self.http, self, entries).await
    }
}

impl HttpDestination for Datadog {
    const MAX_BODY: usize = MAX_BODY;
    const MAX_ITEMS: usize = MAX_ITEMS;
    const NAME: &'static str = "Datadog";

    fn encode(&self, entry: &Entry) -> Vec<u8> {
        encoder::log(entry, &self.ddtags)
    }

    fn framing(&self) -> Framing<'_> {
        Framing::JSON_ARRAY
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn headers(&self, _body: &[u8]) -> Vec<(&'static str, String)> {
        vec![("dd-api-key", self.api_key.clone())]
    }

    fn check(&self, _answer: &[u8], _items: usize) -> Result<Vec<ItemFailure>, String> {
        Ok(Vec::new())
    }
}
