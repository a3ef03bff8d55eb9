//! `tally recordings`: session recordings stored by the server's recorder
//! or uploaded by `tally record` through a node's agent: list, export (the
//! `.cast` file as received), play (in this terminal, with the original
//! timing), tail (a session in progress, live), retention (the tailnet's
//! `recordingsRetentionDays`).

use crate::client::{Client, ServerArgs};
use crate::control_cmd::{Api, JsonArg, cell, emit, emit_json, seg, table, tailnet_path};
use crate::progress::Progress;
use anyhow::Context;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Recording verbs.
#[derive(Debug, clap::Subcommand)]
pub enum RecordingsCmd {
    /// Recordings, newest first.
    List {
        /// Only of this source node (name or ID)
        #[arg(long)]
        node: Option<String>,
        /// Only with this SSH, local or source user
        #[arg(long)]
        user: Option<String>,
        /// Only since (RFC 3339, or a duration such as 24h)
        #[arg(long)]
        since: Option<String>,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Write a recording's asciicast v2 file (as received).
    Export {
        /// Recording ID (from `tally recordings list`)
        id: String,
        /// File to write (stdout when omitted)
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        /// No progress bar (one is drawn on stderr only when it is a terminal)
        #[arg(short, long)]
        quiet: bool,
    },
    /// Replay a recording in this terminal with its original timing.
    Play {
        /// Recording ID (from `tally recordings list`)
        id: String,
        /// Speed factor (2 plays twice as fast)
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause, in seconds (longer idle times are cut to it)
        #[arg(long, default_value_t = 2.0)]
        idle_cap: f64,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Show or set how many days this tailnet keeps session recordings
    /// (the tailnet setting recordingsRetentionDays; default 30). Older
    /// recordings are hidden, then deleted.
    Retention {
        /// Days to keep recordings (1 to 3650); shows the setting when omitted
        #[arg(value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Watch a recording live: its output so far, then as it comes, until
    /// the session ends.
    Tail {
        /// Recording ID (from `tally recordings list`)
        id: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
}

fn cast_path(tailnet: &str, id: &str, follow: bool) -> String {
    let p = tailnet_path(tailnet, &format!("/recordings/{}/cast", seg(id)));
    if follow {
        format!("{p}?follow=true")
    } else {
        p
    }
}

/// The cast's body, streamed, handed line by line to `line`; `progress`
/// counts the bytes.
async fn each_line(
    client: &Client,
    path: &str,
    progress: Option<&Progress>,
    mut line: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let resp = client.send(client.request(Method::GET, path)?).await?;
    if let (Some(p), Some(len)) = (progress, resp.content_length()) {
        p.set_total(len);
    }
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the recording's download broke off; try again")?;
        if let Some(p) = progress {
            p.inc(chunk.len() as u64);
        }
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let l: Vec<u8> = buf.drain(..=nl).collect();
            line(String::from_utf8_lossy(&l).trim_end_matches('\n'))?;
        }
    }
    if !buf.is_empty() {
        line(&String::from_utf8_lossy(&buf))?;
    }
    Ok(())
}

/// An output event's time and data (`[t, "o", data]`), if it is one.
fn output(line: &str) -> Option<(f64, String)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let a = v.as_array()?;
    (a.get(1)?.as_str()? == "o").then(|| {
        (
            a[0].as_f64().unwrap_or(0.0),
            a[2].as_str().unwrap_or_default().to_owned(),
        )
    })
}

/// Runs `tally recordings ...`.
pub async fn run(cmd: RecordingsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    match cmd {
        RecordingsCmd::List {
            node,
            user,
            since,
            tailnet,
            out,
        } => {
            let api = Api::new(server)?;
            let mut q = Vec::new();
            if let Some(n) = node {
                q.push(("node", n));
            }
            if let Some(u) = user {
                q.push(("user", u));
            }
            let (start, _) = crate::control_cmd::time_range(
                since.as_deref(),
                None,
                tally_proto::timefmt::now_nanos(),
            )?;
            if let Some(s) = start {
                q.push(("start", s));
            }
            let v = api
                .call(
                    Method::GET,
                    &tailnet_path(&tailnet, "/recordings"),
                    &q,
                    None,
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = v["recordings"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        cell(&r["id"]),
                        cell(&r["start"]),
                        cell(&r["srcNode"]),
                        if r["sshUser"].is_string() {
                            cell(&r["sshUser"])
                        } else {
                            cell(&r["localUser"])
                        },
                        cell(&r["state"]),
                        cell(&r["bytes"]),
                    ]
                })
                .collect();
            emit(&table(
                &["ID", "START", "NODE", "USER", "STATE", "BYTES"],
                &rows,
            ))
        }
        RecordingsCmd::Retention { days, tailnet } => {
            let api = Api::new(server)?;
            let path = tailnet_path(&tailnet, "/settings");
            let v = match days {
                Some(d) => {
                    let body = serde_json::json!({ "recordingsRetentionDays": d });
                    api.call(Method::PATCH, &path, &[], Some(&body)).await?
                }
                None => api.call(Method::GET, &path, &[], None).await?,
            };
            println!(
                "recordings are kept {} days",
                v["recordingsRetentionDays"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        RecordingsCmd::Export {
            id,
            output,
            tailnet,
            quiet,
        } => {
            let client = Client::new(server)?;
            // Not over the cast itself when it goes to the terminal.
            let on_terminal = output.is_none() && std::io::stdout().is_terminal();
            let bar = Progress::bytes(None, quiet || on_terminal).with_message("exporting ");
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            each_line(&client, &cast_path(&tailnet, &id, false), Some(&bar), |l| {
                writeln!(out, "{l}").context("writing the recording")
            })
            .await?;
            out.flush().context("writing the recording")?;
            bar.finish();
            if let Some(p) = output {
                eprintln!(
                    "wrote {} (asciinema play {} replays it)",
                    p.display(),
                    p.display()
                );
            }
            Ok(())
        }
        RecordingsCmd::Play {
            id,
            speed,
            idle_cap,
            tailnet,
        } => {
            anyhow::ensure!(
                speed > 0.0 && speed.is_finite(),
                "--speed must be a positive number"
            );
            let client = Client::new(server)?;
            let mut events = Vec::new();
            each_line(&client, &cast_path(&tailnet, &id, false), None, |l| {
                events.extend(output(l));
                Ok(())
            })
            .await?;
            let mut last = 0.0;
            let mut stdout = std::io::stdout();
            for (t, data) in events {
                let wait = ((t - last).max(0.0)).min(idle_cap.max(0.0)) / speed;
                last = t;
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                stdout.write_all(data.as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        }
        RecordingsCmd::Tail { id, tailnet } => {
            let client = Client::new(server)?;
            let mut stdout = std::io::stdout();
            each_line(&client, &cast_path(&tailnet, &id, true), None, |l| {
                if let Some((_, data)) = output(l) {
                    stdout.write_all(data.as_bytes())?;
                    stdout.flush()?;
                }
                Ok(())
            })
            .await
        }
    }
}
