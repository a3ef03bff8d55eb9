//! Body compression per `compressionFormat`, shared by every sink.

use crate::config::Compression;
use std::io::Write;

/// How a compressed body is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Its `Content-Encoding`.
    pub header: &'static str,
    /// Its file extension.
    pub ext: &'static str,
}

const GZIP: Encoding = Encoding {
    header: "gzip",
    ext: "gz",
};
const ZSTD: Encoding = Encoding {
    header: "zstd",
    ext: "zst",
};

/// `body` compressed as `c`, with its encoding (`None` when uncompressed).
pub fn compress(body: Vec<u8>, c: Compression) -> Result<(Vec<u8>, Option<Encoding>), String> {
    match c {
        Compression::None => Ok((body, None)),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body)
                .and_then(|()| e.finish())
                .map(|b| (b, Some(GZIP)))
                .map_err(|e| format!("compressing a batch: {e}"))
        }
        Compression::Zstd => zstd::encode_all(body.as_slice(), 3)
            .map(|b| (b, Some(ZSTD)))
            .map_err(|e| format!("compressing a batch: {e}")),
    }
}
