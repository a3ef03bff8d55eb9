//! `tally rules` and `tally alerts`: detection rules of a tailnet (list,
//! show, add, enable, disable, delete, test over stored data) and the
//! alerts they raise (list, ack, tail).

use anyhow::{Context, bail};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write;

use crate::client::{Client, ServerArgs};
use crate::control_cmd::{
    Api, JsonArg, cell, emit, emit_json, seg, table, tailnet_path, time_range,
};

/// Rule verbs.
#[derive(Debug, clap::Subcommand)]
pub enum RulesCmd {
    /// The tailnet's rules: built-in ones and its own, enabled or not.
    List {
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// One rule with its Sigma YAML.
    Show {
        /// Rule ID.
        id: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Add a Sigma rule file (a detection rule, or a correlation with the
    /// rules it uses); replaces the rule of the same ID with --replace.
    Add {
        /// The YAML file (- for standard input).
        file: String,
        /// Replace the tailnet's rule with the same ID.
        #[arg(long)]
        replace: bool,
        /// Add it disabled.
        #[arg(long)]
        disabled: bool,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Enable a rule (built-in or the tailnet's own).
    Enable {
        /// Rule ID.
        id: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Disable a rule (built-in or the tailnet's own).
    Disable {
        /// Rule ID.
        id: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Delete one of the tailnet's own rules (built-in rules: disable).
    Delete {
        /// Rule ID.
        id: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Run a rule file over the tailnet's stored data and print the alerts
    /// it would have raised (nothing is stored).
    Test {
        /// The YAML file (- for standard input).
        file: String,
        /// How far back (e.g. 24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
        /// No progress bar (one is drawn on stderr only when it is a terminal)
        #[arg(short, long)]
        quiet: bool,
    },
}

/// Alert verbs.
#[derive(Debug, clap::Subcommand)]
pub enum AlertsCmd {
    /// Alerts, newest first.
    List {
        /// From (duration ago or RFC 3339)
        #[arg(long, default_value = "24h")]
        since: String,
        /// Until (duration ago or RFC 3339)
        #[arg(long)]
        until: Option<String>,
        /// Only these severities (comma-separated: low,medium,high,critical)
        #[arg(long)]
        severity: Option<String>,
        /// Only this rule
        #[arg(long)]
        rule: Option<String>,
        /// Only alerts about this node (name)
        #[arg(long)]
        node: Option<String>,
        /// open or acked
        #[arg(long)]
        status: Option<String>,
        /// Most alerts
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Acknowledge an alert (audited).
    Ack {
        /// Alert ID.
        id: String,
        /// Why, what was done.
        #[arg(long, default_value = "")]
        note: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Follow new alerts as they are raised, like `tail -f`.
    Tail {
        /// Also show alerts stored this long ago (e.g. 1h), then follow.
        #[arg(long)]
        since: Option<String>,
        /// Print each alert's JSON.
        #[arg(long)]
        json: bool,
    },
}

fn read_file(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the rule from standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read the rule file {file}"))
}

fn rule_row(r: &Value) -> Vec<String> {
    let kind = if r["builtin"].as_bool() == Some(true) {
        "built-in"
    } else {
        "own"
    };
    let enabled = match (r["enabled"].as_bool(), r.get("error")) {
        (_, Some(e)) if !e.is_null() => format!("error: {}", cell(e)),
        (Some(true), _) => "yes".into(),
        _ => "no".into(),
    };
    vec![
        cell(&r["id"]),
        cell(&r["level"]),
        enabled,
        kind.into(),
        cell(&r["services"]),
        cell(&r["title"]),
    ]
}

/// What an alert is about: its node, else its group key's values.
fn about(a: &Value) -> String {
    if let Some(n) = a["node"].as_str().filter(|n| !n.is_empty()) {
        return n.to_owned();
    }
    let parts: Vec<String> = a["group"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str().filter(|v| !v.is_empty()).map(str::to_owned))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn alert_row(a: &Value) -> Vec<String> {
    vec![
        cell(&a["windowEnd"]),
        cell(&a["severity"]),
        cell(&a["title"]),
        about(a),
        cell(&a["evidence"]["summary"]),
        cell(&a["status"]),
        cell(&a["id"]),
    ]
}

const ALERT_HEADERS: [&str; 7] = ["TIME", "SEVERITY", "TITLE", "ABOUT", "WHAT", "STATUS", "ID"];

/// Runs `tally rules ...`.
pub async fn run_rules(cmd: RulesCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        RulesCmd::List { tailnet, out } => {
            let v = api
                .call(
                    Method::GET,
                    &tailnet_path(&tailnet, "/detection/rules"),
                    &[],
                    None,
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = v["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(rule_row)
                .collect();
            emit(&table(
                &["ID", "LEVEL", "ENABLED", "KIND", "READS", "TITLE"],
                &rows,
            ))
        }
        RulesCmd::Show { id, tailnet, out } => {
            let v = api
                .call(
                    Method::GET,
                    &tailnet_path(&tailnet, &format!("/detection/rules/{}", seg(&id))),
                    &[],
                    None,
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let mut text = table(
                &["ID", "LEVEL", "ENABLED", "KIND", "READS", "TITLE"],
                &[rule_row(&v)],
            );
            if let Some(d) = v["description"].as_str().filter(|d| !d.is_empty()) {
                text.push_str(&format!("\n{d}\n"));
            }
            text.push_str(&format!("\n{}", v["yaml"].as_str().unwrap_or_default()));
            emit(&text)
        }
        RulesCmd::Add {
            file,
            replace,
            disabled,
            tailnet,
            out,
        } => {
            let yaml = read_file(&file)?;
            let body = json!({ "yaml": yaml, "enabled": !disabled });
            let added = api
                .call(
                    Method::POST,
                    &tailnet_path(&tailnet, "/detection/rules"),
                    &[],
                    Some(&body),
                )
                .await;
            let v = match added {
                Ok(v) => v,
                Err(e) if replace && e.to_string().contains("409") => {
                    let id = rule_id_of(&yaml).context("the file has no id to replace")?;
                    api.call(
                        Method::PUT,
                        &tailnet_path(&tailnet, &format!("/detection/rules/{}", seg(&id))),
                        &[],
                        Some(&body),
                    )
                    .await?
                }
                Err(e) => return Err(e.context(format!("{file} was not added"))),
            };
            if out.json {
                return emit_json(&v);
            }
            emit(&format!(
                "added {} ({}, {}){}\n",
                cell(&v["id"]),
                cell(&v["level"]),
                cell(&v["title"]),
                if disabled { ", disabled" } else { "" }
            ))
        }
        RulesCmd::Enable { id, tailnet } => set_enabled(&api, &tailnet, &id, true).await,
        RulesCmd::Disable { id, tailnet } => set_enabled(&api, &tailnet, &id, false).await,
        RulesCmd::Delete { id, tailnet } => {
            api.call(
                Method::DELETE,
                &tailnet_path(&tailnet, &format!("/detection/rules/{}", seg(&id))),
                &[],
                None,
            )
            .await?;
            emit(&format!("deleted {id}\n"))
        }
        RulesCmd::Test {
            file,
            since,
            tailnet,
            out,
            quiet,
        } => test(server, &file, &since, &tailnet, out.json, quiet).await,
    }
}

/// The top-level `id` of a rule file's last document.
fn rule_id_of(yaml: &str) -> Option<String> {
    yaml.lines()
        .rev()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().trim_matches(['\'', '"']).to_owned())
}

async fn set_enabled(api: &Api, tailnet: &str, id: &str, enabled: bool) -> anyhow::Result<()> {
    api.call(
        Method::PUT,
        &tailnet_path(tailnet, &format!("/detection/rules/{}", seg(id))),
        &[],
        Some(&json!({ "enabled": enabled })),
    )
    .await?;
    emit(&format!(
        "{} {id}\n",
        if enabled { "enabled" } else { "disabled" }
    ))
}

/// `tally rules test`: streams the server's run, a progress bar on a terminal.
async fn test(
    server: &ServerArgs,
    file: &str,
    since: &str,
    tailnet: &str,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let yaml = read_file(file)?;
    let client = Client::new(server)?;
    let resp = client
        .send(
            client
                .request(
                    Method::POST,
                    &tailnet_path(tailnet, "/detection/rules/test"),
                )?
                .json(&json!({ "yaml": yaml, "since": since })),
        )
        .await?;
    let bar = crate::progress::Progress::items(0, "stored records", quiet).with_message("testing ");
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut alerts: Vec<Value> = Vec::new();
    let mut done = None;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.context("the run's answer broke off; try again")?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(p) = v.get("progress") {
                // Store positions: how far through the stored data the run is.
                let pos = p["position"].as_u64().unwrap_or(0);
                bar.set_total(p["end"].as_u64().unwrap_or(0).max(pos));
                bar.set(pos);
            } else if let Some(a) = v.get("alert") {
                alerts.push(a.clone());
            } else if let Some(e) = v.get("error") {
                bail!("the run failed: {}", cell(e));
            } else if let Some(d) = v.get("done") {
                done = Some(d.clone());
            }
        }
    }
    bar.finish();
    let Some(done) = done else {
        bail!("the run ended before it finished (the server stopped?); try again");
    };
    if json {
        return emit_json(&json!({ "alerts": alerts, "done": done }));
    }
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                cell(&json!(tally_proto::timefmt::format_nanos(
                    a["window"]["end"].as_i64().unwrap_or(0)
                ))),
                cell(&a["severity"]),
                cell(&a["title"]),
                cell(&a["node"]),
                cell(&a["evidence"]["summary"]),
            ]
        })
        .collect();
    let mut text = String::new();
    if !rows.is_empty() {
        text = table(&["TIME", "SEVERITY", "TITLE", "ABOUT", "WHAT"], &rows);
    }
    text.push_str(&format!(
        "{} alert(s) over {} records since {}\n",
        alerts.len(),
        cell(&done["records"]),
        cell(&done["since"])
    ));
    emit(&text)
}

/// Runs `tally alerts ...`.
pub async fn run_alerts(cmd: AlertsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        AlertsCmd::List {
            since,
            until,
            severity,
            rule,
            node,
            status,
            limit,
            tailnet,
            out,
        } => {
            let now = tally_proto::timefmt::now_nanos();
            let (start, end) = time_range(Some(&since), until.as_deref(), now)?;
            let mut q: Vec<(&str, String)> = vec![("limit", limit.clamp(1, 1000).to_string())];
            q.extend(start.map(|s| ("start", s)));
            q.extend(end.map(|e| ("end", e)));
            q.extend(severity.map(|s| ("severity", s)));
            q.extend(rule.map(|s| ("rule", s)));
            q.extend(node.map(|s| ("node", s)));
            q.extend(status.map(|s| ("status", s)));
            let v = api
                .call(Method::GET, &tailnet_path(&tailnet, "/alerts"), &q, None)
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = v["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(alert_row)
                .collect();
            let mut text = table(&ALERT_HEADERS, &rows);
            if v.get("nextCursor").is_some() {
                text.push_str(&format!(
                    "(the newest {limit} shown; narrow with --since/--severity or raise --limit)\n"
                ));
            }
            emit(&text)
        }
        AlertsCmd::Ack {
            id,
            note,
            tailnet,
            out,
        } => {
            let v = api
                .call(
                    Method::POST,
                    &tailnet_path(&tailnet, &format!("/alerts/{}/ack", seg(&id))),
                    &[],
                    Some(&json!({ "note": note })),
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            emit(&format!("acknowledged {id}: {}\n", cell(&v["title"])))
        }
        AlertsCmd::Tail { since, json } => tail(server, since, json).await,
    }
}

/// `tally alerts tail`: the `alerts` collection's stream.
async fn tail(server: &ServerArgs, since: Option<String>, json: bool) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut q = vec![("stream".to_owned(), "true".to_owned())];
    if let Some(s) = since {
        let now = tally_proto::timefmt::now_nanos();
        let t = crate::control_cmd::parse_time_flag("--since", &s, now)?;
        q.push(("time-start".into(), tally_proto::timefmt::format_nanos(t)));
    }
    let resp = client
        .send(client.request(Method::GET, "/c/alerts")?.query(&q))
        .await?;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut header_seen = false;
    let stdout = std::io::stdout();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.context("the stream from the server broke")?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if !header_seen {
                header_seen = true;
                continue;
            }
            let Ok(a) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if a.get("rule_id").is_none() {
                continue;
            }
            let mut out = stdout.lock();
            if json {
                writeln!(out, "{}", String::from_utf8_lossy(line))?;
            } else {
                writeln!(
                    out,
                    "{} {:<8} {} [{}] {} ({})",
                    tally_proto::timefmt::format_nanos(a["window"]["end"].as_i64().unwrap_or(0)),
                    cell(&a["severity"]),
                    cell(&a["title"]),
                    about(&a),
                    cell(&a["evidence"]["summary"]),
                    cell(&a["id"])
                )?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rule_id_is_the_last_documents() {
        let y = "title: a\nid: base\n---\ntitle: b\nid: 'corr'\n";
        assert_eq!(super::rule_id_of(y).as_deref(), Some("corr"));
    }
}
