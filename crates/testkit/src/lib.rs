//! Helpers shared by the tests (and benchmarks) of several crates, one
//! name for each: real peers and real hosts, never stand-ins.
//!
//! - [`postgres`]: throwaway PostgreSQL clusters (`initdb`/`pg_ctl`).
//! - [`nats`]: NATS servers with JetStream, alone or as a cluster.
//! - [`netns`]: network namespaces joined by veth pairs to a bridge.
//! - [`wait`]: waiting for a condition that has no signal to await.

pub mod nats;
pub mod netns;
pub mod postgres;
pub mod wait;
