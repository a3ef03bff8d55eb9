//! Users: `GET|POST /api/v2/tailnet/{t}/users`, `GET /api/v2/users/{id}`,
//! `POST /api/v2/users/{id}/role`, `POST /api/v2/users/{id}/delete`.

use super::json_body;
use crate::AppState;
use crate::api::auth::Caller;
use crate::control::model::Role;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Body of `POST .../users`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUser {
    /// Login name.
    pub login_name: String,
    /// Display name (defaults to the login name).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Role (default `member`).
    #[serde(default)]
    pub role: Option<String>,
}

/// Body of `POST /api/v2/users/{id}/role`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// The new role.
    pub role: String,
}

fn parse_role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "role {:?} is not one of owner, admin, network-admin, it-admin, billing-admin, auditor, member",
            s.chars().take(40).collect::<String>()
        ))
    })
}

/// `GET /api/v2/tailnet/{t}/users`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(json!({ "users": state.control.users(caller.tailnet()).await? })).into_response())
}

/// `POST /api/v2/tailnet/{t}/users`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: CreateUser = json_body(body).await?;
    let role = parse_role(b.role.as_deref().unwrap_or("member"))?;
    let display = b.display_name.unwrap_or_else(|| b.login_name.clone());
    let u = state
        .control
        .create_user(
            caller.tailnet(),
            &caller.ctx,
            &caller.principal,
            &b.login_name,
            &display,
            role,
        )
        .await?;
    Ok(Json(u).into_response())
}

/// `GET /api/v2/users/{userId}`.
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.control.user(caller.tailnet(), &id).await?).into_response())
}

/// `POST /api/v2/users/{userId}/role`.
pub async fn set_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let b: RoleBody = json_body(body).await?;
    let role = parse_role(&b.role)?;
    let u = state
        .control
        .set_role(caller.tailnet(), &caller.ctx, &caller.principal, &id, role)
        .await?;
    Ok(Json(u).into_response())
}

/// `POST /api/v2/users/{userId}/delete`.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .control
        .delete_user(caller.tailnet(), &caller.ctx, &caller.principal, &id)
        .await?;
    Ok(Json(json!({})).into_response())
}
