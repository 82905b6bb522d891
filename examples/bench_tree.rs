//! The scale rows of scripts/bench (too heavy for CI): one master holding
//! many contexts, local agents standing in for hosts.
//!
//! - `tree_*`: a tree of `BENCH_TREE` hops (default `100x100`: 100 local
//!   hops under the master, 100 local children under each, 10,100
//!   contexts), connected from 16 threads.
//! - `tree_direct_*`: `BENCH_TREE_DIRECT` direct local contexts (default
//!   1,000), connected from 16 threads.
//!
//! On either, `info` goes to every leaf (the direct contexts, or the
//! tree's children) five times each way, alternating: as one broadcast
//! (`mito::master::broadcast::call_many`: one message per first hop, the
//! hops copying it to their children) and as one call per leaf (all sent,
//! then all gathered); then everything is shut down with the router.
//!
//! `bench_tree WORKLOAD N` prints one JSON line for scripts/bench.py, N
//! ignored (one tree per run): `tree_connect` (s to connect everything),
//! `tree_broadcast` (ms for a broadcast, five values), `tree_call` (ms for
//! one call per leaf, five values), `tree_rss` (master KiB of RSS per
//! context, once connected), and the same four as `tree_direct_*`. Every
//! number goes to stderr as well, with the master's descriptors and
//! threads and the bytes the broadcast and the calls put on the first
//! links: once connected, a context behind a hop holds no descriptor and
//! no thread in the master (`master::via`'s monitor runs on the router's
//! deliveries), a direct context three descriptors and no thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mito::functions::Info;
use mito::master::broadcast::call_many;
use mito::{Context, LocalOptions, Router};

/// The master's resident set in KiB.
fn rss_kib() -> u64 {
    status_field("VmRSS:").parse().unwrap_or(0)
}

fn status_field(name: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).unwrap_or("").into()
}

/// `HOPSxCHILDREN` from `BENCH_TREE` (`1` or empty: 100x100).
fn shape() -> Result<(usize, usize), String> {
    let v = std::env::var("BENCH_TREE").unwrap_or_default();
    match v.split_once('x') {
        Some((h, c)) => Ok((
            h.parse().map_err(|e| format!("BENCH_TREE {v:?}: {e}"))?,
            c.parse().map_err(|e| format!("BENCH_TREE {v:?}: {e}"))?,
        )),
        None => Ok((100, 100)),
    }
}

/// `n` contexts made by `make(i)` from 16 threads.
fn connect_all(n: usize, make: impl Fn(usize) -> Result<Context, String> + Sync) -> Result<Vec<Context>, String> {
    let next = AtomicUsize::new(0);
    let made: Mutex<Vec<Context>> = Mutex::new(Vec::with_capacity(n));
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match make(i) {
                    Ok(c) => made.lock().unwrap_or_else(|p| p.into_inner()).push(c),
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        break;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(made.into_inner().unwrap_or_else(|p| p.into_inner())),
    }
}

/// ms for `info` to every leaf as one broadcast.
fn broadcast(leaves: &[Context]) -> Result<f64, String> {
    let t = Instant::now();
    for (ctx, r) in call_many::<Info>(leaves, &(), Duration::from_secs(300)) {
        let info = r.map_err(|e| e.to_string())?;
        if info.pid != ctx.connect_info().pid {
            return Err(format!("{}: answered with pid {}", ctx.name(), info.pid));
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// ms for `info` to every leaf as one call each, all sent then gathered.
fn one_call_each(leaves: &[Context]) -> Result<f64, String> {
    let t = Instant::now();
    let pending =
        leaves.iter().map(|c| c.call_async::<Info>(&())).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    for p in pending {
        p.wait().map_err(|e| e.to_string())?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// This process's CPU time (user + system) and bytes read so far (`rchar`:
/// what came up the links, for the replies).
fn cpu_and_read() -> (Duration, u64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct we own.
    let cpu = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        let tv = |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    } else {
        Duration::ZERO
    };
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let read = io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (cpu, read)
}

/// Bytes the master sent on the streams of `first` (the first links).
fn first_links(first: &[Context]) -> u64 {
    first.iter().map(Context::bytes_sent).sum()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<(), String> {
    let workload = std::env::args().nth(1).unwrap_or_default();
    let direct = workload.starts_with("tree_direct_");
    let (hops, children) = if direct {
        let n = std::env::var("BENCH_TREE_DIRECT").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        (n, 0)
    } else {
        shape()?
    };
    let limit = mito::master::limits::raise_fd_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    // A direct context holds three descriptors in the master; one behind a
    // hop only while it connects (three socketpairs: six).
    let need = 3 * hops + 6 * 16 + 256;
    if (limit as usize) < need {
        return Err(format!(
            "{hops} direct contexts with {children} children each need about {need} descriptors in the master (3 \
             per direct context, 6 per connect in flight); the hard RLIMIT_NOFILE is {limit}: raise it, or set \
             BENCH_TREE / BENCH_TREE_DIRECT smaller"
        ));
    }
    let base = std::env::var_os("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let opts = LocalOptions {
        env: vec![("XDG_CACHE_HOME".into(), base.join("tree-cache").into_os_string())],
        connect_timeout: Duration::from_secs(120),
        ..LocalOptions::default()
    };
    let router = Router::new().map_err(|e| e.to_string())?;
    // The first connect may store the agent in the cache: not counted.
    let warm = router.local(opts.clone()).map_err(|e| e.to_string())?;
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let top = if direct {
        connect_all(hops, |_| router.local(opts.clone()).map_err(|e| e.to_string()))?
    } else {
        (0..hops).map(|_| router.local(opts.clone()).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?
    };
    // Round-robin over the hops, so every hop starts children at once.
    let below = connect_all(hops * children, |i| top[i % hops].local(opts.clone()).map_err(|e| e.to_string()))
        .map_err(|e| format!("connecting the tree: {e}"))?;
    let connect = t0.elapsed();
    let rss1 = rss_kib();
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let threads = status_field("Threads:");
    let leaves = if direct { &top } else { &below };
    let (mut each_way, mut bytes) = ((Vec::new(), Vec::new()), (0, 0));
    let (mut cpu, mut up) = ((Duration::ZERO, Duration::ZERO), (0, 0));
    for _ in 0..5 {
        let (b, (cpu0, read0)) = (first_links(&top), cpu_and_read());
        each_way.0.push(broadcast(leaves)?);
        let (c, (cpu1, read1)) = (first_links(&top), cpu_and_read());
        each_way.1.push(one_call_each(leaves)?);
        let (cpu2, read2) = cpu_and_read();
        bytes = (c - b, first_links(&top) - c);
        cpu = (cpu.0 + (cpu1 - cpu0) / 5, cpu.1 + (cpu2 - cpu1) / 5);
        up = (read1 - read0, read2 - read1);
    }
    let contexts = top.len() + below.len();
    let per_context = rss1.saturating_sub(rss0) as f64 / contexts as f64;
    let what = if direct { format!("{hops} direct contexts") } else { format!("tree {hops}x{children}") };
    eprintln!(
        "{what}: {contexts} contexts (fd limit {limit}) connected in {:.1} s, master RSS {rss0} -> {rss1} KiB \
         ({per_context:.1} KiB per context), {fds} fds, {threads} threads; info to {} leaves: broadcast {:.0} ms \
         (median of 5; {} bytes down the first links, {} read by the master, {:.0} ms of its CPU), one call each \
         {:.0} ms ({} bytes down, {} read, {:.0} ms of CPU)",
        connect.as_secs_f64(),
        leaves.len(),
        median(&each_way.0),
        bytes.0,
        up.0,
        cpu.0.as_secs_f64() * 1e3,
        median(&each_way.1),
        bytes.1,
        up.1,
        cpu.1.as_secs_f64() * 1e3,
    );
    let t2 = Instant::now();
    drop((below, top, warm));
    drop(router);
    eprintln!("shut down in {:.1} s", t2.elapsed().as_secs_f64());
    let (unit, values) = match workload.strip_prefix("tree_direct_").or_else(|| workload.strip_prefix("tree_")) {
        Some("connect") => ("s", vec![connect.as_secs_f64()]),
        Some("broadcast") => ("ms", each_way.0),
        Some("call") => ("ms", each_way.1),
        Some("rss") => ("KiB", vec![per_context]),
        _ => {
            return Err(format!(
                "unknown workload {workload:?} (tree_connect, tree_broadcast, tree_call, tree_rss, and \
                 tree_direct_ of each)"
            ))
        }
    };
    let values: Vec<String> = values.iter().map(f64::to_string).collect();
    println!("{{\"unit\":\"{unit}\",\"values\":[{}],\"baseline\":[]}}", values.join(","));
    Ok(())
}
