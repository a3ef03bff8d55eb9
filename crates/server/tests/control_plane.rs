//! The control plane against a real server, on SQLite and on PostgreSQL:
//! the permission matrix over every route of the route table, one audit
//! event group per mutation, refusals recorded with data unchanged,
//! tamper detection, retention with a verifiable chain, bad input, and
//! tailnet isolation.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Db, Env, OWNER_KEY, start};
use tally_server::api::{Guard, specs};
use tally_server::control::model::{ROLES, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_on_sqlite() {
    suite(&Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_on_postgres() {
    let Some(mut pg) = tally_testkit::postgres::for_tests("control_plane_on_postgres") else {
        return;
    };
    suite(&Db::Postgres(&pg)).await;
    pg.stop(false).expect("PostgreSQL stops");
}

async fn suite(db: &Db<'_>) {
    eprintln!("[{}] permission matrix", db.name());
    permission_matrix(db).await;
    eprintln!("[{}] audit values", db.name());
    audit_values(db).await;
    eprintln!("[{}] tampering", db.name());
    tampering(db).await;
    eprintln!("[{}] retention", db.name());
    retention(db).await;
    eprintln!("[{}] bad input", db.name());
    bad_input(db).await;
    eprintln!("[{}] isolation and registration", db.name());
    isolation_and_registration(db).await;
    eprintln!("[{}] flow-log gating", db.name());
    flow_gating(db).await;
}

/// Flow records are taken only from registered agents (others: 403) and
/// stored only while their tailnet has flow logging on (else answered as
/// final and discarded), and the switch works without a restart.
async fn flow_gating(db: &Db<'_>) {
    let env = start(db).await;
    let ak = env.auth_key(true, &[]).await;
    let private = tally_proto::PrivateId::generate().to_hex();
    let (s, v) = env
        .call(
            &ak,
            Method::POST,
            &format!("/api/v2/agent/{private}"),
            Some(json!({ "hostname": "f1" })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let record = r#"[{"nodeId":"n1","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:05Z"}]"#;
    let post = |pid: String| {
        let http = env.http.clone();
        let url = format!("{}/c/tailtraffic/{pid}", env.base);
        async move { http.post(url).body(record).send().await.expect("sent") }
    };
    let discarded = |v: serde_json::Value| {
        assert_eq!(v["stored"], 0, "{v}");
        assert_eq!(v["discarded"], 1, "{v}");
        assert_eq!(v["reason"], "flow_logging_off", "{v}");
    };
    let resp = post(private.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["tally-discarded"], "1");
    discarded(resp.json().await.expect("json"));
    let resp = post(tally_proto::PrivateId::generate().to_hex()).await;
    assert_eq!(resp.status(), 403);
    assert!(
        resp.text()
            .await
            .expect("body")
            .contains("not a registered node")
    );
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "networkFlowLoggingOn": true })),
        )
        .await;
    assert_eq!(s, 200);
    let resp = post(private.clone()).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "networkFlowLoggingOn": false })),
        )
        .await;
    assert_eq!(s, 200);
    let resp = post(private).await;
    assert_eq!(resp.status(), 200);
    discarded(resp.json().await.expect("json"));
    env.stop().await;
}

/// A stream configuration (a webhook on a port nothing listens on), numbered `n`.
fn stream_config(n: usize) -> Value {
    json!({
        "destinationType": "webhook",
        "url": format!("http://127.0.0.1:9/hook/{n}"),
        "token": format!("signing-key-{n}"),
    })
}

/// A tailnet rule of its own, numbered `n`.
fn own_rule(n: usize) -> String {
    format!(
        "title: Own rule {n}\nid: own-rule-{n}\nlogsource:\n    product: tally\n    service: flows\ndetection:\n    selection:\n        dst_port: {}\n    condition: selection\nlevel: low\n",
        1000 + n % 60000
    )
}

/// Fresh objects for one call of a route, and its path and body.
struct Fixture {
    path: String,
    body: Option<Value>,
}

async fn fixture(
    env: &Env,
    auth_key: &str,
    keyholder: &str,
    method: &Method,
    pattern: &str,
    n: usize,
) -> Fixture {
    let mut path = pattern
        .replace("{tailnet}", "-")
        .replace("{collection}", "tailnode")
        .replace("{consumer}", "flow-index");
    if path.contains("{deviceId}") {
        let id = env.register(auth_key, &format!("node-{n}")).await;
        path = path.replace("{deviceId}", &id);
    }
    if path.contains("{userId}") {
        let (s, u) = env
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/users",
                Some(json!({ "loginName": format!("victim-{n}@example.com") })),
            )
            .await;
        assert_eq!(s, 200, "{u}");
        path = path.replace("{userId}", u["id"].as_str().expect("id"));
    }
    if path.contains("{keyId}") {
        let (s, k) = env
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                Some(json!({ "keyType": "api", "userId": keyholder, "description": format!("victim {n}") })),
            )
            .await;
        assert_eq!(s, 200, "{k}");
        path = path.replace("{keyId}", k["id"].as_str().expect("id"));
    }
    if path.contains("{ruleId}") {
        let (s, r) = env
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/detection/rules",
                Some(json!({ "yaml": own_rule(n) })),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        path = path.replace("{ruleId}", r["id"].as_str().expect("id"));
    }
    if path.contains("{logType}") {
        path = path.replace("{logType}", "network");
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::PUT,
                "/api/v2/tailnet/-/logging/network/stream",
                Some(stream_config(n)),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    if path.contains("{streamId}") {
        // A new destination, or (past a few, the per-type limit being 16)
        // the newest one.
        let (s, all) = env
            .call(
                OWNER_KEY,
                Method::GET,
                "/api/v2/tailnet/-/logging/network/streams",
                None,
            )
            .await;
        assert_eq!(s, 200, "{all}");
        let all = all["streams"].as_array().expect("streams").clone();
        let id = if all.len() >= 8 {
            all.last().expect("a stream")["id"].clone()
        } else {
            let (s, v) = env
                .call(
                    OWNER_KEY,
                    Method::POST,
                    "/api/v2/tailnet/-/logging/network/streams",
                    Some(stream_config(n + 200_000)),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            v["id"].clone()
        };
        path = path.replace("{streamId}", id.as_str().expect("id"));
    }
    if path.contains("{recordingId}") {
        path = path.replace("{recordingId}", &env.add_recording(n).await);
    }
    if path.contains("{alertId}") {
        path = path.replace("{alertId}", &env.raise_alert(n).await);
    }
    if pattern == "/api/v2/log/inclusion" {
        // Record 1 is the log line posted when the matrix starts.
        path.push_str("?seq=1");
    }
    let body = match (method.as_str(), pattern) {
        ("POST", "/collections") => {
            Some(json!({ "collection": format!("c{n}"), "action": "create" }))
        }
        ("POST", "/instances") => Some(json!({
            "collection": "tailnode",
            "instances": [hex::encode(rand::random::<[u8; 32]>())],
        })),
        ("POST", "/api/v2/tailnets") => Some(json!({ "name": format!("tn{n}") })),
        ("PATCH", "/api/v2/tailnet/{tailnet}") => Some(json!({ "name": format!("default{n}") })),
        ("PATCH", "/api/v2/tailnet/{tailnet}/settings") => {
            let (_, cur) = env
                .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/settings", None)
                .await;
            let on = cur["networkFlowLoggingOn"].as_bool().expect("setting");
            Some(json!({ "networkFlowLoggingOn": !on }))
        }
        ("POST", "/api/v2/tailnet/{tailnet}/keys") => {
            Some(json!({ "keyType": "api", "description": format!("k{n}") }))
        }
        ("PATCH", "/api/v2/device/{deviceId}") => {
            Some(json!({ "name": format!("dev{n}"), "tags": [format!("tag:t{n}")] }))
        }
        ("POST", "/api/v2/device/{deviceId}/name") => Some(json!({ "name": format!("dev{n}") })),
        ("POST", "/api/v2/device/{deviceId}/tags") => {
            Some(json!({ "tags": [format!("tag:t{n}")] }))
        }
        ("POST", "/api/v2/tailnet/{tailnet}/users") => {
            Some(json!({ "loginName": format!("user{n}@example.com"), "role": "member" }))
        }
        ("POST", "/api/v2/users/{userId}/role") => Some(json!({ "role": "auditor" })),
        ("POST", "/api/v2/users/{userId}/password") => {
            Some(json!({ "password": format!("a long enough password {n}") }))
        }
        ("POST", "/api/v2/tailnet/{tailnet}/detection/rules") => {
            Some(json!({ "yaml": own_rule(n + 100_000) }))
        }
        ("POST", "/api/v2/tailnet/{tailnet}/detection/rules/test") => {
            Some(json!({ "yaml": own_rule(n), "since": "1h" }))
        }
        ("PUT", "/api/v2/tailnet/{tailnet}/logging/{logType}/stream")
        | ("PUT", "/api/v2/tailnet/{tailnet}/logging/{logType}/streams/{streamId}")
        | ("POST", "/api/v2/tailnet/{tailnet}/logging/{logType}/streams") => {
            Some(stream_config(n + 1))
        }
        ("PUT", "/api/v2/tailnet/{tailnet}/detection/rules/{ruleId}") => {
            Some(json!({ "enabled": false }))
        }
        _ => None,
    };
    Fixture { path, body }
}

/// Every guarded route of the table, for every role: allowed calls
/// succeed (2xx) and record one event group, others get 403 with a clear
/// message and record one refusal. Unauthenticated calls get 401.
async fn permission_matrix(db: &Db<'_>) {
    let env = start(db).await;
    let mut keys = Vec::new();
    for role in ROLES {
        let key = if role == Role::Owner {
            OWNER_KEY.to_owned()
        } else {
            env.user_with_key(&format!("{role}@example.com"), role.name())
                .await
                .1
        };
        keys.push((role, key));
    }
    eprintln!("[{}] acting for another user", db.name());
    acting_for_others(&env, &keys).await;
    // Least powerful first, so that the owner deleting the tailnet comes last.
    keys.reverse();
    let private = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &private).await;
    let resp = env
        .http
        .post(format!("{}/c/tailnode/{private}", env.base))
        .body(r#"{"text":"first record"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let auth_key = env.auth_key(true, &[]).await;
    let (keyholder, _) = env.user_with_key("keyholder@example.com", "member").await;
    // Deleting a tailnet needs another one to exist.
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnets",
            Some(json!({ "name": "spare" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut routes = specs();
    routes.sort_by_key(|s| s.path == "/api/v2/tailnet/{tailnet}" && s.method == Method::DELETE);
    let mut n = 0;
    let mut checked = 0;
    for spec in &routes {
        let Guard::Role(permission) = spec.guard else {
            assert!(
                matches!(spec.guard, Guard::Public | Guard::PrivateId),
                "unexpected guard"
            );
            continue;
        };
        // No key: 401 before anything else.
        n += 1;
        let f = fixture(&env, &auth_key, &keyholder, &spec.method, spec.path, n).await;
        let resp = env
            .http
            .request(spec.method.clone(), format!("{}{}", env.base, f.path))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            resp.status(),
            401,
            "{} {} without a key",
            spec.method,
            spec.path
        );
        for (role, key) in &keys {
            n += 1;
            let f = fixture(&env, &auth_key, &keyholder, &spec.method, spec.path, n).await;
            let before = env.head_seq(&env.tailnet).await;
            let (status, body) = env
                .call(key, spec.method.clone(), &f.path, f.body.clone())
                .await;
            let what = format!("{} {} as {role}: {status} {body}", spec.method, f.path);
            let events = env.events_after(&env.tailnet, before).await;
            if role.allows(permission) {
                assert!((200..300).contains(&status), "allowed call failed: {what}");
                if spec.is_mutation() && spec.path != "/api/v2/tailnets" {
                    assert!(!events.is_empty(), "no audit event for {what}");
                    let group = &events[0]["eventGroupID"];
                    for e in &events {
                        assert_eq!(&e["eventGroupID"], group, "one group per call: {what}");
                        assert!(
                            e.get("error").is_none(),
                            "success recorded as refusal: {what}"
                        );
                        assert_eq!(
                            e["actor"]["loginName"].as_str(),
                            Some(login_of(*role).as_str())
                        );
                    }
                } else if spec.path == "/api/v2/tailnets" && spec.method == Method::POST {
                    let new_id = body["tailnet"]["id"].as_str().expect("new tailnet id");
                    let created = env.events_after(new_id, 0).await;
                    assert!(
                        created
                            .iter()
                            .any(|e| e["action"] == "CREATE" && e["target"]["type"] == "TAILNET")
                    );
                } else if spec.is_audited_read() {
                    assert!(
                        events.len() == 1
                            && events[0]["action"] == "READ"
                            && events[0]["target"]["type"] == spec.target_type,
                        "an audited read is one READ event: {what}: {events:?}"
                    );
                } else {
                    assert!(events.is_empty(), "a read wrote audit events: {what}");
                }
            } else {
                assert_eq!(status, 403, "denied call not refused: {what}");
                let msg = body["error"].as_str().unwrap_or_default();
                assert!(
                    msg.contains("permission denied")
                        && msg.contains(role.name())
                        && msg.contains(permission.name()),
                    "unclear refusal: {what}"
                );
                if spec.is_mutation() {
                    assert_eq!(events.len(), 1, "one refusal event for {what}: {events:?}");
                    assert!(
                        events[0]["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("permission denied"))
                    );
                    assert_eq!(events[0]["target"]["type"], spec.target_type);
                } else {
                    assert!(
                        events.is_empty(),
                        "a refused read wrote audit events: {what}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 7 * 25, "only {checked} route/role pairs checked");
    env.stop().await;
}

// ---------------------------------------------------------------------------
// Acting for another user. The expected outcomes are written out here, from
// the rules in ARCHITECTURE.md ("Roles and permissions"), not taken from the
// server. Rows: the actor's role; columns: the target user's role; both in
// the order owner, admin, network-admin, it-admin, billing-admin, auditor,
// member. `Y` allowed, `.` refused with 403.

/// The roles in the order of the tables' rows and columns.
const ORDER: [&str; 7] = [
    "owner",
    "admin",
    "network-admin",
    "it-admin",
    "billing-admin",
    "auditor",
    "member",
];

/// Creating an API or auth key that acts for the target user: owners for
/// anyone, admins for users below admin, nobody else for another user.
const CREATE_KEY_FOR: [&str; 7] = [
    "YYYYYYY", // owner
    "..YYYYY", // admin
    ".......", // network-admin
    ".......", // it-admin
    ".......", // billing-admin
    ".......", // auditor
    ".......", // member
];

/// Managing users of the target role (`users:write` and the rank rule):
/// creating a user with that role, moving a user from or to it, deleting
/// such a user. A role change needs this for both the old and the new role.
const MANAGE_USER: [&str; 7] = [
    "YYYYYYY", // owner
    ".YYYYYY", // admin
    ".......", // network-admin: no users:write
    "..YYYYY", // it-admin: not owner (tailnets:write), not admin (settings:write)
    ".......", // billing-admin
    ".......", // auditor
    ".......", // member
];

/// Revoking a key of the target user (`keys:write` and the rank rule).
const REVOKE_KEY_OF: [&str; 7] = [
    "YYYYYYY", // owner
    ".YYYYYY", // admin
    "..Y.YYY", // network-admin: not it-admin (devices:write, users:write)
    "..YYYYY", // it-admin
    ".......", // billing-admin
    ".......", // auditor
    ".......", // member
];

/// Each role's permissions (the matrix of ARCHITECTURE.md, written out).
const HAS: [(&str, &[&str]); 7] = [
    (
        "owner",
        &[
            "logs:read",
            "alerts:read",
            "audit:read",
            "config:read",
            "devices:read",
            "settings:write",
            "alerts:write",
            "rules:write",
            "devices:write",
            "keys:write",
            "users:write",
            "tailnets:write",
        ],
    ),
    (
        "admin",
        &[
            "logs:read",
            "alerts:read",
            "audit:read",
            "config:read",
            "devices:read",
            "settings:write",
            "alerts:write",
            "rules:write",
            "devices:write",
            "keys:write",
            "users:write",
        ],
    ),
    (
        "network-admin",
        &[
            "logs:read",
            "alerts:read",
            "audit:read",
            "config:read",
            "devices:read",
            "alerts:write",
            "keys:write",
        ],
    ),
    (
        "it-admin",
        &[
            "logs:read",
            "alerts:read",
            "audit:read",
            "config:read",
            "devices:read",
            "alerts:write",
            "devices:write",
            "keys:write",
            "users:write",
        ],
    ),
    (
        "billing-admin",
        &["audit:read", "config:read", "devices:read"],
    ),
    (
        "auditor",
        &[
            "logs:read",
            "alerts:read",
            "audit:read",
            "config:read",
            "devices:read",
        ],
    ),
    ("member", &["devices:read"]),
];

/// One call that needs each permission: (permission, method, path, body).
/// Allowed, the call fails after the guard (400/404) or reads (200) and
/// changes nothing; refused, it is a 403.
fn probes() -> Vec<(&'static str, Method, &'static str, Option<Value>)> {
    vec![
        ("logs:read", Method::GET, "/collections", None),
        ("alerts:read", Method::GET, "/api/v2/tailnet/-/alerts", None),
        (
            "alerts:write",
            Method::POST,
            "/api/v2/tailnet/-/alerts/no-such-alert/ack",
            None,
        ),
        (
            "rules:write",
            Method::DELETE,
            "/api/v2/tailnet/-/detection/rules/no-such-rule",
            None,
        ),
        (
            "audit:read",
            Method::GET,
            "/api/v2/tailnet/-/logging/configuration?limit=1",
            None,
        ),
        ("config:read", Method::GET, "/api/v2/tailnet/-/users", None),
        (
            "devices:read",
            Method::GET,
            "/api/v2/tailnet/-/devices",
            None,
        ),
        (
            "settings:write",
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "noSuchSetting": 1 })),
        ),
        (
            "devices:write",
            Method::DELETE,
            "/api/v2/device/nNoSuchDevice",
            None,
        ),
        (
            "keys:write",
            Method::DELETE,
            "/api/v2/tailnet/-/keys/kNoSuchKey",
            None,
        ),
        (
            "users:write",
            Method::POST,
            "/api/v2/users/uNoSuchUser/delete",
            None,
        ),
        (
            "tailnets:write",
            Method::POST,
            "/api/v2/tailnets",
            Some(json!({ "name": "Not A Valid Name" })),
        ),
    ]
}

fn idx(role: &str) -> usize {
    ORDER
        .iter()
        .position(|r| *r == role)
        .expect("role in the table")
}

fn allowed(table: &[&str; 7], actor: &str, target: &str) -> bool {
    table[idx(actor)].as_bytes()[idx(target)] == b'Y'
}

fn has(role: &str, permission: &str) -> bool {
    HAS.iter()
        .find(|(r, _)| *r == role)
        .is_some_and(|(_, p)| p.contains(&permission))
}

/// Calls as `actor` and checks the outcome: `expect` is the status wanted
/// (2xx as 200); a refusal is a clear `{"error"}` naming the actor's role
/// (and the target's, when the rank rule refused), recorded as one
/// refusal event; a success is recorded as the actor's.
#[allow(clippy::too_many_arguments)]
async fn act(
    env: &Env,
    actor: (&str, &str),
    target_role: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    expect: u16,
    what: &str,
) -> Value {
    let (actor_role, key) = actor;
    let before = env.head_seq(&env.tailnet).await;
    let (s, v) = env.call(key, method, path, body).await;
    let what = format!("{actor_role} {what} ({target_role}): {s} {v}");
    let got = if (200..300).contains(&s) { 200 } else { s };
    assert_eq!(got, expect, "{what}");
    let events = env.last_events_after(&env.tailnet, before).await;
    if got == 200 {
        assert!(!events.is_empty(), "no audit event: {what}");
        for e in &events {
            assert!(
                e.get("error").is_none(),
                "success recorded as refusal: {what}"
            );
            assert_eq!(
                e["actor"]["loginName"].as_str(),
                Some(actor_login(actor_role).as_str()),
                "{what}"
            );
        }
    } else {
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.len() > 20, "unclear refusal: {what}");
        if got == 403 {
            assert!(
                msg.contains(actor_role),
                "refusal names the actor's role: {what}"
            );
            if !msg.contains("permission denied") {
                assert!(
                    msg.contains(target_role),
                    "refusal names the target's role: {what}"
                );
            }
        }
        assert_eq!(events.len(), 1, "one refusal event: {what}: {events:?}");
        assert_eq!(events[0]["error"].as_str(), Some(msg), "{what}");
    }
    v
}

fn actor_login(role: &str) -> String {
    if role == "owner" {
        "admin".into()
    } else {
        format!("{role}@example.com")
    }
}

/// A key made for another user does nothing its creator could not do, and
/// does what its user may do.
async fn key_stays_within_its_creator(env: &Env, key: &str, creator: &str, user_role: &str) {
    for (permission, method, path, body) in probes() {
        let (s, v) = env.call(key, method.clone(), path, body).await;
        let what = format!("{method} {path} with a key {creator} made for {user_role}: {s} {v}");
        if !has(creator, permission) || !has(user_role, permission) {
            assert_eq!(s, 403, "{what}");
            assert!(
                v["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("permission denied") && m.contains(permission)),
                "{what}"
            );
        } else {
            assert_ne!(s, 403, "{what}");
            assert_ne!(s, 401, "{what}");
        }
    }
}

/// Every ordered pair of (actor role, target role): creating an API and an
/// auth key for the target, changing the target's role to every role,
/// revoking the target's key, deleting the target; creating a user of every
/// role; raising one's own role. Then: a key made for another user follows
/// its creator's and its user's roles (promotion, demotion, deletion).
async fn acting_for_others(env: &Env, actors: &[(Role, String)]) {
    let mut n = 0;
    for (actor_role, key) in actors {
        let a = actor_role.name();
        let actor = (a, key.as_str());
        for t in ORDER {
            n += 1;
            // Creating a user with role t.
            let expect = if allowed(&MANAGE_USER, a, t) {
                200
            } else {
                403
            };
            act(
                env,
                actor,
                t,
                Method::POST,
                "/api/v2/tailnet/-/users",
                Some(json!({ "loginName": format!("made-{n}@example.com"), "role": t })),
                expect,
                "creates a user",
            )
            .await;
            // A fresh target with a key of its own.
            let (uid, _) = env
                .user_with_key(&format!("target-{n}@example.com"), t)
                .await;
            let (_, keys) = env
                .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/keys", None)
                .await;
            let target_key = keys["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .find(|k| k["userId"] == json!(uid))
                .expect("the target's key")["id"]
                .as_str()
                .expect("key id")
                .to_owned();
            // Keys for the target.
            let expect = if allowed(&CREATE_KEY_FOR, a, t) {
                200
            } else {
                403
            };
            let made = act(
                env,
                actor,
                t,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                Some(json!({ "keyType": "api", "userId": uid, "description": "for another" })),
                expect,
                "creates an API key for another user",
            )
            .await;
            if expect == 200 {
                assert_eq!(made["userId"], json!(uid));
                let secret = made["key"].as_str().expect("secret");
                key_stays_within_its_creator(env, secret, a, t).await;
            }
            act(
                env,
                actor,
                t,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                Some(json!({
                    "userId": uid,
                    "capabilities": { "devices": { "create": { "reusable": true } } },
                })),
                expect,
                "creates an auth key for another user",
            )
            .await;
            // Role changes of the target, to every role.
            for r in ORDER {
                let expect = if allowed(&MANAGE_USER, a, t) && allowed(&MANAGE_USER, a, r) {
                    if r == t { 409 } else { 200 }
                } else {
                    403
                };
                act(
                    env,
                    actor,
                    t,
                    Method::POST,
                    &format!("/api/v2/users/{uid}/role"),
                    Some(json!({ "role": r })),
                    expect,
                    &format!("changes a user into {r}"),
                )
                .await;
                if expect == 200 {
                    let (s, v) = env
                        .call(
                            OWNER_KEY,
                            Method::POST,
                            &format!("/api/v2/users/{uid}/role"),
                            Some(json!({ "role": t })),
                        )
                        .await;
                    assert_eq!(s, 200, "{v}");
                }
            }
            // Revoking the target's key, then deleting the target.
            let expect = if allowed(&REVOKE_KEY_OF, a, t) {
                200
            } else {
                403
            };
            act(
                env,
                actor,
                t,
                Method::DELETE,
                &format!("/api/v2/tailnet/-/keys/{target_key}"),
                None,
                expect,
                "revokes another user's key",
            )
            .await;
            let expect = if allowed(&MANAGE_USER, a, t) {
                200
            } else {
                403
            };
            act(
                env,
                actor,
                t,
                Method::POST,
                &format!("/api/v2/users/{uid}/delete"),
                None,
                expect,
                "deletes a user",
            )
            .await;
        }
        // Raising one's own role is refused unless the actor manages the
        // new role (which is never above its own).
        let (_, users) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/users", None)
            .await;
        let my_id = users["users"]
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["loginName"] == json!(actor_login(a)))
            .and_then(|u| u["id"].as_str())
            .expect("the actor's user")
            .to_owned();
        for r in ORDER {
            if !(allowed(&MANAGE_USER, a, a) && allowed(&MANAGE_USER, a, r)) {
                act(
                    env,
                    actor,
                    a,
                    Method::POST,
                    &format!("/api/v2/users/{my_id}/role"),
                    Some(json!({ "role": r })),
                    403,
                    &format!("changes its own role into {r}"),
                )
                .await;
            }
        }
    }

    // The issue's attack, spelled out: a network-admin makes a key for an
    // it-admin and raises its own role with it.
    let (net_id, net_key) = env
        .user_with_key("escalating-net@example.com", "network-admin")
        .await;
    let (it_id, _) = env
        .user_with_key("escalation-it@example.com", "it-admin")
        .await;
    let (s, v) = env
        .call(
            &net_key,
            Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "keyType": "api", "userId": it_id })),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["key"].is_null());
    let (s, v) = env
        .call(
            &net_key,
            Method::POST,
            &format!("/api/v2/users/{net_id}/role"),
            Some(json!({ "role": "it-admin" })),
        )
        .await;
    assert_eq!(s, 403, "{v}");

    // A key made for another user follows its creator's and its user's roles.
    let (admin_id, admin_key) = env.user_with_key("creator@example.com", "admin").await;
    let (member_id, _) = env.user_with_key("delegate@example.com", "member").await;
    let (s, made) = env
        .call(
            &admin_key,
            Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "keyType": "api", "userId": member_id })),
        )
        .await;
    assert_eq!(s, 200, "{made}");
    let delegated = made["key"].as_str().expect("secret").to_owned();
    let works = |expect: u16, hint: &'static str| {
        let delegated = delegated.clone();
        async move {
            let (s, v) = env
                .call(&delegated, Method::GET, "/api/v2/tailnet/-/devices", None)
                .await;
            assert_eq!(s, expect, "{v}");
            if expect == 401 {
                assert!(v["error"].as_str().is_some_and(|m| m.contains(hint)), "{v}");
            }
        }
    };
    let set_role = |id: String, role: &'static str| async move {
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::POST,
                &format!("/api/v2/users/{id}/role"),
                Some(json!({ "role": role })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    };
    works(200, "").await;
    // Its user promoted beyond what the creator may make keys for: the key
    // stops acting (an admin makes no key for an admin) until demoted again.
    set_role(member_id.clone(), "admin").await;
    works(401, "may not create keys for an admin").await;
    set_role(member_id.clone(), "member").await;
    works(200, "").await;
    // Its creator demoted: the keys it made for others stop acting.
    set_role(admin_id.clone(), "it-admin").await;
    works(401, "who is now an it-admin").await;
    set_role(admin_id.clone(), "admin").await;
    works(200, "").await;
    // Its creator deleted: the keys it made for others are revoked with it.
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            &format!("/api/v2/users/{admin_id}/delete"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    works(401, "revoked").await;
}

fn login_of(role: Role) -> String {
    if role == Role::Owner {
        "admin".into()
    } else {
        format!("{role}@example.com")
    }
}

/// Old/new values, one group for a two-property change, no secrets, and a
/// refused change leaves data unchanged and is recorded.
async fn audit_values(db: &Db<'_>) {
    let env = start(db).await;
    let t = env.tailnet.clone();

    let before = env.head_seq(&t).await;
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "networkFlowLoggingOn": true, "flowsRetentionDays": 45 })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ev = env.events_after(&t, before).await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["eventGroupID"], ev[1]["eventGroupID"]);
    let flow = ev
        .iter()
        .find(|e| e["target"]["property"] == "networkFlowLoggingOn")
        .expect("flow event");
    assert_eq!(
        (flow["action"].as_str(), &flow["old"], &flow["new"]),
        (Some("ENABLE"), &json!(false), &json!(true))
    );
    let ret = ev
        .iter()
        .find(|e| e["target"]["property"] == "flowsRetentionDays")
        .expect("retention event");
    assert_eq!(
        (ret["action"].as_str(), &ret["old"], &ret["new"]),
        (Some("UPDATE"), &json!(30), &json!(45))
    );
    assert_eq!(ret["origin"], "API");
    assert_eq!(ret["type"], "CONFIG");

    // Rename and retag in one call: one group, two events.
    let ak = env.auth_key(false, &["tag:web"]).await;
    let node = env.register(&ak, "web1.example.com").await;
    let before = env.head_seq(&t).await;
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PATCH,
            &format!("/api/v2/device/{node}"),
            Some(json!({ "name": "web-one", "tags": ["tag:web", "tag:prod"] })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ev = env.events_after(&t, before).await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["eventGroupID"], ev[1]["eventGroupID"]);
    assert_eq!(
        (&ev[0]["target"]["property"], &ev[0]["old"], &ev[0]["new"]),
        (&json!("name"), &json!("web1"), &json!("web-one"))
    );
    assert_eq!(
        (&ev[1]["target"]["property"], &ev[1]["old"], &ev[1]["new"]),
        (
            &json!("tags"),
            &json!(["tag:web"]),
            &json!(["tag:web", "tag:prod"])
        )
    );

    // A role change with the CLI origin.
    let (uid, _) = env.user_with_key("carol@example.com", "member").await;
    let before = env.head_seq(&t).await;
    let resp = env
        .http
        .post(format!("{}/api/v2/users/{uid}/role", env.base))
        .bearer_auth(OWNER_KEY)
        .header("Tally-Origin", "CLI")
        .json(&json!({ "role": "it-admin" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let ev = env.events_after(&t, before).await;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (&ev[0]["old"], &ev[0]["new"], &ev[0]["origin"]),
        (&json!("member"), &json!("it-admin"), &json!("CLI"))
    );

    // No secret in any event.
    let (s, k) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "keyType": "api", "description": "ci" })),
        )
        .await;
    assert_eq!(s, 200);
    let secret = k["key"].as_str().expect("secret");
    let all = env.events_after(&t, 0).await;
    let text = serde_json::to_string(&all).expect("json");
    assert!(
        !text.contains(secret) && !text.contains(OWNER_KEY) && !text.contains(&ak),
        "a secret is in the audit log"
    );
    assert!(k["id"].as_str().is_some_and(|id| text.contains(id)));

    // Refused changes: data unchanged, one refusal event each.
    let refused: [(Method, String, Value, u16); 4] = [
        (
            Method::POST,
            format!("/api/v2/device/{node}/name"),
            json!({ "name": "bad name!" }),
            400,
        ),
        (
            Method::PATCH,
            "/api/v2/tailnet/-/settings".into(),
            json!({ "auditRetentionDays": 30 }),
            400,
        ),
        (
            Method::POST,
            format!(
                "/api/v2/users/{}/role",
                env.control.first_owner(&t).await.expect("owner")
            ),
            json!({ "role": "member" }),
            409,
        ),
        (
            Method::DELETE,
            "/api/v2/tailnet/-/keys/knonexistent".into(),
            Value::Null,
            404,
        ),
    ];
    for (method, path, body, want) in refused {
        let (_, devices_before) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/devices", None)
            .await;
        let (_, settings_before) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/settings", None)
            .await;
        let (_, users_before) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/users", None)
            .await;
        let before = env.head_seq(&t).await;
        let body = (!body.is_null()).then_some(body);
        let (s, v) = env.call(OWNER_KEY, method.clone(), &path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        let msg = v["error"].as_str().expect("error message");
        let ev = env.events_after(&t, before).await;
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["error"].as_str(), Some(msg));
        assert!(ev[0].get("new").is_none());
        assert_eq!(
            env.call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/devices", None)
                .await
                .1,
            devices_before
        );
        assert_eq!(
            env.call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/settings", None)
                .await
                .1,
            settings_before
        );
        assert_eq!(
            env.call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/users", None)
                .await
                .1,
            users_before
        );
    }

    // Filters: actor, action, target, property, free text, paging, time.
    let q = |p: &str| format!("/api/v2/tailnet/-/logging/configuration?{p}");
    let (_, v) = env
        .call(OWNER_KEY, Method::GET, &q("action=ENABLE"), None)
        .await;
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["tailnetId"], json!(t));
    assert_eq!(v["version"], "1.1");
    let (_, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &q("targetType=NODE&property=tags"),
            None,
        )
        .await;
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = env
        .call(OWNER_KEY, Method::GET, &q("q=WEB-ONE"), None)
        .await;
    assert!(
        v["logs"].as_array().is_some_and(|l| !l.is_empty()
            && l.iter()
                .all(|e| e.to_string().to_lowercase().contains("web-one"))),
        "{v}"
    );
    let (_, v) = env
        .call(OWNER_KEY, Method::GET, &q("actor=nobody@example.com"), None)
        .await;
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(0));
    let total = env.events_after(&t, 0).await.len();
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let p = match before {
            Some(b) => q(&format!("limit=3&before={b}")),
            None => q("limit=3"),
        };
        let (s, v) = env.call(OWNER_KEY, Method::GET, &p, None).await;
        assert_eq!(s, 200, "{v}");
        for e in v["logs"].as_array().expect("logs") {
            seen.push(e["seq"].as_i64().expect("seq"));
        }
        match v["nextBefore"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen.len(), total);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {seen:?}"
    );
    let (_, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &q("start=2000-01-01T00:00:00Z&end=2000-01-02T00:00:00Z"),
            None,
        )
        .await;
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(0));
    env.stop().await;
}

/// Edited, deleted, swapped and cut-off events are reported at the right place.
async fn tampering(db: &Db<'_>) {
    let env = start(db).await;
    let t = env.tailnet.clone();
    for i in 0..6 {
        env.user_with_key(&format!("u{i}@example.com"), "member")
            .await;
    }
    let v = env.verify().await;
    assert_eq!(v["intact"], true, "{v}");
    let n = v["events"].as_i64().expect("events");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("intact, {n} events, head ")))
    );
    let pool = env.control.pool();
    let row = |seq: i64| {
        let t = t.clone();
        async move {
            let r: (String, String, String, String) = {
                use sqlx::Row;
                let r = sqlx::query("SELECT body, prev_hash, hash, actor_login FROM audit_events WHERE tailnet_id = $1 AND seq = $2")
                    .bind(&t)
                    .bind(seq)
                    .fetch_one(pool)
                    .await
                    .expect("row");
                (r.get(0), r.get(1), r.get(2), r.get(3))
            };
            r
        }
    };
    let set = |seq: i64, body: String, prev: String, hash: String| {
        let t = t.clone();
        async move {
            sqlx::query("UPDATE audit_events SET body = $1, prev_hash = $2, hash = $3 WHERE tailnet_id = $4 AND seq = $5")
                .bind(body)
                .bind(prev)
                .bind(hash)
                .bind(&t)
                .bind(seq)
                .execute(pool)
                .await
                .expect("update");
        }
    };
    let broken_at = |v: &Value| v["brokenAt"]["seq"].as_i64();

    // 1. Edit a field of event 5.
    let (body5, prev5, hash5, _) = row(5).await;
    set(
        5,
        body5.replace("\"CREATE\"", "\"DELETE\""),
        prev5.clone(),
        hash5.clone(),
    )
    .await;
    let v = env.verify().await;
    assert_eq!(
        (v["intact"].as_bool(), broken_at(&v)),
        (Some(false), Some(5)),
        "{v}"
    );
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("edited")),
        "{v}"
    );
    set(5, body5.clone(), prev5.clone(), hash5.clone()).await;
    assert_eq!(env.verify().await["intact"], true);

    // 2. Edit only an indexed column (what filters see).
    let (_, _, _, original6) = row(6).await;
    sqlx::query(
        "UPDATE audit_events SET actor_login = 'mallory' WHERE tailnet_id = $1 AND seq = 6",
    )
    .bind(&t)
    .execute(pool)
    .await
    .expect("update");
    let v = env.verify().await;
    assert_eq!(broken_at(&v), Some(6), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("column actor_login differs")),
        "{v}"
    );
    sqlx::query("UPDATE audit_events SET actor_login = $2 WHERE tailnet_id = $1 AND seq = 6")
        .bind(&t)
        .bind(&original6)
        .execute(pool)
        .await
        .expect("update");
    assert_eq!(env.verify().await["intact"], true);

    // 3. Swap events 7 and 8 (contents change places, positions stay).
    let (b7, p7, h7, _) = row(7).await;
    let (b8, p8, h8, _) = row(8).await;
    set(7, b8.clone(), p8.clone(), h8.clone()).await;
    set(8, b7.clone(), p7.clone(), h7.clone()).await;
    let v = env.verify().await;
    assert_eq!(broken_at(&v), Some(7), "{v}");
    set(7, b7, p7, h7).await;
    set(8, b8, p8, h8).await;
    assert_eq!(env.verify().await["intact"], true);

    // 4. Delete event 4.
    sqlx::query("DELETE FROM audit_events WHERE tailnet_id = $1 AND seq = 4")
        .bind(&t)
        .execute(pool)
        .await
        .expect("delete");
    let v = env.verify().await;
    assert_eq!(broken_at(&v), Some(4), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("#4 is missing")),
        "{v}"
    );

    // 5. Delete the newest event (on a fresh server: the head no longer matches).
    env.stop().await;
    let env = start(db).await;
    let t = env.tailnet.clone();
    env.user_with_key("z@example.com", "member").await;
    let head = env.head_seq(&t).await;
    sqlx::query("DELETE FROM audit_events WHERE tailnet_id = $1 AND seq = $2")
        .bind(&t)
        .bind(head)
        .execute(env.control.pool())
        .await
        .expect("delete");
    let v = env.verify().await;
    assert_eq!(broken_at(&v), Some(head), "{v}");
    env.stop().await;
}

/// A cut at the retention horizon leaves a verifiable chain and a SYSTEM event.
async fn retention(db: &Db<'_>) {
    use tally_server::control::audit::{AuditContext, EventSpec, Target};
    let env = start(db).await;
    let t = env.tailnet.clone();
    let day = 86_400_000_000_000i64;
    let t0 = tally_proto::timefmt::now_nanos();
    let old = env.head_seq(&t).await;
    // Events 50 days later (the chain's times only rise).
    let mut change = env
        .control
        .begin_change(&t, &AuditContext::system())
        .await
        .expect("change");
    for i in 0..3 {
        let target = Target {
            id: format!("x{i}"),
            target_type: "NODE".into(),
            ..Target::default()
        };
        change
            .record_at(EventSpec::new("UPDATE", target), t0 + 50 * day)
            .await
            .expect("record");
    }
    change.commit().await.expect("commit");
    // Nothing is 90 days old yet.
    assert_eq!(
        env.control
            .audit_retention(t0 + 60 * day)
            .await
            .expect("retention"),
        0
    );
    // 100 days on, the first `old` events are past 90 days; the 3 later ones are not.
    let removed = env
        .control
        .audit_retention(t0 + 100 * day)
        .await
        .expect("retention");
    assert_eq!(removed, old as u64);
    let v = env.verify().await;
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["anchorSeq"].as_i64(), Some(old));
    assert_eq!(
        v["events"].as_i64(),
        Some(4),
        "3 kept + the SYSTEM event: {v}"
    );
    let ev = env.events_after(&t, 0).await;
    let sys = ev.last().expect("system event");
    assert_eq!(
        (&sys["origin"], &sys["actor"]["type"], &sys["action"]),
        (&json!("SYSTEM"), &json!("SYSTEM"), &json!("DELETE"))
    );
    assert_eq!(sys["new"]["removedEvents"].as_i64(), Some(old));
    // New events after the cut chain on; deleting the first kept one is caught.
    env.user_with_key("after@example.com", "member").await;
    assert_eq!(env.verify().await["intact"], true);
    sqlx::query("DELETE FROM audit_events WHERE tailnet_id = $1 AND seq = $2")
        .bind(&t)
        .bind(old + 1)
        .execute(env.control.pool())
        .await
        .expect("delete");
    let v = env.verify().await;
    assert_eq!(v["brokenAt"]["seq"].as_i64(), Some(old + 1), "{v}");
    env.stop().await;
}

/// Malformed JSON, unknown fields, overlong names, SQL-looking strings and
/// invalid time ranges: a clear 4xx, nothing changed, refusal recorded.
async fn bad_input(db: &Db<'_>) {
    let env = start(db).await;
    let t = env.tailnet.clone();
    let ak = env.auth_key(true, &[]).await;
    let node = env.register(&ak, "db1").await;
    let (uid, _) = env.user_with_key("dave@example.com", "member").await;
    let long = "x".repeat(300);
    let cases: Vec<(Method, String, String)> = vec![
        (
            Method::PATCH,
            "/api/v2/tailnet/-/settings".into(),
            "{".into(),
        ),
        (
            Method::PATCH,
            "/api/v2/tailnet/-/settings".into(),
            r#"{"networkFlowLoggingOn": "yes"}"#.into(),
        ),
        (
            Method::PATCH,
            "/api/v2/tailnet/-/settings".into(),
            r#"{"devicesApprovalOn": true}"#.into(),
        ),
        (
            Method::PATCH,
            "/api/v2/tailnet/-/settings".into(),
            r#"["networkFlowLoggingOn"]"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/users".into(),
            r#"{"loginName":"eve@example.com","bogus":1}"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/users".into(),
            format!(r#"{{"loginName":"{long}"}}"#),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/users".into(),
            r#"{"loginName":"x'; DROP TABLE users; --"}"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/users".into(),
            r#"{"loginName":"eve@example.com","role":"superuser"}"#.into(),
        ),
        (
            Method::POST,
            format!("/api/v2/device/{node}/name"),
            r#"{"name":"db1'); DELETE FROM nodes; --"}"#.into(),
        ),
        (
            Method::POST,
            format!("/api/v2/device/{node}/name"),
            format!(r#"{{"name":"{long}"}}"#),
        ),
        (
            Method::POST,
            format!("/api/v2/device/{node}/tags"),
            r#"{"tags":["tag:ok","tag:x' OR '1'='1"]}"#.into(),
        ),
        (
            Method::POST,
            format!("/api/v2/device/{node}/tags"),
            r#"{"tags":"tag:a"}"#.into(),
        ),
        (
            Method::POST,
            format!("/api/v2/users/{uid}/role"),
            r#"{"role":""}"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/keys".into(),
            r#"{"keyType":"api","expirySeconds":-5}"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/keys".into(),
            r#"{"keyType":"root"}"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnet/-/keys".into(),
            format!(r#"{{"keyType":"api","description":"{long}"}}"#),
        ),
        (
            Method::POST,
            "/api/v2/tailnets".into(),
            r#"{"name":"Bad Name"}"#.into(),
        ),
        (
            Method::POST,
            "/api/v2/tailnets".into(),
            format!(r#"{{"name":"{long}"}}"#),
        ),
        (
            Method::POST,
            "/collections".into(),
            r#"{"collection":"bad name","action":"create"}"#.into(),
        ),
        (
            Method::POST,
            "/instances".into(),
            r#"{"collection":"tailnode","instances":"zz"}"#.into(),
        ),
    ];
    for (method, path, body) in cases {
        let state = snapshot(&env).await;
        let before = env.head_seq(&t).await;
        let (s, v) = env.call_raw(OWNER_KEY, method.clone(), &path, &body).await;
        let what = format!(
            "{method} {path} {}: {s} {v}",
            body.chars().take(60).collect::<String>()
        );
        // 403 is the logs-service protocol's answer to an invalid collection name.
        let not_a_denial = s != 403 || !v.to_string().contains("permission denied");
        assert!(
            (400..500).contains(&s) && s != 401 && not_a_denial,
            "{what}"
        );
        assert!(
            v["error"].as_str().is_some_and(|m| m.len() > 10),
            "unclear error: {what}"
        );
        assert_eq!(snapshot(&env).await, state, "data changed: {what}");
        let ev = env.events_after(&t, before).await;
        assert!(
            ev.len() == 1 && ev[0]["error"].is_string(),
            "refusal not recorded: {what} {ev:?}"
        );
    }
    // Queries: invalid ranges and values are 400; SQL in filters matches nothing.
    for p in [
        "start=yesterday",
        "start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
        "limit=0",
        "limit=100000",
        "before=-1",
        "bogus=1",
    ] {
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::GET,
                &format!("/api/v2/tailnet/-/logging/configuration?{p}"),
                None,
            )
            .await;
        assert_eq!(s, 400, "{p}: {v}");
    }
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/logging/configuration?actor=%27%20OR%201%3D1%20--&q=%25",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["logs"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(env.verify().await["intact"], true);
    env.stop().await;
}

/// Keys act in their own tailnet only; registration needs a valid auth key.
async fn isolation_and_registration(db: &Db<'_>) {
    let env = start(db).await;
    let ak = env.auth_key(false, &["tag:ci"]).await;
    let node = env.register(&ak, "ci1").await;
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnets",
            Some(json!({ "name": "other" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let other_key = v["ownerKey"]["key"].as_str().expect("owner key").to_owned();
    // The other tailnet's owner sees nothing of the default tailnet.
    let (s, v) = env
        .call(
            &other_key,
            Method::GET,
            "/api/v2/tailnet/default/devices",
            None,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|m| m.contains("belongs to tailnet"))
    );
    let (s, _) = env
        .call(
            &other_key,
            Method::GET,
            &format!("/api/v2/device/{node}"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Its own (empty) built-in collections, none of the default tailnet's
    // entries or instances.
    let (s, v) = env.call(&other_key, Method::GET, "/c/tailnode", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 0, "{v}");
    let (_, v) = env
        .call(&other_key, Method::GET, "/collections", None)
        .await;
    let collections = v["collections"].as_object().expect("collections");
    assert!(collections.contains_key("tailnode"), "{v}");
    assert!(
        collections
            .values()
            .all(|c| c["instances"].as_object().is_none_or(|i| i.is_empty())),
        "{v}"
    );
    let (_, v) = env
        .call(&other_key, Method::GET, "/api/v2/tailnet/-/devices", None)
        .await;
    assert_eq!(v["devices"], json!([]));
    // The default tailnet is reachable by ID, by name and as '-'.
    for t in ["-", "default", env.tailnet.as_str()] {
        let (s, _) = env
            .call(
                OWNER_KEY,
                Method::GET,
                &format!("/api/v2/tailnet/{t}/devices"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{t}");
    }
    // Registration: no key, an API key, a used one-off key, a revoked key.
    let reg = json!({ "hostname": "n2" });
    let fresh = || {
        format!(
            "/api/v2/agent/{}",
            tally_proto::PrivateId::generate().to_hex()
        )
    };
    let resp = env
        .http
        .post(format!("{}{}", env.base, fresh()))
        .json(&reg)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
    let (s, v) = env
        .call(OWNER_KEY, Method::POST, &fresh(), Some(reg.clone()))
        .await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains("auth key")));
    let (s, v) = env
        .call(&ak, Method::POST, &fresh(), Some(reg.clone()))
        .await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains("one use")));
    let (s, v) = env
        .call(
            &ak,
            Method::POST,
            "/api/v2/agent/not-a-private-id",
            Some(reg.clone()),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let ak2 = env.auth_key(true, &[]).await;
    let (_, keys) = env
        .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/keys", None)
        .await;
    let id2 = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| {
            k["invalid"] == false
                && k["keyType"] == "auth"
                && k["capabilities"]["devices"]["create"]["reusable"] == true
        })
        .expect("reusable key")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::DELETE,
            &format!("/api/v2/tailnet/-/keys/{id2}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = env
        .call(&ak2, Method::POST, &fresh(), Some(reg.clone()))
        .await;
    assert_eq!(s, 401, "{v}");
    // A registered agent reports in with its private ID alone: no audit
    // event unless something changed.
    let ak3 = env.auth_key(true, &[]).await;
    let private = tally_proto::PrivateId::generate().to_hex();
    let path = format!("/api/v2/agent/{private}");
    let (s, v) = env.call(&ak3, Method::POST, &path, Some(reg.clone())).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["settings"]["networkFlowLoggingOn"], false);
    let before = env.head_seq(&env.tailnet).await;
    let resp = env
        .http
        .post(format!("{}{path}", env.base))
        .json(&reg)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        env.head_seq(&env.tailnet).await,
        before,
        "an unchanged report is not a change"
    );
    let moved = json!({ "hostname": "n2", "addresses": ["100.64.0.9"] });
    let resp = env
        .http
        .post(format!("{}{path}", env.base))
        .json(&moved)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let ev = env.events_after(&env.tailnet, before).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (&ev[0]["actor"]["type"], &ev[0]["new"]["addresses"]),
        (&json!("NODE"), &json!(["100.64.0.9"]))
    );
    // The registered node carries the key's tags; the node list shows it.
    let (_, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/device/{node}"),
            None,
        )
        .await;
    assert_eq!(v["tags"], json!(["tag:ci"]));
    assert_eq!(v["name"], "ci1");
    // A revoked API key stops working at once.
    let (uid, k) = env.user_with_key("temp@example.com", "admin").await;
    let (_, keys) = env
        .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/keys", None)
        .await;
    let kid = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|x| x["userId"] == json!(uid))
        .expect("key")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        env.call(&k, Method::GET, "/api/v2/tailnet/-/users", None)
            .await
            .0,
        200
    );
    assert_eq!(
        env.call(
            OWNER_KEY,
            Method::DELETE,
            &format!("/api/v2/tailnet/-/keys/{kid}"),
            None
        )
        .await
        .0,
        200
    );
    let (s, v) = env
        .call(&k, Method::GET, "/api/v2/tailnet/-/users", None)
        .await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains("revoked")));
    address_conflicts(&env).await;
    env.stop().await;
}

/// Node addresses are unique in a tailnet: a new node or a report that
/// asks for an address another node holds is refused with 409 naming that
/// node, and nothing changes; a machine registering again under the same
/// hostname (its data directory wiped) takes its addresses over, recorded
/// on the old node in the registration's event group.
async fn address_conflicts(env: &Env) {
    let reusable = env.auth_key(true, &[]).await;
    let agent = |private: &tally_proto::PrivateId, key: Option<&str>, body: Value| {
        let mut req = env
            .http
            .post(format!("{}/api/v2/agent/{}", env.base, private.to_hex()))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move {
            let resp = req.send().await.expect("sent");
            let s = resp.status().as_u16();
            (s, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let device = |id: String| async move {
        env.call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/device/{id}"),
            None,
        )
        .await
        .1
    };
    let a_private = tally_proto::PrivateId::generate();
    let a_addrs = json!(["100.100.0.1", "fd7a:115c:a1e0::1"]);
    let (s, v) = agent(
        &a_private,
        Some(&reusable),
        json!({ "hostname": "web-a.example.com", "addresses": a_addrs }),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let a = v["node"]["id"].as_str().expect("id").to_owned();

    // Another hostname asking for A's address (another spelling of it):
    // 409, and a one-off key is not spent by the refusal.
    let one_off = env.auth_key(false, &[]).await;
    let b_private = tally_proto::PrivateId::generate();
    let state = snapshot(env).await;
    for wanted in ["100.100.0.1/32", "fd7a:115c:a1e0:0:0::1"] {
        let (s, v) = agent(
            &b_private,
            Some(&one_off),
            json!({ "hostname": "web-b", "addresses": ["100.100.0.9", wanted] }),
        )
        .await;
        assert_eq!(s, 409, "{v}");
        let msg = v["error"].as_str().expect("error");
        assert!(
            msg.contains(wanted)
                && msg.contains(&a)
                && msg.contains("web-a")
                && msg.contains("another hostname")
                && msg.contains("tally nodes delete"),
            "{msg}"
        );
        assert!(
            !msg.contains("100.100.0.9"),
            "only the conflict is named: {msg}"
        );
        assert!(!msg.contains(&a_private.to_hex()), "{msg}");
    }
    assert_eq!(
        snapshot(env).await,
        state,
        "a refused registration changed data"
    );
    let (s, v) = agent(
        &b_private,
        Some(&one_off),
        json!({ "hostname": "web-b", "addresses": ["100.100.0.2"] }),
    )
    .await;
    assert_eq!(s, 201, "the one-off key still registers: {v}");
    let b = v["node"]["id"].as_str().expect("id").to_owned();

    // A registered node reporting an address another node holds: 409, its
    // node unchanged; its own addresses stay reportable.
    let (s, v) = agent(
        &b_private,
        None,
        json!({ "hostname": "web-b", "addresses": ["100.100.0.2", "100.100.0.1"] }),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains(&a)), "{v}");
    assert_eq!(device(b.clone()).await["addresses"], json!(["100.100.0.2"]));
    let (s, v) = agent(
        &b_private,
        None,
        json!({ "hostname": "web-b", "addresses": ["100.100.0.2/32", "100.100.0.3"] }),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // The same machine registering again with a new identity (same
    // hostname, any case): the address moves from the old node, in the
    // registration's event group.
    let before = env.head_seq(&env.tailnet).await;
    let c_private = tally_proto::PrivateId::generate();
    let (s, v) = agent(
        &c_private,
        Some(&reusable),
        json!({ "hostname": "WEB-A.example.com", "addresses": ["100.100.0.1"] }),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let c = v["node"]["id"].as_str().expect("id").to_owned();
    assert_eq!(device(c.clone()).await["addresses"], json!(["100.100.0.1"]));
    assert_eq!(
        device(a.clone()).await["addresses"],
        json!(["fd7a:115c:a1e0::1"]),
        "the old node keeps what was not taken"
    );
    let ev = env.events_after(&env.tailnet, before).await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["eventGroupID"], ev[1]["eventGroupID"]);
    let moved = ev
        .iter()
        .find(|e| e["target"]["id"] == json!(a))
        .expect("event on the old node");
    assert_eq!(
        (&moved["action"], &moved["target"]["property"]),
        (&json!("UPDATE"), &json!("addresses"))
    );
    assert_eq!(
        (&moved["old"], &moved["new"]),
        (&a_addrs, &json!(["fd7a:115c:a1e0::1"]))
    );
    assert!(
        moved["actionDetails"]
            .as_str()
            .is_some_and(|d| d.contains(&c) && d.contains("same hostname")),
        "{moved}"
    );
    // The old identity cannot take it back by reporting.
    let (s, v) = agent(
        &a_private,
        None,
        json!({ "hostname": "web-a.example.com", "addresses": a_addrs }),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains(&c)), "{v}");
    // Same hostname, but one wanted address is another hostname's: 409,
    // nothing moves.
    let state = snapshot(env).await;
    let (s, v) = agent(
        &tally_proto::PrivateId::generate(),
        Some(&reusable),
        json!({ "hostname": "web-a.example.com", "addresses": ["100.100.0.1", "100.100.0.3"] }),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains(&b)), "{v}");
    assert_eq!(snapshot(env).await, state);
}

/// What a GET of every listing shows (to prove a refused change changed nothing).
async fn snapshot(env: &Env) -> Vec<Value> {
    let mut out = Vec::new();
    for p in [
        "/api/v2/tailnet/-/settings",
        "/api/v2/tailnet/-/users",
        "/api/v2/tailnet/-/devices",
        "/api/v2/tailnet/-/keys",
        "/api/v2/tailnets",
        "/collections",
    ] {
        out.push(env.call(OWNER_KEY, Method::GET, p, None).await.1);
    }
    out
}
