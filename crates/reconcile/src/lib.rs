//! Double-entry reconciliation of network flow logs (pure library, no I/O).
//!
//! Every virtual connection between two nodes of a tailnet is logged twice:
//! node A's traffic entry `src=A:p dst=B:q` and B's mirror `src=B:q dst=A:p`.
//! [`Reconciler`] places each node's records on the server clock (an offset
//! measured from the server's receive times), judges fixed windows of
//! server time once their grace period has passed, and turns what does not
//! match into [`Finding`]s: missing halves (a record with traffic that no
//! record of the other node overlaps, sub-classified by what is known about
//! the silent node), count mismatches (proven from bounds on both ends'
//! running totals, never estimated), sequence gaps and integrity-flagged
//! batches.
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
