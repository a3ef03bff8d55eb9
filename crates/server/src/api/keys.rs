//! Keys: `GET|POST /api/v2/tailnet/{t}/keys`, `GET|DELETE .../keys/{keyId}`
//! (Tailscale's shapes; `keyType` `api` or `auth`).

use super::json_body;
use crate::AppState;
use crate::api::auth::Caller;
use crate::control::model::DeviceCreate;
use crate::control::principals::{KeyExpiry, KeySpec, KeyType};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;

/// `capabilities` of a key request.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Device capabilities.
    #[serde(default)]
    pub devices: Option<DeviceCaps>,
}

/// `capabilities.devices`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceCaps {
    /// `capabilities.devices.create`.
    #[serde(default)]
    pub create: Option<DeviceCreate>,
}

/// Body of `POST .../keys`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    /// `auth` (default) or `api`.
    #[serde(default)]
    pub key_type: Option<String>,
    /// Auth keys: what registered devices get.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Lifetime in seconds (default 90 days).
    #[serde(default)]
    pub expiry_seconds: Option<i64>,
    /// Tally: an API key that never expires (not with `expirySeconds`;
    /// auth keys always expire).
    #[serde(default)]
    pub never_expires: bool,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Tally: the user the key acts for (default: the caller); a key for
    /// another user needs [`Role::may_create_key_for`](crate::control::model::Role::may_create_key_for).
    #[serde(default)]
    pub user_id: Option<String>,
    /// Accepted for Tailscale compatibility (OAuth scopes): must be absent or empty.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Accepted for Tailscale compatibility: must be absent or empty.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// `GET /api/v2/tailnet/{t}/keys`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(json!({ "keys": state.control.keys(caller.tailnet()).await? })).into_response())
}

/// `POST /api/v2/tailnet/{t}/keys`: the secret is in the answer, once.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: CreateKey = json_body(body).await?;
    let key_type = match b.key_type.as_deref() {
        None | Some("auth") => KeyType::Auth,
        Some("api") => KeyType::Api,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "keyType must be \"auth\" or \"api\" (got {:?})",
                other.chars().take(40).collect::<String>()
            )));
        }
    };
    if b.scopes.as_ref().is_some_and(|s| !s.is_empty())
        || b.tags.as_ref().is_some_and(|t| !t.is_empty())
    {
        return Err(ApiError::bad_request(
            "OAuth clients (scopes, tags) are not supported; create an api or auth key",
        ));
    }
    let caps = b
        .capabilities
        .and_then(|c| c.devices)
        .and_then(|d| d.create)
        .unwrap_or_default();
    if key_type == KeyType::Api && caps != DeviceCreate::default() {
        return Err(ApiError::bad_request(
            "capabilities apply to auth keys only; leave them out for an api key",
        ));
    }
    let expiry = match (b.expiry_seconds, b.never_expires) {
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                "give expirySeconds or neverExpires, not both",
            ));
        }
        (Some(s), false) => KeyExpiry::Seconds(s),
        (None, true) => KeyExpiry::Never,
        (None, false) => KeyExpiry::Default,
    };
    let user_id = b
        .user_id
        .unwrap_or_else(|| caller.principal.user_id.clone());
    let k = state
        .control
        .create_key(
            caller.tailnet(),
            &caller.ctx,
            &caller.principal,
            KeySpec {
                user_id: &user_id,
                key_type,
                description: &b.description,
                expiry,
                caps: &caps,
            },
        )
        .await?;
    let mut v = serde_json::to_value(&k.info).unwrap_or_default();
    v["key"] = json!(k.secret);
    Ok(Json(v).into_response())
}

/// `GET /api/v2/tailnet/{t}/keys/{keyId}`.
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = p.get("keyId").map(String::as_str).unwrap_or_default();
    Ok(Json(state.control.key(caller.tailnet(), id).await?).into_response())
}

/// `DELETE /api/v2/tailnet/{t}/keys/{keyId}`: revokes.
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = p.get("keyId").map(String::as_str).unwrap_or_default();
    state
        .control
        .revoke_key(caller.tailnet(), &caller.ctx, &caller.principal, id)
        .await?;
    Ok(Json(json!({})).into_response())
}
