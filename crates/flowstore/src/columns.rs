//! The in-memory columnar form shared by open windows and decoded blocks,
//! and the filter scan over it.

use crate::FlowError;
use crate::types::{FlowEntry, FlowFilter, FlowKind};
use std::collections::HashMap;
use std::net::IpAddr;

/// One flow record: a header and a run of entries in [`Columns::ents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rec {
    /// Index into [`Columns::nodes`].
    pub node: u32,
    /// First entry in [`Columns::ents`].
    pub first: u32,
    /// Number of entries.
    pub len: u32,
    pub start: i64,
    pub end: i64,
    pub logged: i64,
    pub seq: u64,
}

/// One traffic entry; addresses index [`Columns::addrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ent {
    pub tx_pkts: u64,
    pub tx_bytes: u64,
    pub rx_pkts: u64,
    pub rx_bytes: u64,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub kind: u8,
    pub proto: u8,
}

/// Records with their entries, node names and addresses as dictionaries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Columns {
    pub nodes: Vec<String>,
    pub addrs: Vec<IpAddr>,
    pub recs: Vec<Rec>,
    pub ents: Vec<Ent>,
}

impl Columns {
    pub(crate) fn ents_of(&self, r: &Rec) -> &[Ent] {
        let a = r.first as usize;
        self.ents.get(a..a + r.len as usize).unwrap_or(&[])
    }

    /// Rebuilds the public form of one entry.
    pub(crate) fn entry(&self, tailnet: &str, r: &Rec, e: &Ent) -> FlowEntry {
        let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        FlowEntry {
            tailnet: tailnet.to_owned(),
            node: self.nodes.get(r.node as usize).cloned().unwrap_or_default(),
            start: r.start,
            end: r.end,
            logged: r.logged,
            kind: FlowKind::from_code(e.kind).unwrap_or(FlowKind::Virtual),
            proto: e.proto,
            src: self
                .addrs
                .get(e.src as usize)
                .copied()
                .unwrap_or(unspecified),
            src_port: e.sport,
            dst: self
                .addrs
                .get(e.dst as usize)
                .copied()
                .unwrap_or(unspecified),
            dst_port: e.dport,
            tx_pkts: e.tx_pkts,
            tx_bytes: e.tx_bytes,
            rx_pkts: e.rx_pkts,
            rx_bytes: e.rx_bytes,
        }
    }

    /// Approximate heap bytes.
    pub(crate) fn mem_bytes(&self) -> usize {
        self.nodes.iter().map(|n| n.len() + 24).sum::<usize>()
            + self.addrs.len() * 17
            + self.recs.len() * std::mem::size_of::<Rec>()
            + self.ents.len() * std::mem::size_of::<Ent>()
    }
}

/// An open window part: records of one tailnet whose `logged` time falls
/// in `[start, end)`, appended in arrival order.
pub(crate) struct Window {
    pub tailnet: String,
    pub start: i64,
    pub end: i64,
    pub part: u32,
    pub cols: Columns,
    node_ix: HashMap<String, u32>,
    addr_ix: HashMap<IpAddr, u32>,
    pub seq_min: u64,
    pub seq_max: u64,
    pub min_start: i64,
    pub max_start: i64,
}

impl Window {
    pub(crate) fn new(tailnet: String, start: i64, end: i64, part: u32) -> Self {
        Self {
            tailnet,
            start,
            end,
            part,
            cols: Columns::default(),
            node_ix: HashMap::new(),
            addr_ix: HashMap::new(),
            seq_min: u64::MAX,
            seq_max: 0,
            min_start: i64::MAX,
            max_start: i64::MIN,
        }
    }

    pub(crate) fn entries(&self) -> usize {
        self.cols.ents.len()
    }

    fn addr(&mut self, a: IpAddr) -> u32 {
        let next = self.cols.addrs.len() as u32;
        *self.addr_ix.entry(a).or_insert_with(|| {
            self.cols.addrs.push(a);
            next
        })
    }

    /// Appends one record: `es` share node, start, end and logged time and
    /// are in tuple order.
    pub(crate) fn add_record(&mut self, seq: u64, es: &[&FlowEntry]) -> Result<(), FlowError> {
        let Some(h) = es.first() else {
            return Ok(());
        };
        let first = u32::try_from(self.cols.ents.len())
            .ok()
            .filter(|f| f.checked_add(es.len() as u32).is_some())
            .ok_or_else(|| FlowError::InvalidInput("window holds too many entries".into()))?;
        let node = match self.node_ix.get(&h.node) {
            Some(n) => *n,
            None => {
                let n = self.cols.nodes.len() as u32;
                self.cols.nodes.push(h.node.clone());
                self.node_ix.insert(h.node.clone(), n);
                n
            }
        };
        for e in es {
            let src = self.addr(e.src);
            let dst = self.addr(e.dst);
            self.cols.ents.push(Ent {
                tx_pkts: e.tx_pkts,
                tx_bytes: e.tx_bytes,
                rx_pkts: e.rx_pkts,
                rx_bytes: e.rx_bytes,
                src,
                dst,
                sport: e.src_port,
                dport: e.dst_port,
                kind: e.kind.code(),
                proto: e.proto,
            });
        }
        self.cols.recs.push(Rec {
            node,
            first,
            len: es.len() as u32,
            start: h.start,
            end: h.end,
            logged: h.logged,
            seq,
        });
        self.seq_min = self.seq_min.min(seq);
        self.seq_max = self.seq_max.max(seq);
        self.min_start = self.min_start.min(h.start);
        self.max_start = self.max_start.max(h.start);
        Ok(())
    }

    pub(crate) fn mem_bytes(&self) -> usize {
        self.cols.mem_bytes() + self.node_ix.capacity() * 32 + self.addr_ix.capacity() * 24
    }
}

/// Address conditions of a filter, resolved against one address dictionary.
const ADDR_SRC_OK: u8 = 1;
const ADDR_DST_OK: u8 = 2;

/// A filter prepared for scanning.
pub(crate) struct Compiled<'f> {
    pub f: &'f FlowFilter,
    has_addr: bool,
    /// Store positions of the records this source answers for (inclusive):
    /// a reader's own data above the bucket's checkpoint, the bucket's at
    /// or below it.
    pub seqs: (u64, u64),
}

impl<'f> Compiled<'f> {
    pub(crate) fn new(f: &'f FlowFilter) -> Self {
        Self {
            f,
            has_addr: f.src.is_some() || f.dst.is_some() || f.peer.is_some(),
            seqs: (0, u64::MAX),
        }
    }

    /// The same filter for records at positions in `lo..=hi` only.
    pub(crate) fn within(f: &'f FlowFilter, lo: u64, hi: u64) -> Self {
        Self {
            seqs: (lo, hi),
            ..Self::new(f)
        }
    }

    fn addr_flags(&self, addrs: &[IpAddr]) -> Vec<u8> {
        if !self.has_addr {
            return Vec::new();
        }
        addrs
            .iter()
            .map(|a| {
                let mut fl = 0;
                if self.f.src.is_none_or(|p| p.contains(a)) {
                    fl |= ADDR_SRC_OK;
                }
                if self.f.dst.is_none_or(|p| p.contains(a))
                    && self
                        .f
                        .peer
                        .as_ref()
                        .is_none_or(|ps| ps.iter().any(|p| p.contains(a)))
                {
                    fl |= ADDR_DST_OK;
                }
                fl
            })
            .collect()
    }

    #[inline]
    fn ent_ok(&self, e: &Ent, flags: &[u8]) -> bool {
        let f = self.f;
        f.kind.is_none_or(|k| e.kind == k.code())
            && f.proto.is_none_or(|p| e.proto == p)
            && f.port.is_none_or(|p| e.sport == p || e.dport == p)
            && (!self.has_addr
                || (flags
                    .get(e.src as usize)
                    .is_some_and(|v| v & ADDR_SRC_OK != 0)
                    && flags
                        .get(e.dst as usize)
                        .is_some_and(|v| v & ADDR_DST_OK != 0)))
    }

    /// Scans `cols`: `rec_ok` sees each record that passes the node and
    /// time conditions (with its node name) and may refuse it; `hit` sees
    /// each matching entry. Returns the entries looked at.
    pub(crate) fn scan(
        &self,
        cols: &Columns,
        mut rec_ok: impl FnMut(&Rec, &str) -> bool,
        mut hit: impl FnMut(&Rec, &Ent),
    ) -> u64 {
        let node = match &self.f.node {
            Some(n) => match cols.nodes.iter().position(|x| x == n) {
                Some(i) => Some(i as u32),
                None => return 0,
            },
            None => None,
        };
        let flags = self.addr_flags(&cols.addrs);
        let mut scanned = 0u64;
        for r in &cols.recs {
            if node.is_some_and(|n| n != r.node)
                || r.start < self.f.start
                || r.start >= self.f.end
                || r.seq < self.seqs.0
                || r.seq > self.seqs.1
            {
                continue;
            }
            let name = cols.nodes.get(r.node as usize).map_or("", |s| s.as_str());
            if !rec_ok(r, name) {
                continue;
            }
            let es = cols.ents_of(r);
            scanned += es.len() as u64;
            for e in es {
                if self.ent_ok(e, &flags) {
                    hit(r, e);
                }
            }
        }
        scanned
    }
}
