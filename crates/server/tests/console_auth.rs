//! Console sign-in (issue 15): passwords set by an admin or through a
//! one-time link, sessions as HttpOnly SameSite=Strict cookies, CSRF and
//! same-origin checks on every change made by cookie, changes audited with
//! origin CONSOLE, sign-ins audited (`LOGIN`) and rate-limited, a session
//! opened with an API key ending with the key.

mod support;

use reqwest::Method;
use reqwest::header::{COOKIE, HeaderMap, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};
use support::{Db, Env, OWNER_KEY, start};

const PASSWORD: &str = "correct horse battery staple";

/// Signs in; answers the status, the body and the cookie (`name=value`).
async fn sign_in(env: &Env, body: Value) -> (u16, Value, Option<String>, HeaderMap) {
    let resp = env
        .http
        .post(format!("{}/api/v2/session", env.base))
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let cookie = headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    (
        status,
        resp.json().await.unwrap_or(Value::Null),
        cookie,
        headers,
    )
}

/// A request by cookie, with optional CSRF token and Origin.
async fn by_cookie(
    env: &Env,
    cookie: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    csrf: Option<&str>,
    origin: Option<&str>,
) -> (u16, Value) {
    let mut req = env
        .http
        .request(method, format!("{}{path}", env.base))
        .header(COOKIE, cookie);
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    if let Some(o) = origin {
        req = req.header(ORIGIN, o);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("sent");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

async fn user(env: &Env, login: &str, role: &str) -> String {
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnet/-/users",
            Some(json!({ "loginName": login, "role": role })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["id"].as_str().expect("id").to_owned()
}

async fn set_password(env: &Env, id: &str, password: &str) -> (u16, Value) {
    env.call(
        OWNER_KEY,
        Method::POST,
        &format!("/api/v2/users/{id}/password"),
        Some(json!({ "password": password })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_sessions_check_csrf_and_origin_and_audit_as_console() {
    let env = start(&Db::Sqlite).await;
    let admin = user(&env, "ada@example.com", "admin").await;
    let (s, v) = set_password(&env, &admin, "short").await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("at least 12"),
        "{v}"
    );
    let (s, v) = set_password(&env, &admin, PASSWORD).await;
    assert_eq!(s, 204, "{v}");

    // Login CSRF: another site's page, or a form post, cannot sign in.
    for (origin, content_type) in [
        (Some("https://evil.example.com"), "application/json"),
        (None, "text/plain"),
    ] {
        let mut req = env
            .http
            .post(format!("{}/api/v2/session", env.base))
            .header("content-type", content_type)
            .body(json!({ "loginName": "ada@example.com", "password": PASSWORD }).to_string());
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        let resp = req.send().await.expect("sent");
        assert!(
            resp.status() == 403 || resp.status() == 415,
            "{origin:?} {content_type}: {}",
            resp.status()
        );
        assert!(resp.headers().get(SET_COOKIE).is_none());
    }
    // A wrong password: a clear 401, audited as a refused LOGIN.
    let (s, v, cookie, _) = sign_in(
        &env,
        json!({ "loginName": "ada@example.com", "password": "wrong password!!" }),
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert!(cookie.is_none());
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("wrong login or password"),
        "{v}"
    );

    let (s, v, cookie, headers) = sign_in(
        &env,
        json!({ "loginName": "ada@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let set = headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "no Secure over plain http: {set}");
    let cookie = cookie.expect("cookie");
    let csrf = v["csrfToken"].as_str().expect("csrf").to_owned();
    assert_eq!(v["user"]["role"], "admin");
    assert!(
        v["permissions"]
            .as_array()
            .expect("permissions")
            .contains(&json!("settings:write"))
    );
    // Reads need no token.
    let (s, me) = by_cookie(
        &env,
        &cookie,
        Method::GET,
        "/api/v2/session",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["csrfToken"], csrf.as_str());

    // Changes need the token and the console's own origin.
    let (_, current) = env
        .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/settings", None)
        .await;
    let on = current["networkFlowLoggingOn"].as_bool().expect("setting");
    let change = json!({ "networkFlowLoggingOn": !on });
    let path = "/api/v2/tailnet/-/settings";
    let (s, v) = by_cookie(
        &env,
        &cookie,
        Method::PATCH,
        path,
        Some(change.clone()),
        None,
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("CSRF"),
        "{v}"
    );
    let (s, v) = by_cookie(
        &env,
        &cookie,
        Method::PATCH,
        path,
        Some(change.clone()),
        Some("not-the-token"),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = by_cookie(
        &env,
        &cookie,
        Method::PATCH,
        path,
        Some(change.clone()),
        Some(&csrf),
        Some("https://evil.example.com"),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("another site"),
        "{v}"
    );
    let own = env.base.clone();
    let before = env.head_seq(&env.tailnet).await;
    let (s, v) = by_cookie(
        &env,
        &cookie,
        Method::PATCH,
        path,
        Some(change),
        Some(&csrf),
        Some(&own),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let events = env.events_after(&env.tailnet, before).await;
    let e = events
        .iter()
        .find(|e| e["target"]["property"] == "networkFlowLoggingOn")
        .expect("the change's event");
    assert_eq!(e["origin"], "CONSOLE", "{e}");
    assert_eq!(e["actor"]["loginName"], "ada@example.com", "{e}");

    // Sign-ins are audited; no password ever is.
    let all = env.events_after(&env.tailnet, 0).await;
    let logins: Vec<&Value> = all.iter().filter(|e| e["action"] == "LOGIN").collect();
    assert!(logins.iter().any(|e| e["error"].is_string()), "{logins:?}");
    assert!(
        logins
            .iter()
            .any(|e| e["error"].is_null() && e["origin"] == "CONSOLE"),
        "{logins:?}"
    );
    let text = serde_json::to_string(&all).expect("json");
    assert!(
        !text.contains(PASSWORD) && !text.contains("wrong password!!"),
        "{text}"
    );

    // Signing out ends the session.
    let resp = env
        .http
        .delete(format!("{}/api/v2/session", env.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 204);
    assert!(
        resp.headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("Max-Age=0"))
    );
    let (s, _) = by_cookie(
        &env,
        &cookie,
        Method::GET,
        "/api/v2/session",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 401);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_links_keys_and_rate_limits() {
    let env = start(&Db::Sqlite).await;
    // An auditor reads the audit log but may not change settings.
    let auditor = user(&env, "audrey@example.com", "auditor").await;
    let (s, link) = env
        .call(
            OWNER_KEY,
            Method::POST,
            &format!("/api/v2/users/{auditor}/password-setup"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{link}");
    let token = link["token"].as_str().expect("token").to_owned();
    assert!(link["path"].as_str().unwrap_or_default().contains(&token));
    let setup = |password: &str| {
        let (env, token, password) = (&env, token.clone(), password.to_owned());
        async move {
            let resp = env
                .http
                .post(format!("{}/api/v2/session/setup", env.base))
                .json(&json!({ "token": token, "password": password }))
                .send()
                .await
                .expect("sent");
            let cookie = resp
                .headers()
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(str::to_owned);
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
                cookie,
            )
        }
    };
    let (s, v, _) = setup("short").await;
    assert_eq!(s, 400, "{v}");
    let (s, v, cookie) = setup(PASSWORD).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"]["role"], "auditor");
    let perms = v["permissions"].as_array().expect("permissions");
    assert!(perms.contains(&json!("audit:read")) && !perms.contains(&json!("settings:write")));
    let (s, v, _) = setup(PASSWORD).await;
    assert_eq!(s, 401, "a link works once: {v}");
    let cookie = cookie.expect("cookie");
    let csrf = v_csrf(&env, &cookie).await;
    let (s, v) = by_cookie(
        &env,
        &cookie,
        Method::GET,
        "/api/v2/tailnet/-/logging/configuration",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = by_cookie(
        &env,
        &cookie,
        Method::PATCH,
        "/api/v2/tailnet/-/settings",
        Some(json!({ "networkFlowLoggingOn": false })),
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("auditor"),
        "{v}"
    );

    // A session opened with an API key ends when the key is revoked.
    let (s, k) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "keyType": "api", "description": "console", "expirySeconds": 3600 })),
        )
        .await;
    assert_eq!(s, 200, "{k}");
    let (s, v, key_cookie, _) = sign_in(&env, json!({ "apiKey": k["key"] })).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["viaApiKey"], true);
    let key_cookie = key_cookie.expect("cookie");
    let (s, _) = by_cookie(
        &env,
        &key_cookie,
        Method::GET,
        "/api/v2/session",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::DELETE,
            &format!("/api/v2/tailnet/-/keys/{}", k["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "{v}");
    let (s, v) = by_cookie(
        &env,
        &key_cookie,
        Method::GET,
        "/api/v2/session",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 401, "{v}");

    // Failed sign-ins are limited: the 11th within 15 minutes is a 429.
    let mut last = 0;
    let mut retry_after = None;
    for _ in 0..11 {
        let (s, _, _, h) = sign_in(
            &env,
            json!({ "loginName": "audrey@example.com", "password": "not the password" }),
        )
        .await;
        last = s;
        retry_after = h.get("retry-after").cloned();
    }
    assert_eq!(last, 429);
    assert!(retry_after.is_some());
    // Even the right password waits.
    let (s, v, _, _) = sign_in(
        &env,
        json!({ "loginName": "audrey@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(s, 429, "{v}");
    env.stop().await;
}

async fn v_csrf(env: &Env, cookie: &str) -> String {
    let (s, v) = by_cookie(
        env,
        cookie,
        Method::GET,
        "/api/v2/session",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["csrfToken"].as_str().expect("csrf").to_owned()
}
