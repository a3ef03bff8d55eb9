//! Console sign-in (`control::sessions` keeps the data):
//!
//! - `POST /api/v2/session` with `{"loginName", "password", "tailnet"?}` or
//!   `{"apiKey"}`: sets the `tally_session` cookie (HttpOnly,
//!   SameSite=Strict, Path=/, Secure under TLS) and answers the CSRF
//!   token, the user, the tailnet and the caller's permissions. Every
//!   attempt is audited (`LOGIN`, origin `CONSOLE`; a failure with its
//!   error in the tailnet the login names, when it names one), and
//!   failures are rate-limited per address and per login
//!   ([`SignInLimiter`]).
//! - `GET /api/v2/session`: the same answer for the caller (by API key:
//!   without a CSRF token).
//! - `DELETE /api/v2/session`: signs out (the session is deleted and the
//!   cookie cleared).
//! - `POST /api/v2/session/setup` with `{"token", "password"}`: a one-time
//!   setup link sets the user's password and signs in.
//! - `POST /api/v2/users/{userId}/password` (`{"password"}`) and
//!   `POST /api/v2/users/{userId}/password-setup` (answers the link's
//!   token): an admin sets a password or makes a setup link.

use crate::AppState;
use crate::api::RemoteAddr;
use crate::api::auth::Caller;
use crate::control::ControlError;
use crate::control::audit::{Actor, AuditContext, EventSpec, Origin, Target};
use crate::control::model::PERMISSIONS;
use crate::control::principals::Principal;
use crate::control::sessions::NewSession;
use crate::error::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "tally_session";
/// Failed sign-ins allowed per address, and per login, in [`WINDOW`].
pub const MAX_FAILURES: usize = 10;
/// The window failed sign-ins are counted in.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Failed sign-ins per address and per login, in the last [`WINDOW`].
#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SignInLimiter {
    /// How long `keys` (an address, a login) must wait, if any of them
    /// failed [`MAX_FAILURES`] times in the window.
    fn wait(&self, keys: &[String]) -> Option<Duration> {
        let mut f = self.failures.lock();
        let now = Instant::now();
        let mut wait = None;
        for k in keys {
            if let Some(q) = f.get_mut(k) {
                while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
                    q.pop_front();
                }
                if q.len() >= MAX_FAILURES
                    && let Some(first) = q.front()
                {
                    let w = WINDOW.saturating_sub(now.duration_since(*first));
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        // Bound the map: forget keys with no failure in the window.
        if f.len() > 100_000 {
            f.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= WINDOW));
        }
        wait
    }

    fn failed(&self, keys: &[String]) {
        let mut f = self.failures.lock();
        for k in keys {
            f.entry(k.clone()).or_default().push_back(Instant::now());
        }
    }
}

/// The sign-in body: a password or an API key.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignIn {
    #[serde(default)]
    login_name: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tailnet: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
}

/// The answer for a signed-in principal.
fn who(principal: &Principal, csrf: &str) -> Value {
    let permissions: Vec<&str> = PERMISSIONS
        .into_iter()
        .filter(|p| principal.role.allows(*p))
        .map(|p| p.name())
        .collect();
    json!({
        "csrfToken": csrf,
        "user": {
            "id": principal.user_id,
            "loginName": principal.login_name,
            "displayName": principal.display_name,
            "role": principal.role.name(),
        },
        "tailnet": { "id": principal.tailnet_id, "name": principal.tailnet_name },
        "permissions": permissions,
        "viaApiKey": !principal.key_id.is_empty(),
    })
}

/// The `Set-Cookie` value for a session (or, with `None`, clearing it).
fn cookie(state: &AppState, session: Option<&NewSession>) -> Result<HeaderValue, ApiError> {
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let v = match session {
        Some(s) => format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            s.token,
            crate::control::sessions::SESSION_NANOS / 1_000_000_000
        ),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).map_err(|e| ApiError::internal(format!("cookie: {e}")))
}

/// The session token of the request's cookie, if any.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A sign-in audit event: `LOGIN` of the user, origin `CONSOLE`, with
/// the error when it was refused.
async fn audit_login(
    state: &AppState,
    tailnet_id: &str,
    actor: Actor,
    remote: Option<String>,
    how: &str,
    error: Option<&str>,
) {
    let target = Target {
        id: actor.id.clone(),
        name: actor.login_name.clone(),
        target_type: "USER".into(),
        property: String::new(),
        is_ephemeral: false,
    };
    let ctx = AuditContext {
        actor,
        origin: Origin::Console,
        remote,
    };
    let event = EventSpec::new("LOGIN", target).details(format!("console sign-in ({how})"));
    let r = match error {
        Some(e) => {
            state
                .control
                .record_refusal(tailnet_id, &ctx, event, e)
                .await
        }
        None => {
            async {
                let mut change = state.control.begin_change(tailnet_id, &ctx).await?;
                change.record(event).await?;
                change.commit().await
            }
            .await
        }
    };
    if let Err(e) = r {
        tracing::error!("recording a sign-in in the audit log failed: {e}");
    }
}

/// Signs `principal` in: a session, its cookie, the answer.
async fn signed_in(
    state: &AppState,
    principal: &Principal,
    remote: Option<String>,
    how: &str,
) -> Result<Response, ApiError> {
    let s = state
        .control
        .open_session(&principal.tailnet_id, &principal.user_id, &principal.key_id)
        .await?;
    audit_login(
        state,
        &principal.tailnet_id,
        principal.actor(),
        remote,
        how,
        None,
    )
    .await;
    let mut resp = Json(who(principal, &s.csrf)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(state, Some(&s))?);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn too_many(wait: Duration) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many failed sign-ins from this address or for this login; try again in {} minutes",
            wait.as_secs().div_ceil(60).max(1)
        ),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Refuses a sign-in another site's page could make in the visitor's
/// browser (login CSRF: signing them in to the attacker's account): a
/// foreign `Origin` or `Sec-Fetch-Site`, or a body not sent as JSON (a
/// plain HTML form cannot send `application/json`).
fn same_site_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(why) = super::auth::foreign_origin(headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("a sign-in from another site is refused ({why})"),
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the sign-in as JSON (Content-Type: application/json)",
        ));
    }
    Ok(())
}

/// `POST /api/v2/session`.
pub async fn sign_in(
    State(state): State<AppState>,
    Extension(RemoteAddr(remote)): Extension<RemoteAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_site_json(&headers)?;
    let req: SignIn = super::json_body(body).await?;
    let address = format!("ip:{}", remote.as_deref().unwrap_or("unknown"));
    if let Some(key) = req.api_key.as_deref().filter(|k| !k.trim().is_empty()) {
        let keys = [address];
        if let Some(w) = state.sign_ins.wait(&keys) {
            return Ok(too_many(w));
        }
        return match state.control.authenticate(key.trim()).await {
            Ok(p) => signed_in(&state, &p, remote, "API key").await,
            Err(e) => {
                state.sign_ins.failed(&keys);
                Err(e.into())
            }
        };
    }
    let (Some(login), Some(password)) = (req.login_name.as_deref(), req.password.as_deref()) else {
        return Err(ApiError::bad_request(
            "give loginName and password, or apiKey",
        ));
    };
    let login = login.trim();
    let keys = [address, format!("login:{}", login.to_lowercase())];
    if let Some(w) = state.sign_ins.wait(&keys) {
        return Ok(too_many(w));
    }
    match state
        .control
        .check_login(login, req.tailnet.as_deref(), password)
        .await
    {
        Ok((tailnet_id, user_id)) => {
            let p = state
                .control
                .session_principal(&tailnet_id, &user_id)
                .await?;
            signed_in(&state, &p, remote, "password").await
        }
        Err(e) => {
            state.sign_ins.failed(&keys);
            if matches!(e, ControlError::Unauthorized(_)) {
                // Recorded in the tailnet of the login, when it names one.
                if let Ok(Some((tailnet_id, actor))) = state
                    .control
                    .login_actor(login, req.tailnet.as_deref())
                    .await
                {
                    audit_login(
                        &state,
                        &tailnet_id,
                        actor,
                        remote,
                        "password",
                        Some("wrong password"),
                    )
                    .await;
                }
                tracing::warn!(login, "a console sign-in was refused");
            }
            Err(e.into())
        }
    }
}

/// `GET /api/v2/session`: who the caller is (by cookie: with the
/// session's CSRF token; by API key: `csrfToken` null).
pub async fn current(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let csrf = match super::auth::key_from_headers(&headers) {
        Some(_) => None,
        None => match session_token(&headers) {
            Some(token) => Some(state.control.session(&token).await?.csrf),
            None => None,
        },
    };
    let mut v = who(&caller.principal, csrf.as_deref().unwrap_or_default());
    if csrf.is_none() {
        v["csrfToken"] = Value::Null;
    }
    let mut resp = Json(v).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `DELETE /api/v2/session`: always clears the cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = session_token(&headers) {
        state.control.close_session(&token).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, None)?);
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Setup {
    token: String,
    password: String,
}

/// `POST /api/v2/session/setup`: a one-time link sets the password and
/// signs in.
pub async fn setup(
    State(state): State<AppState>,
    Extension(RemoteAddr(remote)): Extension<RemoteAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    same_site_json(&headers)?;
    let req: Setup = super::json_body(body).await?;
    let keys = [format!("ip:{}", remote.as_deref().unwrap_or("unknown"))];
    if let Some(w) = state.sign_ins.wait(&keys) {
        return Ok(too_many(w));
    }
    let (tailnet_id, user_id) = match state
        .control
        .complete_setup(req.token.trim(), &req.password, remote.clone())
        .await
    {
        Ok(v) => v,
        Err(e) => {
            if matches!(e, ControlError::Unauthorized(_)) {
                state.sign_ins.failed(&keys);
            }
            return Err(e.into());
        }
    };
    let p = state
        .control
        .session_principal(&tailnet_id, &user_id)
        .await?;
    signed_in(&state, &p, remote, "setup link").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

/// The user a path names, in the caller's tailnet, whom the caller may
/// manage.
async fn managed_user(state: &AppState, caller: &Caller, user_id: &str) -> Result<(), ApiError> {
    let user = state.control.user(caller.tailnet(), user_id).await?;
    if user.id != caller.principal.user_id && !caller.principal.role.may_manage(user.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: your role ({}) may not manage a user whose role is {}",
                caller.principal.role, user.role
            ),
        ));
    }
    Ok(())
}

/// `POST /api/v2/users/{userId}/password`.
pub async fn set_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user_id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: NewPassword = super::json_body(body).await?;
    managed_user(&state, &caller, &user_id).await?;
    state
        .control
        .set_password(caller.tailnet(), &caller.ctx, &user_id, &req.password)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v2/users/{userId}/password-setup`: `{"token", "expires"}`;
/// the link is `<server>/#/setup?token=<token>`.
pub async fn password_setup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    managed_user(&state, &caller, &user_id).await?;
    let (token, expires) = state
        .control
        .password_setup(caller.tailnet(), &caller.ctx, &user_id)
        .await?;
    let mut resp = Json(json!({
        "token": token,
        "path": format!("/#/setup?token={token}"),
        "expires": tally_proto::timefmt::format_nanos(expires),
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
