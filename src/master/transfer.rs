//! Streamed file transfer: [`Context::get`] and [`Context::put`].
//!
//! A transfer is pipelined calls on a file the agent holds open
//! (`file_open_*`, `file_read`/`file_write`, `file_close`): [`WINDOW`]
//! chunks of [`CHUNK`] bytes are in flight at once, which is the whole flow
//! control, so memory stays bounded on every hop whatever the file size.
//! Both ends hash what passes (XXH3-128, `core::xxh3`, or SHA-256 when
//! [`CopyOptions::checksum`] asks); the receiving side writes a temp file
//! beside the destination and renames it into place only when the digests
//! agree, keeping mode and mtime. A failure at any point (disk full,
//! permission, lost connection) leaves no file under the final name.
//!
//! A `get` does not trust the target (ARCHITECTURE.md, "Security"): the
//! file is written relative to an open directory fd (`openat` with
//! `O_EXCL|O_NOFOLLOW`, `renameat`), and mode, owner and mtime are set on
//! the open file, so nothing is written or changed through a symlink; the
//! copy is ours, without setuid/setgid (or a file's sticky bit), unless
//! [`GetOptions::preserve_owner`]; an mtime outside years 1..=9999 is
//! clamped; a file that sends more than it announced is stopped within a
//! chunk (`SourceChanged`).
//!
//! **Idempotent.** Unless [`CopyOptions::force`], a copy first compares
//! with the destination: a `stat` (size, mtime, mode, and owner where the
//! copy sets it), and only when those match, both ends hash their file at
//! once with the transfer's digest (the `file_hash` built-in there,
//! [`hash_file`] here). Equal: nothing is
//! sent, the stats say `changed: false` (the CLI prints `unchanged`). The
//! hash is compared even when size and mtime match, as Ansible's copy
//! compares checksums: a file rewritten in place with its mtime restored
//! is still sent.
//!
//! **Where the time goes** (perf and CPU time on a 2-core VM, 1 GiB from
//! the page cache to /dev/shm, local context). Before XXH3, SHA-256 (~2
//! GB/s with SHA-NI) was the largest user-space cost on both ends: 20% of
//! the two cores in the master, 21% in the agent during a put. With
//! XXH3-128 (scalar; a file from the page cache hashes at 5.0 GB per CPU
//! second, read included, against 1.5 for SHA-256) the user CPU of master
//! and agent together fell from 1.3 s to 0.3 s per GiB (put and get alike;
//! `/usr/bin/time`, medians of 3); the hash is now ~3% of the samples on
//! each end (SSE2 on x86_64 halved it again). A get then took a page fault
//! per 4 KiB received (240,000 per GiB, each with the kernel's zeroing):
//! buffers were freed and mapped anew per chunk on both ends; the agent
//! now keeps a window of written frames while a file streams out and the
//! master's decoders read into buffers the consumer hands back
//! (`core::router::BufferPool`): 13,000 faults for 3 GiB. What is left is
//! the kernel: the page-cache read, the socket (or pipe) write and read,
//! and the destination's write, four copies of every byte; on tmpfs the
//! write alone is 0.37 s of system time per GiB (`dd` here: 0.47 s to copy
//! 1 GiB from the page cache to /dev/shm), and a local put waited for the
//! socketpair's 208 KiB send buffer between chunks until it was grown to a
//! chunk (`connect::child`, `grow_socket`: 1.42 to 1.85-1.98 GB/s; perf:
//! the agent's tmpfs page allocation is now most of its time). `sendfile`/`splice` would not
//! remove a copy while both ends hash what they move (the sender would read
//! the bytes anyway), and a local context's link is a socketpair, which
//! `splice` cannot feed without a pipe; `mmap` would, but a file truncated
//! under the mapping kills the reader with SIGBUS.
//! Over ssh, ssh and sshd's crypto take most of the two cores. The master
//! hashes on a thread of its own, overlapped with its reads, writes and
//! sends; no copy between the read and the frame on either end (`Chunk`,
//! the agent's `bytes_frame`). Chunks of 1 MiB, 8 in flight: 128-256 KiB
//! chunks were slower (more calls), 4 MiB too (out of the caches), and the
//! window made no difference beyond the noise of a shared machine.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use serde_bytes::ByteBuf;
use thiserror::Error;

use super::context::{path_bytes, Context, Pending};
use super::error::CallError;
pub use crate::core::xxh3::Digest;
use crate::core::xxh3::Hasher;
pub use crate::proto::functions::HashKind;
use crate::proto::functions::{self as f, Commit, FileCloseArgs, FileReadArgs, Function, PathArgs};
use crate::proto::resource::CACHE_BYTES;

/// Bytes per chunk call.
pub const CHUNK: usize = 1 << 20;
// A get's reply is inflated no further than `MAX_FILE_READ`.
const _: () = assert!(CHUNK + 16 <= f::MAX_FILE_READ as usize);
/// Chunk calls in flight per transfer (so at most 8 MiB buffered).
pub const WINDOW: usize = 8;
/// A put's chunk buffers: one being read, one being hashed, one spare.
const HASH_BUFFERS: usize = 3;

/// What a finished transfer moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferStats {
    /// Bytes.
    pub bytes: u64,
    /// The digest of those bytes, computed and compared on both ends, with
    /// its algorithm ([`CopyOptions::checksum`]: XXH3-128 unless SHA-256
    /// was asked; a put through the importer checks SHA-256).
    pub checksum: Digest,
    /// Wall time.
    pub elapsed: Duration,
    /// False when the destination already held this file (regular, same
    /// size, mtime, permission bits and digest, and, where the copy sets
    /// owners, the same owner): nothing was sent, as Ansible's copy
    /// reports `changed: false`. `bytes` and `checksum` are then the file's.
    pub changed: bool,
}

/// Whether a copy first compares with what is at the destination
/// ([`Context::put_with_options`], [`Context::get_with_options`], the
/// trees' `_with_options`).
///
/// By default it does: `stat` first (size, mtime, mode: one round trip),
/// and only when those match, the digest of both files (each end hashes
/// its own, at once, with [`CopyOptions::checksum`]), so a file whose
/// content changed while its size and mtime did not is still sent. Equal:
/// nothing is sent and the stats say `changed: false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyOptions {
    /// Send without comparing (`--force`).
    pub force: bool,
    /// Deflate each chunk that shrinks by an eighth or more
    /// (`--compress`): for slow links and compressible files. A chunk that
    /// does not shrink goes as it is. On a put the master deflates and
    /// the agent inflates (bounded by the frame limit); on a get the agent
    /// deflates and the master inflates no further than a chunk
    /// ([`f::MAX_FILE_READ`]: a hostile target's bomb is a typed
    /// `CallError::Decode`). [`crate::put_many`] deflates each chunk once
    /// for all its targets; a put through the importer (one target behind
    /// a hop) has the master deflate each chunk it serves and the first hop
    /// inflate it, no further than a chunk, before checking and caching it.
    pub compress: bool,
    /// The digest both ends compute and compare, for the transfer and for
    /// the comparison before it (`--checksum`): XXH3-128 by default (it
    /// catches corruption and a file changed under the copy at several
    /// times SHA-256's speed), SHA-256 for a cryptographic one.
    pub checksum: HashKind,
}

/// A failed transfer.
#[derive(Debug, Error)]
pub enum TransferError {
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
    /// The source changed size while it was read (truncated, removed and
    /// replaced, or still being written); nothing was put in place.
    #[error("{context}: {path} changed during the transfer: {expected} bytes at open, {read} read")]
    SourceChanged {
        /// Context name (of the transfer).
        context: String,
        /// The source.
        path: PathBuf,
        /// Size when opened.
        expected: u64,
        /// Bytes read before end of file.
        read: u64,
    },
    /// The bytes that arrived are not the bytes that were sent.
    #[error("{context}: checksum mismatch for {path}")]
    Checksum {
        /// Context name.
        context: String,
        /// The destination.
        path: PathBuf,
    },
    /// A directory of the tree being fetched listed a name that is not a
    /// single file name (empty, `.`, `..`, with a `/` or a NUL byte), or
    /// listed a name twice: a target trying to write outside the
    /// destination or through a symlink. Refused while planning, before
    /// anything is written.
    #[error("{context}: {dir} lists the name \"{}\" ({why}); refusing to copy the tree", crate::core::text::printable(.name, 240))]
    BadName {
        /// Context name.
        context: String,
        /// The remote directory that listed it.
        dir: PathBuf,
        /// The name, as listed.
        name: Vec<u8>,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The tree being fetched goes deeper than
    /// [`MAX_TREE_DEPTH`](super::tree::MAX_TREE_DEPTH) levels (a target
    /// can describe one that never ends; the copy holds an fd per level).
    /// Refused while planning, before anything is written.
    #[error("the tree from {context} is deeper than {limit} levels at {}; refusing to copy it", crate::core::text::printable(.path.as_os_str().as_bytes(), 1024))]
    TreeTooDeep {
        /// Context name.
        context: String,
        /// The first remote path below the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The tree being fetched has more than
    /// [`MAX_TREE_ENTRIES`](super::tree::MAX_TREE_ENTRIES) entries (its
    /// plan is held in the master's memory). Refused while planning,
    /// before anything is written.
    #[error("the tree from {context} has more than {limit} entries (at {}); refusing to copy it", crate::core::text::printable(.path.as_os_str().as_bytes(), 1024))]
    TreeTooManyEntries {
        /// Context name.
        context: String,
        /// The remote directory whose listing went past the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The names of the tree being fetched add up to more than
    /// [`MAX_TREE_NAME_BYTES`](super::tree::MAX_TREE_NAME_BYTES) (its plan
    /// is held in the master's memory). Refused while planning, before
    /// anything is written.
    #[error("the tree from {context} has more than {limit} bytes of names (at {}); refusing to copy it", crate::core::text::printable(.path.as_os_str().as_bytes(), 1024))]
    TreeNamesTooLong {
        /// Context name.
        context: String,
        /// The remote directory whose listing went past the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
}

pub(super) fn local(path: &Path) -> impl Fn(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Local { path: path.to_path_buf(), source }
}

/// How a `get` treats what the target says about ownership
/// ([`Context::get_with`], [`Context::get_tree_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Keep the target's owners and, with them, setuid/setgid bits (and a
    /// file's sticky bit), as `rsync -a` run as root does; applied only
    /// when this process is root. Off (the default), a copy belongs to
    /// this process's user and loses those bits: a target cannot plant a
    /// setuid file or give a file to someone else on this machine.
    pub preserve_owner: bool,
}

impl GetOptions {
    /// Whether owners and special mode bits are applied.
    pub(super) fn keeps_owner(&self) -> bool {
        self.preserve_owner && is_root()
    }
}

/// The permission bits a copy from a target gets: all of `mode` when its
/// owner is kept too, else without setuid/setgid (and, on a file, sticky).
pub(super) fn local_mode(mode: u32, dir: bool, keep_owner: bool) -> Mode {
    let bits = if keep_owner {
        mode & 0o7777
    } else if dir {
        mode & 0o1777
    } else {
        mode & 0o777
    };
    Mode::from_bits_truncate(bits)
}

/// Owner and group from a target for `fchown`-style calls (`-1` means
/// "unchanged" to the kernel, so it is passed as `None`).
pub(super) fn ids(owner: (u32, u32)) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    let uid = (owner.0 != u32::MAX).then(|| rustix::fs::Uid::from_raw(owner.0));
    let gid = (owner.1 != u32::MAX).then(|| rustix::fs::Gid::from_raw(owner.1));
    (uid, gid)
}

/// Earliest and latest mtime a copy from a target gets (years 1 and 9999):
/// `i64::MAX` from a target must not overflow the master's time types, and
/// no tool should meet a file from the year 292 billion.
pub const MTIME_RANGE: (i64, i64) = (-62_135_596_800, 253_402_300_799);

/// Sets the modification time of `fd` from a target's values, clamped to
/// [`MTIME_RANGE`] (the access time is left alone).
pub(super) fn set_mtime(fd: BorrowedFd<'_>, secs: i64, nsec: u32) -> std::io::Result<()> {
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec {
            tv_sec: secs.clamp(MTIME_RANGE.0, MTIME_RANGE.1),
            tv_nsec: i64::from(nsec.min(999_999_999)) as _,
        },
    };
    rustix::fs::futimens(fd, &times).map_err(std::io::Error::from)
}

/// The directory a destination named by the caller goes in, opened to
/// create things in it (`O_PATH`: write and search permission suffice).
pub(super) fn open_parent(path: &Path) -> Result<OwnedFd, TransferError> {
    let dir = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| local(path)(e.into()))
}

/// The directory to open and the name in it for a destination path given
/// by the caller (which may pass through symlinks: the caller chose it).
pub(super) fn split_dest(dest: &Path) -> Result<(&Path, &OsStr), TransferError> {
    let not_a_name = || {
        local(dest)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the destination does not end in a file name",
        ))
    };
    let name = dest.file_name().ok_or_else(not_a_name)?;
    Ok((dest.parent().unwrap_or(Path::new("")), name))
}

/// A temp file beside `name` in `dir` (created with `O_EXCL|O_NOFOLLOW`),
/// removed on drop unless it was renamed into place.
struct Temp<'a> {
    dir: BorrowedFd<'a>,
    name: OsString,
    keep: bool,
}

impl<'a> Temp<'a> {
    fn create(dir: BorrowedFd<'a>, name: &OsStr) -> std::io::Result<(Temp<'a>, fs::File)> {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        // Within NAME_MAX whatever the name's length.
        let stem = &name.as_bytes()[..name.len().min(180)];
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(stem);
        tmp.extend_from_slice(
            format!(".mito-tmp.{}.{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed)).as_bytes(),
        );
        let tmp = OsString::from_vec(tmp);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, &tmp, flags, Mode::from_bits_truncate(0o600))?;
        Ok((Temp { dir, name: tmp, keep: false }, fs::File::from(fd)))
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = rustix::fs::unlinkat(self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// A reusable `file_write` call read straight from the file: the data
/// goes into the buffer after `room` spare bytes, and once its length is
/// known the encoded front (function name, transfer id, length — and for a
/// relay the relay's own fields) is written right before it. One buffer per
/// transfer, no copy of the data between the file and the socket (perf: per-chunk
/// allocations and copies were a fifth of the master's time in `put`).
pub(super) struct Chunk {
    buf: Vec<u8>,
    room: usize,
    len: usize,
}

impl Chunk {
    /// A chunk buffer with `room` bytes for the encoded front.
    pub fn new(room: usize) -> Chunk {
        Chunk { buf: vec![0u8; room + CHUNK], room, len: 0 }
    }

    /// Fills the data part from `input` (short only at end of file).
    pub fn read_from(&mut self, input: &mut impl Read) -> std::io::Result<usize> {
        self.len = read_full(input, &mut self.buf[self.room..])?;
        Ok(self.len)
    }

    /// The bytes read.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.room..self.room + self.len]
    }

    /// The encoded front of a `file_write` of this chunk to transfer `id`.
    pub fn call_front(&self, id: u32) -> Result<Vec<u8>, postcard::Error> {
        let front = postcard::to_allocvec(f::FileWrite::NAME)?;
        let front = postcard::to_extend(&id, front)?;
        postcard::to_extend(&self.len, front)
    }

    /// `front` followed by the data, as one payload (`None` if `front`
    /// does not fit the room).
    pub fn payload(&mut self, front: &[u8]) -> Option<&[u8]> {
        let start = self.room.checked_sub(front.len())?;
        self.buf[start..self.room].copy_from_slice(front);
        Some(&self.buf[start..self.room + self.len])
    }
}

/// Called with the number of bytes each time a chunk has moved (for a
/// progress bar); it runs on the transferring thread.
pub type Progress<'a> = &'a dyn Fn(u64);

fn no_progress(_: u64) {}

/// Writes a received chunk, leaving a hole where it is all zeros (the
/// length is set at the end, for a file that ends in a hole).
fn write_chunk(out: &mut fs::File, chunk: &[u8]) -> std::io::Result<()> {
    use std::io::Seek;
    if crate::core::num::all_zero(chunk) {
        out.seek(std::io::SeekFrom::Current(chunk.len() as i64)).map(drop)
    } else {
        out.write_all(chunk)
    }
}

/// Reads into all of `buf` unless the input ends first; the bytes read.
pub(super) fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The `kind` digest of a local file and the bytes read, with `pread` (the
/// file's offset is left alone for the transfer that may follow). Every
/// whole-file hash of the master's: idempotent copies, importer resources,
/// sync's whole-file check.
pub(super) fn hash_file(file: &fs::File, kind: HashKind) -> std::io::Result<(Digest, u64)> {
    use std::os::unix::fs::FileExt;
    let mut hash = Hasher::new(kind);
    // Small enough to stay in L2 between the read and the hash.
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    loop {
        match file.read_at(&mut buf, at) {
            Ok(0) => return Ok((hash.digest(), at)),
            Ok(n) => {
                hash.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `ours` when the context's digest (asked before ours was computed, so
/// both ends hashed at once) is the same; `None` if it differs or failed.
pub(super) fn agrees(theirs: Pending<ByteBuf>, ours: Digest) -> Option<Digest> {
    theirs.wait().ok().filter(|d| d[..] == *ours.as_bytes()).map(|_| ours)
}

/// Whether this (master) process may give files to other owners.
pub(super) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Context {
    /// Copies the remote file `remote` to the local path `dest`, keeping its
    /// mode and mtime (without setuid/setgid; the copy is ours: see
    /// [`Context::get_with`] to keep owners).
    pub fn get(&self, remote: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<TransferStats, TransferError> {
        self.get_with(remote, dest, &GetOptions::default(), &no_progress)
    }

    /// [`Context::get`], reporting progress.
    pub fn get_with_progress(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        self.get_with(remote, dest, &GetOptions::default(), progress)
    }

    /// [`Context::get`] with options (e.g. keep the target's owners),
    /// reporting progress.
    pub fn get_with(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        opts: &GetOptions,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        self.get_with_options(remote, dest, opts, &CopyOptions::default(), progress)
    }

    /// [`Context::get_with`], and whether to compare first
    /// ([`CopyOptions`]: by default an unchanged file is not sent).
    pub fn get_with_options(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        opts: &GetOptions,
        copy: &CopyOptions,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        let dest = dest.as_ref();
        let (parent, name) = split_dest(dest)?;
        let dir = open_parent(parent)?;
        self.get_at(remote.as_ref(), dir.as_fd(), name, dest, opts, copy, progress)
    }

    /// Copies the remote file `remote` to `name` in the open directory
    /// `dir` (`dest` is its path, for messages): a temp file created there
    /// without following symlinks, renamed over `name` once complete;
    /// nothing when it already is that file (unless `copy.force`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn get_at(
        &self,
        remote: &Path,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        dest: &Path,
        opts: &GetOptions,
        copy: &CopyOptions,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        let t0 = Instant::now();
        if !copy.force {
            if let Some((bytes, checksum)) = self.same_here(remote, dir, name, dest, opts, copy.checksum)? {
                progress(bytes);
                return Ok(TransferStats { bytes, checksum, elapsed: t0.elapsed(), changed: false });
            }
        }
        let kind = copy.checksum;
        let opened = self.call::<f::FileOpenRead>(&f::OpenReadArgs { path: path_bytes(remote), hash: kind })?;
        // The digest is computed on another thread while this one waits
        // for chunks and writes them: hashing inline was a third of this
        // thread's time (perf), serial with the writes.
        let result = std::thread::scope(|s| {
            let (to_hash, chunks) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(WINDOW);
            let spares = &self.state.table.spares;
            let hasher = s.spawn(move || {
                let mut hash = Hasher::new(kind);
                for (c, start) in chunks {
                    hash.update(&c[start..]);
                    // Back to the stream for a later chunk to arrive in.
                    spares.put(c);
                }
                hash.digest()
            });
            let (mut temp, mut out) = Temp::create(dir, name).map_err(local(dest))?;
            let mut bytes = 0u64;
            let mut inflight: VecDeque<Pending<ByteBuf>> = VecDeque::new();
            let mut eof = false;
            let read = FileReadArgs { id: opened.id, len: CHUNK as u32, compress: copy.compress };
            let changed = |read: u64| TransferError::SourceChanged {
                context: self.name().into(),
                path: remote.into(),
                expected: opened.size,
                read,
            };
            while !eof || !inflight.is_empty() {
                while !eof && inflight.len() < WINDOW {
                    inflight.push_back(self.call_async::<f::FileRead>(&read)?);
                    // Do not read far past a known end: one extra call tells EOF.
                    let ahead = bytes.saturating_add((inflight.len() * CHUNK) as u64);
                    if ahead > opened.size.saturating_add(CHUNK as u64) {
                        break;
                    }
                }
                let Some(p) = inflight.pop_front() else { break };
                let (buf, start) = p.wait_bytes_in_place()?;
                let chunk = &buf[start..];
                if chunk.len() > CHUNK {
                    return Err(TransferError::Remote(CallError::Decode {
                        context: self.name().into(),
                        function: f::FileRead::NAME.into(),
                        detail: format!("a chunk of {} bytes, more than the {CHUNK} asked for", chunk.len()),
                    }));
                }
                if chunk.len() < CHUNK {
                    eof = true;
                }
                bytes += chunk.len() as u64;
                // More than the file said it had: stop now, not at the
                // target's leisure (it could send forever).
                if bytes > opened.size {
                    return Err(changed(bytes));
                }
                write_chunk(&mut out, chunk).map_err(local(dest))?;
                progress(chunk.len() as u64);
                // The hasher only ends early by panicking, which join reports.
                let _ = to_hash.send((buf, start));
            }
            drop(to_hash);
            if bytes != opened.size {
                return Err(changed(bytes));
            }
            out.set_len(bytes).map_err(local(dest))?;
            let closed = self.call::<f::FileClose>(&FileCloseArgs { id: opened.id, commit: None })?;
            let digest =
                hasher.join().map_err(|_| local(dest)(std::io::Error::other("the hashing thread panicked")))?;
            if closed.digest[..] != *digest.as_bytes() || closed.size != bytes {
                return Err(TransferError::Checksum { context: self.name().into(), path: dest.into() });
            }
            // On the open file: nothing here follows a symlink. The owner
            // first: chown clears setuid/setgid.
            let keep_owner = opts.keeps_owner();
            if keep_owner {
                let (uid, gid) = ids(opened.owner);
                rustix::fs::fchown(&out, uid, gid).map_err(|e| local(dest)(e.into()))?;
            }
            rustix::fs::fchmod(&out, local_mode(opened.mode, false, keep_owner)).map_err(|e| local(dest)(e.into()))?;
            set_mtime(out.as_fd(), opened.mtime, opened.mtime_nsec).map_err(local(dest))?;
            drop(out);
            rustix::fs::renameat(dir, &temp.name, dir, name).map_err(|e| local(dest)(e.into()))?;
            temp.keep = true;
            Ok(TransferStats { bytes, checksum: digest, elapsed: t0.elapsed(), changed: true })
        });
        // An idle master keeps no window of chunks (the streams' decoders
        // keep one spare each).
        self.state.table.spares.trim(0);
        if result.is_err() {
            self.discard(opened.id);
        }
        result
    }

    /// A `file_write` call (`payload`, encoded) sent deflated when that
    /// saves an eighth or more ([`crate::proto::compress::compress`]),
    /// else as it is. The frame flag is the whole protocol: the agent
    /// inflates any flagged call. Like a relay, the send waits for room
    /// until the stream stalls for `SEND_TIMEOUT`; the reply, for the call
    /// timeout.
    fn write_compressed(&self, payload: &[u8]) -> Result<Pending<()>, CallError> {
        match crate::proto::compress::compress(payload) {
            Some(z) => self.call_deflated::<f::FileWrite>(&z),
            None => self.call_async_encoded::<f::FileWrite>(payload),
        }
    }

    /// Starts the call `F` whose encoded payload is `z`, deflated: the
    /// frame says so and the agent inflates it (within its frame limit).
    pub(super) fn call_deflated<F: Function>(&self, z: &[u8]) -> Result<Pending<F::Reply>, CallError> {
        let (handle, p) = self.expect_reply::<F>();
        let h = crate::proto::Header {
            dst: self.shared.id,
            src: crate::proto::MASTER_ID,
            auth: crate::proto::MASTER_ID,
            handle: crate::proto::handles::CALL_FUNCTION,
            reply_to: handle,
            flags: crate::proto::FLAG_COMPRESSED,
            ..crate::proto::Header::default()
        };
        match self.state.table.send_parts(&h, z, None) {
            Ok(()) => Ok(p),
            Err(d) => {
                self.state.table.close_mailbox(handle);
                let (context, function) = (self.name().into(), F::NAME.into());
                Err(CallError::Disconnected { context, function, reason: d.reason })
            }
        }
    }

    /// The `kind` digest of `path` in this context, asked now and awaited
    /// by the caller (so that the local file is hashed meanwhile); `None`
    /// when the context cannot say (the copy then goes ahead and reports
    /// the real error, if any).
    pub(super) fn remote_digest(&self, path: &Path, kind: HashKind) -> Option<Pending<ByteBuf>> {
        self.call_async::<f::FileHash>(&f::HashArgs { path: path_bytes(path), hash: kind }).ok()
    }

    /// Whether a put of a file with `meta` would leave `st` (the
    /// destination's `lstat`) as it is, but for the content: a regular
    /// file of the same size, permission bits and mtime, and the same
    /// owner where this context runs as root (a put then sets it).
    pub(super) fn same_meta(&self, st: &f::StatReply, meta: &fs::Metadata) -> bool {
        st.kind == f::FileKind::File
            && st.size == meta.len()
            && st.mode == meta.mode() & 0o7777
            && (st.mtime, st.mtime_nsec) == (meta.mtime(), meta.mtime_nsec() as u32)
            && ((st.uid, st.gid) == (meta.uid(), meta.gid()) || self.info().is_ok_and(|i| i.euid != 0))
    }

    /// A put's comparison ([`CopyOptions`]): the digest of `src` (open as
    /// `input`, `meta`) when `remote` already holds the same file, else
    /// `None`. Any failure to look is "not the same": the put then runs
    /// and reports what is wrong.
    fn same_at_remote(
        &self,
        src: &Path,
        input: &fs::File,
        meta: &fs::Metadata,
        remote: &Path,
        kind: HashKind,
    ) -> Result<Option<Digest>, TransferError> {
        let stat = f::StatArgs { path: path_bytes(remote), follow: false };
        let Ok(st) = self.call::<f::Stat>(&stat) else { return Ok(None) };
        if !self.same_meta(&st, meta) {
            return Ok(None);
        }
        let Some(theirs) = self.remote_digest(remote, kind) else { return Ok(None) };
        let (ours, _) = hash_file(input, kind).map_err(local(src))?;
        Ok(agrees(theirs, ours))
    }

    /// A get's comparison ([`CopyOptions`]): the digest when `name` in
    /// `dir` already is what a get of `remote` would make of it (a
    /// regular file, not a symlink, of the same size, clamped mtime, mode
    /// as [`local_mode`] gives it and, where owners are kept, owner; ours
    /// otherwise), else `None`.
    fn same_here(
        &self,
        remote: &Path,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        dest: &Path,
        opts: &GetOptions,
        kind: HashKind,
    ) -> Result<Option<(u64, Digest)>, TransferError> {
        let Ok(st) = self.call::<f::Stat>(&f::StatArgs { path: path_bytes(remote), follow: true }) else {
            return Ok(None);
        };
        // NONBLOCK: a fifo under that name must not hang the open.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else { return Ok(None) };
        let Ok(mine) = rustix::fs::fstat(&fd) else { return Ok(None) };
        let keep_owner = opts.keeps_owner();
        let owner_ok = if keep_owner {
            (mine.st_uid, mine.st_gid) == (st.uid, st.gid)
        } else {
            mine.st_uid == rustix::process::geteuid().as_raw()
        };
        let same = st.kind == f::FileKind::File
            && rustix::fs::FileType::from_raw_mode(mine.st_mode) == rustix::fs::FileType::RegularFile
            && mine.st_size as u64 == st.size
            && mine.st_mode & 0o7777 == local_mode(st.mode, false, keep_owner).bits()
            && mine.st_mtime == st.mtime.clamp(MTIME_RANGE.0, MTIME_RANGE.1)
            && mine.st_mtime_nsec as u32 == st.mtime_nsec.min(999_999_999)
            && owner_ok;
        if !same {
            return Ok(None);
        }
        let Some(theirs) = self.remote_digest(remote, kind) else { return Ok(None) };
        let (ours, _) = hash_file(&fs::File::from(fd), kind).map_err(local(dest))?;
        Ok(agrees(theirs, ours).map(|d| (st.size, d)))
    }

    /// Ends a failed transfer on the agent (its temp file goes), waiting a
    /// little so the caller returns with the target clean; a dead context
    /// answers at once.
    fn discard(&self, id: u32) {
        let quick = self.with_timeout(Some(Duration::from_secs(5)));
        let _ = quick.call::<f::FileClose>(&FileCloseArgs { id, commit: None });
    }

    /// Copies the local file `src` to the remote path `remote`, keeping its
    /// mode and mtime (and owner, when the agent runs as root).
    pub fn put(&self, src: impl AsRef<Path>, remote: impl AsRef<Path>) -> Result<TransferStats, TransferError> {
        self.put_with_progress(src, remote, &no_progress)
    }

    /// [`Context::put`], reporting progress.
    pub fn put_with_progress(
        &self,
        src: impl AsRef<Path>,
        remote: impl AsRef<Path>,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        self.put_with_options(src, remote, &CopyOptions::default(), progress)
    }

    /// [`Context::put_with_progress`], and whether to compare first
    /// ([`CopyOptions`]: by default an unchanged file is not sent).
    pub fn put_with_options(
        &self,
        src: impl AsRef<Path>,
        remote: impl AsRef<Path>,
        copy: &CopyOptions,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        let (src, remote) = (src.as_ref(), remote.as_ref());
        let t0 = Instant::now();
        let mut input = fs::File::open(src).map_err(local(src))?;
        let meta = input.metadata().map_err(local(src))?;
        if !copy.force && meta.is_file() {
            if let Some(checksum) = self.same_at_remote(src, &input, &meta, remote, copy.checksum)? {
                progress(meta.len());
                return Ok(TransferStats { bytes: meta.len(), checksum, elapsed: t0.elapsed(), changed: false });
            }
        }
        // Behind a hop, a file the hop can cache whole goes through the
        // importer: put again to another context behind that hop, it comes
        // from the hop's cache instead of crossing the first link again.
        if self.shared.parent.is_some() && meta.is_file() && meta.len() <= CACHE_BYTES as u64 {
            return self.put_through_hops(src, input, &meta, remote, copy.compress, progress);
        }
        // Read once front to back: the kernel may read further ahead.
        let _ = rustix::fs::fadvise(&input, 0, None, rustix::fs::Advice::Sequential);
        let kind = copy.checksum;
        let opened =
            self.call::<f::FileOpenWrite>(&f::OpenWriteArgs { path: path_bytes(remote), id: 0, hash: kind })?;
        // The digest is computed on another thread while this one reads
        // and sends (hashing inline was a third of this thread's time,
        // serial with the reads): chunks go to it once sent and come back
        // to be filled again, three buffers in turn.
        let result = std::thread::scope(|s| {
            let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<Chunk>(HASH_BUFFERS);
            let (back_tx, back) = std::sync::mpsc::channel::<Chunk>();
            let hasher = s.spawn(move || {
                let mut hash = Hasher::new(kind);
                for c in hash_rx {
                    hash.update(c.data());
                    // The sender stops taking buffers back only once it failed.
                    let _ = back_tx.send(c);
                }
                hash.digest()
            });
            let hasher_gone = || local(src)(std::io::Error::other("the hashing thread panicked"));
            let mut bytes = 0u64;
            let mut inflight: VecDeque<(Pending<()>, u64)> = VecDeque::new();
            let mut fresh = HASH_BUFFERS;
            loop {
                let mut chunk = match back.try_recv() {
                    Ok(c) => c,
                    Err(_) if fresh > 0 => {
                        fresh -= 1;
                        Chunk::new(32)
                    }
                    Err(_) => back.recv().map_err(|_| hasher_gone())?,
                };
                let n = chunk.read_from(&mut input).map_err(local(src))?;
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                let encode = |e: postcard::Error| CallError::Encode {
                    context: self.name().into(),
                    function: f::FileWrite::NAME.into(),
                    detail: e.to_string(),
                };
                let front = chunk.call_front(opened.id).map_err(encode)?;
                let payload = chunk.payload(&front).ok_or_else(|| encode(postcard::Error::SerializeBufferFull))?;
                let p = if copy.compress {
                    self.write_compressed(payload)?
                } else {
                    self.call_async_encoded::<f::FileWrite>(payload)?
                };
                to_hash.send(chunk).map_err(|_| hasher_gone())?;
                inflight.push_back((p, n as u64));
                if inflight.len() >= WINDOW {
                    if let Some((p, n)) = inflight.pop_front() {
                        p.wait()?;
                        progress(n);
                    }
                }
            }
            drop(to_hash);
            for (p, n) in inflight {
                p.wait()?;
                progress(n);
            }
            if bytes != meta.len() {
                let read = bytes;
                return Err(TransferError::SourceChanged {
                    context: self.name().into(),
                    path: src.into(),
                    expected: meta.len(),
                    read,
                });
            }
            let digest = hasher.join().map_err(|_| hasher_gone())?;
            let commit = Commit {
                digest: ByteBuf::from(digest.as_bytes()),
                mode: Some(meta.mode() & 0o7777),
                mtime: Some((meta.mtime(), meta.mtime_nsec() as u32)),
                owner: Some((meta.uid(), meta.gid())),
            };
            let closed = self.call::<f::FileClose>(&FileCloseArgs { id: opened.id, commit: Some(commit) })?;
            if closed.size != bytes {
                return Err(TransferError::Checksum { context: self.name().into(), path: remote.into() });
            }
            Ok(TransferStats { bytes, checksum: digest, elapsed: t0.elapsed(), changed: true })
        });
        if result.is_err() {
            self.discard(opened.id);
        }
        result
    }

    /// SHA-256 of a remote file.
    pub fn sha256(&self, path: impl AsRef<Path>) -> Result<[u8; 32], CallError> {
        let d = self.call::<f::Sha256>(&PathArgs { path: path_bytes(path.as_ref()) })?;
        let mut out = [0u8; 32];
        if d.len() == 32 {
            out.copy_from_slice(&d);
        }
        Ok(out)
    }
}
