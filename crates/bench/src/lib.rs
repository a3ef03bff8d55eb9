//! The library part of `tally-bench`: benchmarks of the flow capture path
//! ([`flow_table`]) and of the flow store ([`flowstore`]), shared by
//! `tally-bench flows` and by `cargo bench -p tally-bench`
//! (`benches/flow_table.rs`, `benches/flowstore.rs`). They use only the
//! public API of `tally-flow` and `tally-flowstore`.

pub mod flow_table;
pub mod flowstore;
