//! API-key authentication: the key is the basic-auth user name (as in the
//! logs-service API) or an `Authorization: Bearer` token.

use crate::AppState;
use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Public identifier of the key used.
    pub key_id: String,
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

/// Checks that the request carries a valid API key.
pub fn require_key(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(key) = key_from_headers(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "an API key is required: send it as the basic-auth user name (curl -u KEY:) or as Authorization: Bearer KEY",
        ));
    };
    match state.catalog.find_key(&key) {
        Some(k) => Ok(Caller { key_id: k.id }),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the API key is not valid (unknown or revoked)",
        )),
    }
}
