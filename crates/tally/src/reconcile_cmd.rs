//! `tally reconcile report`: double-entry reconciliation of flow records —
//! completeness per node and node pair, and the findings, newest first.

use std::fmt::Write as _;

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
}

fn time(n: &Value) -> String {
    n.as_i64()
        .map(tally_proto::timefmt::format_nanos)
        .unwrap_or_else(|| "-".into())
}

/// Runs `tally reconcile ...`.
pub async fn run(cmd: ReconcileCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let ReconcileCmd::Report {
        tailnet,
        since,
        class,
        node,
        limit,
        json,
    } = cmd;
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
        "{:<22} {:>8} {:>8} {:>12}  LAST DISCREPANCY",
        "NODE", "JUDGED", "MATCHED", "COMPLETE"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>8} {:>11.2}%  {}",
            n["node"].as_str().unwrap_or("-"),
            n["judged"].as_u64().unwrap_or(0),
            n["matched"].as_u64().unwrap_or(0),
            n["completeness"].as_f64().unwrap_or(1.0) * 100.0,
            time(&n["lastDiscrepancy"])
        );
    }
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\n{} findings since {}",
        findings.len(),
        tally_proto::timefmt::format_nanos(start)
    );
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
