//! Panther HTTP source.
//!
//! - Request: `POST <url>` (the HTTP source's URL Panther gives);
//!   `Authorization: Bearer <token>` (the source's bearer-token
//!   authentication); `Content-Type: application/x-ndjson`;
//!   `Content-Encoding: gzip` or `zstd` when compressed.
//! - Body: NDJSON (Panther's "Lines" stream type), one line per entry,
//!   `{"time":<receive time, Unix seconds with milliseconds>,"event":<the
//!   entry's JSON>}`, each line ending in `\n`; at most [`MAX_BODY`]
//!   bytes (Panther takes payloads up to 1 MB, headers included).
//! - Answer: any 2xx confirms the body; 401/403 (bad token), 413 and other
//!   4xx fail the delivery with the status; 429 (with `Retry-After`) and
//!   5xx are retried later by the server.

use super::http::{Framing, Http, HttpDestination, ItemFailure};
use super::{Delivery, Entry, SinkError, json};
use serde::Serialize;

/// Largest body: under Panther's 1 MB, with room for the headers.
pub const MAX_BODY: usize = 960 * 1024;

/// A Panther HTTP source.
pub struct Panther {
    http: Http,
    auth: String,
}

/// One line.
#[derive(Serialize)]
struct Line {
    time: f64,
    event: Box<serde_json::value::RawValue>,
}

impl Panther {
    /// A source with its bearer token.
    pub fn new(http: Http, token: &str) -> Self {
        Self {
            http,
            auth: format!("Bearer {token}"),
        }
    }

    /// Delivers entries in bodies of at most [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        super::http::deliver(&self.http, self, entries).await
    }
}

impl HttpDestination for Panther {
    const MAX_BODY: usize = MAX_BODY;
    const NAME: &'static str = "Panther";

    /// `{"time": <seconds>, "event": <entry>}`.
    fn encode(&self, entry: &Entry) -> Vec<u8> {
        let line = Line {
            time: (entry.time as f64 / 1e6).round() / 1e3,
            event: json::raw(entry),
        };
        serde_json::to_vec(&line).unwrap_or_default()
    }

    fn framing(&self) -> Framing<'_> {
        Framing::NDJSON
    }

    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn headers(&self, _body: &[u8]) -> Vec<(&'static str, String)> {
        vec![("authorization", self.auth.clone())]
    }

    fn check(&self, _answer: &[u8], _items: usize) -> Result<Vec<ItemFailure>, String> {
        Ok(Vec::new())
    }
}
