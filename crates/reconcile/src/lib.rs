//! Double-entry reconciliation of network flow logs.
