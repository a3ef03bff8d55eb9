//! Public data types: entries, filters, pages, edges, statistics.

use crate::FlowError;
use ipnet::IpNet;
use std::cmp::Ordering;
use std::net::IpAddr;

/// Which traffic list of a Tailscale flow record an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowKind {
    /// `virtualTraffic`: both ends are tailnet nodes.
    Virtual = 0,
    /// `subnetTraffic`: the peer is inside an advertised subnet route.
    Subnet = 1,
    /// `exitTraffic`: anything else, through an exit node.
    Exit = 2,
    /// `physicalTraffic`: the underlay (WireGuard packets between endpoints).
    Physical = 3,
}

impl FlowKind {
    /// Every kind, in code order.
    pub const ALL: [FlowKind; 4] = [
        FlowKind::Virtual,
        FlowKind::Subnet,
        FlowKind::Exit,
        FlowKind::Physical,
    ];

    /// The lowercase name (`virtual`, `subnet`, `exit`, `physical`).
    pub fn as_str(self) -> &'static str {
        match self {
            FlowKind::Virtual => "virtual",
            FlowKind::Subnet => "subnet",
            FlowKind::Exit => "exit",
            FlowKind::Physical => "physical",
        }
    }

    /// Parses a lowercase name as written by [`FlowKind::as_str`].
    pub fn parse(s: &str) -> Option<FlowKind> {
        FlowKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The on-disk code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The kind of an on-disk code.
    pub(crate) fn from_code(c: u8) -> Option<FlowKind> {
        FlowKind::ALL.get(usize::from(c)).copied()
    }
}

/// One traffic entry of one flow record, with the record's header fields.
///
/// A Tailscale flow record (one node, one interval of about 5 s) becomes
/// one entry per element of its `virtualTraffic`, `subnetTraffic`,
/// `exitTraffic` and `physicalTraffic` lists. By Tailscale's convention,
/// which Tally's agent follows, `src` is the node's own end, `dst` the
/// remote end, `tx` what the node sent and `rx` what it received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowEntry {
    /// Tailnet ID.
    pub tailnet: String,
    /// Node ID of the node that reported the record.
    pub node: String,
    /// Start of the record's interval (Unix ns).
    pub start: i64,
    /// End of the record's interval (Unix ns).
    pub end: i64,
    /// When the server received the record (Unix ns).
    pub logged: i64,
    /// Which traffic list the entry belongs to.
    pub kind: FlowKind,
    /// IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Source address (the node's end).
    pub src: IpAddr,
    /// Source port (0 when the protocol has none).
    pub src_port: u16,
    /// Destination address (the remote end).
    pub dst: IpAddr,
    /// Destination port (0 when the protocol has none).
    pub dst_port: u16,
    /// Packets sent by the node.
    pub tx_pkts: u64,
    /// Bytes sent by the node (IP packet lengths).
    pub tx_bytes: u64,
    /// Packets received by the node.
    pub rx_pkts: u64,
    /// Bytes received by the node.
    pub rx_bytes: u64,
}

impl FlowEntry {
    /// The order of entries inside one record on every page: by kind,
    /// protocol, source, source port, destination, destination port, then
    /// counters.
    pub(crate) fn tuple_cmp(&self, o: &FlowEntry) -> Ordering {
        (
            self.kind,
            self.proto,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
            self.tx_pkts,
            self.tx_bytes,
            self.rx_pkts,
            self.rx_bytes,
        )
            .cmp(&(
                o.kind, o.proto, o.src, o.src_port, o.dst, o.dst_port, o.tx_pkts, o.tx_bytes,
                o.rx_pkts, o.rx_bytes,
            ))
    }
}

/// What a query selects. Every condition present must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFilter {
    /// Tailnet ID (required: a query never crosses tailnets).
    pub tailnet: String,
    /// Records whose interval starts at or after this time (Unix ns)...
    pub start: i64,
    /// ...and before this time (exclusive). Ranges that meet do not
    /// overlap, so adjacent queries never count a record twice.
    pub end: i64,
    /// Only the records of this node ID.
    pub node: Option<String>,
    /// Only entries whose source address is inside this prefix (a host
    /// address is a /32 or /128 prefix).
    pub src: Option<IpNet>,
    /// Only entries whose destination address is inside this prefix.
    pub dst: Option<IpNet>,
    /// Only entries with this port on either side.
    pub port: Option<u16>,
    /// Only entries of this IANA protocol number.
    pub proto: Option<u8>,
    /// Only entries of this traffic kind.
    pub kind: Option<FlowKind>,
    /// Node-pair queries: only entries whose remote end (`dst`) is inside
    /// one of these prefixes, typically the other node's tailnet addresses.
    /// An empty list matches nothing.
    pub peer: Option<Vec<IpNet>>,
}

impl FlowFilter {
    /// A filter for every entry of `tailnet` with a record start in
    /// `[start, end)`.
    pub fn new(tailnet: impl Into<String>, start: i64, end: i64) -> Self {
        Self {
            tailnet: tailnet.into(),
            start,
            end,
            node: None,
            src: None,
            dst: None,
            port: None,
            proto: None,
            kind: None,
            peer: None,
        }
    }

    /// Whether one entry satisfies the filter: the reference semantics,
    /// which the store's indexes only make faster.
    pub fn matches(&self, e: &FlowEntry) -> bool {
        e.tailnet == self.tailnet
            && e.start >= self.start
            && e.start < self.end
            && self.node.as_ref().is_none_or(|n| *n == e.node)
            && self.src.is_none_or(|p| p.contains(&e.src))
            && self.dst.is_none_or(|p| p.contains(&e.dst))
            && self.port.is_none_or(|p| e.src_port == p || e.dst_port == p)
            && self.proto.is_none_or(|p| e.proto == p)
            && self.kind.is_none_or(|k| e.kind == k)
            && self
                .peer
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p.contains(&e.dst)))
    }
}

/// Which page of a query to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Most entries on the page (1 to [`crate::MAX_PAGE_ENTRIES`]). A page
    /// holds whole records only, except that a single record larger than
    /// the limit is returned whole on a page of its own.
    pub limit: usize,
    /// Where the previous page ended (its [`FlowPage::next`]); `None` for
    /// the first page.
    pub cursor: Option<PageCursor>,
}

impl PageRequest {
    /// The first page of at most `limit` entries.
    pub fn first(limit: usize) -> Self {
        Self {
            limit,
            cursor: None,
        }
    }
}

/// Opaque position between two pages. Render it with
/// [`PageCursor::as_str`] and read it back with [`PageCursor::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageCursor(String);

/// The sort key of a record on pages: newest first, so larger keys come first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RecKey {
    pub start: i64,
    pub node: String,
    pub seq: u64,
}

impl RecKey {
    /// Compares with the parts of a key without building one.
    pub(crate) fn cmp_parts(&self, start: i64, node: &str, seq: u64) -> Ordering {
        self.start
            .cmp(&start)
            .then_with(|| self.node.as_str().cmp(node))
            .then_with(|| self.seq.cmp(&seq))
    }
}

impl PageCursor {
    /// The cursor as text (ASCII letters, digits, `.` and `-`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads a cursor given out by [`FlowStore::query`](crate::FlowStore::query).
    pub fn parse(s: &str) -> Result<PageCursor, FlowError> {
        Self::decode(s)?;
        Ok(PageCursor(s.to_owned()))
    }

    pub(crate) fn encode(k: &RecKey) -> PageCursor {
        PageCursor(format!(
            "f1.{}.{:x}.{}",
            k.start,
            k.seq,
            hex::encode(k.node.as_bytes())
        ))
    }

    pub(crate) fn decode(s: &str) -> Result<RecKey, FlowError> {
        let bad = || FlowError::InvalidInput(format!("not a flow page cursor: {s:?}"));
        let mut it = s.split('.');
        if it.next() != Some("f1") {
            return Err(bad());
        }
        let start = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let seq = it
            .next()
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let node = it
            .next()
            .and_then(|v| hex::decode(v).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(RecKey { start, node, seq })
    }
}

impl std::fmt::Display for PageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a query answer, with the store position of its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowHit {
    /// Store sequence number of the flow record the entry came from: the
    /// entries of one record share it and are adjacent on a page.
    pub seq: u64,
    /// The entry.
    pub entry: FlowEntry,
}

impl FlowHit {
    /// The page order: newest record first (record start descending, then
    /// node ID and store position descending), entries of one record in
    /// [`FlowEntry`] tuple order (kind, protocol, source, ... ascending).
    pub fn page_cmp(&self, o: &FlowHit) -> Ordering {
        o.entry
            .start
            .cmp(&self.entry.start)
            .then_with(|| o.entry.node.cmp(&self.entry.node))
            .then_with(|| o.seq.cmp(&self.seq))
            .then_with(|| self.entry.tuple_cmp(&o.entry))
    }
}

/// Work a query did, to check and tune the indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Sealed files of the tailnet in the catalog.
    pub files: u64,
    /// Files skipped on their time range alone (without reading a footer).
    pub files_skipped: u64,
    /// Blocks listed in the footers read.
    pub blocks: u64,
    /// Blocks read and decompressed (the others were skipped by the index).
    pub blocks_read: u64,
    /// Entries looked at (open window and blocks read).
    pub entries_scanned: u64,
}

/// One page of a query answer.
#[derive(Debug, Clone, Default)]
pub struct FlowPage {
    /// Matching entries in page order (see [`FlowHit::page_cmp`]).
    pub hits: Vec<FlowHit>,
    /// The cursor of the next page, when there may be one.
    pub next: Option<PageCursor>,
    /// Damage met and skipped (corrupt blocks or unreadable files): the
    /// answer lacks what they held.
    pub errors: Vec<String>,
    /// Work done.
    pub stats: QueryStats,
}

/// Traffic of one node with one remote address in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeBucket {
    /// Start of the bucket (Unix ns, a multiple of the bucket length).
    pub bucket: i64,
    /// Node ID of the reporting node.
    pub node: String,
    /// The remote end (`dst`); the server maps it to a node ID.
    pub remote: IpAddr,
    /// Packets sent by the node.
    pub tx_pkts: u64,
    /// Bytes sent by the node.
    pub tx_bytes: u64,
    /// Packets received by the node.
    pub rx_pkts: u64,
    /// Bytes received by the node.
    pub rx_bytes: u64,
    /// Entries summed.
    pub entries: u64,
}

/// The answer of [`FlowStore::edges`](crate::FlowStore::edges).
#[derive(Debug, Clone, Default)]
pub struct Edges {
    /// Sums ordered by bucket, node ID, then remote address.
    pub buckets: Vec<EdgeBucket>,
    /// Damage met and skipped, as in [`FlowPage::errors`].
    pub errors: Vec<String>,
    /// Work done.
    pub stats: QueryStats,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their entries.
    pub entries: u64,
}

/// A snapshot of the store's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Persisted checkpoint: every flow record at or below this store
    /// position is in a sealed file.
    pub checkpoint: u64,
    /// Highest store position inserted or passed with `advance_to`.
    pub high_water: u64,
    /// Open windows (parts being filled).
    pub open_windows: usize,
    /// Entries in open windows.
    pub open_entries: usize,
    /// Windows frozen for sealing but not yet in a file (a failed seal
    /// keeps them here until a later call succeeds).
    pub sealing_windows: usize,
    /// Entries in those.
    pub sealing_entries: usize,
    /// Tailnets with sealed files.
    pub tailnets: usize,
    /// Sealed segment files.
    pub sealed_files: usize,
    /// Entries in sealed files.
    pub sealed_entries: u64,
    /// Bytes of sealed files.
    pub sealed_bytes: u64,
    /// Bytes of decoded footers held in the footer cache.
    pub footer_cache_bytes: usize,
    /// Sealed files in the cluster's bucket that this store knows (an
    /// owner's uploaded files, counted in `sealed_files` too; a reader's
    /// view of the manifest).
    pub bucket_files: usize,
    /// A reader's split: records at or below it are answered from the
    /// bucket (0: none).
    pub bucket_checkpoint: u64,
    /// Corrupt blocks met by queries since open (each skipped).
    pub corrupt_blocks: u64,
    /// Files whose trailer or footer was damaged (salvaged or skipped).
    pub damaged_files: u64,
}
