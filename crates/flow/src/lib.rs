//! Tally's flow capture path: what the agent runs to turn the packets on a
//! mesh interface into Tailscale-shaped flow records.
//!
//! ```text
//! capture (AF_PACKET socket, reader thread)
//!   └► parse (etherparse slices → PacketInfo)
//!        └► table (ConnTable: 5-tuple entries, open/close events, bounded)
//!             └► record (every interval: FlowRecord, classified virtual/subnet/exit)
//! ```
//!
//! - [`parse`]: one frame (Ethernet or raw IP) to a [`parse::PacketInfo`].
//! - [`table`]: the bounded connection table and its events.
//! - [`record`]: the flow record shape and classification.
//! - [`capture`]: the Linux packet socket (the only I/O in this crate).

pub mod capture;
pub mod parse;
pub mod record;
pub mod table;

pub use capture::{
    Capture, CaptureConfig, CaptureError, CaptureHandle, CaptureMode, CaptureStats, Packet,
};
pub use parse::{LinkType, Malformed, PacketInfo, ParseError, TcpFlags, parse_packet};
pub use record::{
    Classifier, ConnectionCounts, FlowRecord, IpPrefix, MAX_ENTRIES_PER_RECORD, TrafficKind,
};
pub use table::{
    CloseReason, ConnTable, Counts, Direction, Events, FlowCount, FlowEvent, FlowEventKind,
    FlowInfo, FlowKey, FlowState, IntervalCounts, TableConfig, TableStats,
};
