//! Delta sync, the agent's side (`crate::proto::sync` has the wire types,
//! `master/sync.rs` the other half).
//!
//! Map:
//! - [`list`] — `sync_list`: the destination tree in one reply, walked
//!   with `O_NOFOLLOW` directory fds, `lstat` only, at most 256 levels and
//!   the caller's number of entries.
//! - [`SyncTable`] — the open rebuilds (`sync_begin` … `sync_commit`): the
//!   old file and a temp file beside it (`.NAME.mito-tmp.PID.N`, 0600);
//!   the new file is the old one's blocks and literal bytes, hashed as
//!   written, renamed into place only when its XXH3-128 and size are the
//!   master's. Anything not committed is unlinked (abort, failed commit,
//!   the agent exiting), so a final name holds the old file or the new
//!   one, never a part.
//! - [`apply`] — `sync_apply`: mkdir, remove (recursive, never through a
//!   symlink), symlink, chmod + mtime.
//!
//! The tree walks are `fs.rs`'s (`entries`, `remove_at`, `open_dir`): one
//! copy of each in the agent, which is size-budgeted.
//!
//! Every path is a root (opened as given: the user named it) and a
//! relative path walked one name at a time with `O_NOFOLLOW|O_DIRECTORY`,
//! so a symlink below the root is never followed out of it: it is a
//! name to remove or replace, not a way through.

use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::fs::{kind_of, open_dir, remove_at};
use super::util::{os_error, push_decimal};
use crate::core::xxh3::{xxh3_128, Xxh3};
use crate::proto::functions::FileKind;
use crate::proto::sync::{
    DeltaOp, EntryRef, ListingBuilder, Rolling, SyncApplied, SyncBeginArgs, SyncCommitArgs, SyncSignatures, TreeOp,
    ROOT_PARENT,
};
use crate::proto::{ErrorKind, RemoteError};

/// Deepest directory nesting a listing or a removal follows.
const MAX_DEPTH: usize = super::fs::MAX_DEPTH;
/// Block sizes accepted (the master picks ~sqrt of the file size).
const BLOCK_RANGE: (u32, u32) = (256, 1 << 24);
/// Most bytes one `sync_signature` call reads.
const SIGNATURE_BYTES: u64 = 256 << 20;
/// Buffer of a block copy.
const COPY_BUF: usize = 256 * 1024;

fn bad(what: &'static str) -> RemoteError {
    RemoteError::new(ErrorKind::BadArgs, what)
}

/// The root, opened as a directory (following a symlink: the user named it).
fn open_root(root: &[u8]) -> Result<OwnedFd, RemoteError> {
    fs::openat(CWD, root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| os_error(e, "open", root))
}

/// `name` in `dir` opened for reading, not through a symlink (a FIFO
/// does not block the open).
fn open_nofollow(dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<OwnedFd, RemoteError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    fs::openat(dir, name, flags, Mode::empty()).map_err(|e| os_error(e, "open", path))
}

/// The directory holding `rel` below `root` and `rel`'s last name: each
/// name is checked (a single file name) and each directory opened with
/// `O_NOFOLLOW`.
fn walk<'a>(root: &OwnedFd, rel: &'a [u8], path: &[u8]) -> Result<(OwnedFd, &'a [u8]), RemoteError> {
    let mut names = rel.split(|&c| c == b'/');
    let mut last = names.next().unwrap_or_default();
    let mut dir = open_dir(root.as_fd(), b".", path)?;
    for next in names {
        if crate::proto::sync::bad_name(last).is_some() {
            return Err(bad("not a relative path of single names"));
        }
        dir = open_dir(dir.as_fd(), last, path)?;
        last = next;
    }
    if crate::proto::sync::bad_name(last).is_some() {
        return Err(bad("not a relative path of single names"));
    }
    Ok((dir, last))
}

/// `sync_list`: the listing's encoding (see [`ListingBuilder`]).
#[inline(never)] // cold beside the dispatcher: one copy, not inlined into it
pub fn list(root: &[u8], max_entries: u32) -> Result<ByteBuf, RemoteError> {
    let done = |b: ListingBuilder, root: Option<&EntryRef<'_>>| Ok(ByteBuf::from(b.finish(root)));
    let st = match fs::statat(CWD, root, AtFlags::empty()) {
        Ok(st) => st,
        Err(Errno::NOENT) => return done(ListingBuilder::default(), None),
        Err(e) => return Err(os_error(e, "stat", root)),
    };
    let mut out = ListingBuilder::default();
    if kind_of(st.st_mode) == FileKind::Dir {
        let dir = open_root(root)?;
        // One getdents buffer for the whole walk, and each entry encoded
        // as it is read: a per-directory Vec of (name, stat), the growing
        // buffer of `fs::Dir` and a `SyncEntry` per entry were ~8
        // mmap/munmap pairs and 4 getdents per directory in musl's
        // allocator and most of the agent's own time (10,000 files).
        let mut buf = Vec::with_capacity(LIST_BUF);
        let l = Lister { max: u64::from(max_entries), path: root };
        l.list_into(&dir, ROOT_PARENT, 0, &mut out, buf.spare_capacity_mut())?;
    }
    done(out, Some(&entry(ROOT_PARENT, b"", &st, b"")))
}

/// getdents buffer of a listing.
const LIST_BUF: usize = 32 * 1024;

/// What a listing's walk keeps for every level.
struct Lister<'a> {
    max: u64,
    path: &'a [u8],
}

impl Lister<'_> {
    fn list_into(
        &self,
        dir: &OwnedFd,
        parent: u32,
        depth: usize,
        out: &mut ListingBuilder,
        buf: &mut [core::mem::MaybeUninit<u8>],
    ) -> Result<(), RemoteError> {
        let path = self.path;
        if depth >= MAX_DEPTH {
            return Err(RemoteError::new(ErrorKind::TooLarge, "tree deeper than 256 levels"));
        }
        // This directory's subdirectories: their index and name.
        let mut subdirs: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut names = fs::RawDir::new(dir, buf);
        while let Some(e) = names.next() {
            let e = e.map_err(|e| os_error(e, "list", path))?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if out.len() >= self.max {
                return Err(RemoteError::new(ErrorKind::TooLarge, "more entries than the caller accepts"));
            }
            // Past a message already: stop now, not after encoding the rest.
            if out.encoded_len() > crate::proto::MAX_MESSAGE_SIZE as usize {
                return Err(RemoteError::new(ErrorKind::TooLarge, "a listing larger than a message"));
            }
            let st = match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Gone since getdents: not there, as if listed a moment later.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(os_error(e, "stat", path)),
            };
            let kind = kind_of(st.st_mode);
            let link = if kind == FileKind::Symlink {
                fs::readlinkat(dir, name, Vec::new()).map_err(|e| os_error(e, "readlink", path))?.into_bytes()
            } else {
                Vec::new()
            };
            if kind == FileKind::Dir {
                subdirs.push((out.len() as u32, name.to_vec()));
            }
            out.push(&entry(parent, name, &st, &link));
        }
        for (i, name) in subdirs {
            // Replaced by something else since the stat: skip it, the master
            // sees a directory it will find out about when it writes there.
            let Ok(sub) = open_dir(dir.as_fd(), &name, path) else { continue };
            self.list_into(&sub, i, depth + 1, out, buf)?;
        }
        Ok(())
    }
}

fn entry<'a>(parent: u32, name: &'a [u8], st: &fs::Stat, link: &'a [u8]) -> EntryRef<'a> {
    EntryRef {
        parent,
        name,
        kind: kind_of(st.st_mode),
        mode: st.st_mode & 0o7777,
        size: st.st_size as u64,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        link,
    }
}

/// One file being rebuilt.
struct Rebuild {
    /// The directory it is in (the temp file's and the final name's).
    dir: OwnedFd,
    name: Vec<u8>,
    tmp: Vec<u8>,
    old: Option<OwnedFd>,
    old_size: u64,
    out: OwnedFd,
    hash: Xxh3,
    size: u64,
    block: u64,
}

/// The open rebuilds of one agent, by the caller's ids.
#[derive(Default)]
pub struct SyncTable {
    open: Vec<(u32, Rebuild)>,
    serial: u64,
}

fn no_such() -> RemoteError {
    bad("no such rebuild")
}

impl SyncTable {
    fn get(&mut self, id: u32) -> Result<&mut Rebuild, RemoteError> {
        self.open.iter_mut().find(|(i, _)| *i == id).map(|(_, r)| r).ok_or_else(no_such)
    }

    fn take(&mut self, id: u32) -> Result<Rebuild, RemoteError> {
        let i = self.open.iter().position(|(i, _)| *i == id).ok_or_else(no_such)?;
        Ok(self.open.swap_remove(i).1)
    }

    /// `sync_begin`: the old file's size.
    #[inline(never)] // cold beside the dispatcher: one copy, not inlined into it
    pub fn begin(&mut self, a: &SyncBeginArgs) -> Result<u64, RemoteError> {
        if self.open.iter().any(|(i, _)| *i == a.id) {
            return Err(bad("rebuild id in use"));
        }
        if !(BLOCK_RANGE.0..=BLOCK_RANGE.1).contains(&a.block_size) {
            return Err(bad("block size out of range"));
        }
        let root = open_root(&a.root)?;
        let (dir, name) = walk(&root, &a.rel, &a.root)?;
        let (old, old_size) = if a.old {
            let fd = open_nofollow(&dir, name, &a.rel)?;
            let st = fs::fstat(&fd).map_err(|e| os_error(e, "stat", &a.rel))?;
            if kind_of(st.st_mode) != FileKind::File {
                return Err(os_error(Errno::INVAL, "not a regular file:", &a.rel));
            }
            (Some(fd), st.st_size as u64)
        } else {
            (None, 0)
        };
        self.serial += 1;
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(&name[..name.len().min(180)]);
        tmp.extend_from_slice(b".mito-tmp.");
        push_decimal(&mut tmp, u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32));
        tmp.extend_from_slice(b".s");
        push_decimal(&mut tmp, self.serial);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let out = fs::openat(&dir, &tmp[..], flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| os_error(e, "create", &a.rel))?;
        let r = Rebuild {
            dir,
            name: name.to_vec(),
            tmp,
            old,
            old_size,
            out,
            hash: Xxh3::new(),
            size: 0,
            block: u64::from(a.block_size),
        };
        self.open.push((a.id, r));
        Ok(old_size)
    }

    /// `sync_signature`: full blocks `first..first+count` of the old file.
    #[inline(never)] // cold beside the dispatcher: one copy, not inlined into it
    pub fn signature(&mut self, id: u32, first: u64, count: u32) -> Result<SyncSignatures, RemoteError> {
        let r = self.get(id)?;
        let Some(old) = &r.old else { return Err(bad("no old file")) };
        let bs = r.block as usize;
        if u64::from(count).saturating_mul(r.block) > SIGNATURE_BYTES {
            return Err(bad("signature slice too large"));
        }
        let mut buf = alloc::vec![0u8; bs];
        let mut out = SyncSignatures::default();
        for b in first..first.saturating_add(u64::from(count)) {
            let Some(off) = b.checked_mul(r.block) else { break };
            // The last block may be short (the file's tail).
            let want = r.old_size.saturating_sub(off).min(r.block) as usize;
            if want == 0 || pread_full(old.as_fd(), &mut buf[..want], off)? < want {
                break;
            }
            out.weak.push(Rolling::new(&buf[..want]).sum());
            out.strong.extend_from_slice(&xxh3_128(&buf[..want]).to_be_bytes());
        }
        Ok(out)
    }

    /// `sync_delta`.
    #[inline(never)] // cold beside the dispatcher: one copy, not inlined into it
    pub fn delta(&mut self, id: u32, ops: &[DeltaOp]) -> Result<(), RemoteError> {
        let r = self.get(id)?;
        // The old file borrowed beside the output (no dup per copy op).
        let (old, mut out) = (&r.old, Output { hash: &mut r.hash, size: &mut r.size, fd: &r.out, name: &r.name });
        let mut buf = Vec::new();
        for op in ops {
            match op {
                DeltaOp::Data(d) => out.append(d)?,
                DeltaOp::Copy { block, count } => {
                    let Some(old) = old else { return Err(bad("no old file")) };
                    let start = block.checked_mul(r.block).ok_or_else(|| bad("copy past the old file"))?;
                    let len = u64::from(*count).checked_mul(r.block).ok_or_else(|| bad("copy past the old file"))?;
                    // Every block starts in the file; the last may be its short tail.
                    if *count == 0 || start.checked_add(len - r.block).is_none_or(|last| last >= r.old_size) {
                        return Err(bad("copy past the old file"));
                    }
                    let (mut off, end) = (start, start.saturating_add(len).min(r.old_size));
                    if buf.is_empty() {
                        buf.resize(COPY_BUF, 0);
                    }
                    while off < end {
                        let want = ((end - off) as usize).min(COPY_BUF);
                        let n = pread_full(old.as_fd(), &mut buf[..want], off)?;
                        if n < want {
                            // The old file shrank under us: the hash check
                            // at commit would fail anyway; say why now.
                            return Err(os_error(Errno::IO, "old file changed:", &r.name));
                        }
                        out.append(&buf[..n])?;
                        off += n as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// `sync_commit`.
    pub fn commit(&mut self, c: &SyncCommitArgs) -> Result<(), RemoteError> {
        let r = self.take(c.id)?;
        let result = r.commit(c);
        if result.is_err() {
            let _ = fs::unlinkat(&r.dir, &r.tmp[..], AtFlags::empty());
        }
        result
    }

    /// `sync_abort`.
    pub fn abort(&mut self, id: u32) -> Result<(), RemoteError> {
        let r = self.take(id)?;
        let _ = fs::unlinkat(&r.dir, &r.tmp[..], AtFlags::empty());
        Ok(())
    }

    /// Removes the temp files of unfinished rebuilds (the agent is exiting).
    pub fn discard_all(&mut self) {
        for (_, r) in self.open.drain(..) {
            let _ = fs::unlinkat(&r.dir, &r.tmp[..], AtFlags::empty());
        }
    }
}

/// The writing half of a [`Rebuild`], borrowed apart from its old file.
struct Output<'a> {
    hash: &'a mut Xxh3,
    size: &'a mut u64,
    fd: &'a OwnedFd,
    name: &'a [u8],
}

impl Output<'_> {
    fn append(&mut self, data: &[u8]) -> Result<(), RemoteError> {
        self.hash.update(data);
        *self.size += data.len() as u64;
        super::util::write_all(self.fd.as_fd(), data, self.name)
    }
}

impl Rebuild {
    /// Checks, sets metadata on the open temp file (owner first: chown
    /// clears setuid/setgid), renames it over the name.
    #[inline(never)] // cold beside the dispatcher: one copy, not inlined into it
    fn commit(&self, c: &SyncCommitArgs) -> Result<(), RemoteError> {
        if self.size != c.size || self.hash.finish()[..] != c.xxh3[..] {
            return Err(RemoteError::new(
                ErrorKind::Protocol,
                super::util::op_path("checksum mismatch writing", &self.name),
            ));
        }
        let fd = self.out.as_fd();
        if rustix::process::geteuid().is_root() {
            let (u, g) = (fs::Uid::from_raw(c.owner.0), fs::Gid::from_raw(c.owner.1));
            fs::fchown(fd, Some(u), Some(g)).map_err(|e| os_error(e, "chown", &self.name))?;
        }
        fs::fchmod(fd, Mode::from_bits_truncate(c.mode)).map_err(|e| os_error(e, "chmod", &self.name))?;
        set_times(fd, c.mtime).map_err(|e| os_error(e, "utimens", &self.name))?;
        fs::renameat(&self.dir, &self.tmp[..], &self.dir, &self.name[..]).map_err(|e| os_error(e, "rename", &self.name))
    }
}

fn set_times(fd: BorrowedFd<'_>, (s, ns): (i64, u32)) -> rustix::io::Result<()> {
    let t = fs::Timespec { tv_sec: s, tv_nsec: i64::from(ns.min(999_999_999)) as _ };
    fs::futimens(fd, &fs::Timestamps { last_access: t, last_modification: t })
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], mut off: u64) -> Result<usize, RemoteError> {
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::pread(fd, &mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(RemoteError::os(e.raw_os_error(), "read")),
        }
    }
    Ok(n)
}

/// `sync_apply`: the ops in order, each failure noted and the next op
/// tried (a directory the agent may not write fails its own ops only).
#[inline(never)] // cold beside the dispatcher: one copy, not inlined into it
pub fn apply(a: &crate::proto::sync::SyncApplyArgs) -> Result<SyncApplied, RemoteError> {
    if let Some(mode) = a.create_root {
        super::fs::make_dirs(&a.root, mode)?;
    }
    let root = open_root(&a.root)?;
    let mut out = SyncApplied::default();
    for (i, op) in a.ops.iter().enumerate() {
        match apply_one(&root, &a.root, op) {
            Ok(()) => out.done += 1,
            Err(e) => out.failed.push((i as u32, e)),
        }
    }
    Ok(out)
}

fn apply_one(root: &OwnedFd, root_path: &[u8], op: &TreeOp) -> Result<(), RemoteError> {
    {
        match op {
            TreeOp::Mkdir { rel, mode } => {
                let (dir, name) = walk(root, rel, rel)?;
                let mode = Mode::from_bits_truncate(*mode);
                match fs::mkdirat(&dir, name, mode) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(os_error(e, "mkdir", rel)),
                }
                // Opened without following: a symlink there is an error,
                // not a way out; chmod on the fd (mkdir's mode had the umask).
                let fd = open_dir(dir.as_fd(), name, rel)?;
                fs::fchmod(&fd, mode).map_err(|e| os_error(e, "chmod", rel))?;
            }
            TreeOp::Remove { rel } => {
                let (dir, name) = walk(root, rel, rel)?;
                remove_at(dir.as_fd(), name, rel)?;
            }
            TreeOp::Symlink { rel, target } => {
                let (dir, name) = walk(root, rel, rel)?;
                match fs::unlinkat(&dir, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(os_error(e, "unlink", rel)),
                }
                fs::symlinkat(&target[..], &dir, name).map_err(|e| os_error(e, "symlink", rel))?;
            }
            TreeOp::SetMeta { rel, mode, mtime } => {
                let is_root = rel.is_empty();
                let rel: &[u8] = if is_root { root_path } else { rel };
                let fd = if is_root {
                    rustix::io::fcntl_dupfd_cloexec(root, 0).map_err(|e| os_error(e, "dup", rel))?
                } else {
                    let (dir, name) = walk(root, rel, rel)?;
                    open_nofollow(&dir, name, rel)?
                };
                fs::fchmod(&fd, Mode::from_bits_truncate(*mode)).map_err(|e| os_error(e, "chmod", rel))?;
                if let Some(t) = mtime {
                    set_times(fd.as_fd(), *t).map_err(|e| os_error(e, "utimens", rel))?;
                }
            }
        }
    }
    Ok(())
}
