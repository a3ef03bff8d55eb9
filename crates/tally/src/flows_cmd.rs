//! Network flow log verbs: `tally flows query` (the flow records, one row
//! per traffic entry, or NDJSON in Tailscale's shape) and `tally flows top`
//! (who talks to whom, from the graph endpoint).
//!
//! Like the control verbs, every request says `Tally-Origin: CLI` and goes
//! through [`Api`]; the server's error messages are printed as they came.

use crate::client::ServerArgs;
use crate::control_cmd::{
    Api, TailnetArg, cell, emit, emit_json, parse_time_flag, table, tailnet_path, time_cell,
};
use anyhow::bail;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// Most entries asked for per page of `tally flows query`.
const PAGE_MAX: usize = 5000;

/// The traffic lists of a flow record, in the order rows are printed, with
/// the KIND shown for each.
const TRAFFIC_KINDS: [(&str, &str); 4] = [
    ("virtualTraffic", "virtual"),
    ("subnetTraffic", "subnet"),
    ("exitTraffic", "exit"),
    ("physicalTraffic", "physical"),
];

/// Nanoseconds per second.
const SECOND: i64 = 1_000_000_000;

/// Which flows: the time range and filters both verbs share.
#[derive(Debug, Clone, clap::Args)]
pub struct FlowFilterArgs {
    #[command(flatten)]
    tailnet: TailnetArg,
    /// Start: a duration ago (1h, 30m, 7d) or an RFC 3339 time.
    #[arg(long, default_value = "1h")]
    since: String,
    /// End: a duration ago or an RFC 3339 time (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only flows reported by this node (ID or name).
    #[arg(long)]
    node: Option<String>,
    /// Only flows to or from this node's addresses (ID or name).
    #[arg(long)]
    peer: Option<String>,
    /// Only flows from this address or CIDR prefix.
    #[arg(long, value_name = "IP/CIDR")]
    src: Option<String>,
    /// Only flows to this address or CIDR prefix.
    #[arg(long, value_name = "IP/CIDR")]
    dst: Option<String>,
    /// Only flows with this source or destination port.
    #[arg(long)]
    port: Option<u16>,
    /// Only this protocol: tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    /// Only this kind of traffic: virtual, subnet or exit.
    #[arg(long)]
    kind: Option<String>,
}

/// What `tally flows top` ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RankBy {
    /// Bytes sent plus bytes received.
    Bytes,
    /// Packets sent plus packets received.
    Packets,
}

/// Network flow logs.
#[derive(Debug, clap::Subcommand)]
pub enum FlowsCmd {
    /// List flow log entries, newest first: one row per traffic entry
    /// (TIME is the start of the record's interval; TX and RX are
    /// packets/bytes as the reporting node saw them).
    Query {
        #[command(flatten)]
        filter: FlowFilterArgs,
        /// Most traffic entries to print (with --json, whole records: the
        /// last one may go over).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Entries per request.
        #[arg(long, default_value_t = PAGE_MAX, hide = true)]
        page_size: usize,
        /// Print the records as the server sent them (Tailscale's shape),
        /// one JSON object per line, for jq.
        #[arg(long)]
        json: bool,
        /// No progress spinner (one is drawn on stderr only when it is a
        /// terminal)
        #[arg(short, long)]
        quiet: bool,
    },
    /// Who talks to whom: node pairs (source node → destination node or
    /// address) ranked by traffic over the range. Each end reports its own
    /// view, so two nodes that talk appear twice, once per reporting node
    /// (web1 → db1 and db1 → web1), with TX and RX as that node saw them.
    Top {
        #[command(flatten)]
        filter: FlowFilterArgs,
        /// Rank by bytes or packets (sent plus received).
        #[arg(long, value_enum, default_value = "bytes")]
        by: RankBy,
        /// Most pairs to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the ranked pairs as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `tally flows ...`.
pub async fn run_flows(cmd: FlowsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let now = tally_proto::timefmt::now_nanos();
    match cmd {
        FlowsCmd::Query {
            filter,
            limit,
            page_size,
            json,
            quiet,
        } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            if page_size == 0 || page_size > PAGE_MAX {
                bail!("--page-size must be between 1 and {PAGE_MAX}");
            }
            let (start, end) = range(&filter, now)?;
            let base = query_params(&filter, start, end);
            let api = Api::new(server)?;
            let path = tailnet_path(&filter.tailnet.tailnet, "/logging/network");
            let spinner = crate::progress::Progress::spinner("traffic entries", quiet)
                .with_message("fetching ");
            let fetched = fetch(&api, &path, &base, limit, page_size, &spinner).await?;
            spinner.finish();
            warn(&fetched.warnings);
            if json {
                let mut out = String::new();
                for r in &fetched.records {
                    out.push_str(&serde_json::to_string(r)?);
                    out.push('\n');
                }
                return emit(&out);
            }
            let devices = api
                .call(
                    Method::GET,
                    &tailnet_path(&filter.tailnet.tailnet, "/devices"),
                    &[],
                    None,
                )
                .await?;
            let names = Names::from_list(&devices["devices"]);
            let mut rows = entry_rows(&fetched.records, &names);
            let more = fetched.more || rows.len() > limit;
            rows.truncate(limit);
            if rows.is_empty() {
                return emit(&format!(
                    "no flow log entries from {} to {}\n",
                    fmt(start),
                    fmt(end)
                ));
            }
            let mut s = table(
                &["TIME", "NODE", "KIND", "PROTO", "SRC", "DST", "TX", "RX"],
                &rows,
            );
            if more {
                s.push_str(&format!(
                    "(newest {limit} entries shown; raise --limit or narrow the filters for more)\n"
                ));
            }
            emit(&s)
        }
        FlowsCmd::Top {
            filter,
            by,
            limit,
            json,
        } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            let (start, end) = range(&filter, now)?;
            let mut q = query_params(&filter, start, end);
            q.push(("bucket", format!("{}s", bucket_seconds(start, end))));
            let api = Api::new(server)?;
            let path = tailnet_path(&filter.tailnet.tailnet, "/logging/network/graph");
            let graph = api.call(Method::GET, &path, &q, None).await?;
            let mut warnings: Vec<String> = string_list(&graph["errors"]);
            warnings.extend(graph["behind"].as_str().map(str::to_owned));
            warn(&warnings);
            let names = Names::from_list(&graph["nodes"]);
            let pairs = rank(&graph, by);
            let shown = &pairs[..pairs.len().min(limit)];
            if json {
                return emit_json(&json!({
                    "start": graph["start"],
                    "end": graph["end"],
                    "by": match by { RankBy::Bytes => "bytes", RankBy::Packets => "packets" },
                    "pairs": shown.iter().map(|p| p.to_json(&names)).collect::<Vec<_>>(),
                    "more": pairs.len() > limit,
                }));
            }
            if shown.is_empty() {
                return emit(&format!("no flows from {} to {}\n", fmt(start), fmt(end)));
            }
            let rows: Vec<Vec<String>> = shown.iter().map(|p| p.row(&names, by)).collect();
            let mut s = table(&["SRC", "DST", "TX", "RX", "TOTAL"], &rows);
            if pairs.len() > limit {
                s.push_str(&format!(
                    "(top {limit} of {} pairs shown; raise --limit for more)\n",
                    pairs.len()
                ));
            }
            emit(&s)
        }
    }
}

/// RFC 3339 for Unix nanoseconds.
fn fmt(nanos: i64) -> String {
    tally_proto::timefmt::format_nanos(nanos)
}

/// Unix-nanosecond start and end of `--since`/`--until` (end default now).
fn range(f: &FlowFilterArgs, now: i64) -> anyhow::Result<(i64, i64)> {
    let start = parse_time_flag("--since", &f.since, now)?;
    let end = f
        .until
        .as_deref()
        .map(|u| parse_time_flag("--until", u, now))
        .transpose()?
        .unwrap_or(now);
    if start >= end {
        bail!(
            "--since must be before --until (durations count back from now: --since 2h --until 1h)"
        );
    }
    Ok((start, end))
}

/// The whole seconds (at least one) a single bucket spanning `start..end`
/// needs.
pub fn bucket_seconds(start: i64, end: i64) -> i64 {
    let span = end.saturating_sub(start).max(1);
    span.div_euclid(SECOND) + i64::from(span.rem_euclid(SECOND) != 0)
}

/// The query parameters for the range and the filters given.
fn query_params(f: &FlowFilterArgs, start: i64, end: i64) -> Vec<(&'static str, String)> {
    let mut q = vec![("start", fmt(start)), ("end", fmt(end))];
    for (name, v) in [
        ("node", f.node.clone()),
        ("peer", f.peer.clone()),
        ("src", f.src.clone()),
        ("dst", f.dst.clone()),
        ("port", f.port.map(|p| p.to_string())),
        ("proto", f.proto.clone()),
        ("kind", f.kind.clone()),
    ] {
        if let Some(v) = v {
            q.push((name, v));
        }
    }
    q
}

/// Prints each distinct warning to stderr.
fn warn(warnings: &[String]) {
    let distinct: BTreeSet<&String> = warnings.iter().collect();
    for w in distinct {
        eprintln!("warning: {w}");
    }
}

/// The strings of a JSON list (other items as JSON).
fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Records fetched by [`fetch`].
struct Fetched {
    /// Whole records, newest first.
    records: Vec<Value>,
    /// More entries match than were fetched.
    more: bool,
    /// The server's `errors` and `behind` notes.
    warnings: Vec<String>,
}

/// Number of traffic entries in a record.
pub fn entry_count(record: &Value) -> usize {
    TRAFFIC_KINDS
        .iter()
        .map(|(list, _)| record[*list].as_array().map_or(0, Vec::len))
        .sum()
}

/// Fetches whole records, newest first, following `nextCursor` until
/// `limit` entries (the last record may go over).
async fn fetch(
    api: &Api,
    path: &str,
    base: &[(&str, String)],
    limit: usize,
    page_size: usize,
    progress: &crate::progress::Progress,
) -> anyhow::Result<Fetched> {
    let mut out = Fetched {
        records: Vec::new(),
        more: false,
        warnings: Vec::new(),
    };
    let mut entries = 0usize;
    let mut cursor: Option<String> = None;
    loop {
        let mut q = base.to_vec();
        q.push(("limit", (limit - entries).min(page_size).to_string()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let mut page = api.call(Method::GET, path, &q, None).await?;
        out.warnings.extend(string_list(&page["errors"]));
        out.warnings
            .extend(page["behind"].as_str().map(str::to_owned));
        let records = match page.get_mut("logs").map(Value::take) {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => bail!("the server's flow log answer has a `logs` that is not a list"),
        };
        let next = page["nextCursor"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let mut left = records.len();
        for r in records {
            left -= 1;
            let n = entry_count(&r);
            entries += n;
            progress.inc(n as u64);
            out.records.push(r);
            if entries >= limit {
                break;
            }
        }
        if entries >= limit {
            out.more = left > 0 || next.is_some();
            return Ok(out);
        }
        match next {
            // A cursor that does not move would loop forever.
            Some(n) if cursor.as_deref() != Some(n.as_str()) => cursor = Some(n),
            _ => return Ok(out),
        }
    }
}

/// Node names and addresses, for showing IDs and addresses as names.
#[derive(Debug, Default)]
pub struct Names {
    /// Node ID → name.
    by_id: HashMap<String, String>,
    /// Address → node ID.
    by_addr: HashMap<IpAddr, String>,
}

impl Names {
    /// From a list of nodes (`/devices`' `devices`, the graph's `nodes`):
    /// objects with `id`, `name` and `addresses` (IPs or CIDRs).
    pub fn from_list(v: &Value) -> Self {
        let mut names = Self::default();
        for n in v.as_array().map_or(&[][..], Vec::as_slice) {
            let Some(id) = n["id"].as_str().filter(|s| !s.is_empty()) else {
                continue;
            };
            let name = n["name"].as_str().filter(|s| !s.is_empty()).unwrap_or(id);
            names.by_id.insert(id.to_owned(), name.to_owned());
            for a in n["addresses"].as_array().map_or(&[][..], Vec::as_slice) {
                let ip = a
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok());
                if let Some(ip) = ip {
                    names.by_addr.insert(ip.to_canonical(), id.to_owned());
                }
            }
        }
        names
    }

    /// The node's name, or the ID itself when it is unknown.
    pub fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.by_id.get(id).map_or(id, String::as_str)
    }

    /// The ID of the node holding `ip`.
    pub fn owner(&self, ip: IpAddr) -> Option<&str> {
        self.by_addr.get(&ip.to_canonical()).map(String::as_str)
    }
}

/// The IP of an `ip:port` / `[ipv6]:port` endpoint (or a bare IP).
pub fn endpoint_ip(ep: &str) -> Option<IpAddr> {
    ep.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| ep.parse::<IpAddr>())
        .ok()
}

/// An endpoint cell: the endpoint, then `(name)` when its address belongs
/// to a node other than the reporting one.
pub fn endpoint_cell(ep: &Value, reporter: &str, names: &Names) -> String {
    let s = cell(ep);
    match ep
        .as_str()
        .and_then(endpoint_ip)
        .and_then(|ip| names.owner(ip))
    {
        Some(owner) if owner != reporter => format!("{s} ({})", names.name(owner)),
        _ => s,
    }
}

/// A protocol number's name (tcp, udp, icmp, icmpv6), else the number;
/// `-` when absent (Tailscale omits zero).
pub fn proto_name(v: &Value) -> String {
    match v.as_u64() {
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(1) => "icmp".into(),
        Some(58) => "icmpv6".into(),
        Some(n) => n.to_string(),
        None if v.is_null() => "-".into(),
        None => cell(v),
    }
}

/// Bytes for people: `900 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss above 2^53 bytes does not show at one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A TX or RX cell: `packets/bytes` (bytes for people), `-` when both are 0.
pub fn counts_cell(pkts: u64, bytes: u64) -> String {
    if pkts == 0 && bytes == 0 {
        "-".into()
    } else {
        format!("{pkts}/{}", human_bytes(bytes))
    }
}

/// The table rows of records: one per traffic entry, in record order and
/// within a record by kind (virtual, subnet, exit).
pub fn entry_rows(records: &[Value], names: &Names) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in records {
        let node = r["nodeId"].as_str().unwrap_or_default();
        let node_cell = if node.is_empty() {
            "-".to_owned()
        } else {
            names.name(node).to_owned()
        };
        for (list, kind) in TRAFFIC_KINDS {
            for e in r[list].as_array().map_or(&[][..], Vec::as_slice) {
                let n = |k: &str| e[k].as_u64().unwrap_or(0);
                rows.push(vec![
                    time_cell(&r["start"]),
                    node_cell.clone(),
                    kind.to_owned(),
                    proto_name(&e["proto"]),
                    endpoint_cell(&e["src"], node, names),
                    endpoint_cell(&e["dst"], node, names),
                    counts_cell(n("txPkts"), n("txBytes")),
                    counts_cell(n("rxPkts"), n("rxBytes")),
                ]);
            }
        }
    }
    rows
}

/// One node pair's traffic over the range, as its source node reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pair {
    /// The reporting node's ID.
    pub src: String,
    /// The remote node's ID, or the remote address.
    pub dst: String,
    /// Whether `dst` is a node ID.
    pub dst_is_node: bool,
    /// Packets sent.
    pub tx_pkts: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_pkts: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

impl Pair {
    /// Sent plus received, in the ranking's unit.
    pub fn total(&self, by: RankBy) -> u64 {
        match by {
            RankBy::Bytes => self.tx_bytes.saturating_add(self.rx_bytes),
            RankBy::Packets => self.tx_pkts.saturating_add(self.rx_pkts),
        }
    }

    fn dst_name<'a>(&'a self, names: &'a Names) -> &'a str {
        if self.dst_is_node {
            names.name(&self.dst)
        } else {
            &self.dst
        }
    }

    /// SRC, DST, TX, RX, TOTAL.
    pub fn row(&self, names: &Names, by: RankBy) -> Vec<String> {
        let total = self.total(by);
        vec![
            names.name(&self.src).to_owned(),
            self.dst_name(names).to_owned(),
            counts_cell(self.tx_pkts, self.tx_bytes),
            counts_cell(self.rx_pkts, self.rx_bytes),
            match by {
                RankBy::Bytes => human_bytes(total),
                RankBy::Packets => format!("{total} pkts"),
            },
        ]
    }

    /// The pair for `--json`: IDs, names and exact counts.
    pub fn to_json(&self, names: &Names) -> Value {
        let mut m = Map::new();
        m.insert("src".into(), json!(self.src));
        m.insert("srcName".into(), json!(names.name(&self.src)));
        m.insert("dst".into(), json!(self.dst));
        m.insert("dstIsNode".into(), json!(self.dst_is_node));
        if self.dst_is_node {
            m.insert("dstName".into(), json!(names.name(&self.dst)));
        }
        m.insert("txPkts".into(), json!(self.tx_pkts));
        m.insert("txBytes".into(), json!(self.tx_bytes));
        m.insert("rxPkts".into(), json!(self.rx_pkts));
        m.insert("rxBytes".into(), json!(self.rx_bytes));
        m.insert("totalPkts".into(), json!(self.total(RankBy::Packets)));
        m.insert("totalBytes".into(), json!(self.total(RankBy::Bytes)));
        Value::Object(m)
    }
}

/// The graph's edges summed over its buckets per (source, destination),
/// largest total first (ties by source, then destination).
pub fn rank(graph: &Value, by: RankBy) -> Vec<Pair> {
    let mut sums: BTreeMap<(String, String, bool), Pair> = BTreeMap::new();
    for b in graph["buckets"].as_array().map_or(&[][..], Vec::as_slice) {
        for e in b["edges"].as_array().map_or(&[][..], Vec::as_slice) {
            let src = e["src"].as_str().unwrap_or("-").to_owned();
            let dst_is_node = e["dstIsNode"].as_bool().unwrap_or(false);
            let dst = e["dst"]
                .as_str()
                .or(e["dstAddress"].as_str())
                .unwrap_or("-")
                .to_owned();
            let p = sums
                .entry((src.clone(), dst.clone(), dst_is_node))
                .or_insert_with(|| Pair {
                    src,
                    dst,
                    dst_is_node,
                    ..Pair::default()
                });
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            p.tx_pkts = p.tx_pkts.saturating_add(n("txPkts"));
            p.tx_bytes = p.tx_bytes.saturating_add(n("txBytes"));
            p.rx_pkts = p.rx_pkts.saturating_add(n("rxPkts"));
            p.rx_bytes = p.rx_bytes.saturating_add(n("rxBytes"));
        }
    }
    let mut pairs: Vec<Pair> = sums.into_values().collect();
    // Stable sort over the map's (src, dst) order keeps ties deterministic.
    pairs.sort_by_key(|p| std::cmp::Reverse(p.total(by)));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::from_list(&json!([
            {"id": "n1", "name": "web1", "addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1"]},
            {"id": "n2", "name": "db1", "addresses": ["100.64.0.2"]},
            {"id": "n3", "name": "", "addresses": []},
        ]))
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(900), "900 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1500), "1.5 KiB");
        assert_eq!(human_bytes(156_400), "152.7 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(counts_cell(10, 1500), "10/1.5 KiB");
        assert_eq!(counts_cell(0, 0), "-");
        assert_eq!(counts_cell(1, 0), "1/0 B");
    }

    #[test]
    fn protocols_by_name() {
        assert_eq!(proto_name(&json!(6)), "tcp");
        assert_eq!(proto_name(&json!(17)), "udp");
        assert_eq!(proto_name(&json!(1)), "icmp");
        assert_eq!(proto_name(&json!(58)), "icmpv6");
        assert_eq!(proto_name(&json!(47)), "47");
        assert_eq!(proto_name(&Value::Null), "-");
    }

    #[test]
    fn endpoints_name_the_peer_node() {
        let n = names();
        assert_eq!(
            endpoint_ip("100.64.0.1:5555"),
            Some("100.64.0.1".parse().unwrap())
        );
        assert_eq!(
            endpoint_ip("[fd7a:115c:a1e0::1]:443"),
            Some("fd7a:115c:a1e0::1".parse().unwrap())
        );
        assert_eq!(endpoint_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(endpoint_ip("nonsense"), None);
        assert_eq!(
            endpoint_cell(&json!("100.64.0.2:5432"), "n1", &n),
            "100.64.0.2:5432 (db1)"
        );
        // The reporting node's own address stays plain.
        assert_eq!(
            endpoint_cell(&json!("100.64.0.1:5555"), "n1", &n),
            "100.64.0.1:5555"
        );
        assert_eq!(
            endpoint_cell(&json!("[fd7a:115c:a1e0::1]:22"), "n2", &n),
            "[fd7a:115c:a1e0::1]:22 (web1)"
        );
        // IPv4-mapped IPv6 is the same address.
        assert_eq!(
            endpoint_cell(&json!("[::ffff:100.64.0.2]:1"), "n1", &n),
            "[::ffff:100.64.0.2]:1 (db1)"
        );
        assert_eq!(endpoint_cell(&json!("8.8.8.8:53"), "n1", &n), "8.8.8.8:53");
        assert_eq!(n.name("n3"), "n3");
        assert_eq!(n.name("gone"), "gone");
    }

    #[test]
    fn one_row_per_traffic_entry() {
        let records = [
            json!({"logged": "2026-01-01T00:00:06.123Z", "nodeId": "n1",
                "start": "2026-01-01T00:00:00.5Z", "end": "2026-01-01T00:00:05Z",
                "exitTraffic": [{"proto": 17, "src": "100.64.0.1:40000", "dst": "8.8.8.8:53",
                    "txPkts": 1, "txBytes": 60}],
                "virtualTraffic": [{"proto": 6, "src": "100.64.0.1:5555", "dst": "100.64.0.2:5432",
                    "txPkts": 10, "txBytes": 1500, "rxPkts": 8, "rxBytes": 900}]}),
            json!({"nodeId": "n9", "start": "x", "end": "y",
                "subnetTraffic": [{"src": "10.0.0.1:1", "dst": "10.0.0.2:2"}]}),
        ];
        assert_eq!(entry_count(&records[0]), 2);
        let rows = entry_rows(&records, &names());
        assert_eq!(
            rows,
            vec![
                vec![
                    "2026-01-01T00:00:00Z",
                    "web1",
                    "virtual",
                    "tcp",
                    "100.64.0.1:5555",
                    "100.64.0.2:5432 (db1)",
                    "10/1.5 KiB",
                    "8/900 B"
                ],
                vec![
                    "2026-01-01T00:00:00Z",
                    "web1",
                    "exit",
                    "udp",
                    "100.64.0.1:40000",
                    "8.8.8.8:53",
                    "1/60 B",
                    "-"
                ],
                vec![
                    "x",
                    "n9",
                    "subnet",
                    "-",
                    "10.0.0.1:1",
                    "10.0.0.2:2",
                    "-",
                    "-"
                ],
            ]
        );
    }

    #[test]
    fn pairs_sum_over_buckets_and_rank() {
        let graph = json!({"buckets": [
            {"start": "a", "edges": [
                {"src": "n1", "dst": "n2", "dstIsNode": true,
                    "txPkts": 10, "txBytes": 1500, "rxPkts": 8, "rxBytes": 900},
                {"src": "n1", "dst": "1.1.1.1", "dstIsNode": false, "dstAddress": "1.1.1.1",
                    "txPkts": 30, "txBytes": 840, "rxPkts": 30, "rxBytes": 840},
            ]},
            {"start": "b", "edges": [
                {"src": "n2", "dst": "n1", "dstIsNode": true,
                    "txPkts": 8, "txBytes": 900, "rxPkts": 10, "rxBytes": 1500},
                {"src": "n1", "dst": "n2", "dstIsNode": true,
                    "txPkts": 100, "txBytes": 150000, "rxPkts": 50, "rxBytes": 4000},
            ]},
        ]});
        let n = names();
        let by_bytes = rank(&graph, RankBy::Bytes);
        let order: Vec<(&str, &str)> = by_bytes
            .iter()
            .map(|p| (p.src.as_str(), p.dst.as_str()))
            .collect();
        assert_eq!(order, [("n1", "n2"), ("n2", "n1"), ("n1", "1.1.1.1")]);
        assert_eq!(by_bytes[0].total(RankBy::Bytes), 156_400);
        assert_eq!(
            by_bytes[0].row(&n, RankBy::Bytes),
            ["web1", "db1", "110/147.9 KiB", "58/4.8 KiB", "152.7 KiB"]
        );
        let by_pkts = rank(&graph, RankBy::Packets);
        let order: Vec<(&str, &str)> = by_pkts
            .iter()
            .map(|p| (p.src.as_str(), p.dst.as_str()))
            .collect();
        assert_eq!(order, [("n1", "n2"), ("n1", "1.1.1.1"), ("n2", "n1")]);
        assert_eq!(
            by_pkts[1].row(&n, RankBy::Packets),
            ["web1", "1.1.1.1", "30/840 B", "30/840 B", "60 pkts"]
        );
        let j = by_pkts[1].to_json(&n);
        assert_eq!(j["dstIsNode"], false);
        assert!(j.get("dstName").is_none());
        assert_eq!(
            (j["totalPkts"].as_u64(), j["totalBytes"].as_u64()),
            (Some(60), Some(1680))
        );
        assert_eq!(by_bytes[1].to_json(&n)["dstName"], "web1");
        assert!(rank(&json!({}), RankBy::Bytes).is_empty());
    }

    #[test]
    fn one_bucket_spans_the_range() {
        assert_eq!(bucket_seconds(0, 3600 * SECOND), 3600);
        assert_eq!(bucket_seconds(0, 3600 * SECOND + 1), 3601);
        assert_eq!(bucket_seconds(5, 6), 1);
        assert_eq!(bucket_seconds(7, 7), 1);
    }

    #[test]
    fn ranges_and_parameters() {
        const NOW: i64 = 1_700_000_000 * SECOND;
        let mut f = FlowFilterArgs {
            tailnet: TailnetArg {
                tailnet: "-".into(),
            },
            since: "1h".into(),
            until: None,
            node: Some("web1".into()),
            peer: None,
            src: None,
            dst: Some("100.64.0.0/10".into()),
            port: Some(5432),
            proto: Some("tcp".into()),
            kind: None,
        };
        let (s, e) = range(&f, NOW).unwrap();
        assert_eq!((s, e), (NOW - 3600 * SECOND, NOW));
        let q = query_params(&f, s, e);
        assert_eq!(
            q,
            [
                ("start", "2023-11-14T21:13:20Z".to_owned()),
                ("end", "2023-11-14T22:13:20Z".to_owned()),
                ("node", "web1".to_owned()),
                ("dst", "100.64.0.0/10".to_owned()),
                ("port", "5432".to_owned()),
                ("proto", "tcp".to_owned()),
            ]
        );
        f.until = Some("2h".into());
        let err = range(&f, NOW).unwrap_err().to_string();
        assert!(err.contains("--since must be before --until"), "{err}");
        f.since = "yesterday-ish".into();
        assert!(range(&f, NOW).unwrap_err().to_string().contains("--since"));
    }
}
