//! A local syslog listener (`--syslog-listen ADDR`): RFC 5424 and RFC 3164
//! messages over UDP (one per datagram) and TCP (RFC 6587: octet counting
//! or one message per line) on the same address, so rsyslog, journald's
//! forwarder or an appliance on the node can send into the agent's disk
//! queue.
//!
//! Each message becomes one entry (more, as numbered `part`s, when its text
//! is longer than an entry holds): `{"source":"syslog","text":MSG,
//! "v":N,"syslog":{...}}` where `syslog` carries the facility, severity,
//! hostname, app name, process ID, message ID, the message's own
//! timestamp, the structured data and the sender's address. A TCP message
//! is acknowledged by nothing (syslog has no acks), but it is read only as
//! fast as the queue takes it, and a sender that breaks the framing is
//! cut off with a note in the node's log.

use std::net::SocketAddr;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::entry::split_text;
use crate::error::AgentError;
use crate::writer::{Item, WriteRequest};

/// Source name of syslog entries.
pub const SYSLOG_SOURCE: &str = "syslog";
/// Largest message accepted over TCP (octet-counted or one line); a
/// longer one cuts the connection, noted in the node's log.
const MAX_TCP_MESSAGE: usize = 1 << 20;
/// Largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Escaped text bytes per entry (the rest of an entry is its fields).
const TEXT_BUDGET: usize = 200 * 1024;
/// Concurrent TCP senders.
const MAX_CONNECTIONS: usize = 256;

/// The bound sockets of the listener.
pub(crate) struct Listener {
    udp: UdpSocket,
    tcp: TcpListener,
}

/// Binds UDP and TCP on `addr` (both, or neither).
pub(crate) async fn bind(addr: SocketAddr) -> Result<Listener, AgentError> {
    let what = |proto: &str, e: std::io::Error| {
        AgentError::Config(format!(
            "--syslog-listen {addr}: cannot listen on {proto}: {e}{}",
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE; or use e.g. 127.0.0.1:5514)"
            } else {
                ""
            }
        ))
    };
    let tcp = TcpListener::bind(addr).await.map_err(|e| what("TCP", e))?;
    // The same port for UDP (port 0 picked one for TCP).
    let udp_addr = tcp.local_addr().map_err(|e| what("TCP", e))?;
    let udp = UdpSocket::bind(udp_addr)
        .await
        .map_err(|e| what("UDP", e))?;
    Ok(Listener { udp, tcp })
}

impl Listener {
    /// The address both sockets listen on.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr().ok()
    }
}

/// Serves both sockets until `stop`, queueing each message.
pub(crate) async fn serve(
    listener: Listener,
    tx: mpsc::Sender<WriteRequest>,
    stop: CancellationToken,
) {
    let Listener { udp, tcp } = listener;
    let mut conns = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            got = udp.recv_from(&mut buf) => match got {
                Ok((n, peer)) => {
                    let text = trim_frame(&buf[..n]);
                    if !text.is_empty() && !queue(&tx, text, peer, "udp").await {
                        break;
                    }
                }
                Err(e) => tracing::warn!("syslog UDP receive failed: {e}"),
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) if conns.len() < MAX_CONNECTIONS => {
                    conns.spawn(read_tcp(stream, peer, tx.clone(), stop.clone()));
                }
                Ok((_, peer)) => tracing::warn!(%peer, "syslog: {MAX_CONNECTIONS} senders connected already; refused one"),
                Err(e) => tracing::warn!("syslog TCP accept failed: {e}"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Reads one TCP sender: octet-counted frames (`LEN SP MSG`) or lines.
async fn read_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<WriteRequest>,
    stop: CancellationToken,
) {
    let mut reader = BufReader::new(stream);
    let mut frame = Vec::new();
    loop {
        let got = tokio::select! {
            () = stop.cancelled() => return,
            got = next_frame(&mut reader, &mut frame) => got,
        };
        match got {
            Ok(true) => {
                let text = trim_frame(&frame);
                if !text.is_empty() && !queue(&tx, text, peer, "tcp").await {
                    return;
                }
            }
            Ok(false) => return,
            Err(why) => {
                crate::writer::note(&tx, format!("syslog sender {peer} cut off: {why}")).await;
                return;
            }
        }
    }
}

/// Reads the next frame into `frame`: `Ok(false)` at a clean end.
async fn next_frame(
    reader: &mut BufReader<TcpStream>,
    frame: &mut Vec<u8>,
) -> Result<bool, String> {
    frame.clear();
    let first = match reader.fill_buf().await {
        Ok([]) => return Ok(false),
        Ok(b) => b[0],
        Err(e) => return Err(e.to_string()),
    };
    if first.is_ascii_digit() {
        // Octet counting (RFC 6587 3.4.1): "LEN SP MSG".
        let mut len = Vec::new();
        reader
            .read_until(b' ', &mut len)
            .await
            .map_err(|e| e.to_string())?;
        let digits = std::str::from_utf8(len.strip_suffix(b" ").unwrap_or(&len))
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or("an octet count that is not a number")?;
        if digits > MAX_TCP_MESSAGE {
            return Err(format!(
                "a message of {digits} bytes (at most {MAX_TCP_MESSAGE})"
            ));
        }
        frame.resize(digits, 0);
        reader
            .read_exact(frame)
            .await
            .map_err(|e| format!("a frame cut short: {e}"))?;
        return Ok(true);
    }
    // Non-transparent framing: up to LF.
    let mut limited = (&mut *reader).take(MAX_TCP_MESSAGE as u64 + 1);
    limited
        .read_until(b'\n', frame)
        .await
        .map_err(|e| e.to_string())?;
    if frame.len() > MAX_TCP_MESSAGE {
        return Err(format!("a line over {MAX_TCP_MESSAGE} bytes"));
    }
    Ok(!frame.is_empty())
}

/// The frame without trailing line endings and NULs.
fn trim_frame(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r' | b'\0'))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Parses and queues one message; `false` once the writer is gone.
async fn queue(
    tx: &mpsc::Sender<WriteRequest>,
    bytes: &[u8],
    peer: SocketAddr,
    transport: &str,
) -> bool {
    let items = entries(bytes, peer, transport)
        .into_iter()
        .map(Item::Record)
        .collect();
    tx.send(WriteRequest { items, reply: None }).await.is_ok()
}

/// The entries (JSON objects without `logtail`) of one message.
pub(crate) fn entries(bytes: &[u8], peer: SocketAddr, transport: &str) -> Vec<Vec<u8>> {
    let (text, invalid_utf8) = match std::str::from_utf8(bytes) {
        Ok(s) => (std::borrow::Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(bytes), true),
    };
    let msg = syslog_loose::parse_message(&text, syslog_loose::Variant::Either);
    let mut fields = Map::new();
    fields.insert(
        "protocol".into(),
        match msg.protocol {
            syslog_loose::Protocol::RFC3164 => "rfc3164".into(),
            syslog_loose::Protocol::RFC5424(_) => "rfc5424".into(),
        },
    );
    if let Some(f) = msg.facility {
        fields.insert("facility".into(), f.as_str().into());
    }
    if let Some(s) = msg.severity {
        fields.insert("severity".into(), s.as_str().into());
    }
    if let Some(t) = msg.timestamp {
        fields.insert("time".into(), t.to_rfc3339().into());
    }
    for (key, value) in [
        ("hostname", msg.hostname),
        ("appname", msg.appname),
        ("msgid", msg.msgid),
    ] {
        if let Some(v) = value {
            fields.insert(key.into(), v.into());
        }
    }
    if let Some(p) = &msg.procid {
        fields.insert("procid".into(), p.to_string().into());
    }
    if !msg.structured_data.is_empty() {
        let sd: Map<String, Value> = msg
            .structured_data
            .iter()
            .map(|e| {
                let params: Map<String, Value> = e
                    .params()
                    .map(|(k, v)| (k.to_string(), Value::from(v.to_string())))
                    .collect();
                (e.id.to_string(), Value::Object(params))
            })
            .collect();
        fields.insert("sd".into(), Value::Object(sd));
    }
    fields.insert("peer".into(), peer.to_string().into());
    fields.insert("transport".into(), transport.into());
    // Severity as the logtail verbosity: emerg..info = 0, debug = 1.
    let v = msg
        .severity
        .map(|s| u32::from(matches!(s, syslog_loose::SyslogSeverity::SEV_DEBUG)));
    let fields = Value::Object(fields);
    let pieces = split_text(msg.msg, TEXT_BUDGET);
    let numbered = pieces.len() > 1;
    pieces
        .into_iter()
        .zip(1u32..)
        .map(|(piece, part)| {
            let mut entry = json!({
                "source": SYSLOG_SOURCE,
                "text": piece,
                "syslog": fields,
            });
            if let Some(v) = v {
                entry["v"] = v.into();
            }
            if numbered {
                entry["part"] = part.into();
            }
            if invalid_utf8 {
                entry["invalid_utf8"] = true.into();
            }
            serde_json::to_vec(&entry).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn one(msg: &str) -> Value {
        let e = entries(msg.as_bytes(), peer(), "udp");
        assert_eq!(e.len(), 1);
        serde_json::from_slice(&e[0]).unwrap()
    }

    #[test]
    fn rfc5424_fields_are_kept() {
        let v = one(
            "<34>1 2026-12-06T10:00:00.5Z web1 sshd 4242 ID47 [origin ip=\"10.0.0.1\"] 'su root' failed",
        );
        assert_eq!(v["text"], "'su root' failed");
        let s = &v["syslog"];
        assert_eq!(s["protocol"], "rfc5424");
        assert_eq!(s["facility"], "auth");
        assert_eq!(s["severity"], "crit");
        assert_eq!(s["hostname"], "web1");
        assert_eq!(s["appname"], "sshd");
        assert_eq!(s["procid"], "4242");
        assert_eq!(s["msgid"], "ID47");
        assert_eq!(s["sd"]["origin"]["ip"], "10.0.0.1");
        assert_eq!(v["v"], 0);
    }

    #[test]
    fn rfc3164_is_read_too() {
        let v = one("<13>Oct 11 22:14:15 mymachine su[77]: 'su root' failed for lonvick");
        assert_eq!(v["syslog"]["protocol"], "rfc3164");
        assert_eq!(v["syslog"]["hostname"], "mymachine");
        assert_eq!(v["syslog"]["appname"], "su");
        assert_eq!(v["syslog"]["procid"], "77");
        assert_eq!(v["syslog"]["severity"], "notice");
        assert_eq!(v["text"], "'su root' failed for lonvick");
    }

    #[test]
    fn garbage_and_huge_messages_are_kept_whole() {
        let v = one("no header at all \u{1b}[31m");
        assert_eq!(v["text"], "no header at all \u{1b}[31m");
        let bad = entries(b"<14>1 - - - - - \xff\xfe bytes", peer(), "tcp");
        let v: Value = serde_json::from_slice(&bad[0]).unwrap();
        assert_eq!(v["invalid_utf8"], true);
        let huge = format!("<14>1 - h app - - - {}", "x".repeat(500 * 1024));
        let parts = entries(huge.as_bytes(), peer(), "tcp");
        assert_eq!(parts.len(), 3);
        let total: usize = parts
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(p).unwrap();
                v["text"].as_str().unwrap().len()
            })
            .sum();
        assert_eq!(total, 500 * 1024);
    }

    #[test]
    fn frames_lose_their_line_endings() {
        assert_eq!(trim_frame(b"abc\r\n\0"), b"abc");
        assert_eq!(trim_frame(b"\n"), b"");
    }
}
