//! Detection alerts on the wire: what the detection consumer writes to the
//! `alerts` collection (one JSON object per alert) and what the API, the
//! CLI and downstream consumers (streaming) read.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How urgent an alert is: Sigma's `level` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// For the record; nothing to do.
    Informational,
    /// Worth a look.
    Low,
    /// Look today.
    Medium,
    /// Look now.
    High,
    /// Drop everything.
    Critical,
}

impl AlertSeverity {
    /// The lower-case name (`informational` ... `critical`).
    pub fn name(self) -> &'static str {
        match self {
            AlertSeverity::Informational => "informational",
            AlertSeverity::Low => "low",
            AlertSeverity::Medium => "medium",
            AlertSeverity::High => "high",
            AlertSeverity::Critical => "critical",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "informational" | "info" => AlertSeverity::Informational,
            "low" => AlertSeverity::Low,
            "medium" => AlertSeverity::Medium,
            "high" => AlertSeverity::High,
            "critical" => AlertSeverity::Critical,
            _ => return None,
        })
    }
}

/// What an alert rests on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertEvidence {
    /// Store positions of (up to 20 of) the events that matched, oldest first.
    pub positions: Vec<u64>,
    /// Events that matched: the count, distinct values or sum the rule's
    /// condition compared (1 for a detection rule).
    pub value: f64,
    /// One readable sentence about the events.
    pub summary: String,
    /// Fields of the event that raised the alert (a few, for the reader).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// One alert: a rule matched, for one group key, in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic ID (hex SHA-256 prefix of tailnet, rule, group key and
    /// window start): the same alert raised again has the same ID.
    pub id: String,
    /// Tailnet whose events matched.
    pub tailnet: String,
    /// The rule's ID.
    pub rule_id: String,
    /// The rule's title.
    pub title: String,
    /// The rule's level.
    pub severity: AlertSeverity,
    /// Group-by fields and their values (e.g. `src_node`).
    pub group: BTreeMap<String, String>,
    /// The node the alert is about, when the group key or event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Event-time window the matched events fall in, Unix ns `[start, end]`.
    pub window: crate::finding::Window,
    /// What matched.
    pub evidence: AlertEvidence,
    /// Alerts of this rule and group key suppressed after this one (counted
    /// in the next alert of the span, never written).
    #[serde(default)]
    pub suppressed_before: u64,
    /// MITRE ATT&CK and other tags of the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}
