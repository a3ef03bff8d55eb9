//! Tally transparency primitives (work in progress).
