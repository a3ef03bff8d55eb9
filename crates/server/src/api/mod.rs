//! The route table and its guard. Every route is declared here with what
//! it needs ([`Guard`]); the router is built only from this table, and one
//! middleware authenticates the caller, checks the tailnet in the path and
//! the role's permission before any handler runs, and records refused
//! changes in the audit log. A route missing from the table is refused.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod detection;
pub mod devices;
pub mod keys;
pub mod network;
pub mod pipeline;
pub mod query;
pub mod reconciliation;
pub mod recordings;
pub mod session;
pub mod streams;
pub mod tailnets;
pub mod transparency;
pub mod users;

use crate::api::auth::{Caller, authenticate};
use crate::control::audit::{EventSpec, Target};
use crate::control::model::Permission;
use crate::error::{ApiError, ErrorMessage};
use crate::{AppState, ingest};
use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Nothing (health check).
    Public,
    /// A valid private ID in the path (logs-service ingest, agent reports;
    /// a first registration also needs an auth key).
    PrivateId,
    /// An API key whose role has this permission.
    Role(Permission),
}

/// One route: method, path, guard, and the audit target and action of
/// its refusals.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: Method,
    /// Path pattern (axum syntax).
    pub path: &'static str,
    /// What the caller needs.
    pub guard: Guard,
    /// Audit target type of the change (mutations).
    pub target_type: &'static str,
    /// Audit action of the change (mutations).
    pub action: &'static str,
}

impl RouteSpec {
    /// Whether it is a read that is itself audited (reading a recording).
    pub fn is_audited_read(&self) -> bool {
        self.method == Method::GET && self.action == "READ"
    }

    /// Whether the route changes configuration (and is audited): a
    /// guarded route other than GET that names an audit target (a POST
    /// without one, such as a rule test run, only reads).
    pub fn is_mutation(&self) -> bool {
        self.method != Method::GET
            && self.guard != Guard::PrivateId
            && self.guard != Guard::Public
            && !self.target_type.is_empty()
    }
}

fn r(
    method: Method,
    path: &'static str,
    guard: Guard,
    target_type: &'static str,
    action: &'static str,
    handler: MethodRouter<AppState>,
) -> (RouteSpec, MethodRouter<AppState>) {
    (
        RouteSpec {
            method,
            path,
            guard,
            target_type,
            action,
        },
        handler,
    )
}

/// The routes and their handlers.
pub fn table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Guard::{PrivateId, Public, Role};
    use Method as M;
    use Permission as P;
    vec![
        r(M::GET, "/healthz", Public, "", "", get(|| async { "ok\n" })),
        r(M::GET, "/readyz", Public, "", "", get(pipeline::readyz)),
        // The console's static files (it signs in through /api/v2/session).
        r(M::GET, "/", Public, "", "", get(crate::console::index)),
        r(
            M::GET,
            "/console/{*file}",
            Public,
            "",
            "",
            get(crate::console::file),
        ),
        r(
            M::GET,
            "/metrics",
            Role(P::ServerOperate),
            "",
            "",
            get(crate::metrics::get_metrics),
        ),
        r(
            M::GET,
            "/api/v2/consumers",
            Role(P::ServerOperate),
            "",
            "",
            get(pipeline::list),
        ),
        r(
            M::POST,
            "/api/v2/consumers/{consumer}/pause",
            Role(P::ServerOperate),
            "CONSUMER",
            "UPDATE",
            post(pipeline::pause),
        ),
        r(
            M::POST,
            "/api/v2/consumers/{consumer}/resume",
            Role(P::ServerOperate),
            "CONSUMER",
            "UPDATE",
            post(pipeline::resume),
        ),
        r(
            M::POST,
            "/c/{collection}/{private_id}",
            PrivateId,
            "",
            "",
            post(ingest::post_logs),
        ),
        r(
            M::GET,
            "/c/{collection}",
            Role(P::LogsRead),
            "",
            "",
            get(query::get_logs),
        ),
        r(
            M::GET,
            "/collections",
            Role(P::LogsRead),
            "",
            "",
            get(query::get_collections),
        ),
        r(
            M::POST,
            "/collections",
            Role(P::SettingsWrite),
            "COLLECTION",
            "UPDATE",
            post(admin::post_collections),
        ),
        r(
            M::POST,
            "/instances",
            Role(P::SettingsWrite),
            "COLLECTION",
            "UPDATE",
            post(admin::post_instances),
        ),
        r(
            M::GET,
            "/api/v2/tailnets",
            Role(P::ConfigRead),
            "",
            "",
            get(tailnets::list),
        ),
        r(
            M::POST,
            "/api/v2/tailnets",
            Role(P::TailnetsWrite),
            "TAILNET",
            "CREATE",
            post(tailnets::create),
        ),
        r(
            M::PATCH,
            "/api/v2/tailnet/{tailnet}",
            Role(P::TailnetsWrite),
            "TAILNET",
            "UPDATE",
            patch(tailnets::rename),
        ),
        r(
            M::DELETE,
            "/api/v2/tailnet/{tailnet}",
            Role(P::TailnetsWrite),
            "TAILNET",
            "DELETE",
            delete(tailnets::remove),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/settings",
            Role(P::ConfigRead),
            "",
            "",
            get(tailnets::get_settings),
        ),
        r(
            M::PATCH,
            "/api/v2/tailnet/{tailnet}/settings",
            Role(P::SettingsWrite),
            "TAILNET",
            "UPDATE",
            patch(tailnets::patch_settings),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/keys",
            Role(P::ConfigRead),
            "",
            "",
            get(keys::list),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/keys",
            Role(P::KeysWrite),
            "API_KEY",
            "CREATE",
            post(keys::create),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/keys/{keyId}",
            Role(P::ConfigRead),
            "",
            "",
            get(keys::get_one),
        ),
        r(
            M::DELETE,
            "/api/v2/tailnet/{tailnet}/keys/{keyId}",
            Role(P::KeysWrite),
            "API_KEY",
            "REVOKE",
            delete(keys::revoke),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/devices",
            Role(P::DevicesRead),
            "",
            "",
            get(devices::list),
        ),
        r(
            M::GET,
            "/api/v2/device/{deviceId}",
            Role(P::DevicesRead),
            "",
            "",
            get(devices::get_one),
        ),
        r(
            M::PATCH,
            "/api/v2/device/{deviceId}",
            Role(P::DevicesWrite),
            "NODE",
            "UPDATE",
            patch(devices::update),
        ),
        r(
            M::DELETE,
            "/api/v2/device/{deviceId}",
            Role(P::DevicesWrite),
            "NODE",
            "DELETE",
            delete(devices::remove),
        ),
        r(
            M::POST,
            "/api/v2/device/{deviceId}/name",
            Role(P::DevicesWrite),
            "NODE",
            "UPDATE",
            post(devices::set_name),
        ),
        r(
            M::POST,
            "/api/v2/device/{deviceId}/tags",
            Role(P::DevicesWrite),
            "NODE",
            "UPDATE",
            post(devices::set_tags),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/users",
            Role(P::ConfigRead),
            "",
            "",
            get(users::list),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/users",
            Role(P::UsersWrite),
            "USER",
            "CREATE",
            post(users::create),
        ),
        r(
            M::GET,
            "/api/v2/users/{userId}",
            Role(P::ConfigRead),
            "",
            "",
            get(users::get_one),
        ),
        r(
            M::POST,
            "/api/v2/users/{userId}/role",
            Role(P::UsersWrite),
            "USER",
            "UPDATE",
            post(users::set_role),
        ),
        r(
            M::POST,
            "/api/v2/users/{userId}/delete",
            Role(P::UsersWrite),
            "USER",
            "DELETE",
            post(users::remove),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/configuration",
            Role(P::AuditRead),
            "",
            "",
            get(audit::list),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/detection/rules",
            Role(P::AlertsRead),
            "",
            "",
            get(detection::list_rules),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/detection/rules",
            Role(P::RulesWrite),
            "DETECTION_RULE",
            "CREATE",
            post(detection::add_rule),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/detection/rules/test",
            Role(P::AlertsRead),
            "",
            "",
            post(detection::test_rule),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/detection/rules/{ruleId}",
            Role(P::AlertsRead),
            "",
            "",
            get(detection::get_rule),
        ),
        r(
            M::PUT,
            "/api/v2/tailnet/{tailnet}/detection/rules/{ruleId}",
            Role(P::RulesWrite),
            "DETECTION_RULE",
            "UPDATE",
            put(detection::update_rule),
        ),
        r(
            M::DELETE,
            "/api/v2/tailnet/{tailnet}/detection/rules/{ruleId}",
            Role(P::RulesWrite),
            "DETECTION_RULE",
            "DELETE",
            delete(detection::delete_rule),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/alerts",
            Role(P::AlertsRead),
            "",
            "",
            get(detection::list_alerts),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/alerts/{alertId}/ack",
            Role(P::AlertsWrite),
            "ALERT",
            "UPDATE",
            post(detection::ack_alert),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/stream",
            Role(P::ConfigRead),
            "",
            "",
            get(streams::get),
        ),
        r(
            M::PUT,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/stream",
            Role(P::SettingsWrite),
            "TAILNET",
            "UPDATE",
            put(streams::put),
        ),
        r(
            M::DELETE,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/stream",
            Role(P::SettingsWrite),
            "TAILNET",
            "DELETE",
            delete(streams::delete),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/stream/status",
            Role(P::ConfigRead),
            "",
            "",
            get(streams::status),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/stream/test",
            Role(P::SettingsWrite),
            "",
            "",
            post(streams::test),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams",
            Role(P::ConfigRead),
            "",
            "",
            get(streams::list),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams",
            Role(P::SettingsWrite),
            "TAILNET",
            "CREATE",
            post(streams::create),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams/{streamId}",
            Role(P::ConfigRead),
            "",
            "",
            get(streams::get),
        ),
        r(
            M::PUT,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams/{streamId}",
            Role(P::SettingsWrite),
            "TAILNET",
            "UPDATE",
            put(streams::put),
        ),
        r(
            M::DELETE,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams/{streamId}",
            Role(P::SettingsWrite),
            "TAILNET",
            "DELETE",
            delete(streams::delete),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams/{streamId}/status",
            Role(P::ConfigRead),
            "",
            "",
            get(streams::status),
        ),
        r(
            M::POST,
            "/api/v2/tailnet/{tailnet}/logging/{logType}/streams/{streamId}/test",
            Role(P::SettingsWrite),
            "",
            "",
            post(streams::test),
        ),
        r(
            M::POST,
            "/api/v2/session",
            Public,
            "",
            "",
            post(session::sign_in),
        ),
        r(
            M::GET,
            "/api/v2/session",
            Role(P::DevicesRead),
            "",
            "",
            get(session::current),
        ),
        r(
            M::DELETE,
            "/api/v2/session",
            Public,
            "",
            "",
            delete(session::sign_out),
        ),
        r(
            M::POST,
            "/api/v2/session/setup",
            Public,
            "",
            "",
            post(session::setup),
        ),
        r(
            M::POST,
            "/api/v2/users/{userId}/password",
            Role(P::UsersWrite),
            "USER",
            "UPDATE",
            post(session::set_password),
        ),
        r(
            M::POST,
            "/api/v2/users/{userId}/password-setup",
            Role(P::UsersWrite),
            "USER",
            "CREATE",
            post(session::password_setup),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/recordings",
            Role(P::LogsRead),
            "",
            "",
            get(recordings::list),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/recordings/{recordingId}",
            Role(P::LogsRead),
            "",
            "",
            get(recordings::get),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/recordings/{recordingId}/cast",
            Role(P::LogsRead),
            "RECORDING",
            "READ",
            get(recordings::cast),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/recordings/{recordingId}/chunks",
            Role(P::LogsRead),
            "RECORDING",
            "READ",
            get(recordings::chunks),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/reconciliation",
            Role(P::LogsRead),
            "",
            "",
            get(reconciliation::report),
        ),
        r(
            M::GET,
            "/.well-known/tally/checkpoint",
            Public,
            "",
            "",
            get(transparency::checkpoint),
        ),
        r(
            M::GET,
            "/.well-known/tally/log-key",
            Public,
            "",
            "",
            get(transparency::log_key),
        ),
        r(
            M::GET,
            "/api/v2/log/inclusion",
            Role(P::LogsRead),
            "",
            "",
            get(transparency::inclusion),
        ),
        r(
            M::GET,
            "/api/v2/log/consistency",
            Public,
            "",
            "",
            get(transparency::consistency),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/integrity",
            Role(P::LogsRead),
            "",
            "",
            get(transparency::integrity),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/network",
            Role(P::LogsRead),
            "",
            "",
            get(network::list),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/network/graph",
            Role(P::LogsRead),
            "",
            "",
            get(network::graph),
        ),
        r(
            M::GET,
            "/api/v2/tailnet/{tailnet}/logging/configuration/verify",
            Role(P::AuditRead),
            "",
            "",
            get(audit::verify),
        ),
        r(
            M::POST,
            "/api/v2/agent/{private_id}",
            PrivateId,
            "NODE",
            "CREATE",
            post(devices::agent_report),
        ),
    ]
}

/// The route specs alone (for the permission-matrix test and docs).
pub fn specs() -> Vec<RouteSpec> {
    table().into_iter().map(|(s, _)| s).collect()
}

fn find_spec(method: &Method, path: &str) -> Option<RouteSpec> {
    static SPECS: std::sync::LazyLock<Vec<RouteSpec>> = std::sync::LazyLock::new(specs);
    let method = if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    SPECS
        .iter()
        .find(|s| s.method == *method && s.path == path)
        .cloned()
}

/// The HTTP router: the table's routes behind the guard.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        router = router.route(spec.path, handler);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_http,
        ))
        .fallback(|| async { ApiError::not_found("no such endpoint; see the README for the API") })
        .layer(axum::middleware::from_fn(
            crate::console::no_password_prompt,
        ))
        // Compressed bodies are smaller than the decompressed limit; leave room for headers of incompressible data.
        .layer(axum::extract::DefaultBodyLimit::max(
            tally_proto::logtail::MAX_BODY_BYTES + (64 << 10),
        ))
        .with_state(state)
}

/// The client's address, from the connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The client's IP address as text, when known (request extension set by
/// the guard for every route).
#[derive(Debug, Clone)]
pub struct RemoteAddr(pub Option<String>);

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*s.remote_addr())
    }
}

impl Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>> for ClientAddr {
    fn connect_info(s: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Self(*s.remote_addr())
    }
}

/// The ID of the object a path names (device, user, key), else the tailnet.
fn target_of(params: &[(String, String)], caller: &Caller) -> String {
    params
        .iter()
        .find(|(k, _)| k != "tailnet")
        .map(|(_, v)| v.chars().take(80).collect())
        .unwrap_or_else(|| caller.tailnet().to_owned())
}

async fn refuse(
    state: &AppState,
    spec: &RouteSpec,
    caller: &Caller,
    params: &[(String, String)],
    message: &str,
) {
    let event = EventSpec::new(
        spec.action,
        Target {
            id: target_of(params, caller),
            target_type: spec.target_type.into(),
            ..Target::default()
        },
    )
    .details(format!("{} {}", spec.method, spec.path));
    if let Err(e) = state
        .control
        .record_refusal(caller.tailnet(), &caller.ctx, event, message)
        .await
    {
        tracing::error!("recording a refused change in the audit log failed: {e}");
    }
}

/// Counts every answer of a route by its pattern, method and status.
async fn count_http(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("", |m| m.as_str()).to_owned();
    let method = req.method().clone();
    let resp = next.run(req).await;
    state
        .metrics
        .http_request(&route, method.as_str(), resp.status());
    resp
}

/// The middleware in front of every route.
async fn guard(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let Some(spec) = find_spec(req.method(), path) else {
        tracing::error!(method = %req.method(), path, "route without a guard refused");
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this route has no access rule; refused",
        )
        .into_response();
    };
    let remote = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0.ip().to_string());
    req.extensions_mut().insert(RemoteAddr(remote.clone()));
    let Guard::Role(permission) = spec.guard else {
        return next.run(req).await;
    };
    let caller = match authenticate(&state, req.method(), req.headers(), remote).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let params: Vec<(String, String)> = params
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let denial = if let Some((_, t)) = params.iter().find(|(k, _)| k == "tailnet")
        && t != "-"
        && *t != caller.principal.tailnet_id
        && *t != caller.principal.tailnet_name
    {
        Some(format!(
            "this API key belongs to tailnet {:?}, not {:?}; use '-' or a key of that tailnet",
            caller.principal.tailnet_name,
            t.chars().take(80).collect::<String>()
        ))
    } else if permission == Permission::ServerOperate
        && caller.principal.tailnet_id != state.operator_tailnet
    {
        Some(format!(
            "permission denied: {} belongs to the server's operator (owners and admins of the server's first tailnet); this key's tailnet is {:?}",
            permission.name(),
            caller.principal.tailnet_name
        ))
    } else if !caller.principal.role.allows(permission) {
        Some(format!(
            "permission denied: your role ({}) does not allow {} ({} {}); ask an owner or admin",
            caller.principal.role,
            permission.name(),
            spec.method,
            spec.path
        ))
    } else {
        None
    };
    if let Some(message) = denial {
        if spec.is_mutation() {
            refuse(&state, &spec, &caller, &params, &message).await;
        }
        return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
    }
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    if spec.is_mutation() && resp.status().is_client_error() {
        let message = resp
            .extensions()
            .get::<ErrorMessage>()
            .map_or_else(|| resp.status().to_string(), |m| m.0.clone());
        refuse(&state, &spec, &caller, &params, &message).await;
    }
    resp
}

/// Reads a JSON body of at most 64 KiB into `T` (unknown fields refused).
pub async fn json_body<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = crate::ingest::body::read_limited(body, 64 << 10).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("the body is not valid JSON for this call: {e}"))
    })
}
