//! Small helpers that keep `core::fmt` out of the agent.

use alloc::ffi::CString;
use alloc::string::String;

use crate::proto::{ErrorKind, RemoteError};

pub use crate::core::num::{parse_decimal, push_decimal};

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
