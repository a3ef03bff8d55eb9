//! Streaming to SIEMs: the configuration and status shapes of Tailscale's
//! log-streaming API ([`config`], [`status`]), stored entries as OCSF
//! events ([`ocsf`]) and one sink per destination ([`sinks`]), each
//! turning a batch of stored entries into the requests its destination
//! documents. No store access and no retry loop here: the
//! server runs each destination as a consumer of the log, advancing its
//! position only after the destination confirmed a batch.

pub mod config;
pub mod ocsf;
pub mod sinks;
pub mod status;

pub use config::{ConfigError, DestinationType, EndpointConfig, LogType};
pub use sinks::{Delivery, Entry, Sink, SinkError};
pub use status::PublishingStatus;
