//! Real capture on a layer-3 interface (a tun device, ARPHRD_NONE, as
//! WireGuard's `wg0` and `tailscale0` are): raw IP with no link header, read
//! through a `SOCK_DGRAM` packet socket.
//!
//! The test creates a tun device, sends UDP datagrams to a peer address
//! routed through it (captured as Tx), reads them from the tun file
//! descriptor and writes a reply for each back into it (captured as Rx), and
//! checks that the table counts exactly those packets and their IP lengths.
//!
//! Needs root (CAP_NET_ADMIN for the tun device and addresses, CAP_NET_RAW
//! for capture) and /dev/net/tun: without them it prints a one-line notice
//! and passes, unless `TALLY_REQUIRE_NETNS=1`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use tally_flow::capture::{Capture, CaptureConfig, CaptureError};
use tally_flow::parse::{LinkType, PROTO_UDP, parse_packet, parse_packet_truncated};
use tally_flow::table::{ConnTable, FlowKey};

fn skip(reason: &str) {
    if std::env::var("TALLY_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("TALLY_REQUIRE_NETNS=1 but the tun capture test cannot run: {reason}");
    }
    eprintln!("skipping tun capture test: {reason}");
}

/// `struct ifreq` with the flags member of its union (40 bytes on Linux).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens /dev/net/tun and creates the tun device `name` (IFF_TUN |
/// IFF_NO_PI: raw IP packets). The device lives while the file is open.
fn create_tun(name: &str) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a
    // properly sized and initialized repr(C) ifreq that outlives the call,
    // and the fd is an open /dev/net/tun.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?} failed");
}

#[test]
fn tun_udp_raw_ip() {
    tun_round(false, 0);
}

/// The tun device disappears right after the exchange: the capture still
/// delivers every packet it captured, then ends with "network is down".
#[test]
fn tun_removal_delivers_captured_packets_then_reports() {
    tun_round(true, 1);
}

fn tun_round(remove_early: bool, instance: u32) {
    let name = format!("tflow{}x{instance}", std::process::id() % 100_000);
    let tun = match create_tun(&name) {
        Ok(f) => f,
        Err(e) => return skip(&format!("cannot create a tun device ({e})")),
    };
    let net = 16 + ((std::process::id() * 2 + instance) % 200) as u8;
    let me = Ipv4Addr::new(10, 77, net, 1);
    let peer = Ipv4Addr::new(10, 77, net, 2);
    ip(&["addr", "add", &format!("{me}/24"), "dev", &name]);
    ip(&["link", "set", &name, "up"]);

    let capture = match Capture::open(&CaptureConfig::new(name.as_str())) {
        Ok(c) => c,
        Err(e @ CaptureError::PermissionDenied { .. }) => return skip(&e.to_string()),
        Err(e) => panic!("opening a capture on {name}: {e}"),
    };
    assert_eq!(capture.link_type(), LinkType::RawIp, "tun is ARPHRD_NONE");
    let (send, recv) = mpsc::channel();
    let handle = capture
        .spawn(move |p| {
            let _ = send.send((p.at, p.dir, p.link, p.data.to_vec(), p.wire_len));
        })
        .unwrap();

    const N: usize = 12;
    const PEER_PORT: u16 = 9;
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(me), 0)).unwrap();
    let local = socket.local_addr().unwrap();

    // The far side of the tun: answer every datagram to PEER_PORT with a
    // reply twice as long. The thread hands the tun back, so the device
    // lives until the end of the test.
    let mut tun_reader = tun.try_clone().unwrap();
    let mut tun_writer = tun;
    let responder = std::thread::spawn(move || -> (u64, File, File) {
        let mut buf = vec![0u8; 65536];
        let mut answered = 0;
        let mut reply_bytes = 0u64;
        while answered < N {
            let n = tun_reader.read(&mut buf).expect("reading the tun");
            let Ok(info) = parse_packet(LinkType::RawIp, &buf[..n]) else {
                continue;
            };
            if info.proto != PROTO_UDP || info.dst_port != PEER_PORT {
                continue; // e.g. IPv6 router solicitations
            }
            let payload_len = n - 28;
            let mut reply = Vec::new();
            PacketBuilder::ipv4(peer.octets(), me.octets(), 64)
                .udp(PEER_PORT, info.src_port)
                .write(&mut reply, &vec![0xab; payload_len * 2])
                .unwrap();
            tun_writer.write_all(&reply).expect("writing the tun");
            reply_bytes += reply.len() as u64;
            answered += 1;
        }
        (reply_bytes, tun_reader, tun_writer)
    });

    let mut sent_bytes = 0u64;
    for i in 0..N {
        let payload = vec![i as u8; 50 + 10 * i];
        socket
            .send_to(&payload, SocketAddr::new(IpAddr::V4(peer), PEER_PORT))
            .unwrap();
        sent_bytes += 28 + payload.len() as u64;
    }
    let (reply_bytes, tun_reader, tun_writer) = responder.join().unwrap();
    // The tun device lives as long as its files: until the capture stopped,
    // unless the test removes it early.
    let mut tun_files = Some((tun_reader, tun_writer));
    let mut buf = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..N {
        socket.recv_from(&mut buf).expect("a reply through the tun");
    }
    if remove_early {
        tun_files = None; // the device goes away
    }

    let mut table = ConnTable::default();
    let mut matched = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while matched < 2 * N {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((at, dir, link, data, wire_len)) =
            recv.recv_timeout(left.max(Duration::from_millis(1)))
        else {
            let end = if handle.is_finished() {
                format!("capture ended: {:?}", handle.stop())
            } else {
                format!("capture running: {:?}", handle.stats())
            };
            panic!(
                "only {matched} of {} packets captured on {name} ({end})",
                2 * N
            );
        };
        let Ok(info) = parse_packet_truncated(link, &data, wire_len) else {
            continue;
        };
        if info.proto != PROTO_UDP || (info.src_port != PEER_PORT && info.dst_port != PEER_PORT) {
            continue;
        }
        table.observe(at, dir, &info);
        matched += 1;
    }
    let end = handle.stop();
    if remove_early {
        match end {
            Err(CaptureError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENETDOWN), "{source}")
            }
            other => panic!("expected ENETDOWN, got {other:?}"),
        }
    } else {
        end.unwrap();
    }
    drop(tun_files);

    let flow = table
        .get(&FlowKey {
            proto: PROTO_UDP,
            local: local.ip(),
            local_port: local.port(),
            remote: IpAddr::V4(peer),
            remote_port: PEER_PORT,
        })
        .expect("the flow through the tun");
    assert_eq!(flow.totals.tx_pkts, N as u64);
    assert_eq!(flow.totals.tx_bytes, sent_bytes);
    assert_eq!(flow.totals.rx_pkts, N as u64);
    assert_eq!(flow.totals.rx_bytes, reply_bytes);
    assert_eq!(table.len(), 1);
}
