//! Benchmark of the flow store on generated flow records of a tailnet:
//! ingest rate (open window + sealing), bytes on disk per entry, and query
//! latency for node pairs and single nodes over the whole period.
//!
//! The generator models a mesh where each node talks to a handful of
//! peers: 5% of nodes are servers (SSH, HTTPS, PostgreSQL, Redis, metrics,
//! DNS) that most clients use, clients also reach a few other clients,
//! one in ten clients sends some traffic through an exit node and one in
//! twenty reaches hosts behind a subnet router. A node reports a record
//! only in intervals where it has traffic (servers often, clients rarely);
//! connections last from one interval to several minutes, keeping their
//! ephemeral port, and a fifth of them use IPv6 tailnet addresses.
//! Everything is drawn from a seeded generator, so runs are repeatable.
//! Used by `benches/flowstore.rs` and by part 4 of `tally bench flows`.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_flowstore::{
    Bucket, BucketRole, FlowEntry, FlowError, FlowFilter, FlowKind, FlowStore, FlowStoreConfig,
    PageRequest, Tier,
};

/// A bucket for the bucket phase: the owner's handle and a reader's, each
/// with its own cache (the reader's starts empty).
pub struct BucketPair {
    /// What the owner uploads through.
    pub owner: Arc<dyn Bucket>,
    /// What a new server reads through.
    pub reader: Arc<dyn Bucket>,
    /// The reader's cache directory (its size is what was downloaded).
    pub reader_cache: PathBuf,
    /// Where the bucket is, for the report.
    pub label: String,
}

/// The flow store's files in a cluster's bucket.
#[derive(Debug, Clone, Default)]
pub struct BucketFigures {
    /// Where the bucket is.
    pub label: String,
    /// Files uploaded.
    pub files: usize,
    /// Time to upload every file and save the manifest.
    pub upload_time: Duration,
    /// Bytes uploaded.
    pub bytes: u64,
    /// A new server's first node-pair query (its cache empty).
    pub pair_cold: Duration,
    /// Bytes the new server downloaded for it.
    pub cold_bytes: u64,
    /// The same node pairs as the local store's, through the bucket's
    /// cache once warm.
    pub pair: Latency,
}

/// What to generate and measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Directory for the store (should be empty).
    pub dir: PathBuf,
    /// Nodes in the tailnet.
    pub nodes: usize,
    /// Hours of records.
    pub hours: u32,
    /// Seconds per record interval (Tailscale: 5).
    pub interval_secs: u32,
    /// Scales every node's chance of reporting in an interval (1.0 gives
    /// about 12 M entries per 1,000 nodes and 24 h).
    pub activity: f64,
    /// Seed of the generator.
    pub seed: u64,
    /// Node-pair queries to time.
    pub pair_queries: usize,
    /// Single-node queries to time.
    pub node_queries: usize,
    /// Store tuning.
    pub store: FlowStoreConfig,
}

impl BenchConfig {
    /// 1,000 nodes, 24 h, 5-s intervals, in `dir`.
    pub fn standard(dir: PathBuf) -> Self {
        Self {
            dir,
            nodes: 1000,
            hours: 24,
            interval_secs: 5,
            activity: 1.0,
            seed: 0x7a11_f10e,
            pair_queries: 200,
            node_queries: 100,
            store: FlowStoreConfig::default(),
        }
    }
}

/// Latency percentiles of a set of timed queries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Queries timed.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
    /// Mean entries returned per query.
    pub mean_hits: f64,
}

impl Latency {
    fn of(mut v: Vec<(Duration, usize)>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        let hits = v.iter().map(|x| x.1).sum::<usize>() as f64 / v.len() as f64;
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].0;
        Self {
            count: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1].0,
            mean_hits: hits,
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} queries ({:.0} entries each on average)",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count,
            self.mean_hits
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The figures.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Nodes, hours.
    pub nodes: usize,
    /// Hours of records.
    pub hours: u32,
    /// Flow records inserted.
    pub records: u64,
    /// Entries inserted.
    pub entries: u64,
    /// Time in `insert`.
    pub insert_time: Duration,
    /// Time in `seal_due` / `seal_all`.
    pub seal_time: Duration,
    /// Time generating records (not counted in the rates).
    pub generate_time: Duration,
    /// Segment files written.
    pub files: usize,
    /// Bytes of segment files.
    pub disk_bytes: u64,
    /// Decoded footers of the whole period (bytes in memory).
    pub footer_bytes: usize,
    /// Peak memory of open windows (approximate bytes).
    pub peak_open_bytes: usize,
    /// First node-pair query after reopening (footers not cached).
    pub pair_cold: Duration,
    /// Node pair over the whole period, every page (limit 1,000).
    pub pair: Latency,
    /// One node over the whole period, first page of 1,000 entries.
    pub node_first_page: Latency,
    /// One node over the whole period, every page (limit 10,000).
    pub node_all: Latency,
    /// Blocks read per pair query on average, and blocks in the period.
    pub pair_blocks_read: f64,
    /// Blocks in the files of the period.
    pub blocks_total: u64,
    /// Edges of the whole tailnet over the whole period, 1-h buckets.
    pub edges_time: Duration,
    /// Edge rows returned.
    pub edges_rows: usize,
    /// The bucket phase, when a bucket was given.
    pub bucket: Option<BucketFigures>,
}

impl BenchReport {
    /// Entries per second through `insert` alone.
    pub fn insert_rate(&self) -> f64 {
        self.entries as f64 / self.insert_time.as_secs_f64().max(1e-9)
    }

    /// Entries per second through `insert` and sealing together.
    pub fn ingest_rate(&self) -> f64 {
        self.entries as f64 / (self.insert_time + self.seal_time).as_secs_f64().max(1e-9)
    }

    /// Bytes on disk per entry.
    pub fn bytes_per_entry(&self) -> f64 {
        self.disk_bytes as f64 / (self.entries.max(1)) as f64
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flow store: {} nodes, {} h: {} records, {} entries ({:.1} entries per record)",
            self.nodes,
            self.hours,
            self.records,
            self.entries,
            self.entries as f64 / self.records.max(1) as f64
        )?;
        writeln!(
            f,
            "  ingest: {:.0} entries/s into open windows; {:.0} entries/s with sealing ({:.1} s insert + {:.1} s seal; generating took {:.1} s more)",
            self.insert_rate(),
            self.ingest_rate(),
            self.insert_time.as_secs_f64(),
            self.seal_time.as_secs_f64(),
            self.generate_time.as_secs_f64()
        )?;
        writeln!(
            f,
            "  disk: {} files, {:.1} MiB, {:.2} bytes per entry; footers of the period {:.1} MiB in memory; open windows peaked at {:.0} MiB",
            self.files,
            self.disk_bytes as f64 / 1048576.0,
            self.bytes_per_entry(),
            self.footer_bytes as f64 / 1048576.0,
            self.peak_open_bytes as f64 / 1048576.0
        )?;
        writeln!(f, "  node pair, {} h, all pages: {}", self.hours, self.pair)?;
        writeln!(
            f,
            "    first pair query after reopening (footers read from disk): {:.2} ms; blocks read per pair query {:.1} of {}",
            ms(self.pair_cold),
            self.pair_blocks_read,
            self.blocks_total
        )?;
        writeln!(
            f,
            "  one node, {} h, first page of 1000: {}",
            self.hours, self.node_first_page
        )?;
        writeln!(
            f,
            "  one node, {} h, all pages: {}",
            self.hours, self.node_all
        )?;
        write!(
            f,
            "  edges, whole tailnet, {} h in 1-h buckets: {:.0} ms, {} rows",
            self.hours,
            ms(self.edges_time),
            self.edges_rows
        )?;
        if let Some(b) = &self.bucket {
            write!(
                f,
                "\n  bucket ({}): {} files, {:.1} MiB uploaded in {:.2} s ({:.1} MiB/s); a new server's first pair query {:.0} ms (downloaded {:.1} MiB); then {}",
                b.label,
                b.files,
                b.bytes as f64 / 1048576.0,
                b.upload_time.as_secs_f64(),
                b.bytes as f64 / 1048576.0 / b.upload_time.as_secs_f64().max(1e-9),
                ms(b.pair_cold),
                b.cold_bytes as f64 / 1048576.0,
                b.pair
            )?;
        }
        Ok(())
    }
}

/// Times node-pair queries over `[base, end)`, every page; returns the
/// first query's time, the rest's latency, blocks read in all and the
/// blocks of the period.
fn time_pairs(
    store: &FlowStore,
    tailnet: &str,
    pairs: &[(String, Vec<IpNet>)],
    (base, end): (i64, i64),
) -> Result<(Duration, Latency, u64, u64), FlowError> {
    let mut times = Vec::new();
    let (mut cold, mut blocks_read, mut blocks_total) = (Duration::ZERO, 0u64, 0u64);
    for (q, (node, peer)) in pairs.iter().enumerate() {
        let mut f = FlowFilter::new(tailnet, base, end);
        f.node = Some(node.clone());
        f.peer = Some(peer.clone());
        let t = Instant::now();
        let mut page = PageRequest::first(1000);
        let mut hits = 0;
        loop {
            let p = store.query(&f, &page)?;
            if let Some(e) = p.errors.first() {
                return Err(FlowError::Corrupt(format!("a pair query met damage: {e}")));
            }
            hits += p.hits.len();
            blocks_read += p.stats.blocks_read;
            if q == 0 {
                blocks_total = blocks_total.max(p.stats.blocks);
            }
            match p.next {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        let d = t.elapsed();
        if q == 0 {
            cold = d;
        } else {
            times.push((d, hits));
        }
    }
    Ok((cold, Latency::of(times), blocks_read, blocks_total))
}

/// Bytes of the files directly in `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// SplitMix64: small, fast, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Roughly exponential with the given mean, at least 1.
    fn expo(&mut self, mean: f64) -> u64 {
        let u = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        (1.0 - mean * u.ln()).max(1.0) as u64
    }
}

const SERVICE_PORTS: [(u8, u16); 6] =
    [(6, 22), (6, 443), (6, 5432), (6, 6379), (6, 9090), (17, 53)];

struct Node {
    id: String,
    v4: IpAddr,
    v6: IpAddr,
    server: bool,
    /// Chance of having traffic in an interval.
    activity: f64,
    peers: Vec<usize>,
    exit: bool,
    subnet: bool,
    conns: Vec<Conn>,
}

struct Conn {
    kind: FlowKind,
    proto: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
    /// Intervals left.
    ttl: u32,
    /// Chance of traffic in an active interval.
    busy: f64,
    size_tx: u64,
    size_rx: u64,
}

fn node_addrs(i: usize) -> (IpAddr, IpAddr) {
    let n = i as u32 + 1;
    let v4 = Ipv4Addr::new(100, 64 + ((n >> 16) & 63) as u8, (n >> 8) as u8, n as u8);
    let v6 = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, (n >> 16) as u16, n as u16);
    (IpAddr::V4(v4), IpAddr::V6(v6))
}

fn make_nodes(n: usize, rng: &mut Rng, activity: f64) -> Vec<Node> {
    let servers = (n / 20).max(1);
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            let (v4, v6) = node_addrs(i);
            let server = i < servers;
            Node {
                id: format!("n{:08x}{:04}CNTRL", rng.next() as u32, i % 10_000),
                v4,
                v6,
                server,
                activity: if server {
                    0.5 + rng.below(40) as f64 / 100.0
                } else {
                    0.02 + rng.below(16) as f64 / 100.0
                } * activity,
                peers: Vec::new(),
                exit: !server && rng.chance(0.1),
                subnet: !server && rng.chance(0.05),
                conns: Vec::new(),
            }
        })
        .collect();
    for i in servers..n {
        let k = 3 + rng.below(4) as usize;
        while nodes[i].peers.len() < k {
            let p = if rng.chance(0.7) {
                rng.below(servers as u64) as usize
            } else {
                rng.below(n as u64) as usize
            };
            if p != i && !nodes[i].peers.contains(&p) {
                nodes[i].peers.push(p);
                nodes[p].peers.push(i);
            }
        }
    }
    nodes
}

fn new_conn(nodes: &[Node], i: usize, rng: &mut Rng) -> Conn {
    let me = &nodes[i];
    let v6 = rng.chance(0.2);
    let local = if v6 { me.v6 } else { me.v4 };
    let eph = || 32768u16;
    let pick = rng.below(100);
    let (kind, proto, remote, local_port, remote_port) = if me.exit && pick < 15 {
        let a = Ipv4Addr::from(0x2d00_0000u32 + (rng.below(2000) as u32) * 7919);
        (
            FlowKind::Exit,
            6,
            IpAddr::V4(a),
            eph() + rng.below(28000) as u16,
            443,
        )
    } else if me.subnet && pick < 25 {
        let a = Ipv4Addr::new(10, 1, rng.below(4) as u8, 1 + rng.below(50) as u8);
        (
            FlowKind::Subnet,
            6,
            IpAddr::V4(a),
            eph() + rng.below(28000) as u16,
            3389,
        )
    } else {
        let p = me.peers[rng.below(me.peers.len() as u64) as usize];
        let peer = &nodes[p];
        let remote = if v6 { peer.v6 } else { peer.v4 };
        let (proto, port) = if peer.server || me.server {
            SERVICE_PORTS[rng.below(SERVICE_PORTS.len() as u64) as usize]
        } else {
            (6, 22)
        };
        let e = eph() + rng.below(28000) as u16;
        if me.server && !peer.server {
            // An accepted connection: the service port is ours.
            (FlowKind::Virtual, proto, remote, port, e)
        } else {
            (FlowKind::Virtual, proto, remote, e, port)
        }
    };
    let short = proto == 17 || rng.chance(0.4);
    Conn {
        kind,
        proto,
        local,
        local_port,
        remote,
        remote_port,
        ttl: if short { 1 } else { 2 + rng.below(120) as u32 },
        busy: if short {
            1.0
        } else {
            0.3 + rng.below(70) as f64 / 100.0
        },
        size_tx: 52 + rng.below(1300),
        size_rx: 52 + rng.below(1300),
    }
}

/// Generates the records of one interval: `(node index, entries)`.
fn interval(
    nodes: &mut [Node],
    rng: &mut Rng,
    tailnet: &str,
    start: i64,
    len: i64,
    out: &mut Vec<(usize, Vec<FlowEntry>)>,
) {
    out.clear();
    for i in 0..nodes.len() {
        if !rng.chance(nodes[i].activity) {
            // Idle: connections age anyway.
            nodes[i].conns.retain_mut(|c| {
                c.ttl = c.ttl.saturating_sub(1);
                c.ttl > 0
            });
            continue;
        }
        let want = if nodes[i].server {
            4 + rng.below(30)
        } else {
            1 + rng.below(6)
        } as usize;
        let mut fresh = Vec::new();
        while nodes[i].conns.len() + fresh.len() < want {
            fresh.push(new_conn(nodes, i, rng));
        }
        let node = &mut nodes[i];
        node.conns.extend(fresh);
        let logged = start + len + 200_000_000 + rng.below(2_300_000_000) as i64;
        let mut es = Vec::with_capacity(node.conns.len());
        for c in &node.conns {
            if !rng.chance(c.busy) {
                continue;
            }
            let tx_pkts = rng.expo(25.0);
            let rx_pkts = if c.proto == 17 && rng.chance(0.3) {
                0
            } else {
                rng.expo(25.0)
            };
            es.push(FlowEntry {
                tailnet: tailnet.to_owned(),
                node: node.id.clone(),
                start,
                end: start + len,
                logged,
                kind: c.kind,
                proto: c.proto,
                src: c.local,
                src_port: c.local_port,
                dst: c.remote,
                dst_port: c.remote_port,
                tx_pkts,
                tx_bytes: tx_pkts * c.size_tx,
                rx_pkts,
                rx_bytes: rx_pkts * c.size_rx,
            });
        }
        node.conns.retain_mut(|c| {
            c.ttl = c.ttl.saturating_sub(1);
            c.ttl > 0
        });
        if !es.is_empty() {
            out.push((i, es));
        }
    }
}

/// Generates, ingests, seals and queries; `progress` gets a line now and
/// then.
pub fn run(cfg: &BenchConfig, progress: &mut dyn FnMut(&str)) -> Result<BenchReport, FlowError> {
    run_with(cfg, None, progress)
}

/// [`run`], then with `bucket`: the owner uploads the sealed files, and a
/// new server (an empty cache) asks the same node pairs through it.
pub fn run_with(
    cfg: &BenchConfig,
    bucket: Option<BucketPair>,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, FlowError> {
    let tailnet = "bench-tailnet";
    let mut rng = Rng(cfg.seed);
    let mut nodes = make_nodes(cfg.nodes, &mut rng, cfg.activity);
    let base: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    let len = i64::from(cfg.interval_secs) * 1_000_000_000;
    let intervals = i64::from(cfg.hours) * 3600 / i64::from(cfg.interval_secs);
    let (store, _) = FlowStore::open(&cfg.dir, cfg.store.clone())?;
    let mut rep = BenchReport {
        nodes: cfg.nodes,
        hours: cfg.hours,
        ..BenchReport::default()
    };
    let mut batch = Vec::new();
    let mut seq = 0u64;
    let mut last_logged = base;
    let seal_every = (60 / i64::from(cfg.interval_secs)).max(1);
    for t in 0..intervals {
        let start = base + t * len;
        let g = Instant::now();
        interval(&mut nodes, &mut rng, tailnet, start, len, &mut batch);
        rep.generate_time += g.elapsed();
        let ins = Instant::now();
        for (_, es) in &batch {
            seq += 1;
            rep.entries += store.insert(seq, es)? as u64;
            rep.records += 1;
            last_logged = last_logged.max(es[0].logged);
        }
        rep.insert_time += ins.elapsed();
        if t % seal_every == 0 {
            rep.peak_open_bytes = rep.peak_open_bytes.max(store.open_memory());
            let s = Instant::now();
            store.seal_due(last_logged)?;
            rep.seal_time += s.elapsed();
        }
        if t % (3600 / i64::from(cfg.interval_secs)) == 0 && t > 0 {
            progress(&format!(
                "  generated {} h: {} records, {} entries",
                t * len / 3_600_000_000_000,
                rep.records,
                rep.entries
            ));
        }
    }
    let s = Instant::now();
    store.seal_all()?;
    rep.seal_time += s.elapsed();
    let st = store.stats();
    rep.files = st.sealed_files;
    rep.disk_bytes = st.sealed_bytes;
    drop(store);
    progress("  ingested; querying");

    // Queries on a reopened store: footers are read once, then cached.
    let (store, _) = FlowStore::open(&cfg.dir, cfg.store.clone())?;
    let end = base + intervals * len;
    let clients: Vec<usize> = (0..nodes.len()).filter(|i| !nodes[*i].server).collect();
    let host = |a: IpAddr| IpNet::from(a);
    let pairs: Vec<(String, Vec<IpNet>)> = (0..cfg.pair_queries)
        .map(|_| {
            let a = clients[rng.below(clients.len() as u64) as usize];
            let b = nodes[a].peers[rng.below(nodes[a].peers.len() as u64) as usize];
            (
                nodes[a].id.clone(),
                vec![host(nodes[b].v4), host(nodes[b].v6)],
            )
        })
        .collect();
    let (cold, pair, blocks_read, blocks_total) = time_pairs(&store, tailnet, &pairs, (base, end))?;
    rep.pair_cold = cold;
    rep.pair = pair;
    rep.blocks_total = blocks_total;
    rep.pair_blocks_read = blocks_read as f64 / cfg.pair_queries.max(1) as f64;
    let mut first = Vec::new();
    let mut all = Vec::new();
    for _ in 0..cfg.node_queries {
        let a = rng.below(nodes.len() as u64) as usize;
        let mut f = FlowFilter::new(tailnet, base, end);
        f.node = Some(nodes[a].id.clone());
        let t = Instant::now();
        let p = store.query(&f, &PageRequest::first(1000))?;
        first.push((t.elapsed(), p.hits.len()));
        let t = Instant::now();
        let mut page = PageRequest::first(10_000);
        let mut hits = 0;
        loop {
            let p = store.query(&f, &page)?;
            hits += p.hits.len();
            match p.next {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        all.push((t.elapsed(), hits));
    }
    rep.node_first_page = Latency::of(first);
    rep.node_all = Latency::of(all);
    let t = Instant::now();
    let e = store.edges(&FlowFilter::new(tailnet, base, end), 3_600_000_000_000)?;
    rep.edges_time = t.elapsed();
    rep.edges_rows = e.buckets.len();
    rep.footer_bytes = store.stats().footer_cache_bytes;
    drop(store);
    if let Some(b) = bucket {
        progress("  uploading the sealed files to the bucket");
        let t = Instant::now();
        let tier = |bucket, role| Some(Tier { bucket, role });
        let (owner, _) = FlowStore::open_with(
            &cfg.dir,
            cfg.store.clone(),
            tier(b.owner.clone(), BucketRole::Owner),
        )?;
        let files = owner.publish()?;
        let upload_time = t.elapsed();
        drop(owner);
        progress("  a new server asks the same node pairs through the bucket");
        let (reader, _) = FlowStore::open_with(
            &cfg.dir.with_extension("reader"),
            cfg.store.clone(),
            tier(b.reader.clone(), BucketRole::Reader),
        )?;
        let first = &pairs[..pairs.len().min(1)];
        let (pair_cold, _, _, _) = time_pairs(&reader, tailnet, first, (base, end))?;
        let cold_bytes = dir_bytes(&b.reader_cache);
        let (_, pair, _, _) = time_pairs(&reader, tailnet, &pairs, (base, end))?;
        rep.bucket = Some(BucketFigures {
            label: b.label,
            files,
            upload_time,
            bytes: rep.disk_bytes,
            pair_cold,
            cold_bytes,
            pair,
        });
    }
    Ok(rep)
}
