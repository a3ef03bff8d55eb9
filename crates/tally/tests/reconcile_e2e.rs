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
        &["--reconcile-window", "1s", "--reconcile-grace", "1s"],
    );
    let c = http();
    let auth_key = common::reusable_auth_key(&server.url).await;
    let auth = &auth_key;
    let mut nodes = Vec::new();
    for (host, addr) in [("alpha", "100.64.0.1"), ("beta", "100.64.0.2")] {
        let (private, id) = common::register_node(&server.url, auth, host, addr).await;
        nodes.push((private.to_hex(), id));
    }
    let resp = c
        .patch(format!("{}/api/v2/tailnet/-/settings", server.url))
        .bearer_auth(KEY)
        .json(&json!({ "networkFlowLoggingOn": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
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
    // Completeness carries the last hour in buckets and a trend.
    let pair = v["pairs"].as_array().unwrap()[0].clone();
    let recent: u64 = pair["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["judged"].as_u64().unwrap())
        .sum();
    assert_eq!(Some(recent), pair["judged"].as_u64(), "{pair}");
    assert!(pair["trend"].is_string(), "{pair}");
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

/// A saved reconciler state from another engine version does not stop the
/// server: reconciliation goes on from the saved position with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_another_engine_version_is_replaced_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    let old_snapshot = serde_json::to_vec(&json!({ "version": 1 })).unwrap();
    std::fs::write(
        data.join("reconcile.state"),
        serde_json::to_vec(&json!({ "pos": 0, "written": 0, "snapshot": old_snapshot })).unwrap(),
    )
    .unwrap();
    let server = TestServer::start(&data, &[]);
    let v: Value =
        common::get_json(&format!("{}/api/v2/tailnet/-/reconciliation", server.url)).await;
    assert!(
        v["findings"].as_array().is_some_and(|f| f.is_empty()),
        "{v}"
    );
}
