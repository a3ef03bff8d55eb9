//! Blocks: the columnar encoding of a run of records, and the per-block
//! index entry that lets queries skip blocks.
//!
//! A block body (before zstd) is a sequence of length-prefixed streams:
//!
//! | # | stream | content |
//! |---|--------|---------|
//! | 0 | header | version, records, entries, tuples, base start (zigzag), base seq |
//! | 1 | nodes | node count, then per node: name, records of that node (blocks hold whole node runs in sort order) |
//! | 2 | rec_len | entries per record |
//! | 3 | rec_start | start minus the previous record's start (zigzag; first: minus base) |
//! | 4 | rec_dur | end minus start (zigzag) |
//! | 5 | rec_delay | logged minus end (zigzag) |
//! | 6 | rec_seq | seq minus the previous record's seq (zigzag; first: minus base) |
//! | 7 | addrs | IPv4 count then sorted addresses as deltas; IPv6 count then 16-byte addresses |
//! | 8-13 | tuple dictionary | sorted distinct (kind, proto, src, src port, dst, dst port): kind bytes, proto bytes, src index, src port, dst index, dst port |
//! | 14 | ent_tuple | tuple index per entry: first of a record absolute, the rest as zigzag deltas from the previous entry |
//! | 15-18 | counters | tx packets, tx bytes, rx packets, rx bytes |
//!
//! Everything is a LEB128 varint unless said otherwise. Address indexes
//! order IPv4 before IPv6, both ascending, so index order is address order
//! and the tuple dictionary is in entry order: a long-lived connection
//! repeats the same small tuple index record after record, which zstd
//! then folds away.

use crate::bloom::{Bloom, TAG_DST, TAG_SRC};
use crate::codec::{Bad, IndexMap, Reader, put_chunk, put_iv, put_str, put_uv};
use crate::columns::{Columns, Compiled, Ent, Rec};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const BLOCK_VERSION: u64 = 1;
const STREAMS: usize = 19;

/// Index entry of one block (kept in the file footer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockMeta {
    /// Offset of the block header in the file.
    pub offset: u64,
    /// Compressed bytes (after the header).
    pub clen: u32,
    /// Decompressed bytes.
    pub raw_len: u32,
    /// CRC-32C of the compressed bytes.
    pub crc: u32,
    pub entries: u32,
    pub records: u32,
    pub min_start: i64,
    pub max_start: i64,
    pub max_end: i64,
    pub seq_min: u64,
    pub seq_max: u64,
    /// Smallest and largest node ID (blocks are cut from a node-sorted run).
    pub first_node: String,
    pub last_node: String,
    /// Bit per [`crate::FlowKind`] code present.
    pub kinds: u8,
    /// Bit per protocol number present.
    pub protos: [u64; 4],
    pub src4: Option<(u32, u32)>,
    pub dst4: Option<(u32, u32)>,
    pub src6: Option<(u128, u128)>,
    pub dst6: Option<(u128, u128)>,
    /// Source addresses, destination addresses and ports (either side).
    pub bloom: Bloom,
}

fn widen<T: Ord + Copy>(r: &mut Option<(T, T)>, v: T) {
    *r = Some(match *r {
        None => (v, v),
        Some((a, b)) => (a.min(v), b.max(v)),
    });
}

fn prefix_may_match(
    p: &IpNet,
    r4: Option<(u32, u32)>,
    r6: Option<(u128, u128)>,
    bloom: &Bloom,
    tag: u8,
) -> bool {
    match p {
        IpNet::V4(n) => {
            let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
            r4.is_some_and(|(a, b)| lo <= b && hi >= a)
                && (n.prefix_len() < 32 || bloom.may_contain_addr(tag, &IpAddr::V4(n.network())))
        }
        IpNet::V6(n) => {
            let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
            r6.is_some_and(|(a, b)| lo <= b && hi >= a)
                && (n.prefix_len() < 128 || bloom.may_contain_addr(tag, &IpAddr::V6(n.network())))
        }
    }
}

impl BlockMeta {
    /// Whether the block may hold an entry the filter selects (time range,
    /// node range, kinds, protocols, address ranges and Bloom filter).
    pub(crate) fn may_match(&self, c: &Compiled<'_>) -> bool {
        let f = c.f;
        if self.max_start < f.start || self.min_start >= f.end {
            return false;
        }
        if self.seq_max < c.seqs.0 || self.seq_min > c.seqs.1 {
            return false;
        }
        if f.node.as_ref().is_some_and(|n| {
            n.as_str() < self.first_node.as_str() || n.as_str() > self.last_node.as_str()
        }) {
            return false;
        }
        if f.kind.is_some_and(|k| self.kinds & (1 << k.code()) == 0) {
            return false;
        }
        if f.proto
            .is_some_and(|p| self.protos[usize::from(p / 64)] & (1 << (p % 64)) == 0)
        {
            return false;
        }
        if f.port.is_some_and(|p| !self.bloom.may_contain_port(p)) {
            return false;
        }
        if f.src
            .is_some_and(|p| !prefix_may_match(&p, self.src4, self.src6, &self.bloom, TAG_SRC))
        {
            return false;
        }
        if f.dst
            .is_some_and(|p| !prefix_may_match(&p, self.dst4, self.dst6, &self.bloom, TAG_DST))
        {
            return false;
        }
        if f.peer.as_ref().is_some_and(|ps| {
            !ps.iter()
                .any(|p| prefix_may_match(p, self.dst4, self.dst6, &self.bloom, TAG_DST))
        }) {
            return false;
        }
        true
    }

    /// Builds the index entry of records `recs` of `cols` (everything but
    /// the file position and checksum).
    pub(crate) fn of_records<'a>(
        cols: &Columns,
        recs: impl Iterator<Item = &'a Rec> + Clone,
    ) -> Self {
        let mut m = BlockMeta {
            offset: 0,
            clen: 0,
            raw_len: 0,
            crc: 0,
            entries: 0,
            records: 0,
            min_start: i64::MAX,
            max_start: i64::MIN,
            max_end: i64::MIN,
            seq_min: u64::MAX,
            seq_max: 0,
            first_node: String::new(),
            last_node: String::new(),
            kinds: 0,
            protos: [0; 4],
            src4: None,
            dst4: None,
            src6: None,
            dst6: None,
            bloom: Bloom::with_keys(0),
        };
        let mut srcs: Vec<u32> = Vec::new();
        let mut dsts: Vec<u32> = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        let mut first = true;
        for r in recs {
            let node = cols.nodes.get(r.node as usize).map_or("", |s| s.as_str());
            if first || node < m.first_node.as_str() {
                m.first_node = node.to_owned();
            }
            if first || node > m.last_node.as_str() {
                m.last_node = node.to_owned();
            }
            first = false;
            m.records += 1;
            m.min_start = m.min_start.min(r.start);
            m.max_start = m.max_start.max(r.start);
            m.max_end = m.max_end.max(r.end);
            m.seq_min = m.seq_min.min(r.seq);
            m.seq_max = m.seq_max.max(r.seq);
            for e in cols.ents_of(r) {
                m.entries += 1;
                m.kinds |= 1 << (e.kind & 7);
                m.protos[usize::from(e.proto / 64)] |= 1 << (e.proto % 64);
                srcs.push(e.src);
                dsts.push(e.dst);
                ports.push(e.sport);
                ports.push(e.dport);
            }
        }
        for v in [&mut srcs, &mut dsts] {
            v.sort_unstable();
            v.dedup();
        }
        ports.sort_unstable();
        ports.dedup();
        m.bloom = Bloom::with_keys(srcs.len() + dsts.len() + ports.len());
        for (list, tag) in [(&srcs, TAG_SRC), (&dsts, TAG_DST)] {
            for &i in list.iter() {
                let Some(a) = cols.addrs.get(i as usize) else {
                    continue;
                };
                m.bloom.insert_addr(tag, a);
                let (r4, r6) = if tag == TAG_SRC {
                    (&mut m.src4, &mut m.src6)
                } else {
                    (&mut m.dst4, &mut m.dst6)
                };
                match a {
                    IpAddr::V4(v) => widen(r4, u32::from(*v)),
                    IpAddr::V6(v) => widen(r6, u128::from(*v)),
                }
            }
        }
        for p in ports {
            m.bloom.insert_port(p);
        }
        m
    }

    /// Approximate heap bytes when decoded.
    pub(crate) fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.first_node.len()
            + self.last_node.len()
            + self.bloom.mem_bytes()
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        put_uv(out, self.offset);
        put_uv(out, u64::from(self.clen));
        put_uv(out, u64::from(self.raw_len));
        put_uv(out, u64::from(self.crc));
        put_uv(out, u64::from(self.entries));
        put_uv(out, u64::from(self.records));
        put_iv(out, self.min_start);
        put_iv(out, self.max_start);
        put_iv(out, self.max_end);
        put_uv(out, self.seq_min);
        put_uv(out, self.seq_max);
        put_str(out, &self.first_node);
        put_str(out, &self.last_node);
        out.push(self.kinds);
        for w in self.protos {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let flags = u8::from(self.src4.is_some())
            | u8::from(self.dst4.is_some()) << 1
            | u8::from(self.src6.is_some()) << 2
            | u8::from(self.dst6.is_some()) << 3;
        out.push(flags);
        for (a, b) in [self.src4, self.dst4].into_iter().flatten() {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
        for (a, b) in [self.src6, self.dst6].into_iter().flatten() {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
        self.bloom.write(out);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, Bad> {
        let offset = r.uv()?;
        let clen = r.u32v()?;
        let raw_len = r.u32v()?;
        let crc = r.u32v()?;
        let entries = r.u32v()?;
        let records = r.u32v()?;
        let min_start = r.iv()?;
        let max_start = r.iv()?;
        let max_end = r.iv()?;
        let seq_min = r.uv()?;
        let seq_max = r.uv()?;
        let first_node = r.string()?;
        let last_node = r.string()?;
        let kinds = r.u8()?;
        let mut protos = [0u64; 4];
        for p in &mut protos {
            *p = u64::from_le_bytes(r.array()?);
        }
        let flags = r.u8()?;
        let mut r4 = |on: bool| -> Result<Option<(u32, u32)>, Bad> {
            if !on {
                return Ok(None);
            }
            Ok(Some((
                u32::from_le_bytes(r.array()?),
                u32::from_le_bytes(r.array()?),
            )))
        };
        let src4 = r4(flags & 1 != 0)?;
        let dst4 = r4(flags & 2 != 0)?;
        let mut r6 = |on: bool| -> Result<Option<(u128, u128)>, Bad> {
            if !on {
                return Ok(None);
            }
            Ok(Some((
                u128::from_le_bytes(r.array()?),
                u128::from_le_bytes(r.array()?),
            )))
        };
        let src6 = r6(flags & 4 != 0)?;
        let dst6 = r6(flags & 8 != 0)?;
        let bloom = Bloom::read(r)?;
        Ok(Self {
            offset,
            clen,
            raw_len,
            crc,
            entries,
            records,
            min_start,
            max_start,
            max_end,
            seq_min,
            seq_max,
            first_node,
            last_node,
            kinds,
            protos,
            src4,
            dst4,
            src6,
            dst6,
            bloom,
        })
    }
}

/// A tuple of the block's tuple dictionary (addresses as block indexes).
type Tuple = (u8, u8, u32, u16, u32, u16);

/// Encodes records `order` of `cols` (in that order) into a block body.
pub(crate) fn encode(cols: &Columns, order: &[u32]) -> Vec<u8> {
    let recs = || order.iter().filter_map(|&i| cols.recs.get(i as usize));
    // Address dictionary: window indexes used, sorted by address.
    let mut used: Vec<u32> = Vec::new();
    for r in recs() {
        for e in cols.ents_of(r) {
            used.push(e.src);
            used.push(e.dst);
        }
    }
    used.sort_unstable();
    used.dedup();
    let addr_of = |i: u32| {
        cols.addrs
            .get(i as usize)
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    used.sort_by_key(|&i| addr_of(i));
    let bix: IndexMap<u32, u32> = used
        .iter()
        .enumerate()
        .map(|(b, &w)| (w, b as u32))
        .collect();
    let b = |w: u32| bix.get(&w).copied().unwrap_or(0);
    let tuple = |e: &Ent| -> Tuple { (e.kind, e.proto, b(e.src), e.sport, b(e.dst), e.dport) };
    let mut tuples: Vec<Tuple> = recs()
        .flat_map(|r| cols.ents_of(r).iter().map(tuple))
        .collect();
    tuples.sort_unstable();
    tuples.dedup();

    let mut s: Vec<Vec<u8>> = vec![Vec::new(); STREAMS];
    let n_recs = order.len();
    let n_ents: usize = recs().map(|r| r.len as usize).sum();
    let base_start = recs().next().map_or(0, |r| r.start);
    let base_seq = recs().map(|r| r.seq).min().unwrap_or(0);
    put_uv(&mut s[0], BLOCK_VERSION);
    put_uv(&mut s[0], n_recs as u64);
    put_uv(&mut s[0], n_ents as u64);
    put_uv(&mut s[0], tuples.len() as u64);
    put_iv(&mut s[0], base_start);
    put_uv(&mut s[0], base_seq);

    // Node runs.
    let mut runs: Vec<(u32, u64)> = Vec::new();
    for r in recs() {
        match runs.last_mut() {
            Some((n, c)) if *n == r.node => *c += 1,
            _ => runs.push((r.node, 1)),
        }
    }
    put_uv(&mut s[1], runs.len() as u64);
    for (n, c) in &runs {
        put_str(
            &mut s[1],
            cols.nodes.get(*n as usize).map_or("", |x| x.as_str()),
        );
        put_uv(&mut s[1], *c);
    }

    let (mut prev_start, mut prev_seq) = (base_start, base_seq);
    for r in recs() {
        put_uv(&mut s[2], u64::from(r.len));
        put_iv(&mut s[3], r.start.wrapping_sub(prev_start));
        put_iv(&mut s[4], r.end.wrapping_sub(r.start));
        put_iv(&mut s[5], r.logged.wrapping_sub(r.end));
        put_iv(&mut s[6], r.seq.wrapping_sub(prev_seq) as i64);
        prev_start = r.start;
        prev_seq = r.seq;
    }

    let v4: Vec<u32> = used
        .iter()
        .filter_map(|&i| match addr_of(i) {
            IpAddr::V4(a) => Some(u32::from(a)),
            IpAddr::V6(_) => None,
        })
        .collect();
    put_uv(&mut s[7], v4.len() as u64);
    let mut prev = 0u32;
    for a in &v4 {
        put_uv(&mut s[7], u64::from(a.wrapping_sub(prev)));
        prev = *a;
    }
    let n6 = used.len() - v4.len();
    put_uv(&mut s[7], n6 as u64);
    for &i in &used {
        if let IpAddr::V6(a) = addr_of(i) {
            s[7].extend_from_slice(&a.octets());
        }
    }

    for t in &tuples {
        s[8].push(t.0);
        s[9].push(t.1);
        put_uv(&mut s[10], u64::from(t.2));
        put_uv(&mut s[11], u64::from(t.3));
        put_uv(&mut s[12], u64::from(t.4));
        put_uv(&mut s[13], u64::from(t.5));
    }

    for r in recs() {
        let mut prev: Option<i64> = None;
        for e in cols.ents_of(r) {
            let t = tuple(e);
            let ti = tuples.binary_search(&t).unwrap_or(0) as i64;
            match prev {
                None => put_uv(&mut s[14], ti as u64),
                Some(p) => put_iv(&mut s[14], ti - p),
            }
            prev = Some(ti);
            put_uv(&mut s[15], e.tx_pkts);
            put_uv(&mut s[16], e.tx_bytes);
            put_uv(&mut s[17], e.rx_pkts);
            put_uv(&mut s[18], e.rx_bytes);
        }
    }

    let total: usize = s.iter().map(|x| x.len() + 5).sum();
    let mut out = Vec::with_capacity(total);
    for x in &s {
        put_chunk(&mut out, x);
    }
    out
}

/// Decodes a block body written by [`encode`]. Every index is checked:
/// damaged input gives an error, never a panic.
pub(crate) fn decode(body: &[u8]) -> Result<Columns, Bad> {
    let mut top = Reader::new(body);
    let mut st: Vec<Reader<'_>> = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        st.push(Reader::new(top.chunk()?));
    }
    let [
        h,
        nodes_s,
        rlen,
        rstart,
        rdur,
        rdelay,
        rseq,
        addrs_s,
        tk,
        tp,
        tsrc,
        tsp,
        tdst,
        tdp,
        etup,
        txp,
        txb,
        rxp,
        rxb,
    ] = &mut st[..]
    else {
        return Err(Bad("stream count"));
    };
    if h.uv()? != BLOCK_VERSION {
        return Err(Bad("unknown block version"));
    }
    let n_recs = h.uv()? as usize;
    let n_ents = h.uv()? as usize;
    let n_tuples = h.uv()? as usize;
    let base_start = h.iv()?;
    let base_seq = h.uv()?;
    // Each record and entry takes at least one byte in some stream.
    if n_recs > body.len() || n_ents > body.len() || n_tuples > body.len() {
        return Err(Bad("counts larger than the block"));
    }

    let mut cols = Columns::default();
    let n_nodes = nodes_s.count(2)?;
    let mut node_runs = Vec::with_capacity(n_nodes);
    for i in 0..n_nodes {
        cols.nodes.push(nodes_s.string()?);
        node_runs.push((i as u32, nodes_s.uv()?));
    }
    if node_runs.iter().map(|r| r.1).sum::<u64>() != n_recs as u64 {
        return Err(Bad("node runs do not add up to the records"));
    }

    let n4 = addrs_s.count(1)?;
    let mut prev = 0u32;
    for _ in 0..n4 {
        prev = prev.wrapping_add(addrs_s.u32v()?);
        cols.addrs.push(IpAddr::V4(Ipv4Addr::from(prev)));
    }
    let n6 = addrs_s.count(16)?;
    for _ in 0..n6 {
        cols.addrs
            .push(IpAddr::V6(Ipv6Addr::from(addrs_s.array::<16>()?)));
    }
    let n_addrs = cols.addrs.len() as u32;

    let mut tuples: Vec<Tuple> = Vec::with_capacity(n_tuples);
    for _ in 0..n_tuples {
        let kind = tk.u8()?;
        if kind > 3 {
            return Err(Bad("unknown kind"));
        }
        let proto = tp.u8()?;
        let src = tsrc.u32v()?;
        let sport = u16::try_from(tsp.uv()?).map_err(|_| Bad("port out of range"))?;
        let dst = tdst.u32v()?;
        let dport = u16::try_from(tdp.uv()?).map_err(|_| Bad("port out of range"))?;
        if src >= n_addrs || dst >= n_addrs {
            return Err(Bad("address index out of range"));
        }
        tuples.push((kind, proto, src, sport, dst, dport));
    }

    cols.recs.reserve(n_recs);
    cols.ents.reserve(n_ents);
    let (mut prev_start, mut prev_seq) = (base_start, base_seq);
    for (node, count) in node_runs {
        for _ in 0..count {
            let len = rlen.u32v()?;
            let start = prev_start.wrapping_add(rstart.iv()?);
            let end = start.wrapping_add(rdur.iv()?);
            let logged = end.wrapping_add(rdelay.iv()?);
            let seq = prev_seq.wrapping_add(rseq.iv()? as u64);
            prev_start = start;
            prev_seq = seq;
            let first = cols.ents.len() as u32;
            if cols.ents.len() + len as usize > n_ents {
                return Err(Bad("more entries than declared"));
            }
            let mut ti: i64 = 0;
            for j in 0..len {
                ti = if j == 0 {
                    etup.uv()? as i64
                } else {
                    ti.wrapping_add(etup.iv()?)
                };
                let t = usize::try_from(ti)
                    .ok()
                    .and_then(|i| tuples.get(i))
                    .ok_or(Bad("tuple index out of range"))?;
                cols.ents.push(Ent {
                    tx_pkts: txp.uv()?,
                    tx_bytes: txb.uv()?,
                    rx_pkts: rxp.uv()?,
                    rx_bytes: rxb.uv()?,
                    src: t.2,
                    dst: t.4,
                    sport: t.3,
                    dport: t.5,
                    kind: t.0,
                    proto: t.1,
                });
            }
            cols.recs.push(Rec {
                node,
                first,
                len,
                start,
                end,
                logged,
                seq,
            });
        }
    }
    if cols.ents.len() != n_ents {
        return Err(Bad("fewer entries than declared"));
    }
    Ok(cols)
}
