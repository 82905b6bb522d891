//! Decimal numbers without `core::fmt` (which costs the agent kilobytes),
//! and other small byte helpers both halves use.

use alloc::vec::Vec;

/// Appends the decimal digits of `n`.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parses a decimal number (at most 19 digits, nothing else).
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0')))
}

/// Whether every byte is zero: a transfer's receiver leaves a hole for such
/// a chunk instead of writing it, so sparse files stay sparse.
pub fn all_zero(b: &[u8]) -> bool {
    // Word-wise: a data chunk fails on its first word, a hole is a fast scan.
    // SAFETY: every bit pattern is a valid u64.
    let (head, words, tail) = unsafe { b.align_to::<u64>() };
    head.iter().all(|&x| x == 0) && words.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal() {
        let mut v = alloc::vec::Vec::new();
        super::push_decimal(&mut v, 1234567890);
        assert_eq!(v, b"1234567890");
        assert_eq!(super::parse_decimal(b"0042"), Some(42));
        assert_eq!(super::parse_decimal(b"4x"), None);
        assert_eq!(super::parse_decimal(b""), None);
    }

    #[test]
    fn all_zero_at_every_alignment() {
        let mut buf = [0u8; 67];
        for start in 0..8 {
            assert!(super::all_zero(&buf[start..]));
            for i in start..buf.len() {
                buf[i] = 1;
                assert!(!super::all_zero(&buf[start..]), "byte {i} from {start}");
                buf[i] = 0;
            }
        }
        assert!(super::all_zero(&[]));
    }
}
