//! Directory trees: [`Context::put_tree`] and [`Context::get_tree`].
//!
//! First a plan (walk the source: local `read_dir` or remote `list_dir`,
//! `lstat` only, symlinks never followed), so the total size is known for a
//! progress bar; then the copy: directories are created 0700 and get their
//! own mode after their contents (a read-only source directory must still
//! be filled), regular files go through the streamed, checksummed file
//! transfer, symlinks are recreated as they are. Devices, fifos and sockets
//! are skipped and counted. A `put` keeps owners where the agent is root.
//!
//! Semantics are `cp -rT`: the destination *becomes* the copy of the source
//! (created if missing, merged into if it is a directory already).
//!
//! A `get` treats the target as hostile (ARCHITECTURE.md, "Security"):
//! every listed name must be one file name (not empty, `.`, `..`, no `/`,
//! no NUL) and appear once per directory, else [`TransferError::BadName`]
//! before anything is written; below the destination everything is created
//! relative to open directory fds (`mkdirat`, `openat` with `O_NOFOLLOW`,
//! `symlinkat`, `renameat`), and modes and owners are set on those fds, so
//! nothing is written, chmod'ed or chown'ed through a symlink — neither one
//! this copy made nor one that was there before. Owners and setuid/setgid
//! bits are kept only with [`GetOptions::preserve_owner`].
//!
//! The plan of a fetched tree is bounded: a target can describe a tree
//! that never ends (each directory holding another) or holds millions of
//! names, and the plan lives in the master's memory, while the copy holds
//! one open directory fd per level. So a tree deeper than
//! [`MAX_TREE_DEPTH`], with more than [`MAX_TREE_ENTRIES`] entries or more
//! than [`MAX_TREE_NAME_BYTES`] of names is refused while planning
//! ([`TransferError::TreeTooDeep`], [`TransferError::TreeTooManyEntries`],
//! [`TransferError::TreeNamesTooLong`]), before anything is written, and a
//! name longer than `NAME_MAX` (255 bytes) is a [`TransferError::BadName`].
//! The plan keeps each entry's name, not its path (a path per entry would
//! cost up to depth × 255 bytes each), so its memory is linear in these
//! limits: at most 1 000 000 entries of 64 bytes between the plan and the
//! entries still to visit (up to twice that with the slack of growing
//! vectors: 128 MB), plus 64 MiB of names and an allocation each (16–32
//! bytes more): under 250 MiB at the peak whatever the target says (about
//! 100 MB measured for a million short names, `tests/hostile_tree.rs`),
//! a few MB for a tree of 50 000 files. One `list_dir` reply is decoded
//! whole before it is counted: that is bounded by the frame limit, not
//! here.
//!
//! Times: a file gets its mtime with its content; in a `get`, a directory
//! gets its own after its contents are in (with its mode, `futimens` on its
//! fd) and a symlink right after it is made (`utimensat` with
//! `AT_SYMLINK_NOFOLLOW`), clamped to [`MTIME_RANGE`] like a file's. A
//! `put` sets the mtimes of files only: the agent has no function that sets
//! a directory's or a symlink's.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::context::Context;
use super::transfer::{
    ids, local, local_mode, open_parent, set_mtime, split_dest, CopyOptions, GetOptions, Progress, TransferError,
    MTIME_RANGE,
};
use crate::proto::functions::{FileKind, StatReply};

/// Deepest a tree fetched from a target may go: entries at most this many
/// levels below its top ([`TransferError::TreeTooDeep`] beyond). The copy
/// holds one open fd per directory level, so this also bounds its fds
/// (257), far below the usual limit of 1024. No real tree comes near: a
/// path of 256 one-letter levels is already 512 bytes, and past about
/// 2000 levels a path no longer fits `PATH_MAX` (4096), so no tool could
/// even name the bottom.
pub const MAX_TREE_DEPTH: usize = 256;

/// Most entries (files, directories, symlinks, others, the top included)
/// a tree fetched from a target may have ([`TransferError::TreeTooManyEntries`]
/// beyond): the plan costs 64 bytes an entry plus its name.
pub const MAX_TREE_ENTRIES: usize = 1_000_000;

/// Most bytes all the names of a tree fetched from a target may add up to
/// ([`TransferError::TreeNamesTooLong`] beyond): 67 bytes on average for
/// a tree of [`MAX_TREE_ENTRIES`] (real names average 10–20), while names
/// of 255 bytes could otherwise add 255 MB to the plan.
pub const MAX_TREE_NAME_BYTES: usize = 64 << 20;

/// Longest single file name Linux file systems take (`NAME_MAX`): a longer
/// one from a target could not be created here anyway, and would cost the
/// plan memory first.
const NAME_MAX: usize = 255;

/// What a tree copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files copied.
    pub files: u64,
    /// Directories created or merged into.
    pub dirs: u64,
    /// Symlinks recreated.
    pub symlinks: u64,
    /// Devices, fifos and sockets left out.
    pub skipped: u64,
    /// Of `files`, those the destination already held (same size, mtime,
    /// mode and SHA-256): not sent (see [`CopyOptions`]).
    pub unchanged: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// One object of the source tree. Its path below the root is the names of
/// the directories before it in the plan (see [`Plan::walk`]): a path per
/// entry would make the plan's memory depth × name length per entry.
#[derive(Debug)]
struct Entry {
    /// Its name in its directory (empty for the root): one component.
    name: Box<OsStr>,
    /// Levels below the root (0 for the root).
    depth: usize,
    kind: FileKind,
    mode: u32,
    size: u64,
    owner: (u32, u32),
    /// Modification time, seconds (as the source says: clamped when set).
    mtime: i64,
    /// Nanoseconds of the modification time.
    mtime_nsec: u32,
}

// The memory bound in the module docs counts 64 bytes an entry.
const _: () = assert!(std::mem::size_of::<Entry>() <= 64);

impl Entry {
    fn remote(name: Box<OsStr>, depth: usize, st: &StatReply) -> Entry {
        Entry {
            name,
            depth,
            kind: st.kind,
            mode: st.mode,
            size: st.size,
            owner: (st.uid, st.gid),
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
        }
    }
}

/// The path below the root of the entry being visited, rebuilt from names
/// as a plan is walked in its order (a directory right before its
/// contents).
#[derive(Default)]
struct RelPath {
    path: PathBuf,
    depth: usize,
}

impl RelPath {
    /// Moves to `e`, the next entry in plan order, and returns its path.
    fn enter(&mut self, e: &Entry) -> &Path {
        while self.depth > 0 && self.depth >= e.depth {
            self.path.pop();
            self.depth -= 1;
        }
        if e.depth > 0 {
            self.path.push(&*e.name);
            self.depth += 1;
        }
        &self.path
    }
}

/// The source tree in copy order (a directory before its contents).
#[derive(Debug, Default)]
pub struct Plan {
    entries: Vec<Entry>,
}

impl Plan {
    /// Bytes of regular files in the tree.
    pub fn total_bytes(&self) -> u64 {
        // Saturating: the sizes may come from a target that lies.
        self.entries.iter().filter(|e| e.kind == FileKind::File).fold(0u64, |t, e| t.saturating_add(e.size))
    }

    /// The entries in copy order, each with its path below the root.
    fn walk(&self) -> impl Iterator<Item = (PathBuf, &Entry)> {
        let mut rel = RelPath::default();
        self.entries.iter().map(move |e| (rel.enter(e).to_path_buf(), e))
    }
}

/// Why `name` is not a single file name, if it is not.
fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == b"." || name == b".." {
        Some("not a file name")
    } else if name.contains(&b'/') {
        Some("a name with a '/'")
    } else if name.contains(&0) {
        Some("a name with a NUL byte")
    } else if name.len() > NAME_MAX {
        Some("a name longer than 255 bytes")
    } else {
        None
    }
}

fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

impl Context {
    /// Walks a local tree for [`Context::put_tree`].
    pub fn plan_local_tree(&self, src: impl AsRef<Path>) -> Result<Plan, TransferError> {
        fn walk(root: &Path, rel: PathBuf, depth: usize, out: &mut Vec<Entry>) -> Result<(), TransferError> {
            let path = join(root, &rel);
            let m = fs::symlink_metadata(&path).map_err(local(&path))?;
            let kind = kind_of(m.file_type());
            out.push(Entry {
                name: rel.file_name().unwrap_or_default().into(),
                depth,
                kind,
                mode: m.mode() & 0o7777,
                size: m.len(),
                owner: (m.uid(), m.gid()),
                mtime: m.mtime(),
                mtime_nsec: u32::try_from(m.mtime_nsec()).unwrap_or(0),
            });
            if kind == FileKind::Dir {
                let mut names: Vec<_> = fs::read_dir(&path)
                    .map_err(local(&path))?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()
                    .map_err(local(&path))?;
                names.sort();
                for n in names {
                    walk(root, rel.join(n), depth + 1, out)?;
                }
            }
            Ok(())
        }
        let mut entries = Vec::new();
        walk(src.as_ref(), PathBuf::new(), 0, &mut entries)?;
        Ok(Plan { entries })
    }

    /// Walks a tree in this context for [`Context::get_tree`]. Every name
    /// listed must be a single file name of at most 255 bytes, once per
    /// directory ([`TransferError::BadName`] otherwise), and the tree must
    /// stay within [`MAX_TREE_DEPTH`], [`MAX_TREE_ENTRIES`] and
    /// [`MAX_TREE_NAME_BYTES`] (see the module docs): a target can describe
    /// any tree, and this plan is held in the master's memory.
    pub fn plan_remote_tree(&self, src: impl AsRef<Path>) -> Result<Plan, TransferError> {
        let root = src.as_ref();
        let top = self.lstat(root)?;
        let mut entries = Vec::new();
        // Depth first, so a directory's contents follow it directly: the
        // entries still to visit, the next one last.
        let mut todo = vec![Entry::remote(Box::default(), 0, &top)];
        let mut rel = RelPath::default();
        // Entries known (planned or still to visit) and their names' bytes.
        let (mut count, mut name_bytes) = (1usize, 0usize);
        while let Some(e) = todo.pop() {
            let (kind, depth) = (e.kind, e.depth);
            let dir = join(root, rel.enter(&e));
            entries.push(e);
            if kind != FileKind::Dir {
                continue;
            }
            let listed = self.list_dir(&dir)?;
            // Counted before anything is kept of the listing.
            count = count.saturating_add(listed.len());
            if count > MAX_TREE_ENTRIES {
                let (context, limit) = (self.name().into(), MAX_TREE_ENTRIES);
                return Err(TransferError::TreeTooManyEntries { context, path: dir, limit });
            }
            name_bytes = listed.iter().fold(name_bytes, |n, d| n.saturating_add(d.name.len()));
            if name_bytes > MAX_TREE_NAME_BYTES {
                let (context, limit) = (self.name().into(), MAX_TREE_NAME_BYTES);
                return Err(TransferError::TreeNamesTooLong { context, path: dir, limit });
            }
            // Every name checked before any is kept; `seen` borrows them
            // (a copy of each would double what the listing costs).
            let mut seen = HashSet::with_capacity(listed.len());
            for d in &listed {
                let why = bad_name(&d.name).or_else(|| (!seen.insert(&d.name[..])).then_some("listed twice"));
                if let Some(why) = why {
                    return Err(TransferError::BadName {
                        context: self.name().into(),
                        dir,
                        name: d.name.to_vec(),
                        why,
                    });
                }
            }
            drop(seen);
            if let (true, Some(first)) = (depth >= MAX_TREE_DEPTH, listed.first()) {
                let path = dir.join(OsStr::from_bytes(&first.name));
                let (context, limit) = (self.name().into(), MAX_TREE_DEPTH);
                return Err(TransferError::TreeTooDeep { context, path, limit });
            }
            // Reversed: the first name is visited next. The names move
            // into the plan (a listing's buffers are exact, so no copy).
            todo.extend(listed.into_iter().rev().map(|d| {
                let name = OsString::from_vec(d.name.into_vec()).into_boxed_os_str();
                Entry::remote(name, depth + 1, &d.stat)
            }));
        }
        Ok(Plan { entries })
    }

    /// Copies the local tree `src` to `remote` in this context (see the
    /// module docs); `progress` gets file bytes as they move.
    pub fn put_tree(
        &self,
        src: impl AsRef<Path>,
        remote: impl AsRef<Path>,
        plan: &Plan,
        progress: Progress<'_>,
    ) -> Result<TreeStats, TransferError> {
        self.put_tree_with_options(src, remote, plan, &CopyOptions::default(), progress)
    }

    /// [`Context::put_tree`], and whether to compare each file first
    /// ([`CopyOptions`]: by default unchanged files are not sent).
    pub fn put_tree_with_options(
        &self,
        src: impl AsRef<Path>,
        remote: impl AsRef<Path>,
        plan: &Plan,
        copy: &CopyOptions,
        progress: Progress<'_>,
    ) -> Result<TreeStats, TransferError> {
        let (src, remote) = (src.as_ref(), remote.as_ref());
        let t0 = Instant::now();
        let root = self.info()?.euid == 0;
        let mut st = TreeStats::default();
        // The directories, for their final mode once everything is in.
        let mut dirs = Vec::new();
        for (rel, e) in plan.walk() {
            let (from, to) = (join(src, &rel), join(remote, &rel));
            match e.kind {
                FileKind::Dir => {
                    self.make_dirs(&to, 0o700)?;
                    dirs.push((to, e));
                    st.dirs += 1;
                }
                FileKind::File => {
                    let done = self.put_with_options(&from, &to, copy, progress)?;
                    st.bytes += done.bytes;
                    st.unchanged += u64::from(!done.changed);
                    st.files += 1;
                }
                FileKind::Symlink => {
                    let target = fs::read_link(&from).map_err(local(&from))?;
                    let _ = self.remove(&to);
                    self.symlink(&target, &to)?;
                    if root {
                        self.lchown(&to, Some(e.owner.0), Some(e.owner.1))?;
                    }
                    st.symlinks += 1;
                }
                FileKind::Other => {
                    log::warn!("[{}] put: skipping {} (not a file, directory or symlink)", self.name(), from.display());
                    st.skipped += 1;
                }
            }
        }
        // Deepest first, so a read-only directory is filled before it
        // closes. (No mtime: the agent has no function that sets one on a
        // directory.)
        for (to, e) in dirs.iter().rev() {
            if root {
                self.chown(to, Some(e.owner.0), Some(e.owner.1))?;
            }
            self.chmod(to, e.mode)?;
        }
        st.elapsed = t0.elapsed();
        Ok(st)
    }

    /// Copies the tree `remote` in this context to the local `dest` (see the
    /// module docs); `progress` gets file bytes as they move. The copy is
    /// ours (see [`Context::get_tree_with`] to keep owners).
    pub fn get_tree(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        plan: &Plan,
        progress: Progress<'_>,
    ) -> Result<TreeStats, TransferError> {
        self.get_tree_with(remote, dest, plan, &GetOptions::default(), progress)
    }

    /// [`Context::get_tree`] with options (e.g. keep the target's owners).
    pub fn get_tree_with(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        plan: &Plan,
        opts: &GetOptions,
        progress: Progress<'_>,
    ) -> Result<TreeStats, TransferError> {
        self.get_tree_with_options(remote, dest, plan, opts, &CopyOptions::default(), progress)
    }

    /// [`Context::get_tree_with`], and whether to compare each file first
    /// ([`CopyOptions`]: by default unchanged files are not sent).
    pub fn get_tree_with_options(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        plan: &Plan,
        opts: &GetOptions,
        copy: &CopyOptions,
        progress: Progress<'_>,
    ) -> Result<TreeStats, TransferError> {
        let (remote, dest) = (remote.as_ref(), dest.as_ref());
        let t0 = Instant::now();
        let keep_owner = opts.keeps_owner();
        let mut st = TreeStats::default();
        // The directory the top of a tree that is not a directory goes in.
        let top = match plan.entries.first() {
            Some(e) if e.kind != FileKind::Dir => {
                let (parent, name) = split_dest(dest)?;
                Some((open_parent(parent)?, name))
            }
            _ => None,
        };
        // The open directories on the way to the current entry: `open[k]`
        // is the one at depth k, with its plan entry (for its final mode
        // and mtime) and its path (for messages).
        let mut open: Vec<(OwnedFd, &Entry, PathBuf)> = Vec::new();
        for (rel, e) in plan.walk() {
            while open.len() > e.depth {
                if let Some((fd, d, path)) = open.pop() {
                    self.finish_dir(&fd, d, &path, keep_owner)?;
                }
            }
            let (from, to) = (join(remote, &rel), join(dest, &rel));
            if e.depth == 0 && e.kind == FileKind::Dir {
                // The destination itself, as the caller named it ("." too).
                open.push((open_or_make_top(dest)?, e, to));
                st.dirs += 1;
                continue;
            }
            let (dir, name) = match (&top, open.last()) {
                (Some((fd, name)), _) if e.depth == 0 => (fd.as_fd(), *name),
                // The plan lists a directory's contents right after it.
                (_, Some((fd, _, _))) if e.depth > 0 && open.len() == e.depth => (fd.as_fd(), &*e.name),
                _ => {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not in the plan's order");
                    return Err(local(&to)(e));
                }
            };
            match e.kind {
                FileKind::Dir => {
                    let fd = open_or_make_dir(dir, name).map_err(local(&to))?;
                    open.push((fd, e, to));
                    st.dirs += 1;
                }
                FileKind::File => {
                    let done = self.get_at(&from, dir, name, &to, opts, copy, progress)?;
                    st.bytes += done.bytes;
                    st.unchanged += u64::from(!done.changed);
                    st.files += 1;
                }
                FileKind::Symlink => {
                    let target = self.read_link(&from)?;
                    let io = |err: rustix::io::Errno| local(&to)(err.into());
                    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(err) => return Err(io(err)),
                    }
                    rustix::fs::symlinkat(target.as_slice(), dir, name).map_err(io)?;
                    if keep_owner {
                        let (uid, gid) = ids(e.owner);
                        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
                    }
                    // The link's own time, not its target's.
                    let times = mtime_only(e.mtime, e.mtime_nsec);
                    rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
                    st.symlinks += 1;
                }
                FileKind::Other => {
                    log::warn!("[{}] get: skipping {} (not a file, directory or symlink)", self.name(), from.display());
                    st.skipped += 1;
                }
            }
        }
        // Deepest first, so a read-only directory is filled before it closes.
        while let Some((fd, d, path)) = open.pop() {
            self.finish_dir(&fd, d, &path, keep_owner)?;
        }
        st.elapsed = t0.elapsed();
        Ok(st)
    }

    /// A fetched directory's contents are all in: its owner (if kept),
    /// mode and mtime, on its open fd (`path` is for messages). The mtime
    /// goes last: writing the contents changed it.
    fn finish_dir(&self, fd: &OwnedFd, e: &Entry, path: &Path, keep_owner: bool) -> Result<(), TransferError> {
        let io = |err: rustix::io::Errno| local(path)(err.into());
        if keep_owner {
            let (uid, gid) = ids(e.owner);
            rustix::fs::fchown(fd, uid, gid).map_err(io)?;
        }
        rustix::fs::fchmod(fd, local_mode(e.mode, true, keep_owner)).map_err(io)?;
        set_mtime(fd.as_fd(), e.mtime, e.mtime_nsec).map_err(local(path))
    }
}

/// A target's mtime for `utimensat` (a symlink has no fd for
/// `set_mtime`): clamped the same way, to [`MTIME_RANGE`], with the access
/// time left alone.
fn mtime_only(secs: i64, nsec: u32) -> Timestamps {
    let (min, max) = MTIME_RANGE;
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: secs.clamp(min, max), tv_nsec: i64::from(nsec.min(999_999_999)) as _ },
    }
}

/// The top of the destination, as the caller named it (its path may pass
/// through symlinks: the caller chose it): created 0700 or opened.
fn open_or_make_top(dest: &Path) -> Result<OwnedFd, TransferError> {
    let created = match rustix::fs::mkdir(dest, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(local(dest)(e.into())),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dest, flags, Mode::empty()).map_err(|e| local(dest)(e.into()))?;
    if created {
        rustix::fs::fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(|e| local(dest)(e.into()))?;
    }
    Ok(fd)
}

/// Creates directory `name` in `dir` (0700 until its contents are in) or
/// opens the one that is there, never through a symlink.
fn open_or_make_dir(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::OsStr) -> std::io::Result<OwnedFd> {
    let created = match rustix::fs::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e @ (rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
            let link = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink);
            return Err(if link {
                std::io::Error::other("a symlink is there, and a copy from a target never follows one")
            } else {
                e.into()
            });
        }
        Err(e) => return Err(e.into()),
    };
    if created {
        rustix::fs::fchmod(&fd, Mode::from_bits_truncate(0o700))?;
    }
    Ok(fd)
}

/// `base/rel`, with an empty `rel` meaning `base` itself: `Path::join("")`
/// appends a slash, and `stat("file/")` is ENOTDIR, which broke every
/// single-file copy planned as a one-entry tree.
fn join(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}
