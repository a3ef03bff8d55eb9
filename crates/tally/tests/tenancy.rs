//! Tenants are sealed off: two tailnets on one server, each with registered
//! nodes uploading logs and flow records to the same collection names, and
//! an instance no tailnet claimed. Every read path, through the API and the
//! CLI, shows each tenant exactly its own entries; the unclaimed instance is
//! seen by nobody; names, adoptions and system collections cannot be used
//! to reach across.

mod common;

use common::{KEY, TestServer, bin, http};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;

struct Env {
    server: TestServer,
    http: reqwest::Client,
}

impl Env {
    async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ok(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(key, method, path, body).await;
        assert!((200..300).contains(&s), "{path}: {s} {v}");
        v
    }

    async fn upload(&self, collection: &str, private: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/c/{collection}/{private}", self.server.url))
            .json(body)
            .send()
            .await
            .expect("upload sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Texts of every entry of `collection` that `key` may read.
    async fn texts(&self, key: &str, collection: &str) -> BTreeSet<String> {
        let v = self
            .ok(
                key,
                Method::GET,
                &format!("/c/{collection}?max-count=10000"),
                None,
            )
            .await;
        v["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect()
    }

    /// Texts of a live stream of `collection` from the start, read until
    /// `marker` arrives (it is posted last by the test).
    async fn streamed(&self, key: &str, collection: &str, marker: &str) -> BTreeSet<String> {
        let mut resp = self
            .http
            .get(format!("{}/c/{collection}", self.server.url))
            .bearer_auth(key)
            .query(&[("stream", "true"), ("time-start", "1970-01-01T00:00:00Z")])
            .send()
            .await
            .expect("stream opened");
        assert_eq!(resp.status(), 200);
        let mut buf = Vec::new();
        let mut out = BTreeSet::new();
        loop {
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line)
                    && let Some(t) = v["text"].as_str()
                {
                    if t == marker {
                        return out;
                    }
                    out.insert(t.to_owned());
                }
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(60), resp.chunk())
                .await
                .expect("marker within 60 s")
                .expect("stream read")
                .expect("stream open");
            buf.extend_from_slice(&chunk);
        }
    }
}

fn auth_key_body() -> Value {
    json!({ "capabilities": { "devices": { "create": { "reusable": true } } } })
}

/// A Tailscale-shaped flow record of a connection between two addresses.
fn flow(node: &str, src: &str, dst: &str) -> Value {
    let now = tally_proto::timefmt::now_nanos();
    json!({
        "nodeId": node,
        "start": tally_proto::timefmt::format_nanos(now - 6_000_000_000),
        "end": tally_proto::timefmt::format_nanos(now - 1_000_000_000),
        "virtualTraffic": [{ "proto": 6, "src": src, "dst": dst, "txPkts": 3, "txBytes": 300, "rxPkts": 2, "rxBytes": 200 }],
    })
}

/// Node IDs in a network-log answer.
fn flow_nodes(v: &Value) -> BTreeSet<String> {
    v["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|r| r["nodeId"].as_str().expect("nodeId").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_exactly_its_own_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = Env {
        server: TestServer::start(dir.path(), &[]),
        http: http(),
    };
    // Tailnet A is the default one (KEY is its owner); B is created.
    let created = env
        .ok(
            KEY,
            Method::POST,
            "/api/v2/tailnets",
            Some(json!({ "name": "b.example" })),
        )
        .await;
    let key_b = created["ownerKey"]["key"]
        .as_str()
        .expect("B's owner key")
        .to_owned();
    let mut nodes = Vec::new(); // (tenant key, private, node id, text prefix)
    for (key, tenant, base) in [(KEY, "a", "100.64.1."), (key_b.as_str(), "b", "100.64.2.")] {
        env.ok(
            key,
            Method::PATCH,
            "/api/v2/tailnet/-/settings",
            Some(json!({ "networkFlowLoggingOn": true })),
        )
        .await;
        let auth = env
            .ok(
                key,
                Method::POST,
                "/api/v2/tailnet/-/keys",
                Some(auth_key_body()),
            )
            .await;
        let auth = auth["key"].as_str().expect("auth key").to_owned();
        for i in 1..=2 {
            let (private, id) = common::register_node(
                &env.server.url,
                &auth,
                &format!("{tenant}{i}"),
                &format!("{base}{i}"),
            )
            .await;
            nodes.push((
                key.to_owned(),
                private.to_hex(),
                id,
                tenant.to_owned(),
                base,
            ));
        }
    }
    for (_, private, id, tenant, base) in &nodes {
        let (s, v) = env
            .upload(
                "tailnode",
                private,
                &json!([{ "text": format!("{tenant}: log of {id}") }]),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let rec = flow(id, &format!("{base}1:40000"), &format!("{base}2:443"));
        let (s, v) = env.upload("tailtraffic", private, &json!([rec])).await;
        assert_eq!(s, 200, "{v}");
    }
    // Something that is not a flow record is refused, nothing stored.
    let (s, v) = env
        .upload(
            "tailtraffic",
            &nodes[0].1,
            &json!([flow(&nodes[0].2, "100.64.1.1:1", "100.64.1.2:2"), { "text": "not a flow" }]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("entry 1 is not a flow record"),
        "{v}"
    );
    // An instance nobody registered or adopted.
    let stray = tally_proto::PrivateId::generate();
    let (s, v) = env
        .upload("tailnode", &stray.to_hex(), &json!({ "text": "stray" }))
        .await;
    assert_eq!(
        s, 200,
        "unclaimed uploads are accepted (and kept 12 h): {v}"
    );
    let (s, v) = env
        .upload(
            "tailtraffic",
            &stray.to_hex(),
            &json!([flow("x", "1.2.3.4:1", "5.6.7.8:2")]),
        )
        .await;
    assert_eq!(s, 403, "flow records only from registered nodes: {v}");
    // The marker of the end of each tenant's stream.
    for tenant in ["a", "b"] {
        let first = nodes.iter().find(|n| n.3 == tenant).expect("a node");
        let (s, v) = env
            .upload(
                "tailnode",
                &first.1,
                &json!({ "text": format!("end of {tenant}") }),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    for (key, tenant, other) in [(KEY, "a", "b"), (key_b.as_str(), "b", "a")] {
        let own: Vec<&(String, String, String, String, &str)> =
            nodes.iter().filter(|n| n.3 == tenant).collect();
        let expected: BTreeSet<String> = own
            .iter()
            .map(|n| format!("{tenant}: log of {}", n.2))
            .chain([format!("end of {tenant}")])
            .collect();
        // The logs-service query and stream.
        assert_eq!(
            env.texts(key, "tailnode").await,
            expected,
            "{tenant}'s query"
        );
        let mut streamed = env
            .streamed(key, "tailnode", &format!("end of {tenant}"))
            .await;
        streamed.insert(format!("end of {tenant}"));
        assert_eq!(streamed, expected, "{tenant}'s stream");
        // Raw flow records.
        let raw = env
            .ok(key, Method::GET, "/c/tailtraffic?max-count=1000", None)
            .await;
        let raw_nodes: BTreeSet<String> = raw["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .map(|r| r["nodeId"].as_str().expect("nodeId").to_owned())
            .collect();
        let own_ids: BTreeSet<String> = own.iter().map(|n| n.2.clone()).collect();
        assert_eq!(raw_nodes, own_ids, "{tenant}'s raw flow records");
        // The network-log API (waits for the flow consumer) and the graph.
        let network = env
            .ok(key, Method::GET, "/api/v2/tailnet/-/logging/network", None)
            .await;
        assert_eq!(flow_nodes(&network), own_ids, "{tenant}'s network log");
        let graph = env
            .ok(
                key,
                Method::GET,
                "/api/v2/tailnet/-/logging/network/graph",
                None,
            )
            .await;
        let graph_nodes: BTreeSet<String> = graph["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect();
        assert!(
            graph_nodes.is_subset(&own_ids) && !graph_nodes.is_empty(),
            "{tenant}'s graph names only its nodes: {graph_nodes:?}"
        );
        // Collections list only its own instances.
        let cols = env.ok(key, Method::GET, "/collections", None).await;
        let listed: BTreeSet<String> = cols["collections"]["tailnode"]["instances"]
            .as_object()
            .expect("instances")
            .keys()
            .cloned()
            .collect();
        let own_public: BTreeSet<String> = own
            .iter()
            .map(|n| {
                tally_proto::PrivateId::parse(&n.1)
                    .expect("private")
                    .public()
                    .to_hex()
            })
            .collect();
        assert_eq!(listed, own_public, "{tenant}'s instances");
        // The CLI, as a user runs it.
        let out = Command::new(bin())
            .args(["logs", "query", "--json"])
            .env("TALLY_SERVER", &env.server.url)
            .env("TALLY_API_KEY", key)
            .env("TALLY_LOG", "warn")
            .output()
            .expect("tally logs query");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("{tenant}: log of")), "{stdout}");
        assert!(!stdout.contains(&format!("{other}: log of")), "{stdout}");
        assert!(!stdout.contains("stray"), "{stdout}");
    }

    // Inclusion proofs of another tenant's records are not given. The
    // signed checkpoint's second line is the number of records logged.
    let checkpoint = env
        .http
        .get(format!("{}/.well-known/tally/checkpoint", env.server.url))
        .send()
        .await
        .expect("checkpoint")
        .text()
        .await
        .expect("checkpoint text");
    let size: u64 = checkpoint
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .expect("tree size");
    let mut seen = [0u32; 2];
    for seq in 1..=size {
        let a = env
            .call(
                KEY,
                Method::GET,
                &format!("/api/v2/log/inclusion?seq={seq}"),
                None,
            )
            .await
            .0;
        let b = env
            .call(
                &key_b,
                Method::GET,
                &format!("/api/v2/log/inclusion?seq={seq}"),
                None,
            )
            .await
            .0;
        assert!(
            !(a == 200 && b == 200),
            "record {seq} shown to both tenants"
        );
        seen[0] += u32::from(a == 200);
        seen[1] += u32::from(b == 200);
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "each tenant proves its own: {seen:?}"
    );

    // Another tailnet in a path is refused.
    let a_id = env.ok(KEY, Method::GET, "/api/v2/tailnets", None).await["tailnets"][0]["id"]
        .as_str()
        .expect("A's id")
        .to_owned();
    let (s, _) = env
        .call(
            &key_b,
            Method::GET,
            &format!("/api/v2/tailnet/{a_id}/logging/network"),
            None,
        )
        .await;
    assert_eq!(s, 403);

    // Names are per tailnet: both may create "app", neither learns of the other's.
    for key in [KEY, key_b.as_str()] {
        let (s, v) = env
            .call(
                key,
                Method::POST,
                "/collections",
                Some(json!({ "collection": "app", "action": "create" })),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    // A's node cannot be adopted by B.
    let a_public = tally_proto::PrivateId::parse(&nodes[0].1)
        .expect("private")
        .public()
        .to_hex();
    let (s, v) = env
        .call(
            &key_b,
            Method::POST,
            "/instances",
            Some(json!({ "collection": "app", "instances": [a_public] })),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    // Nobody writes findings but the server.
    let (s, v) = env
        .upload(
            "findings",
            &nodes[0].1,
            &json!({ "class": "count_mismatch", "tailnet": "forged" }),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("only by the server"),
        "{v}"
    );
}
