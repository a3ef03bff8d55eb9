//! Helpers shared by the flow store tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use tally_flowstore::{
    EdgeBucket, FlowEntry, FlowFilter, FlowHit, FlowKind, FlowStore, FlowStoreConfig, PageRequest,
};

pub const SEC: i64 = 1_000_000_000;
/// 2026-01-01T00:00:00Z.
pub const BASE: i64 = 1_767_225_600 * SEC;

/// Small windows and blocks, so that tests cross many of both.
pub fn small_config() -> FlowStoreConfig {
    FlowStoreConfig {
        window: Duration::from_secs(10),
        grace: Duration::from_secs(2),
        block_entries: 16,
        zstd_level: 3,
        max_open_entries: 1_000_000,
        footer_cache_bytes: 1 << 20,
        retire_after: Duration::ZERO,
        compact_entries: 2_000_000,
    }
}

pub fn open(dir: &Path, cfg: &FlowStoreConfig) -> (FlowStore, u64) {
    FlowStore::open(dir, cfg.clone()).expect("open flow store")
}

/// Every page of a query, concatenated.
pub fn drain(store: &FlowStore, f: &FlowFilter, limit: usize) -> Vec<FlowHit> {
    let mut out = Vec::new();
    let mut page = PageRequest::first(limit);
    let mut pages = 0;
    loop {
        let p = store.query(f, &page).expect("query");
        assert!(p.errors.is_empty(), "unexpected damage: {:?}", p.errors);
        // Whole records only, and within the limit unless one record is larger.
        let mut records: Vec<(i64, &str, u64)> = p
            .hits
            .iter()
            .map(|h| (h.entry.start, h.entry.node.as_str(), h.seq))
            .collect();
        records.dedup();
        assert!(
            p.hits.len() <= limit || records.len() == 1,
            "page of {} entries for limit {limit}",
            p.hits.len()
        );
        out.extend(p.hits);
        pages += 1;
        assert!(pages < 100_000, "paging does not end");
        match p.next {
            Some(c) => page.cursor = Some(c),
            None => return out,
        }
    }
}

/// Whether `a` lies inside `net`, by comparing the prefix bits (written
/// here, not with the crate's `ipnet`, so the oracle stays independent).
pub fn in_prefix(net: &ipnet::IpNet, a: IpAddr) -> bool {
    let len = u32::from(net.prefix_len());
    match (net.addr(), a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Whether an entry satisfies the filter, written out from the documented
/// meaning of each field (not with `FlowFilter::matches`): the tailnet,
/// record start in `[start, end)`, the reporting node, source and
/// destination prefixes, a port on either side, the protocol, the traffic
/// kind, and for node pairs the remote end (`dst`) inside one of the peer's
/// prefixes (none: nothing matches).
pub fn oracle_matches(f: &FlowFilter, e: &FlowEntry) -> bool {
    if e.tailnet != f.tailnet || e.start < f.start || e.start >= f.end {
        return false;
    }
    if let Some(n) = &f.node
        && e.node != *n
    {
        return false;
    }
    if let Some(p) = &f.src
        && !in_prefix(p, e.src)
    {
        return false;
    }
    if let Some(p) = &f.dst
        && !in_prefix(p, e.dst)
    {
        return false;
    }
    if let Some(port) = f.port
        && e.src_port != port
        && e.dst_port != port
    {
        return false;
    }
    if let Some(proto) = f.proto
        && e.proto != proto
    {
        return false;
    }
    if let Some(k) = f.kind
        && e.kind != k
    {
        return false;
    }
    if let Some(peers) = &f.peer
        && !peers.iter().any(|p| in_prefix(p, e.dst))
    {
        return false;
    }
    true
}

/// The documented rank of a traffic kind on a page: virtual, subnet, exit,
/// physical.
fn kind_rank(k: FlowKind) -> u8 {
    match k {
        FlowKind::Virtual => 0,
        FlowKind::Subnet => 1,
        FlowKind::Exit => 2,
        FlowKind::Physical => 3,
    }
}

/// What a query must answer: [`oracle_matches`] applied to every entry, in
/// the documented page order (newest record first: start, node ID and
/// store position descending; inside a record by kind, protocol, source,
/// source port, destination, destination port, then counters ascending).
pub fn naive(all: &[(u64, FlowEntry)], f: &FlowFilter) -> Vec<FlowHit> {
    let mut v: Vec<FlowHit> = all
        .iter()
        .filter(|(_, e)| oracle_matches(f, e))
        .map(|(seq, e)| FlowHit {
            seq: *seq,
            entry: e.clone(),
        })
        .collect();
    v.sort_by_key(|h| {
        let e = &h.entry;
        (
            std::cmp::Reverse((e.start, e.node.clone(), h.seq)),
            (
                kind_rank(e.kind),
                e.proto,
                e.src,
                e.src_port,
                e.dst,
                e.dst_port,
            ),
            (e.tx_pkts, e.tx_bytes, e.rx_pkts, e.rx_bytes),
        )
    });
    v
}

/// What `edges` must answer.
pub fn naive_edges(all: &[(u64, FlowEntry)], f: &FlowFilter, bucket: i64) -> Vec<EdgeBucket> {
    let mut m: HashMap<(i64, String, IpAddr), EdgeBucket> = HashMap::new();
    for (_, e) in all.iter().filter(|(_, e)| oracle_matches(f, e)) {
        let b = e.start.div_euclid(bucket) * bucket;
        let x = m
            .entry((b, e.node.clone(), e.dst))
            .or_insert_with(|| EdgeBucket {
                bucket: b,
                node: e.node.clone(),
                remote: e.dst,
                tx_pkts: 0,
                tx_bytes: 0,
                rx_pkts: 0,
                rx_bytes: 0,
                entries: 0,
            });
        x.tx_pkts = x.tx_pkts.saturating_add(e.tx_pkts);
        x.tx_bytes = x.tx_bytes.saturating_add(e.tx_bytes);
        x.rx_pkts = x.rx_pkts.saturating_add(e.rx_pkts);
        x.rx_bytes = x.rx_bytes.saturating_add(e.rx_bytes);
        x.entries += 1;
    }
    let mut v: Vec<EdgeBucket> = m.into_values().collect();
    v.sort_by(|a, b| (a.bucket, &a.node, a.remote).cmp(&(b.bucket, &b.node, b.remote)));
    v
}

/// A deterministic flow record for position `seq` (used by crash tests):
/// node `seq % 7`, logged 100 ms apart, 1 to 4 entries.
pub fn record(tailnet: &str, seq: u64) -> Vec<FlowEntry> {
    let node = format!("node{}", seq % 7);
    let start = BASE + (seq as i64) * SEC / 10;
    let n = 1 + (seq % 4) as usize;
    (0..n)
        .map(|i| FlowEntry {
            tailnet: tailnet.to_owned(),
            node: node.clone(),
            start,
            end: start + 5 * SEC,
            logged: start + 5 * SEC + SEC / 3,
            kind: if i == 3 {
                FlowKind::Exit
            } else {
                FlowKind::Virtual
            },
            proto: if i % 2 == 0 { 6 } else { 17 },
            src: format!("100.64.0.{}", seq % 7 + 1).parse().expect("addr"),
            src_port: 40000 + (seq % 100) as u16,
            dst: format!("100.64.1.{}", i + 1).parse().expect("addr"),
            dst_port: [22, 443, 53, 80][i],
            tx_pkts: seq,
            tx_bytes: seq * 100 + i as u64,
            rx_pkts: i as u64,
            rx_bytes: 0,
        })
        .collect()
}

/// Every (seq, entry) of records `1..=n` of [`record`].
pub fn records(tailnet: &str, n: u64) -> Vec<(u64, FlowEntry)> {
    (1..=n)
        .flat_map(|s| record(tailnet, s).into_iter().map(move |e| (s, e)))
        .collect()
}

/// Sorted (seq, entry) pairs of a page list, for multiset comparison.
pub fn as_sorted(hits: &[FlowHit]) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = hits
        .iter()
        .map(|h| (h.seq, format!("{:?}", h.entry)))
        .collect();
    v.sort();
    v
}
