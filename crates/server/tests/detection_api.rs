//! The detection API (issue 13): rules as configuration (add, change,
//! enable, disable, delete; audited), bad rules answered with a 400 that
//! names the line, built-in rules that can be disabled but not deleted, a
//! rule test run over stored data, alerts listed and acknowledged, and
//! tenants and roles kept apart.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Db, Env, OWNER_KEY, start};

const RULE: &str = "title: Telnet anywhere
id: own-telnet
logsource:
    product: tally
    service: flows
detection:
    selection:
        dst_port: 23
    condition: selection
level: high
";

async fn post_yaml(env: &Env, key: &str, yaml: &str) -> (u16, Value) {
    let resp = env
        .http
        .post(format!("{}/api/v2/tailnet/-/detection/rules", env.base))
        .bearer_auth(key)
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .expect("sent");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// Alerts of `rule` in the caller's tailnet.
async fn alerts_of(env: &Env, key: &str, rule: &str) -> Vec<Value> {
    let (s, v) = env
        .call(
            key,
            Method::GET,
            &format!("/api/v2/tailnet/-/alerts?rule={rule}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["alerts"].as_array().cloned().unwrap_or_default()
}

/// Waits until the detection consumer read everything stored now.
async fn detection_caught_up(env: &Env) {
    tally_testkit::wait::until("detection at the end", Duration::from_secs(30), || async {
        let (s, v) = env
            .call(OWNER_KEY, Method::GET, "/api/v2/consumers", None)
            .await;
        let d = v["consumers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "detection").cloned())
            .unwrap_or_default();
        if s == 200 && d["lagRecords"] == 0 {
            Ok(())
        } else {
            Err(format!("{s} {d}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_get_a_400_that_names_the_line() {
    let env = start(&Db::Sqlite).await;
    let cases: Vec<(String, &str, Option<u64>)> = vec![
        (
            "title: x\nid: y\nlogsource: [unclosed\n".into(),
            "YAML",
            Some(4),
        ),
        (
            format!("{RULE}colour: blue\n"),
            "unknown field \"colour\"",
            Some(11),
        ),
        (
            RULE.replace("dst_port: 23", "Image: cmd.exe"),
            "field \"Image\" does not exist in flows events",
            Some(8),
        ),
        (
            RULE.replace("service: flows", "service: dns"),
            "product tally needs service",
            Some(3),
        ),
        (
            format!(
                "{RULE}---\ntitle: c\nid: c1\ncorrelation:\n    type: value_median_of_doom\n    rules: [own-telnet]\n    group-by: [src_ip]\n    timespan: 1m\n    condition:\n        gte: 2\n"
            ),
            "value_median_of_doom",
            None,
        ),
        (
            RULE.replace("dst_port: 23", "src_node|re: '(a{1000}){1000}'"),
            "does not compile",
            None,
        ),
        (
            format!("{RULE}description: '{}'\n", "x".repeat(300 << 10)),
            "",
            None,
        ),
    ];
    for (yaml, want, line) in cases {
        let (s, v) = post_yaml(&env, OWNER_KEY, &yaml).await;
        let what = format!("{want:?}: {s} {v}");
        assert!(s == 400 || s == 413, "{what}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{what}");
        assert!(msg.contains(want), "{what}");
        if let Some(l) = line {
            assert_eq!(v["line"].as_u64(), Some(l), "{what}");
        }
    }
    // Nothing was stored.
    let (_, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/detection/rules",
            None,
        )
        .await;
    assert!(
        v["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .all(|r| r["builtin"] == true),
        "{v}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_audited_configuration_and_builtins_can_be_disabled() {
    let env = start(&Db::Sqlite).await;
    let (s, v) = post_yaml(&env, OWNER_KEY, RULE).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["id"], "own-telnet");
    let (s, v) = post_yaml(&env, OWNER_KEY, RULE).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = post_yaml(&env, OWNER_KEY, &RULE.replace("own-telnet", "tally-mine")).await;
    assert_eq!(s, 400, "reserved IDs: {v}");

    // Listed with the built-in pack; one rule with its YAML.
    let (_, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/detection/rules",
            None,
        )
        .await;
    let rules = v["rules"].as_array().expect("rules");
    assert!(rules.len() >= 15, "{v}");
    assert!(
        rules
            .iter()
            .any(|r| r["id"] == "tally-port-scan" && r["builtin"] == true)
    );
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/detection/rules/own-telnet",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["yaml"], RULE);

    // Disable, re-enable, delete: each audited.
    for (body, action) in [
        (json!({ "enabled": false }), "DISABLE"),
        (json!({ "enabled": true }), "ENABLE"),
    ] {
        let before = env.head_seq(&env.tailnet).await;
        let (s, v) = env
            .call(
                OWNER_KEY,
                Method::PUT,
                "/api/v2/tailnet/-/detection/rules/own-telnet",
                Some(body),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let events = env.events_after(&env.tailnet, before).await;
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["target"]["type"] == "DETECTION_RULE"),
            "{events:#?}"
        );
    }
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::DELETE,
            "/api/v2/tailnet/-/detection/rules/own-telnet",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/detection/rules/own-telnet",
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::DELETE,
            "/api/v2/tailnet/-/detection/rules/tally-flow-logging-off",
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("disable it"),
        "{v}"
    );

    // A disabled built-in rule raises nothing; enabled again, it does.
    env.set_flow_logging(true).await;
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::PUT,
            "/api/v2/tailnet/-/detection/rules/tally-flow-logging-off",
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], false);
    env.set_flow_logging(false).await;
    support::log::audit_settled(&env.http, &env.base).await;
    detection_caught_up(&env).await;
    assert!(
        alerts_of(&env, OWNER_KEY, "tally-flow-logging-off")
            .await
            .is_empty()
    );
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::PUT,
            "/api/v2/tailnet/-/detection/rules/tally-flow-logging-off",
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!(s, 200);
    env.set_flow_logging(true).await;
    env.set_flow_logging(false).await;
    tally_testkit::wait::until(
        "the flow-logging-off alert",
        Duration::from_secs(20),
        || async {
            let a = alerts_of(&env, OWNER_KEY, "tally-flow-logging-off").await;
            if a.len() == 1 {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        },
    )
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_stay_in_their_tailnet_and_follow_roles() {
    let env = start(&Db::Sqlite).await;
    let alert = env.raise_alert(1).await;
    let metrics = env
        .http
        .get(format!("{}/metrics", env.base))
        .bearer_auth(OWNER_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let alerts_total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_detection_alerts_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no tally_detection_alerts_total in {metrics}"));
    assert!(alerts_total >= 1, "{metrics}");

    // An auditor reads alerts and rules but changes nothing.
    let (_, auditor) = env.user_with_key("auditor@example.com", "auditor").await;
    assert_eq!(
        alerts_of(&env, &auditor, "tally-key-without-expiry")
            .await
            .len(),
        1
    );
    let (s, v) = env
        .call(
            &auditor,
            Method::POST,
            &format!("/api/v2/tailnet/-/alerts/{alert}/ack"),
            None,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = post_yaml(&env, &auditor, RULE).await;
    assert_eq!(s, 403, "{v}");
    // A member sees no alerts.
    let (_, member) = env.user_with_key("member@example.com", "member").await;
    let (s, _) = env
        .call(&member, Method::GET, "/api/v2/tailnet/-/alerts", None)
        .await;
    assert_eq!(s, 403);

    // Another tailnet's owner sees none of them, cannot ack them, and its
    // rules are its own.
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
    assert!(
        alerts_of(&env, &other, "tally-key-without-expiry")
            .await
            .is_empty()
    );
    let (s, _) = env
        .call(
            &other,
            Method::POST,
            &format!("/api/v2/tailnet/-/alerts/{alert}/ack"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = env
        .call(
            &other,
            Method::GET,
            &format!("/api/v2/tailnet/{}/alerts", env.tailnet),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = post_yaml(&env, &other, RULE).await;
    assert_eq!(s, 201);
    let (s, _) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/detection/rules/own-telnet",
            None,
        )
        .await;
    assert_eq!(s, 404, "a rule of another tailnet");

    // Ack: audited, status acked, filtered by status.
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::POST,
            &format!("/api/v2/tailnet/-/alerts/{alert}/ack"),
            Some(json!({ "note": "expected" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "acked");
    assert_eq!(v["ack"]["note"], "expected");
    let (_, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/alerts?status=open",
            None,
        )
        .await;
    assert!(
        v["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .all(|a| a["id"] != alert.as_str()),
        "{v}"
    );
    let (s, v) = env
        .call(
            OWNER_KEY,
            Method::GET,
            "/api/v2/tailnet/-/alerts?severity=loud",
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_test_runs_over_stored_data_and_stores_nothing() {
    let env = start(&Db::Sqlite).await;
    // Three keys without expiry by the owner: stored audit events.
    for n in 0..3 {
        env.raise_alert(n).await;
    }
    let rule = "title: Any key created
id: own-any-key
logsource:
    product: tally
    service: audit
detection:
    selection:
        action: CREATE
        target.type: API_KEY
    condition: selection
level: low
tally.suppress: 0s
";
    let resp = env
        .http
        .post(format!(
            "{}/api/v2/tailnet/-/detection/rules/test",
            env.base
        ))
        .bearer_auth(OWNER_KEY)
        .json(&json!({ "yaml": rule, "since": "1h" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let alerts: Vec<&Value> = lines.iter().filter_map(|l| l.get("alert")).collect();
    // The three keys and the server's bootstrap key.
    assert_eq!(alerts.len(), 4, "{text}");
    assert!(alerts.iter().all(|a| a["rule_id"] == "own-any-key"));
    for n in 0..3 {
        let name = format!("alert {n}");
        assert!(
            alerts
                .iter()
                .any(|a| a["evidence"]["fields"]["target.name"] == name.as_str()),
            "{text}"
        );
    }
    assert!(lines.iter().any(|l| l.get("progress").is_some()), "{text}");
    let done = lines.last().and_then(|l| l.get("done")).expect("done last");
    assert_eq!(done["alerts"], 4, "{text}");
    assert!(alerts_of(&env, OWNER_KEY, "own-any-key").await.is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_over_node_logs_fires_on_a_registered_nodes_entry() {
    let env = start(&Db::Sqlite).await;
    let rule = "title: SSH password failures
id: own-ssh-failures
logsource:
    product: tally
    service: logs
detection:
    selection:
        text|contains: 'Failed password'
    condition: selection
level: medium
tally.group-by:
    - node
";
    let (s, v) = post_yaml(&env, OWNER_KEY, rule).await;
    assert_eq!(s, 201, "{v}");
    // A registered node's agent uploads two entries, one matching.
    let auth = env.auth_key(true, &[]).await;
    let private = tally_proto::PrivateId::generate();
    let resp = env
        .http
        .post(format!("{}/api/v2/agent/{}", env.base, private.to_hex()))
        .bearer_auth(&auth)
        .json(&json!({ "hostname": "bastion", "addresses": ["100.64.0.9"] }))
        .send()
        .await
        .expect("register");
    assert!(resp.status().is_success());
    let body = r#"[{"text":"Accepted publickey for root"},{"text":"Failed password for root from 203.0.113.7"}]"#;
    let resp = env
        .http
        .post(format!("{}/c/tailnode/{}", env.base, private.to_hex()))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    tally_testkit::wait::until("the log alert", Duration::from_secs(20), || async {
        let a = alerts_of(&env, OWNER_KEY, "own-ssh-failures").await;
        match a.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let a = alerts_of(&env, OWNER_KEY, "own-ssh-failures").await;
    assert_eq!(a[0]["node"], "bastion", "{a:?}");
    assert_eq!(a[0]["group"]["node"], "bastion", "{a:?}");
    assert!(
        a[0]["evidence"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("Failed password"),
        "{a:?}"
    );
    env.stop().await;
}
