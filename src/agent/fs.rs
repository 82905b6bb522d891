//! File system functions that walk or change trees: list_dir, make_dirs,
//! chmod, chown, symlink, read_link, rename, remove_tree, disk_usage.
//!
//! Walks use directory fds and `*at` calls, never re-resolve paths, never
//! follow symlinks, and stop at a depth of [`MAX_DEPTH`] instead of
//! overflowing the agent's stack.

use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, Mode, OFlags, CWD};
use serde_bytes::ByteBuf;

use super::util::os_error;
use crate::proto::functions::{DirEntry, DiskUsageReply, FileKind, StatReply};
use crate::proto::{ErrorKind, RemoteError};

/// Deepest directory nesting a walk follows.
pub const MAX_DEPTH: usize = 256;

/// The wire kind of a `st_mode`.
pub(super) fn kind_of(mode: u32) -> FileKind {
    match fs::FileType::from_raw_mode(mode) {
        fs::FileType::RegularFile => FileKind::File,
        fs::FileType::Directory => FileKind::Dir,
        fs::FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// A `stat` result as the wire type.
pub fn stat_reply(st: &fs::Stat) -> StatReply {
    StatReply {
        kind: kind_of(st.st_mode),
        mode: st.st_mode & 0o7777,
        size: st.st_size as u64,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

/// Flags of a directory opened below a trusted one: never through a symlink.
pub(super) const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// `name` in `at` opened as a directory, not following a symlink (errors
/// name `path`).
pub(super) fn open_dir(at: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<OwnedFd, RemoteError> {
    fs::openat(at, name, DIR_FLAGS, Mode::empty()).map_err(|e| os_error(e, "open", path))
}

/// Entries of a directory (without `.` and `..`), each with its lstat.
///
/// One `getdents` buffer of 32 KiB, read from the fd's position (a fresh
/// `open`: the start), as the sync listing reads: `fs::Dir`'s growing
/// buffer was mmap/munmap churn in musl's allocator. An entry gone between
/// `getdents` and its `lstat` is skipped, as if listed a moment later.
pub(super) fn entries(dir: &OwnedFd, path: &[u8]) -> Result<Vec<(Vec<u8>, fs::Stat)>, RemoteError> {
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut names = fs::RawDir::new(dir, buf.spare_capacity_mut());
    while let Some(e) = names.next() {
        let e = e.map_err(|e| os_error(e, "list", path))?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        match fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push((name.to_vec(), st)),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(os_error(e, "stat", path)),
        }
    }
    Ok(out)
}

/// `list_dir`.
pub fn list_dir(path: &[u8]) -> Result<Vec<DirEntry>, RemoteError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = fs::openat(CWD, path, flags, Mode::empty()).map_err(|e| os_error(e, "open", path))?;
    let mut v: Vec<DirEntry> = entries(&dir, path)?
        .into_iter()
        .map(|(n, st)| DirEntry { name: ByteBuf::from(n), stat: stat_reply(&st) })
        .collect();
    sort_by_name(&mut v);
    Ok(v)
}

/// Sorts `v` by name (unique names: stability does not matter). A heap
/// sort, O(n log n) like the library's: `sort_unstable_by` is 2 KB of the
/// agent (its stable sort, 3 KB) for this one list.
fn sort_by_name(v: &mut [DirEntry]) {
    fn sift(v: &mut [DirEntry], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child].name < v[child + 1].name {
                child += 1;
            }
            if v[root].name >= v[child].name {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

/// `make_dirs`: every missing component is created with exactly `mode`
/// (not reduced by the umask).
pub fn make_dirs(path: &[u8], mode: u32) -> Result<(), RemoteError> {
    let mode = Mode::from_bits_truncate(mode);
    let mut end = 0;
    while end < path.len() {
        end = path[end + 1..].iter().position(|&c| c == b'/').map_or(path.len(), |i| end + 1 + i);
        let prefix = &path[..end];
        if prefix.is_empty() || prefix == b"/" {
            continue;
        }
        match fs::mkdirat(CWD, prefix, mode) {
            Ok(()) => fs::chmodat(CWD, prefix, mode, AtFlags::empty()).map_err(|e| os_error(e, "chmod", prefix))?,
            Err(rustix::io::Errno::EXIST) => {
                let st = fs::statat(CWD, prefix, AtFlags::empty()).map_err(|e| os_error(e, "stat", prefix))?;
                if fs::FileType::from_raw_mode(st.st_mode) != fs::FileType::Directory {
                    return Err(os_error(rustix::io::Errno::NOTDIR, "mkdir", prefix));
                }
            }
            Err(e) => return Err(os_error(e, "mkdir", prefix)),
        }
    }
    Ok(())
}

/// `chmod`.
pub fn chmod(path: &[u8], mode: u32) -> Result<(), RemoteError> {
    fs::chmodat(CWD, path, Mode::from_bits_truncate(mode), AtFlags::empty()).map_err(|e| os_error(e, "chmod", path))
}

/// `chown` / `lchown`.
pub fn chown(path: &[u8], uid: Option<u32>, gid: Option<u32>, follow: bool) -> Result<(), RemoteError> {
    let flags = if follow { AtFlags::empty() } else { AtFlags::SYMLINK_NOFOLLOW };
    let uid = uid.map(fs::Uid::from_raw);
    let gid = gid.map(fs::Gid::from_raw);
    fs::chownat(CWD, path, uid, gid, flags).map_err(|e| os_error(e, "chown", path))
}

/// `symlink`.
pub fn symlink(target: &[u8], path: &[u8]) -> Result<(), RemoteError> {
    fs::symlinkat(target, CWD, path).map_err(|e| os_error(e, "symlink", path))
}

/// `read_link`.
pub fn read_link(path: &[u8]) -> Result<ByteBuf, RemoteError> {
    fs::readlinkat(CWD, path, Vec::new())
        .map(|c| ByteBuf::from(c.into_bytes()))
        .map_err(|e| os_error(e, "readlink", path))
}

/// `rename`.
pub fn rename(from: &[u8], to: &[u8]) -> Result<(), RemoteError> {
    fs::renameat(CWD, from, CWD, to).map_err(|e| os_error(e, "rename", from))
}

fn too_deep(path: &[u8]) -> RemoteError {
    RemoteError::new(ErrorKind::TooLarge, super::util::op_path("tree deeper than 256 levels under", path))
}

/// `remove_tree`.
pub fn remove_tree(path: &[u8]) -> Result<u64, RemoteError> {
    remove_at(CWD, path, path)
}

/// Removes `name` in `at`: a directory with everything in it, anything
/// else (a symlink too) unlinked as itself; missing is fine. Returns the
/// entries removed. Shared by `remove_tree` and sync's removals.
pub(super) fn remove_at(at: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<u64, RemoteError> {
    let st = match fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(0),
        Err(e) => return Err(os_error(e, "stat", path)),
    };
    if fs::FileType::from_raw_mode(st.st_mode) != fs::FileType::Directory {
        fs::unlinkat(at, name, AtFlags::empty()).map_err(|e| os_error(e, "unlink", path))?;
        return Ok(1);
    }
    let dir = open_dir(at, name, path)?;
    let n = empty_dir(&dir, path, 0)?;
    fs::unlinkat(at, name, AtFlags::REMOVEDIR).map_err(|e| os_error(e, "rmdir", path))?;
    Ok(n + 1)
}

/// Removes everything in `dir` (not following symlinks); the entries removed.
pub(super) fn empty_dir(dir: &OwnedFd, path: &[u8], depth: usize) -> Result<u64, RemoteError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(path));
    }
    let mut n = 0;
    for (name, st) in entries(dir, path)? {
        if fs::FileType::from_raw_mode(st.st_mode) == fs::FileType::Directory {
            let sub = open_dir(dir.as_fd(), &name, path)?;
            n += empty_dir(&sub, path, depth + 1)?;
            fs::unlinkat(dir.as_fd(), &name[..], AtFlags::REMOVEDIR).map_err(|e| os_error(e, "rmdir", path))?;
        } else {
            fs::unlinkat(dir.as_fd(), &name[..], AtFlags::empty()).map_err(|e| os_error(e, "unlink", path))?;
        }
        n += 1;
    }
    Ok(n)
}

/// `disk_usage`.
pub fn disk_usage(path: &[u8]) -> Result<DiskUsageReply, RemoteError> {
    let st = fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| os_error(e, "stat", path))?;
    let mut r = DiskUsageReply { bytes: st.st_blocks as u64 * 512, ..DiskUsageReply::default() };
    if fs::FileType::from_raw_mode(st.st_mode) == fs::FileType::Directory {
        r.dirs = 1;
        let dir = open_dir(CWD, path, path)?;
        usage(&dir, st.st_dev, path, 0, &mut r)?;
    } else {
        r.files = 1;
    }
    Ok(r)
}

fn usage(dir: &OwnedFd, dev: u64, path: &[u8], depth: usize, r: &mut DiskUsageReply) -> Result<(), RemoteError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep(path));
    }
    for (name, st) in entries(dir, path)? {
        r.bytes += st.st_blocks as u64 * 512;
        if fs::FileType::from_raw_mode(st.st_mode) == fs::FileType::Directory {
            r.dirs += 1;
            if st.st_dev == dev {
                let sub = open_dir(dir.as_fd(), &name, path)?;
                usage(&sub, dev, path, depth + 1, r)?;
            }
        } else {
            r.files += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::functions::FileKind;

    /// The heap sort orders like the library's sort, for every length up
    /// to 70 and a larger pseudo-random list (names unique, as in a directory).
    #[test]
    fn sort_by_name_orders_like_the_library() {
        let stat = StatReply { kind: FileKind::File, mode: 0, size: 0, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0 };
        let mut x = 0x9e37_79b9u32;
        for n in (0..70).chain([1000]) {
            let mut names: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    alloc::format!("{}-{i}", x % 97).into_bytes()
                })
                .collect();
            let mut v: Vec<DirEntry> =
                names.iter().map(|n| DirEntry { name: ByteBuf::from(n.clone()), stat: stat.clone() }).collect();
            sort_by_name(&mut v);
            names.sort();
            assert_eq!(v.iter().map(|e| e.name.to_vec()).collect::<Vec<_>>(), names, "n = {n}");
        }
    }
}
