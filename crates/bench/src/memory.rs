//! `tally bench ingest-memory`: the server's memory under the entry mix that
//! costs the most per byte of body, next to its ingest memory budget.
//!
//! The body is one entry (default `{}`) repeated `--entries` times
//! (default: the most the server accepts in one body) and compressed with
//! zstd, so the request itself is tiny while every entry still becomes a
//! stored record. `--clients` concurrent clients
//! (each its own adopted instance and keep-alive connection) send it for
//! `--duration` seconds; the benchmark samples the server's VmRSS every
//! 50 ms, reads VmHWM at the end of the load, waits until the server is
//! idle (at most `--settle` seconds) and reads VmRSS again: what the server
//! keeps once the burst is over.
//!
//! Every stored `{}` is a full record on disk (≈230 B of WAL each), so a
//! run writes gigabytes: keep `--duration` short.

use crate::common::{
    Machine, TallyServer, adopt, clock_ticks_per_sec, fmt_bytes, fmt_count, http_client,
    proc_cpu_ticks, proc_status_bytes, tally_exe,
};
use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tally_proto::PrivateId;
use tally_proto::logtail::{MAX_BODY_BYTES, MAX_ENTRIES};

/// Settings of `tally bench ingest-memory`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestMemoryArgs {
    /// Concurrent clients (each one adopted instance, one keep-alive connection).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// After the load, the server finishes its backlog (sealing, the
    /// transparency log): the settled RSS is read once it has used under 2%
    /// of a core for 3 s, or after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub settle: f64,
    /// JSON text of one entry; the body is an array repeating it.
    #[arg(long, default_value = "{}")]
    pub entry: String,
    /// Entries per body (default: the most the server accepts; more are
    /// refused with 413, as long as the body fits the decompressed limit).
    #[arg(long, default_value_t = MAX_ENTRIES)]
    pub entries: usize,
    /// zstd level of the body.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Collection to write to (must exist).
    #[arg(long, default_value = "tailnode")]
    pub collection: String,
    /// The `tally` executable to run as the server (default: the `tally`
    /// next to `tally-bench`), to measure another build with the same load.
    #[arg(long)]
    pub server_exe: Option<PathBuf>,
    /// Parent directory of the temporary data directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// The server's answer to an upload (200 only).
#[derive(Deserialize)]
struct Ack {
    stored: u64,
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    stored: u64,
    first_error: Option<String>,
}

/// Runs the benchmark.
pub async fn run(a: IngestMemoryArgs) -> anyhow::Result<()> {
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(
        a.duration > 0.0 && a.settle >= 0.0,
        "--duration must be positive and --settle not negative"
    );
    ensure!(
        (1..=22).contains(&a.zstd_level),
        "--zstd-level must be 1 to 22"
    );
    serde_json::from_str::<serde::de::IgnoredAny>(&a.entry)
        .with_context(|| format!("--entry {:?} is not JSON", a.entry))?;
    crate::common::install_crypto();
    println!("{}", Machine::detect().render());

    ensure!(a.entries >= 1, "--entries must be at least 1");
    let (entries, per) = (a.entries, a.entry.len() + 1);
    let mut json = Vec::with_capacity(entries * per + 1);
    json.push(b'[');
    for i in 0..entries {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(a.entry.as_bytes());
    }
    json.push(b']');
    ensure!(
        json.len() <= MAX_BODY_BYTES,
        "the body is {} bytes, over the server's {MAX_BODY_BYTES}-byte limit: lower --entries",
        json.len()
    );
    let body = bytes::Bytes::from(
        zstd::bulk::compress(&json, a.zstd_level).context("zstd compression failed")?,
    );
    let orig_len = json.len();
    drop(json);
    let budget = tally_server::ServerConfig::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        PathBuf::new(),
    )
    .ingest_memory_budget;
    println!(
        "workload: {} clients x [{}, ...] ({} entries, {} B of JSON, {} B with zstd), {} s of load, then up to {} s until idle",
        a.clients,
        a.entry,
        fmt_count(entries as f64),
        fmt_count(orig_len as f64),
        fmt_count(body.len() as f64),
        a.duration,
        a.settle
    );

    let exe = match &a.server_exe {
        Some(p) => p.clone(),
        None => tally_exe()?,
    };
    let mut server = TallyServer::spawn(&exe, a.work_dir.as_deref()).await?;
    let pid = server.pid.context("the server has no pid")?;
    let ids: Vec<PrivateId> = (0..a.clients).map(|_| PrivateId::generate()).collect();
    let publics: Vec<_> = ids.iter().map(PrivateId::public).collect();
    let http = http_client(Duration::from_secs(120))?;
    adopt(&http, &server, &a.collection, &publics).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = proc_status_bytes(pid, "VmRSS").context("cannot read the server's VmRSS")?;

    let end = Instant::now() + Duration::from_secs_f64(a.duration);
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (done, max_rss) = (done.clone(), max_rss.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = proc_status_bytes(pid, "VmRSS") {
                    max_rss.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for id in &ids {
        let url = format!("{}/c/{}/{}", server.base, a.collection, id.to_hex());
        let client = http_client(Duration::from_secs(120))?;
        tasks.push(tokio::spawn(load(client, url, body.clone(), orig_len, end)));
    }
    let mut seen = Seen::default();
    for t in tasks {
        let s = t.await.context("a client task panicked")?;
        for (k, v) in s.statuses {
            *seen.statuses.entry(k).or_default() += v;
        }
        seen.transport_errors += s.transport_errors;
        seen.stored += s.stored;
        if seen.first_error.is_none() {
            seen.first_error = s.first_error;
        }
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let hwm = proc_status_bytes(pid, "VmHWM").context("cannot read the server's VmHWM")?;
    let rss_after_load = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
    let settle_start = Instant::now();
    let settle_end = settle_start + Duration::from_secs_f64(a.settle);
    let mut quiet = 0;
    let mut ticks = proc_cpu_ticks(pid).unwrap_or(0);
    while quiet < 3 && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = proc_cpu_ticks(pid).unwrap_or(0);
        let busy = (now.saturating_sub(ticks)) as f64 / clock_ticks_per_sec();
        ticks = now;
        quiet = if busy < 0.02 { quiet + 1 } else { 0 };
    }
    let settle_secs = settle_start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let settled = proc_status_bytes(pid, "VmRSS").context("cannot read the server's VmRSS")?;
    if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
        bail!(
            "the server exited during the benchmark ({status}); its log:\n{}",
            server.log_tail()
        );
    }
    server.stop().await?;

    let statuses: Vec<String> = seen
        .statuses
        .iter()
        .map(|(s, n)| format!("{n} x {s}"))
        .collect();
    println!("\n== Ingest memory ({}) ==", exe.display());
    println!(
        "  requests:     {} in {load_secs:.1} s; {} entries stored ({}/s); transport errors {}",
        statuses.join(", "),
        fmt_count(seen.stored as f64),
        fmt_count(seen.stored as f64 / load_secs.max(1e-9)),
        seen.transport_errors
    );
    if let Some(e) = &seen.first_error {
        println!("  first non-200 answer: {e}");
    }
    println!(
        "  server RSS:   before load {}, peak (VmHWM) {}, sampled peak {}, at end of load {}, settled {} ({})",
        fmt_bytes(rss_before),
        fmt_bytes(hwm),
        fmt_bytes(max_rss.load(Ordering::Relaxed)),
        fmt_bytes(rss_after_load),
        fmt_bytes(settled),
        if quiet >= 3 {
            format!("idle after {settle_secs:.0} s")
        } else {
            format!("still busy after {settle_secs:.0} s")
        }
    );
    println!(
        "  vs budget:    ingest memory budget {} (server default); peak - before = {} ({:.1}x the budget); settled - before = {}",
        fmt_bytes(budget as u64),
        fmt_bytes(hwm.saturating_sub(rss_before)),
        hwm.saturating_sub(rss_before) as f64 / budget as f64,
        fmt_bytes(settled.saturating_sub(rss_before))
    );
    Ok(())
}

/// One client: sends the body over one keep-alive connection until `end`.
async fn load(
    http: reqwest::Client,
    url: String,
    body: bytes::Bytes,
    orig_len: usize,
    end: Instant,
) -> Seen {
    let mut seen = Seen::default();
    while Instant::now() < end {
        let sent = http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "zstd")
            .header("Orig-Content-Length", orig_len)
            .body(body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                seen.transport_errors += 1;
                seen.first_error.get_or_insert_with(|| format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = resp.status();
        let text = resp.bytes().await.unwrap_or_default();
        *seen.statuses.entry(status.as_u16()).or_default() += 1;
        if status == StatusCode::OK {
            if let Ok(ack) = serde_json::from_slice::<Ack>(&text) {
                seen.stored += ack.stored;
            }
        } else {
            seen.first_error.get_or_insert_with(|| {
                format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&text[..text.len().min(300)])
                )
            });
            if status != StatusCode::BAD_REQUEST {
                // Busy: back off briefly, as a client honouring Retry-After would.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    seen
}
