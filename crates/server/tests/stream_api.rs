//! Log streaming, the API side (issue 14):
//!
//! - Isolation: one destination that accepts connections and never
//!   answers (a hung SIEM) and one that works, both streaming the
//!   configuration log: the working one gets every event at once, ingest
//!   goes on, the hung one only falls behind (its status says how far).
//! - A Tailscale API client's view: PUT/GET/DELETE/status with exactly
//!   Tailscale's JSON, unknown fields refused with a clear 400, write-only
//!   fields never answered, not even through Tally's `.../streams` paths;
//!   several destinations per log type, each addressed by its ID; another
//!   tenant's stream ID is not found.

mod support;

use axum::body::Bytes;
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Db, Env, OWNER_KEY, start};

/// A webhook receiver: the audit events it got, by target name.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let state = state.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).expect("a JSON batch");
                state
                    .lock()
                    .extend(v["entries"].as_array().cloned().unwrap_or_default());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, got)
}

/// A listener that accepts connections and never answers.
async fn black_hole() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    url
}

async fn create_user(env: &Env, n: usize) {
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnet/-/users",
            Some(json!({ "loginName": format!("streamed-{n}@example.com") })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_destination_slows_neither_ingest_nor_the_others() {
    let env = start(&Db::Sqlite).await;
    let hole = black_hole().await;
    let (url, got) = webhook().await;
    for target in [&hole, &url] {
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::POST,
                "/api/v2/tailnet/-/logging/configuration/streams",
                Some(json!({ "destinationType": "webhook", "url": target, "token": "k" })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (_, list) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/logging/configuration/streams",
            None,
        )
        .await;
    let hung_id = list["streams"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(list["streams"][0]["url"], hole.as_str());

    let started = Instant::now();
    for n in 0..20 {
        create_user(&env, n).await;
    }
    loop {
        let n = got
            .lock()
            .iter()
            .filter(|e| {
                e["target"]["name"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("streamed-"))
            })
            .count();
        if n == 20 {
            break;
        }
        // The hung destination's request times out after 30 s: the other
        // one must not wait for it.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the working destination got {n} of 20 events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ingest goes on: a log line is stored and read back.
    let private = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &private).await;
    let resp = env
        .http
        .post(format!("{}/c/tailnode/{private}", env.base))
        .body(r#"{"text":"still ingesting"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    // The hung one only falls behind, and says so.
    let (s, st) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/tailnet/-/logging/configuration/streams/{hung_id}/status"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["numEntriesSent"], 0, "{st}");
    assert!(st["lagEntries"].as_u64() >= Some(20), "{st}");
    assert_eq!(st["unencrypted"], true, "{st}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailscale_client_sees_tailscales_json_and_never_a_secret() {
    let env = start(&Db::Sqlite).await;
    let path = "/api/v2/tailnet/-/logging/network/stream";
    // Unconfigured: 404 for the configuration, zeros for the status.
    let (s, v) = env.call(OWNER_KEY, Method::GET, path, None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = env
        .call(OWNER_KEY, Method::GET, &format!("{path}/status"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["numEntriesSent"], 0);
    for field in [
        "lastActivity",
        "lastError",
        "maxBodySize",
        "numBytesSent",
        "numEntriesSent",
        "numSpoofedEntries",
        "numTotalRequests",
        "numFailedRequests",
        "rateBytesSent",
        "rateEntriesSent",
        "rateTotalRequests",
        "rateFailedRequests",
    ] {
        assert!(v.get(field).is_some(), "{field} missing: {v}");
    }
    // Unknown fields and bad values: a 400 that says what is wrong.
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PUT,
            path,
            Some(json!({ "destinationType": "splunk", "url": "https://s.example.com/services/collector/event", "token": "t", "colour": "red" })),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("colour"),
        "{v}"
    );
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PUT,
            path,
            Some(json!({ "destinationType": "splunk", "url": "http://splunk.example.com/services/collector/event", "token": "t" })),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("https"),
        "{v}"
    );
    // A Tailscale-shaped configuration round-trips without its token.
    let config = json!({
        "destinationType": "elastic",
        "url": "https://es.example.com:9200/logs-tailscale-default/_bulk",
        "user": "tally",
        "token": "elastic-secret-0123",
        "uploadPeriodMinutes": 0,
        "compressionFormat": "gzip",
    });
    let (s, v) = env
        .call(OWNER_KEY, Method::PUT, path, Some(config.clone()))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, got) = env.call(OWNER_KEY, Method::GET, path, None).await;
    assert_eq!(s, 200, "{got}");
    let mut want = config.clone();
    want.as_object_mut().expect("object").remove("token");
    want["logType"] = json!("network");
    assert_eq!(got, want, "exactly Tailscale's fields, token left out");
    // Several destinations; Tally's paths never answer a secret either.
    let (s, second) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnet/-/logging/network/streams",
            Some(json!({ "destinationType": "s3", "url": "http://10.1.2.3:9000", "s3Bucket": "b", "s3AccessKeyId": "AKID", "s3SecretAccessKey": "s3-secret-0123" })),
        )
        .await;
    assert_eq!(s, 201, "{second}");
    let id = second["id"].as_str().expect("id").to_owned();
    let (_, list) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/logging/network/streams",
            None,
        )
        .await;
    let text = list.to_string();
    assert_eq!(list["streams"].as_array().map(Vec::len), Some(2), "{list}");
    assert!(!text.contains("secret-0123"), "{text}");
    let (s, one) = env
        .call(
            OWNER_KEY,
            Method::GET,
            &format!("/api/v2/tailnet/-/logging/network/streams/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["s3Bucket"], "b");
    assert!(one.get("s3SecretAccessKey").is_none(), "{one}");
    // The audit log has the changes, never a secret.
    let events = env.events_after(&env.tailnet, 0).await;
    let text = serde_json::to_string(&events).expect("json");
    assert!(text.contains("LOGSTREAM_ENDPOINT"), "{text}");
    assert!(!text.contains("secret-0123"), "{text}");
    // Another tenant: the ID is not found, its own list is empty.
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/api/v2/tailnets",
            Some(json!({ "name": "other" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let other = v["ownerKey"]["key"].as_str().expect("owner key").to_owned();
    for (method, p) in [
        (
            Method::GET,
            format!("/api/v2/tailnet/-/logging/network/streams/{id}"),
        ),
        (
            Method::DELETE,
            format!("/api/v2/tailnet/-/logging/network/streams/{id}"),
        ),
        (
            Method::GET,
            format!("/api/v2/tailnet/-/logging/network/streams/{id}/status"),
        ),
    ] {
        let (s, v) = env.call(&other, method, &p, None).await;
        assert_eq!(s, 404, "another tenant's stream: {v}");
    }
    let (_, v) = env
        .call(
            &other,
            Method::GET,
            "/api/v2/tailnet/-/logging/network/streams",
            None,
        )
        .await;
    assert_eq!(v["streams"], json!([]), "{v}");
    // DELETE on Tailscale's path removes the first; the second stays.
    let (s, _) = env.call(OWNER_KEY, Method::DELETE, path, None).await;
    assert_eq!(s, 200);
    let (s, v) = env.call(OWNER_KEY, Method::GET, path, None).await;
    assert_eq!(s, 200, "the second is now the first: {v}");
    assert_eq!(v["destinationType"], "s3");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_logs_stream_only_from_the_collections_opted_in() {
    let env = start(&Db::Sqlite).await;
    let (url, got) = webhook().await;
    let path = "/api/v2/tailnet/-/logging/logs/stream";
    for (bad, why) in [
        (json!(["tailaudit"]), "configuration"),
        (json!(["tailtraffic"]), "network"),
        (json!(["no spaces"]), "collection name"),
    ] {
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::PUT,
                path,
                Some(json!({ "destinationType": "webhook", "url": url, "token": "k", "collections": bad })),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(why), "{v}");
    }
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PUT,
            "/api/v2/tailnet/-/logging/network/stream",
            Some(json!({ "destinationType": "webhook", "url": url, "token": "k", "collections": ["tailnode"] })),
        )
        .await;
    assert_eq!(s, 400, "collections only for logs: {v}");
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PUT,
            path,
            Some(json!({ "destinationType": "webhook", "url": url, "token": "k", "collections": ["tailnode"] })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // One line in the opted-in collection, one in another: only the first
    // is streamed.
    let private = tally_proto::PrivateId::generate().to_hex();
    env.adopt("tailnode", &private).await;
    let other = tally_proto::PrivateId::generate().to_hex();
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            "/collections",
            Some(json!({ "collection": "app-logs", "action": "create" })),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");
    env.adopt("app-logs", &other).await;
    for (c, id, text) in [
        ("app-logs", &other, "not opted in"),
        ("tailnode", &private, "opted in"),
    ] {
        let resp = env
            .http
            .post(format!("{}/c/{c}/{id}", env.base))
            .body(json!({ "text": text }).to_string())
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let texts: Vec<String> = got
            .lock()
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect();
        if texts.iter().any(|t| t == "opted in") {
            assert!(!texts.iter().any(|t| t == "not opted in"), "{texts:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node log never arrived: {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.stop().await;
}
