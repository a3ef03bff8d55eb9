//! Reconciliation through the real server: two registered nodes report the
//! two halves of two connections; one side's counts were edited. The
//! finding names both nodes and the window, lands in the `findings`
//! collection and in the reconciliation API.

mod common;

use common::{KEY, TestServer, http};
use serde_json::{Value, json};
use std::time::Duration;

fn rfc(n: i64) -> String {
    tally_proto::timefmt::format_nanos(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_half_becomes_a_finding_naming_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("server"),
        &["--reconcile-window", "1s", "--reconcile-grace", "15s"],
    );
    let c = http();
    let auth_key = common::reusable_auth_key(&server.url).await;
    // On before the nodes register: the records below cover the 12 s
    // before their upload, and the reconciler knows when it was off.
    common::set_flow_logging(&server.url, true).await;
    let auth = &auth_key;
    let mut nodes = Vec::new();
    for (host, addr) in [("alpha", "100.64.0.1"), ("beta", "100.64.0.2")] {
        let (private, id) = common::register_node(&server.url, auth, host, addr).await;
        nodes.push((private.to_hex(), id));
    }
    let mut stream = c
        .get(format!("{}/c/findings", server.url))
        .bearer_auth(KEY)
        .query(&[("stream", "true"), ("time-start", "1970-01-01T00:00:00Z")])
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Ten 1-s records from both ends: alpha sent 50 kB a second to beta,
    // beta's records say it received 1 kB a second.
    let now = tally_proto::timefmt::now_nanos();
    let sec = 1_000_000_000i64;
    let sides = [
        (
            &nodes[0],
            "100.64.0.1:40000",
            "100.64.0.2:5432",
            ("txPkts", "txBytes", 50_000u64),
        ),
        (
            &nodes[1],
            "100.64.0.2:5432",
            "100.64.0.1:40000",
            ("rxPkts", "rxBytes", 1_000u64),
        ),
    ];
    for ((private, node), src, dst, (pk, bk, bytes)) in sides {
        let records: Vec<Value> = (0..10)
            .map(|i| {
                let start = now - (12 - i) * sec;
                // Two connections (the second one port up on beta), both edited.
                let entries: Vec<Value> = [0u16, 1]
                    .iter()
                    .map(|k| {
                        let port = |a: &str| {
                            let (ip, p) = a.rsplit_once(':').unwrap();
                            let p: u16 = p.parse().unwrap();
                            format!("{ip}:{}", if p == 5432 { p + k } else { p })
                        };
                        let mut e = json!({ "proto": 6, "src": port(src), "dst": port(dst) });
                        e[pk] = json!(40);
                        e[bk] = json!(bytes);
                        e
                    })
                    .collect();
                json!({ "nodeId": node, "start": rfc(start), "end": rfc(start + sec), "virtualTraffic": entries })
            })
            .collect();
        let resp = c
            .post(format!("{}/c/tailtraffic/{private}", server.url))
            .json(&records)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let mut buf = Vec::new();
    let finding = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line)
                    && v["class"] == "count_mismatch"
                {
                    return v;
                }
            }
            buf.extend_from_slice(&stream.chunk().await.unwrap().expect("stream open"));
        }
    })
    .await
    .expect("a count-mismatch finding within 60 s");
    let names = [
        finding["node"].as_str().unwrap_or(""),
        finding["peer"].as_str().unwrap_or(""),
    ];
    assert!(
        names.contains(&nodes[0].1.as_str()) && names.contains(&nodes[1].1.as_str()),
        "{finding}"
    );
    let start = finding["window"]["start"].as_i64().unwrap();
    assert!(start >= now - 14 * sec && start <= now, "{finding}");
    let v: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/reconciliation?class=count_mismatch",
        server.url
    ))
    .await;
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == finding["id"]),
        "{v}"
    );
    assert!(
        v["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["completeness"].as_f64().is_some_and(|c| c < 1.0)),
        "{v}"
    );
    // A network log stream's status counts the windows the other end
    // did not confirm (Tailscale's numSpoofedEntries).
    let http = common::http();
    let put = http
        .put(format!(
            "{}/api/v2/tailnet/-/logging/network/stream",
            server.url
        ))
        .bearer_auth(KEY)
        .json(&serde_json::json!({
            "destinationType": "webhook",
            "url": "http://127.0.0.1:9/hook",
            "token": "k",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let status: Value = common::get_json(&format!(
        "{}/api/v2/tailnet/-/logging/network/stream/status",
        server.url
    ))
    .await;
    let unconfirmed: u64 = v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["judged"].as_u64().unwrap() - p["matched"].as_u64().unwrap())
        .sum();
    assert!(unconfirmed > 0, "{v}");
    assert!(
        status["numSpoofedEntries"].as_u64() >= Some(unconfirmed),
        "{status}"
    );
    // Completeness carries the last hour in buckets and a trend.
    let pair = v["pairs"].as_array().unwrap()[0].clone();
    let recent: u64 = pair["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["judged"].as_u64().unwrap())
        .sum();
    assert_eq!(Some(recent), pair["judged"].as_u64(), "{pair}");
    // Every judged window lies in the last few seconds: the half hour
    // before has none to compare with.
    assert_eq!(pair["trend"], "unknown", "{pair}");
    // Paging: one finding per page, each page older than the last, until
    // the cursor runs out; together they are the unpaged list.
    let all: Value =
        common::get_json(&format!("{}/api/v2/tailnet/-/reconciliation", server.url)).await;
    let all: Vec<Value> = all["findings"].as_array().unwrap().clone();
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = common::get_json(&format!(
            "{}/api/v2/tailnet/-/reconciliation?limit=1{cursor}",
            server.url
        ))
        .await;
        paged.extend(page["findings"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
        assert!(paged.len() <= all.len(), "paging does not end: {page}");
    }
    assert!(all.len() >= 2, "one finding per edited connection: {all:?}");
    let ids = |v: &[Value]| v.iter().map(|f| f["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&paged), ids(&all));
    // The CLI report shows the finding and the nodes' completeness.
    let out = std::process::Command::new(common::bin())
        .args([
            "reconcile",
            "report",
            "--since",
            "1h",
            "--server",
            &server.url,
            "--api-key",
            KEY,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("count_mismatch") && text.contains(&nodes[0].1),
        "{text}"
    );
    assert!(text.contains("COMPLETE"), "{text}");
}

/// Uploads ten 1-s records from each of two nodes about one connection
/// (alpha's port 40000 to beta's `port`), ending 2 s before `now`: alpha
/// says it sent 50 kB a second, beta that it received 1 kB.
async fn upload_edited_connection(
    c: &reqwest::Client,
    url: &str,
    nodes: &[(String, String)],
    port: u16,
    now: i64,
) {
    let sec = 1_000_000_000i64;
    let alpha = "100.64.0.1:40000".to_owned();
    let beta = format!("100.64.0.2:{port}");
    let sides = [
        (&nodes[0], &alpha, &beta, ("txPkts", "txBytes", 50_000u64)),
        (&nodes[1], &beta, &alpha, ("rxPkts", "rxBytes", 1_000u64)),
    ];
    for ((private, node), src, dst, (pk, bk, bytes)) in sides {
        let records: Vec<Value> = (0..10)
            .map(|i| {
                let start = now - (12 - i) * sec;
                let mut e = json!({ "proto": 6, "src": src, "dst": dst });
                e[pk] = json!(40);
                e[bk] = json!(bytes);
                json!({ "nodeId": node, "start": rfc(start), "end": rfc(start + sec), "virtualTraffic": [e] })
            })
            .collect();
        let resp = c
            .post(format!("{url}/c/tailtraffic/{private}"))
            .json(&records)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

/// Whether a finding is about beta's `port`.
fn about_port(f: &Value, port: u16) -> bool {
    let ev = &f["evidence"];
    [&ev["src"], &ev["dst"]]
        .iter()
        .any(|a| a.as_str().is_some_and(|a| a.ends_with(&format!(":{port}"))))
}

/// Polls the `findings` collection (at most 60 s) until `done` holds.
async fn findings_until(url: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let fs = common::read_all(&http(), url, "findings").await;
        if done(&fs) {
            return fs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the findings never got there: {fs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(pos, written)` of the reconciler's saved state, once there is one.
fn saved_position(data: &std::path::Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(data.join("reconcile.state")).ok()?;
    let line = bytes.split(|b| *b == b'\n').next()?;
    let v: Value = serde_json::from_slice(line).ok()?;
    Some((v["pos"].as_u64()?, v["written"].as_u64()?))
}

/// A saved reconciler state from another engine version does not stop the
/// server: reconciliation goes on from the saved position with a warning
/// (no finding derived twice from the records before it, new records
/// judged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_another_engine_version_is_replaced_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let args = ["--reconcile-window", "1s", "--reconcile-grace", "15s"];
    let mut server = TestServer::start(&data, &args);
    let c = http();
    let auth_key = common::reusable_auth_key(&server.url).await;
    // On before the nodes register: the records below cover the 12 s
    // before their upload, and the reconciler knows when it was off.
    common::set_flow_logging(&server.url, true).await;
    let mut nodes = Vec::new();
    for (host, addr) in [("alpha", "100.64.0.1"), ("beta", "100.64.0.2")] {
        let (private, id) = common::register_node(&server.url, &auth_key, host, addr).await;
        nodes.push((private.to_hex(), id));
    }

    // A first edited connection, found, and the state saved after it (the
    // reconciler saves every 15 s).
    let now = tally_proto::timefmt::now_nanos();
    upload_edited_connection(&c, &server.url, &nodes, 5432, now).await;
    findings_until(&server.url, |fs| {
        fs.iter().any(|f| f["class"] == "count_mismatch")
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (before, saved) = loop {
        let fs = common::read_all(&c, &server.url, "findings").await;
        if let Some((pos, written)) = saved_position(&data)
            && written >= 1
            && written == fs.len() as u64
        {
            break (fs, (pos, written));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reconciler never saved its state after the findings"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.stop();

    // The snapshot becomes one of another engine version (its version
    // number changed); position and findings written stay.
    let state = std::fs::read(data.join("reconcile.state")).unwrap();
    let nl = state.iter().position(|b| *b == b'\n').unwrap();
    let (head, snapshot) = (&state[..=nl], &state[nl + 1..]);
    let version = u32::from_le_bytes(snapshot[..4].try_into().unwrap());
    let mut other = snapshot.to_vec();
    other[..4].copy_from_slice(&(version + 1).to_le_bytes());
    std::fs::write(data.join("reconcile.state"), [head, &other].concat()).unwrap();
    assert_eq!(saved_position(&data), Some(saved));

    let (server, stderr) = TestServer::start_with_stderr(&data, &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = stderr
            .recv_timeout(left)
            .expect("no warning about the replaced state");
        if line.contains("reconcile.state")
            && line.contains("goes on from the same store position with a fresh state")
        {
            break;
        }
    }
    // A second edited connection is judged.
    let now = tally_proto::timefmt::now_nanos();
    upload_edited_connection(&c, &server.url, &nodes, 5433, now).await;
    let after = findings_until(&server.url, |fs| {
        fs.iter()
            .any(|f| f["class"] == "count_mismatch" && about_port(f, 5433))
    })
    .await;
    // The findings before the restart are kept, none is written twice, and
    // the records before the saved position were not judged again.
    let ids: Vec<&str> = after.iter().filter_map(|f| f["id"].as_str()).collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "a finding written twice: {after:#?}"
    );
    for f in &before {
        assert!(unique.contains(f["id"].as_str().unwrap()), "lost: {f}");
    }
    let first = |fs: &[Value]| fs.iter().filter(|f| about_port(f, 5432)).count();
    assert!(first(&before) >= 1, "{before:#?}");
    assert_eq!(first(&after), first(&before), "{after:#?}");
    let v: Value =
        common::get_json(&format!("{}/api/v2/tailnet/-/reconciliation", server.url)).await;
    assert!(
        v["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| about_port(f, 5433))),
        "{v}"
    );
}
