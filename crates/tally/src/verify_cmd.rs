//! `tally verify`: checks the server's transparency log against what this
//! client saw before, and lists the upload batches the server flagged.
//!
//! 1. The log key (`/.well-known/tally/log-key`) is trusted on first use and
//!    pinned in the state directory; a changed key is a failure.
//! 2. The signed checkpoint (`/.well-known/tally/checkpoint`) must verify
//!    with that key and be consistent with the last checkpoint saved here
//!    (a consistency proof from the server); only then is it saved.
//! 3. The tailnet's flagged batches (bad signatures, gaps, broken chains,
//!    replays, unsigned uploads of signing nodes) since `--since`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;
use tally_transparency::Hash;
use tally_transparency::checkpoint::{Checkpoint, SignedCheckpoint};
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
        .with_context(|| format!("cannot reach {url}; is the server running? (--server)"))?;
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
    crate::client::install_crypto();
    let base = args.server.server.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder().build()?;
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
                    Ok(()) => println!(
                        "log consistent with the checkpoint seen before ({} → {} records)",
                        previous.size, current.size
                    ),
                    Err(e) => problems.push(format!(
                        "the log is not consistent with the checkpoint seen before ({} records): its history was rewritten ({e})",
                        previous.size
                    )),
                }
            }
        }
        Err(_) => println!("first checkpoint seen: {} records", current.size),
    }
    if problems.is_empty() {
        std::fs::write(&cp_file, text.as_bytes())?;
    }
    print_checkpoint(&current);

    // 3. Flagged batches.
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
    if problems.is_empty() {
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

fn print_checkpoint(c: &Checkpoint) {
    println!(
        "checkpoint: {} size {} root {}",
        c.origin,
        c.size,
        c.root.to_base64()
    );
}
