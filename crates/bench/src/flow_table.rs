//! Benchmarks of the capture path (`tally-flow`), callable from
//! `benches/flow_table.rs` and from `tally bench flows` alike:
//!
//! - [`table_throughput`]: packets per second through parse + table update on
//!   the calling thread (one core), with a given number of concurrent
//!   connections, frames prebuilt in memory.
//! - [`table_memory`]: resident memory of a table tracking N connections, and
//!   whether it stays flat under a SYN flood with random source ports.
//! - [`capture_throughput`]: packets per second a real capture on `lo`
//!   delivers while a thread floods it with UDP datagrams (needs
//!   CAP_NET_RAW).
//!
//! Resident memory is read from `/proc/self/status` (`VmRSS`).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;

use tally_flow::capture::{Capture, CaptureConfig, CaptureError, CaptureMode};
use tally_flow::parse::{LinkType, PROTO_TCP, PacketInfo, TcpFlags, parse_packet_truncated};
use tally_flow::table::{ConnTable, Direction, TableConfig};

/// Result of [`table_throughput`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Concurrent connections in the table.
    pub connections: usize,
    /// Packets pushed through.
    pub packets: u64,
    /// Wall time of all rounds of the parse + table loop.
    pub elapsed: Duration,
    /// Packets per second through parse + table update (best round).
    pub packets_per_sec: f64,
    /// Packets per second through the parser alone.
    pub parse_only_per_sec: f64,
    /// Packets per second through the table alone (pre-parsed packets).
    pub table_only_per_sec: f64,
}

/// Result of [`table_memory`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Connections tracked.
    pub entries: usize,
    /// Process RSS before the table was created (bytes).
    pub rss_before: u64,
    /// RSS with the table full (bytes).
    pub rss_full: u64,
    /// RSS after the first half of the SYN flood (bytes).
    pub rss_mid_flood: u64,
    /// RSS after a SYN flood of `flood_packets` random source ports (bytes).
    pub rss_after_flood: u64,
    /// SYNs in the flood.
    pub flood_packets: u64,
    /// Evictions the flood caused.
    pub flood_evictions: u64,
    /// (rss_full - rss_before) / entries.
    pub bytes_per_entry: f64,
    /// Size of one slab entry.
    pub slab_entry_bytes: usize,
    /// Storage the table reserved.
    pub reserved_bytes: usize,
}

/// Result of [`capture_throughput`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptureRate {
    /// Read path.
    pub mode: CaptureMode,
    /// Datagrams the flood sent.
    pub sent: u64,
    /// Packets delivered to the callback (each datagram crosses `lo` as a Tx
    /// and an Rx packet).
    pub delivered: u64,
    /// Kernel drops reported by `PACKET_STATISTICS`.
    pub kernel_drops: u64,
    /// Delivered packets per second.
    pub delivered_per_sec: f64,
    /// Reader-thread CPU seconds per wall second (from the thread's
    /// `CLOCK_THREAD_CPUTIME_ID` equivalent in `/proc/thread-self/stat`),
    /// when available.
    pub reader_cpu: Option<f64>,
}

/// Resident set size of this process in bytes (`/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A small xorshift generator (deterministic, no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Bytes of each frame kept, as the capture's default snap length does.
const SNAP: usize = 256;

/// A captured frame as the capture delivers it: the first [`SNAP`] bytes and
/// the wire length.
struct Frame {
    dir: Direction,
    data: Vec<u8>,
    wire_len: usize,
}

/// Prebuilt Ethernet frames: for each connection one Tx and one Rx TCP data
/// packet (1,400 and 100 bytes of payload, like bulk traffic), truncated to
/// the snap length.
fn frames(connections: usize) -> Vec<Frame> {
    let me = [100, 64, 0, 1];
    let mut out = Vec::with_capacity(connections * 2);
    let payload = vec![0u8; 1400];
    for i in 0..connections {
        let peer = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let port = 10_000 + (i % 50_000) as u16;
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        let built = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(me, peer, 64)
            .tcp(port, 443, 1, 65535)
            .ack(1)
            .write(&mut tx, &payload)
            .and_then(|()| {
                PacketBuilder::ethernet2([4; 6], [2; 6])
                    .ipv4(peer, me, 64)
                    .tcp(443, port, 1, 65535)
                    .ack(1)
                    .write(&mut rx, &payload[..100])
            });
        if built.is_ok() {
            for (dir, mut data) in [(Direction::Tx, tx), (Direction::Rx, rx)] {
                let wire_len = data.len();
                data.truncate(SNAP);
                out.push(Frame {
                    dir,
                    data,
                    wire_len,
                });
            }
        }
    }
    out
}

/// Packets per second of the best of `rounds` equal rounds of `packets`
/// calls to `step(i)` (the best round is the one least disturbed by other
/// load on the machine).
fn best_rate(packets: u64, rounds: u32, mut step: impl FnMut(u64)) -> (f64, Duration) {
    let per_round = (packets / u64::from(rounds.max(1))).max(1);
    let mut best = f64::MAX;
    let mut total = Duration::ZERO;
    let mut i = 0u64;
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        for _ in 0..per_round {
            step(i);
            i += 1;
        }
        let d = start.elapsed();
        total += d;
        best = best.min(d.as_secs_f64() / per_round as f64);
    }
    (1.0 / best.max(1e-12), total)
}

/// Measures parse + table update on this thread: `connections` concurrent
/// connections, `packets` packets in a random order over them, frames
/// truncated to 256 bytes as the capture delivers them. Rates are the best
/// of 5 rounds.
pub fn table_throughput(connections: usize, packets: u64) -> Throughput {
    const ROUNDS: u32 = 5;
    let frames = frames(connections.max(1));
    let mut table = ConnTable::new(TableConfig::default());
    // Warm up: every connection opened and answered.
    for f in &frames {
        let _ = table.observe_frame(0, f.dir, LinkType::Ethernet, &f.data, f.wire_len);
    }
    // A random visiting order, so successive packets hit different entries.
    const ORDER: usize = 1 << 20;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let order: Vec<u32> = (0..ORDER)
        .map(|_| (rng.next() % frames.len() as u64) as u32)
        .collect();
    let pick = |i: u64| &frames[order[(i as usize) & (ORDER - 1)] as usize];

    let mut now = 1_700_000_000_000_000_000u64;
    let (packets_per_sec, elapsed) = best_rate(packets, ROUNDS, |i| {
        let f = pick(i);
        now += 100;
        match parse_packet_truncated(LinkType::Ethernet, &f.data, f.wire_len) {
            Ok(info) => {
                let _ = table.observe(now, f.dir, &info);
            }
            Err(_) => table.note_malformed(),
        }
        if i.is_multiple_of(5_000_000) {
            let _ = table.take_interval(0, now);
        }
    });

    let mut sum = 0u64;
    let (parse_only_per_sec, _) = best_rate(packets, ROUNDS, |i| {
        let f = pick(i);
        if let Ok(info) = parse_packet_truncated(LinkType::Ethernet, &f.data, f.wire_len) {
            sum = sum.wrapping_add(u64::from(info.ip_len));
        }
    });
    std::hint::black_box(sum);

    let parsed: Vec<(Direction, PacketInfo)> = frames
        .iter()
        .filter_map(|f| {
            parse_packet_truncated(LinkType::Ethernet, &f.data, f.wire_len)
                .ok()
                .map(|p| (f.dir, p))
        })
        .collect();
    let (table_only_per_sec, _) = best_rate(packets, ROUNDS, |i| {
        let (dir, p) = &parsed[order[(i as usize) & (ORDER - 1)] as usize % parsed.len()];
        now += 100;
        let _ = table.observe(now, *dir, p);
    });

    Throughput {
        connections,
        packets,
        elapsed,
        packets_per_sec,
        parse_only_per_sec,
        table_only_per_sec,
    }
}

/// Fills a default table (100,000 entries) with `entries` connections and
/// measures RSS, then floods it with `flood` SYNs from random source ports.
pub fn table_memory(entries: usize, flood: u64) -> Memory {
    let rss_before = rss_bytes().unwrap_or(0);
    let mut table = ConnTable::new(TableConfig {
        max_entries: entries,
        ..TableConfig::default()
    });
    let me = "100.64.0.1"
        .parse()
        .unwrap_or(std::net::IpAddr::from([100, 64, 0, 1]));
    let mut now = 1_700_000_000_000_000_000u64;
    for i in 0..entries {
        let p = PacketInfo {
            proto: PROTO_TCP,
            src: me,
            src_port: (i % 60_000) as u16 + 1024,
            dst: std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            dst_port: 443,
            ip_len: 60,
            tcp_flags: TcpFlags(TcpFlags::SYN),
        };
        now += 1;
        let _ = table.observe(now, Direction::Tx, &p);
    }
    let _ = table.take_interval(0, now);
    let rss_full = rss_bytes().unwrap_or(0);
    let evictions_before = table.stats().evictions;
    let mut rng = Rng(42);
    let mut rss_mid_flood = 0;
    for i in 0..flood {
        if i == flood / 2 {
            rss_mid_flood = rss_bytes().unwrap_or(0);
        }
        let r = rng.next();
        let p = PacketInfo {
            proto: PROTO_TCP,
            src: std::net::IpAddr::from(((r >> 32) as u32).to_be_bytes()),
            src_port: r as u16,
            dst: me,
            dst_port: 80,
            ip_len: 60,
            tcp_flags: TcpFlags(TcpFlags::SYN),
        };
        now += 1;
        let _ = table.observe(now, Direction::Rx, &p);
        if i.is_multiple_of(1_000_000) {
            let _ = table.take_interval(0, now);
            let _ = table.expire(now);
        }
    }
    let rss_after_flood = rss_bytes().unwrap_or(0);
    let flood_evictions = table.stats().evictions - evictions_before;
    let memory = Memory {
        entries,
        rss_before,
        rss_full,
        rss_mid_flood,
        rss_after_flood,
        flood_packets: flood,
        flood_evictions,
        bytes_per_entry: rss_full.saturating_sub(rss_before) as f64 / entries.max(1) as f64,
        slab_entry_bytes: ConnTable::entry_size(),
        reserved_bytes: table.reserved_bytes(),
    };
    drop(table);
    memory
}

/// CPU time of the calling thread in seconds (`/proc/thread-self/stat`
/// utime + stime, in clock ticks of 1/100 s).
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is index 0, utime 11, stime 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Floods `lo` with UDP datagrams of `payload` bytes for `duration` while a
/// capture in `mode` counts them. Needs CAP_NET_RAW.
pub fn capture_throughput(
    mode: CaptureMode,
    duration: Duration,
    payload: usize,
) -> Result<CaptureRate, CaptureError> {
    let mut config = CaptureConfig::new("lo");
    config.mode = mode;
    let capture = Capture::open(&config)?;
    let io = |e: std::io::Error| CaptureError::Io {
        op: "benchmark socket",
        iface: "lo".into(),
        source: e,
    };
    let receiver = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
    let sender = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
    let target = receiver.local_addr().map_err(io)?;
    let delivered = Arc::new(AtomicU64::new(0));
    let cpu = Arc::new(AtomicU64::new(u64::MAX));
    let counter = Arc::clone(&delivered);
    let cpu_out = Arc::clone(&cpu);
    let mut table = ConnTable::default();
    let mut start_cpu: Option<f64> = None;
    let handle = capture.spawn(move |p| {
        if start_cpu.is_none() {
            start_cpu = thread_cpu_secs();
        }
        let _ = table.observe_frame(p.at, p.dir, p.link, p.data, p.wire_len);
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(4096)
            && let (Some(s), Some(now)) = (start_cpu, thread_cpu_secs())
        {
            cpu_out.store(((now - s) * 1e6) as u64, Ordering::Relaxed);
        }
    })?;
    // Drain the receiver so its socket buffer never limits the sender.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_drain = Arc::clone(&stop);
    let _ = receiver.set_read_timeout(Some(Duration::from_millis(50)));
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop_drain.load(Ordering::Relaxed) {
            let _ = receiver.recv(&mut buf);
        }
    });
    let data = vec![0u8; payload];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..256 {
            if sender.send_to(&data, target).is_ok() {
                sent += 1;
            }
        }
    }
    let wall = start.elapsed();
    // Let the reader catch up with what is queued, bounded in time.
    let settle = Instant::now();
    let mut last = delivered.load(Ordering::Relaxed);
    while settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        let now = delivered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let stats = handle.stop()?;
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    let cpu_micros = cpu.load(Ordering::Relaxed);
    Ok(CaptureRate {
        mode,
        sent,
        delivered: stats.delivered,
        kernel_drops: stats.kernel_drops,
        delivered_per_sec: stats.delivered as f64 / wall.as_secs_f64(),
        reader_cpu: (cpu_micros != u64::MAX).then(|| cpu_micros as f64 / 1e6 / wall.as_secs_f64()),
    })
}
