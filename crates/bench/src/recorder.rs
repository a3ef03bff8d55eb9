//! `tally bench recorder`: the session recorder under load, and `tally
//! record`'s cost per keystroke.
//!
//! 1. A real `tally server --recorder-listen` child takes `--idle`
//!    recordings that send their header and then nothing, and `--busy`
//!    recordings that each send `--rate` bytes of asciicast per second,
//!    every one on its own HTTP/2 (h2c) connection as tailscaled opens
//!    them, for `--duration` seconds. Reported: the server's CPU and RSS,
//!    the ack latency of the busy recordings (from sending a byte to the
//!    first `{"ack"}` covering it: it is stored), the idle recordings'
//!    longest gap between acks, and the store's bytes on disk next to the
//!    raw `.cast` bytes sent.
//! 2. Keystroke echo through a pseudo-terminal running `cat` (raw mode, so
//!    the echo comes from `cat`), alone and under `tally record` with a
//!    registered agent: the time from writing a byte to reading it back.

use crate::common::{
    Machine, TallyServer, clock_ticks_per_sec, fmt_bytes, fmt_count, percentile, proc_cpu_ticks,
    proc_status_bytes, tally_exe,
};
use anyhow::{Context, bail, ensure};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Settings of `tally bench recorder`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecorderArgs {
    /// Idle recordings (header only, then silence).
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Busy recordings.
    #[arg(long, default_value_t = 50)]
    pub busy: usize,
    /// Bytes of asciicast per second each busy recording sends.
    #[arg(long, default_value_t = 1_000_000)]
    pub rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Keystrokes echoed through `cat`, alone and under `tally record`.
    #[arg(long, default_value_t = 500)]
    pub keystrokes: usize,
    /// Parent directory of the temporary data directories.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// An h2c client of its own (one connection), as tailscaled's per session.
fn h2c() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .context("cannot build an h2c client")
}

/// What one recording saw.
#[derive(Default)]
struct Seen {
    /// Ack latencies (µs) of the busy recording's writes.
    latencies: Vec<u64>,
    /// Longest time between two acks (µs).
    longest_gap: u64,
    /// Bytes sent.
    sent: u64,
    /// Bytes the last ack covered.
    acked: u64,
    /// An error frame or a broken stream.
    error: Option<String>,
}

fn header(i: usize) -> String {
    format!(
        "{{\"version\":2,\"width\":120,\"height\":40,\"timestamp\":1700000000,\"srcNode\":\"bench-{i}\",\"sshUser\":\"root\",\"localUser\":\"root\"}}\n"
    )
}

/// One recording: `rate` bytes/s (0: idle) until `stop`, then its end.
async fn one(
    recorder: String,
    i: usize,
    rate: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
    start_gate: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<Seen> {
    let client = h2c()?;
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b, rx))
    }));
    let head = header(i);
    let mut sent = head.len() as u64;
    tx.send(Ok(head.into_bytes()))
        .await
        .map_err(|_| anyhow::anyhow!("the request body closed"))?;
    let resp = client
        .post(format!("http://{recorder}/v2/record"))
        .body(body)
        .send()
        .await
        .context("POST /v2/record")?;
    ensure!(resp.status() == 200, "recorder answered {}", resp.status());
    // Writes waiting for their ack: (offset after the write, when sent).
    let pending: Arc<parking_lot_free::Queue> = Arc::new(parking_lot_free::Queue::default());
    let acks = {
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut body = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut last = Instant::now();
            use futures_util::StreamExt;
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else {
                    seen.error = Some("the ack stream broke".into());
                    break;
                };
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                    if let Some(e) = v.get("error") {
                        seen.error = Some(e.to_string());
                    }
                    if let Some(n) = v["ack"].as_u64() {
                        let now = Instant::now();
                        seen.longest_gap = seen
                            .longest_gap
                            .max(now.duration_since(last).as_micros() as u64);
                        last = now;
                        seen.acked = n;
                        seen.latencies.extend(pending.take_through(n, now));
                    }
                }
            }
            seen
        })
    };
    start_gate.wait().await;
    if rate > 0 {
        // Lines of printable output, ~1 KiB each, sent every 20 ms: random
        // letters and digits (xorshift), so that storage cannot compress
        // them better than real output.
        let tick = Duration::from_millis(20);
        let per_tick = (rate as f64 * tick.as_secs_f64()) as usize;
        let mut t = 0.0f64;
        let mut interval = tokio::time::interval(tick);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
        const ALPHABET: &[u8; 64] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";
        let mut text = String::with_capacity(1000);
        while !*stop.borrow() {
            interval.tick().await;
            let mut batch = String::with_capacity(per_tick + 1100);
            while batch.len() < per_tick {
                t += 0.001;
                text.clear();
                for _ in 0..1000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    text.push(char::from(ALPHABET[(x & 63) as usize]));
                }
                batch.push_str(&format!("[{t:.3},\"o\",\"{text}\\r\\n\"]\n"));
            }
            sent += batch.len() as u64;
            pending.push(sent, Instant::now());
            if tx.send(Ok(batch.into_bytes())).await.is_err() {
                break;
            }
        }
    } else {
        let _ = stop.changed().await;
    }
    drop(tx);
    let mut seen = acks.await.context("ack reader")?;
    seen.sent = sent;
    Ok(seen)
}

/// A small queue of (offset, sent at) shared by a sender and its ack reader.
mod parking_lot_free {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Default)]
    pub(super) struct Queue(Mutex<VecDeque<(u64, Instant)>>);

    impl Queue {
        pub(super) fn push(&self, offset: u64, at: Instant) {
            if let Ok(mut q) = self.0.lock() {
                q.push_back((offset, at));
            }
        }

        /// Latencies (µs) of the writes an ack of `n` bytes covers.
        pub(super) fn take_through(&self, n: u64, now: Instant) -> Vec<u64> {
            let mut out = Vec::new();
            if let Ok(mut q) = self.0.lock() {
                while q.front().is_some_and(|(o, _)| *o <= n) {
                    if let Some((_, at)) = q.pop_front() {
                        out.push(now.duration_since(at).as_micros() as u64);
                    }
                }
            }
            out
        }
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Lifts the open-file limit to its hard limit (one socket per recording).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs the benchmark.
pub async fn run(a: RecorderArgs) -> anyhow::Result<()> {
    ensure!(a.duration > 0.0, "--duration must be positive");
    raise_nofile();
    println!("{}", Machine::detect().render());
    let exe = tally_exe()?;
    let recorder = format!("127.0.0.1:{}", free_port()?);
    let mut server = TallyServer::spawn_with(
        &exe,
        a.work_dir.as_deref(),
        &[
            "--recorder-listen",
            &recorder,
            "--recorder-allow",
            "127.0.0.0/8",
        ],
    )
    .await?;
    let pid = server.pid.context("no server pid")?;
    let n = a.idle + a.busy;
    let gate = Arc::new(tokio::sync::Barrier::new(n + 1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let rate = if i < a.busy { a.rate } else { 0 };
        tasks.push(tokio::spawn(one(
            recorder.clone(),
            i,
            rate,
            stop_rx.clone(),
            gate.clone(),
        )));
    }
    // Everyone connected (or failed): the measured window starts.
    let opened = tokio::time::timeout(Duration::from_secs(30), gate.wait()).await;
    ensure!(
        opened.is_ok(),
        "not every recording was opened within 30 s; server log:\n{}",
        server.log_tail()
    );
    let rss_open = proc_status_bytes(pid, "VmRSS").unwrap_or(0);
    let cpu0 = proc_cpu_ticks(pid).unwrap_or(0);
    let t0 = Instant::now();
    let mut rss_peak = 0;
    while t0.elapsed() < Duration::from_secs_f64(a.duration) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_peak = rss_peak.max(proc_status_bytes(pid, "VmRSS").unwrap_or(0));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_pct =
        (proc_cpu_ticks(pid).unwrap_or(0) - cpu0) as f64 / clock_ticks_per_sec() / secs * 100.0;
    // The senders end their recordings; their last acks come after.
    stop_tx.send_replace(true);
    let mut lat = Vec::new();
    let (mut idle_gap, mut sent, mut acked, mut errors) = (0u64, 0u64, 0u64, Vec::new());
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok(s)) => {
                if i < a.busy {
                    lat.extend(s.latencies);
                } else {
                    idle_gap = idle_gap.max(s.longest_gap);
                }
                sent += s.sent;
                acked += s.acked;
                if let Some(e) = s.error {
                    errors.push(e);
                }
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    lat.sort_unstable();
    let data = server.data_dir.clone().context("no data dir")?;
    let disk = dir_bytes(&data.join("store"));
    println!("## tally bench recorder");
    println!(
        "recordings: {} idle + {} busy at {} B/s each, one h2c connection each, {secs:.0} s",
        a.idle,
        a.busy,
        fmt_count(a.rate as f64)
    );
    println!("server CPU: {cpu_pct:.0} % of a core");
    println!(
        "server RSS: {} with every recording open, {} peak",
        fmt_bytes(rss_open),
        fmt_bytes(rss_peak)
    );
    println!(
        "ack latency (busy, write to stored): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} writes)",
        percentile(&lat, 50.0) as f64 / 1000.0,
        percentile(&lat, 99.0) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        lat.len()
    );
    println!(
        "idle recordings: longest gap between acks {:.1} s (tailscaled gives up at 30 s)",
        idle_gap as f64 / 1e6
    );
    println!(
        "busy throughput: {} sent in all, {} acknowledged ({:.1} MB/s stored)",
        fmt_bytes(sent),
        fmt_bytes(acked),
        acked as f64 / 1e6 / secs
    );
    println!(
        "bytes on disk (store): {} for {} of raw .cast ({:.2}x)",
        fmt_bytes(disk),
        fmt_bytes(acked),
        disk as f64 / acked.max(1) as f64
    );
    if !errors.is_empty() {
        println!("errors: {} (first: {})", errors.len(), errors[0]);
    }

    // 2. Keystroke echo.
    let base = server.base.clone();
    let key = server.key.clone();
    let agent_dir = crate::common::temp_dir_in(a.work_dir.as_deref(), "tally-bench-agent-")?;
    let mut agent = start_agent(&exe, &base, &key, agent_dir.path()).await?;
    let keys = a.keystrokes;
    let exe2 = exe.clone();
    let dir = agent_dir.path().to_owned();
    let (plain, recorded) = tokio::task::spawn_blocking(move || {
        let plain = echo_latencies(&["sh", "-c", "stty raw -echo; exec cat"], keys)?;
        let exe = exe2.to_string_lossy().into_owned();
        let d = dir.to_string_lossy().into_owned();
        let recorded = echo_latencies(
            &[
                &exe,
                "record",
                "--data-dir",
                &d,
                "--",
                "sh",
                "-c",
                "stty raw -echo; exec cat",
            ],
            keys,
        )?;
        Ok::<_, anyhow::Error>((plain, recorded))
    })
    .await
    .context("echo thread")??;
    let show = |name: &str, v: &[u64]| {
        println!(
            "keystroke echo {name}: p50 {:.0} µs, p99 {:.0} µs ({} keystrokes)",
            percentile(v, 50.0) as f64,
            percentile(v, 99.0) as f64,
            v.len()
        );
    };
    show("through cat alone", &plain);
    show("under tally record", &recorded);
    println!(
        "tally record overhead per keystroke: p50 +{:.0} µs, p99 +{:.0} µs",
        percentile(&recorded, 50.0) as f64 - percentile(&plain, 50.0) as f64,
        percentile(&recorded, 99.0) as f64 - percentile(&plain, 99.0) as f64
    );
    let _ = agent.kill().await;
    server.stop().await?;
    Ok(())
}

/// Starts `tally agent` registered with a fresh auth key; returns once it
/// is registered.
async fn start_agent(
    exe: &Path,
    base: &str,
    key: &str,
    dir: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .post(format!("{base}/api/v2/tailnet/-/keys"))
        .bearer_auth(key)
        .json(&serde_json::json!({ "capabilities": { "devices": { "create": { "reusable": true } } } }))
        .send()
        .await?
        .json()
        .await?;
    let auth = v["key"].as_str().context("no auth key")?.to_owned();
    let mut child = tokio::process::Command::new(exe)
        .args(["agent", "--server", base, "--no-stdin", "--auth-key", &auth])
        .arg("--data-dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start tally agent")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let registered = async {
        while let Some(l) = lines.next_line().await? {
            if l.starts_with("tally agent registered") {
                return Ok::<_, anyhow::Error>(());
            }
        }
        bail!("the agent exited before registering")
    };
    tokio::time::timeout(Duration::from_secs(60), registered)
        .await
        .context("the agent did not register within 60 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

/// Runs `argv` under a pseudo-terminal and measures, `n` times, the time
/// from writing one byte to reading it back (µs), sorted.
fn echo_latencies(argv: &[&str], n: usize) -> anyhow::Result<Vec<u64>> {
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("openpty: {e}"))?;
    let mut cmd = CommandBuilder::new(argv[0]);
    cmd.args(&argv[1..]);
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("spawn {}: {e}", argv[0]))?;
    drop(pair.slave);
    let mut reader = std::io::BufReader::new(
        pair.master
            .try_clone_reader()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let mut writer = pair
        .master
        .take_writer()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Ready once a probe byte comes back (the terminal is raw by then).
    let read_until = |reader: &mut std::io::BufReader<Box<dyn Read + Send>>, want: u8| {
        let mut b = [0u8; 1];
        loop {
            reader.read_exact(&mut b)?;
            if b[0] == want {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        writer.write_all(b"#")?;
        writer.flush()?;
        if reader
            .fill_buf()
            .map(|b| b.contains(&b'#'))
            .unwrap_or(false)
        {
            let _ = read_until(&mut reader, b'#');
            break;
        }
        ensure!(Instant::now() < deadline, "{} never echoed", argv.join(" "));
    }
    // The first echo may come from the terminal before `stty raw -echo`
    // ran: let the set-up finish, then drain up to a marker.
    std::thread::sleep(Duration::from_secs(1));
    writer.write_all(b"!")?;
    writer.flush()?;
    read_until(&mut reader, b'!')?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let c = b'a' + (i % 26) as u8;
        let t = Instant::now();
        writer.write_all(&[c])?;
        writer.flush()?;
        read_until(&mut reader, c)?;
        out.push(t.elapsed().as_micros() as u64);
    }
    let _ = child.kill();
    let _ = child.wait();
    out.sort_unstable();
    Ok(out)
}
