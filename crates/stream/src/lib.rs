//! Streaming to SIEMs: the configuration and status shapes of Tailscale's
//! log-streaming API ([`config`], [`status`]), stored entries as OCSF
//! events ([`ocsf`], by the [`format`] a stream asks for) and one sink per
//! destination ([`sinks`]), each turning a batch of stored entries into
//! the requests its destination documents. No store access and no retry
//! of batches here (only entries a destination refused as overloaded are
//! sent again alone, a bounded number of times, within one delivery): the
//! server runs each destination as a consumer of the log, advancing its
//! position only after the destination confirmed a batch.

pub mod config;
pub mod format;
pub mod ocsf;
pub mod sinks;
pub mod status;

pub use config::{ConfigError, DestinationType, EndpointConfig, Format, LogType};
pub use sinks::{Delivery, Entry, Sink, SinkError};
pub use status::PublishingStatus;
