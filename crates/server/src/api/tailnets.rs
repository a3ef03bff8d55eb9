//! Tailnets and their settings: `GET|POST /api/v2/tailnets`,
//! `PATCH|DELETE /api/v2/tailnet/{t}`, `GET|PATCH /api/v2/tailnet/{t}/settings`.

use super::json_body;
use crate::AppState;
use crate::api::auth::Caller;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Body of create and rename.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// The name.
    pub name: String,
}

/// `GET /api/v2/tailnets`: the caller's tailnet.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let t = state.control.tailnet(caller.tailnet()).await?;
    Ok(Json(json!({ "tailnets": t.into_iter().collect::<Vec<_>>() })).into_response())
}

/// `POST /api/v2/tailnets`: a new tailnet whose owner is the caller's login;
/// answers the owner's API key once.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: NameBody = json_body(body).await?;
    let created = state
        .control
        .create_tailnet(
            &b.name,
            &caller.principal.login_name,
            &caller.principal.display_name,
            &caller.ctx,
            true,
        )
        .await?;
    // Its collections are there for its first request, on this server.
    state.catalog.reload(&state.control).await?;
    let key = created.key.map(|k| {
        let mut v = serde_json::to_value(&k.info).unwrap_or_default();
        v["key"] = json!(k.secret);
        v
    });
    Ok(
        Json(json!({ "tailnet": created.tailnet, "ownerId": created.owner_id, "ownerKey": key }))
            .into_response(),
    )
}

/// `PATCH /api/v2/tailnet/{t}`: rename.
pub async fn rename(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: NameBody = json_body(body).await?;
    let t = state
        .control
        .rename_tailnet(caller.tailnet(), &b.name, &caller.ctx)
        .await?;
    Ok(Json(t).into_response())
}

/// `DELETE /api/v2/tailnet/{t}`.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    state
        .control
        .delete_tailnet(caller.tailnet(), &caller.ctx)
        .await?;
    state.catalog.reload(&state.control).await?;
    state.store.recheck_retention();
    Ok(Json(json!({})).into_response())
}

/// `GET /api/v2/tailnet/{t}/settings`.
pub async fn get_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(state.control.settings(caller.tailnet()).await?).into_response())
}

/// `PATCH /api/v2/tailnet/{t}/settings`.
pub async fn patch_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let patch: serde_json::Map<String, serde_json::Value> = json_body(body).await?;
    let out = state
        .control
        .update_settings(caller.tailnet(), &caller.ctx, &patch)
        .await?;
    state.catalog.reload(&state.control).await?;
    state.store.recheck_retention();
    Ok(Json(out).into_response())
}
