//! Byte-level helpers: LEB128 varints, zigzag, a bounds-checked reader.

/// A fast hasher for maps keyed by small integers (dictionary indexes and
/// times), never by values an agent chooses: those keep SipHash, which
/// resists deliberate collisions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexHasher(u64);

impl IndexHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for IndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_i64(&mut self, v: i64) {
        self.add(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by indexes (see [`IndexHasher`]).
pub(crate) type IndexMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IndexHasher>>;

/// A decoding failure (the caller adds where).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bad(pub &'static str);

pub(crate) fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn put_iv(out: &mut Vec<u8>, v: i64) {
    put_uv(out, zigzag(v));
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uv(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `bytes` preceded by their length.
pub(crate) fn put_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uv(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads what the `put_*` functions wrote, never panicking on bad input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn uv(&mut self) -> Result<u64, Bad> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(Bad("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(Bad("varint overflow"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(Bad("varint too long"));
            }
        }
    }

    pub(crate) fn iv(&mut self) -> Result<i64, Bad> {
        self.uv().map(unzigzag)
    }

    /// A varint that must fit `u32`.
    pub(crate) fn u32v(&mut self) -> Result<u32, Bad> {
        u32::try_from(self.uv()?).map_err(|_| Bad("value out of range"))
    }

    /// A count of items each taking at least `min_bytes` of the rest.
    pub(crate) fn count(&mut self, min_bytes: usize) -> Result<usize, Bad> {
        let n = self.uv()?;
        let left = (self.buf.len() - self.pos.min(self.buf.len())) as u64;
        if n.saturating_mul(min_bytes as u64) > left {
            return Err(Bad("count larger than the data"));
        }
        Ok(n as usize)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let end = self.pos.checked_add(n).ok_or(Bad("length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or(Bad("truncated data"))?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(crate) fn chunk(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.count(1)?;
        self.bytes(n)
    }

    pub(crate) fn string(&mut self) -> Result<String, Bad> {
        let b = self.chunk()?;
        String::from_utf8(b.to_vec()).map_err(|_| Bad("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        let vals = [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        let mut buf = Vec::new();
        for v in vals {
            put_uv(&mut buf, v);
        }
        let ivals = [0i64, -1, 1, i64::MIN, i64::MAX, -300];
        for v in ivals {
            put_iv(&mut buf, v);
        }
        let mut r = Reader::new(&buf);
        for v in vals {
            assert_eq!(r.uv().unwrap(), v);
        }
        for v in ivals {
            assert_eq!(r.iv().unwrap(), v);
        }
        assert!(r.is_empty());
        assert!(Reader::new(&[0xff; 11]).uv().is_err());
        assert!(Reader::new(&[0x80]).uv().is_err());
    }
}
