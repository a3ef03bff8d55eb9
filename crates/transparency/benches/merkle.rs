//! Merkle benchmark (work in progress).
fn main() {}
