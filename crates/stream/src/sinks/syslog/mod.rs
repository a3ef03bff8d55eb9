//! Syslog: RFC 5424 messages over TCP with TLS (RFC 5425), octet-counted
//! framing (`<length> SP <message>`), the destination Tailscale's users ask
//! for (rsyslog, syslog-ng, Wazuh, any SIEM's syslog input).
//!
//! - URL: `syslog+tls://host[:port]` (port 6514 by default); plain
//!   `syslog+tcp://host[:port]` (port 601) only to loopback and private
//!   addresses, like `http://`. A private CA is given in `caCertificate`
//!   (PEM); otherwise the system's roots are trusted.
//! - One message per entry: `<PRI>1 TIMESTAMP tally tally - MSGID
//!   [tally@32473 ...] MSG`. PRI is facility 13 (log audit) with severity
//!   6 (informational), or the alert's severity for alerts; TIMESTAMP is
//!   the entry's receive time; MSGID the log type; the structured data
//!   element `tally@32473` (the documentation enterprise number of
//!   RFC 5612) carries the log type, the store position and every
//!   top-level scalar field of the entry; MSG is the entry as JSON.
//! - Delivery: syslog over TCP has no acknowledgement, so a batch counts
//!   as confirmed once written and flushed to the socket; a connection
//!   found closed or failing is reopened and the whole batch sent again
//!   (at least once up to the receiver's own buffering). Receivers must
//!   accept messages as large as the entries (rsyslog: `$MaxMessageSize`).

mod encoder;

pub use encoder::{SD_ID, message};

use super::{Delivery, Entry, SinkError};
use crate::config::{ConfigError, LogType};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes written per flush.
pub const MAX_WRITE: usize = 1 << 20;
/// Time to connect and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one write may take (a receiver that stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A syslog receiver.
pub struct Syslog {
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    log_type: LogType,
    conn: tokio::sync::Mutex<Option<Box<dyn Stream>>>,
}

/// The TLS client configuration: `ca_pem`'s certificates, or the system's
/// roots when empty.
fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if ca_pem.trim().is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            return Err(ConfigError(
                "this host has no trusted CA certificates; give the receiver's CA in caCertificate"
                    .into(),
            ));
        }
    } else {
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let c =
                c.map_err(|e| ConfigError(format!("caCertificate is not a PEM certificate: {e}")))?;
            roots.add(c).map_err(|e| {
                ConfigError(format!("caCertificate holds an unusable certificate: {e}"))
            })?;
        }
        if roots.is_empty() {
            return Err(ConfigError("caCertificate holds no PEM certificate".into()));
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl Syslog {
    /// A receiver at `url` (`syslog+tls://` or `syslog+tcp://`, checked by
    /// the configuration), trusting `ca_pem` (or the system's roots).
    pub fn new(url: &reqwest::Url, ca_pem: &str, log_type: LogType) -> Result<Self, ConfigError> {
        let host = url
            .host_str()
            .ok_or_else(|| ConfigError(format!("url {url} has no host")))?
            .trim_matches(['[', ']'])
            .to_owned();
        let tls = url.scheme() == "syslog+tls";
        let port = url.port().unwrap_or(if tls { 6514 } else { 601 });
        let tls = if tls {
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                ca_pem,
            )?)))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            tls,
            log_type,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, String> {
        let addr = self.addr();
        let go = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot reach syslog receiver {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn Stream>);
            };
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| format!("{}: not a TLS server name: {e}", self.host))?;
            let s = tls.connect(name, tcp).await.map_err(|e| {
                format!(
                    "TLS handshake with syslog receiver {addr} failed: {e}{}",
                    if e.to_string().contains("certificate") {
                        " (a private CA goes in caCertificate)"
                    } else {
                        ""
                    }
                )
            })?;
            Ok(Box::new(s) as Box<dyn Stream>)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, go)
            .await
            .map_err(|_| format!("connecting to syslog receiver {addr} timed out"))?
    }

    /// Writes every entry; Ok once all are flushed to the receiver.
    pub async fn deliver(&self, entries: &[Entry]) -> Result<Delivery, SinkError> {
        let mut conn = self.conn.lock().await;
        let mut done = Delivery::default();
        let fail = |message: String, done: Delivery| SinkError {
            message,
            retry_after: None,
            delivered: done,
        };
        // A receiver that closed the connection since the last batch: a
        // read that is ready says so (EOF or error); nothing is expected.
        if let Some(c) = conn.as_mut() {
            let mut probe = [0u8; 64];
            if let Ok(r) = tokio::time::timeout(Duration::ZERO, c.read(&mut probe)).await
                && !matches!(r, Ok(n) if n > 0)
            {
                *conn = None;
            }
        }
        if conn.is_none() {
            *conn = Some(self.connect().await.map_err(|m| fail(m, done))?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(fail("no connection".into(), done));
        };
        let mut buf = Vec::with_capacity(MAX_WRITE);
        let mut i = 0;
        while i < entries.len() {
            buf.clear();
            while i < entries.len() && (buf.is_empty() || buf.len() < MAX_WRITE) {
                let m = message(self.log_type, &entries[i]);
                buf.extend_from_slice(m.len().to_string().as_bytes());
                buf.push(b' ');
                buf.extend_from_slice(&m);
                i += 1;
            }
            let write = async {
                c.write_all(&buf).await?;
                c.flush().await
            };
            let r = tokio::time::timeout(WRITE_TIMEOUT, write).await;
            let err = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("writing to syslog receiver {}: {e}", self.addr())),
                Err(_) => Some(format!(
                    "syslog receiver {} stopped reading ({} s)",
                    self.addr(),
                    WRITE_TIMEOUT.as_secs()
                )),
            };
            if let Some(m) = err {
                *conn = None;
                return Err(fail(m, done));
            }
            done.requests += 1;
            done.bytes += buf.len() as u64;
            done.max_body = done.max_body.max(buf.len() as u64);
        }
        Ok(done)
    }
}
