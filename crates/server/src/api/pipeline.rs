//! The pipeline's health and controls: `GET /readyz` (public),
//! `GET /api/v2/consumers` and `POST /api/v2/consumers/{consumer}/{pause,resume}`
//! (the server's operator: `server:operate`).

use crate::AppState;
use crate::api::auth::Caller;
use crate::control::audit::{EventSpec, Target};
use crate::error::ApiError;
use crate::metrics::state_name;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use tally_pipeline::ConsumerState;

/// `GET /readyz`: 200 when the log accepts writes, the control database
/// answers and every consumer is running (or paused by an operator);
/// otherwise 503. The answer names each check, never a path or a secret.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = match state.store.check() {
        Ok(()) => "ok".to_owned(),
        Err(_) => "not accepting writes (see the server log)".to_owned(),
    };
    let control =
        match tokio::time::timeout(std::time::Duration::from_secs(2), state.control.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(_)) => "unreachable (see the server log)".to_owned(),
            Err(_) => "no answer within 2 s".to_owned(),
        };
    let mut consumers = serde_json::Map::new();
    let mut consumers_ok = true;
    for c in state.pipeline.statuses() {
        consumers_ok &=
            !c.essential || matches!(c.state, ConsumerState::Running | ConsumerState::Paused);
        consumers.insert(c.name.to_owned(), state_name(c.state).into());
    }
    let ready = store == "ok" && control == "ok" && consumers_ok && !consumers.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": ready,
            "store": store,
            "controlDatabase": control,
            "consumers": consumers,
        })),
    )
        .into_response()
}

/// `GET /api/v2/consumers`: every consumer's status (position, lag,
/// errors, rejections with their positions and reasons).
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "consumers": state.pipeline.statuses() })).into_response())
}

/// `POST /api/v2/consumers/{consumer}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    control(&state, &caller, &name, true).await
}

/// `POST /api/v2/consumers/{consumer}/resume`: a paused consumer goes on, a
/// halted one retries the record it halted at.
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    control(&state, &caller, &name, false).await
}

async fn control(
    state: &AppState,
    caller: &Caller,
    name: &str,
    pause: bool,
) -> Result<Response, ApiError> {
    let Some(c) = state.pipeline.get(name) else {
        let names: Vec<String> = state
            .pipeline
            .statuses()
            .into_iter()
            .map(|s| s.name)
            .collect();
        return Err(ApiError::not_found(format!(
            "no consumer named {:?}; the consumers are {}",
            name.chars().take(80).collect::<String>(),
            names.join(", ")
        )));
    };
    let before = c.status(state.store.end_seq()).state;
    let mut change = state
        .control
        .begin_change(caller.tailnet(), &caller.ctx)
        .await?;
    change
        .record(
            EventSpec::new(
                "UPDATE",
                Target {
                    id: c.name().to_owned(),
                    name: c.name().to_owned(),
                    target_type: "CONSUMER".into(),
                    property: "STATE".into(),
                    ..Target::default()
                },
            )
            .values(
                json!(state_name(before)),
                json!(if pause { "paused" } else { "running" }),
            ),
        )
        .await?;
    change.commit().await?;
    if pause {
        c.pause();
    } else {
        c.resume();
    }
    tracing::info!(
        consumer = c.name(),
        by = %caller.ctx.actor.login_name,
        "consumer {}",
        if pause { "paused" } else { "resumed" }
    );
    Ok(Json(json!({ "consumer": c.status(state.store.end_seq()) })).into_response())
}
