//! `LogstreamEndpointConfiguration`, exactly as Tailscale's API has it
//! (unknown fields refused), the log types (Tailscale's and Tally's) and
//! the checks a configuration must pass.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Which entries a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogType {
    /// Configuration audit events (`tailaudit`).
    Configuration,
    /// Network flow records (`tailtraffic`).
    Network,
    /// Tally: detection alerts (`alerts`).
    Alerts,
    /// Tally: reconciliation findings (`findings`).
    Findings,
    /// Tally: node logs of the collections a stream opts into (`logs`).
    Logs,
}

impl LogType {
    /// Every log type.
    pub const ALL: [LogType; 5] = [
        LogType::Configuration,
        LogType::Network,
        LogType::Alerts,
        LogType::Findings,
        LogType::Logs,
    ];

    /// The path segment (`configuration`, `network`, `alerts`, `findings`,
    /// `logs`).
    pub fn name(self) -> &'static str {
        match self {
            LogType::Configuration => "configuration",
            LogType::Network => "network",
            LogType::Alerts => "alerts",
            LogType::Findings => "findings",
            LogType::Logs => "logs",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<Self> {
        LogType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The store collection its entries are in (`logs`: the node-log
    /// collection streamed unless a stream names its own).
    pub fn collection(self) -> &'static str {
        use tally_proto::collection as c;
        match self {
            LogType::Configuration => c::AUDIT,
            LogType::Network => c::FLOWS,
            LogType::Alerts => c::ALERTS,
            LogType::Findings => c::FINDINGS,
            LogType::Logs => c::NODE_LOGS,
        }
    }
}

/// Where entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationType {
    /// Splunk HTTP Event Collector (`/services/collector/event`).
    #[default]
    Splunk,
    /// Elasticsearch `_bulk` into a data stream.
    Elastic,
    /// Panther HTTP source.
    Panther,
    /// Cribl Stream (HEC-compatible source).
    Cribl,
    /// Datadog logs intake (v2).
    Datadog,
    /// Axiom ingest.
    Axiom,
    /// Amazon S3 or S3-compatible storage (not yet delivered by Tally).
    S3,
    /// Google Cloud Storage (not yet delivered by Tally).
    Gcs,
    /// Tally: JSON batches signed with HMAC-SHA256.
    Webhook,
    /// Tally: RFC 5424 syslog over TLS (RFC 5425).
    Syslog,
}

impl DestinationType {
    /// An example of the url this destination takes.
    pub fn example_url(self) -> &'static str {
        match self {
            DestinationType::Splunk => "https://splunk.example.com:8088/services/collector/event",
            DestinationType::Cribl => "https://cribl.example.com:8088/services/collector/event",
            DestinationType::Elastic => {
                "https://elastic.example.com:9200/logs-tailscale-default/_bulk"
            }
            DestinationType::Panther => {
                "https://logs.example.runpanther.net/http/1b2c3d4e-0000-4000-8000-000000000000"
            }
            DestinationType::Datadog => "https://http-intake.logs.datadoghq.com/api/v2/logs",
            DestinationType::Axiom => "https://api.axiom.co/v1/datasets/tailscale/ingest",
            DestinationType::S3 => "https://s3.us-east-1.amazonaws.com",
            DestinationType::Gcs => "https://storage.googleapis.com",
            DestinationType::Webhook => "https://siem.example.com/tally",
            DestinationType::Syslog => "syslog+tls://siem.example.com:6514",
        }
    }

    /// What its `token` is, for messages.
    fn token_is(self) -> &'static str {
        match self {
            DestinationType::Splunk | DestinationType::Cribl => "the HEC token",
            DestinationType::Elastic => "the password or API key secret of user, for basic auth",
            DestinationType::Panther => "the HTTP source's bearer token",
            DestinationType::Datadog => "a Datadog API key, sent as DD-API-KEY",
            DestinationType::Axiom => "an Axiom API token that may ingest into the dataset",
            DestinationType::Webhook => "the key that signs each request",
            DestinationType::S3 | DestinationType::Gcs | DestinationType::Syslog => "not used",
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DestinationType::Splunk => "splunk",
            DestinationType::Elastic => "elastic",
            DestinationType::Panther => "panther",
            DestinationType::Cribl => "cribl",
            DestinationType::Datadog => "datadog",
            DestinationType::Axiom => "axiom",
            DestinationType::S3 => "s3",
            DestinationType::Gcs => "gcs",
            DestinationType::Webhook => "webhook",
            DestinationType::Syslog => "syslog",
        }
    }
}

/// Compression of request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None (the default).
    #[default]
    None,
    /// `Content-Encoding: zstd`.
    Zstd,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// How entries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Tailscale's JSON, as stored (the default).
    #[default]
    Native,
    /// OCSF events: 4001 Network Activity, 6003 API Activity, 2004
    /// Detection Finding.
    Ocsf,
}

impl Format {
    fn is_native(&self) -> bool {
        *self == Format::Native
    }
}

/// Tailscale's `LogstreamEndpointConfiguration` (camelCase JSON).
/// `token` and `s3SecretAccessKey` are write-only: [`EndpointConfig::redacted`]
/// drops them for answers and audit events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// Read-only: taken from the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_type: Option<String>,
    /// Where entries go.
    pub destination_type: DestinationType,
    /// The destination's URL.
    #[serde(default)]
    pub url: String,
    /// User (Elastic basic auth).
    #[serde(default)]
    pub user: String,
    /// Write-only secret (HEC token, bearer token, webhook signing key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Minutes between uploads (object stores); at most 1440.
    #[serde(default)]
    pub upload_period_minutes: u32,
    /// Body compression.
    #[serde(default)]
    pub compression_format: Compression,
    /// S3 bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_bucket: String,
    /// S3 region.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_region: String,
    /// S3 key prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_key_prefix: String,
    /// `accesskey` or `rolearn`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_authentication_type: String,
    /// S3 access key ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_access_key_id: String,
    /// Write-only S3 secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_secret_access_key: Option<String>,
    /// S3 role ARN.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_role_arn: String,
    /// S3 external ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub s3_external_id: String,
    /// GCS bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gcs_bucket: String,
    /// GCS key prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gcs_key_prefix: String,
    /// GCS scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gcs_scopes: Vec<String>,
    /// GCS credentials (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_credentials: Option<String>,
    /// Tally: the CA certificate (PEM) a destination with a private CA
    /// is verified against; the system's roots when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificate: String,
    /// Tally: `native` (Tailscale's JSON, the default) or `ocsf`.
    #[serde(default, skip_serializing_if = "Format::is_native")]
    pub format: Format,
    /// Tally, log type `logs` only: the node-log collections streamed
    /// (`tailnode` when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The secrets of a configuration (stored encrypted, never answered).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    /// `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `s3SecretAccessKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_secret_access_key: Option<String>,
    /// `gcsCredentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_credentials: Option<String>,
}

/// Whether `host` is loopback or a private (RFC 1918, CGNAT, ULA) address,
/// or `localhost`: where plain HTTP is allowed.
pub fn is_private_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() else {
        return false;
    };
    match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || "100.64.0.0/10"
                    .parse::<ipnet::Ipv4Net>()
                    .is_ok_and(|n| n.contains(&v))
        }
        IpAddr::V6(v) => v.is_loopback() || (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// A fixed service endpoint (AWS S3 in a region, GCS).
fn endpoint(url: &str) -> Result<reqwest::Url, ConfigError> {
    reqwest::Url::parse(url).map_err(|e| ConfigError(format!("{url}: {e}")))
}

impl EndpointConfig {
    /// Checks the configuration for `log_type`; returns the URL and
    /// whether it is unencrypted (plain HTTP to a private address).
    pub fn validate(&self) -> Result<(reqwest::Url, bool), ConfigError> {
        let t = self.destination_type;
        if self.upload_period_minutes > 1440 {
            return Err(ConfigError("uploadPeriodMinutes is at most 1440".into()));
        }
        match t {
            DestinationType::S3 => {
                crate::sinks::s3::validate(self)?;
                if self.url.is_empty() {
                    let region = if self.s3_region.is_empty() {
                        "us-east-1"
                    } else {
                        self.s3_region.as_str()
                    };
                    return Ok((
                        endpoint(&format!("https://s3.{region}.amazonaws.com/"))?,
                        false,
                    ));
                }
            }
            DestinationType::Gcs => {
                crate::sinks::gcs::validate(self)?;
                return Ok((endpoint("https://storage.googleapis.com/")?, false));
            }
            _ => {}
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            ConfigError(format!(
                "url {:?} is not a URL ({e}); give e.g. {}",
                self.url,
                t.example_url()
            ))
        })?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let syslog = t == DestinationType::Syslog;
        let plain = match url.scheme() {
            "https" if !syslog => false,
            "http" if !syslog && is_private_host(&host) => true,
            "syslog+tls" if syslog => false,
            "syslog+tcp" if syslog && is_private_host(&host) => true,
            "http" if !syslog => {
                return Err(ConfigError(format!(
                    "url {}: plain http is allowed only to loopback and private addresses; use https",
                    self.url
                )));
            }
            "syslog+tcp" if syslog => {
                return Err(ConfigError(format!(
                    "url {}: plain syslog+tcp is allowed only to loopback and private addresses; use syslog+tls://",
                    self.url
                )));
            }
            other if syslog => {
                return Err(ConfigError(format!(
                    "url scheme {other} is not supported for syslog; use syslog+tls://host:6514"
                )));
            }
            other => {
                return Err(ConfigError(format!(
                    "url scheme {other} is not supported for {}; use https",
                    t.name()
                )));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError(
                "put credentials in token (and user), not in the url".into(),
            ));
        }
        if host.is_empty() {
            return Err(ConfigError(format!("url {} has no host", self.url)));
        }
        let needs_token = !matches!(
            t,
            DestinationType::Syslog | DestinationType::S3 | DestinationType::Gcs
        );
        if needs_token && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError(format!(
                "{} needs a token ({})",
                t.name(),
                t.token_is()
            )));
        }
        match t {
            DestinationType::Syslog if self.compression_format != Compression::None => {
                return Err(ConfigError(
                    "syslog messages are not compressed: set compressionFormat to none".into(),
                ));
            }
            DestinationType::Elastic => self.validate_elastic(&url)?,
            DestinationType::Datadog if self.compression_format == Compression::Zstd => {
                return Err(ConfigError(
                    "datadog takes gzip, not zstd: set compressionFormat to gzip or none".into(),
                ));
            }
            _ => {}
        }
        Ok((url, plain))
    }

    /// How long an object-store destination gathers entries before it
    /// uploads them (`uploadPeriodMinutes`; `None`: it sends each batch as
    /// it is read).
    pub fn upload_period(&self) -> Option<std::time::Duration> {
        matches!(
            self.destination_type,
            DestinationType::S3 | DestinationType::Gcs
        )
        .then(|| std::time::Duration::from_secs(60 * u64::from(self.upload_period_minutes)))
    }

    /// Checks what depends on the log type: `collections` only for
    /// `logs`, never a collection with a log type of its own.
    pub fn validate_for(&self, log_type: LogType) -> Result<(), ConfigError> {
        if log_type != LogType::Logs {
            if !self.collections.is_empty() {
                return Err(ConfigError(format!(
                    "collections is for the logs log type only; {} streams its own collection",
                    log_type.name()
                )));
            }
            return Ok(());
        }
        for c in &self.collections {
            if tally_proto::collection::CollectionName::parse(c).is_err() {
                return Err(ConfigError(format!(
                    "collections: {c:?} is not a collection name ([a-zA-Z0-9-_.]+)"
                )));
            }
            if let Some(t) = LogType::ALL
                .into_iter()
                .find(|t| *t != LogType::Logs && t.collection() == c)
            {
                return Err(ConfigError(format!(
                    "collections: {c} is streamed by the {} log type",
                    t.name()
                )));
            }
            if tally_proto::collection::is_system(c) {
                return Err(ConfigError(format!(
                    "collections: {c} is a system collection"
                )));
            }
        }
        Ok(())
    }

    /// Elastic: a user, a url ending in `/<data-stream>/_bulk` with a
    /// usable answer, gzip at most.
    fn validate_elastic(&self, url: &reqwest::Url) -> Result<(), ConfigError> {
        let example = DestinationType::Elastic.example_url();
        if self.user.is_empty() {
            return Err(ConfigError(
                "elastic needs a user (with token as its password or API key secret; basic auth)"
                    .into(),
            ));
        }
        let mut segments = url.path().rsplit('/');
        let bulk = segments.next().unwrap_or_default();
        let stream = segments.next().unwrap_or_default();
        let stream_ok = !stream.is_empty()
            && !stream.starts_with(['_', '-', '+'])
            && !stream.starts_with(".ds-")
            && stream
                .chars()
                .all(|c| !c.is_ascii_uppercase() && !"\\*?\"<>|,#:% ".contains(c));
        if bulk != "_bulk" || !stream_ok {
            return Err(ConfigError(format!(
                "url {} must end in /<data-stream>/_bulk (a lower-case data stream name), e.g. {example}",
                url
            )));
        }
        if url.query_pairs().any(|(k, _)| k == "filter_path") {
            return Err(ConfigError(format!(
                "url {url}: filter_path would hide the per-entry answers; remove it"
            )));
        }
        if self.compression_format == Compression::Zstd {
            return Err(ConfigError(
                "elastic takes gzip, not zstd: set compressionFormat to gzip or none".into(),
            ));
        }
        Ok(())
    }

    /// The collections a stream of `log_type` reads.
    pub fn collections_for(&self, log_type: LogType) -> Vec<String> {
        if log_type == LogType::Logs && !self.collections.is_empty() {
            self.collections.clone()
        } else {
            vec![log_type.collection().to_owned()]
        }
    }

    /// The secrets, taken out of the configuration.
    pub fn take_secrets(&mut self) -> Secrets {
        Secrets {
            token: self.token.take(),
            s3_secret_access_key: self.s3_secret_access_key.take(),
            gcs_credentials: self.gcs_credentials.take(),
        }
    }

    /// Puts secrets back (to run the stream).
    pub fn with_secrets(mut self, s: Secrets) -> Self {
        self.token = s.token;
        self.s3_secret_access_key = s.s3_secret_access_key;
        self.gcs_credentials = s.gcs_credentials;
        self
    }

    /// The configuration without its write-only fields, as answered.
    pub fn redacted(&self, log_type: LogType) -> Self {
        let mut c = self.clone();
        c.take_secrets();
        c.log_type = Some(log_type.name().to_owned());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> Result<EndpointConfig, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn tailscale_fields_parse_and_unknown_ones_are_refused() {
        let c = cfg(serde_json::json!({
            "destinationType": "splunk",
            "url": "https://splunk.example.com/services/collector/event",
            "token": "t",
            "uploadPeriodMinutes": 0,
            "compressionFormat": "gzip",
        }))
        .expect("parses");
        assert!(c.validate().is_ok());
        assert!(cfg(serde_json::json!({"destinationType": "splunk", "colour": 1})).is_err());
        let r = c.redacted(LogType::Network);
        let v = serde_json::to_value(&r).expect("json");
        assert!(v.get("token").is_none(), "{v}");
        assert_eq!(v["logType"], "network");
    }

    #[test]
    fn plain_http_only_to_private_addresses() {
        let mut c = EndpointConfig {
            destination_type: DestinationType::Webhook,
            token: Some("k".into()),
            ..Default::default()
        };
        for (url, ok) in [
            ("http://127.0.0.1:9000/x", true),
            ("http://10.1.2.3/x", true),
            ("http://100.100.1.1/x", true),
            ("http://[::1]:9/x", true),
            ("http://siem.example.com/x", false),
            ("ftp://10.0.0.1/x", false),
            ("https://user:pw@siem.example.com/x", false),
            ("https://siem.example.com/x", true),
        ] {
            c.url = url.into();
            assert_eq!(c.validate().is_ok(), ok, "{url}: {:?}", c.validate());
        }
        c.url = "https://a.example/x".into();
        c.destination_type = DestinationType::S3;
        assert!(c.validate().unwrap_err().0.contains("s3Bucket"));
        c.s3_bucket = "b".into();
        c.s3_access_key_id = "id".into();
        c.s3_secret_access_key = Some("secret".into());
        c.url = "http://10.0.0.5:9000".into();
        assert_eq!(c.validate().map(|(_, plain)| plain), Ok(true));
        c.url = "http://s3.example.com".into();
        assert!(c.validate().is_err());
        c.url = String::new();
        let (url, plain) = c.validate().expect("AWS");
        assert_eq!(url.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!plain);
        c.s3_authentication_type = "rolearn".into();
        assert!(c.validate().unwrap_err().0.contains("accesskey"));
    }

    #[test]
    fn syslog_urls_are_tls_or_private() {
        let mut c = EndpointConfig {
            destination_type: DestinationType::Syslog,
            ..Default::default()
        };
        for (url, ok) in [
            ("syslog+tls://siem.example.com:6514", true),
            ("syslog+tcp://10.0.0.1:601", true),
            ("syslog+tcp://siem.example.com:601", false),
            ("https://siem.example.com/", false),
            ("syslog+tls://", false),
        ] {
            c.url = url.into();
            assert_eq!(c.validate().is_ok(), ok, "{url}: {:?}", c.validate());
        }
        c.url = "syslog+tls://siem.example.com".into();
        c.compression_format = Compression::Gzip;
        assert!(c.validate().unwrap_err().0.contains("compressionFormat"));
    }

    fn refusal(c: &EndpointConfig) -> String {
        c.validate().expect_err("refused").0
    }

    #[test]
    fn each_destination_says_what_it_needs() {
        for t in [
            DestinationType::Splunk,
            DestinationType::Cribl,
            DestinationType::Elastic,
            DestinationType::Panther,
            DestinationType::Datadog,
            DestinationType::Axiom,
            DestinationType::Webhook,
        ] {
            let mut c = EndpointConfig {
                destination_type: t,
                url: "not a url".into(),
                user: "tally".into(),
                token: Some("secret".into()),
                ..Default::default()
            };
            let e = refusal(&c);
            assert!(e.contains(t.example_url()), "{t:?}: {e}");
            c.url = t.example_url().into();
            assert!(c.validate().is_ok(), "{t:?}: {:?}", c.validate());
            c.token = None;
            assert!(refusal(&c).contains("needs a token"), "{t:?}");
        }
    }

    #[test]
    fn elastic_needs_a_user_and_a_data_stream_bulk_url() {
        let mut c = EndpointConfig {
            destination_type: DestinationType::Elastic,
            url: "https://es.example.com:9200/logs-tailscale-default/_bulk?pretty".into(),
            user: "tally".into(),
            token: Some("pw".into()),
            ..Default::default()
        };
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        c.url = "https://es.example.com/proxy/logs-x/_bulk".into();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        for url in [
            "https://es.example.com:9200/_bulk",
            "https://es.example.com:9200/logs/_doc",
            "https://es.example.com:9200/Logs/_bulk",
            "https://es.example.com:9200/_logs/_bulk",
            "https://es.example.com:9200/logs/_bulk/",
        ] {
            c.url = url.into();
            assert!(refusal(&c).contains("/<data-stream>/_bulk"), "{url}");
        }
        c.url = "https://es.example.com/logs/_bulk?filter_path=took".into();
        assert!(refusal(&c).contains("filter_path"));
        c.url = "https://es.example.com/logs/_bulk".into();
        c.compression_format = Compression::Zstd;
        assert!(refusal(&c).contains("gzip"));
        c.compression_format = Compression::Gzip;
        c.user.clear();
        assert!(refusal(&c).contains("needs a user"));
    }

    #[test]
    fn datadog_takes_gzip_not_zstd() {
        let mut c = EndpointConfig {
            destination_type: DestinationType::Datadog,
            url: DestinationType::Datadog.example_url().into(),
            token: Some("key".into()),
            compression_format: Compression::Zstd,
            ..Default::default()
        };
        assert!(refusal(&c).contains("gzip"));
        c.compression_format = Compression::Gzip;
        assert!(c.validate().is_ok());
    }
}
