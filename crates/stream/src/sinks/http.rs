//! What every HTTP destination shares: compression, sending, reading the
//! answer into success or a [`SinkError`] with `Retry-After`, and the one
//! delivery loop ([`deliver`]): encode each entry, split the items into
//! bodies under the destination's limits, post each body, retry the items
//! a destination refused one by one (when it says which), and count the
//! [`Delivery`].

use super::{Delivery, Entry, SinkError, chunks};
use crate::config::Compression;
use std::time::Duration;

/// An HTTP endpoint with its compression.
pub struct Http {
    client: reqwest::Client,
    url: reqwest::Url,
    compression: Compression,
}

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Time one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a body puts its items together: `prefix`, the items separated by
/// `separator`, then `suffix`. NDJSON is `("", "\n", "\n")`; a JSON array
/// is `("[", ",", "]")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing<'a> {
    /// Bytes before the first item.
    pub prefix: &'a [u8],
    /// Bytes between two items.
    pub separator: &'a [u8],
    /// Bytes after the last item.
    pub suffix: &'a [u8],
}

impl Framing<'static> {
    /// Newline-delimited: every item followed by `\n`.
    pub const NDJSON: Framing<'static> = Framing {
        prefix: b"",
        separator: b"\n",
        suffix: b"\n",
    };
    /// A JSON array of the items.
    pub const JSON_ARRAY: Framing<'static> = Framing {
        prefix: b"[",
        separator: b",",
        suffix: b"]",
    };
}

impl Framing<'_> {
    /// The body of `items`.
    pub fn frame<'i>(&self, items: impl IntoIterator<Item = &'i [u8]>) -> Vec<u8> {
        let mut body = self.prefix.to_vec();
        for (i, it) in items.into_iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(self.separator);
            }
            body.extend_from_slice(it);
        }
        body.extend_from_slice(self.suffix);
        body
    }
}

/// One item of a body that the destination did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// Index of the item in the body (0 is the body's first item).
    pub index: usize,
    /// The status the destination gave the item.
    pub status: u16,
    /// Why, as the destination said it.
    pub reason: String,
    /// Whether sending the item again may succeed (429, 5xx).
    pub retryable: bool,
}

/// What an HTTP destination documents: how an entry is encoded, how items
/// make a body and how large it may be, the headers, and how to read a
/// successful (2xx) answer. [`deliver`] does the rest.
pub trait HttpDestination {
    /// Most bytes in one body before compression (an item larger than
    /// this is sent alone).
    const MAX_BODY: usize;
    /// Most items in one body.
    const MAX_ITEMS: usize = usize::MAX;
    /// How many times, within one delivery, items the destination refused
    /// as retryable ([`ItemFailure::retryable`]) are sent again alone.
    const ITEM_RETRIES: u32 = 3;
    /// The destination's name, for messages.
    const NAME: &'static str;

    /// One entry as an item of a body.
    fn encode(&self, entry: &Entry) -> Vec<u8>;
    /// How items make a body.
    fn framing(&self) -> Framing<'_>;
    /// `Content-Type` of a body.
    fn content_type(&self) -> &'static str;
    /// Headers of the request carrying `body` (uncompressed), besides
    /// `Content-Type` and `Content-Encoding`.
    fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)>;
    /// Reads a 2xx answer to a body of `items` items: `Err` when the
    /// answer refuses the body (or is not the destination's), otherwise
    /// the items it did not take (empty: every item confirmed).
    fn check(&self, answer: &[u8], items: usize) -> Result<Vec<ItemFailure>, String>;
}

/// Pause before sending refused items again the `n`th time (1-based):
/// 250 ms, doubling.
fn item_backoff(n: u32) -> Duration {
    Duration::from_millis(250u64 << n.saturating_sub(1).min(6))
}

/// Delivers `entries` to `dest` at `http`, in order, in as many bodies as
/// its limits need; Ok only when the destination confirmed every entry.
///
/// Items the destination refused as retryable are sent again alone (a new
/// body of only those, so they arrive after the rest of their body), up
/// to [`HttpDestination::ITEM_RETRIES`] times; an item refused for good,
/// or still refused after the retries, makes the delivery fail with the
/// destination's reason (the caller sends the whole batch again later:
/// at least once).
pub async fn deliver<D: HttpDestination>(
    http: &Http,
    dest: &D,
    entries: &[Entry],
) -> Result<Delivery, SinkError> {
    let items: Vec<Vec<u8>> = entries.iter().map(|e| dest.encode(e)).collect();
    let framing = dest.framing();
    // Exact: prefix + items + (n - 1) separators + suffix <= MAX_BODY.
    let room = (D::MAX_BODY + framing.separator.len())
        .saturating_sub(framing.prefix.len() + framing.suffix.len());
    let mut done = Delivery::default();
    for range in chunks(&items, room, D::MAX_ITEMS, framing.separator.len()) {
        let mut pending: Vec<usize> = range.collect();
        let mut retries = 0;
        loop {
            let body = framing.frame(pending.iter().map(|&i| items[i].as_slice()));
            let headers = dest.headers(&body);
            let n = pending.len();
            let (sent, failures) = http
                .post(
                    body,
                    dest.content_type(),
                    &headers,
                    |answer| dest.check(answer, n),
                    done,
                )
                .await?;
            done.requests += 1;
            done.bytes += sent;
            done.max_body = done.max_body.max(sent);
            if failures.is_empty() {
                break;
            }
            let fail = |message: String| SinkError {
                message,
                retry_after: None,
                delivered: done,
            };
            if let Some(bad) = failures.iter().find(|f| f.index >= n) {
                return Err(fail(format!(
                    "{} answered about item {} of a body of {n}",
                    http.url, bad.index
                )));
            }
            let position = |f: &ItemFailure| entries[pending[f.index]].position;
            let describe = |f: &ItemFailure, what: &str| {
                let more = match failures.len() {
                    1 => String::new(),
                    k => format!(" (and {} more)", k - 1),
                };
                format!(
                    "{} {what} the entry at position {}{more}: {} {}",
                    D::NAME,
                    position(f),
                    f.status,
                    f.reason
                )
            };
            if let Some(f) = failures.iter().find(|f| !f.retryable) {
                return Err(fail(format!(
                    "{}; the batch is sent again until it is taken",
                    describe(f, "refused")
                )));
            }
            if retries >= D::ITEM_RETRIES {
                return Err(fail(format!(
                    "{} after {retries} retries",
                    describe(&failures[0], "kept refusing")
                )));
            }
            retries += 1;
            pending = failures.iter().map(|f| pending[f.index]).collect();
            pending.sort_unstable();
            pending.dedup();
            tokio::time::sleep(item_backoff(retries)).await;
        }
    }
    Ok(done)
}

impl Http {
    /// An endpoint at `url`.
    pub fn new(client: reqwest::Client, url: reqwest::Url, compression: Compression) -> Self {
        Self {
            client,
            url,
            compression,
        }
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// POSTs `body` (compressed as configured) with `headers`; on a 2xx,
    /// hands the answer's body to `check` (a destination may refuse
    /// inside a 2xx) and returns the bytes sent with what `check` said.
    /// `done` is what the delivery achieved before, for the error.
    pub async fn post<T>(
        &self,
        body: Vec<u8>,
        content_type: &str,
        headers: &[(&str, String)],
        check: impl FnOnce(&[u8]) -> Result<T, String>,
        done: Delivery,
    ) -> Result<(u64, T), SinkError> {
        let fail = |message: String, retry_after: Option<Duration>| SinkError {
            message,
            retry_after,
            delivered: done,
        };
        let (body, encoding) =
            super::compress::compress(body, self.compression).map_err(|m| fail(m, None))?;
        let encoding = encoding.map(|e| e.header);
        let size = body.len() as u64;
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(e) = encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, e);
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let resp = req.send().await.map_err(|e| {
            let mut what = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                what = format!("{what}: {s}");
                src = s.source();
            }
            fail(format!("cannot reach {}: {what}", self.url), None)
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .map(|d| d.min(MAX_RETRY_AFTER));
        let text = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let shown = String::from_utf8_lossy(&text[..text.len().min(300)]).into_owned();
            return Err(fail(
                format!("{} answered {status}: {}", self.url, shown.trim()),
                retry_after,
            ));
        }
        let checked = check(&text)
            .map_err(|m| fail(format!("{} answered {status} but {m}", self.url), None))?;
        Ok((size, checked))
    }
}

/// `Retry-After`: seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(s) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_puts_items_together() {
        let items: [&[u8]; 2] = [b"a", b"b"];
        assert_eq!(Framing::NDJSON.frame(items), b"a\nb\n");
        assert_eq!(Framing::JSON_ARRAY.frame(items), b"[a,b]");
        assert_eq!(Framing::JSON_ARRAY.frame([]), b"[]");
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn item_backoff_doubles() {
        assert_eq!(item_backoff(1), Duration::from_millis(250));
        assert_eq!(item_backoff(3), Duration::from_millis(1000));
    }
}
