//! Control-plane verbs against `/api/v2`: `tally tailnets`, `settings`,
//! `keys`, `users`, `nodes` and `audit`.
//!
//! Every request says `Tally-Origin: CLI`, so the audit log tells changes
//! made from the terminal apart from the console's and scripts'. Each verb
//! prints a readable table or a one-line confirmation, or with `--json` the
//! server's JSON as it came.

use crate::client::{Client, ServerArgs};
use anyhow::{Context, anyhow, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write;

/// Header naming where a change came from.
const ORIGIN_HEADER: &str = "Tally-Origin";

/// Most events the audit API returns per page.
const AUDIT_PAGE_MAX: usize = 1000;

/// Widest CHANGE cell in the audit table, in characters.
const CHANGE_WIDTH: usize = 60;

/// The tailnet a verb acts on.
#[derive(Debug, Clone, clap::Args)]
pub struct TailnetArg {
    /// Tailnet: its ID, its name, or `-` for your API key's own tailnet.
    #[arg(long, short = 't', default_value = "-")]
    pub tailnet: String,
}

/// `--json`: print the server's JSON instead of a table.
#[derive(Debug, Clone, clap::Args)]
pub struct JsonArg {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Kind of key to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// An API key: acts as you (your role) on the API and the CLI.
    Api,
    /// An auth key: registers nodes (`tally agent`).
    Auth,
}

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            KeyType::Api => "api",
            KeyType::Auth => "auth",
        }
    }
}

/// Managing tailnets.
#[derive(Debug, clap::Subcommand)]
pub enum TailnetsCmd {
    /// List the tailnets your API key can see.
    List {
        #[command(flatten)]
        out: JsonArg,
    },
    /// Create a tailnet and print its owner's API key (shown only once).
    Create {
        /// Name of the new tailnet (e.g. example.com).
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Rename a tailnet.
    Rename {
        /// The tailnet: ID, name, or `-` for your own.
        tailnet: String,
        /// Its new name.
        new_name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Delete a tailnet with its users, keys, nodes and settings.
    Delete {
        /// The tailnet: ID or name.
        tailnet: String,
        #[command(flatten)]
        out: JsonArg,
    },
}

/// Reading and changing tailnet settings.
#[derive(Debug, clap::Subcommand)]
pub enum SettingsCmd {
    /// Show the tailnet's settings.
    Get {
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Change settings; only the flags given are changed.
    Set {
        #[command(flatten)]
        tailnet: TailnetArg,
        /// Network flow logging.
        #[arg(long, value_enum)]
        flow_logging: Option<OnOff>,
        /// Days to keep node logs.
        #[arg(long)]
        logs_retention_days: Option<u32>,
        /// Days to keep network flow logs.
        #[arg(long)]
        flows_retention_days: Option<u32>,
        /// Days to keep configuration audit events (at least 90).
        #[arg(long)]
        audit_retention_days: Option<u32>,
        /// Days to keep session recordings.
        #[arg(long)]
        recordings_retention_days: Option<u32>,
        #[command(flatten)]
        out: JsonArg,
    },
}

/// Managing API keys and auth keys.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// List the tailnet's keys.
    List {
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Create a key and print its secret (shown only once).
    Create {
        #[command(flatten)]
        tailnet: TailnetArg,
        /// `auth` registers nodes; `api` acts as you on the API.
        #[arg(long = "type", value_enum, default_value = "auth")]
        key_type: KeyType,
        /// Lifetime, e.g. 90d, 12h (default: 90 days); `never` for an API
        /// key that does not expire (flagged by the built-in detection rule).
        #[arg(long)]
        expiry: Option<String>,
        /// The user the key acts for (API keys) or registers nodes for
        /// (auth keys), by login or ID (default: you; another user's needs
        /// an owner or admin).
        #[arg(long)]
        user: Option<String>,
        /// What the key is for.
        #[arg(long)]
        description: Option<String>,
        /// Auth key: may register more than one node.
        #[arg(long)]
        reusable: bool,
        /// Auth key: nodes it registers are removed when they go offline.
        #[arg(long)]
        ephemeral: bool,
        /// Auth key: nodes it registers need no approval.
        #[arg(long)]
        preauthorized: bool,
        /// Auth key: tag for the nodes it registers (tag:name); repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Show one key (never its secret).
    Show {
        /// Key ID (from `tally keys list`).
        id: String,
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        /// Key ID (from `tally keys list`).
        id: String,
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
}

/// Managing users and their roles.
#[derive(Debug, clap::Subcommand)]
pub enum UsersCmd {
    /// List the tailnet's users.
    List {
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Add a user.
    Create {
        /// Login name (e.g. alice@example.com).
        login: String,
        /// Name to show.
        #[arg(long)]
        display_name: Option<String>,
        /// Role: owner, admin, network-admin, it-admin, billing-admin,
        /// auditor or member (default: the server's, member).
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Change a user's role.
    Role {
        /// User ID (from `tally users list`).
        user_id: String,
        /// owner, admin, network-admin, it-admin, billing-admin, auditor or
        /// member.
        role: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Delete a user (and the API keys acting for them).
    Delete {
        /// User ID (from `tally users list`).
        user_id: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Set a user's console password (read from stdin, so that it stays
    /// out of the shell's history).
    SetPassword {
        /// User ID or login name.
        user: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        tailnet: TailnetArg,
    },
    /// Print a one-time link (valid 24 hours) with which a user sets their
    /// console password.
    Invite {
        /// User ID or login name.
        user: String,
        #[command(flatten)]
        tailnet: TailnetArg,
    },
}

/// The ID of `user` (an ID or a login name) in `tailnet`.
async fn user_id_of(api: &Api, tailnet: &str, user: &str) -> anyhow::Result<String> {
    let v = api.get(&tailnet_path(tailnet, "/users")).await?;
    let found: Vec<&Value> = items(&v, "users")
        .into_iter()
        .filter(|u| u["id"] == user || u["loginName"] == user)
        .collect();
    match found.as_slice() {
        [one] => Ok(cell(&one["id"])),
        [] => anyhow::bail!("no user {user:?} in this tailnet (`tally users list` shows them)"),
        _ => anyhow::bail!("{user:?} names several users; give the user ID"),
    }
}

/// Login names by user ID, to show keys' owners; empty when the caller
/// may not list users (the IDs are shown instead).
async fn user_logins(api: &Api, tailnet: &str) -> std::collections::HashMap<String, String> {
    let Ok(v) = api.get(&tailnet_path(tailnet, "/users")).await else {
        return Default::default();
    };
    items(&v, "users")
        .into_iter()
        .map(|u| (cell(&u["id"]), cell(&u["loginName"])))
        .collect()
}

/// Managing nodes (devices).
#[derive(Debug, clap::Subcommand)]
pub enum NodesCmd {
    /// List the tailnet's nodes.
    List {
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Show one node.
    Show {
        /// Node ID (from `tally nodes list`).
        id: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Rename a node.
    Rename {
        /// Node ID (from `tally nodes list`).
        id: String,
        /// New name.
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Set a node's tags (replacing the ones it has).
    Tag {
        /// Node ID (from `tally nodes list`).
        id: String,
        /// Tags, e.g. tag:server tag:prod.
        #[arg(required_unless_present = "clear")]
        tags: Vec<String>,
        /// Remove every tag.
        #[arg(long, conflicts_with = "tags")]
        clear: bool,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Remove a node from the tailnet.
    Delete {
        /// Node ID (from `tally nodes list`).
        id: String,
        #[command(flatten)]
        out: JsonArg,
    },
}

/// The configuration audit log.
// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// List audit events, newest first.
    List {
        #[command(flatten)]
        tailnet: TailnetArg,
        /// Start: a duration ago (7d, 1h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// End: a duration ago (1h) or an RFC 3339 time (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only events by this actor (login name).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (CREATE, UPDATE, DELETE, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only this target type (NODE, USER, API_KEY, ...).
        #[arg(long)]
        target_type: Option<String>,
        /// Only this target ID.
        #[arg(long)]
        target_id: Option<String>,
        /// Only changes of this property.
        #[arg(long)]
        property: Option<String>,
        /// Only events containing this text.
        #[arg(long)]
        search: Option<String>,
        /// Most events to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Events per request (at most 1000).
        #[arg(long, default_value_t = AUDIT_PAGE_MAX, hide = true)]
        page_size: usize,
        #[command(flatten)]
        out: JsonArg,
    },
    /// Verify the audit log's hash chain; exits 1 if it is broken.
    Verify {
        #[command(flatten)]
        tailnet: TailnetArg,
        #[command(flatten)]
        out: JsonArg,
    },
}

/// The control API with `Tally-Origin: CLI` on every request.
pub(crate) struct Api {
    client: Client,
}

impl Api {
    /// A client for `server`.
    pub(crate) fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        Ok(Self {
            client: Client::new(server)?,
        })
    }

    /// Sends one request; an empty answer is `null`.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method, path)?
            .header(ORIGIN_HEADER, "CLI");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.client.send(req).await?;
        let text = resp
            .text()
            .await
            .context("the server's answer broke off; try again")?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context(
            "the server sent an answer that is not JSON; does --server point at a Tally server?",
        )
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, &[], None).await
    }

    /// The server's URL.
    pub(crate) fn base(&self) -> &str {
        self.client.base()
    }
}

/// Percent-encodes one path segment (IDs and names from the command line).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/api/v2/tailnet/{tailnet}{rest}`, the tailnet escaped.
pub(crate) fn tailnet_path(tailnet: &str, rest: &str) -> String {
    format!("/api/v2/tailnet/{}{rest}", seg(tailnet))
}

/// Parses a time flag: a duration meaning that long before `now_nanos`
/// (`7d`, `1h 30m`), or an RFC 3339 time. Returns Unix nanoseconds.
pub fn parse_time_flag(flag: &str, v: &str, now_nanos: i64) -> anyhow::Result<i64> {
    let v = v.trim();
    if let Some(t) = tally_proto::timefmt::parse_rfc3339(v) {
        return Ok(t);
    }
    let d = humantime::parse_duration(v).map_err(|_| {
        anyhow!(
            "{flag} {v:?} is neither a duration ago (30m, 1h, 7d) nor an RFC 3339 time (2024-05-01T12:00:00Z)"
        )
    })?;
    let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Ok(now_nanos.saturating_sub(nanos))
}

/// Parses `--expiry` (`90d`, `12h`) into whole seconds, at least one.
pub fn parse_expiry(v: &str) -> anyhow::Result<u64> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|_| anyhow!("--expiry {v:?} is not a duration; use e.g. 90d, 12h or 30m"))?;
    if d.as_secs() == 0 {
        bail!("--expiry {v:?} is shorter than a second; use e.g. 90d, 12h or 30m");
    }
    Ok(d.as_secs())
}

/// The `start`/`end` query values for `--since`/`--until`, checked for order.
pub fn time_range(
    since: Option<&str>,
    until: Option<&str>,
    now_nanos: i64,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let start = since
        .map(|s| parse_time_flag("--since", s, now_nanos))
        .transpose()?;
    let end = until
        .map(|u| parse_time_flag("--until", u, now_nanos))
        .transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        bail!(
            "--since is after --until; swap them (durations count back from now: --since 7d --until 1d)"
        );
    }
    let fmt = tally_proto::timefmt::format_nanos;
    Ok((start.map(fmt), end.map(fmt)))
}

/// A cell for a table: strings as they are, `-` for null or missing, lists
/// joined with commas, anything else as compact JSON.
pub fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".to_owned(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    s.replace(['\n', '\r', '\t'], " ")
}

/// A timestamp cell shortened to whole seconds in UTC; other text as is.
pub fn time_cell(v: &Value) -> String {
    match v.as_str().and_then(tally_proto::timefmt::parse_rfc3339) {
        Some(n) => tally_proto::timefmt::format_nanos(n - n.rem_euclid(1_000_000_000)),
        None => cell(v),
    }
}

/// Cuts `s` to at most `max` characters, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An aligned table: columns padded to their widest cell, two spaces apart,
/// the last column unpadded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `name:  value` lines for an object's fields and then `extra`, names aligned.
fn fields(v: &Value, extra: &[(&str, &str)]) -> String {
    let Some(obj) = v.as_object() else {
        return format!("{}\n", cell(v));
    };
    let mut rows: Vec<Vec<String>> = obj
        .iter()
        .map(|(k, v)| {
            let shown = match k.as_str() {
                "created" | "expires" | "lastSeen" | "revoked" if v.is_string() => time_cell(v),
                _ => cell(v),
            };
            vec![format!("{k}:"), shown]
        })
        .collect();
    rows.extend(
        extra
            .iter()
            .map(|(k, v)| vec![format!("{k}:"), (*v).to_owned()]),
    );
    let mut out = table(&["", ""], &rows);
    // Drop the empty header line.
    if let Some(nl) = out.find('\n') {
        out.drain(..=nl);
    }
    out
}

/// Writes to stdout; a closed pipe is an error, not a panic.
pub(crate) fn emit(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

/// Writes `v` as pretty JSON and a newline to stdout.
pub(crate) fn emit_json(v: &Value) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Prints the server's JSON (`--json`) or a confirmation `line` (ending in a newline).
fn confirm(v: &Value, json: bool, line: &str) -> anyhow::Result<()> {
    if json { emit_json(v) } else { emit(line) }
}

/// The items of a list answer: `{"<name>": [...]}`, a bare array, or one object.
fn items<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    match v.get(name).and_then(Value::as_array).or(v.as_array()) {
        Some(a) => a.iter().collect(),
        None if v.is_object() => vec![v],
        None => Vec::new(),
    }
}

/// The first string among `paths` (each a list of object keys) in `v`.
fn find_str<'a>(v: &'a Value, paths: &[&[&str]]) -> Option<&'a str> {
    paths.iter().find_map(|p| {
        p.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    })
}

/// Runs `tally tailnets ...`.
pub async fn run_tailnets(cmd: TailnetsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        TailnetsCmd::List { out } => {
            let v = api.get("/api/v2/tailnets").await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "tailnets")
                .into_iter()
                .map(|t| vec![cell(&t["id"]), cell(&t["name"]), time_cell(&t["created"])])
                .collect();
            emit(&table(&["ID", "NAME", "CREATED"], &rows))
        }
        TailnetsCmd::Create { name, out } => {
            let v = api
                .call(
                    Method::POST,
                    "/api/v2/tailnets",
                    &[],
                    Some(&json!({ "name": name })),
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let id = find_str(&v, &[&["tailnet", "id"], &["id"], &["tailnetId"]]).unwrap_or("?");
            let mut msg = format!("created tailnet {name} (id {id})\n");
            match find_str(
                &v,
                &[
                    &["key", "key"],
                    &["apiKey", "key"],
                    &["ownerKey", "key"],
                    &["apiKey"],
                    &["key"],
                ],
            ) {
                Some(key) => msg.push_str(&format!(
                    "owner API key (shown only once; store it now):\n  {key}\nuse it with:  export TALLY_API_KEY={key}\n"
                )),
                None => msg.push_str(
                    "the server returned no owner API key; run again with --json to see its answer\n",
                ),
            }
            emit(&msg)
        }
        TailnetsCmd::Rename {
            tailnet,
            new_name,
            out,
        } => {
            let v = api
                .call(
                    Method::PATCH,
                    &tailnet_path(&tailnet, ""),
                    &[],
                    Some(&json!({ "name": new_name })),
                )
                .await?;
            confirm(
                &v,
                out.json,
                &format!("renamed tailnet {tailnet} to {new_name}\n"),
            )
        }
        TailnetsCmd::Delete { tailnet, out } => {
            let v = api
                .call(Method::DELETE, &tailnet_path(&tailnet, ""), &[], None)
                .await?;
            confirm(&v, out.json, &format!("deleted tailnet {tailnet}\n"))
        }
    }
}

/// The PATCH body for `tally settings set`: only the fields given.
pub fn settings_body(
    flow_logging: Option<OnOff>,
    logs_retention_days: Option<u32>,
    flows_retention_days: Option<u32>,
    audit_retention_days: Option<u32>,
    recordings_retention_days: Option<u32>,
) -> anyhow::Result<Value> {
    let mut body = serde_json::Map::new();
    if let Some(f) = flow_logging {
        body.insert("networkFlowLoggingOn".into(), (f == OnOff::On).into());
    }
    if let Some(d) = logs_retention_days {
        body.insert("logsRetentionDays".into(), d.into());
    }
    if let Some(d) = flows_retention_days {
        body.insert("flowsRetentionDays".into(), d.into());
    }
    if let Some(d) = audit_retention_days {
        body.insert("auditRetentionDays".into(), d.into());
    }
    if let Some(d) = recordings_retention_days {
        body.insert("recordingsRetentionDays".into(), d.into());
    }
    if body.is_empty() {
        bail!(
            "nothing to change: pass at least one of --flow-logging on|off, --logs-retention-days N, --flows-retention-days N, --audit-retention-days N, --recordings-retention-days N"
        );
    }
    Ok(Value::Object(body))
}

/// Runs `tally settings ...`.
pub async fn run_settings(cmd: SettingsCmd, server: &ServerArgs) -> anyhow::Result<()> {
    match cmd {
        SettingsCmd::Get { tailnet, out } => {
            let api = Api::new(server)?;
            let v = api
                .get(&tailnet_path(&tailnet.tailnet, "/settings"))
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), cell(v)])
                .collect();
            emit(&table(&["SETTING", "VALUE"], &rows))
        }
        SettingsCmd::Set {
            tailnet,
            flow_logging,
            logs_retention_days,
            flows_retention_days,
            audit_retention_days,
            recordings_retention_days,
            out,
        } => {
            let body = settings_body(
                flow_logging,
                logs_retention_days,
                flows_retention_days,
                audit_retention_days,
                recordings_retention_days,
            )?;
            let api = Api::new(server)?;
            let v = api
                .call(
                    Method::PATCH,
                    &tailnet_path(&tailnet.tailnet, "/settings"),
                    &[],
                    Some(&body),
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let changed: Vec<String> = body
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            emit(&format!(
                "updated settings of tailnet {}: {}\n",
                tailnet.tailnet,
                changed.join(", ")
            ))
        }
    }
}

/// The POST body for `tally keys create`.
#[allow(clippy::too_many_arguments)]
pub fn key_body(
    key_type: KeyType,
    expiry: Option<&str>,
    description: Option<&str>,
    reusable: bool,
    ephemeral: bool,
    preauthorized: bool,
    tags: &[String],
) -> anyhow::Result<Value> {
    let mut body = json!({ "keyType": key_type.as_str() });
    match key_type {
        KeyType::Auth => {
            body["capabilities"] = json!({ "devices": { "create": {
                "reusable": reusable,
                "ephemeral": ephemeral,
                "preauthorized": preauthorized,
                "tags": tags,
            }}});
        }
        KeyType::Api => {
            if reusable || ephemeral || preauthorized || !tags.is_empty() {
                bail!(
                    "--reusable, --ephemeral, --preauthorized and --tag apply to auth keys only; drop them or use --type auth"
                );
            }
        }
    }
    match expiry {
        Some(e) if e.trim().eq_ignore_ascii_case("never") => {
            if key_type == KeyType::Auth {
                bail!(
                    "auth keys always expire (at most 365 days); --expiry never applies to --type api"
                );
            }
            body["neverExpires"] = true.into();
        }
        Some(e) => body["expirySeconds"] = parse_expiry(e)?.into(),
        None => {}
    }
    if let Some(d) = description {
        body["description"] = d.into();
    }
    Ok(body)
}

/// `revoked`, `expired`, `invalid` or `active`.
fn key_status(k: &Value) -> &'static str {
    let revoked = match &k["revoked"] {
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Null => false,
        _ => true,
    };
    if revoked {
        return "revoked";
    }
    let expired = k["expires"]
        .as_str()
        .and_then(tally_proto::timefmt::parse_rfc3339)
        .is_some_and(|e| e <= tally_proto::timefmt::now_nanos());
    if expired {
        "expired"
    } else if k["invalid"].as_bool() == Some(true) {
        "invalid"
    } else {
        "active"
    }
}

/// `reusable,ephemeral tag:a,tag:b` from an auth key's capabilities.
fn key_caps(k: &Value) -> String {
    let c = &k["capabilities"]["devices"]["create"];
    let mut parts: Vec<String> = ["reusable", "ephemeral", "preauthorized"]
        .into_iter()
        .filter(|f| c[*f].as_bool() == Some(true))
        .map(str::to_owned)
        .collect();
    if c["tags"].as_array().is_some_and(|t| !t.is_empty()) {
        parts.push(cell(&c["tags"]));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Runs `tally keys ...`.
pub async fn run_keys(cmd: KeysCmd, server: &ServerArgs) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::List { tailnet, out } => {
            let api = Api::new(server)?;
            let v = api.get(&tailnet_path(&tailnet.tailnet, "/keys")).await?;
            if out.json {
                return emit_json(&v);
            }
            let logins = user_logins(&api, &tailnet.tailnet).await;
            let rows: Vec<Vec<String>> = items(&v, "keys")
                .into_iter()
                .map(|k| {
                    let owner = k["userId"].as_str().unwrap_or("");
                    vec![
                        cell(&k["id"]),
                        cell(&k["keyType"]),
                        logins
                            .get(owner)
                            .cloned()
                            .unwrap_or_else(|| owner.to_owned()),
                        key_status(k).to_owned(),
                        time_cell(&k["created"]),
                        time_cell(&k["expires"]),
                        key_caps(k),
                        cell(&k["description"]),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "ID",
                    "TYPE",
                    "USER",
                    "STATUS",
                    "CREATED",
                    "EXPIRES",
                    "CAPABILITIES",
                    "DESCRIPTION",
                ],
                &rows,
            ))
        }
        KeysCmd::Create {
            tailnet,
            key_type,
            expiry,
            user,
            description,
            reusable,
            ephemeral,
            preauthorized,
            tags,
            out,
        } => {
            let mut body = key_body(
                key_type,
                expiry.as_deref(),
                description.as_deref(),
                reusable,
                ephemeral,
                preauthorized,
                &tags,
            )?;
            let api = Api::new(server)?;
            if let Some(user) = &user {
                body["userId"] = user_id_of(&api, &tailnet.tailnet, user).await?.into();
            }
            let v = api
                .call(
                    Method::POST,
                    &tailnet_path(&tailnet.tailnet, "/keys"),
                    &[],
                    Some(&body),
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let kind = v["keyType"].as_str().unwrap_or(key_type.as_str());
            let mut msg = format!(
                "created {kind} key {} (expires {})\n",
                cell(&v["id"]),
                time_cell(&v["expires"])
            );
            match v["key"].as_str() {
                Some(secret) => msg.push_str(&format!(
                    "key (shown only once; store it now):\n  {secret}\n"
                )),
                None => msg.push_str(
                    "the server returned no secret; run again with --json to see its answer\n",
                ),
            }
            emit(&msg)
        }
        KeysCmd::Show { id, tailnet, out } => {
            let api = Api::new(server)?;
            let v = api
                .get(&tailnet_path(
                    &tailnet.tailnet,
                    &format!("/keys/{}", seg(&id)),
                ))
                .await?;
            if out.json {
                return emit_json(&v);
            }
            emit(&fields(&v, &[("status", key_status(&v))]))
        }
        KeysCmd::Revoke { id, tailnet, out } => {
            let api = Api::new(server)?;
            let v = api
                .call(
                    Method::DELETE,
                    &tailnet_path(&tailnet.tailnet, &format!("/keys/{}", seg(&id))),
                    &[],
                    None,
                )
                .await?;
            confirm(&v, out.json, &format!("revoked key {id}\n"))
        }
    }
}

/// Runs `tally users ...`.
pub async fn run_users(cmd: UsersCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        UsersCmd::List { tailnet, out } => {
            let v = api.get(&tailnet_path(&tailnet.tailnet, "/users")).await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "users")
                .into_iter()
                .map(|u| {
                    vec![
                        cell(&u["id"]),
                        cell(&u["loginName"]),
                        cell(&u["displayName"]),
                        cell(&u["role"]),
                        cell(&u["status"]),
                        time_cell(&u["created"]),
                    ]
                })
                .collect();
            emit(&table(
                &["ID", "LOGIN", "NAME", "ROLE", "STATUS", "CREATED"],
                &rows,
            ))
        }
        UsersCmd::Create {
            login,
            display_name,
            role,
            tailnet,
            out,
        } => {
            let mut body = json!({ "loginName": login });
            if let Some(d) = display_name {
                body["displayName"] = d.into();
            }
            if let Some(r) = role {
                body["role"] = r.into();
            }
            let v = api
                .call(
                    Method::POST,
                    &tailnet_path(&tailnet.tailnet, "/users"),
                    &[],
                    Some(&body),
                )
                .await?;
            confirm(
                &v,
                out.json,
                &format!(
                    "created user {login} (id {}, role {})\n",
                    cell(&v["id"]),
                    cell(&v["role"])
                ),
            )
        }
        UsersCmd::Role { user_id, role, out } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/v2/users/{}/role", seg(&user_id)),
                    &[],
                    Some(&json!({ "role": role })),
                )
                .await?;
            confirm(
                &v,
                out.json,
                &format!("user {user_id} now has role {role}\n"),
            )
        }
        UsersCmd::Delete { user_id, out } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/v2/users/{}/delete", seg(&user_id)),
                    &[],
                    None,
                )
                .await?;
            confirm(&v, out.json, &format!("deleted user {user_id}\n"))
        }
        UsersCmd::SetPassword {
            user,
            password_stdin,
            tailnet,
        } => {
            if !password_stdin {
                anyhow::bail!(
                    "give the password on stdin with --password-stdin (so that it stays out of the shell's history), or send `tally users invite {user}`'s link"
                );
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| anyhow!("reading the password from stdin: {e}"))?;
            let password = line.trim_end_matches(['\r', '\n']);
            let id = user_id_of(&api, &tailnet.tailnet, &user).await?;
            api.call(
                Method::POST,
                &format!("/api/v2/users/{}/password", seg(&id)),
                &[],
                Some(&json!({ "password": password })),
            )
            .await?;
            emit(&format!(
                "set the console password of {user}; sign in at {}/\n",
                api.base().trim_end_matches('/')
            ))
        }
        UsersCmd::Invite { user, tailnet } => {
            let id = user_id_of(&api, &tailnet.tailnet, &user).await?;
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/v2/users/{}/password-setup", seg(&id)),
                    &[],
                    None,
                )
                .await?;
            emit(&format!(
                "{}{}\n(one use; valid until {}; send it to {user} privately)\n",
                api.base().trim_end_matches('/'),
                cell(&v["path"]),
                cell(&v["expires"])
            ))
        }
    }
}

/// Runs `tally nodes ...`.
pub async fn run_nodes(cmd: NodesCmd, server: &ServerArgs) -> anyhow::Result<()> {
    let api = Api::new(server)?;
    match cmd {
        NodesCmd::List { tailnet, out } => {
            let v = api.get(&tailnet_path(&tailnet.tailnet, "/devices")).await?;
            if out.json {
                return emit_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "devices")
                .into_iter()
                .map(|d| {
                    vec![
                        cell(&d["id"]),
                        cell(&d["name"]),
                        cell(&d["hostname"]),
                        cell(&d["addresses"]),
                        cell(&d["os"]),
                        cell(&d["tags"]),
                        time_cell(&d["lastSeen"]),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "ID",
                    "NAME",
                    "HOSTNAME",
                    "ADDRESSES",
                    "OS",
                    "TAGS",
                    "LAST SEEN",
                ],
                &rows,
            ))
        }
        NodesCmd::Show { id, out } => {
            let v = api.get(&format!("/api/v2/device/{}", seg(&id))).await?;
            if out.json {
                return emit_json(&v);
            }
            emit(&fields(&v, &[]))
        }
        NodesCmd::Rename { id, name, out } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/v2/device/{}/name", seg(&id)),
                    &[],
                    Some(&json!({ "name": name })),
                )
                .await?;
            confirm(&v, out.json, &format!("renamed node {id} to {name}\n"))
        }
        NodesCmd::Tag {
            id,
            tags,
            clear: _,
            out,
        } => {
            let v = api
                .call(
                    Method::POST,
                    &format!("/api/v2/device/{}/tags", seg(&id)),
                    &[],
                    Some(&json!({ "tags": tags })),
                )
                .await?;
            if out.json {
                return emit_json(&v);
            }
            let shown = if tags.is_empty() {
                "(none)".to_owned()
            } else {
                tags.join(" ")
            };
            emit(&format!("node {id} tags: {shown}\n"))
        }
        NodesCmd::Delete { id, out } => {
            let v = api
                .call(
                    Method::DELETE,
                    &format!("/api/v2/device/{}", seg(&id)),
                    &[],
                    None,
                )
                .await?;
            confirm(&v, out.json, &format!("deleted node {id}\n"))
        }
    }
}

/// One audit event as a table row: TIME, ORIGIN, ACTOR, ACTION, TARGET,
/// PROPERTY, CHANGE, ERROR.
pub fn audit_row(e: &Value) -> Vec<String> {
    let actor = find_str(
        e,
        &[
            &["actor", "loginName"],
            &["actor", "id"],
            &["actor", "type"],
        ],
    )
    .unwrap_or("-")
    .to_owned();
    let t = &e["target"];
    let target_name = find_str(t, &[&["name"], &["id"]]).unwrap_or("-");
    let target = match t["type"].as_str() {
        Some(ty) if !ty.is_empty() => format!("{ty}:{target_name}"),
        _ => target_name.to_owned(),
    };
    let compact = |v: &Value| match v {
        Value::Null => None,
        v => Some(v.to_string()),
    };
    let change = match (compact(&e["old"]), compact(&e["new"])) {
        (None, None) => "-".to_owned(),
        (old, new) => format!(
            "{} → {}",
            old.as_deref().unwrap_or("null"),
            new.as_deref().unwrap_or("null")
        ),
    };
    let error = match &e["error"] {
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| cell(&e["error"]), str::to_owned),
        other => cell(other),
    };
    vec![
        time_cell(&e["eventTime"]),
        cell(&e["origin"]),
        actor,
        cell(&e["action"]),
        target,
        cell(&t["property"]),
        truncate(&change, CHANGE_WIDTH),
        error,
    ]
}

/// The audit table.
pub fn audit_table(events: &[Value]) -> String {
    let rows: Vec<Vec<String>> = events.iter().map(audit_row).collect();
    table(
        &[
            "TIME", "ORIGIN", "ACTOR", "ACTION", "TARGET", "PROPERTY", "CHANGE", "ERROR",
        ],
        &rows,
    )
}

/// Runs `tally audit ...`.
pub async fn run_audit(cmd: AuditCmd, server: &ServerArgs) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::List {
            tailnet,
            since,
            until,
            actor,
            action,
            target_type,
            target_id,
            property,
            search,
            limit,
            page_size,
            out,
        } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            if page_size == 0 || page_size > AUDIT_PAGE_MAX {
                bail!("--page-size must be between 1 and {AUDIT_PAGE_MAX}");
            }
            let (start, end) = time_range(
                since.as_deref(),
                until.as_deref(),
                tally_proto::timefmt::now_nanos(),
            )?;
            let mut base: Vec<(&str, String)> = Vec::new();
            for (name, v) in [
                ("start", start),
                ("end", end),
                ("actor", actor),
                ("action", action),
                ("targetType", target_type),
                ("targetId", target_id),
                ("property", property),
                ("q", search),
            ] {
                if let Some(v) = v {
                    base.push((name, v));
                }
            }
            let api = Api::new(server)?;
            let path = tailnet_path(&tailnet.tailnet, "/logging/configuration");
            let v = audit_pages(&api, &path, &base, limit, page_size).await?;
            if out.json {
                return emit_json(&v);
            }
            let events = v["logs"].as_array().map_or(&[][..], Vec::as_slice);
            let mut s = audit_table(events);
            if events.len() >= limit && !v["nextBefore"].is_null() {
                s.push_str(&format!(
                    "(newest {limit} shown; raise --limit or narrow --since/--until for more)\n"
                ));
            }
            emit(&s)
        }
        AuditCmd::Verify { tailnet, out } => {
            let api = Api::new(server)?;
            let v = api
                .get(&tailnet_path(
                    &tailnet.tailnet,
                    "/logging/configuration/verify",
                ))
                .await?;
            if out.json {
                emit_json(&v)?;
            }
            verify_outcome(&v, !out.json)
        }
    }
}

/// Fetches up to `limit` events, newest first, following `nextBefore`; the
/// answer has the page shape with every event in `logs` and the last
/// page's `nextBefore` (to continue from).
async fn audit_pages(
    api: &Api,
    path: &str,
    base: &[(&str, String)],
    limit: usize,
    page_size: usize,
) -> anyhow::Result<Value> {
    let mut logs: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    let mut first: Option<Value> = None;
    loop {
        let want = (limit - logs.len()).min(page_size);
        let mut q = base.to_vec();
        q.push(("limit", want.to_string()));
        if let Some(b) = &before {
            q.push(("before", b.clone()));
        }
        let mut page = api.call(Method::GET, path, &q, None).await?;
        let events = match page.get_mut("logs").map(Value::take) {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => bail!("the server's audit answer has a `logs` that is not a list"),
        };
        let got = events.len();
        logs.extend(events.into_iter().take(want));
        let next = page.get("nextBefore").cloned().unwrap_or(Value::Null);
        let first = first.get_or_insert(page);
        first["nextBefore"] = next.clone();
        if logs.len() >= limit || got == 0 {
            break;
        }
        before = match next {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) if !s.is_empty() => Some(s),
            _ => break,
        };
    }
    let mut out = first.unwrap_or_else(|| json!({}));
    out["logs"] = Value::Array(logs);
    Ok(out)
}

/// Ok when the verify answer says intact (printing its message if `print`),
/// else an error carrying the message.
pub fn verify_outcome(v: &Value, print: bool) -> anyhow::Result<()> {
    let intact = v["intact"]
        .as_bool()
        .context("the server's verify answer has no `intact`; is it a Tally server?")?;
    let mut message = v["message"].as_str().unwrap_or_default().to_owned();
    if message.is_empty() {
        message = if intact {
            format!("audit log intact: {} events", cell(&v["events"]))
        } else {
            format!(
                "audit log broken at seq {}: {}",
                cell(&v["brokenAt"]["seq"]),
                cell(&v["brokenAt"]["problem"])
            )
        };
    }
    if intact {
        if print {
            emit(&format!("{message}\n"))?;
        }
        Ok(())
    } else {
        Err(anyhow!("{message}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const DAY: i64 = 86_400_000_000_000;

    #[test]
    fn time_flags_are_durations_ago_or_rfc3339() {
        assert_eq!(
            parse_time_flag("--since", "7d", NOW).unwrap(),
            NOW - 7 * DAY
        );
        assert_eq!(
            parse_time_flag("--since", "1h 30m", NOW).unwrap(),
            NOW - 5_400_000_000_000
        );
        assert_eq!(
            parse_time_flag("--until", "2023-11-14T22:13:20Z", NOW).unwrap(),
            NOW
        );
        assert_eq!(
            parse_time_flag("--until", "2023-11-14T23:13:20.5+01:00", NOW).unwrap(),
            NOW + 500_000_000
        );
        let e = parse_time_flag("--since", "last tuesday", NOW)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--since") && e.contains("duration") && e.contains("RFC 3339"),
            "{e}"
        );
    }

    #[test]
    fn time_range_formats_and_checks_order() {
        let (s, e) = time_range(Some("1d"), Some("2023-11-14T22:13:20Z"), NOW).unwrap();
        assert_eq!(s.as_deref(), Some("2023-11-13T22:13:20Z"));
        assert_eq!(e.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(time_range(None, None, NOW).unwrap(), (None, None));
        let err = time_range(Some("1d"), Some("7d"), NOW)
            .unwrap_err()
            .to_string();
        assert!(err.contains("swap"), "{err}");
    }

    #[test]
    fn expiry_is_whole_seconds() {
        assert_eq!(parse_expiry("90d").unwrap(), 90 * 86_400);
        assert_eq!(parse_expiry("12h").unwrap(), 43_200);
        assert!(parse_expiry("0s").is_err());
        assert!(
            parse_expiry("soon")
                .unwrap_err()
                .to_string()
                .contains("90d")
        );
    }

    #[test]
    fn key_bodies_follow_tailscale() {
        let b = key_body(
            KeyType::Auth,
            Some("1d"),
            Some("ci runners"),
            true,
            false,
            true,
            &["tag:ci".to_owned()],
        )
        .unwrap();
        assert_eq!(
            b,
            json!({
                "keyType": "auth",
                "capabilities": {"devices": {"create": {
                    "reusable": true, "ephemeral": false, "preauthorized": true,
                    "tags": ["tag:ci"]}}},
                "expirySeconds": 86_400,
                "description": "ci runners",
            })
        );
        let b = key_body(KeyType::Api, None, None, false, false, false, &[]).unwrap();
        assert_eq!(b, json!({"keyType": "api"}));
        let e = key_body(KeyType::Api, None, None, true, false, false, &[]).unwrap_err();
        assert!(e.to_string().contains("auth keys only"), "{e}");
    }

    #[test]
    fn settings_send_only_the_fields_given() {
        assert_eq!(
            settings_body(Some(OnOff::Off), None, None, Some(120), None).unwrap(),
            json!({"networkFlowLoggingOn": false, "auditRetentionDays": 120})
        );
        let e = settings_body(None, None, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--logs-retention-days"), "{e}");
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(seg("-"), "-");
        assert_eq!(seg("example.com"), "example.com");
        assert_eq!(seg("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn tables_align_and_changes_truncate() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "alice".into()],
                vec!["12345".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID     NAME\n1      alice\n12345  b\n");
        let e = json!({
            "eventGroupID": "g1", "origin": "CLI",
            "actor": {"id": "u1", "type": "USER", "loginName": "alice@example.com"},
            "type": "CONFIG",
            "target": {"id": "n1", "name": "web-1", "type": "NODE", "property": "TAGS"},
            "action": "UPDATE",
            "old": ["tag:a"], "new": ["tag:b", "x".repeat(80)],
            "error": null,
            "eventTime": "2023-11-14T22:13:20.123456789Z",
        });
        let row = audit_row(&e);
        assert_eq!(row[0], "2023-11-14T22:13:20Z");
        assert_eq!(row[1], "CLI");
        assert_eq!(row[2], "alice@example.com");
        assert_eq!(row[3], "UPDATE");
        assert_eq!(row[4], "NODE:web-1");
        assert_eq!(row[5], "TAGS");
        assert!(row[6].starts_with("[\"tag:a\"] → [\"tag:b\""), "{}", row[6]);
        assert_eq!(row[6].chars().count(), CHANGE_WIDTH);
        assert!(row[6].ends_with('…'));
        assert_eq!(row[7], "-");
        let refused = json!({"actor": {"id": "k9"}, "target": {"id": "u2"},
            "action": "UPDATE", "error": "invalid role"});
        let row = audit_row(&refused);
        assert_eq!((row[2].as_str(), row[4].as_str()), ("k9", "u2"));
        assert_eq!((row[6].as_str(), row[7].as_str()), ("-", "invalid role"));
    }

    #[test]
    fn verify_fails_with_the_servers_message() {
        let ok = json!({"intact": true, "events": 3, "message": "intact: 3 events"});
        assert!(verify_outcome(&ok, false).is_ok());
        let broken = json!({"intact": false, "events": 3,
            "brokenAt": {"seq": 2, "problem": "hash mismatch"}, "message": ""});
        let e = verify_outcome(&broken, false).unwrap_err().to_string();
        assert!(e.contains("seq 2") && e.contains("hash mismatch"), "{e}");
        assert!(verify_outcome(&json!({}), false).is_err());
    }
}
