//! Whatever a node puts in its records, the reconciler neither panics nor
//! hangs, and snapshots of what it holds restore.

use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tally_reconcile::{Config, FlowKind, FlowObservation, NodeInfo, Reconciler};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;

fn addr(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([100, 64, 0, n % 4]), port)
}

prop_compose! {
    fn observation()(
        node in 0u8..4,
        peer in 0u8..6,
        port in prop::sample::select(vec![80u16, 443, 0, 65535]),
        start in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), (T0 - 100 * S)..(T0 + 100 * S)],
        len in prop_oneof![Just(i64::MAX), Just(-5 * S), 0..(20 * S)],
        delay in prop_oneof![Just(i64::MIN / 2), -(40 * S)..(90 * S)],
        counts in prop::array::uniform4(prop_oneof![Just(u64::MAX), Just(1u64 << 48), 0u64..100_000]),
        seq in prop_oneof![Just(u64::MAX), 0u64..50],
        index in 0u32..3,
        virt in any::<bool>(),
    ) -> FlowObservation {
        let end = start.saturating_add(len);
        FlowObservation {
            tailnet: Arc::from("t"),
            node: Arc::from(format!("n{node}").as_str()),
            start,
            end,
            logged: T0.saturating_add(delay).max(T0 - 200 * S),
            kind: if virt { FlowKind::Virtual } else { FlowKind::Exit },
            proto: 6,
            src: addr(node, 1000),
            dst: addr(peer, port),
            tx_pkts: counts[0],
            tx_bytes: counts[1],
            rx_pkts: counts[2],
            rx_bytes: counts[3],
            instance: Arc::from(format!("i{node}").as_str()),
            proc_id: 1,
            proc_seq: seq,
            sequenced: true,
            index,
            integrity: None,
            sent: None,
            capture_start: None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn hostile_records_never_panic(obs in prop::collection::vec(observation(), 1..120)) {
        let mut r = Reconciler::new(Config::default()).unwrap();
        for n in 0..4u8 {
            r.update_node(&NodeInfo {
                tailnet: "t".into(),
                node: format!("n{n}"),
                addresses: vec![addr(n, 0).ip()],
                opted_out: n == 3,
                flow_logging: true,
                last_report: Some(T0),
                at: T0 - 300 * S,
            });
        }
        let mut now = T0 - 200 * S;
        for o in &obs {
            now = now.max(o.logged);
            r.advance(now);
            r.observe(o);
        }
        let snap = r.snapshot().unwrap();
        let mut back = Reconciler::restore(&snap).unwrap();
        let a = r.advance(T0 + 3600 * S);
        let b = back.advance(T0 + 3600 * S);
        prop_assert_eq!(a, b);
    }
}
