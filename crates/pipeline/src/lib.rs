//! The consumer seam. Everything downstream of ingest (the flow index, the
//! transparency log, reconciliation, and detection and streaming after
//! them) is a [`Consumer`] of the log, run by the one [`driver`]: it reads
//! from the consumer's durable position, hands it batches of records in
//! log order, waits for more, has the consumer commit its position with its
//! own output, backs off on errors, pauses, stops, and reports progress.
//!
//! # The failure rule
//!
//! A record a consumer cannot handle is never skipped silently. The
//! consumer returns it as a [`Rejection`] (its position and the reason);
//! the driver records it durably (`<dir>/<consumer>.rejections.jsonl`),
//! counts it in [`ConsumerStatus`] (metrics and health), and then follows
//! the consumer's declared [`FailurePolicy`]: [`FailurePolicy::Skip`]
//! moves on (derived indexes), [`FailurePolicy::Halt`] stops the consumer
//! before the record until an operator resumes it (integrity consumers).
//! Blocks of the log that cannot be read are rejections of every consumer
//! that reads them. Errors that are not about a record (I/O, a database
//! away) are retried with backoff from the consumer's position; a panic
//! halts the consumer.

mod consumer;
pub mod driver;
mod rejections;
mod status;

pub use consumer::{Consumer, ConsumerError, FailurePolicy, Handled, Rejection};
pub use rejections::RejectionRecord;
pub use status::{ConsumerHandle, ConsumerState, ConsumerStatus, Pipeline};
