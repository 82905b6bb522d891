//! [`FileTable`]: files the agent holds open for streamed transfers.
//!
//! Reads hash what they hand out; writes go to a temp file beside the
//! destination (`.NAME.mito-tmp.PID.N`, 0600) and are renamed into place by
//! a commit whose digest matches what arrived (XXH3-128 by default, SHA-256
//! when the transfer was opened so: `core::xxh3::Hasher`). Anything not committed is
//! unlinked: on an explicit discard, on a failed commit, and when the agent
//! exits with transfers open. So no partial file ever appears under the
//! final name.

use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, Mode, OFlags, CWD};

use super::util::os_error;
use crate::core::xxh3::{Digest, Hasher};
use crate::proto::functions::{Commit, FileClosed, FileOpened, HashKind};
use crate::proto::{ErrorKind, Header, RemoteError, FLAG_COMPRESSED, HEADER_LEN};

struct OpenFile {
    fd: OwnedFd,
    hash: Hasher,
    bytes: u64,
    /// For writes: (temp path, final path).
    write: Option<(Vec<u8>, Vec<u8>)>,
}

/// The open transfers of one agent, by id: ids the agent picks count up
/// from 1; a caller may choose its own (top bit set) so that one relayed
/// chunk fits every receiver.
#[derive(Default)]
pub struct FileTable {
    files: Vec<(u32, OpenFile)>,
    next: u32,
    serial: u64,
}

fn bad_id() -> RemoteError {
    RemoteError::new(ErrorKind::BadArgs, "no such open file")
}

impl FileTable {
    fn insert(&mut self, f: OpenFile, want: u32) -> u32 {
        let id = if want != 0 {
            want
        } else {
            loop {
                self.next = (self.next + 1) & 0x7fff_ffff;
                if self.next != 0 && self.get(self.next).is_none() {
                    break self.next;
                }
            }
        };
        self.files.push((id, f));
        id
    }

    fn get(&mut self, id: u32) -> Option<&mut OpenFile> {
        self.files.iter_mut().find(|(i, _)| *i == id).map(|(_, f)| f)
    }

    /// Whether a file is open for reading (a `get` streams out).
    pub fn reading(&self) -> bool {
        self.files.iter().any(|(_, f)| f.write.is_none())
    }

    fn take(&mut self, id: u32) -> Option<OpenFile> {
        let i = self.files.iter().position(|(i, _)| *i == id)?;
        Some(self.files.swap_remove(i).1)
    }

    /// Opens `path` for reading, hashing what is read with `hash`.
    pub fn open_read(&mut self, path: &[u8], hash: HashKind) -> Result<FileOpened, RemoteError> {
        let fd = fs::openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| os_error(e, "open", path))?;
        let st = fs::fstat(&fd).map_err(|e| os_error(e, "stat", path))?;
        if fs::FileType::from_raw_mode(st.st_mode) == fs::FileType::Directory {
            return Err(os_error(rustix::io::Errno::ISDIR, "read", path));
        }
        // Read front to back once: let the kernel read ahead further.
        let _ = fs::fadvise(&fd, 0, None, fs::Advice::Sequential);
        let id = self.insert(OpenFile { fd, hash: Hasher::new(hash), bytes: 0, write: None }, 0);
        Ok(FileOpened {
            id,
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            owner: (st.st_uid, st.st_gid),
        })
    }

    /// Appends up to `len` bytes of file `id` to `out` (fewer at EOF).
    pub fn read(&mut self, id: u32, len: usize, out: &mut Vec<u8>) -> Result<usize, RemoteError> {
        let f = self.get(id).ok_or_else(bad_id)?;
        let start = out.len();
        out.reserve(len);
        while out.len() - start < len {
            let room = len - (out.len() - start);
            let spare = &mut out.spare_capacity_mut()[..room];
            match rustix::io::read(&f.fd, spare) {
                Ok(([], _)) => break,
                Ok((got, _)) => {
                    let n = got.len();
                    // SAFETY: `read` initialised the first `n` spare bytes.
                    unsafe { out.set_len(out.len() + n) };
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(RemoteError::os(e.raw_os_error(), "read")),
            }
        }
        let n = out.len() - start;
        f.hash.update(&out[start..]);
        f.bytes += n as u64;
        Ok(n)
    }

    /// Creates the temp file for a write to `path`, as transfer `want` when
    /// the caller chose the id (0: the agent picks), hashing what is written
    /// with `hash`.
    pub fn open_write(&mut self, path: &[u8], want: u32, hash: HashKind) -> Result<FileOpened, RemoteError> {
        if want != 0 && (want & 0x8000_0000 == 0 || self.get(want).is_some()) {
            return Err(RemoteError::new(ErrorKind::BadArgs, "transfer id in use or not a caller id"));
        }
        self.serial += 1;
        let (fd, tmp) = super::util::create_temp_beside(path, self.serial)?;
        let id =
            self.insert(OpenFile { fd, hash: Hasher::new(hash), bytes: 0, write: Some((tmp, path.to_vec())) }, want);
        Ok(FileOpened { id, size: 0, mode: 0, mtime: 0, mtime_nsec: 0, owner: (0, 0) })
    }

    /// Appends `data` to the write `id`.
    pub fn write(&mut self, id: u32, data: &[u8]) -> Result<(), RemoteError> {
        let f = self.get(id).ok_or_else(bad_id)?;
        let Some((_, dest)) = &f.write else { return Err(bad_id()) };
        f.hash.update(data);
        f.bytes += data.len() as u64;
        if crate::core::num::all_zero(data) {
            // A hole (commit sets the final length if the file ends in one).
            return fs::seek(&f.fd, rustix::fs::SeekFrom::Current(data.len() as i64))
                .map(drop)
                .map_err(|e| os_error(e, "seek", dest));
        }
        super::util::write_all(f.fd.as_fd(), data, dest)
    }

    /// Ends transfer `id`; see [`crate::proto::functions::FileClose`].
    pub fn close(&mut self, id: u32, commit: Option<Commit>) -> Result<FileClosed, RemoteError> {
        let f = self.take(id).ok_or_else(bad_id)?;
        let closed =
            |f: &OpenFile| FileClosed { size: f.bytes, digest: serde_bytes::ByteBuf::from(f.hash.digest().as_bytes()) };
        let Some((tmp, dest)) = &f.write else { return Ok(closed(&f)) };
        let result = match commit {
            None => Err(RemoteError::new(ErrorKind::ShuttingDown, "transfer discarded")),
            Some(c) => {
                let done = closed(&f);
                if done.digest[..] != c.digest[..] {
                    Err(RemoteError::new(ErrorKind::Protocol, super::util::op_path("checksum mismatch writing", dest)))
                } else {
                    commit_into(f.fd.as_fd(), f.bytes, &c, tmp, dest).map(|()| done)
                }
            }
        };
        if result.is_err() {
            let _ = fs::unlinkat(CWD, &tmp[..], fs::AtFlags::empty());
        }
        result
    }

    /// Removes the temp files of unfinished writes (the agent is exiting).
    pub fn discard_all(&mut self) {
        for (_, f) in self.files.drain(..) {
            if let Some((tmp, _)) = f.write {
                let _ = fs::unlinkat(CWD, &tmp[..], fs::AtFlags::empty());
            }
        }
    }
}

/// `get --compress`: the payload of a bytes reply frame (`frame` from
/// `start`, as `dispatch::bytes_frame` builds it) deflated in place and
/// flagged [`FLAG_COMPRESSED`] when that saves an eighth; else the frame
/// as it was. The master inflates it no further than a chunk. The deflate
/// is [`deflate`]'s, not miniz_oxide's (that one cost the agent 11 KB gzip).
pub fn deflate_reply((mut frame, start): (Vec<u8>, usize)) -> (Vec<u8>, usize) {
    let body = start + HEADER_LEN;
    let Some(head) = frame.get(start..body).and_then(|b| <&[u8; HEADER_LEN]>::try_from(b).ok()) else {
        return (frame, start);
    };
    let Ok(mut h) = Header::decode(head, u32::MAX) else { return (frame, start) };
    let Some(z) = deflate::compress(&frame[body..]) else { return (frame, start) };
    h.flags |= FLAG_COMPRESSED;
    h.len = z.len() as u32;
    frame[start..body].copy_from_slice(&h.encode());
    frame.truncate(body);
    frame.extend_from_slice(&z);
    (frame, start)
}

/// Puts the written temp file `tmp` (open as `fd`, `size` bytes) in place
/// at `dest` with `c`'s mode, mtime and (as root) owner: a streamed put's
/// commit, and a put through the importer's (`resources.rs`). The owner
/// first: chown clears setuid/setgid.
pub fn commit_into(fd: BorrowedFd<'_>, size: u64, c: &Commit, tmp: &[u8], dest: &[u8]) -> Result<(), RemoteError> {
    fs::ftruncate(fd, size).map_err(|e| os_error(e, "truncate", dest))?;
    if let (Some((uid, gid)), true) = (c.owner, rustix::process::geteuid().is_root()) {
        let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        fs::fchown(fd, Some(u), Some(g)).map_err(|e| os_error(e, "chown", dest))?;
    }
    fs::fchmod(fd, Mode::from_bits_truncate(c.mode.unwrap_or(0o644))).map_err(|e| os_error(e, "chmod", dest))?;
    if let Some((s, ns)) = c.mtime {
        let t = fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: s, tv_nsec: i64::from(ns) },
            last_modification: rustix::fs::Timespec { tv_sec: s, tv_nsec: i64::from(ns) },
        };
        fs::futimens(fd, &t).map_err(|e| os_error(e, "utimens", dest))?;
    }
    fs::renameat(CWD, tmp, CWD, dest).map_err(|e| os_error(e, "rename", dest))
}

/// SHA-256 of a whole file (the importer's resource check, the `sha256`
/// function).
pub fn sha256_file(path: &[u8]) -> Result<[u8; 32], RemoteError> {
    match hash_file(path, HashKind::Sha256)? {
        Digest::Sha256(d) => Ok(d),
        Digest::Xxh3_128(_) => Err(RemoteError::new(ErrorKind::Protocol, "sha256")),
    }
}

/// The `hash` digest of a whole file (`file_hash`: an idempotent copy's
/// comparison).
pub fn hash_file(path: &[u8], hash: HashKind) -> Result<Digest, RemoteError> {
    let mut t = FileTable::default();
    let id = t.open_read(path, hash)?.id;
    let mut buf = Vec::with_capacity(256 * 1024);
    loop {
        buf.clear();
        if t.read(id, 256 * 1024, &mut buf)? == 0 {
            break;
        }
    }
    let f = t.take(id).ok_or_else(bad_id)?;
    Ok(f.hash.digest())
}

/// A small raw-deflate compressor for `get --compress`: one block of
/// fixed Huffman codes, greedy LZ77 matches found through a hash of the
/// next 4 bytes (like LZ4's). It compresses less than zlib's level 1 (no
/// dynamic codes) but costs the agent about 1 KB where miniz_oxide's
/// compressor cost 11 KB gzip; any inflater reads it (the master uses
/// miniz_oxide's, bounded).
pub mod deflate {
    use alloc::vec::Vec;

    const LEN_BASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227,
        258,
    ];
    const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
    const DIST_BASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097,
        6145, 8193, 12289, 16385, 24577,
    ];
    const DIST_EXTRA: [u8; 30] =
        [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
    const HASH_BITS: u32 = 14;
    const WINDOW: usize = 32768;
    const MAX_MATCH: usize = 258;
    /// How often [`compress`] checks that it is saving enough.
    const PROBE: usize = 64 * 1024;

    /// Bits packed LSB first, as deflate wants them.
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }

    impl Bits {
        fn put(&mut self, v: u32, n: u32) {
            self.acc |= u64::from(v) << self.n;
            self.n += n;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }

        /// A Huffman code: written from its most significant bit.
        fn code(&mut self, code: u32, n: u32) {
            self.put(code.reverse_bits() >> (32 - n), n);
        }

        /// Literal/length symbol `sym` (0..=287) in the fixed code.
        fn sym(&mut self, sym: u32) {
            match sym {
                0..=143 => self.code(0x30 + sym, 8),
                144..=255 => self.code(0x190 + sym - 144, 9),
                256..=279 => self.code(sym - 256, 7),
                _ => self.code(0xC0 + sym - 280, 8),
            }
        }
    }

    /// The largest `i` with `base[i] <= v`.
    fn bucket(base: &[u16], v: usize) -> usize {
        base.iter().rposition(|&b| usize::from(b) <= v).unwrap_or(0)
    }

    /// Raw deflate of `data` if that saves at least an eighth; `None`
    /// otherwise (given up at the first 64 KiB mark where it is not saving).
    pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < crate::proto::compress::MIN_COMPRESS {
            return None;
        }
        let limit = data.len() - data.len() / 8;
        let mut b = Bits { out: Vec::with_capacity(limit + 8), acc: 0, n: 0 };
        b.put(0b011, 3); // the final block, fixed codes
        let mut table = alloc::vec![0u32; 1 << HASH_BITS];
        let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let hash = |w: u32| (w.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize;
        let mut i = 0;
        let mut check = PROBE;
        while i < data.len() {
            // Every 64 KiB: give up once the output is past seven eighths of
            // what it covers (random data is known after the first 64 KiB
            // instead of most of the chunk: 16x less time on it).
            if i >= check {
                if b.out.len() > i - i / 8 {
                    return None;
                }
                check += PROBE;
            }
            let mut len = 0;
            let mut dist = 0;
            if i + 4 <= data.len() {
                let w = word(i);
                let h = hash(w);
                // Positions are stored plus one: 0 is "none yet".
                let cand = table[h] as usize;
                table[h] = (i + 1) as u32;
                if cand > 0 && i + 1 - cand <= WINDOW && word(cand - 1) == w {
                    let c = cand - 1;
                    let max = (data.len() - i).min(MAX_MATCH);
                    len = 4;
                    while len < max && data[c + len] == data[i + len] {
                        len += 1;
                    }
                    dist = i - c;
                }
            }
            if len == 0 {
                b.sym(u32::from(data[i]));
                i += 1;
                continue;
            }
            let l = bucket(&LEN_BASE, len);
            b.sym(257 + l as u32);
            b.put((len - usize::from(LEN_BASE[l])) as u32, u32::from(LEN_EXTRA[l]));
            let d = bucket(&DIST_BASE, dist);
            b.code(d as u32, 5);
            b.put((dist - usize::from(DIST_BASE[d])) as u32, u32::from(DIST_EXTRA[d]));
            i += len;
        }
        b.sym(256);
        b.put(0, 7); // flush the last partial byte
        (b.out.len() <= limit).then_some(b.out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn inflates_back() {
            let text: alloc::vec::Vec<u8> = (0..200_000u32)
                .flat_map(|i| alloc::format!("line {} of the log, ok\n", i % 977).into_bytes())
                .collect();
            let mut runs = alloc::vec![0u8; 300_000];
            runs[1000..1300].fill(9);
            let mut edge = text.clone();
            edge.truncate(4099);
            for data in [&text[..], &runs[..], &edge[..]] {
                let z = super::compress(data).expect("compressible");
                assert!(z.len() < data.len() / 4, "{} of {}", z.len(), data.len());
                let back = miniz_oxide::inflate::decompress_to_vec_with_limit(&z, data.len()).expect("inflates");
                assert!(back == data);
            }
            // Pseudo-random bytes do not shrink.
            let mut x = 1u32;
            let noise: alloc::vec::Vec<u8> = (0..100_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(super::compress(&noise).is_none());
        }
    }
}
