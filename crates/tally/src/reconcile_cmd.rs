//! `tally reconcile report`: double-entry reconciliation of flow records —
//! completeness per node and node pair, and the findings, newest first.
//! `tally reconcile replay`: what the reconciler finds, recomputed offline
//! from a stopped server's data directory.

use std::fmt::Write as _;
use std::path::PathBuf;

use reqwest::Method;
use serde_json::Value;

use crate::client::ServerArgs;
use crate::control_cmd::{Api, emit, emit_json, parse_time_flag, tailnet_path};

/// Reconciliation verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ReconcileCmd {
    /// Completeness per node and pair, and the findings of a time range
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
        /// Only findings naming this node ID
        #[arg(long)]
        node: Option<String>,
        /// Most findings shown
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print the server's JSON
        #[arg(long)]
        json: bool,
    },
    /// Recompute offline what the reconciler finds in a stopped server's
    /// data directory (every stored flow record, in store order)
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
    },
}

fn time(n: &Value) -> String {
    n.as_i64()
        .map(tally_proto::timefmt::format_nanos)
        .unwrap_or_else(|| "-".into())
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
            json,
        } => report(server, tailnet, since, class, node, limit, json).await,
        ReconcileCmd::Replay {
            data_dir,
            control_db,
            window,
            grace,
            json,
        } => replay(data_dir, control_db, window, grace, json).await,
    }
}

async fn report(
    server: &ServerArgs,
    tailnet: String,
    since: String,
    class: Option<String>,
    node: Option<String>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let now = tally_proto::timefmt::now_nanos();
    let start = parse_time_flag("--since", &since, now)?;
    let mut query = vec![
        ("start", tally_proto::timefmt::format_nanos(start)),
        ("limit", limit.to_string()),
    ];
    if let Some(c) = class {
        query.push(("class", c));
    }
    if let Some(n) = node {
        query.push(("node", n));
    }
    let v = Api::new(server)?
        .call(
            Method::GET,
            &tailnet_path(&tailnet, "/reconciliation"),
            &query,
            None,
        )
        .await?;
    if json {
        return emit_json(&v);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>8} {:>12}  {:<9}  LAST DISCREPANCY",
        "NODE", "JUDGED", "MATCHED", "COMPLETE", "TREND"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>8} {:>11.2}%  {:<9}  {}",
            n["node"].as_str().unwrap_or("-"),
            n["judged"].as_u64().unwrap_or(0),
            n["matched"].as_u64().unwrap_or(0),
            n["completeness"].as_f64().unwrap_or(1.0) * 100.0,
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
                "{} <-> {}  {:.2}% of {} windows  {:<9}  last {}",
                p["nodes"][0].as_str().unwrap_or("-"),
                p["nodes"][1].as_str().unwrap_or("-"),
                p["completeness"].as_f64().unwrap_or(1.0) * 100.0,
                p["judged"].as_u64().unwrap_or(0),
                p["trend"].as_str().unwrap_or("-"),
                time(&p["lastDiscrepancy"])
            );
        }
    }
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\n{} findings since {}",
        findings.len(),
        tally_proto::timefmt::format_nanos(start)
    );
    if !v["nextCursor"].is_null() {
        let _ = writeln!(
            out,
            "(older findings not shown: narrow --since, or page with the API's cursor)"
        );
    }
    for f in &findings {
        let _ = writeln!(
            out,
            "{}  {:<26} {:<8} {} -> {}  {}",
            time(&f["window"]["start"]),
            f["class"].as_str().unwrap_or("-"),
            f["severity"].as_str().unwrap_or("-"),
            f["node"].as_str().unwrap_or("-"),
            f["peer"].as_str().unwrap_or("-"),
            f["detail"].as_str().unwrap_or("")
        );
    }
    emit(&out)
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `tally reconcile replay`.
async fn replay(
    data_dir: PathBuf,
    control_db: Option<String>,
    window: Option<std::time::Duration>,
    grace: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let control_db = control_db.filter(|u| !u.is_empty());
    let saved = if data_dir.is_dir() {
        tally_server::reconcile::saved_config(&data_dir).unwrap_or_else(|e| {
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
    let r = tally_server::reconcile::replay(&data_dir, control_db.as_deref(), config).await?;
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
