//! Unit tests of pairing and classification.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::*;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;

fn ip(n: u8) -> IpAddr {
    IpAddr::from([100, 64, 0, n])
}

fn info(n: u8, at: i64) -> NodeInfo {
    NodeInfo {
        tailnet: "t".into(),
        node: format!("n{n}"),
        addresses: vec![ip(n)],
        opted_out: false,
        flow_logging: true,
        last_report: Some(at),
        at,
    }
}

/// Entry of node `a` for traffic a:1000 <-> b:80 in interval `i` (5 s).
#[allow(clippy::too_many_arguments)]
fn obs(a: u8, b: u8, i: i64, skew: i64, tx: u64, rx: u64, seq: u64, index: u32) -> FlowObservation {
    let (ap, bp) = if a < b { (1000, 80) } else { (80, 1000) };
    let start = T0 + i * 5 * S + skew;
    FlowObservation {
        tailnet: Arc::from("t"),
        node: Arc::from(format!("n{a}").as_str()),
        start,
        end: start + 5 * S,
        logged: T0 + (i + 1) * 5 * S + 2 * S,
        kind: FlowKind::Virtual,
        proto: 6,
        src: SocketAddr::new(ip(a), ap),
        dst: SocketAddr::new(ip(b), bp),
        tx_pkts: tx / 1000,
        tx_bytes: tx,
        rx_pkts: rx / 1000,
        rx_bytes: rx,
        instance: Arc::from(format!("inst{a}").as_str()),
        proc_id: 7,
        proc_seq: seq,
        sequenced: true,
        index,
        integrity: None,
        sent: None,
        capture_start: None,
    }
}

fn setup() -> Reconciler {
    let mut r = Reconciler::new(Config::default()).expect("config");
    for n in 1..=3 {
        r.update_node(&info(n, T0));
    }
    r
}

fn run(r: &mut Reconciler, obs: &[FlowObservation]) -> Vec<Finding> {
    let mut out = Vec::new();
    for o in obs {
        out.extend(r.advance(o.logged));
        r.observe(o);
    }
    out.extend(r.advance(T0 + 1000 * S));
    out
}

#[test]
fn matched_with_skew_and_duplicates() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        v.push(obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0));
        v.push(obs(2, 1, i, 17 * S, 10_000, 50_000, i as u64 + 1, 0));
        if i % 3 == 0 {
            v.push(obs(2, 1, i, 17 * S, 10_000, 50_000, i as u64 + 1, 0));
        }
    }
    let f = run(&mut r, &v);
    assert!(f.is_empty(), "{f:#?}");
    assert!(r.stats().duplicates > 0);
    let s = r.summary();
    assert_eq!(s.pairs.len(), 1);
    assert_eq!(s.pairs[0].3.ratio(), 1.0);
}

#[test]
fn count_mismatch_names_both_numbers() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        // +200 kB: more than the two records straddling any window end
        // (100 kB), so the mismatch is provable.
        let tx = if i == 10 { 250_000 } else { 50_000 };
        v.push(obs(1, 2, i, 0, tx, 10_000, i as u64 + 1, 0));
        v.push(obs(2, 1, i, 0, 10_000, 50_000, i as u64 + 1, 0));
    }
    let f = run(&mut r, &v);
    assert!((1..=2).contains(&f.len()), "{f:#?}");
    assert!(f.iter().all(|f| f.class == FindingClass::CountMismatch));
    let first = &f[0].evidence;
    assert!(first.sent.map_or(0, |c| c.bytes) > first.received.map_or(0, |c| c.bytes));
}

#[test]
fn deleted_for_one_peer_is_suspicious() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        v.push(obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0));
        // Node 2 also talks to node 3, so it is reporting.
        v.push(obs(2, 3, i, 0, 5_000, 5_000, i as u64 + 1, 0));
        // Node 2 deletes its records of node 1 for 20 s.
        if !(8..12).contains(&i) {
            v.push(obs(2, 1, i, 0, 10_000, 50_000, i as u64 + 1, 1));
        }
        v.push(obs(3, 2, i, 0, 5_000, 5_000, i as u64 + 1, 0));
    }
    let f = run(&mut r, &v);
    assert!(
        f.iter().any(|f| f.class == FindingClass::MissingSuspicious),
        "{f:#?}"
    );
    assert!(f.iter().all(|f| f.node == "n2"), "{f:#?}");
    assert_eq!(f[0].node, "n2");
    assert_eq!(f[0].peer.as_deref(), Some("n1"));
}

/// Records sent without a logtail identity carry the server's positions,
/// whose gaps are other records': both halves there, no finding.
#[test]
fn positions_standing_in_for_a_sequence_make_no_gap() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        // Positions 65,536 apart, as on a shared log.
        let pos = (i as u64 + 1) << 16;
        for (a, b, tx, rx) in [(1, 2, 50_000, 10_000), (2, 1, 10_000, 50_000)] {
            let mut o = obs(a, b, i, 0, tx, rx, pos, 0);
            o.sequenced = false;
            v.push(o);
        }
    }
    let f = run(&mut r, &v);
    assert!(f.is_empty(), "{f:#?}");
    // The same positions claimed as a sequence are gaps.
    let mut r = setup();
    let v: Vec<_> = v
        .into_iter()
        .map(|mut o| {
            o.sequenced = true;
            o
        })
        .collect();
    let f = run(&mut r, &v);
    assert!(
        f.iter().any(|f| f.class == FindingClass::SequenceGap),
        "{f:#?}"
    );
}

#[test]
fn lost_batch_gives_gap_and_lost_batch() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        v.push(obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0));
        if i != 10 {
            v.push(obs(2, 1, i, 0, 10_000, 50_000, i as u64 + 1, 0));
        }
    }
    let f = run(&mut r, &v);
    let classes: Vec<_> = f.iter().map(|f| f.class).collect();
    assert!(classes.contains(&FindingClass::SequenceGap), "{f:#?}");
    assert!(classes.contains(&FindingClass::MissingLostBatch), "{f:#?}");
    assert!(f.iter().all(|f| f.node == "n2"));
}

#[test]
fn opted_out_and_unknown() {
    let mut r = setup();
    let mut i2 = info(2, T0);
    i2.opted_out = true;
    r.update_node(&i2);
    let mut v = Vec::new();
    for i in 0..4 {
        v.push(obs(1, 2, i, 0, 50_000, 0, i as u64 + 1, 0));
        v.push(obs(1, 9, i, 0, 50_000, 0, i as u64 + 1, 1));
    }
    let f = run(&mut r, &v);
    assert!(
        f.iter()
            .any(|f| f.class == FindingClass::MissingOptedOut && f.node == "n2")
    );
    assert!(
        f.iter().any(
            |f| f.class == FindingClass::NodeUnknown && f.peer.as_deref() == Some("100.64.0.9")
        )
    );
    assert!(f.iter().all(|f| matches!(
        f.class,
        FindingClass::MissingOptedOut | FindingClass::NodeUnknown
    )));
}

#[test]
fn forged_batch_is_one_integrity_finding() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        let mut a = obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0);
        if i == 5 {
            a.tx_bytes = 1;
            a.integrity = Some(BatchVerdict::BadSignature);
        }
        v.push(a);
        v.push(obs(2, 1, i, 0, 10_000, 50_000, i as u64 + 1, 0));
    }
    let f = run(&mut r, &v);
    let integ: Vec<_> = f
        .iter()
        .filter(|f| f.class == FindingClass::Integrity)
        .collect();
    assert_eq!(integ.len(), 1, "{f:#?}");
    assert_eq!(integ[0].severity, Severity::Critical);
}

#[test]
fn snapshot_round_trip() {
    let mut r = setup();
    r.observe(&obs(1, 2, 0, 0, 50_000, 10_000, 1, 0));
    let a = r.snapshot().expect("snapshot");
    let r2 = Reconciler::restore(&a).expect("restore");
    assert_eq!(a, r2.snapshot().expect("snapshot"));
    assert!(Reconciler::restore(b"{").is_err());
}

#[test]
fn trend_compares_the_last_half_hour_with_the_one_before() {
    let mut c = Completeness::default();
    let m = 60 * S;
    let base = (T0 / BUCKET_NS + 1) * BUCKET_NS;
    // 30 minutes all matched, then 30 minutes half matched.
    for i in 0..360 {
        c.record(true, base + i * 5 * S);
    }
    assert_eq!(c.trend(), Trend::Unknown);
    for i in 360..720 {
        c.record(i % 2 == 0, base + i * 5 * S);
    }
    assert_eq!(c.trend(), Trend::Worsening, "{:?}", c.recent());
    assert_eq!(c.recent().iter().map(|b| b.judged).sum::<u32>(), 720);
    // Another hour all matched.
    for i in 720..1440 {
        c.record(true, base + i * 5 * S);
    }
    assert_eq!(c.trend(), Trend::Steady);
    assert!(c.recent().iter().all(|b| b.start >= base + 60 * m));
    assert_eq!(c.judged, 1440);
}

#[test]
fn impossible_records_are_rejected_without_harm() {
    let mut r = setup();
    let mut v = Vec::new();
    for i in 0..20 {
        v.push(obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0));
        v.push(obs(2, 1, i, 0, 10_000, 50_000, i as u64 + 1, 0));
    }
    // Garbage from node 1 in between: a record spanning since 1970, one
    // ending before it starts, one from 100 years ahead, absurd counts.
    let mut bad = obs(1, 2, 5, 0, 50_000, 10_000, 100, 0);
    bad.start = 0;
    let mut backwards = obs(1, 2, 5, 0, 50_000, 10_000, 101, 0);
    backwards.end = backwards.start - S;
    let mut future = obs(1, 2, 5, 0, 50_000, 10_000, 102, 0);
    future.start += 100 * 365 * 86_400 * S;
    future.end += 100 * 365 * 86_400 * S;
    let mut huge = obs(1, 2, 5, 0, u64::MAX, u64::MAX, 103, 0);
    huge.rx_bytes = u64::MAX;
    for b in [bad, backwards, future, huge] {
        v.insert(12, b);
    }
    let f = run(&mut r, &v);
    assert!(f.is_empty(), "{f:#?}");
    assert_eq!(r.stats().rejected, 4);
}

#[test]
fn a_stepped_node_clock_is_followed() {
    let mut r = setup();
    let mut v = Vec::new();
    // Node 2's clock steps back by an hour after 2,000 records' worth of
    // entries; pairing recovers once the offset span has turned over.
    let n = 3 * 1024;
    for i in 0..n as i64 {
        v.push(obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0));
        let skew = if i < 1024 { 0 } else { -3600 * S };
        v.push(obs(2, 1, i, skew, 10_000, 50_000, i as u64 + 1, 0));
    }
    let f = run(&mut r, &v);
    assert!(!f.is_empty(), "the step itself is one-sided for a while");
    let last = f.iter().map(|f| f.window.end).max().unwrap_or(0);
    // Findings only around the step, none in the last third.
    assert!(
        last < T0 + (2 * 1024 + 1) * 5 * S,
        "last finding ends at {last}: {f:#?}"
    );
}

/// Short connections (each inside one record of each end) between two
/// nodes whose 5-s intervals start at any offset from each other, with
/// packets reaching a node's table up to 200 ms late (so that one end may
/// count a connection in its next record) and records waiting in one
/// agent's queue for 0 to 2.3 s before they are sent: never a finding.
#[test]
fn short_connections_pair_at_any_phase_offset() {
    let ms = 1_000_000i64;
    let mut rng = eval::Rng::new(11);
    for phase_ms in (0..5000).step_by(100) {
        let mut r = setup();
        let mut v: Vec<FlowObservation> = Vec::new();
        // (node, interval) -> entries
        type Entries = Vec<(u16, [u64; 4])>;
        let mut recs: std::collections::BTreeMap<(u8, i64), Entries> = Default::default();
        for c in 0..280u16 {
            let t = 300 * ms + i64::from(c) * 700 * ms;
            for (node, phase) in [(1u8, 0i64), (2u8, phase_ms * ms)] {
                let seen = t + rng.range(0, 200) * ms;
                let k = (seen - phase).div_euclid(5 * S);
                let counts = if node == 1 {
                    [6, 3320, 4, 3216]
                } else {
                    [4, 3216, 6, 3320]
                };
                recs.entry((node, k)).or_default().push((c, counts));
            }
        }
        let mut seq = [0u64; 3];
        for ((node, k), entries) in recs {
            let phase = if node == 1 { 0 } else { phase_ms * ms };
            let start = T0 + k * 5 * S + phase;
            seq[node as usize] += 1;
            let logged = start
                + 5 * S
                + if node == 1 {
                    2 * S + rng.range(0, 300) * ms
                } else {
                    rng.range(0, 2300) * ms
                };
            for (i, (c, n)) in entries.iter().enumerate() {
                let (me, peer) = (node, 3 - node);
                let port = 40_000 + *c;
                let (src_port, dst_port) = if me == 1 { (port, 9000) } else { (9000, port) };
                v.push(FlowObservation {
                    tailnet: Arc::from("t"),
                    node: Arc::from(format!("n{me}").as_str()),
                    start,
                    end: start + 5 * S,
                    logged,
                    kind: FlowKind::Virtual,
                    proto: 6,
                    src: SocketAddr::new(ip(me), src_port),
                    dst: SocketAddr::new(ip(peer), dst_port),
                    tx_pkts: n[0],
                    tx_bytes: n[1],
                    rx_pkts: n[2],
                    rx_bytes: n[3],
                    instance: Arc::from(format!("inst{me}").as_str()),
                    proc_id: 7,
                    proc_seq: seq[node as usize],
                    sequenced: true,
                    index: i as u32,
                    integrity: None,
                    // The upload's send time: a record may wait in the
                    // agent's queue from 0 to 2.3 s, the send takes 1-5 ms.
                    sent: Some(logged - rng.range(1, 5) * ms),
                    capture_start: Some(T0 - 10 * S + phase),
                });
            }
        }
        v.sort_by_key(|o| o.logged);
        let found = run(&mut r, &v);
        assert!(
            found.is_empty(),
            "phase offset {phase_ms} ms: {} findings, first {:?}",
            found.len(),
            found.first()
        );
    }
}

/// A backlog of ten 1-s records from each end uploaded at once, without a
/// send time: placed as one (by the newest record's end), an edit of one
/// end's counts is a count mismatch.
#[test]
fn a_backlog_uploaded_at_once_is_judged_as_it_happened() {
    let cfg = Config {
        window_ns: S,
        grace_ns: 15 * S,
        ..Config::default()
    };
    let mut r = Reconciler::new(cfg).expect("config");
    r.update_node(&info(1, T0 - 100 * S));
    r.update_node(&info(2, T0 - 100 * S));
    let now = T0 + 100 * S;
    for (a, b, tx, rx) in [(1u8, 2u8, 50_000u64, 0u64), (2, 1, 0, 1_000)] {
        for i in 0..10i64 {
            let start = now - (12 - i) * S;
            let mut o = obs(a, b, 0, 0, tx, rx, i as u64 + 1, 0);
            o.start = start;
            o.end = start + S;
            o.logged = now + i64::from(a) * 1_000_000;
            o.sent = Some(now - 2 * S);
            o.tx_pkts = 40;
            o.rx_pkts = 40;
            r.observe(&o);
        }
    }
    let found = r.advance(now + 100 * S);
    assert!(
        found.iter().any(|f| f.class == FindingClass::CountMismatch),
        "{found:#?}"
    );
}

/// One node leaves its half of a steady connection out of one record
/// (1-s records and windows): the other end's received bytes prove it.
#[test]
fn a_half_left_out_of_one_record_of_a_steady_connection_is_found() {
    let cfg = Config {
        window_ns: S,
        grace_ns: 5 * S,
        ..Config::default()
    };
    let mut r = Reconciler::new(cfg).expect("config");
    r.update_node(&info(1, T0 - 100 * S));
    r.update_node(&info(3, T0 - 100 * S));
    let mut found = Vec::new();
    for round in 0..30i64 {
        let start = T0 + round * S;
        let logged = start + 2 * S;
        found.extend(r.advance(logged));
        // gamma (3) sends to alpha (1); alpha only receives.
        // A second connection (port 81) keeps gamma's record of round 9.
        for (me, other, tx, rx) in [(3u8, 1u8, 50_000u64, 2_000u64), (1, 3, 2_000, 50_000)] {
            for (index, port) in [(0u32, 80u16), (1, 81)] {
                if me == 3 && round == 9 && port == 80 {
                    continue;
                }
                let mut o = obs(me, other, 0, 0, tx, rx, round as u64 + 1, index);
                if me == 3 {
                    o.src.set_port(port);
                } else {
                    o.dst.set_port(port);
                }
                o.start = start;
                o.end = start + S;
                o.logged = logged;
                o.sent = Some(start + S);
                o.tx_pkts = 40;
                o.rx_pkts = 20;
                r.observe(&o);
            }
        }
    }
    found.extend(r.advance(T0 + 1000 * S));
    assert!(
        found
            .iter()
            .any(|f| f.window.start <= T0 + 10 * S && f.window.end >= T0 + 9 * S),
        "{found:#?}"
    );
}

/// A registered node that never sent a flow record (its agent runs without
/// `--flows`): its peer's halves are one-sided, reported as a silent agent
/// of low severity that says so, not as lost records.
#[test]
fn a_node_that_never_sent_flow_records_is_a_low_finding_that_says_so() {
    let mut r = setup();
    let v: Vec<FlowObservation> = (0..6)
        .map(|i| obs(1, 2, i, 0, 50_000, 10_000, i as u64 + 1, 0))
        .collect();
    let found = run(&mut r, &v);
    assert!(!found.is_empty());
    for f in &found {
        assert_eq!(f.class, FindingClass::MissingAgentSilent, "{f:?}");
        assert_eq!(f.severity, Severity::Low, "{f:?}");
        assert_eq!(f.node, "n2", "{f:?}");
        assert!(f.detail.contains("no flow records at all"), "{f:?}");
    }
}
