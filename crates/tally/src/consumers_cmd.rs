//! `tally consumers`: the server's consumers of its log (flow index,
//! transparency log, reconciliation): where each is, how far behind, what
//! it could not handle; pause and resume. Needs `server:operate` (an
//! owner's or admin's key of the server's first tailnet).

use reqwest::Method;
use serde_json::Value;
use std::fmt::Write as _;

use crate::client::ServerArgs;
use crate::control_cmd::{Api, JsonArg, cell, emit, emit_json, seg, table};

/// Consumer verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ConsumersCmd {
    /// Every consumer: state, position, lag, errors, rejected records.
    List {
        #[command(flatten)]
        out: JsonArg,
    },
    /// One consumer with its latest rejected records (position and reason).
    Show {
        /// Consumer name (flow-index, transparency-log, reconciliation).
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Pause a consumer after the batch in hand (audited).
    Pause {
        /// Consumer name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Resume a paused consumer, or make a halted one retry the record it
    /// halted at (audited).
    Resume {
        /// Consumer name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
}

/// Lag as text: positions and seconds.
fn lag(c: &Value) -> String {
    let records = c["lagRecords"].as_u64().unwrap_or(0);
    if records == 0 {
        return "0".into();
    }
    format!(
        "{records} ({:.0} s)",
        c["lagSeconds"].as_f64().unwrap_or(0.0)
    )
}

fn row(c: &Value) -> Vec<String> {
    vec![
        cell(&c["name"]),
        cell(&c["state"]),
        cell(&c["position"]),
        lag(c),
        cell(&c["errors"]),
        cell(&c["rejected"]),
        cell(&c["policy"]),
    ]
}

const HEADERS: [&str; 7] = [
    "CONSUMER", "STATE", "POSITION", "LAG", "ERRORS", "REJECTED", "POLICY",
];

/// One consumer in detail.
fn detail(c: &Value) -> String {
    let mut out = table(&HEADERS, &[row(c)]);
    if let Some(e) = c["lastError"].as_str() {
        let _ = writeln!(out, "\nlast error: {e}");
    }
    if let Some(h) = c["haltedAt"].as_object() {
        let _ = writeln!(
            out,
            "\nhalted before position {}: {} (since {}); `tally consumers resume {}` retries it",
            cell(&h["position"].clone()),
            cell(&h["reason"].clone()),
            cell(&h["at"].clone()),
            cell(&c["name"])
        );
    }
    let rejected = c["recentRejections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !rejected.is_empty() {
        let rows: Vec<Vec<String>> = rejected
            .iter()
            .rev()
            .map(|r| vec![cell(&r["position"]), cell(&r["at"]), cell(&r["reason"])])
            .collect();
        let _ = write!(
            out,
            "\nlatest rejected records, newest first ({} in all):\n{}",
            cell(&c["rejected"]),
            table(&["POSITION", "AT", "REASON"], &rows)
        );
    }
    out
}

/// Runs `tally consumers ...`.
pub async fn run(cmd: ConsumersCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        ConsumersCmd::List { out } => {
            let v = api
                .call(Method::GET, "/api/v2/consumers", &[], None)
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = v["consumers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(row)
                .collect();
            emit(&table(&HEADERS, &rows))
        }
        ConsumersCmd::Show { name, out } => {
            let v = api
                .call(Method::GET, "/api/v2/consumers", &[], None)
                .await?;
            let list = v["consumers"].as_array().cloned().unwrap_or_default();
            let Some(c) = list.iter().find(|c| c["name"] == name.as_str()) else {
                let names: Vec<String> = list.iter().map(|c| cell(&c["name"])).collect();
                anyhow::bail!(
                    "no consumer named {name:?}; the server's consumers are {}",
                    names.join(", ")
                );
            };
            if out.json {
                emit_json(c)
            } else {
                emit(&detail(c))
            }
        }
        ConsumersCmd::Pause { name, out } => control(&api, &name, "pause", out.json).await,
        ConsumersCmd::Resume { name, out } => control(&api, &name, "resume", out.json).await,
    }
}

/// `POST /api/v2/consumers/{name}/{verb}`, then the consumer's new state.
async fn control(api: &Api, name: &str, verb: &str, json: bool) -> anyhow::Result<()> {
    let v = api
        .call(
            Method::POST,
            &format!("/api/v2/consumers/{}/{verb}", seg(name)),
            &[],
            None,
        )
        .await?;
    if json {
        return emit_json(&v);
    }
    let c = &v["consumer"];
    emit(&format!(
        "{}: {} at position {} (lag {})\n",
        cell(&c["name"]),
        if verb == "pause" { "paused" } else { "resumed" },
        cell(&c["position"]),
        lag(c)
    ))
}
