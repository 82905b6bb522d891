//! Built-in functions that finish at once: ping, info, read_file,
//! write_file, stat, remove. (`exec` runs in the loop: see
//! [`super::external_context`].)

use alloc::string::String;
use alloc::vec::Vec;

use rustix::fd::AsFd;
use rustix::fs::{self, Mode, OFlags, CWD};

use super::util::{os_error, push_decimal};
use crate::proto::functions::{InfoReply, PathArgs, StatArgs, StatReply, WriteFileArgs};
use crate::proto::{ErrorKind, RemoteError};

/// Facts the agent knows from its start.
#[derive(Debug)]
pub struct Identity {
    /// Hash passed in by stage0.
    pub hash: String,
    /// `/proc/self/exe`.
    pub exe: String,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `info`.
pub fn info(id: &Identity) -> InfoReply {
    use rustix::process;
    let u = rustix::system::uname();
    let euid = process::geteuid().as_raw();
    InfoReply {
        pid: process::getpid().as_raw_nonzero().get() as u32,
        ppid: process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32),
        uid: process::getuid().as_raw(),
        gid: process::getgid().as_raw(),
        euid,
        egid: process::getegid().as_raw(),
        user: user_name(euid),
        hostname: lossy(u.nodename().to_bytes()),
        arch: lossy(u.machine().to_bytes()),
        kernel: lossy(u.release().to_bytes()),
        agent_version: String::from(env!("CARGO_PKG_VERSION")),
        agent_hash: id.hash.clone(),
        exe: id.exe.clone(),
        cwd: fs::readlink("/proc/self/cwd", Vec::new()).map(|c| lossy(c.to_bytes())).unwrap_or_default(),
    }
}

/// The name of `uid` from /etc/passwd (no NSS in a static binary), else `$USER`.
fn user_name(uid: u32) -> String {
    let mut want = Vec::new();
    push_decimal(&mut want, u64::from(uid));
    if let Ok(passwd) = read_all(b"/etc/passwd", usize::MAX) {
        for line in passwd.split(|&c| c == b'\n') {
            let mut f = line.split(|&c| c == b':');
            let (name, _, id) = (f.next(), f.next(), f.next());
            if let (Some(name), Some(id)) = (name, id) {
                if id == &want[..] {
                    return lossy(name);
                }
            }
        }
    }
    super::util::env_var(b"USER").map(lossy).unwrap_or_default()
}

/// Reads a whole file, refusing files above `max` bytes.
pub fn read_all(path: &[u8], max: usize) -> Result<Vec<u8>, RemoteError> {
    let mut out = Vec::new();
    read_into(path, max, &mut out)?;
    Ok(out)
}

/// Appends a whole file to `out` (refusing files above `max` bytes),
/// reading straight into `out`'s memory: no staging buffer.
pub fn read_into(path: &[u8], max: usize, out: &mut Vec<u8>) -> Result<usize, RemoteError> {
    let too_large = || RemoteError::new(ErrorKind::TooLarge, super::util::op_path("read", path));
    let fd = fs::openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| os_error(e, "open", path))?;
    let st = fs::fstat(&fd).map_err(|e| os_error(e, "stat", path))?;
    let size = st.st_size.max(0) as usize;
    if size > max {
        return Err(too_large());
    }
    let start = out.len();
    // The size is a hint (files change, /proc lies): read to EOF, growing.
    // Reading into the spare capacity skips zero-filling the buffer first
    // (that memset was the agent's hottest code in a 64 MiB read).
    out.reserve(size.max(64 * 1024) + 1);
    loop {
        if out.len() == out.capacity() {
            if out.len() - start >= max {
                out.truncate(start);
                return Err(too_large());
            }
            out.reserve((out.len() - start).max(64 * 1024));
        }
        match rustix::io::read(&fd, rustix::buffer::spare_capacity(out)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                out.truncate(start);
                return Err(os_error(e, "read", path));
            }
        }
    }
    let n = out.len() - start;
    if n > max {
        out.truncate(start);
        return Err(too_large());
    }
    Ok(n)
}

/// `write_file`: a temp file beside the destination, then rename, so a
/// reader never sees half a file and a failure leaves the old one.
pub fn write_file(a: WriteFileArgs, serial: u64) -> Result<(), RemoteError> {
    let path = &a.path[..];
    let existing = fs::statat(CWD, path, fs::AtFlags::empty()).ok().map(|s| s.st_mode & 0o7777);
    let mode = a.mode.or(existing).unwrap_or(0o644);
    let (fd, tmp) = super::util::create_temp_beside(path, serial)?;
    let result = (|| {
        super::util::write_all(fd.as_fd(), &a.data, path)?;
        fs::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| os_error(e, "chmod", path))?;
        fs::renameat(CWD, &tmp[..], CWD, path).map_err(|e| os_error(e, "rename", path))
    })();
    if result.is_err() {
        let _ = fs::unlinkat(CWD, &tmp[..], fs::AtFlags::empty());
    }
    result
}

/// `stat`.
pub fn stat(a: StatArgs) -> Result<StatReply, RemoteError> {
    let flags = if a.follow { fs::AtFlags::empty() } else { fs::AtFlags::SYMLINK_NOFOLLOW };
    let st = fs::statat(CWD, &a.path[..], flags).map_err(|e| os_error(e, "stat", &a.path))?;
    Ok(super::fs::stat_reply(&st))
}

/// `remove`: a file or symlink, or an empty directory.
pub fn remove(a: PathArgs) -> Result<(), RemoteError> {
    match fs::unlinkat(CWD, &a.path[..], fs::AtFlags::empty()) {
        Err(rustix::io::Errno::ISDIR) => {
            fs::unlinkat(CWD, &a.path[..], fs::AtFlags::REMOVEDIR).map_err(|e| os_error(e, "rmdir", &a.path))
        }
        r => r.map_err(|e| os_error(e, "unlink", &a.path)),
    }
}

/// Appends this agent's own executable to `out` (for the next hop's stage0).
pub fn append_own_exe(out: &mut Vec<u8>) -> Result<(), rustix::io::Errno> {
    let fd = fs::open("/proc/self/exe", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut buf = [0u8; 16384];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}
