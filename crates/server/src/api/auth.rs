//! Authentication: an API key (the basic-auth user name, as in the
//! logs-service API, or an `Authorization: Bearer` token, checked against
//! the SHA-256 hashes in the control database), or a console session
//! cookie. A state-changing request by cookie must carry the session's
//! CSRF token (`X-CSRF-Token`) and come from the console's own origin;
//! its audit events have origin `CONSOLE`.

use crate::AppState;
use crate::control::audit::{AuditContext, Origin};
use crate::control::principals::Principal;
use crate::error::ApiError;
use axum::http::{HeaderMap, Method, StatusCode, header};
use base64::Engine;

/// The authenticated caller of a guarded route.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's user and tailnet.
    pub principal: Principal,
    /// Actor, origin and address for audit events.
    pub ctx: AuditContext,
}

impl Caller {
    /// The caller's tailnet ID.
    pub fn tailnet(&self) -> &str {
        &self.principal.tailnet_id
    }
}

/// Extracts the API key from the headers, if any.
pub fn key_from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return (!user.is_empty()).then(|| user.to_owned());
    }
    None
}

/// Authenticates the request: its API key, or its console session.
pub async fn authenticate(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    remote: Option<String>,
) -> Result<Caller, ApiError> {
    let Some(key) = key_from_headers(headers) else {
        if let Some(token) = super::session::session_token(headers) {
            return by_session(state, method, headers, remote, &token).await;
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "an API key is required: send it as the basic-auth user name (curl -u KEY:) or as Authorization: Bearer KEY (or sign in to the console)",
        ));
    };
    let principal = state.control.authenticate(&key).await?;
    let origin = Origin::from_header(headers.get("tally-origin").and_then(|v| v.to_str().ok()));
    Ok(Caller {
        ctx: AuditContext {
            actor: principal.actor(),
            origin,
            remote,
        },
        principal,
    })
}

/// Whether `method` changes nothing (no CSRF token needed).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a request by cookie comes from another site, if it does: its
/// `Origin` (or `Sec-Fetch-Site`) names another origin than its `Host`.
pub fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("Sec-Fetch-Site: {site}"));
    }
    let origin = get("origin")?;
    let host = get("host").unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    (origin == "null" || !origin_host.eq_ignore_ascii_case(host))
        .then(|| format!("Origin: {}", crate::control::truncate(origin, 100)))
}

/// Compares two tokens without leaking where they differ: their SHA-256
/// digests are compared (timing tells nothing about the token).
fn same_token(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

async fn by_session(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    remote: Option<String>,
    token: &str,
) -> Result<Caller, ApiError> {
    let session = state.control.session(token).await?;
    if !is_safe(method) {
        if let Some(why) = foreign_origin(headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("a change by a console session from another site is refused ({why})"),
            ));
        }
        let sent = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same_token(sent, &session.csrf) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a change by a console session needs its CSRF token (X-CSRF-Token); reload the console",
            ));
        }
    }
    Ok(Caller {
        ctx: AuditContext {
            actor: session.principal.actor(),
            origin: Origin::Console,
            remote,
        },
        principal: session.principal,
    })
}
