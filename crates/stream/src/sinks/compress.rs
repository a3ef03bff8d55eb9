//! Body compression per `compressionFormat`, shared by every sink.

use crate::config::Compression;
use std::io::Write;

/// `body` compressed as `c`, with its `Content-Encoding` and file
/// extension (`None` when uncompressed).
pub fn compress(
    body: Vec<u8>,
    c: Compression,
) -> Result<(Vec<u8>, Option<(&'static str, &'static str)>), String> {
    match c {
        Compression::None => Ok((body, None)),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body)
                .and_then(|()| e.finish())
                .map(|b| (b, Some(("gzip", "gz"))))
                .map_err(|e| format!("compressing a batch: {e}"))
        }
        Compression::Zstd => zstd::encode_all(body.as_slice(), 3)
            .map(|b| (b, Some(("zstd", "zst"))))
            .map_err(|e| format!("compressing a batch: {e}")),
    }
}
