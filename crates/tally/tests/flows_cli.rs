//! `tally flows query` and `tally flows top` against a real server: two
//! nodes registered through the agent API post Tailscale-shaped flow
//! records, and the verbs print them with node names resolved, filtered,
//! paged, ranked, as NDJSON, and fail with the server's message.

mod common;

use common::{KEY, TestServer, bin, http};
use serde_json::{Value, json};
use std::process::{Command, Output};

fn tally(server: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(["--server", server, "--api-key", KEY])
        .env("TALLY_LOG", "warn")
        .env_remove("TALLY_API_KEY")
        .env_remove("TALLY_SERVER")
        .output()
        .expect("run tally")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "exit status {}", out.status);
    String::from_utf8(out.stderr.clone()).expect("utf-8")
}

/// The table's data rows, split on runs of two or more spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('('))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn column(rows: &[Vec<String>], i: usize) -> Vec<&str> {
    rows.iter().map(|r| r[i].as_str()).collect()
}

fn ago(minutes: i64) -> String {
    tally_proto::timefmt::format_nanos(tally_proto::timefmt::now_nanos() - minutes * 60_000_000_000)
}

/// A flow record starting `minutes` ago, lasting 5 s.
fn record(node: &str, minutes: i64, traffic: Value) -> Value {
    let start = tally_proto::timefmt::now_nanos() - minutes * 60_000_000_000;
    let mut r = json!({
        "nodeId": node,
        "start": tally_proto::timefmt::format_nanos(start),
        "end": tally_proto::timefmt::format_nanos(start + 5_000_000_000),
    });
    if let (Some(r), Some(t)) = (r.as_object_mut(), traffic.as_object()) {
        r.extend(t.clone());
    }
    r
}

struct Env {
    server: TestServer,
    http: reqwest::Client,
}

impl Env {
    async fn call(&self, method: reqwest::Method, path: &str, key: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Registers a node; returns its private ID (hex) and node ID.
    async fn register(&self, auth_key: &str, hostname: &str, address: &str) -> (String, String) {
        let (private, id) =
            common::register_node(&self.server.url, auth_key, hostname, address).await;
        (private.to_hex(), id)
    }

    async fn post_flows(&self, private: &str, records: &[Value]) {
        let resp = self
            .http
            .post(format!("{}/c/tailtraffic/{private}", self.server.url))
            .json(&records)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_query_and_top_from_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = Env {
        server: TestServer::start(dir.path(), &[]),
        http: http(),
    };
    let ak = env
        .call(
            reqwest::Method::POST,
            "/api/v2/tailnet/-/keys",
            KEY,
            json!({"capabilities": {"devices": {"create": {"reusable": true}}}}),
        )
        .await;
    let ak = ak["key"].as_str().expect("auth key").to_owned();
    let (web_private, web) = env.register(&ak, "web1", "100.64.0.1").await;
    let (db_private, db) = env.register(&ak, "db1", "100.64.0.2").await;
    env.call(
        reqwest::Method::PATCH,
        "/api/v2/tailnet/-/settings",
        KEY,
        json!({"networkFlowLoggingOn": true}),
    )
    .await;

    // web1: an old record (2 h ago), one with TCP to db1 and ICMP to the
    // internet (10 min ago) and a busy TCP interval (5 min ago); db1: its
    // own view of the first TCP interval (9 min ago).
    env.post_flows(
        &web_private,
        &[
            record(
                "x",
                120,
                json!({"virtualTraffic": [{"proto": 6, "src": "100.64.0.1:6000",
                    "dst": "100.64.0.2:22", "txPkts": 1, "txBytes": 100}]}),
            ),
            record(
                "x",
                10,
                json!({
                    "virtualTraffic": [{"proto": 6, "src": "100.64.0.1:5555",
                        "dst": "100.64.0.2:5432", "txPkts": 10, "txBytes": 1500,
                        "rxPkts": 8, "rxBytes": 900}],
                    "exitTraffic": [{"proto": 1, "src": "100.64.0.1:0", "dst": "1.1.1.1:0",
                        "txPkts": 30, "txBytes": 840, "rxPkts": 30, "rxBytes": 840}],
                }),
            ),
            record(
                "x",
                5,
                json!({"virtualTraffic": [{"proto": 6, "src": "100.64.0.1:5556",
                    "dst": "100.64.0.2:5432", "txPkts": 100, "txBytes": 150000,
                    "rxPkts": 50, "rxBytes": 4000}]}),
            ),
        ],
    )
    .await;
    env.post_flows(
        &db_private,
        &[record(
            "y",
            9,
            json!({"virtualTraffic": [{"proto": 6, "src": "100.64.0.2:5432",
                "dst": "100.64.0.1:5555", "txPkts": 8, "txBytes": 900,
                "rxPkts": 10, "rxBytes": 1500}]}),
        )],
    )
    .await;
    let url = env.server.url.clone();
    let t = |args: &[&str]| tally(&url, args);

    // The table: newest first, one row per entry, names resolved.
    let out = ok(&t(&["flows", "query", "--since", "1h"]));
    assert!(
        out.starts_with("TIME") && out.lines().next().is_some_and(|h| h.contains("NODE")),
        "{out}"
    );
    let r = rows(&out);
    assert_eq!(r.len(), 4, "{out}");
    assert_eq!(column(&r, 1), ["web1", "db1", "web1", "web1"], "{out}");
    assert_eq!(
        column(&r, 2),
        ["virtual", "virtual", "virtual", "exit"],
        "{out}"
    );
    assert_eq!(column(&r, 3), ["tcp", "tcp", "tcp", "icmp"], "{out}");
    assert_eq!(
        r[0][4..],
        [
            "100.64.0.1:5556",
            "100.64.0.2:5432 (db1)",
            "100/146.5 KiB",
            "50/3.9 KiB"
        ],
        "{out}"
    );
    assert_eq!(
        r[1][4..],
        [
            "100.64.0.2:5432",
            "100.64.0.1:5555 (web1)",
            "8/900 B",
            "10/1.5 KiB"
        ],
        "{out}"
    );
    assert_eq!(
        r[3][4..],
        ["100.64.0.1:0", "1.1.1.1:0", "30/840 B", "30/840 B"]
    );
    let times = column(&r, 0);
    assert!(times[0] > times[1] && times[1] > times[2], "{out}");
    assert_eq!(times[2], times[3]);
    assert!(times[3] >= ago(11).as_str(), "{out}");

    // NDJSON in Tailscale's shape, one record per line.
    let out = ok(&t(&["flows", "query", "--since", "1h", "--json"]));
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 3, "{out}");
    let nodes: Vec<&str> = records
        .iter()
        .map(|r| r["nodeId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(nodes, [web.as_str(), db.as_str(), web.as_str()]);
    assert!(records.iter().all(|r| r["logged"].is_string()), "{out}");
    assert_eq!(records[0]["virtualTraffic"][0]["txBytes"], 150000);
    assert_eq!(records[2]["exitTraffic"][0]["proto"], 1);
    assert_eq!(records[2]["exitTraffic"][0]["dst"], "1.1.1.1:0");

    // Filters.
    let out = ok(&t(&["flows", "query", "--node", "web1"]));
    assert_eq!(column(&rows(&out), 1), ["web1"; 3], "{out}");
    let out = ok(&t(&["flows", "query", "--node", &db]));
    assert_eq!(column(&rows(&out), 1), ["db1"], "{out}");
    let out = ok(&t(&["flows", "query", "--proto", "udp"]));
    assert!(out.starts_with("no flow log entries from "), "{out}");
    assert_eq!(ok(&t(&["flows", "query", "--proto", "udp", "--json"])), "");
    let out = ok(&t(&["flows", "query", "--port", "5432"]));
    let r = rows(&out);
    assert_eq!(r.len(), 3, "{out}");
    assert!(r.iter().all(|r| r[2] == "virtual"), "{out}");
    let out = ok(&t(&[
        "flows",
        "query",
        "--kind",
        "exit",
        "--dst",
        "1.1.1.0/24",
    ]));
    assert_eq!(column(&rows(&out), 5), ["1.1.1.1:0"], "{out}");
    let out = ok(&t(&["flows", "query", "--since", "3h"]));
    let r = rows(&out);
    assert_eq!(r.len(), 5, "{out}");
    assert_eq!(r[4][5], "100.64.0.2:22 (db1)", "{out}");
    let out = ok(&t(&["flows", "query", "--since", "3h", "--until", "1h"]));
    assert_eq!(rows(&out).len(), 1, "{out}");

    // Paging: one entry per request, cursors followed up to --limit; a
    // record with two entries comes whole on its own page.
    let out = ok(&t(&[
        "flows",
        "query",
        "--since",
        "3h",
        "--limit",
        "3",
        "--page-size",
        "1",
    ]));
    let r = rows(&out);
    assert_eq!(column(&r, 2), ["virtual", "virtual", "virtual"], "{out}");
    assert!(
        out.contains("(newest 3 entries shown; raise --limit"),
        "{out}"
    );
    let out = ok(&t(&[
        "flows",
        "query",
        "--since",
        "3h",
        "--limit",
        "3",
        "--page-size",
        "1",
        "--json",
    ]));
    assert_eq!(out.lines().count(), 3, "{out}");
    let out = ok(&t(&[
        "flows",
        "query",
        "--since",
        "3h",
        "--limit",
        "10",
        "--page-size",
        "1",
        "--json",
    ]));
    assert_eq!(out.lines().count(), 4, "{out}");

    // Who talks to whom.
    let out = ok(&t(&["flows", "top", "--by", "bytes"]));
    assert!(out.starts_with("SRC"), "{out}");
    assert_eq!(
        rows(&out),
        [
            ["web1", "db1", "110/147.9 KiB", "58/4.8 KiB", "152.7 KiB"],
            ["db1", "web1", "8/900 B", "10/1.5 KiB", "2.3 KiB"],
            ["web1", "1.1.1.1", "30/840 B", "30/840 B", "1.6 KiB"],
        ],
        "{out}"
    );
    let out = ok(&t(&["flows", "top", "--by", "packets"]));
    let r = rows(&out);
    assert_eq!(column(&r, 1), ["db1", "1.1.1.1", "web1"], "{out}");
    assert_eq!(column(&r, 4), ["168 pkts", "60 pkts", "18 pkts"], "{out}");
    let out = ok(&t(&["flows", "top", "--node", "db1"]));
    assert_eq!(column(&rows(&out), 0), ["db1"], "{out}");
    let out = ok(&t(&["flows", "top", "--limit", "1"]));
    assert_eq!(rows(&out).len(), 1, "{out}");
    assert!(out.contains("(top 1 of 3 pairs shown"), "{out}");
    let out = ok(&t(&["flows", "top", "--since", "3h", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let first = &v["pairs"][0];
    assert_eq!(first["src"], web.as_str());
    assert_eq!(first["dst"], db.as_str());
    assert_eq!(
        (first["srcName"].as_str(), first["dstName"].as_str()),
        (Some("web1"), Some("db1"))
    );
    assert_eq!(first["totalBytes"], 156_500);
    assert_eq!(first["txPkts"], 111);
    assert_eq!(v["pairs"][2]["dst"], "1.1.1.1");
    assert_eq!(v["pairs"][2]["dstIsNode"], false);
    assert_eq!(v["more"], false);

    // Errors: the server's message, exit status 1.
    let e = err(&t(&["flows", "query", "--proto", "nonsense"]));
    assert!(
        e.contains("400")
            && e.contains("proto must be tcp, udp, icmp, icmpv6 or a protocol number"),
        "{e}"
    );
    let e = err(&t(&["flows", "top", "--proto", "nonsense"]));
    assert!(e.contains("proto must be"), "{e}");
    let e = err(&t(&["flows", "query", "--node", "nosuch"]));
    assert!(e.contains("404") && e.contains("no device"), "{e}");
    let e = err(&t(&["flows", "query", "--since", "1h", "--until", "2h"]));
    assert!(e.contains("--since must be before --until"), "{e}");
}
