//! `cargo bench -p tally-reconcile`: the scoring table of the evaluation
//! harness and throughput / memory for a 10,000-node tailnet.

use std::time::Instant;

use tally_reconcile::Config;
use tally_reconcile::eval::{Event, Scenario, generate, run, score, table};

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::default();
    for seed in [1u64, 2, 3] {
        let g = generate(&Scenario::small(seed, true));
        let r = run(&g, cfg, &[])?;
        println!(
            "## faults, seed {seed} (40 nodes, 10 min)\n\n{}",
            table(&score(&g.labels, &r, &cfg))
        );
        let c = generate(&Scenario::small(seed + 100, false));
        let rc = run(&c, cfg, &[])?;
        println!(
            "clean traffic (+/-30 s skew), seed {}: {} findings\n",
            seed + 100,
            rc.findings.len()
        );
    }
    let sc = Scenario {
        seed: 7,
        nodes: 10_000,
        conns_per_node: 4,
        seconds: 120,
        max_skew_ns: 30_000_000_000,
        faults: false,
        reports: false,
    };
    let t = Instant::now();
    let g = generate(&sc);
    let entries = g
        .events
        .iter()
        .filter(|e| matches!(e, Event::Obs(_)))
        .count();
    println!(
        "generated {} entries for 10,000 nodes in {:.1} s",
        entries,
        t.elapsed().as_secs_f64()
    );
    let rss0 = rss();
    let t = Instant::now();
    let r = run(&g, cfg, &[])?;
    let el = t.elapsed().as_secs_f64();
    println!(
        "reconciled {} entries in {:.2} s: {:.0} entries/s on one core; {} findings; max open connection-windows {}; RSS growth {:.1} MiB",
        entries,
        el,
        entries as f64 / el,
        r.findings.len(),
        r.max_open_windows,
        (rss().saturating_sub(rss0)) as f64 / 1048576.0
    );
    Ok(())
}
