//! Payload compression: raw deflate, flagged by [`super::FLAG_COMPRESSED`].
//!
//! Worth it only on slow links; a local stream leaves it off. Decompression
//! is bounded by the stream's maximum message size, so a small frame cannot
//! inflate into an unbounded allocation.

use alloc::vec::Vec;

/// Payloads smaller than this are never compressed: the header and the CPU
/// cost more than they save.
pub const MIN_COMPRESS: usize = 4096;

/// How much of a large payload is deflated first, to see whether the rest
/// is worth it.
const PROBE: usize = 64 << 10;

/// Compresses `data` if that saves at least an eighth; `None` otherwise.
///
/// Gives up early: on a payload over twice [`PROBE`], once the first
/// [`PROBE`] bytes (flushed to a byte boundary) did not shrink by an
/// eighth, and on any payload once the output reaches the size that would
/// save less. Deflating a whole 1 MiB chunk of random bytes only to throw
/// it away cost a `put --compress` 0.19 s per 64 MiB.
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    use miniz_oxide::deflate::core::{
        compress as deflate, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
    };
    if data.len() < MIN_COMPRESS {
        return None;
    }
    let mut d = CompressorOxide::new(create_comp_flags_from_zip_params(1, 0, 0));
    // Room for what would still save an eighth, no more.
    let mut out = alloc::vec![0u8; data.len() - data.len() / 8];
    let (mut input, mut at) = (data, 0);
    if data.len() > 2 * PROBE {
        let (status, read, wrote) = deflate(&mut d, &data[..PROBE], &mut out, TDEFLFlush::Sync);
        if status != TDEFLStatus::Okay || read != PROBE || wrote >= PROBE - PROBE / 8 {
            return None;
        }
        (input, at) = (&data[PROBE..], wrote);
    }
    loop {
        let (status, read, wrote) = deflate(&mut d, input, &mut out[at..], TDEFLFlush::Finish);
        at += wrote;
        match status {
            TDEFLStatus::Done => {
                out.truncate(at);
                return Some(out);
            }
            // Out of room (or no progress): it would not save an eighth.
            TDEFLStatus::Okay if read <= input.len() && at < out.len() && read + wrote > 0 => input = &input[read..],
            _ => return None,
        }
    }
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

    /// `n` bytes nothing compresses (xorshift).
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn large_payloads_round_trip_or_give_up() {
        let text: Vec<u8> =
            (0..40_000u32).flat_map(|i| alloc::format!("line {i} of a log, host{}\n", i % 7).into_bytes()).collect();
        assert!(text.len() > 2 * PROBE);
        let c = compress(&text).expect("log text shrinks");
        assert!(c.len() < text.len() / 3);
        assert_eq!(decompress(&c, text.len()).as_deref(), Some(&text[..]));
        // Random bytes: refused, whether or not the probe runs.
        assert_eq!(compress(&noise(1 << 20)), None);
        assert_eq!(compress(&noise(PROBE)), None);
        // Compressible at first, random after: the whole would not save an
        // eighth, so no, though the probe passed.
        let mut mixed = text[..PROBE * 2].to_vec();
        mixed.extend(noise(1 << 20));
        assert_eq!(compress(&mixed), None);
        // Random at first, compressible after: the probe says no.
        let mut late = noise(PROBE);
        late.extend_from_slice(&text);
        assert_eq!(compress(&late), None);
        // Just saving an eighth still counts, in one piece.
        let mut half = noise(PROBE);
        half.extend(core::iter::repeat_n(b'a', PROBE));
        let c = compress(&half).expect("half of it compresses");
        assert_eq!(decompress(&c, half.len()).as_deref(), Some(&half[..]));
    }
}
