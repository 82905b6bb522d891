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

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::context::Context;
use super::transfer::{ids, local, local_mode, open_parent, split_dest, GetOptions, Progress, TransferError};
use crate::proto::functions::FileKind;

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
    /// Bytes of file content.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// One object of the source tree, relative to its root.
#[derive(Debug)]
struct Entry {
    /// Path below the root (empty for the root): single-component names.
    rel: PathBuf,
    /// Number of components of `rel`.
    depth: usize,
    kind: FileKind,
    mode: u32,
    size: u64,
    owner: (u32, u32),
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
                rel: rel.clone(),
                depth,
                kind,
                mode: m.mode() & 0o7777,
                size: m.len(),
                owner: (m.uid(), m.gid()),
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
    /// listed must be a single file name, once per directory
    /// ([`TransferError::BadName`] otherwise).
    pub fn plan_remote_tree(&self, src: impl AsRef<Path>) -> Result<Plan, TransferError> {
        let root = src.as_ref();
        let top = self.lstat(root)?;
        let mut entries = Vec::new();
        // Depth first, so a directory's contents follow it directly: the
        // entries still to visit, the next one last.
        let mut todo = vec![Entry {
            rel: PathBuf::new(),
            depth: 0,
            kind: top.kind,
            mode: top.mode,
            size: top.size,
            owner: (top.uid, top.gid),
        }];
        while let Some(e) = todo.pop() {
            let (kind, rel, depth) = (e.kind, e.rel.clone(), e.depth);
            entries.push(e);
            if kind == FileKind::Dir {
                let dir = join(root, &rel);
                let listed = self.list_dir(&dir)?;
                let mut seen = HashSet::with_capacity(listed.len());
                let mut children = Vec::with_capacity(listed.len());
                for d in listed {
                    let why = bad_name(&d.name).or_else(|| (!seen.insert(d.name.to_vec())).then_some("listed twice"));
                    if let Some(why) = why {
                        return Err(TransferError::BadName {
                            context: self.name().into(),
                            dir,
                            name: d.name.into_vec(),
                            why,
                        });
                    }
                    children.push(Entry {
                        rel: rel.join(std::ffi::OsString::from_vec(d.name.into_vec())),
                        depth: depth + 1,
                        kind: d.stat.kind,
                        mode: d.stat.mode,
                        size: d.stat.size,
                        owner: (d.stat.uid, d.stat.gid),
                    });
                }
                todo.extend(children.into_iter().rev());
            }
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
        let (src, remote) = (src.as_ref(), remote.as_ref());
        let t0 = Instant::now();
        let root = self.info()?.euid == 0;
        let mut st = TreeStats::default();
        for e in &plan.entries {
            let (from, to) = (join(src, &e.rel), join(remote, &e.rel));
            match e.kind {
                FileKind::Dir => {
                    self.make_dirs(&to, 0o700)?;
                    st.dirs += 1;
                }
                FileKind::File => {
                    st.bytes += self.put_with_progress(&from, &to, progress)?.bytes;
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
        // Deepest first, so a read-only directory is filled before it closes.
        for e in plan.entries.iter().rev().filter(|e| e.kind == FileKind::Dir) {
            let to = join(remote, &e.rel);
            if root {
                self.chown(&to, Some(e.owner.0), Some(e.owner.1))?;
            }
            self.chmod(&to, e.mode)?;
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
        // is the one at depth k, with its plan entry (for its final mode).
        let mut open: Vec<(OwnedFd, &Entry)> = Vec::new();
        for e in &plan.entries {
            while open.len() > e.depth {
                if let Some((fd, d)) = open.pop() {
                    self.finish_dir(&fd, d, dest, keep_owner)?;
                }
            }
            let (from, to) = (join(remote, &e.rel), join(dest, &e.rel));
            if e.depth == 0 && e.kind == FileKind::Dir {
                // The destination itself, as the caller named it ("." too).
                open.push((open_or_make_top(dest)?, e));
                st.dirs += 1;
                continue;
            }
            let (dir, name) = match (&top, open.last(), e.rel.file_name()) {
                (Some((fd, name)), _, _) if e.depth == 0 => (fd.as_fd(), *name),
                // The plan lists a directory's contents right after it.
                (_, Some((fd, _)), Some(name)) if e.depth > 0 && open.len() == e.depth => (fd.as_fd(), name),
                _ => {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not in the plan's order");
                    return Err(local(&to)(e));
                }
            };
            match e.kind {
                FileKind::Dir => {
                    let fd = open_or_make_dir(dir, name).map_err(local(&to))?;
                    open.push((fd, e));
                    st.dirs += 1;
                }
                FileKind::File => {
                    st.bytes += self.get_at(&from, dir, name, &to, opts, progress)?.bytes;
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
                    st.symlinks += 1;
                }
                FileKind::Other => {
                    log::warn!("[{}] get: skipping {} (not a file, directory or symlink)", self.name(), from.display());
                    st.skipped += 1;
                }
            }
        }
        // Deepest first, so a read-only directory is filled before it closes.
        while let Some((fd, d)) = open.pop() {
            self.finish_dir(&fd, d, dest, keep_owner)?;
        }
        st.elapsed = t0.elapsed();
        Ok(st)
    }

    /// A fetched directory's contents are all in: its owner (if kept) and
    /// mode, on its open fd.
    fn finish_dir(&self, fd: &OwnedFd, e: &Entry, dest: &Path, keep_owner: bool) -> Result<(), TransferError> {
        let io = |err: rustix::io::Errno| local(&join(dest, &e.rel))(err.into());
        if keep_owner {
            let (uid, gid) = ids(e.owner);
            rustix::fs::fchown(fd, uid, gid).map_err(io)?;
        }
        rustix::fs::fchmod(fd, local_mode(e.mode, true, keep_owner)).map_err(io)
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
