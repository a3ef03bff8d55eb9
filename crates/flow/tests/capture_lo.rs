//! Real capture on the loopback interface: send known UDP datagrams to
//! ourselves and check that the capture, parser and table count exactly them.
//!
//! Needs CAP_NET_RAW (root), `::1` for the IPv6 test and `setpriv` for the
//! one without the capability. Without them the tests print a one-line
//! notice and pass, unless `TALLY_REQUIRE_NETNS=1`, which makes them fail
//! instead.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tally_flow::capture::{Capture, CaptureConfig, CaptureError, CaptureMode};
use tally_flow::parse::{LinkType, parse_packet_truncated};
use tally_flow::table::{ConnTable, Direction, FlowKey};

struct Seen {
    at: u64,
    dir: Direction,
    link: LinkType,
    data: Vec<u8>,
    wire_len: usize,
}

/// Skips the test with a notice, unless `TALLY_REQUIRE_NETNS=1` (CI) makes
/// a missing prerequisite a failure.
fn skip(why: &str) {
    if std::env::var("TALLY_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("TALLY_REQUIRE_NETNS=1 but {why}");
    }
    eprintln!("skipping: {why}");
}

/// Opens a capture on `lo`, or explains why the test is skipped.
fn open_lo(mode: CaptureMode) -> Option<Capture> {
    let mut config = CaptureConfig::new("lo");
    config.mode = mode;
    match Capture::open(&config) {
        Ok(c) => Some(c),
        Err(e @ CaptureError::PermissionDenied { .. }) => {
            skip(&format!(
                "capture is not permitted (not root / no CAP_NET_RAW): {e}"
            ));
            None
        }
        Err(e) => panic!("opening a capture on lo: {e}"),
    }
}

fn udp_round(mode: CaptureMode, bind: &str) {
    let Some(capture) = open_lo(mode) else {
        return;
    };
    assert_eq!(
        capture.link_type(),
        LinkType::Ethernet,
        "lo is ARPHRD_LOOPBACK"
    );
    let receiver = UdpSocket::bind(bind).unwrap();
    let sender = UdpSocket::bind(bind).unwrap();
    let (rx_addr, tx_addr) = (receiver.local_addr().unwrap(), sender.local_addr().unwrap());
    let ports: HashSet<u16> = [rx_addr.port(), tx_addr.port()].into();

    let (send, recv) = mpsc::channel::<Seen>();
    let handle = capture
        .spawn(move |p| {
            let _ = send.send(Seen {
                at: p.at,
                dir: p.dir,
                link: p.link,
                data: p.data.to_vec(),
                wire_len: p.wire_len,
            });
        })
        .unwrap();

    const N: usize = 25;
    let header = if rx_addr.is_ipv4() { 20 + 8 } else { 40 + 8 };
    let mut expected_bytes = 0u64;
    for i in 0..N {
        let payload = vec![i as u8; 100 + 37 * i];
        sender.send_to(&payload, rx_addr).unwrap();
        expected_bytes += (header + payload.len()) as u64;
    }
    // Each datagram crosses lo once and is seen twice: sent (Tx) and
    // received (Rx).
    let mut table = ConnTable::default();
    let mut matched = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while matched < 2 * N {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(seen) = recv.recv_timeout(left) else {
            panic!("only {matched} of {} packets captured in 10 s", 2 * N);
        };
        let Ok(info) = parse_packet_truncated(seen.link, &seen.data, seen.wire_len) else {
            continue;
        };
        if info.proto != 17 || !ports.contains(&info.src_port) || !ports.contains(&info.dst_port) {
            continue; // other loopback traffic on this host
        }
        assert!(seen.at > 1_600_000_000_000_000_000, "wall-clock timestamps");
        table.observe(seen.at, seen.dir, &info);
        matched += 1;
    }
    let stats = handle.stop().unwrap();
    assert!(stats.delivered >= 2 * N as u64);

    let key = |local: SocketAddr, remote: SocketAddr| FlowKey {
        proto: 17,
        local: local.ip(),
        local_port: local.port(),
        remote: remote.ip(),
        remote_port: remote.port(),
    };
    let sent = table.get(&key(tx_addr, rx_addr)).expect("sender's flow");
    assert_eq!(sent.totals.tx_pkts, N as u64);
    assert_eq!(sent.totals.tx_bytes, expected_bytes);
    assert_eq!(sent.totals.rx_pkts, 0);
    let got = table.get(&key(rx_addr, tx_addr)).expect("receiver's flow");
    assert_eq!(got.totals.rx_pkts, N as u64);
    assert_eq!(got.totals.rx_bytes, expected_bytes);
    assert_eq!(got.totals.tx_pkts, 0);
    let mut buf = [0u8; 2048];
    for _ in 0..N {
        receiver.recv_from(&mut buf).unwrap();
    }
}

#[test]
fn loopback_udp_ipv4_ring() {
    udp_round(CaptureMode::Ring, "127.0.0.1:0");
}

#[test]
fn loopback_udp_ipv4_recv() {
    udp_round(CaptureMode::Recv, "127.0.0.1:0");
}

#[test]
fn loopback_udp_ipv6_ring() {
    if let Err(e) = UdpSocket::bind("[::1]:0") {
        skip(&format!(
            "this host has no IPv6 loopback ::1 ({e}; enable it with sysctl net.ipv6.conf.lo.disable_ipv6=0)"
        ));
        return;
    }
    udp_round(CaptureMode::Ring, "[::1]:0");
}

#[test]
fn unknown_interface_is_reported() {
    match Capture::open(&CaptureConfig::new("nosuchif0")) {
        Err(CaptureError::NoSuchInterface(name)) => assert_eq!(name, "nosuchif0"),
        other => panic!("unexpected: {other:?}"),
    }
    assert!(matches!(
        Capture::open(&CaptureConfig::new("../etc")),
        Err(CaptureError::BadInterfaceName(_))
    ));
}

/// Set in the environment of [`nocap_child`].
const NOCAP_CHILD: &str = "TALLY_FLOW_NOCAP_CHILD";

/// The child process of [`without_cap_net_raw_the_error_says_how_to_grant_it`],
/// started without CAP_NET_RAW: prints the error of opening a capture.
/// Ignored, so it is no test of its own; the parent runs it with
/// `--ignored` (run by hand, it does nothing).
#[test]
#[ignore = "helper process of without_cap_net_raw_the_error_says_how_to_grant_it"]
fn nocap_child() {
    if std::env::var_os(NOCAP_CHILD).is_none() {
        eprintln!(
            "nocap_child is a helper process of without_cap_net_raw_the_error_says_how_to_grant_it: nothing to do"
        );
        return;
    }
    match Capture::open(&CaptureConfig::new("lo")) {
        Err(e @ CaptureError::PermissionDenied { .. }) => println!("NOCAP-ERROR: {e}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

/// Without CAP_NET_RAW the error says so and how to grant it. Run in a child
/// process whose capability bounding set lacks CAP_NET_RAW (setpriv).
#[test]
fn without_cap_net_raw_the_error_says_how_to_grant_it() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-net_raw", "--"])
        .arg(&exe)
        .args(["--exact", "nocap_child", "--ignored", "--nocapture"])
        .env(NOCAP_CHILD, "1")
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("setpriv:") {
                skip(&format!("setpriv cannot drop capabilities here: {err}"));
                return;
            }
            panic!(
                "child failed: {}\n{err}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Err(e) => {
            skip(&format!(
                "setpriv (Debian package util-linux) is unavailable: {e}"
            ));
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("NOCAP-ERROR: "))
        .unwrap_or_else(|| panic!("no error line in child output: {stdout}"));
    assert!(line.contains("CAP_NET_RAW"), "{line}");
    assert!(
        line.contains("setcap cap_net_raw+ep $(which tally)"),
        "{line}"
    );
    assert!(line.contains("AmbientCapabilities=CAP_NET_RAW"), "{line}");
    assert!(line.contains("root"), "{line}");
}
