//! Directory trees: [`Context::put_tree`] and [`Context::get_tree`].
//!
//! First a plan (walk the source: local `read_dir` or remote `list_dir`,
//! `lstat` only, symlinks never followed), so the total size is known for a
//! progress bar; then the copy: directories are created 0700 and get their
//! own mode after their contents (a read-only source directory must still
//! be filled), regular files go through the streamed, checksummed file
//! transfer, symlinks are recreated as they are. Devices, fifos and sockets
//! are skipped and counted. Owners are kept where the receiving side is root.
//!
//! Semantics are `cp -rT`: the destination *becomes* the copy of the source
//! (created if missing, merged into if it is a directory already).

use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::context::Context;
use super::transfer::{is_root, local, Progress, TransferError};
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
    rel: PathBuf,
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
        self.entries.iter().filter(|e| e.kind == FileKind::File).map(|e| e.size).sum()
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
        fn walk(root: &Path, rel: PathBuf, out: &mut Vec<Entry>) -> Result<(), TransferError> {
            let path = join(root, &rel);
            let m = fs::symlink_metadata(&path).map_err(local(&path))?;
            let kind = kind_of(m.file_type());
            out.push(Entry {
                rel: rel.clone(),
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
                    walk(root, rel.join(n), out)?;
                }
            }
            Ok(())
        }
        let mut entries = Vec::new();
        walk(src.as_ref(), PathBuf::new(), &mut entries)?;
        Ok(Plan { entries })
    }

    /// Walks a tree in this context for [`Context::get_tree`].
    pub fn plan_remote_tree(&self, src: impl AsRef<Path>) -> Result<Plan, TransferError> {
        let root = src.as_ref();
        let top = self.lstat(root)?;
        let mut entries = vec![Entry {
            rel: PathBuf::new(),
            kind: top.kind,
            mode: top.mode,
            size: top.size,
            owner: (top.uid, top.gid),
        }];
        let mut i = 0;
        while i < entries.len() {
            if entries[i].kind == FileKind::Dir {
                let rel = entries[i].rel.clone();
                let children: Vec<Entry> = self
                    .list_dir(join(root, &rel))?
                    .into_iter()
                    .map(|d| Entry {
                        rel: rel.join(std::ffi::OsString::from_vec(d.name.into_vec())),
                        kind: d.stat.kind,
                        mode: d.stat.mode,
                        size: d.stat.size,
                        owner: (d.stat.uid, d.stat.gid),
                    })
                    .collect();
                // Depth first, so a directory's contents follow it directly.
                entries.splice(i + 1..i + 1, children);
            }
            i += 1;
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
    /// module docs); `progress` gets file bytes as they move.
    pub fn get_tree(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        plan: &Plan,
        progress: Progress<'_>,
    ) -> Result<TreeStats, TransferError> {
        let (remote, dest) = (remote.as_ref(), dest.as_ref());
        let t0 = Instant::now();
        let root = is_root();
        let mut st = TreeStats::default();
        for e in &plan.entries {
            let (from, to) = (join(remote, &e.rel), join(dest, &e.rel));
            match e.kind {
                FileKind::Dir => {
                    match fs::create_dir(&to) {
                        Ok(()) => fs::set_permissions(&to, fs::Permissions::from_mode(0o700)).map_err(local(&to))?,
                        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && to.is_dir() => {}
                        Err(err) => return Err(local(&to)(err)),
                    }
                    st.dirs += 1;
                }
                FileKind::File => {
                    st.bytes += self.get_with_progress(&from, &to, progress)?.bytes;
                    st.files += 1;
                }
                FileKind::Symlink => {
                    let target = std::ffi::OsString::from_vec(self.read_link(&from)?);
                    match fs::remove_file(&to) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(err) => return Err(local(&to)(err)),
                    }
                    std::os::unix::fs::symlink(&target, &to).map_err(local(&to))?;
                    if root {
                        std::os::unix::fs::lchown(&to, Some(e.owner.0), Some(e.owner.1)).map_err(local(&to))?;
                    }
                    st.symlinks += 1;
                }
                FileKind::Other => {
                    log::warn!("[{}] get: skipping {} (not a file, directory or symlink)", self.name(), from.display());
                    st.skipped += 1;
                }
            }
        }
        for e in plan.entries.iter().rev().filter(|e| e.kind == FileKind::Dir) {
            let to = join(dest, &e.rel);
            if root {
                std::os::unix::fs::chown(&to, Some(e.owner.0), Some(e.owner.1)).map_err(local(&to))?;
            }
            fs::set_permissions(&to, fs::Permissions::from_mode(e.mode)).map_err(local(&to))?;
        }
        st.elapsed = t0.elapsed();
        Ok(st)
    }
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
