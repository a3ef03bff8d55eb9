//! The console over plain HTTP (issue 15): every file it is made of is
//! served with the strict Content-Security-Policy and the other security
//! headers, revalidated by a strong ETag, gzip-compressed when accepted
//! (the whole console well under 300 KB compressed), and holds no secret;
//! every state-changing request made by a session cookie without the CSRF
//! token, or from another site, is refused with a clear message and
//! changes nothing.

mod support;

use flate2::read::GzDecoder;
use reqwest::Method;
use reqwest::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    COOKIE, ETAG, IF_NONE_MATCH, ORIGIN, REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use serde_json::{Value, json};
use std::io::Read;
use support::{Db, Env, OWNER_KEY, start};
use tally_server::api::{Guard, specs};
use tally_server::console::{CONTENT_SECURITY_POLICY as CSP, FILES};

/// The console's URL of a file.
fn url_of(env: &Env, path: &str) -> String {
    if path == "index.html" {
        format!("{}/", env.base)
    } else {
        format!("{}/console/{path}", env.base)
    }
}

/// Signs in with an API key; answers the cookie (`name=value`), the
/// `Set-Cookie` header and the CSRF token.
async fn sign_in(env: &Env, key: &str) -> (String, String, String) {
    let resp = env
        .http
        .post(format!("{}/api/v2/session", env.base))
        .json(&json!({ "apiKey": key }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let set = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("Set-Cookie")
        .to_owned();
    let v: Value = resp.json().await.expect("json");
    let cookie = set.split(';').next().expect("cookie").to_owned();
    (
        cookie,
        set,
        v["csrfToken"].as_str().expect("csrf").to_owned(),
    )
}

fn assert_security_headers(h: &reqwest::header::HeaderMap, what: &str) {
    let get = |n| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(get(CONTENT_SECURITY_POLICY), CSP, "{what}: CSP");
    assert_eq!(get(X_CONTENT_TYPE_OPTIONS), "nosniff", "{what}");
    assert_eq!(get(REFERRER_POLICY), "no-referrer", "{what}");
    assert_eq!(get(X_FRAME_OPTIONS), "DENY", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_carry_the_policy_revalidate_compress_and_hold_no_secret() {
    let env = start(&Db::Sqlite).await;
    // Secrets that exist on this server: the owner's key, a new API key and
    // auth key, a session's cookie and CSRF token.
    let (s, api_key) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnet/-/keys",
            Some(json!({ "keyType": "api" })),
        )
        .await;
    assert_eq!(s, 200);
    let auth_key = env.auth_key(true, &[]).await;
    let (cookie, _, csrf) = sign_in(&env, OWNER_KEY).await;
    let token = cookie.split_once('=').expect("name=value").1.to_owned();
    let secrets = [
        OWNER_KEY.to_owned(),
        api_key["key"].as_str().expect("key").to_owned(),
        auth_key,
        token,
        csrf,
    ];
    let mut compressed_total = 0;
    for (path, bytes) in FILES {
        let what = format!("console file {path}");
        // Signed in or not, gzip or not: the same bytes.
        let resp = env
            .http
            .get(url_of(&env, path))
            .header(ACCEPT_ENCODING, "gzip, br")
            .header(COOKIE, &cookie)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200, "{what}");
        let h = resp.headers().clone();
        assert_security_headers(&h, &what);
        assert_eq!(h[CACHE_CONTROL], "no-cache", "{what}");
        let etag = h[ETAG].to_str().expect("etag").to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 20,
            "{what}: a strong ETag, got {etag}"
        );
        let ct = h[CONTENT_TYPE].to_str().expect("type");
        let want = match path.rsplit_once('.').map(|(_, e)| e) {
            Some("html") => "text/html",
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected file type {other:?}"),
        };
        assert!(ct.starts_with(want), "{what}: content type {ct}");
        let gz = h
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() == b"gzip");
        let body = resp.bytes().await.expect("body");
        compressed_total += body.len();
        let plain = if gz {
            let mut out = Vec::new();
            GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .expect("gunzip");
            out
        } else {
            body.to_vec()
        };
        assert_eq!(&plain[..], *bytes, "{what}: served as embedded");
        assert!(gz || bytes.len() < 1024, "{what}: not compressed");
        let text = String::from_utf8_lossy(&plain);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} holds a secret");
        }
        // Not modified: 304, same headers, no body.
        let again = env
            .http
            .get(url_of(&env, path))
            .header(ACCEPT_ENCODING, "gzip")
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("sent");
        assert_eq!(again.status(), 304, "{what}: If-None-Match");
        assert_security_headers(again.headers(), &what);
        assert!(again.bytes().await.expect("body").is_empty());
        // Without gzip: the plain bytes, under another ETag.
        let raw = env
            .http
            .get(url_of(&env, path))
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("sent");
        if gz {
            assert_eq!(
                raw.status(),
                200,
                "{what}: the gzip ETag is not the plain one's"
            );
            assert!(raw.headers().get(CONTENT_ENCODING).is_none());
            assert_eq!(&raw.bytes().await.expect("body")[..], *bytes);
        }
    }
    assert!(
        compressed_total < 300 << 10,
        "the console is {compressed_total} bytes compressed, over 300 KB"
    );
    eprintln!(
        "console: {} files, {compressed_total} bytes gzip-compressed",
        FILES.len()
    );

    // The page has no inline script or style (the CSP would block them),
    // and no module writes HTML from strings.
    let index = FILES
        .iter()
        .find(|(p, _)| *p == "index.html")
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .expect("index.html");
    assert!(!index.contains("style="), "inline style in index.html");
    assert!(!index.contains("<style"), "a style element in index.html");
    for (i, _) in index.match_indices("<script") {
        let tag = &index[i..i + index[i..].find('>').expect("tag end")];
        assert!(tag.contains("src="), "inline script in index.html: {tag}");
    }
    for (path, bytes) in FILES.iter().filter(|(p, _)| p.ends_with(".js")) {
        let text = String::from_utf8_lossy(bytes);
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
            "sessionStorage",
            "http://",
            "https://",
        ] {
            assert!(!text.contains(bad), "{path} uses {bad}");
        }
    }

    // A 401 to a page's script asks for no browser password prompt (the
    // console signs in with its own form); API clients still get the
    // Basic challenge.
    let prompt = |mode: Option<&'static str>| {
        let mut req = env.http.get(format!("{}/api/v2/session", env.base));
        if let Some(m) = mode {
            req = req.header("sec-fetch-mode", m);
        }
        async move {
            let resp = req.send().await.expect("sent");
            assert_eq!(resp.status(), 401);
            resp.headers()
                .contains_key(reqwest::header::WWW_AUTHENTICATE)
        }
    };
    assert!(
        !prompt(Some("cors")).await,
        "a script's 401 asks for a password"
    );
    assert!(!prompt(Some("same-origin")).await);
    assert!(prompt(Some("navigate")).await);
    assert!(prompt(None).await, "API clients keep the Basic challenge");

    // Unknown files: 404 with the same headers.
    for p in ["/console/nope.js", "/console/../Cargo.toml", "/console/js/"] {
        let resp = env
            .http
            .get(format!("{}{p}", env.base))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 404, "{p}");
        if p != "/console/../Cargo.toml" {
            assert_security_headers(resp.headers(), p);
        }
    }
    env.stop().await;
}

/// A path of the route table with its parameters filled in (the guard
/// refuses before any handler looks them up).
fn concrete(path: &str) -> String {
    path.replace("{tailnet}", "-")
        .replace("{collection}", "tailnode")
        .replace("{logType}", "network")
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "x0123".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn by_cookie(
    env: &Env,
    method: Method,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = env
        .http
        .request(method, format!("{}{path}", env.base))
        .header(COOKIE, cookie)
        .json(&json!({}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("sent");
    let s = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (s, v["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_by_cookie_needs_the_csrf_token_and_the_same_origin() {
    let env = start(&Db::Sqlite).await;
    let (cookie, set_cookie, csrf) = sign_in(&env, OWNER_KEY).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{attr} missing: {set_cookie}");
    }
    assert!(set_cookie.starts_with("tally_session="), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "Secure over plain HTTP");
    let before = env.head_seq(&env.tailnet).await;
    let host = env.base.trim_start_matches("http://").to_owned();
    let mut checked = 0;
    for spec in specs() {
        if spec.method == Method::GET || !matches!(spec.guard, Guard::Role(_)) {
            continue;
        }
        let path = concrete(spec.path);
        let what = format!("{} {}", spec.method, spec.path);
        // No token.
        let (s, e) = by_cookie(&env, spec.method.clone(), &path, &cookie, &[]).await;
        assert_eq!(s, 403, "{what} without a CSRF token: {e}");
        assert!(e.contains("CSRF token"), "{what}: unclear refusal {e:?}");
        // A wrong token.
        let (s, e) = by_cookie(
            &env,
            spec.method.clone(),
            &path,
            &cookie,
            &[("x-csrf-token", "not-the-token")],
        )
        .await;
        assert_eq!(s, 403, "{what} with a wrong CSRF token: {e}");
        // The right token from another site.
        for foreign in [
            [
                ("x-csrf-token", csrf.as_str()),
                ("origin", "https://evil.example"),
            ],
            [("x-csrf-token", csrf.as_str()), ("origin", "null")],
            [
                ("x-csrf-token", csrf.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            let (s, e) = by_cookie(&env, spec.method.clone(), &path, &cookie, &foreign).await;
            assert_eq!(s, 403, "{what} from another site ({foreign:?}): {e}");
            assert!(e.contains("another site"), "{what}: unclear refusal {e:?}");
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} state-changing routes");
    // Nothing changed, nothing was recorded as done.
    let (_, settings) = env
        .call(OWNER_KEY, Method::GET, "/api/v2/tailnet/-/settings", None)
        .await;
    assert_eq!(settings["networkFlowLoggingOn"], false);
    let events = env.events_after(&env.tailnet, before).await;
    assert!(
        events.iter().all(|e| e.get("error").is_some()),
        "a refused request changed something: {events:?}"
    );
    // The same change with the token, from the console's own origin: done,
    // and audited as the console's.
    let origin = format!("http://{host}");
    let resp = env
        .http
        .patch(format!("{}/api/v2/tailnet/-/settings", env.base))
        .header(COOKIE, &cookie)
        .header("x-csrf-token", &csrf)
        .header(ORIGIN, &origin)
        .header("sec-fetch-site", "same-origin")
        .json(&json!({ "networkFlowLoggingOn": true }))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let events = env.events_after(&env.tailnet, before).await;
    let done: Vec<&Value> = events.iter().filter(|e| e.get("error").is_none()).collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["origin"], "CONSOLE");
    assert_eq!(done[0]["action"], "ENABLE");
    eprintln!(
        "{checked} state-changing routes refuse a cookie without the token or from another site"
    );
    env.stop().await;
}
