//! Helpers every benchmark shares: machine facts, `/proc` sampling, the
//! `tally server` process under test, HTTP, throwaway PostgreSQL clusters,
//! statistics and formatting.

use anyhow::{Context, bail, ensure};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tally_proto::PublicId;
use tokio::io::{AsyncBufReadExt, BufReader};

// ---------------------------------------------------------------------------
// Machine facts
// ---------------------------------------------------------------------------

/// The machine the benchmark runs on.
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) kernel: String,
    pub(crate) mem_total: String,
}

impl Machine {
    pub(crate) fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .map_or_else(|| "unknown".to_owned(), |kb| fmt_bytes(kb * 1024));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            cpu,
            cores,
            kernel,
            mem_total,
        }
    }

    pub(crate) fn render(&self) -> String {
        format!(
            "machine: {} ({} cores), {} RAM, Linux {}",
            self.cpu, self.cores, self.mem_total, self.kernel
        )
    }
}

/// The file system holding `path`, from /proc/mounts: `device (type)`.
pub(crate) fn filesystem_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), f[0], f[2]))
        })
        .max_by_key(|m| m.0)
        .map_or_else(
            || "unknown".to_owned(),
            |(_, dev, ty)| format!("{dev} ({ty})"),
        )
}

// ---------------------------------------------------------------------------
// /proc sampling
// ---------------------------------------------------------------------------

pub(crate) fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Fields of /proc/<pid>/stat after the command name (field 3 onwards).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a process (all its threads, and threads that exited), in ticks.
pub(crate) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of each live thread of `pid`, by thread id, with its name.
pub(crate) fn thread_cpu_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        let name = std::fs::read_to_string(format!("{base}/comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let Some(f) = stat_fields(&format!("{base}/stat")) else {
            continue;
        };
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (name, ticks));
    }
    out
}

/// A `kB` field of /proc/<pid>/status (VmHWM, VmRSS), in bytes.
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Proportional set size of a process (shared pages split among sharers), bytes.
pub(crate) fn proc_pss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// `pid` and its direct children (PostgreSQL's postmaster forks every process).
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = stat_fields(&format!("/proc/{p}/stat"))
                .and_then(|f| f.get(1).and_then(|v| v.parse::<u32>().ok()));
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// Machine-wide CPU time from /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineCpu {
    pub(crate) busy: u64,
    pub(crate) iowait: u64,
    pub(crate) steal: u64,
    pub(crate) total: u64,
}

impl MachineCpu {
    /// Busy CPU since `before`, as % of one core.
    pub(crate) fn busy_pct_since(&self, before: &MachineCpu) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        self.busy.saturating_sub(before.busy) as f64 / total * 100.0 * cores
    }

    pub(crate) fn sample() -> Self {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest is inside user).
        let total: u64 = (0..8).map(get).sum();
        Self {
            busy: total - get(3) - get(4),
            iowait: get(4),
            steal: get(7),
            total,
        }
    }
}

/// CPU use during the window, as % of one core.
#[derive(Debug, Default)]
pub(crate) struct CpuWindow {
    /// The measured server (or PostgreSQL's processes).
    pub(crate) server_pct: Option<f64>,
    /// This benchmark process and its helpers.
    pub(crate) client_pct: f64,
    /// The whole machine: busy, iowait, steal (sums over cores).
    pub(crate) machine_busy_pct: f64,
    pub(crate) machine_iowait_pct: f64,
    pub(crate) machine_steal_pct: f64,
    /// Per thread name of the server: % of one core.
    pub(crate) threads: Vec<(String, f64)>,
    /// Other processes under test beside the server (a worker,
    /// nats-servers, a control database), set by the benchmark that
    /// measured them: not counted as "other".
    pub(crate) beside_pct: f64,
}

impl CpuWindow {
    /// CPU used by everything else on the machine (other users, the kernel's
    /// own threads), % of one core.
    pub(crate) fn other_pct(&self) -> f64 {
        (self.machine_busy_pct - self.server_pct.unwrap_or(0.0) - self.client_pct - self.beside_pct)
            .max(0.0)
    }

    pub(crate) fn render(&self, out: &mut String, server: &str) {
        // Without the server's pid (--server), its CPU is part of "other".
        let other = if self.server_pct.is_some() {
            "other processes"
        } else {
            "other processes (server included)"
        };
        let beside = if self.beside_pct > 0.0 {
            format!(", beside it {:.0}", self.beside_pct)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  cpu (% of one core): {server} {}{beside}, bench client {:.0}, {other} {:.0}; machine busy {:.0} of {} (iowait {:.0}, steal {:.0})",
            self.server_pct
                .map_or_else(|| "n/a".to_owned(), |p| format!("{p:.0}")),
            self.client_pct,
            self.other_pct(),
            self.machine_busy_pct,
            std::thread::available_parallelism().map_or(1, |n| n.get()) * 100,
            self.machine_iowait_pct,
            self.machine_steal_pct,
        );
        if self.server_pct.is_some() && self.other_pct() > 20.0 {
            let _ = writeln!(
                out,
                "  WARNING: other processes used {:.0}% of a core during the measurement; the figures above are pessimistic",
                self.other_pct()
            );
        }
    }
}

/// Samples taken at the start and the end of the window.
pub(crate) struct CpuSampler {
    thread_pid: Option<u32>,
    server_ticks: Vec<(u32, u64)>,
    client_ticks: Vec<(u32, u64)>,
    machine: MachineCpu,
    threads: BTreeMap<u32, (String, u64)>,
    at: Instant,
}

impl CpuSampler {
    /// CPU ticks of each process that can be read.
    fn ticks(pids: &[u32]) -> Vec<(u32, u64)> {
        pids.iter()
            .filter_map(|p| Some((*p, proc_cpu_ticks(*p)?)))
            .collect()
    }

    /// Ticks used since `then` by the processes still running; processes
    /// that exited at the very end (psql, its backends) are left out.
    fn used_since(then: &[(u32, u64)]) -> u64 {
        then.iter()
            .filter_map(|(p, t)| Some(proc_cpu_ticks(*p)?.saturating_sub(*t)))
            .sum()
    }

    pub(crate) fn start(server: &[u32], client: &[u32], thread_pid: Option<u32>) -> Self {
        Self {
            server_ticks: Self::ticks(server),
            client_ticks: Self::ticks(client),
            machine: MachineCpu::sample(),
            threads: thread_pid.map(thread_cpu_ticks).unwrap_or_default(),
            at: Instant::now(),
            thread_pid,
        }
    }

    pub(crate) fn finish(&self) -> CpuWindow {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let hz = clock_ticks_per_sec();
        let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
        let server_pct =
            (!self.server_ticks.is_empty()).then(|| pct(Self::used_since(&self.server_ticks)));
        let client_pct = pct(Self::used_since(&self.client_ticks));
        let m = MachineCpu::sample();
        let d_total = m.total.saturating_sub(self.machine.total).max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = |a: u64, b: u64| a.saturating_sub(b) as f64 / d_total * 100.0 * cores;
        let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(pid) = self.thread_pid {
            for (tid, (name, ticks)) in thread_cpu_ticks(pid) {
                let before = self.threads.get(&tid).map_or(0, |t| t.1);
                *by_name.entry(name).or_default() += ticks.saturating_sub(before);
            }
        }
        let mut threads: Vec<(String, f64)> = by_name
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(n, t)| (n, pct(t)))
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuWindow {
            server_pct,
            client_pct,
            machine_busy_pct: share(m.busy, self.machine.busy),
            machine_iowait_pct: share(m.iowait, self.machine.iowait),
            machine_steal_pct: share(m.steal, self.machine.steal),
            threads,
            beside_pct: 0.0,
        }
    }
}

// ---------------------------------------------------------------------------
// The server under test (a `tally server` process)
// ---------------------------------------------------------------------------

/// The `tally` executable next to this one (`tally-bench`), whose `server`
/// and `agent` subcommands the benchmarks measure as separate processes.
pub(crate) fn tally_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the path of this program")?;
    let tally = me.with_file_name("tally");
    ensure!(
        tally.is_file(),
        "tally-bench runs the `tally` binary next to it ({}) as the server or agent under test, and it is missing: build both with `cargo build --release -p tally -p tally-bench`",
        tally.display()
    );
    Ok(tally)
}

/// The server under test.
pub(crate) struct TallyServer {
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) child: Option<tokio::process::Child>,
    pub(crate) pid: Option<u32>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) tmp: Option<tempfile::TempDir>,
}

impl TallyServer {
    /// Starts `exe server` on a loopback port with a fresh data directory
    /// under `work_dir` (or the system's temporary directory).
    pub(crate) async fn spawn(exe: &Path, work_dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::spawn_with(exe, work_dir, &[]).await
    }

    /// [`TallyServer::spawn`] with more arguments for `tally server`.
    pub(crate) async fn spawn_with(
        exe: &Path,
        work_dir: Option<&Path>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let tmp = temp_dir_in(work_dir, "tally-bench-")?;
        let key = format!("bench-{:032x}", rand::random::<u128>());
        let dir = tmp.path().to_path_buf();
        let mut s = Self::spawn_at(exe, &dir, &key, extra).await?;
        s.tmp = Some(tmp);
        Ok(s)
    }

    /// Starts `exe server` on a loopback port with the data directory
    /// `dir/data` (new or kept from an earlier run) and the bootstrap key
    /// `key`, logging to `dir/server.log`; `extra` are more arguments for
    /// `tally server`.
    pub(crate) async fn spawn_at(
        exe: &Path,
        dir: &Path,
        key: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_sub(exe, "server", dir, key, extra).await
    }

    /// [`TallyServer::spawn_at`] for another subcommand that serves as
    /// `tally server` does (`worker`: the once-per-cluster consumers on a
    /// shared log).
    pub(crate) async fn spawn_sub(
        exe: &Path,
        sub: &str,
        dir: &Path,
        key: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let data_dir = dir.join("data");
        let key = key.to_owned();
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut child = tokio::process::Command::new(exe)
            .arg(sub)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .env("TALLY_BOOTSTRAP_KEY", &key)
            .env_remove("TALLY_LISTEN")
            .env_remove("TALLY_DATA_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} {sub}", exe.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("server stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the server did not print its address within 120 s")?
            .context("cannot read the server's output")?;
        let Some(first) = first else {
            bail!(
                "the server exited before listening; its log ({}):\n{}",
                log_path.display(),
                tail_of(&log_path)
            );
        };
        let base = first
            .strip_prefix("tally server listening on ")
            .with_context(|| format!("unexpected first line from the server: {first:?}"))?
            .trim()
            .to_owned();
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        eprintln!(
            "started `tally {sub}` (pid {}) at {base}, data in {}",
            pid.unwrap_or(0),
            data_dir.display()
        );
        Ok(Self {
            base,
            key,
            child: Some(child),
            pid,
            data_dir: Some(data_dir),
            tmp: None,
        })
    }

    pub(crate) fn log_tail(&self) -> String {
        self.data_dir
            .as_ref()
            .and_then(|d| d.parent())
            .map(|d| tail_of(&d.join("server.log")))
            .unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<Duration> {
        let (Some(child), Some(pid)) = (self.child.as_mut(), self.pid) else {
            return Ok(Duration::ZERO);
        };
        let t = Instant::now();
        let pid = i32::try_from(pid).context("server pid out of range")?;
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "cannot send SIGTERM to the server: {}",
                std::io::Error::last_os_error()
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .context("the server did not exit within 120 s of SIGTERM")?
            .context("cannot wait for the server")?;
        if !status.success() {
            bail!(
                "the server exited with {status} after SIGTERM; its log:\n{}",
                self.log_tail()
            );
        }
        self.child = None;
        Ok(t.elapsed())
    }
}

/// A temporary directory under `work_dir` (or the system's).
pub(crate) fn temp_dir_in(
    work_dir: Option<&Path>,
    prefix: &str,
) -> anyhow::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    let dir = match work_dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .context("cannot create a temporary directory (see --work-dir)")?;
    Ok(dir)
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// An HTTP/1 client without proxies, one idle connection per host.
pub(crate) fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .build()
        .context("cannot build an HTTP client")
}

/// Adopts the benchmark's instances so no unadopted-instance cap applies.
pub(crate) async fn adopt(
    http: &reqwest::Client,
    server: &TallyServer,
    collection: &str,
    ids: &[PublicId],
) -> anyhow::Result<()> {
    // Admin bodies are limited to 64 KiB: 500 IDs are about 34 KB of JSON.
    for chunk in ids.chunks(500) {
        let list: Vec<String> = chunk.iter().map(PublicId::to_hex).collect();
        let resp = http
            .post(format!("{}/instances", server.base))
            .bearer_auth(&server.key)
            .json(&serde_json::json!({ "collection": collection, "instances": list }))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", server.base))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("adopting the benchmark's instances failed: {status}: {text}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// PostgreSQL (throwaway clusters)
// ---------------------------------------------------------------------------

/// Starts a throwaway PostgreSQL cluster (`tally_testkit::postgres`) for `--postgres`:
/// `--pg-bin`, `--work-dir` and `--pg-conf` map onto its options. initdb
/// and pg_ctl block, so they run on the blocking pool.
pub(crate) async fn start_pg(
    bin: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    conf: Vec<String>,
) -> anyhow::Result<tally_testkit::postgres::PgCluster> {
    if let Some(b) = &bin {
        tally_testkit::postgres::find_bin(Some(b))
            .with_context(|| format!("--pg-bin {}", b.display()))?;
    }
    let opts = tally_testkit::postgres::PgOptions {
        bin,
        base_dir: work_dir,
        conf,
    };
    tokio::task::spawn_blocking(move || tally_testkit::postgres::PgCluster::start(&opts))
        .await
        .context("starting PostgreSQL panicked")?
        .context("cannot start a throwaway PostgreSQL cluster (see --pg-bin, --pg-conf)")
}

/// Stops a cluster started by [`start_pg`]; with `keep`, leaves its
/// directory and says where it is.
pub(crate) async fn stop_pg(
    mut pg: tally_testkit::postgres::PgCluster,
    keep: bool,
) -> anyhow::Result<()> {
    let kept = tokio::task::spawn_blocking(move || pg.stop(keep))
        .await
        .context("stopping PostgreSQL panicked")?
        .context("pg_ctl stop failed")?;
    if let Some(dir) = kept {
        eprintln!("kept {}", dir.display());
    }
    Ok(())
}

/// `psql` connected to the cluster's `postgres` database over its Unix
/// socket, as a tokio command.
pub(crate) fn pg_psql(pg: &tally_testkit::postgres::PgCluster) -> tokio::process::Command {
    tokio::process::Command::from(pg.psql())
}

/// Runs one SQL command with `psql` and returns its unaligned output.
pub(crate) async fn pg_sql(
    pg: &tally_testkit::postgres::PgCluster,
    sql: &str,
) -> anyhow::Result<String> {
    let out = pg_psql(pg)
        .args(["-A", "-t", "-c", sql])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!(
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn pct_of(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

/// `1234567.8` as `1,234,568`.
pub(crate) fn fmt_count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in binary units.
pub(crate) fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Installs the rustls crypto provider once per process (as `tally` does).
pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ---------------------------------------------------------------------------
// Pages of logs, read as `tally logs query` reads them
// ---------------------------------------------------------------------------

/// One page of `GET /c/<collection>`, its entries left unread: an entry
/// that cannot be read must not fail the page.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LogPage<'a> {
    /// The entries as the server sent them.
    #[serde(borrow)]
    pub(crate) logs: Vec<&'a serde_json::value::RawValue>,
    /// Where the next page starts, when there is one.
    pub(crate) next: Option<String>,
}

impl<'a> LogPage<'a> {
    /// Reads a page (the entries stay unread).
    pub(crate) fn parse(body: &'a [u8]) -> anyhow::Result<Self> {
        serde_json::from_slice(body).context("the server sent a page of logs that is not JSON")
    }
}

/// Reads one entry as the server sent it; why not, for the report.
pub(crate) fn read_entry(raw: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(raw).map_err(|e| e.to_string())
}

/// Counts and reports (stderr, once each) entries that cannot be read.
#[derive(Debug, Default)]
pub(crate) struct Skipped(usize);

impl Skipped {
    /// Reports the entry at `position` (for a person: "entry 12 of page 3").
    pub(crate) fn report(&mut self, position: &str, why: &str) {
        self.0 += 1;
        eprintln!("tally: skipped {position}: it is not JSON that can be read ({why})");
    }
}

/// Whether a benchmark may draw a progress bar: stderr is a terminal and
/// the run is not `--quiet` (reports piped into BENCHMARKS.md hold none).
pub fn progress_enabled(quiet: bool) -> bool {
    use std::io::IsTerminal;
    !quiet && std::io::stderr().is_terminal()
}

/// A progress bar on stderr over `total` steps of `unit` (position, time
/// so far and left) for a benchmark's long phase; hidden unless
/// [`progress_enabled`]. Advance it per step, not in a measured hot loop.
pub fn progress(total: u64, unit: &str, quiet: bool) -> indicatif::ProgressBar {
    if !progress_enabled(quiet) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let template = format!(
        "{{msg}}[{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{elapsed}} so far, {{eta}} left)"
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}
