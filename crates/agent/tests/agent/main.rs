//! Integration tests of the agent: real files, real sockets, a real HTTP
//! server. One test binary (modules below) to keep linking cheap.

mod sources;
mod support;
mod upload;
mod watch;
