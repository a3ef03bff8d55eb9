//! The reconciliation report (`GET /api/v2/tailnet/{t}/reconciliation`)
//! against a real server on SQLite: findings appended to the `findings`
//! collection the way the reconciler writes them are grouped into
//! incidents with a summary per class, every node ID is named, node names
//! and classes are checked, completeness with nothing judged is null, and
//! deleted nodes leave the completeness tables but keep their findings.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Db, Env, OWNER_KEY, start};
use tally_reconcile::{BUCKET_NS, Bucket};
use tally_server::consumers::reconcile::FINDINGS_COLLECTION;
use tally_server::consumers::reconcile_report::{INCIDENT_GAP_NS, trend};

const S: i64 = 1_000_000_000;

/// A finding as the reconciler stores it (`tally_reconcile::Finding` as JSON).
#[allow(clippy::too_many_arguments)]
fn finding(
    k: u64,
    tailnet: &str,
    class: &str,
    severity: &str,
    node: &str,
    peer: &str,
    start: i64,
    port: u16,
) -> Value {
    json!({
        "id": format!("{k:016x}{:016x}", 0xf1du64),
        "class": class,
        "severity": severity,
        "tailnet": tailnet,
        "node": node,
        "peer": peer,
        "window": { "start": start, "end": start + 5 * S },
        "evidence": { "proto": 6, "src": format!("100.64.0.1:{port}"), "dst": "100.64.0.2:22" },
        "detail": format!("finding {k}"),
    })
}

/// Appends findings to the `findings` collection, as the reconciler does
/// (another instance, so the reconciler's own dedup is not touched).
async fn append(env: &Env, findings: &[Value]) {
    let now = tally_proto::timefmt::now_nanos();
    let records = findings
        .iter()
        .map(|f| tally_store::NewRecord {
            time: now,
            collection: FINDINGS_COLLECTION.to_owned(),
            owner: tally_store::Owner::tailnet(f["tailnet"].as_str().expect("tailnet").to_owned()),
            instance: [0x5e; 32],
            identity: None,
            client_time: None,
            kind: tally_store::kind::LOG,
            body: serde_json::to_vec(f).expect("finding JSON"),
        })
        .collect();
    env.store.append(records).await.expect("findings appended");
}

async fn get(env: &Env, query: &str) -> (u16, Value) {
    env.call(
        OWNER_KEY,
        Method::GET,
        &format!("/api/v2/tailnet/-/reconciliation?{query}"),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_become_incidents_with_names() {
    let env = start(&Db::Sqlite).await;
    let key = env.auth_key(true, &[]).await;
    let alpha = env.register(&key, "alpha").await;
    let beta = env.register(&key, "beta").await;
    let gamma = env.register(&key, "gamma").await;
    let twin1 = env.register(&key, "twin").await;
    let twin2 = env.register(&key, "twin").await;
    let t = env.tailnet.clone();

    // beta silent for 70 s: 14 windows, each with a finding per peer
    // (alpha and gamma); then, ten minutes later, 3 more windows against
    // alpha; and one count mismatch alpha -> gamma.
    let base = tally_proto::timefmt::now_nanos() - 40 * 60 * S;
    let mut fs = Vec::new();
    let mut k = 0;
    for w in 0..14 {
        for (peer, port) in [(&alpha, 1000), (&gamma, 1001)] {
            k += 1;
            let sev = if w == 7 { "high" } else { "medium" };
            fs.push(finding(
                k,
                &t,
                "missing_agent_silent",
                sev,
                &beta,
                peer,
                base + w * 5 * S,
                port,
            ));
        }
    }
    let second = base + 70 * S + 10 * 60 * S;
    for w in 0..3 {
        k += 1;
        fs.push(finding(
            k,
            &t,
            "missing_agent_silent",
            "medium",
            &beta,
            &alpha,
            second + w * 5 * S,
            1000,
        ));
    }
    k += 1;
    fs.push(finding(
        k,
        &t,
        "count_mismatch",
        "high",
        &alpha,
        &gamma,
        base + 5 * 60 * S,
        2000,
    ));
    // Stored out of window order: grouping does not depend on it.
    fs.reverse();
    append(&env, &fs).await;

    let sp = format!("start={}", base / S - 3600);
    let (s, v) = get(&env, &sp).await;
    assert_eq!(s, 200, "{v}");
    let sum = &v["summary"];
    assert_eq!(sum["findings"], 32, "{sum}");
    assert_eq!(sum["incidents"], 3, "{sum}");
    assert_eq!(sum["capped"], false, "{sum}");
    assert_eq!(sum["incidentGapSeconds"], INCIDENT_GAP_NS / S, "{sum}");
    let classes = sum["classes"].as_array().expect("classes");
    assert_eq!(
        classes[0],
        json!({"class": "count_mismatch", "findings": 1, "incidents": 1})
    );
    assert_eq!(
        classes[1],
        json!({"class": "missing_agent_silent", "findings": 31, "incidents": 2})
    );
    // Newest first: the second outage, then the mismatch, then the first outage.
    let inc = v["incidents"].as_array().expect("incidents");
    assert_eq!(inc.len(), 3, "{inc:#?}");
    assert_eq!(inc[0]["findings"], 3);
    assert_eq!(inc[1]["class"], "count_mismatch");
    let outage = &inc[2];
    assert_eq!(outage["node"], beta.as_str());
    assert_eq!(outage["nodeName"], "beta");
    assert_eq!(outage["class"], "missing_agent_silent");
    assert_eq!(outage["severity"], "high");
    assert_eq!(outage["findings"], 28);
    assert_eq!(outage["window"]["start"], base);
    assert_eq!(outage["window"]["end"], base + 70 * S);
    assert_eq!(outage["durationSeconds"], 70.0);
    assert_eq!(
        outage["firstFinding"],
        format!("{:016x}{:016x}", 1, 0xf1du64)
    );
    assert_eq!(outage["id"], "inc-0000000000000001");
    let mut peers: Vec<&str> = outage["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["name"].as_str().expect("peer name"))
        .collect();
    peers.sort_unstable();
    assert_eq!(peers, ["alpha", "gamma"]);
    assert_eq!(outage["connections"]["count"], 2);
    assert_eq!(
        outage["connections"]["list"][0],
        "tcp 100.64.0.1:1000 -> 100.64.0.2:22"
    );
    // Per-window findings are still there, named and tagged with their incident.
    let findings = v["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 32);
    let f = findings
        .iter()
        .find(|f| f["class"] == "count_mismatch")
        .expect("mismatch");
    assert_eq!(
        (&f["nodeName"], &f["peerName"]),
        (&json!("alpha"), &json!("gamma"))
    );
    assert_eq!(f["incident"], inc[1]["id"]);

    // One incident's findings, paged.
    let id = outage["id"].as_str().expect("incident id");
    let (s, one) = get(&env, &format!("{sp}&incident={id}&limit=20")).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["findings"].as_array().map(Vec::len), Some(20));
    assert!(
        one["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|f| f["incident"] == id)
    );
    let cursor = one["nextCursor"].as_str().expect("a second page");
    let (s, rest) = get(
        &env,
        &format!("{sp}&incident={id}&limit=20&cursor={cursor}"),
    )
    .await;
    assert_eq!(s, 200, "{rest}");
    assert_eq!(rest["findings"].as_array().map(Vec::len), Some(8));
    assert!(rest["nextCursor"].is_null());
    let (s, e) = get(&env, &format!("{sp}&incident=inc-nosuch")).await;
    assert_eq!(s, 404, "{e}");

    // A node by name or by ID; the summary follows the filter.
    for n in ["gamma", gamma.as_str()] {
        let (s, g) = get(&env, &format!("{sp}&node={n}")).await;
        assert_eq!(s, 200, "{g}");
        assert_eq!(g["summary"]["findings"], 15, "{}", g["summary"]);
        assert_eq!(g["summary"]["incidents"], 2, "{}", g["summary"]);
    }
    // Unknown and ambiguous names, unknown classes.
    let (s, e) = get(&env, "node=nosuch").await;
    assert_eq!(s, 404, "{e}");
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|m| m.contains("tally nodes list")),
        "{e}"
    );
    // Two machines with one hostname get distinct names (the ambiguity
    // check for older data is resolve_node's unit test).
    for (name, id) in [("twin", &twin1), ("twin-1", &twin2)] {
        let (s, t) = get(&env, &format!("{sp}&node={name}")).await;
        assert_eq!(s, 200, "{t}");
        let (s, by_id) = get(&env, &format!("{sp}&node={id}")).await;
        assert_eq!(s, 200, "{by_id}");
        assert_eq!(t["summary"], by_id["summary"], "{name}");
    }
    let (s, e) = get(&env, "class=count_mismatchh").await;
    assert_eq!(s, 400, "{e}");
    let msg = e["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("count_mismatch,") && msg.contains("missing_agent_silent"),
        "{e}"
    );

    // Completeness: the registered nodes are listed by name once the
    // reconciler read them; nothing judged is null, its trend unknown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let nodes = loop {
        let (_, v) = get(&env, "").await;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 5 {
            break nodes;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let b = nodes
        .iter()
        .find(|n| n["node"] == beta.as_str())
        .expect("beta");
    assert_eq!(b["nodeName"], "beta");
    assert_eq!(b["judged"], 0);
    assert!(b["completeness"].is_null(), "{b}");
    assert_eq!(b["trend"], "unknown");

    // A deleted node leaves the table; its findings stay, named "(deleted)".
    let (s, d) = env
        .call(
            OWNER_KEY,
            Method::DELETE,
            &format!("/api/v2/device/{gamma}"),
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {d}");
    let (s, v) = get(&env, &sp).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(4), "{v}");
    assert!(
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|n| n["node"] != gamma.as_str())
    );
    let f = v["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["class"] == "count_mismatch")
        .expect("mismatch");
    assert_eq!(f["peerName"], "(deleted)");
    let (s, g) = get(&env, &format!("{sp}&node={gamma}")).await;
    assert_eq!(s, 200, "a deleted node's findings by its ID: {g}");
    assert_eq!(g["summary"]["findings"], 15);
}

/// The trend compares the older half of the judged buckets with the newer
/// half; too few windows is "unknown".
#[test]
fn trend_from_the_buckets_there_are() {
    let b = |k: i64, judged: u32, matched: u32| Bucket {
        start: k * BUCKET_NS,
        judged,
        matched,
    };
    assert_eq!(trend(&[b(1, 300, 300)]), "unknown", "one bucket");
    assert_eq!(trend(&[b(1, 5, 5), b(2, 300, 10)]), "unknown", "5 windows");
    assert_eq!(trend(&[b(1, 120, 120), b(2, 120, 60)]), "worsening");
    assert_eq!(trend(&[b(1, 120, 60), b(2, 120, 120)]), "improving");
    assert_eq!(
        trend(&[b(1, 120, 119), b(2, 1, 0), b(3, 120, 120)]),
        "steady"
    );
}
