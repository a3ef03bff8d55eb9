//! `tally agent`: run the node agent, or talk to the one running on this
//! node (`id`, `log`, `logs`).

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;

/// Run the node agent: upload this node's logs (its stdin, followed files
/// and `tally agent log` messages) to a Tally server, through a bounded disk
/// queue that survives outages and restarts.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Tally server to upload logs to, e.g. https://logs.example.com
    #[arg(long, env = "TALLY_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Settings from a TOML file whose keys are these long flags
    /// (`server = "https://..."`, `follow = ["/var/log/syslog"]`); flags
    /// and environment variables win
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective settings and where each came from (flag,
    /// environment, file, default), then exit
    #[arg(long)]
    pub print_config: bool,

    /// Directory of the agent's identity, disk queue and socket (default:
    /// /var/lib/tally-agent as root, else $XDG_STATE_HOME/tally-agent or
    /// ~/.local/state/tally-agent; systemd's $STATE_DIRECTORY when set)
    #[arg(
        long,
        env = "TALLY_AGENT_DATA_DIR",
        value_name = "DIR",
        default_value_os_t = default_data_dir(),
        global = true
    )]
    pub data_dir: PathBuf,

    /// Collection to upload logs to ([a-zA-Z0-9-_.]+)
    #[arg(long, value_name = "NAME", default_value = tally_agent::DEFAULT_COLLECTION)]
    pub collection: String,

    /// Follow a log file, from its end on first sight; survives rotation
    /// (rename or copytruncate) and restarts. Repeatable. A quoted glob
    /// pattern ('/var/log/app/*.log') follows every match, and a file that
    /// starts matching while the agent runs from its start.
    #[arg(long, value_name = "PATH")]
    pub follow: Vec<PathBuf>,

    /// Do not read standard input (by default it is read, one entry per
    /// line, unless it is a terminal)
    #[arg(long)]
    pub no_stdin: bool,

    /// Size limit of the disk queue in MiB; when full, uploaded logs go
    /// first, then the oldest unuploaded ones (and a log says how many)
    #[arg(long, value_name = "MIB", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub queue_max_mb: u64,

    /// Upload nothing and open no connection: logs stay on this node only
    /// (read them with `tally agent logs`)
    #[arg(long)]
    pub no_logs_no_support: bool,

    /// Trust only this CA certificate (PEM) for an https server with a
    /// private CA (default: the system's roots)
    #[arg(long, env = "TALLY_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,

    /// Shortest wait before retrying a failed upload that carried no
    /// Retry-After (the protocol's default: 30s; each wait is jittered up
    /// to --retry-max)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_min: std::time::Duration,

    /// Longest such wait (default 60s; every wait is capped at 5 minutes)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_max: std::time::Duration,

    /// How long new entries gather before they are uploaded (unless a
    /// 256 KiB batch is full first)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub flush_delay: std::time::Duration,

    /// Auth key to register this node with the server's inventory (first
    /// start only; later starts report in with the agent's identity)
    #[arg(
        long,
        env = "TALLY_AUTH_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub auth_key: Option<String>,

    /// This node's tailnet address (IP or CIDR), reported to the server.
    /// Repeatable. Without it the agent finds them itself: the addresses
    /// of the --iface interfaces (link-local IPv6 skipped) and, with
    /// Tailscale, `tailscale ip`, looked at again before every report.
    #[arg(long = "address", value_name = "IP")]
    pub addresses: Vec<String>,

    /// A route this node advertises (CIDR), reported to the server.
    /// Repeatable.
    #[arg(long = "route", value_name = "CIDR")]
    pub routes: Vec<String>,

    /// A tag to ask for (tag:name); an auth key's own tags win. Repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// Hostname to report (default: this machine's)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Listen for syslog messages (RFC 5424 and 3164, UDP and TCP on the
    /// same port) from rsyslog or appliances on this node, e.g.
    /// 127.0.0.1:5514; they join the node's log with their facility,
    /// severity, host and app
    #[arg(long, env = "TALLY_SYSLOG_LISTEN", value_name = "ADDR")]
    pub syslog_listen: Option<std::net::SocketAddr>,

    /// Read the systemd journal (through journalctl), from its end on
    /// first start, resuming exactly after a restart; entries carry unit,
    /// priority, PID and host
    #[arg(long)]
    pub journal: bool,

    /// With --journal: only this unit (repeatable), e.g. ssh.service
    #[arg(long, value_name = "UNIT", requires = "journal")]
    pub journal_unit: Vec<String>,

    /// With --journal: only this priority and more urgent (0-7 or emerg,
    /// alert, crit, err, warning, notice, info, debug)
    #[arg(long, value_name = "PRIORITY", requires = "journal")]
    pub journal_priority: Option<String>,

    /// With --journal: read this journal directory instead of the
    /// system's (journalctl --directory)
    #[arg(long, value_name = "DIR", requires = "journal")]
    pub journal_directory: Option<PathBuf>,

    /// Read container logs: Docker's json-file logs (under --docker-root)
    /// and containerd's/CRI-O's (Kubernetes, under --cri-log-dir), found
    /// as containers come and go; entries carry the container's name,
    /// image, ID and stream (and pod and namespace). Needs read access to
    /// those directories (root, or the docker group for Docker's)
    #[arg(long)]
    pub containers: bool,

    /// With --containers: Docker's data root (its containers/<id>/ holds
    /// each container's log and config.v2.json)
    #[arg(long, value_name = "DIR", default_value = tally_agent::DEFAULT_DOCKER_ROOT, requires = "containers")]
    pub docker_root: PathBuf,

    /// With --containers: the kubelet's pod log directory
    /// (<namespace>_<pod>_<uid>/<container>/<n>.log)
    #[arg(long, value_name = "DIR", default_value = tally_agent::DEFAULT_CRI_LOG_DIR, requires = "containers")]
    pub cri_log_dir: PathBuf,

    /// Capture network flows on --iface while the tailnet has flow logging
    /// on (needs --server, a registered node and CAP_NET_RAW)
    #[arg(long)]
    pub flows: bool,

    /// Interface to capture flows on (the mesh interface: tailscale0, wg0,
    /// ...). Repeatable.
    #[arg(long = "iface", value_name = "IFACE", requires = "flows")]
    pub ifaces: Vec<String>,

    /// Length of one flow record's interval
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub flow_interval: std::time::Duration,

    /// Idle time after which a UDP, ICMP or half-open flow is closed
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub flow_idle_timeout: std::time::Duration,

    /// Most connections tracked at once (the oldest idle ones are evicted
    /// first, and records count the evictions)
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub flow_max_connections: u64,

    /// Without a subcommand, the agent runs until SIGINT or SIGTERM.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

/// Talking to the agent of this node.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Print this node's public ID (the one the server shows and admins adopt)
    Id,
    /// Log a message through the running agent; returns once it is on disk
    Log {
        /// Verbosity level of the entry ("v"); without it, a "[vN] " prefix
        /// of the message sets it
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=99))]
        level: Option<u32>,
        /// The message; several words are joined with spaces
        #[arg(required = true, value_name = "MESSAGE")]
        message: Vec<String>,
    },
    /// Show this node's recent logs from the local queue (uploaded or not;
    /// works whether the agent runs or not)
    Logs {
        /// How many entries to show
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 50)]
        lines: usize,
        /// Print each entry as a JSON object, with an "uploaded" member
        #[arg(long)]
        json: bool,
    },
}

/// The agent's state directory when `--data-dir` is not given: fixed, so
/// that an agent started from another directory keeps its identity.
/// systemd's `$STATE_DIRECTORY` (a unit with `StateDirectory=`), else
/// `/var/lib/tally-agent` for root, else the XDG state directory.
pub fn default_data_dir() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(dir) = from_env("STATE_DIRECTORY") {
        return dir;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/tally-agent");
    }
    if let Some(state) = from_env("XDG_STATE_HOME") {
        return state.join("tally-agent");
    }
    match from_env("HOME") {
        Some(home) => home.join(".local/state/tally-agent"),
        None => PathBuf::from("/var/lib/tally-agent"),
    }
}

/// Says once where an earlier version's `./tally-agent` is, when the
/// agent starts with a new default directory beside it: that directory
/// holds the node's identity and unsent logs.
fn warn_about_old_default(data_dir: &std::path::Path) {
    let old = std::path::Path::new("tally-agent");
    if data_dir.join("private-id").exists() || !old.join("private-id").is_file() {
        return;
    }
    if std::fs::canonicalize(old).ok() == std::fs::canonicalize(data_dir).ok() {
        return;
    }
    tracing::warn!(
        "./tally-agent holds an agent identity from an earlier version, which used it by default; this agent uses {} and is a new node. To keep the old node: stop, then `mv tally-agent {}` or pass --data-dir ./tally-agent",
        data_dir.display(),
        data_dir.display()
    );
}

/// Runs `tally agent` with its arguments.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        None => {
            warn_about_old_default(&args.data_dir);
            let mut config = tally_agent::AgentConfig::new(args.data_dir);
            config.server = args.server;
            config.collection = args.collection;
            config.follow = args.follow;
            config.syslog_listen = args.syslog_listen;
            if args.journal {
                config.journal = Some(tally_agent::JournalOptions {
                    units: args.journal_unit,
                    priority: args.journal_priority,
                    directory: args.journal_directory,
                });
            }
            if args.containers {
                config.containers = Some(tally_agent::ContainerOptions {
                    docker_root: Some(args.docker_root),
                    cri_log_dir: Some(args.cri_log_dir),
                });
            }
            config.read_stdin = !args.no_stdin && !io::stdin().is_terminal();
            config.queue_max_bytes = args.queue_max_mb.saturating_mul(1 << 20);
            config.no_logs_no_support = args.no_logs_no_support;
            config.ca_cert = args.ca_cert;
            if args.retry_min > args.retry_max {
                anyhow::bail!("--retry-min must not be longer than --retry-max");
            }
            config.backoff_min = args.retry_min;
            config.backoff_max = args.retry_max;
            config.flush_delay = args.flush_delay;
            config.auth_key = args.auth_key;
            config.node.addresses = args.addresses;
            config.node.advertised_routes = args.routes;
            config.node.tags = args.tags;
            config.node.no_logs_no_support = args.no_logs_no_support;
            if let Some(h) = args.hostname {
                config.node.hostname = h;
            }
            if args.flows {
                if args.ifaces.is_empty() {
                    anyhow::bail!(
                        "--flows needs at least one --iface (the mesh interface, e.g. tailscale0 or wg0)"
                    );
                }
                if args.flow_interval < std::time::Duration::from_secs(1) {
                    anyhow::bail!("--flow-interval must be at least 1s");
                }
                let table = tally_agent::TableConfig {
                    max_entries: usize::try_from(args.flow_max_connections).unwrap_or(usize::MAX),
                    idle_timeout: args.flow_idle_timeout,
                    ..tally_agent::TableConfig::default()
                };
                config.flows = Some(tally_agent::FlowOptions {
                    ifaces: args.ifaces,
                    interval: args.flow_interval,
                    table,
                });
            }
            let target = config.server.clone();
            let mut agent = tally_agent::Agent::start(config).await?;
            // One line on stdout once files are positioned and the socket
            // listens: supervisors and tests can wait for it.
            let ready = match &target {
                Some(url) if !args.no_logs_no_support => format!("uploading to {url}"),
                _ => "keeping logs on this node only".to_owned(),
            };
            let mut out = io::stdout();
            let _ = writeln!(
                out,
                "tally agent ready: instance {} {ready}",
                agent.public_id()
            )
            .and_then(|_| out.flush());
            // One more line once the node is registered.
            let mut settings = agent.node_settings();
            tokio::spawn(async move {
                while settings.changed().await.is_ok() {
                    let node = settings.borrow_and_update().node_id.clone();
                    if let Some(node) = node {
                        let mut out = io::stdout();
                        let _ = writeln!(out, "tally agent registered: node {node}")
                            .and_then(|_| out.flush());
                        break;
                    }
                }
            });
            let failure = tokio::select! {
                () = crate::shutdown_signal() => None,
                e = agent.failed() => Some(e),
            };
            agent.shutdown().await?;
            match failure {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
        Some(AgentCommand::Id) => {
            let id = tally_agent::read_identity(&args.data_dir)?;
            println!("{}", id.public());
            Ok(())
        }
        Some(AgentCommand::Log { level, message }) => {
            tally_agent::log_via_socket(&args.data_dir, &message.join(" "), level).await?;
            Ok(())
        }
        Some(AgentCommand::Logs { lines, json }) => {
            if !args.data_dir.is_dir() {
                anyhow::bail!(
                    "no agent data directory at {}; pass --data-dir DIR (or set TALLY_AGENT_DATA_DIR) to the one the agent uses",
                    args.data_dir.display()
                );
            }
            let logs = tally_agent::recent_logs(&args.data_dir, lines).with_context(|| {
                format!("cannot read the local logs in {}", args.data_dir.display())
            })?;
            match print_logs(&logs, json) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("cannot write to stdout"),
            }
        }
    }
}

fn print_logs(logs: &[tally_agent::LocalLog], json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for log in logs {
        if json {
            let mut entry = log.json.clone();
            if let Some(object) = entry.as_object_mut() {
                object.insert("uploaded".into(), log.uploaded.into());
            }
            writeln!(out, "{entry}")?;
        } else {
            writeln!(out, "{log}")?;
        }
    }
    out.flush()?;
    if !json && logs.iter().any(|l| !l.uploaded) {
        eprintln!("(* = not uploaded yet)");
    }
    Ok(())
}
