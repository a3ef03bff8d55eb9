//! Splunk HTTP Event Collector (and Cribl's HEC-compatible source): the
//! URL ends in `/services/collector/event`; `Authorization: Splunk
//! <token>`; `Content-Type: application/json`; several JSON envelopes
//! (`time`, `host`, `source`, `sourcetype`, `event`) each followed by
//! `\n` in one body of at most [`MAX_BODY`] bytes; success is a 200 with
//! `{"text":"Success","code":0}`.

mod encoder;

use super::http::{Framing, Http, HttpDestination, ItemFailure};
use super::{Delivery, Entry, SinkError};
use crate::config::LogType;

/// HEC's default `max_content_length` is larger; bodies stay well under.
pub const MAX_BODY: usize = 1 << 20;

/// A HEC endpoint.
pub struct Splunk {
    http: Http,
    auth: String,
    log_type: LogType,
}

impl Splunk {
    /// An endpoint with its token, for one log type.
    pub fn new(http: Http, token: String, log_type: LogType) -> Self {
        Self {
            http,
            auth: format!("Splunk {token}"),
            log_type,
        }
    }

    /// Delivers entries in bodies of at most [`MAX_BODY`] bytes.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        super::http::deliver(&self.http, self, entries).await
    }
}

impl HttpDestination for Splunk {
    const MAX_BODY: usize = MAX_BODY;
    const NAME: &'static str = "Splunk HEC";

    fn encode(&self, entry: &Entry) -> Vec<u8> {
        encoder::envelope(entry, self.log_type)
    }

    fn framing(&self) -> Framing<'_> {
        Framing::NDJSON
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn headers(&self, _body: &[u8]) -> Vec<(&'static str, String)> {
        vec![("authorization", self.auth.clone())]
    }

    fn check(&self, answer: &[u8], _items: usize) -> Result<Vec<ItemFailure>, String> {
        encoder::check_answer(answer).map(|()| Vec::new())
    }
}
