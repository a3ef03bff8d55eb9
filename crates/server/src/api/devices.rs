//! Devices (nodes): `GET /api/v2/tailnet/{t}/devices`,
//! `GET|PATCH|DELETE /api/v2/device/{id}`, `POST .../name|tags`, and the
//! agents' `POST /api/v2/agent/{private_id}` (registration with an auth
//! key, reports, long polls).

use super::json_body;
use crate::AppState;
use crate::api::auth::{Caller, key_from_headers};
use crate::control::model::Device;
use crate::control::nodes::{NodeUpdate, Registered, Registration};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

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
    let node = state
        .control
        .update_node(caller.tailnet(), &caller.ctx, id, &u)
        .await?;
    // A new name is in the peers agents are told: wakes their long polls.
    state.catalog.reload(&state.control).await?;
    Ok(Json(node).into_response())
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

/// Longest an agent's long poll is held (below the agent's request timeout
/// and well below any proxy's idle limit).
pub const MAX_AGENT_WAIT_SECS: u64 = 25;

/// Query of `POST /api/v2/agent/{private_id}`: with `wait`, the request is
/// a long poll.
#[derive(Debug, Default)]
pub struct AgentQuery {
    /// Long poll: hold the request up to this many seconds (at most
    /// [`MAX_AGENT_WAIT_SECS`]) while the answer's version is `version`.
    pub wait: Option<u64>,
    /// The `version` of the last answer the agent got.
    pub version: Option<String>,
}

impl AgentQuery {
    /// Reads the query, refusing what an agent would not send with an
    /// error that says what is expected.
    pub fn parse(params: &[(String, String)]) -> Result<Self, ApiError> {
        let mut q = AgentQuery::default();
        for (k, v) in params {
            match k.as_str() {
                "wait" => q.wait = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "wait={v:?} is not valid: give whole seconds, 0 to {MAX_AGENT_WAIT_SECS}"
                    ))
                })?),
                "version" => q.version = Some(v.clone()),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter {k:?}; known: wait, version"
                    )));
                }
            }
        }
        Ok(q)
    }
}

/// `POST /api/v2/agent/{private_id}`: an agent registers its node (first
/// time with an auth key as Bearer) or reports in (its private ID is its
/// identity); answers the node, the settings agents follow, its peers, how
/// often to report, and the answer's `version`.
///
/// With `?wait=N&version=V` it is a long poll instead: nothing is
/// registered, reported or audited (an auth key is ignored; the node must
/// be registered, else 401); the answer comes at once when its version is
/// not `V`, else when something agents are told changes in the node's
/// tailnet (settings, nodes), when `N` seconds (≤ 25) pass, or when the
/// server shuts down.
pub async fn agent_report(
    State(state): State<AppState>,
    Path(private_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    Extension(remote): Extension<super::RemoteAddr>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let private = tally_proto::PrivateId::parse(&private_id).map_err(|e| {
        ApiError::bad_request(format!("the private ID in the URL is not valid: {e}"))
    })?;
    let instance = private.public();
    drop(private);
    let query = AgentQuery::parse(&params)?;
    if let Some(wait) = query.wait {
        // The body (what an ordinary report carries) is not used.
        crate::ingest::body::read_limited(body, 64 << 10).await?;
        return agent_watch(&state, &instance, wait, query.version.as_deref()).await;
    }
    let secret = key_from_headers(&headers);
    let reg: Registration = json_body(body).await?;
    let (node, registered) = state
        .control
        .register_agent(&instance, secret.as_deref(), &reg, remote.0)
        .await?;
    if registered != Registered::Unchanged {
        // Also wakes the long polls of the tailnet's agents.
        state.catalog.reload(&state.control).await?;
    }
    let (answer, _) = agent_answer(&state, node).await?;
    let status = if registered == Registered::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

/// The long poll of [`agent_report`].
async fn agent_watch(
    state: &AppState,
    instance: &tally_proto::PublicId,
    wait: u64,
    known: Option<&str>,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_AGENT_WAIT_SECS));
    let mut changes: Option<(String, tokio::sync::watch::Receiver<u64>)> = None;
    loop {
        let node = state
            .control
            .node_by_instance(instance)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this node is not registered: report in first (start the agent with --auth-key)",
                )
            })?;
        // Subscribed before the answer is read: a change committed after
        // the read wakes the wait below.
        let mut rx = match changes.take() {
            Some((t, rx)) if t == node.tailnet_id => rx,
            _ => state.catalog.agent_changes(&node.tailnet_id),
        };
        rx.borrow_and_update();
        let tailnet = node.tailnet_id.clone();
        let (answer, version) = agent_answer(state, node).await?;
        if known != Some(version.as_str()) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(answer).into_response());
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(Json(answer).into_response());
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(Json(answer).into_response()),
            () = state.shutdown.cancelled() => return Ok(Json(answer).into_response()),
        }
        changes = Some((tailnet, rx));
    }
}

/// What an agent is told, and its version: a digest of everything in it
/// but the node's own timestamps (`lastSeen` moves with every report).
async fn agent_answer(state: &AppState, node: Device) -> Result<(Value, String), ApiError> {
    let flow = state
        .control
        .setting_i64(&node.tailnet_id, "networkFlowLoggingOn")
        .await?
        != 0;
    // The tailnet's other nodes: agents classify traffic with them.
    let peers: Vec<Value> = state
        .control
        .nodes(&node.tailnet_id)
        .await?
        .into_iter()
        .filter(|n| n.id != node.id)
        .map(|n| json!({ "nodeId": n.id, "name": n.name, "addresses": n.addresses, "advertisedRoutes": n.advertised_routes }))
        .collect();
    let settings = json!({ "networkFlowLoggingOn": flow });
    let report_seconds = state.config.agent_report_seconds;
    let versioned = json!({
        "node": { "id": node.id, "addresses": node.addresses, "advertisedRoutes": node.advertised_routes },
        "settings": settings,
        "reportSeconds": report_seconds,
        "peers": peers,
    });
    let digest = Sha256::digest(versioned.to_string().as_bytes());
    let version = hex::encode(&digest[..12]);
    Ok((
        json!({
            "node": node,
            "settings": settings,
            "reportSeconds": report_seconds,
            "peers": peers,
            "version": version,
        }),
        version,
    ))
}
