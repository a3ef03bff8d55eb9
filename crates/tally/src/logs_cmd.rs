//! `tally logs`, `tally collections`, `tally instances`: reading and configuring logs.

use crate::client::{Client, ServerArgs};
use anyhow::Context;
use futures_util::StreamExt;
use std::io::Write;

/// Reading logs.
#[derive(Debug, clap::Subcommand)]
pub enum LogsCmd {
    /// Follow new entries as they arrive, like `tail -f`.
    Tail {
        /// Collection to read.
        #[arg(long, short, default_value = "tailnode")]
        collection: String,
        /// Only these instances (public IDs); repeatable.
        #[arg(long = "instance", short)]
        instances: Vec<String>,
        /// Also show entries from this long ago (e.g. 10m), then follow.
        #[arg(long)]
        since: Option<String>,
        /// Only entries containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// Print raw JSON entries, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Search stored entries.
    Query {
        /// Collection to read.
        #[arg(long, short, default_value = "tailnode")]
        collection: String,
        /// Only these instances (public IDs); repeatable.
        #[arg(long = "instance", short)]
        instances: Vec<String>,
        /// Start: a duration ago (1h, 30m, 2d) or an RFC 3339 time.
        #[arg(long, default_value = "1h")]
        since: String,
        /// End: a duration ago or an RFC 3339 time (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only entries containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// Most entries to print.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print raw JSON entries, one per line.
        #[arg(long)]
        json: bool,
    },
}

/// Managing collections.
#[derive(Debug, clap::Subcommand)]
pub enum CollectionsCmd {
    /// List collections and their instances.
    List {
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a collection.
    Create {
        /// Name: letters, digits, `-`, `_`, `.`.
        name: String,
        /// Days to keep entries of adopted instances.
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Delete a collection and all its entries.
    Delete {
        /// Name of the collection.
        name: String,
    },
}

/// Managing instances.
#[derive(Debug, clap::Subcommand)]
pub enum InstancesCmd {
    /// Adopt instances into a collection so their logs follow its retention
    /// (unadopted instances are capped and kept 12 hours).
    Adopt {
        /// Collection to adopt into.
        #[arg(long, short, default_value = "tailnode")]
        collection: String,
        /// Public IDs (`tally agent id` prints a node's).
        #[arg(required = true)]
        instances: Vec<String>,
    },
}

/// Turns `1h`/`30m` (ago) or an RFC 3339 time into an RFC 3339 time.
pub fn time_arg(v: &str) -> anyhow::Result<String> {
    if tally_proto::timefmt::parse_rfc3339(v).is_some() {
        return Ok(v.to_owned());
    }
    let d = humantime::parse_duration(v).with_context(|| {
        format!("{v:?} is neither a duration (30s, 10m, 1h, 7d) nor an RFC 3339 time")
    })?;
    let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Ok(tally_proto::timefmt::format_nanos(
        tally_proto::timefmt::now_nanos().saturating_sub(nanos),
    ))
}

/// One line for a human: time, instance, level and text.
pub fn render(entry: &serde_json::Value) -> String {
    let lt = &entry["logtail"];
    let time = lt["client_time"]
        .as_str()
        .or(lt["server_time"].as_str())
        .unwrap_or("-");
    let id = lt["id"].as_str().map_or("-", |s| &s[..s.len().min(8)]);
    let level = entry["v"]
        .as_u64()
        .map(|v| format!("[v{v}] "))
        .unwrap_or_default();
    let text = match entry.get("text").and_then(|t| t.as_str()) {
        Some(t) => t.to_owned(),
        None => {
            let mut rest = entry.clone();
            if let Some(o) = rest.as_object_mut() {
                o.remove("logtail");
            }
            rest.to_string()
        }
    };
    let err = lt["error"]["message"]
        .as_str()
        .map(|m| format!("  [logtail error: {m}]"))
        .unwrap_or_default();
    format!("{time} {id} {level}{text}{err}")
}

fn print_entry(
    out: &mut impl Write,
    raw: &str,
    json: bool,
    grep: Option<&str>,
) -> anyhow::Result<()> {
    if grep.is_some_and(|g| !raw.contains(g)) {
        return Ok(());
    }
    if json {
        writeln!(out, "{raw}")?;
    } else {
        let v: serde_json::Value =
            serde_json::from_str(raw).context("server sent an entry that is not JSON")?;
        writeln!(out, "{}", render(&v))?;
    }
    Ok(())
}

/// Runs `tally logs ...`.
pub async fn run_logs(cmd: LogsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let stdout = std::io::stdout();
    match cmd {
        LogsCmd::Tail {
            collection,
            instances,
            since,
            grep,
            json,
        } => {
            let mut q = vec![("stream".to_owned(), "true".to_owned())];
            q.extend(instances.into_iter().map(|i| ("instances".to_owned(), i)));
            if let Some(s) = since {
                q.push(("time-start".into(), time_arg(&s)?));
            }
            let resp = client
                .send(
                    client
                        .request(reqwest::Method::GET, &format!("/c/{collection}"))?
                        .query(&q),
                )
                .await?;
            let mut body = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut header_seen = false;
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk.context("the stream from the server broke")?);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if line.trim().is_empty() {
                        continue; // heartbeat
                    }
                    if !header_seen {
                        header_seen = true;
                        continue;
                    }
                    let mut out = stdout.lock();
                    print_entry(&mut out, &line, json, grep.as_deref())?;
                    out.flush()?;
                }
            }
            Ok(())
        }
        LogsCmd::Query {
            collection,
            instances,
            since,
            until,
            grep,
            limit,
            json,
        } => {
            let mut base = vec![("time-start".to_owned(), time_arg(&since)?)];
            if let Some(u) = until {
                base.push(("time-end".into(), time_arg(&u)?));
            }
            base.extend(instances.into_iter().map(|i| ("instances".to_owned(), i)));
            let mut printed = 0usize;
            let mut after: Option<String> = None;
            let mut out = stdout.lock();
            loop {
                let mut q = base.clone();
                q.push(("max-count".into(), "1000".into()));
                if let Some(a) = &after {
                    q.push(("after".into(), a.clone()));
                }
                let v = client.get_json(&format!("/c/{collection}"), &q).await?;
                for e in v["logs"].as_array().into_iter().flatten() {
                    if printed >= limit {
                        return Ok(());
                    }
                    let raw = e.to_string();
                    if grep.as_deref().is_none_or(|g| raw.contains(g)) {
                        print_entry(&mut out, &raw, json, None)?;
                        printed += 1;
                    }
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_owned()),
                    None => return Ok(()),
                }
            }
        }
    }
}

/// Runs `tally collections ...`.
pub async fn run_collections(cmd: CollectionsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    match cmd {
        CollectionsCmd::List { json } => {
            let v = client.get_json("/collections", &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<66} {:>12} {:>10}  FIRST SEEN",
                "COLLECTION", "INSTANCE", "BYTES", "ENTRIES"
            );
            for (name, c) in v["collections"].as_object().into_iter().flatten() {
                let instances = c["instances"].as_object().cloned().unwrap_or_default();
                if instances.is_empty() {
                    println!(
                        "{name:<24} {:<66} {:>12} {:>10}",
                        "(no instances yet)", "", ""
                    );
                }
                for (id, i) in instances {
                    let orphan = if i["orphan"].as_bool() == Some(true) {
                        " (unadopted)"
                    } else {
                        ""
                    };
                    println!(
                        "{name:<24} {id:<66} {:>12} {:>10}  {}{orphan}",
                        i["size"].as_u64().unwrap_or(0),
                        i["entries"].as_u64().unwrap_or(0),
                        i["first-seen"].as_str().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        CollectionsCmd::Create {
            name,
            retention_days,
        } => {
            let mut body = serde_json::json!({ "collection": name, "action": "create" });
            if let Some(d) = retention_days {
                body["retention-days"] = d.into();
            }
            client.post_json("/collections", &body).await?;
            println!("created collection {name}");
            Ok(())
        }
        CollectionsCmd::Delete { name } => {
            client
                .post_json(
                    "/collections",
                    &serde_json::json!({ "collection": name, "action": "delete" }),
                )
                .await?;
            println!("deleted collection {name}");
            Ok(())
        }
    }
}

/// Runs `tally instances ...`.
pub async fn run_instances(cmd: InstancesCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    match cmd {
        InstancesCmd::Adopt {
            collection,
            instances,
        } => {
            let v = client
                .post_json(
                    "/instances",
                    &serde_json::json!({ "collection": collection, "instances": instances }),
                )
                .await?;
            let n = v["newly_adopted"].as_array().map_or(0, Vec::len);
            println!(
                "adopted {n} new instance(s) into {collection} ({} already adopted)",
                instances.len() - n
            );
            Ok(())
        }
    }
}
