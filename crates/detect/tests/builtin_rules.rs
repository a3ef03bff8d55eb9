//! Every built-in rule fires on its scenario (exactly the expected alerts:
//! rule, group key, node, severity, one alert per suppression span) and
//! stays quiet on clean traffic of the same volume.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tally_proto::alert::{Alert, AlertSeverity};
use tally_proto::flow::TrafficKind;

fn group(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts `alerts` are exactly one alert per expected group, in order,
/// all of rule `rule` with `severity`.
#[track_caller]
fn assert_alerts(
    alerts: &[Alert],
    rule: &str,
    severity: AlertSeverity,
    expected: &[(BTreeMap<String, String>, Option<&str>)],
) {
    let got: Vec<_> = alerts
        .iter()
        .map(|a| (a.rule_id.as_str(), &a.group, a.node.as_deref()))
        .collect();
    let want: Vec<_> = expected.iter().map(|(g, n)| (rule, g, *n)).collect();
    assert_eq!(got, want, "alerts: {alerts:#?}");
    for a in alerts {
        assert_eq!(a.severity, severity, "{a:#?}");
        assert_eq!(a.tailnet, "example.org");
    }
    let mut ids: Vec<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        alerts.len(),
        "alert IDs are distinct: {alerts:#?}"
    );
}

#[track_caller]
fn assert_quiet(h: &Harness) {
    assert!(h.alerts.is_empty(), "no alert expected: {:#?}", h.alerts);
}

fn internet(port: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], port))
}

// ---------------------------------------------------------------- port scan

#[test]
fn port_scan_fires_once_for_a_long_scan() {
    let mut h = Harness::rule("port_scan.yml");
    // 1000 ports over ten minutes, one source port (a SYN scan), both
    // agents logging.
    for p in 1..=1000u16 {
        h.connection(
            T0 + i64::from(p) * 6 / 10,
            TCP,
            ("laptop", 51000),
            ("db", p),
            60,
            0,
        );
    }
    let ip = |n: &str| h.fleet.ip(n).to_string();
    let g = group(&[("src_ip", &ip("laptop")), ("dst_ip", &ip("db"))]);
    assert_alerts(
        &h.alerts,
        "tally-port-scan",
        AlertSeverity::High,
        &[(g.clone(), Some("laptop"))],
    );
    let a = &h.alerts[0];
    assert!(a.evidence.value >= 25.0, "{a:#?}");
    assert!(!a.evidence.positions.is_empty());
    assert!(h.det.stats().suppressed > 1000, "{:?}", h.det.stats());

    // The same scan two hours later is a new alert, counting the
    // suppressed ones of the first.
    for p in 1..=100u16 {
        h.connection(
            T0 + 7200 + i64::from(p),
            TCP,
            ("laptop", 51001),
            ("db", p),
            60,
            0,
        );
    }
    assert_eq!(h.alerts.len(), 2, "{:#?}", h.alerts);
    assert_eq!(h.alerts[1].group, g);
    assert!(h.alerts[1].suppressed_before > 1000);
    assert_ne!(h.alerts[0].id, h.alerts[1].id);
}

#[test]
fn port_scan_is_seen_from_the_target_alone() {
    let mut h = Harness::rule("port_scan.yml");
    // Only the target's agent logs (the scanner's is silent or absent).
    for p in 1..=200u16 {
        let t = h.fleet.addr("db", p);
        let s = h.fleet.addr("laptop", 40000 + p);
        h.entry(
            T0 + i64::from(p) / 4,
            TrafficKind::Virtual,
            counts(TCP, t, s, 0, 60),
        );
    }
    let ip = |n: &str| h.fleet.ip(n).to_string();
    let g = group(&[("src_ip", &ip("laptop")), ("dst_ip", &ip("db"))]);
    assert_alerts(
        &h.alerts,
        "tally-port-scan",
        AlertSeverity::High,
        &[(g, Some("laptop"))],
    );
}

#[test]
fn port_scan_is_quiet_on_many_connections_to_a_few_ports() {
    let mut h = Harness::rule("port_scan.yml");
    let mut t = T0;
    // 2000 connections in ten minutes from ephemeral ports: to one server
    // port, to a handful, and to a service on a high port (gRPC 50051),
    // where the client's ephemeral port is sometimes the higher one.
    for i in 0..500u16 {
        t += 1;
        h.connection(t, TCP, ("laptop", 32768 + i * 7), ("db", 5432), 900, 9000);
        let ports = [80, 443, 8080, 8443, 3000];
        h.connection(
            t,
            TCP,
            ("laptop", 33000 + i * 5),
            ("web", ports[usize::from(i) % 5]),
            900,
            9000,
        );
        h.connection(
            t,
            TCP,
            ("laptop", 32768 + i * 56),
            ("web", 50051),
            900,
            9000,
        );
        h.connection(t, UDP, ("laptop", 40000 + i), ("db", 53), 60, 120);
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- host sweep

#[test]
fn host_sweep_fires_once_for_a_sweep() {
    let mut h = Harness::rule("host_sweep.yml");
    // SSH on 40 hosts in two minutes, then again for 20 minutes.
    for round in 0..10i64 {
        for i in 1..=40u16 {
            let srv = format!("srv-{i}");
            h.connection(
                T0 + round * 120 + i64::from(i) * 3,
                TCP,
                ("laptop", 45000 + i),
                (&srv, 22),
                60,
                0,
            );
        }
    }
    let g = group(&[
        ("src_ip", &h.fleet.ip("laptop").to_string()),
        ("dst_port", "22"),
    ]);
    assert_alerts(
        &h.alerts,
        "tally-host-sweep",
        AlertSeverity::High,
        &[(g, Some("laptop"))],
    );
    assert!(h.alerts[0].evidence.value >= 10.0);
    assert!(h.det.stats().suppressed > 500);
}

#[test]
fn host_sweep_is_quiet_on_monitoring_and_busy_servers() {
    let mut h = Harness::rule("host_sweep.yml");
    for round in 0..10i64 {
        for i in 1..=40u16 {
            let srv = format!("srv-{i}");
            let t = T0 + round * 120 + i64::from(i) * 3;
            // Prometheus scraping node_exporter everywhere (tag:monitoring),
            // the scanner doing its job (tag:scanner).
            h.connection(t, TCP, ("prom", 40000 + i), (&srv, 9100), 200, 20000);
            h.connection(t, TCP, ("scanner", 50000 + i), (&srv, 22), 60, 0);
            // Configuration management from a CI runner (tag:hub).
            h.connection(t, TCP, ("ci", 51000 + i), (&srv, 22), 600, 600);
            // Many clients of one database.
            h.connection(t, TCP, (&srv, 41000 + i), ("db", 5432), 900, 9000);
            // One client, many connections to one server.
            h.connection(t, TCP, ("laptop", 42000 + i), ("web", 443), 900, 9000);
        }
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- new pair

/// Every day from T0 for `days`: laptop to web, srv-1 to db.
fn usual_traffic(h: &mut Harness, days: i64) {
    for d in 0..days {
        let t = T0 + d * DAY;
        h.connection(t, TCP, ("laptop", 40000), ("web", 443), 900, 9000);
        h.connection(t + 60, TCP, ("srv-1", 40001), ("db", 5432), 900, 9000);
    }
}

#[test]
fn new_pair_fires_after_the_baseline() {
    let mut h = Harness::rule("new_pair.yml");
    usual_traffic(&mut h, 8);
    assert_quiet(&h);
    // Day 8: the laptop talks to the database for the first time, many
    // times.
    for i in 0..50u16 {
        h.connection(
            T0 + 8 * DAY + i64::from(i),
            TCP,
            ("laptop", 41000 + i),
            ("db", 5432),
            900,
            9000,
        );
    }
    let g = group(&[("src_node", "laptop"), ("dst_node", "db")]);
    assert_alerts(
        &h.alerts,
        "tally-new-pair",
        AlertSeverity::Low,
        &[(g, Some("laptop"))],
    );
}

#[test]
fn new_pair_is_quiet_while_learning_and_for_known_pairs() {
    let mut h = Harness::rule("new_pair.yml");
    // Learning: new pairs every day of the first week.
    for d in 0..7i64 {
        for i in 1..=5u16 {
            let srv = format!("srv-{}", d * 5 + i64::from(i));
            h.connection(
                T0 + d * DAY + i64::from(i),
                TCP,
                ("laptop", 40000 + i),
                (&srv, 443),
                900,
                9000,
            );
        }
    }
    usual_traffic(&mut h, 14);
    // Then the same pairs again, within seven days of last seeing them.
    for i in 1..=5u16 {
        let srv = format!("srv-{}", 30 + i);
        h.connection(
            T0 + 9 * DAY + i64::from(i),
            TCP,
            ("laptop", 40000 + i),
            (&srv, 443),
            900,
            9000,
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- fan-out

#[test]
fn fan_out_fires_once_for_a_node_reaching_many_nodes() {
    let mut h = Harness::rule("fan_out.yml");
    let ports = [22, 80, 443, 445, 3389, 5432, 6379, 8080];
    for i in 1..=40u16 {
        let srv = format!("srv-{i}");
        h.connection(
            T0 + i64::from(i) * 60,
            TCP,
            ("laptop", 40000 + i),
            (&srv, ports[usize::from(i) % 8]),
            100,
            100,
        );
    }
    let g = group(&[("src_node", "laptop")]);
    assert_alerts(
        &h.alerts,
        "tally-fan-out",
        AlertSeverity::Medium,
        &[(g, Some("laptop"))],
    );
    assert!(h.alerts[0].evidence.value >= 20.0);
}

#[test]
fn fan_out_is_quiet_for_hubs_servers_and_few_peers() {
    let mut h = Harness::rule("fan_out.yml");
    for i in 1..=40u16 {
        let srv = format!("srv-{i}");
        let t = T0 + i64::from(i) * 60;
        // A CI runner (tag:hub) deploying everywhere.
        h.connection(t, TCP, ("ci", 40000 + i), (&srv, 22), 100, 100);
        // A database and a gRPC service with 40 clients each (the gRPC
        // clients' ephemeral ports fall on both sides of 50051).
        h.connection(t, TCP, (&srv, 40000 + i), ("db", 5432), 100, 100);
        h.connection(t, TCP, (&srv, 32768 + i * 700), ("web", 50051), 100, 100);
        // The laptop's few usual peers, often.
        for (j, peer) in ["web", "db", "srv-1"].iter().enumerate() {
            h.connection(
                t,
                TCP,
                ("laptop", 41000 + i * 3 + j as u16),
                (peer, 443),
                100,
                100,
            );
        }
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- remote access

#[test]
fn remote_access_ports_fire_per_node_and_port() {
    let mut h = Harness::rule("remote_access_ports.yml");
    for i in 0..20u16 {
        h.connection(
            T0 + i64::from(i) * 30,
            TCP,
            ("laptop", 40000 + i),
            ("db", 22),
            100,
            100,
        );
    }
    h.connection(T0 + 700, TCP, ("srv-1", 40100), ("srv-2", 4444), 100, 100);
    assert_alerts(
        &h.alerts,
        "tally-remote-access-port",
        AlertSeverity::Medium,
        &[
            (
                group(&[("src_node", "laptop"), ("dst_port", "22")]),
                Some("laptop"),
            ),
            (
                group(&[("src_node", "srv-1"), ("dst_port", "4444")]),
                Some("srv-1"),
            ),
        ],
    );
}

#[test]
fn remote_access_ports_are_quiet_for_tagged_nodes_and_other_ports() {
    let mut h = Harness::rule("remote_access_ports.yml");
    for i in 1..=20u16 {
        let srv = format!("srv-{i}");
        let t = T0 + i64::from(i) * 30;
        // The bastion's job.
        h.connection(t, TCP, ("bastion", 40000 + i), (&srv, 22), 100, 100);
        h.connection(t, TCP, ("bastion", 41000 + i), (&srv, 3389), 100, 100);
        // Web and database traffic.
        h.connection(t, TCP, ("laptop", 42000 + i), ("web", 443), 100, 100);
        h.connection(t, TCP, (&srv, 43000 + i), ("db", 5432), 100, 100);
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- exit transfer

const MIB: u64 = 1 << 20;

#[test]
fn exit_transfer_fires_once_past_a_gibibyte_an_hour() {
    let mut h = Harness::rule("exit_transfer.yml");
    // 100 MiB every 4 minutes for two hours.
    for i in 0..30u16 {
        h.exit(
            T0 + i64::from(i) * 240,
            "laptop",
            40000 + i,
            internet(443),
            100 * MIB,
            MIB,
        );
    }
    let g = group(&[("logged_by", "laptop")]);
    assert_alerts(
        &h.alerts,
        "tally-exit-transfer",
        AlertSeverity::Medium,
        &[(g, Some("laptop"))],
    );
    assert!(h.alerts[0].evidence.value > (1u64 << 30) as f64);
}

#[test]
fn exit_transfer_is_quiet_for_downloads_and_slow_uploads() {
    let mut h = Harness::rule("exit_transfer.yml");
    for i in 0..30u16 {
        // Downloads: 100 MiB received every 4 minutes.
        h.exit(
            T0 + i64::from(i) * 240,
            "laptop",
            40000 + i,
            internet(443),
            MIB,
            100 * MIB,
        );
        // Uploads: 100 MiB every 10 minutes (600 MiB an hour).
        h.exit(
            T0 + i64::from(i) * 600,
            "srv-1",
            40000 + i,
            internet(443),
            100 * MIB,
            MIB,
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- flow logging off

#[test]
fn flow_logging_off_fires_on_each_switch_off() {
    let mut h = Harness::rule("flow_logging_off.yml");
    h.audit(
        T0,
        setting(
            "mallory@example.com",
            "networkFlowLoggingOn",
            json!(true),
            json!(false),
        ),
    );
    h.audit(
        T0 + 60,
        setting(
            "mallory@example.com",
            "networkFlowLoggingOn",
            json!(false),
            json!(true),
        ),
    );
    h.audit(
        T0 + 120,
        setting(
            "mallory@example.com",
            "networkFlowLoggingOn",
            json!(true),
            json!(false),
        ),
    );
    let g = group(&[("actor.loginName", "mallory@example.com")]);
    assert_alerts(
        &h.alerts,
        "tally-flow-logging-off",
        AlertSeverity::High,
        &[(g.clone(), None), (g, None)],
    );
    assert_eq!(
        h.alerts[0]
            .evidence
            .fields
            .get("target.property")
            .map(String::as_str),
        Some("networkFlowLoggingOn")
    );
}

#[test]
fn flow_logging_off_is_quiet_on_enable_refusals_and_other_settings() {
    let mut h = Harness::rule("flow_logging_off.yml");
    for i in 0..10 {
        let t = T0 + i * 60;
        h.audit(
            t,
            setting(
                "alice@example.com",
                "networkFlowLoggingOn",
                json!(false),
                json!(true),
            ),
        );
        h.audit(
            t,
            refused(setting(
                "mallory@example.com",
                "networkFlowLoggingOn",
                json!(true),
                json!(false),
            )),
        );
        h.audit(
            t,
            setting(
                "alice@example.com",
                "logsRetentionDays",
                json!(30),
                json!(31 + i),
            ),
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- retention

#[test]
fn retention_weakened_fires_on_each_decrease() {
    let mut h = Harness::rule("retention_weakened.yml");
    h.audit(
        T0,
        setting(
            "mallory@example.com",
            "flowsRetentionDays",
            json!(90),
            json!(1),
        ),
    );
    h.audit(
        T0 + 1,
        setting(
            "mallory@example.com",
            "auditRetentionDays",
            json!(365),
            json!(30),
        ),
    );
    let g = group(&[("actor.loginName", "mallory@example.com")]);
    assert_alerts(
        &h.alerts,
        "tally-retention-weakened",
        AlertSeverity::Medium,
        &[(g.clone(), None), (g, None)],
    );
}

#[test]
fn retention_weakened_is_quiet_on_increases_and_refusals() {
    let mut h = Harness::rule("retention_weakened.yml");
    for i in 0..10 {
        let t = T0 + i * 60;
        h.audit(
            t,
            setting(
                "alice@example.com",
                "logsRetentionDays",
                json!(30 + i),
                json!(31 + i),
            ),
        );
        h.audit(
            t,
            refused(setting(
                "mallory@example.com",
                "flowsRetentionDays",
                json!(90),
                json!(1),
            )),
        );
        h.audit(
            t,
            setting(
                "alice@example.com",
                "networkFlowLoggingOn",
                json!(true),
                json!(false),
            ),
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- key without expiry

#[test]
fn key_without_expiry_fires_on_each_such_key() {
    let mut h = Harness::rule("key_without_expiry.yml");
    // Two in the same second: two alerts, two IDs.
    h.audit(T0, key_created("alice@example.com", "api", "k1", None));
    h.audit(T0, key_created("alice@example.com", "api", "k2", None));
    let g = group(&[("actor.loginName", "alice@example.com")]);
    assert_alerts(
        &h.alerts,
        "tally-key-without-expiry",
        AlertSeverity::Medium,
        &[(g.clone(), None), (g, None)],
    );
}

#[test]
fn key_without_expiry_is_quiet_on_expiring_keys_auth_keys_and_refusals() {
    let mut h = Harness::rule("key_without_expiry.yml");
    for i in 0..10 {
        let t = T0 + i * 60;
        h.audit(
            t,
            key_created(
                "alice@example.com",
                "api",
                &format!("ka{i}"),
                Some("2026-04-01T00:00:00Z"),
            ),
        );
        h.audit(
            t,
            key_created("alice@example.com", "auth", &format!("kb{i}"), None),
        );
        h.audit(
            t,
            refused(key_created(
                "mallory@example.com",
                "api",
                &format!("kc{i}"),
                None,
            )),
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- role raised

#[test]
fn role_raised_fires_on_promotions_to_admin_or_owner() {
    let mut h = Harness::rule("role_raised.yml");
    h.audit(
        T0,
        role_changed("alice@example.com", "bob@example.com", "member", "admin"),
    );
    h.audit(
        T0 + 60,
        role_changed("alice@example.com", "bob@example.com", "admin", "owner"),
    );
    h.audit(
        T0 + 120,
        role_changed("alice@example.com", "carol@example.com", "auditor", "owner"),
    );
    assert_alerts(
        &h.alerts,
        "tally-role-raised",
        AlertSeverity::High,
        &[
            (group(&[("target.name", "bob@example.com")]), None),
            (group(&[("target.name", "bob@example.com")]), None),
            (group(&[("target.name", "carol@example.com")]), None),
        ],
    );
}

#[test]
fn role_raised_is_quiet_on_demotions_other_roles_and_refusals() {
    let mut h = Harness::rule("role_raised.yml");
    for i in 0..5 {
        let t = T0 + i * 60;
        let who = format!("user{i}@example.com");
        h.audit(
            t,
            role_changed("alice@example.com", &who, "admin", "member"),
        );
        h.audit(t, role_changed("alice@example.com", &who, "owner", "admin"));
        h.audit(
            t,
            role_changed("alice@example.com", &who, "member", "network-admin"),
        );
        h.audit(
            t,
            refused(role_changed("mallory@example.com", &who, "member", "owner")),
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- refused changes

#[test]
fn refused_changes_fire_once_for_probing() {
    let mut h = Harness::rule("refused_changes.yml");
    for i in 0..30 {
        h.audit(
            T0 + i * 20,
            refused(node_deleted(
                "mallory@example.com",
                &format!("srv-{}", i + 1),
            )),
        );
    }
    let g = group(&[("actor.loginName", "mallory@example.com")]);
    assert_alerts(
        &h.alerts,
        "tally-refused-changes",
        AlertSeverity::Medium,
        &[(g, None)],
    );
    assert!(h.alerts[0].evidence.value >= 5.0);
    assert!(h.alerts[0].evidence.positions.len() >= 5);
}

#[test]
fn refused_changes_are_quiet_for_accepted_changes_and_rare_refusals() {
    let mut h = Harness::rule("refused_changes.yml");
    for i in 0..30 {
        let t = T0 + i * 20;
        // Accepted changes, many.
        h.audit(
            t,
            node_deleted("alice@example.com", &format!("srv-{}", i + 1)),
        );
        // One refusal every 3 minutes (3 to 4 in ten minutes).
        if i % 9 == 0 {
            h.audit(t, refused(node_deleted("bob@example.com", "db")));
        }
        // Refusals spread over actors.
        h.audit(
            t,
            refused(node_deleted(&format!("user{i}@example.com"), "db")),
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- key then node removed

#[test]
fn key_then_node_removed_fires_in_that_order() {
    let mut h = Harness::rule("key_then_node_removed.yml");
    h.audit(
        T0,
        key_created(
            "mallory@example.com",
            "auth",
            "k1",
            Some("2026-01-02T00:00:00Z"),
        ),
    );
    h.audit(T0 + 1200, node_deleted("mallory@example.com", "srv-1"));
    h.audit(T0 + 1300, node_deleted("mallory@example.com", "srv-2"));
    let g = group(&[("actor.loginName", "mallory@example.com")]);
    assert_alerts(
        &h.alerts,
        "tally-key-then-node-removed",
        AlertSeverity::High,
        &[(g, None)],
    );
}

#[test]
fn key_then_node_removed_is_quiet_out_of_order_apart_or_across_actors() {
    let mut h = Harness::rule("key_then_node_removed.yml");
    // Node removed, then a key (replacing a node the usual way round).
    h.audit(T0, node_deleted("alice@example.com", "srv-1"));
    h.audit(
        T0 + 600,
        key_created("alice@example.com", "auth", "k1", None),
    );
    // A key, then a removal two hours later.
    h.audit(
        T0 + 3 * 3600,
        key_created("bob@example.com", "api", "k2", None),
    );
    h.audit(T0 + 5 * 3600, node_deleted("bob@example.com", "srv-2"));
    // A key by one actor, a removal by another.
    h.audit(
        T0 + 7 * 3600,
        key_created("carol@example.com", "api", "k3", None),
    );
    h.audit(
        T0 + 7 * 3600 + 60,
        node_deleted("dave@example.com", "srv-3"),
    );
    // A refused key, then a removal.
    h.audit(
        T0 + 9 * 3600,
        refused(key_created("erin@example.com", "api", "k4", None)),
    );
    h.audit(
        T0 + 9 * 3600 + 60,
        node_deleted("erin@example.com", "srv-4"),
    );
    assert_quiet(&h);
}

// ---------------------------------------------------------------- reconciliation

#[test]
fn reconciliation_tampering_fires_per_node_and_class() {
    let mut h = Harness::rule("reconciliation_tampering.yml");
    for n in 0..5 {
        h.finding(
            T0 + i64::from(n) * 60,
            finding("missing_suspicious", "high", "srv-1", Some("db"), n),
        );
    }
    h.finding(
        T0 + 400,
        finding("count_mismatch", "medium", "srv-1", Some("db"), 10),
    );
    h.finding(
        T0 + 500,
        finding("integrity", "critical", "srv-2", None, 11),
    );
    assert_alerts(
        &h.alerts,
        "tally-reconciliation-high",
        AlertSeverity::High,
        &[
            (
                group(&[("node", "srv-1"), ("class", "missing_suspicious")]),
                Some("srv-1"),
            ),
            (
                group(&[("node", "srv-1"), ("class", "count_mismatch")]),
                Some("srv-1"),
            ),
            (
                group(&[("node", "srv-2"), ("class", "integrity")]),
                Some("srv-2"),
            ),
        ],
    );
    assert_eq!(
        h.alerts[0].evidence.fields.get("peer").map(String::as_str),
        Some("db")
    );
}

const BENIGN_CLASSES: [&str; 5] = [
    "missing_opted_out",
    "missing_flow_logging_off",
    "missing_lost_batch",
    "node_unknown",
    "sequence_gap",
];

#[test]
fn reconciliation_tampering_is_quiet_on_explained_findings() {
    let mut h = Harness::rule("reconciliation_tampering.yml");
    for n in 0..20u32 {
        let class = BENIGN_CLASSES[n as usize % 5];
        h.finding(
            T0 + i64::from(n) * 60,
            finding(class, "info", "srv-1", Some("db"), n),
        );
        h.finding(
            T0 + i64::from(n) * 60,
            finding("missing_agent_silent", "medium", "srv-2", Some("db"), n),
        );
    }
    assert_quiet(&h);
}

#[test]
fn reconciliation_silent_fires_once_per_node() {
    let mut h = Harness::rule("reconciliation_silent.yml");
    for n in 0..10u32 {
        h.finding(
            T0 + i64::from(n) * 60,
            finding("missing_agent_silent", "medium", "srv-3", Some("db"), n),
        );
    }
    h.finding(
        T0 + 900,
        finding("missing_agent_silent", "medium", "srv-4", Some("db"), 99),
    );
    assert_alerts(
        &h.alerts,
        "tally-reconciliation-silent",
        AlertSeverity::Medium,
        &[
            (group(&[("node", "srv-3")]), Some("srv-3")),
            (group(&[("node", "srv-4")]), Some("srv-4")),
        ],
    );
}

#[test]
fn reconciliation_silent_is_quiet_on_other_findings() {
    let mut h = Harness::rule("reconciliation_silent.yml");
    for n in 0..20u32 {
        let class = BENIGN_CLASSES[n as usize % 5];
        h.finding(
            T0 + i64::from(n) * 60,
            finding(class, "info", "srv-3", Some("db"), n),
        );
        h.finding(
            T0 + i64::from(n) * 60,
            finding("missing_suspicious", "high", "srv-3", Some("db"), n),
        );
    }
    assert_quiet(&h);
}

// ---------------------------------------------------------------- the whole pack

/// A busy, clean week and a day: the whole pack raises nothing.
#[test]
fn the_pack_is_quiet_on_a_clean_week() {
    let mut h = Harness::pack();
    for d in 0..9i64 {
        for m in 0..48i64 {
            let t = T0 + d * DAY + m * 1800;
            let port = 32768 + u16::try_from(m).unwrap_or(0) * 11;
            for i in 1..=40u16 {
                let srv = format!("srv-{i}");
                h.connection(
                    t + i64::from(i),
                    TCP,
                    ("prom", port + i),
                    (&srv, 9100),
                    300,
                    30000,
                );
                h.connection(
                    t + i64::from(i),
                    TCP,
                    (&srv, port + i),
                    ("db", 5432),
                    3000,
                    30000,
                );
                // Configuration management from the CI runner (tag:hub,
                // tag:remote-access).
                h.connection(
                    t + i64::from(i),
                    TCP,
                    ("ci", port + i),
                    (&srv, 22),
                    3000,
                    3000,
                );
            }
            // An administrator on a few hosts through the bastion.
            for i in 1..=3u16 {
                let srv = format!("srv-{i}");
                h.connection(t + 100, TCP, ("bastion", port + i), (&srv, 22), 3000, 3000);
            }
            h.connection(t, TCP, ("laptop", port), ("web", 443), 3000, 30000);
            h.exit(t, "laptop", port, internet(443), 5 * MIB, 50 * MIB);
        }
        h.audit(
            T0 + d * DAY,
            setting(
                "alice@example.com",
                "logsRetentionDays",
                json!(30 + d),
                json!(31 + d),
            ),
        );
        h.audit(
            T0 + d * DAY + 1,
            key_created(
                "alice@example.com",
                "api",
                &format!("k{d}"),
                Some("2026-06-01T00:00:00Z"),
            ),
        );
        h.finding(
            T0 + d * DAY + 2,
            finding("missing_opted_out", "info", "srv-5", Some("db"), 0),
        );
    }
    assert_quiet(&h);
    assert!(h.det.stats().events > 100_000);
}
