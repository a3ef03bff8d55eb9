//! Reconciliation findings on the wire: what the reconciler writes to the
//! `findings` collection (one JSON object per finding) and what the API,
//! the CLI and downstream consumers read.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The ingest verdict the server stored for the upload batch an entry came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchVerdict {
    /// Signature and chain verified.
    Ok,
    /// The chain skipped batches (the batch itself verified).
    Gap,
    /// The previous-hash link does not match the chain.
    BrokenChain,
    /// The signature does not verify with the node's key.
    BadSignature,
    /// An old batch sent again with a different position in the chain.
    Replay,
    /// A byte-identical batch already stored.
    Duplicate,
    /// The batch carried no signature.
    Unsigned,
}

impl BatchVerdict {
    /// Whether entries of such a batch are left out of pairing (untrusted or
    /// already counted).
    pub fn excluded(self) -> bool {
        matches!(
            self,
            BatchVerdict::BrokenChain
                | BatchVerdict::BadSignature
                | BatchVerdict::Replay
                | BatchVerdict::Duplicate
        )
    }
}

/// Classification of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingClass {
    /// tx of one end vs rx of the other differ beyond the tolerance.
    CountMismatch,
    /// Missing half: the silent node opted out (`--no-logs-no-support`).
    MissingOptedOut,
    /// Missing half: flow logging is off for the silent node.
    MissingFlowLoggingOff,
    /// Missing half: the silent node's agent sent no records for the window.
    MissingAgentSilent,
    /// Missing half: the silent node lost a batch (sequence gap) there.
    MissingLostBatch,
    /// Missing half: the silent node reported other traffic for the window
    /// but not this connection (deleted or filtered records).
    MissingSuspicious,
    /// Missing half: the peer address belongs to no registered node.
    NodeUnknown,
    /// `proc_seq` skipped records of one instance and process.
    SequenceGap,
    /// The batch was flagged at ingest (signature, chain, replay...).
    Integrity,
}

impl FindingClass {
    /// All classes, in report order.
    pub const ALL: [FindingClass; 9] = [
        FindingClass::CountMismatch,
        FindingClass::MissingOptedOut,
        FindingClass::MissingFlowLoggingOff,
        FindingClass::MissingAgentSilent,
        FindingClass::MissingLostBatch,
        FindingClass::MissingSuspicious,
        FindingClass::NodeUnknown,
        FindingClass::SequenceGap,
        FindingClass::Integrity,
    ];

    /// Short stable name.
    pub fn name(self) -> &'static str {
        match self {
            FindingClass::CountMismatch => "count_mismatch",
            FindingClass::MissingOptedOut => "missing_opted_out",
            FindingClass::MissingFlowLoggingOff => "missing_flow_logging_off",
            FindingClass::MissingAgentSilent => "missing_agent_silent",
            FindingClass::MissingLostBatch => "missing_lost_batch",
            FindingClass::MissingSuspicious => "missing_suspicious",
            FindingClass::NodeUnknown => "node_unknown",
            FindingClass::SequenceGap => "sequence_gap",
            FindingClass::Integrity => "integrity",
        }
    }
}

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Expected by configuration (opted out, logging off).
    Info,
    /// Worth a look.
    Low,
    /// Logs were lost.
    Medium,
    /// Possible tampering.
    High,
    /// Proven tampering (forged or re-chained batch).
    Critical,
}

/// A window of server time `[start, end)`, Unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// Start, inclusive.
    pub start: i64,
    /// End, exclusive.
    pub end: i64,
}

/// Packet and byte counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counts {
    /// Packets.
    pub pkts: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Identity of a stored flow record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordRef {
    /// Public ID of the instance.
    pub instance: String,
    /// logtail `proc_id`.
    pub proc_id: u32,
    /// logtail `proc_seq`.
    pub proc_seq: u64,
}

/// What a finding rests on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Evidence {
    /// Protocol of the connection.
    pub proto: Option<u8>,
    /// Sending side `ip:port`.
    pub src: Option<SocketAddr>,
    /// Receiving side `ip:port`.
    pub dst: Option<SocketAddr>,
    /// What the sender reported sending in the records around the window.
    pub sent: Option<Counts>,
    /// What the receiver reported receiving in the records around the window.
    pub received: Option<Counts>,
    /// What the sent and received counts prove missing or added beyond
    /// loss and timing (count mismatch), or the one-sided counts (missing half).
    pub unexplained: Option<Counts>,
    /// A record of the sending side in the window.
    pub sender_record: Option<RecordRef>,
    /// A record of the receiving side in the window.
    pub receiver_record: Option<RecordRef>,
    /// For sequence gaps: first and last missing `proc_seq`.
    pub missing_seq: Option<(u64, u64)>,
    /// For integrity findings: the stored verdict.
    pub verdict: Option<BatchVerdict>,
    /// Last agent report of the silent node known at the time.
    pub last_report: Option<i64>,
    /// Share of the window covered by the silent node's records (0..=1000 ‰).
    pub coverage_permille: Option<u32>,
}

/// One discrepancy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    /// Deterministic ID (hex SHA-256 prefix of the content).
    pub id: String,
    /// Classification.
    pub class: FindingClass,
    /// Severity.
    pub severity: Severity,
    /// Tailnet.
    pub tailnet: String,
    /// The node at fault: the silent node of a missing half, the sender of a
    /// count mismatch, the node of a gap or flagged batch.
    pub node: String,
    /// The other node (or the unregistered address for `node_unknown`).
    pub peer: Option<String>,
    /// Server-time window the finding covers.
    pub window: Window,
    /// Numbers and records.
    pub evidence: Evidence,
    /// One readable sentence.
    pub detail: String,
}
