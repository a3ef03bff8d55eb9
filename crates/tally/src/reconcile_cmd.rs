//! `tally reconcile report`: double-entry reconciliation of flow records —
//! a one-screen summary (findings and incidents per class, one line per
//! incident, completeness per node and pair, nodes by name), and the
//! per-window findings with `--findings` or `--incident ID`.
//! `tally reconcile replay`: what the reconciler finds, recomputed offline
//! from a stopped server's data directory (builds with the `server`
//! feature only: it runs the server's reconciler).

use std::fmt::Write as _;
#[cfg(feature = "server")]
use std::path::PathBuf;

use reqwest::Method;
use serde_json::Value;

use crate::client::ServerArgs;
use crate::control_cmd::{Api, emit, emit_json, parse_time_flag, tailnet_path};

/// Reconciliation verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ReconcileCmd {
    /// A summary of the findings of a time range (per class, per incident),
    /// completeness per node and pair, and the findings with --findings
    Report {
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        /// From (duration ago or RFC 3339)
        #[arg(long, default_value = "1h")]
        since: String,
        /// Only this class (count_mismatch, missing_suspicious, ...)
        #[arg(long)]
        class: Option<String>,
        /// Only findings naming this node (ID or name)
        #[arg(long)]
        node: Option<String>,
        /// Most findings listed (with --findings or --incident)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// List the per-window findings too, newest first
        #[arg(long)]
        findings: bool,
        /// List the findings of this incident (an ID from the report)
        #[arg(long, value_name = "ID")]
        incident: Option<String>,
        /// Print the server's JSON
        #[arg(long)]
        json: bool,
    },
    /// Recompute offline what the reconciler finds in a stopped server's
    /// data directory (every stored flow record, in store order)
    #[cfg(feature = "server")]
    Replay {
        /// The server's data directory (the server must be stopped)
        #[arg(long, env = "TALLY_DATA_DIR")]
        data_dir: PathBuf,
        /// The server's PostgreSQL control database, if it used one
        #[arg(
            long,
            value_name = "URL",
            env = "TALLY_CONTROL_DB",
            hide_env_values = true
        )]
        control_db: Option<String>,
        /// Window length (default: what the server's reconciler ran with, else 5s)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        window: Option<std::time::Duration>,
        /// Grace period for late records (default: what the server's
        /// reconciler ran with, else 60s)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
        /// One finding per line, as JSON (as stored in the findings collection)
        #[arg(long)]
        json: bool,
        /// No progress bar (one is drawn on stderr only when it is a terminal)
        #[arg(short, long)]
        quiet: bool,
    },
}

fn time(n: &Value) -> String {
    n.as_i64()
        .map(tally_proto::timefmt::format_nanos)
        .unwrap_or_else(|| "-".into())
}

/// `ns` to the second, RFC 3339.
fn second(ns: i64) -> String {
    tally_proto::timefmt::format_nanos(ns - ns.rem_euclid(1_000_000_000))
}

/// `start–end`, the end without its date when it is the start's.
fn span(start: i64, end: i64) -> String {
    let (a, b) = (second(start), second(end));
    match (a.get(..11), b.get(..11), b.get(11..)) {
        (Some(da), Some(db), Some(rest)) if da == db => format!("{a}–{rest}"),
        _ => format!("{a}–{b}"),
    }
}

/// A node's name, or its ID when it has none (an address).
fn named<'a>(name: &'a Value, id: &'a Value) -> &'a str {
    name.as_str().or_else(|| id.as_str()).unwrap_or("-")
}

/// Completeness as a percentage, `n/a` when nothing was judged.
fn percent(v: &Value) -> String {
    match v.as_f64() {
        Some(r) => format!("{:.2}%", r * 100.0),
        None => "n/a".into(),
    }
}

/// Runs `tally reconcile ...`.
pub async fn run(cmd: ReconcileCmd, server: &ServerArgs) -> anyhow::Result<()> {
    match cmd {
        ReconcileCmd::Report {
            tailnet,
            since,
            class,
            node,
            limit,
            findings,
            incident,
            json,
        } => {
            let q = ReportQuery {
                tailnet,
                since,
                class,
                node,
                limit,
                incident,
            };
            report(server, q, findings, json).await
        }
        #[cfg(feature = "server")]
        ReconcileCmd::Replay {
            data_dir,
            control_db,
            window,
            grace,
            json,
            quiet,
        } => replay(data_dir, control_db, window, grace, json, quiet).await,
    }
}

/// What `tally reconcile report` asks the server.
struct ReportQuery {
    tailnet: String,
    since: String,
    class: Option<String>,
    node: Option<String>,
    limit: u32,
    incident: Option<String>,
}

async fn report(
    server: &ServerArgs,
    q: ReportQuery,
    list_findings: bool,
    json: bool,
) -> anyhow::Result<()> {
    let now = tally_proto::timefmt::now_nanos();
    let start = parse_time_flag("--since", &q.since, now)?;
    let mut query = vec![
        ("start", tally_proto::timefmt::format_nanos(start)),
        ("limit", q.limit.to_string()),
    ];
    if let Some(c) = q.class {
        query.push(("class", c));
    }
    if let Some(n) = q.node {
        query.push(("node", n));
    }
    let one_incident = q.incident.is_some();
    if let Some(i) = q.incident {
        query.push(("incident", i));
    }
    let v = Api::new(server)?
        .call(
            Method::GET,
            &tailnet_path(&q.tailnet, "/reconciliation"),
            &query,
            None,
        )
        .await?;
    if json {
        return emit_json(&v);
    }
    let mut out = render_summary(&v, start);
    if list_findings || one_incident {
        render_findings(&mut out, &v, one_incident);
    } else if v["summary"]["findings"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "\nper-window findings: --findings (newest {}), or --incident ID for one incident's",
            q.limit
        );
    }
    emit(&out)
}

/// The one-screen summary: per class, per incident, per node and pair.
fn render_summary(v: &Value, start: i64) -> String {
    let mut out = String::new();
    let s = &v["summary"];
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(
        out,
        "{} in {} from {} to {}",
        plural(s["findings"].as_u64().unwrap_or(0), "finding"),
        plural(s["incidents"].as_u64().unwrap_or(0), "incident"),
        v["start"]
            .as_str()
            .map_or_else(|| tally_proto::timefmt::format_nanos(start), str::to_owned),
        v["end"].as_str().unwrap_or("now"),
    );
    if let Some(note) = s["note"].as_str() {
        let _ = writeln!(out, "note: {note}");
    }
    let classes = s["classes"].as_array().cloned().unwrap_or_default();
    if !classes.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<26} {:>9} {:>10}",
            "CLASS", "FINDINGS", "INCIDENTS"
        );
        for c in &classes {
            let _ = writeln!(
                out,
                "{:<26} {:>9} {:>10}",
                c["class"].as_str().unwrap_or("-"),
                c["findings"].as_u64().unwrap_or(0),
                c["incidents"].as_u64().unwrap_or(0)
            );
        }
    }
    let incidents = v["incidents"].as_array().cloned().unwrap_or_default();
    if !incidents.is_empty() {
        let _ = writeln!(
            out,
            "\nINCIDENTS, newest first (findings of one at most {} s apart; --incident ID lists its findings)",
            s["incidentGapSeconds"].as_u64().unwrap_or(120)
        );
        for i in &incidents {
            let (a, b) = (
                i["window"]["start"].as_i64().unwrap_or(0),
                i["window"]["end"].as_i64().unwrap_or(0),
            );
            let dur =
                std::time::Duration::from_secs(u64::try_from((b - a) / 1_000_000_000).unwrap_or(0));
            let peers: Vec<&str> = i["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| named(&p["name"], &p["id"]))
                .collect();
            let conns = i["connections"]["count"].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "{}  {}  {}  {} ({})  {} findings, peers {}; {} connection{}  {}",
                named(&i["nodeName"], &i["node"]),
                i["class"].as_str().unwrap_or("-"),
                i["severity"].as_str().unwrap_or("-"),
                span(a, b),
                humantime::format_duration(dur),
                i["findings"].as_u64().unwrap_or(0),
                if peers.is_empty() {
                    "-".to_owned()
                } else {
                    peers.join(", ")
                },
                conns,
                if conns == 1 { "" } else { "s" },
                i["id"].as_str().unwrap_or("-"),
            );
        }
        let listed = incidents.len() as u64;
        if s["incidents"].as_u64().is_some_and(|n| n > listed) {
            let _ = writeln!(out, "(the {listed} newest incidents shown)");
        }
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<18} {:>8} {:>8} {:>9}  {:<9}  LAST DISCREPANCY",
        "NODE", "ID", "JUDGED", "MATCHED", "COMPLETE", "TREND"
    );
    let mut nodes: Vec<&Value> = v["nodes"].as_array().into_iter().flatten().collect();
    nodes.sort_by_key(|n| (named(&n["nodeName"], &n["node"]), n["node"].as_str()));
    for n in nodes {
        let _ = writeln!(
            out,
            "{:<20} {:<18} {:>8} {:>8} {:>9}  {:<9}  {}",
            named(&n["nodeName"], &n["node"]),
            n["node"].as_str().unwrap_or("-"),
            n["judged"].as_u64().unwrap_or(0),
            n["matched"].as_u64().unwrap_or(0),
            percent(&n["completeness"]),
            n["trend"].as_str().unwrap_or("-"),
            time(&n["lastDiscrepancy"])
        );
    }
    let pairs = v["pairs"].as_array().cloned().unwrap_or_default();
    if pairs.iter().any(|p| p["matched"] != p["judged"]) {
        let _ = writeln!(out, "\nPAIRS WITH DISCREPANCIES");
        for p in pairs.iter().filter(|p| p["matched"] != p["judged"]) {
            let _ = writeln!(
                out,
                "{} <-> {}  {} of {} windows  {:<9}  last {}",
                named(&p["names"][0], &p["nodes"][0]),
                named(&p["names"][1], &p["nodes"][1]),
                percent(&p["completeness"]),
                p["judged"].as_u64().unwrap_or(0),
                p["trend"].as_str().unwrap_or("-"),
                time(&p["lastDiscrepancy"])
            );
        }
    }
    out
}

/// The per-window findings of the answer, newest first.
fn render_findings(out: &mut String, v: &Value, one_incident: bool) {
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\n{} findings{}, newest first",
        findings.len(),
        if one_incident { " of the incident" } else { "" }
    );
    if !v["nextCursor"].is_null() {
        let _ = writeln!(
            out,
            "(older findings not shown: raise --limit, narrow --since, or page with the API's cursor)"
        );
    }
    for f in &findings {
        let _ = writeln!(
            out,
            "{}  {:<26} {:<8} {} -> {}  {}",
            time(&f["window"]["start"]),
            f["class"].as_str().unwrap_or("-"),
            f["severity"].as_str().unwrap_or("-"),
            named(&f["nodeName"], &f["node"]),
            named(&f["peerName"], &f["peer"]),
            f["detail"].as_str().unwrap_or("")
        );
    }
}

#[cfg(feature = "server")]
fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `tally reconcile replay`.
#[cfg(feature = "server")]
async fn replay(
    data_dir: PathBuf,
    control_db: Option<String>,
    window: Option<std::time::Duration>,
    grace: Option<std::time::Duration>,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let control_db = control_db.filter(|u| !u.is_empty());
    let saved = if data_dir.is_dir() {
        tally_server::consumers::reconcile::saved_config(&data_dir).unwrap_or_else(|e| {
            eprintln!(
                "warning: the server's reconciler configuration is unreadable ({e:#}); defaults unless --window/--grace are given"
            );
            None
        })
    } else {
        None
    };
    let from_state = saved.is_some();
    let mut config = saved.unwrap_or_default();
    if let Some(w) = window {
        config.window_ns = nanos(w);
    }
    if let Some(g) = grace {
        config.grace_ns = nanos(g);
    }
    let bar =
        crate::progress::Progress::items(0, "stored records", quiet).with_message("replaying ");
    let r = tally_server::consumers::reconcile::replay(
        &data_dir,
        control_db.as_deref(),
        config,
        bar.updater(),
    )
    .await?;
    bar.finish();
    for cut in &r.recovery {
        eprintln!("store recovery: {cut}");
    }
    let mut out = String::new();
    if json {
        for f in &r.findings {
            out.push_str(&serde_json::to_string(f)?);
            out.push('\n');
        }
        return emit(&out);
    }
    let dur = |n: i64| humantime::format_duration(std::time::Duration::from_nanos(n.max(0) as u64));
    let _ = writeln!(
        out,
        "window {}, grace {} ({})",
        dur(config.window_ns),
        dur(config.grace_ns),
        if from_state {
            "as the server's reconciler ran, unless given"
        } else {
            "no saved reconciler state: defaults, unless given"
        }
    );
    for f in &r.findings {
        let _ = writeln!(
            out,
            "{}  {:<26} {:<8} {} -> {}  {}",
            tally_proto::timefmt::format_nanos(f.window.start),
            f.class.name(),
            serde_json::to_value(f.severity)?.as_str().unwrap_or("-"),
            f.node,
            f.peer.as_deref().unwrap_or("-"),
            f.detail
        );
    }
    let mut by_class = std::collections::BTreeMap::new();
    for f in &r.findings {
        *by_class.entry(f.class.name()).or_insert(0u64) += 1;
    }
    let classes: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let _ = writeln!(
        out,
        "\n{} findings from {} stored flow and batch records ({} entries observed){}{}",
        r.findings.len(),
        r.records,
        r.stats.observed,
        if classes.is_empty() { "" } else { ": " },
        classes.join(", ")
    );
    emit(&out)
}
