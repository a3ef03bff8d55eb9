//! `tally bench flows`: network flow logs end to end, in five parts (each
//! can be skipped with `--skip-PART`, or chosen with `--only PART,...`):
//!
//! 1. **table** (in process): packets per second through parse + table
//!    update on one core with 10,000 connections, RSS per connection with
//!    100,000, flatness under a SYN flood (`tally_flow::bench`), and a real
//!    `AF_PACKET` capture of `lo`.
//! 2. **veth**: a veth pair between this namespace and a new one, a real
//!    server in this process, the real agent binary (`tally agent --flows`)
//!    capturing the root end, and ~10 s of UDP (10,000 source ports, small
//!    and large datagrams) plus one TCP stream at full speed. Reports the
//!    veth's packets/s and bits/s, the agent's CPU and RSS, kernel drops,
//!    whether the agent's records account for the interface counters, and
//!    the agent's RSS with a full table of 100,000 connections.
//! 3. **ingest**: fake registered nodes POST Tailscale-shaped flow records
//!    to `/c/tailtraffic/<private-id>`; records/s and entries/s
//!    acknowledged, the time until the network API has indexed them, and a
//!    check through the graph API that every acknowledged packet is there.
//! 4. **store**: `tally_bench::flowstore::run` (1,000 nodes x 24 h):
//!    bytes on disk per entry and node-pair query latency.
//! 5. **peer**: `softflowd` exporting NetFlow v9 to `nfcapd`, read with
//!    `nfdump`, on the same veth traffic: (A) alone at full speed (CPU,
//!    drops), (B) alongside the agent at full speed, (C) alongside the
//!    agent paced below both captures' limits, where every flow's packets
//!    and bytes must agree; query time for one pair and one flow on C's
//!    data (nfdump filter vs the network API).
//!
//! Layout: arguments; [`run`]; part 1; the veth lab and traffic; the
//! server, agent and peer processes; parts 2 and 5; part 3; part 4;
//! formatting.

use crate::common::{
    Machine, MachineCpu, clock_ticks_per_sec, fmt_bytes, fmt_count, http_client, percentile,
    proc_cpu_ticks, proc_status_bytes, thread_cpu_ticks,
};

use anyhow::{Context, anyhow, bail, ensure};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tally_bench::flowstore::dir_bytes;
use tally_proto::timefmt::{format_nanos, now_nanos};

/// Goal: packets per second through parse + table update on one core.
const GOAL_PPS: f64 = 2_000_000.0;
/// Goal: agent RSS with 100,000 tracked connections.
const GOAL_RSS: u64 = 64 << 20;
/// Goal: a node-pair query over 24 h of a 1,000-node tailnet (ms).
const GOAL_PAIR_MS: f64 = 200.0;
/// Goal: bytes on disk per flow entry.
const GOAL_BYTES_PER_ENTRY: f64 = 12.0;

/// UDP destination port of the blast (more ports for the memory sweep).
const UDP_DST_PORT: u16 = 9000;
/// First UDP source port of the blast (one socket per flow).
const UDP_SRC_BASE: u16 = 20000;
/// TCP port of the stream's receiver.
const TCP_PORT: u16 = 5201;
/// Source port of the datagrams that push softflowd's last capture block
/// out (see [`flush_softflowd`]); excluded from every comparison.
const FLUSH_PORT: u16 = 19999;
/// UDP payloads of the blast: small and large datagrams alternate.
const SMALL: usize = 32;
const LARGE: usize = 1400;
/// IPv4 + UDP header bytes.
const UDP_OVERHEAD: u64 = 28;
/// Ethernet header bytes, which the interface counters include and flow
/// records do not.
const ETH_HEADER: u64 = 14;

/// Parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Parse + table path in process.
    Table,
    /// The agent on a real veth.
    Veth,
    /// Server ingest of flow records.
    Ingest,
    /// The flow store at 1,000 nodes x 24 h.
    Store,
    /// softflowd + nfdump on the same veth traffic.
    Peer,
}

/// Settings of `tally bench flows`.
#[derive(Debug, Clone, clap::Args)]
pub struct FlowsArgs {
    /// Run only these parts (comma-separated: table, veth, ingest, store,
    /// peer); default all.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Part>,
    /// Skip part 1 (parse + table path in process).
    #[arg(long)]
    pub skip_table: bool,
    /// Skip part 2 (the agent on a veth).
    #[arg(long)]
    pub skip_veth: bool,
    /// Skip part 3 (server ingest).
    #[arg(long)]
    pub skip_ingest: bool,
    /// Skip part 4 (the flow store at scale; takes a minute or two).
    #[arg(long)]
    pub skip_store: bool,
    /// Skip part 5 (softflowd + nfdump).
    #[arg(long)]
    pub skip_peer: bool,

    /// Part 1: concurrent connections of the throughput run.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Part 1: packets through parse + table (5 rounds; the best counts).
    #[arg(long, default_value_t = 20_000_000)]
    pub packets: u64,
    /// Part 1: connections of the memory run.
    #[arg(long, default_value_t = 100_000)]
    pub memory_connections: usize,
    /// Part 1: SYNs with random source ports after the table is full.
    #[arg(long, default_value_t = 5_000_000)]
    pub flood: u64,
    /// Part 1: seconds of the `lo` capture run (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    pub lo_seconds: f64,

    /// Parts 2 and 5: seconds of traffic per run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Parts 2 and 5: UDP flows (source ports) of the blast.
    #[arg(long, default_value_t = 10_000)]
    pub udp_flows: usize,
    /// Parts 2 and 5: UDP sender threads.
    #[arg(long, default_value_t = 1)]
    pub udp_threads: usize,
    /// Parts 2 and 5: no TCP stream.
    #[arg(long)]
    pub no_tcp: bool,
    /// Parts 2 and 5: leave TSO/GSO/GRO on (by default they are turned off
    /// with ethtool, so captured TCP packets are wire packets).
    #[arg(long)]
    pub keep_offloads: bool,
    /// Part 5: UDP datagrams per second of the paced run (run C), where
    /// neither capture should drop and the counts must agree.
    #[arg(long, default_value_t = 100_000)]
    pub paced_udp_pps: u64,
    /// Part 5: TCP Mbit/s of the paced run (0: no TCP stream in it).
    #[arg(long, default_value_t = 400)]
    pub paced_tcp_mbit: u64,
    /// Part 2: connections in the agent's table for the memory reading
    /// (UDP tuples swept after the blast; the table holds 100,000 by
    /// default, so more evict).
    #[arg(long, default_value_t = 100_000)]
    pub agent_connections: usize,
    /// Parts 2 and 5: an environment variable for the agent process,
    /// `NAME=VALUE` (repeatable; e.g. `MALLOC_ARENA_MAX=1` to see how much
    /// of its RSS is allocator arenas).
    #[arg(long = "agent-env", value_name = "NAME=VALUE")]
    pub agent_env: Vec<String>,
    /// Parts 2 and 5: the agent's --flow-interval in seconds.
    #[arg(long, default_value_t = 5)]
    pub flow_interval: u64,

    /// Part 3: registered nodes sending flow records.
    #[arg(long, default_value_t = 1000)]
    pub ingest_nodes: usize,
    /// Part 3: flow records to send in all.
    #[arg(long, default_value_t = 100_000)]
    pub ingest_records: usize,
    /// Part 3: concurrent clients (each a keep-alive connection).
    #[arg(long, default_value_t = 32)]
    pub ingest_clients: usize,
    /// Part 3: records per request (an agent sends one per interval; more
    /// after an outage); requests stay under 256 KiB of JSON, as the
    /// agent's uploader keeps them.
    #[arg(long, default_value_t = 1)]
    pub records_per_request: usize,

    /// Part 4: nodes of the generated tailnet.
    #[arg(long, default_value_t = 1000)]
    pub store_nodes: usize,
    /// Part 4: hours of records.
    #[arg(long, default_value_t = 24)]
    pub store_hours: u32,

    /// Seed of the generated records (part 3).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parent directory of the temporary data (default: the system
    /// temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the temporary data and print where it is.
    #[arg(long)]
    pub keep: bool,
}

impl FlowsArgs {
    fn wants(&self, p: Part) -> bool {
        let skipped = match p {
            Part::Table => self.skip_table,
            Part::Veth => self.skip_veth,
            Part::Ingest => self.skip_ingest,
            Part::Store => self.skip_store,
            Part::Peer => self.skip_peer,
        };
        (self.only.is_empty() || self.only.contains(&p)) && !skipped
    }
}

/// One goal of the issue and how it went.
struct Goal {
    what: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

/// Runs `tally bench flows`.
pub async fn run(a: FlowsArgs) -> anyhow::Result<()> {
    ensure!(a.seconds > 0.0, "--seconds must be positive");
    ensure!(
        (1..=12_000).contains(&a.udp_flows),
        "--udp-flows must be 1 to 12,000 (source ports {UDP_SRC_BASE} and up stay below the ephemeral range)"
    );
    ensure!(a.udp_threads >= 1, "--udp-threads must be at least 1");
    ensure!(a.flow_interval >= 1, "--flow-interval must be at least 1");
    ensure!(
        a.agent_env.iter().all(|kv| kv.contains('=')),
        "--agent-env takes NAME=VALUE"
    );
    ensure!(
        a.ingest_nodes >= 10 && a.ingest_nodes <= 60_000,
        "--ingest-nodes must be 10 to 60,000"
    );
    ensure!(
        a.ingest_clients >= 1 && a.records_per_request >= 1,
        "--ingest-clients and --records-per-request must be at least 1"
    );
    crate::common::install_crypto();
    raise_fd_limit();
    let machine = Machine::detect();
    println!("{}", machine.render());
    println!("code: {}", git_state());
    println!("load average at start: {}", loadavg());
    let mut b = tempfile::Builder::new();
    b.prefix("tally-bench-flows-");
    let work = match &a.work_dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .context("cannot create a temporary directory (see --work-dir)")?;
    let mut goals = Vec::new();
    let mut failed = Vec::new();

    if a.wants(Part::Table) {
        match part_table(&a).await {
            Ok(r) => println!("{}", r.render(&a, &mut goals)),
            Err(e) => failed.push(("table", e)),
        }
    }
    if a.wants(Part::Veth) || a.wants(Part::Peer) {
        match Lab::create(a.keep_offloads) {
            Ok(lab) => {
                println!(
                    "\nveth lab: {} ({}) <-> {} eth0 ({}) in namespace {}; {}",
                    lab.host_if, lab.host_ip, lab.ns, lab.ns_ip, lab.ns, lab.offloads
                );
                let mut agent_alone = None;
                if a.wants(Part::Veth) {
                    match part_veth(&a, &lab, work.path()).await {
                        Ok(r) => {
                            println!("{}", r.render(&a, &lab, &mut goals));
                            agent_alone = Some(r);
                        }
                        Err(e) => failed.push(("veth", e)),
                    }
                }
                if a.wants(Part::Peer) {
                    match have_peer_tools() {
                        Err(why) => println!("\n== 5. softflowd + nfdump ==\n\nskipped: {why}"),
                        Ok(()) => match part_peer(&a, &lab, work.path()).await {
                            Ok(r) => {
                                println!("{}", r.render(&a, &lab, agent_alone.as_ref(), &mut goals))
                            }
                            Err(e) => failed.push(("peer", e)),
                        },
                    }
                }
            }
            Err(e) => {
                println!("\nparts 2 and 5 skipped: cannot build the veth lab: {e:#}");
                failed.push(("veth lab", e));
            }
        }
    }
    if a.wants(Part::Ingest) {
        match part_ingest(&a, work.path()).await {
            Ok(r) => println!("{}", r.render(&a)),
            Err(e) => failed.push(("ingest", e)),
        }
    }
    if a.wants(Part::Store) {
        match part_store(&a, work.path()).await {
            Ok(r) => println!("{}", render_store(&r, &mut goals)),
            Err(e) => failed.push(("store", e)),
        }
    }

    println!("\n== Goals ==\n");
    let mut t = Table::new(&["goal", "target", "measured", "met"]);
    for g in &goals {
        t.row(vec![
            g.what.clone(),
            g.goal.clone(),
            g.measured.clone(),
            match g.met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
        ]);
    }
    println!("{}", t.render());
    println!("load average at the end: {}", loadavg());
    if a.keep {
        eprintln!("kept {}", work.keep().display());
    }
    if let Some((part, e)) = failed.into_iter().next() {
        return Err(e.context(format!("part {part} failed")));
    }
    Ok(())
}

/// The commit of the current directory's repository, and whether tracked
/// files differ from it (best effort).
pub(crate) fn git_state() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!(
                "commit {c} (of the current directory){}",
                if dirty {
                    " with uncommitted changes to tracked files"
                } else {
                    ""
                }
            )
        }
        None => "unknown (not run from a git checkout)".into(),
    }
}

/// `/proc/loadavg`'s three averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Raises the open-file limit to its hard limit (10,000 UDP sockets).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

// ---------------------------------------------------------------------------
// Part 1: parse + table in process
// ---------------------------------------------------------------------------

struct TableResult {
    t: tally_bench::flow_table::Throughput,
    m: tally_bench::flow_table::Memory,
    lo: Option<Result<tally_bench::flow_table::CaptureRate, String>>,
}

async fn part_table(a: &FlowsArgs) -> anyhow::Result<TableResult> {
    let (conns, packets, mem, flood, lo) = (
        a.connections,
        a.packets,
        a.memory_connections,
        a.flood,
        a.lo_seconds,
    );
    println!(
        "\n== 1. Table path (in process; load average {}) ==",
        loadavg()
    );
    tokio::task::spawn_blocking(move || {
        // Memory first: freed memory of an earlier run would be reused and
        // hide the table's growth.
        eprintln!("table memory: {mem} connections, then a SYN flood of {flood} ...");
        let m = tally_bench::flow_table::table_memory(mem, flood);
        eprintln!("table path: {conns} connections, {packets} packets in 5 rounds ...");
        let t = tally_bench::flow_table::table_throughput(conns, packets);
        let lo = (lo > 0.0).then(|| {
            eprintln!("capture on lo for {lo} s ...");
            tally_bench::flow_table::capture_throughput(
                tally_flow::CaptureMode::Ring,
                Duration::from_secs_f64(lo),
                64,
            )
            .map_err(|e| e.to_string())
        });
        TableResult { t, m, lo }
    })
    .await
    .context("the table benchmark panicked")
}

impl TableResult {
    fn render(&self, a: &FlowsArgs, goals: &mut Vec<Goal>) -> String {
        let (t, m) = (&self.t, &self.m);
        let mut out = String::new();
        let mut tb = Table::new(&["measure", "result"]);
        tb.row(vec![
            format!(
                "parse + table update, {} connections, Ethernet frames cut to 256 B, random order (best of 5 rounds, one core)",
                fmt_count(t.connections as f64)
            ),
            format!("**{}** packets/s", fmt_count(t.packets_per_sec)),
        ]);
        tb.row(vec![
            "parse only".into(),
            format!("{} packets/s", fmt_count(t.parse_only_per_sec)),
        ]);
        tb.row(vec![
            "table only (pre-parsed)".into(),
            format!("{} packets/s", fmt_count(t.table_only_per_sec)),
        ]);
        tb.row(vec![
            format!(
                "table of {} connections: RSS growth",
                fmt_count(m.entries as f64)
            ),
            format!(
                "{} ({:.0} bytes/connection; slab entry {} B, reserved {})",
                fmt_bytes(m.rss_full.saturating_sub(m.rss_before)),
                m.bytes_per_entry,
                m.slab_entry_bytes,
                fmt_bytes(m.reserved_bytes as u64)
            ),
        ]);
        tb.row(vec![
            format!(
                "SYN flood, {} random source ports: RSS full / mid-flood / after",
                fmt_count(m.flood_packets as f64)
            ),
            format!(
                "{} / {} / {} ({} evictions)",
                fmt_bytes(m.rss_full),
                fmt_bytes(m.rss_mid_flood),
                fmt_bytes(m.rss_after_flood),
                fmt_count(m.flood_evictions as f64)
            ),
        ]);
        match &self.lo {
            Some(Ok(c)) => tb.row(vec![
                format!(
                    "real capture of lo ({:?}, 64-byte UDP flood, {} s)",
                    c.mode, a.lo_seconds
                ),
                format!(
                    "{} packets/s delivered, {} kernel drops of {}, reader thread {}",
                    fmt_count(c.delivered_per_sec),
                    fmt_count(c.kernel_drops as f64),
                    fmt_count((c.delivered + c.kernel_drops) as f64),
                    c.reader_cpu
                        .map_or_else(|| "n/a".into(), |x| format!("{:.0}% of a core", x * 100.0))
                ),
            ]),
            Some(Err(e)) => tb.row(vec!["real capture of lo".into(), format!("failed: {e}")]),
            None => {}
        }
        let _ = writeln!(out, "{}", tb.render());
        // Flat: no growth over the second half of the flood (the first
        // interval taken during the flood may add its own buffers).
        let flat = m.rss_after_flood <= m.rss_mid_flood + (m.rss_mid_flood / 50);
        let _ = writeln!(
            out,
            "SYN flood: {} over its second half ({} at mid-flood, {} after); {} over the full table's {} in its first half.",
            if flat { "flat" } else { "NOT flat" },
            fmt_bytes(m.rss_mid_flood),
            fmt_bytes(m.rss_after_flood),
            if m.rss_mid_flood > m.rss_full {
                format!("+{}", fmt_bytes(m.rss_mid_flood - m.rss_full))
            } else {
                "no growth".to_owned()
            },
            fmt_bytes(m.rss_full)
        );
        goals.push(Goal {
            what: format!(
                "parse + table, one core, {} connections",
                fmt_count(t.connections as f64)
            ),
            goal: "≥ 2,000,000 packets/s".into(),
            measured: format!("{} packets/s", fmt_count(t.packets_per_sec)),
            met: Some(t.packets_per_sec >= GOAL_PPS),
        });
        goals.push(Goal {
            what: format!(
                "table memory, {} connections (in process)",
                fmt_count(m.entries as f64)
            ),
            goal: "< 64 MiB (agent RSS)".into(),
            measured: format!(
                "{} table ({:.0} B/connection); flood {} (peak {})",
                fmt_bytes(m.rss_full.saturating_sub(m.rss_before)),
                m.bytes_per_entry,
                if flat { "flat" } else { "not flat" },
                fmt_bytes(m.rss_after_flood.max(m.rss_mid_flood))
            ),
            met: None,
        });
        out
    }
}

// ---------------------------------------------------------------------------
// The veth lab
// ---------------------------------------------------------------------------

/// Runs a program; its stderr in the error.
fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// A veth pair: `host_if` in this namespace, `eth0` in namespace `ns`;
/// static neighbours and IPv6 off, so only the benchmark's packets cross
/// it. Removed on drop.
struct Lab {
    ns: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    offloads: String,
}

impl Lab {
    fn create(keep_offloads: bool) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        ensure!(
            root,
            "network namespaces and packet capture need root (run the benchmark as root)"
        );
        ensure!(have("ip"), "iproute2's ip is not installed");
        let id = std::process::id() % 100_000;
        let third = 20 + (id % 200) as u8;
        let mut lab = Lab {
            ns: format!("tfb{id}"),
            host_if: format!("tfb{id}h"),
            host_ip: Ipv4Addr::new(10, 215, third, 1),
            ns_ip: Ipv4Addr::new(10, 215, third, 2),
            offloads: String::new(),
        };
        // On error, dropping `lab` removes what was built.
        lab.build(keep_offloads, third)?;
        Ok(lab)
    }

    fn build(&mut self, keep_offloads: bool, third: u8) -> anyhow::Result<()> {
        let mac = |end: u8| format!("02:00:0a:d7:{third:02x}:{end:02x}");
        let (host_mac, ns_mac) = (mac(1), mac(2));
        run_cmd("ip", &["netns", "add", &self.ns])?;
        run_cmd(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "address",
                &host_mac,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &ns_mac,
                "netns",
                &self.ns,
            ],
        )?;
        // No IPv6 (router solicitations, MLD) and no ARP on the pair.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.host_if),
            "1",
        );
        let _ = run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.eth0.disable_ipv6=1",
            ],
        );
        let host = format!("{}/24", self.host_ip);
        let peer = format!("{}/24", self.ns_ip);
        run_cmd("ip", &["addr", "add", &host, "dev", &self.host_if])?;
        run_cmd("ip", &["link", "set", &self.host_if, "up"])?;
        run_cmd("ip", &["-n", &self.ns, "addr", "add", &peer, "dev", "eth0"])?;
        run_cmd("ip", &["-n", &self.ns, "link", "set", "eth0", "up"])?;
        run_cmd("ip", &["-n", &self.ns, "link", "set", "lo", "up"])?;
        run_cmd(
            "ip",
            &[
                "neigh",
                "replace",
                &self.ns_ip.to_string(),
                "lladdr",
                &ns_mac,
                "dev",
                &self.host_if,
                "nud",
                "permanent",
            ],
        )?;
        run_cmd(
            "ip",
            &[
                "-n",
                &self.ns,
                "neigh",
                "replace",
                &self.host_ip.to_string(),
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        self.offloads = if keep_offloads {
            "offloads left at the kernel's defaults (--keep-offloads): a captured TCP packet may be several wire packets".into()
        } else if have("ethtool") {
            let off = ["tso", "off", "gso", "off", "gro", "off"];
            let mut host = vec!["-K", self.host_if.as_str()];
            host.extend(off);
            run_cmd("ethtool", &host)?;
            let mut ns = vec!["netns", "exec", self.ns.as_str(), "ethtool", "-K", "eth0"];
            ns.extend(off);
            run_cmd("ip", &ns)?;
            "TSO, GSO and GRO off on both ends (ethtool -K), so every captured packet is one wire packet".into()
        } else {
            "ethtool not found: offloads at the kernel's defaults; only UDP packet counts compare with what was sent".into()
        };
        Ok(())
    }

    fn addrs(&self) -> Addrs {
        Addrs {
            ns: self.ns.clone(),
            host_if: self.host_if.clone(),
            host_ip: self.host_ip,
            ns_ip: self.ns_ip,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the namespace deletes eth0 and with it the pair.
        let _ = run_cmd("ip", &["netns", "del", &self.ns]);
        let _ = run_cmd("ip", &["link", "del", &self.host_if]);
    }
}

/// Interface counters (`/sys/class/net/IF/statistics`). Bytes include
/// the Ethernet header.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    tx_packets: u64,
    tx_bytes: u64,
    tx_dropped: u64,
    rx_packets: u64,
    rx_bytes: u64,
    rx_dropped: u64,
}

impl Counters {
    fn read(iface: &str) -> anyhow::Result<Self> {
        let get = |name: &str| -> anyhow::Result<u64> {
            let p = format!("/sys/class/net/{iface}/statistics/{name}");
            std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {p}"))?
                .trim()
                .parse()
                .with_context(|| format!("{p} is not a number"))
        };
        Ok(Self {
            tx_packets: get("tx_packets")?,
            tx_bytes: get("tx_bytes")?,
            tx_dropped: get("tx_dropped")?,
            rx_packets: get("rx_packets")?,
            rx_bytes: get("rx_bytes")?,
            rx_dropped: get("rx_dropped")?,
        })
    }

    fn since(&self, b: &Counters) -> Counters {
        Counters {
            tx_packets: self.tx_packets.saturating_sub(b.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(b.tx_bytes),
            tx_dropped: self.tx_dropped.saturating_sub(b.tx_dropped),
            rx_packets: self.rx_packets.saturating_sub(b.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(b.rx_bytes),
            rx_dropped: self.rx_dropped.saturating_sub(b.rx_dropped),
        }
    }

    /// Packets a capture of the root end sees: everything sent (also what
    /// the veth then dropped: taps see a packet before the driver) and
    /// received.
    fn captured_packets(&self) -> u64 {
        self.tx_packets + self.tx_dropped + self.rx_packets
    }

    /// IP bytes of the counted packets (Ethernet headers removed).
    fn ip_bytes(&self) -> u64 {
        (self.tx_bytes + self.rx_bytes)
            .saturating_sub(ETH_HEADER * (self.tx_packets + self.rx_packets))
    }
}

/// Starts a thread inside network namespace `ns` (its sockets live there).
fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: setns on a namespace file we hold open; it moves only
            // this thread into the namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .context("cannot start a thread")
}

fn join<T>(h: std::thread::JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow!("the {what} thread panicked"))?
}

// ---------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------

/// What to send over the veth.
#[derive(Debug, Clone)]
struct Traffic {
    /// UDP source ports (one socket each).
    udp_flows: usize,
    /// UDP destination ports each socket sends to.
    dst_ports: u16,
    /// Sender threads for UDP.
    udp_threads: usize,
    /// One pass over every (socket, port) instead of `seconds` of load.
    one_pass: bool,
    /// Seconds of load.
    seconds: f64,
    /// One TCP stream (at full speed unless `tcp_rate`).
    tcp: bool,
    /// UDP datagrams per second over all sender threads (None: as fast as
    /// they go).
    udp_rate: Option<u64>,
    /// TCP bytes per second (None: as fast as it goes).
    tcp_rate: Option<u64>,
}

/// What was sent.
#[derive(Debug, Clone, Default)]
struct Sent {
    udp_datagrams: u64,
    udp_ip_bytes: u64,
    udp_errors: u64,
    udp_received: u64,
    tcp_bytes: u64,
    tcp_received: u64,
    tcp_local_port: Option<u16>,
    elapsed: Duration,
}

/// Receivers started and sockets bound; nothing sent yet.
struct Prepared {
    t: Traffic,
    lab_dst: Ipv4Addr,
    socks: Vec<UdpSocket>,
    stop: Arc<AtomicBool>,
    udp_rx: std::thread::JoinHandle<anyhow::Result<u64>>,
    tcp_rx: Option<std::thread::JoinHandle<anyhow::Result<u64>>>,
}

impl Prepared {
    fn new(lab: &Addrs, t: &Traffic) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let (ns_ip, ports) = (lab.ns_ip, t.dst_ports);
        let (s, r) = (Arc::clone(&stop), ready_tx.clone());
        let udp_rx = spawn_in_ns(&lab.ns, "bench-udp-rx", move || {
            let mut socks = Vec::new();
            for k in 0..ports {
                let sock = UdpSocket::bind((ns_ip, UDP_DST_PORT + k))
                    .with_context(|| format!("cannot bind UDP {ns_ip}:{}", UDP_DST_PORT + k))?;
                sock.set_nonblocking(true)
                    .context("cannot make a UDP socket non-blocking")?;
                socks.push(sock);
            }
            let _ = r.send(());
            let mut buf = vec![0u8; 65536];
            let mut got = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut any = false;
                for sock in &socks {
                    for _ in 0..256 {
                        if sock.recv(&mut buf).is_err() {
                            break;
                        }
                        got += 1;
                        any = true;
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Ok(got)
        })?;
        let mut expect = 1;
        let tcp_rx = if t.tcp {
            expect += 1;
            let s = Arc::clone(&stop);
            Some(spawn_in_ns(&lab.ns, "bench-tcp-rx", move || {
                let l = TcpListener::bind((ns_ip, TCP_PORT))
                    .with_context(|| format!("cannot listen on {ns_ip}:{TCP_PORT}"))?;
                l.set_nonblocking(true)
                    .context("cannot make the listener non-blocking")?;
                let _ = ready_tx.send(());
                let mut conn = loop {
                    match l.accept() {
                        Ok((c, _)) => break c,
                        Err(_) if s.load(Ordering::Relaxed) => return Ok(0),
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                };
                conn.set_nonblocking(false)
                    .context("cannot make the connection blocking")?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))
                    .context("cannot set a read timeout")?;
                let mut buf = vec![0u8; 256 << 10];
                let mut got = 0u64;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got += n as u64,
                        Err(_) if s.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                Ok(got)
            })?)
        } else {
            drop(ready_tx);
            None
        };
        for _ in 0..expect {
            ready
                .recv_timeout(Duration::from_secs(10))
                .context("the receivers in the namespace did not start")?;
        }
        let mut socks = Vec::with_capacity(t.udp_flows);
        for i in 0..t.udp_flows {
            let port = UDP_SRC_BASE + i as u16;
            let sock = UdpSocket::bind((lab.host_ip, port))
                .with_context(|| format!("cannot bind UDP {}:{port}", lab.host_ip))?;
            if t.dst_ports == 1 {
                sock.connect((ns_ip, UDP_DST_PORT))
                    .context("cannot connect a UDP socket")?;
            }
            socks.push(sock);
        }
        Ok(Self {
            t: t.clone(),
            lab_dst: ns_ip,
            socks,
            stop,
            udp_rx,
            tcp_rx,
        })
    }

    /// Sends, then stops the receivers.
    fn run(self) -> anyhow::Result<Sent> {
        let Prepared {
            t,
            lab_dst,
            socks,
            stop,
            udp_rx,
            tcp_rx,
        } = self;
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(t.seconds);
        let per = socks.len().div_ceil(t.udp_threads).max(1);
        let mut senders = Vec::new();
        let mut socks = socks;
        let mut first = 0usize;
        while !socks.is_empty() {
            let rest = socks.split_off(per.min(socks.len()));
            let mine = std::mem::replace(&mut socks, rest);
            let (ports, one_pass, offset) = (t.dst_ports, t.one_pass, first);
            let rate = t.udp_rate.map(|r| (r / t.udp_threads as u64).max(1));
            first += mine.len();
            let plan = SendPlan {
                offset,
                dst: lab_dst,
                ports,
                one_pass,
                deadline,
                rate,
            };
            senders.push(
                std::thread::Builder::new()
                    .name("bench-udp-tx".into())
                    .spawn(move || udp_send(&mine, &plan))
                    .context("cannot start a sender thread")?,
            );
        }
        let tcp_rate = t.tcp_rate;
        let tcp_tx = if t.tcp {
            Some(
                std::thread::Builder::new()
                    .name("bench-tcp-tx".into())
                    .spawn(move || tcp_send(lab_dst, deadline, tcp_rate))
                    .context("cannot start the TCP sender")?,
            )
        } else {
            None
        };
        let mut sent = Sent::default();
        let mut first_err = None;
        for h in senders {
            match h.join() {
                Ok((n, bytes, errors)) => {
                    sent.udp_datagrams += n;
                    sent.udp_ip_bytes += bytes;
                    sent.udp_errors += errors;
                }
                Err(_) => first_err = Some(anyhow!("a UDP sender thread panicked")),
            }
        }
        if let Some(h) = tcp_tx {
            match join(h, "TCP sender") {
                Ok((bytes, port)) => {
                    sent.tcp_bytes = bytes;
                    sent.tcp_local_port = Some(port);
                }
                Err(e) => first_err = Some(e),
            }
        }
        sent.elapsed = start.elapsed();
        // Let the TCP receiver read to the end, then stop the receivers.
        if let Some(h) = tcp_rx {
            let waited = Instant::now();
            while !h.is_finished() && waited.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
            sent.tcp_received = join(h, "TCP receiver")?;
        }
        stop.store(true, Ordering::Relaxed);
        sent.udp_received = join(udp_rx, "UDP receiver")?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }
}

/// How one UDP sender thread sends.
struct SendPlan {
    /// Index of its first socket among all (for the size pattern).
    offset: usize,
    dst: Ipv4Addr,
    ports: u16,
    one_pass: bool,
    deadline: Instant,
    /// Datagrams per second, if paced.
    rate: Option<u64>,
}

/// Sends datagrams round-robin over `socks` (and `ports` destination
/// ports each) until the deadline, or once over every pair; small and
/// large payloads alternate. Returns (datagrams, IP bytes, errors).
fn udp_send(socks: &[UdpSocket], p: &SendPlan) -> (u64, u64, u64) {
    let buf = vec![0x5au8; LARGE];
    let (mut n, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut since_check = 0u32;
    let mut round = 0usize;
    let start = Instant::now();
    'outer: loop {
        for (i, s) in socks.iter().enumerate() {
            for k in 0..p.ports {
                let size = if (p.offset + i + round + usize::from(k)).is_multiple_of(2) {
                    SMALL
                } else {
                    LARGE
                };
                let r = if p.ports == 1 {
                    s.send(&buf[..size])
                } else {
                    s.send_to(&buf[..size], (p.dst, UDP_DST_PORT + k))
                };
                match r {
                    Ok(_) => {
                        n += 1;
                        bytes += size as u64 + UDP_OVERHEAD;
                    }
                    Err(_) => errors += 1,
                }
                since_check += 1;
            }
            if !p.one_pass && since_check >= 64 {
                since_check = 0;
                let now = Instant::now();
                if now >= p.deadline {
                    break 'outer;
                }
                if let Some(rate) = p.rate {
                    let due = start + Duration::from_secs_f64((n + errors) as f64 / rate as f64);
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
        }
        round += 1;
        if p.one_pass {
            break;
        }
    }
    (n, bytes, errors)
}

/// One TCP stream until `deadline`, at full speed or `rate` bytes/s.
/// Returns (bytes, local port).
fn tcp_send(dst: Ipv4Addr, deadline: Instant, rate: Option<u64>) -> anyhow::Result<(u64, u16)> {
    let addr = SocketAddr::from((dst, TCP_PORT));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .context("cannot set a write timeout")?;
    let port = s.local_addr().context("no local address")?.port();
    let chunk = if rate.is_some() { 16 << 10 } else { 64 << 10 };
    let buf = vec![0xa5u8; chunk];
    let mut bytes = 0u64;
    let start = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(bytes as f64 / r.max(1) as f64);
            if due > now {
                std::thread::sleep((due - now).min(deadline - now));
                continue;
            }
        }
        match s.write(&buf) {
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("TCP send failed"),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    Ok((bytes, port))
}

/// CPU of a set of processes over a window.
struct CpuWatch {
    pids: Vec<Option<u32>>,
    ticks: Vec<Option<u64>>,
    threads: BTreeMap<u32, (String, u64)>,
    thread_pid: Option<u32>,
    machine: MachineCpu,
    at: Instant,
}

/// CPU used over a window (% of one core).
#[derive(Debug, Clone, Default)]
struct CpuUse {
    /// Per watched process, in order.
    pct: Vec<Option<f64>>,
    /// Threads of the first process, by name.
    threads: Vec<(String, f64)>,
    /// The whole machine (sum over cores).
    machine_busy: f64,
}

impl CpuWatch {
    fn start(pids: &[Option<u32>]) -> Self {
        let thread_pid = pids.first().copied().flatten();
        Self {
            pids: pids.to_vec(),
            ticks: pids.iter().map(|p| p.and_then(proc_cpu_ticks)).collect(),
            threads: thread_pid.map(thread_cpu_ticks).unwrap_or_default(),
            thread_pid,
            machine: MachineCpu::sample(),
            at: Instant::now(),
        }
    }

    fn finish(&self) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let hz = clock_ticks_per_sec();
        let pct = |t: u64| t as f64 / hz / secs * 100.0;
        let now: Vec<Option<u64>> = self
            .pids
            .iter()
            .map(|p| p.and_then(proc_cpu_ticks))
            .collect();
        let per = now
            .iter()
            .zip(&self.ticks)
            .map(|(n, b)| Some(pct(n.as_ref()?.saturating_sub(*b.as_ref()?))))
            .collect();
        let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(pid) = self.thread_pid {
            for (tid, (name, ticks)) in thread_cpu_ticks(pid) {
                let before = self.threads.get(&tid).map_or(0, |t| t.1);
                *by_name.entry(name).or_default() += ticks.saturating_sub(before);
            }
        }
        let mut threads: Vec<(String, f64)> = by_name
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(n, t)| (n, pct(t)))
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse {
            pct: per,
            threads,
            machine_busy: MachineCpu::sample().busy_pct_since(&self.machine),
        }
    }
}

/// One traffic run: what was sent, the interface counters over it, and CPU.
#[derive(Debug, Clone, Default)]
struct Blast {
    sent: Sent,
    counters: Counters,
    /// CPU: [agent, softflowd, nfcapd, this process].
    cpu: CpuUse,
}

impl Blast {
    fn secs(&self) -> f64 {
        self.sent.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Binds the sockets, samples, sends, samples (in a blocking thread).
async fn blast(lab: &Lab, t: &Traffic, pids: [Option<u32>; 3]) -> anyhow::Result<Blast> {
    let (addrs, t) = (lab.addrs(), t.clone());
    tokio::task::spawn_blocking(move || {
        let p = Prepared::new(&addrs, &t)?;
        let before = Counters::read(&addrs.host_if)?;
        let watch = CpuWatch::start(&[pids[0], pids[1], pids[2], Some(std::process::id())]);
        let sent = p.run()?;
        let cpu = watch.finish();
        // In-flight packets (TCP's last ACKs) settle.
        std::thread::sleep(Duration::from_millis(300));
        let after = Counters::read(&addrs.host_if)?;
        Ok(Blast {
            sent,
            counters: after.since(&before),
            cpu,
        })
    })
    .await
    .context("the traffic thread panicked")?
}

/// The lab's names and addresses, for blocking threads (the lab itself,
/// whose drop removes the interfaces, stays with the caller).
#[derive(Debug, Clone)]
struct Addrs {
    ns: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

// ---------------------------------------------------------------------------
// The server (in process), the agent and the peer tools (child processes)
// ---------------------------------------------------------------------------

/// A server running in this process.
pub(crate) struct Srv {
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) http: reqwest::Client,
    /// The store consumers' progress.
    pub(crate) progress: tally_server::Progress,
    pub(crate) shutdown: tokio::sync::oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Srv {
    /// Binds a server on 127.0.0.1 with a fixed bootstrap key; agents
    /// report every `report_secs`.
    async fn start(data_dir: &Path, report_secs: u64) -> anyhow::Result<Self> {
        let key = format!("bench-{:032x}", rand::random::<u128>());
        Self::start_keyed(data_dir, report_secs, key).await
    }

    /// [`Srv::start`] with the bootstrap key `key`.
    pub(crate) async fn start_keyed(
        data_dir: &Path,
        report_secs: u64,
        key: String,
    ) -> anyhow::Result<Self> {
        let listen = "127.0.0.1:0".parse().context("bad listen address")?;
        let mut config = tally_server::ServerConfig::new(listen, data_dir.to_path_buf());
        config.bootstrap_key = Some(key.clone());
        config.agent_report_seconds = report_secs;
        let server = tally_server::Server::bind(config)
            .await
            .context("cannot start the server")?;
        let base = format!("{}://{}", server.scheme(), server.local_addr()?);
        let progress = server.progress();
        let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            base,
            key,
            http: http_client(Duration::from_secs(300))?,
            progress,
            shutdown,
            task,
        })
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await.context("the server task panicked")?
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }
}

/// Sends a request and returns the answer's bytes (a 2xx answer).
async fn call_bytes(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<bytes::Bytes> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("{what}: cannot reach the server"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{what}: cannot read the answer"))?;
    if !status.is_success() {
        bail!(
            "{what} failed: {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(500)
                .collect::<String>()
        );
    }
    Ok(body)
}

/// Sends a request and returns the parsed JSON answer.
async fn call(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let body = call_bytes(req, what).await?;
    serde_json::from_slice(&body).with_context(|| {
        format!(
            "{what}: the answer is not JSON: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

/// Creates a reusable auth key and turns flow logging on; returns the key.
pub(crate) async fn setup_tailnet(s: &Srv) -> anyhow::Result<String> {
    setup_tailnet_at(&s.http, &s.base, &s.key).await
}

/// [`setup_tailnet`] for the server at `base` (in this process or not),
/// with its bootstrap key `key`.
pub(crate) async fn setup_tailnet_at(
    http: &reqwest::Client,
    base: &str,
    key: &str,
) -> anyhow::Result<String> {
    let k = call(
        http.post(format!("{base}/api/v2/tailnet/-/keys"))
            .bearer_auth(key)
            .json(&json!({
                "keyType": "auth",
                "description": "bench flows",
                "capabilities": { "devices": { "create": { "reusable": true } } },
            })),
        "creating an auth key",
    )
    .await?;
    let auth = k["key"]
        .as_str()
        .context("the created auth key has no \"key\"")?
        .to_owned();
    call(
        http.patch(format!("{base}/api/v2/tailnet/-/settings"))
            .bearer_auth(key)
            .json(&json!({ "networkFlowLoggingOn": true })),
        "turning flow logging on",
    )
    .await?;
    Ok(auth)
}

/// A node registered through the agent API.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub(crate) private: String,
    node_id: String,
}

pub(crate) async fn register_node(
    s: &Srv,
    http: &reqwest::Client,
    auth: &str,
    hostname: &str,
    addresses: &[String],
) -> anyhow::Result<Registered> {
    register_node_at(&s.base, http, auth, hostname, addresses).await
}

/// [`register_node`] with the server at `base` (in this process or not).
pub(crate) async fn register_node_at(
    base: &str,
    http: &reqwest::Client,
    auth: &str,
    hostname: &str,
    addresses: &[String],
) -> anyhow::Result<Registered> {
    let p = tally_proto::PrivateId::generate();
    let r = call(
        http.post(format!("{base}/api/v2/agent/{}", p.to_hex()))
            .bearer_auth(auth)
            .json(&json!({ "hostname": hostname, "addresses": addresses })),
        "registering a node",
    )
    .await?;
    Ok(Registered {
        private: p.to_hex(),
        node_id: r["node"]["id"]
            .as_str()
            .context("the registered node has no node.id")?
            .to_owned(),
    })
}

/// Last lines of a child's output, for error messages.
type Tail = Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

fn tail_text(t: &Tail) -> String {
    t.lock()
        .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Reads lines of a child's output: keeps the last 100 and forwards them.
fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    tail: Tail,
) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut t) = tail.lock() {
                if t.len() >= 100 {
                    t.pop_front();
                }
                t.push_back(line.clone());
            }
            let _ = tx.send(line);
        }
    });
}

/// Sends SIGTERM to a child and waits for it (SIGKILL after `grace`).
async fn terminate(child: &mut tokio::process::Child, pid: u32, grace: Duration) {
    if let Ok(p) = i32::try_from(pid)
        && p > 0
    {
        // SAFETY: kill(2) on the pid of our own child, which we have not
        // reaped yet (so the pid cannot have been reused).
        unsafe {
            libc::kill(p, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// `tally agent --flows` as a child process.
struct AgentChild {
    child: tokio::process::Child,
    pid: u32,
    public_id: String,
    node_id: String,
}

async fn start_agent(
    s: &Srv,
    auth: &str,
    lab: &Lab,
    data_dir: &Path,
    interval: u64,
    env: &[String],
) -> anyhow::Result<AgentChild> {
    let exe = crate::common::tally_exe()?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("agent")
        .arg("--server")
        .arg(&s.base)
        .arg("--auth-key")
        .arg(auth)
        .arg("--address")
        .arg(lab.host_ip.to_string())
        .arg("--hostname")
        .arg("bench-sender")
        .arg("--flows")
        .arg("--iface")
        .arg(&lab.host_if)
        .arg("--flow-interval")
        .arg(format!("{interval}s"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--no-stdin")
        .env("TALLY_LOG", "info")
        .envs(env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} agent", exe.display()))?;
    let pid = child.id().context("the agent exited at once")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let tail: Tail = Arc::default();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone(), Arc::clone(&tail));
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx, Arc::clone(&tail));
    }
    const READY: &str = "tally agent ready: instance ";
    const REGISTERED: &str = "tally agent registered: node ";
    const CAPTURING: &str = "capturing flows";
    let mut found: HashMap<&str, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while found.len() < 3 {
        let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(l)) => l,
            Ok(None) => bail!(
                "the agent exited before it captured; its output:\n{}",
                tail_text(&tail)
            ),
            Err(_) => bail!(
                "the agent was not capturing within 30 s; its output:\n{}",
                tail_text(&tail)
            ),
        };
        if line.contains("flow capture not started") || line.contains("flow capture on") {
            bail!("the agent could not capture: {line}");
        }
        for m in [READY, REGISTERED, CAPTURING] {
            if let Some(pos) = line.find(m) {
                found.insert(m, line[pos + m.len()..].trim().to_owned());
            }
        }
    }
    let public_id = found
        .get(READY)
        .and_then(|l| l.split_whitespace().next())
        .context("no instance ID in the agent's ready line")?
        .to_owned();
    let node_id = found
        .get(REGISTERED)
        .and_then(|l| l.split_whitespace().next())
        .context("no node ID in the agent's registered line")?
        .to_owned();
    Ok(AgentChild {
        child,
        pid,
        public_id,
        node_id,
    })
}

/// softflowd exporting NetFlow v9 to nfcapd.
struct PeerProcs {
    dir: PathBuf,
    sf: tokio::process::Child,
    sf_pid: u32,
    ctl: PathBuf,
    nf: tokio::process::Child,
    nf_pid: u32,
    nf_dir: PathBuf,
}

fn have_peer_tools() -> Result<(), String> {
    let missing: Vec<&str> = ["softflowd", "softflowctl", "nfcapd", "nfdump"]
        .into_iter()
        .filter(|p| {
            ![
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
                "/usr/local/bin",
                "/usr/local/sbin",
            ]
            .iter()
            .any(|d| Path::new(d).join(p).exists())
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not installed (Debian: apt-get install -y softflowd nfdump)",
            missing.join(", ")
        ))
    }
}

/// A free UDP port on 127.0.0.1 (bound and released).
fn free_udp_port() -> anyhow::Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket")?;
    Ok(s.local_addr().context("no local address")?.port())
}

fn log_file(path: &Path) -> anyhow::Result<std::process::Stdio> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(std::process::Stdio::from(f))
}

async fn start_peer(lab: &Lab, dir: &Path) -> anyhow::Result<PeerProcs> {
    let nf_dir = dir.join("nfcapd");
    std::fs::create_dir_all(&nf_dir)
        .with_context(|| format!("cannot create {}", nf_dir.display()))?;
    let port = free_udp_port()?;
    let mut nf = tokio::process::Command::new("nfcapd")
        .arg("-w")
        .arg(&nf_dir)
        .args(["-p", &port.to_string(), "-b", "127.0.0.1", "-B", "4194304"])
        .stdin(std::process::Stdio::null())
        .stdout(log_file(&dir.join("nfcapd.log"))?)
        .stderr(log_file(&dir.join("nfcapd.err"))?)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start nfcapd")?;
    let nf_pid = nf.id().context("nfcapd exited at once")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(Some(st)) = nf.try_wait() {
        bail!(
            "nfcapd exited ({st}): {}",
            std::fs::read_to_string(dir.join("nfcapd.log")).unwrap_or_default()
        );
    }
    let ctl = dir.join("softflowd.ctl");
    let sf = tokio::process::Command::new("softflowd")
        .args(["-i", &lab.host_if])
        .args(["-n", &format!("127.0.0.1:{port}")])
        .args(["-v", "9", "-d", "-N", "-m", "262144"])
        .args(["-t", "maxlife=5", "-t", "expint=1", "-B", "4194304"])
        .arg("-p")
        .arg(dir.join("softflowd.pid"))
        .arg("-c")
        .arg(&ctl)
        .stdin(std::process::Stdio::null())
        .stdout(log_file(&dir.join("softflowd.log"))?)
        .stderr(log_file(&dir.join("softflowd.err"))?)
        .kill_on_drop(true)
        .spawn();
    let sf = match sf {
        Ok(c) => c,
        Err(e) => {
            let mut nf = nf;
            terminate(&mut nf, nf_pid, Duration::from_secs(5)).await;
            return Err(e).context("cannot start softflowd");
        }
    };
    let sf_pid = sf.id().unwrap_or(0);
    let mut procs = PeerProcs {
        dir: dir.to_path_buf(),
        sf,
        sf_pid,
        ctl,
        nf,
        nf_pid,
        nf_dir,
    };
    let started = Instant::now();
    while sf_stats(&procs.ctl).is_err() {
        if started.elapsed() > Duration::from_secs(10) || matches!(procs.sf.try_wait(), Ok(Some(_)))
        {
            let err = std::fs::read_to_string(dir.join("softflowd.err")).unwrap_or_default();
            procs.stop().await;
            bail!("softflowd did not start: {err}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(procs)
}

impl PeerProcs {
    /// Stops both, without waiting for an export.
    async fn stop(&mut self) {
        terminate(&mut self.sf, self.sf_pid, Duration::from_secs(5)).await;
        terminate(&mut self.nf, self.nf_pid, Duration::from_secs(10)).await;
    }

    /// softflowctl shutdown (softflowd exports every flow and exits), then
    /// nfcapd writes its file and exits.
    async fn finish(&mut self) -> anyhow::Result<()> {
        let (ctl, dir) = (self.ctl.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || {
            // Its own account of the run, kept next to its logs.
            if let Ok(s) = run_cmd("softflowctl", &["-c", &ctl.to_string_lossy(), "statistics"]) {
                let _ = std::fs::write(dir.join("softflowctl-statistics.txt"), s);
            }
            run_cmd("softflowctl", &["-c", &ctl.to_string_lossy(), "shutdown"])
        })
        .await
        .context("softflowctl panicked")??;
        if tokio::time::timeout(Duration::from_secs(20), self.sf.wait())
            .await
            .is_err()
        {
            bail!("softflowd did not exit within 20 s of softflowctl shutdown");
        }
        // Its last export datagrams reach nfcapd.
        tokio::time::sleep(Duration::from_millis(500)).await;
        terminate(&mut self.nf, self.nf_pid, Duration::from_secs(20)).await;
        Ok(())
    }
}

/// softflowd's counters (`softflowctl statistics`).
#[derive(Debug, Clone, Copy, Default)]
struct SfStats {
    processed: u64,
    received: u64,
    dropped_pcap: u64,
    dropped_if: u64,
}

fn stat_value(text: &str, label: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn sf_stats(ctl: &Path) -> anyhow::Result<SfStats> {
    let out = run_cmd("softflowctl", &["-c", &ctl.to_string_lossy(), "statistics"])?;
    let get = |label: &str| {
        stat_value(&out, label).with_context(|| format!("no {label:?} in softflowctl statistics"))
    };
    Ok(SfStats {
        processed: get("Packets processed")?,
        received: get("Packets received by libpcap")?,
        dropped_pcap: get("Packets dropped by libpcap")?,
        dropped_if: get("Packets dropped by interface").unwrap_or(0),
    })
}

/// softflowd reads through libpcap without a timeout (`to_ms` 0). On a
/// `TPACKET_V3` ring libpcap then asks the kernel never to retire a partly
/// filled block, so the last packets of a run wait in the ring until more
/// arrive, and a shutdown never counts them. So after a run this sends
/// small datagrams from [`FLUSH_PORT`] (left out of every comparison) until
/// softflowd has processed every packet the ring held when the run ended.
/// Returns softflowd's counters at the end of the run and the datagrams sent.
fn flush_softflowd(addrs: &Addrs, ctl: &Path) -> anyhow::Result<(SfStats, u64)> {
    let at_end = sf_stats(ctl)?;
    let target = at_end.received.saturating_sub(at_end.dropped_pcap);
    let sock = UdpSocket::bind((addrs.host_ip, FLUSH_PORT))
        .with_context(|| format!("cannot bind UDP {}:{FLUSH_PORT}", addrs.host_ip))?;
    sock.connect((addrs.ns_ip, UDP_DST_PORT))
        .context("cannot connect the flush socket")?;
    let mut sent = 0u64;
    for _ in 0..1000 {
        if sf_stats(ctl)?.processed >= target {
            return Ok((at_end, sent));
        }
        for _ in 0..200 {
            if sock.send(&[0u8; SMALL]).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "softflowd did not process the packets captured during the run (processed {} of {target})",
        sf_stats(ctl)?.processed
    )
}

// ---------------------------------------------------------------------------
// Flow counts from Tally's records and from nfdump
// ---------------------------------------------------------------------------

/// A directed flow: protocol, from, to.
type FlowKey = (u8, SocketAddr, SocketAddr);

/// Packets and bytes per directed flow, and records' counters.
#[derive(Debug, Clone, Default)]
struct FlowSums {
    flows: HashMap<FlowKey, [u64; 2]>,
    records: u64,
    entries: u64,
    dropped: u64,
    evictions: u64,
    malformed: u64,
}

/// Totals over the benchmark's flows.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    flows: usize,
    pkts: u64,
    bytes: u64,
    udp_tx_pkts: u64,
    udp_tx_bytes: u64,
    tcp_pkts: u64,
    tcp_bytes: u64,
}

impl FlowSums {
    fn add(&mut self, key: FlowKey, pkts: u64, bytes: u64) {
        if pkts > 0 || bytes > 0 {
            let e = self.flows.entry(key).or_default();
            e[0] += pkts;
            e[1] += bytes;
        }
    }

    /// Adds one Tailscale-shaped record: `src` is the node's end, tx what it
    /// sent.
    fn add_record(&mut self, r: &Value) {
        self.records += 1;
        let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        self.dropped += n(r, "droppedPackets");
        self.evictions += n(r, "evictions");
        self.malformed += n(r, "malformedPackets");
        for list in [
            "virtualTraffic",
            "subnetTraffic",
            "exitTraffic",
            "physicalTraffic",
        ] {
            for e in r[list].as_array().into_iter().flatten() {
                self.entries += 1;
                let proto = u8::try_from(n(e, "proto")).unwrap_or(0);
                let addr = |k: &str| e[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
                let (Some(src), Some(dst)) = (addr("src"), addr("dst")) else {
                    continue;
                };
                self.add((proto, src, dst), n(e, "txPkts"), n(e, "txBytes"));
                self.add((proto, dst, src), n(e, "rxPkts"), n(e, "rxBytes"));
            }
        }
    }

    /// The benchmark's flows: TCP and UDP between the two veth ends, the
    /// flush datagrams left out.
    fn bench(&self, a: &Addrs) -> HashMap<FlowKey, [u64; 2]> {
        self.flows
            .iter()
            .filter(|(k, _)| is_bench(a, k))
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    fn totals(&self, a: &Addrs) -> Totals {
        let mut t = Totals::default();
        let host = IpAddr::V4(a.host_ip);
        for (k, v) in self.flows.iter().filter(|(k, _)| is_bench(a, k)) {
            t.flows += 1;
            t.pkts += v[0];
            t.bytes += v[1];
            if k.0 == 17 && k.1.ip() == host {
                t.udp_tx_pkts += v[0];
                t.udp_tx_bytes += v[1];
            }
            if k.0 == 6 {
                t.tcp_pkts += v[0];
                t.tcp_bytes += v[1];
            }
        }
        t
    }
}

fn is_bench(a: &Addrs, k: &FlowKey) -> bool {
    let (host, ns) = (IpAddr::V4(a.host_ip), IpAddr::V4(a.ns_ip));
    (k.0 == 6 || k.0 == 17)
        && k.1.port() != FLUSH_PORT
        && k.2.port() != FLUSH_PORT
        && ((k.1.ip() == host && k.2.ip() == ns) || (k.1.ip() == ns && k.2.ip() == host))
}

/// Every flow record of one instance (`GET /c/tailtraffic`, paged).
async fn read_records(s: &Srv, instance: &str) -> anyhow::Result<FlowSums> {
    let mut sums = FlowSums::default();
    let mut after: Option<String> = None;
    let (mut position, mut skipped) = (0usize, crate::common::Skipped::default());
    loop {
        let mut q = vec![
            ("instances", instance.to_owned()),
            ("max-count", "100000".to_owned()),
        ];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let body = call_bytes(s.get("/c/tailtraffic").query(&q), "reading flow records").await?;
        let page = crate::common::LogPage::parse(&body)?;
        for raw in &page.logs {
            // One record that cannot be read does not fail the page.
            position += 1;
            match crate::common::read_entry(raw.get()) {
                Ok(r) => sums.add_record(&r),
                Err(why) => skipped.report(&format!("flow record {position}"), &why),
            }
        }
        match page.next {
            Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
            _ => break,
        }
    }
    Ok(sums)
}

/// Reads the agent's records until they account for `expected` packets
/// (with its drops), or stop changing after an interval has passed.
/// Returns the sums, how long it waited and whether the count was reached.
async fn await_records(
    s: &Srv,
    instance: &str,
    a: &Addrs,
    expected: u64,
    interval: u64,
) -> anyhow::Result<(FlowSums, Duration, bool)> {
    let t0 = Instant::now();
    let min = Duration::from_secs(interval + 4);
    let mut last = None;
    let mut stable = 0;
    loop {
        let sums = read_records(s, instance).await?;
        let got = sums.totals(a).pkts + sums.dropped;
        if got >= expected {
            return Ok((sums, t0.elapsed(), true));
        }
        if last == Some(got) && t0.elapsed() >= min {
            stable += 1;
            if stable >= 2 {
                return Ok((sums, t0.elapsed(), false));
            }
        } else {
            stable = 0;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Ok((sums, t0.elapsed(), false));
        }
        last = Some(got);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// nfdump's flows (directed), and how long nfdump took.
fn nfdump_flows(dir: &Path, filter: Option<&str>) -> anyhow::Result<(FlowSums, Duration)> {
    let d = dir.to_string_lossy();
    let mut args = vec![
        "-R",
        d.as_ref(),
        "-q",
        "-N",
        "-o",
        "fmt:%pr %sa %sp %da %dp %pkt %byt",
    ];
    if let Some(f) = filter {
        args.push(f);
    }
    let t = Instant::now();
    let out = run_cmd("nfdump", &args)?;
    let took = t.elapsed();
    let mut sums = FlowSums::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let proto = match f[0].to_ascii_uppercase().as_str() {
            "TCP" => 6,
            "UDP" => 17,
            "ICMP" => 1,
            p => p.parse().unwrap_or(0),
        };
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let port = |s: &str| s.parse::<u16>().unwrap_or(0);
        let num = |s: &str| s.parse::<u64>().unwrap_or(0);
        let (Some(sa), Some(da)) = (ip(f[1]), ip(f[3])) else {
            continue;
        };
        sums.records += 1;
        sums.entries += 1;
        sums.add(
            (
                proto,
                SocketAddr::new(sa, port(f[2])),
                SocketAddr::new(da, port(f[4])),
            ),
            num(f[5]),
            num(f[6]),
        );
    }
    Ok((sums, took))
}

/// Per-flow agreement of two sets of directed flows.
#[derive(Debug, Clone, Default)]
struct Compare {
    both: usize,
    equal: usize,
    only_a: usize,
    only_b: usize,
    examples: Vec<String>,
}

fn compare(a: &HashMap<FlowKey, [u64; 2]>, b: &HashMap<FlowKey, [u64; 2]>) -> Compare {
    let mut c = Compare::default();
    let mut keys: Vec<&FlowKey> = a
        .keys()
        .chain(b.keys())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    keys.sort();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => {
                c.both += 1;
                if x == y {
                    c.equal += 1;
                } else if c.examples.len() < 5 {
                    c.examples.push(format!(
                        "proto {} {} -> {}: Tally {} pkts {} B, nfdump {} pkts {} B",
                        k.0, k.1, k.2, x[0], x[1], y[0], y[1]
                    ));
                }
            }
            (Some(x), None) => {
                c.only_a += 1;
                if c.examples.len() < 5 {
                    c.examples.push(format!(
                        "proto {} {} -> {}: only Tally ({} pkts {} B)",
                        k.0, k.1, k.2, x[0], x[1]
                    ));
                }
            }
            (None, Some(y)) => {
                c.only_b += 1;
                if c.examples.len() < 5 {
                    c.examples.push(format!(
                        "proto {} {} -> {}: only nfdump ({} pkts {} B)",
                        k.0, k.1, k.2, y[0], y[1]
                    ));
                }
            }
            (None, None) => {}
        }
    }
    c
}

/// Entries and records of every page of a network-API query, and the time.
async fn network_query(
    s: &Srv,
    params: &[(&str, String)],
) -> anyhow::Result<(usize, usize, Duration)> {
    let t = Instant::now();
    let (mut entries, mut records) = (0usize, 0usize);
    let mut cursor: Option<String> = None;
    loop {
        let mut q: Vec<(&str, String)> = params.to_vec();
        q.push(("limit", "100000".into()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let v = call(
            s.get("/api/v2/tailnet/-/logging/network").query(&q),
            "querying the network flow log",
        )
        .await?;
        for r in v["logs"].as_array().into_iter().flatten() {
            records += 1;
            for list in [
                "virtualTraffic",
                "subnetTraffic",
                "exitTraffic",
                "physicalTraffic",
            ] {
                entries += r[list].as_array().map_or(0, Vec::len);
            }
        }
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    Ok((entries, records, t.elapsed()))
}

/// Median and maximum of a few timings.
fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let med = v.get(v.len() / 2).copied().unwrap_or_default();
    (med, v.last().copied().unwrap_or_default())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// Parts 2 and 5: the agent and softflowd on the veth
// ---------------------------------------------------------------------------

/// What runs during one traffic run.
struct Session {
    srv: Option<Srv>,
    agent: Option<AgentChild>,
    receiver: Option<Registered>,
    peer: Option<PeerProcs>,
}

impl Session {
    async fn start(
        a: &FlowsArgs,
        lab: &Lab,
        dir: &Path,
        with_agent: bool,
        with_peer: bool,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut s = Session {
            srv: None,
            agent: None,
            receiver: None,
            peer: None,
        };
        let started = s.start_inner(a, lab, dir, with_agent, with_peer).await;
        match started {
            Ok(()) => Ok(s),
            Err(e) => {
                s.stop().await;
                Err(e)
            }
        }
    }

    async fn start_inner(
        &mut self,
        a: &FlowsArgs,
        lab: &Lab,
        dir: &Path,
        with_agent: bool,
        with_peer: bool,
    ) -> anyhow::Result<()> {
        if with_agent {
            let srv = self.srv.insert(Srv::start(&dir.join("server"), 1).await?);
            let auth = setup_tailnet(srv).await?;
            // The namespace's end is a node too: the agent classifies the
            // traffic as virtual, and queries can name the pair.
            self.receiver = Some(
                register_node(
                    srv,
                    &srv.http,
                    &auth,
                    "bench-receiver",
                    &[lab.ns_ip.to_string()],
                )
                .await?,
            );
            self.agent = Some(
                start_agent(
                    srv,
                    &auth,
                    lab,
                    &dir.join("agent"),
                    a.flow_interval,
                    &a.agent_env,
                )
                .await?,
            );
        }
        if with_peer {
            self.peer = Some(start_peer(lab, dir).await?);
        }
        // Let the capture sockets settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    fn pids(&self) -> [Option<u32>; 3] {
        [
            self.agent.as_ref().map(|g| g.pid),
            self.peer.as_ref().map(|p| p.sf_pid),
            self.peer.as_ref().map(|p| p.nf_pid),
        ]
    }

    async fn stop(&mut self) {
        if let Some(mut g) = self.agent.take() {
            terminate(&mut g.child, g.pid, Duration::from_secs(10)).await;
        }
        if let Some(mut p) = self.peer.take() {
            p.stop().await;
        }
        if let Some(s) = self.srv.take()
            && let Err(e) = s.stop().await
        {
            eprintln!("stopping the server: {e:#}");
        }
    }
}

fn blast_traffic(a: &FlowsArgs) -> Traffic {
    Traffic {
        udp_flows: a.udp_flows,
        dst_ports: 1,
        udp_threads: a.udp_threads,
        one_pass: false,
        seconds: a.seconds,
        tcp: !a.no_tcp,
        udp_rate: None,
        tcp_rate: None,
    }
}

/// The agent's memory with a full table.
struct AgentMemory {
    tuples_sent: u64,
    sweep_secs: f64,
    /// Right after the sweep, before the interval's record.
    rss_swept: u64,
    /// One interval later (after the 100,000-entry record).
    rss: u64,
    hwm: u64,
    /// Two idle intervals after that.
    rss_idle: u64,
    distinct: usize,
    evictions: u64,
    dropped: u64,
}

struct VethResult {
    blast: Blast,
    tally: FlowSums,
    wait: Duration,
    complete: bool,
    rss: u64,
    hwm: u64,
    memory: Option<AgentMemory>,
}

async fn part_veth(a: &FlowsArgs, lab: &Lab, work: &Path) -> anyhow::Result<VethResult> {
    println!(
        "\n== 2. Agent capturing a veth at its practical limit (load average {}) ==",
        loadavg()
    );
    let mut sess = Session::start(a, lab, &work.join("veth"), true, false).await?;
    let r = veth_inner(a, lab, &sess).await;
    sess.stop().await;
    r
}

async fn veth_inner(a: &FlowsArgs, lab: &Lab, sess: &Session) -> anyhow::Result<VethResult> {
    let (Some(srv), Some(agent)) = (&sess.srv, &sess.agent) else {
        bail!("the session has no agent");
    };
    let addrs = lab.addrs();
    eprintln!(
        "agent {} (node {}) capturing {}; {} s of UDP over {} source ports{} ...",
        agent.public_id,
        agent.node_id,
        lab.host_if,
        a.seconds,
        a.udp_flows,
        if a.no_tcp { "" } else { " and one TCP stream" }
    );
    let b = blast(lab, &blast_traffic(a), sess.pids()).await?;
    eprintln!("waiting for the agent's records ...");
    let (tally, wait, complete) = await_records(
        srv,
        &agent.public_id,
        &addrs,
        b.counters.captured_packets(),
        a.flow_interval,
    )
    .await?;
    let rss = proc_status_bytes(agent.pid, "VmRSS").unwrap_or(0);
    let hwm = proc_status_bytes(agent.pid, "VmHWM").unwrap_or(0);
    let memory = if a.agent_connections > 0 {
        let ports = a.agent_connections.div_ceil(a.udp_flows).clamp(1, 1000) as u16;
        let t = Traffic {
            udp_flows: a.udp_flows,
            dst_ports: ports,
            udp_threads: 1,
            one_pass: true,
            seconds: 0.0,
            tcp: false,
            udp_rate: None,
            tcp_rate: None,
        };
        eprintln!(
            "memory: one datagram on each of {} UDP tuples, then one interval ...",
            a.udp_flows * usize::from(ports)
        );
        let sweep = blast(lab, &t, sess.pids()).await?;
        let rss_swept = proc_status_bytes(agent.pid, "VmRSS").unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(a.flow_interval + 4)).await;
        let rss = proc_status_bytes(agent.pid, "VmRSS").unwrap_or(0);
        let hwm = proc_status_bytes(agent.pid, "VmHWM").unwrap_or(0);
        // Idle intervals later (the connections stay tracked until their
        // idle timeout): what stays resident.
        tokio::time::sleep(Duration::from_secs(2 * a.flow_interval)).await;
        let rss_idle = proc_status_bytes(agent.pid, "VmRSS").unwrap_or(0);
        let sums = read_records(srv, &agent.public_id).await?;
        let host = IpAddr::V4(lab.host_ip);
        let top = UDP_DST_PORT + ports;
        let distinct = sums
            .flows
            .keys()
            .filter(|k| {
                k.0 == 17
                    && k.1.ip() == host
                    && (UDP_DST_PORT..top).contains(&k.2.port())
                    && k.1.port() != FLUSH_PORT
            })
            .count();
        Some(AgentMemory {
            tuples_sent: sweep.sent.udp_datagrams,
            sweep_secs: sweep.secs(),
            rss_swept,
            rss,
            hwm,
            rss_idle,
            distinct,
            evictions: sums.evictions.saturating_sub(tally.evictions),
            dropped: sums.dropped.saturating_sub(tally.dropped),
        })
    } else {
        None
    };
    Ok(VethResult {
        blast: b,
        tally,
        wait,
        complete,
        rss,
        hwm,
        memory,
    })
}

fn rate(n: u64, secs: f64) -> String {
    fmt_count(n as f64 / secs)
}

fn gbits(bytes: u64, secs: f64) -> String {
    let b = bytes as f64 * 8.0 / secs;
    if b >= 1e9 {
        format!("{:.2} Gbit/s", b / 1e9)
    } else {
        format!("{:.1} Mbit/s", b / 1e6)
    }
}

fn signed(d: i128) -> String {
    if d == 0 {
        "0".into()
    } else if d > 0 {
        format!("+{}", fmt_count(d as f64))
    } else {
        format!("-{}", fmt_count((-d) as f64))
    }
}

/// Renders the traffic of a run.
fn render_traffic(b: &Blast) -> String {
    let (c, s, secs) = (&b.counters, &b.sent, b.secs());
    let mut t = Table::new(&["veth (root end)", "packets", "packets/s", "bytes", "bits/s"]);
    t.row(vec![
        "tx (root → namespace)".into(),
        fmt_count(c.tx_packets as f64),
        rate(c.tx_packets, secs),
        fmt_count(c.tx_bytes as f64),
        gbits(c.tx_bytes, secs),
    ]);
    t.row(vec![
        "rx (namespace → root)".into(),
        fmt_count(c.rx_packets as f64),
        rate(c.rx_packets, secs),
        fmt_count(c.rx_bytes as f64),
        gbits(c.rx_bytes, secs),
    ]);
    t.row(vec![
        "**total**".into(),
        fmt_count((c.tx_packets + c.rx_packets) as f64),
        format!("**{}**", rate(c.tx_packets + c.rx_packets, secs)),
        fmt_count((c.tx_bytes + c.rx_bytes) as f64),
        format!("**{}**", gbits(c.tx_bytes + c.rx_bytes, secs)),
    ]);
    let mut out = format!(
        "{:.1} s of traffic: UDP {} datagrams ({} IP bytes, {} send errors; the receiver read {}), TCP {} ({}; received {}); veth tx_dropped {}, rx_dropped {}\n\n",
        secs,
        fmt_count(s.udp_datagrams as f64),
        fmt_count(s.udp_ip_bytes as f64),
        fmt_count(s.udp_errors as f64),
        fmt_count(s.udp_received as f64),
        fmt_bytes(s.tcp_bytes),
        gbits(s.tcp_bytes, secs),
        fmt_bytes(s.tcp_received),
        fmt_count(c.tx_dropped as f64),
        fmt_count(c.rx_dropped as f64),
    );
    out.push_str(&t.render());
    out
}

fn cpu_cell(p: Option<f64>) -> String {
    p.map_or_else(|| "n/a".into(), |p| format!("{p:.0}% of one core"))
}

fn threads_cell(c: &CpuUse) -> String {
    c.threads
        .iter()
        .take(5)
        .map(|(n, p)| format!("{n} {p:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Interface counters against a tool's counts of the benchmark's flows.
fn render_accounting(tool: &str, b: &Blast, t: &Totals, dropped: Option<u64>) -> String {
    let c = &b.counters;
    let mut tb = Table::new(&["", "interface counters / sent", tool, "difference"]);
    let expect_pkts = c.captured_packets();
    let got = t.pkts + dropped.unwrap_or(0);
    tb.row(vec![
        format!(
            "packets (tx + tx_dropped + rx){}",
            if dropped.is_some() {
                "; tool: counted + kernel drops"
            } else {
                ""
            }
        ),
        fmt_count(expect_pkts as f64),
        match dropped {
            Some(d) => format!("{} + {}", fmt_count(t.pkts as f64), fmt_count(d as f64)),
            None => fmt_count(t.pkts as f64),
        },
        signed(i128::from(got) - i128::from(expect_pkts)),
    ]);
    tb.row(vec![
        "IP bytes (counter bytes − 14 × packets)".into(),
        fmt_count(c.ip_bytes() as f64),
        fmt_count(t.bytes as f64),
        signed(i128::from(t.bytes) - i128::from(c.ip_bytes())),
    ]);
    tb.row(vec![
        "UDP datagrams sent (root → namespace)".into(),
        fmt_count(b.sent.udp_datagrams as f64),
        fmt_count(t.udp_tx_pkts as f64),
        signed(i128::from(t.udp_tx_pkts) - i128::from(b.sent.udp_datagrams)),
    ]);
    tb.row(vec![
        "UDP IP bytes sent".into(),
        fmt_count(b.sent.udp_ip_bytes as f64),
        fmt_count(t.udp_tx_bytes as f64),
        signed(i128::from(t.udp_tx_bytes) - i128::from(b.sent.udp_ip_bytes)),
    ]);
    let tcp_expect = expect_pkts.saturating_sub(b.sent.udp_datagrams);
    tb.row(vec![
        "TCP packets (counters − UDP sent), both directions".into(),
        fmt_count(tcp_expect as f64),
        fmt_count(t.tcp_pkts as f64),
        signed(i128::from(t.tcp_pkts) - i128::from(tcp_expect)),
    ]);
    tb.render()
}

impl VethResult {
    fn render(&self, a: &FlowsArgs, lab: &Lab, goals: &mut Vec<Goal>) -> String {
        let addrs = lab.addrs();
        let b = &self.blast;
        let mut out = render_traffic(b);
        out.push('\n');
        let mut t = Table::new(&["agent", "result"]);
        t.row(vec![
            format!("CPU over the {:.1} s (utime + stime)", b.secs()),
            format!("**{}**", cpu_cell(b.cpu.pct[0])),
        ]);
        t.row(vec!["by thread".into(), threads_cell(&b.cpu)]);
        t.row(vec![
            "machine busy / this process (server, senders, receivers)".into(),
            format!(
                "{:.0}% of {} / {}",
                b.cpu.machine_busy,
                std::thread::available_parallelism().map_or(1, |n| n.get()) * 100,
                cpu_cell(b.cpu.pct[3])
            ),
        ]);
        t.row(vec![
            "RSS after the run (VmRSS / VmHWM)".into(),
            format!("{} / {}", fmt_bytes(self.rss), fmt_bytes(self.hwm)),
        ]);
        t.row(vec![
            "kernel drops (droppedPackets in the records)".into(),
            fmt_count(self.tally.dropped as f64),
        ]);
        t.row(vec![
            "records read back (GET /c/tailtraffic)".into(),
            format!(
                "{} records, {} entries, complete {:.1} s after the traffic{}",
                fmt_count(self.tally.records as f64),
                fmt_count(self.tally.entries as f64),
                self.wait.as_secs_f64(),
                if self.complete {
                    ""
                } else {
                    " (the count was not reached; the figures below are final)"
                }
            ),
        ]);
        out.push_str(&t.render());
        out.push('\n');
        let totals = self.tally.totals(&addrs);
        out.push_str(&render_accounting(
            "Tally records",
            b,
            &totals,
            Some(self.tally.dropped),
        ));
        if self.tally.dropped > 0 {
            let _ = writeln!(
                out,
                "\nDropped packets are counted in droppedPackets without their bytes, so the byte and per-protocol rows miss exactly those packets."
            );
        }
        let exact = totals.pkts + self.tally.dropped == b.counters.captured_packets()
            && (self.tally.dropped > 0 || totals.bytes == b.counters.ip_bytes());
        let _ = writeln!(
            out,
            "\nrecords vs interface counters: {}",
            if exact {
                "every packet accounted for"
            } else {
                "they differ (see above)"
            }
        );
        goals.push(Goal {
            what: "agent records vs veth counters".into(),
            goal: "account for every packet".into(),
            measured: format!(
                "{} + {} dropped of {} packets",
                fmt_count(totals.pkts as f64),
                fmt_count(self.tally.dropped as f64),
                fmt_count(b.counters.captured_packets() as f64)
            ),
            met: Some(exact),
        });
        goals.push(Goal {
            what: "agent CPU at the veth's practical limit".into(),
            goal: "report".into(),
            measured: format!(
                "{} at {} packets/s, {}",
                cpu_cell(b.cpu.pct[0]),
                rate(b.counters.tx_packets + b.counters.rx_packets, b.secs()),
                gbits(b.counters.tx_bytes + b.counters.rx_bytes, b.secs())
            ),
            met: None,
        });
        if let Some(m) = &self.memory {
            let mut t = Table::new(&["agent with a full table", "result"]);
            t.row(vec![
                "UDP tuples swept (one datagram each)".into(),
                format!(
                    "{} in {:.2} s (table limit 100,000; the blast's {} tuples are among them)",
                    fmt_count(m.tuples_sent as f64),
                    m.sweep_secs,
                    fmt_count(a.udp_flows as f64)
                ),
            ]);
            t.row(vec![
                "distinct tuples in the records / evictions / kernel drops".into(),
                format!(
                    "{} / {} / {}",
                    fmt_count(m.distinct as f64),
                    fmt_count(m.evictions as f64),
                    fmt_count(m.dropped as f64)
                ),
            ]);
            t.row(vec![
                "agent VmRSS right after the sweep (before the interval's record)".into(),
                fmt_bytes(m.rss_swept),
            ]);
            t.row(vec![
                "agent RSS one interval later, after the record of every connection (VmRSS / VmHWM)".into(),
                format!("**{}** / {}", fmt_bytes(m.rss), fmt_bytes(m.hwm)),
            ]);
            t.row(vec![
                "agent VmRSS two idle intervals later (connections still tracked)".into(),
                fmt_bytes(m.rss_idle),
            ]);
            out.push('\n');
            out.push_str(&t.render());
            let n = fmt_count(m.distinct.min(100_000) as f64);
            goals.push(Goal {
                what: format!("agent RSS tracking {n} connections (before their record)"),
                goal: "< 64 MiB".into(),
                measured: fmt_bytes(m.rss_swept),
                met: Some(m.rss_swept < GOAL_RSS),
            });
            goals.push(Goal {
                what: format!("agent RSS after the record of {n} active connections"),
                goal: "< 64 MiB".into(),
                measured: format!(
                    "{} (peak {}); {} two idle intervals later",
                    fmt_bytes(m.rss),
                    fmt_bytes(m.hwm),
                    fmt_bytes(m.rss_idle)
                ),
                met: Some(m.hwm < GOAL_RSS),
            });
        }
        out
    }
}

/// One query timed on both sides.
struct QueryRow {
    what: String,
    nf: (Duration, Duration, usize),
    tally: (Duration, Duration, usize),
}

/// softflowd alone on the traffic.
struct AloneRun {
    blast: Blast,
    stats: SfStats,
    flush: u64,
    nf: FlowSums,
    seq_errors: Option<u64>,
}

/// softflowd alongside the agent on the same packets.
struct BothRun {
    blast: Blast,
    stats: SfStats,
    flush: u64,
    nf: FlowSums,
    seq_errors: Option<u64>,
    tally: FlowSums,
    wait: Duration,
    cmp: Compare,
    queries: Vec<QueryRow>,
    nf_disk: u64,
}

struct PeerResult {
    sf_version: String,
    nf_version: String,
    alone: AloneRun,
    full: BothRun,
    paced: BothRun,
}

/// `program`'s version (the token after "version" in its help output).
fn version_of(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            let lower = s.to_ascii_lowercase();
            let at = lower.find("version")?;
            let v = s[at + 7..]
                .trim_start_matches([':', ' '])
                .split_whitespace()
                .next()?
                .trim_end_matches('.')
                .to_owned();
            Some(format!("{program} {v}"))
        })
        .unwrap_or_else(|| format!("{program} (version unknown)"))
}

/// nfcapd's "Sequence Errors" (export datagrams it missed), from its log.
fn nfcapd_seq_errors(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("nfcapd.err")).ok()?
        + &std::fs::read_to_string(dir.join("nfcapd.log")).unwrap_or_default();
    let at = text.rfind("Sequence Errors:")?;
    text[at + "Sequence Errors:".len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The traffic of the paced run: slow enough that neither capture drops.
fn paced_traffic(a: &FlowsArgs) -> Traffic {
    Traffic {
        udp_rate: Some(a.paced_udp_pps),
        tcp_rate: (a.paced_tcp_mbit > 0).then_some(a.paced_tcp_mbit * 125_000),
        tcp: !a.no_tcp && a.paced_tcp_mbit > 0,
        ..blast_traffic(a)
    }
}

async fn part_peer(a: &FlowsArgs, lab: &Lab, work: &Path) -> anyhow::Result<PeerResult> {
    println!(
        "\n== 5. softflowd + nfdump on the same traffic (load average {}) ==",
        loadavg()
    );
    let addrs = lab.addrs();
    // Run A: softflowd alone.
    eprintln!("softflowd alone: {} s at full speed ...", a.seconds);
    let mut sess = Session::start(a, lab, &work.join("peer-alone"), false, true).await?;
    let alone = async {
        let b = blast(lab, &blast_traffic(a), sess.pids()).await?;
        let peer = sess.peer.as_mut().context("no softflowd")?;
        let (ad, ctl) = (addrs.clone(), peer.ctl.clone());
        let (stats, flush) = tokio::task::spawn_blocking(move || flush_softflowd(&ad, &ctl))
            .await
            .context("flushing softflowd panicked")??;
        peer.finish().await?;
        let dir = peer.nf_dir.clone();
        let (nf, _) = tokio::task::spawn_blocking(move || nfdump_flows(&dir, None))
            .await
            .context("nfdump panicked")??;
        Ok::<_, anyhow::Error>(AloneRun {
            blast: b,
            stats,
            flush,
            nf,
            seq_errors: nfcapd_seq_errors(&peer.dir),
        })
    }
    .await;
    sess.stop().await;
    let alone = alone?;

    let mut runs = Vec::new();
    for (name, traffic, queries) in [
        ("peer-full", blast_traffic(a), false),
        ("peer-paced", paced_traffic(a), true),
    ] {
        eprintln!(
            "softflowd alongside the agent ({name}): {} s ...",
            a.seconds
        );
        let mut sess = Session::start(a, lab, &work.join(name), true, true).await?;
        let r = peer_both(a, lab, &mut sess, &traffic, queries).await;
        sess.stop().await;
        runs.push(r?);
    }
    let paced = runs.pop().context("no paced run")?;
    let full = runs.pop().context("no full-speed run")?;
    Ok(PeerResult {
        sf_version: version_of("softflowd", "-h"),
        nf_version: version_of("nfdump", "-V"),
        alone,
        full,
        paced,
    })
}

async fn peer_both(
    a: &FlowsArgs,
    lab: &Lab,
    sess: &mut Session,
    traffic: &Traffic,
    queries: bool,
) -> anyhow::Result<BothRun> {
    let addrs = lab.addrs();
    let b = blast(lab, traffic, sess.pids()).await?;
    let peer = sess.peer.as_mut().context("no softflowd")?;
    let (ad, ctl) = (addrs.clone(), peer.ctl.clone());
    let (stats, flush) = tokio::task::spawn_blocking(move || flush_softflowd(&ad, &ctl))
        .await
        .context("flushing softflowd panicked")??;
    peer.finish().await?;
    let seq_errors = nfcapd_seq_errors(&peer.dir);
    let nf_dir = peer.nf_dir.clone();
    let dir = nf_dir.clone();
    let (nf, _) = tokio::task::spawn_blocking(move || nfdump_flows(&dir, None))
        .await
        .context("nfdump panicked")??;
    let (Some(srv), Some(agent), Some(receiver)) = (&sess.srv, &sess.agent, &sess.receiver) else {
        bail!("the session has no agent");
    };
    let (tally, wait, _) = await_records(
        srv,
        &agent.public_id,
        &addrs,
        b.counters.captured_packets(),
        a.flow_interval,
    )
    .await?;
    let cmp = compare(&tally.bench(&addrs), &nf.bench(&addrs));

    // Query time for one pair, and for one flow of it.
    let mut rows = Vec::new();
    if queries {
        let now = now_nanos();
        let range = [
            ("start", format_nanos(now - 3_600_000_000_000)),
            ("end", format_nanos(now + 60_000_000_000)),
        ];
        let flow_port = UDP_SRC_BASE + (a.udp_flows / 2) as u16;
        let pair_filter = format!("host {} and host {}", lab.host_ip, lab.ns_ip);
        let flow_filter = format!("{pair_filter} and port {flow_port}");
        let mut pair_params: Vec<(&str, String)> = range.to_vec();
        pair_params.push(("node", agent.node_id.clone()));
        pair_params.push(("peer", receiver.node_id.clone()));
        let mut flow_params = pair_params.clone();
        flow_params.push(("port", flow_port.to_string()));
        for (what, filter, params) in [
            ("one node pair, every flow", pair_filter, pair_params),
            (
                "one flow of the pair (port filter)",
                flow_filter,
                flow_params,
            ),
        ] {
            let mut nf_times = Vec::new();
            let mut nf_rows = 0;
            let mut tally_times = Vec::new();
            let mut tally_rows = 0;
            for _ in 0..5 {
                let (d, f) = (nf_dir.clone(), filter.clone());
                let (sums, took) = tokio::task::spawn_blocking(move || nfdump_flows(&d, Some(&f)))
                    .await
                    .context("nfdump panicked")??;
                nf_times.push(took);
                nf_rows = sums.records as usize;
                let (entries, _, took) = network_query(srv, &params).await?;
                tally_times.push(took);
                tally_rows = entries;
            }
            let (nm, nx) = median_max(nf_times);
            let (tm, tx) = median_max(tally_times);
            rows.push(QueryRow {
                what: what.into(),
                nf: (nm, nx, nf_rows),
                tally: (tm, tx, tally_rows),
            });
        }
    }
    Ok(BothRun {
        blast: b,
        stats,
        flush,
        nf,
        seq_errors,
        tally,
        wait,
        cmp,
        queries: rows,
        nf_disk: dir_bytes(&nf_dir),
    })
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b.max(1e-9))
}

impl BothRun {
    fn render(&self, addrs: &Addrs) -> String {
        let mut out = render_traffic(&self.blast);
        out.push('\n');
        let tt = self.tally.totals(addrs);
        let tn = self.nf.totals(addrs);
        let mut t = Table::new(&["", "Tally (agent)", "softflowd → nfcapd → nfdump"]);
        t.row(vec![
            "CPU over the run".into(),
            cpu_cell(self.blast.cpu.pct[0]),
            format!(
                "{} (nfcapd {})",
                cpu_cell(self.blast.cpu.pct[1]),
                cpu_cell(self.blast.cpu.pct[2])
            ),
        ]);
        t.row(vec![
            "packets lost before counting".into(),
            format!(
                "{} kernel drops (droppedPackets)",
                fmt_count(self.tally.dropped as f64)
            ),
            format!(
                "{} libpcap drops + {} interface drops; {} export datagrams lost (nfcapd sequence errors)",
                fmt_count(self.stats.dropped_pcap as f64),
                fmt_count(self.stats.dropped_if as f64),
                self.seq_errors
                    .map_or_else(|| "?".to_owned(), |n| fmt_count(n as f64))
            ),
        ]);
        t.row(vec![
            "benchmark flows (directed)".into(),
            fmt_count(tt.flows as f64),
            fmt_count(tn.flows as f64),
        ]);
        t.row(vec![
            "packets".into(),
            fmt_count(tt.pkts as f64),
            fmt_count(tn.pkts as f64),
        ]);
        t.row(vec![
            "IP bytes".into(),
            fmt_count(tt.bytes as f64),
            fmt_count(tn.bytes as f64),
        ]);
        t.row(vec![
            "records".into(),
            format!(
                "{} records, {} entries (one per connection and interval)",
                fmt_count(self.tally.records as f64),
                fmt_count(self.tally.entries as f64)
            ),
            format!(
                "{} NetFlow records (one per direction and 5-s maxlife slice)",
                fmt_count(self.nf.records as f64)
            ),
        ]);
        out.push_str(&t.render());
        out.push('\n');
        out.push_str(&render_accounting(
            "Tally records",
            &self.blast,
            &tt,
            Some(self.tally.dropped),
        ));
        let c = &self.cmp;
        let _ = writeln!(
            out,
            "\nper directed flow: {} in both, **{} with equal packets and bytes**, {} only in Tally, {} only in nfdump (Tally's records complete {:.1} s after the run; {} flush datagrams for softflowd)",
            fmt_count(c.both as f64),
            fmt_count(c.equal as f64),
            fmt_count(c.only_a as f64),
            fmt_count(c.only_b as f64),
            self.wait.as_secs_f64(),
            fmt_count(self.flush as f64)
        );
        for e in &c.examples {
            let _ = writeln!(out, "  {e}");
        }
        out
    }

    fn agrees(&self) -> bool {
        self.cmp.only_a == 0 && self.cmp.only_b == 0 && self.cmp.equal == self.cmp.both
    }
}

impl PeerResult {
    fn render(
        &self,
        a: &FlowsArgs,
        lab: &Lab,
        agent_alone: Option<&VethResult>,
        goals: &mut Vec<Goal>,
    ) -> String {
        let addrs = lab.addrs();
        let mut out = format!(
            "{}, {}: softflowd -i {} -n 127.0.0.1:PORT -v 9 -d -N -m 262144 -t maxlife=5 -t expint=1 -B 4194304 -> nfcapd -w DIR -p PORT -b 127.0.0.1 -B 4194304; nfdump -R DIR -q -N -o 'fmt:%pr %sa %sp %da %dp %pkt %byt' [filter]\n",
            self.sf_version, self.nf_version, lab.host_if
        );
        out.push_str("\n### Run A: softflowd alone, full speed\n\n");
        out.push_str(&render_traffic(&self.alone.blast));
        out.push('\n');
        let ta = self.alone.nf.totals(&addrs);
        out.push_str(&render_accounting(
            "softflowd → nfdump",
            &self.alone.blast,
            &ta,
            Some(self.alone.stats.dropped_pcap + self.alone.stats.dropped_if),
        ));
        let _ = writeln!(
            out,
            "\nsoftflowd: **{}**; libpcap received {}, dropped {} (interface drops {}); nfcapd sequence errors {}; {} flush datagrams after the run; {} NetFlow records.",
            cpu_cell(self.alone.blast.cpu.pct[1]),
            fmt_count(self.alone.stats.received as f64),
            fmt_count(self.alone.stats.dropped_pcap as f64),
            fmt_count(self.alone.stats.dropped_if as f64),
            self.alone
                .seq_errors
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            fmt_count(self.alone.flush as f64),
            fmt_count(self.alone.nf.records as f64),
        );
        out.push_str(
            "\n### Run B: softflowd alongside the agent, full speed (the same packets)\n\n",
        );
        out.push_str(&self.full.render(&addrs));
        let _ = writeln!(
            out,
            "\n### Run C: softflowd alongside the agent, paced (UDP {} datagrams/s{}) so that neither drops\n",
            fmt_count(a.paced_udp_pps as f64),
            if a.no_tcp || a.paced_tcp_mbit == 0 {
                String::new()
            } else {
                format!(", TCP {} Mbit/s", a.paced_tcp_mbit)
            }
        );
        out.push_str(&self.paced.render(&addrs));
        let mut q = Table::new(&[
            "query on run C's data (5 runs each)",
            "nfdump median / max",
            "rows",
            "Tally network API median / max",
            "entries",
        ]);
        for r in &self.paced.queries {
            q.row(vec![
                r.what.clone(),
                format!("{:.1} / {:.1} ms", ms(r.nf.0), ms(r.nf.1)),
                fmt_count(r.nf.2 as f64),
                format!("{:.1} / {:.1} ms", ms(r.tally.0), ms(r.tally.1)),
                fmt_count(r.tally.2 as f64),
            ]);
        }
        out.push('\n');
        out.push_str(&q.render());
        let _ = writeln!(
            out,
            "\nnfcapd wrote {} for {} NetFlow records ({:.0} bytes/record).",
            fmt_bytes(self.paced.nf_disk),
            fmt_count(self.paced.nf.records as f64),
            self.paced.nf_disk as f64 / self.paced.nf.records.max(1) as f64
        );
        let mut r = Table::new(&["ratio (softflowd / Tally)", "value"]);
        if let (Some(sf), Some(ag)) = (
            self.alone.blast.cpu.pct[1],
            agent_alone.and_then(|v| v.blast.cpu.pct[0]),
        ) {
            r.row(vec![
                "CPU, each alone at full speed (run A vs part 2)".into(),
                format!("{} ({sf:.0}% vs {ag:.0}%)", ratio(sf, ag)),
            ]);
        }
        for (name, run) in [
            ("full speed, side by side (run B)", &self.full),
            ("paced, side by side (run C)", &self.paced),
        ] {
            if let (Some(sf), Some(ag)) = (run.blast.cpu.pct[1], run.blast.cpu.pct[0]) {
                r.row(vec![
                    format!("CPU, {name}"),
                    format!("{} ({sf:.0}% vs {ag:.0}%)", ratio(sf, ag)),
                ]);
            }
            let (tt, tn) = (run.tally.totals(&addrs), run.nf.totals(&addrs));
            r.row(vec![
                format!("packets counted, {name}"),
                format!("{:.4}×", tn.pkts as f64 / tt.pkts.max(1) as f64),
            ]);
        }
        for qr in &self.paced.queries {
            r.row(vec![
                format!("query time, {} (run C)", qr.what),
                ratio(ms(qr.nf.0), ms(qr.tally.0)),
            ]);
        }
        out.push('\n');
        out.push_str(&r.render());
        let c = &self.paced.cmp;
        let (tt, tn) = (
            self.paced.tally.totals(&addrs),
            self.paced.nf.totals(&addrs),
        );
        goals.push(Goal {
            what: "Tally vs softflowd/nfdump, same packets, no drops (run C)".into(),
            goal: "counts agree".into(),
            measured: format!(
                "{} of {} directed flows equal; packets {} vs {}",
                fmt_count(c.equal as f64),
                fmt_count((c.both + c.only_a + c.only_b) as f64),
                fmt_count(tt.pkts as f64),
                fmt_count(tn.pkts as f64)
            ),
            met: Some(self.paced.agrees()),
        });
        if let (Some(sf), Some(ag)) = (self.full.blast.cpu.pct[1], self.full.blast.cpu.pct[0]) {
            goals.push(Goal {
                what: "capture CPU, softflowd / Tally (run B)".into(),
                goal: "report".into(),
                measured: format!("{} ({sf:.0}% vs {ag:.0}%)", ratio(sf, ag)),
                met: None,
            });
        }
        for qr in &self.paced.queries {
            goals.push(Goal {
                what: format!("query time nfdump / Tally: {}", qr.what),
                goal: "report".into(),
                measured: format!(
                    "{} ({:.1} vs {:.1} ms)",
                    ratio(ms(qr.nf.0), ms(qr.tally.0)),
                    ms(qr.nf.0),
                    ms(qr.tally.0)
                ),
                met: None,
            });
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Part 3: server ingest of flow records
// ---------------------------------------------------------------------------

/// Services the generated flows reach: (protocol, port).
const SERVICES: [(u8, u16); 6] = [(6, 22), (6, 443), (6, 5432), (6, 6379), (6, 9090), (17, 53)];
/// Interval of the generated records (Tailscale's).
pub(crate) const INTERVAL_NS: i64 = 5_000_000_000;

/// A generated node.
pub(crate) struct GenNode {
    pub(crate) reg: Registered,
    pub(crate) addr: Ipv4Addr,
    pub(crate) busy: bool,
    pub(crate) peers: Vec<usize>,
    pub(crate) proc_id: u32,
    pub(crate) seq: u64,
}

pub(crate) fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        100,
        64 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250) as u8 + 1,
    )
}

/// The first this many of `n` generated nodes are busy servers.
pub(crate) fn busy_nodes(n: usize) -> usize {
    (n / 100).max(1)
}

/// The generated tailnet over registered nodes (node `i` has address
/// [`node_addr`]`(i)`): 1% busy servers (100-1,000 entries a record, any
/// peers); the rest talk to 3-8 peers, mostly the first 5% (servers).
pub(crate) fn gen_nodes(regs: Vec<Registered>, seed: u64) -> Vec<GenNode> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = regs.len();
    let servers = (n / 20).max(1);
    let busy = busy_nodes(n);
    let mut nodes: Vec<GenNode> = regs
        .into_iter()
        .enumerate()
        .map(|(i, reg)| GenNode {
            reg,
            addr: node_addr(i),
            busy: i < busy,
            peers: Vec::new(),
            proc_id: rng.random(),
            seq: 0,
        })
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let k = rng.random_range(3..=8usize);
        while node.peers.len() < k {
            let p = if rng.random_bool(0.7) {
                rng.random_range(0..servers)
            } else {
                rng.random_range(0..n)
            };
            if p != i && !node.peers.contains(&p) {
                node.peers.push(p);
            }
        }
    }
    nodes
}

/// One pre-built request.
pub(crate) struct IngestReq {
    url: String,
    body: bytes::Bytes,
    orig_len: usize,
    zstd: bool,
    records: u64,
    entries: u64,
    pkts: u64,
}

impl IngestReq {
    /// Flow records in the request.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }
}

/// One Tailscale-shaped record of node `i` for the interval at `start`:
/// `(record, entries, tx + rx packets)`.
fn gen_record(
    rng: &mut SmallRng,
    nodes: &mut [GenNode],
    i: usize,
    t: usize,
    start: i64,
) -> (Value, u64, u64) {
    let n = nodes.len();
    let count = if nodes[i].busy {
        rng.random_range(100..=1000)
    } else {
        rng.random_range(1..=6)
    };
    let me = nodes[i].addr;
    let mut entries = Vec::with_capacity(count);
    let mut pkts = 0u64;
    for j in 0..count {
        let p = if nodes[i].busy {
            let mut p = rng.random_range(0..n);
            if p == i {
                p = (p + 1) % n;
            }
            p
        } else {
            nodes[i].peers[rng.random_range(0..nodes[i].peers.len())]
        };
        let (proto, port) = SERVICES[rng.random_range(0..SERVICES.len())];
        // Connections keep their ephemeral port for a minute.
        let eph = 32768 + ((i * 7919 + j * 104_729 + (t / 12) * 31) % 28000) as u16;
        let tx_pkts: u64 = rng.random_range(1..=200);
        let tx_bytes = tx_pkts * rng.random_range(52..=1400u64);
        let rx_pkts: u64 = if proto == 17 && rng.random_bool(0.3) {
            0
        } else {
            rng.random_range(1..=200)
        };
        let rx_bytes = rx_pkts * rng.random_range(52..=1400u64);
        pkts += tx_pkts + rx_pkts;
        let mut e = serde_json::Map::new();
        e.insert("proto".into(), json!(proto));
        e.insert("src".into(), json!(format!("{me}:{eph}")));
        e.insert("dst".into(), json!(format!("{}:{port}", nodes[p].addr)));
        e.insert("txPkts".into(), json!(tx_pkts));
        e.insert("txBytes".into(), json!(tx_bytes));
        if rx_pkts > 0 {
            e.insert("rxPkts".into(), json!(rx_pkts));
            e.insert("rxBytes".into(), json!(rx_bytes));
        }
        entries.push(Value::Object(e));
    }
    nodes[i].seq += 1;
    let end = start + INTERVAL_NS;
    let rec = json!({
        "nodeId": nodes[i].reg.node_id,
        "start": format_nanos(start),
        "end": format_nanos(end),
        "virtualTraffic": entries,
        "logtail": {
            "client_time": format_nanos(end + 200_000_000),
            "proc_id": nodes[i].proc_id,
            "proc_seq": nodes[i].seq,
        },
    });
    (rec, count as u64, pkts)
}

/// Largest request body, as the agent's uploader batches (256 KiB of JSON).
const MAX_BATCH_BYTES: usize = 256 << 10;

/// Every client's requests, built before the timed load: each node sends
/// up to `per_request` consecutive intervals per request (fewer when the
/// JSON would pass 256 KiB, as the agent's uploader does), nodes
/// round-robin over clients, intervals in order.
pub(crate) fn gen_requests(
    nodes: &mut [GenNode],
    base: &str,
    intervals: usize,
    per_request: usize,
    clients: usize,
    start: i64,
    seed: u64,
) -> anyhow::Result<(Vec<Vec<IngestReq>>, u64)> {
    /// A batch being filled: JSON array text, records, entries, packets.
    struct Batch {
        json: Vec<u8>,
        records: u64,
        entries: u64,
        pkts: u64,
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out: Vec<Vec<IngestReq>> = (0..clients).map(|_| Vec::new()).collect();
    let mut json_bytes = 0u64;
    let mut t = 0;
    while t < intervals {
        let k = per_request.min(intervals - t);
        for i in 0..nodes.len() {
            let url = format!("{base}/c/tailtraffic/{}", nodes[i].reg.private);
            let mut batches: Vec<Batch> = Vec::new();
            for dt in 0..k {
                let at = start + (t + dt) as i64 * INTERVAL_NS;
                let (r, e, p) = gen_record(&mut rng, nodes, i, t + dt, at);
                let r = serde_json::to_vec(&r).context("encoding a record")?;
                let fits = batches
                    .last()
                    .is_some_and(|b| b.json.len() + r.len() + 2 <= MAX_BATCH_BYTES);
                if !fits {
                    batches.push(Batch {
                        json: vec![b'['],
                        records: 0,
                        entries: 0,
                        pkts: 0,
                    });
                }
                let b = batches.last_mut().context("no batch")?;
                if b.records > 0 {
                    b.json.push(b',');
                }
                b.json.extend_from_slice(&r);
                b.records += 1;
                b.entries += e;
                b.pkts += p;
            }
            for mut b in batches {
                b.json.push(b']');
                json_bytes += b.json.len() as u64;
                let z = zstd::bulk::compress(&b.json, 3).context("zstd failed")?;
                let orig_len = b.json.len();
                let (body, zstd) = if z.len() < orig_len {
                    (z, true)
                } else {
                    (b.json, false)
                };
                out[i % clients].push(IngestReq {
                    url: url.clone(),
                    body: bytes::Bytes::from(body),
                    orig_len,
                    zstd,
                    records: b.records,
                    entries: b.entries,
                    pkts: b.pkts,
                });
            }
        }
        t += k;
    }
    Ok((out, json_bytes))
}

/// What one client saw.
#[derive(Default)]
pub(crate) struct IngestStats {
    pub(crate) requests: u64,
    pub(crate) records: u64,
    pub(crate) entries: u64,
    pub(crate) pkts: u64,
    pub(crate) wire_bytes: u64,
    pub(crate) lat_us: Vec<u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) transport_errors: u64,
    pub(crate) gave_up: u64,
    pub(crate) first_error: Option<String>,
}

impl IngestStats {
    pub(crate) fn merge(&mut self, o: IngestStats) {
        self.requests += o.requests;
        self.records += o.records;
        self.entries += o.entries;
        self.pkts += o.pkts;
        self.wire_bytes += o.wire_bytes;
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.transport_errors += o.transport_errors;
        self.gave_up += o.gave_up;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Sends every client's requests, each client on a task and a connection
/// of its own; returns what they saw together.
pub(crate) async fn send_all(reqs: Vec<Vec<IngestReq>>) -> anyhow::Result<IngestStats> {
    let mut tasks = Vec::new();
    for list in reqs {
        let http = http_client(Duration::from_secs(120))?;
        tasks.push(tokio::spawn(ingest_client(http, list)));
    }
    let mut stats = IngestStats::default();
    for task in tasks {
        stats.merge(task.await.context("an upload client panicked")?);
    }
    Ok(stats)
}

/// Sends one client's requests in order, one at a time (see [`send_one`]).
pub(crate) async fn ingest_client(http: reqwest::Client, reqs: Vec<IngestReq>) -> IngestStats {
    let mut st = IngestStats::default();
    for r in reqs {
        send_one(&http, &r, &mut st).await;
    }
    st
}

/// Sends one request and counts what happened in `st`; 429 and 503 are
/// retried after their Retry-After (at most 1 s here), 30 times at most,
/// transport errors 5 times.
pub(crate) async fn send_one(http: &reqwest::Client, r: &IngestReq, st: &mut IngestStats) {
    let mut tries = 0;
    loop {
        tries += 1;
        let t0 = Instant::now();
        let mut req = http
            .post(&r.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r.body.clone());
        if r.zstd {
            req = req
                .header(reqwest::header::CONTENT_ENCODING, "zstd")
                .header("Orig-Content-Length", r.orig_len);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                st.transport_errors += 1;
                st.first_error.get_or_insert_with(|| format!("{e:#}"));
                if tries >= 5 {
                    st.gave_up += 1;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = resp.status();
        let retry = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.text().await.unwrap_or_default();
        st.wire_bytes += r.body.len() as u64;
        if status == reqwest::StatusCode::OK {
            st.requests += 1;
            st.records += r.records;
            st.entries += r.entries;
            st.pkts += r.pkts;
            st.lat_us.push(t0.elapsed().as_micros() as u64);
            return;
        }
        *st.statuses.entry(status.as_u16()).or_default() += 1;
        st.first_error.get_or_insert_with(|| {
            format!("{status}: {}", body.chars().take(300).collect::<String>())
        });
        let again = status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::SERVICE_UNAVAILABLE;
        if !again || tries >= 30 {
            st.gave_up += 1;
            return;
        }
        let wait = retry.map_or(100, |s| (s * 1000).min(1000));
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

struct IngestResult {
    nodes: usize,
    busy: usize,
    clients: usize,
    per_request: usize,
    register_secs: f64,
    generated_records: u64,
    generated_entries: u64,
    json_bytes: u64,
    gen_secs: f64,
    stats: IngestStats,
    elapsed: Duration,
    cpu: CpuUse,
    index_lag: Duration,
    indexed: bool,
    graph_pkts: u64,
    pair: Option<(u64, u64, f64, usize)>,
}

async fn part_ingest(a: &FlowsArgs, work: &Path) -> anyhow::Result<IngestResult> {
    println!(
        "\n== 3. Server ingest of flow records (load average {}) ==",
        loadavg()
    );
    let srv = Srv::start(&work.join("ingest"), 30).await?;
    let r = ingest_inner(a, &srv).await;
    if let Err(e) = srv.stop().await {
        eprintln!("stopping the server: {e:#}");
    }
    r
}

async fn ingest_inner(a: &FlowsArgs, srv: &Srv) -> anyhow::Result<IngestResult> {
    let auth = setup_tailnet(srv).await?;
    eprintln!("registering {} nodes ...", a.ingest_nodes);
    let t = Instant::now();
    let mut regs: Vec<Option<Registered>> = (0..a.ingest_nodes).map(|_| None).collect();
    {
        use futures_util::StreamExt;
        let mut done = futures_util::stream::iter(0..a.ingest_nodes)
            .map(|i| {
                let auth = auth.clone();
                async move {
                    let r = register_node(
                        srv,
                        &srv.http,
                        &auth,
                        &format!("bench-node-{i}"),
                        &[node_addr(i).to_string()],
                    )
                    .await;
                    (i, r)
                }
            })
            .buffer_unordered(8);
        while let Some((i, r)) = done.next().await {
            regs[i] = Some(r?);
        }
    }
    let register_secs = t.elapsed().as_secs_f64();
    let regs: Vec<Registered> = regs.into_iter().flatten().collect();
    ensure!(regs.len() == a.ingest_nodes, "not every node registered");

    let n = regs.len();
    let busy = busy_nodes(n);
    let mut nodes = gen_nodes(regs, a.seed);
    let per_request = a.records_per_request;
    let intervals = a
        .ingest_records
        .div_ceil(n)
        .max(1)
        .next_multiple_of(per_request);
    let now = now_nanos();
    let start = (now - intervals as i64 * INTERVAL_NS) / INTERVAL_NS * INTERVAL_NS;
    eprintln!(
        "generating {} intervals x {n} nodes of records ({per_request} per request) ...",
        intervals
    );
    let t = Instant::now();
    let (base, clients, seed) = (srv.base.clone(), a.ingest_clients, a.seed);
    let (reqs, json_bytes, nodes) = tokio::task::spawn_blocking(move || {
        let r = gen_requests(
            &mut nodes,
            &base,
            intervals,
            per_request,
            clients,
            start,
            seed,
        );
        r.map(|(q, j)| (q, j, nodes))
    })
    .await
    .context("generating records panicked")??;
    let gen_secs = t.elapsed().as_secs_f64();
    let generated_records: u64 = reqs.iter().flatten().map(|r| r.records).sum();
    let generated_entries: u64 = reqs.iter().flatten().map(|r| r.entries).sum();
    eprintln!(
        "sending {} records ({} entries) from {clients} clients ...",
        fmt_count(generated_records as f64),
        fmt_count(generated_entries as f64)
    );

    let watch = CpuWatch::start(&[Some(std::process::id())]);
    let t = Instant::now();
    let mut stats = send_all(reqs).await?;
    let elapsed = t.elapsed();
    let cpu = watch.finish();
    stats.lat_us.sort_unstable();

    // Until the network API answers without "behind": the indexer has read
    // every acknowledged record.
    let range = [
        ("start", format_nanos(start - 1_000_000_000)),
        (
            "end",
            format_nanos(start + intervals as i64 * INTERVAL_NS + 1_000_000_000),
        ),
    ];
    let t = Instant::now();
    let mut indexed = false;
    while t.elapsed() < Duration::from_secs(600) {
        let mut q: Vec<(&str, String)> = range.to_vec();
        q.push(("limit", "1".into()));
        let v = call(
            srv.get("/api/v2/tailnet/-/logging/network").query(&q),
            "querying the network flow log",
        )
        .await?;
        if v.get("behind").is_none() {
            indexed = true;
            break;
        }
    }
    let index_lag = t.elapsed();

    // Every acknowledged packet, through the graph API.
    let secs = (intervals as i64 * INTERVAL_NS + 2_000_000_000) / 1_000_000_000 + 1;
    let mut q: Vec<(&str, String)> = range.to_vec();
    q.push(("bucket", format!("{secs}s")));
    let g = call(
        srv.get("/api/v2/tailnet/-/logging/network/graph").query(&q),
        "reading the traffic graph",
    )
    .await?;
    let mut graph_pkts = 0u64;
    for b in g["buckets"].as_array().into_iter().flatten() {
        for e in b["edges"].as_array().into_iter().flatten() {
            graph_pkts += e["txPkts"].as_u64().unwrap_or(0) + e["rxPkts"].as_u64().unwrap_or(0);
        }
    }

    // One node pair over the whole range through the API (every page).
    let mut times = Vec::new();
    let mut hits = 0usize;
    let mut prng = SmallRng::seed_from_u64(a.seed ^ 0x5eed);
    for _ in 0..50 {
        let i = prng.random_range(busy..n);
        let p = nodes[i].peers[prng.random_range(0..nodes[i].peers.len())];
        let mut q: Vec<(&str, String)> = range.to_vec();
        q.push(("node", nodes[i].reg.node_id.clone()));
        q.push(("peer", nodes[p].reg.node_id.clone()));
        let (entries, _, took) = network_query(srv, &q).await?;
        times.push(took.as_micros() as u64);
        hits += entries;
    }
    times.sort_unstable();
    let pair = Some((
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        hits as f64 / times.len().max(1) as f64,
        times.len(),
    ));
    Ok(IngestResult {
        nodes: n,
        busy,
        clients,
        per_request,
        register_secs,
        generated_records,
        generated_entries,
        json_bytes,
        gen_secs,
        stats,
        elapsed,
        cpu,
        index_lag,
        indexed,
        graph_pkts,
        pair,
    })
}

impl IngestResult {
    fn render(&self, a: &FlowsArgs) -> String {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut out = format!(
            "{} nodes registered in {:.1} s ({} busy with 100-1,000 entries a record, the rest 1-6 entries to 3-8 peers; registered agents count as adopted into tailtraffic); {} records with {} entries generated in {:.1} s ({:.0} bytes of JSON per entry), up to {} record(s) per request (at most 256 KiB of JSON), zstd level 3 when smaller, {} clients.\n\n",
            fmt_count(self.nodes as f64),
            self.register_secs,
            self.busy,
            fmt_count(self.generated_records as f64),
            fmt_count(self.generated_entries as f64),
            self.gen_secs,
            self.json_bytes as f64 / self.generated_entries.max(1) as f64,
            self.per_request,
            self.clients
        );
        let mut t = Table::new(&["ingest", "result"]);
        t.row(vec![
            "records acknowledged (200)".into(),
            format!(
                "{} in {:.2} s = **{} records/s**",
                fmt_count(s.records as f64),
                secs,
                rate(s.records, secs)
            ),
        ]);
        t.row(vec![
            "entries acknowledged".into(),
            format!(
                "{} = **{} entries/s**",
                fmt_count(s.entries as f64),
                rate(s.entries, secs)
            ),
        ]);
        t.row(vec![
            "requests: per second / p50 / p99 / max latency".into(),
            format!(
                "{} / {:.1} / {:.1} / {:.1} ms",
                rate(s.requests, secs),
                percentile(&s.lat_us, 50.0) as f64 / 1000.0,
                percentile(&s.lat_us, 99.0) as f64 / 1000.0,
                s.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
            ),
        ]);
        t.row(vec![
            "other answers / transport errors / given up".into(),
            format!(
                "{} / {} / {}{}",
                if s.statuses.is_empty() {
                    "none".to_owned()
                } else {
                    s.statuses
                        .iter()
                        .map(|(k, v)| format!("{v}× {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                s.transport_errors,
                s.gave_up,
                s.first_error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" (first: {e})"))
            ),
        ]);
        t.row(vec![
            "CPU during the load: this process (server and clients) / machine".into(),
            format!(
                "{} / {:.0}%",
                cpu_cell(self.cpu.pct[0]),
                self.cpu.machine_busy
            ),
        ]);
        t.row(vec![
            "indexed: network API answers without \"behind\"".into(),
            format!(
                "{:.2} s after the last acknowledgement{}",
                self.index_lag.as_secs_f64(),
                if self.indexed { "" } else { " (GAVE UP)" }
            ),
        ]);
        t.row(vec![
            "indexing rate (entries / (load + lag))".into(),
            format!(
                "{} entries/s",
                fmt_count(s.entries as f64 / (secs + self.index_lag.as_secs_f64()))
            ),
        ]);
        t.row(vec![
            "packets in the graph API vs acknowledged".into(),
            format!(
                "{} vs {} ({})",
                fmt_count(self.graph_pkts as f64),
                fmt_count(s.pkts as f64),
                if self.graph_pkts == s.pkts {
                    "equal"
                } else {
                    "DIFFERENT"
                }
            ),
        ]);
        if let Some((p50, p99, mean, n)) = self.pair {
            t.row(vec![
                format!(
                    "network API, one node pair over the {} s of records ({n} queries, every page)",
                    (a.ingest_records.div_ceil(self.nodes.max(1))) * 5
                ),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, {:.0} entries each",
                    p50 as f64 / 1000.0,
                    p99 as f64 / 1000.0,
                    mean
                ),
            ]);
        }
        out.push_str(&t.render());
        out
    }
}

// ---------------------------------------------------------------------------
// Part 4: the flow store at scale
// ---------------------------------------------------------------------------

async fn part_store(
    a: &FlowsArgs,
    work: &Path,
) -> anyhow::Result<tally_bench::flowstore::BenchReport> {
    println!(
        "\n== 4. Flow store: {} nodes x {} h (load average {}) ==",
        a.store_nodes,
        a.store_hours,
        loadavg()
    );
    let mut cfg = tally_bench::flowstore::BenchConfig::standard(work.join("flowstore"));
    cfg.nodes = a.store_nodes;
    cfg.hours = a.store_hours;
    let dir = cfg.dir.clone();
    // The files in a cluster's bucket too, when an S3 server can run here.
    let moto = match crate::stream::find_program("moto_server", &[]) {
        Some(_) => Some(crate::stream::Moto::start(work).await?),
        None => {
            println!("(moto_server is not installed: the bucket phase is left out)");
            None
        }
    };
    let bucket = match &moto {
        Some(m) => Some(flow_bucket(m, work).await?),
        None => None,
    };
    let r = tokio::task::spawn_blocking(move || {
        tally_bench::flowstore::run_with(&cfg, bucket, &mut |l| eprintln!("{l}"))
    })
    .await
    .context("the flow store benchmark panicked")?
    .map_err(|e| anyhow!("the flow store benchmark failed: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(dir.with_extension("reader"));
    if let Some(mut m) = moto {
        m.stop().await;
    }
    Ok(r)
}

/// A bucket on `moto` as the servers use one (object store and cache),
/// once for the owner and once for a new server with an empty cache.
async fn flow_bucket(
    moto: &crate::stream::Moto,
    work: &Path,
) -> anyhow::Result<tally_bench::flowstore::BucketPair> {
    use tally_jetstream::bucket::ObjectBucket;
    use tally_server::consumers::flows::ArchiveBucket;
    moto.boto3("s3.create_bucket(Bucket='flow-bench')").await?;
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&moto.url)
            .with_allow_http(true)
            .with_bucket_name("flow-bench")
            .with_access_key_id("a")
            .with_secret_access_key("s")
            .with_region("us-east-1")
            .build()
            .context("configuring the bucket on moto")?,
    );
    let handle = tokio::runtime::Handle::current();
    let open = |cache: &str| {
        ObjectBucket::with_store(
            store.clone(),
            "moto",
            "bench",
            &work.join(cache),
            8 << 30,
            handle.clone(),
        )
        .map(|b| Arc::new(ArchiveBucket::new(b, None)) as Arc<dyn tally_flowstore::Bucket>)
    };
    Ok(tally_bench::flowstore::BucketPair {
        owner: open("owner-cache")?,
        reader: open("reader-cache")?,
        reader_cache: work.join("reader-cache"),
        label: format!("moto_server at {}", moto.url),
    })
}

fn render_store(r: &tally_bench::flowstore::BenchReport, goals: &mut Vec<Goal>) -> String {
    let mut out = format!("{r}\n\n");
    let mut t = Table::new(&["flow store", "result"]);
    t.row(vec![
        "records / entries".into(),
        format!(
            "{} / {}",
            fmt_count(r.records as f64),
            fmt_count(r.entries as f64)
        ),
    ]);
    t.row(vec![
        "ingest into open windows / with sealing".into(),
        format!(
            "{} / {} entries/s",
            fmt_count(r.insert_rate()),
            fmt_count(r.ingest_rate())
        ),
    ]);
    t.row(vec![
        "bytes on disk per entry".into(),
        format!(
            "**{:.2}** ({} in {} files)",
            r.bytes_per_entry(),
            fmt_bytes(r.disk_bytes),
            r.files
        ),
    ]);
    t.row(vec![
        format!("node pair, {} h, every page", r.hours),
        format!(
            "p50 {:.1} ms, **p99 {:.1} ms**, max {:.1} ms ({} queries, {:.0} entries each; first after reopening {:.1} ms)",
            ms(r.pair.p50),
            ms(r.pair.p99),
            ms(r.pair.max),
            r.pair.count,
            r.pair.mean_hits,
            ms(r.pair_cold)
        ),
    ]);
    out.push_str(&t.render());
    goals.push(Goal {
        what: format!("node-pair query, {} h, {} nodes", r.hours, r.nodes),
        goal: "< 200 ms".into(),
        measured: format!("p50 {:.1} ms, p99 {:.1} ms", ms(r.pair.p50), ms(r.pair.p99)),
        met: Some(ms(r.pair.p99) < GOAL_PAIR_MS),
    });
    goals.push(Goal {
        what: "bytes on disk per flow entry".into(),
        goal: "< 12".into(),
        measured: format!("{:.2}", r.bytes_per_entry()),
        met: Some(r.bytes_per_entry() < GOAL_BYTES_PER_ENTRY),
    });
    out
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// A Markdown table with padded columns.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Self {
            head: head.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    fn render(&self) -> String {
        let cols = self.head.len();
        let mut w = vec![3usize; cols];
        for r in std::iter::once(&self.head).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &[String]| {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let c = r.get(i).map_or("", String::as_str);
                    format!("{c}{}", " ".repeat(w[i] - c.chars().count()))
                })
                .collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.head);
        out.push_str(&format!(
            "|{}|\n",
            w.iter()
                .map(|n| "-".repeat(n + 2))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}
