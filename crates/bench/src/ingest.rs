//! `tally-bench ingest` (`tally bench ingest`): measures ingest throughput,
//! latency, server CPU and memory, and bytes on disk, with realistic
//! tailscaled-like log entries; optionally loads the same entries into a
//! throwaway PostgreSQL cluster for comparison (`--postgres`). The server is
//! the `tally` binary next to `tally-bench`, run as `tally server`.
//!
//! With `--log nats-r1|nats-r3|nats://...` the servers keep their log on
//! NATS JetStream (`--servers N` of them, clients spread over them, with a
//! `tally worker` and a PostgreSQL control database shared by all); the
//! nats-servers' CPU and memory are measured beside the servers'.
//! `--compare-logs` runs the embedded store and JetStream R1/R3 with one
//! and two servers under the same load and prints a table.
//!
//! Everything a client does before the timed loop (generating entries,
//! compressing batches, connecting) happens up front, so the timed loop only
//! sends pre-built request bodies: what is measured is the server.
//!
//! Layout of this file: arguments; [`ingest`]; the entry generator; load
//! accounting; the Tally run (server process, load, verification, disk); the
//! PostgreSQL run; comparison. Helpers the other benchmarks share (machine
//! facts, `/proc` sampling, the server process, PostgreSQL clusters,
//! formatting) are in `common.rs`.

use anyhow::{Context, bail, ensure};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_proto::{PrivateId, PublicId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::{
    CpuSampler, CpuWindow, Machine, MachineCpu, TallyServer, adopt, filesystem_of, fmt_bytes,
    fmt_count, http_client, pct_of, percentile, pg_psql, pg_sql, proc_cpu_ticks, proc_pss_bytes,
    proc_status_bytes, process_tree, start_pg, stop_pg, tally_exe, temp_dir_in,
};

/// Settings of `tally bench ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Concurrent clients (each one instance, one keep-alive connection).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of unmeasured load before the measurement starts.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Entries per request (about 200 bytes of JSON each).
    #[arg(long, default_value_t = 1000)]
    pub batch_entries: usize,
    /// Pre-built batches per client; when a client has sent them all it
    /// starts over as a new instance (a fresh private ID), so nothing is a
    /// duplicate.
    #[arg(long, default_value_t = 32)]
    pub pool_batches: usize,
    /// zstd level of the request bodies.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Collection to write to (must exist).
    #[arg(long, default_value = "tailnode")]
    pub collection: String,
    /// Seed of the entry generator (same seed, same lines; client_time
    /// follows the clock).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Benchmark a running server at this URL instead of starting one
    /// (server CPU, memory and disk are then not measured).
    #[arg(long)]
    pub server: Option<String>,
    /// Admin API key of the server given with --server (to adopt the
    /// benchmark's instances and to count what was stored).
    #[arg(long = "api-key", env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Parent directory of the temporary data directories (default: the
    /// system temporary directory); choose it to benchmark another disk.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the temporary data directories and print where they are.
    #[arg(long)]
    pub keep: bool,
    /// Also load the same entries into a throwaway PostgreSQL cluster
    /// (COPY FROM STDIN through psql, one session per client) and compare.
    #[arg(long)]
    pub postgres: bool,
    /// Run only the PostgreSQL side.
    #[arg(long)]
    pub postgres_only: bool,
    /// Directory of PostgreSQL's initdb, pg_ctl and psql (default: the
    /// newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// Extra PostgreSQL setting `name=value` (repeatable), e.g.
    /// `--pg-conf max_wal_size=4GB`; the default is an untuned cluster.
    #[arg(long = "pg-conf")]
    pub pg_conf: Vec<String>,
    /// Where the servers keep their log: `embedded` (files in the
    /// server's data directory); `nats-r1` or `nats-r3` (the benchmark
    /// starts one nats-server, or three routed into a cluster keeping 3
    /// replicas of each message, plus a throwaway PostgreSQL as the
    /// servers' shared --control-db); or `nats://host:4222[,host:4222...]`,
    /// a JetStream already running (see --log-replicas, --control-db).
    #[arg(long, value_name = "WHERE", default_value = "embedded", value_parser = LogTarget::parse)]
    pub log: LogTarget,
    /// `tally server` processes on the shared log, each with its own data
    /// directory; client i posts to server i mod N. Only 1 with `embedded`.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub servers: u16,
    /// With `--log nats://...`: replicas of the stream, should the servers
    /// create it (`tally server --log-replicas`); `nats-r3` means 3.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub log_replicas: u16,
    /// With `--log nats://...`: the servers' shared control database
    /// (`postgres://...`); default: a throwaway PostgreSQL cluster.
    #[arg(long, value_name = "URL")]
    pub control_db: Option<String>,
    /// On a shared log, do not start a `tally worker` beside the servers.
    /// By default one runs, so that the cluster does the work the embedded
    /// server does in its one process (reconciliation, detection, streams,
    /// the audit outbox).
    #[arg(long)]
    pub no_worker: bool,
    /// Run the comparison set, one configuration after the other with the
    /// same load: the embedded store, then nats-r1 with 1 and 2 servers and
    /// nats-r3 with 1 and 2 servers; prints each report and a table.
    #[arg(long, conflicts_with_all = ["log", "servers", "server", "postgres", "postgres_only"])]
    pub compare_logs: bool,
}

/// Where the servers under test keep their log (`--log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Files in the server's data directory.
    Embedded,
    /// NATS servers the benchmark starts: 1 (R1) or 3 routed (R3).
    StartNats {
        /// Servers started, and replicas of each message.
        replicas: u16,
    },
    /// A JetStream already running: `nats://host:4222[,...]`.
    Nats(String),
}

impl LogTarget {
    /// Parses `--log`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "nats-r1" => Ok(Self::StartNats { replicas: 1 }),
            "nats-r3" => Ok(Self::StartNats { replicas: 3 }),
            u if u.starts_with("nats://") && u.len() > "nats://".len() => Ok(Self::Nats(u.into())),
            _ => Err(format!(
                "expected embedded, nats-r1, nats-r3 or nats://host:4222[,host:4222...], got {s:?}"
            )),
        }
    }

    /// Whether the log is shared (JetStream).
    fn shared(&self) -> bool {
        !matches!(self, Self::Embedded)
    }

    /// How the report names it.
    fn label(&self, replicas: u16) -> String {
        match self {
            Self::Embedded => "embedded".into(),
            Self::StartNats { replicas } => format!("JetStream R{replicas}"),
            Self::Nats(u) => format!("JetStream R{replicas} at {u}"),
        }
    }
}

pub async fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(a.batch_entries >= 1, "--batch-entries must be at least 1");
    ensure!(a.pool_batches >= 1, "--pool-batches must be at least 1");
    ensure!(
        a.duration > 0.0 && a.warmup >= 0.0,
        "--duration must be positive and --warmup not negative"
    );
    ensure!(
        (1..=22).contains(&a.zstd_level),
        "--zstd-level must be 1 to 22"
    );
    ensure!(
        a.servers == 1 || a.log.shared(),
        "--servers {} needs a shared log (--log nats-r1, nats-r3 or nats://...): the embedded store belongs to one server",
        a.servers
    );
    ensure!(
        a.server.is_none() || !a.log.shared(),
        "--server measures a running server; --log {} starts servers: give one or the other",
        a.log.label(a.log_replicas)
    );
    crate::common::install_crypto();
    let machine = Machine::detect();
    println!("{}", machine.render());
    let idle = MachineCpu::sample();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = MachineCpu::sample().busy_pct_since(&idle);
    if busy > 25.0 {
        println!(
            "WARNING: the machine was already busy before the benchmark ({busy:.0}% of a core); results will be low"
        );
    }
    println!(
        "workload: {} clients x {} entries/request, {} s warm-up + {} s measured, zstd level {}, seed {}",
        a.clients, a.batch_entries, a.warmup, a.duration, a.zstd_level, a.seed
    );
    if a.compare_logs {
        return compare_logs(&a).await;
    }
    let tally = if a.postgres_only {
        None
    } else {
        let r = run_tally(&a).await?;
        println!("\n{}", r.render());
        Some(r)
    };
    let pg = if a.postgres || a.postgres_only {
        let r = run_postgres(&a).await?;
        println!("\n{}", r.render());
        Some(r)
    } else {
        None
    };
    if let (Some(t), Some(p)) = (&tally, &pg) {
        println!("\n{}", render_comparison(t, p));
    }
    let failed = tally.as_ref().is_some_and(|t| !t.verified_ok());
    if failed {
        bail!(
            "verification failed: the server stored a different number of entries than it acknowledged (see above)"
        );
    }
    Ok(())
}

/// `--compare-logs`: the embedded store, then JetStream R1 and R3 with one
/// and two servers, the same load each; a table at the end.
async fn compare_logs(a: &IngestArgs) -> anyhow::Result<()> {
    let set = [
        (LogTarget::Embedded, 1),
        (LogTarget::StartNats { replicas: 1 }, 1),
        (LogTarget::StartNats { replicas: 1 }, 2),
        (LogTarget::StartNats { replicas: 3 }, 1),
        (LogTarget::StartNats { replicas: 3 }, 2),
    ];
    let mut reports = Vec::new();
    for (log, servers) in set {
        let mut b = a.clone();
        b.log = log;
        b.servers = servers;
        b.compare_logs = false;
        let r = run_tally(&b).await?;
        println!("\n{}", r.render());
        reports.push(r);
        // Let the machine settle (page cache writeback, exited processes).
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    println!("\n{}", render_log_table(&reports));
    if reports.iter().any(|r| !r.verified_ok()) {
        bail!(
            "verification failed: a configuration stored a different number of entries than it acknowledged (see above)"
        );
    }
    Ok(())
}

/// The comparison table of `--compare-logs` (Markdown, as BENCHMARKS.md
/// holds it); the first report is the embedded peer.
fn render_log_table(reports: &[TallyReport]) -> String {
    let mut out = String::from(
        "== Logs compared (the same load) ==\n\n| log, servers | entries/s | MB/s | vs embedded | p50 | p99 | max | slow s | errors | tally CPU | NATS CPU | tally peak RSS | NATS peak RSS | NATS in / out per JSON byte | B/entry in log | entries per CPU-s (tally / all) | verified |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let base = reports.first().map_or(0.0, |r| r.summary.entries_per_sec());
    for r in reports {
        let s = &r.summary;
        let errors: u64 = s.stats.statuses.values().sum::<u64>() + s.stats.transport_errors;
        let slow = s
            .stats
            .per_second
            .values()
            .filter(|v| v.1 > 1_000_000)
            .count();
        let (tally_cpu, nats_cpu) = r.cpu_split();
        let tally_rss: u64 =
            GroupUse::sum(&r.servers).peak_rss + r.worker.as_ref().map_or(0, |w| w.peak_rss);
        let per_entry = match (r.jetstream, r.disk_per_entry()) {
            (Some((bytes, _)), _) => format!(
                "{:.0} (stream)",
                bytes as f64 / s.stats.acked_stored.max(1) as f64
            ),
            (None, Some(d)) => format!("{d:.1} (sealed)"),
            _ => "n/a".into(),
        };
        let json = s.mb_per_sec() * 1e6;
        let traffic = r.nats_traffic.map_or_else(
            || "—".into(),
            |t| {
                format!(
                    "{:.1} / {:.1}",
                    t.in_bytes / json.max(1.0),
                    t.out_bytes / json.max(1.0)
                )
            },
        );
        let per_core = r.per_core().map_or_else(
            || "n/a".into(),
            |(t, all)| format!("{} / {}", fmt_count(t), fmt_count(all)),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.2}x | {:.1} ms | {:.1} ms | {:.1} ms | {slow} | {errors} | {tally_cpu:.0} % | {} | {} | {} | {traffic} | {per_entry} | {per_core} | {} |",
            r.label,
            fmt_count(s.entries_per_sec()),
            s.mb_per_sec(),
            if base > 0.0 {
                s.entries_per_sec() / base
            } else {
                0.0
            },
            s.latency_ms(50.0),
            s.latency_ms(99.0),
            s.latency_ms(100.0),
            r.nats
                .as_ref()
                .map_or_else(|| "—".into(), |_| format!("{nats_cpu:.0} %")),
            fmt_bytes(tally_rss),
            r.nats
                .as_ref()
                .map_or_else(|| "—".into(), |n| fmt_bytes(n.peak_rss)),
            if r.verified_ok() { "yes" } else { "NO" },
        );
    }
    out.push_str("\ntally CPU: servers and worker; slow s: seconds with a request over 1 s; NATS in / out per JSON byte: bytes into and out of all nats-servers (clients and routes) per byte of JSON acknowledged; B/entry in log: one replica of the JetStream stream, or the embedded store once sealed\n");
    out
}

// ---------------------------------------------------------------------------
// Entry generator: tailscaled-like operational lines
// ---------------------------------------------------------------------------

const DERP_REGIONS: &[(u16, &str)] = &[
    (1, "nyc"),
    (2, "sfo"),
    (3, "sin"),
    (4, "fra"),
    (5, "syd"),
    (6, "blr"),
    (7, "tok"),
    (8, "lhr"),
    (9, "dfw"),
    (10, "sea"),
    (11, "sao"),
    (12, "ord"),
    (13, "den"),
    (14, "ams"),
    (16, "mia"),
    (17, "lax"),
    (18, "par"),
    (19, "mad"),
    (20, "hkg"),
    (21, "tor"),
    (22, "waw"),
    (24, "hnl"),
];

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A peer as tailscaled's logs show it.
struct Peer {
    /// Short node key, as in `[AbCdE]`.
    key: String,
    /// Short disco key, as in `d:0123456789abcdef`.
    disco: String,
    /// Tailnet address.
    ip: Ipv4Addr,
    /// Public endpoint.
    ep: (Ipv4Addr, u16),
    /// LAN endpoint.
    lan: (Ipv4Addr, u16),
}

/// One generated entry.
pub(crate) struct GenEntry {
    /// The entry's JSON object, as a client sends it.
    pub(crate) json: String,
    /// Its `logtail.client_time`.
    client_time: String,
}

/// Deterministic generator of one client's entries: its own peers, proc_id,
/// increasing proc_seq and client_time.
pub(crate) struct EntryGen {
    rng: SmallRng,
    proc_id: u32,
    seq: u64,
    time_ns: i64,
    me: Peer,
    user: String,
    tailnet: String,
    peers: Vec<Peer>,
    conn_gen: u32,
}

impl EntryGen {
    pub(crate) fn new(seed: u64, client: usize, start_ns: i64) -> Self {
        let mut rng = SmallRng::seed_from_u64(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (client as u64).wrapping_add(1),
        );
        let me = Self::peer(&mut rng);
        let n_peers = rng.random_range(8..60);
        let peers = (0..n_peers).map(|_| Self::peer(&mut rng)).collect();
        let user = format!(
            "{}@example{}.com",
            ["alice", "bob", "carol", "dave", "erin", "frank", "grace"][rng.random_range(0..7)],
            rng.random_range(1..100)
        );
        let tailnet = format!("tail{:05x}.ts.net", rng.random_range(0..0xFFFFFu32));
        Self {
            proc_id: rng.random(),
            seq: 0,
            time_ns: start_ns,
            me,
            user,
            tailnet,
            peers,
            conn_gen: rng.random_range(1..20),
            rng,
        }
    }

    fn peer(rng: &mut SmallRng) -> Peer {
        let key = (0..5)
            .map(|_| B64[rng.random_range(0..B64.len())] as char)
            .collect();
        let disco = format!("{:016x}", rng.random::<u64>());
        let ip = Ipv4Addr::new(
            100,
            rng.random_range(64..128),
            rng.random(),
            rng.random_range(1..255),
        );
        let ep = (
            Ipv4Addr::new(
                rng.random_range(1..224),
                rng.random(),
                rng.random(),
                rng.random_range(1..255),
            ),
            if rng.random_bool(0.5) {
                41641
            } else {
                rng.random_range(1024..65535)
            },
        );
        let lan = (
            Ipv4Addr::new(
                [10, 192, 172][rng.random_range(0..3)],
                rng.random_range(0..32),
                rng.random(),
                rng.random_range(1..255),
            ),
            41641,
        );
        Peer {
            key,
            disco,
            ip,
            ep,
            lan,
        }
    }

    /// A Go-style duration (`850µs`, `12.345ms`, `1.204s`) below `max_ms`.
    fn dur(&mut self, max_ms: u64) -> String {
        let us = self.rng.random_range(40..max_ms.max(1) * 1000);
        if us < 1000 {
            format!("{us}µs")
        } else if us < 1_000_000 {
            format!("{}.{:03}ms", us / 1000, us % 1000)
        } else {
            format!("{}.{:03}s", us / 1_000_000, (us / 1000) % 1000)
        }
    }

    fn txid(&mut self) -> String {
        format!("{:012x}", self.rng.random::<u64>() & 0xFFFF_FFFF_FFFF)
    }

    fn derp(&mut self) -> (u16, &'static str) {
        DERP_REGIONS[self.rng.random_range(0..DERP_REGIONS.len())]
    }

    /// The text of one line and its verbosity (`v`, 0 for none).
    fn line(&mut self) -> (String, u8) {
        let p = self.rng.random_range(0..self.peers.len());
        let q = self.rng.random_range(0..self.peers.len());
        let pick = self.rng.random_range(0..100u32);
        let (pk, disco, pip) = {
            let peer = &self.peers[p];
            (peer.key.clone(), peer.disco.clone(), peer.ip)
        };
        let (ep, lan) = (self.peers[q].ep, self.peers[q].lan);
        match pick {
            0..=13 => {
                let tx = self.txid();
                let mtu = [1280, 1360, 1420][self.rng.random_range(0..3)];
                (
                    format!(
                        "magicsock: disco: node [{pk}] d:{disco} now using {}:{} mtu={mtu} tx={tx}",
                        ep.0, ep.1
                    ),
                    0,
                )
            }
            14..=25 => {
                let what = [
                    "Sending keepalive packet",
                    "Receiving keepalive packet",
                    "Sending handshake initiation",
                    "Received handshake response",
                    "Sending handshake response",
                ][self.rng.random_range(0..5)];
                (format!("wg: [{pk}] - {what}"), 2)
            }
            26..=35 => {
                let sport = self.rng.random_range(32768..61000);
                let dport = [22, 80, 443, 53, 5432, 8080, 9100][self.rng.random_range(0..7)];
                let len = self.rng.random_range(40..1400);
                let me = self.me.ip;
                if self.rng.random_bool(0.7) {
                    (
                        format!("Accept: TCP{{{pip}:{sport} > {me}:{dport}}} {len} tcp ok"),
                        0,
                    )
                } else {
                    (
                        format!("Accept: UDP{{{pip}:{sport} > {me}:{dport}}} {len} ok"),
                        0,
                    )
                }
            }
            36..=43 => {
                let tx = self.txid();
                let lat = self.dur(180);
                (
                    format!(
                        "magicsock: disco: node [{pk}] d:{disco} got pong tx={tx} from {}:{} latency={lat} pong.src={}:{}",
                        ep.0, ep.1, self.me.ep.0, self.me.ep.1
                    ),
                    1,
                )
            }
            44..=49 => {
                let (r1, _) = self.derp();
                let (r2, _) = self.derp();
                let (r3, _) = self.derp();
                let (m1, m2, m3) = (
                    self.rng.random_range(3..40),
                    self.rng.random_range(20..120),
                    self.rng.random_range(60..300),
                );
                (
                    format!(
                        "netcheck: report: udp=true v6=false v6os=true mapvarydest=false portmap=? v4a={}:{} derp={r1} derpdist={r1}v4:{m1}ms,{r2}v4:{m2}ms,{r3}v4:{m3}ms",
                        self.me.ep.0, self.me.ep.1
                    ),
                    0,
                )
            }
            50..=54 => {
                let (r, name) = self.derp();
                (
                    format!("derphttp.Client.Recv: connecting to derp-{r} ({name})"),
                    0,
                )
            }
            55..=59 => {
                let (r, _) = self.derp();
                self.conn_gen += 1;
                (
                    format!("magicsock: derp-{r} connected; connGen={}", self.conn_gen),
                    0,
                )
            }
            60..=63 => (
                format!(
                    "magicsock: endpoints changed: {}:{} (stun), {}:{} (local)",
                    self.me.ep.0, self.me.ep.1, self.me.lan.0, self.me.lan.1
                ),
                0,
            ),
            64..=67 => {
                let n = self.peers.len();
                let active = self.rng.random_range(1..=n);
                (
                    format!(
                        "wgengine: Reconfig: configuring userspace WireGuard config (with {active}/{n} peers)"
                    ),
                    0,
                )
            }
            68..=70 => {
                let h: u16 = self.rng.random();
                (
                    format!(
                        "netmap: self: [{}] auth=machine-authorized u={} [{}/32 fd7a:115c:a1e0::{h:x}/128]",
                        self.me.key, self.user, self.me.ip
                    ),
                    0,
                )
            }
            71..=75 => {
                let tx = self.txid();
                (
                    format!(
                        "magicsock: disco: sent Ping to [{pk}] d:{disco} @ {}:{} tx={tx}",
                        lan.0, lan.1
                    ),
                    1,
                )
            }
            76..=79 => {
                let sport = self.rng.random_range(32768..61000);
                let dport = [22, 443, 3389, 8443][self.rng.random_range(0..4)];
                (
                    format!(
                        "open-conn-track: timeout opening (TCP {}:{sport} => {pip}:{dport}); no associated peer node",
                        self.me.ip
                    ),
                    0,
                )
            }
            80..=83 => (
                format!("wgengine: idle peer [{pk}] now active, reconfiguring WireGuard"),
                1,
            ),
            84..=86 => {
                let n = self.rng.random_range(1..12);
                (
                    format!("[RATELIMIT] format(\"Accept: %s\") ({n} dropped)"),
                    0,
                )
            }
            87..=89 => {
                let hosts = self.peers.len() * 2;
                (
                    format!(
                        "dns: Set: {{DefaultResolvers:[] Routes:{{}} SearchDomains:[{}] Hosts:{hosts}}}",
                        self.tailnet
                    ),
                    0,
                )
            }
            90..=91 => (
                format!(
                    "LinkChange: major, rebinding. New state: interfaces.State{{defaultRoute=eth0 ifs={{eth0:[{}/24]}} v4=true v6=false}}",
                    self.me.lan.0
                ),
                0,
            ),
            92..=95 => {
                let ago = self.dur(120_000);
                (
                    format!("magicsock: [{pk}] stopping Tx, last activity {ago} ago"),
                    1,
                )
            }
            _ => {
                let lat = self.dur(900);
                (
                    format!(
                        "control: mapRoutine: netmap received: state:synchronized peers={} took {lat}",
                        self.peers.len()
                    ),
                    0,
                )
            }
        }
    }

    /// The next entry: increasing proc_seq, client_time a few ms later.
    pub(crate) fn next_entry(&mut self) -> GenEntry {
        self.seq += 1;
        self.time_ns += self.rng.random_range(0..12_000_000);
        let client_time = tally_proto::timefmt::format_nanos(self.time_ns);
        let (text, v) = self.line();
        let mut json = String::with_capacity(text.len() + 128);
        let _ = write!(
            json,
            "{{\"logtail\":{{\"client_time\":\"{client_time}\",\"proc_id\":{},\"proc_seq\":{}}},\"text\":",
            self.proc_id, self.seq
        );
        json.push_str(&serde_json::Value::String(text).to_string());
        if v > 0 {
            let _ = write!(json, ",\"v\":{v}");
        }
        json.push('}');
        GenEntry { json, client_time }
    }
}

/// Batches by client number, as one generator thread made them.
type ClientPools<T> = Vec<(usize, Vec<T>)>;

/// Generates every client's batches on all cores; `build` turns one batch of
/// entries into what the client sends.
fn generate_pools<T: Send>(
    a: &IngestArgs,
    build: impl Fn(usize, &[GenEntry]) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<Vec<T>>> {
    let start_ns = tally_proto::timefmt::now_nanos();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(a.clients);
    let build = &build;
    let results: Vec<anyhow::Result<ClientPools<T>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<ClientPools<T>> {
                    let mut out = Vec::new();
                    for c in (t..a.clients).step_by(threads) {
                        let mut g = EntryGen::new(a.seed, c, start_ns);
                        let mut batches = Vec::with_capacity(a.pool_batches);
                        for _ in 0..a.pool_batches {
                            let entries: Vec<GenEntry> =
                                (0..a.batch_entries).map(|_| g.next_entry()).collect();
                            batches.push(build(c, &entries)?);
                        }
                        out.push((c, batches));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked")))
            })
            .collect()
    });
    let mut pools: Vec<Option<Vec<T>>> = (0..a.clients).map(|_| None).collect();
    for r in results {
        for (c, b) in r? {
            pools[c] = Some(b);
        }
    }
    pools
        .into_iter()
        .map(|p| p.context("a client's batches were not generated"))
        .collect()
}

// ---------------------------------------------------------------------------
// Load accounting shared by the Tally and PostgreSQL runs
// ---------------------------------------------------------------------------

/// When the measured window starts and ends.
#[derive(Debug, Clone, Copy)]
struct Window {
    warm_end: Instant,
    end: Instant,
}

impl Window {
    fn new(warmup: f64, duration: f64) -> Self {
        let start = Instant::now();
        let warm_end = start + Duration::from_secs_f64(warmup);
        Self {
            warm_end,
            end: warm_end + Duration::from_secs_f64(duration),
        }
    }

    /// True for a request that completed inside the measured window.
    fn counts(&self, done: Instant) -> bool {
        done >= self.warm_end && done <= self.end
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientStats {
    /// Successful requests completed inside the window.
    window_requests: u64,
    /// Entries of those requests.
    window_entries: u64,
    /// Uncompressed JSON bytes of those entries.
    window_raw_bytes: u64,
    /// Latency of those requests, microseconds.
    latencies_us: Vec<u64>,
    /// Non-success responses by status (whole run).
    statuses: BTreeMap<u16, u64>,
    /// Requests that failed without a response (whole run).
    transport_errors: u64,
    /// The first transport error.
    first_error: Option<String>,
    /// Successful requests (whole run, warm-up and tail included).
    ok_requests: u64,
    /// Entries sent in successful requests (whole run).
    ok_entries: u64,
    /// Raw JSON bytes of those entries.
    ok_raw_bytes: u64,
    /// Entries the server said it stored (`stored`).
    acked_stored: u64,
    /// Entries the server said were duplicates.
    acked_duplicates: u64,
    /// Times the client started over with a new instance.
    wraps: u64,
    /// Per second of the window: entries acknowledged, slowest request (µs).
    per_second: BTreeMap<u32, (u64, u64)>,
}

impl ClientStats {
    fn success(&mut self, w: &Window, t0: Instant, t1: Instant, entries: usize, raw: usize) {
        self.ok_requests += 1;
        self.ok_entries += entries as u64;
        self.ok_raw_bytes += raw as u64;
        if w.counts(t1) {
            self.window_requests += 1;
            self.window_entries += entries as u64;
            self.window_raw_bytes += raw as u64;
            let us = u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX);
            self.latencies_us.push(us);
            let second = u32::try_from((t1 - w.warm_end).as_secs()).unwrap_or(u32::MAX);
            let slot = self.per_second.entry(second).or_default();
            slot.0 += entries as u64;
            slot.1 = slot.1.max(us);
        }
    }

    fn merge(&mut self, o: ClientStats) {
        self.window_requests += o.window_requests;
        self.window_entries += o.window_entries;
        self.window_raw_bytes += o.window_raw_bytes;
        self.latencies_us.extend(o.latencies_us);
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.transport_errors += o.transport_errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.ok_requests += o.ok_requests;
        self.ok_entries += o.ok_entries;
        self.ok_raw_bytes += o.ok_raw_bytes;
        self.acked_stored += o.acked_stored;
        self.acked_duplicates += o.acked_duplicates;
        self.wraps += o.wraps;
        for (k, (n, max)) in o.per_second {
            let slot = self.per_second.entry(k).or_default();
            slot.0 += n;
            slot.1 = slot.1.max(max);
        }
    }
}

/// Throughput and latency of a run.
struct LoadSummary {
    seconds: f64,
    stats: ClientStats,
}

impl LoadSummary {
    fn entries_per_sec(&self) -> f64 {
        self.stats.window_entries as f64 / self.seconds
    }

    fn mb_per_sec(&self) -> f64 {
        self.stats.window_raw_bytes as f64 / self.seconds / 1e6
    }

    /// Latency percentile `p` of the window, in ms.
    fn latency_ms(&self, p: f64) -> f64 {
        let mut lat = self.stats.latencies_us.clone();
        lat.sort_unstable();
        percentile(&lat, p) as f64 / 1000.0
    }

    /// The window second by second: the spread of entries/s, the slowest
    /// request, and how many seconds saw a request over 1 s (stalls).
    fn per_second_line(&self) -> Option<String> {
        let full = self.seconds.floor() as u32;
        if full == 0 {
            return None;
        }
        let mut rates: Vec<u64> = (0..full)
            .map(|i| self.stats.per_second.get(&i).map_or(0, |v| v.0))
            .collect();
        rates.sort_unstable();
        let (worst_sec, worst) = self
            .stats
            .per_second
            .iter()
            .max_by_key(|(_, v)| v.1)
            .map_or((0, 0), |(k, v)| (*k, v.1));
        let slow = self
            .stats
            .per_second
            .values()
            .filter(|v| v.1 > 1_000_000)
            .count();
        Some(format!(
            "entries/s min {}, median {}, max {}; slowest request {:.1} ms (second {worst_sec}); seconds with a request over 1 s: {slow} of {full}",
            fmt_count(rates[0] as f64),
            fmt_count(rates[rates.len() / 2] as f64),
            fmt_count(rates[rates.len() - 1] as f64),
            worst as f64 / 1000.0
        ))
    }

    fn render(&self, out: &mut String) {
        let s = &self.stats;
        let mut lat = s.latencies_us.clone();
        lat.sort_unstable();
        let ms = |p: f64| percentile(&lat, p) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "  throughput:   {} entries/s, {:.1} MB/s of JSON, {:.1} requests/s ({} requests in {:.1} s)",
            fmt_count(self.entries_per_sec()),
            self.mb_per_sec(),
            s.window_requests as f64 / self.seconds,
            s.window_requests,
            self.seconds
        );
        let _ = writeln!(
            out,
            "  latency:      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(50.0),
            ms(90.0),
            ms(99.0),
            lat.last().copied().unwrap_or(0) as f64 / 1000.0
        );
        if let Some(line) = self.per_second_line() {
            let _ = writeln!(out, "  per second:   {line}");
        }
        if s.statuses.is_empty() && s.transport_errors == 0 {
            let _ = writeln!(out, "  errors:       none");
        } else {
            let by: Vec<String> = s
                .statuses
                .iter()
                .map(|(k, v)| format!("{v} x {k}"))
                .collect();
            let _ = writeln!(
                out,
                "  errors:       {} (non-success responses), {} transport errors{}",
                if by.is_empty() {
                    "none".to_owned()
                } else {
                    by.join(", ")
                },
                s.transport_errors,
                s.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Tally
// ---------------------------------------------------------------------------

/// One pre-built request.
struct TallyBatch {
    /// zstd-compressed JSON array.
    body: bytes::Bytes,
    /// Bytes of the JSON array before compression (`Orig-Content-Length`).
    orig_len: usize,
    /// Entries in the batch.
    entries: usize,
    /// Sum of the entries' JSON sizes.
    raw_bytes: usize,
}

impl TallyServer {
    async fn start(a: &IngestArgs) -> anyhow::Result<Self> {
        if let Some(url) = &a.server {
            let key = a.api_key.clone().context(
                "--server needs an admin API key (--api-key or TALLY_API_KEY) to adopt the benchmark's instances and count what was stored",
            )?;
            return Ok(Self {
                base: url.trim_end_matches('/').to_owned(),
                key,
                child: None,
                pid: None,
                data_dir: None,
                tmp: None,
            });
        }
        let exe = tally_exe()?;
        Self::spawn(&exe, a.work_dir.as_deref()).await
    }
}

/// Sizes of the store directory.
#[derive(Debug, Default, Clone)]
struct StoreDisk {
    sealed_files: usize,
    sealed_bytes: u64,
    sealed_entries: u64,
    wal_files: usize,
    wal_bytes: u64,
    wal_entries: u64,
    other_bytes: u64,
    allocated_bytes: u64,
}

impl StoreDisk {
    fn total(&self) -> u64 {
        self.sealed_bytes + self.wal_bytes + self.other_bytes
    }

    /// Measures `dir`; `end_seq` (one past the last stored position) gives
    /// the number of entries in the last segment.
    fn measure(dir: &Path, end_seq: u64) -> anyhow::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Self::default();
        let mut segs: Vec<(u64, bool, u64)> = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
            let md = e
                .metadata()
                .with_context(|| format!("cannot stat {}", e.path().display()))?;
            if !md.is_file() {
                continue;
            }
            out.allocated_bytes += md.blocks() * 512;
            let name = e.file_name().to_string_lossy().into_owned();
            match tally_store::segment::parse_name(&name) {
                Some((sealed, first)) => segs.push((first, sealed, md.len())),
                None => out.other_bytes += md.len(),
            }
        }
        segs.sort_unstable();
        for (i, (first, sealed, len)) in segs.iter().enumerate() {
            let next = segs.get(i + 1).map_or(end_seq, |s| s.0);
            let n = next.saturating_sub(*first);
            if *sealed {
                out.sealed_files += 1;
                out.sealed_bytes += len;
                out.sealed_entries += n;
            } else {
                out.wal_files += 1;
                out.wal_bytes += len;
                out.wal_entries += n;
            }
        }
        Ok(out)
    }

    fn render(&self, out: &mut String, label: &str, raw_per_entry: f64) {
        let entries = self.sealed_entries + self.wal_entries;
        let per = |b: u64, n: u64| if n == 0 { 0.0 } else { b as f64 / n as f64 };
        let _ = writeln!(
            out,
            "  disk ({label}): {} = {:.1} B/entry ({:.1}% of raw JSON); allocated {}",
            fmt_bytes(self.total()),
            per(self.total(), entries),
            pct_of(per(self.total(), entries), raw_per_entry),
            fmt_bytes(self.allocated_bytes)
        );
        let _ = writeln!(
            out,
            "      sealed: {} in {} segments, {} entries, {:.1} B/entry ({:.1}% of raw); WAL: {} in {} files, {} entries, {:.1} B/entry; other files {}",
            fmt_bytes(self.sealed_bytes),
            self.sealed_files,
            self.sealed_entries,
            per(self.sealed_bytes, self.sealed_entries),
            pct_of(per(self.sealed_bytes, self.sealed_entries), raw_per_entry),
            fmt_bytes(self.wal_bytes),
            self.wal_files,
            self.wal_entries,
            per(self.wal_bytes, self.wal_entries),
            fmt_bytes(self.other_bytes),
        );
    }
}

/// The outcome of the Tally run.
struct TallyReport {
    /// The configuration: where the log is, how many servers.
    label: String,
    summary: LoadSummary,
    /// The servers together.
    cpu: CpuWindow,
    /// The largest server's peak RSS and RSS at the end.
    peak_rss: Option<u64>,
    rss_end: Option<u64>,
    /// Each server.
    servers: Vec<GroupUse>,
    /// The worker beside the servers on a shared log.
    worker: Option<GroupUse>,
    /// The nats-servers the benchmark started, together.
    nats: Option<GroupUse>,
    /// The throwaway PostgreSQL of a shared log.
    control_db: Option<GroupUse>,
    /// The nats-servers' traffic over the window, per second.
    nats_traffic: Option<NatsTraffic>,
    /// The JetStream stream after the load: bytes and messages (one replica).
    jetstream: Option<(u64, u64)>,
    /// Seconds the count through the query API took.
    count_seconds: f64,
    /// Warnings the processes logged, and stops that failed.
    log_notes: Vec<String>,
    counted: Option<u64>,
    gen_seconds: f64,
    body_ratio: f64,
    raw_per_entry: f64,
    disk_at_stop: Option<StoreDisk>,
    disk_sealed: Option<StoreDisk>,
    seal_seconds: f64,
    stop_seconds: f64,
    filesystem: String,
    external: bool,
    /// The log is a NATS cluster the benchmark did not start.
    external_log: bool,
}

impl TallyReport {
    fn verified_ok(&self) -> bool {
        self.counted
            .is_none_or(|c| c == self.summary.stats.acked_stored)
    }

    /// CPU of the tally processes (servers and worker) and of the
    /// nats-servers, % of one core.
    fn cpu_split(&self) -> (f64, f64) {
        let tally =
            self.cpu.server_pct.unwrap_or(0.0) + self.worker.as_ref().map_or(0.0, |w| w.cpu_pct);
        (tally, self.nats.as_ref().map_or(0.0, |n| n.cpu_pct))
    }

    /// Entries per CPU-second of the tally processes and of everything
    /// under test (tally, nats-servers, the control database).
    fn per_core(&self) -> Option<(f64, f64)> {
        let (tally, nats) = self.cpu_split();
        let pg = self.control_db.as_ref().map_or(0.0, |g| g.cpu_pct);
        let eps = self.summary.entries_per_sec();
        (tally > 0.0).then(|| (eps / (tally / 100.0), eps / ((tally + nats + pg) / 100.0)))
    }

    fn per_core_line(&self) -> Option<String> {
        let (tally, all) = self.per_core()?;
        let (t, n) = self.cpu_split();
        let rest = if self.nats.is_some() {
            format!(
                ", {} per CPU-second of everything under test (NATS {n:.0} %)",
                fmt_count(all)
            )
        } else if self.external_log {
            " (the NATS servers are not this benchmark's: not measured)".to_owned()
        } else {
            String::new()
        };
        Some(format!(
            "{} entries per CPU-second of tally ({t:.0} % of a core){rest}",
            fmt_count(tally)
        ))
    }

    /// Bytes per entry after sealing (or at stop, when sealing was not measured).
    fn disk_per_entry(&self) -> Option<f64> {
        let d = self.disk_sealed.as_ref().or(self.disk_at_stop.as_ref())?;
        let n = d.sealed_entries + d.wal_entries;
        (n > 0).then(|| d.total() as f64 / n as f64)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let s = &self.summary.stats;
        let _ = writeln!(
            out,
            "== Tally, {}{} ==",
            self.label,
            if self.external {
                " (external server)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  prepared:     {:.1} s to generate and compress; {:.0} B of JSON per entry, request bodies compressed {:.1}x",
            self.gen_seconds, self.raw_per_entry, self.body_ratio
        );
        self.summary.render(&mut out);
        self.cpu.render(&mut out, "server");
        if !self.cpu.threads.is_empty() {
            let top: Vec<String> = self
                .cpu
                .threads
                .iter()
                .take(6)
                .map(|(n, p)| format!("{n} {p:.0}"))
                .collect();
            let _ = writeln!(
                out,
                "  server threads (% of one core, live threads): {}",
                top.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  server memory: peak RSS (VmHWM) {}, RSS at end of load {}{}",
            self.peak_rss.map_or_else(|| "n/a".to_owned(), fmt_bytes),
            self.rss_end.map_or_else(|| "n/a".to_owned(), fmt_bytes),
            if self.servers.len() > 1 {
                " (the largest server)"
            } else {
                ""
            }
        );
        if self.servers.len() > 1 {
            for (i, u) in self.servers.iter().enumerate() {
                let _ = writeln!(out, "  server {}:     {}", i + 1, u.render());
            }
        }
        if let Some(u) = &self.worker {
            let _ = writeln!(out, "  worker:       {}", u.render());
        }
        if let Some(u) = &self.nats {
            let _ = writeln!(
                out,
                "  nats-server:  {} ({} process(es) together)",
                u.render(),
                u.procs
            );
        }
        if let Some(t) = &self.nats_traffic {
            let ingest = self.summary.mb_per_sec() * 1e6;
            let _ = writeln!(
                out,
                "  NATS traffic: in {:.1} MB/s ({:.0} msgs/s), out {:.1} MB/s ({:.0} msgs/s), all servers and routes; {:.1}x in and {:.1}x out of the JSON acknowledged",
                t.in_bytes / 1e6,
                t.in_msgs,
                t.out_bytes / 1e6,
                t.out_msgs,
                t.in_bytes / ingest.max(1.0),
                t.out_bytes / ingest.max(1.0)
            );
        }
        if let Some(u) = &self.control_db {
            let _ = writeln!(
                out,
                "  control db:   PostgreSQL {} ({} processes)",
                u.render(),
                u.procs
            );
        }
        if let Some((bytes, msgs)) = self.jetstream {
            let stored = self.summary.stats.acked_stored.max(1);
            let _ = writeln!(
                out,
                "  JetStream:    stream TALLY holds {} in {} messages = {:.1} B/entry ({:.1}% of raw JSON) per replica",
                fmt_bytes(bytes),
                msgs,
                bytes as f64 / stored as f64,
                pct_of(bytes as f64 / stored as f64, self.raw_per_entry)
            );
        }
        if let Some(line) = self.per_core_line() {
            let _ = writeln!(out, "  per core:     {line}");
        }
        let _ = writeln!(
            out,
            "  acknowledged: {} requests, {} entries stored, {} duplicates, {} client restarts as new instances",
            s.ok_requests, s.acked_stored, s.acked_duplicates, s.wraps
        );
        match self.counted {
            Some(c) if c == s.acked_stored => {
                let _ = writeln!(
                    out,
                    "  verified:     the query API returns {c} entries = every acknowledged entry (counted in {:.1} s)",
                    self.count_seconds
                );
            }
            Some(c) => {
                let _ = writeln!(
                    out,
                    "  VERIFICATION FAILED: the query API returns {c} entries, {} were acknowledged",
                    s.acked_stored
                );
            }
            None => {
                let _ = writeln!(out, "  verified:     not checked");
            }
        }
        if self.disk_at_stop.is_none() && self.stop_seconds > 0.0 {
            let _ = writeln!(
                out,
                "  stopped:      the tally processes (SIGTERM) in {:.1} s",
                self.stop_seconds
            );
        }
        for n in &self.log_notes {
            let _ = writeln!(out, "  log:          {n}");
        }
        if let Some(d) = &self.disk_at_stop {
            let _ = writeln!(
                out,
                "  data on {}; server stopped (SIGTERM) in {:.1} s",
                self.filesystem, self.stop_seconds
            );
            d.render(&mut out, "as the server left it", self.raw_per_entry);
            if d.wal_bytes > 0 {
                let _ = writeln!(
                    out,
                    "      note: the server does not seal its active WAL segment at shutdown ({:.0}% of the bytes above are unsealed WAL); it seals by size (64 MiB) or age (5 min) while running",
                    pct_of(d.wal_bytes as f64, d.total() as f64)
                );
            }
        }
        if let Some(d) = &self.disk_sealed {
            d.render(
                &mut out,
                &format!(
                    "after sealing the active WAL offline, {:.1} s",
                    self.seal_seconds
                ),
                self.raw_per_entry,
            );
        }
        out.push_str(&self.render_goals());
        out
    }

    /// The project's goals: >= 500,000 entries/s (~100 MB/s) with fsynced
    /// acks, < 200 MiB RSS, stored size < 25% of the raw JSON.
    fn render_goals(&self) -> String {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut goals = Vec::new();
        let eps = self.summary.entries_per_sec();
        goals.push(format!(
            ">= 500,000 entries/s {} ({:.0}% of it)",
            verdict(eps >= 500_000.0),
            eps / 5_000.0
        ));
        let mbs = self.summary.mb_per_sec();
        goals.push(format!(
            ">= 100 MB/s {} ({:.0}%)",
            verdict(mbs >= 100.0),
            mbs
        ));
        if let Some(rss) = self.peak_rss {
            goals.push(format!(
                "< 200 MiB RSS {} ({})",
                verdict(rss < 200 << 20),
                fmt_bytes(rss)
            ));
        }
        if let Some(per) = self.disk_per_entry() {
            let pct = pct_of(per, self.raw_per_entry);
            goals.push(format!(
                "< 25% of raw on disk {} ({pct:.1}%)",
                verdict(pct < 25.0)
            ));
        }
        format!("  goals:        {}\n", goals.join("; "))
    }
}

async fn run_tally(a: &IngestArgs) -> anyhow::Result<TallyReport> {
    let t = Instant::now();
    eprintln!(
        "generating {} x {} batches of {} entries ...",
        a.clients, a.pool_batches, a.batch_entries
    );
    let level = a.zstd_level;
    let pools = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            generate_pools(&a, |_, entries| {
                let mut json = Vec::with_capacity(entries.iter().map(|e| e.json.len() + 1).sum());
                json.push(b'[');
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        json.push(b',');
                    }
                    json.extend_from_slice(e.json.as_bytes());
                }
                json.push(b']');
                ensure!(
                    json.len() <= tally_proto::logtail::MAX_BODY_BYTES,
                    "a batch of {} entries is {} bytes, over the server's {}-byte limit: use a smaller --batch-entries",
                    entries.len(),
                    json.len(),
                    tally_proto::logtail::MAX_BODY_BYTES
                );
                let body = zstd::bulk::compress(&json, level).context("zstd compression failed")?;
                Ok(TallyBatch {
                    body: bytes::Bytes::from(body),
                    orig_len: json.len(),
                    entries: entries.len(),
                    raw_bytes: entries.iter().map(|e| e.json.len()).sum(),
                })
            })
        })
        .await
        .context("generator panicked")??
    };
    let gen_seconds = t.elapsed().as_secs_f64();
    let (mut orig, mut comp, mut raw, mut n) = (0usize, 0usize, 0usize, 0usize);
    for b in pools.iter().flatten() {
        orig += b.orig_len;
        comp += b.body.len();
        raw += b.raw_bytes;
        n += b.entries;
    }
    let body_ratio = orig as f64 / comp.max(1) as f64;
    let raw_per_entry = raw as f64 / n.max(1) as f64;

    let mut dep = Deployment::start(a).await?;
    let http = http_client(Duration::from_secs(300))?;
    // Instances: each client starts over as a new instance when it has sent
    // its pool; enough generations for 2 M entries/s.
    let pool_entries = (a.pool_batches * a.batch_entries * a.clients) as f64;
    let generations = ((2e6 * (a.warmup + a.duration) / pool_entries).ceil() as usize + 1).max(2);
    let ids: Vec<Vec<PrivateId>> = (0..a.clients)
        .map(|_| (0..generations).map(|_| PrivateId::generate()).collect())
        .collect();
    let publics: Vec<PublicId> = ids.iter().flatten().map(PrivateId::public).collect();
    eprintln!(
        "adopting {} instances into \"{}\" ...",
        publics.len(),
        a.collection
    );
    adopt(&http, &dep.servers[0], &a.collection, &publics).await?;
    if dep.servers.len() > 1 {
        // The other servers learn of the adoption when their catalog
        // reloads from the control database (every 5 s); before that
        // their uploads would be unclaimed and capped.
        eprintln!("waiting 6 s for the other servers' catalogs to reload ...");
        tokio::time::sleep(Duration::from_secs(6)).await;
    }

    let pools: Vec<Arc<Vec<TallyBatch>>> = pools.into_iter().map(Arc::new).collect();
    let mut clients = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        clients.push(http_client(Duration::from_secs(120))?);
    }
    eprintln!(
        "load: {} clients over {} server(s) for {} s warm-up + {} s ...",
        a.clients,
        dep.servers.len(),
        a.warmup,
        a.duration
    );
    let window = Window::new(a.warmup, a.duration);
    let mut tasks = Vec::with_capacity(a.clients);
    for (c, (pool, client)) in pools.iter().zip(clients).enumerate() {
        let base = &dep.servers[c % dep.servers.len()].base;
        let urls: Vec<String> = ids[c]
            .iter()
            .map(|id| format!("{base}/c/{}/{}", a.collection, id.to_hex()))
            .collect();
        let pool = pool.clone();
        tasks.push(tokio::spawn(tally_client(client, urls, pool, window)));
    }
    let usage = sample_window(window, &dep).await;
    let mut stats = ClientStats::default();
    for t in tasks {
        stats.merge(t.await.context("a client task panicked")?);
    }
    let summary = LoadSummary {
        seconds: a.duration,
        stats,
    };
    for (name, s) in dep.processes_mut() {
        if let Some(Ok(Some(status))) = s.child.as_mut().map(|c| c.try_wait()) {
            bail!(
                "{name} exited during the benchmark ({status}); its log:\n{}",
                s.log_tail()
            );
        }
    }

    eprintln!("counting stored entries through the query API ...");
    // Only this run's instances when the server or the log may hold more.
    let instance_filter = (dep.servers[0].child.is_none() || matches!(a.log, LogTarget::Nats(_)))
        .then(|| publics.iter().map(PublicId::to_hex).collect::<Vec<_>>());
    let t_count = Instant::now();
    let counted = count_stored(
        &http,
        &dep.servers[0],
        &a.collection,
        instance_filter.as_deref(),
    )
    .await?;
    let count_seconds = t_count.elapsed().as_secs_f64();
    let jetstream = match &dep.nats {
        Some(c) => jetstream_stream(&http, c).await,
        None => None,
    };

    let mut report = TallyReport {
        label: format!("{} x{}", a.log.label(dep.replicas), dep.servers.len()),
        summary,
        cpu: usage.cpu,
        peak_rss: usage.servers.iter().map(|u| u.peak_rss).max(),
        rss_end: usage.servers.iter().map(|u| u.rss_end).max(),
        servers: usage.servers,
        worker: usage.worker,
        nats: usage.nats,
        control_db: usage.control_db,
        nats_traffic: usage.nats_traffic,
        jetstream,
        count_seconds,
        log_notes: Vec::new(),
        counted: Some(counted),
        gen_seconds,
        body_ratio,
        raw_per_entry,
        disk_at_stop: None,
        disk_sealed: None,
        seal_seconds: 0.0,
        stop_seconds: 0.0,
        filesystem: String::new(),
        external: dep.servers[0].child.is_none(),
        external_log: matches!(a.log, LogTarget::Nats(_)),
    };
    if a.log.shared() {
        eprintln!("stopping the servers (SIGTERM) ...");
        let t = Instant::now();
        for (name, s) in dep.processes_mut() {
            if let Err(e) = s.stop().await {
                report
                    .log_notes
                    .push(format!("{name} did not stop cleanly: {e:#}"));
            }
        }
        report.stop_seconds = t.elapsed().as_secs_f64();
        for (name, s) in dep.processes_mut() {
            report.log_notes.extend(log_warnings(&name, s));
        }
        dep.stop(a.keep).await?;
    } else if let Some(data_dir) = dep.servers[0].data_dir.clone() {
        let server = &mut dep.servers[0];
        report.filesystem = filesystem_of(&data_dir);
        eprintln!("stopping the server (SIGTERM) and measuring the store ...");
        report.stop_seconds = server.stop().await?.as_secs_f64();
        report.log_notes.extend(log_warnings("server", server));
        let store_dir = data_dir.join("store");
        // A fresh store numbers entries from 1.
        let end_seq = counted + 1;
        report.disk_at_stop = Some(StoreDisk::measure(&store_dir, end_seq)?);
        let t = Instant::now();
        seal_offline(&store_dir).await?;
        report.seal_seconds = t.elapsed().as_secs_f64();
        report.disk_sealed = Some(StoreDisk::measure(&store_dir, end_seq)?);
        if let (true, Some(tmp)) = (a.keep, server.tmp.take()) {
            eprintln!("kept {}", tmp.keep().display());
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// The processes under test: one server, or servers on a shared log
// ---------------------------------------------------------------------------

/// The processes under test of one configuration.
struct Deployment {
    /// The `tally server` processes (one, or a server given with --server).
    servers: Vec<TallyServer>,
    /// The `tally worker` beside the servers on a shared log.
    worker: Option<TallyServer>,
    /// NATS servers the benchmark started.
    nats: Option<tally_testkit::nats::NatsCluster>,
    /// The throwaway control database of a shared log.
    pg: Option<tally_testkit::postgres::PgCluster>,
    /// Replicas of the stream.
    replicas: u16,
    /// Holds the servers' directories (shared log).
    tmp: Option<tempfile::TempDir>,
}

impl Deployment {
    /// Starts what `a.log` and `a.servers` ask for.
    async fn start(a: &IngestArgs) -> anyhow::Result<Self> {
        let replicas = match &a.log {
            LogTarget::Embedded => 1,
            LogTarget::StartNats { replicas } => *replicas,
            LogTarget::Nats(_) => a.log_replicas,
        };
        if !a.log.shared() {
            return Ok(Self {
                servers: vec![TallyServer::start(a).await?],
                worker: None,
                nats: None,
                pg: None,
                replicas,
                tmp: None,
            });
        }
        let exe = tally_exe()?;
        let nats = match &a.log {
            LogTarget::StartNats { replicas } => {
                let (n, base) = (usize::from(*replicas), a.work_dir.clone());
                eprintln!("starting {n} nats-server(s) with JetStream ...");
                let c = tokio::task::spawn_blocking(move || {
                    tally_testkit::nats::NatsCluster::start(n, base.as_deref())
                })
                .await
                .context("starting nats-server panicked")?
                .context("cannot start nats-server (Debian: apt-get install nats-server)")?;
                Some(c)
            }
            _ => None,
        };
        let urls = match (&a.log, &nats) {
            (LogTarget::Nats(u), _) => u.clone(),
            (_, Some(c)) => c.urls(),
            _ => bail!("a shared log without NATS servers"),
        };
        let (pg, db) = match &a.control_db {
            Some(url) => (None, url.clone()),
            None => {
                eprintln!("starting a throwaway PostgreSQL for the servers' control database ...");
                let pg = start_pg(a.pg_bin.clone(), a.work_dir.clone(), Vec::new()).await?;
                let url = pg.url("postgres");
                (Some(pg), url)
            }
        };
        let tmp = temp_dir_in(a.work_dir.as_deref(), "tally-bench-")?;
        let key = format!("bench-{:032x}", rand::random::<u128>());
        let replicas_s = replicas.to_string();
        let flags = [
            "--log",
            urls.as_str(),
            "--log-replicas",
            replicas_s.as_str(),
            "--control-db",
            db.as_str(),
        ];
        let mut dep = Self {
            servers: Vec::new(),
            worker: None,
            nats,
            pg,
            replicas,
            tmp: None,
        };
        for i in 0..a.servers {
            let dir = tmp.path().join(format!("server-{}", i + 1));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dep.servers
                .push(TallyServer::spawn_at(&exe, &dir, &key, &flags).await?);
        }
        if !a.no_worker {
            let dir = tmp.path().join("worker");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dep.worker = Some(TallyServer::spawn_sub(&exe, "worker", &dir, &key, &flags).await?);
        }
        dep.tmp = Some(tmp);
        Ok(dep)
    }

    /// The tally processes with the names the report gives them.
    fn processes_mut(&mut self) -> Vec<(String, &mut TallyServer)> {
        let n = self.servers.len();
        let mut out: Vec<(String, &mut TallyServer)> = self
            .servers
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                let name = if n == 1 {
                    "server".to_owned()
                } else {
                    format!("server {}", i + 1)
                };
                (name, s)
            })
            .collect();
        if let Some(w) = self.worker.as_mut() {
            out.push(("worker".to_owned(), w));
        }
        out
    }

    /// Stops the NATS servers and the control database (the tally
    /// processes are stopped already); with `keep`, leaves the directories.
    async fn stop(mut self, keep: bool) -> anyhow::Result<()> {
        drop(self.nats.take());
        if let Some(pg) = self.pg.take() {
            stop_pg(pg, keep).await?;
        }
        if let (true, Some(tmp)) = (keep, self.tmp.take()) {
            eprintln!("kept {}", tmp.keep().display());
        }
        Ok(())
    }
}

/// The stream's bytes and messages as a NATS server reports them (`/jsz`):
/// what JetStream holds of one replica.
async fn jetstream_stream(
    http: &reqwest::Client,
    nats: &tally_testkit::nats::NatsCluster,
) -> Option<(u64, u64)> {
    for s in &nats.servers {
        let url = format!(
            "http://127.0.0.1:{}/jsz?streams=true&config=false",
            s.monitor_port
        );
        let Ok(resp) = http.get(&url).send().await else {
            continue;
        };
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        let found = v["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|d| d["name"] == "TALLY")
            .and_then(|d| {
                Some((
                    d["state"]["bytes"].as_u64()?,
                    d["state"]["messages"].as_u64()?,
                ))
            });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Warnings and errors a process logged (tracing's ` WARN `/` ERROR `
/// lines): how many, and the first few different ones.
fn log_warnings(name: &str, s: &TallyServer) -> Vec<String> {
    let Some(path) = s
        .data_dir
        .as_ref()
        .and_then(|d| d.parent())
        .map(|d| d.join("server.log"))
    else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut count = 0usize;
    let mut first: Vec<String> = Vec::new();
    for l in text.lines() {
        let Some(i) = l.find(" WARN ").or_else(|| l.find(" ERROR ")) else {
            continue;
        };
        count += 1;
        let msg: String = l[i..].trim().chars().take(240).collect();
        let key: String = msg.chars().take(60).collect();
        if first.len() < 4 && !first.iter().any(|f| f.starts_with(&key)) {
            first.push(msg);
        }
    }
    if count == 0 {
        return Vec::new();
    }
    let mut out = vec![format!("{name} logged {count} warning/error line(s)")];
    out.extend(first.into_iter().map(|m| format!("  {name}: {m}")));
    out
}

/// The server's answer to an upload.
#[derive(Deserialize)]
struct UploadAck {
    stored: u64,
    duplicates: u64,
}

/// One client: sends its pool over one keep-alive connection until the
/// window ends, starting over as a new instance when the pool is used up.
async fn tally_client(
    http: reqwest::Client,
    urls: Vec<String>,
    pool: Arc<Vec<TallyBatch>>,
    w: Window,
) -> ClientStats {
    let mut st = ClientStats::default();
    let mut i = 0usize;
    let mut consecutive_errors = 0u32;
    while Instant::now() < w.end {
        let batch = &pool[i % pool.len()];
        let generation = i / pool.len();
        let url = &urls[generation % urls.len()];
        let t0 = Instant::now();
        let sent = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "zstd")
            .header("Orig-Content-Length", batch.orig_len)
            .body(batch.body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                st.transport_errors += 1;
                st.first_error.get_or_insert_with(|| format!("{e:#}"));
                consecutive_errors += 1;
                if consecutive_errors > 50 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.bytes().await;
        let t1 = Instant::now();
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                st.transport_errors += 1;
                st.first_error.get_or_insert_with(|| format!("{e:#}"));
                continue;
            }
        };
        consecutive_errors = 0;
        if status == StatusCode::OK {
            match serde_json::from_slice::<UploadAck>(&body) {
                Ok(ack) => {
                    st.acked_stored += ack.stored;
                    st.acked_duplicates += ack.duplicates;
                    st.success(&w, t0, t1, batch.entries, batch.raw_bytes);
                }
                Err(e) => {
                    st.first_error
                        .get_or_insert_with(|| format!("unexpected 200 body: {e}"));
                    *st.statuses.entry(200).or_default() += 1;
                }
            }
            i += 1;
        } else {
            *st.statuses.entry(status.as_u16()).or_default() += 1;
            if st.first_error.is_none() {
                st.first_error = Some(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            if status == StatusCode::BAD_REQUEST {
                // Saved with an error; clients must not resend.
                i += 1;
            } else {
                // Retry the same batch like a real client, without waiting
                // the full Retry-After (it would only idle the benchmark).
                let wait = retry_after.map_or(100, |s| (s * 1000).min(1000));
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
    st.wraps = (i / pool.len()) as u64;
    st
}

/// CPU and memory of a group of processes over the window.
#[derive(Debug, Default, Clone)]
struct GroupUse {
    /// CPU, % of one core.
    cpu_pct: f64,
    /// Sum of the processes' peak RSS (VmHWM).
    peak_rss: u64,
    /// Sum of their RSS at the end of the load.
    rss_end: u64,
    /// Processes in the group.
    procs: usize,
}

impl GroupUse {
    /// Sums groups (e.g. every server).
    fn sum(groups: &[GroupUse]) -> GroupUse {
        groups.iter().fold(GroupUse::default(), |a, g| GroupUse {
            cpu_pct: a.cpu_pct + g.cpu_pct,
            peak_rss: a.peak_rss + g.peak_rss,
            rss_end: a.rss_end + g.rss_end,
            procs: a.procs + g.procs,
        })
    }

    /// `cpu 123 %, peak RSS 45.6 MiB (end 40.1 MiB)`.
    fn render(&self) -> String {
        format!(
            "cpu {:.0} % of one core, peak RSS {} (at the end of the load {})",
            self.cpu_pct,
            fmt_bytes(self.peak_rss),
            fmt_bytes(self.rss_end)
        )
    }
}

/// CPU ticks of processes at the window's start.
struct GroupStart(Vec<(u32, u64)>);

impl GroupStart {
    fn new(pids: &[u32]) -> Self {
        Self(
            pids.iter()
                .filter_map(|p| Some((*p, proc_cpu_ticks(*p)?)))
                .collect(),
        )
    }

    fn finish(&self, secs: f64) -> GroupUse {
        let hz = crate::common::clock_ticks_per_sec();
        let ticks: u64 = self
            .0
            .iter()
            .filter_map(|(p, t)| Some(proc_cpu_ticks(*p)?.saturating_sub(*t)))
            .sum();
        let pids = self.0.iter().map(|p| p.0);
        GroupUse {
            cpu_pct: ticks as f64 / hz / secs.max(1e-9) * 100.0,
            peak_rss: pids
                .clone()
                .filter_map(|p| proc_status_bytes(p, "VmHWM"))
                .sum(),
            rss_end: pids.filter_map(|p| proc_status_bytes(p, "VmRSS")).sum(),
            procs: self.0.len(),
        }
    }
}

/// What was measured of the processes during the window.
struct Usage {
    /// The servers together (the thread breakdown is the first server's).
    cpu: CpuWindow,
    /// Each server.
    servers: Vec<GroupUse>,
    worker: Option<GroupUse>,
    nats: Option<GroupUse>,
    control_db: Option<GroupUse>,
    /// The nats-servers' traffic over the window, per second.
    nats_traffic: Option<NatsTraffic>,
}

/// Bytes and messages into and out of the nats-servers (all clients,
/// routes included), from each server's `/varz`.
#[derive(Debug, Default, Clone, Copy)]
struct NatsTraffic {
    in_bytes: f64,
    out_bytes: f64,
    in_msgs: f64,
    out_msgs: f64,
}

impl NatsTraffic {
    /// The counters summed over the cluster's servers now.
    async fn read(http: &reqwest::Client, nats: &tally_testkit::nats::NatsCluster) -> Self {
        let mut t = Self::default();
        for s in &nats.servers {
            let url = format!("http://127.0.0.1:{}/varz", s.monitor_port);
            let Ok(resp) = http.get(&url).send().await else {
                continue;
            };
            let Ok(v) = resp.json::<serde_json::Value>().await else {
                continue;
            };
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            t.in_bytes += f("in_bytes");
            t.out_bytes += f("out_bytes");
            t.in_msgs += f("in_msgs");
            t.out_msgs += f("out_msgs");
        }
        t
    }

    /// Per second between `before` and `self`.
    fn rate_since(&self, before: &Self, secs: f64) -> Self {
        let secs = secs.max(1e-9);
        Self {
            in_bytes: (self.in_bytes - before.in_bytes) / secs,
            out_bytes: (self.out_bytes - before.out_bytes) / secs,
            in_msgs: (self.in_msgs - before.in_msgs) / secs,
            out_msgs: (self.out_msgs - before.out_msgs) / secs,
        }
    }
}

/// Samples CPU at the window's start and end, and memory at the end, of
/// every process under test. Without a pid (--server) only the bench and
/// the machine are measured.
async fn sample_window(w: Window, dep: &Deployment) -> Usage {
    tokio::time::sleep_until(tokio::time::Instant::from_std(w.warm_end)).await;
    let server_pids: Vec<u32> = dep.servers.iter().filter_map(|s| s.pid).collect();
    let worker_pids: Vec<u32> = dep.worker.iter().filter_map(|s| s.pid).collect();
    let nats_pids: Vec<u32> = dep
        .nats
        .iter()
        .flat_map(|c| c.servers.iter().filter_map(|s| s.pid()))
        .collect();
    let pg_pids: Vec<u32> = dep
        .pg
        .as_ref()
        .and_then(|p| p.postmaster_pid())
        .map(process_tree)
        .unwrap_or_default();
    let t = Instant::now();
    let sampler = CpuSampler::start(
        &server_pids,
        &[std::process::id()],
        server_pids.first().copied(),
    );
    let each: Vec<GroupStart> = server_pids.iter().map(|p| GroupStart::new(&[*p])).collect();
    let worker = GroupStart::new(&worker_pids);
    let nats = GroupStart::new(&nats_pids);
    let pg = GroupStart::new(&pg_pids);
    let http = http_client(Duration::from_secs(5)).ok();
    let traffic_start = match (&http, &dep.nats) {
        (Some(h), Some(c)) => Some(NatsTraffic::read(h, c).await),
        _ => None,
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(w.end)).await;
    let nats_traffic = match (&http, &dep.nats, traffic_start) {
        (Some(h), Some(c), Some(before)) => Some(
            NatsTraffic::read(h, c)
                .await
                .rate_since(&before, t.elapsed().as_secs_f64()),
        ),
        _ => None,
    };
    let mut cpu = sampler.finish();
    let secs = t.elapsed().as_secs_f64();
    let servers: Vec<GroupUse> = each.iter().map(|g| g.finish(secs)).collect();
    let opt = |g: &GroupStart| (!g.0.is_empty()).then(|| g.finish(secs));
    let (worker, nats, control_db) = (opt(&worker), opt(&nats), opt(&pg));
    cpu.beside_pct = [&worker, &nats, &control_db]
        .iter()
        .filter_map(|g| g.as_ref().map(|g| g.cpu_pct))
        .sum();
    Usage {
        cpu,
        servers,
        worker,
        nats,
        control_db,
        nats_traffic,
    }
}

/// One page of `GET /c/<collection>`; the entries are skipped unparsed.
#[derive(Deserialize)]
struct QueryPage {
    count: u64,
    next: Option<String>,
}

/// Counts stored entries through the query API, paging with `after`.
async fn count_stored(
    http: &reqwest::Client,
    server: &TallyServer,
    collection: &str,
    instances: Option<&[String]>,
) -> anyhow::Result<u64> {
    let filters: Vec<Option<String>> = match instances {
        None => vec![None],
        Some(ids) => ids.chunks(64).map(|c| Some(c.join(","))).collect(),
    };
    let mut total = 0u64;
    for filter in filters {
        let mut after: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("max-count", "100000".to_owned())];
            if let Some(f) = &filter {
                q.push(("instances", f.clone()));
            }
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let resp = http
                .get(format!("{}/c/{collection}", server.base))
                .bearer_auth(&server.key)
                .query(&q)
                .send()
                .await
                .context("query request failed")?;
            let status = resp.status();
            let body = resp.bytes().await.context("reading a query response")?;
            if !status.is_success() {
                bail!(
                    "query failed: {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                );
            }
            let page: QueryPage =
                serde_json::from_slice(&body).context("query response is not the expected JSON")?;
            total += page.count;
            match page.next {
                Some(n) if page.count > 0 || after.as_deref() != Some(n.as_str()) => {
                    after = Some(n)
                }
                _ => break,
            }
        }
    }
    Ok(total)
}

/// Opens the stopped server's store and seals its active WAL segment, as the
/// server does by itself once a segment is 64 MiB or 5 minutes old.
async fn seal_offline(store_dir: &Path) -> anyhow::Result<()> {
    let config = tally_store::StoreConfig::new(store_dir);
    let (store, _) = tokio::task::spawn_blocking(move || {
        tally_store::Store::open(config, Arc::new(tally_store::KeepForever))
    })
    .await
    .context("store recovery panicked")?
    .context("cannot open the benchmark's store to seal it")?;
    store
        .seal_now()
        .await
        .context("sealing the active WAL segment failed")?;
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store panicked")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// One pre-built COPY command with its data.
struct PgBatch {
    /// `COPY ... FROM STDIN;`, the rows, `\.`.
    script: Vec<u8>,
    /// Where each row's 64-character instance column is in `script`.
    instance_at: Vec<usize>,
    /// The client generation whose instance `script` holds.
    generation: usize,
    entries: usize,
    raw_bytes: usize,
}

/// The outcome of the PostgreSQL run.
struct PgReport {
    summary: LoadSummary,
    cpu: CpuWindow,
    pss: Option<u64>,
    rows: u64,
    total_size: u64,
    table_size: u64,
    index_size: u64,
    wal_size: u64,
    raw_per_entry: f64,
    version: String,
    conf: Vec<String>,
}

impl PgReport {
    fn disk_per_entry(&self) -> f64 {
        self.total_size as f64 / self.rows.max(1) as f64
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== PostgreSQL {} ({}), COPY FROM STDIN via psql over a Unix socket ==",
            self.version,
            if self.conf.is_empty() {
                "default settings: fsync on, synchronous_commit on".to_owned()
            } else {
                self.conf.join(" ")
            }
        );
        self.summary.render(&mut out);
        self.cpu.render(&mut out, "postgres processes");
        let _ = writeln!(
            out,
            "  memory:       PSS of all postgres processes at end of load {}",
            self.pss.map_or_else(|| "n/a".to_owned(), fmt_bytes)
        );
        let s = &self.summary.stats;
        let _ = writeln!(
            out,
            "  rows:         {} in the table, {} acknowledged{}",
            self.rows,
            s.acked_stored,
            if self.rows == s.acked_stored {
                ""
            } else {
                " (MISMATCH)"
            }
        );
        let _ = writeln!(
            out,
            "  disk:         pg_total_relation_size {} = {:.1} B/entry ({:.1}% of raw JSON): heap+TOAST {}, index {}; WAL directory {}",
            fmt_bytes(self.total_size),
            self.disk_per_entry(),
            pct_of(self.disk_per_entry(), self.raw_per_entry),
            fmt_bytes(self.table_size),
            fmt_bytes(self.index_size),
            fmt_bytes(self.wal_size)
        );
        out
    }
}

/// Escapes text for COPY's text format.
fn copy_escape(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

async fn run_postgres(a: &IngestArgs) -> anyhow::Result<PgReport> {
    eprintln!("starting a throwaway PostgreSQL cluster ...");
    let pg = start_pg(a.pg_bin.clone(), a.work_dir.clone(), a.pg_conf.clone()).await?;
    let result = postgres_load(a, &pg).await;
    let stopped = stop_pg(pg, a.keep).await;
    let report = result?;
    stopped?;
    Ok(report)
}

async fn postgres_load(
    a: &IngestArgs,
    pg: &tally_testkit::postgres::PgCluster,
) -> anyhow::Result<PgReport> {
    pg_sql(
        pg,
        "CREATE TABLE logs (collection text, instance text, time timestamptz, entry jsonb); \
         CREATE INDEX logs_collection_instance_time ON logs (collection, instance, time)",
    )
    .await?;
    eprintln!(
        "generating {} x {} batches of {} entries (same seed, same lines) ...",
        a.clients, a.pool_batches, a.batch_entries
    );
    let instances: Vec<String> = (0..a.clients)
        .map(|_| PrivateId::generate().public().to_hex())
        .collect();
    let collection = a.collection.clone();
    let pools = {
        let a = a.clone();
        let instances = instances.clone();
        tokio::task::spawn_blocking(move || {
            generate_pools(&a, |c, entries| {
                let mut s = Vec::with_capacity(entries.iter().map(|e| e.json.len() + 140).sum());
                s.extend_from_slice(b"COPY logs (collection, instance, time, entry) FROM STDIN;\n");
                let mut instance_at = Vec::with_capacity(entries.len());
                for e in entries {
                    copy_escape(&mut s, &collection);
                    s.push(b'\t');
                    instance_at.push(s.len());
                    s.extend_from_slice(instances[c].as_bytes());
                    s.push(b'\t');
                    s.extend_from_slice(e.client_time.as_bytes());
                    s.push(b'\t');
                    copy_escape(&mut s, &e.json);
                    s.push(b'\n');
                }
                s.extend_from_slice(b"\\.\n");
                Ok(PgBatch {
                    script: s,
                    instance_at,
                    generation: 0,
                    entries: entries.len(),
                    raw_bytes: entries.iter().map(|e| e.json.len()).sum(),
                })
            })
        })
        .await
        .context("generator panicked")??
    };
    let (mut raw, mut n) = (0usize, 0usize);
    for b in pools.iter().flatten() {
        raw += b.raw_bytes;
        n += b.entries;
    }
    let raw_per_entry = raw as f64 / n.max(1) as f64;

    // One psql session per client, connected before the clock starts.
    let mut sessions = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        let mut child = pg_psql(pg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start psql")?;
        let mut stdin = child.stdin.take().context("psql stdin is not piped")?;
        let stdout = child.stdout.take().context("psql stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        stdin
            .write_all(b"\\echo READY\n")
            .await
            .context("cannot write to psql")?;
        stdin.flush().await.context("cannot write to psql")?;
        match lines.next_line().await.context("cannot read from psql")? {
            Some(l) if l.trim() == "READY" => {}
            other => bail!(
                "psql did not connect (said {other:?}): {}",
                psql_stderr(&mut child).await
            ),
        }
        sessions.push((child, stdin, lines));
    }
    let psql_pids: Vec<u32> = sessions.iter().filter_map(|s| s.0.id()).collect();
    let postmaster = pg.postmaster_pid().context("cannot read postmaster.pid")?;
    eprintln!(
        "load: {} psql sessions for {} s warm-up + {} s ...",
        a.clients, a.warmup, a.duration
    );
    let window = Window::new(a.warmup, a.duration);
    let mut tasks = Vec::with_capacity(a.clients);
    for ((pool, instance), (child, stdin, lines)) in pools.into_iter().zip(instances).zip(sessions)
    {
        let session = PgSession {
            child,
            stdin,
            lines,
        };
        tasks.push(tokio::spawn(pg_client(session, pool, instance, window)));
    }
    // CPU of the postmaster's process tree; the bench's own CPU includes psql's.
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.warm_end)).await;
    let mut client_pids = psql_pids.clone();
    client_pids.push(std::process::id());
    let sampler = CpuSampler::start(&process_tree(postmaster), &client_pids, None);
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
    let cpu = sampler.finish();
    // Processes that exit while being read are skipped.
    let pss: Vec<u64> = process_tree(postmaster)
        .into_iter()
        .filter_map(proc_pss_bytes)
        .collect();
    let pss = (!pss.is_empty()).then(|| pss.iter().sum::<u64>());
    let mut stats = ClientStats::default();
    for t in tasks {
        stats.merge(t.await.context("a client task panicked")??);
    }
    let summary = LoadSummary {
        seconds: a.duration,
        stats,
    };
    let row = pg_sql(
        pg,
        "SELECT count(*), pg_total_relation_size('logs'), pg_table_size('logs'), \
             pg_indexes_size('logs'), (SELECT sum(size) FROM pg_ls_waldir()) FROM logs",
    )
    .await?;
    let f: Vec<u64> = row
        .trim()
        .split('|')
        .map(|v| v.trim().parse::<u64>().unwrap_or(0))
        .collect();
    ensure!(f.len() == 5, "unexpected size query output: {row:?}");
    Ok(PgReport {
        summary,
        cpu,
        pss,
        rows: f[0],
        total_size: f[1],
        table_size: f[2],
        index_size: f[3],
        wal_size: f[4],
        raw_per_entry,
        version: pg.version().to_owned(),
        conf: a.pg_conf.clone(),
    })
}

async fn psql_stderr(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.read_to_string(&mut s)).await;
    }
    s
}

/// A connected psql process.
struct PgSession {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// One PostgreSQL client: a COPY per batch through its psql session, the
/// next one sent after psql printed `COPY n` (committed, WAL flushed). Like
/// the Tally clients it starts over as a new instance when its pool is used
/// up, so index keys stay distinct.
async fn pg_client(
    session: PgSession,
    mut pool: Vec<PgBatch>,
    instance: String,
    w: Window,
) -> anyhow::Result<ClientStats> {
    let PgSession {
        mut child,
        mut stdin,
        mut lines,
    } = session;
    let mut st = ClientStats::default();
    let mut instances = vec![instance];
    let mut i = 0usize;
    let len = pool.len();
    while Instant::now() < w.end {
        let generation = i / len;
        while instances.len() <= generation {
            instances.push(PrivateId::generate().public().to_hex());
        }
        let batch = &mut pool[i % len];
        if batch.generation != generation {
            let id = instances[generation].as_bytes();
            for &at in &batch.instance_at {
                batch.script[at..at + id.len()].copy_from_slice(id);
            }
            batch.generation = generation;
        }
        let t0 = Instant::now();
        let sent = async {
            stdin.write_all(&batch.script).await?;
            stdin.flush().await?;
            lines.next_line().await
        }
        .await;
        let t1 = Instant::now();
        let line = match sent {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => {
                bail!("psql stopped: {}", psql_stderr(&mut child).await);
            }
        };
        let Some(n) = line
            .strip_prefix("COPY ")
            .and_then(|n| n.trim().parse::<u64>().ok())
        else {
            bail!("unexpected psql output {line:?}");
        };
        st.acked_stored += n;
        st.success(&w, t0, t1, batch.entries, batch.raw_bytes);
        i += 1;
    }
    st.wraps = (i / len) as u64;
    drop(stdin);
    let status = child.wait().await.context("waiting for psql")?;
    ensure!(status.success(), "psql exited with {status}");
    Ok(st)
}

// ---------------------------------------------------------------------------
// Comparison and formatting
// ---------------------------------------------------------------------------

fn render_comparison(t: &TallyReport, p: &PgReport) -> String {
    let mut out = String::from("== Tally / PostgreSQL ==\n");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let _ = writeln!(
        out,
        "  entries/s:    {} / {} = {:.2}x",
        fmt_count(t.summary.entries_per_sec()),
        fmt_count(p.summary.entries_per_sec()),
        ratio(t.summary.entries_per_sec(), p.summary.entries_per_sec())
    );
    let _ = writeln!(
        out,
        "  MB/s:         {:.1} / {:.1} = {:.2}x",
        t.summary.mb_per_sec(),
        p.summary.mb_per_sec(),
        ratio(t.summary.mb_per_sec(), p.summary.mb_per_sec())
    );
    let lat = |s: &ClientStats, q: f64| {
        let mut l = s.latencies_us.clone();
        l.sort_unstable();
        percentile(&l, q) as f64 / 1000.0
    };
    let _ = writeln!(
        out,
        "  p99 latency:  {:.1} ms / {:.1} ms",
        lat(&t.summary.stats, 99.0),
        lat(&p.summary.stats, 99.0)
    );
    if let Some(td) = t.disk_per_entry() {
        let _ = writeln!(
            out,
            "  bytes/entry on disk: {:.1} / {:.1} = {:.2}x",
            td,
            p.disk_per_entry(),
            ratio(td, p.disk_per_entry())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> IngestArgs {
        IngestArgs {
            clients: 3,
            duration: 1.0,
            warmup: 0.0,
            batch_entries: 50,
            pool_batches: 2,
            zstd_level: 3,
            collection: "tailnode".into(),
            seed: 7,
            server: None,
            api_key: None,
            work_dir: None,
            keep: false,
            postgres: false,
            postgres_only: false,
            pg_bin: None,
            pg_conf: Vec::new(),
            log: LogTarget::Embedded,
            servers: 1,
            log_replicas: 1,
            control_db: None,
            no_worker: false,
            compare_logs: false,
        }
    }

    #[test]
    fn log_targets_parse_and_name_themselves() {
        assert_eq!(LogTarget::parse("embedded"), Ok(LogTarget::Embedded));
        assert_eq!(
            LogTarget::parse("nats-r3"),
            Ok(LogTarget::StartNats { replicas: 3 })
        );
        assert_eq!(
            LogTarget::parse("nats://a:4222,b:4222"),
            Ok(LogTarget::Nats("nats://a:4222,b:4222".into()))
        );
        assert!(LogTarget::parse("nats://").is_err());
        assert!(LogTarget::parse("nats").is_err());
        assert_eq!(
            LogTarget::StartNats { replicas: 1 }.label(1),
            "JetStream R1"
        );
        assert!(!LogTarget::Embedded.shared());
    }

    #[test]
    fn entries_are_valid_logtail_json_of_about_200_bytes() {
        let mut g = EntryGen::new(1, 0, 1_700_000_000_000_000_000);
        let mut total = 0;
        for i in 1..=2000u64 {
            let e = g.next_entry();
            let v: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            assert_eq!(v["logtail"]["proc_seq"], i);
            assert!(v["text"].is_string());
            assert_eq!(v["logtail"]["client_time"], e.client_time.as_str());
            total += e.json.len();
        }
        let avg = total / 2000;
        assert!((150..260).contains(&avg), "average entry {avg} bytes");
    }

    #[test]
    fn server_parses_generated_batches_without_errors() {
        let a = args();
        let pools = generate_pools(&a, |_, entries| {
            let body = format!(
                "[{}]",
                entries
                    .iter()
                    .map(|e| e.json.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            Ok(body)
        })
        .unwrap();
        assert_eq!(pools.len(), 3);
        let id = PrivateId::generate().public();
        for body in pools.iter().flatten() {
            let p = tally_proto::logtail::parse_body(body.as_bytes(), 0, &id);
            assert_eq!(p.bad, 0, "{:?}", p.first_error);
            assert_eq!(p.entries.len(), 50);
        }
        // Same seed, same lines (client_time follows the clock); clients differ.
        let text = |json: &str| {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            (v["text"].clone(), v["logtail"]["proc_id"].clone())
        };
        let once = generate_pools(&a, |_, e| Ok(text(&e[0].json))).unwrap();
        let twice = generate_pools(&a, |_, e| Ok(text(&e[0].json))).unwrap();
        assert_eq!(once, twice);
        assert_ne!(once[0][0], once[1][0]);
    }

    #[test]
    fn helpers_format_and_rank() {
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(12.0), "12");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 << 20), "3.0 MiB");
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
        let mut out = Vec::new();
        copy_escape(&mut out, "a\\b\tc\n");
        assert_eq!(out, b"a\\\\b\\tc\\n");
    }

    #[test]
    fn store_disk_counts_entries_from_segment_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seg-00000000000000000001.tsb"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("seg-00000000000000000101.tsb"), [0u8; 20]).unwrap();
        std::fs::write(dir.path().join("wal-00000000000000000151.log"), [0u8; 5]).unwrap();
        std::fs::write(dir.path().join("ingest-state.json"), [0u8; 3]).unwrap();
        let d = StoreDisk::measure(dir.path(), 201).unwrap();
        assert_eq!(
            (d.sealed_files, d.sealed_bytes, d.sealed_entries),
            (2, 30, 150)
        );
        assert_eq!((d.wal_files, d.wal_bytes, d.wal_entries), (1, 5, 50));
        assert_eq!(d.other_bytes, 3);
    }
}
