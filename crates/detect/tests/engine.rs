//! The detector as a whole: the same alerts across a restart from a
//! snapshot, Sigma rules written for firewalls, bad rule files refused with
//! a reason, and state bounded by its limits.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tally_detect::{
    Detector, DetectorConfig, DetectorSnapshot, ObjectEvent, Rule, RuleError, Service, parse_rule,
};
use tally_proto::alert::{Alert, AlertSeverity};

const MIB: u64 = 1 << 20;

// ------------------------------------------------------------ restart determinism

/// One event of a test stream.
#[derive(Clone)]
enum Step {
    /// A connection logged by both ends: time, client, client port,
    /// server, server port.
    Conn(i64, String, u16, String, u16),
    /// Exit traffic: time, node, port, bytes sent.
    Exit(i64, String, u16, u64),
    /// An audit event.
    Audit(i64, Value),
}

impl Step {
    fn time(&self) -> i64 {
        match self {
            Step::Conn(t, ..) | Step::Exit(t, ..) | Step::Audit(t, _) => *t,
        }
    }

    fn run(&self, h: &mut Harness) {
        match self {
            Step::Conn(t, c, cp, s, sp) => {
                h.connection(*t, TCP, (c, *cp), (s, *sp), 120, 60);
            }
            Step::Exit(t, n, p, tx) => {
                let to = SocketAddr::from(([203, 0, 113, 9], 443));
                h.exit(*t, n, *p, to, *tx, MIB);
            }
            Step::Audit(t, e) => {
                h.audit(*t, e.clone());
            }
        }
    }
}

/// The split point: an hour after T0.
const SPLIT: i64 = T0 + 3600;

/// Events of three hours (and a week of baseline before) that open
/// correlation windows on both sides of [`SPLIT`], sorted by time.
fn stream() -> Vec<Step> {
    let conn = |t: i64, c: &str, cp: u16, s: &str, sp: u16| {
        Step::Conn(t, c.to_owned(), cp, s.to_owned(), sp)
    };
    let mut v = vec![
        // The pair baseline: the laptop and the web server eight days
        // before, the laptop and the database first two days before.
        conn(T0 - 8 * DAY, "laptop", 40000, "web", 443),
        conn(T0 - 2 * DAY, "laptop", 40001, "db", 5432),
    ];
    // A port scan alerting before the split and going on after it (one
    // alert: the suppression is in the snapshot).
    for p in 1..=1500u16 {
        v.push(conn(SPLIT - 600 + i64::from(p), "srv-1", 51000, "srv-2", p));
    }
    // A port scan with 20 ports before the split and the rest after.
    for p in 1..=60u16 {
        v.push(conn(SPLIT - 20 + i64::from(p), "laptop", 52000, "db", p));
    }
    // A host sweep across the split.
    for i in 10..=40u16 {
        let srv = format!("srv-{i}");
        v.push(conn(
            SPLIT - 30 + i64::from(i),
            "srv-3",
            43000 + i,
            &srv,
            445,
        ));
    }
    // Exit uploads: 100 MiB every 4 minutes, the eleventh after the split.
    for i in 0..20u16 {
        v.push(Step::Exit(
            SPLIT - 1600 + i64::from(i) * 240,
            "laptop".into(),
            44000 + i,
            100 * MIB,
        ));
    }
    // Refused changes: three before the split, three after.
    for i in 0..6i64 {
        v.push(Step::Audit(
            SPLIT - 90 + i * 30,
            refused(node_deleted("mallory@example.com", "srv-9")),
        ));
    }
    // A key before the split, a node removed after it.
    v.push(Step::Audit(
        SPLIT - 1000,
        key_created("mallory@example.com", "auth", "k1", None),
    ));
    v.push(Step::Audit(
        SPLIT + 1000,
        node_deleted("mallory@example.com", "srv-8"),
    ));
    // Background traffic after the split.
    for i in 0..200u16 {
        v.push(conn(
            SPLIT + i64::from(i) * 30,
            "laptop",
            45000 + i,
            "web",
            443,
        ));
    }
    v.sort_by_key(Step::time);
    v
}

fn run_all(h: &mut Harness, steps: &[Step]) {
    for s in steps {
        s.run(h);
    }
}

/// Snapshots `h` through JSON (as the server stores it).
fn through_json(h: &Harness) -> DetectorSnapshot {
    let text = serde_json::to_string(&h.det.snapshot()).expect("the snapshot serializes");
    serde_json::from_str(&text).expect("the snapshot reads back")
}

fn ids(alerts: &[Alert]) -> Vec<(&str, &str)> {
    alerts
        .iter()
        .map(|a| (a.rule_id.as_str(), a.id.as_str()))
        .collect()
}

#[test]
fn a_restart_from_a_snapshot_raises_the_same_alerts() {
    let steps = stream();
    let cut = steps
        .iter()
        .position(|s| s.time() >= SPLIT)
        .expect("a split");
    let (before, after) = steps.split_at(cut);

    let mut whole = Harness::pack();
    run_all(&mut whole, &steps);

    let mut first = Harness::pack();
    run_all(&mut first, before);
    assert!(
        first.det.stats().windows > 0,
        "correlation windows are open at the split"
    );
    let snapshot = through_json(&first);

    // Restored into a new detector running the pack by default ...
    let mut second = Harness::pack();
    second.det.restore(snapshot.clone());
    second.pos = first.pos;
    run_all(&mut second, after);
    // ... and into one given the tailnet's rules after the restore.
    let mut third = Harness::new(Vec::new());
    third.det.restore(snapshot);
    let pack = tally_detect::builtin::rules().expect("the pack parses");
    third.det.set_rules(&third.tailnet, pack).expect("compiles");
    third.pos = first.pos;
    run_all(&mut third, after);

    let rules: BTreeSet<&str> = whole.alerts.iter().map(|a| a.rule_id.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "tally-port-scan",
        "tally-host-sweep",
        "tally-exit-transfer",
        "tally-refused-changes",
        "tally-key-then-node-removed",
        "tally-new-pair",
        "tally-remote-access-port",
        "tally-fan-out",
    ]
    .into();
    assert_eq!(rules, expected, "{:#?}", ids(&whole.alerts));
    // Alerts after the split rest on events before it.
    let split_pos = first.pos;
    for rule in [
        "tally-exit-transfer",
        "tally-refused-changes",
        "tally-key-then-node-removed",
    ] {
        let a = whole.of(rule);
        assert_eq!(a.len(), 1, "{rule}: {a:#?}");
        assert!(
            a[0].evidence.positions.iter().any(|p| *p < split_pos),
            "{a:#?}"
        );
        assert!(a[0].window.end >= SPLIT * 1_000_000_000, "{a:#?}");
    }
    // One alert for the port scan running across the split, one for the
    // one crossing its threshold after it.
    assert_eq!(whole.of("tally-port-scan").len(), 2);

    for restarted in [&second, &third] {
        let mut resumed = first.alerts.clone();
        resumed.extend(restarted.alerts.iter().cloned());
        assert_eq!(ids(&resumed), ids(&whole.alerts));
        assert_eq!(resumed, whole.alerts);
        let stats = restarted.det.stats();
        assert_eq!(stats, whole.det.stats());
    }
    let unique: BTreeSet<&str> = whole.alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(unique.len(), whole.alerts.len(), "no duplicate alert IDs");
}

// ------------------------------------------------------------ Sigma rules for firewalls

// Rules in the form SigmaHQ publishes for `category: firewall` (no product,
// the generic firewall field names, a selection that is a list of maps).
// The verbatim SigmaHQ files are not kept here; these have the same shape.

/// Like SigmaHQ's rules for traffic to or from known C2 addresses.
const C2_ADDRESSES: &str = r#"title: Communication with listed C2 addresses
id: 6f1d3c2a-8b4e-4c1d-9a7e-2f5b8c9d0e11
status: test
description: Traffic to or from addresses on a C2 list (documentation addresses here).
author: Tally tests
date: 2026-01-01
tags:
    - attack.command-and-control
    - attack.t1041
logsource:
    category: firewall
detection:
    selection:
        - dst_ip:
              - '192.0.2.66'
              - '198.51.100.23'
        - src_ip:
              - '192.0.2.66'
              - '198.51.100.23'
    condition: selection
falsepositives:
    - Unknown
level: high
"#;

/// Shaped like SigmaHQ's cleartext protocol rule: it also asks the
/// firewall's verdict (`action`, `blocked`), which every flow Tally logs
/// has as `accept` / `false` (a flow log records traffic that went through).
const CLEARTEXT_WITH_VERDICT: &str = r#"title: Cleartext protocol allowed
id: 0c4e9f8a-3b2d-4e6f-8a1c-5d7e9f0a1b22
status: test
description: A connection to a cleartext protocol port that the firewall let through.
logsource:
    category: firewall
detection:
    selection:
        dst_port:
            - 21
            - 23
            - 80
            - 8080
    selection_allow1:
        action:
            - forward
            - accept
            - 2
    selection_allow2:
        blocked: "false" # some firewalls set only this
    condition: selection and 1 of selection_allow*
falsepositives:
    - Unknown
level: low
"#;

/// The same rule without the verdict (every logged flow went through).
const CLEARTEXT: &str = r#"title: Cleartext protocol
id: 0c4e9f8a-3b2d-4e6f-8a1c-5d7e9f0a1b23
status: test
logsource:
    category: firewall
detection:
    selection:
        dst_port:
            - 21
            - 23
            - 80
            - 8080
    condition: selection
level: low
"#;

/// Sysmon's network_connection names.
const SYSMON_NAMES: &str = r#"title: Outbound SMB
id: 0c4e9f8a-3b2d-4e6f-8a1c-5d7e9f0a1b24
status: test
logsource:
    category: network_connection
    product: windows
detection:
    selection:
        Initiated: 'true'
        DestinationPort: 445
    condition: selection
level: medium
"#;

#[test]
fn a_c2_address_rule_for_firewalls_loads_and_fires() {
    let rule = parse_rule(C2_ADDRESSES).expect("loads");
    assert!(rule.services.contains(&Service::Flows));
    assert_eq!(rule.level, AlertSeverity::High);
    let mut h = Harness::new(vec![Arc::new(rule)]);
    let c2 = |ip: [u8; 4], port| SocketAddr::from((ip, port));
    // Clean exit traffic, then the laptop calling a listed address, then a
    // listed address connecting in to a node's SSH.
    for i in 0..50u16 {
        h.exit(
            T0 + i64::from(i),
            "laptop",
            40000 + i,
            c2([203, 0, 113, 7], 443),
            100,
            100,
        );
    }
    assert!(h.alerts.is_empty(), "{:#?}", h.alerts);
    h.exit(
        T0 + 100,
        "laptop",
        41000,
        c2([192, 0, 2, 66], 443),
        100,
        100,
    );
    h.exit(
        T0 + 4000,
        "srv-1",
        22,
        c2([198, 51, 100, 23], 51515),
        100,
        100,
    );
    let got: Vec<_> = h
        .alerts
        .iter()
        .map(|a| (a.rule_id.as_str(), a.node.as_deref(), a.severity))
        .collect();
    let id = "6f1d3c2a-8b4e-4c1d-9a7e-2f5b8c9d0e11";
    assert_eq!(
        got,
        vec![
            (id, Some("laptop"), AlertSeverity::High),
            (id, None, AlertSeverity::High)
        ],
        "{:#?}",
        h.alerts
    );
    // The inbound one is about the listed address (the side that opened
    // the connection), reached at srv-1.
    let inbound = &h.alerts[1].evidence.fields;
    assert_eq!(
        inbound.get("src_ip").map(String::as_str),
        Some("198.51.100.23")
    );
    assert_eq!(inbound.get("dst_node").map(String::as_str), Some("srv-1"));
}

#[test]
fn a_rule_asking_the_firewall_verdict_loads_and_fires() {
    for yaml in [CLEARTEXT_WITH_VERDICT, CLEARTEXT] {
        let mut h = Harness::new(vec![Arc::new(parse_rule(yaml).expect("loads"))]);
        h.connection(T0, TCP, ("laptop", 40000), ("web", 443), 100, 100);
        assert!(h.alerts.is_empty(), "{:#?}", h.alerts);
        h.connection(T0 + 1, TCP, ("laptop", 40001), ("db", 23), 100, 100);
        assert_eq!(h.alerts.len(), 1, "{:#?}", h.alerts);
        assert_eq!(h.alerts[0].severity, AlertSeverity::Low);
    }
}

#[test]
fn a_network_connection_rule_with_sysmon_names_loads_and_fires() {
    let rule = parse_rule(SYSMON_NAMES).expect("loads");
    assert!(rule.services.contains(&Service::Flows));
    let mut h = Harness::new(vec![Arc::new(rule)]);
    h.connection(T0, TCP, ("laptop", 40000), ("srv-1", 445), 100, 100);
    // Both ends log it; one is the side that opened it.
    assert_eq!(h.alerts.len(), 1, "{:#?}", h.alerts);
    assert_eq!(h.alerts[0].node.as_deref(), Some("laptop"));
}

// ------------------------------------------------------------ bad rule files

const LOG_RULE: &str = "title: Nested repetition
id: 5b0e2d7c-1f3a-4c5b-8d9e-0a1b2c3d4e5f
logsource:
    product: tally
    service: logs
detection:
    selection:
        message|re: '(a+)+$'
    condition: selection
level: low
";

const CORRELATION: &str = "title: Deletion
id: d1
name: d1
logsource:
    product: tally
    service: audit
detection:
    selection:
        action: DELETE
    condition: selection
---
title: Many deletions
id: c1
correlation:
    type: event_count
    rules:
        - d1
    group-by:
        - actor.loginName
    timespan: 1h
    condition:
        gte: 3
";

#[track_caller]
fn refused_with(yaml: &str, words: &[&str], line: Option<usize>) -> RuleError {
    let e = parse_rule(yaml).expect_err("refused");
    for w in words {
        assert!(e.message.contains(w), "{w:?} not in: {e}");
    }
    assert_eq!(e.line, line, "{e}");
    if let Some(l) = line {
        assert!(e.to_string().starts_with(&format!("line {l}: ")), "{e}");
    }
    e
}

#[test]
fn malformed_yaml_is_refused_at_its_line() {
    let yaml = "title: x\nid: a\nlogsource:\n  product: tally\n  service: flows\ndetection:\n  selection:\n    dst_port: [22\n  condition: selection\n";
    refused_with(
        yaml,
        &["YAML parse error", "did not find expected ','"],
        Some(9),
    );
    refused_with(
        "title: x\nid: a\n\tlogsource: x\n",
        &["tab character"],
        Some(3),
    );
    refused_with("- a\n- b\n", &["not a YAML mapping"], None);
    refused_with("", &["not a YAML mapping"], None);
}

#[test]
fn unknown_top_level_fields_are_refused_at_their_line() {
    refused_with(
        &format!("{LOG_RULE}colour: blue\n"),
        &["unknown field \"colour\"", "tally.suppress"],
        Some(11),
    );
    refused_with(
        &format!("{CORRELATION}colour: red\n"),
        &["unknown field \"colour\""],
        Some(23),
    );
}

#[test]
fn unknown_correlation_types_are_refused_at_their_line() {
    refused_with(
        &CORRELATION.replace("event_count", "value_mean"),
        &["Unknown correlation type: value_mean"],
        Some(15),
    );
}

#[test]
fn a_correlation_of_a_missing_rule_is_refused() {
    refused_with(
        &CORRELATION.replace("        - d1", "        - d2"),
        &["uses rule \"d2\", which is not in this file"],
        Some(17),
    );
    refused_with(
        &CORRELATION
            .replace("title: Deletion", "title: Deletion\nstatus: test")
            .replace("id: d1\nname: d1\n", "id: d0\n"),
        &["uses rule \"d1\""],
        Some(17),
    );
}

#[test]
fn huge_rules_are_refused_before_parsing() {
    let huge = format!("{LOG_RULE}description: '{}'\n", "a".repeat(300_000));
    refused_with(&huge, &["bytes; at most 262144"], None);
    let many = format!("{LOG_RULE}{}", "---\n".repeat(20));
    refused_with(&many, &["YAML documents; at most 16"], None);
}

#[test]
fn deeply_nested_brackets_are_refused_before_parsing() {
    // The YAML scanner takes time quadratic in this depth.
    let deep = format!("{LOG_RULE}x: {}\n", "[".repeat(200_000));
    refused_with(&deep, &["nested more than 32 deep"], Some(11));
    // Brackets in quoted text and comments do not count.
    let quoted = LOG_RULE.replace(
        "level: low",
        &format!(
            "level: low\ndescription: '{}' # {}",
            "[".repeat(100),
            "{".repeat(100)
        ),
    );
    parse_rule(&quoted).expect("loads");
}

#[test]
fn unknown_detection_names_and_modifiers_are_refused_at_their_line() {
    refused_with(
        &LOG_RULE.replace("condition: selection", "condition: selection and nope"),
        &["unknown detection identifier: nope"],
        Some(9),
    );
    refused_with(
        &LOG_RULE.replace("message|re", "message|frobnicate"),
        &["Unknown modifier 'frobnicate'"],
        Some(8),
    );
}

#[test]
fn a_regex_too_large_to_compile_is_refused() {
    refused_with(
        &LOG_RULE.replace("(a+)+$", "(a{1000}){1000}"),
        &["does not compile", "regex", "size limit"],
        None,
    );
    refused_with(
        &LOG_RULE.replace("(a+)+$", "(a"),
        &["does not compile", "unclosed group"],
        None,
    );
}

/// `(a+)+$` against `aaa...ab` takes exponential time in a backtracking
/// engine; the regex crate is linear, so this returns.
#[test]
fn a_nested_repetition_regex_runs_in_linear_time() {
    let rule = parse_rule(LOG_RULE).expect("loads");
    let mut det = Detector::new(DetectorConfig::default(), vec![Arc::new(rule)]);
    let nodes = |_: &str| None;
    let mut process = |message: String, pos: &str| {
        let e = ObjectEvent::log(json!({ "message": message }), None, "app", pos);
        det.process("t", Service::Logs, &e, T0, &nodes)
    };
    assert!(process(format!("{}b", "a".repeat(50_000)), "1").is_empty());
    assert_eq!(process(format!("b{}", "a".repeat(50_000)), "2").len(), 1);
}

// ------------------------------------------------------------ bounded state

#[test]
fn correlation_windows_stay_within_the_limit() {
    let config = DetectorConfig {
        max_windows: 50,
        ..DetectorConfig::default()
    };
    let mut h = Harness::with_config(config, vec![builtin("refused_changes.yml")]);
    // A thousand actors with a refused change each, within a minute: a
    // thousand live windows wanted.
    for i in 0..1000i64 {
        h.audit(
            T0 + i / 20,
            refused(node_deleted(&format!("user{i}@example.com"), "db")),
        );
        assert!(h.det.stats().windows <= 50, "{:?}", h.det.stats());
    }
    let stats = h.det.stats();
    assert!(stats.evicted >= 950, "{stats:?}");
    assert!(stats.evicted <= 1000, "{stats:?}");
    // Probing still alerts after the evictions.
    for i in 0..5 {
        h.audit(
            T0 + 100 + i,
            refused(node_deleted("mallory@example.com", "db")),
        );
    }
    assert_eq!(h.of("tally-refused-changes").len(), 1);
}

#[test]
fn node_pairs_stay_within_the_limit_even_seen_in_one_second() {
    let config = DetectorConfig {
        max_pairs: 100,
        ..DetectorConfig::default()
    };
    let mut det = Detector::new(config, Vec::new());
    let held = |det: &Detector| {
        let snap = det.snapshot();
        snap.tailnets.get("t").map_or(0, |t| t.pairs.len())
    };
    for i in 0..1000 {
        det.pair_is_new("t", &format!("a{i}"), "b", T0);
        let n = held(&det);
        assert!(n <= 100, "{n}");
        if i >= 100 {
            assert!(n >= 80, "a tenth is forgotten at a time, not all: {n}");
        }
    }
    assert_eq!(det.stats().evicted, 1000 - held(&det) as u64);
}

#[test]
fn suppression_entries_stay_within_the_limit() {
    let config = DetectorConfig {
        max_suppressions: 20,
        ..DetectorConfig::default()
    };
    let rules: Vec<Arc<Rule>> = vec![builtin("flow_logging_off.yml")];
    let mut h = Harness::with_config(config, rules);
    let held = |h: &Harness| {
        let snap = h.det.snapshot();
        snap.tailnets
            .get(&h.tailnet)
            .map_or(0, |t| t.suppress.len())
    };
    for i in 0..200i64 {
        let who = format!("user{i}@example.com");
        h.audit(
            T0,
            setting(&who, "networkFlowLoggingOn", json!(true), json!(false)),
        );
        let n = held(&h);
        assert!(n <= 20, "{n}");
        if i >= 20 {
            assert!(n >= 16, "a tenth is forgotten at a time, not all: {n}");
        }
    }
    assert_eq!(h.alerts.len(), 200);
    assert_eq!(h.det.stats().evicted, 200 - held(&h) as u64);
}
