//! `tally record -- COMMAND...`: runs a command (or the user's `$SHELL`)
//! under a pseudo-terminal, passing input and output through unchanged, and
//! records its output as an asciicast v2 stream through this node's agent:
//! whole lines grouped in chunks of at most 64 KiB, then an end record, the
//! shapes the recorder stores. The agent fsyncs them in its recordings queue
//! (`<data-dir>/recording-queue/`) and uploads them with the node's private
//! ID to the `recordings` collection, so a server outage loses nothing and
//! the entries' identity `(proc_id, proc_seq)` makes retries land once.
//!
//! Fail-open by default: when the recording cannot be queued, that is said
//! once on stderr and the command goes on. `--require-recording` fails
//! closed: the command does not start unless the agent takes recordings
//! and the server answers, and the session ends when recording fails.
//!
//! Input (`"i"` events) is recorded only with `--record-input`: it holds
//! passwords.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Most bytes of whole asciicast lines in one chunk (as the recorder).
const CHUNK_BYTES: usize = 64 << 10;
/// Longest time output waits before it is queued.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Exit status when `tally record` itself fails (the command did not run,
/// or was ended because recording failed).
const OWN_FAILURE: u8 = 125;

/// Record a terminal session: run COMMAND (default: $SHELL) under a
/// pseudo-terminal and upload its output as an asciicast recording through
/// this node's agent (`tally recordings list` shows it).
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The Tally server the node's agent uploads to; with
    /// --require-recording it must answer before the command starts
    /// (default: the agent's own server)
    #[arg(long, env = "TALLY_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// The data directory of this node's running agent (its socket);
    /// the agent's default state directory unless given
    #[arg(
        long,
        env = "TALLY_AGENT_DATA_DIR",
        value_name = "DIR",
        default_value_os_t = crate::agent_cmd::default_data_dir()
    )]
    pub data_dir: PathBuf,

    /// Also record what is typed ("i" events); off by default because
    /// input holds passwords
    #[arg(long)]
    pub record_input: bool,

    /// Fail closed: do not start the command unless the agent takes
    /// recordings and the server answers, and end the session if recording
    /// fails midway
    #[arg(long)]
    pub require_recording: bool,

    /// The command and its arguments (after --); default: $SHELL
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What the PTY threads and the signal handler tell the recorder.
enum Event {
    /// `"o"` (output) or `"i"` (input) bytes at a time since the start.
    Data(f64, &'static str, Vec<u8>),
    /// The terminal was resized.
    Resize(f64, u16, u16),
    /// The output ended (the command exited and its terminal closed).
    Eof,
}

/// The terminal's size (columns, rows), when stdout or stdin is one.
fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// Puts the real terminal (stdin) in raw mode; restores it when dropped.
struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    fn enter() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self { saved: None };
        }
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return Self { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return Self { saved: None };
            }
            Self { saved: Some(saved) }
        }
    }

    fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            // SAFETY: restores the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The user running the command.
fn local_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or null.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    String::new()
}

/// Text of `bytes`, keeping an incomplete UTF-8 sequence at its end in
/// `carry` for the next read.
fn take_utf8(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    carry.extend_from_slice(bytes);
    let cut = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => carry.len(),
    };
    let rest = carry.split_off(cut);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

/// Builds the recording's chunks and end record.
struct Chunker {
    id: String,
    seq: u64,
    offset: u64,
    pending: String,
}

impl Chunker {
    fn new(header: &Value) -> Self {
        let mut c = Self {
            id: format!("t{}", hex_id()),
            seq: 0,
            offset: 0,
            pending: String::new(),
        };
        c.line(header.to_string());
        c
    }

    fn line(&mut self, line: String) {
        self.pending.push_str(&line);
        self.pending.push('\n');
    }

    fn event(&mut self, t: f64, code: &str, data: &str) {
        self.line(json!([(t * 1e6).round() / 1e6, code, data]).to_string());
    }

    /// The pending whole lines as chunks of at most [`CHUNK_BYTES`] (a
    /// longer line is a chunk of its own).
    fn chunks(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while !self.pending.is_empty() {
            let cut = if self.pending.len() <= CHUNK_BYTES {
                self.pending.len()
            } else {
                let head = &self.pending.as_bytes()[..CHUNK_BYTES];
                match head.iter().rposition(|b| *b == b'\n') {
                    Some(p) => p + 1,
                    None => self
                        .pending
                        .find('\n')
                        .map_or(self.pending.len(), |p| p + 1),
                }
            };
            let data: String = self.pending.drain(..cut).collect();
            self.seq += 1;
            out.push(json!({
                "recording": self.id,
                "seq": self.seq,
                "offset": self.offset,
                "data": data,
            }));
            self.offset += data.len() as u64;
        }
        out
    }

    fn end(&mut self, complete: bool, reason: &str) -> Value {
        self.seq += 1;
        json!({
            "recording": self.id,
            "seq": self.seq,
            "end": true,
            "complete": complete,
            "bytes": self.offset,
            "reason": reason,
        })
    }
}

fn hex_id() -> String {
    rand::random::<[u8; 10]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that the server answers `/healthz`.
async fn probe_server(url: &str) -> anyhow::Result<()> {
    let url = format!("{}/healthz", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("the server does not answer at {url}"))?;
    if !resp.status().is_success() {
        bail!("the server answered {} at {url}", resp.status());
    }
    Ok(())
}

/// Runs `tally record`; the exit status is the command's.
pub async fn run(args: RecordArgs) -> ExitCode {
    match record(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tally record: {e:#}");
            ExitCode::from(OWN_FAILURE)
        }
    }
}

async fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let argv: Vec<String> = if args.command.is_empty() {
        vec![std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".to_owned())]
    } else {
        args.command.clone()
    };
    // The agent first: without it nothing is recorded.
    let agent = match tally_agent::RecordingClient::connect(&args.data_dir).await {
        Ok(c) => Some(c),
        Err(e) if args.require_recording => {
            bail!(
                "refusing to start {:?} (--require-recording): the recording cannot be queued: {e}. \
                 Start the node's agent (`tally agent --server URL --auth-key KEY`), or pass --data-dir to the one running",
                argv[0]
            );
        }
        Err(e) => {
            eprintln!("tally record: not recording this session: {e}");
            None
        }
    };
    if args.require_recording
        && let Some((_, hello)) = &agent
    {
        let server = args.server.clone().unwrap_or_else(|| hello.server.clone());
        if let Err(e) = probe_server(&server).await {
            bail!(
                "refusing to start {:?} (--require-recording): {e:#}. \
                 Start the server or check --server; without --require-recording the session would be queued by the agent and uploaded later",
                argv[0]
            );
        }
    }

    let (cols, rows) = terminal_size().unwrap_or((80, 24));
    let pty = native_pty_system();
    let pair = pty
        .openpty(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("cannot open a pseudo-terminal: {e}"))?;
    let mut cmd = CommandBuilder::new(&argv[0]);
    cmd.args(&argv[1..]);
    if let Ok(cwd) = std::env::current_dir() {
        cmd.cwd(cwd);
    }
    if std::env::var_os("TERM").is_none() {
        cmd.env("TERM", "xterm-256color");
    }
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", argv[0]))?;
    // The command holds the terminal now: its end closes the output.
    drop(pair.slave);
    let start = Instant::now();
    let mut raw = RawMode::enter();

    let (events_tx, events_rx) = mpsc::channel::<Event>(256);
    // Output: the pseudo-terminal to stdout, and to the recording.
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("cannot read the pseudo-terminal: {e}"))?;
    let out_tx = events_tx.clone();
    let recording = agent.is_some();
    let output = std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]).and_then(|_| stdout.flush());
                    if recording {
                        let t = start.elapsed().as_secs_f64();
                        if out_tx
                            .blocking_send(Event::Data(t, "o", buf[..n].to_vec()))
                            .is_err()
                        {
                            // The recorder stopped: pass output through only.
                            while let Ok(n) = reader.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                let _ = stdout.write_all(&buf[..n]).and_then(|_| stdout.flush());
                            }
                            break;
                        }
                    }
                }
            }
        }
        let _ = out_tx.blocking_send(Event::Eof);
    });
    // Input: stdin to the pseudo-terminal (and to the recording with
    // --record-input). The thread may stay blocked on stdin when the
    // command ends; the process exits anyway.
    let mut writer = pair
        .master
        .take_writer()
        .map_err(|e| anyhow::anyhow!("cannot write to the pseudo-terminal: {e}"))?;
    let in_tx = (recording && args.record_input).then(|| events_tx.clone());
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer
                        .write_all(&buf[..n])
                        .and_then(|_| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                    if let Some(tx) = &in_tx {
                        let t = start.elapsed().as_secs_f64();
                        let _ = tx.blocking_send(Event::Data(t, "i", buf[..n].to_vec()));
                    }
                }
            }
        }
    });
    // Resizes of the real terminal follow to the command's ("r" events).
    let master = pair.master;
    let resize_tx = events_tx.clone();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("cannot watch for terminal resizes (SIGWINCH)")?;
    let resizer = tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some((cols, rows)) = terminal_size() {
                let _ = master.resize(PtySize {
                    rows,
                    cols,
                    pixel_width: 0,
                    pixel_height: 0,
                });
                let t = start.elapsed().as_secs_f64();
                if resize_tx.send(Event::Resize(t, cols, rows)).await.is_err() {
                    break;
                }
            }
        }
    });
    drop(events_tx);

    // The command's end, from a thread (waiting blocks).
    let killer = child.clone_killer();
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });

    let header = {
        let hello = agent.as_ref().map(|(_, h)| h.clone()).unwrap_or_default();
        let mut env = serde_json::Map::new();
        for k in ["SHELL", "TERM"] {
            if let Ok(v) = std::env::var(k) {
                env.insert(k.into(), v.into());
            }
        }
        json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "env": env,
            "command": argv.join(" "),
            "srcNode": hello.node,
            "srcNodeID": hello.node_id,
            "localUser": local_user(),
            "recorder": "tally record",
            "recordsInput": args.record_input,
        })
    };
    let outcome = match agent {
        Some((client, _)) => {
            let mut killer = Some(killer);
            let require = args.require_recording;
            let failed = move || {
                if require && let Some(mut k) = killer.take() {
                    let _ = k.kill();
                }
            };
            pump(client, header, events_rx, require, failed).await
        }
        None => {
            drop(events_rx);
            Pumped::NotRecording
        }
    };
    let status = exit_rx.await;
    let _ = output.join();
    resizer.abort();
    raw.restore();
    match outcome {
        Pumped::Failed(why) if args.require_recording => {
            eprintln!(
                "tally record: the session was ended because recording failed (--require-recording): {why}"
            );
            return Ok(ExitCode::from(OWN_FAILURE));
        }
        _ => {}
    }
    let status = status
        .map_err(|_| anyhow::anyhow!("lost track of the command"))?
        .context("waiting for the command")?;
    Ok(ExitCode::from(
        u8::try_from(status.exit_code()).unwrap_or(u8::MAX),
    ))
}

/// How the recording ended.
enum Pumped {
    /// Recorded whole, end record queued.
    Queued,
    /// Nothing was recorded (no agent).
    NotRecording,
    /// Queueing failed midway (said once on stderr).
    Failed(String),
}

/// Turns events into asciicast lines and queues them in chunks until the
/// output ends; a failure is said once and `failed` is called.
async fn pump(
    mut client: tally_agent::RecordingClient,
    header: Value,
    mut events: mpsc::Receiver<Event>,
    require: bool,
    mut failed: impl FnMut(),
) -> Pumped {
    let mut chunker = Chunker::new(&header);
    let mut carry_o = Vec::new();
    let mut carry_i = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut error: Option<String> = None;
    let mut ended = false;
    let mut last_t = 0.0;
    while !ended {
        let flush = tokio::select! {
            e = events.recv() => {
                match e {
                    Some(Event::Data(t, code, bytes)) => {
                        last_t = t;
                        let carry = if code == "o" { &mut carry_o } else { &mut carry_i };
                        let text = take_utf8(carry, &bytes);
                        if !text.is_empty() {
                            chunker.event(t, code, &text);
                        }
                    }
                    Some(Event::Resize(t, cols, rows)) => {
                        last_t = t;
                        chunker.event(t, "r", &format!("{cols}x{rows}"));
                    }
                    Some(Event::Eof) | None => ended = true,
                }
                ended || chunker.pending.len() >= CHUNK_BYTES
            }
            _ = tick.tick() => true,
        };
        if !flush || error.is_some() {
            continue;
        }
        let mut records = chunker.chunks();
        if ended {
            for (code, carry) in [("o", &mut carry_o), ("i", &mut carry_i)] {
                if !carry.is_empty() {
                    let text = String::from_utf8_lossy(carry).into_owned();
                    carry.clear();
                    chunker.event(last_t, code, &text);
                }
            }
            records.extend(chunker.chunks());
            records.push(chunker.end(true, ""));
        }
        if records.is_empty() {
            continue;
        }
        for batch in records.chunks(64) {
            if let Err(e) = client.queue(batch).await {
                let why = e.to_string();
                if require {
                    eprintln!("\r\ntally record: recording failed: {why}; ending the session\r");
                } else {
                    eprintln!(
                        "\r\ntally record: recording stopped: {why}; the command goes on unrecorded\r"
                    );
                }
                failed();
                error = Some(why);
                break;
            }
        }
        if error.is_some() && !require {
            // Output keeps flowing through; nothing more is recorded.
            events.close();
        }
    }
    match error {
        Some(why) => Pumped::Failed(why),
        None => Pumped::Queued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_sequences_are_kept_for_the_next_read() {
        let mut carry = Vec::new();
        let e = "é".as_bytes();
        assert_eq!(take_utf8(&mut carry, &[b'a', e[0]]), "a");
        assert_eq!(take_utf8(&mut carry, &[e[1], b'b']), "éb");
        assert!(carry.is_empty());
        assert_eq!(take_utf8(&mut carry, b"\xff!"), "\u{fffd}!");
    }

    #[test]
    fn chunks_hold_whole_lines_within_the_limit() {
        let mut c = Chunker::new(&json!({"version": 2}));
        for i in 0..5000 {
            c.event(f64::from(i) / 10.0, "o", &"x".repeat(50));
        }
        let chunks = c.chunks();
        assert!(chunks.len() > 1);
        let mut offset = 0;
        for (i, ch) in chunks.iter().enumerate() {
            let data = ch["data"].as_str().unwrap();
            assert!(data.len() <= CHUNK_BYTES && data.ends_with('\n'));
            assert_eq!(ch["seq"], i as u64 + 1);
            assert_eq!(ch["offset"], offset);
            offset += data.len() as u64;
        }
        let end = c.end(true, "");
        assert_eq!(end["bytes"], offset);
        assert_eq!(end["seq"], chunks.len() as u64 + 1);
    }
}
