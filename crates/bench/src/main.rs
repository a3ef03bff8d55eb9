//! `tally-bench`: Tally's benchmarks, a binary of their own so that the
//! server and agent (`tally`) carry no benchmark code, no throwaway
//! PostgreSQL clusters and no benchmark-only dependencies. `tally bench ARGS`
//! runs the `tally-bench` next to `tally` with ARGS, so both spellings work;
//! benchmarks that measure the server or the agent as a process run the
//! `tally` binary next to this one.
//!
//! One module per subcommand (`ingest`, `memory` for `ingest-memory`,
//! `audit`, `flows`, `reconcile`, `pipeline`, `detect`, `stream`, `recorder`, `console`), helpers they share in
//! `common`; the capture-path and flow-store benchmarks that `flows` and
//! `cargo bench -p tally-bench` share are in the library (`src/lib.rs`).

mod audit;
mod common;
mod console;
mod detect;
mod flows;
mod ingest;
mod memory;
mod pipeline;
mod reconcile;
mod recorder;
mod stream;

use clap::Parser;

/// Tally's benchmarks (also run as `tally bench ...`). Results and how to
/// read them: BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(
    name = "tally-bench",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Which benchmark to run.
    #[command(subcommand)]
    cmd: BenchCmd,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Ingest throughput: concurrent clients POST zstd batches of
    /// tailscaled-like entries; reports entries/s, MB/s, latency, server CPU
    /// and RSS, bytes on disk, and checks that every acknowledged entry was
    /// stored. `--postgres` also loads the same entries into PostgreSQL;
    /// `--log nats-r1|nats-r3|nats://...` puts the servers' log on NATS
    /// JetStream (`--servers N`), `--compare-logs` compares the two.
    Ingest(ingest::IngestArgs),
    /// Ingest memory under the costliest entry mix: concurrent clients send
    /// bodies of tiny entries (`[{},{},...]`, as many as one body may hold,
    /// zstd-compressed); reports the server's peak and settled RSS next to
    /// its ingest memory budget.
    IngestMemory(memory::IngestMemoryArgs),
    /// Configuration audit log: audited mutations per second through the
    /// HTTP API, filling a tailnet's log to --events events, and the latency
    /// of filtered, unfiltered and free-text pages. SQLite by default,
    /// `--postgres` for a throwaway PostgreSQL cluster.
    Audit(audit::AuditArgs),
    /// Network flow logs: parse + table packets/s and memory, the agent
    /// capturing a veth at its practical limit (CPU, RSS, drops, records vs
    /// interface counters), server ingest of flow records, the flow store
    /// at 1,000 nodes x 24 h, and softflowd + nfdump on the same traffic.
    Flows(flows::FlowsArgs),
    /// Double-entry reconciliation: precision and recall per fault class on
    /// simulated tailnets with labelled faults, findings on clean traffic
    /// with +/-30 s skew, and entries/s and memory for 10,000 nodes.
    Reconcile(reconcile::ReconcileArgs),
    /// The store's consumers: ingest throughput of flow records with every
    /// consumer running, then each consumer's replay from the start of the
    /// store (flow index, transparency log, reconciliation).
    Pipeline(pipeline::PipelineArgs),
    /// Detection (Sigma rules and correlations) on one thread: flow entries
    /// per second through the built-in pack and 100 extra rules, memory of
    /// correlation state with 1,000,000 group keys, event-to-alert latency,
    /// and recall and precision per built-in rule on a labelled corpus of
    /// a simulated 1,000-node tailnet (and alerts on its clean traffic).
    Detect(detect::DetectArgs),
    /// Streaming to SIEMs: a backlog of flow records (an outage of every
    /// destination) delivered to a local Splunk HEC receiver, to rsyslog
    /// over TLS and to an S3 server (moto), each alone: entries/s, time
    /// to drain and times real time; then steady ingest with the HEC
    /// receiver up: delivery latency and lag; server CPU and RSS per
    /// phase.
    Stream(stream::StreamArgs),
    /// Session recording: 1,000 idle and 50 busy (1 MB/s) recordings over
    /// the h2c recorder protocol (server CPU, RSS, ack latency, bytes on
    /// disk vs raw .cast), and `tally record`'s cost per keystroke echo.
    Recorder(recorder::RecorderArgs),
    /// The console (issue 15): a server with 1,000 nodes, 1,000,000 audit
    /// events, 24 h of flows and 1,000,000 log lines; the server time of
    /// each console page's first load (its `/api/v2` and `/c/` requests,
    /// as its module makes them), p50/p99/max, and the first load's
    /// static bytes with and without gzip.
    Console(console::ConsoleArgs),
}

/// Logs of in-process servers and agents to stderr, filtered by `TALLY_LOG`
/// (default `info`), as `tally` does.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs a benchmark.
async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Ingest(a) => ingest::ingest(a).await,
        BenchCmd::IngestMemory(a) => memory::run(a).await,
        BenchCmd::Audit(a) => audit::run(a).await,
        BenchCmd::Flows(a) => flows::run(a).await,
        BenchCmd::Reconcile(a) => reconcile::run(a).await,
        BenchCmd::Pipeline(a) => pipeline::run(a).await,
        BenchCmd::Detect(a) => detect::run(a).await,
        BenchCmd::Stream(a) => stream::run(a).await,
        BenchCmd::Recorder(a) => recorder::run(a).await,
        BenchCmd::Console(a) => console::run(a).await,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        init_tracing();
        common::install_crypto();
        run(cli.cmd).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
