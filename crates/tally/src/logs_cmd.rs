//! `tally logs`, `tally collections`, `tally instances`: reading and configuring logs.

use crate::client::{Client, ServerArgs};
use anyhow::Context;
use futures_util::StreamExt;
use serde_json::value::RawValue;
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
        /// Only entries whose text contains this, case-insensitively (the
        /// entry's `text`, or its JSON when it has none; searched on the
        /// server).
        #[arg(long)]
        grep: Option<String>,
        /// Print raw JSON entries, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Search stored entries: the newest `--limit` matching entries,
    /// printed oldest first (stderr says when the limit cut the answer).
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
        /// Only entries whose text contains this, case-insensitively (the
        /// entry's `text`, or its JSON when it has none; searched on the
        /// server).
        #[arg(long)]
        grep: Option<String>,
        /// Most entries to print: the newest ones.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print raw JSON entries, one per line.
        #[arg(long)]
        json: bool,
        /// No progress spinner (one is drawn on stderr only when it is a
        /// terminal)
        #[arg(short, long)]
        quiet: bool,
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

/// Entries asked for per request of `logs query`.
const PAGE: usize = 1000;

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

/// One page of `GET /c/<collection>`, its entries left unread: an entry
/// that cannot be read must not fail the page.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LogPage<'a> {
    /// The entries as the server sent them.
    #[serde(borrow)]
    pub logs: Vec<&'a RawValue>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
    /// Positions the server could not read (damaged storage), when any.
    #[serde(default)]
    pub incomplete: Option<Vec<Incomplete>>,
}

/// Store positions an answer is missing, and why.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Incomplete {
    /// First missing position.
    pub from: u64,
    /// Last missing position.
    pub to: u64,
    /// Why, as the server says it.
    pub reason: String,
}

/// Tells the user (stderr) that entries are missing from an answer.
fn warn_incomplete(missing: &[Incomplete]) {
    for m in missing {
        eprintln!(
            "tally: the answer is incomplete: entries at store positions {}..={} are missing: {}",
            m.from, m.to, m.reason
        );
    }
}

impl<'a> LogPage<'a> {
    /// Reads a page (the entries stay unread).
    pub fn parse(body: &'a [u8]) -> anyhow::Result<Self> {
        serde_json::from_slice(body).context("the server sent a page of logs that is not JSON")
    }
}

/// Reads one entry as the server sent it; why not, for the report.
pub(crate) fn read_entry(raw: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(raw).map_err(|e| e.to_string())
}

/// Counts and reports (stderr, once each) entries that cannot be read.
#[derive(Debug, Default)]
pub(crate) struct Skipped(usize);

impl Skipped {
    /// Reports the entry at `position` (for a person: "entry 12 of page 3").
    pub fn report(&mut self, position: &str, why: &str) {
        self.0 += 1;
        eprintln!("tally: skipped {position}: it is not JSON that can be read ({why})");
    }

    /// Entries skipped so far.
    pub fn count(&self) -> usize {
        self.0
    }
}

/// Prints one entry: as sent (one line) with `--json`, else for a person.
fn print_entry(
    out: &mut impl Write,
    raw: &str,
    entry: &serde_json::Value,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        writeln!(out, "{}", render(entry))?;
    } else if raw.contains(['\n', '\r']) {
        // Stored before entries were kept on one line.
        writeln!(out, "{entry}")?;
    } else {
        writeln!(out, "{raw}")?;
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
            // The server keeps only the entries with the text.
            if let Some(g) = grep.filter(|g| !g.is_empty()) {
                q.push(("q".into(), g));
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
            let (mut line_no, mut skipped) = (0usize, Skipped::default());
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk.context("the stream from the server broke")?);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    line_no += 1;
                    let line = &line[..line.len() - 1];
                    if line.trim_ascii().is_empty() {
                        continue; // heartbeat
                    }
                    if !header_seen {
                        header_seen = true;
                        continue;
                    }
                    let entry = std::str::from_utf8(line)
                        .map_err(|e| e.to_string())
                        .and_then(|raw| read_entry(raw).map(|v| (raw, v)));
                    let (raw, entry) = match entry {
                        Ok(e) => e,
                        Err(why) => {
                            skipped.report(&format!("line {line_no} of the stream"), &why);
                            continue;
                        }
                    };
                    if entry.get("logtail").is_none()
                        && let Some(missing) = entry.get("incomplete")
                        && let Ok(m) = serde_json::from_value::<Vec<Incomplete>>(missing.clone())
                    {
                        warn_incomplete(&m);
                        continue;
                    }
                    let mut out = stdout.lock();
                    print_entry(&mut out, raw, &entry, json)?;
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
            quiet,
        } => {
            anyhow::ensure!(limit >= 1, "--limit must be at least 1");
            let spinner =
                crate::progress::Progress::spinner("entries", quiet).with_message("searching ");
            let mut base = vec![("time-start".to_owned(), time_arg(&since)?)];
            if let Some(u) = until {
                base.push(("time-end".into(), time_arg(&u)?));
            }
            base.extend(instances.into_iter().map(|i| ("instances".to_owned(), i)));
            // The server searches (`q`) and answers newest first: the newest
            // `limit` matching entries, printed oldest first.
            base.push(("order".into(), "newest".into()));
            if let Some(g) = grep.filter(|g| !g.is_empty()) {
                base.push(("q".into(), g));
            }
            let mut kept: Vec<Box<RawValue>> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                // One more than wanted says whether the limit cut the answer.
                let want = (limit + 1 - kept.len()).min(PAGE);
                let mut q = base.clone();
                q.push(("max-count".into(), want.to_string()));
                if let Some(a) = &after {
                    q.push(("after".into(), a.clone()));
                }
                let resp = client
                    .send(
                        client
                            .request(reqwest::Method::GET, &format!("/c/{collection}"))?
                            .query(&q),
                    )
                    .await?;
                let body = resp
                    .bytes()
                    .await
                    .context("cannot read a page of logs from the server")?;
                let page = LogPage::parse(&body)?;
                if let Some(missing) = &page.incomplete {
                    warn_incomplete(missing);
                }
                kept.extend(page.logs.iter().map(|r| (*r).to_owned()));
                spinner.set(kept.len().min(limit) as u64);
                match page.next {
                    Some(n) if kept.len() <= limit => after = Some(n),
                    _ => break,
                }
            }
            spinner.finish();
            let cut = kept.len() > limit;
            kept.truncate(limit);
            let mut skipped = Skipped::default();
            let mut out = stdout.lock();
            let total = kept.len();
            for (i, raw) in kept.iter().rev().enumerate() {
                let raw = raw.get();
                match read_entry(raw) {
                    Ok(entry) => print_entry(&mut out, raw, &entry, json)?,
                    Err(why) => skipped.report(&format!("entry {} of {total}", i + 1), &why),
                }
            }
            out.flush()?;
            if skipped.count() > 0 {
                eprintln!(
                    "tally: {} entries could not be read and were skipped (see above)",
                    skipped.count()
                );
            }
            if cut {
                eprintln!(
                    "tally: the newest {limit} entries are shown; raise --limit or narrow --since/--until, --instance or --grep for more"
                );
            }
            Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_which_positions_it_is_missing() {
        let body = br#"{"collection":"c","count":1,"incomplete":[{"from":3,"to":9,"reason":"damaged"}],"logs":[{"text":"a"}]}"#;
        let page = LogPage::parse(body).unwrap();
        let missing = page.incomplete.expect("incomplete");
        assert_eq!((missing[0].from, missing[0].to), (3, 9));
        assert_eq!(missing[0].reason, "damaged");
        assert_eq!(page.logs.len(), 1);
        let whole = LogPage::parse(br#"{"logs":[]}"#).unwrap();
        assert!(whole.incomplete.is_none());
    }

    #[test]
    fn a_page_with_entries_that_cannot_be_read_still_yields_the_others() {
        // What servers before the I-JSON checks could store and serve.
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"collection":"c","count":5,"next":"9","logs":[{{"text":"a"}},{{"n":1e99999}},{{"s":"\ud800"}},{{"d":{deep}}},{{"text":"b"}}]}}"#
        );
        let page = LogPage::parse(body.as_bytes()).unwrap();
        assert_eq!(page.next.as_deref(), Some("9"));
        let read: Vec<_> = page.logs.iter().map(|r| read_entry(r.get())).collect();
        assert_eq!(read.len(), 5);
        assert_eq!(read[0].as_ref().unwrap()["text"], "a");
        assert_eq!(read[4].as_ref().unwrap()["text"], "b");
        for bad in &read[1..4] {
            assert!(bad.is_err(), "{bad:?}");
        }
        let mut skipped = Skipped::default();
        skipped.report("entry 2", "number out of range");
        assert_eq!(skipped.count(), 1);
    }

    #[test]
    fn entries_print_as_sent_with_json_and_rendered_without() {
        let raw = r#"{"logtail":{"server_time":"2024-01-01T00:00:00Z","id":"abcdef0123"},"text":"hi","n":123456789012345678901234567890}"#;
        let v = read_entry(raw).unwrap();
        let mut out = Vec::new();
        print_entry(&mut out, raw, &v, true).unwrap();
        // Exactly as sent: a big integer keeps its digits.
        assert_eq!(String::from_utf8(out).unwrap(), format!("{raw}\n"));
        let mut out = Vec::new();
        print_entry(&mut out, raw, &v, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-01-01T00:00:00Z abcdef01 hi\n"
        );
    }
}
