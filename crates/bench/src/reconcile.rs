//! `tally bench reconcile`: the reconciler's evaluation harness and speed.
//!
//! 1. **score**: for each seed, a simulated 40-node tailnet
//!    (`Scenario::realistic`: 12 minutes, +/-30 s clock skew, 5-s records
//!    cut at each node's own phase, packet loss, short and long-lived
//!    connections, sparse traffic, late joins, leaves, restarts, address
//!    changes, a flow-logging toggle, upload queue delays) with the
//!    labelled faults injected, fed to a reconciler at default settings;
//!    precision and recall per class, findings matching no fault, and the
//!    time from each fault to its first finding. Then the same tailnet with
//!    clean traffic, where any finding outside the toggle is a false one.
//! 2. **speed**: a `--nodes` tailnet (10,000 by default) of clean traffic;
//!    entries per second through `observe` + `advance` on one thread, the
//!    most connection halves held at once, the process RSS, and the size
//!    of the engine's snapshot (what the server saves every 15 s).

use crate::common::{fmt_count, proc_status_bytes};
use std::time::Instant;
use tally_reconcile::Config;
use tally_reconcile::eval::{Event, Scenario, generate, run as feed, score, table};

/// Settings of `tally bench reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// Seeds of the scored scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    /// Nodes of the throughput tailnet.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Simulated seconds of the throughput tailnet.
    #[arg(long, default_value_t = 120)]
    pub seconds: i64,
    /// No progress bar (one is drawn on stderr only when it is a terminal)
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs the benchmark and prints its report.
pub async fn run(a: ReconcileArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || bench(&a)).await?
}

fn bench(a: &ReconcileArgs) -> anyhow::Result<()> {
    let cfg = Config::default();
    println!(
        "# tally bench reconcile\n\ndefaults: window {} s, grace {} s, margin {} s, loss tolerance {:.0} %, absolute {} B / {} pkts\n",
        cfg.window_ns / 1_000_000_000,
        cfg.grace_ns / 1_000_000_000,
        cfg.margin_ns as f64 / 1e9,
        cfg.rel_tolerance * 100.0,
        cfg.abs_tolerance_bytes,
        cfg.abs_tolerance_pkts
    );
    // Steps: two tailnets per seed, then the speed runs (generate, feed,
    // feed with a snapshot).
    let bar = crate::common::progress(a.seeds.len() as u64 * 2 + 3, "steps", a.quiet);
    for &seed in &a.seeds {
        bar.set_message(format!("seed {seed} "));
        let g = generate(&Scenario::realistic(seed, true));
        let r = feed(&g, cfg, &[])?;
        bar.inc(1);
        bar.suspend(|| println!(
            "## faults, seed {seed} (40 nodes, 4 long-lived connections each plus short ones, 12 min, with what real tailnets do: capture sessions off the interval grid, sparse traffic, late joins, leaves, restarts, address changes, a 60-s flow-logging toggle, upload queue delays)\n\n{}",
            table(&score(&g.labels, &r, &cfg))
        ));
        let clean = generate(&Scenario::realistic(seed + 100, false));
        let rc = feed(&clean, cfg, &[])?;
        let sc = score(&clean.labels, &rc, &cfg);
        bar.inc(1);
        bar.suspend(|| println!(
            "clean traffic, seed {} (the same effects, +/-30 s skew, late and duplicated uploads): {} findings, {} of them outside the flow-logging toggle (informational missing_flow_logging_off inside it)\n",
            seed + 100,
            rc.findings.len(),
            sc.false_findings
        ));
    }
    bar.set_message("speed ");
    let sc = Scenario {
        seed: 7,
        nodes: a.nodes,
        conns_per_node: 4,
        seconds: a.seconds,
        max_skew_ns: cfg.max_skew_ns,
        faults: false,
        reports: false,
        ..Scenario::small(7, false)
    };
    let t = Instant::now();
    let g = generate(&sc);
    bar.inc(1);
    let entries = g
        .events
        .iter()
        .filter(|e| matches!(e, Event::Obs(_)))
        .count();
    bar.suspend(|| {
        println!(
            "## speed\n\ngenerated {} entries of {} nodes ({} s simulated) in {:.1} s",
            fmt_count(entries as f64),
            fmt_count(a.nodes as f64),
            a.seconds,
            t.elapsed().as_secs_f64()
        )
    });
    let rss = || proc_status_bytes(std::process::id(), "VmRSS").unwrap_or(0);
    let before = rss();
    let t = Instant::now();
    let r = feed(&g, cfg, &[])?;
    let el = t.elapsed().as_secs_f64();
    bar.inc(1);
    bar.suspend(|| println!(
        "reconciled in {el:.2} s: {} entries/s on one thread; {} findings; at most {} connection halves held; RSS {} MiB (+{} MiB while reconciling, with the generated input resident)",
        fmt_count(entries as f64 / el),
        r.findings.len(),
        fmt_count(r.max_open_halves as f64),
        rss() / (1 << 20),
        rss().saturating_sub(before) / (1 << 20),
    ));
    // The state a crash-safe consumer saves: one snapshot and restore midway.
    let n = g.events.len();
    let t = Instant::now();
    let cut = feed(&g, cfg, &[n / 2])?;
    let el_cut = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    println!(
        "state snapshot midway: {:.1} MB; snapshot + restore took {:.2} s; same findings after the restore: {}",
        cut.max_snapshot as f64 / 1e6,
        (el_cut - el).max(0.0),
        cut.findings == r.findings
    );
    Ok(())
}
