//! HTTP client for the CLI verbs: finds the server, sends the API key, and
//! turns error responses into messages that say what to do.

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder, Response};

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(
        long,
        env = "TALLY_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API key (printed by `tally server` on first start).
    #[arg(
        long = "api-key",
        env = "TALLY_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,
    /// Trust only this CA certificate (PEM) for an https server with a
    /// private CA (default: the system's roots).
    #[arg(
        long = "ca-cert",
        env = "TALLY_CA_CERT",
        value_name = "PEM",
        global = true
    )]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// Checks a `--server` value: an `http://` or `https://` URL with a host,
/// with a message saying what is wrong otherwise.
pub fn check_server_url(server: &str) -> anyhow::Result<String> {
    let trimmed = server.trim().trim_end_matches('/');
    let hint = "give the whole URL, e.g. --server http://127.0.0.1:8080 or TALLY_SERVER=https://tally.example.com";
    if trimmed.is_empty() {
        bail!("the server URL is empty; {hint}");
    }
    if !trimmed.contains("://") {
        bail!("the server URL {trimmed:?} has no scheme; {hint}");
    }
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| anyhow::anyhow!("the server URL {trimmed:?} is not a URL ({e}); {hint}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!(
            "the server URL {trimmed:?} has scheme {:?}; Tally speaks http:// or https://",
            url.scheme()
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("the server URL {trimmed:?} has no host; {hint}");
    }
    Ok(trimmed.to_owned())
}

/// The HTTP client the CLI verbs use: rustls, trusting `ca_cert` only
/// when given (a PEM bundle), the system's roots otherwise.
pub fn http_client(ca_cert: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    install_crypto();
    let mut builder =
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the CA certificate {} (--ca-cert, TALLY_CA_CERT)",
                path.display()
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
        if certs.is_empty() {
            bail!(
                "{} holds no PEM certificate (--ca-cert, TALLY_CA_CERT)",
                path.display()
            );
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().context("cannot build the HTTP client")
}

/// Says why a request could not reach the server: a TLS failure named
/// (unknown issuer, name mismatch, expired), a refused connection, or the
/// error itself.
pub fn unreachable(base: &str, e: &reqwest::Error) -> anyhow::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return anyhow::anyhow!("TLS with {base} failed: {}", tls_reason(tls));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // io::Error's source() skips the error it wraps: look inside,
            // through io::Errors wrapping io::Errors (hyper's connector).
            let mut inner = io.get_ref();
            while let Some(i) = inner {
                if let Some(tls) = i.downcast_ref::<rustls::Error>() {
                    return anyhow::anyhow!("TLS with {base} failed: {}", tls_reason(tls));
                }
                inner = i.downcast_ref::<std::io::Error>().and_then(|e| e.get_ref());
            }
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return anyhow::anyhow!(
                    "cannot reach the server at {base}: connection refused; is `tally server` running there? set --server or TALLY_SERVER"
                );
            }
        }
        source = err.source();
    }
    if e.is_timeout() {
        return anyhow::anyhow!(
            "the server at {base} did not answer in time ({e}); check the address and the network"
        );
    }
    anyhow::anyhow!(
        "cannot reach the server at {base} ({e}); is `tally server` running? set --server or TALLY_SERVER"
    )
}

/// What a rustls error means for the user, and what to do.
fn tls_reason(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "the server's certificate is issued by a CA this client does not trust; for a private CA pass --ca-cert PEM or set TALLY_CA_CERT".into(),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => "the server's certificate is not valid for this host name; use the name the certificate was issued for in --server".into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "the server's certificate has expired; renew it on the server".into(),
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "the server's certificate is not valid yet; check the clocks".into(),
        rustls::Error::InvalidCertificate(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => "the server's certificate is a CA certificate used as the server's own (a self-signed certificate with CA:TRUE); make a CA and a server certificate it signs, and pass the CA with --ca-cert".into(),
        rustls::Error::InvalidCertificate(other) => format!("the server's certificate was refused ({other:?}); for a private CA pass --ca-cert PEM or set TALLY_CA_CERT"),
        other => format!("{other}; is the server speaking https? (use http:// for a server without --tls-cert)"),
    }
}

/// Installs the rustls crypto provider once per process.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A configured client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    /// The server's URL (no trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Builds a client from the command-line arguments.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let base = check_server_url(&args.server)?;
        let http = http_client(args.ca_cert.as_deref())?;
        Ok(Self {
            http,
            base,
            key: args.api_key.clone(),
        })
    }

    /// A request to `path` with the API key attached.
    pub fn request(&self, method: Method, path: &str) -> anyhow::Result<RequestBuilder> {
        let Some(key) = &self.key else {
            bail!(
                "no API key: set TALLY_API_KEY (the server printed one on first start) or pass --api-key"
            );
        };
        Ok(self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key))
    }

    /// Sends a request and checks the status, with an actionable error.
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let resp = req.send().await.map_err(|e| unreachable(&self.base, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        bail!("server answered {status}: {msg}")
    }

    /// GET returning JSON.
    pub async fn get_json(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .send(self.request(Method::GET, path)?.query(query))
            .await?;
        resp.json()
            .await
            .context("server sent a response that is not JSON")
    }

    /// POST a JSON body, returning JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .send(self.request(Method::POST, path)?.json(body))
            .await?;
        resp.json()
            .await
            .context("server sent a response that is not JSON")
    }
}
