//! Configuration audit events on the wire: Tailscale's configuration
//! audit log shape, as the control database stores each event (the text
//! that is hash-chained), the API lists them and the `tailaudit`
//! collection holds them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One audit event (field order fixed: the stored text is hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Events of one change share it.
    #[serde(rename = "eventGroupID")]
    pub event_group_id: String,
    /// From which interface.
    pub origin: Origin,
    /// Who.
    pub actor: Actor,
    /// `CONFIG`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// What changed.
    pub target: Target,
    /// `CREATE`, `UPDATE`, `DELETE`, ...
    pub action: String,
    /// Value before (never a secret).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub old: Value,
    /// Value after (never a secret).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub new: Value,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action_details: String,
    /// Set for a refused change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    pub event_time: String,
    /// Client address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Origin {
    /// An API client.
    Api,
    /// The `tally` CLI.
    Cli,
    /// The web console.
    Console,
    /// The server itself (retention, bootstrap).
    System,
}

impl Origin {
    /// Reads the `Tally-Origin` header value; anything else is `API`
    /// (clients cannot claim `SYSTEM`).
    pub fn from_header(v: Option<&str>) -> Self {
        match v.map(str::trim) {
            Some(s) if s.eq_ignore_ascii_case("cli") => Self::Cli,
            Some(s) if s.eq_ignore_ascii_case("console") => Self::Console,
            _ => Self::Api,
        }
    }
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// User ID, node ID or `system`.
    pub id: String,
    /// `USER`, `NODE` or `SYSTEM`.
    #[serde(rename = "type")]
    pub actor_type: String,
    /// Login name (the filter `actor` matches it).
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Tags (nodes).
    pub tags: Vec<String>,
}

impl Actor {
    /// The server itself.
    pub fn system() -> Self {
        Self {
            id: "system".into(),
            actor_type: "SYSTEM".into(),
            login_name: "system".into(),
            display_name: "Tally".into(),
            tags: Vec::new(),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// ID of the changed object.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `TAILNET`, `USER`, `API_KEY`, `AUTH_KEY`, `NODE`, `COLLECTION`, `AUDIT_LOG`.
    #[serde(rename = "type")]
    pub target_type: String,
    /// The changed property, if one.
    pub property: String,
    /// Ephemeral nodes.
    pub is_ephemeral: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored event reads back and writes out byte for byte (the chain
    /// hashes the stored text).
    #[test]
    fn an_event_round_trips_to_the_same_text() {
        let text = r#"{"eventGroupID":"g1","origin":"CLI","actor":{"id":"u1","type":"USER","loginName":"alice@example.com","displayName":"Alice","tags":[]},"type":"CONFIG","target":{"id":"T1","name":"example.org","type":"TAILNET","property":"logsRetentionDays","isEphemeral":false},"action":"UPDATE","old":30,"new":31,"eventTime":"2026-12-05T19:56:18.872415509Z","remoteAddr":"127.0.0.1"}"#;
        let e: AuditEvent = serde_json::from_str(text).expect("parses");
        assert_eq!(e.origin, Origin::Cli);
        assert_eq!(e.target.property, "logsRetentionDays");
        assert_eq!(serde_json::to_string(&e).expect("writes"), text);
        let refused = r#"{"eventGroupID":"g2","origin":"API","actor":{"id":"u1","type":"USER","loginName":"a","displayName":"A","tags":[]},"type":"CONFIG","target":{"id":"n1","name":"","type":"NODE","property":"","isEphemeral":false},"action":"DELETE","actionDetails":"DELETE /api/v2/device/{deviceId}","error":"permission denied","eventTime":"2026-12-05T19:56:18Z"}"#;
        let e: AuditEvent = serde_json::from_str(refused).expect("parses");
        assert_eq!(serde_json::to_string(&e).expect("writes"), refused);
    }
}
