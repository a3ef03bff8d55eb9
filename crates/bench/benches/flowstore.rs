//! Flow store benchmark: `cargo bench -p tally-bench --bench flowstore` (release).
//!
//! Environment: `FLOWSTORE_BENCH_NODES` (default 1000), `FLOWSTORE_BENCH_HOURS`
//! (default 24), `FLOWSTORE_BENCH_DIR` (default a temporary directory),
//! `FLOWSTORE_BENCH_ZSTD` (zstd level), `FLOWSTORE_BENCH_ACTIVITY` (1.0).

use std::time::Instant;
use tally_bench::flowstore::{BenchConfig, run};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = env::<String>("FLOWSTORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("flows"));
    let mut cfg = BenchConfig::standard(dir);
    if let Some(n) = env("FLOWSTORE_BENCH_NODES") {
        cfg.nodes = n;
    }
    if let Some(h) = env("FLOWSTORE_BENCH_HOURS") {
        cfg.hours = h;
    }
    if let Some(a) = env("FLOWSTORE_BENCH_ACTIVITY") {
        cfg.activity = a;
    }
    if let Some(z) = env("FLOWSTORE_BENCH_ZSTD") {
        cfg.store.zstd_level = z;
    }
    eprintln!(
        "flow store benchmark: {} nodes, {} h, zstd {}, in {}",
        cfg.nodes,
        cfg.hours,
        cfg.store.zstd_level,
        cfg.dir.display()
    );
    let t = Instant::now();
    match run(&cfg, &mut |s| eprintln!("{s}")) {
        Ok(r) => {
            println!("{r}");
            eprintln!("total {:.1} s", t.elapsed().as_secs_f64());
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
