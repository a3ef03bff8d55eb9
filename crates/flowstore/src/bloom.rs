//! The per-block Bloom filter over addresses and ports.
//!
//! Hand-written because its hash is part of the file format and must never
//! change: FNV-1a 64 over `tag | key bytes`, finished with SplitMix64's
//! mixer; probe `i` is `(h1 + i * h2) mod m` with `h1`, `h2` the low and
//! high halves (`h2` forced odd) and `m` a power of two.

use crate::codec::{Bad, Reader, put_uv};
use std::net::IpAddr;

/// Key tag of a source address.
pub(crate) const TAG_SRC: u8 = 1;
/// Key tag of a destination address.
pub(crate) const TAG_DST: u8 = 2;
/// Key tag of a port (either side).
pub(crate) const TAG_PORT: u8 = 3;

/// Bits per distinct key (about 2% false positives with 5 probes).
const BITS_PER_KEY: usize = 8;
const PROBES: u8 = 5;
const MIN_BITS: usize = 64;
/// At most 8 KiB per block.
const MAX_BITS: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bloom {
    k: u8,
    words: Vec<u64>,
}

fn hash(tag: u8, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&tag).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Bloom key bytes of an address: 4 bytes for IPv4, 16 for IPv6.
pub(crate) fn addr_key(a: &IpAddr, out: &mut [u8; 16]) -> usize {
    match a {
        IpAddr::V4(v) => {
            out[..4].copy_from_slice(&v.octets());
            4
        }
        IpAddr::V6(v) => {
            out.copy_from_slice(&v.octets());
            16
        }
    }
}

impl Bloom {
    /// An empty filter sized for `keys` distinct keys.
    pub(crate) fn with_keys(keys: usize) -> Self {
        let bits = (keys.saturating_mul(BITS_PER_KEY))
            .clamp(MIN_BITS, MAX_BITS)
            .next_power_of_two();
        Self {
            k: PROBES,
            words: vec![0; bits / 64],
        }
    }

    fn probes(&self, tag: u8, key: &[u8]) -> impl Iterator<Item = usize> + use<> {
        let h = hash(tag, key);
        let mask = (self.words.len() * 64 - 1) as u64;
        let h1 = h & 0xffff_ffff;
        let h2 = (h >> 32) | 1;
        (0..u64::from(self.k)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    pub(crate) fn insert(&mut self, tag: u8, key: &[u8]) {
        for p in self.probes(tag, key) {
            self.words[p / 64] |= 1 << (p % 64);
        }
    }

    pub(crate) fn may_contain(&self, tag: u8, key: &[u8]) -> bool {
        if self.words.is_empty() {
            return true;
        }
        self.probes(tag, key)
            .all(|p| self.words[p / 64] & (1 << (p % 64)) != 0)
    }

    pub(crate) fn insert_addr(&mut self, tag: u8, a: &IpAddr) {
        let mut k = [0u8; 16];
        let n = addr_key(a, &mut k);
        self.insert(tag, &k[..n]);
    }

    pub(crate) fn may_contain_addr(&self, tag: u8, a: &IpAddr) -> bool {
        let mut k = [0u8; 16];
        let n = addr_key(a, &mut k);
        self.may_contain(tag, &k[..n])
    }

    pub(crate) fn insert_port(&mut self, p: u16) {
        self.insert(TAG_PORT, &p.to_le_bytes());
    }

    pub(crate) fn may_contain_port(&self, p: u16) -> bool {
        self.may_contain(TAG_PORT, &p.to_le_bytes())
    }

    pub(crate) fn mem_bytes(&self) -> usize {
        self.words.len() * 8
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(self.k);
        put_uv(out, self.words.len() as u64);
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, Bad> {
        let k = r.u8()?;
        let n = r.count(8)?;
        if n != 0 && !n.is_power_of_two() {
            return Err(Bad("bloom size is not a power of two"));
        }
        let mut words = Vec::with_capacity(n);
        for _ in 0..n {
            words.push(u64::from_le_bytes(r.array()?));
        }
        Ok(Self { k, words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::with_keys(1000);
        for p in 0..1000u16 {
            b.insert_port(p);
        }
        assert!((0..1000u16).all(|p| b.may_contain_port(p)));
        let fp = (10_000..20_000u16)
            .filter(|p| b.may_contain_port(*p))
            .count();
        assert!(fp < 500, "{fp} false positives in 10000");
        let a: IpAddr = "100.64.0.1".parse().unwrap();
        b.insert_addr(TAG_SRC, &a);
        assert!(b.may_contain_addr(TAG_SRC, &a));
    }
}
