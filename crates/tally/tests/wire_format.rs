//! The logs-service protocol, byte for byte, against the real server.

mod common;

use common::{KEY, TestServer, http, read_all};
use serde_json::{Value, json};
use tally_proto::PrivateId;

async fn post(
    c: &reqwest::Client,
    url: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value, Option<String>) {
    let mut req = c.post(format!("{url}{path}")).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("response is not JSON: {text}"));
    (status, v, retry)
}

#[tokio::test]
async fn every_request_shape_gets_the_specified_answer_and_entries_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let url = &server.url;
    let id = common::adopted_id(url, "tailnode").await;
    let public = id.public().to_hex();
    let path = format!("/c/tailnode/{}", id.to_hex());

    // A single object.
    let (s, v, _) = post(&c, url, &path, br#"{"text":"single","logtail":{"client_time":"2026-01-02T03:04:05.123456789Z","proc_id":3,"proc_seq":1}}"#.to_vec(), &[]).await;
    assert_eq!((s, v["stored"].as_u64()), (200, Some(1)));
    // An array.
    let (s, _, _) = post(
        &c,
        url,
        &path,
        br#"[{"text":"a1","logtail":{"proc_id":3,"proc_seq":2}},{"text":"a2","v":2}]"#.to_vec(),
        &[],
    )
    .await;
    assert_eq!(s, 200);
    // zstd with Orig-Content-Length.
    let raw = serde_json::to_vec(&json!([{"text":"zstd entry","n":[1,2,3]}])).unwrap();
    let z = zstd::bulk::compress(&raw, 3).unwrap();
    let (s, _, _) = post(
        &c,
        url,
        &path,
        z,
        &[
            ("content-encoding", "zstd"),
            ("orig-content-length", &raw.len().to_string()),
        ],
    )
    .await;
    assert_eq!(s, 200);
    // A logtail member with extra fields: saved, 400.
    let (s, v, _) = post(
        &c,
        url,
        &path,
        br#"{"text":"extra","logtail":{"proc_seq":9,"server_time":"forged","x":1}}"#.to_vec(),
        &[],
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("saved with logtail.error"),
        "{v}"
    );
    // A non-object array entry: saved, 400.
    let (s, _, _) = post(&c, url, &path, br#"[{"text":"fine"}, 17]"#.to_vec(), &[]).await;
    assert_eq!(s, 400);
    // Bad collection name: 403 with the exact body.
    let (s, v, _) = post(
        &c,
        url,
        &format!("/c/bad!name/{}", id.to_hex()),
        b"{}".to_vec(),
        &[],
    )
    .await;
    assert_eq!((s, v), (403, json!({"error": "invalid collection name"})));
    // Oversize (identity) and a zstd bomb: 413, nothing saved.
    let big = serde_json::to_vec(&json!([{"text": "x".repeat(600 * 1024)}])).unwrap();
    let (s, v, _) = post(&c, url, &path, big, &[]).await;
    assert_eq!(s, 413, "{v}");
    let bomb = zstd::bulk::compress(&vec![b' '; 256 << 20], 19).unwrap();
    let (s, v, _) = post(&c, url, &path, bomb, &[("content-encoding", "zstd")]).await;
    assert_eq!(s, 413);
    assert!(
        v["error"].as_str().unwrap().contains("after decompression"),
        "{v}"
    );
    // Unknown encoding: 415.
    let (s, v, _) = post(
        &c,
        url,
        &path,
        b"{}".to_vec(),
        &[("content-encoding", "br")],
    )
    .await;
    assert_eq!(s, 415);
    assert!(v["error"].as_str().unwrap().contains("zstd"));
    // A malformed private ID: 400, and the ID is not echoed back.
    let (s, v, _) = post(&c, url, "/c/tailnode/nothex", b"{}".to_vec(), &[]).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("private ID"));
    // Unknown collection: 404 that says how to create it.
    let (s, v, _) = post(
        &c,
        url,
        &format!("/c/nosuch/{}", id.to_hex()),
        b"{}".to_vec(),
        &[],
    )
    .await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("POST /collections"));

    let logs = read_all(&c, url, "tailnode").await;
    let texts: Vec<&str> = logs
        .iter()
        .map(|e| e["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        texts,
        ["single", "a1", "a2", "zstd entry", "extra", "fine", ""]
    );
    for e in &logs {
        assert_eq!(e["logtail"]["id"], public.as_str());
        assert!(
            tally_proto::timefmt::parse_rfc3339(e["logtail"]["server_time"].as_str().unwrap())
                .is_some()
        );
    }
    assert_eq!(
        logs[0]["logtail"]["client_time"],
        "2026-01-02T03:04:05.123456789Z"
    );
    assert_eq!(logs[0]["logtail"]["proc_id"], 3);
    assert_eq!(logs[2]["v"], 2);
    assert_eq!(logs[3]["n"], json!([1, 2, 3]));
    assert_eq!(logs[4]["logtail"]["proc_seq"], 9);
    assert_eq!(
        logs[4]["logtail"]["error"]["fields"],
        json!({"server_time": "forged", "x": 1})
    );
    assert_ne!(logs[4]["logtail"]["server_time"], "forged");
    assert_eq!(logs[6]["logtail"]["error"]["bad_data"], 17);
    // The private ID is stored nowhere on the server.
    for file in walk(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, id.to_hex().as_bytes()),
            "private ID found in {}",
            file.display()
        );
    }
}

#[tokio::test]
async fn retried_batches_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let id = common::adopted_id(&server.url, "tailnode").await;
    let path = format!("/c/tailnode/{}", id.to_hex());
    let batch = serde_json::to_vec(
        &(1..=20)
            .map(|n| json!({"text": n, "logtail": {"proc_id": 1, "proc_seq": n}}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (_, v, _) = post(&c, &server.url, &path, batch.clone(), &[]).await;
    assert_eq!(v["stored"], 20);
    let (s, v, _) = post(&c, &server.url, &path, batch, &[]).await;
    assert_eq!(
        (s, v["stored"].as_u64(), v["duplicates"].as_u64()),
        (200, Some(0), Some(20))
    );
    assert_eq!(read_all(&c, &server.url, "tailnode").await.len(), 20);
}

#[tokio::test]
async fn reads_and_configuration_need_a_valid_key_in_either_form() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let url = &server.url;
    let r = c.get(format!("{url}/collections")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{url}/collections"))
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{url}/collections"))
        .basic_auth(KEY, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{url}/collections"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/collections", "/instances"] {
        let r = c
            .post(format!("{url}{path}"))
            .form(&[("collection", "x"), ("action", "create")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = c.get(format!("{url}/c/tailnode")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn collections_are_created_deleted_and_instances_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--unadopted-cap-mb", "1"]);
    let c = http();
    let url = &server.url;
    // Form-encoded create, JSON-encoded delete, as the API allows both.
    let r = c
        .post(format!("{url}/collections"))
        .basic_auth(KEY, None::<&str>)
        .form(&[("collection", "app.example.com"), ("action", "create")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{url}/collections"))
        .bearer_auth(KEY)
        .form(&[("collection", "app.example.com"), ("action", "create")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let id = PrivateId::generate();
    let path = format!("/c/app.example.com/{}", id.to_hex());
    // Unadopted: capped at 1 MiB per 12 h, then 429 with Retry-After and advice.
    let chunk = serde_json::to_vec(&json!([{"text": "y".repeat(200 * 1024)}])).unwrap();
    let mut refused = None;
    for _ in 0..10 {
        let (s, v, retry) = post(&c, url, &path, chunk.clone(), &[]).await;
        if s == 429 {
            refused = Some((v, retry));
            break;
        }
        assert_eq!(s, 200);
    }
    let (v, retry) = refused.expect("unadopted instance was never capped");
    assert!(retry.is_some());
    assert!(
        v["error"].as_str().unwrap().contains("POST /instances"),
        "{v}"
    );
    // Adoption lifts the cap.
    let r = c
        .post(format!("{url}/instances"))
        .bearer_auth(KEY)
        .json(&json!({"collection": "app.example.com", "instances": [id.public().to_hex()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _, _) = post(&c, url, &path, chunk.clone(), &[]).await;
    assert_eq!(s, 200);
    let list: Value = common::get_json(&format!(
        "{url}/collections?collection-name=app.example.com"
    ))
    .await;
    let inst = &list["collections"]["app.example.com"]["instances"][id.public().to_hex()];
    assert_eq!(inst["entries"], 1, "{list}");
    assert_eq!(inst["adopted"], true, "{list}");
    // An entry's tailnet is fixed when it is stored: what the instance sent
    // before it was adopted stays unclaimed (and expires after 12 h).
    let read: Value = common::get_json(&format!("{url}/c/app.example.com")).await;
    assert_eq!(read["count"], 1, "{read}");
    // Adopting into a missing collection or a malformed ID says what is wrong.
    let r = c
        .post(format!("{url}/instances"))
        .bearer_auth(KEY)
        .form(&[("collection", "nope"), ("instances", &id.public().to_hex())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{url}/instances"))
        .bearer_auth(KEY)
        .form(&[("collection", "tailnode"), ("instances", "123")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Delete: entries vanish from reads at once.
    let r = c
        .post(format!("{url}/collections"))
        .bearer_auth(KEY)
        .json(&json!({"collection": "app.example.com", "action": "delete"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{url}/c/app.example.com"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, _, _) = post(&c, url, &path, b"{}".to_vec(), &[]).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn query_filters_by_instance_and_time_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let c = http();
    let url = &server.url;
    let a = common::adopted_id(url, "tailnode").await;
    let b = common::adopted_id(url, "tailnode").await;
    for i in 0..30 {
        let who = if i % 3 == 0 { &a } else { &b };
        let (s, _, _) = post(
            &c,
            url,
            &format!("/c/tailnode/{}", who.to_hex()),
            serde_json::to_vec(&json!({"text": format!("m{i}")})).unwrap(),
            &[],
        )
        .await;
        assert_eq!(s, 200);
    }
    let v: Value = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("instances", a.public().to_hex())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["logs"].as_array().unwrap().len(), 10);
    let first: Value = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("max-count", "7")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["logs"].as_array().unwrap().len(), 7);
    let next = first["next"]
        .as_str()
        .expect("truncated answer carries next");
    let rest: Value = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("after", next)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["logs"].as_array().unwrap().len(), 23);
    assert_eq!(rest["logs"][0]["text"], "m7");
    let future = "2999-01-01T00:00:00Z";
    let none: Value = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("time-start", future)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["logs"].as_array().unwrap().len(), 0);
    let r = c
        .get(format!("{url}/c/tailnode"))
        .bearer_auth(KEY)
        .query(&[("time-start", "yesterday")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("RFC 3339"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
