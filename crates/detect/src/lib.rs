//! Detection: Sigma rules and correlations over Tally's events (flow
//! entries, node logs, configuration audit events, reconciliation
//! findings), raising [`tally_proto::alert::Alert`]s.
//!
//! Pure: no I/O. The server drives it as a consumer of the store
//! (`consumers::detection`), feeding events in store order with their
//! event time and saving [`Detector::snapshot`] with its position, so a
//! replay from the same position raises the same alerts.
//!
//! - [`event`]: the events rules see and their fields (one table).
//! - [`rules`]: a rule file parsed and checked, with errors that name the line.
//! - [`engine`]: the per-tailnet engines, suppression, the pair baseline.
//! - [`builtin`]: the rule pack shipped in the binary.

pub mod builtin;
pub mod engine;
pub mod event;
pub mod rules;

pub use engine::{Detector, DetectorConfig, DetectorSnapshot, DetectorStats};
pub use event::{FlowEvent, NodeRef, ObjectEvent, Service};
pub use rules::{Rule, RuleError, parse_rule};
