//! [`Resources`]: the importer in an agent (ARCHITECTURE.md, "The
//! importer"): resources fetched for this context (`fetch_resource`), and
//! at a hop, the chunks its children ask for, served from a bounded cache
//! or asked for once upstream.
//!
//! - **Grants** (`GRANT_RESOURCE`, from the master only): context `c`
//!   behind this hop may fetch resource `h`. A child's GET_RESOURCE is
//!   served only for a `for_context` that is the child or behind it, and
//!   granted; anything else is refused with `NotPermitted` and nothing
//!   goes upstream, so a child can neither read what it was not given nor
//!   make this hop fetch (and cache) anything. Grants go with the context's
//!   route.
//! - **Asks**: one GET_RESOURCE upstream per chunk not cached, whoever
//!   wants it; later requests for the same chunk wait on it (coalescing).
//!   Its reply is checked by size only (the final receiver checks the
//!   hash) and goes to every waiter.
//! - **Cache**: chunks that passed through for a child, keyed by (hash,
//!   chunk), least recently used out first, at most [`CACHE_BYTES`]; it
//!   outlives the children that caused it.
//! - **Fetches**: this agent's own `fetch_resource` calls: up to
//!   [`PIPELINE`] chunks asked at a time, written where they belong in a
//!   temporary file in the agent's cache directory (a memfd where there is
//!   none), the hash checked at the end, then renamed to `res-<sha256>`.
//!   The call is answered when that is done; the loop keeps running.
//!   A fetch with a destination (a put through the importer) writes its
//!   temporary file beside that path instead and commits it there as a
//!   streamed put does (`files::commit_into`).
//!
//! - **Feeds**: a resource for a command's stdin (`ExecOp::SendResource`:
//!   the agent of another architecture for stage0 of a context behind this
//!   hop, granted to the hop itself): a fetch into a memfd, whose bytes go
//!   to the command ([`Resources::take_fed`]) instead of a reply. Its
//!   chunks are cached as a child's are, so the next such context gets
//!   them from here.

use alloc::rc::Rc;
use alloc::vec::Vec;

use rustix::fd::{AsFd, OwnedFd};
use serde_bytes::ByteBuf;

use super::children::Children;
use super::outbox::Outbox;
use super::util::{os_error, push_decimal};
use crate::core::poller::Poller;
use crate::core::sha256::Sha256;
use crate::proto::functions::Commit;
use crate::proto::resource::{chunk_len, chunks, FetchArgs, GetResource, Grant, CHUNK};
use crate::proto::{handles, ErrorKind, Header, Message, RemoteError, FLAG_COMPRESSED, FLAG_ERROR};

/// The most bytes of chunks a hop keeps (each entry counts 64 bytes more,
/// so empty chunks are bounded too).
pub const CACHE_BYTES: usize = crate::proto::resource::CACHE_BYTES;

/// Chunks a fetch has asked for and not yet received, at most.
pub const PIPELINE: u32 = 4;

/// Who waits for a chunk.
enum Waiter {
    /// A child's request: the reply goes down to `dst`'s `reply_to`.
    Down { dst: u32, reply_to: u32 },
    /// This agent's fetch `id`.
    Fetch(u32),
}

/// A grant: `context` may fetch `sha256` (of `size` bytes) through us.
struct Granted {
    context: u32,
    sha256: [u8; 32],
    size: u64,
}

/// A cached chunk.
struct Cached {
    sha256: [u8; 32],
    chunk: u32,
    data: Rc<Vec<u8>>,
    /// The cache's clock when last used (least recently used goes first).
    used: u64,
}

/// A GET_RESOURCE sent upstream, its reply awaited on `handle`.
struct Ask {
    handle: u32,
    sha256: [u8; 32],
    chunk: u32,
    /// The chunk's length: a reply of another length is refused.
    len: usize,
    waiters: Vec<Waiter>,
}

/// One `fetch_resource` call under way.
struct Fetch {
    id: u32,
    /// The call, answered when the fetch ends.
    call: Header,
    sha256: [u8; 32],
    size: u64,
    fd: OwnedFd,
    /// The temporary file and the file it becomes (`None`: a memfd).
    tmp: Option<(Vec<u8>, Vec<u8>)>,
    /// A put's mode, mtime and owner (`None`: a resource in the cache
    /// directory, mode 0700).
    commit: Option<Commit>,
    /// A put's progress handle at the caller (0: none).
    progress: u32,
    /// A feed: the bytes go to this caller's command stream's stdin.
    feed: Option<(u32, u32)>,
    /// The hash of the chunks written so far in order, and how many (once
    /// one comes out of order, `u32::MAX`: the file is hashed at the end).
    hash: Sha256,
    hashed: u32,
    /// Chunks asked for (or found cached) so far.
    next: u32,
    /// Chunks written so far.
    got: u32,
}

/// The importer's state in one agent (see the module docs).
pub struct Resources {
    /// Where this agent asks: its parent (told by the master).
    parent: u32,
    grants: Vec<Granted>,
    cache: Vec<Cached>,
    /// Bytes the cache holds (with 64 per entry).
    cached: usize,
    clock: u64,
    asks: Vec<Ask>,
    fetches: Vec<Fetch>,
    /// The next reply handle (and fetch id).
    next: u32,
    /// The agent's cache directory, with its final `/` (`None`: it runs
    /// from a memfd, fetched files are memfds too).
    dir: Option<Vec<u8>>,
    /// The memfds handed out as paths: open for the agent's life.
    kept: Vec<OwnedFd>,
    /// Feeds done: (caller, stream, the bytes, or `None` if it failed).
    fed: Vec<(u32, u32, Option<Vec<u8>>)>,
}

impl Resources {
    /// The importer of the agent that runs from `exe`: its cache directory
    /// is `exe`'s when that is stage0's `…/agent-<hash>` (stage0 checked the
    /// directory is ours and 0700).
    pub fn new(exe: &str) -> Resources {
        let b = exe.as_bytes();
        let cut = b.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
        let dir = (cut > 0 && b[cut..].starts_with(b"agent-")).then(|| b[..cut].to_vec());
        Resources {
            parent: crate::proto::MASTER_ID,
            grants: Vec::new(),
            cache: Vec::new(),
            cached: 0,
            clock: 0,
            asks: Vec::new(),
            fetches: Vec::new(),
            next: handles::FIRST_DYNAMIC,
            dir,
            kept: Vec::new(),
            fed: Vec::new(),
        }
    }

    /// Bytes of chunks cached now (with their per-entry overhead).
    pub fn cached_bytes(&self) -> usize {
        self.cached
    }

    /// GRANT_RESOURCE from the master.
    pub fn grant(&mut self, m: &Message) {
        let Ok(g) = postcard::from_bytes::<Grant>(&m.data) else { return };
        self.parent = g.parent;
        if g.revoke {
            return self.grants.retain(|x| x.context != g.context || x.sha256 != g.sha256);
        }
        if !self.grants.iter().any(|x| x.context == g.context && x.sha256 == g.sha256) {
            self.grants.push(Granted { context: g.context, sha256: g.sha256, size: g.size });
        }
    }

    /// Context `id` is gone: its grants go.
    pub fn forget(&mut self, id: u32) {
        self.grants.retain(|g| g.context != id);
    }

    /// A GET_RESOURCE from the child in `slot` (its header checked and
    /// stamped): served if granted (see the module docs), else refused.
    pub fn from_child(&mut self, slot: usize, m: Message, kids: &mut Children, out: &mut Outbox, poller: &Poller) {
        let h = m.header;
        if h.reply_to == 0 {
            return;
        }
        let req = postcard::from_bytes::<GetResource>(&m.data).ok();
        let granted = req.as_ref().filter(|r| kids.speaks_for(slot, r.for_context)).and_then(|r| {
            self.grants.iter().find(|g| g.context == r.for_context && g.sha256 == r.sha256 && r.chunk < chunks(g.size))
        });
        let (Some(r), Some(size)) = (req.as_ref(), granted.map(|g| g.size)) else {
            let e = encode(&RemoteError::new(ErrorKind::NotPermitted, "resource not granted"));
            return reply_down(kids, poller, out.id(), h.src, h.reply_to, Err(&e));
        };
        let w = Waiter::Down { dst: h.src, reply_to: h.reply_to };
        if let Some(data) = self.want(r.sha256, r.chunk, size, r.for_context, w, out) {
            reply_down(kids, poller, out.id(), h.src, h.reply_to, Ok(&data));
        }
    }

    /// Chunk `chunk` of `sha256` (`size` bytes) for `waiter`: returned now
    /// if cached; else `waiter` waits for the one GET_RESOURCE upstream
    /// for it (sent now unless one is under way), asked for `for_context`.
    fn want(
        &mut self,
        sha256: [u8; 32],
        chunk: u32,
        size: u64,
        for_context: u32,
        waiter: Waiter,
        out: &mut Outbox,
    ) -> Option<Rc<Vec<u8>>> {
        if let Some(c) = self.cache.iter_mut().find(|c| c.sha256 == sha256 && c.chunk == chunk) {
            self.clock += 1;
            c.used = self.clock;
            return Some(c.data.clone());
        }
        if let Some(a) = self.asks.iter_mut().find(|a| a.sha256 == sha256 && a.chunk == chunk) {
            a.waiters.push(waiter);
            return None;
        }
        let handle = self.handle();
        let req = GetResource { sha256, chunk, for_context };
        if let Ok(data) = postcard::to_allocvec(&req) {
            let me = out.id();
            let h = Header {
                dst: self.parent,
                src: me,
                auth: me,
                handle: handles::GET_RESOURCE,
                reply_to: handle,
                ..Header::default()
            };
            out.push(&h, &data);
        }
        let len = chunk_len(size, chunk);
        self.asks.push(Ask { handle, sha256, chunk, len, waiters: alloc::vec![waiter] });
        None
    }

    /// A fresh handle (never a fixed one).
    fn handle(&mut self) -> u32 {
        let h = self.next;
        self.next = self.next.checked_add(1).unwrap_or(handles::FIRST_DYNAMIC);
        h
    }

    /// A frame from the parent to one of our handles: the reply to an
    /// ask, for every waiter. False when the handle is not an ask's.
    pub fn on_reply(&mut self, m: Message, kids: &mut Children, out: &mut Outbox, poller: &Poller) -> bool {
        let Some(i) = self.asks.iter().position(|a| a.handle == m.header.handle) else { return false };
        let ask = self.asks.swap_remove(i);
        // An error goes on as it came (encoded): the agent needs no
        // decoder for it.
        let error;
        // A chunk the master deflated (a put with `--compress`): inflated
        // no further than the chunk and its length prefix could be.
        let inflated;
        let data = match m.header.flags {
            FLAG_COMPRESSED => match crate::proto::compress::decompress(&m.data, ask.len + 10) {
                Some(d) => {
                    inflated = d;
                    &inflated[..]
                }
                None => &[][..],
            },
            _ => &m.data[..],
        };
        let plain_or_deflated = matches!(m.header.flags, 0 | FLAG_COMPRESSED);
        let r = if m.header.flags == FLAG_ERROR {
            Err(&m.data[..])
        } else {
            match postcard::take_from_bytes::<u64>(data) {
                Ok((n, rest)) if plain_or_deflated && n == ask.len as u64 && rest.len() == ask.len => Ok(rest),
                _ => {
                    error = encode(&RemoteError::new(ErrorKind::Protocol, "resource chunk of the wrong size"));
                    Err(&error[..])
                }
            }
        };
        let fetches = &self.fetches;
        let shared = |w: &Waiter| match w {
            Waiter::Down { .. } => true,
            Waiter::Fetch(id) => fetches.iter().any(|f| f.id == *id && f.feed.is_some()),
        };
        // Cached (a copy: the frame's buffer may be a larger one reused)
        // only when it is for more than this agent's own fetch; else each
        // waiter takes it from the frame.
        if let (Ok(d), true) = (r, ask.waiters.iter().any(shared)) {
            self.insert(ask.sha256, ask.chunk, Rc::new(d.to_vec()));
        }
        for w in ask.waiters {
            match w {
                Waiter::Down { dst, reply_to } => reply_down(kids, poller, out.id(), dst, reply_to, r),
                Waiter::Fetch(id) => {
                    let Some(i) = self.fetches.iter().position(|f| f.id == id) else { continue };
                    match r {
                        Ok(d) => self.written(i, ask.chunk, d, out),
                        Err(e) => self.fail_with(i, e, out),
                    }
                }
            }
        }
        true
    }

    /// Caches a chunk, evicting the least recently used ones beyond the
    /// budget.
    fn insert(&mut self, sha256: [u8; 32], chunk: u32, data: Rc<Vec<u8>>) {
        let cost = data.len() + 64;
        if cost > CACHE_BYTES {
            return;
        }
        while self.cached + cost > CACHE_BYTES {
            let Some(i) = (0..self.cache.len()).min_by_key(|&i| self.cache[i].used) else { break };
            let old = self.cache.swap_remove(i);
            self.cached -= old.data.len() + 64;
        }
        self.clock += 1;
        self.cached += cost;
        self.cache.push(Cached { sha256, chunk, data, used: self.clock });
    }

    // ---- this agent's own fetches ---------------------------------------

    /// `fetch_resource` (the call `call`): answered at once if
    /// `res-<sha256>` is already in the cache directory with that hash,
    /// else when the fetch ends (see the module docs).
    pub fn fetch(&mut self, call: Header, a: FetchArgs, out: &mut Outbox) {
        self.parent = a.parent;
        let r = a.resource;
        let commit = a.dest.as_ref().map(|d| d.commit.clone());
        let progress = a.dest.as_ref().map_or(0, |d| d.progress);
        let (fd, tmp) = match (&a.dest, &self.dir) {
            // A put: beside its destination, whatever the hash (the file
            // there is to be replaced).
            (Some(d), _) => match super::util::create_temp_beside(&d.path, u64::from(self.handle())) {
                Ok((fd, tmp)) => (fd, Some((tmp, d.path.to_vec()))),
                Err(e) => return out.reply_error(&call, e),
            },
            (None, Some(dir)) => {
                let mut path = dir.clone();
                path.extend_from_slice(b"res-");
                for b in r.sha256 {
                    path.push(b"0123456789abcdef"[usize::from(b >> 4)]);
                    path.push(b"0123456789abcdef"[usize::from(b & 15)]);
                }
                if super::files::sha256_file(&path).is_ok_and(|h| h == r.sha256) {
                    return out.reply(&call, Ok(ByteBuf::from(path)));
                }
                let serial = u64::from(self.handle());
                match super::util::create_temp_beside(&path, serial) {
                    Ok((fd, tmp)) => (fd, Some((tmp, path))),
                    Err(e) => return out.reply_error(&call, e),
                }
            }
            (None, None) => match rustix::fs::memfd_create(c"mito-resource", rustix::fs::MemfdFlags::CLOEXEC) {
                Ok(fd) => (fd, None),
                Err(e) => return out.reply_error(&call, os_error(e, "memfd_create", b"")),
            },
        };
        let id = self.handle();
        let f = Fetch {
            id,
            call,
            sha256: r.sha256,
            size: r.size,
            fd,
            tmp,
            commit,
            progress,
            feed: None,
            hash: Sha256::new(),
            hashed: 0,
            next: 0,
            got: 0,
        };
        self.fetches.push(f);
        self.pump(self.fetches.len() - 1, out);
    }

    /// `ExecOp::SendResource` for `caller`'s command `stream`: the resource
    /// `sha256` (`size` bytes) fetched from `parent` (or this cache) into a
    /// memfd, then handed out by [`Resources::take_fed`].
    pub fn feed(&mut self, (caller, stream): (u32, u32), sha256: &[u8], size: u64, parent: u32, out: &mut Outbox) {
        let fd = rustix::fs::memfd_create(c"mito-feed", rustix::fs::MemfdFlags::CLOEXEC);
        let (Ok(sha256), Ok(fd), true) = (<[u8; 32]>::try_from(sha256), fd, size <= CACHE_BYTES as u64) else {
            return self.fed.push((caller, stream, None));
        };
        self.parent = parent;
        let id = self.handle();
        let call = Header::default();
        let feed = Some((caller, stream));
        let hash = Sha256::new();
        let f = Fetch {
            id,
            call,
            sha256,
            size,
            fd,
            tmp: None,
            commit: None,
            progress: 0,
            feed,
            hash,
            hashed: 0,
            next: 0,
            got: 0,
        };
        self.fetches.push(f);
        self.pump(self.fetches.len() - 1, out);
    }

    /// The feeds done since last asked, for the commands' stdin.
    pub fn take_fed(&mut self) -> Vec<(u32, u32, Option<Vec<u8>>)> {
        core::mem::take(&mut self.fed)
    }

    /// Asks for the next chunks of fetch `i`, up to [`PIPELINE`] under
    /// way; writes those found cached; ends the fetch when all are in.
    fn pump(&mut self, i: usize, out: &mut Outbox) {
        loop {
            let f = &mut self.fetches[i];
            let n = chunks(f.size);
            if f.got == n {
                return self.finish(i, out);
            }
            if f.next == n || f.next - f.got >= PIPELINE {
                return;
            }
            let (id, sha256, size, chunk) = (f.id, f.sha256, f.size, f.next);
            f.next += 1;
            // `want` does not touch the fetches: `i` stays this one.
            if let Some(d) = self.want(sha256, chunk, size, out.id(), Waiter::Fetch(id), out) {
                if let Err(e) = self.write(i, chunk, &d, out) {
                    return self.fail(i, e, out);
                }
            }
        }
    }

    /// Chunk `chunk` of fetch `i` arrived: written, then more asked for.
    fn written(&mut self, i: usize, chunk: u32, data: &[u8], out: &mut Outbox) {
        match self.write(i, chunk, data, out) {
            Ok(()) => self.pump(i, out),
            Err(e) => self.fail(i, e, out),
        }
    }

    /// Writes chunk `chunk` of fetch `i` at its place (and tells a put's
    /// caller: its progress).
    fn write(&mut self, i: usize, chunk: u32, mut data: &[u8], out: &mut Outbox) -> Result<(), RemoteError> {
        let f = &mut self.fetches[i];
        // Chunks come in order from one parent (almost always): hashed as
        // they come, the file need not be read again at the end.
        if f.hashed == chunk {
            f.hash.update(data);
            f.hashed += 1;
        } else {
            f.hashed = u32::MAX;
        }
        // A put leaves a hole for a chunk of zeros, as a streamed put does
        // (its commit sets the length).
        if f.commit.is_some() && crate::core::num::all_zero(data) {
            data = &[];
        }
        let mut at = u64::from(chunk) * u64::from(CHUNK);
        while !data.is_empty() {
            match rustix::io::pwrite(&f.fd, data, at) {
                Ok(n) => {
                    data = &data[n..];
                    at += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(os_error(e, "write", f.tmp.as_ref().map_or(b"memfd", |t| &t.0[..]))),
            }
        }
        f.got += 1;
        if f.progress != 0 {
            let me = out.id();
            out.push(&Header { dst: f.call.src, src: me, auth: me, handle: f.progress, ..Header::default() }, &[]);
        }
        Ok(())
    }

    /// Every chunk of fetch `i` is written: its hash is checked, the file
    /// made executable and renamed into place, the call answered with its
    /// path.
    fn finish(&mut self, i: usize, out: &mut Outbox) {
        let f = self.fetches.swap_remove(i);
        let mut path = Vec::new();
        match &f.tmp {
            Some((tmp, _)) => path.extend_from_slice(tmp),
            None => {
                path.extend_from_slice(b"/proc/");
                push_decimal(&mut path, u64::from(rustix::process::getpid().as_raw_nonzero().get() as u32));
                path.extend_from_slice(b"/fd/");
                push_decimal(&mut path, rustix::fd::AsRawFd::as_raw_fd(&f.fd) as u64);
            }
        }
        let whole =
            if f.hashed == chunks(f.size) { Ok(f.hash.clone().finish()) } else { super::files::sha256_file(&path) };
        let r = whole.and_then(|h| {
            if h != f.sha256 {
                return Err(RemoteError::new(ErrorKind::Protocol, "the resource's sha256 does not match"));
            }
            if f.feed.is_some() {
                return Ok(());
            }
            if let (Some(c), Some((tmp, dest))) = (&f.commit, &f.tmp) {
                super::files::commit_into(f.fd.as_fd(), f.size, c, tmp, dest)?;
                path.clone_from(dest);
                return Ok(());
            }
            let mode = rustix::fs::Mode::from_bits_truncate(0o700);
            rustix::fs::fchmod(f.fd.as_fd(), mode).map_err(|e| os_error(e, "chmod", &path))?;
            if let Some((tmp, dest)) = &f.tmp {
                rustix::fs::rename(&tmp[..], &dest[..]).map_err(|e| os_error(e, "rename", dest))?;
                path.clone_from(dest);
            }
            Ok(())
        });
        if let Some((caller, stream)) = f.feed {
            let mut data = alloc::vec![0u8; f.size as usize];
            let read = r.is_ok() && rustix::io::pread(&f.fd, &mut data, 0).is_ok_and(|n| n == data.len());
            return self.fed.push((caller, stream, read.then_some(data)));
        }
        match r {
            Ok(()) => {
                out.reply(&f.call, Ok(ByteBuf::from(path)));
                if f.tmp.is_none() {
                    self.kept.push(f.fd);
                }
            }
            Err(e) => {
                discard(&f);
                out.reply_error(&f.call, e);
            }
        }
    }

    /// Fetch `i` failed with `e`: its file goes, the call gets `e`.
    fn fail(&mut self, i: usize, e: RemoteError, out: &mut Outbox) {
        self.fail_with(i, &encode(&e), out);
    }

    /// Fetch `i` failed with the encoded error `e` (from upstream).
    fn fail_with(&mut self, i: usize, e: &[u8], out: &mut Outbox) {
        let f = self.fetches.swap_remove(i);
        discard(&f);
        if let Some((caller, stream)) = f.feed {
            return self.fed.push((caller, stream, None));
        }
        let me = out.id();
        let h = Header { flags: FLAG_ERROR, dst: f.call.src, src: me, auth: me, handle: f.call.reply_to, ..f.call };
        if h.handle != 0 {
            out.push(&h, e);
        }
    }

    /// On the way out: unfinished fetches leave no temporary files.
    pub fn discard_all(&mut self) {
        for f in self.fetches.drain(..) {
            discard(&f);
        }
    }
}

/// Removes a fetch's temporary file.
fn discard(f: &Fetch) {
    if let Some((tmp, _)) = &f.tmp {
        let _ = rustix::fs::unlink(&tmp[..]);
    }
}

/// An error encoded as a reply's payload.
fn encode(e: &RemoteError) -> Vec<u8> {
    postcard::to_allocvec(e).unwrap_or_default()
}

/// A chunk (or an encoded error) to `dst`'s `reply_to`, down the child
/// stream that leads there (nothing if it is gone meanwhile).
fn reply_down(kids: &mut Children, poller: &Poller, me: u32, dst: u32, reply_to: u32, r: Result<&[u8], &[u8]>) {
    let Some(slot) = kids.next_hop(dst) else { return };
    let h = Header { dst, src: me, auth: me, handle: reply_to, ..Header::default() };
    match r {
        // The chunk after its postcard length prefix, built in place: one
        // copy per chunk served (perf: a fresh 1 MiB encoding and a copy of
        // it into the stream's buffer were most of a hop's time serving
        // puts from its cache).
        Ok(d) => {
            let mut prefix = [0u8; 10];
            let p = postcard::to_slice(&(d.len() as u64), &mut prefix).map_or(&[][..], |p| &p[..]);
            kids.send_down_parts(slot, &h, p, d, poller);
        }
        Err(e) => kids.send_down(slot, &Header { flags: FLAG_ERROR, ..h }, e, poller),
    }
}
