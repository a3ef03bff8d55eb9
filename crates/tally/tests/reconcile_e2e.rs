//! Reconciliation through the real server: two registered nodes report the
//! two halves of one connection; one side's counts were edited. The
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
        let private = tally_proto::PrivateId::generate().to_hex();
        let v: Value = c
            .post(format!("{}/api/v2/agent/{private}", server.url))
            .bearer_auth(auth)
            .json(&json!({ "hostname": host, "addresses": [addr] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        nodes.push((private, v["node"]["id"].as_str().unwrap().to_owned()));
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
                let mut e = json!({ "proto": 6, "src": src, "dst": dst });
                e[pk] = json!(40);
                e[bk] = json!(bytes);
                json!({ "nodeId": node, "start": rfc(start), "end": rfc(start + sec), "virtualTraffic": [e] })
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
