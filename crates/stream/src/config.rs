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
}

impl LogType {
    /// Every log type.
    pub const ALL: [LogType; 4] = [
        LogType::Configuration,
        LogType::Network,
        LogType::Alerts,
        LogType::Findings,
    ];

    /// The path segment (`configuration`, `network`, `alerts`, `findings`).
    pub fn name(self) -> &'static str {
        match self {
            LogType::Configuration => "configuration",
            LogType::Network => "network",
            LogType::Alerts => "alerts",
            LogType::Findings => "findings",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<Self> {
        LogType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The store collection its entries are in.
    pub fn collection(self) -> &'static str {
        use tally_proto::collection as c;
        match self {
            LogType::Configuration => c::AUDIT,
            LogType::Network => c::FLOWS,
            LogType::Alerts => c::ALERTS,
            LogType::Findings => c::FINDINGS,
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
}

impl DestinationType {
    /// Whether this version of Tally delivers to it.
    pub fn supported(self) -> bool {
        !matches!(self, DestinationType::S3 | DestinationType::Gcs)
    }

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
            DestinationType::S3 | DestinationType::Gcs => "not used",
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

impl EndpointConfig {
    /// Checks the configuration for `log_type`; returns the URL and
    /// whether it is unencrypted (plain HTTP to a private address).
    pub fn validate(&self) -> Result<(reqwest::Url, bool), ConfigError> {
        let t = self.destination_type;
        if !t.supported() {
            return Err(ConfigError(format!(
                "destinationType {} is not delivered by this version of Tally yet; use splunk, elastic, panther, cribl, datadog, axiom or webhook",
                t.name()
            )));
        }
        if self.upload_period_minutes > 1440 {
            return Err(ConfigError("uploadPeriodMinutes is at most 1440".into()));
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            ConfigError(format!(
                "url {:?} is not a URL ({e}); give e.g. {}",
                self.url,
                t.example_url()
            ))
        })?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let plain = match url.scheme() {
            "https" => false,
            "http" if is_private_host(&host) => true,
            "http" => {
                return Err(ConfigError(format!(
                    "url {}: plain http is allowed only to loopback and private addresses; use https",
                    self.url
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
        if self.token.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError(format!(
                "{} needs a token ({})",
                t.name(),
                t.token_is()
            )));
        }
        match t {
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
        assert!(c.validate().unwrap_err().0.contains("not delivered"));
        c.destination_type = DestinationType::Gcs;
        assert!(!c.destination_type.supported());
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
            assert!(t.supported(), "{t:?}");
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
