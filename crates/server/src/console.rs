//! The web console's static files (`crates/server/console/`), embedded in
//! the binary and served at `GET /` (the page) and `GET /console/{*file}`
//! (its modules, style sheet and icon). The console reads and changes
//! everything through `/api/v2` and `/c/...` like the CLI; this module only
//! serves files.
//!
//! Every answer carries the console's security headers (a strict
//! Content-Security-Policy: no inline script or style, nothing from another
//! origin, no framing), `Cache-Control: no-cache` with a strong `ETag` (the
//! SHA-256 of what is sent, so a browser revalidates and gets 304 when
//! nothing changed), and is gzip-compressed when the client accepts it.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::LazyLock;

/// The Content-Security-Policy of every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its path under `console/` and its bytes.
macro_rules! asset {
    ($path:literal) => {
        (
            $path,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)) as &[u8],
        )
    };
}

/// Every file of the console (a test checks that the directory holds no
/// other and that each one is listed).
pub const FILES: &[(&str, &[u8])] = &[
    asset!("index.html"),
    asset!("app.css"),
    asset!("favicon.svg"),
    asset!("js/main.js"),
    asset!("js/api.js"),
    asset!("js/router.js"),
    asset!("js/ui.js"),
    asset!("js/format.js"),
    asset!("js/graph.js"),
    asset!("js/diff.js"),
    asset!("js/term.js"),
    asset!("js/pages/signin.js"),
    asset!("js/pages/setup.js"),
    asset!("js/pages/overview.js"),
    asset!("js/pages/logs.js"),
    asset!("js/pages/flows.js"),
    asset!("js/pages/reconciliation.js"),
    asset!("js/pages/audit.js"),
    asset!("js/pages/devices.js"),
    asset!("js/pages/users.js"),
    asset!("js/pages/keys.js"),
    asset!("js/pages/settings.js"),
    asset!("js/pages/alerts.js"),
    asset!("js/pages/rules.js"),
    asset!("js/pages/streams.js"),
    asset!("js/pages/recordings.js"),
];

/// A file ready to serve: both encodings and their ETags.
struct Prepared {
    path: &'static str,
    content_type: &'static str,
    plain: Bytes,
    plain_etag: HeaderValue,
    /// The gzip encoding, when it is smaller than the plain one.
    gzip: Option<(Bytes, HeaderValue)>,
}

/// The content type of a console file, from its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn etag(bytes: &[u8], suffix: &str) -> HeaderValue {
    let hash = hex::encode(&Sha256::digest(bytes)[..16]);
    HeaderValue::from_str(&format!("\"{hash}{suffix}\""))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).ok()?;
    enc.finish().ok()
}

/// The files, compressed and hashed once on first use.
static PREPARED: LazyLock<Vec<Prepared>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(path, plain)| {
            let gzip = gzip(plain)
                .filter(|g| g.len() < plain.len())
                .map(|g| (Bytes::from(g), etag(plain, "-gzip")));
            Prepared {
                path,
                content_type: content_type(path),
                plain: Bytes::from_static(plain),
                plain_etag: etag(plain, ""),
                gzip,
            }
        })
        .collect()
});

/// Sets the console's security headers on `headers`.
pub fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Whether the client accepts gzip (`Accept-Encoding`, `q=0` meaning no).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Whether `If-None-Match` names `tag` (or `*`).
fn not_modified(headers: &HeaderMap, tag: &HeaderValue) -> bool {
    let Ok(tag) = tag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = PREPARED.iter().find(|p| p.path == path) else {
        let mut resp = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such console file\n",
        )
            .into_response();
        security_headers(resp.headers_mut());
        return resp;
    };
    let (body, tag, gzipped) = match &file.gzip {
        Some((g, tag)) if accepts_gzip(headers) => (g.clone(), tag, true),
        _ => (file.plain.clone(), &file.plain_etag, false),
    };
    let mut resp = if not_modified(headers, tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, file.content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    security_headers(h);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, tag.clone());
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// Drops `WWW-Authenticate` from a 401 answered to a script of a page (a
/// request with `Sec-Fetch-Mode` other than `navigate` and no
/// `Authorization`): browsers answer that header with a password prompt,
/// which the console (signing in with its own form) must not cause. API
/// clients (no `Sec-Fetch-Mode`) and navigations keep it.
pub async fn no_password_prompt(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from_script = req
        .headers()
        .get("sec-fetch-mode")
        .is_some_and(|m| m.as_bytes() != b"navigate")
        && !req.headers().contains_key(header::AUTHORIZATION);
    let mut resp = next.run(req).await;
    if from_script && resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    resp
}

/// `GET /`: the console's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{*file}`: a module, the style sheet, the icon.
pub async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `console/` is embedded, and nothing else is listed.
    #[test]
    fn every_console_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("console dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    let rel = p.strip_prefix(&root).expect("under root");
                    found.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        found.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        listed.sort();
        assert_eq!(found, listed, "console/ and console::FILES differ");
    }

    #[test]
    fn gzip_and_etag_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(!accepts_gzip(&h));
        let tag = HeaderValue::from_static("\"abc\"");
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(not_modified(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(!not_modified(&h, &tag));
    }
}
