//! XXH3-128 (xxHash's 128-bit XXH3, seed 0, default secret), small and
//! `no_std`: the default integrity check of file transfers, computed on
//! both ends of every chunk (`agent::files`, `master::transfer`). SHA-256
//! at ~2 GB/s (SHA-NI) was the largest user-space cost of a transfer on
//! both ends; this runs several times faster in plain scalar code.
//!
//! It detects corruption and accidental change, not a forger: a target
//! that wants to lie about a file's content can, whatever the hash (it
//! sends the bytes and their digest). Where a user wants a cryptographic
//! digest, transfers still take SHA-256 ([`HashKind::Sha256`]).
//!
//! Map: the algorithm as the xxHash specification (doc/xxhash_spec.md,
//! v0.2.0) describes it: [`xxh3_128`] for a slice (short inputs 0-16,
//! 17-128, 129-240 bytes; long inputs by 1 KiB blocks of 64-byte stripes),
//! [`Xxh3`] for a stream (buffers at most 256 bytes and the last stripe);
//! then [`Hasher`] and [`Digest`]: a transfer's digest, either algorithm,
//! named by its [`HashKind`]. Canonical bytes are big-endian (high half
//! first), as `xxh128sum` prints them.

use crate::core::sha256::Sha256;
use crate::proto::functions::HashKind;

const P32_1: u64 = 0x9E37_79B1;
const P32_2: u64 = 0x85EB_CA77;
const P32_3: u64 = 0xC2B2_AE3D;
const P64_1: u64 = 0x9E37_79B1_85EB_CA87;
const P64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P64_3: u64 = 0x1656_67B1_9E37_79F9;
const P64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const P64_5: u64 = 0x27D4_EB2F_1656_67C5;
const PMX1: u64 = 0x1656_6791_9E37_79F9;
const PMX2: u64 = 0x9FB2_1C65_1E98_DF25;

/// The default secret (xxHash's `kSecret`).
const SECRET: [u8; 192] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4, 0x6d,
    0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0,
    0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0,
    0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b,
    0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac,
    0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51,
    0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34,
    0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49,
    0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8,
    0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b,
    0x40, 0x7e,
];

const STRIPE: usize = 64;
const STRIPES_PER_BLOCK: usize = (SECRET.len() - STRIPE) / 8;
/// The stream's buffer: a multiple of the stripe, above the 240 bytes the
/// short algorithms take whole.
const BUF: usize = 256;
const INIT_ACC: [u64; 8] = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1];

#[inline(always)]
fn r64(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn r32(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

#[inline(always)]
fn s64(i: usize) -> u64 {
    r64(&SECRET, i)
}

fn fold64(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

fn avalanche(mut x: u64) -> u64 {
    x ^= x >> 37;
    x = x.wrapping_mul(PMX1);
    x ^ (x >> 32)
}

fn avalanche_xxh64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(P64_2);
    x ^= x >> 29;
    x = x.wrapping_mul(P64_3);
    x ^ (x >> 32)
}

/// One stripe into the accumulators, with the secret from `at`: two
/// lanes per SSE2 instruction (SSE2 is part of every x86_64, so no
/// detection at run time). Twice the scalar loop's speed (5.5 to 11 GB/s
/// here), which is what both ends of a transfer spend hashing.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn accumulate(acc: &mut [u64; 8], stripe: &[u8], at: usize) {
    use core::arch::x86_64::{
        __m128i, _mm_add_epi64, _mm_loadu_si128, _mm_mul_epu32, _mm_shuffle_epi32, _mm_srli_epi64, _mm_storeu_si128,
        _mm_xor_si128,
    };
    let (stripe, key) = (&stripe[..STRIPE], &SECRET[at..at + STRIPE]);
    for i in 0..4 {
        // SAFETY: SSE2 is in x86_64's baseline; each unaligned load or
        // store touches 16 bytes at 16 * i < 64 of a slice of 64 bytes
        // (checked above) or of the 8 accumulators.
        unsafe {
            let a = acc.as_mut_ptr().add(2 * i).cast::<__m128i>();
            let d = _mm_loadu_si128(stripe.as_ptr().add(16 * i).cast());
            let dk = _mm_xor_si128(d, _mm_loadu_si128(key.as_ptr().add(16 * i).cast()));
            // Each lane's low half times its high half.
            let product = _mm_mul_epu32(dk, _mm_srli_epi64::<32>(dk));
            // The data goes to the neighbouring lane: swap the halves.
            let swapped = _mm_shuffle_epi32::<0b0100_1110>(d);
            _mm_storeu_si128(a, _mm_add_epi64(_mm_add_epi64(_mm_loadu_si128(a), swapped), product));
        }
    }
}

/// One stripe into the accumulators, with the secret from `at`.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn accumulate(acc: &mut [u64; 8], stripe: &[u8], at: usize) {
    for i in 0..8 {
        let d = r64(stripe, 8 * i);
        let v = d ^ s64(at + 8 * i);
        acc[i ^ 1] = acc[i ^ 1].wrapping_add(d);
        acc[i] = acc[i].wrapping_add((v & 0xffff_ffff).wrapping_mul(v >> 32));
    }
}

fn scramble(acc: &mut [u64; 8]) {
    for (i, a) in acc.iter_mut().enumerate() {
        *a ^= *a >> 47;
        *a ^= s64(SECRET.len() - STRIPE + 8 * i);
        *a = a.wrapping_mul(P32_1);
    }
}

fn final_merge(acc: &[u64; 8], init: u64, at: usize) -> u64 {
    let mut r = init;
    for i in 0..4 {
        r = r.wrapping_add(fold64(acc[2 * i] ^ s64(at + 16 * i), acc[2 * i + 1] ^ s64(at + 16 * i + 8)));
    }
    avalanche(r)
}

fn mix16(d: &[u8], at: usize) -> u64 {
    fold64(r64(d, 0) ^ s64(at), r64(d, 8) ^ s64(at + 8))
}

/// Two 16-byte pieces into the two accumulators (seed 0).
fn mix32(acc: &mut (u64, u64), d1: &[u8], d2: &[u8], at: usize) {
    acc.0 = acc.0.wrapping_add(mix16(d1, at));
    acc.1 = acc.1.wrapping_add(mix16(d2, at + 16));
    acc.0 ^= r64(d2, 0).wrapping_add(r64(d2, 8));
    acc.1 ^= r64(d1, 0).wrapping_add(r64(d1, 8));
}

/// Inputs of at most 240 bytes: (low, high).
fn short(d: &[u8]) -> (u64, u64) {
    let len = d.len();
    let n = len as u64;
    match len {
        0 => (avalanche_xxh64(s64(64) ^ s64(72)), avalanche_xxh64(s64(80) ^ s64(88))),
        1..=3 => {
            let c = u32::from(d[len - 1]) | (len as u32) << 8 | u32::from(d[0]) << 16 | u32::from(d[len >> 1]) << 24;
            let s = |i| u64::from(r32(&SECRET, i));
            let low = (s(0) ^ s(4)) ^ u64::from(c);
            let high = (s(8) ^ s(12)) ^ u64::from(c.swap_bytes().rotate_left(13));
            (avalanche_xxh64(low), avalanche_xxh64(high))
        }
        4..=8 => {
            let combined = u64::from(r32(d, 0)) | u64::from(r32(d, len - 4)) << 32;
            let v = (s64(16) ^ s64(24)) ^ combined;
            let m = u128::from(v) * u128::from(P64_1.wrapping_add(n << 2));
            let mut high = (m >> 64) as u64;
            let mut low = m as u64;
            high = high.wrapping_add(low << 1);
            low ^= high >> 3;
            low ^= low >> 35;
            low = low.wrapping_mul(PMX2);
            low ^= low >> 28;
            (low, avalanche(high))
        }
        9..=16 => {
            let (first, last) = (r64(d, 0), r64(d, len - 8));
            let v1 = (s64(32) ^ s64(40)) ^ first ^ last;
            let v2 = (s64(48) ^ s64(56)) ^ last;
            let m = u128::from(v1) * u128::from(P64_1);
            let mut low = (m as u64).wrapping_add((n - 1) << 54);
            let mut high = ((m >> 64) as u64)
                .wrapping_add(v2 & 0xffff_ffff_0000_0000)
                .wrapping_add((v2 & 0xffff_ffff).wrapping_mul(P32_2));
            low ^= high.swap_bytes();
            let m2 = u128::from(low) * u128::from(P64_2);
            low = m2 as u64;
            high = ((m2 >> 64) as u64).wrapping_add(high.wrapping_mul(P64_2));
            (avalanche(low), avalanche(high))
        }
        _ => {
            let mut acc = (n.wrapping_mul(P64_1), 0u64);
            if len <= 128 {
                for i in (0..=(len - 1) / 32).rev() {
                    mix32(&mut acc, &d[16 * i..], &d[len - 16 * i - 16..], 32 * i);
                }
            } else {
                for i in 0..4 {
                    mix32(&mut acc, &d[32 * i..], &d[32 * i + 16..], 32 * i);
                }
                acc = (avalanche(acc.0), avalanche(acc.1));
                for i in 4..len / 32 {
                    mix32(&mut acc, &d[32 * i..], &d[32 * i + 16..], 32 * (i - 4) + 3);
                }
                mix32(&mut acc, &d[len - 16..], &d[len - 32..], 103);
            }
            let low = acc.0.wrapping_add(acc.1);
            let high =
                acc.0.wrapping_mul(P64_1).wrapping_add(acc.1.wrapping_mul(P64_4)).wrapping_add(n.wrapping_mul(P64_2));
            (avalanche(low), avalanche(high).wrapping_neg())
        }
    }
}

/// XXH3-128 of `data` as a number (high half in the top 64 bits).
pub fn xxh3_128(data: &[u8]) -> u128 {
    let mut h = Xxh3::new();
    h.update(data);
    h.finish_u128()
}

/// An incremental XXH3-128. Long inputs are consumed stripe by stripe as
/// they come; only the bytes that may be the last stripe wait.
#[derive(Clone, Debug)]
pub struct Xxh3 {
    acc: [u64; 8],
    /// Bytes not yet consumed.
    buf: [u8; BUF],
    filled: usize,
    /// The last stripe consumed (the final stripe may overlap it).
    prev: [u8; STRIPE],
    /// Stripes consumed in the current block.
    stripes: usize,
    total: u64,
}

impl Default for Xxh3 {
    fn default() -> Self {
        Xxh3 { acc: INIT_ACC, buf: [0; BUF], filled: 0, prev: [0; STRIPE], stripes: 0, total: 0 }
    }
}

impl Xxh3 {
    /// A fresh hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes whole stripes of `data` (`data.len()` a multiple of 64;
    /// more input follows them, so none is the last).
    fn consume(&mut self, data: &[u8]) {
        for stripe in data.chunks_exact(STRIPE) {
            accumulate(&mut self.acc, stripe, 8 * self.stripes);
            self.stripes += 1;
            if self.stripes == STRIPES_PER_BLOCK {
                scramble(&mut self.acc);
                self.stripes = 0;
            }
        }
        if data.len() >= STRIPE {
            self.prev.copy_from_slice(&data[data.len() - STRIPE..]);
        }
    }

    /// Hashes more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.filled + data.len() <= BUF {
            self.buf[self.filled..self.filled + data.len()].copy_from_slice(data);
            self.filled += data.len();
            return;
        }
        if self.filled > 0 {
            // Fill the buffer: more bytes follow, so all of it goes.
            let take = BUF - self.filled;
            self.buf[self.filled..].copy_from_slice(&data[..take]);
            data = &data[take..];
            let buf = self.buf;
            self.consume(&buf);
            self.filled = 0;
        }
        // Keep back 1..=64 bytes: the last stripe is only known at the end.
        let whole = (data.len() - 1) / STRIPE * STRIPE;
        self.consume(&data[..whole]);
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The digest as a number (high half in the top 64 bits).
    pub fn finish_u128(&self) -> u128 {
        let (low, high) = if self.total <= 240 { short(&self.buf[..self.filled]) } else { self.long() };
        u128::from(high) << 64 | u128::from(low)
    }

    /// The digest's canonical bytes (big-endian, as `xxh128sum` prints).
    pub fn finish(&self) -> [u8; 16] {
        self.finish_u128().to_be_bytes()
    }

    fn long(&self) -> (u64, u64) {
        let mut h = self.clone();
        let n = h.filled;
        // Whole stripes before the last one are ordinary stripes.
        let whole = (n - 1) / STRIPE * STRIPE;
        let buf = h.buf;
        h.consume(&buf[..whole]);
        // The last 64 bytes of the input, partly from the stripe before.
        let mut last = [0u8; STRIPE];
        if n >= STRIPE {
            last.copy_from_slice(&self.buf[n - STRIPE..n]);
        } else {
            let from_prev = STRIPE - n;
            last[..from_prev].copy_from_slice(&h.prev[STRIPE - from_prev..]);
            last[from_prev..].copy_from_slice(&self.buf[..n]);
        }
        accumulate(&mut h.acc, &last, SECRET.len() - STRIPE - 7);
        let len = self.total;
        let low = final_merge(&h.acc, len.wrapping_mul(P64_1), 11);
        let high = final_merge(&h.acc, !len.wrapping_mul(P64_2), SECRET.len() - STRIPE - 11);
        (low, high)
    }
}

/// A transfer's digest, with its algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Digest {
    /// XXH3-128, canonical (big-endian) bytes.
    Xxh3_128([u8; 16]),
    /// SHA-256.
    Sha256([u8; 32]),
}

impl Digest {
    /// The algorithm.
    pub fn kind(&self) -> HashKind {
        match self {
            Digest::Xxh3_128(_) => HashKind::Xxh3_128,
            Digest::Sha256(_) => HashKind::Sha256,
        }
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Digest::Xxh3_128(d) => d,
            Digest::Sha256(d) => d,
        }
    }

    /// A `kind` digest from its bytes (as a target sent them): `None`
    /// when the length is not that algorithm's.
    pub fn from_bytes(kind: HashKind, bytes: &[u8]) -> Option<Digest> {
        match kind {
            HashKind::Xxh3_128 => bytes.try_into().ok().map(Digest::Xxh3_128),
            HashKind::Sha256 => bytes.try_into().ok().map(Digest::Sha256),
        }
    }

    /// The algorithm's name as tools print it: `xxh3-128`, `sha256`.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

impl HashKind {
    /// The algorithm's name as tools print it: `xxh3-128`, `sha256`.
    pub fn name(self) -> &'static str {
        match self {
            HashKind::Xxh3_128 => "xxh3-128",
            HashKind::Sha256 => "sha256",
        }
    }
}

/// Lower-case hex, as `xxh128sum` and `sha256sum` print the digest.
impl core::fmt::Display for Digest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.as_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// An incremental digest of either algorithm (what a transfer hashes).
// One per open transfer: a few hundred bytes inline beat a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Hasher {
    /// XXH3-128.
    Xxh3(Xxh3),
    /// SHA-256.
    Sha256(Sha256),
}

impl Hasher {
    /// A fresh `kind` hash.
    pub fn new(kind: HashKind) -> Hasher {
        match kind {
            HashKind::Xxh3_128 => Hasher::Xxh3(Xxh3::new()),
            HashKind::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    /// Hashes more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Xxh3(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The digest of everything so far (the hash can go on).
    pub fn digest(&self) -> Digest {
        match self {
            Hasher::Xxh3(h) => Digest::Xxh3_128(h.finish()),
            Hasher::Sha256(h) => Digest::Sha256(h.clone().finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// xxHash's sanity buffer (cli/xsum_sanity_check.c, `XSUM_fillTestBuffer`).
    fn sanity_buffer(n: usize) -> Vec<u8> {
        let mut g: u64 = 2_654_435_761;
        (0..n)
            .map(|_| {
                let b = (g >> 56) as u8;
                g = g.wrapping_mul(11_400_714_785_074_694_797);
                b
            })
            .collect()
    }

    /// xxHash's own XXH128 vectors for seed 0 (`XSUM_XXH128_testdata`:
    /// length, low half, high half), one per algorithm and edge of it; and
    /// lengths the reference does not list (241: the first long input; a
    /// block and a byte; many blocks), from the reference library 0.8.4
    /// (python-xxhash's `xxh3_128_hexdigest`).
    const VECTORS: &[(usize, u64, u64)] = &[
        (0, 0x6001C324468D497F, 0x99AA06D3014798D8),
        (1, 0xC44BDFF4074EECDB, 0xA6CD5E9392000F6A),
        (6, 0x3E7039BDDA43CFC6, 0x082AFE0B8162D12A),
        (12, 0x061A192713F69AD9, 0x6E3EFD8FC7802B18),
        (24, 0x1E7044D28B1B901D, 0x0CE966E4678D3761),
        (48, 0xF942219AED80F67B, 0xA002AC4E5478227E),
        (81, 0x5E8BAFB9F95FB803, 0x4952F58181AB0042),
        (222, 0xF1AEBD597CEC6B3A, 0x337E09641B948717),
        (403, 0xCDEB804D65C6DEA4, 0x1B6DE21E332DD73D),
        (512, 0x617E49599013CB6B, 0x18D2D110DCC9BCA1),
        (2048, 0xDD59E2C3A5F038E0, 0xF736557FD47073A5),
        (2240, 0x6E73A90539CF2948, 0xCCB134FBFA7CE49D),
        (2367, 0xCB37AEB9E5D361ED, 0xE89C0F6FF369B427),
        (241, 0xc5a639ecd2030e5e, 0x99a80ecf0ecfc647),
        (1024, 0xdd85c9b5c1109c5c, 0x0d30d24071c64c57),
        (1025, 0xd870c0fa13211c6a, 0xfd3ee4fe7f2954c6),
        (100_003, 0xd4aad81df88ff644, 0x5527b07a0f78e740),
    ];

    #[test]
    fn reference_vectors() {
        let buf = sanity_buffer(100_003);
        for &(n, low, high) in VECTORS {
            let want = u128::from(high) << 64 | u128::from(low);
            assert_eq!(xxh3_128(&buf[..n]), want, "length {n}");
        }
    }

    #[test]
    fn any_split_of_a_stream_gives_the_same_digest() {
        let buf = sanity_buffer(5000);
        for &(n, low, high) in VECTORS.iter().filter(|v| v.0 <= 5000) {
            let want = u128::from(high) << 64 | u128::from(low);
            for piece in [1, 3, 63, 64, 65, 200, 255, 256, 257, 1000, 1024, 4096] {
                let mut h = Xxh3::new();
                buf[..n].chunks(piece).for_each(|c| h.update(c));
                assert_eq!(h.finish_u128(), want, "length {n} in pieces of {piece}");
            }
            // Uneven pieces: a short one, then a long one, then the rest.
            for cut in [0, 1, 17, 100, 250, 300] {
                let cut = cut.min(n);
                let mut h = Xxh3::new();
                h.update(&buf[..cut]);
                h.update(&buf[cut..n]);
                assert_eq!(h.finish_u128(), want, "length {n} cut at {cut}");
            }
        }
    }

    #[test]
    fn canonical_bytes_are_big_endian_and_named() {
        let d = Hasher::new(HashKind::Xxh3_128).digest();
        assert_eq!(alloc::format!("{d}"), "99aa06d3014798d86001c324468d497f", "xxh128sum of nothing");
        assert_eq!(d.name(), "xxh3-128");
        let s = Hasher::new(HashKind::Sha256).digest();
        assert_eq!(alloc::format!("{s}"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Digest::from_bytes(HashKind::Sha256, d.as_bytes()), None, "a 16-byte digest is no SHA-256");
        assert_eq!(Digest::from_bytes(HashKind::Xxh3_128, d.as_bytes()), Some(d));
    }
}
