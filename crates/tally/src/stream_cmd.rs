//! `tally stream`: a tailnet's log streams to SIEMs (Tailscale's
//! log-streaming API, and Tally's several destinations per log type):
//! list, set, add, delete, status, test.

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::ServerArgs;
use crate::control_cmd::{Api, JsonArg, cell, emit, emit_json, table, tailnet_path};

const LOG_TYPES: [&str; 5] = ["configuration", "network", "alerts", "findings", "logs"];

/// Where a stream sends entries, as flags.
#[derive(Debug, clap::Args)]
pub struct DestinationArgs {
    /// splunk, cribl, elastic, datadog, panther, axiom, s3, gcs, webhook
    /// or syslog
    #[arg(long = "type")]
    destination: String,
    /// The destination's URL (https, or syslog+tls://host:port; plain
    /// http and syslog+tcp only to private addresses; for s3, empty for
    /// AWS or an S3-compatible endpoint; unused for gcs)
    #[arg(long, default_value = "")]
    url: String,
    /// User (elastic's basic auth)
    #[arg(long)]
    user: Option<String>,
    /// The token (HEC token, API key, webhook signing key); kept when omitted
    #[arg(long, env = "TALLY_STREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// none, gzip or zstd
    #[arg(long, default_value = "none")]
    compression: String,
    /// native (Tailscale's JSON) or ocsf
    #[arg(long, default_value = "native")]
    format: String,
    /// A PEM file with the CA that signed the destination's certificate
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// For log type `logs`: a node-log collection to stream (repeatable;
    /// tailnode when none)
    #[arg(long = "collection")]
    collections: Vec<String>,
    /// s3, gcs: minutes to gather entries into one object (0: upload
    /// each batch as it is read)
    #[arg(long, value_name = "MINUTES")]
    upload_period: Option<u32>,
    /// s3: the bucket
    #[arg(long)]
    s3_bucket: Option<String>,
    /// s3: the bucket's region (us-east-1 when omitted)
    #[arg(long)]
    s3_region: Option<String>,
    /// s3: the key prefix objects go under
    #[arg(long)]
    s3_key_prefix: Option<String>,
    /// s3: the access key ID
    #[arg(long)]
    s3_access_key_id: Option<String>,
    /// s3: the secret access key; kept when omitted
    #[arg(long, env = "TALLY_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
    /// gcs: the bucket
    #[arg(long)]
    gcs_bucket: Option<String>,
    /// gcs: the key prefix objects go under
    #[arg(long)]
    gcs_key_prefix: Option<String>,
    /// gcs: a file with the service-account key (JSON); kept when omitted
    #[arg(long, value_name = "FILE")]
    gcs_credentials: Option<std::path::PathBuf>,
}

impl DestinationArgs {
    /// Tailscale's `LogstreamEndpointConfiguration` (with Tally's fields).
    fn body(&self) -> anyhow::Result<Value> {
        let mut body = json!({
            "destinationType": self.destination,
            "url": self.url,
            "compressionFormat": self.compression,
        });
        if let Some(u) = &self.user {
            body["user"] = json!(u);
        }
        if let Some(t) = &self.token {
            body["token"] = json!(t);
        }
        if self.format != "native" {
            body["format"] = json!(self.format);
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the CA certificate {}: {e}", path.display())
            })?;
            body["caCertificate"] = json!(pem);
        }
        if !self.collections.is_empty() {
            body["collections"] = json!(self.collections);
        }
        if let Some(m) = self.upload_period {
            body["uploadPeriodMinutes"] = json!(m);
        }
        for (field, value) in [
            ("s3Bucket", &self.s3_bucket),
            ("s3Region", &self.s3_region),
            ("s3KeyPrefix", &self.s3_key_prefix),
            ("s3AccessKeyId", &self.s3_access_key_id),
            ("s3SecretAccessKey", &self.s3_secret_access_key),
            ("gcsBucket", &self.gcs_bucket),
            ("gcsKeyPrefix", &self.gcs_key_prefix),
        ] {
            if let Some(v) = value {
                body[field] = json!(v);
            }
        }
        if self.s3_access_key_id.is_some() {
            body["s3AuthenticationType"] = json!("accesskey");
        }
        if let Some(path) = &self.gcs_credentials {
            let key = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the GCS credentials {}: {e}", path.display())
            })?;
            body["gcsCredentials"] = json!(key);
        }
        Ok(body)
    }
}

/// Stream verbs.
#[derive(Debug, clap::Subcommand)]
pub enum StreamCmd {
    /// Every destination of every log type, with its state.
    List {
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Stream a log type to a destination (replaces its first destination,
    /// or the one `--id` names).
    Set {
        /// configuration, network, alerts, findings or logs
        log_type: String,
        #[command(flatten)]
        destination: DestinationArgs,
        /// The destination to replace (see `tally stream list`)
        #[arg(long)]
        id: Option<String>,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Add another destination for a log type.
    Add {
        /// configuration, network, alerts, findings or logs
        log_type: String,
        #[command(flatten)]
        destination: DestinationArgs,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// Stop streaming a log type (its first destination, or `--id`'s).
    Delete {
        /// configuration, network, alerts, findings or logs
        log_type: String,
        /// The destination to delete (see `tally stream list`)
        #[arg(long)]
        id: Option<String>,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
    },
    /// A stream's publishing status (its first destination, or `--id`'s).
    Status {
        /// configuration, network, alerts, findings or logs
        log_type: String,
        /// The destination (see `tally stream list`)
        #[arg(long)]
        id: Option<String>,
        /// Tailnet (ID, name, or - for the key's own)
        #[arg(long, default_value = "-")]
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Send one test event and print what the destination answered.
    Test {
        /// configuration, network, alerts, findings or logs
        log_type: String,
        /// The destination (see `tally stream list`)
        #[arg(long)]
        id: Option<String>,
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

/// Tailscale's path of the first destination, or Tally's of `id`.
fn path(tailnet: &str, t: &str, id: Option<&str>, rest: &str) -> String {
    match id {
        Some(id) => tailnet_path(tailnet, &format!("/logging/{t}/streams/{id}{rest}")),
        None => tailnet_path(tailnet, &format!("/logging/{t}/stream{rest}")),
    }
}

/// Runs `tally stream ...`.
pub async fn run(cmd: StreamCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        StreamCmd::List { tailnet, out } => {
            let mut all = Vec::new();
            for t in LOG_TYPES {
                let v = api
                    .call(
                        Method::GET,
                        &tailnet_path(&tailnet, &format!("/logging/{t}/streams")),
                        &[],
                        None,
                    )
                    .await?;
                for mut s in v["streams"].as_array().cloned().unwrap_or_default() {
                    s["logType"] = json!(t);
                    all.push(s);
                }
            }
            if out.json {
                return emit_json(&Value::Array(all));
            }
            if all.is_empty() {
                return emit(
                    "no log streams; `tally stream set network --type splunk --url ... --token ...` adds one\n",
                );
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    let st = &s["status"];
                    vec![
                        cell(&s["logType"]),
                        cell(&s["id"]),
                        cell(&s["destinationType"]),
                        cell(&s["url"]),
                        cell(&st["numEntriesSent"]),
                        cell(&st["lagEntries"]),
                        cell(&st["lastError"]),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "LOG TYPE",
                    "ID",
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
            id,
            tailnet,
        } => {
            check_type(&log_type)?;
            let body = destination.body()?;
            api.call(
                Method::PUT,
                &path(&tailnet, &log_type, id.as_deref(), ""),
                &[],
                Some(&body),
            )
            .await?;
            emit(&format!(
                "streaming {log_type} to {}; `tally stream test {log_type}` sends a test event\n",
                destination.destination
            ))
        }
        StreamCmd::Add {
            log_type,
            destination,
            tailnet,
        } => {
            check_type(&log_type)?;
            let body = destination.body()?;
            let v = api
                .call(
                    Method::POST,
                    &tailnet_path(&tailnet, &format!("/logging/{log_type}/streams")),
                    &[],
                    Some(&body),
                )
                .await?;
            emit(&format!(
                "streaming {log_type} to {} as {}; `tally stream test {log_type} --id {}` sends a test event\n",
                destination.destination,
                cell(&v["id"]),
                cell(&v["id"])
            ))
        }
        StreamCmd::Delete {
            log_type,
            id,
            tailnet,
        } => {
            check_type(&log_type)?;
            api.call(
                Method::DELETE,
                &path(&tailnet, &log_type, id.as_deref(), ""),
                &[],
                None,
            )
            .await?;
            emit(&format!("stopped streaming {log_type}\n"))
        }
        StreamCmd::Status {
            log_type,
            id,
            tailnet,
            out,
        } => {
            check_type(&log_type)?;
            let v = api
                .call(
                    Method::GET,
                    &path(&tailnet, &log_type, id.as_deref(), "/status"),
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
                ("lagSeconds", "seconds behind"),
                ("unencrypted", "unencrypted"),
            ] {
                text.push_str(&format!("{label:<20} {}\n", cell(&v[k])));
            }
            if log_type == "network" {
                // Reconciliation's count: windows the other end did not confirm.
                text.push_str(&format!(
                    "{:<20} {}\n",
                    "unconfirmed",
                    cell(&v["numSpoofedEntries"])
                ));
            }
            emit(&text)
        }
        StreamCmd::Test {
            log_type,
            id,
            tailnet,
        } => {
            check_type(&log_type)?;
            let v = api
                .call(
                    Method::POST,
                    &path(&tailnet, &log_type, id.as_deref(), "/test"),
                    &[],
                    None,
                )
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
