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
        install_crypto();
        let http = reqwest::Client::builder()
            .build()
            .context("cannot build HTTP client")?;
        Ok(Self {
            http,
            base: args.server.trim_end_matches('/').to_owned(),
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
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the server at {} ({e}); is `tally server` running? set --server or TALLY_SERVER", self.base)
        })?;
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
