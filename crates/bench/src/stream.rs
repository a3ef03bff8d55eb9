//! `tally bench stream`: streaming stored flow records to SIEMs (issue 14).
//!
//! A `tally server` child process (the `tally` next to this binary) takes
//! flow records of simulated nodes over HTTP, as agents send them (the
//! generator of `tally bench flows`), and streams its network log to
//! three destinations, each a stream created with the API before any
//! record arrives (a new stream starts at the log's end):
//!
//! - a Splunk HEC receiver in this process (axum on 127.0.0.1): it checks
//!   `Authorization: Splunk <token>`, counts the envelopes of each body and
//!   the connections inside them (`"proto":` keys), notes when each body
//!   arrived and answers `{"text":"Success","code":0}`; while it is "down"
//!   it answers 503 (HEC's "Server is busy");
//! - rsyslogd (a child: `imtcp` with the `gtls` driver, a CA and a
//!   certificate made here), writing the message of each entry to a file;
//!   "down" is not listening yet;
//! - moto_server (a child, S3), "down" until its bucket is created.
//!
//! Phases:
//!
//! 1. Outage: every destination is down while the backlog, a whole
//!    `--outage-minutes` of the tailnet's flow records, is uploaded as
//!    fast as the server takes it; then 5 s more with nothing happening.
//!    The server's RSS is sampled all along.
//! 2. Catch-up, one destination at a time (the others stay down): it
//!    comes back, and the bench measures the time until every backlog
//!    record reached it. The resume delay (the stream's retry backoff,
//!    up to 30 s after a long outage) is reported apart from the drain
//!    time, which runs from the first accepted entry to the last.
//! 3. Steady state: the syslog and S3 streams deleted, the HEC receiver
//!    up, records are uploaded at `--rate` for `--seconds`; delivery
//!    latency is the arrival at the receiver minus the store's receive
//!    time of the entry (the envelope's `time`, in ms), and the stream's
//!    `lagEntries` is sampled every 100 ms.
//!
//! Server CPU and RSS come from /proc of the child, per phase; the
//! bench's own CPU (the HEC receiver) and the peer's are shown beside.

use crate::common::{
    CpuSampler, CpuWindow, Machine, TallyServer, clock_ticks_per_sec, fmt_bytes, fmt_count,
    http_client, percentile, proc_cpu_ticks, proc_status_bytes, tally_exe, temp_dir_in,
};
use crate::flows::{
    INTERVAL_NS, IngestReq, IngestStats, busy_nodes, gen_nodes, gen_requests, git_state, loadavg,
    node_addr, register_node_at, send_all, send_one, setup_tailnet_at,
};
use anyhow::{Context, bail, ensure};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tally_proto::timefmt::now_nanos;

/// The HEC token the receiver expects.
const HEC_TOKEN: &str = "bench-hec-token";
/// One connection inside a stored flow record (each generated one has it).
const PROTO: &[u8] = b"\"proto\":";
/// The S3 bucket.
const BUCKET: &str = "tally-bench";
/// The goal for HEC, flow entries (connections) per second.
const GOAL_HEC_CONNS: f64 = 300_000.0;
/// The goal for catch-up, times real time.
const GOAL_CATCH_UP: f64 = 10.0;

/// Settings of `tally bench stream`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Simulated nodes; each sends one flow record per 5-s interval.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// The outage: the backlog is this many minutes of the tailnet's flow
    /// records (12 per node per minute), uploaded while every destination
    /// is down.
    #[arg(long, default_value_t = 60)]
    pub outage_minutes: u64,
    /// Records per upload, per node, for the backlog.
    #[arg(long, default_value_t = 4)]
    pub records_per_request: usize,
    /// Concurrent upload clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Steady state: flow records per second uploaded with the HEC
    /// receiver up (a tailnet of N nodes makes N / 5).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Steady state: seconds of uploads.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// The baseline: no stream at all; only the outage phase (upload and
    /// the other consumers), for its RSS and CPU.
    #[arg(long)]
    pub no_streams: bool,
    /// Keep the detection consumer running. By default it is paused for
    /// the whole run: on this traffic (busy nodes reaching random peers)
    /// it works through a backlog at a few thousand entries per second
    /// (`tally bench detect`), so it would take both cores for many
    /// minutes after the upload and compete with the streams.
    #[arg(long)]
    pub detection: bool,
    /// Leave out rsyslog.
    #[arg(long)]
    pub skip_syslog: bool,
    /// Leave out S3 (moto_server).
    #[arg(long)]
    pub skip_s3: bool,
    /// Longest wait for one destination to catch up, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub drain_timeout: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the server's data, the certificates and rsyslog's output go
    /// (a new directory inside; default: the system's temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

// ---------------------------------------------------------------------------
// Measuring the server: RSS over time, CPU per phase
// ---------------------------------------------------------------------------

/// The server's RSS, sampled every 100 ms.
struct RssLog {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssLog {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (samples, stop) = (samples.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = proc_status_bytes(pid, "VmRSS") {
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((Instant::now(), r));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self {
            samples,
            stop,
            task,
        }
    }

    /// Largest sample within `[from, to]`.
    fn peak(&self, from: Instant, to: Instant) -> u64 {
        let s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        s.iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    }

    /// The last sample at or before `t` (the first one if none is).
    fn at(&self, t: Instant) -> u64 {
        let s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        s.iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .or(s.first())
            .map_or(0, |(_, r)| *r)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// CPU of the server, this process and a peer over a phase.
struct Meter {
    pid: u32,
    peer: Option<u32>,
    sampler: CpuSampler,
    server: u64,
    bench: u64,
    peer_ticks: Option<u64>,
    at: Instant,
}

/// What a [`Meter`] saw: CPU seconds of each process and the machine.
struct Usage {
    from: Instant,
    to: Instant,
    wall: f64,
    server: f64,
    bench: f64,
    peer: Option<f64>,
    window: CpuWindow,
}

impl Meter {
    fn start(pid: u32, peer: Option<u32>) -> Self {
        let me = std::process::id();
        let mut clients = vec![me];
        clients.extend(peer);
        Self {
            pid,
            peer,
            sampler: CpuSampler::start(&[pid], &clients, Some(pid)),
            server: proc_cpu_ticks(pid).unwrap_or(0),
            bench: proc_cpu_ticks(me).unwrap_or(0),
            peer_ticks: peer.and_then(proc_cpu_ticks),
            at: Instant::now(),
        }
    }

    fn finish(&self) -> Usage {
        let hz = clock_ticks_per_sec();
        let secs =
            |now: Option<u64>, then: u64| now.unwrap_or(then).saturating_sub(then) as f64 / hz;
        Usage {
            from: self.at,
            to: Instant::now(),
            wall: self.at.elapsed().as_secs_f64(),
            server: secs(proc_cpu_ticks(self.pid), self.server),
            bench: secs(proc_cpu_ticks(std::process::id()), self.bench),
            peer: self
                .peer
                .zip(self.peer_ticks)
                .map(|(p, t)| secs(proc_cpu_ticks(p), t)),
            window: self.sampler.finish(),
        }
    }
}

impl Usage {
    /// The server's busiest threads (by name) and their % of a core.
    fn threads(&self) -> String {
        let t: Vec<String> = self
            .window
            .threads
            .iter()
            .take(6)
            .map(|(name, pct)| format!("{name} {pct:.0} %"))
            .collect();
        t.join(", ")
    }

    /// `12.3 s (85 %)`: CPU seconds and % of one core over `wall`.
    fn fmt(cpu: f64, wall: f64) -> String {
        format!("{cpu:.1} s ({:.0} %)", cpu / wall.max(1e-9) * 100.0)
    }
}

// ---------------------------------------------------------------------------
// The HEC receiver (in this process)
// ---------------------------------------------------------------------------

/// The HEC receiver's counters.
struct Hec {
    auth: String,
    /// Up (200) or down (503).
    open: AtomicBool,
    /// Steady phase: keep every envelope's delivery latency.
    steady: AtomicBool,
    envelopes: AtomicU64,
    conns: AtomicU64,
    bytes: AtomicU64,
    bodies: AtomicU64,
    refused: AtomicU64,
    unauthorized: AtomicU64,
    /// Envelopes without a readable `time` (steady phase).
    untimed: AtomicU64,
    /// Delivery latency of each envelope in the steady phase, µs.
    latency_us: Mutex<Vec<u64>>,
    proto: memchr::memmem::Finder<'static>,
}

/// The `time` of one HEC envelope (Unix seconds with ms) in ns. The stream
/// writes the envelope's keys in order (`event`, `host`, `source`,
/// `sourcetype`, `time`), so `time` is near the end; the start is tried
/// too.
fn envelope_time(line: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"time\":";
    let tail = &line[line.len().saturating_sub(48)..];
    let head = &line[..line.len().min(48)];
    let (w, i) = [tail, head]
        .into_iter()
        .find_map(|w| memchr::memmem::find(w, KEY).map(|i| (w, i)))?;
    let rest = &w[i + KEY.len()..];
    let n = rest
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .count();
    let secs: f64 = std::str::from_utf8(&rest[..n]).ok()?.parse().ok()?;
    Some((secs * 1e9) as i64)
}

/// `POST /services/collector/event`.
async fn hec_event(State(h): State<Arc<Hec>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    let answer = |status: StatusCode, text: &str, code: u8| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"text\":\"{text}\",\"code\":{code}}}"),
        )
            .into_response()
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(h.auth.as_str()) {
        h.unauthorized.fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::UNAUTHORIZED, "Invalid authorization", 3);
    }
    if !h.open.load(Ordering::Relaxed) {
        h.refused.fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9);
    }
    let at_ns = now_nanos();
    let steady = h.steady.load(Ordering::Relaxed);
    let mut envelopes = 0u64;
    let mut untimed = 0u64;
    let mut lat = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', &body).chain(std::iter::once(body.len())) {
        let line = body.get(start..end).unwrap_or_default();
        start = end + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        envelopes += 1;
        if steady {
            match envelope_time(line) {
                Some(t) => lat.push(u64::try_from((at_ns - t) / 1000).unwrap_or(0)),
                None => untimed += 1,
            }
        }
    }
    let conns = h.proto.find_iter(&body).count() as u64;
    if !lat.is_empty() {
        h.latency_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(lat);
    }
    h.untimed.fetch_add(untimed, Ordering::Relaxed);
    h.conns.fetch_add(conns, Ordering::Relaxed);
    h.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    h.bodies.fetch_add(1, Ordering::Relaxed);
    // Last: a poller that sees the envelopes sees the rest.
    h.envelopes.fetch_add(envelopes, Ordering::Release);
    answer(StatusCode::OK, "Success", 0)
}

/// Starts the HEC receiver (down) on 127.0.0.1; returns it and its port.
async fn start_hec() -> anyhow::Result<(Arc<Hec>, u16, tokio::task::JoinHandle<()>)> {
    let hec = Arc::new(Hec {
        auth: format!("Splunk {HEC_TOKEN}"),
        open: AtomicBool::new(false),
        steady: AtomicBool::new(false),
        envelopes: AtomicU64::new(0),
        conns: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        bodies: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        unauthorized: AtomicU64::new(0),
        untimed: AtomicU64::new(0),
        latency_us: Mutex::new(Vec::new()),
        proto: memchr::memmem::Finder::new(PROTO),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the HEC receiver")?;
    let port = listener
        .local_addr()
        .context("the HEC receiver has no address")?
        .port();
    let app = axum::Router::new()
        .route("/services/collector/event", axum::routing::post(hec_event))
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(hec.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the HEC receiver stopped: {e}");
        }
    });
    Ok((hec, port, task))
}

// ---------------------------------------------------------------------------
// The peers: rsyslogd over TLS, moto_server
// ---------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (free when asked).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a port")?
        .local_addr()
        .context("a bound socket has no address")?
        .port())
}

/// `name` on PATH, or an absolute path that exists.
pub(crate) fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Waits until something listens on 127.0.0.1:`port`.
async fn wait_listening(
    port: u16,
    limit: Duration,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("it exited with {status} before listening on port {port}");
        }
        ensure!(
            t.elapsed() < limit,
            "nothing listened on port {port} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CA (`ca.pem`) and a certificate for localhost signed by it
/// (`cert.pem`, `key.pem`) in `dir`; returns the CA's PEM.
fn make_certs(dir: &Path) -> anyhow::Result<String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Tally bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).context("signing the CA")?;
    let key = KeyPair::generate().context("generating the receiver's key")?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .context("the receiver's names")?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf
        .signed_by(&key, &ca, &ca_key)
        .context("signing the receiver's certificate")?;
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("cert.pem", leaf.pem()),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).with_context(|| format!("writing {name}"))?;
    }
    Ok(ca.pem())
}

/// rsyslogd receiving RFC 5424 over TLS, writing each MSG as a line.
struct Rsyslog {
    bin: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
    out: PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
}

impl Rsyslog {
    /// Writes the configuration (TLS with the certificates in `dir`,
    /// messages of log type `network` to `dir/received.log`) and checks it
    /// with `rsyslogd -N1`; nothing runs yet.
    async fn prepare(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let bin = find_program("rsyslogd", &["/usr/sbin/rsyslogd", "/sbin/rsyslogd"])
            .context("rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls)")?;
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).context("creating rsyslog's work directory")?;
        let out = dir.join("received.log");
        let d = dir.display();
        // Frames and messages up to 16 MB: a busy node's record is about
        // 110 KB, and rsyslog's default frame limit is 200,000 bytes.
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="16m"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/cert.pem"
       defaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon" maxFrameSize="16000000")
input(type="imtcp" port="{port}")
template(name="msgonly" type="string" string="%msg%\n")
if $msgid == "network" then {{
  action(type="omfile" file="{out}" template="msgonly")
}}
"#,
            work = work.display(),
            out = out.display(),
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).context("writing rsyslog.conf")?;
        let check = tokio::process::Command::new(&bin)
            .arg("-N1")
            .arg("-f")
            .arg(&conf_path)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run rsyslogd -N1")?;
        if !check.status.success() {
            bail!(
                "rsyslogd -N1 refuses the configuration (is rsyslog-gnutls installed?): {}",
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        Ok(Self {
            bin,
            conf: conf_path,
            dir: dir.to_path_buf(),
            out,
            port,
            child: None,
            pid: None,
        })
    }

    /// Starts rsyslogd; Ok once it listens.
    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("rsyslogd.stderr"))
            .context("creating rsyslogd.stderr")?;
        let mut child = tokio::process::Command::new(&self.bin)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start rsyslogd")?;
        self.pid = child.id();
        wait_listening(self.port, Duration::from_secs(20), &mut child)
            .await
            .context("rsyslogd did not come up")?;
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// Counts the complete lines a file grows by.
struct LineCounter {
    path: PathBuf,
    offset: u64,
    lines: u64,
    conns: u64,
}

impl LineCounter {
    /// Reads what was appended since the last call (complete lines only).
    fn poll(&mut self) -> anyhow::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        f.seek(SeekFrom::Start(self.offset))
            .context("seeking rsyslog's output")?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .context("reading rsyslog's output")?;
        let Some(last) = memchr::memrchr(b'\n', &buf) else {
            return Ok(());
        };
        let done = &buf[..=last];
        self.lines += memchr::memchr_iter(b'\n', done).count() as u64;
        self.conns += memchr::memmem::find_iter(done, PROTO).count() as u64;
        self.offset += done.len() as u64;
        Ok(())
    }
}

/// moto_server, an S3 for tests.
pub(crate) struct Moto {
    child: tokio::process::Child,
    pid: Option<u32>,
    pub(crate) url: String,
}

impl Moto {
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = find_program("moto_server", &[])
            .context("moto_server is not installed (pip install 'moto[server]')")?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("moto.log")).context("creating moto.log")?;
        let mut child = tokio::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start moto_server")?;
        let pid = child.id();
        wait_listening(port, Duration::from_secs(60), &mut child)
            .await
            .context("moto_server did not come up")?;
        Ok(Self {
            child,
            pid,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Runs a boto3 script (`s3` is a client of this server); its stdout.
    pub(crate) async fn boto3(&self, body: &str) -> anyhow::Result<String> {
        let script = format!(
            "import boto3, json\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='s')\n{body}",
            self.url
        );
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run python3 (with boto3, which moto installs)")?;
        ensure!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Every object of the bucket: (objects, bytes, lines, connections).
    async fn contents(&self) -> anyhow::Result<(u64, u64, u64, u64)> {
        let out = self
            .boto3(&format!(
                r#"n = size = lines = conns = 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}'):
    for o in page.get('Contents', []):
        body = s3.get_object(Bucket='{BUCKET}', Key=o['Key'])['Body'].read()
        n += 1; size += len(body); lines += body.count(b'\n'); conns += body.count(b'"proto":')
print(json.dumps([n, size, lines, conns]))
"#
            ))
            .await?;
        let v: (u64, u64, u64, u64) =
            serde_json::from_str(out.trim()).with_context(|| format!("boto3 printed {out:?}"))?;
        Ok(v)
    }
}

// ---------------------------------------------------------------------------
// The server's API
// ---------------------------------------------------------------------------

/// The server's API with the bootstrap key.
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// Sends a request; the answer's JSON (`null` when empty).
    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach the server"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: cannot read the answer"))?;
        ensure!(
            status.is_success(),
            "{what} failed: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: the answer is not JSON"))
    }

    fn streams(&self) -> String {
        format!("{}/api/v2/tailnet/-/logging/network/streams", self.base)
    }

    /// Creates a network stream; its id.
    async fn create_stream(&self, config: &Value, what: &str) -> anyhow::Result<String> {
        let v = self
            .call(self.http.post(self.streams()).json(config), what)
            .await?;
        Ok(v["id"]
            .as_str()
            .with_context(|| format!("{what}: the answer has no id: {v}"))?
            .to_owned())
    }

    /// A stream's status (Tailscale's fields, `position`, `lagEntries`).
    async fn status(&self, id: &str) -> anyhow::Result<Value> {
        self.call(
            self.http.get(format!("{}/{id}/status", self.streams())),
            "reading a stream's status",
        )
        .await
    }

    async fn delete_stream(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            self.http.delete(format!("{}/{id}", self.streams())),
            "deleting a stream",
        )
        .await
        .map(|_| ())
    }
}

/// A number field of a status.
fn num(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Catch-up
// ---------------------------------------------------------------------------

/// How delivered entries are counted while a destination catches up.
enum Probe<'a> {
    /// The HEC receiver's counters.
    Hec(&'a Hec),
    /// rsyslog's output file.
    File(LineCounter),
    /// The stream's status (`numEntriesSent`, `numBytesSent`): the store
    /// confirmed each upload.
    Status(&'a Api, &'a str),
}

impl Probe<'_> {
    /// (records, connections when known, bytes) delivered so far.
    async fn read(&mut self) -> anyhow::Result<(u64, u64, u64)> {
        match self {
            Probe::Hec(h) => {
                let e = h.envelopes.load(Ordering::Acquire);
                Ok((
                    e,
                    h.conns.load(Ordering::Relaxed),
                    h.bytes.load(Ordering::Relaxed),
                ))
            }
            Probe::File(c) => {
                c.poll()?;
                Ok((c.lines, c.conns, c.offset))
            }
            Probe::Status(api, id) => {
                let s = api.status(id).await?;
                Ok((num(&s, "numEntriesSent"), 0, num(&s, "numBytesSent")))
            }
        }
    }

    fn every(&self) -> Duration {
        match self {
            Probe::Hec(_) => Duration::from_millis(10),
            Probe::File(_) => Duration::from_millis(25),
            // A network stream's status is not cheap (its
            // numSpoofedEntries sums the reconciler's pairs).
            Probe::Status(..) => Duration::from_millis(250),
        }
    }
}

/// One destination's catch-up.
struct CatchUp {
    name: String,
    /// Destination back → first entry accepted.
    resume: f64,
    /// First entry accepted → last.
    drain: f64,
    /// Delivered through the end of the backlog.
    drained: bool,
    /// Connections delivered per CPU-second of the server over the phase
    /// (what one uncontended core would do, the stream being one task).
    conns_per_cpu: f64,
    /// Per second, between the first and the last accepted entry.
    rate_records: f64,
    rate_conns: f64,
    rate_bytes: f64,
    usage: Usage,
    rss_peak: u64,
    /// What the destination holds against what was sent.
    check: String,
    /// The stream's status at the end.
    status: Value,
    /// Records delivered in each second after the first.
    per_second: Vec<u64>,
}

/// Waits until `probe` counts `expected` records (or the time runs out).
async fn drain(
    probe: &mut Probe<'_>,
    expected: u64,
    limit: Duration,
    opened: Instant,
) -> anyhow::Result<(Vec<(Instant, u64, u64, u64)>, bool)> {
    let mut samples = Vec::new();
    loop {
        let (r, c, b) = probe.read().await?;
        let now = Instant::now();
        if r > 0 || samples.is_empty() {
            samples.push((now, r, c, b));
        }
        if r >= expected {
            return Ok((samples, true));
        }
        if opened.elapsed() > limit {
            return Ok((samples, false));
        }
        tokio::time::sleep(probe.every()).await;
    }
}

/// Rates between the first sample with entries and the last.
#[allow(clippy::type_complexity)]
fn rates(
    samples: &[(Instant, u64, u64, u64)],
    opened: Instant,
) -> (f64, f64, f64, f64, f64, Vec<u64>) {
    let first = samples.iter().find(|s| s.1 > 0);
    let (Some(f), Some(l)) = (first, samples.last()) else {
        return (0.0, 0.0, 0.0, 0.0, 0.0, Vec::new());
    };
    let resume = f.0.saturating_duration_since(opened).as_secs_f64();
    let span = l.0.saturating_duration_since(f.0).as_secs_f64().max(1e-3);
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / span;
    let mut per_second = Vec::new();
    let mut prev = f.1;
    let mut next = f.0 + Duration::from_secs(1);
    for s in samples.iter().filter(|s| s.0 > f.0) {
        while s.0 >= next {
            per_second.push(s.1.saturating_sub(prev));
            prev = s.1;
            next += Duration::from_secs(1);
        }
    }
    per_second.push(l.1.saturating_sub(prev));
    (
        resume,
        span,
        per(f.1, l.1),
        per(f.2, l.2),
        per(f.3, l.3),
        per_second,
    )
}

// ---------------------------------------------------------------------------
// The steady phase
// ---------------------------------------------------------------------------

/// Most uploads in flight at once in the steady phase.
const MAX_IN_FLIGHT: usize = 1024;

/// Sends the requests (in the order they were made: interval by
/// interval, node by node) on a schedule of `rate` records per second,
/// each when its time comes whatever the answers to the others (agents
/// do not wait for each other), at most [`MAX_IN_FLIGHT`] at once.
async fn send_paced(reqs: Vec<Vec<IngestReq>>, rate: f64) -> anyhow::Result<IngestStats> {
    let mut lists: Vec<std::vec::IntoIter<IngestReq>> =
        reqs.into_iter().map(Vec::into_iter).collect();
    let mut order = Vec::new();
    loop {
        let before = order.len();
        order.extend(lists.iter_mut().filter_map(Iterator::next));
        if order.len() == before {
            break;
        }
    }
    let http = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(120))
        .build()
        .context("cannot build an HTTP client")?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    let mut stats = IngestStats::default();
    let mut sent = 0u64;
    for r in order {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(sent as f64 / rate)).await;
        sent += r.records();
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .context("the upload semaphore closed")?;
        let http = http.clone();
        tasks.spawn(async move {
            let mut st = IngestStats::default();
            send_one(&http, &r, &mut st).await;
            drop(permit);
            st
        });
        while let Some(done) = tasks.try_join_next() {
            stats.merge(done.context("an upload panicked")?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        stats.merge(done.context("an upload panicked")?);
    }
    Ok(stats)
}

/// What the steady phase measured.
struct Steady {
    stats: IngestStats,
    upload_secs: f64,
    /// Last upload acknowledged → last entry at the receiver.
    tail_secs: f64,
    delivered: u64,
    latency_us: Vec<u64>,
    untimed: u64,
    lag: Vec<u64>,
    usage: Usage,
    rss_peak: u64,
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

/// Runs `tally bench stream`.
pub async fn run(a: StreamArgs) -> anyhow::Result<()> {
    ensure!(
        (10..=60_000).contains(&a.nodes),
        "--nodes must be 10 to 60,000"
    );
    ensure!(a.clients >= 1, "--clients must be at least 1");
    ensure!(
        a.records_per_request >= 1,
        "--records-per-request must be at least 1"
    );
    ensure!(a.outage_minutes >= 1, "--outage-minutes must be at least 1");
    ensure!(
        a.rate >= 1 && a.seconds >= 1,
        "--rate and --seconds must be at least 1"
    );
    let exe = tally_exe()?;
    let work = temp_dir_in(a.work_dir.as_deref(), "tally-bench-stream-")?;
    let dir = work.path().to_path_buf();
    let machine = Machine::detect();
    let code = git_state();
    let load_start = loadavg();

    // The server and the tailnet.
    let mut server = TallyServer::spawn(&exe, Some(&dir)).await?;
    let pid = server.pid.context("the server has no pid")?;
    let rss = RssLog::start(pid);
    let api = Api {
        http: http_client(Duration::from_secs(60))?,
        base: server.base.clone(),
        key: server.key.clone(),
    };
    let auth = setup_tailnet_at(&api.http, &api.base, &api.key).await?;
    eprintln!("registering {} nodes ...", a.nodes);
    let mut regs = Vec::with_capacity(a.nodes);
    for i in 0..a.nodes {
        regs.push(
            register_node_at(
                &api.base,
                &api.http,
                &auth,
                &format!("bench-node-{i}"),
                &[node_addr(i).to_string()],
            )
            .await?,
        );
    }
    let mut nodes = gen_nodes(regs, a.seed);
    let n = nodes.len();

    // The records: the outage's backlog, then the steady phase's, in
    // consecutive intervals ending now.
    let backlog_intervals = usize::try_from(a.outage_minutes * 12)
        .context("--outage-minutes is too large")?
        .next_multiple_of(a.records_per_request);
    let steady_records = usize::try_from(a.rate * a.seconds).context("--rate is too large")?;
    let steady_intervals = steady_records.div_ceil(n).max(1);
    let start = (now_nanos() - (backlog_intervals + steady_intervals) as i64 * INTERVAL_NS)
        / INTERVAL_NS
        * INTERVAL_NS;
    let steady_start = start + backlog_intervals as i64 * INTERVAL_NS;
    eprintln!(
        "generating {} + {} records ...",
        fmt_count((backlog_intervals * n) as f64),
        fmt_count((steady_intervals * n) as f64)
    );
    let (base, clients, per_request, seed) =
        (api.base.clone(), a.clients, a.records_per_request, a.seed);
    let (backlog, backlog_json, steady_reqs) = tokio::task::spawn_blocking(move || {
        let (b, json) = gen_requests(
            &mut nodes,
            &base,
            backlog_intervals,
            per_request,
            clients,
            start,
            seed,
        )?;
        let (s, _) = gen_requests(
            &mut nodes,
            &base,
            steady_intervals,
            1,
            clients,
            steady_start,
            seed + 1,
        )?;
        anyhow::Ok((b, json, s))
    })
    .await
    .context("generating records panicked")??;

    if !a.detection {
        api.call(
            api.http
                .post(format!("{}/api/v2/consumers/detection/pause", api.base)),
            "pausing the detection consumer",
        )
        .await?;
    }

    // The destinations, all down, and a stream to each.
    let mut dests = if a.no_streams {
        None
    } else {
        Some(Destinations::start(&a, &dir, &api).await?)
    };
    let limit = Duration::from_secs(a.drain_timeout);

    // 1. The outage.
    let outage = outage_phase(&api, pid, backlog, limit).await?;
    let down_status = match &dests {
        Some(d) => Some(api.status(&d.hec_id).await?),
        None => None,
    };

    // 2. Catch-up, one destination at a time; 3. steady state.
    let mut catch_ups = Vec::new();
    let mut steady = None;
    let mut final_status = Value::Null;
    if let Some(d) = dests.as_mut() {
        catch_ups = catch_up_all(d, &api, pid, &rss, &outage.stats, limit).await?;
        steady = Some(steady_phase(d, &api, pid, &rss, steady_reqs, a.rate, limit).await?);
        final_status = api.status(&d.hec_id).await?;
    }
    let hwm = proc_status_bytes(pid, "VmHWM").unwrap_or(0);
    let end_rss = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
    let load_end = loadavg();
    server.stop().await?;
    if let Some(d) = dests.as_mut() {
        d.stop().await;
    }

    // The report.
    let span_secs = backlog_intervals as f64 * INTERVAL_NS as f64 / 1e9;
    let expected = outage.stats.records;
    let expected_conns = outage.stats.entries;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# tally bench stream\n");
    let _ = writeln!(w, "{}", machine.render());
    let _ = writeln!(w, "code: {code}");
    let _ = writeln!(
        w,
        "load average: {load_start} at the start, {load_end} at the end\n"
    );
    let _ = writeln!(
        w,
        "Tailnet: {n} simulated nodes ({} busy, 100-1,000 connections per record; the rest 1-6), one flow record per node per 5 s: {} records/s, about {} connections/s.",
        busy_nodes(n),
        fmt_count(n as f64 / 5.0),
        fmt_count(expected_conns as f64 / span_secs),
    );
    let o = &outage;
    let _ = writeln!(
        w,
        "Outage backlog: {} min of that tailnet = {} records with {} connections ({} of JSON), uploaded in {:.1} s ({} records/s, {} connections/s; ack p50 {:.1} ms, p99 {:.1} ms) {}.\n",
        a.outage_minutes,
        fmt_count(expected as f64),
        fmt_count(expected_conns as f64),
        fmt_bytes(backlog_json),
        o.ingest_secs,
        fmt_count(expected as f64 / o.ingest_secs),
        fmt_count(expected_conns as f64 / o.ingest_secs),
        percentile(&o.stats.lat_us, 50.0) as f64 / 1000.0,
        percentile(&o.stats.lat_us, 99.0) as f64 / 1000.0,
        if a.no_streams {
            "with no stream configured (--no-streams: the baseline)"
        } else {
            "while every destination was down (HEC answering 503, rsyslog not listening, the S3 bucket missing)"
        },
    );
    let _ = writeln!(
        w,
        "The server's other consumers (their largest lag while uploading, and when each reached the log's end after the last upload), before any destination came back{}:\n",
        if a.detection {
            ""
        } else {
            "; detection paused for the whole run (--detection keeps it)"
        }
    );
    let _ = writeln!(
        w,
        "| consumer | largest lag, records | at the end after |\n|---|---|---|"
    );
    for (name, lag, done) in &o.others {
        let _ = writeln!(
            w,
            "| {name} | {} | {} |",
            fmt_count(*lag as f64),
            done.map_or_else(|| "not in time".to_owned(), |s| format!("{s:.1} s"))
        );
    }
    let _ = writeln!(
        w,
        "\nserver threads during the outage (% of a core): {}",
        o.usage.threads()
    );
    if let Some(ds) = &down_status {
        let _ = writeln!(
            w,
            "HEC stream at the end of the outage: {} failed requests, lagEntries {}, lastError {:?}",
            num(ds, "numFailedRequests"),
            num(ds, "lagEntries"),
            ds["lastError"].as_str().unwrap_or_default()
        );
    }

    if !catch_ups.is_empty() {
        let _ = writeln!(w, "\n## Catch-up after the outage\n");
        let _ = writeln!(
            w,
            "x real time = the backlog's span ({span_secs:.0} s of the tailnet's traffic) / drain time; drain time = first entry accepted after the outage → last backlog entry at the destination; resume delay = destination back → first entry accepted (the stream's retry backoff). The other consumers were idle (at the log's end) throughout.\n"
        );
        let _ = writeln!(
            w,
            "| destination | resume delay | drain time | records/s | connections/s | MB/s sent | x real time | server CPU | connections per server CPU-s | receiver CPU | other processes | server RSS peak |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
    }
    for c in &catch_ups {
        let receiver = match c.usage.peer {
            Some(p) => Usage::fmt(p, c.usage.wall),
            None => format!(
                "{} (bench process)",
                Usage::fmt(c.usage.bench, c.usage.wall)
            ),
        };
        let _ = writeln!(
            w,
            "| {} | {:.1} s | {} | {} | {} | {:.1} | {} | {} | {} | {receiver} | {:.0} % | {} |",
            c.name,
            c.resume,
            if c.drained {
                format!("{:.1} s", c.drain)
            } else {
                format!("not drained in {} s", a.drain_timeout)
            },
            fmt_count(c.rate_records),
            fmt_count(c.rate_conns),
            c.rate_bytes / 1e6,
            if c.drained {
                format!("{:.1}", span_secs / c.drain.max(1e-9))
            } else {
                "—".into()
            },
            Usage::fmt(c.usage.server, c.usage.wall),
            fmt_count(c.conns_per_cpu),
            c.usage.window.other_pct(),
            fmt_bytes(c.rss_peak),
        );
    }
    let _ = writeln!(w);
    for c in &catch_ups {
        let _ = writeln!(w, "- {}: {}", c.name, c.check);
        let _ = writeln!(
            w,
            "  status: numEntriesSent {}, numBytesSent {}, numTotalRequests {}, numFailedRequests {}, maxBodySize {}, position {}, lagEntries {}, lastError {:?}",
            num(&c.status, "numEntriesSent"),
            num(&c.status, "numBytesSent"),
            num(&c.status, "numTotalRequests"),
            num(&c.status, "numFailedRequests"),
            num(&c.status, "maxBodySize"),
            num(&c.status, "position"),
            num(&c.status, "lagEntries"),
            c.status["lastError"].as_str().unwrap_or_default()
        );
        let per: Vec<String> = c.per_second.iter().map(|r| fmt_count(*r as f64)).collect();
        let _ = writeln!(w, "  records delivered per second: {}", per.join(" "));
        let _ = writeln!(w, "  server threads (% of a core): {}", c.usage.threads());
    }

    if let Some(s) = &steady {
        let _ = writeln!(
            w,
            "\n## Steady state (HEC up, the other streams deleted, every consumer running)\n"
        );
        let _ = writeln!(
            w,
            "Uploads: {} records ({} connections) of one record each, sent on a schedule of {} records/s whatever the answers (agents do not wait for each other); {:.0} records/s done over {:.1} s (ack p50 {:.1} ms, p99 {:.1} ms); {} delivered, the last {:.2} s after the last ack.\n",
            fmt_count(s.stats.records as f64),
            fmt_count(s.stats.entries as f64),
            fmt_count(a.rate as f64),
            s.stats.records as f64 / s.upload_secs.max(1e-9),
            s.upload_secs,
            percentile(&s.stats.lat_us, 50.0) as f64 / 1000.0,
            percentile(&s.stats.lat_us, 99.0) as f64 / 1000.0,
            fmt_count(s.delivered as f64),
            s.tail_secs,
        );
        let mut lag = s.lag.clone();
        lag.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(w, "| | p50 | p99 | max |\n|---|---|---|---|");
        let _ = writeln!(
            w,
            "| delivery latency (receiver arrival − store receive time, {} entries{}) | {:.1} ms | {:.1} ms | {:.1} ms |",
            fmt_count(s.latency_us.len() as f64),
            if s.untimed > 0 {
                format!(", {} without a time", s.untimed)
            } else {
                String::new()
            },
            ms(percentile(&s.latency_us, 50.0)),
            ms(percentile(&s.latency_us, 99.0)),
            ms(s.latency_us.last().copied().unwrap_or(0)),
        );
        let _ = writeln!(
            w,
            "| lagEntries (the stream's consumer in /api/v2/consumers, every 100 ms, {} samples) | {} | {} | {} |",
            lag.len(),
            percentile(&lag, 50.0),
            percentile(&lag, 99.0),
            lag.last().copied().unwrap_or(0),
        );
        let _ = writeln!(
            w,
            "\nserver CPU {}, bench process (uploads + receiver) {}, other processes {:.0} %; server RSS peak {}",
            Usage::fmt(s.usage.server, s.usage.wall),
            Usage::fmt(s.usage.bench, s.usage.wall),
            s.usage.window.other_pct(),
            fmt_bytes(s.rss_peak)
        );
        let _ = writeln!(w, "server threads (% of a core): {}", s.usage.threads());
    }

    let _ = writeln!(w, "\n## Server memory (RSS, sampled every 100 ms)\n");
    let _ = writeln!(w, "| moment | RSS |\n|---|---|");
    let _ = writeln!(
        w,
        "| nodes registered{}, before the backlog | {} |",
        if a.no_streams {
            ""
        } else {
            ", streams created"
        },
        fmt_bytes(rss.at(o.usage.from))
    );
    for q in [25, 50, 75, 100] {
        let secs = o.ingest_secs * f64::from(q) / 100.0;
        let at = o.usage.from + Duration::from_secs_f64(secs);
        let _ = writeln!(
            w,
            "| outage, {q} % of the backlog uploaded (t = {secs:.1} s) | {} |",
            fmt_bytes(rss.at(at))
        );
    }
    let _ = writeln!(
        w,
        "| outage, peak while uploading | {} |",
        fmt_bytes(rss.peak(o.usage.from, o.ingest_end))
    );
    let _ = writeln!(
        w,
        "| outage, peak until the other consumers were at the end | {} |",
        fmt_bytes(rss.peak(o.usage.from, o.usage.to))
    );
    let _ = writeln!(
        w,
        "| outage, at its end (other consumers idle, destinations still down) | {} |",
        fmt_bytes(rss.at(o.usage.to))
    );
    for c in &catch_ups {
        let _ = writeln!(
            w,
            "| catch-up to {}: peak / at the end | {} / {} |",
            c.name,
            fmt_bytes(c.rss_peak),
            fmt_bytes(rss.at(c.usage.to))
        );
    }
    if let Some(s) = &steady {
        let _ = writeln!(w, "| steady state: peak | {} |", fmt_bytes(s.rss_peak));
    }
    let _ = writeln!(
        w,
        "| at the end / VmHWM (whole run) | {} / {} |",
        fmt_bytes(end_rss),
        fmt_bytes(hwm)
    );

    let _ = writeln!(w, "\n## CPU per phase\n");
    let _ = writeln!(
        w,
        "| phase | wall | server | bench process | peer | other processes |\n|---|---|---|---|---|---|"
    );
    let mut phases: Vec<(&str, &Usage)> = vec![(
        "outage (upload, other consumers to the end, 5 s idle)",
        &o.usage,
    )];
    for c in &catch_ups {
        phases.push((c.name.as_str(), &c.usage));
    }
    if let Some(s) = &steady {
        phases.push(("steady state", &s.usage));
    }
    for (name, u) in phases {
        let _ = writeln!(
            w,
            "| {name} | {:.1} s | {} | {} | {} | {:.0} % |",
            u.wall,
            Usage::fmt(u.server, u.wall),
            Usage::fmt(u.bench, u.wall),
            u.peer
                .map_or_else(|| "—".to_owned(), |p| Usage::fmt(p, u.wall)),
            u.window.other_pct()
        );
    }

    if !catch_ups.is_empty() {
        let _ = writeln!(w, "\n## Against the goals\n");
    }
    if let Some(h) = catch_ups.first() {
        let _ = writeln!(
            w,
            "- HEC: {} flow entries (connections)/s, {} stored records/s; goal ≥ 300,000 flow entries/s: {}",
            fmt_count(h.rate_conns),
            fmt_count(h.rate_records),
            if h.drained && h.rate_conns >= GOAL_HEC_CONNS {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    for c in &catch_ups {
        let x = if c.drained {
            span_secs / c.drain.max(1e-9)
        } else {
            0.0
        };
        let _ = writeln!(
            w,
            "- catch-up, {}: {x:.1}x real time (with the resume delay: {:.1}x); goal ≥ 10x: {}",
            c.name,
            if c.drained {
                span_secs / (c.drain + c.resume).max(1e-9)
            } else {
                0.0
            },
            if x >= GOAL_CATCH_UP { "met" } else { "NOT met" }
        );
    }
    if !catch_ups.is_empty() {
        let _ = writeln!(
            w,
            "- memory: see the RSS table (bounded if it does not grow with the backlog while the destinations are down; compare with a --no-streams run)"
        );
        let _ = writeln!(
            w,
            "\nHEC stream at the end: numEntriesSent {}, numBytesSent {}, numTotalRequests {}, numFailedRequests {}",
            num(&final_status, "numEntriesSent"),
            num(&final_status, "numBytesSent"),
            num(&final_status, "numTotalRequests"),
            num(&final_status, "numFailedRequests"),
        );
    }
    if let Some(d) = &dests {
        if let Err(why) = &d.syslog {
            let _ = writeln!(w, "\nsyslog (rsyslog over TLS) skipped: {why}");
        }
        if let Err(why) = &d.moto {
            let _ = writeln!(w, "\nS3 (moto_server) skipped: {why}");
        }
    }
    println!("{out}");

    rss.stop().await;
    if a.keep {
        if let Some(t) = server.tmp.take() {
            let _ = t.keep();
        }
        let kept = work.keep();
        println!("work directory kept in {}", kept.display());
    }
    Ok(())
}

/// The destinations and their streams.
struct Destinations {
    hec: Arc<Hec>,
    hec_task: tokio::task::JoinHandle<()>,
    hec_id: String,
    syslog: Result<Rsyslog, String>,
    syslog_id: Option<String>,
    moto: Result<Moto, String>,
    s3_id: Option<String>,
}

impl Destinations {
    /// Starts the destinations, down, and creates a network stream to each.
    async fn start(a: &StreamArgs, dir: &Path, api: &Api) -> anyhow::Result<Self> {
        let (hec, hec_port, hec_task) = start_hec().await?;
        let ca_pem = make_certs(dir)?;
        let syslog: Result<Rsyslog, String> = if a.skip_syslog {
            Err("left out (--skip-syslog)".into())
        } else {
            Rsyslog::prepare(dir, free_port()?)
                .await
                .map_err(|e| format!("{e:#}"))
        };
        let moto: Result<Moto, String> = if a.skip_s3 {
            Err("left out (--skip-s3)".into())
        } else {
            Moto::start(dir).await.map_err(|e| format!("{e:#}"))
        };
        let hec_id = api
            .create_stream(
                &json!({
                    "destinationType": "splunk",
                    "url": format!("http://127.0.0.1:{hec_port}/services/collector/event"),
                    "token": HEC_TOKEN,
                }),
                "creating the HEC stream",
            )
            .await?;
        let syslog_id = match &syslog {
            Ok(s) => Some(
                api.create_stream(
                    &json!({
                        "destinationType": "syslog",
                        "url": format!("syslog+tls://localhost:{}", s.port),
                        "caCertificate": ca_pem,
                    }),
                    "creating the syslog stream",
                )
                .await?,
            ),
            Err(why) => {
                eprintln!("syslog (rsyslog over TLS) skipped: {why}");
                None
            }
        };
        let s3_id = match &moto {
            Ok(m) => Some(
                api.create_stream(
                    &json!({
                        "destinationType": "s3",
                        "url": m.url,
                        "s3Bucket": BUCKET,
                        "s3AccessKeyId": "a",
                        "s3SecretAccessKey": "s",
                        "uploadPeriodMinutes": 0,
                    }),
                    "creating the S3 stream",
                )
                .await?,
            ),
            Err(why) => {
                eprintln!("S3 (moto_server) skipped: {why}");
                None
            }
        };
        Ok(Self {
            hec,
            hec_task,
            hec_id,
            syslog,
            syslog_id,
            moto,
            s3_id,
        })
    }

    async fn stop(&mut self) {
        self.hec_task.abort();
        if let Ok(s) = self.syslog.as_mut() {
            s.stop().await;
        }
        if let Ok(m) = self.moto.as_mut() {
            m.stop().await;
        }
    }
}

/// What the outage phase measured.
struct Outage {
    stats: IngestStats,
    ingest_secs: f64,
    ingest_end: Instant,
    /// Every consumer but the streams: its largest lag while uploading,
    /// and when it reached the log's end after the last upload.
    others: Vec<(String, u64, Option<f64>)>,
    usage: Usage,
}

/// The lag of stream `id` as `GET /api/v2/consumers` has it (the same
/// figure as the status's `lagEntries`, without the status's cost).
async fn stream_lag(api: &Api, id: &str) -> anyhow::Result<u64> {
    let v = api
        .call(
            api.http.get(format!("{}/api/v2/consumers", api.base)),
            "listing the consumers",
        )
        .await?;
    let name = format!("stream-{id}");
    v["consumers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"].as_str() == Some(name.as_str())))
        .and_then(|c| c["lagRecords"].as_u64())
        .with_context(|| format!("no consumer {name}"))
}

/// Consumers that are not streams nor paused: (name, lagRecords).
async fn other_consumers(api: &Api) -> anyhow::Result<Vec<(String, u64)>> {
    let v = api
        .call(
            api.http.get(format!("{}/api/v2/consumers", api.base)),
            "listing the consumers",
        )
        .await?;
    Ok(v["consumers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    let name = c["name"].as_str()?;
                    let paused = c["state"].as_str() == Some("paused");
                    (!name.starts_with("stream-") && !paused)
                        .then(|| (name.to_owned(), c["lagRecords"].as_u64().unwrap_or(0)))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Uploads the backlog with every destination down, waits until the
/// other consumers are at the log's end, then 5 s more.
async fn outage_phase(
    api: &Api,
    pid: u32,
    backlog: Vec<Vec<IngestReq>>,
    limit: Duration,
) -> anyhow::Result<Outage> {
    eprintln!("outage: uploading the backlog with every destination down ...");
    let meter = Meter::start(pid, None);
    // The other consumers' lag, every second while uploading.
    let stop = Arc::new(AtomicBool::new(false));
    let lags = {
        let stop = stop.clone();
        let api = Api {
            http: api.http.clone(),
            base: api.base.clone(),
            key: api.key.clone(),
        };
        tokio::spawn(async move {
            let mut most: Vec<(String, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = other_consumers(&api).await {
                    for (name, lag) in list {
                        match most.iter_mut().find(|(n, _)| *n == name) {
                            Some(m) => m.1 = m.1.max(lag),
                            None => most.push((name, lag)),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            most
        })
    };
    let t = Instant::now();
    let mut stats = send_all(backlog).await?;
    let ingest_secs = t.elapsed().as_secs_f64().max(1e-9);
    let ingest_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let most = lags.await.context("the lag sampler panicked")?;
    ensure!(
        stats.gave_up == 0 && stats.transport_errors == 0,
        "uploads failed: {}",
        stats.first_error.clone().unwrap_or_default()
    );
    stats.lat_us.sort_unstable();
    eprintln!("outage: waiting for the other consumers to reach the log's end ...");
    let mut done: Vec<(String, f64)> = Vec::new();
    loop {
        let list = other_consumers(api).await?;
        for (name, lag) in &list {
            if *lag == 0 && !done.iter().any(|(n, _)| n == name) {
                done.push((name.clone(), ingest_end.elapsed().as_secs_f64()));
            }
        }
        if list.iter().all(|(_, lag)| *lag == 0) || ingest_end.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let usage = meter.finish();
    let others = most
        .into_iter()
        .map(|(name, lag)| {
            let at = done.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
            (name, lag, at)
        })
        .collect();
    Ok(Outage {
        stats,
        ingest_secs,
        ingest_end,
        others,
        usage,
    })
}

/// Each destination comes back in turn and catches up alone.
async fn catch_up_all(
    d: &mut Destinations,
    api: &Api,
    pid: u32,
    rss: &RssLog,
    backlog: &IngestStats,
    limit: Duration,
) -> anyhow::Result<Vec<CatchUp>> {
    let (expected, expected_conns) = (backlog.records, backlog.entries);
    let mut catch_ups = Vec::new();
    eprintln!("catch-up: HEC ...");
    {
        let hec = &d.hec;
        let meter = Meter::start(pid, None);
        let opened = Instant::now();
        hec.open.store(true, Ordering::Relaxed);
        let mut probe = Probe::Hec(hec);
        let (samples, drained) = drain(&mut probe, expected, limit, opened).await?;
        let usage = meter.finish();
        let status = settled_status(api, &d.hec_id).await?;
        let (records, conns) = (
            hec.envelopes.load(Ordering::Acquire),
            hec.conns.load(Ordering::Relaxed),
        );
        let check = format!(
            "{} of {} records, {} of {} connections; {} refused while down, {} unauthorized",
            fmt_count(records as f64),
            fmt_count(expected as f64),
            fmt_count(conns as f64),
            fmt_count(expected_conns as f64),
            fmt_count(hec.refused.load(Ordering::Relaxed) as f64),
            hec.unauthorized.load(Ordering::Relaxed)
        );
        catch_ups.push(catch_up(
            "Splunk HEC (in-process receiver)",
            &samples,
            drained,
            opened,
            usage,
            rss,
            check,
            status,
            None,
        ));
    }
    if let (Ok(rs), Some(id)) = (d.syslog.as_mut(), &d.syslog_id) {
        eprintln!("catch-up: rsyslog over TLS ...");
        let opened = Instant::now();
        match rs.start().await {
            Err(e) => {
                eprintln!("syslog skipped: {e:#}");
                d.syslog = Err(format!("{e:#}"));
            }
            Ok(()) => {
                let meter = Meter::start(pid, rs.pid);
                let mut probe = Probe::File(LineCounter {
                    path: rs.out.clone(),
                    offset: 0,
                    lines: 0,
                    conns: 0,
                });
                let (samples, drained) = drain(&mut probe, expected, limit, opened).await?;
                let usage = meter.finish();
                let status = settled_status(api, id).await?;
                let (lines, conns) = match &probe {
                    Probe::File(c) => (c.lines, c.conns),
                    _ => (0, 0),
                };
                let check = format!(
                    "{} of {} messages written by rsyslog, {} of {} connections",
                    fmt_count(lines as f64),
                    fmt_count(expected as f64),
                    fmt_count(conns as f64),
                    fmt_count(expected_conns as f64),
                );
                catch_ups.push(catch_up(
                    "syslog over TLS (rsyslogd, imtcp + gtls, to a file)",
                    &samples,
                    drained,
                    opened,
                    usage,
                    rss,
                    check,
                    status,
                    None,
                ));
                rs.stop().await;
            }
        }
        api.delete_stream(id).await?;
    }
    if let (Ok(m), Some(id)) = (d.moto.as_mut(), &d.s3_id) {
        eprintln!("catch-up: S3 (moto_server) ...");
        let opened = Instant::now();
        m.boto3(&format!("s3.create_bucket(Bucket='{BUCKET}')"))
            .await
            .context("creating the bucket")?;
        let meter = Meter::start(pid, m.pid);
        let mut probe = Probe::Status(api, id);
        let (samples, drained) = drain(&mut probe, expected, limit, opened).await?;
        let usage = meter.finish();
        let status = settled_status(api, id).await?;
        api.delete_stream(id).await?;
        let (objects, bytes, lines, conns) = m.contents().await?;
        let check = format!(
            "{} objects ({}) holding {} of {} records, {} of {} connections",
            fmt_count(objects as f64),
            fmt_bytes(bytes),
            fmt_count(lines as f64),
            fmt_count(expected as f64),
            fmt_count(conns as f64),
            fmt_count(expected_conns as f64),
        );
        // The status has no connections: from the objects.
        let per_record = conns as f64 / lines.max(1) as f64;
        catch_ups.push(catch_up(
            "S3 (moto_server, uploadPeriodMinutes 0)",
            &samples,
            drained,
            opened,
            usage,
            rss,
            check,
            status,
            Some(per_record),
        ));
        m.stop().await;
    }
    Ok(catch_ups)
}

/// Uploads at `rate` with the HEC receiver up; delivery latency and lag.
async fn steady_phase(
    d: &Destinations,
    api: &Api,
    pid: u32,
    rss: &RssLog,
    reqs: Vec<Vec<IngestReq>>,
    rate: u64,
    limit: Duration,
) -> anyhow::Result<Steady> {
    let hec = &d.hec;
    eprintln!("steady state: {} records/s ...", fmt_count(rate as f64));
    let before = hec.envelopes.load(Ordering::Acquire);
    hec.steady.store(true, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let api = Api {
            http: api.http.clone(),
            base: api.base.clone(),
            key: api.key.clone(),
        };
        let id = d.hec_id.clone();
        tokio::spawn(async move {
            let mut lag = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(l) = stream_lag(&api, &id).await {
                    lag.push(l);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lag
        })
    };
    let meter = Meter::start(pid, None);
    let t = Instant::now();
    let mut stats = send_paced(reqs, rate as f64).await?;
    let upload_secs = t.elapsed().as_secs_f64();
    let acked = Instant::now();
    let want = before + stats.records;
    while hec.envelopes.load(Ordering::Acquire) < want && acked.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tail_secs = acked.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let lag = sampler.await.context("the lag sampler panicked")?;
    let usage = meter.finish();
    stats.lat_us.sort_unstable();
    let mut latency_us = std::mem::take(
        &mut *hec
            .latency_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    latency_us.sort_unstable();
    let rss_peak = rss.peak(usage.from, usage.to);
    Ok(Steady {
        stats,
        upload_secs,
        tail_secs,
        delivered: hec.envelopes.load(Ordering::Acquire).saturating_sub(before),
        latency_us,
        untimed: hec.untimed.load(Ordering::Relaxed),
        lag,
        usage,
        rss_peak,
    })
}

/// The stream's status once its position stopped moving (the last
/// batch's bookkeeping done).
async fn settled_status(api: &Api, id: &str) -> anyhow::Result<Value> {
    let mut last = api.status(id).await?;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = api.status(id).await?;
        if num(&s, "lagEntries") == 0 && num(&s, "position") == num(&last, "position") {
            return Ok(s);
        }
        last = s;
    }
    Ok(last)
}

/// A [`CatchUp`] from the samples of a drain; `conns_per_record` when the
/// probe does not count connections.
#[allow(clippy::too_many_arguments)]
fn catch_up(
    name: &str,
    samples: &[(Instant, u64, u64, u64)],
    drained: bool,
    opened: Instant,
    usage: Usage,
    rss: &RssLog,
    check: String,
    status: Value,
    conns_per_record: Option<f64>,
) -> CatchUp {
    let (resume, drain, rate_records, mut rate_conns, rate_bytes, per_second) =
        rates(samples, opened);
    if let Some(k) = conns_per_record {
        rate_conns = rate_records * k;
    }
    CatchUp {
        name: name.to_owned(),
        resume,
        drain,
        drained,
        conns_per_cpu: rate_conns * drain / usage.server.max(1e-9),
        rate_records,
        rate_conns,
        rate_bytes,
        rss_peak: rss.peak(usage.from, usage.to),
        usage,
        check,
        status,
        per_second,
    }
}
