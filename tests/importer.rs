//! The importer (issue 15): resources registered in the master, fetched
//! by contexts through their hops (`Context::fetch_resource`), each hop
//! caching the chunks that pass through it, bounded, and serving only what
//! the master granted.
//!
//! Bytes on the first link are the master's count of what it sent on the
//! hop's stream (`Context::bytes_sent`), and what the master served
//! (`Router::resource_stats`). Every context has its own agent cache
//! directory, so no fetch finds a file another one left there.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{local_in, TempDir};
use mito::functions::Function;
use mito::proto::resource::{FetchArgs, FetchResource};
use mito::{CallError, Context, ErrorKind, LocalOptions, Resource, Router};

const MIB: u64 = 1 << 20;

/// `n` bytes no compressor shrinks.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::new();
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

/// A context behind `hop` with a cache directory of its own.
fn child(hop: &Context, dir: &TempDir, name: &str) -> Context {
    hop.local(local_in(&dir.path().join(format!("cache-{name}")))).expect("child behind the hop")
}

/// The hex sha256 of the file at `path` in `ctx`, by `sha256sum` there.
fn sha256sum(ctx: &Context, path: &Path) -> String {
    let out = ctx.exec(&[b"sha256sum".as_slice(), path.as_os_str().as_encoded_bytes()]).expect("sha256sum");
    assert_eq!(out.status.code, Some(0), "sha256sum: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The fetched file in `ctx` holds `want`'s bytes, and is executable.
fn check_fetched(ctx: &Context, path: &Path, want: &Resource) {
    assert_eq!(sha256sum(ctx, path), hex(&want.sha256), "{}: {}", ctx.name(), path.display());
    let st = ctx.stat(path).expect("stat");
    assert_eq!((st.size, st.mode & 0o777), (want.size, 0o700), "{}", path.display());
}

/// A field of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, CallError>) {
    match r {
        Err(CallError::Remote(e)) if e.kind == ErrorKind::NotPermitted => {}
        other => panic!("{what}: expected a NotPermitted error, got {other:?}"),
    }
}

#[test]
fn ten_contexts_behind_a_hop_fetch_a_resource_that_crosses_the_first_link_once() {
    let dir = TempDir::new("importer-ten");
    let router = Router::new().expect("router");
    let data = random_bytes(MIB as usize);
    let res = router.register_resource("blob", data.clone()).expect("register");
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let kids: Vec<Context> = (0..10).map(|i| child(&hop, &dir, &i.to_string())).collect();
    let before = hop.bytes_sent();
    // All at once: the hop asks once per chunk and the others wait on it.
    let paths: Vec<_> = std::thread::scope(|s| {
        let fetches: Vec<_> = kids.iter().map(|k| s.spawn(|| k.fetch_resource(&res))).collect();
        fetches.into_iter().map(|f| f.join().expect("thread").expect("fetch_resource")).collect()
    });
    let first_link = hop.bytes_sent() - before;
    eprintln!("first link: {first_link} bytes for 10 fetches of {} bytes", res.size);
    assert_eq!(router.resource_stats().bytes_served, MIB, "the master served the resource once");
    assert!(
        (MIB..MIB + 64 * 1024).contains(&first_link),
        "the first link carried {first_link} bytes: the resource once plus calls and grants"
    );
    for (k, p) in kids.iter().zip(&paths) {
        check_fetched(k, p, &res);
        assert!(p.file_name().is_some_and(|n| n.to_string_lossy() == format!("res-{}", hex(&res.sha256))));
    }
    assert_eq!(kids[3].read_file(&paths[3]).expect("read back"), data);
    // Fetched again: found in the context's cache directory, nothing asked.
    let before = hop.bytes_sent();
    assert_eq!(kids[0].fetch_resource(&res).expect("again"), paths[0]);
    assert!(hop.bytes_sent() - before < 4096);
    assert_eq!(router.resource_stats().bytes_served, MIB);
}

#[test]
fn a_direct_context_fetches_a_file_backed_resource_and_a_changed_file_fails_its_hash() {
    let dir = TempDir::new("importer-path");
    let router = Router::new().expect("router");
    let file = dir.path().join("helper.sh");
    // Three chunks and a bit: pipelined, the last one short.
    let mut body = b"#!/bin/sh\necho helper ran\nexit 0\n".to_vec();
    body.resize(3 * MIB as usize + 1000, b'#');
    std::fs::write(&file, &body).expect("write");
    let res = router.register_resource_path("helper", &file).expect("register");
    assert_eq!(res.size, body.len() as u64);
    let ctx = router.local(local_in(&dir.path().join("cache"))).expect("connect");
    let path = ctx.fetch_resource(&res).expect("fetch");
    check_fetched(&ctx, &path, &res);
    // A helper executable: it runs where it was fetched.
    let out = ctx.exec(&[path.as_os_str().as_encoded_bytes()]).expect("run the helper");
    assert_eq!(&out.stdout[..], b"helper ran\n");
    // Changed since it was registered: the receiver's hash check fails it.
    let changed = random_bytes(body.len());
    std::fs::write(&file, &changed).expect("rewrite");
    let other = router.local(local_in(&dir.path().join("cache-other"))).expect("connect");
    match other.fetch_resource(&res) {
        Err(CallError::Remote(e)) if e.kind == ErrorKind::Protocol && e.message.contains("sha256") => {}
        r => panic!("expected a hash mismatch, got {r:?}"),
    }
}

#[test]
fn the_hops_cache_survives_a_childs_death() {
    let dir = TempDir::new("importer-survives");
    let router = Router::new().expect("router");
    let res = router.register_resource("blob", random_bytes(2 * MIB as usize)).expect("register");
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let first = child(&hop, &dir, "first");
    let p = first.fetch_resource(&res).expect("first fetch");
    check_fetched(&first, &p, &res);
    assert_eq!(router.resource_stats().bytes_served, 2 * MIB);
    let pid = first.info().expect("info").pid;
    common::kill9(pid);
    assert!(common::wait_gone(pid, Duration::from_secs(5)).is_some(), "the first child is gone");
    let second = child(&hop, &dir, "second");
    let before = hop.bytes_sent();
    let p = second.fetch_resource(&res).expect("second fetch");
    check_fetched(&second, &p, &res);
    let first_link = hop.bytes_sent() - before;
    assert!(first_link < 16 * 1024, "served from the hop's cache, yet {first_link} bytes crossed the first link");
    assert_eq!(router.resource_stats().bytes_served, 2 * MIB, "the master served nothing more");
}

#[test]
fn the_hops_cache_is_bounded_and_evicted_chunks_are_fetched_again() {
    let dir = TempDir::new("importer-bounded");
    let router = Router::new().expect("router");
    // 120 MiB through a hop whose cache holds 64 MiB.
    let sizes = [40 * MIB; 3];
    let res: Vec<Resource> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| router.register_resource(&format!("r{i}"), random_bytes(n as usize)).expect("register"))
        .collect();
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let hop_pid = hop.connect_info().pid;
    let a = child(&hop, &dir, "a");
    for r in &res {
        let p = a.fetch_resource(r).expect("fetch");
        check_fetched(&a, &p, r);
    }
    let served = router.resource_stats().bytes_served;
    assert_eq!(served, 120 * MIB);
    let peak = status_kib(hop_pid, "VmHWM:");
    eprintln!("the hop's peak RSS after 120 MiB through it: {peak} KiB");
    assert!(peak < 100 << 10, "the hop's peak RSS is {peak} KiB: its cache is not bounded to 64 MiB");
    // The last one is cached; the first was evicted and comes again.
    let b = child(&hop, &dir, "b");
    let p = b.fetch_resource(&res[2]).expect("fetch the cached one");
    check_fetched(&b, &p, &res[2]);
    assert_eq!(router.resource_stats().bytes_served, served, "the last resource came from the hop's cache");
    let p = b.fetch_resource(&res[0]).expect("fetch the evicted one");
    check_fetched(&b, &p, &res[0]);
    assert!(router.resource_stats().bytes_served > served, "evicted chunks were fetched again");
}

#[test]
fn unregistered_and_ungranted_resources_are_refused_quickly() {
    let dir = TempDir::new("importer-refused");
    let router = Router::new().expect("router");
    let known = router.register_resource("known", random_bytes(1000)).expect("register");
    let made_up = Resource { name: "made-up".into(), sha256: [7; 32], size: 1000 };
    let direct = router.local(local_in(&dir.path().join("cache-direct"))).expect("direct");
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let behind = child(&hop, &dir, "behind");
    for ctx in [&direct, &behind] {
        let t0 = Instant::now();
        assert_refused("unregistered", ctx.fetch_resource(&made_up));
        // Asked without a grant (the call `fetch_resource` makes, alone).
        let parent = if ctx.id() == behind.id() { hop.id() } else { 0 };
        let args = FetchArgs { resource: known.clone(), parent, dest: None };
        assert_refused("ungranted", ctx.call::<FetchResource>(&args));
        assert!(t0.elapsed() < Duration::from_secs(2), "refusals take {:?}", t0.elapsed());
    }
    // Behind the hop, the ungranted request stopped at the hop: the master
    // saw only the direct context's two and the unregistered one behind.
    let stats = router.resource_stats();
    assert_eq!((stats.requests, stats.refused, stats.bytes_served), (3, 3, 0), "{stats:?}");
    assert!(!FetchResource::NAME.contains('.'), "a built-in's name");
}

#[test]
fn a_hostile_child_cannot_read_a_siblings_resource_nor_fill_the_hops_cache() {
    let dir = TempDir::new("importer-hostile");
    let router = Router::new().expect("router");
    let res = router.register_resource("secret", random_bytes(MIB as usize)).expect("register");
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let hop_pid = hop.connect_info().pid;
    let sibling = child(&hop, &dir, "sibling");
    // Granted to the sibling, not fetched: nothing of it is in the hop.
    sibling.grant(&res).expect("grant");
    let flood = 20_000;
    let thief = hop
        .local(LocalOptions {
            name: Some("thief".into()),
            sh: common::hostile_harness(),
            env: vec![
                ("MITO_HOSTILE".into(), "resource-thief".into()),
                ("MITO_HOSTILE_SIBLING".into(), sibling.id().to_string().into()),
                ("MITO_HOSTILE_SHA".into(), hex(&res.sha256).into()),
                ("MITO_HOSTILE_FLOOD".into(), flood.to_string().into()),
            ],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("the thief says hello");
    let rss0 = status_kib(hop_pid, "VmRSS:");
    let (sent0, stats0) = (hop.bytes_sent(), router.resource_stats());
    let t0 = Instant::now();
    thief.ping().expect("every request of the thief got its reply");
    let report = String::from_utf8(thief.read_file("/t/report").expect("report")).expect("text");
    eprintln!("thief: {report} in {:?}", t0.elapsed());
    assert_eq!(report, format!("refused={} served=0 other=0", flood + 2));
    let stats = router.resource_stats();
    assert_eq!(stats, stats0, "nothing went upstream from the hop");
    assert!(hop.bytes_sent() - sent0 < 64 * 1024, "the first link carried no resource");
    let rss = status_kib(hop_pid, "VmRSS:");
    assert!(rss < rss0 + 8 * 1024, "the hop's RSS grew from {rss0} KiB to {rss} KiB");
    // The sibling still gets what it was given.
    let p = sibling.fetch_resource(&res).expect("the sibling fetches");
    check_fetched(&sibling, &p, &res);
}

/// No directory the agent could run from (every candidate a noexec tmpfs,
/// in a private mount namespace): the agent runs from a memfd, and so does
/// what it fetches, a `/proc/<pid>/fd/<n>` path that works as a helper.
#[test]
fn an_agent_without_a_cache_directory_fetches_into_a_memfd() {
    if !common::is_root() {
        return common::skip_loudly(
            "an_agent_without_a_cache_directory_fetches_into_a_memfd",
            "a private mount namespace needs root",
        );
    }
    let dir = TempDir::new("importer-memfd");
    let sh = dir.path().join("noexec-sh");
    let script = r#"#!/bin/sh
exec unshare -m /bin/sh -c 'set -e
for d in /tmp /var/tmp /dev/shm; do mount -t tmpfs -o noexec tmpfs "$d"; done
mkdir -p /tmp/cache; export XDG_CACHE_HOME=/tmp/cache; unset XDG_RUNTIME_DIR
exec /bin/sh "$@"' sh "$@"
"#;
    std::fs::write(&sh, script).expect("write");
    std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let router = Router::new().expect("router");
    let mut body = b"#!/bin/sh\necho from a memfd\n".to_vec();
    body.resize(MIB as usize + 10, b'#');
    let res = router.register_resource("helper", body).expect("register");
    let ctx = router.local(LocalOptions { sh, ..LocalOptions::default() }).expect("connect");
    assert!(ctx.connect_info().exe.starts_with("/memfd:"), "the agent runs from {}", ctx.connect_info().exe);
    let path = ctx.fetch_resource(&res).expect("fetch");
    let want = format!("/proc/{}/fd/", ctx.connect_info().pid);
    assert!(path.to_string_lossy().starts_with(&want), "fetched into {}", path.display());
    assert_eq!(sha256sum(&ctx, &path), hex(&res.sha256));
    let out = ctx.exec(&[path.as_os_str().as_encoded_bytes()]).expect("run the helper");
    assert_eq!(&out.stdout[..], b"from a memfd\n", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Two hops deep: the lower hop asks the upper one, which asks the master
/// once; contexts behind either hop get it from the nearest cache.
#[test]
fn a_chain_of_hops_caches_at_every_level() {
    let dir = TempDir::new("importer-chain");
    let router = Router::new().expect("router");
    let res = router.register_resource("blob", random_bytes(3 * MIB as usize / 2)).expect("register");
    let upper = router.local(local_in(&dir.path().join("cache-upper"))).expect("upper hop");
    let lower = child(&upper, &dir, "lower");
    let deep: Vec<Context> = (0..3).map(|i| child(&lower, &dir, &format!("deep{i}"))).collect();
    let beside = child(&upper, &dir, "beside");
    let before = upper.bytes_sent();
    for ctx in deep.iter().chain([&beside, &lower]) {
        let p = ctx.fetch_resource(&res).expect("fetch");
        check_fetched(ctx, &p, &res);
    }
    let first_link = upper.bytes_sent() - before;
    assert_eq!(router.resource_stats().bytes_served, res.size, "the master served it once");
    assert!(first_link < res.size + 64 * 1024, "the first link carried {first_link} bytes");
}

/// `Context::put` to a context behind a hop goes through the importer: put
/// again to another context behind the same hop, the file comes from the
/// hop's cache, not across the first link; the copies are byte-identical
/// with put's mode and mtime; a changed file is sent again; a failed put
/// fails as a streamed one does; and the master keeps nothing of any put.
#[test]
fn a_file_put_again_behind_the_same_hop_does_not_cross_the_first_link_again() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("importer-put");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let (a, b) = (child(&hop, &dir, "a"), child(&hop, &dir, "b"));
    let src = dir.path().join("src.bin");
    let data = random_bytes(5 * MIB as usize);
    std::fs::write(&src, &data).expect("write");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mtime = std::time::SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    std::fs::File::options().write(true).open(&src).expect("open").set_modified(mtime).expect("mtime");
    let check = |dest: &Path, want: &[u8]| {
        assert!(std::fs::read(dest).expect("read the copy") == want, "{}: not the source's bytes", dest.display());
        let m = std::fs::metadata(dest).expect("meta");
        assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_600_000_000, 123_456_789));
    };

    let (dest_a, dest_b) = (dir.path().join("dest-a"), dir.path().join("dest-b"));
    let before = hop.bytes_sent();
    // Progress comes as the destination writes each chunk, as a streamed
    // put's comes with each chunk acknowledged.
    let (moved, calls) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u32));
    let first = a
        .put_with_progress(&src, &dest_a, &|n| {
            moved.set(moved.get() + n);
            calls.set(calls.get() + 1);
        })
        .expect("put to a");
    assert_eq!((moved.get(), calls.get()), (5 * MIB, 5), "progress: one report per chunk");
    let first_bytes = hop.bytes_sent() - before;
    assert_eq!((first.bytes, first.checksum), (5 * MIB, mito::Digest::Sha256(mito::core::sha256::digest(&data))));
    check(&dest_a, &data);
    let before = hop.bytes_sent();
    let second = b.put(&src, &dest_b).expect("put to b");
    let second_bytes = hop.bytes_sent() - before;
    eprintln!("first link: {first_bytes} bytes for the first put, {second_bytes} for the second");
    assert_eq!(second, mito::TransferStats { elapsed: second.elapsed, ..first.clone() });
    check(&dest_b, &data);
    assert!((5 * MIB..5 * MIB + 64 * 1024).contains(&first_bytes), "the first put carried {first_bytes} bytes");
    assert!(second_bytes < 8 * 1024, "the second put carried {second_bytes} bytes on the first link");
    let stats = router.resource_stats();
    assert_eq!(stats.bytes_served, 5 * MIB, "the master served the file once");
    assert_eq!((stats.resources, stats.grants), (0, 0), "the master keeps nothing of a finished put: {stats:?}");
    // The grant went with the put, at the hop too: asked again without
    // one, the hop refuses (the master sees nothing).
    let res = Resource { name: "src.bin".into(), sha256: mito::core::sha256::digest(&data), size: first.bytes };
    let args = FetchArgs { resource: res, parent: hop.id(), dest: None };
    assert_refused("after the put", b.call::<FetchResource>(&args));
    assert_eq!(router.resource_stats().requests, stats.requests, "the hop refused it");

    // Changed: a new hash, sent again.
    let changed = random_bytes(5 * MIB as usize);
    std::fs::write(&src, &changed).expect("rewrite");
    std::fs::File::options().write(true).open(&src).expect("open").set_modified(mtime).expect("mtime");
    let before = hop.bytes_sent();
    let third = b.put(&src, &dest_b).expect("put the changed file");
    assert_ne!(third.checksum, first.checksum);
    assert!(hop.bytes_sent() - before >= 5 * MIB, "the changed file crossed the first link");
    check(&dest_b, &changed);
    assert_eq!(router.resource_stats().bytes_served, 10 * MIB);

    // A destination the target cannot write: the error a streamed put to a
    // direct context gives, and nothing left behind.
    let direct = router.local(local_in(&dir.path().join("cache-direct"))).expect("direct");
    let bad = dir.path().join("no/such/dir/f");
    let streamed = direct.put(&src, &bad).expect_err("streamed put to a missing directory");
    let imported = b.put(&src, &bad).expect_err("put through the hop to a missing directory");
    let errno = |e: &mito::TransferError| match e {
        mito::TransferError::Remote(c) => c.remote().map(|r| (r.kind, r.errno, r.message.clone())),
        _ => None,
    };
    assert!(errno(&streamed).is_some_and(|(_, n, _)| n == libc::ENOENT), "{streamed}");
    assert_eq!(errno(&imported), errno(&streamed), "{imported} / {streamed}");
    assert!(imported.to_string().contains("no/such/dir/f"), "{imported}");
    let stats = router.resource_stats();
    assert_eq!((stats.resources, stats.grants), (0, 0), "a failed put leaves nothing either: {stats:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains("mito-tmp"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    b.ping().expect("b keeps working");
}

/// `put --compress` behind a hop: the master deflates each chunk it
/// serves (where that saves an eighth), the hop inflates it, checks it
/// and caches it as it is; the copy is byte for byte the source, and a
/// second put served from the hop's cache still carries nothing.
#[test]
fn a_compressed_put_behind_a_hop_crosses_the_first_link_deflated() {
    let dir = TempDir::new("importer-compress");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache-hop"))).expect("hop");
    let (a, b) = (child(&hop, &dir, "a"), child(&hop, &dir, "b"));
    let mut text = Vec::new();
    let mut i = 0u64;
    while text.len() < 5 * MIB as usize {
        text.extend_from_slice(
            format!(
                "Nov 28 14:{:02}:{:02} web{} nginx[{}]: GET /index.html 200\n",
                i % 60,
                i % 53,
                i % 5,
                100 + i % 89
            )
            .as_bytes(),
        );
        i += 1;
    }
    // And a tail nothing compresses: that chunk goes as it is.
    text.extend(random_bytes(MIB as usize));
    let src = dir.path().join("log.txt");
    std::fs::write(&src, &text).expect("write");
    let copy = mito::CopyOptions { compress: true, ..Default::default() };
    let (dest_a, dest_b) = (dir.path().join("dest-a"), dir.path().join("dest-b"));
    let before = hop.bytes_sent();
    let st = a.put_with_options(&src, &dest_a, &copy, &|_| {}).expect("put --compress");
    let crossed = hop.bytes_sent() - before;
    eprintln!("put --compress behind a hop: {crossed} bytes on the first link for {} bytes", text.len());
    assert_eq!(st.bytes, text.len() as u64);
    assert!(std::fs::read(&dest_a).expect("read") == text, "the copy is the source");
    assert!(crossed < 2 * MIB, "{crossed} bytes crossed the first link: the log text went deflated");
    assert!(crossed > MIB, "the random chunk went as it is");
    let before = hop.bytes_sent();
    b.put_with_options(&src, &dest_b, &copy, &|_| {}).expect("second put");
    assert!(hop.bytes_sent() - before < 8 * 1024, "served from the hop's cache");
    assert!(std::fs::read(&dest_b).expect("read") == text);
}
