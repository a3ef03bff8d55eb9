//! `tally verify`: checks the server's transparency log against what this
//! client saw before, and lists the upload batches the server flagged.
//!
//! 1. The log key (`/.well-known/tally/log-key`) is trusted on first use and
//!    pinned in the state directory; a changed key is a failure.
//! 2. The signed checkpoint (`/.well-known/tally/checkpoint`) must verify
//!    with that key and be consistent with the last checkpoint saved here
//!    (a consistency proof from the server); only then is it saved.
//! 3. Recovery cuts: the server's signed statements that it lost records
//!    its log had published (a damaged write-ahead log cut at start), among
//!    the leaves added since the saved checkpoint (all of them on the first
//!    run). Each statement's inclusion in the new checkpoint is checked and
//!    the statement shown. A cut is not tampering (the history stays
//!    consistent), but records are lost: when a statement says published
//!    records were lost, `tally verify` exits with status 2 if nothing else
//!    is wrong, and saves the checkpoint, so the next run no longer reports
//!    that cut (a cut that lost nothing published is only shown).
//! 4. With `--recording ID`: each chunk of the session recording, hashed
//!    here as the log hashes records, must be included in the checkpoint
//!    (inclusion proof from the server); its chunks must follow each other.
//! 5. The tailnet's flagged batches (bad signatures, gaps, broken chains,
//!    replays, unsigned uploads of signing nodes) since `--since`.
//!
//! Exit status: 0 all good, 2 only new recovery cuts, 1 problems.

use std::path::PathBuf;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;
use tally_transparency::Hash;
use tally_transparency::checkpoint::{Checkpoint, SignedCheckpoint};
use tally_transparency::merkle::hash_leaf;
use tally_transparency::note::Verifier;

use crate::client::ServerArgs;
use crate::control_cmd::{Api, parse_time_flag, tailnet_path};

/// Verify the server's logs: transparency-log consistency with what this
/// client saw before, and the upload batches the server flagged.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Check flagged batches since (duration ago or RFC 3339)
    #[arg(long, default_value = "24h")]
    since: String,
    /// Tailnet (ID, name, or - for the key's own)
    #[arg(long, default_value = "-")]
    tailnet: String,
    /// Where pinned keys and last checkpoints are kept
    #[arg(long, env = "TALLY_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Pin this log key (vkey text) instead of trusting the first one seen
    #[arg(long, value_name = "VKEY")]
    log_key: Option<String>,
    /// Also check a session recording: every chunk, hashed here, must be
    /// in the verified checkpoint's log (repeatable)
    #[arg(long, value_name = "ID")]
    recording: Vec<String>,
}

fn state_dir(args: &VerifyArgs) -> anyhow::Result<PathBuf> {
    let base = match &args.state_dir {
        Some(d) => d.clone(),
        None => match std::env::var_os("XDG_STATE_HOME") {
            Some(x) => PathBuf::from(x).join("tally"),
            None => PathBuf::from(std::env::var_os("HOME").context("set HOME or --state-dir")?)
                .join(".local/state/tally"),
        },
    };
    let host: String = args
        .server
        .server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(base.join(host))
}

async fn get_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| crate::client::unreachable(url, &e))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    Ok(resp.text().await?)
}

fn proof(v: &Value) -> anyhow::Result<Vec<Hash>> {
    v["proof"]
        .as_array()
        .context("the server's proof is missing")?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(|s| Hash::from_base64(s).ok())
                .context("the server's proof holds a malformed hash")
        })
        .collect()
}

/// Runs `tally verify`.
pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let base = crate::client::check_server_url(&args.server.server)?;
    let http = crate::client::http_client(args.server.ca_cert.as_deref())?;
    let dir = state_dir(&args)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut problems = Vec::new();

    // 1. The log key.
    let served = get_text(&http, &format!("{base}/.well-known/tally/log-key")).await?;
    let served = served.trim().to_owned();
    let key_file = dir.join("log-key");
    let pinned = match (&args.log_key, std::fs::read_to_string(&key_file)) {
        (Some(k), _) => k.trim().to_owned(),
        (None, Ok(k)) => k.trim().to_owned(),
        (None, Err(_)) => {
            std::fs::write(&key_file, format!("{served}\n"))?;
            println!("trusting the log key on first use: {served}");
            served.clone()
        }
    };
    if pinned != served {
        bail!(
            "the server's log key changed (pinned {pinned}, served {served}): its history can no longer be checked against what you saw; if the change is expected, remove {}",
            key_file.display()
        );
    }
    let verifier = Verifier::from_vkey(&pinned).map_err(|e| anyhow::anyhow!("bad log key: {e}"))?;

    // 2. The checkpoint and its consistency with the last one seen here.
    let text = get_text(&http, &format!("{base}/.well-known/tally/checkpoint")).await?;
    let current = SignedCheckpoint::open(
        text.as_bytes(),
        verifier.name(),
        std::slice::from_ref(&verifier),
    )
    .map_err(|e| anyhow::anyhow!("the checkpoint does not verify with the log key: {e}"))?
    .checkpoint;
    let cp_file = dir.join("checkpoint");
    let api = Api::new(&args.server)?;
    let mut cuts = 0usize;
    match std::fs::read_to_string(&cp_file) {
        Ok(saved) => {
            let previous = SignedCheckpoint::open(
                saved.as_bytes(),
                verifier.name(),
                std::slice::from_ref(&verifier),
            )
            .map(|s| s.checkpoint)
            .map_err(|e| anyhow::anyhow!("{} is damaged ({e}); remove it", cp_file.display()))?;
            if previous.size > current.size {
                problems.push(format!(
                    "the log shrank from {} to {} records: records were deleted from its history",
                    previous.size, current.size
                ));
            } else {
                let v = api
                    .call(
                        Method::GET,
                        "/api/v2/log/consistency",
                        &[
                            ("old", previous.size.to_string()),
                            ("new", current.size.to_string()),
                        ],
                        None,
                    )
                    .await?;
                match previous.verify_consistency_to(&current, &proof(&v)?) {
                    Ok(()) => {
                        println!(
                            "log consistent with the checkpoint seen before ({} → {} records)",
                            previous.size, current.size
                        );
                        cuts = check_cuts(&v, &current, &mut problems);
                    }
                    Err(e) => problems.push(format!(
                        "the log is not consistent with the checkpoint seen before ({} records): its history was rewritten ({e})",
                        previous.size
                    )),
                }
            }
        }
        Err(_) => {
            println!("first checkpoint seen: {} records", current.size);
            let v = api
                .call(
                    Method::GET,
                    "/api/v2/log/consistency",
                    &[("old", "0".into()), ("new", current.size.to_string())],
                    None,
                )
                .await?;
            cuts = check_cuts(&v, &current, &mut problems);
        }
    }
    if problems.is_empty() {
        std::fs::write(&cp_file, text.as_bytes())?;
    }
    print_checkpoint(&current);

    // 3b. Recordings: each chunk's leaf, computed here from the record the
    // server serves, must be in the checkpoint's tree.
    for id in &args.recording {
        check_recording(&api, &args.tailnet, id, &current, &mut problems).await?;
    }

    // 4. Flagged batches.
    let now = tally_proto::timefmt::now_nanos();
    let since = parse_time_flag("--since", &args.since, now)?;
    let v = api
        .call(
            Method::GET,
            &tailnet_path(&args.tailnet, "/logging/integrity"),
            &[("start", tally_proto::timefmt::format_nanos(since))],
            None,
        )
        .await?;
    let flagged = v["flagged"].as_array().cloned().unwrap_or_default();
    println!(
        "{} signed batches checked since {}, {} flagged",
        v["batchesChecked"].as_u64().unwrap_or(0),
        tally_proto::timefmt::format_nanos(since),
        flagged.len()
    );
    if let Some(n) = v["recordsDiscarded"].as_u64().filter(|n| *n > 0) {
        println!(
            "{} of them ({n} flow records) reached the server after flow logging was turned off: checked, not stored, not a gap",
            v["batchesDiscarded"].as_u64().unwrap_or(0)
        );
    }
    for f in &flagged {
        problems.push(format!(
            "{} instance {} {} batch {}: {}",
            f["time"].as_str().unwrap_or(""),
            f["instance"].as_str().unwrap_or(""),
            f["collection"].as_str().unwrap_or(""),
            f["seq"].as_u64().map_or("-".to_owned(), |s| s.to_string()),
            f["verdict"].as_str().unwrap_or("")
        ));
    }
    if problems.is_empty() && cuts > 0 {
        println!(
            "verdict: consistent, but {cuts} recovery cut(s) lost records the log had published (listed above)"
        );
        std::process::exit(2);
    } else if problems.is_empty() {
        println!("verdict: OK");
        Ok(())
    } else {
        for p in &problems {
            println!("  ! {p}");
        }
        bail!(
            "verdict: {} problem(s) found (listed above)",
            problems.len()
        )
    }
}

/// Shows the recovery-cut statements of a consistency answer, checking
/// that each is in the log of `current`; returns how many lost records
/// the log had published (a cut of an unacknowledged torn write is shown
/// but not counted).
fn check_cuts(v: &Value, current: &Checkpoint, problems: &mut Vec<String>) -> usize {
    let mut shown = 0;
    for c in v["cuts"].as_array().into_iter().flatten() {
        let seq = c["seq"].as_u64().unwrap_or(0);
        // The statement's record, hashed as the server hashes every record.
        let mut data = format!(
            "tally-record-v1\n{}\n{}\n{}\n{}\n{}\n",
            seq,
            c["time"].as_i64().unwrap_or(0),
            c["collection"].as_str().unwrap_or(""),
            "0".repeat(64),
            c["kind"].as_u64().unwrap_or(0),
        )
        .into_bytes();
        data.extend_from_slice(c["body"].as_str().unwrap_or("").as_bytes());
        let leaf = hash_leaf(&data);
        let included = proof(c).and_then(|p| {
            current
                .verify_inclusion(&leaf, c["leafIndex"].as_u64().unwrap_or(u64::MAX), &p)
                .map_err(|e| anyhow::anyhow!("{e}"))
        });
        if let Err(e) = included {
            problems.push(format!(
                "the server's recovery-cut statement (record {seq}) is not in its log: {e}"
            ));
            continue;
        }
        let st = &c["statement"];
        let lost = &st["lost"];
        let what = if lost.is_null() {
            "no record the log had published was lost".to_owned()
        } else {
            format!(
                "records at positions {}..={} (log leaves {}..={}) were lost",
                lost["positions"][0], lost["positions"][1], lost["leaves"][0], lost["leaves"][1]
            )
        };
        println!(
            "  ! recovery cut at {} (statement: record {seq}, in the log): {what}; the store resumed at {}",
            tally_proto::timefmt::format_nanos(c["time"].as_i64().unwrap_or(0)),
            st["resumesAt"]
        );
        for r in st["reasons"].as_array().into_iter().flatten() {
            println!("      {}", r.as_str().unwrap_or(""));
        }
        if !lost.is_null() {
            shown += 1;
        }
    }
    shown
}

/// Checks recording `id`: every chunk the server serves hashes to a leaf
/// whose inclusion in `current` the server proves, the chunks follow each
/// other (sequence numbers and offsets), and none expired.
async fn check_recording(
    api: &Api,
    tailnet: &str,
    id: &str,
    current: &Checkpoint,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let v = api
        .call(
            Method::GET,
            &tailnet_path(
                tailnet,
                &format!("/recordings/{}/chunks", crate::control_cmd::seg(id)),
            ),
            &[],
            None,
        )
        .await
        .with_context(|| format!("reading recording {id}"))?;
    let chunks = v["chunks"].as_array().cloned().unwrap_or_default();
    let before = problems.len();
    let (mut next_seq, mut offset, mut bytes) = (1u64, 0u64, 0u64);
    for c in &chunks {
        let position = c["position"].as_u64().unwrap_or(0);
        let body = c["body"].as_str().unwrap_or("");
        let mut data = format!(
            "tally-record-v1\n{}\n{}\n{}\n{}\n{}\n",
            position,
            c["time"].as_i64().unwrap_or(0),
            c["collection"].as_str().unwrap_or(""),
            c["instance"].as_str().unwrap_or(""),
            c["kind"].as_u64().unwrap_or(0),
        )
        .into_bytes();
        data.extend_from_slice(body.as_bytes());
        let leaf = hash_leaf(&data);
        let chunk: Value = serde_json::from_str(body).unwrap_or_default();
        let seq = chunk["seq"].as_u64().unwrap_or(0);
        let proof_answer = api
            .call(
                Method::GET,
                "/api/v2/log/inclusion",
                &[
                    ("seq", position.to_string()),
                    ("size", current.size.to_string()),
                ],
                None,
            )
            .await;
        let included = proof_answer.and_then(|p| {
            let index = p["leafIndex"]
                .as_u64()
                .context("the server gave no leaf index")?;
            current
                .verify_inclusion(&leaf, index, &proof(&p)?)
                .map_err(|e| anyhow::anyhow!("{e}"))
        });
        if let Err(e) = included {
            problems.push(format!(
                "recording {id}: chunk {seq} (store position {position}) does not match the transparency log: it was changed after it was stored ({e:#})"
            ));
        }
        if chunk["recording"] != id {
            problems.push(format!(
                "recording {id}: the record at store position {position} belongs to {}",
                chunk["recording"]
            ));
        }
        if seq != next_seq || chunk["offset"].as_u64() != Some(offset) {
            problems.push(format!(
                "recording {id}: chunk {seq} at offset {} follows chunk {} ending at offset {offset}: chunks are missing",
                chunk["offset"],
                next_seq.saturating_sub(1)
            ));
        }
        let len = chunk["data"].as_str().map_or(0, |d| d.len() as u64);
        next_seq = seq + 1;
        offset = chunk["offset"].as_u64().unwrap_or(offset) + len;
        bytes += len;
    }
    if let Some(expired) = v["expired"].as_array().filter(|e| !e.is_empty()) {
        println!(
            "recording {id}: {} chunk(s) expired by retention and were not checked",
            expired.len()
        );
    }
    if problems.len() == before {
        println!(
            "recording {id}: {} chunk(s), {bytes} bytes, each in the log ({})",
            chunks.len(),
            v["state"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn print_checkpoint(c: &Checkpoint) {
    println!(
        "checkpoint: {} size {} root {}",
        c.origin,
        c.size,
        c.root.to_base64()
    );
}
