//! The mito side of `scripts/bench`, through the public API only.
//!
//! `bench WORKLOAD ITERATIONS` prints one JSON line
//! `{"unit": "...", "values": [...], "baseline": [...]}`; the orchestrator
//! (scripts/bench.py) runs the same workload for Python mitogen and compares.
//! Environment: `BENCH_DIR` (scratch dir), `BENCH_FILE` (64 MiB file),
//! `BENCH_BIG` (256 MiB file), `BENCH_SSH` (`port dir user` of the test sshd),
//! `BENCH_SUDO_USER`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod bench_common;

use bench_common::{ms, wchar};
use mito::functions::ExecArgs;
use mito::{Context, LocalOptions, Router, SshOptions, SudoOptions};
use serde_bytes::ByteBuf;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env(k: &str) -> Res<String> {
    std::env::var(k).map_err(|_| format!("{k} is not set").into())
}

fn local(cache: &Path) -> LocalOptions {
    LocalOptions {
        env: vec![
            ("XDG_CACHE_HOME".into(), cache.as_os_str().to_owned()),
            ("XDG_RUNTIME_DIR".into(), cache.join("run").into_os_string()),
        ],
        ..LocalOptions::default()
    }
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

/// The context a transfer workload (`*_local`, `*_ssh`) runs against, the
/// sshd it goes through, and the destination path in /dev/shm (so the
/// disk is not what is measured).
fn transfer_target(router: &Router, workload: &str, warm: &Path) -> Res<(Option<Ssh>, Context, String)> {
    let ssh = if workload.ends_with("_ssh") { Some(Ssh::from_env()?) } else { None };
    let c = match &ssh {
        Some(s) => router.ssh(s.opts())?,
        None => router.local(local(warm))?,
    };
    Ok((ssh, c, format!("/dev/shm/mito-bench-{}-{workload}", std::process::id())))
}

struct Ssh {
    port: u16,
    dir: PathBuf,
    user: String,
}

impl Ssh {
    fn from_env() -> Res<Ssh> {
        let v = env("BENCH_SSH")?;
        let mut it = v.split_whitespace();
        let port = it.next().ok_or("BENCH_SSH: port")?.parse()?;
        let dir = PathBuf::from(it.next().ok_or("BENCH_SSH: dir")?);
        let user = it.next().ok_or("BENCH_SSH: user")?.to_string();
        Ok(Ssh { port, dir, user })
    }

    fn opts(&self) -> SshOptions {
        let mut o = SshOptions::new("127.0.0.1");
        o.port = Some(self.port);
        o.username = Some(self.user.clone());
        o.ssh_config = Some("/dev/null".into());
        o.identity_file = Some(self.dir.join("id_ed25519"));
        o.options = vec![format!("UserKnownHostsFile={}", self.dir.join("known_hosts").display())];
        o
    }

    /// Plain `ssh … COMMAND` with the same options mito passes.
    fn ssh(&self, command: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T", "-p", &self.port.to_string(), "-l", &self.user, "-i"])
            .arg(self.dir.join("id_ed25519"))
            .args(["-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.dir.join("known_hosts").display()))
            .args(["-o", "LogLevel=ERROR", "-o", "Compression=no", "-o", "BatchMode=yes", "127.0.0.1"])
            .args(command);
        c
    }

    fn ssh_true(&self) -> Res<Duration> {
        let t = Instant::now();
        if !self.ssh(&["true"]).stdin(Stdio::null()).status()?.success() {
            return Err("ssh true failed".into());
        }
        Ok(t.elapsed())
    }

    /// One-byte echo round trips through `ssh host cat` (µs).
    fn raw_echo(&self, n: usize) -> Res<Vec<f64>> {
        use std::io::{Read, Write};
        let mut cat = self.ssh(&["cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let (mut i, mut o) = (cat.stdin.take().ok_or("stdin")?, cat.stdout.take().ok_or("stdout")?);
        let mut b = [0u8; 1];
        let mut v = Vec::with_capacity(n);
        for k in 0..n + 1000 {
            let t = Instant::now();
            i.write_all(b"x")?;
            o.read_exact(&mut b)?;
            if k >= 1000 {
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        drop(i);
        cat.wait()?;
        Ok(v)
    }

    /// `ssh host cat FILE > /dev/null` throughput, login included (MB/s).
    fn ssh_cat(&self, file: &str) -> Res<f64> {
        let len = std::fs::metadata(file)?.len() as f64;
        let t = Instant::now();
        if !self.ssh(&["cat", file]).stdout(Stdio::null()).status()?.success() {
            return Err("ssh cat failed".into());
        }
        Ok(len / 1e6 / t.elapsed().as_secs_f64())
    }
}

/// `n` random bytes (nothing on any link compresses them).
fn urandom(n: usize) -> Res<Vec<u8>> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut v)?;
    Ok(v)
}

/// 10 contexts behind `hop`, each with a new, empty cache directory of its
/// own under `dir` (connecting uploads the agent to each: not measured).
fn fresh_kids(hop: &Context, dir: &Path, tag: &str) -> Res<Vec<Context>> {
    (0..10)
        .map(|i| {
            let cache = dir.join(format!("mito-{tag}-{}-{i}", std::process::id()));
            std::fs::create_dir_all(cache.join("run"))?;
            Ok(hop.local(local(&cache))?)
        })
        .collect()
}

/// Seconds to hash `file` once here with `kind` (a 256 KiB `pread` loop,
/// as `put`'s unchanged check does): wall time, and this thread's CPU time
/// (which a machine shared with other work does not inflate).
fn hash_once(file: &str, kind: mito::HashKind) -> Res<(f64, f64)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 256 * 1024];
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    let (t, c) = (Instant::now(), cpu());
    let mut h = mito::core::xxh3::Hasher::new(kind);
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    std::hint::black_box(h.digest());
    Ok((t.elapsed().as_secs_f64(), cpu() - c))
}

fn rtt(ctx: &Context, n: usize) -> Res<Vec<f64>> {
    for _ in 0..1000 {
        ctx.ping()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ctx.ping()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(v)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let workload = args.get(1).ok_or("usage: bench WORKLOAD ITERATIONS")?.as_str();
    let n: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let dir = PathBuf::from(env("BENCH_DIR")?);
    let warm = dir.join("mito-warm-cache");
    std::fs::create_dir_all(warm.join("run"))?;
    let router = Router::new()?;
    let (mut values, mut baseline) = (Vec::new(), Vec::new());
    let unit = match workload {
        "local_warm" => {
            router.local(local(&warm))?.shutdown();
            for _ in 0..n {
                let t = Instant::now();
                let c = router.local(local(&warm))?;
                c.ping()?;
                values.push(ms(t.elapsed()));
                c.shutdown();
            }
            "ms"
        }
        "local_cold_cache" => {
            for i in 0..n {
                let cache = dir.join(format!("mito-cold-{}-{i}", std::process::id()));
                std::fs::create_dir_all(cache.join("run"))?;
                let t = Instant::now();
                let c = router.local(local(&cache))?;
                c.ping()?;
                values.push(ms(t.elapsed()));
                c.shutdown();
                let _ = std::fs::remove_dir_all(&cache);
            }
            "ms"
        }
        "rtt_local" => {
            values = rtt(&router.local(local(&warm))?, n)?;
            "us"
        }
        "via_connect" => {
            let hop = router.local(local(&warm))?;
            hop.local(local(&warm))?.shutdown();
            for _ in 0..n {
                let t = Instant::now();
                let c = hop.local(local(&warm))?;
                c.ping()?;
                values.push(ms(t.elapsed()));
                c.shutdown();
            }
            "ms"
        }
        "rtt_via" => {
            let hop = router.local(local(&warm))?;
            values = rtt(&hop.local(local(&warm))?, n)?;
            "us"
        }
        "putmany_via" => {
            // The same 64 MiB to 4 contexts behind one hop: relayed, so the
            // first link carries it once.
            let file = env("BENCH_FILE")?;
            let hop = router.local(local(&warm))?;
            let kids = (0..4).map(|_| hop.local(local(&warm))).collect::<Result<Vec<_>, _>>()?;
            let dest = format!("/dev/shm/mito-bench-{}-putmany", std::process::id());
            let len = std::fs::metadata(&file)?.len() as f64;
            for _ in 0..n {
                let t = Instant::now();
                for r in mito::put_many(&kids, &file, &dest, &|_| {}) {
                    r?;
                }
                values.push(4.0 * len / 1e6 / t.elapsed().as_secs_f64());
                std::fs::remove_file(&dest)?;
            }
            "MB/s"
        }
        "import_hop" | "import_hop_bytes" => {
            // 10 contexts behind one hop, each with a cache directory of
            // its own (what one fetched is not found by another); each
            // round a new 1 MiB resource, fetched by all 10 at once. Time,
            // or bytes the master sent on the hop's stream (the first link).
            let hop = router.local(local(&warm))?;
            let kids = fresh_kids(&hop, &dir, "import")?;
            for _ in 0..n {
                let res = router.register_resource("bench", urandom(1 << 20)?)?;
                let (sent, t) = (hop.bytes_sent(), Instant::now());
                std::thread::scope(|s| {
                    let fetches: Vec<_> = kids.iter().map(|k| s.spawn(|| k.fetch_resource(&res))).collect();
                    fetches.into_iter().try_for_each(|f| -> Res<()> {
                        f.join().map_err(|_| "thread panicked")??;
                        Ok(())
                    })
                })?;
                values.push(if workload == "import_hop" {
                    ms(t.elapsed())
                } else {
                    (hop.bytes_sent() - sent) as f64 / 1024.0
                });
            }
            if workload == "import_hop" {
                "ms"
            } else {
                "KiB"
            }
        }
        "put_hop" | "put_hop_bytes" => {
            // A 5 MiB file put to 10 contexts behind one hop, one after the
            // other (`Context::put`: through the importer behind a hop, so
            // the hop's cache serves all but the first); each round a new
            // file (a new hash: nothing cached from the round before).
            let hop = router.local(local(&warm))?;
            let kids = (0..10).map(|_| hop.local(local(&warm))).collect::<Result<Vec<_>, _>>()?;
            let src = dir.join(format!("mito-put-hop-{}", std::process::id()));
            for _ in 0..n {
                std::fs::write(&src, urandom(5 << 20)?)?;
                let (sent, t) = (hop.bytes_sent(), Instant::now());
                for (i, k) in kids.iter().enumerate() {
                    k.put(&src, format!("/dev/shm/mito-bench-{}-put-hop-{i}", std::process::id()))?;
                }
                values.push(if workload == "put_hop" {
                    ms(t.elapsed())
                } else {
                    (hop.bytes_sent() - sent) as f64 / 1024.0
                });
                for i in 0..kids.len() {
                    std::fs::remove_file(format!("/dev/shm/mito-bench-{}-put-hop-{i}", std::process::id()))?;
                }
            }
            std::fs::remove_file(&src)?;
            if workload == "put_hop" {
                "ms"
            } else {
                "KiB"
            }
        }
        "pipelined" => {
            let c = router.local(local(&warm))?;
            for _ in 0..n {
                let t = Instant::now();
                let p: Vec<_> =
                    (0..10_000).map(|_| c.call_async::<mito::functions::Ping>(&())).collect::<Result<_, _>>()?;
                for x in p {
                    x.wait()?;
                }
                values.push(10_000.0 / t.elapsed().as_secs_f64());
            }
            "calls/s"
        }
        "bulk_local" | "bulk_ssh" => {
            let file = env("BENCH_FILE")?;
            let ssh = if workload == "bulk_ssh" { Some(Ssh::from_env()?) } else { None };
            let c = match &ssh {
                Some(s) => router.ssh(s.opts())?,
                None => router.local(local(&warm))?,
            };
            for _ in 0..n {
                if let Some(s) = &ssh {
                    baseline.push(s.ssh_cat(&file)?);
                }
                let t = Instant::now();
                let data = c.read_file(&file)?;
                values.push(data.len() as f64 / 1e6 / t.elapsed().as_secs_f64());
            }
            "MB/s"
        }
        "exec_true" => {
            let c = router.local(local(&warm))?;
            c.exec(&["true"])?;
            for _ in 0..n {
                let t = Instant::now();
                let r = c.exec(&["true"])?;
                values.push(ms(t.elapsed()));
                if r.status.code != Some(0) {
                    return Err("true failed".into());
                }
            }
            "ms"
        }
        "put_local" | "get_local" | "put_ssh" | "get_ssh" => {
            // 1 GiB of random bytes; the copy lands in /dev/shm so the disk is not what is measured.
            let file = env("BENCH_GIB")?;
            let (ssh, c, dest) = transfer_target(&router, workload, &warm)?;
            for _ in 0..n {
                if let Some(s) = &ssh {
                    baseline.push(s.ssh_cat(&file)?);
                }
                // Both sides read the source once first: measure the transfer, not a
                // disk read of pages the host's memory manager (DAMON) reclaimed.
                std::io::copy(&mut std::fs::File::open(&file)?, &mut std::io::sink())?;
                let st = if workload.starts_with("put") { c.put(&file, &dest)? } else { c.get(&file, &dest)? };
                values.push(st.bytes as f64 / 1e6 / st.elapsed.as_secs_f64());
                std::fs::remove_file(&dest)?;
            }
            "MB/s"
        }
        "hash_xxh3" => {
            // The 1 GiB file from the page cache: XXH3-128 here, SHA-256 as
            // the baseline; per second of this thread's CPU (read included).
            let file = env("BENCH_GIB")?;
            let len = std::fs::metadata(&file)?.len() as f64;
            for _ in 0..n {
                values.push(len / 1e6 / hash_once(&file, mito::HashKind::Xxh3_128)?.1);
                baseline.push(len / 1e6 / hash_once(&file, mito::HashKind::Sha256)?.1);
            }
            "MB/s"
        }
        "hash_agent" => {
            // The agent's `file_hash` of the 1 GiB file (XXH3-128, its size-built
            // code): wall ms; baseline, the same hash here.
            let file = env("BENCH_GIB")?;
            let c = router.local(local(&warm))?;
            let args =
                mito::functions::HashArgs { path: ByteBuf::from(file.as_bytes()), hash: mito::HashKind::Xxh3_128 };
            for _ in 0..n {
                let t = Instant::now();
                c.call::<mito::functions::FileHash>(&args)?;
                values.push(ms(t.elapsed()));
                baseline.push(hash_once(&file, mito::HashKind::Xxh3_128)?.0 * 1e3);
            }
            "ms"
        }
        "reput_local" | "reput_ssh" => {
            // An unchanged 1 GiB file put again: stat, then both ends hash
            // their copy at once, nothing sent. Baseline: hashing it once here.
            let file = env("BENCH_GIB")?;
            let (_ssh, c, dest) = transfer_target(&router, workload, &warm)?;
            c.put(&file, &dest)?;
            for _ in 0..n {
                baseline.push(hash_once(&file, mito::HashKind::Xxh3_128)?.0 * 1e3);
                let before = c.bytes_sent();
                let st = c.put(&file, &dest)?;
                if st.changed || c.bytes_sent() - before > 64 * 1024 {
                    return Err("the unchanged re-put sent the file".into());
                }
                values.push(ms(st.elapsed));
            }
            std::fs::remove_file(&dest)?;
            "ms"
        }
        "stream_local" => {
            let file = env("BENCH_BIG")?;
            let c = router.local(local(&warm))?;
            for _ in 0..n {
                let args = ExecArgs {
                    argv: vec![ByteBuf::from(&b"cat"[..]), ByteBuf::from(file.as_bytes())],
                    ..ExecArgs::default()
                };
                let mut got = 0usize;
                let t = Instant::now();
                c.exec_streaming(&args, |_, d| got += d.len())?;
                values.push(got as f64 / 1e6 / t.elapsed().as_secs_f64());
            }
            "MB/s"
        }
        "fanout" | "fanout_threads" => {
            for _ in 0..n {
                let t = Instant::now();
                let ctxs: Vec<Context> = if workload == "fanout" {
                    (0..50).map(|_| router.local(local(&warm))).collect::<Result<_, _>>()?
                } else {
                    std::thread::scope(|s| {
                        let hs: Vec<_> = (0..10)
                            .map(|_| {
                                s.spawn(|| (0..5).map(|_| router.local(local(&warm))).collect::<Result<Vec<_>, _>>())
                            })
                            .collect();
                        hs.into_iter()
                            .map(|h| h.join().map_err(|_| "thread panicked")?.map_err(Into::into))
                            .collect::<Res<Vec<Vec<_>>>>()
                    })?
                    .into_iter()
                    .flatten()
                    .collect()
                };
                for c in &ctxs {
                    c.ping()?;
                }
                values.push(ms(t.elapsed()));
                for c in &ctxs {
                    c.shutdown();
                }
            }
            "ms"
        }
        "facts" => {
            let c = router.local(local(&warm))?;
            c.facts()?;
            for _ in 0..n {
                let t = Instant::now();
                c.facts()?;
                values.push(ms(t.elapsed()));
            }
            "ms"
        }
        "rss" => {
            let c = router.local(local(&warm))?;
            c.ping()?;
            std::thread::sleep(Duration::from_millis(200));
            values.push(rss_kib(c.connect_info().pid) / 1024.0);
            "MiB"
        }
        "bytes_first" | "bytes_repeat" => {
            for i in 0..n {
                let cache = if workload == "bytes_first" {
                    dir.join(format!("mito-bytes-{}-{i}", std::process::id()))
                } else {
                    warm.clone()
                };
                std::fs::create_dir_all(cache.join("run"))?;
                let w0 = wchar();
                let c = router.local(local(&cache))?;
                c.ping()?;
                values.push((wchar() - w0) as f64 / 1024.0);
                c.shutdown();
            }
            "KiB"
        }
        "ssh_connect" => {
            let ssh = Ssh::from_env()?;
            router.ssh(ssh.opts())?.shutdown();
            for _ in 0..n {
                baseline.push(ms(ssh.ssh_true()?));
                let t = Instant::now();
                let c = router.ssh(ssh.opts())?;
                c.ping()?;
                values.push(ms(t.elapsed()));
                c.shutdown();
            }
            "ms"
        }
        "rtt_ssh" => {
            let ssh = Ssh::from_env()?;
            baseline = ssh.raw_echo(n)?;
            values = rtt(&router.ssh(ssh.opts())?, n)?;
            "us"
        }
        "sudo_connect" => {
            let user = env("BENCH_SUDO_USER")?;
            router.sudo(SudoOptions::new(&user))?.shutdown();
            for _ in 0..n {
                let t = Instant::now();
                let c = router.sudo(SudoOptions::new(&user))?;
                c.ping()?;
                values.push(ms(t.elapsed()));
                c.shutdown();
            }
            "ms"
        }
        other => return Err(format!("unknown workload {other}").into()),
    };
    drop(router);
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(",");
    println!("{{\"unit\":\"{unit}\",\"values\":[{}],\"baseline\":[{}]}}", list(&values), list(&baseline));
    Ok(())
}
