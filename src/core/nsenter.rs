//! Entering a container (another process's namespaces, root, credentials,
//! environment and cgroup) or a chroot, and executing a program from an fd
//! there: the one implementation behind the `setns` and `chroot` methods,
//! run by the master (a direct start) and by a hop agent (behind a hop).
//! `no_std` + `alloc`: it builds into the agent.
//!
//! Two halves:
//! - [`Plan`]: everything read and opened **before** the fork (the files
//!   of `/proc/PID`, namespace fds, the root and cwd as fds, the cgroup
//!   files, ids, the environment, argv/envp as C strings). Allocation and
//!   parsing happen only here.
//! - [`launch`]: fork; the child runs only raw system calls ([`sys`]:
//!   async-signal-safe, so a multi-threaded master may fork too): joins the
//!   cgroup, enters the namespaces (the user namespace last, as nsenter(1)
//!   does, so a root that may enter the others does so with the host's
//!   capabilities), chroots to the root fd and changes to the cwd fd, then
//!   forks once more with `CLONE_PARENT` (setns of a pid namespace applies
//!   to children only; `CLONE_PARENT` makes the agent our child, not the
//!   intermediate's, so the caller reaps it by pidfd like any command).
//!   The agent drops to the target's capabilities, groups, gid and uid,
//!   and `execveat`s the program fd (a memfd: nothing is written into the
//!   container and no shell or binary is needed inside it).
//!
//! Errors are a [`Failure`]: the step and its errno, sent up a CLOEXEC
//! pipe by the children (the classic way: a successful exec closes it).
//! `EACCES` before the exec becomes `EPERM` (both mean: not allowed to
//! look at or enter that process), so that a caller that sees only the
//! errno (a master behind a hop) can still tell "not root" from "exec
//! failed".
//!
//! Not applied (the caller's docs say so): the target's seccomp filter
//! (it cannot be read back without ptrace) and its AppArmor/SELinux label.

use alloc::ffi::CString;
use alloc::vec::Vec;

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::proto::functions::{Enter, Ids};

/// Most of `/proc/PID/environ` read (the rest is dropped, at a variable's
/// end): a process's environment is bounded only by its stack limit.
pub const MAX_ENVIRON: usize = 256 * 1024;

/// Most of the small `/proc` files read (status, cgroup, id maps).
const MAX_SMALL_FILE: usize = 1 << 20;

/// A thin layer over the system calls the children make, one line each on
/// what it does. All are raw calls: no locks, no allocation, safe after a
/// fork of a multi-threaded process.
// Each call's contract is its man page's, and the callers' is the
// module's: raw fds and pointers of a prepared `Plan`.
#[allow(clippy::missing_safety_doc)]
pub mod sys {
    use core::ffi::{c_char, c_int, c_long};

    /// `setns(fd, nstype)`: join the namespace `fd` names.
    pub unsafe fn setns(fd: c_int, nstype: c_int) -> c_long {
        libc::syscall(libc::SYS_setns, fd, nstype)
    }
    /// `fchdir(fd)`: make the directory `fd` names the working directory.
    pub unsafe fn fchdir(fd: c_int) -> c_long {
        libc::syscall(libc::SYS_fchdir, fd)
    }
    /// `chdir(path)`: change the working directory by path.
    pub unsafe fn chdir(path: *const c_char) -> c_long {
        libc::syscall(libc::SYS_chdir, path)
    }
    /// `chroot(path)`: make `path` (here ".", the working directory) the root.
    pub unsafe fn chroot(path: *const c_char) -> c_long {
        libc::syscall(libc::SYS_chroot, path)
    }
    /// `clone(CLONE_PARENT | SIGCHLD)`: a fork whose child is our parent's
    /// child (flags first and stack 0 on every architecture: a fork).
    pub unsafe fn fork_as_sibling() -> c_long {
        libc::syscall(libc::SYS_clone, (libc::CLONE_PARENT | libc::SIGCHLD) as c_long, 0 as c_long, 0, 0, 0)
    }
    /// `clone(SIGCHLD)`: fork without libc's atfork work (locks, handlers):
    /// the child makes raw calls only, so it needs none of it.
    pub unsafe fn fork() -> c_long {
        libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_long, 0 as c_long, 0, 0, 0)
    }
    /// `setpgid(0, 0)`: lead a process group of our own (the caller
    /// signals the command's group, as for any command).
    pub unsafe fn setpgid_self() -> c_long {
        libc::syscall(libc::SYS_setpgid, 0, 0)
    }
    /// `dup3(old, new, 0)`: `new` is `old`, inherited across exec.
    pub unsafe fn dup_to(old: c_int, new: c_int) -> c_long {
        libc::syscall(libc::SYS_dup3, old, new, 0)
    }
    /// `rt_sigprocmask(SIG_SETMASK, {})`: no signal blocked (the mask is
    /// inherited across exec; a hop blocks the ones its signalfd reads).
    pub unsafe fn unblock_all_signals() -> c_long {
        let none: u64 = 0;
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &none as *const u64, core::ptr::null::<u64>(), 8)
    }
    /// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: no fd of ours from
    /// `first` up crosses the exec into the target (Linux 5.11; older
    /// kernels rely on every fd being CLOEXEC already).
    pub unsafe fn cloexec_from(first: c_int) -> c_long {
        const CLOSE_RANGE_CLOEXEC: c_int = 1 << 2;
        libc::syscall(libc::SYS_close_range, first, c_int::MAX, CLOSE_RANGE_CLOEXEC)
    }
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: as the target has it.
    pub unsafe fn no_new_privs() -> c_long {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1 as c_long, 0 as c_long, 0 as c_long, 0 as c_long)
    }
    /// `prctl(PR_CAPBSET_DROP, cap)`: drop `cap` from the bounding set.
    pub unsafe fn drop_bounding_cap(cap: c_int) -> c_long {
        libc::syscall(libc::SYS_prctl, libc::PR_CAPBSET_DROP, cap as c_long, 0 as c_long, 0 as c_long, 0 as c_long)
    }
    /// `capset(v3, {eff, prm, inh})`: these capability sets exactly.
    pub unsafe fn capset(eff: u64, prm: u64, inh: u64) -> c_long {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let h = Header { version: 0x2008_0522, pid: 0 };
        let half = |v: u64, hi: bool| if hi { (v >> 32) as u32 } else { v as u32 };
        let d = [false, true].map(|hi| Data {
            effective: half(eff, hi),
            permitted: half(prm, hi),
            inheritable: half(inh, hi),
        });
        libc::syscall(libc::SYS_capset, &h as *const Header, d.as_ptr())
    }
    /// `setgroups(n, list)`: the supplementary groups.
    pub unsafe fn setgroups(n: usize, list: *const u32) -> c_long {
        libc::syscall(libc::SYS_setgroups, n, list)
    }
    /// `setresgid(g, g, g)`: real, effective and saved gid of this thread
    /// (the only one: a raw call, not libc's all-threads broadcast).
    pub unsafe fn setresgid(g: u32) -> c_long {
        libc::syscall(libc::SYS_setresgid, g, g, g)
    }
    /// `setresuid(u, u, u)`: real, effective and saved uid.
    pub unsafe fn setresuid(u: u32) -> c_long {
        libc::syscall(libc::SYS_setresuid, u, u, u)
    }
    /// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: run the file `fd`
    /// names, found by no path (fexecve).
    pub unsafe fn execveat(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_long {
        let empty = b"\0";
        libc::syscall(libc::SYS_execveat, fd, empty.as_ptr(), argv, envp, libc::AT_EMPTY_PATH)
    }
    /// `write(fd, buf, len)`.
    pub unsafe fn write(fd: c_int, buf: *const u8, len: usize) -> c_long {
        libc::syscall(libc::SYS_write, fd, buf, len)
    }
    /// `exit_group(code)`: end the process without running anything of the
    /// parent's (no atexit handlers, no buffers flushed twice).
    pub unsafe fn exit(code: c_int) -> ! {
        libc::syscall(libc::SYS_exit_group, code);
        #[allow(clippy::empty_loop)]
        loop {}
    }
    /// The calling thread's errno after a failed call.
    pub fn errno() -> i32 {
        // SAFETY: libc's errno slot of this thread, always valid.
        unsafe { *libc::__errno_location() }
    }
}

/// Where a start failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Reading the target in `/proc/PID` (or opening the chroot directory).
    Inspect = 1,
    /// Entering a namespace.
    Setns = 2,
    /// chroot, or changing to the target's working directory.
    Chroot = 3,
    /// The fork into the pid namespace (its init has exited: the target
    /// is gone, reported as `ESRCH`).
    Fork = 4,
    /// Taking the target's capabilities, groups and ids.
    Credentials = 5,
    /// Executing the program.
    Exec = 6,
    /// Nothing came back in time.
    Timeout = 7,
    /// Setting up pipes, the memfd, the fork.
    Setup = 8,
}

impl Step {
    fn from_u32(v: u32) -> Step {
        match v {
            1 => Step::Inspect,
            2 => Step::Setns,
            3 => Step::Chroot,
            4 => Step::Fork,
            5 => Step::Credentials,
            6 => Step::Exec,
            7 => Step::Timeout,
            _ => Step::Setup,
        }
    }

    /// A word for messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::Inspect => "inspect",
            Step::Setns => "setns",
            Step::Chroot => "chroot",
            Step::Fork => "fork",
            Step::Credentials => "credentials",
            Step::Exec => "exec",
            Step::Timeout => "timeout",
            Step::Setup => "setup",
        }
    }
}

/// A failed start: the step and its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub step: Step,
    /// Why (an errno; see the module docs for EACCES).
    pub errno: i32,
}

impl Failure {
    fn new(step: Step, e: Errno) -> Failure {
        Failure::raw(step, e.raw_os_error())
    }

    fn raw(step: Step, errno: i32) -> Failure {
        let errno = if step != Step::Exec && errno == libc::EACCES { libc::EPERM } else { errno };
        Failure { step, errno }
    }
}

/// Target credentials: ids as seen inside the entered user namespace.
#[derive(Clone, Debug, Default)]
struct Creds {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// Entering a user namespace: the groups as the host sees them, set
    /// before it is entered (inside, `setgroups` may be denied, as
    /// rootless engines do; `groups` is then not used).
    host_groups: Option<Vec<u32>>,
    /// Capabilities (inheritable, permitted, effective, bounding), applied
    /// when the target is root; `None`: keep ours.
    caps: Option<[u64; 4]>,
    no_new_privs: bool,
}

/// The namespaces (theirs under `/proc/PID`, ours, the type), in the order
/// nsenter(1) enters them (user first in the list, but see [`launch`]: it
/// is entered last by root).
const NAMESPACES: [(&core::ffi::CStr, &core::ffi::CStr, i32); 8] = [
    (c"ns/user", c"/proc/self/ns/user", libc::CLONE_NEWUSER),
    (c"ns/cgroup", c"/proc/self/ns/cgroup", libc::CLONE_NEWCGROUP),
    (c"ns/ipc", c"/proc/self/ns/ipc", libc::CLONE_NEWIPC),
    (c"ns/uts", c"/proc/self/ns/uts", libc::CLONE_NEWUTS),
    (c"ns/net", c"/proc/self/ns/net", libc::CLONE_NEWNET),
    (c"ns/pid", c"/proc/self/ns/pid", libc::CLONE_NEWPID),
    (c"ns/mnt", c"/proc/self/ns/mnt", libc::CLONE_NEWNS),
    (c"ns/time", c"/proc/self/ns/time", 0x80),
];

/// Everything a start needs, read and opened before the fork.
#[derive(Debug, Default)]
pub struct Plan {
    /// Namespace fds to enter and their types (only those not ours).
    ns: Vec<(OwnedFd, i32)>,
    /// The new root (a directory fd).
    root: Option<OwnedFd>,
    /// The new working directory (an fd), else `/` after the chroot.
    cwd: Option<OwnedFd>,
    creds: Option<Creds>,
    /// `cgroup.procs` files the intermediate child writes `0` to (joins).
    cgroups: Vec<OwnedFd>,
    /// The target's environment (setns), else empty.
    pub env: Vec<Vec<u8>>,
}

/// Opens `path` under `dir` (or absolute) with `flags` and CLOEXEC.
fn open_at<P: rustix::path::Arg>(dir: Option<BorrowedFd<'_>>, path: P, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::CLOEXEC;
    match dir {
        Some(d) => rustix::fs::openat(d, path, flags, Mode::empty()),
        None => rustix::fs::open(path, flags, Mode::empty()),
    }
}

/// Reads at most `max` bytes of `path` (under `dir`).
fn read_file<P: rustix::path::Arg>(dir: Option<BorrowedFd<'_>>, path: P, max: usize) -> Result<Vec<u8>, Errno> {
    let fd = open_at(dir, path, OFlags::RDONLY)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < max {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n.min(max - out.len())]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A decimal number.
fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    u32::try_from(v).ok()
}

/// A hexadecimal number (capability masks).
fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        v = v << 4 | u64::from((c as char).to_digit(16)?);
    }
    Some(v)
}

fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|c| *c == b' ' || *c == b'\t').filter(|w| !w.is_empty())
}

/// The value of `Key:` in a `/proc/PID/status` text.
fn status_field<'a>(status: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    status.split(|c| *c == b'\n').find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(b":")))
}

/// Maps `id` of the reader's user namespace into the one a `uid_map` /
/// `gid_map` text describes (`inside outside count` lines); unmapped ids
/// become the overflow id 65534, as the kernel shows them.
fn map_id(map: &[u8], id: u32) -> u32 {
    for line in map.split(|c| *c == b'\n') {
        let mut w = words(line).map(parse_u32);
        if let (Some(Some(inside)), Some(Some(outside)), Some(Some(count))) = (w.next(), w.next(), w.next()) {
            if id >= outside && u64::from(id) < u64::from(outside) + u64::from(count) {
                return inside + (id - outside);
            }
        }
    }
    65534
}

impl Plan {
    /// What entering process `pid` takes: its namespaces (those that are
    /// not ours), root, cwd, effective uid/gid and groups, capabilities and
    /// no_new_privs, environment (at most [`MAX_ENVIRON`]) and cgroup.
    /// `ENOENT`: no such process.
    pub fn container(pid: u32) -> Result<Plan, Failure> {
        let fail = |e| Failure::new(Step::Inspect, e);
        let mut dir_path = Vec::from(&b"/proc/"[..]);
        crate::core::num::push_decimal(&mut dir_path, u64::from(pid));
        // All else is read relative to this fd: a pid reused meanwhile is
        // another directory, so nothing of a second process mixes in.
        let dir = open_at(None, &dir_path, OFlags::PATH | OFlags::DIRECTORY).map_err(fail)?;
        let d = Some(dir.as_fd());
        let mut plan = Plan::default();
        let mut own_user_ns = false;
        for (theirs, ours, flag) in NAMESPACES {
            // This kernel lacks the namespace type: nothing to enter.
            let Ok(mine) = rustix::fs::stat(ours) else { continue };
            let fd = open_at(d, theirs, OFlags::RDONLY).map_err(fail)?;
            let st = rustix::fs::fstat(&fd).map_err(fail)?;
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) {
                continue;
            }
            own_user_ns |= flag == libc::CLONE_NEWUSER;
            plan.ns.push((fd, flag));
        }
        plan.root = Some(open_at(d, c"root", OFlags::PATH | OFlags::DIRECTORY).map_err(fail)?);
        // Its cwd only if it lies under its root (as we see both): a
        // process may keep a cwd outside its chroot, and the agent must
        // not start with a way out of the container's tree.
        let link = |p: &core::ffi::CStr| rustix::fs::readlinkat(dir.as_fd(), p, Vec::new()).map(|c| c.into_bytes());
        if let (Ok(root), Ok(cwd)) = (link(c"root"), link(c"cwd")) {
            let root = root.strip_suffix(b"/").unwrap_or(&root);
            if cwd.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/")) {
                plan.cwd = open_at(d, c"cwd", OFlags::PATH | OFlags::DIRECTORY).ok();
            }
        }
        let status = read_file(d, c"status", MAX_SMALL_FILE).map_err(fail)?;
        plan.creds = Some(creds_from_status(&status, own_user_ns, d).ok_or(Failure::raw(Step::Inspect, libc::EINVAL))?);
        let environ = read_file(d, c"environ", MAX_ENVIRON).map_err(fail)?;
        plan.env = split_environ(&environ, environ.len() >= MAX_ENVIRON);
        if let Ok(cg) = read_file(d, c"cgroup", MAX_SMALL_FILE) {
            plan.cgroups = cgroup_files(&cg);
        }
        Ok(plan)
    }

    /// What a chroot to `root` takes: the directory, and the ids to run
    /// as (else the caller's). `ENOENT`/`ENOTDIR`: no such directory.
    pub fn chroot(root: &[u8], ids: Option<&Ids>) -> Result<Plan, Failure> {
        let dir = open_at(None, root, OFlags::PATH | OFlags::DIRECTORY).map_err(|e| Failure::new(Step::Inspect, e))?;
        let creds = ids.map(|i| Creds { uid: i.uid, gid: i.gid, groups: i.groups.clone(), ..Creds::default() });
        Ok(Plan { root: Some(dir), creds, ..Plan::default() })
    }

    /// The plan an [`Enter`] asks for (a process's namespaces, else a
    /// chroot).
    pub fn for_enter(e: &Enter) -> Result<Plan, Failure> {
        match (e.pid, &e.root) {
            (Some(pid), _) => Plan::container(pid),
            (None, Some(root)) => Plan::chroot(root, e.user.as_ref()),
            (None, None) => Err(Failure::raw(Step::Inspect, libc::EINVAL)),
        }
    }
}

/// Effective uid/gid, groups, capabilities and no_new_privs from a status
/// text, mapped into the target's user namespace when we enter it.
fn creds_from_status(status: &[u8], map: bool, dir: Option<BorrowedFd<'_>>) -> Option<Creds> {
    let second = |key: &[u8]| status_field(status, key).and_then(|v| words(v).nth(1)).and_then(parse_u32);
    let (mut uid, mut gid) = (second(b"Uid")?, second(b"Gid")?);
    let mut groups: Vec<u32> =
        status_field(status, b"Groups").map(|v| words(v).filter_map(parse_u32).collect()).unwrap_or_default();
    let mut host_groups = None;
    if map {
        let uid_map = read_file(dir, c"uid_map", MAX_SMALL_FILE).ok()?;
        let gid_map = read_file(dir, c"gid_map", MAX_SMALL_FILE).ok()?;
        uid = map_id(&uid_map, uid);
        gid = map_id(&gid_map, gid);
        host_groups = Some(core::mem::take(&mut groups));
    }
    let cap = |key: &[u8]| status_field(status, key).and_then(|v| words(v).next()).and_then(parse_hex);
    let caps = match (cap(b"CapInh"), cap(b"CapPrm"), cap(b"CapEff"), cap(b"CapBnd")) {
        (Some(i), Some(p), Some(e), Some(b)) => Some([i, p, e, b]),
        _ => None,
    };
    let no_new_privs = status_field(status, b"NoNewPrivs").and_then(|v| words(v).next()) == Some(b"1");
    Some(Creds { uid, gid, groups, host_groups, caps, no_new_privs })
}

/// `KEY=VALUE` entries of an environ text (NUL separated); when `cut`, the
/// last (partial) entry is dropped.
fn split_environ(raw: &[u8], cut: bool) -> Vec<Vec<u8>> {
    let mut parts: Vec<&[u8]> = raw.split(|c| *c == 0).collect();
    if cut || raw.last() != Some(&0) {
        parts.pop();
    }
    parts.into_iter().filter(|e| e.contains(&b'=') && e[0] != b'=').map(<[u8]>::to_vec).collect()
}

/// The `cgroup.procs` files of the cgroups a `/proc/PID/cgroup` text
/// names, opened for writing (those that can be: best effort): v2
/// (`0::/path`) under `/sys/fs/cgroup` or its hybrid `unified`, v1
/// (`n:controllers:/path`) under `/sys/fs/cgroup/<controllers>` (a
/// `name=x` hierarchy under `x`). The paths are the reader's view.
fn cgroup_files(text: &[u8]) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    for line in text.split(|c| *c == b'\n') {
        let mut f = line.splitn(3, |c| *c == b':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        if !path.starts_with(b"/") || path.split(|c| *c == b'/').any(|c| c == b"..") {
            continue;
        }
        let mounts: &[&[u8]] = if ctrl.is_empty() { &[b"", b"/unified"] } else { &[b"/"] };
        for m in mounts {
            let mut p = Vec::from(&b"/sys/fs/cgroup"[..]);
            p.extend_from_slice(m);
            if !ctrl.is_empty() {
                p.extend_from_slice(ctrl.strip_prefix(b"name=").unwrap_or(ctrl));
            }
            p.extend_from_slice(path);
            p.extend_from_slice(if path.ends_with(b"/") { b"cgroup.procs" } else { b"/cgroup.procs" });
            if let Ok(fd) = open_at(None, &p, OFlags::WRONLY) {
                out.push(fd);
                break;
            }
        }
    }
    out
}

/// A memfd (CLOEXEC, sealed against change) holding `bytes`: what the
/// agent is executed from. Sealed, so nobody who reaches it through
/// `/proc/<agent>/exe` in the container can alter it.
pub fn memfd_with(bytes: &[u8]) -> Result<OwnedFd, Errno> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("mito-agent", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut rest = bytes;
    while !rest.is_empty() {
        match rustix::io::write(&fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE)?;
    Ok(fd)
}

/// A memfd copy of this process's own executable (`/proc/self/exe`, read
/// before any namespace is entered): a hop starts the same agent it runs,
/// and no agent bytes cross any link. A copy rather than the file itself:
/// the cached agent is mode 0700 and its directory may be noexec or
/// another user's, while a memfd runs for any uid.
pub fn memfd_of_own_exe() -> Result<OwnedFd, Errno> {
    let bytes = read_file(None, c"/proc/self/exe", 64 << 20)?;
    memfd_with(&bytes)
}

/// `base` (`KEY=VALUE` entries) with `overrides` set, as C strings.
pub fn environment(mut base: Vec<Vec<u8>>, overrides: &[(&[u8], &[u8])]) -> Result<Vec<CString>, Errno> {
    for (k, v) in overrides {
        if k.is_empty() || k.contains(&b'=') {
            return Err(Errno::INVAL);
        }
        base.retain(|e| !(e.len() > k.len() && e.starts_with(k) && e[k.len()] == b'='));
        let mut e = k.to_vec();
        e.push(b'=');
        e.extend_from_slice(v);
        base.push(e);
    }
    base.into_iter().map(|e| CString::new(e).map_err(|_| Errno::INVAL)).collect()
}

/// What the children write up the report pipe: `[tag, a, b]`, 12 bytes
/// (atomic on a pipe).
const TAG_PID: u32 = 1;
const TAG_FAIL: u32 = 2;

unsafe fn report(fd: i32, tag: u32, a: u32, b: u32) {
    let mut rec = [0u8; 12];
    rec[..4].copy_from_slice(&tag.to_ne_bytes());
    rec[4..8].copy_from_slice(&a.to_ne_bytes());
    rec[8..].copy_from_slice(&b.to_ne_bytes());
    sys::write(fd, rec.as_ptr(), rec.len());
}

/// Reports `step` with the current errno and exits.
unsafe fn die(fd: i32, step: Step) -> ! {
    let e = sys::errno();
    report(fd, TAG_FAIL, step as u32, e as u32);
    sys::exit(127)
}

/// The raw view of a [`Plan`] the children use (no allocation after fork).
struct Raw<'a> {
    plan: &'a Plan,
    exe: i32,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [i32; 3],
    report: i32,
}

/// Starts `argv` (the program is `exe`, an fd) with `envp` as `plan`
/// says, its stdin, stdout and stderr `stdio`; waits at most `timeout_ms`
/// for the exec. Returns the started process's pid (our child, leading
/// its own process group).
pub fn launch(
    plan: &Plan,
    exe: BorrowedFd<'_>,
    argv: &[CString],
    envp: &[CString],
    stdio: [BorrowedFd<'_>; 3],
    timeout_ms: u32,
) -> Result<u32, Failure> {
    let setup = |e| Failure::new(Step::Setup, e);
    if argv.is_empty() {
        return Err(Failure::raw(Step::Setup, libc::EINVAL));
    }
    let argv_p: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(core::iter::once(core::ptr::null())).collect();
    let envp_p: Vec<*const libc::c_char> =
        envp.iter().map(|a| a.as_ptr()).chain(core::iter::once(core::ptr::null())).collect();
    // Copies above 2, so that moving them onto 0–2 cannot overwrite one
    // another (and they are CLOEXEC: only the moved copies cross the exec).
    let mut high = Vec::new();
    for fd in stdio {
        high.push(rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(setup)?);
    }
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(setup)?;
    let raw = Raw {
        plan,
        exe: exe.as_raw_fd(),
        argv: &argv_p,
        envp: &envp_p,
        stdio: [high[0].as_raw_fd(), high[1].as_raw_fd(), high[2].as_raw_fd()],
        report: wr.as_raw_fd(),
    };
    // SAFETY: the child runs only `intermediate`, which makes raw system
    // calls on memory prepared above and never returns.
    let child = unsafe { sys::fork() } as i32;
    if child < 0 {
        return Err(Failure::raw(Step::Setup, sys::errno()));
    }
    if child == 0 {
        // SAFETY: in the child; see above.
        unsafe { intermediate(&raw) }
    }
    drop(wr);
    drop(high);
    let result = collect(&rd, timeout_ms);
    // SAFETY: reaping our own child (it exits right after its fork, or on
    // the timeout's kill).
    unsafe {
        if matches!(result, Collected::Timeout(_)) {
            libc::kill(child, libc::SIGKILL);
        }
        libc::waitpid(child, core::ptr::null_mut(), 0);
    }
    match result {
        Collected::Started(pid) => Ok(pid),
        Collected::Failed(pid, f) => {
            if let Some(p) = pid {
                // The agent's exec failed and it exited: reap it (our child).
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(p as i32, core::ptr::null_mut(), 0) };
            }
            Err(f)
        }
        Collected::Timeout(pid) => {
            if let Some(p) = pid {
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(p as i32, libc::SIGKILL);
                    libc::waitpid(p as i32, core::ptr::null_mut(), 0);
                }
            }
            Err(Failure::raw(Step::Timeout, libc::ETIMEDOUT))
        }
    }
}

/// A monotonic clock in milliseconds (the report's deadline).
/// (libc's clock, not rustix's: see `agent::util::now_ns`.)
fn now_ms() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

enum Collected {
    Started(u32),
    Failed(Option<u32>, Failure),
    Timeout(Option<u32>),
}

/// Reads the report pipe to its end (both children gone or exec'd).
fn collect(rd: &OwnedFd, timeout_ms: u32) -> Collected {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let start = now_ms();
    let (mut pid, mut failure) = (None, None);
    let mut buf = [0u8; 12];
    let mut have = 0;
    loop {
        let left = u64::from(timeout_ms).saturating_sub(now_ms().saturating_sub(start));
        if left == 0 {
            return Collected::Timeout(pid);
        }
        let ts = Timespec { tv_sec: (left / 1000) as _, tv_nsec: ((left % 1000) * 1_000_000) as _ };
        let mut fds = [PollFd::new(rd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => continue,
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Collected::Failed(pid, Failure::new(Step::Setup, e)),
        }
        match rustix::io::read(rd, &mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(e) => return Collected::Failed(pid, Failure::new(Step::Setup, e)),
        }
        if have == buf.len() {
            have = 0;
            let w = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            match w(0) {
                TAG_PID => pid = Some(w(4)),
                _ => failure = Some(Failure::raw(Step::from_u32(w(4)), w(8) as i32)),
            }
        }
    }
    match (pid, failure) {
        (_, Some(f)) => Collected::Failed(pid, f),
        (Some(p), None) => Collected::Started(p),
        // Both ends closed without a word: the intermediate died.
        (None, None) => Collected::Failed(None, Failure::raw(Step::Fork, libc::ECHILD)),
    }
}

/// The intermediate child: cgroup, namespaces, root, then the fork into
/// the pid namespace. Never returns.
unsafe fn intermediate(r: &Raw<'_>) -> ! {
    let fd = r.report;
    for cg in &r.plan.cgroups {
        // Best effort: "0" is the writer; the agent inherits the cgroup.
        sys::write(cg.as_raw_fd(), b"0".as_ptr(), 1);
    }
    // Two passes (nsenter(1)'s way): root enters everything but a user
    // namespace on the first, with the host's capabilities; what failed
    // (an unprivileged caller's namespaces owned by the user namespace)
    // is retried once inside the user namespace.
    let mut entered = [false; NAMESPACES.len()];
    for pass in 0..2 {
        for (i, (nsfd, flag)) in r.plan.ns.iter().enumerate() {
            if entered[i] || (pass == 0 && *flag == libc::CLONE_NEWUSER) {
                continue;
            }
            if sys::setns(nsfd.as_raw_fd(), *flag) == 0 {
                entered[i] = true;
            } else if pass == 1 {
                die(fd, Step::Setns);
            }
        }
        // The user namespace goes at the end of the first pass.
        if pass == 0 {
            if let Some(i) = r.plan.ns.iter().position(|(_, f)| *f == libc::CLONE_NEWUSER) {
                if let Some(Some(g)) = r.plan.creds.as_ref().map(|c| &c.host_groups) {
                    if sys::setgroups(g.len(), g.as_ptr()) != 0 {
                        die(fd, Step::Credentials);
                    }
                }
                if sys::setns(r.plan.ns[i].0.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
                    die(fd, Step::Setns);
                }
                entered[i] = true;
            }
        }
    }
    if let Some(root) = &r.plan.root {
        if sys::fchdir(root.as_raw_fd()) != 0 || sys::chroot(c".".as_ptr()) != 0 {
            die(fd, Step::Chroot);
        }
    }
    let cwd_ok = match &r.plan.cwd {
        Some(c) => sys::fchdir(c.as_raw_fd()) == 0,
        None => false,
    };
    if !cwd_ok && sys::chdir(c"/".as_ptr()) != 0 {
        die(fd, Step::Chroot);
    }
    let pid = sys::fork_as_sibling();
    if pid < 0 {
        // A pid namespace whose init has exited takes no new process
        // (ENOMEM): the target is gone.
        let e = sys::errno();
        let e = if e == libc::ENOMEM { libc::ESRCH } else { e };
        report(fd, TAG_FAIL, Step::Fork as u32, e as u32);
        sys::exit(127);
    }
    if pid > 0 {
        report(fd, TAG_PID, pid as u32, 0);
        sys::exit(0);
    }
    agent(r)
}

/// The started process: stdio, signals, credentials, exec. Never returns.
unsafe fn agent(r: &Raw<'_>) -> ! {
    let fd = r.report;
    sys::setpgid_self();
    for (i, from) in r.stdio.iter().enumerate() {
        if sys::dup_to(*from, i as i32) < 0 {
            die(fd, Step::Setup);
        }
    }
    sys::unblock_all_signals();
    sys::cloexec_from(3);
    if let Some(c) = &r.plan.creds {
        if c.no_new_privs {
            sys::no_new_privs();
        }
        if let Some([_, _, _, bounding]) = c.caps {
            for cap in 0..64 {
                // Caps past the kernel's last are EINVAL: nothing to drop.
                if bounding & (1u64 << cap) == 0 {
                    sys::drop_bounding_cap(cap);
                }
            }
        }
        if (c.host_groups.is_none() && sys::setgroups(c.groups.len(), c.groups.as_ptr()) != 0)
            || sys::setresgid(c.gid) != 0
            || sys::setresuid(c.uid) != 0
        {
            die(fd, Step::Credentials);
        }
        // A non-root uid lost every capability with setresuid; root keeps
        // what the target has, no more.
        if let (0, Some([inh, prm, eff, _])) = (c.uid, c.caps) {
            if sys::capset(eff, prm, inh) != 0 {
                die(fd, Step::Credentials);
            }
        }
    }
    sys::execveat(r.exe, r.argv.as_ptr(), r.envp.as_ptr());
    die(fd, Step::Exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic report: an exec that fails in the child comes back as
    /// its errno (here: not a program), one that succeeds as its pid.
    #[test]
    fn exec_failures_come_back_with_their_errno() {
        let null = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).expect("null");
        let stdio = [null.as_fd(), null.as_fd(), null.as_fd()];
        let argv = [CString::new("x").expect("argv")];
        let junk = memfd_with(b"not a program\n").expect("memfd");
        let r = launch(&Plan::default(), junk.as_fd(), &argv, &[], stdio, 5000);
        assert_eq!(r, Err(Failure { step: Step::Exec, errno: libc::ENOEXEC }));
        let t = read_file(None, c"/bin/true", 1 << 24).expect("/bin/true");
        let exe = memfd_with(&t).expect("memfd");
        let pid = launch(&Plan::default(), exe.as_fd(), &argv, &[], stdio, 5000).expect("started");
        let mut status = 0;
        // SAFETY: reaping our own child.
        assert_eq!(unsafe { libc::waitpid(pid as i32, &mut status, 0) }, pid as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{status:#x}");
    }

    #[test]
    fn ids_map_into_a_user_namespace() {
        let map = b"         0     100000      65536\n";
        assert_eq!(map_id(map, 100000), 0);
        assert_eq!(map_id(map, 101000), 1000);
        assert_eq!(map_id(map, 5), 65534);
    }

    #[test]
    fn status_gives_effective_ids_groups_and_caps() {
        let s = b"Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 11 \nNoNewPrivs:\t1\n\
CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n";
        let c = creds_from_status(s, false, None).expect("parsed");
        assert_eq!((c.uid, c.gid, c.groups.as_slice(), c.no_new_privs), (2, 6, &[10, 11][..], true));
        assert_eq!(c.caps, Some([0, 0xa80425fb, 0xa80425fb, 0xa80425fb]));
    }

    #[test]
    fn environ_is_split_and_a_cut_entry_dropped() {
        assert_eq!(split_environ(b"A=1\0B=2\0", false), [b"A=1".to_vec(), b"B=2".to_vec()]);
        assert_eq!(split_environ(b"A=1\0B=2", true), [b"A=1".to_vec()]);
        assert_eq!(split_environ(b"junk\0=x\0C=\0", false), [b"C=".to_vec()]);
    }
}
