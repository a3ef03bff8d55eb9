//! Double-entry reconciliation of network flow logs (pure library, no I/O).
//!
//! Every virtual connection between two nodes of a tailnet is logged twice:
//! node A's traffic entry `src=A:p dst=B:q` and B's mirror `src=B:q dst=A:p`.
//! [`Reconciler`] pairs the halves over fixed windows of server time, after
//! correcting each node's clock by an offset measured from the server's
//! receive times, and turns what does not match into [`Finding`]s:
//! count mismatches, missing halves (sub-classified by what is known about
//! the silent node), sequence gaps and integrity-flagged batches.
//!
//! The caller feeds [`FlowObservation`]s in roughly logged order
//! ([`Reconciler::observe`]), node facts ([`Reconciler::update_node`]) and
//! calls [`Reconciler::advance`] with the server's clock; windows are judged
//! once the grace period after the next window has passed. The whole state
//! is serializable ([`Reconciler::snapshot`] / [`Reconciler::restore`]), so
//! a consumer that checkpoints it next to its store cursor resumes with the
//! same findings as an uninterrupted run.

mod engine;
pub mod eval;
mod types;

#[cfg(test)]
mod tests;

pub use engine::Reconciler;
pub use types::*;
