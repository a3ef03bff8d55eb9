//! `tally stream`: a tailnet's log streams to SIEMs (Tailscale's
//! log-streaming API): list, set, delete, status, test.

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::ServerArgs;
use crate::control_cmd::{Api, JsonArg, cell, emit, emit_json, table, tailnet_path};

const LOG_TYPES: [&str; 4] = ["configuration", "network", "alerts", "findings"];

/// Stream verbs.
#[derive(Debug, clap::Subcommand)]
pub enum StreamCmd {
    /// Each log type's destination, if any, with its state.
    List {
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Stream a log type to a destination (replaces its destination).
    Set {
        /// configuration, network, alerts or findings
        log_type: String,
        /// splunk, cribl or webhook
        #[arg(long = "type")]
        destination: String,
        /// The destination's URL (https; http only to private addresses)
        #[arg(long)]
        url: String,
        /// The token (HEC token, webhook signing key); kept when omitted
        #[arg(long, env = "TALLY_STREAM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// none, gzip or zstd
        #[arg(long, default_value = "none")]
        compression: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Stop streaming a log type.
    Delete {
        /// configuration, network, alerts or findings
        log_type: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// A stream's publishing status.
    Status {
        /// configuration, network, alerts or findings
        log_type: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Send one test event and print what the destination answered.
    Test {
        /// configuration, network, alerts or findings
        log_type: String,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
}

fn check_type(t: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        LOG_TYPES.contains(&t),
        "unknown log type {t:?}: use {}",
        LOG_TYPES.join(", ")
    );
    Ok(())
}

fn path(tailnet: &str, t: &str, rest: &str) -> String {
    tailnet_path(tailnet, &format!("/logging/{t}/stream{rest}"))
}

/// Runs `tally stream ...`.
pub async fn run(cmd: StreamCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        StreamCmd::List { tailnet, out } => {
            let mut all = Vec::new();
            for t in LOG_TYPES {
                let status = api
                    .call(Method::GET, &path(&tailnet, t, "/status"), &[], None)
                    .await?;
                let config = api
                    .call(Method::GET, &path(&tailnet, t, ""), &[], None)
                    .await
                    .ok();
                all.push(json!({ "logType": t, "config": config, "status": status }));
            }
            if out.json {
                return emit_json(&Value::Array(all));
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    let c = &s["config"];
                    let st = &s["status"];
                    vec![
                        cell(&s["logType"]),
                        cell(&c["destinationType"]),
                        cell(&c["url"]),
                        cell(&st["numEntriesSent"]),
                        cell(&st["lagEntries"]),
                        cell(&st["lastError"]),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "LOG TYPE",
                    "DESTINATION",
                    "URL",
                    "SENT",
                    "BEHIND",
                    "LAST ERROR",
                ],
                &rows,
            ))
        }
        StreamCmd::Set {
            log_type,
            destination,
            url,
            token,
            compression,
            tailnet,
        } => {
            check_type(&log_type)?;
            let mut body = json!({
                "destinationType": destination,
                "url": url,
                "compressionFormat": compression,
            });
            if let Some(t) = token {
                body["token"] = json!(t);
            }
            api.call(
                Method::PUT,
                &path(&tailnet, &log_type, ""),
                &[],
                Some(&body),
            )
            .await?;
            emit(&format!(
                "streaming {log_type} to {destination}; `tally stream test {log_type}` sends a test event\n"
            ))
        }
        StreamCmd::Delete { log_type, tailnet } => {
            check_type(&log_type)?;
            api.call(Method::DELETE, &path(&tailnet, &log_type, ""), &[], None)
                .await?;
            emit(&format!("stopped streaming {log_type}\n"))
        }
        StreamCmd::Status {
            log_type,
            tailnet,
            out,
        } => {
            check_type(&log_type)?;
            let v = api
                .call(
                    Method::GET,
                    &path(&tailnet, &log_type, "/status"),
                    &[],
                    None,
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let mut text = String::new();
            for (k, label) in [
                ("lastActivity", "last activity"),
                ("lastError", "last error"),
                ("numEntriesSent", "entries sent"),
                ("numBytesSent", "bytes sent"),
                ("numTotalRequests", "requests"),
                ("numFailedRequests", "failed requests"),
                ("rateEntriesSent", "entries/s"),
                ("lagEntries", "entries behind"),
                ("unencrypted", "unencrypted (http)"),
            ] {
                text.push_str(&format!("{label:<20} {}\n", cell(&v[k])));
            }
            emit(&text)
        }
        StreamCmd::Test { log_type, tailnet } => {
            check_type(&log_type)?;
            let v = api
                .call(Method::POST, &path(&tailnet, &log_type, "/test"), &[], None)
                .await?;
            if v["ok"].as_bool() == Some(true) {
                emit(&format!(
                    "the destination accepted the test event ({} request)\n",
                    cell(&v["requests"])
                ))
            } else {
                anyhow::bail!(
                    "the destination refused the test event: {}",
                    cell(&v["error"])
                )
            }
        }
    }
}
