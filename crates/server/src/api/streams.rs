//! Log streaming, Tailscale's API and Tally's additions in the same shapes.
//!
//! - Tailscale's: `GET|PUT|DELETE /api/v2/tailnet/{t}/logging/{logType}/stream`
//!   with `LogstreamEndpointConfiguration` (write-only secrets never
//!   answered), `GET .../stream/status` with
//!   `LogstreamEndpointPublishingStatus` (plus Tally's `id`, `position`,
//!   `lagEntries`, `unencrypted`). These address the log type's first
//!   (oldest) destination.
//! - Tally's: several destinations per log type: `GET|POST
//!   .../logging/{logType}/streams`, `GET|PUT|DELETE .../streams/{id}`,
//!   `GET .../streams/{id}/status`; `POST .../stream/test` and
//!   `.../streams/{id}/test` send one test event and answer what the
//!   destination said.
//!
//! Log types: `configuration`, `network` (Tailscale's), `alerts`,
//! `findings`, `logs` (Tally's).

use crate::AppState;
use crate::api::auth::Caller;
use crate::control::streams::StreamRow;
use crate::error::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use tally_stream::{EndpointConfig, Entry, LogType, PublishingStatus};

/// Most destinations of one log type in one tailnet.
pub const MAX_STREAMS_PER_TYPE: usize = 16;

fn log_type(params: &HashMap<String, String>) -> Result<LogType, ApiError> {
    let t = params
        .get("logType")
        .map(String::as_str)
        .unwrap_or_default();
    LogType::parse(t).ok_or_else(|| {
        ApiError::not_found(format!(
            "log type {t:?}: use configuration, network, alerts, findings or logs"
        ))
    })
}

/// The tailnet's streams of `t`, oldest first.
async fn of_type(state: &AppState, tailnet: &str, t: LogType) -> Result<Vec<StreamRow>, ApiError> {
    Ok(state
        .control
        .streams(Some(tailnet))
        .await?
        .into_iter()
        .filter(|r| r.log_type == t.name())
        .collect())
}

/// The stream a path names: `{streamId}` when given, else the log type's
/// first. `None` when the first is asked for and there is none.
async fn addressed(
    state: &AppState,
    tailnet: &str,
    t: LogType,
    params: &HashMap<String, String>,
) -> Result<Option<StreamRow>, ApiError> {
    let rows = of_type(state, tailnet, t).await?;
    match params.get("streamId") {
        Some(id) => rows
            .into_iter()
            .find(|r| &r.id == id)
            .map(Some)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no {} stream {id} (GET .../logging/{}/streams lists them)",
                    t.name(),
                    t.name()
                ))
            }),
        None => Ok(rows.into_iter().next()),
    }
}

/// The addressed stream, or a 404 that says how to make one.
async fn configured(
    state: &AppState,
    tailnet: &str,
    t: LogType,
    params: &HashMap<String, String>,
) -> Result<StreamRow, ApiError> {
    addressed(state, tailnet, t, params).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no {} log stream is configured (PUT .../logging/{}/stream)",
            t.name(),
            t.name()
        ))
    })
}

/// A stored configuration as answered (no secrets).
fn answered(row: &StreamRow, t: LogType) -> Result<Value, ApiError> {
    let config: EndpointConfig = serde_json::from_str(&row.config)
        .map_err(|e| ApiError::internal(format!("stream {} is damaged: {e}", row.id)))?;
    let mut v = serde_json::to_value(config.redacted(t)).unwrap_or_default();
    v["id"] = json!(row.id);
    Ok(v)
}

/// `GET .../logging/{logType}/stream` and `.../streams/{streamId}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let row = configured(&state, caller.tailnet(), t, &params).await?;
    let mut v = answered(&row, t)?;
    if !params.contains_key("streamId")
        && let Some(m) = v.as_object_mut()
    {
        // Tailscale's path answers Tailscale's shape exactly.
        m.remove("id");
    }
    Ok(Json(v).into_response())
}

/// `GET .../logging/{logType}/streams`: every destination of the log
/// type, with its status.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let mut out = Vec::new();
    for row in of_type(&state, caller.tailnet(), t).await? {
        let mut v = answered(&row, t)?;
        v["status"] = status_of(&state, &row).await;
        out.push(v);
    }
    Ok(Json(json!({ "streams": out })).into_response())
}

/// Checks and seals a configuration from a request; a missing secret
/// keeps `old`'s.
async fn prepared(
    state: &AppState,
    t: LogType,
    body: Body,
    old: Option<&StreamRow>,
) -> Result<(EndpointConfig, String), ApiError> {
    let mut config: EndpointConfig = super::json_body(body).await?;
    if config.log_type.as_deref().is_some_and(|l| l != t.name()) {
        return Err(ApiError::bad_request(format!(
            "logType comes from the URL ({}), not the body",
            t.name()
        )));
    }
    config.log_type = None;
    if let Some(old) = old
        && let Ok(stored) = state.streams.unseal(old)
    {
        config.token = config.token.or(stored.token);
        config.s3_secret_access_key = config.s3_secret_access_key.or(stored.s3_secret_access_key);
        config.gcs_credentials = config.gcs_credentials.or(stored.gcs_credentials);
    }
    config
        .validate()
        .and_then(|_| config.validate_for(t))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // A destination that cannot be built (a bad CA certificate) is refused
    // now, not found broken when it starts.
    state
        .streams
        .sink(&config, t)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    state
        .streams
        .seal(config)
        .map_err(|e| ApiError::internal(format!("sealing the stream's secrets: {e:#}")))
}

/// Stores a configuration (new when `existing` is None) and (re)starts it.
async fn store(
    state: &AppState,
    caller: &Caller,
    t: LogType,
    existing: Option<&StreamRow>,
    clean: &EndpointConfig,
    sealed: &str,
) -> Result<StreamRow, ApiError> {
    let start = state.store.end_seq().saturating_sub(1);
    let row = state
        .control
        .put_stream(
            caller.tailnet(),
            &caller.ctx,
            t.name(),
            existing.map(|r| r.id.as_str()),
            &serde_json::to_value(clean).unwrap_or_default(),
            sealed,
            start,
        )
        .await?;
    // On a shared log the worker runs streams; it sees the change within
    // seconds (`consumers::stream::follow_changes`).
    if state.config.role.runs_singletons() {
        state
            .streams
            .start(&state.pipeline, &row)
            .map_err(|e| ApiError::internal(format!("starting the stream: {e:#}")))?;
    }
    Ok(row)
}

/// `PUT .../logging/{logType}/stream` (creates or replaces the log type's
/// first destination) and `.../streams/{streamId}` (replaces that one).
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let existing = addressed(&state, caller.tailnet(), t, &params).await?;
    let (clean, sealed) = prepared(&state, t, body, existing.as_ref()).await?;
    store(&state, &caller, t, existing.as_ref(), &clean, &sealed).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST .../logging/{logType}/streams`: adds a destination; answers it
/// with its `id` (201).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    if of_type(&state, caller.tailnet(), t).await?.len() >= MAX_STREAMS_PER_TYPE {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a tailnet streams each log type to at most {MAX_STREAMS_PER_TYPE} destinations; delete one first"
            ),
        ));
    }
    let (clean, sealed) = prepared(&state, t, body, None).await?;
    let row = store(&state, &caller, t, None, &clean, &sealed).await?;
    Ok((StatusCode::CREATED, Json(answered(&row, t)?)).into_response())
}

/// `DELETE .../logging/{logType}/stream` and `.../streams/{streamId}`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let row = configured(&state, caller.tailnet(), t, &params).await?;
    state
        .control
        .delete_stream(caller.tailnet(), &caller.ctx, &row.id)
        .await?;
    if state.config.role.runs_singletons() {
        state.streams.forget(&state.pipeline, &row.id);
    }
    Ok(StatusCode::OK.into_response())
}

/// `numSpoofedEntries` for network streams: the tailnet's connection
/// windows (node to node) that reconciliation judged and the other end did
/// not confirm, since the reconciler's state began.
fn unconfirmed(state: &AppState, tailnet: &str) -> u64 {
    state
        .reconcile
        .summary()
        .pairs
        .iter()
        .filter(|(t, ..)| t == tailnet)
        .map(|(.., c)| c.judged.saturating_sub(c.matched))
        .sum()
}

/// A stream's status: Tailscale's fields and Tally's.
async fn status_of(state: &AppState, row: &StreamRow) -> Value {
    let live = state.streams.state(&row.id).map(|live| {
        let s = live.lock();
        (s.status.clone(), s.position, s.unencrypted)
    });
    // On a shared log the worker runs the stream and shares its status
    // (a read from JetStream: off the async threads).
    let shared = match (&live, &state.shared_files) {
        (None, Some(files)) => {
            let (files, id) = (files.clone(), row.id.clone());
            tokio::task::spawn_blocking(move || {
                crate::consumers::stream::shared_status(&files, &id)
            })
            .await
            .ok()
            .flatten()
            .map(|(status, position)| {
                let unencrypted = state
                    .streams
                    .unseal(row)
                    .ok()
                    .and_then(|c| c.validate().ok())
                    .is_some_and(|(_, u)| u);
                (status, position, unencrypted)
            })
        }
        _ => None,
    };
    let Some((status, position, unencrypted)) = live.or(shared) else {
        let mut v = serde_json::to_value(PublishingStatus::default()).unwrap_or_default();
        v["id"] = json!(row.id);
        v["lastError"] = json!("the stream is not running (see the server's log)");
        return v;
    };
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if row.log_type == LogType::Network.name() {
        v["numSpoofedEntries"] = json!(unconfirmed(state, &row.tailnet_id));
    }
    v["id"] = json!(row.id);
    v["position"] = json!(position);
    v["unencrypted"] = json!(unencrypted);
    if let Some(c) = state
        .pipeline
        .get(&crate::consumers::stream::consumer_name(&row.id))
    {
        let c = c.status(state.store.end_seq());
        v["lagEntries"] = json!(c.lag_records);
        v["lagSeconds"] = json!(c.lag_seconds);
    }
    v
}

/// `GET .../logging/{logType}/stream/status` (all zeros when none is
/// configured, as Tailscale answers) and `.../streams/{streamId}/status`.
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let Some(row) = addressed(&state, caller.tailnet(), t, &params).await? else {
        return Ok(Json(PublishingStatus::default()).into_response());
    };
    Ok(Json(status_of(&state, &row).await).into_response())
}

/// `POST .../stream/test` and `.../streams/{streamId}/test`: sends one
/// test event with the stored configuration; answers `{"ok", "requests",
/// "bytes"}` or `{"ok": false, "error"}`.
pub async fn test(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let t = log_type(&params)?;
    let row = configured(&state, caller.tailnet(), t, &params).await?;
    let config = state
        .streams
        .unseal(&row)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    let sink = state
        .streams
        .sink(&config, t)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = tally_proto::timefmt::now_nanos();
    let event = json!({
        "tallyTest": true,
        "message": "test event from Tally: this destination receives the tailnet's log stream",
        "logType": t.name(),
        "time": tally_proto::timefmt::format_nanos(now),
    });
    let entry = Entry {
        position: 0,
        time: now,
        body: event.to_string().into_bytes(),
    };
    Ok(match sink.deliver(&[entry]).await {
        Ok(d) => Json(json!({ "ok": true, "requests": d.requests, "bytes": d.bytes })),
        Err(e) => Json(json!({ "ok": false, "error": e.message })),
    }
    .into_response())
}
