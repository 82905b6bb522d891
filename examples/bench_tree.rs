//! The context tree of scripts/bench (too heavy for CI): `BENCH_TREE`
//! hops (default `100x100`: 100 local hops under the master, 100 local
//! children under each, 10,000 leaves, local agents standing in for hosts),
//! connected from 16 threads, then one `info` call to every leaf (all sent,
//! then all gathered), then the whole tree shut down with the router.
//!
//! `bench_tree WORKLOAD N` prints one JSON line for scripts/bench.py:
//! `tree_connect` (s to connect the tree), `tree_call` (ms for the call to
//! every leaf), `tree_rss` (master KiB of RSS per context); N is ignored
//! (one tree per run). Every number goes to stderr as well, with the
//! master's descriptors and threads: once connected, a context behind a
//! hop holds neither there (`master::via`'s monitor runs on the router's
//! deliveries), so the master needs about three descriptors per hop, plus
//! six per connect in flight (16 here).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mito::{Context, LocalOptions, Router};

/// The master's resident set in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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

fn main() -> Result<(), String> {
    let workload = std::env::args().nth(1).unwrap_or_default();
    let (hops, children) = shape()?;
    let limit = mito::master::limits::raise_fd_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    // A direct context holds three descriptors in the master; one behind a
    // hop only while it connects (three socketpairs: six).
    let need = 3 * hops + 6 * 16 + 256;
    if (limit as usize) < need {
        return Err(format!(
            "a {hops}x{children} tree needs about {need} descriptors in the master (3 per hop, 6 per connect in \
             flight); the hard RLIMIT_NOFILE is {limit}: raise it, or set BENCH_TREE smaller"
        ));
    }
    let base = std::env::var_os("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let opts = LocalOptions {
        env: vec![("XDG_CACHE_HOME".into(), base.join("tree-cache").into_os_string())],
        connect_timeout: Duration::from_secs(120),
        ..LocalOptions::default()
    };
    let router = Router::new().map_err(|e| e.to_string())?;
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let mut top = Vec::new();
    for _ in 0..hops {
        top.push(router.local(opts.clone()).map_err(|e| e.to_string())?);
    }
    // Round-robin over the hops, so every hop starts children at once.
    let next = AtomicUsize::new(0);
    let leaves: Mutex<Vec<Context>> = Mutex::new(Vec::with_capacity(hops * children));
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= hops * children {
                    break;
                }
                match top[i % hops].local(opts.clone()) {
                    Ok(c) => leaves.lock().unwrap_or_else(|p| p.into_inner()).push(c),
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(format!("connecting the tree: {e}"));
    }
    let connect = t0.elapsed();
    let leaves = leaves.into_inner().unwrap_or_else(|p| p.into_inner());
    let rss1 = rss_kib();
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let threads = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let t1 = Instant::now();
    let pending = leaves
        .iter()
        .map(|c| c.call_async::<mito::functions::Info>(&()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for p in pending {
        p.wait().map_err(|e| e.to_string())?;
    }
    let call = t1.elapsed();
    let contexts = hops + leaves.len();
    let per_context = rss1.saturating_sub(rss0) as f64 / contexts as f64;
    eprintln!(
        "tree {hops}x{children}: {contexts} contexts (fd limit {limit}) connected in {:.1} s, info to every leaf \
         {:.0} ms, master RSS {rss0} -> {rss1} KiB ({per_context:.1} KiB per context), {fds} fds, {threads} threads",
        connect.as_secs_f64(),
        call.as_secs_f64() * 1e3
    );
    let t2 = Instant::now();
    drop((leaves, top));
    drop(router);
    eprintln!("tree shut down in {:.1} s", t2.elapsed().as_secs_f64());
    let (unit, value) = match workload.as_str() {
        "tree_connect" => ("s", connect.as_secs_f64()),
        "tree_call" => ("ms", call.as_secs_f64() * 1e3),
        "tree_rss" => ("KiB", per_context),
        other => return Err(format!("unknown workload {other:?} (tree_connect, tree_call, tree_rss)")),
    };
    println!("{{\"unit\":\"{unit}\",\"values\":[{value}],\"baseline\":[]}}");
    Ok(())
}
