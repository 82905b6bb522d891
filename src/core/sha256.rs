//! SHA-256 (FIPS 180-4), small and `no_std`: the agent hashes what it reads
//! and writes during file transfers, the master checks the digest end to end.
//! A crate would do the same; this one costs the agent a few KB.
//!
//! On x86_64 CPUs with the SHA extensions (checked at run time with
//! `cpuid`) blocks go through `sha256rnds2`: ~5× the portable code, which
//! ran at ~300 MB/s and was the ceiling of every transfer.

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// An incremental SHA-256.
#[derive(Clone, Debug)]
pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    total: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 {
            state: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19],
            block: [0; 64],
            filled: 0,
            total: 0,
        }
    }
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let b = self.block;
            self.compress(&b);
            self.filled = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            let mut b = [0u8; 64];
            b.copy_from_slice(c);
            self.compress(&b);
        }
        let rest = chunks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The digest.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        let n = if self.filled < 56 { 56 - self.filled } else { 120 - self.filled };
        let total = self.total;
        self.update(&pad[..n]);
        self.update(&bits.to_be_bytes());
        self.total = total;
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        #[cfg(target_arch = "x86_64")]
        if ni::available() {
            // SAFETY: the CPU has the SHA, SSSE3 and SSE4.1 extensions.
            unsafe { ni::compress(&mut self.state, block) };
            return;
        }
        self.compress_portable(block);
    }

    fn compress_portable(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use core::arch::x86_64::*;
    use core::sync::atomic::{AtomicU8, Ordering};

    /// 0 unknown, 1 no, 2 yes.
    static HAVE: AtomicU8 = AtomicU8::new(0);

    pub fn available() -> bool {
        match HAVE.load(Ordering::Relaxed) {
            2 => true,
            1 => false,
            _ => {
                #[allow(unused_unsafe)]
                // SAFETY: cpuid exists on every x86_64 CPU.
                let (l1, l7) = unsafe { (__cpuid(1), __cpuid_count(7, 0)) };
                let yes = l7.ebx & (1 << 29) != 0 && l1.ecx & (1 << 19) != 0 && l1.ecx & (1 << 9) != 0;
                HAVE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// One block with the SHA extensions (state kept as ABEF/CDGH lanes).
    // The last groups compute message words no later group reads.
    #[allow(unused_assignments)]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
        let mask = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        let mut tmp = _mm_loadu_si128(state.as_ptr() as *const __m128i);
        let mut state1 = _mm_loadu_si128(state.as_ptr().add(4) as *const __m128i);
        tmp = _mm_shuffle_epi32(tmp, 0xB1);
        state1 = _mm_shuffle_epi32(state1, 0x1B);
        let mut state0 = _mm_alignr_epi8(tmp, state1, 8);
        state1 = _mm_blend_epi16(state1, tmp, 0xF0);
        let (abef, cdgh) = (state0, state1);
        let p = block.as_ptr() as *const __m128i;
        let mut m = [
            _mm_shuffle_epi8(_mm_loadu_si128(p), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), mask),
            _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), mask),
        ];
        // Unrolled by hand: the agent is built for size, where a loop kept
        // the state on the stack and called out for the range checks.
        macro_rules! group {
            ($g:literal) => {
                let k = _mm_loadu_si128(super::K.as_ptr().add(4 * $g) as *const __m128i);
                let wk = _mm_add_epi32(m[$g % 4], k);
                state1 = _mm_sha256rnds2_epu32(state1, state0, wk);
                if $g >= 3 && $g <= 14 {
                    let t = _mm_alignr_epi8(m[$g % 4], m[($g + 3) % 4], 4);
                    m[($g + 1) % 4] = _mm_sha256msg2_epu32(_mm_add_epi32(m[($g + 1) % 4], t), m[$g % 4]);
                }
                state0 = _mm_sha256rnds2_epu32(state0, state1, _mm_shuffle_epi32(wk, 0x0E));
                if $g >= 1 && $g <= 12 {
                    m[($g + 3) % 4] = _mm_sha256msg1_epu32(m[($g + 3) % 4], m[$g % 4]);
                }
            };
        }
        group!(0);
        group!(1);
        group!(2);
        group!(3);
        group!(4);
        group!(5);
        group!(6);
        group!(7);
        group!(8);
        group!(9);
        group!(10);
        group!(11);
        group!(12);
        group!(13);
        group!(14);
        group!(15);
        state0 = _mm_add_epi32(state0, abef);
        state1 = _mm_add_epi32(state1, cdgh);
        tmp = _mm_shuffle_epi32(state0, 0x1B);
        state1 = _mm_shuffle_epi32(state1, 0xB1);
        state0 = _mm_blend_epi16(tmp, state1, 0xF0);
        state1 = _mm_alignr_epi8(state1, tmp, 8);
        _mm_storeu_si128(state.as_mut_ptr() as *mut __m128i, state0);
        _mm_storeu_si128(state.as_mut_ptr().add(4) as *mut __m128i, state1);
    }
}

/// The digest of `data` in one go.
pub fn digest(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::io::Write;

    fn hex(d: [u8; 32]) -> alloc::string::String {
        d.iter().map(|b| alloc::format!("{b:02x}")).collect()
    }

    /// One block through the portable code only.
    fn portable(state: &mut [u32; 8], block: &[u8; 64]) {
        let mut h = Sha256 { state: *state, ..Sha256::new() };
        h.compress_portable(block);
        *state = h.state;
    }

    /// The whole FIPS 180-4 hash of `data` (padding done here, not by
    /// `update`/`finish`) with `compress` for every block: each
    /// implementation proven on its own against the published vectors.
    fn digest_with(data: &[u8], compress: &dyn Fn(&mut [u32; 8], &[u8; 64])) -> [u8; 32] {
        let mut msg = data.to_vec();
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
        let mut state = Sha256::new().state;
        for block in msg.chunks_exact(64) {
            compress(&mut state, block.try_into().expect("64 bytes"));
        }
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    /// FIPS 180-2 appendix B (and the NIST examples): "abc", the empty
    /// string, the 56- and 112-byte two-block messages, a million 'a'.
    fn vectors() -> [(alloc::vec::Vec<u8>, &'static str); 5] {
        [
            (b"abc".to_vec(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (b"".to_vec(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".to_vec(),
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
                    .to_vec(),
                "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
            ),
            (alloc::vec![b'a'; 1_000_000], "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
        ]
    }

    /// Does /proc/cpuinfo list the `sha_ni` flag?
    fn cpu_says_sha_ni() -> bool {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni")))
            .unwrap_or(false)
    }

    /// Says so on the process's stderr, which libtest does not capture
    /// (it would hide an `eprintln!` of a passing test).
    fn loudly(msg: &str) {
        let _ = std::io::stderr().lock().write_all(alloc::format!("\n*** {msg} ***\n\n").as_bytes());
    }

    #[test]
    fn portable_matches_the_published_vectors() {
        for (data, want) in vectors() {
            assert_eq!(hex(digest_with(&data, &portable)), want, "{} bytes", data.len());
        }
    }

    /// The hardware path against the published vectors and against the
    /// portable one, when the CPU has SHA-NI; where it has not, that path
    /// cannot run here and the test says so where it is seen.
    #[test]
    fn hardware_and_portable_agree() {
        #[cfg(target_arch = "x86_64")]
        {
            let listed = cpu_says_sha_ni();
            assert_eq!(ni::available(), listed, "cpuid and /proc/cpuinfo disagree about SHA-NI");
            if listed {
                let hardware = |state: &mut [u32; 8], block: &[u8; 64]| {
                    // SAFETY: the CPU has the SHA, SSSE3 and SSE4.1 extensions.
                    unsafe { ni::compress(state, block) }
                };
                for (data, want) in vectors() {
                    assert_eq!(hex(digest_with(&data, &hardware)), want, "SHA-NI, {} bytes", data.len());
                }
                let mut rng = fastrand::Rng::with_seed(42);
                for _ in 0..10_000 {
                    let mut block = [0u8; 64];
                    block.iter_mut().for_each(|b| *b = rng.u8(..));
                    let mut a = [0u32; 8];
                    a.iter_mut().for_each(|s| *s = rng.u32(..));
                    let mut b = a;
                    hardware(&mut a, &block);
                    portable(&mut b, &block);
                    assert_eq!(a, b);
                }
                return;
            }
        }
        loudly(
            "hardware_and_portable_agree: this CPU has no SHA-NI (no sha_ni in /proc/cpuinfo), so the \
             hardware SHA-256 path was NOT tested here; only the portable code was (portable_matches_the_published_vectors)",
        );
    }

    #[test]
    fn known_vectors_and_split_updates() {
        // The dispatching `digest` (hardware where the CPU has it).
        for (data, want) in vectors() {
            assert_eq!(hex(digest(&data)), want, "{} bytes", data.len());
        }
        let long: alloc::vec::Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let whole = digest(&long);
        assert_eq!(whole, digest_with(&long, &portable));
        for step in [1usize, 63, 64, 65, 1000, 4096] {
            let mut h = Sha256::new();
            for c in long.chunks(step) {
                h.update(c);
            }
            assert_eq!(h.finish(), whole, "step {step}");
        }
    }
}
