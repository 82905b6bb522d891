//! Payload compression: raw deflate, flagged by [`super::FLAG_COMPRESSED`].
//!
//! Worth it only on slow links; a local stream leaves it off. Decompression
//! is bounded by the stream's maximum message size, so a small frame cannot
//! inflate into an unbounded allocation.

use alloc::vec::Vec;

/// Payloads smaller than this are never compressed: the header and the CPU
/// cost more than they save.
pub const MIN_COMPRESS: usize = 4096;

/// Compresses `data` if that saves at least an eighth; `None` otherwise.
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < MIN_COMPRESS {
        return None;
    }
    let out = miniz_oxide::deflate::compress_to_vec(data, 1);
    (out.len() < data.len() - data.len() / 8).then_some(out)
}

/// Inflates `data`, refusing results above `max` bytes.
pub fn decompress(data: &[u8], max: usize) -> Option<Vec<u8>> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(data, max).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limit() {
        let data = alloc::vec![7u8; 100_000];
        let c = compress(&data).expect("compressible");
        assert_eq!(decompress(&c, 100_000).as_deref(), Some(&data[..]));
        assert_eq!(decompress(&c, 99_999), None);
        assert_eq!(compress(b"short"), None);
    }
}
