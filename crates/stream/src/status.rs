//! `LogstreamEndpointPublishingStatus`, exactly as Tailscale's API has it,
//! with its rates as exponentially weighted moving averages per second.

use serde::{Deserialize, Serialize};

/// Tailscale's publishing status of one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishingStatus {
    /// Last delivery attempt (RFC 3339), empty before the first.
    pub last_activity: String,
    /// Last error, empty when the last attempt succeeded.
    pub last_error: String,
    /// Largest body sent.
    pub max_body_size: u64,
    /// Bytes delivered.
    pub num_bytes_sent: u64,
    /// Entries delivered.
    pub num_entries_sent: u64,
    /// Network entries the other end never confirmed (reconciliation).
    pub num_spoofed_entries: u64,
    /// Requests made.
    pub num_total_requests: u64,
    /// Requests that failed.
    pub num_failed_requests: u64,
    /// Bytes per second (EWMA).
    pub rate_bytes_sent: f64,
    /// Entries per second (EWMA).
    pub rate_entries_sent: f64,
    /// Requests per second (EWMA).
    pub rate_total_requests: f64,
    /// Failed requests per second (EWMA).
    pub rate_failed_requests: f64,
}

/// Half-life of the rates.
const HALF_LIFE_SECS: f64 = 60.0;

impl PublishingStatus {
    /// Counts one request at `now_secs`: `bytes` and `entries` delivered
    /// (zero when it failed, with `error`).
    pub fn record(
        &mut self,
        now_secs: f64,
        last_secs: &mut f64,
        (bytes, entries, body): (u64, u64, u64),
        error: Option<String>,
        activity: String,
    ) {
        let dt = (now_secs - *last_secs).max(1e-3);
        *last_secs = now_secs;
        let decay = (-dt * std::f64::consts::LN_2 / HALF_LIFE_SECS).exp();
        let ewma = |rate: &mut f64, n: f64| *rate = *rate * decay + (1.0 - decay) * n / dt;
        let failed = error.is_some();
        ewma(&mut self.rate_bytes_sent, bytes as f64);
        ewma(&mut self.rate_entries_sent, entries as f64);
        ewma(&mut self.rate_total_requests, 1.0);
        ewma(&mut self.rate_failed_requests, f64::from(u8::from(failed)));
        self.num_total_requests += 1;
        self.max_body_size = self.max_body_size.max(body);
        if failed {
            self.num_failed_requests += 1;
        } else {
            self.num_bytes_sent += bytes;
            self.num_entries_sent += entries;
        }
        self.last_error = error.unwrap_or_default();
        self.last_activity = activity;
    }
}
