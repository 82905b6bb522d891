//! Small helpers that keep `core::fmt` out of the agent.

use alloc::ffi::CString;
use alloc::string::String;
use alloc::vec::Vec;

use crate::proto::{ErrorKind, RemoteError};

/// Decimal digits of `n` (no `core::fmt`).
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

/// Parses a decimal number.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0')))
}

/// A C string from wire bytes; an interior NUL is a [`ErrorKind::BadArgs`].
pub fn cstring(bytes: &[u8]) -> Result<CString, RemoteError> {
    CString::new(bytes).map_err(|_| RemoteError::new(ErrorKind::BadArgs, "NUL byte in string argument"))
}

/// `"<op> <path>"`, lossily decoded, for error messages.
pub fn op_path(op: &str, path: &[u8]) -> String {
    let mut s = String::from(op);
    s.push(' ');
    s.push_str(&String::from_utf8_lossy(path));
    s
}

/// An OS error for `op` on `path`.
pub fn os_error(e: rustix::io::Errno, op: &str, path: &[u8]) -> RemoteError {
    RemoteError::os(e.raw_os_error(), op_path(op, path))
}
