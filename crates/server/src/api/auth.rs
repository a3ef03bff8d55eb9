//! API-key authentication: the key is the basic-auth user name (as in the
//! logs-service API) or an `Authorization: Bearer` token, checked against
//! the SHA-256 hashes in the control database.

use crate::AppState;
use crate::control::audit::{AuditContext, Origin};
use crate::control::principals::Principal;
use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
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

/// Authenticates the request's API key.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    remote: Option<String>,
) -> Result<Caller, ApiError> {
    let Some(key) = key_from_headers(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "an API key is required: send it as the basic-auth user name (curl -u KEY:) or as Authorization: Bearer KEY",
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
