//! What every HTTP destination shares: compression, sending, and reading
//! the answer into success or a [`SinkError`] with `Retry-After`.

use super::{Delivery, SinkError};
use crate::config::Compression;
use std::io::Write;
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

impl Http {
    /// An endpoint at `url`.
    pub fn new(client: reqwest::Client, url: reqwest::Url, compression: Compression) -> Self {
        Self {
            client,
            url,
            compression,
        }
    }

    /// POSTs `body` with `headers`; Ok(bytes sent) on a 2xx, whose body is
    /// handed to `check` (a destination may refuse inside a 200).
    pub async fn post(
        &self,
        body: Vec<u8>,
        content_type: &str,
        headers: &[(&str, String)],
        check: impl FnOnce(&[u8]) -> Result<(), String>,
        done: Delivery,
    ) -> Result<u64, SinkError> {
        let fail = |message: String, retry_after: Option<Duration>| SinkError {
            message,
            retry_after,
            delivered: done,
        };
        let (body, encoding) = match self.compression {
            Compression::None => (body, None),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&body)
                    .and_then(|()| e.finish())
                    .map(|b| (b, Some("gzip")))
                    .map_err(|e| fail(format!("compressing a batch: {e}"), None))?
            }
            Compression::Zstd => zstd::encode_all(body.as_slice(), 3)
                .map(|b| (b, Some("zstd")))
                .map_err(|e| fail(format!("compressing a batch: {e}"), None))?,
        };
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
        check(&text).map_err(|m| fail(format!("{} answered {status} but {m}", self.url), None))?;
        Ok(size)
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
