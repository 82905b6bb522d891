//! Streamed file transfer: [`Context::get`] and [`Context::put`].
//!
//! A transfer is pipelined calls on a file the agent holds open
//! (`file_open_*`, `file_read`/`file_write`, `file_close`): [`WINDOW`]
//! chunks of [`CHUNK`] bytes are in flight at once, which is the whole flow
//! control, so memory stays bounded on every hop whatever the file size.
//! Both ends hash what passes (SHA-256); the receiving side writes a temp
//! file beside the destination and renames it into place only when the
//! digests agree, keeping mode and mtime. A failure at any point (disk full,
//! permission, lost connection) leaves no file under the final name.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_bytes::ByteBuf;
use thiserror::Error;

use super::context::{Context, Pending};
use super::error::CallError;
use crate::core::sha256::Sha256;
use crate::proto::functions::{self as f, Commit, FileCloseArgs, FileReadArgs, Function, PathArgs};

/// Bytes per chunk call.
pub const CHUNK: usize = 1 << 20;
/// Chunk calls in flight per transfer (so at most 8 MiB buffered).
pub const WINDOW: usize = 8;

/// What a finished transfer moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferStats {
    /// Bytes.
    pub bytes: u64,
    /// SHA-256 of those bytes, checked on both ends.
    pub sha256: [u8; 32],
    /// Wall time.
    pub elapsed: Duration,
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
}

pub(super) fn local(path: &Path) -> impl Fn(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Local { path: path.to_path_buf(), source }
}

/// A temp file beside `dest`, removed on drop unless persisted.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Temp {
    fn beside(dest: &Path) -> Temp {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = dest.with_file_name(format!(".{name}.mito-tmp.{}", std::process::id()));
        Temp { path, keep: false }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
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
        let data = &mut self.buf[self.room..];
        let mut n = 0;
        while n < data.len() {
            match input.read(&mut data[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.len = n;
        Ok(n)
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

/// Whether this (master) process may give files to other owners.
pub(super) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Context {
    /// Copies the remote file `remote` to the local path `dest`, keeping its
    /// mode and mtime (and owner, when this process is root).
    pub fn get(&self, remote: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<TransferStats, TransferError> {
        self.get_with_progress(remote, dest, &no_progress)
    }

    /// [`Context::get`], reporting progress.
    pub fn get_with_progress(
        &self,
        remote: impl AsRef<Path>,
        dest: impl AsRef<Path>,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        let (remote, dest) = (remote.as_ref(), dest.as_ref());
        let t0 = Instant::now();
        let opened = self.call::<f::FileOpenRead>(&PathArgs { path: ByteBuf::from(remote.as_os_str().as_bytes()) })?;
        let result = (|| {
            let mut temp = Temp::beside(dest);
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp.path)
                .map_err(local(dest))?;
            let mut hash = Sha256::new();
            let mut bytes = 0u64;
            let mut inflight: VecDeque<Pending<ByteBuf>> = VecDeque::new();
            let mut eof = false;
            let read = FileReadArgs { id: opened.id, len: CHUNK as u32 };
            while !eof || !inflight.is_empty() {
                while !eof && inflight.len() < WINDOW {
                    inflight.push_back(self.call_async::<f::FileRead>(&read)?);
                    // Do not read far past a known end: one extra call tells EOF.
                    if bytes + (inflight.len() * CHUNK) as u64 > opened.size + CHUNK as u64 {
                        break;
                    }
                }
                let Some(p) = inflight.pop_front() else { break };
                let chunk = p.wait_bytes()?;
                if chunk.len() < CHUNK {
                    eof = true;
                }
                hash.update(&chunk);
                bytes += chunk.len() as u64;
                write_chunk(&mut out, &chunk).map_err(local(dest))?;
                progress(chunk.len() as u64);
            }
            if bytes != opened.size {
                return Err(TransferError::SourceChanged {
                    context: self.name().into(),
                    path: remote.into(),
                    expected: opened.size,
                    read: bytes,
                });
            }
            out.set_len(bytes).map_err(local(dest))?;
            let closed = self.call::<f::FileClose>(&FileCloseArgs { id: opened.id, commit: None })?;
            let digest = hash.finish();
            if closed.sha256[..] != digest[..] || closed.size != bytes {
                return Err(TransferError::Checksum { context: self.name().into(), path: dest.into() });
            }
            if is_root() {
                let (uid, gid) = opened.owner;
                std::os::unix::fs::fchown(&out, Some(uid), Some(gid)).map_err(local(dest))?;
            }
            out.set_permissions(fs::Permissions::from_mode(opened.mode)).map_err(local(dest))?;
            let mtime = SystemTime::UNIX_EPOCH + Duration::new(opened.mtime.max(0) as u64, opened.mtime_nsec);
            out.set_modified(mtime).map_err(local(dest))?;
            drop(out);
            fs::rename(&temp.path, dest).map_err(local(dest))?;
            temp.keep = true;
            Ok(TransferStats { bytes, sha256: digest, elapsed: t0.elapsed() })
        })();
        if result.is_err() {
            self.discard(opened.id);
        }
        result
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
        let (src, remote) = (src.as_ref(), remote.as_ref());
        let t0 = Instant::now();
        let mut input = fs::File::open(src).map_err(local(src))?;
        let meta = input.metadata().map_err(local(src))?;
        let opened = self.call::<f::FileOpenWrite>(&f::OpenWriteArgs {
            path: ByteBuf::from(remote.as_os_str().as_bytes()),
            id: 0,
        })?;
        let result = (|| {
            let mut hash = Sha256::new();
            let mut bytes = 0u64;
            let mut inflight: VecDeque<(Pending<()>, u64)> = VecDeque::new();
            let mut chunk = Chunk::new(32);
            loop {
                let n = chunk.read_from(&mut input).map_err(local(src))?;
                if n == 0 {
                    break;
                }
                hash.update(chunk.data());
                bytes += n as u64;
                let encode = |e: postcard::Error| CallError::Encode {
                    context: self.name().into(),
                    function: f::FileWrite::NAME.into(),
                    detail: e.to_string(),
                };
                let front = chunk.call_front(opened.id).map_err(encode)?;
                let payload = chunk.payload(&front).ok_or_else(|| encode(postcard::Error::SerializeBufferFull))?;
                let p = self.call_async_encoded::<f::FileWrite>(payload)?;
                inflight.push_back((p, n as u64));
                if inflight.len() >= WINDOW {
                    if let Some((p, n)) = inflight.pop_front() {
                        p.wait()?;
                        progress(n);
                    }
                }
            }
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
            let digest = hash.finish();
            let commit = Commit {
                sha256: ByteBuf::from(&digest[..]),
                mode: Some(meta.mode() & 0o7777),
                mtime: Some((meta.mtime(), meta.mtime_nsec() as u32)),
                owner: Some((meta.uid(), meta.gid())),
            };
            let closed = self.call::<f::FileClose>(&FileCloseArgs { id: opened.id, commit: Some(commit) })?;
            if closed.size != bytes {
                return Err(TransferError::Checksum { context: self.name().into(), path: remote.into() });
            }
            Ok(TransferStats { bytes, sha256: digest, elapsed: t0.elapsed() })
        })();
        if result.is_err() {
            self.discard(opened.id);
        }
        result
    }

    /// SHA-256 of a remote file.
    pub fn sha256(&self, path: impl AsRef<Path>) -> Result<[u8; 32], CallError> {
        let d = self.call::<f::Sha256>(&PathArgs { path: ByteBuf::from(path.as_ref().as_os_str().as_bytes()) })?;
        let mut out = [0u8; 32];
        if d.len() == 32 {
            out.copy_from_slice(&d);
        }
        Ok(out)
    }
}
