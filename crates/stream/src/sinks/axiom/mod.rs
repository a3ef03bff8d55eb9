//! Axiom ingest.
//!
//! - Request: `POST <url>` (e.g.
//!   `https://api.axiom.co/v1/datasets/<dataset>/ingest`);
//!   `Authorization: Bearer <token>` (an API token that may ingest into
//!   the dataset); `Content-Type: application/x-ndjson`;
//!   `Content-Encoding: gzip` or `zstd` when compressed.
//! - Body: NDJSON, one line per entry, the entry's JSON object with
//!   `"_time"` set to its receive time in RFC 3339 (an entry that is not
//!   a JSON object becomes `{"message": ...}`), each line ending in `\n`;
//!   at most [`MAX_ITEMS`] events (Axiom: 10,000 per batch) and
//!   [`MAX_BODY`] bytes.
//! - Answer: a 200 with `{"ingested":n,"failed":m,"failures":[{"error":
//!   ...}]}`; `failed` > 0 fails the delivery naming the first failure
//!   (Axiom does not say which events failed, so the server sends the
//!   whole batch again later: at least once). 401/403 (bad token), 4xx
//!   fail the delivery with the status; 429 (with `Retry-After`) and 5xx
//!   are retried later by the server.

use super::http::{Framing, Http, HttpDestination, ItemFailure};
use super::{Delivery, Entry, SinkError, json};
use serde::Deserialize;

/// Largest body.
pub const MAX_BODY: usize = 10 << 20;
/// Most events in one body (Axiom: 10,000 per batch).
pub const MAX_ITEMS: usize = 10_000;

/// An Axiom dataset's ingest endpoint.
pub struct Axiom {
    http: Http,
    auth: String,
}

/// Axiom's ingest status (the fields read).
#[derive(Deserialize)]
struct Status {
    ingested: u64,
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    failures: Vec<Failure>,
}

/// One failure.
#[derive(Deserialize)]
struct Failure {
    #[serde(default)]
    error: String,
}

impl Axiom {
    /// An endpoint with its API token.
    pub fn new(http: Http, token: &str) -> Self {
        Self {
            http,
            auth: format!("Bearer {token}"),
        }
    }

    /// Delivers entries in bodies of at most [`MAX_ITEMS`] events and
    /// [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        super::http::deliver(&self.http, self, entries).await
    }
}

/// Reads an ingest status: Ok when no event failed.
fn check_status(answer: &[u8], sent: usize) -> Result<(), String> {
    let s: Status = serde_json::from_slice(answer).map_err(|_| {
        "its answer is not Axiom's ingest status (is the url .../v1/datasets/<dataset>/ingest?)"
            .to_owned()
    })?;
    if s.failed > 0 {
        let first = s
            .failures
            .first()
            .map(|f| f.error.as_str())
            .filter(|e| !e.is_empty())
            .unwrap_or("no reason given");
        return Err(format!(
            "{} of {sent} events failed (ingested {}): {first}",
            s.failed, s.ingested
        ));
    }
    Ok(())
}

impl HttpDestination for Axiom {
    const MAX_BODY: usize = MAX_BODY;
    const MAX_ITEMS: usize = MAX_ITEMS;
    const NAME: &'static str = "Axiom";

    /// The entry with `_time`.
    fn encode(&self, entry: &Entry) -> Vec<u8> {
        json::object_with(entry, "_time", json::rfc3339(entry))
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

    fn check(&self, answer: &[u8], items: usize) -> Result<Vec<ItemFailure>, String> {
        check_status(answer, items).map(|()| Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::check_status;

    #[test]
    fn failed_events_fail_the_body_with_the_first_reason() {
        assert!(
            check_status(
                br#"{"ingested":2,"failed":0,"failures":[],"processedBytes":16}"#,
                2
            )
            .is_ok()
        );
        let e = check_status(
            br#"{"ingested":1,"failed":1,"failures":[{"timestamp":"2024-01-01T00:00:00Z","error":"field limit reached"}]}"#,
            2,
        )
        .expect_err("a failure");
        assert_eq!(e, "1 of 2 events failed (ingested 1): field limit reached");
        assert!(check_status(b"{}", 1).is_err());
    }
}
