//! Small helpers that keep `core::fmt` out of the agent.

use alloc::ffi::CString;
use alloc::string::String;
use alloc::vec::Vec;

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

/// Creates `.NAME.mito-tmp.PID.SERIAL` (0600, exclusive) beside `dest`:
/// the one way the agent stages a file before renaming it into place.
/// Errors name `dest`, the path the caller asked for.
pub fn create_temp_beside(dest: &[u8], serial: u64) -> Result<(rustix::fd::OwnedFd, Vec<u8>), RemoteError> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let cut = dest.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    let mut tmp = dest[..cut].to_vec();
    tmp.push(b'.');
    tmp.extend_from_slice(&dest[cut..]);
    tmp.extend_from_slice(b".mito-tmp.");
    push_decimal(&mut tmp, u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32));
    tmp.push(b'.');
    push_decimal(&mut tmp, serial);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let fd = openat(CWD, &tmp[..], flags, Mode::from_bits_truncate(0o600)).map_err(|e| os_error(e, "create", dest))?;
    Ok((fd, tmp))
}

/// Writes all of `data` to `fd`; errors name `dest`.
pub fn write_all(fd: rustix::fd::BorrowedFd<'_>, mut data: &[u8], dest: &[u8]) -> Result<(), RemoteError> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(os_error(e, "write", dest)),
        }
    }
    Ok(())
}

/// Monotonic time in nanoseconds (the clocks of the loop's poll window and
/// of the children's stall and exit waits).
///
/// musl's `clock_gettime`, not rustix's: rustix brings its own vDSO
/// parser (2.4 KB of the agent) for what musl already does.
pub fn now_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
