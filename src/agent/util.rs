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

/// The agent's environment as `KEY=VALUE` byte strings.
pub fn environ() -> alloc::vec::Vec<&'static [u8]> {
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    let mut out = alloc::vec::Vec::new();
    // SAFETY: walking the NULL-terminated environ array of this single-threaded
    // process; nothing in the agent modifies its environment.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            out.push(core::ffi::CStr::from_ptr(*p).to_bytes());
            p = p.add(1);
        }
    }
    out
}

/// Looks up an environment variable of the agent.
pub fn env_var(name: &[u8]) -> Option<&'static [u8]> {
    environ().into_iter().find_map(|e| {
        (e.len() > name.len() && e.starts_with(name) && e[name.len()] == b'=').then(|| &e[name.len() + 1..])
    })
}
