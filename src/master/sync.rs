//! Delta sync: [`Context::sync`] pushes a local file or tree to a context,
//! sending only what differs (the agent's side is `agent/sync.rs`, the
//! wire types `proto/sync.rs`).
//!
//! Map of a sync:
//! 1. **Compare.** One `sync_list` call returns the whole destination
//!    tree (names as bytes, kinds, sizes, mtimes, modes, link targets;
//!    `lstat` only). Its names are checked here ([`check_listing`]: single
//!    file names, each parent a directory listed before it, no name twice
//!    in a directory, at most [`MAX_TREE_ENTRIES`]) and indexed by
//!    directory, children sorted by name ([`RemoteTree`]); the source is
//!    read meanwhile (`fstatat` relative to directory fds, symlinks not
//!    followed), and the two are compared by a merge of sorted
//!    directories: no path is built or hashed per unchanged entry. A file whose size and mtime
//!    (to the nanosecond) are the destination's is **skipped unread**, as
//!    rsync's quick check does: a file rewritten in place with its size and
//!    mtime restored is not seen (use `put`, which hashes both ends).
//! 2. **Tree changes** in one `sync_apply` call (batched by [`APPLY_BATCH`]):
//!    removals (a kind that changed; with [`SyncOptions::delete`] what the
//!    source lacks), new directories, symlinks (copied as symlinks, their
//!    target as is).
//! 3. **Files.** A new file, or one under [`DELTA_MIN`] bytes at either end,
//!    is sent whole (`sync_begin`, literal `sync_delta`s, `sync_commit`,
//!    pipelined over many files: [`WINDOW`] calls, [`WINDOW_BYTES`] in
//!    flight). A changed big
//!    file is sent as a delta: the agent returns signatures of its old
//!    file's blocks (rsync's rolling weak sum + XXH3-128), the
//!    master slides a window over the new file and sends copy-block ops
//!    where a block matches at any offset, literal bytes elsewhere, in
//!    messages of at most [`CHUNK`] literal bytes, within the same window.
//!    The agent rebuilds into a temp file beside the destination, checks
//!    the whole file's XXH3-128 and size, sets mode, owner (as root) and
//!    mtime, and renames it into place: every final name holds the old
//!    file or the new one.
//! 4. **Metadata** of directories (mode, mtime) last, children first.
//!
//! **Failures.** A call the agent answers with an error fails only its
//! file ([`SyncStats::failed`], a [`FailReason`]; its temp file aborted);
//! `sync_apply` reports each op that failed and runs the others; a source
//! entry that cannot be read fails alone (and nothing below it is
//! deleted). A lost link, a timeout, a reply that does not decode or a
//! hostile listing or signature still fail the whole sync.
//!
//! The target is not trusted: its listing only decides what is compared
//! and removed below the destination; the master reads only the files of
//! its own walk of SRC. Its signatures are bounded ([`MAX_BLOCKS`], the
//! slices asked for), and a target that makes every position a weak-sum
//! hit compares at most 16 blocks a hit and stops being matched once its
//! misses have cost [`false_alarm_limit`] bytes of hashing (the rest goes
//! as literals), so it cannot make the master spin. Every call has the
//! context's timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use thiserror::Error;

use super::context::{path_bytes, Context, Pending};
use super::error::CallError;
use super::transfer::{hash_file, read_full, HashKind};
use super::tree::{MAX_TREE_DEPTH, MAX_TREE_ENTRIES};
use crate::core::xxh3::{xxh3_128, Xxh3};
use crate::proto::functions::{self as f, FileKind};
use crate::proto::sync::{
    bad_name, DeltaOp, Rolling, SyncAbort, SyncApplied, SyncApply, SyncApplyArgs, SyncBegin, SyncBeginArgs, SyncCommit,
    SyncCommitArgs, SyncDelta, SyncDeltaArgs, SyncEntry, SyncList, SyncListArgs, SyncListing, SyncSignature,
    SyncSignatureArgs, TreeOp, ROOT_PARENT, STRONG_LEN,
};

/// Literal bytes per `sync_delta` message (and read size of whole files).
pub const CHUNK: usize = 1 << 20;
/// Calls in flight per sync (small files: three calls each)...
pub const WINDOW: usize = 64;
/// ...and at most this many literal bytes in them (16 MiB).
pub const WINDOW_BYTES: usize = 16 * CHUNK;
/// Files smaller than this (at either end) are sent whole: a delta costs
/// a round trip for the signatures.
pub const DELTA_MIN: u64 = 64 * 1024;
/// Most blocks of an old file the master indexes (the block size grows
/// with the file to stay under it).
pub const MAX_BLOCKS: u64 = 1 << 21;
/// Bytes of the new file a `sync_delta` message stands for, at most
/// (copies and literals), so the agent rebuilds while the master matches.
const FLUSH_SPAN: u64 = 8 << 20;
/// Tree ops per `sync_apply` call.
pub const APPLY_BATCH: usize = 4096;
/// Blocks per `sync_signature` call (fewer for big blocks: at most 64 MiB read).
const SIG_SLICE: u64 = 1 << 16;

/// How [`Context::sync_with_report`] syncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Allow a directory as the source (the destination becomes its copy,
    /// as `rsync -a SRC/ DST` or `cp -rT`).
    pub recursive: bool,
    /// Remove what the destination has and the source lacks (only below
    /// the destination; a symlink there is removed as a link).
    pub delete: bool,
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Regular files of the source compared.
    pub files: u64,
    /// Of those, sent (whole or as a delta).
    pub changed: u64,
    /// Of the changed, sent as a delta against the old file.
    pub deltas: u64,
    /// Directories of the source (the root included).
    pub dirs: u64,
    /// Symlinks created or replaced.
    pub symlinks: u64,
    /// Entries removed at the destination (each counts once, with what was in it).
    pub deleted: u64,
    /// Devices, fifos and sockets of the source, skipped.
    pub skipped: u64,
    /// Size of the changed files.
    pub file_bytes: u64,
    /// Literal bytes sent (the rest was copied from the old files).
    pub literal_bytes: u64,
    /// Bytes of block signatures received.
    pub signature_bytes: u64,
    /// Bytes the master sent on the context's stream during the sync
    /// ([`Context::bytes_sent`]: frames, calls, literals; shared with
    /// whatever else uses that stream meanwhile).
    pub wire_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Of it, until the destination's listing had arrived (a tree sync:
    /// the `sync_list` call and, meanwhile, the read of the source
    /// tree); the rest is the comparison and the changes.
    pub listed: Duration,
    /// What failed, each with why; the rest of the sync was done (as
    /// rsync carries on past a file it cannot write). Empty when all went.
    pub failed: Vec<SyncFailure>,
}

/// A file, directory or symlink the sync could not bring over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncFailure {
    /// Relative to the destination (a single-file sync: its file name).
    pub path: PathBuf,
    /// Why.
    pub reason: FailReason,
}

/// Why one entry of a sync failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FailReason {
    /// The context refused or failed the change: permission denied, no
    /// space, something in the way of a rename, a failed checksum.
    #[error("{0}")]
    Target(crate::proto::RemoteError),
    /// The source could not be read (permission denied, an I/O error).
    #[error("reading the source: {message}")]
    Source {
        /// Its kind.
        kind: std::io::ErrorKind,
        /// The OS error number, if any.
        errno: Option<i32>,
        /// The error as the OS words it.
        message: String,
    },
    /// The source changed size while it was read: nothing was put in place.
    #[error("changed during the sync: {expected} bytes at the start, {read} read")]
    SourceChanged {
        /// Size when compared.
        expected: u64,
        /// Bytes read.
        read: u64,
    },
    /// A non-empty directory of the destination stands where the source
    /// has a file or symlink: replaced only with `--delete` (rsync's rule,
    /// without its `--force`).
    #[error("a non-empty directory is in the way (--delete replaces it)")]
    DirectoryInTheWay,
}

impl FailReason {
    fn source(e: &std::io::Error) -> FailReason {
        FailReason::Source { kind: e.kind(), errno: e.raw_os_error(), message: e.to_string() }
    }
}

/// One thing a sync did, for a report as it goes (paths relative to the
/// destination; a single-file sync reports its file name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// A regular file: sent (`changed`) or left alone.
    File {
        /// Where.
        path: PathBuf,
        /// Sent.
        changed: bool,
        /// Its size.
        size: u64,
        /// Literal bytes sent for it.
        literal: u64,
    },
    /// Removed at the destination.
    Deleted {
        /// What.
        path: PathBuf,
    },
    /// A symlink created or replaced.
    Symlink {
        /// Where.
        path: PathBuf,
    },
}

/// A failed sync.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The context side failed (or the context is gone).
    #[error(transparent)]
    Remote(#[from] CallError),
    /// The local side failed.
    #[error("local {path}: {source}")]
    Local {
        /// The local path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The source is a directory and the sync is not recursive.
    #[error("{0} is a directory (sync it with -r)")]
    SourceIsDir(PathBuf),
    /// The destination exists and is of the wrong kind for the source.
    #[error("{context}: {path} is {what}")]
    Destination {
        /// Context name.
        context: String,
        /// The destination.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// A source file changed size while it was read: nothing was put in
    /// place for it.
    #[error("{path} changed during the sync: {expected} bytes at the start, {read} read")]
    SourceChanged {
        /// The file.
        path: PathBuf,
        /// Size when compared.
        expected: u64,
        /// Bytes read.
        read: u64,
    },
    /// The target's listing or signatures are not what was asked for (a
    /// name that is not a single file name, a parent that is not a
    /// directory before it, a name twice, too many entries, a short or
    /// long signature): refused before anything is written.
    #[error("{context}: bad reply for {dest}: {why} (name \"{}\")", crate::core::text::printable(.name, 240))]
    BadReply {
        /// Context name.
        context: String,
        /// The destination.
        dest: PathBuf,
        /// The name concerned (may be empty).
        name: Vec<u8>,
        /// What is wrong.
        why: &'static str,
    },
}

fn local(path: &Path) -> impl Fn(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Local { path: path.to_path_buf(), source }
}

/// What the sync needs of a destination entry (from the listing).
#[derive(Clone, Copy, Debug)]
struct Remote {
    kind: FileKind,
    mode: u32,
    size: u64,
    mtime: (i64, u32),
}

impl Remote {
    fn of(e: &SyncEntry) -> Remote {
        Remote { kind: e.kind, mode: e.mode, size: e.size, mtime: (e.mtime, e.mtime_nsec) }
    }
}

/// What the sync needs of a source entry's `lstat` (or, for the source
/// root, its `stat`).
#[derive(Clone, Copy, Debug)]
struct Meta {
    kind: FileKind,
    /// Permission bits (with setuid, setgid, sticky).
    mode: u32,
    size: u64,
    mtime: (i64, u32),
    owner: (u32, u32),
}

impl Meta {
    fn of_std(m: &fs::Metadata) -> Meta {
        let ft = m.file_type();
        let kind = if ft.is_file() {
            FileKind::File
        } else if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        Meta {
            kind,
            mode: m.mode() & 0o7777,
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            owner: (m.uid(), m.gid()),
        }
    }

    fn of_stat(st: &rustix::fs::Stat) -> Meta {
        use rustix::fs::FileType as T;
        let kind = match T::from_raw_mode(st.st_mode) {
            T::RegularFile => FileKind::File,
            T::Directory => FileKind::Dir,
            T::Symlink => FileKind::Symlink,
            _ => FileKind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            owner: (st.st_uid, st.st_gid),
        }
    }
}

/// A refused entry of a listing: its name and what is wrong with it.
pub type BadEntry = (Vec<u8>, &'static str);

/// A checked listing of the destination: its entries, and each
/// directory's children sorted by name (so the comparison with the
/// source is a merge of two sorted lists, without a path built or hashed
/// per entry).
#[derive(Debug)]
pub struct RemoteTree {
    entries: Vec<SyncEntry>,
    /// The children of directory `d` (the root is `entries.len()`) are
    /// `order[start[d]..start[d + 1]]`.
    start: Vec<u32>,
    order: Vec<u32>,
}

impl RemoteTree {
    /// The entries of directory `dir` (`None`: the root), by name.
    fn children(&self, dir: Option<u32>) -> &[u32] {
        let d = dir.map_or(self.entries.len(), |d| d as usize);
        match (self.start.get(d), self.start.get(d + 1)) {
            (Some(&a), Some(&b)) => self.order.get(a as usize..b as usize).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Every entry's path below the root, in the listing's order.
    pub fn paths(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let mut p = if e.parent == ROOT_PARENT { Vec::new() } else { out[e.parent as usize].clone() };
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&e.name);
            out.push(p);
        }
        out
    }
}

/// The destination's listing checked and indexed: every name a single
/// file name ([`bad_name`]), every parent a directory listed before its
/// child, no name twice in a directory, at most `max` entries and
/// [`MAX_TREE_DEPTH`] levels. The `Err` is the name and what is wrong
/// with it.
pub fn check_listing(entries: Vec<SyncEntry>, max: usize) -> Result<RemoteTree, BadEntry> {
    let n = entries.len();
    if n > max || n >= u32::MAX as usize {
        return Err((Vec::new(), "more entries than asked for"));
    }
    let mut depth: Vec<u16> = Vec::with_capacity(n);
    // count[d + 1]: children of directory d (the root is n).
    let mut start = vec![0u32; n + 2];
    for (i, e) in entries.iter().enumerate() {
        if let Some(why) = bad_name(&e.name) {
            return Err((e.name.to_vec(), why));
        }
        let (d, slot) = if e.parent == ROOT_PARENT {
            (1, n)
        } else {
            let p = e.parent as usize;
            if p >= i || entries[p].kind != FileKind::Dir {
                return Err((e.name.to_vec(), "its parent is not a directory listed before it"));
            }
            (depth[p] + 1, p)
        };
        if usize::from(d) > MAX_TREE_DEPTH {
            return Err((e.name.to_vec(), "deeper than 256 levels"));
        }
        depth.push(d);
        start[slot + 1] += 1;
    }
    for d in 1..start.len() {
        start[d] += start[d - 1];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; n];
    for (i, e) in entries.iter().enumerate() {
        let slot = if e.parent == ROOT_PARENT { n } else { e.parent as usize };
        order[next[slot] as usize] = i as u32;
        next[slot] += 1;
    }
    for d in 0..=n {
        let kids = &mut order[start[d] as usize..start[d + 1] as usize];
        kids.sort_unstable_by(|&a, &b| entries[a as usize].name.cmp(&entries[b as usize].name));
        if let Some(w) = kids.windows(2).find(|w| entries[w[0] as usize].name == entries[w[1] as usize].name) {
            return Err((entries[w[0] as usize].name.to_vec(), "listed twice"));
        }
    }
    Ok(RemoteTree { entries, start, order })
}

/// A source entry: its name in its directory, its `lstat`, a symlink's
/// target, a directory's read (its index in the walk's list).
struct LocalEntry {
    name: Vec<u8>,
    meta: Meta,
    link: Vec<u8>,
    dir: Option<usize>,
}

/// A source directory read: its entries by name and those whose `lstat`
/// failed; `Err` when it could not be opened or listed.
type DirRead = std::io::Result<(Vec<LocalEntry>, Vec<(Vec<u8>, std::io::Error)>)>;

/// The source tree below `dir` read into `dirs` (it is `dirs[returned]`),
/// depth first, one directory fd open per level, `lstat` relative to it
/// (the master's share of the listing time: it runs while the target
/// lists, and the comparison after is a merge in memory).
fn read_source_tree(
    dir: &OwnedFd,
    src: &Path,
    depth: usize,
    dirs: &mut Vec<DirRead>,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> Result<usize, SyncError> {
    let me = dirs.len();
    dirs.push(Ok((Vec::new(), Vec::new())));
    let mut read = read_source_dir(dir, buf);
    if let Ok((entries, _)) = &mut read {
        for e in entries.iter_mut().filter(|e| e.meta.kind == FileKind::Dir) {
            if depth + 1 >= MAX_TREE_DEPTH {
                return Err(local(src)(std::io::Error::other("deeper than 256 levels")));
            }
            e.dir = Some(match open_source_dir(dir, &e.name) {
                Ok(fd) => read_source_tree(&fd, src, depth + 1, dirs, buf)?,
                Err(err) => {
                    dirs.push(Err(err));
                    dirs.len() - 1
                }
            });
        }
    }
    dirs[me] = read;
    Ok(me)
}

/// The entries of a source directory, sorted by name, each `lstat`ed
/// relative to the directory's fd (no path built per entry). An entry
/// gone between the listing and its `lstat` is left out, as if the
/// listing had not seen it; another error of an entry is its own.
fn read_source_dir(dir: &OwnedFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> DirRead {
    use rustix::fs::{AtFlags, FileType};
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut names = rustix::fs::RawDir::new(dir, buf);
    while let Some(e) = names.next() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                bad.push((name.to_vec(), e.into()));
                continue;
            }
        };
        let link = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            match rustix::fs::readlinkat(dir, name, Vec::new()) {
                Ok(l) => l.into_bytes(),
                Err(e) => {
                    bad.push((name.to_vec(), e.into()));
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        out.push(LocalEntry { name: name.to_vec(), meta: Meta::of_stat(&st), link, dir: None });
    }
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok((out, bad))
}

/// A source directory opened below another, not through a symlink.
fn open_source_dir(parent: &OwnedFd, name: &[u8]) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

fn rel_path(rel: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(rel))
}

/// The block size for an old file of `size` bytes: about its square root
/// (rsync's rule: a changed byte costs one block of literals, the
/// signature about sqrt(size) entries), a multiple of 1 KiB, at least
/// 2 KiB, and big enough that the file has at most [`MAX_BLOCKS`] blocks.
pub fn block_size(size: u64) -> u32 {
    let root = (size as f64).sqrt() as u64;
    let mut bs = root.div_ceil(1024).max(2) * 1024;
    while size / bs > MAX_BLOCKS {
        bs *= 2;
    }
    bs.min(1 << 24) as u32
}

/// Bytes hashed for weak-sum hits that matched no block, after which the
/// master stops looking for matches in a file of `new_size` bytes (the
/// rest goes literally): a hostile target could otherwise make every byte
/// an XXH3-128 of a block. So misses cost at most about one more hash of
/// the file.
pub fn false_alarm_limit(new_size: u64) -> u64 {
    new_size.saturating_add(64 << 20)
}

/// Blocks with the same weak sum compared with a window, at most.
const MAX_CANDIDATES: usize = 16;

/// Rebuild ids, unique in this process (several syncs may share an agent).
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed).max(1)
}

/// Calls sent and not yet answered, oldest first, each for one file (its
/// rebuild id); the rebuilds begun and not yet committed (aborted if the
/// sync fails); and the files that failed. A call the agent answers with
/// an error fails its file only; anything else (the link lost, a reply
/// that does not decode) fails the sync.
struct Flight {
    calls: VecDeque<(Waiter, usize, u32)>,
    bytes: usize,
    open: Vec<u32>,
    /// Each file's shown path and, once the stats count it as changed,
    /// what they count, by id.
    files: HashMap<u32, (PathBuf, Option<Counted>)>,
    failed: Vec<SyncFailure>,
    failed_ids: HashSet<u32>,
}

type Waiter = Box<dyn FnOnce() -> Result<(), CallError>>;

/// What the stats counted for a file sent: its size, its literal bytes,
/// whether it went as a delta.
type Counted = (u64, u64, bool);

impl Flight {
    fn new() -> Flight {
        Flight {
            calls: VecDeque::new(),
            bytes: 0,
            open: Vec::new(),
            files: HashMap::new(),
            failed: Vec::new(),
            failed_ids: HashSet::new(),
        }
    }

    /// Adds a call for file `id`.
    fn push<T: serde::de::DeserializeOwned + 'static>(&mut self, p: Pending<T>, id: u32) -> Result<(), CallError> {
        self.push_sized(p, 0, id)
    }

    /// Adds a `sync_apply` call for file `id`: an op it reports failed
    /// fails the file.
    fn push_apply(&mut self, p: Pending<SyncApplied>, id: u32) -> Result<(), CallError> {
        let w: Waiter = Box::new(move || match p.wait()?.failed.into_iter().next() {
            Some((_, e)) => Err(CallError::Remote(e)),
            None => Ok(()),
        });
        self.push_waiter(w, 0, id)
    }

    /// Adds a call for file `id` carrying `bytes` of data; waits for the
    /// oldest while more than [`WINDOW`] calls or [`WINDOW_BYTES`] are out.
    fn push_sized<T: serde::de::DeserializeOwned + 'static>(
        &mut self,
        p: Pending<T>,
        bytes: usize,
        id: u32,
    ) -> Result<(), CallError> {
        self.push_waiter(Box::new(move || p.wait().map(drop)), bytes, id)
    }

    fn push_waiter(&mut self, w: Waiter, bytes: usize, id: u32) -> Result<(), CallError> {
        self.calls.push_back((w, bytes, id));
        self.bytes += bytes;
        while self.calls.len() > WINDOW || self.bytes > WINDOW_BYTES {
            self.settle_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest call; an error reply fails its file.
    fn settle_oldest(&mut self) -> Result<(), CallError> {
        let Some((w, n, id)) = self.calls.pop_front() else { return Ok(()) };
        self.bytes -= n;
        match w() {
            Ok(()) => Ok(()),
            Err(CallError::Remote(e)) => {
                self.fail(id, FailReason::Target(e));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn drain(&mut self) -> Result<(), CallError> {
        while !self.calls.is_empty() {
            self.settle_oldest()?;
        }
        Ok(())
    }

    /// Notes file `id`'s failure (its first only: a failed begin fails
    /// the calls after it too).
    fn fail(&mut self, id: u32, reason: FailReason) {
        if self.failed_ids.insert(id) {
            let path = self.files.get(&id).map(|f| f.0.clone()).unwrap_or_default();
            self.failed.push(SyncFailure { path, reason });
        }
    }
}

/// Where a file goes: the root and the path below it.
struct Dest<'a> {
    root: &'a [u8],
    rel: &'a [u8],
}

/// A file of the source to compare (and maybe send).
struct FileJob {
    rel: Vec<u8>,
    meta: Meta,
    old: Option<Remote>,
}

/// The plan of a tree sync, built by one merge of the source's and the
/// destination's sorted directories.
#[derive(Default)]
struct Plan {
    /// Removals (kind changes, `--delete`) and new directories.
    ops: Vec<TreeOp>,
    links: Vec<TreeOp>,
    files: Vec<FileJob>,
    /// Directory metadata, parents before children, and whether each is
    /// already the source's.
    dirs_meta: Vec<(TreeOp, bool)>,
    deleted: Vec<Vec<u8>>,
    /// Entries of the source that failed before anything was sent.
    failed: Vec<SyncFailure>,
}

impl Context {
    /// Syncs the local file or (with [`SyncOptions::recursive`]) tree `src`
    /// to `dst` in this context, sending only what changed (see the module
    /// documentation).
    pub fn sync(
        &self,
        src: impl AsRef<Path>,
        dst: impl AsRef<Path>,
        opts: &SyncOptions,
    ) -> Result<SyncStats, SyncError> {
        self.sync_with_report(src, dst, opts, &mut |_| {})
    }

    /// [`Context::sync`], telling `report` about each file as it goes.
    /// A file that fails (the destination refuses it, the source cannot
    /// be read) is listed in [`SyncStats::failed`] and the sync goes on;
    /// `Err` is for a sync that could not go on (the context lost, the
    /// destination root unusable, a hostile reply).
    pub fn sync_with_report(
        &self,
        src: impl AsRef<Path>,
        dst: impl AsRef<Path>,
        opts: &SyncOptions,
        report: &mut dyn FnMut(&SyncEvent),
    ) -> Result<SyncStats, SyncError> {
        let (src, dst) = (src.as_ref(), dst.as_ref());
        let t0 = Instant::now();
        let sent0 = self.bytes_sent();
        let mut stats = SyncStats::default();
        let meta = Meta::of_std(&fs::metadata(src).map_err(local(src))?);
        let mut flight = Flight::new();
        let r = if meta.kind == FileKind::Dir {
            if !opts.recursive {
                return Err(SyncError::SourceIsDir(src.into()));
            }
            self.sync_tree(src, &meta, dst, opts, &mut stats, &mut flight, report)
        } else {
            self.sync_one(src, &meta, dst, &mut stats, &mut flight, report)
        };
        let r = r.and_then(|()| flight.drain().map_err(SyncError::from));
        if r.is_err() {
            let quick = self.with_timeout(Some(Duration::from_secs(5)));
            for id in flight.open.drain(..) {
                let _ = quick.call::<SyncAbort>(&id);
            }
        }
        r?;
        // A file counted as sent whose commit then failed is not changed.
        for id in &flight.failed_ids {
            if let Some(&(_, Some((size, literal, delta)))) = flight.files.get(id) {
                stats.changed = stats.changed.saturating_sub(1);
                stats.deltas = stats.deltas.saturating_sub(u64::from(delta));
                stats.file_bytes = stats.file_bytes.saturating_sub(size);
                stats.literal_bytes = stats.literal_bytes.saturating_sub(literal);
            }
        }
        stats.failed.append(&mut flight.failed);
        stats.wire_bytes = self.bytes_sent().saturating_sub(sent0);
        stats.elapsed = t0.elapsed();
        Ok(stats)
    }

    fn bad_reply(&self, dest: &Path, name: Vec<u8>, why: &'static str) -> SyncError {
        SyncError::BadReply { context: self.name().into(), dest: dest.into(), name, why }
    }

    /// A single file: `dst` names the file itself.
    fn sync_one(
        &self,
        src: &Path,
        meta: &Meta,
        dst: &Path,
        stats: &mut SyncStats,
        flight: &mut Flight,
        report: &mut dyn FnMut(&SyncEvent),
    ) -> Result<(), SyncError> {
        let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
            return Err(SyncError::Destination {
                context: self.name().into(),
                path: dst.into(),
                what: "not a path ending in a file name",
            });
        };
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        let st = match self.call::<f::Stat>(&f::StatArgs { path: path_bytes(dst), follow: false }) {
            Ok(st) => Some(st),
            Err(CallError::Remote(ref error)) if error.errno == 2 => None,
            Err(e) => return Err(e.into()),
        };
        let old = match &st {
            Some(st) if st.kind == FileKind::Dir => {
                return Err(SyncError::Destination {
                    context: self.name().into(),
                    path: dst.into(),
                    what: "a directory (name the file itself)",
                })
            }
            Some(st) if st.kind == FileKind::File => {
                Some(Remote { kind: st.kind, mode: st.mode, size: st.size, mtime: (st.mtime, st.mtime_nsec) })
            }
            _ => None,
        };
        let root = path_bytes(parent);
        let d = Dest { root: &root, rel: name.as_bytes() };
        self.file(src, meta, &d, old, Path::new(name), stats, flight, report)?;
        flight.drain()?;
        Ok(())
    }

    /// Compares one source file with what the destination has (`old`) and
    /// sends it whole, as a delta, or not at all. A failure of this file
    /// alone is noted in `flight`; `Err` fails the sync.
    #[allow(clippy::too_many_arguments)]
    fn file(
        &self,
        src: &Path,
        meta: &Meta,
        d: &Dest<'_>,
        old: Option<Remote>,
        shown: &Path,
        stats: &mut SyncStats,
        flight: &mut Flight,
        report: &mut dyn FnMut(&SyncEvent),
    ) -> Result<(), SyncError> {
        stats.files += 1;
        let old = old.filter(|o| o.kind == FileKind::File);
        if let Some(o) = old {
            if o.size == meta.size && o.mtime == meta.mtime {
                if o.mode != meta.mode {
                    let id = next_id();
                    flight.files.insert(id, (shown.into(), None));
                    let op = TreeOp::SetMeta { rel: ByteBuf::from(d.rel.to_vec()), mode: meta.mode, mtime: None };
                    let args = SyncApplyArgs { root: ByteBuf::from(d.root.to_vec()), create_root: None, ops: vec![op] };
                    flight.push_apply(self.call_async::<SyncApply>(&args)?, id)?;
                }
                report(&SyncEvent::File { path: shown.into(), changed: false, size: meta.size, literal: 0 });
                return Ok(());
            }
        }
        let id = next_id();
        flight.files.insert(id, (shown.into(), None));
        let delta = old.is_some_and(|o| o.size >= DELTA_MIN) && meta.size >= DELTA_MIN;
        let r = if delta {
            self.send_delta(src, meta, d, id, old.map_or(0, |o| o.size), stats, flight)
        } else {
            self.send_whole(src, meta, d, id, flight)
        };
        let literal = match r {
            Ok(literal) => literal,
            Err(e) => {
                let reason = match e {
                    SyncError::Local { source, .. } => FailReason::source(&source),
                    SyncError::SourceChanged { expected, read, .. } => FailReason::SourceChanged { expected, read },
                    SyncError::Remote(CallError::Remote(e)) => FailReason::Target(e),
                    e => return Err(e),
                };
                // Begun and not committed: its temp file goes.
                if flight.open.contains(&id) {
                    flight.open.retain(|&i| i != id);
                    flight.push(self.call_async::<SyncAbort>(&id)?, id)?;
                }
                flight.fail(id, reason);
                return Ok(());
            }
        };
        if flight.failed_ids.contains(&id) {
            return Ok(()); // a delta's calls are all answered: it failed there
        }
        if delta {
            stats.deltas += 1;
        }
        flight.files.insert(id, (shown.into(), Some((meta.size, literal, delta))));
        stats.changed += 1;
        stats.file_bytes += meta.size;
        stats.literal_bytes += literal;
        report(&SyncEvent::File { path: shown.into(), changed: true, size: meta.size, literal });
        Ok(())
    }

    fn begin(&self, d: &Dest<'_>, id: u32, old: bool, block_size: u32) -> Result<Pending<u64>, CallError> {
        let args = SyncBeginArgs {
            id,
            root: ByteBuf::from(d.root.to_vec()),
            rel: ByteBuf::from(d.rel.to_vec()),
            old,
            block_size,
        };
        self.call_async::<SyncBegin>(&args)
    }

    fn commit(&self, id: u32, meta: &Meta, size: u64, digest: &[u8]) -> Result<Pending<()>, CallError> {
        let args = SyncCommitArgs {
            id,
            size,
            xxh3: ByteBuf::from(digest),
            mode: meta.mode,
            mtime: meta.mtime,
            owner: meta.owner,
        };
        self.call_async::<SyncCommit>(&args)
    }

    /// A whole file, pipelined: nothing is awaited here but the window.
    fn send_whole(
        &self,
        src: &Path,
        meta: &Meta,
        d: &Dest<'_>,
        id: u32,
        flight: &mut Flight,
    ) -> Result<u64, SyncError> {
        let mut input = fs::File::open(src).map_err(local(src))?;
        flight.push(self.begin(d, id, false, 4096)?, id)?;
        flight.open.push(id);
        let mut hash = Xxh3::new();
        let mut size = 0u64;
        // Sized to the file (one byte more shows its end): a 1 MiB buffer
        // per small file was most of a 10,000-file sync's time.
        let mut buf = vec![0u8; usize::try_from(meta.size).unwrap_or(CHUNK).saturating_add(1).min(CHUNK)];
        loop {
            let n = read_full(&mut input, &mut buf).map_err(local(src))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            size += n as u64;
            let args = SyncDeltaArgs { id, ops: vec![DeltaOp::Data(ByteBuf::from(&buf[..n]))] };
            flight.push_sized(self.call_async::<SyncDelta>(&args)?, n, id)?;
            if n < buf.len() {
                break;
            }
        }
        if size != meta.size {
            return Err(SyncError::SourceChanged { path: src.into(), expected: meta.size, read: size });
        }
        flight.push(self.commit(id, meta, size, &hash.finish())?, id)?;
        flight.open.retain(|&i| i != id);
        Ok(size)
    }

    /// A changed file as a delta against the old one; the literal bytes.
    #[allow(clippy::too_many_arguments)]
    fn send_delta(
        &self,
        src: &Path,
        meta: &Meta,
        d: &Dest<'_>,
        id: u32,
        listed_size: u64,
        stats: &mut SyncStats,
        flight: &mut Flight,
    ) -> Result<u64, SyncError> {
        let input = fs::File::open(src).map_err(local(src))?;
        let whole = fs::File::open(src).map_err(local(src))?;
        // The whole file's digest on a thread of its own, meanwhile: the
        // agent computes signatures and this thread matches (it was a
        // third of the master's time, serial).
        std::thread::scope(|s| {
            let hasher = s.spawn(move || hash_file(&whole, HashKind::Xxh3_128));
            let r = self.delta_body(src, d, id, listed_size, input, stats, flight);
            let digest = hasher.join().map_err(|_| local(src)(std::io::Error::other("the hashing thread panicked")))?;
            let (literal, size) = r?;
            let (digest, hashed) = digest.map_err(local(src))?;
            if size != meta.size || hashed != size {
                return Err(SyncError::SourceChanged { path: src.into(), expected: meta.size, read: size });
            }
            flight.push(self.commit(id, meta, size, digest.as_bytes())?, id)?;
            flight.open.retain(|&i| i != id);
            flight.drain()?;
            log::debug!("[{}] sync {}: committed", self.name(), src.display());
            Ok(literal)
        })
    }

    /// [`Context::send_delta`] but the digest: signatures, matching, ops;
    /// the literal bytes and the bytes read.
    #[allow(clippy::too_many_arguments)]
    fn delta_body(
        &self,
        src: &Path,
        d: &Dest<'_>,
        id: u32,
        listed_size: u64,
        input: fs::File,
        stats: &mut SyncStats,
        flight: &mut Flight,
    ) -> Result<(u64, u64), SyncError> {
        let dest = rel_path(d.rel);
        let t0 = Instant::now();
        let bs = block_size(listed_size);
        let old_size = self.begin(d, id, true, bs)?.wait()?;
        flight.open.push(id);
        // Signatures, a few slices in flight.
        let blocks = old_size.div_ceil(u64::from(bs)).min(MAX_BLOCKS);
        // The short last block, if any: matched only at the new file's end.
        let tail_len = (old_size % u64::from(bs)) as usize;
        let tail_block = (tail_len > 0 && blocks == old_size.div_ceil(u64::from(bs))).then(|| blocks - 1);
        let slice = SIG_SLICE.min((64 << 20) / u64::from(bs)).max(1);
        let mut index = BlockIndex::default();
        let mut asked = VecDeque::new();
        let mut next = 0u64;
        while next < blocks || !asked.is_empty() {
            while next < blocks && asked.len() < 4 {
                let count = slice.min(blocks - next);
                let args = SyncSignatureArgs { id, first: next, count: count as u32 };
                asked.push_back((count, self.call_async::<SyncSignature>(&args)?));
                next += count;
            }
            let Some((count, p)) = asked.pop_front() else { break };
            let sigs = p.wait()?;
            let n = sigs.weak.len();
            if n as u64 > count || sigs.strong.len() != n * STRONG_LEN {
                return Err(self.bad_reply(&dest, vec![], "a signature slice of the wrong length"));
            }
            stats.signature_bytes += (n * (4 + STRONG_LEN)) as u64;
            for (w, s) in sigs.weak.iter().zip(sigs.strong.chunks_exact(STRONG_LEN)) {
                if Some(index.strong.len() as u64) == tail_block {
                    let mut strong = [0u8; STRONG_LEN];
                    strong.copy_from_slice(s);
                    index.tail = Some((index.strong.len() as u32, tail_len, *w, strong));
                    break;
                }
                index.push(*w, s);
            }
            if (n as u64) < count {
                // The old file is shorter than it was: no more blocks.
                asked.clear();
                break;
            }
        }
        index.build();
        let t_sig = t0.elapsed();
        let new_size = input.metadata().map_err(local(src))?.len();
        let mut m = Matcher::new(self, id, bs as usize, index, flight, new_size);
        let (size, literal) = m.run(input, src)?;
        log::debug!(
            "[{}] sync {}: {} blocks of {bs} bytes: signatures in {:?}, matched by {:?} ({literal} literal bytes)",
            self.name(),
            dest.display(),
            blocks,
            t_sig,
            t0.elapsed()
        );
        Ok((literal, size))
    }

    /// A tree: list, plan, apply, files, directory metadata.
    #[allow(clippy::too_many_arguments)]
    fn sync_tree(
        &self,
        src: &Path,
        meta: &Meta,
        dst: &Path,
        opts: &SyncOptions,
        stats: &mut SyncStats,
        flight: &mut Flight,
        report: &mut dyn FnMut(&SyncEvent),
    ) -> Result<(), SyncError> {
        let root = path_bytes(dst).to_vec();
        // The target lists while this side opens the source.
        let t0 = Instant::now();
        let listing = self.call_async::<SyncList>(&SyncListArgs {
            root: ByteBuf::from(root.clone()),
            max_entries: MAX_TREE_ENTRIES as u32,
        })?;
        let src_dir = rustix::fs::open(
            src,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| local(src)(e.into()))?;
        // The source read meanwhile, then merged with the listing in memory.
        let mut dirs = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        read_source_tree(&src_dir, src, 0, &mut dirs, buf.spare_capacity_mut())?;
        if let Some(Err(e)) = dirs.first() {
            return Err(local(src)(std::io::Error::new(e.kind(), e.to_string())));
        }
        let tr = t0.elapsed();
        let listing: SyncListing = postcard::from_bytes(&listing.wait_bytes()?)
            .map_err(|_| self.bad_reply(dst, Vec::new(), "a listing that does not decode"))?;
        stats.listed = t0.elapsed();
        let root_meta = listing.root.as_ref().map(|r| (r.kind, r.mode, (r.mtime, r.mtime_nsec)));
        let create_root = match root_meta {
            None => Some(meta.mode | 0o700),
            Some((FileKind::Dir, ..)) => None,
            Some(_) => {
                return Err(SyncError::Destination {
                    context: self.name().into(),
                    path: dst.into(),
                    what: "not a directory",
                })
            }
        };
        let tl = Instant::now();
        let tree =
            check_listing(listing.entries, MAX_TREE_ENTRIES).map_err(|(name, why)| self.bad_reply(dst, name, why))?;
        stats.dirs += 1;
        let mut plan = Plan::default();
        let root_same = root_meta.is_some_and(|(_, mode, t)| mode == meta.mode && t == meta.mtime);
        // The root's own goes last (first here: the rest is reversed below).
        plan.dirs_meta
            .push((TreeOp::SetMeta { rel: ByteBuf::new(), mode: meta.mode, mtime: Some(meta.mtime) }, root_same));
        let mut walk = Walk { tree: &tree, dirs, opts, plan: &mut plan, stats, rel: Vec::new() };
        let tc = tl.elapsed();
        walk.dir(0, None, 0);
        let tm = tl.elapsed();
        stats.symlinks += plan.links.len() as u64;
        stats.failed.append(&mut plan.failed);
        // Removals first (kind changes, --delete), then directories, then links.
        let mut all: Vec<TreeOp> = std::mem::take(&mut plan.ops);
        all.extend(plan.links.iter().cloned());
        // Removals must precede the mkdirs they make room for.
        all.sort_by_key(|op| !matches!(op, TreeOp::Remove { .. }));
        let touched = !all.is_empty() || create_root.is_some();
        let mut failed_ops: HashSet<Vec<u8>> = HashSet::new();
        let mut first = true;
        while first || !all.is_empty() {
            let rest = all.split_off(all.len().min(APPLY_BATCH));
            let args = SyncApplyArgs {
                root: ByteBuf::from(root.clone()),
                create_root: if first { create_root } else { None },
                ops: std::mem::replace(&mut all, rest),
            };
            if !args.ops.is_empty() || args.create_root.is_some() {
                let done = self.call::<SyncApply>(&args)?;
                failed_ops.extend(self.op_failures(&args.ops, done, stats));
            }
            first = false;
        }
        for p in &plan.deleted {
            if !failed_ops.contains(&p[..]) {
                report(&SyncEvent::Deleted { path: rel_path(p) });
            }
        }
        for l in &plan.links {
            if let TreeOp::Symlink { rel, .. } = l {
                if !failed_ops.contains(&rel[..]) {
                    report(&SyncEvent::Symlink { path: rel_path(rel) });
                }
            }
        }
        for job in &plan.files {
            if failed_ops.contains(&job.rel[..]) {
                continue; // its kind change failed: reported once
            }
            let d = Dest { root: &root, rel: &job.rel };
            let shown = rel_path(&job.rel);
            self.file(&src.join(&shown), &job.meta, &d, job.old, &shown, stats, flight, report)?;
        }
        flight.drain()?;
        log::debug!(
            "[{}] sync {}: source read by {tr:?}, listing by {:?}, then checked in {tc:?}, merged by {tm:?}, files \
             done by {:?}",
            self.name(),
            dst.display(),
            stats.listed,
            tl.elapsed()
        );
        // Directory modes and mtimes once their contents are in, children
        // first; all of them when anything changed (a new name in a
        // directory changes its mtime), else those that differ.
        let touched = touched || stats.changed > 0;
        let mut dirs_meta: Vec<TreeOp> =
            plan.dirs_meta.into_iter().filter(|(_, same)| touched || !same).map(|(op, _)| op).collect();
        dirs_meta.reverse();
        for batch in dirs_meta.chunks(APPLY_BATCH) {
            let args = SyncApplyArgs { root: ByteBuf::from(root.clone()), create_root: None, ops: batch.to_vec() };
            let done = self.call::<SyncApply>(&args)?;
            self.op_failures(&args.ops, done, stats);
        }
        Ok(())
    }

    /// The ops a `sync_apply` reports failed, noted in the stats (a path
    /// once); their paths. A reply naming an op that was not sent is
    /// hostile.
    fn op_failures(&self, ops: &[TreeOp], done: SyncApplied, stats: &mut SyncStats) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, mut e) in done.failed {
            let Some(op) = ops.get(i as usize) else { continue };
            if e.context.is_empty() {
                e.context = self.name().into();
            }
            let rel = match op {
                TreeOp::Mkdir { rel, .. }
                | TreeOp::Remove { rel }
                | TreeOp::Symlink { rel, .. }
                | TreeOp::SetMeta { rel, .. } => &rel[..],
            };
            if out.last().is_none_or(|l: &Vec<u8>| l[..] != *rel) {
                stats.failed.push(SyncFailure { path: rel_path(rel), reason: FailReason::Target(e) });
                out.push(rel.to_vec());
            }
        }
        out
    }
}

/// The merge of the source's directories with the destination's listing,
/// one directory at a time, both sorted by name.
struct Walk<'a> {
    tree: &'a RemoteTree,
    /// The source's directories, as read.
    dirs: Vec<DirRead>,
    opts: &'a SyncOptions,
    plan: &'a mut Plan,
    stats: &'a mut SyncStats,
    /// The directory being merged, relative to the root (`/`-separated).
    rel: Vec<u8>,
}

impl Walk<'_> {
    /// `rel` with `name` appended.
    fn join(&self, name: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.rel.len() + 1 + name.len());
        p.extend_from_slice(&self.rel);
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    fn fail(&mut self, rel: &[u8], reason: FailReason) {
        self.plan.failed.push(SyncFailure { path: rel_path(rel), reason });
    }

    /// Merges source directory `self.dirs[dir]` with the destination's
    /// directory `remote` (`None`: the root at depth 0, else a directory
    /// the destination lacks).
    fn dir(&mut self, dir: usize, remote: Option<u32>, depth: usize) {
        let read = match self.dirs.get_mut(dir) {
            Some(r) => std::mem::replace(r, Ok((Vec::new(), Vec::new()))),
            None => return,
        };
        let (locals, bad) = match read {
            Ok(r) => r,
            Err(e) => {
                // Unreadable: its destination is left as it is (no
                // deletions in it: what the source has is unknown).
                let rel = self.rel.clone();
                self.fail(&rel, FailReason::source(&e));
                return;
            }
        };
        for (name, e) in &bad {
            let rel = self.join(name);
            self.fail(&rel, FailReason::source(e));
        }
        let tree = self.tree;
        let kids = if remote.is_none() && depth > 0 { &[][..] } else { tree.children(remote) };
        let mut k = 0;
        let mut subdirs = Vec::new();
        for l in &locals {
            while k < kids.len() && tree.entries[kids[k] as usize].name[..] < l.name[..] {
                self.lacks(kids[k], &bad);
                k += 1;
            }
            let there = match kids.get(k) {
                Some(&i) if tree.entries[i as usize].name[..] == l.name[..] => {
                    k += 1;
                    Some(i)
                }
                _ => None,
            };
            if let Some(sub) = self.entry(l, there) {
                subdirs.push(sub);
            }
        }
        for &i in &kids[k..] {
            self.lacks(i, &bad);
        }
        for (name, sub, there) in subdirs {
            let len = self.rel.len();
            self.rel = self.join(&name);
            self.dir(sub, there, depth + 1);
            self.rel.truncate(len);
        }
    }

    /// Destination entry `i` has no source entry: removed with `--delete`
    /// (unless its source entry failed to be read).
    fn lacks(&mut self, i: u32, bad: &[(Vec<u8>, std::io::Error)]) {
        let name = &self.tree.entries[i as usize].name[..];
        if !self.opts.delete || bad.iter().any(|(n, _)| n[..] == *name) {
            return;
        }
        let rel = self.join(name);
        self.plan.ops.push(TreeOp::Remove { rel: ByteBuf::from(rel.clone()) });
        self.plan.deleted.push(rel);
        self.stats.deleted += 1;
    }

    /// Plans one source entry against what the destination has there;
    /// a directory to merge next: its name, its read and the
    /// destination's directory, if it has one.
    fn entry(&mut self, l: &LocalEntry, there: Option<u32>) -> Option<(Vec<u8>, usize, Option<u32>)> {
        let tree = self.tree;
        let r = there.map(|i| &tree.entries[i as usize]);
        let rel = self.join(&l.name);
        let m = &l.meta;
        // A non-empty directory where the source has a file or symlink:
        // replaced with --delete only (rsync's rule without --force).
        let dir_in_way = r.is_some_and(|r| r.kind == FileKind::Dir)
            && matches!(m.kind, FileKind::File | FileKind::Symlink)
            && !self.opts.delete
            && !tree.children(there).is_empty();
        if dir_in_way {
            self.fail(&rel, FailReason::DirectoryInTheWay);
            return None;
        }
        match m.kind {
            FileKind::Dir => {
                self.stats.dirs += 1;
                let mkdir = TreeOp::Mkdir { rel: ByteBuf::from(rel.clone()), mode: m.mode | 0o700 };
                let same = match r {
                    Some(r) if r.kind == FileKind::Dir => r.mode == m.mode && (r.mtime, r.mtime_nsec) == m.mtime,
                    Some(_) => {
                        self.plan.ops.push(TreeOp::Remove { rel: ByteBuf::from(rel.clone()) });
                        self.stats.deleted += 1;
                        self.plan.ops.push(mkdir);
                        false
                    }
                    None => {
                        self.plan.ops.push(mkdir);
                        false
                    }
                };
                let op = TreeOp::SetMeta { rel: ByteBuf::from(rel), mode: m.mode, mtime: Some(m.mtime) };
                self.plan.dirs_meta.push((op, same));
                let remote_dir = there.filter(|_| r.is_some_and(|r| r.kind == FileKind::Dir));
                return l.dir.map(|d| (l.name.clone(), d, remote_dir));
            }
            FileKind::Symlink => {
                let link =
                    || TreeOp::Symlink { rel: ByteBuf::from(rel.clone()), target: ByteBuf::from(l.link.clone()) };
                match r {
                    Some(r) if r.kind == FileKind::Symlink && r.link[..] == l.link[..] => {}
                    Some(r) => {
                        if r.kind == FileKind::Dir {
                            self.plan.ops.push(TreeOp::Remove { rel: ByteBuf::from(rel.clone()) });
                            self.stats.deleted += 1;
                        }
                        self.plan.links.push(link());
                    }
                    None => self.plan.links.push(link()),
                }
            }
            FileKind::File => {
                if r.is_some_and(|r| r.kind == FileKind::Dir) {
                    self.plan.ops.push(TreeOp::Remove { rel: ByteBuf::from(rel.clone()) });
                    self.stats.deleted += 1;
                }
                self.plan.files.push(FileJob { rel, meta: *m, old: r.map(Remote::of) });
            }
            FileKind::Other => self.stats.skipped += 1,
        }
        None
    }
}

/// A block's strong hash as on the wire: XXH3-128, big-endian.
fn strong(data: &[u8]) -> [u8; STRONG_LEN] {
    xxh3_128(data).to_be_bytes()
}

/// The old file's blocks by weak sum: a bitmap of the sums seen (most
/// positions of a new file miss, and miss here) and the (sum, block,
/// strong) triples sorted by sum.
#[derive(Default)]
struct BlockIndex {
    bits: Vec<u64>,
    sorted: Vec<(u32, u32)>,
    strong: Vec<[u8; STRONG_LEN]>,
    /// The old file's short last block: its number, length, sums.
    tail: Option<(u32, usize, u32, [u8; STRONG_LEN])>,
}

const BITMAP_BITS: u32 = 24;

impl BlockIndex {
    fn push(&mut self, weak: u32, strong: &[u8]) {
        let mut s = [0u8; STRONG_LEN];
        s.copy_from_slice(strong);
        self.sorted.push((weak, self.strong.len() as u32));
        self.strong.push(s);
    }

    fn build(&mut self) {
        self.sorted.sort_unstable();
        if self.sorted.is_empty() {
            return;
        }
        self.bits = vec![0u64; 1 << (BITMAP_BITS - 6)];
        for &(w, _) in &self.sorted {
            let k = (w.wrapping_mul(0x9e37_79b1) >> (32 - BITMAP_BITS)) as usize;
            self.bits[k >> 6] |= 1 << (k & 63);
        }
    }

    #[inline]
    fn maybe(&self, weak: u32) -> bool {
        if self.bits.is_empty() {
            return false;
        }
        let k = (weak.wrapping_mul(0x9e37_79b1) >> (32 - BITMAP_BITS)) as usize;
        self.bits[k >> 6] & (1 << (k & 63)) != 0
    }

    /// The block `window` is (its weak sum `weak`): `expect` (the block
    /// after the last match: runs of copies) if it is, else one of at most
    /// [`MAX_CANDIDATES`] others with this sum, compared by XXH3-128: a
    /// target that gives every block the same sum must not make each hit
    /// a scan of all.
    fn find(&self, weak: u32, window: &[u8], expect: u64) -> Option<u32> {
        let c = self.candidates(weak);
        if c.is_empty() {
            return None;
        }
        let strong = &strong(window);
        let expected = u32::try_from(expect).ok().filter(|&e| {
            c.binary_search(&(weak, e)).is_ok() && self.strong.get(e as usize).is_some_and(|s| s == strong)
        });
        expected.or_else(|| {
            c.iter().take(MAX_CANDIDATES).find(|&&(_, b)| self.strong[b as usize] == *strong).map(|&(_, b)| b)
        })
    }

    /// The blocks with this weak sum.
    fn candidates(&self, weak: u32) -> &[(u32, u32)] {
        let lo = self.sorted.partition_point(|&(w, _)| w < weak);
        let hi = self.sorted[lo..].partition_point(|&(w, _)| w == weak) + lo;
        &self.sorted[lo..hi]
    }
}

/// Slides a window over the new file and sends the delta.
struct Matcher<'a> {
    ctx: &'a Context,
    id: u32,
    bs: usize,
    index: BlockIndex,
    flight: &'a mut Flight,
    /// Ops of the message being built, its literal bytes, the literal run
    /// being built and the copy run being built.
    ops: Vec<DeltaOp>,
    op_bytes: usize,
    lit: Vec<u8>,
    copy: Option<(u64, u32)>,
    literal_total: u64,
    false_alarms: u64,
    /// Bytes of the new file the message being built stands for.
    span: u64,
    /// The new file's size (the false-alarm budget).
    new_size: u64,
}

impl<'a> Matcher<'a> {
    fn new(
        ctx: &'a Context,
        id: u32,
        bs: usize,
        index: BlockIndex,
        flight: &'a mut Flight,
        new_size: u64,
    ) -> Matcher<'a> {
        Matcher {
            ctx,
            id,
            bs,
            index,
            flight,
            ops: Vec::new(),
            op_bytes: 0,
            lit: Vec::new(),
            copy: None,
            literal_total: 0,
            false_alarms: 0,
            span: 0,
            new_size,
        }
    }

    /// The whole file: its size, XXH3-128 and the literal bytes sent.
    fn run(&mut self, mut input: fs::File, src: &Path) -> Result<(u64, u64), SyncError> {
        let bs = self.bs;
        let read_size = CHUNK.max(4 * bs);
        let mut size = 0u64;
        let mut buf: Vec<u8> = Vec::with_capacity(read_size + bs);
        let mut pos = 0usize;
        let mut eof = false;
        let mut sum: Option<Rolling> = None;
        let mut expect: u64 = 0;
        let limit = false_alarm_limit(self.new_size);
        loop {
            if buf.len() - pos < bs + 1 && !eof {
                buf.drain(..pos);
                pos = 0;
                let have = buf.len();
                buf.resize(have + read_size, 0);
                let n = read_full(&mut input, &mut buf[have..]).map_err(local(src))?;
                buf.truncate(have + n);
                size += n as u64;
                eof = n == 0;
                continue;
            }
            if buf.len() - pos < bs {
                break;
            }
            if sum.is_none() && expect > 0 && self.false_alarms < limit {
                // Right after a match the old file's next block is the
                // likely one: its strong hash alone decides, and a run of
                // unchanged blocks costs no rolling sum (that was a second
                // pass over the file). A miss here costs one block's hash,
                // counted as a false alarm.
                let window = &buf[pos..pos + bs];
                if self.index.strong.get(expect as usize).is_some_and(|s| *s == strong(window)) {
                    self.copy_block(expect)?;
                    expect += 1;
                    pos += bs;
                    continue;
                }
                self.false_alarms += bs as u64;
            }
            let r = *sum.get_or_insert_with(|| Rolling::new(&buf[pos..pos + bs]));
            let w = r.sum();
            if self.false_alarms < limit && self.index.maybe(w) {
                if let Some(b) = self.find(w, &buf[pos..pos + bs], expect) {
                    self.copy_block(u64::from(b))?;
                    expect = u64::from(b) + 1;
                    pos += bs;
                    sum = None;
                    continue;
                }
            }
            self.literal(buf[pos])?;
            if pos + bs < buf.len() {
                if let Some(s) = sum.as_mut() {
                    s.roll(buf[pos], buf[pos + bs]);
                }
            } else {
                sum = None;
            }
            pos += 1;
        }
        let rest = &buf[pos..];
        let tail = self.index.tail.filter(|&(_, len, weak, hash)| {
            len == rest.len() && Rolling::new(rest).sum() == weak && strong(rest) == hash
        });
        if let Some((b, ..)) = tail {
            self.copy_block(u64::from(b))?;
        } else {
            for &b in rest {
                self.literal(b)?;
            }
        }
        self.flush(true)?;
        Ok((size, self.literal_total))
    }

    /// The block of the old file that `window` is, preferring `expect`
    /// (the one after the last match: runs of copies).
    fn find(&mut self, weak: u32, window: &[u8], expect: u64) -> Option<u32> {
        let hit = self.index.find(weak, window, expect);
        if hit.is_none() && !self.index.candidates(weak).is_empty() {
            self.false_alarms += window.len() as u64;
        }
        hit
    }

    fn copy_block(&mut self, b: u64) -> Result<(), SyncError> {
        if !self.lit.is_empty() {
            let lit = std::mem::take(&mut self.lit);
            self.op_bytes += lit.len();
            self.ops.push(DeltaOp::Data(ByteBuf::from(lit)));
        }
        match &mut self.copy {
            Some((start, n)) if *start + u64::from(*n) == b && *n < u32::MAX => *n += 1,
            _ => {
                if let Some((block, count)) = self.copy.take() {
                    self.ops.push(DeltaOp::Copy { block, count });
                }
                self.copy = Some((b, 1));
            }
        }
        // Send what is decided every few MiB of the new file: the agent
        // rebuilds while this side goes on matching (sent only at the end,
        // a one-byte change made the rebuild wait for the whole match).
        self.span += self.bs as u64;
        if self.ops.len() >= 8192 || self.span >= FLUSH_SPAN {
            self.flush(false)?;
        }
        Ok(())
    }

    #[inline]
    fn literal(&mut self, byte: u8) -> Result<(), SyncError> {
        if let Some((block, count)) = self.copy.take() {
            self.ops.push(DeltaOp::Copy { block, count });
        }
        self.lit.push(byte);
        self.literal_total += 1;
        if self.lit.len() + self.op_bytes >= CHUNK {
            self.flush(false)?;
        }
        Ok(())
    }

    /// Sends the ops so far (all of them, the runs being built included).
    fn flush(&mut self, last: bool) -> Result<(), SyncError> {
        if let Some((block, count)) = self.copy.take() {
            self.ops.push(DeltaOp::Copy { block, count });
        }
        if !self.lit.is_empty() {
            self.op_bytes += self.lit.len();
            self.ops.push(DeltaOp::Data(ByteBuf::from(std::mem::take(&mut self.lit))));
        }
        if self.ops.is_empty() && !last {
            return Ok(());
        }
        self.span = 0;
        let args = SyncDeltaArgs { id: self.id, ops: std::mem::take(&mut self.ops) };
        let bytes = std::mem::take(&mut self.op_bytes);
        if !args.ops.is_empty() {
            self.flight.push_sized(self.ctx.call_async::<SyncDelta>(&args)?, bytes, self.id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: u32, name: &[u8], kind: FileKind) -> SyncEntry {
        SyncEntry {
            parent,
            name: ByteBuf::from(name.to_vec()),
            kind,
            mode: 0o644,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            link: ByteBuf::new(),
        }
    }

    #[test]
    fn a_good_listing_becomes_paths() {
        let l = [
            entry(ROOT_PARENT, b"a", FileKind::Dir),
            entry(ROOT_PARENT, b"f", FileKind::File),
            entry(0, b"b", FileKind::Dir),
            entry(2, b"\xffc", FileKind::Symlink),
        ];
        let p = check_listing(l.to_vec(), 10).expect("a good listing").paths();
        assert_eq!(p, vec![b"a".to_vec(), b"f".to_vec(), b"a/b".to_vec(), b"a/b/\xffc".to_vec()]);
    }

    #[test]
    fn a_listing_is_indexed_by_directory_in_name_order() {
        let l = vec![
            entry(ROOT_PARENT, b"z", FileKind::Dir),
            entry(ROOT_PARENT, b"a", FileKind::Dir),
            entry(0, b"x", FileKind::File),
            entry(1, b"x", FileKind::File),
            entry(1, b"b", FileKind::File),
            entry(ROOT_PARENT, b"m", FileKind::File),
        ];
        let t = check_listing(l, 10).expect("one name in two directories is fine");
        let names =
            |d: Option<u32>| -> Vec<&[u8]> { t.children(d).iter().map(|&i| &t.entries[i as usize].name[..]).collect() };
        assert_eq!(names(None), [&b"a"[..], b"m", b"z"]);
        assert_eq!(names(Some(1)), [&b"b"[..], b"x"]);
        assert_eq!(names(Some(0)), [&b"x"[..]]);
        assert!(names(Some(5)).is_empty(), "a file has no children");
        assert!(names(Some(99)).is_empty(), "out of range");
    }

    #[test]
    fn hostile_listings_are_refused() {
        let cases: Vec<(Vec<SyncEntry>, &str)> = vec![
            (vec![entry(ROOT_PARENT, b"..", FileKind::Dir)], "dot"),
            (vec![entry(ROOT_PARENT, b"../../etc", FileKind::File)], "slash"),
            (vec![entry(ROOT_PARENT, b"a\0b", FileKind::File)], "nul"),
            (vec![entry(ROOT_PARENT, b"", FileKind::File)], "empty"),
            (vec![entry(ROOT_PARENT, b"f", FileKind::File), entry(0, b"x", FileKind::File)], "parent a file"),
            (vec![entry(1, b"x", FileKind::File), entry(ROOT_PARENT, b"d", FileKind::Dir)], "parent later"),
            (vec![entry(5, b"x", FileKind::File)], "parent out of range"),
            (vec![entry(ROOT_PARENT, b"x", FileKind::File), entry(ROOT_PARENT, b"x", FileKind::Dir)], "twice"),
        ];
        for (l, what) in cases {
            assert!(check_listing(l, 100).is_err(), "{what} accepted");
        }
        let many = vec![entry(ROOT_PARENT, b"x", FileKind::File); 3];
        assert!(check_listing(many, 2).is_err(), "more entries than asked for accepted");
        // An endless chain of directories stops at the depth limit.
        let mut deep = vec![entry(ROOT_PARENT, b"d", FileKind::Dir)];
        for i in 0..300u32 {
            deep.push(entry(i, b"d", FileKind::Dir));
        }
        assert!(check_listing(deep, 1000).is_err(), "301 levels accepted");
    }

    #[test]
    fn a_hostile_signature_costs_a_bounded_search() {
        // 100,000 blocks with one weak sum: a hit compares at most 16 of
        // them, but always the expected one.
        let mut index = BlockIndex::default();
        let block = |i: u32| -> Vec<u8> { i.to_le_bytes().repeat(8) };
        for i in 0..100_000u32 {
            index.push(7, &strong(&block(i)));
        }
        index.build();
        assert_eq!(index.find(7, &block(5), 0), Some(5), "within the first candidates");
        assert_eq!(index.find(7, &block(60_000), 60_000), Some(60_000), "the expected block");
        assert_eq!(index.find(7, &block(60_000), 0), None, "past the candidates compared");
        assert_eq!(index.find(8, &block(5), 5), None, "another weak sum");
    }

    #[test]
    fn block_sizes_grow_with_the_file() {
        assert_eq!(block_size(0), 2048);
        assert_eq!(block_size(100 << 20), 10240);
        assert!(u64::from(block_size(1 << 40)) * MAX_BLOCKS >= 1 << 40);
    }
}
