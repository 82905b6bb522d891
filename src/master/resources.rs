//! The importer in the master: resources registered with
//! [`Router::register_resource`] / [`Router::register_resource_path`],
//! grants ([`Context::grant`]), the server that answers GET_RESOURCE, and
//! [`Context::fetch_resource`] (ARCHITECTURE.md, "The importer").
//!
//! A context may fetch a resource only once the master granted it: the
//! grant goes first to every hop on the context's path (a small control
//! frame each, so a hop has it before anything the master sends after it
//! reaches the context: one FIFO stream per link), then into the master's
//! own table. A request is served only for a context granted that hash,
//! from that context or a hop on its path; anything else, registered or
//! not, is refused with `NotPermitted` (a context learns nothing of what
//! exists).
//!
//! The requests are checked where they arrive (the broker, or a caller
//! reading its own replies: cheap, no I/O), then served by one thread of
//! their own, so reading a file and sending 1 MiB chunks never holds up the
//! broker. A path-backed resource is hashed once when registered and read
//! with `pread` when served: a big file is not held in memory, and a file
//! changed since is a hash mismatch at the receiver.
//!
//! [`Context::put`] to a context behind a hop goes through here too
//! ([`Context::put_through_hops`]): the file is registered and granted for
//! that put only (leases, counted, so concurrent puts of one file share
//! them), fetched by the destination straight into place, and the entry,
//! its open file and the grants (at the hops too) go when the last put
//! using them ends. So puts leave nothing behind in the master, and the
//! hops keep only the chunks in their bounded caches: the same file put
//! again behind the same hop is served from there.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::context::{disconnected, path_bytes, Context};
use super::error::CallError;
use super::transfer::{local, Digest, HashKind, Progress, TransferError, TransferStats};
use super::Router;
use crate::core::router::RouterTable;
use crate::proto::functions::Commit;
use crate::proto::resource::{chunk_len, chunks, FetchArgs, FetchResource, GetResource, Grant, PutTo, Resource, CHUNK};
use crate::proto::{handles, ErrorKind, Header, Message, RemoteError, FLAG_ERROR, MASTER_ID};

/// Requests waiting for the server, at most; beyond, a request is refused
/// (honest requesters keep a few under way each: only a flood gets here).
const QUEUE: usize = 1024;

/// How long the server waits for room to send one chunk: a context that
/// stopped reading holds the server (and other requesters) up no longer.
/// A chunk not sent in time is answered with an error instead (a small
/// control frame, which never waits), so the hop that asked never waits
/// for ever on a reply that will not come.
const SEND_WAIT: Duration = Duration::from_secs(30);

/// What the importer counted in this router (for measurements and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceStats {
    /// GET_RESOURCE requests that reached the master.
    pub requests: u64,
    /// Of those, refused (not granted, unknown, malformed, too many).
    pub refused: u64,
    /// Chunk bytes sent.
    pub bytes_served: u64,
    /// Resources held now (registered, or in use by a put).
    pub resources: u64,
    /// Grants held now (given by the program, or in use by a put).
    pub grants: u64,
}

/// Where a resource's bytes are.
#[derive(Clone, Debug)]
enum Body {
    Bytes(Arc<Vec<u8>>),
    File(Arc<std::fs::File>),
}

/// A resource in the store.
#[derive(Debug)]
struct Entry {
    resource: Resource,
    body: Body,
    /// Registered by the program: kept for the router's life.
    registered: bool,
    /// Puts using it now: an entry only puts use goes with the last one.
    leases: u32,
    /// Chunks go deflated where that saves an eighth (a put with
    /// `CopyOptions::compress` uses it).
    compress: bool,
}

/// The master's resources, grants and server (one per router).
#[derive(Debug, Default)]
pub(crate) struct Store {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    grants: Mutex<HashSet<(u32, [u8; 32])>>,
    /// Grants puts hold now, counted: each goes (at the hops too) with the
    /// last put holding it.
    leased: Mutex<HashMap<(u32, [u8; 32]), u32>>,
    /// Whether the server runs (started with the first resource). Its
    /// queue's sender lives in the table's handler only, so the server
    /// ends with the table.
    started: Mutex<bool>,
    requests: AtomicU64,
    refused: AtomicU64,
    bytes_served: AtomicU64,
    /// SHA-256 of files put behind hops, by what `stat` says of them.
    digests: Mutex<HashMap<FileKey, [u8; 32]>>,
}

/// What identifies a file's content without reading it, as git's index
/// does: device, inode, size, mtime and ctime (to the nanosecond). A write
/// changes ctime, which no user can set back, so a file rewritten with its
/// size and mtime restored gets a new key. And should a key ever match
/// content it was not computed from, the hops check every chunk they
/// fetch against the digest and fail the put: never a wrong file.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct FileKey([i64; 7]);

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey([
            meta.dev() as i64,
            meta.ino() as i64,
            meta.size() as i64,
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ])
    }
}

/// Digests remembered at most (then forgotten all at once: a simple bound).
const MAX_DIGESTS: usize = 4096;

impl Store {
    /// Registers `body` as `resource` (for the router's life); starts the
    /// server the first time.
    fn add(self: &Arc<Self>, table: &Arc<RouterTable>, resource: Resource, body: Body) -> std::io::Result<Resource> {
        self.start(table)?;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(&resource.sha256) {
            // In use by a put: from now on served from what the program
            // registered (the put's file may change once it is done).
            Some(e) => {
                e.body = body;
                e.registered = true;
            }
            None => {
                let e = Entry { resource: resource.clone(), body, registered: true, leases: 0, compress: false };
                entries.insert(resource.sha256, e);
            }
        }
        Ok(resource)
    }

    /// `body` as `resource` for one put: kept until the lease is dropped
    /// (and as long as other puts or a registration hold it).
    fn lease(
        self: &Arc<Self>,
        table: &Arc<RouterTable>,
        resource: &Resource,
        body: Body,
        compress: bool,
    ) -> std::io::Result<Lease> {
        self.start(table)?;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let e = entries.entry(resource.sha256).or_insert(Entry {
            resource: resource.clone(),
            body,
            registered: false,
            leases: 0,
            compress: false,
        });
        e.leases += 1;
        // Any put that asks for it has every chunk from now on deflated.
        e.compress |= compress;
        Ok(Lease { store: self.clone(), sha256: resource.sha256 })
    }

    /// Starts the server, the first time.
    fn start(self: &Arc<Self>, table: &Arc<RouterTable>) -> std::io::Result<()> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if !*started {
            let (tx, rx) = sync_channel(QUEUE);
            let (store, weak) = (self.clone(), Arc::downgrade(table));
            std::thread::Builder::new().name("mito-resources".into()).spawn(move || serve(&store, &weak, rx))?;
            let store = self.clone();
            table.set_resource_handler(Box::new(move |t, m| store.accept(t, &tx, m)));
            *started = true;
        }
        Ok(())
    }

    /// A GET_RESOURCE at the master (see the module docs): queued for the
    /// server if granted, else the error to reply.
    fn accept(
        &self,
        table: &RouterTable,
        queue: &SyncSender<(Header, GetResource)>,
        m: Message,
    ) -> Result<(), RemoteError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let refuse = |what: &str| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(RemoteError::new(ErrorKind::NotPermitted, what))
        };
        let Ok(r) = postcard::from_bytes::<GetResource>(&m.data) else { return refuse("malformed resource request") };
        let size = self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(&r.sha256).map(|e| e.resource.size);
        let key = (r.for_context, r.sha256);
        let granted = self.grants.lock().unwrap_or_else(PoisonError::into_inner).contains(&key)
            || self.leased.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&key);
        // The requester is the context itself or a hop on its path.
        let on_path = table.context(r.for_context).is_some_and(|c| c.path().iter().any(|p| p.id == m.header.src));
        match size {
            Some(size) if granted && on_path && r.chunk < chunks(size) && m.header.reply_to != 0 => {}
            _ => return refuse("resource not granted"),
        }
        match queue.try_send((m.header, r)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => refuse("too many resource requests"),
        }
    }
}

/// A put's hold on a store entry (see [`Store::lease`]); dropped, the
/// entry goes if nothing else holds it (and with it, its open file).
struct Lease {
    store: Arc<Store>,
    sha256: [u8; 32],
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut entries = self.store.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(&self.sha256) {
            e.leases = e.leases.saturating_sub(1);
            if e.leases == 0 && !e.registered {
                entries.remove(&self.sha256);
            }
        }
    }
}

/// A put's grant (see [`Context::lease_grant`]); dropped, the grant goes
/// (at the hops too) if no other put holds it and the program did not
/// grant it itself.
struct GrantLease<'a> {
    ctx: &'a Context,
    resource: &'a Resource,
}

impl Drop for GrantLease<'_> {
    fn drop(&mut self) {
        let store = &self.ctx.state.resources;
        let key = (self.ctx.id(), self.resource.sha256);
        let mut leased = store.leased.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(n) = leased.get_mut(&key) else { return };
        *n = n.saturating_sub(1);
        if *n == 0 {
            leased.remove(&key);
            // Under the lock: a put that leases it again now sends its
            // grant after this revoke, in order on every link.
            if !store.grants.lock().unwrap_or_else(PoisonError::into_inner).contains(&key) {
                let _ = self.ctx.send_grants(self.resource, true);
            }
        }
    }
}

/// SHA-256 (the importer's resource id) and length of everything `file`
/// holds now.
fn sha256_file(file: &std::fs::File) -> std::io::Result<([u8; 32], u64)> {
    match super::transfer::hash_file(file, HashKind::Sha256)? {
        (Digest::Sha256(d), size) => Ok((d, size)),
        (Digest::Xxh3_128(_), _) => Err(std::io::Error::other("not a SHA-256 digest")),
    }
}

/// The server thread: one chunk per request, read and sent; ends with the
/// router's table.
fn serve(store: &Store, table: &Weak<RouterTable>, rx: Receiver<(Header, GetResource)>) {
    while let Ok((h, r)) = rx.recv() {
        let Some(table) = table.upgrade() else { return };
        let entry = (store.entries.lock().unwrap_or_else(PoisonError::into_inner))
            .get(&r.sha256)
            .map(|e| (e.resource.clone(), e.body.clone(), e.compress));
        let reply = Header { dst: h.src, src: MASTER_ID, auth: MASTER_ID, handle: h.reply_to, ..Header::default() };
        let mut flags = 0;
        let chunk = entry.ok_or_else(|| RemoteError::new(ErrorKind::NotPermitted, "resource not granted")).and_then(
            |(res, body, compress)| {
                let len = chunk_len(res.size, r.chunk);
                let mut prefix = [0u8; 10];
                let p = postcard::to_slice(&(len as u64), &mut prefix).map_or(&[][..], |p| &p[..]);
                let mut data = Vec::with_capacity(p.len() + len);
                data.extend_from_slice(p);
                let at = u64::from(r.chunk) * u64::from(CHUNK);
                match body {
                    Body::Bytes(b) => data.extend_from_slice(&b[at as usize..at as usize + len]),
                    Body::File(f) => {
                        data.resize(p.len() + len, 0);
                        f.read_exact_at(&mut data[p.len()..], at)
                            .map_err(|e| RemoteError::os(e.raw_os_error().unwrap_or(0), res.name.clone()))?;
                    }
                }
                // The hop inflates it (no further than the chunk) before
                // checking and caching it.
                if let Some(z) = compress.then(|| crate::proto::compress::compress(&data)).flatten() {
                    flags = crate::proto::FLAG_COMPRESSED;
                    data = z;
                }
                Ok((data, len))
            },
        );
        let sent = match chunk {
            Ok((data, len)) => {
                match table.send_parts(&Header { flags, ..reply }, &data, Some(Instant::now() + SEND_WAIT)) {
                    Ok(()) => {
                        store.bytes_served.fetch_add(len as u64, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(d) => Err(RemoteError::os(nix::errno::Errno::ETIMEDOUT as i32, d.reason)),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(mut e) = sent {
            if e.message.len() > 1024 {
                e.message = "the resource chunk could not be sent".into();
            }
            if let Ok(data) = postcard::to_allocvec(&e) {
                let m = Message { header: Header { flags: FLAG_ERROR, ..reply }, data };
                let _ = table.send_control(&m);
            }
        }
    }
}

impl Router {
    /// Registers `bytes` as a resource named `name` (for people; contexts
    /// ask for it by hash). Returns what a context needs to fetch it
    /// ([`Context::fetch_resource`]), which may also be passed to a
    /// function as an argument.
    pub fn register_resource(&self, name: &str, bytes: Vec<u8>) -> std::io::Result<Resource> {
        let r = Resource { name: name.into(), sha256: crate::core::sha256::digest(&bytes), size: bytes.len() as u64 };
        self.state.resources.add(&self.state.table, r, Body::Bytes(Arc::new(bytes)))
    }

    /// Registers the file at `path` as a resource named `name`: hashed
    /// now, read when served (not held in memory). A file changed after
    /// this fails the fetch with a hash mismatch at the receiver.
    pub fn register_resource_path(&self, name: &str, path: impl AsRef<Path>) -> std::io::Result<Resource> {
        let file = std::fs::File::open(path)?;
        let (sha256, size) = sha256_file(&file)?;
        let r = Resource { name: name.into(), sha256, size };
        self.state.resources.add(&self.state.table, r, Body::File(Arc::new(file)))
    }

    /// What the importer has counted in this router so far.
    pub fn resource_stats(&self) -> ResourceStats {
        let s = &self.state.resources;
        ResourceStats {
            requests: s.requests.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            bytes_served: s.bytes_served.load(Ordering::Relaxed),
            resources: s.entries.lock().unwrap_or_else(PoisonError::into_inner).len() as u64,
            grants: (s.grants.lock().unwrap_or_else(PoisonError::into_inner).len()
                + s.leased.lock().unwrap_or_else(PoisonError::into_inner).len()) as u64,
        }
    }
}

impl Context {
    /// Lets this context fetch `resource`: every hop on its path learns
    /// the grant (before anything sent after this reaches the context),
    /// then the master. Without it, the context's requests are refused.
    pub fn grant(&self, resource: &Resource) -> Result<(), CallError> {
        self.send_grants(resource, false)?;
        let mut grants = self.state.resources.grants.lock().unwrap_or_else(PoisonError::into_inner);
        grants.insert((self.id(), resource.sha256));
        Ok(())
    }

    /// Sends the grant of `resource` to this context (or its revocation)
    /// to every hop on its path.
    fn send_grants(&self, resource: &Resource, revoke: bool) -> Result<(), CallError> {
        let path = self.shared.path();
        let hops = &path[..path.len().saturating_sub(1)];
        for (i, hop) in hops.iter().enumerate() {
            let parent = if i == 0 { MASTER_ID } else { hops[i - 1].id };
            let g = Grant { context: self.id(), sha256: resource.sha256, size: resource.size, parent, revoke };
            let data = postcard::to_allocvec(&g).map_err(|e| CallError::Encode {
                context: self.name().into(),
                function: "grant".into(),
                detail: e.to_string(),
            })?;
            let msg = Message::new(hop.id, MASTER_ID, handles::GRANT_RESOURCE, 0, data);
            self.state.table.send_control(&msg).map_err(|d| disconnected(&self.shared, "grant", d.reason))?;
        }
        Ok(())
    }

    /// Grants `resource` to this context for one put (see [`GrantLease`]).
    fn lease_grant<'a>(&'a self, resource: &'a Resource) -> Result<GrantLease<'a>, CallError> {
        let store = &self.state.resources;
        let key = (self.id(), resource.sha256);
        let mut leased = store.leased.lock().unwrap_or_else(PoisonError::into_inner);
        let n = leased.get(&key).copied().unwrap_or(0);
        if n == 0 {
            self.send_grants(resource, false)?;
        }
        leased.insert(key, n + 1);
        Ok(GrantLease { ctx: self, resource })
    }

    /// This context is a hop whose command `input` runs stage0 of a context
    /// behind it, which asked for `agent` (of `arch`; `gzip`: the gz form):
    /// the bytes are registered (once per form and hash: the master keeps
    /// them, as it keeps its agents), granted to the hop itself, and the
    /// hop appends them to the command's stdin from its importer cache, or
    /// fetched from its parent first. So they cross the first link once
    /// for any number of such contexts behind this hop.
    pub(super) fn serve_agent_to(
        &self,
        input: &super::process::ProcessInput,
        arch: &str,
        agent: &crate::connect::agents::Chosen,
        gzip: bool,
    ) -> Result<(), String> {
        let bytes = agent.bytes(gzip);
        let resource = Resource {
            name: format!("agent-{arch}-{}{}", agent.sha256(), if gzip { ".gz" } else { "" }),
            sha256: crate::core::sha256::digest(&bytes),
            size: bytes.len() as u64,
        };
        let store = &self.state.resources;
        let known = store.entries.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&resource.sha256);
        if !known {
            let body = Body::Bytes(Arc::new(bytes));
            store.add(&self.state.table, resource.clone(), body).map_err(|e| e.to_string())?;
        }
        self.grant(&resource).map_err(|e| e.to_string())?;
        let parent = self.shared.parent.as_ref().map_or(MASTER_ID, |p| p.id);
        input.send_resource(&resource, parent).map_err(|e| e.to_string())
    }

    /// [`Context::put`] of the regular file `input` (opened from `src`,
    /// `meta` its metadata then) to a context behind a hop: registered and
    /// granted for this put only, fetched by the context from its parent
    /// (whose cache keeps it: put again to another context behind that
    /// hop, it does not cross the first link again) into a temporary file
    /// beside `remote`, its hash checked there, then given `meta`'s mode,
    /// mtime and owner and renamed into place, as a streamed put.
    pub(super) fn put_through_hops(
        &self,
        src: &Path,
        input: std::fs::File,
        meta: &std::fs::Metadata,
        remote: &Path,
        compress: bool,
        progress: Progress<'_>,
    ) -> Result<TransferStats, TransferError> {
        use std::os::unix::fs::MetadataExt;
        let t0 = Instant::now();
        let store = &self.state.resources;
        // The same file put to many contexts behind hops, one after
        // another, is hashed once, not once per context.
        let key = FileKey::of(meta);
        let known = store.digests.lock().unwrap_or_else(PoisonError::into_inner).get(&key).copied();
        let (sha256, size) = match known {
            Some(d) => (d, meta.len()),
            None => {
                let (sha256, size) = sha256_file(&input).map_err(local(src))?;
                if size != meta.len() {
                    let (context, path) = (self.name().into(), src.into());
                    return Err(TransferError::SourceChanged { context, path, expected: meta.len(), read: size });
                }
                // Kept only if the file did not change while it was read.
                if input.metadata().is_ok_and(|m| FileKey::of(&m) == key) {
                    let mut digests = store.digests.lock().unwrap_or_else(PoisonError::into_inner);
                    if digests.len() >= MAX_DIGESTS {
                        digests.clear();
                    }
                    digests.insert(key, sha256);
                }
                (sha256, size)
            }
        };
        let resource = Resource { name: src.to_string_lossy().into_owned(), sha256, size };
        let body = Body::File(Arc::new(input));
        let _entry = store.lease(&self.state.table, &resource, body, compress).map_err(local(src))?;
        let _grant = self.lease_grant(&resource)?;
        let commit = Commit {
            digest: ByteBuf::from(&sha256[..]),
            mode: Some(meta.mode() & 0o7777),
            mtime: Some((meta.mtime(), meta.mtime_nsec() as u32)),
            owner: Some((meta.uid(), meta.gid())),
        };
        // Each chunk written there is reported on a mailbox of its own,
        // read here (the caller's progress runs on its thread) while a
        // scoped thread waits for the reply and then closes it.
        let table = &self.state.table;
        let (handle, chunks_done) = table.open_mailbox(self.id(), false);
        let dest = Some(PutTo { path: path_bytes(remote), commit, progress: handle });
        let parent = self.shared.parent.as_ref().map_or(MASTER_ID, |p| p.id);
        let pending = match self.call_async::<FetchResource>(&FetchArgs { resource: resource.clone(), parent, dest }) {
            Ok(p) => p,
            Err(e) => {
                table.close_mailbox(handle);
                return Err(e.into());
            }
        };
        let (mut reported, mut chunk) = (0u64, 0u32);
        std::thread::scope(|s| {
            let reply = s.spawn(|| {
                let r = pending.wait();
                table.close_mailbox(handle);
                r
            });
            while let Ok(Ok(_)) = chunks_done.get(None) {
                let n = chunk_len(size, chunk) as u64;
                chunk += 1;
                reported += n;
                progress(n);
            }
            reply.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        if reported < size {
            progress(size - reported);
        }
        // The importer checks SHA-256 (its resource id) on every hop.
        let checksum = super::transfer::Digest::Sha256(sha256);
        Ok(TransferStats { bytes: size, checksum, elapsed: t0.elapsed(), changed: true })
    }

    /// Grants `resource` to this context and has it fetch it (from its
    /// parent, which serves it from its cache or asks its own): the path
    /// of the file holding it there (mode 0700), once its hash checked.
    /// Fetched again, it is found there and nothing crosses the links.
    pub fn fetch_resource(&self, resource: &Resource) -> Result<PathBuf, CallError> {
        self.grant(resource)?;
        let parent = self.shared.parent.as_ref().map_or(MASTER_ID, |p| p.id);
        let path = self.call::<FetchResource>(&FetchArgs { resource: resource.clone(), parent, dest: None })?;
        Ok(PathBuf::from(OsString::from_vec(path.into_vec())))
    }
}
