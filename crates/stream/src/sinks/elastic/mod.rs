//! Elasticsearch `_bulk` into a data stream.
//!
//! - Request: `POST <url>`, the url given ending in `/<data-stream>/_bulk`
//!   (a query such as `?pretty` is kept; `filter_path` is refused when
//!   configured, as the per-item answers are needed);
//!   `Authorization: Basic base64(user ":" token)`;
//!   `Content-Type: application/x-ndjson`; `Content-Encoding: gzip` when
//!   compressed (Elasticsearch takes gzip, not zstd).
//! - Body: NDJSON, for each entry an action line
//!   `{"create":{"_id":"<store position>-<digest>"}}` (data streams take
//!   only `create`; an `_id` from the position and the item's SHA-256
//!   turns a batch sent again into 409s, not copies) then the source line, the entry's JSON
//!   object with `"@timestamp"` set to its receive time in RFC 3339 (an
//!   entry that is not a JSON object becomes `{"message": ...}`), and a
//!   final `\n`; at most [`MAX_BODY`] bytes.
//! - Answer: a 200 with `"errors": false` confirms every entry. With
//!   `"errors": true`, `items[i].create.status` (and `.error`) says what
//!   happened to the `i`th entry:
//!   - 2xx: indexed; 409 (version conflict: the document is already
//!     there): counted as delivered;
//!   - 429 or 5xx: sent again alone (a new request with only those
//!     entries, after a pause), up to three times within one delivery,
//!     then the delivery fails naming the item's reason;
//!   - any other 4xx (a mapping error, a 400): permanent for this entry;
//!     the delivery fails at once naming the reason. Not dropped: the
//!     server sends the batch again later (at least once) and shows the
//!     reason as the stream's `lastError`, until the operator fixes the
//!     mapping (or the data stream) or changes the stream.
//! - Other answers: 401 (no or wrong credentials), 413, 429 with
//!   `Retry-After`, 5xx fail the delivery with the status.

mod encoder;
mod response;

use super::http::{Framing, Http, HttpDestination, ItemFailure};
use super::{Delivery, Entry, SinkError};
use base64::Engine as _;

/// Largest body: Elasticsearch's `http.max_content_length` is 100 MB by
/// default; its guidance is bulk requests of a few to tens of MB.
pub const MAX_BODY: usize = 10 << 20;

/// An Elasticsearch data stream's `_bulk` endpoint.
pub struct Elastic {
    http: Http,
    auth: String,
}

impl Elastic {
    /// An endpoint at the url of `http`, with basic auth `user`:`token`.
    pub fn new(http: Http, user: &str, token: &str) -> Self {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
        Self {
            http,
            auth: format!("Basic {basic}"),
        }
    }

    /// Delivers entries in bodies of at most [`MAX_BODY`] bytes, retrying
    /// the entries Elasticsearch rejected as overloaded alone.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        super::http::deliver(&self.http, self, entries).await
    }
}

impl HttpDestination for Elastic {
    const MAX_BODY: usize = MAX_BODY;
    const NAME: &'static str = "Elasticsearch";

    /// The action line and the source line.
    fn encode(&self, entry: &Entry) -> Vec<u8> {
        encoder::action_and_source(entry)
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
        response::failures(answer, items)
    }
}
