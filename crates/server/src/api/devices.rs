//! Devices (nodes): `GET /api/v2/tailnet/{t}/devices`,
//! `GET|PATCH|DELETE /api/v2/device/{id}`, `POST .../name|tags`, and the
//! agents' `POST /api/v2/register` (auth key).

use super::json_body;
use crate::AppState;
use crate::auth::{Caller, key_from_headers};
use crate::control::nodes::{NodeUpdate, Registration};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Body of `POST .../name`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// New name.
    pub name: String,
}

/// Body of `POST .../tags`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsBody {
    /// New tags.
    pub tags: Vec<String>,
}

/// `GET /api/v2/tailnet/{t}/devices`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(json!({ "devices": state.control.nodes(caller.tailnet()).await? })).into_response())
}

/// `GET /api/v2/device/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.control.node(caller.tailnet(), &id).await?).into_response())
}

async fn apply(
    state: &AppState,
    caller: &Caller,
    id: &str,
    u: NodeUpdate,
) -> Result<Response, ApiError> {
    Ok(Json(
        state
            .control
            .update_node(caller.tailnet(), &caller.ctx, id, &u)
            .await?,
    )
    .into_response())
}

/// `PATCH /api/v2/device/{id}` (Tally): name and tags in one change.
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let u: NodeUpdate = json_body(body).await?;
    apply(&state, &caller, &id, u).await
}

/// `POST /api/v2/device/{id}/name`.
pub async fn set_name(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: NameBody = json_body(body).await?;
    apply(
        &state,
        &caller,
        &id,
        NodeUpdate {
            name: Some(b.name),
            tags: None,
        },
    )
    .await
}

/// `POST /api/v2/device/{id}/tags`.
pub async fn set_tags(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: TagsBody = json_body(body).await?;
    apply(
        &state,
        &caller,
        &id,
        NodeUpdate {
            name: None,
            tags: Some(b.tags),
        },
    )
    .await
}

/// `DELETE /api/v2/device/{id}`.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .control
        .delete_node(caller.tailnet(), &caller.ctx, &id)
        .await?;
    state.catalog.reload(&state.control).await?;
    Ok(Json(json!({})).into_response())
}

/// `POST /api/v2/agent/{private_id}`: an agent registers its node (first
/// time with an auth key as Bearer) or reports in (its private ID is its
/// identity); answers the node, the settings agents follow and how often to
/// report.
pub async fn agent_report(
    State(state): State<AppState>,
    Path(private_id): Path<String>,
    headers: HeaderMap,
    Extension(remote): Extension<super::RemoteAddr>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let private = tally_proto::PrivateId::parse(&private_id).map_err(|e| {
        ApiError::bad_request(format!("the private ID in the URL is not valid: {e}"))
    })?;
    let instance = private.public();
    drop(private);
    let secret = key_from_headers(&headers);
    let reg: Registration = json_body(body).await?;
    let (node, created) = state
        .control
        .register_agent(&instance, secret.as_deref(), &reg, remote.0)
        .await?;
    if created {
        state.catalog.reload(&state.control).await?;
    }
    let flow = state
        .control
        .setting_i64(&node.tailnet_id, "networkFlowLoggingOn")
        .await?
        != 0;
    // The tailnet's other nodes: agents classify traffic with them.
    let peers: Vec<serde_json::Value> = state
        .control
        .nodes(&node.tailnet_id)
        .await?
        .into_iter()
        .filter(|n| n.id != node.id)
        .map(|n| json!({ "nodeId": n.id, "name": n.name, "addresses": n.addresses, "advertisedRoutes": n.advertised_routes }))
        .collect();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "node": node,
            "settings": { "networkFlowLoggingOn": flow },
            "reportSeconds": state.config.agent_report_seconds,
            "peers": peers,
        })),
    )
        .into_response())
}
