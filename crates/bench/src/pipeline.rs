//! `tally bench pipeline`: ingest throughput with every store consumer
//! running, then each consumer's replay throughput. Flow records of
//! simulated nodes (the generator of `tally bench flows`) are uploaded over
//! HTTP; the server is stopped, the consumers' own state is removed (flow
//! store, transparency log, reconciler state), and the server is started
//! again over the same store: every consumer then reads the whole store
//! from the start, all at once as on a real restart, and the time each
//! takes to reach the store's end is its replay throughput.

use crate::common::{fmt_count, percentile};
use crate::flows::{
    INTERVAL_NS, Srv, gen_nodes, gen_requests, node_addr, register_node, send_all, setup_tailnet,
};
use anyhow::{Context, ensure};
use std::time::{Duration, Instant};
use tally_proto::timefmt::now_nanos;

/// Settings of `tally bench pipeline`.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Flow records to upload (rounded up to whole intervals of every node).
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Records per upload, per node.
    #[arg(long, default_value_t = 4)]
    pub records_per_request: usize,
    /// Concurrent upload clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the data directory (printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

impl Srv {
    /// Waits until every consumer has read through the store's end as it
    /// is now; returns each consumer's time to get there.
    async fn caught_up(&self, limit: Duration) -> anyhow::Result<Vec<(String, Duration)>> {
        let target = self.progress.end().saturating_sub(1);
        let t = Instant::now();
        let mut done: Vec<(String, Duration)> = Vec::new();
        loop {
            let positions = self.progress.positions();
            for (name, pos) in &positions {
                if *pos >= target && !done.iter().any(|(n, _)| n == name) {
                    done.push((name.clone(), t.elapsed()));
                }
            }
            // The consumers register as the server starts: none yet is
            // not all caught up.
            if !positions.is_empty() && done.len() == positions.len() {
                return Ok(done);
            }
            ensure!(
                t.elapsed() < limit,
                "consumers did not catch up within {limit:?}: {positions:?} of {target}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs `tally bench pipeline`.
pub async fn run(a: PipelineArgs) -> anyhow::Result<()> {
    ensure!(
        (10..=60_000).contains(&a.nodes),
        "--nodes must be 10 to 60,000"
    );
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(
        a.records_per_request >= 1,
        "--records-per-request must be at least 1"
    );
    let work = tempfile::Builder::new()
        .prefix("tally-bench-pipeline-")
        .tempdir()
        .context("cannot create a work directory")?;
    let data = work.path().join("data");
    let key = format!("bench-{:032x}", rand::random::<u128>());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("# tally bench pipeline (commit {commit})\n");

    // 1. Ingest with every consumer running.
    let srv = Srv::start_keyed(&data, 30, key.clone()).await?;
    let auth = setup_tailnet(&srv).await?;
    eprintln!("registering {} nodes ...", a.nodes);
    let mut regs = Vec::with_capacity(a.nodes);
    for i in 0..a.nodes {
        regs.push(
            register_node(
                &srv,
                &srv.http,
                &auth,
                &format!("bench-node-{i}"),
                &[node_addr(i).to_string()],
            )
            .await?,
        );
    }
    let mut nodes = gen_nodes(regs, a.seed);
    let n = nodes.len();
    let intervals = a
        .records
        .div_ceil(n)
        .max(1)
        .next_multiple_of(a.records_per_request);
    let start = (now_nanos() - intervals as i64 * INTERVAL_NS) / INTERVAL_NS * INTERVAL_NS;
    let (base, clients, per_request, seed) =
        (srv.base.clone(), a.clients, a.records_per_request, a.seed);
    let (reqs, _) = tokio::task::spawn_blocking(move || {
        gen_requests(
            &mut nodes,
            &base,
            intervals,
            per_request,
            clients,
            start,
            seed,
        )
    })
    .await
    .context("generating records panicked")??;
    eprintln!("uploading ...");
    let t = Instant::now();
    let mut stats = send_all(reqs).await?;
    let ingest_secs = t.elapsed().as_secs_f64().max(1e-9);
    ensure!(
        stats.gave_up == 0 && stats.transport_errors == 0,
        "uploads failed: {}",
        stats.first_error.unwrap_or_default()
    );
    let live = srv.caught_up(Duration::from_secs(600)).await?;
    let end = srv.progress.end();
    srv.stop().await?;
    stats.lat_us.sort_unstable();

    // 2. Replay: every consumer from the start of the store.
    for dir in ["flows", "merkle"] {
        std::fs::remove_dir_all(data.join(dir)).with_context(|| format!("removing {dir}"))?;
    }
    std::fs::remove_file(data.join("reconcile.state")).context("removing reconcile.state")?;
    let t = Instant::now();
    let srv = Srv::start_keyed(&data, 30, key).await?;
    let open_secs = t.elapsed().as_secs_f64();
    let replay = srv.caught_up(Duration::from_secs(1800)).await?;
    srv.stop().await?;

    println!(
        "{n} nodes, {} flow records with {} entries in {} uploads from {clients} clients; store positions 1-{}.\n",
        fmt_count(stats.records as f64),
        fmt_count(stats.entries as f64),
        fmt_count(stats.requests as f64),
        end.saturating_sub(1)
    );
    println!("| ingest (every consumer running) | result |\n|---|---|");
    println!(
        "| records acknowledged | {:.0} records/s, {:.0} entries/s |",
        stats.records as f64 / ingest_secs,
        stats.entries as f64 / ingest_secs
    );
    println!(
        "| latency p50 / p99 | {:.1} / {:.1} ms |",
        percentile(&stats.lat_us, 50.0) as f64 / 1000.0,
        percentile(&stats.lat_us, 99.0) as f64 / 1000.0
    );
    for (name, d) in &live {
        println!(
            "| {name} caught up after the last ack | {:.2} s |",
            d.as_secs_f64()
        );
    }
    println!(
        "\n| replay from the start (all at once, store opened in {open_secs:.2} s) | time | records/s | entries/s |\n|---|---|---|---|"
    );
    for (name, d) in &replay {
        let s = d.as_secs_f64().max(1e-9);
        println!(
            "| {name} | {s:.2} s | {:.0} | {:.0} |",
            stats.records as f64 / s,
            stats.entries as f64 / s
        );
    }
    if a.keep {
        let kept = work.keep();
        println!("\ndata directory kept in {}", kept.display());
    }
    Ok(())
}
