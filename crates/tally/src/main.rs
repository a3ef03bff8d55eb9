//! `tally`: the Tally server, agent and command-line client in one binary.
//!
//! Cargo features (both default): `server` (`tally server`, `tally reconcile
//! replay`: links tally-server) and `agent` (`tally agent`). An agent-only
//! build, `cargo build --release -p tally --no-default-features --features
//! agent`, has the agent and the client verbs and no server code. The
//! benchmarks are a separate binary, `tally-bench`, that `tally bench` runs.

#[cfg(feature = "agent")]
mod agent_cmd;
mod bench_cmd;
mod client;
mod config_file;
mod consumers_cmd;
mod control_cmd;
mod detect_cmd;
mod flows_cmd;
mod logs_cmd;
mod progress;
mod reconcile_cmd;
#[cfg(feature = "agent")]
mod record_cmd;
mod recordings_cmd;
mod stream_cmd;
mod verify_cmd;

use clap::{Parser, Subcommand};
use client::ServerArgs;
#[cfg(feature = "server")]
use std::net::SocketAddr;
#[cfg(feature = "server")]
use std::path::PathBuf;

/// Tally: self-hosted logging for mesh VPNs.
///
/// Run `tally server` on one machine and `tally agent` on every node; read
/// logs with `tally logs`. Client verbs find the server with --server or
/// TALLY_SERVER and authenticate with TALLY_API_KEY.
#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: logs-service API and durable storage.
    #[cfg(feature = "server")]
    Server(ServerCmd),
    /// Run the consumers that run once per cluster (reconciliation,
    /// detection, streams, the audit outbox) on a shared log: takes the
    /// workers' lease (a standby waits for it), with the servers' flags.
    #[cfg(feature = "server")]
    Worker(ServerCmd),
    /// Run the node agent (queue logs on disk, upload them), or talk to it:
    /// `id`, `log MESSAGE`, `logs`.
    #[cfg(feature = "agent")]
    Agent(agent_cmd::AgentArgs),
    /// Benchmarks: runs the tally-bench binary next to this one with the
    /// arguments given (`tally bench --help` lists them).
    Bench(bench_cmd::BenchArgs),
    /// Read logs: `tail` follows, `query` searches.
    Logs(WithServer<logs_cmd::LogsCmd>),
    /// List, create and delete collections.
    Collections(WithServer<logs_cmd::CollectionsCmd>),
    /// Adopt instances into collections.
    Instances(WithServer<logs_cmd::InstancesCmd>),
    /// Tailnets: list, create (prints the owner's API key), rename, delete.
    Tailnets(WithServer<control_cmd::TailnetsCmd>),
    /// Tailnet settings: flow logging and retention.
    Settings(WithServer<control_cmd::SettingsCmd>),
    /// API keys and auth keys: list, create, show, revoke.
    Keys(WithServer<control_cmd::KeysCmd>),
    /// Users and their roles.
    Users(WithServer<control_cmd::UsersCmd>),
    /// Nodes (devices): list, show, rename, tag, delete.
    Nodes(WithServer<control_cmd::NodesCmd>),
    /// Configuration audit log: list events, verify its hash chain.
    Audit(WithServer<control_cmd::AuditCmd>),
    /// Network flow logs: `query` lists entries, `top` ranks who talks to whom.
    Flows(WithServer<flows_cmd::FlowsCmd>),
    #[cfg_attr(
        feature = "server",
        doc = "Double-entry reconciliation of flow records: completeness and findings \
               (`report`), or recomputed offline from a stopped server's data \
               directory (`replay`)."
    )]
    #[cfg_attr(
        not(feature = "server"),
        doc = "Double-entry reconciliation of flow records: completeness and findings \
               (`report`)."
    )]
    Reconcile(WithServer<reconcile_cmd::ReconcileCmd>),
    /// The server's consumers of its log (flow index, transparency log,
    /// reconciliation): position, lag, rejected records; pause, resume.
    Consumers(WithServer<consumers_cmd::ConsumersCmd>),
    /// Detection rules (Sigma): list, show, add, enable, disable, delete,
    /// and test a rule over stored data.
    Rules(WithServer<detect_cmd::RulesCmd>),
    /// Alerts the detection rules raised: list, acknowledge, follow.
    Alerts(WithServer<detect_cmd::AlertsCmd>),
    /// Log streams to SIEMs (Splunk, Elastic, Datadog, S3, syslog, signed
    /// webhooks and more): list, set, add, delete, status, test.
    Stream(WithServer<stream_cmd::StreamCmd>),
    /// Session recordings: list, export, play, tail.
    Recordings(WithServer<recordings_cmd::RecordingsCmd>),
    /// Record a terminal session through this node's agent: `tally record
    /// -- COMMAND...` (default: $SHELL).
    #[cfg(feature = "agent")]
    Record(record_cmd::RecordArgs),
    /// Verify the server's logs: transparency-log consistency with what this
    /// client saw before, and upload batches flagged at ingest.
    Verify(verify_cmd::VerifyArgs),
    /// Print a shell completion script: `tally completions bash >
    /// /etc/bash_completion.d/tally` (zsh: into a directory of $fpath as
    /// `_tally`; fish: ~/.config/fish/completions/tally.fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: `tally.1` to stdout, or with --dir one page per
    /// command (`tally-server.1`, `tally-logs-query.1`, ...) into DIR.
    Man {
        /// Directory to write every page into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// `tally completions SHELL`.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut cmd = Cli::command();
    // Into memory first: clap_complete panics on a closed stdout.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tally", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `tally man [--dir DIR]`.
fn write_man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let cmd = Cli::command();
    match dir {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("cannot write the man page to stdout"),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
    }
}

#[cfg(feature = "server")]
#[derive(Debug, clap::Args)]
struct ServerCmd {
    #[command(subcommand)]
    action: Option<ServerAction>,
    /// Settings from a TOML file whose keys are these long flags
    /// (`listen = "0.0.0.0:8080"`); flags and environment variables win
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective settings and where each came from (flag,
    /// environment, file, default), then exit
    #[arg(long)]
    print_config: bool,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the log is: `embedded` (files in the data directory) or a
    /// NATS JetStream cluster shared by several servers,
    /// `nats://host:4222[,host:4222...]`
    #[arg(
        long,
        env = "TALLY_LOG_URL",
        value_name = "URL",
        default_value = "embedded",
        hide_env_values = true
    )]
    log: String,
    /// A NATS credentials file (JWT and seed) for the shared log
    #[arg(long, env = "TALLY_LOG_CREDS", value_name = "FILE")]
    log_creds: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for tls:// NATS servers
    #[arg(long, env = "TALLY_LOG_CA", value_name = "FILE")]
    log_ca: Option<PathBuf>,
    /// The JetStream stream of the log (and the prefix of its subjects and
    /// key-value buckets)
    #[arg(long, env = "TALLY_LOG_STREAM", default_value = "TALLY")]
    log_stream: String,
    /// Replicas JetStream keeps of each message, when it creates the stream
    /// (3 survives the loss of one NATS server)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    log_replicas: u16,
    /// JetStream's duplicate window: a retried upload sent again within it
    /// is dropped by JetStream itself, before any server followed it
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    log_dedup_window: std::time::Duration,
    /// How long a worker's lease lasts without renewal: a crashed worker's
    /// consumers move to a standby within it
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease: std::time::Duration,
    /// Seal the shared log's older records into an S3-compatible bucket,
    /// `s3://bucket[/prefix]` (credentials, region and endpoint from the
    /// AWS_* environment variables); every server and worker of the log
    /// gives the same
    #[arg(long, env = "TALLY_ARCHIVE", value_name = "URL")]
    archive: Option<String>,
    /// Local cache of archived segments (default: archive-cache in the
    /// data directory)
    #[arg(long, value_name = "DIR")]
    archive_cache: Option<PathBuf>,
    /// Size limit of that cache, in MiB
    #[arg(long, default_value_t = 2048)]
    archive_cache_mb: u64,
    /// How much of the log stays in JetStream once archived
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    log_hot: std::time::Duration,
    /// How long the worker gathers a segment before it uploads it
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    archive_every: std::time::Duration,
    /// How long a window of flow records stays open (in memory) before it
    /// is sealed into a file, and with --archive uploaded; whole seconds.
    /// A change applies to new windows
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    flow_window: std::time::Duration,
    /// How long after its end a flow window waits for late records
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    flow_grace: std::time::Duration,
    /// Directory for the store and configuration.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    data_dir: PathBuf,
    /// Days to keep logs of adopted instances, for the default tailnet
    /// created on first start (later: `tally settings set --logs-retention-days`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    retention_days: u32,
    /// MiB an instance that belongs to no tailnet (not registered, not
    /// adopted) may store per collection per 12 hours.
    #[arg(long, default_value_t = 10)]
    unadopted_cap_mb: u64,
    /// MiB all instances that belong to no tailnet may store together per
    /// 12 hours; past it their uploads get 429 with Retry-After.
    #[arg(long, env = "TALLY_UNCLAIMED_BUDGET_MB", default_value_t = 64)]
    unclaimed_budget_mb: u64,
    /// MiB each tailnet may store per 12 hours (429 with Retry-After past
    /// it); unlimited when not given.
    #[arg(long, env = "TALLY_TAILNET_BUDGET_MB")]
    tailnet_budget_mb: Option<u64>,
    /// Accept uploads only from registered nodes (agents started with
    /// --auth-key) and instances a tailnet adopted; refuse the rest (403).
    #[arg(long, env = "TALLY_REGISTERED_ONLY")]
    registered_only: bool,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "TALLY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TALLY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PostgreSQL URL (postgres://...) for the control database; default:
    /// SQLite control.db in the data directory.
    #[arg(
        long,
        value_name = "URL",
        env = "TALLY_CONTROL_DB",
        hide_env_values = true
    )]
    control_db: Option<String>,
    /// How often agents report in, in seconds: how fast they learn a
    /// setting change such as flow logging on or off.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    agent_report_seconds: u64,
    /// Reconciliation window (the two ends' sums are compared per window)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    reconcile_window: std::time::Duration,
    /// How long late flow records are waited for before a window is judged
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    reconcile_grace: std::time::Duration,
    /// Serve the session recorder tailscaled's SSH server uploads to
    /// (HTTP/2 h2c and HTTP/1.1 on one port), e.g. 100.64.0.5:80; off by default
    #[arg(long, env = "TALLY_RECORDER_LISTEN", value_name = "ADDR")]
    recorder_listen: Option<SocketAddr>,
    /// Also accept recordings from this address range (repeatable);
    /// registered nodes' addresses are always accepted
    #[arg(long, value_name = "CIDR")]
    recorder_allow: Vec<ipnet::IpNet>,
    /// Require this bearer token on every recording request
    #[arg(long, env = "TALLY_RECORDER_TOKEN", hide_env_values = true)]
    recorder_token: Option<String>,
}

/// What `tally server` does instead of serving.
#[cfg(feature = "server")]
#[derive(Debug, Subcommand)]
enum ServerAction {
    /// Print a new admin API key for the tailnet's first owner (when the
    /// bootstrap key printed at the first start was lost). Reads the
    /// control database directly; works while the server runs; audited.
    ResetAdminKey {
        /// The server's data directory.
        #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
        data_dir: PathBuf,
        /// The server's PostgreSQL control database, if it uses one.
        #[arg(
            long,
            value_name = "URL",
            env = "TALLY_CONTROL_DB",
            hide_env_values = true
        )]
        control_db: Option<String>,
    },
}

/// A client verb with the server's address and key.
#[derive(Debug, clap::Args)]
struct WithServer<T: clap::Subcommand> {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    cmd: T,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        // rustls logs a refused certificate as an error of its own; the
        // CLI says what failed (client::unreachable), the server answers it.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
#[cfg(any(feature = "server", feature = "agent"))]
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(feature = "server")]
async fn run_server(cmd: ServerCmd, role: tally_server::Role) -> anyhow::Result<()> {
    if let Some(ServerAction::ResetAdminKey {
        data_dir,
        control_db,
    }) = cmd.action
    {
        let control_db = control_db.filter(|u| !u.is_empty());
        let key = tally_server::reset_admin_key(&data_dir, control_db.as_deref()).await?;
        println!(
            "new admin API key (shown once; store it now; revoke the lost one with `tally keys revoke`):\n  {key}\nuse it with:  export TALLY_API_KEY={key}"
        );
        return Ok(());
    }
    let mut config = tally_server::ServerConfig::new(cmd.listen, cmd.data_dir.clone());
    config.bootstrap_key = std::env::var("TALLY_BOOTSTRAP_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    config.default_retention_days = cmd.retention_days;
    config.unadopted_cap_bytes = cmd.unadopted_cap_mb << 20;
    config.unclaimed_budget_bytes = cmd.unclaimed_budget_mb << 20;
    config.tailnet_budget_bytes = cmd.tailnet_budget_mb.map(|mb| mb << 20);
    config.registered_only = cmd.registered_only;
    config.tls = cmd.tls_cert.zip(cmd.tls_key);
    config.control_db = cmd.control_db.filter(|u| !u.is_empty());
    config.agent_report_seconds = cmd.agent_report_seconds;
    config.reconcile.window_ns = i64::try_from(cmd.reconcile_window.as_nanos()).unwrap_or(i64::MAX);
    config.reconcile.grace_ns = i64::try_from(cmd.reconcile_grace.as_nanos()).unwrap_or(i64::MAX);
    config.recorder_listen = cmd.recorder_listen;
    config.role = role;
    config.lease_ttl = cmd.lease;
    config.log_hot = cmd.log_hot;
    config.archive_every = cmd.archive_every;
    if cmd.flow_window.as_secs() == 0 || cmd.flow_window.subsec_nanos() != 0 {
        anyhow::bail!(
            "--flow-window {}: give a whole number of seconds, at least 1s (e.g. 1h)",
            humantime::format_duration(cmd.flow_window)
        );
    }
    config.flow_window = cmd.flow_window;
    config.flow_grace = cmd.flow_grace;
    if let Some(url) = cmd.archive.clone().filter(|u| !u.is_empty()) {
        if cmd.log == "embedded" {
            anyhow::bail!(
                "--archive seals a shared log's older records: it needs --log nats://..."
            );
        }
        config.archive = Some(tally_server::ArchiveConfig {
            url,
            cache_dir: cmd
                .archive_cache
                .clone()
                .unwrap_or_else(|| cmd.data_dir.join("archive-cache")),
            cache_bytes: cmd.archive_cache_mb << 20,
        });
    }
    if cmd.log != "embedded" {
        let mut js = tally_server::JetStreamConfig::from_url(&cmd.log)
            .map_err(|e| anyhow::anyhow!("{e} (or `embedded`, the default)"))?;
        js.stream = cmd.log_stream.clone();
        js.replicas = usize::from(cmd.log_replicas);
        js.dedup_window = cmd.log_dedup_window;
        js.creds = cmd.log_creds.clone();
        js.ca = cmd.log_ca.clone();
        config.jetstream = Some(js);
        if config.role == tally_server::Role::All {
            config.role = tally_server::Role::Api;
        }
        if config.control_db.is_none() {
            tracing::warn!(
                "a shared log with a control database in this data directory (SQLite): other servers and workers need the same one; give them all --control-db postgres://..."
            );
        }
    } else if role == tally_server::Role::Worker {
        anyhow::bail!(
            "`tally worker` runs beside servers on a shared log: give it --log nats://host:4222 (the servers' --log); with the embedded store `tally server` runs everything"
        );
    }
    config.recorder = tally_server::recorder::RecorderConfig {
        allow: cmd.recorder_allow,
        token: cmd.recorder_token.filter(|t| !t.is_empty()),
    };
    let server = tally_server::Server::bind(config).await?;
    for cut in &server.recovery.cuts {
        tracing::warn!("store recovery: {cut}");
    }
    let addr = format!("{}://{}", server.scheme(), server.local_addr()?);
    let mut banner = format!(
        "tally server listening on {addr}\ndata directory: {}\n",
        cmd.data_dir.display()
    );
    if let Some(r) = server.recorder_addr() {
        banner.push_str(&format!(
            "session recorder listening on {r} (tailscaled: http://{r})\n"
        ));
    }
    if let Some(key) = &server.new_bootstrap_key {
        banner.push_str(&format!(
            "\nbootstrap admin API key (shown once; store it now):\n  {key}\nuse it with:  export TALLY_SERVER={addr} TALLY_API_KEY={key}\nlost it? `tally server reset-admin-key --data-dir {}` prints a new one\n\n", cmd.data_dir.display()
        ));
    }
    // A closed stdout (a supervisor that stopped reading) must not stop the server.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = out.write_all(banner.as_bytes()).and_then(|_| out.flush());
    server.run(shutdown_signal()).await
}

fn main() -> std::process::ExitCode {
    use clap::CommandFactory;
    let cli = match config_file::apply(Cli::command(), std::env::args_os().collect()) {
        Ok(config_file::Prepared {
            report: Some(report),
            ..
        }) => {
            print!("{report}");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(prepared) => match Cli::try_parse_from(&prepared.argv) {
            Ok(cli) => cli,
            Err(e) => {
                if let Some(file) = &prepared.file
                    && e.kind() != clap::error::ErrorKind::DisplayHelp
                    && e.kind() != clap::error::ErrorKind::DisplayVersion
                {
                    eprintln!(
                        "note: the settings of {} are given as the flags named below",
                        file.display()
                    );
                }
                e.exit()
            }
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Command::Bench(args) = cli.command {
        // No runtime: this process becomes tally-bench.
        return bench_cmd::run(args);
    }
    #[cfg(feature = "server")]
    if matches!(cli.command, Command::Server(_) | Command::Worker(_)) {
        // Before the runtime starts its threads (see the function).
        tally_server::memory::limit_malloc_arenas();
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    init_tracing();
    client::install_crypto();
    let result = match cli.command {
        #[cfg(feature = "server")]
        Command::Server(cmd) => run_server(cmd, tally_server::Role::All).await,
        #[cfg(feature = "server")]
        Command::Worker(cmd) => run_server(cmd, tally_server::Role::Worker).await,
        #[cfg(feature = "agent")]
        Command::Agent(args) => agent_cmd::run(args).await,
        Command::Bench(args) => return bench_cmd::run(args),
        Command::Logs(a) => logs_cmd::run_logs(a.cmd, &a.server).await,
        Command::Collections(a) => logs_cmd::run_collections(a.cmd, &a.server).await,
        Command::Instances(a) => logs_cmd::run_instances(a.cmd, &a.server).await,
        Command::Tailnets(a) => control_cmd::run_tailnets(a.cmd, &a.server).await,
        Command::Settings(a) => control_cmd::run_settings(a.cmd, &a.server).await,
        Command::Keys(a) => control_cmd::run_keys(a.cmd, &a.server).await,
        Command::Users(a) => control_cmd::run_users(a.cmd, &a.server).await,
        Command::Nodes(a) => control_cmd::run_nodes(a.cmd, &a.server).await,
        Command::Audit(a) => control_cmd::run_audit(a.cmd, &a.server).await,
        Command::Flows(a) => flows_cmd::run_flows(a.cmd, &a.server).await,
        Command::Verify(a) => verify_cmd::run(a).await,
        Command::Reconcile(a) => reconcile_cmd::run(a.cmd, &a.server).await,
        Command::Consumers(a) => consumers_cmd::run(a.cmd, &a.server).await,
        Command::Rules(a) => detect_cmd::run_rules(a.cmd, &a.server).await,
        Command::Alerts(a) => detect_cmd::run_alerts(a.cmd, &a.server).await,
        Command::Stream(a) => stream_cmd::run(a.cmd, &a.server).await,
        Command::Recordings(a) => recordings_cmd::run(a.cmd, &a.server).await,
        Command::Completions { shell } => print_completions(shell),
        Command::Man { dir } => write_man(dir.as_deref()),
        #[cfg(feature = "agent")]
        Command::Record(a) => return record_cmd::run(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
