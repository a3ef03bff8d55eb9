//! Random flow records through open windows and sealed segments: every
//! query and edges answer equals a naive filter over all entries, before
//! sealing, while some windows are sealed, and after reopening.

mod common;

use common::*;
use proptest::prelude::*;
use std::net::IpAddr;
use tally_flowstore::{FlowEntry, FlowFilter, FlowKind, FlowStore, IpNet};

const ADDRS: [&str; 10] = [
    "100.64.0.1",
    "100.64.0.2",
    "100.64.0.3",
    "100.100.7.9",
    "10.1.2.3",
    "8.8.8.8",
    "fd7a:115c:a1e0::1",
    "fd7a:115c:a1e0::2",
    "fd7a:115c:a1e0::ab:cdef",
    "2001:db8::1",
];
const PORTS: [u16; 7] = [0, 22, 53, 443, 40000, 40001, 65535];
const PROTOS: [u8; 4] = [1, 6, 17, 58];
const TAILNETS: [&str; 2] = ["example.com", "T1"];

fn addr(i: usize) -> IpAddr {
    ADDRS[i % ADDRS.len()].parse().expect("addr")
}

#[derive(Debug, Clone)]
struct Tuple {
    kind: u8,
    proto: usize,
    src: usize,
    sport: usize,
    dst: usize,
    dport: usize,
    counters: [u64; 4],
}

#[derive(Debug, Clone)]
struct Rec {
    tailnet: usize,
    node: u8,
    /// Seconds after BASE.
    start: i64,
    delay_ms: i64,
    tuples: Vec<Tuple>,
    /// Call `seal_due` after inserting this record.
    seal: bool,
}

fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..3, 0u64..100_000, any::<u64>()]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    (
        0u8..4,
        0..PROTOS.len(),
        0..ADDRS.len(),
        0..PORTS.len(),
        0..ADDRS.len(),
        0..PORTS.len(),
        [counter(), counter(), counter(), counter()],
    )
        .prop_map(|(kind, proto, src, sport, dst, dport, counters)| Tuple {
            kind,
            proto,
            src,
            sport,
            dst,
            dport,
            counters,
        })
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        0..TAILNETS.len(),
        0u8..6,
        0i64..60,
        0i64..4000,
        prop::collection::vec(tuple(), 1..6),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(tailnet, node, start, delay_ms, tuples, seal)| Rec {
            tailnet,
            node,
            start,
            delay_ms,
            tuples,
            seal,
        })
}

fn entries(r: &Rec) -> Vec<FlowEntry> {
    let start = BASE + r.start * SEC;
    let end = start + 5 * SEC;
    r.tuples
        .iter()
        .map(|t| FlowEntry {
            tailnet: TAILNETS[r.tailnet].to_owned(),
            node: format!("n{}", r.node),
            start,
            end,
            logged: end + r.delay_ms * 1_000_000,
            kind: FlowKind::ALL[usize::from(t.kind)],
            proto: PROTOS[t.proto],
            src: addr(t.src),
            src_port: PORTS[t.sport],
            dst: addr(t.dst),
            dst_port: PORTS[t.dport],
            tx_pkts: t.counters[0],
            tx_bytes: t.counters[1],
            rx_pkts: t.counters[2],
            rx_bytes: t.counters[3],
        })
        .collect()
}

fn prefix(i: usize, len_choice: u8) -> IpNet {
    let a = addr(i);
    let len = match (a, len_choice % 3) {
        (IpAddr::V4(_), 0) => 32,
        (IpAddr::V4(_), 1) => 24,
        (IpAddr::V4(_), _) => 10,
        (IpAddr::V6(_), 0) => 128,
        (IpAddr::V6(_), 1) => 64,
        (IpAddr::V6(_), _) => 48,
    };
    IpNet::new(a, len).expect("prefix").trunc()
}

#[derive(Debug, Clone)]
struct Query {
    tailnet: usize,
    from: i64,
    to: i64,
    node: Option<u8>,
    src: Option<(usize, u8)>,
    dst: Option<(usize, u8)>,
    port: Option<usize>,
    proto: Option<usize>,
    kind: Option<u8>,
    peer: Option<Vec<(usize, u8)>>,
    limit: usize,
}

fn query() -> impl Strategy<Value = Query> {
    (
        (0..TAILNETS.len(), -5i64..70, 0i64..80),
        prop::option::weighted(0.4, 0u8..7),
        prop::option::weighted(0.2, (0..ADDRS.len(), 0u8..3)),
        prop::option::weighted(0.2, (0..ADDRS.len(), 0u8..3)),
        prop::option::weighted(0.2, 0..PORTS.len()),
        prop::option::weighted(0.2, 0..PROTOS.len()),
        prop::option::weighted(0.2, 0u8..4),
        prop::option::weighted(0.2, prop::collection::vec((0..ADDRS.len(), 0u8..3), 0..3)),
        1usize..25,
    )
        .prop_map(
            |((tailnet, from, span), node, src, dst, port, proto, kind, peer, limit)| Query {
                tailnet,
                from,
                to: from + span,
                node,
                src,
                dst,
                port,
                proto,
                kind,
                peer,
                limit,
            },
        )
}

fn filter(q: &Query) -> FlowFilter {
    let mut f = FlowFilter::new(TAILNETS[q.tailnet], BASE + q.from * SEC, BASE + q.to * SEC);
    f.node = q.node.map(|n| format!("n{n}"));
    f.src = q.src.map(|(i, l)| prefix(i, l));
    f.dst = q.dst.map(|(i, l)| prefix(i, l));
    f.port = q.port.map(|i| PORTS[i]);
    f.proto = q.proto.map(|i| PROTOS[i]);
    f.kind = q.kind.map(|k| FlowKind::ALL[usize::from(k)]);
    f.peer = q
        .peer
        .as_ref()
        .map(|v| v.iter().map(|(i, l)| prefix(*i, *l)).collect());
    f
}

fn check(store: &FlowStore, all: &[(u64, tally_flowstore::FlowEntry)], qs: &[Query], what: &str) {
    for q in qs {
        let f = filter(q);
        let want = naive(all, &f);
        let got = drain(store, &f, q.limit);
        assert_eq!(got.len(), want.len(), "{what}: entry count for {f:?}");
        assert!(got == want, "{what}: entries or order differ for {f:?}");
        let bucket = [SEC, 7 * SEC, 3600 * SEC][q.limit % 3];
        let e = store.edges(&f, bucket).expect("edges");
        assert!(e.errors.is_empty());
        assert_eq!(
            e.buckets,
            naive_edges(all, &f, bucket),
            "{what}: edges for {f:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queries_equal_a_naive_filter_in_memory_sealed_and_reopened(
        recs in prop::collection::vec(rec(), 1..120),
        qs in prop::collection::vec(query(), 1..12),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = small_config();
        let (store, c0) = open(dir.path(), &cfg);
        prop_assert_eq!(c0, 0);
        let mut all = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let seq = i as u64 + 1;
            let es = entries(r);
            prop_assert_eq!(store.insert(seq, &es).expect("insert"), es.len());
            if r.seal {
                // Seal what the record's own time says is due: later records
                // with earlier receive times then make extra parts.
                store.seal_due(es[0].logged).expect("seal");
            }
            all.extend(es.into_iter().map(|e| (seq, e)));
        }
        check(&store, &all, &qs, "mixed open and sealed");
        // A replayed position is ignored.
        prop_assert_eq!(store.insert(1, &entries(&recs[0])).expect("insert"), 0);
        let c = store.seal_all().expect("seal all");
        prop_assert_eq!(c, recs.len() as u64);
        check(&store, &all, &qs, "all sealed");
        let st = store.stats();
        prop_assert_eq!(st.open_entries, 0);
        prop_assert_eq!(st.sealed_entries, all.len() as u64);
        drop(store);
        let (store, c) = open(dir.path(), &cfg);
        prop_assert_eq!(c, recs.len() as u64);
        check(&store, &all, &qs, "reopened");
    }
}

#[test]
fn a_page_never_splits_a_record_and_the_cursor_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), &small_config());
    let all = records("t", 50);
    for s in 1..=50 {
        store.insert(s, &record("t", s)).expect("insert");
    }
    store.seal_due(BASE + 3 * SEC).expect("seal");
    let f = FlowFilter::new("t", BASE, BASE + 3600 * SEC);
    for limit in [1, 2, 3, 5, 1000] {
        assert_eq!(drain(&store, &f, limit), naive(&all, &f), "limit {limit}");
    }
    let p = store
        .query(&f, &tally_flowstore::PageRequest::first(3))
        .expect("query");
    let c = p.next.expect("more pages");
    let parsed = tally_flowstore::PageCursor::parse(c.as_str()).expect("cursor parses");
    assert_eq!(parsed, c);
    assert!(tally_flowstore::PageCursor::parse("f1.x.y.z").is_err());
    assert!(tally_flowstore::PageCursor::parse("").is_err());
    let bad = tally_flowstore::PageRequest {
        limit: 0,
        cursor: None,
    };
    assert!(store.query(&f, &bad).is_err());
}

#[test]
fn indexes_skip_blocks_that_cannot_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = small_config();
    cfg.window = std::time::Duration::from_secs(3600);
    cfg.block_entries = 512;
    let (store, _) = open(dir.path(), &cfg);
    // 40 nodes, each talking to 3 peers, for 10 minutes.
    let mut seq = 0;
    let mut all = Vec::new();
    for t in 0..120i64 {
        for n in 0..40u32 {
            let start = BASE + t * 5 * SEC;
            let es: Vec<FlowEntry> = (0..3u32)
                .map(|p| {
                    let peer = (n + 1 + p * 7) % 40;
                    FlowEntry {
                        tailnet: "t".into(),
                        node: format!("node{n:02}"),
                        start,
                        end: start + 5 * SEC,
                        logged: start + 6 * SEC,
                        kind: FlowKind::Virtual,
                        proto: if p == 2 { 17 } else { 6 },
                        src: format!("100.64.0.{}", n + 1).parse().expect("addr"),
                        src_port: 40000 + p as u16,
                        dst: format!("100.64.0.{}", peer + 1).parse().expect("addr"),
                        dst_port: [22, 443, 53][p as usize],
                        tx_pkts: 1,
                        tx_bytes: 100,
                        rx_pkts: 1,
                        rx_bytes: 100,
                    }
                })
                .collect();
            seq += 1;
            store.insert(seq, &es).expect("insert");
            all.extend(es.into_iter().map(|e| (seq, e)));
        }
    }
    store.seal_all().expect("seal");
    let whole = FlowFilter::new("t", BASE, BASE + 3600 * SEC);
    let p = store
        .query(&whole, &tally_flowstore::PageRequest::first(100_000))
        .expect("query");
    let blocks = p.stats.blocks;
    assert!(blocks >= 40, "{blocks} blocks");
    // One node: its run is one or two blocks.
    let mut f = whole.clone();
    f.node = Some("node07".into());
    let p = store
        .query(&f, &tally_flowstore::PageRequest::first(100_000))
        .expect("query");
    assert_eq!(p.hits, naive(&all, &f));
    assert!(
        p.stats.blocks_read <= 2,
        "node query read {} of {blocks} blocks",
        p.stats.blocks_read
    );
    // A node pair: the node's blocks, and the Bloom filter agrees.
    f.peer = Some(vec!["100.64.0.9/32".parse().expect("prefix")]);
    let p = store
        .query(&f, &tally_flowstore::PageRequest::first(100_000))
        .expect("query");
    assert_eq!(p.hits, naive(&all, &f));
    assert!(p.stats.blocks_read <= 2);
    // A destination address alone: only the blocks of nodes that reach it.
    let mut f = whole.clone();
    f.dst = Some("100.64.0.20/32".parse().expect("prefix"));
    let p = store
        .query(&f, &tally_flowstore::PageRequest::first(100_000))
        .expect("query");
    assert_eq!(p.hits, naive(&all, &f));
    assert!(
        p.stats.blocks_read * 4 < blocks,
        "dst query read {} of {blocks} blocks",
        p.stats.blocks_read
    );
    // A protocol absent from the data, a time range outside it.
    let mut f = whole.clone();
    f.proto = Some(58);
    let p = store
        .query(&f, &tally_flowstore::PageRequest::first(10))
        .expect("query");
    assert!(p.hits.is_empty() && p.stats.blocks_read == 0);
    let f = FlowFilter::new("t", BASE + 7200 * SEC, BASE + 9000 * SEC);
    let p = store
        .query(&f, &tally_flowstore::PageRequest::first(10))
        .expect("query");
    assert!(p.hits.is_empty() && p.stats.blocks == 0 && p.stats.files_skipped == p.stats.files);
}
