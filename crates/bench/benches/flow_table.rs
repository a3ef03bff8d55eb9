//! Capture-path benchmark: `cargo bench -p tally-bench --bench flow_table`.
//!
//! Prints packets/s through parse + table update with 10,000 concurrent
//! connections on one core, RSS per tracked connection with 100,000
//! connections (and after a SYN flood), and, with CAP_NET_RAW, the rate a
//! real capture on `lo` delivers in each read mode.
//!
//! `FLOW_BENCH_PACKETS` (default 20,000,000) and `FLOW_BENCH_CAPTURE_SECS`
//! (default 3; 0 skips the capture runs) adjust the run.

use std::time::Duration;

use tally_bench::flow_table::{capture_throughput, table_memory, table_throughput};
use tally_flow::capture::{CaptureError, CaptureMode};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    // Memory first, in a fresh process, so freed buffers of the other runs
    // do not hide in the RSS baseline.
    let m = table_memory(100_000, 4_000_000);
    println!(
        "memory, {} connections: RSS {:.1} MiB before, {:.1} MiB full ({:.0} bytes/connection; \
         slab entry {} B, reserved {:.1} MiB); SYN flood with random source ports: RSS {:.1} MiB \
         after {} SYNs, {:.1} MiB after {} ({} evictions)",
        m.entries,
        mib(m.rss_before),
        mib(m.rss_full),
        m.bytes_per_entry,
        m.slab_entry_bytes,
        mib(m.reserved_bytes as u64),
        mib(m.rss_mid_flood),
        m.flood_packets / 2,
        mib(m.rss_after_flood),
        m.flood_packets,
        m.flood_evictions,
    );

    let packets = env_u64("FLOW_BENCH_PACKETS", 20_000_000);
    let t = table_throughput(10_000, packets);
    println!(
        "table path, {} connections, {} packets: {:.2} M packets/s (parse + table), \
         {:.1} ns/packet; parse alone {:.2} M/s; table alone {:.2} M/s",
        t.connections,
        t.packets,
        t.packets_per_sec / 1e6,
        1e9 / t.packets_per_sec,
        t.parse_only_per_sec / 1e6,
        t.table_only_per_sec / 1e6,
    );

    let secs = env_u64("FLOW_BENCH_CAPTURE_SECS", 3);
    if secs == 0 {
        return;
    }
    for mode in [CaptureMode::Ring, CaptureMode::Recv] {
        match capture_throughput(mode, Duration::from_secs(secs), 64) {
            Ok(r) => println!(
                "capture on lo, {:?}: {} datagrams sent, {} packets delivered ({:.0} k/s), \
                 {} kernel drops, reader CPU {}",
                r.mode,
                r.sent,
                r.delivered,
                r.delivered_per_sec / 1e3,
                r.kernel_drops,
                r.reader_cpu
                    .map(|c| format!("{:.0}%", c * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
            ),
            Err(e @ CaptureError::PermissionDenied { .. }) => {
                println!("capture benchmark skipped: {e}");
                return;
            }
            Err(e) => println!("capture benchmark ({mode:?}) failed: {e}"),
        }
    }
}
