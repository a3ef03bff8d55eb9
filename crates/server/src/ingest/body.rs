//! Request-body decoding with a hard limit on the decompressed size, checked
//! while decompressing (a compression bomb never allocates past the limit).

use axum::http::{HeaderMap, StatusCode};
use std::io::Read;

/// Why a body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The `Content-Encoding` is not one we read (415).
    UnsupportedEncoding(String),
    /// The decompressed body is over the limit (413).
    TooLarge {
        /// The limit on the decompressed size, in bytes.
        limit: usize,
    },
    /// The compressed data is damaged (saved as an error entry, 400).
    Corrupt(String),
    /// A header is malformed (400).
    BadHeader(String),
}

impl BodyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Corrupt(_) | Self::BadHeader(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A message a client developer can act on.
    pub fn message(&self) -> String {
        match self {
            Self::UnsupportedEncoding(e) => {
                format!("unsupported Content-Encoding \"{e}\": send zstd, gzip or identity")
            }
            Self::TooLarge { limit } => format!(
                "request body is over {limit} bytes ({} KiB) after decompression: send smaller batches",
                limit / 1024
            ),
            Self::Corrupt(why) => format!("request body could not be decompressed: {why}"),
            Self::BadHeader(why) => why.clone(),
        }
    }
}

/// Reads a whole request body of at most `limit` bytes, with JSON errors:
/// 413 past the limit, 400 when the body was cut short.
pub async fn read_limited(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, crate::error::ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(crate::error::ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body is over {limit} bytes: send smaller batches"),
                    ));
                }
                source = s.source();
            }
            Err(crate::error::ApiError::bad_request(format!(
                "request body could not be read (cut short?): {e}"
            )))
        }
    }
}

/// Supported encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Zstd,
    Gzip,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let Some(v) = headers.get(axum::http::header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let v = v
        .to_str()
        .map_err(|_| BodyError::UnsupportedEncoding("<non-ASCII>".into()))?
        .trim()
        .to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "zstd" => Ok(Encoding::Zstd),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        other => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Decodes `raw` per the request's `Content-Encoding`, refusing anything
/// that decompresses to more than `limit` bytes. `Orig-Content-Length`, when
/// present, is checked against the limit before any work.
pub fn decode(headers: &HeaderMap, raw: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let enc = encoding(headers)?;
    let declared = match headers.get("orig-content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    BodyError::BadHeader("Orig-Content-Length must be a decimal byte count".into())
                })?,
        ),
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let reader: Box<dyn Read + '_> = match enc {
        Encoding::Identity => {
            return if raw.len() > limit {
                Err(BodyError::TooLarge { limit })
            } else {
                Ok(raw.to_vec())
            };
        }
        Encoding::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|e| BodyError::Corrupt(format!("zstd: {e}")))?,
        ),
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(raw)),
    };
    let cap = declared.map_or(raw.len() * 4, |n| n as usize).min(limit);
    let mut out = Vec::with_capacity(cap);
    let read = reader.take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(_) if out.len() > limit => Err(BodyError::TooLarge { limit }),
        Ok(_) => Ok(out),
        Err(e) => Err(BodyError::Corrupt(format!("{enc:?}: {e}").to_lowercase())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(enc: Option<&str>, orig: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(e) = enc {
            h.insert("content-encoding", HeaderValue::from_str(e).unwrap());
        }
        if let Some(o) = orig {
            h.insert("orig-content-length", HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn decodes_each_supported_encoding() {
        let body = br#"[{"text":"hello"}]"#.repeat(10);
        let z = zstd::bulk::compress(&body, 3).unwrap();
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut g, &body).unwrap();
        let g = g.finish().unwrap();
        assert_eq!(decode(&headers(None, None), &body, 1000).unwrap(), body);
        assert_eq!(
            decode(
                &headers(Some("zstd"), Some(&body.len().to_string())),
                &z,
                1000
            )
            .unwrap(),
            body
        );
        assert_eq!(
            decode(&headers(Some("gzip"), None), &g, 1000).unwrap(),
            body
        );
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let bomb = zstd::bulk::compress(&vec![b'a'; 64 << 20], 19).unwrap();
        assert!(bomb.len() < 64 << 10);
        let e = decode(&headers(Some("zstd"), None), &bomb, 512 << 10).unwrap_err();
        assert_eq!(e, BodyError::TooLarge { limit: 512 << 10 });
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A lying Orig-Content-Length is refused before decompression.
        let e = decode(&headers(Some("zstd"), Some("99999999")), b"x", 512 << 10).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn unknown_and_corrupt_encodings_are_refused_clearly() {
        let e = decode(&headers(Some("br"), None), b"x", 10).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.message().contains("\"br\""));
        let e = decode(&headers(Some("zstd"), None), b"definitely not zstd", 100).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = decode(&headers(None, Some("ten")), b"x", 100).unwrap_err();
        assert!(matches!(e, BodyError::BadHeader(_)));
    }
}
