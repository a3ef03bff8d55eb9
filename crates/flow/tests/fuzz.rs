//! Property tests: random bytes, truncated and mutated valid packets fed to
//! the parser and the table. Nothing panics, every truncated packet is
//! counted as malformed, the table stays within its bound.

use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder};
use proptest::prelude::*;
use tally_flow::parse::{LinkType, parse_packet};
use tally_flow::table::{ConnTable, Direction, TableConfig};

/// A valid frame: (link type, IP version, transport, payload length).
fn valid_frame(link: LinkType, v6: bool, transport: u8, payload: usize) -> Vec<u8> {
    let payload = vec![0x5a; payload];
    let mut out = Vec::new();
    let echo = IcmpEchoHeader { id: 1, seq: 2 };
    macro_rules! finish {
        ($b:expr) => {
            match transport % 3 {
                0 => $b.tcp(1234, 80, 7, 1000).syn().write(&mut out, &payload),
                1 => $b.udp(5353, 53).write(&mut out, &payload),
                _ => {
                    if v6 {
                        $b.icmpv6(Icmpv6Type::EchoRequest(echo))
                            .write(&mut out, &payload)
                    } else {
                        $b.icmpv4(Icmpv4Type::EchoRequest(echo))
                            .write(&mut out, &payload)
                    }
                }
            }
        };
    }
    let a4 = [100, 64, 0, 1];
    let b4 = [100, 64, 0, 2];
    let a6 = [
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    let b6 = [
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    ];
    let res = match (link, v6) {
        (LinkType::Ethernet, false) => {
            finish!(PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(a4, b4, 64))
        }
        (LinkType::Ethernet, true) => {
            finish!(PacketBuilder::ethernet2([1; 6], [2; 6]).ipv6(a6, b6, 64))
        }
        (LinkType::RawIp, false) => finish!(PacketBuilder::ipv4(a4, b4, 64)),
        (LinkType::RawIp, true) => finish!(PacketBuilder::ipv6(a6, b6, 64)),
    };
    res.expect("building a test packet");
    out
}

fn link_of(eth: bool) -> LinkType {
    if eth {
        LinkType::Ethernet
    } else {
        LinkType::RawIp
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                eth in any::<bool>(), wire_extra in 0usize..100) {
        let mut table = ConnTable::new(TableConfig { max_entries: 16, ..TableConfig::default() });
        let link = link_of(eth);
        let _ = parse_packet(link, &bytes);
        let _ = table.observe_frame(1, Direction::Rx, link, &bytes, bytes.len() + wire_extra);
        let s = table.stats();
        prop_assert!(s.entries <= 16);
        prop_assert_eq!(s.malformed + s.not_ip + s.packets, 1);
    }

    #[test]
    fn random_bytes_after_a_valid_ip_start_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..120),
        v6 in any::<bool>(), proto in prop::sample::select(vec![0u8, 1, 6, 17, 43, 44, 51, 58, 59, 60]),
    ) {
        // A plausible first byte and protocol, random everything else.
        let mut frame = tail;
        if frame.len() < 40 { frame.resize(40, 0); }
        if v6 { frame[0] = 0x60; frame[6] = proto; } else { frame[0] = 0x45; frame[9] = proto; }
        let mut table = ConnTable::default();
        let _ = table.observe_frame(1, Direction::Tx, LinkType::RawIp, &frame, frame.len());
        // Whatever the bytes, the frame is counted once, as a packet
        // (tracked in at most one connection) or as malformed.
        let s = table.stats();
        prop_assert_eq!(s.malformed + s.not_ip + s.packets, 1);
        prop_assert!(s.entries <= 1);
    }

    #[test]
    fn truncated_valid_packets_are_malformed(eth in any::<bool>(), v6 in any::<bool>(),
                                             transport in 0u8..3, payload in 0usize..64) {
        let link = link_of(eth);
        let frame = valid_frame(link, v6, transport, payload);
        prop_assert!(parse_packet(link, &frame).is_ok());
        let mut table = ConnTable::default();
        for cut in 0..frame.len() {
            let err = parse_packet(link, &frame[..cut]);
            prop_assert!(matches!(&err, Err(e) if e.is_malformed()), "cut {} of {}: {:?}", cut, frame.len(), err);
            let _ = table.observe_frame(cut as u64, Direction::Rx, link, &frame[..cut], cut);
        }
        prop_assert_eq!(table.stats().malformed, frame.len() as u64);
        prop_assert_eq!(table.take_interval(0, 1).malformed_packets, frame.len() as u64);
        prop_assert!(table.is_empty());
    }

    #[test]
    fn mutated_valid_packets_never_panic(eth in any::<bool>(), v6 in any::<bool>(),
                                         transport in 0u8..3, payload in 0usize..64,
                                         flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let link = link_of(eth);
        let mut frame = valid_frame(link, v6, transport, payload);
        for (pos, val) in flips {
            let i = pos % frame.len();
            frame[i] = val;
        }
        let mut table = ConnTable::new(TableConfig { max_entries: 4, ..TableConfig::default() });
        for t in 0..3 {
            let _ = table.observe_frame(t, Direction::Rx, link, &frame, frame.len());
        }
        prop_assert!(table.len() <= 4);
        let _ = table.expire(u64::MAX);
        let _ = table.take_interval(0, 1);
    }
}
