//! Local-context benchmark through the public API (run by `scripts/bench-local`).
//!
//! Prints one line per workload: median, min (and a rate where it fits).
//! Timing figures are reported, never asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use mito::{LocalOptions, Router};

fn opts(cache: &Path) -> LocalOptions {
    LocalOptions {
        env: vec![
            ("XDG_CACHE_HOME".into(), cache.as_os_str().to_owned()),
            ("XDG_RUNTIME_DIR".into(), cache.join("run").into_os_string()),
        ],
        ..LocalOptions::default()
    }
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let json = std::env::args().any(|a| a == "--json");
    let base = std::env::temp_dir().join(format!("mito-bench-{}", std::process::id()));
    let mut out: Vec<(String, f64, f64, &str)> = Vec::new();
    let router = Router::new()?;

    // 1. cold connect + first call (empty cache: agent uploaded).
    let mut cold = Vec::new();
    let mut first_bytes = 0;
    for i in 0..if quick { 5 } else { 20 } {
        let cache = base.join(format!("cold{i}"));
        std::fs::create_dir_all(cache.join("run"))?;
        let t = Instant::now();
        let ctx = router.local(opts(&cache))?;
        ctx.ping()?;
        cold.push(t.elapsed());
        first_bytes = ctx.connect_info().agent_bytes_sent;
        ctx.shutdown();
    }
    let (m, n) = stats(cold);
    out.push(("local connect + first call, cold cache (ms)".into(), ms(m), ms(n), "ms"));

    // 2. warm connect + first call.
    let cache = base.join("warm");
    std::fs::create_dir_all(cache.join("run"))?;
    router.local(opts(&cache))?.shutdown();
    let mut warm = Vec::new();
    let mut repeat_bytes = 0;
    for _ in 0..if quick { 20 } else { 100 } {
        let t = Instant::now();
        let ctx = router.local(opts(&cache))?;
        ctx.ping()?;
        warm.push(t.elapsed());
        repeat_bytes = ctx.connect_info().agent_bytes_sent;
        ctx.shutdown();
    }
    let (m, n) = stats(warm);
    out.push(("local connect + first call, warm cache (ms)".into(), ms(m), ms(n), "ms"));

    // 3. no-op round trip.
    let ctx = router.local(opts(&cache))?;
    for _ in 0..1000 {
        ctx.ping()?;
    }
    let mut rtt = Vec::new();
    for _ in 0..if quick { 5000 } else { 20000 } {
        let t = Instant::now();
        ctx.ping()?;
        rtt.push(t.elapsed());
    }
    let (m, n) = stats(rtt);
    out.push(("no-op call round trip (µs)".into(), m.as_secs_f64() * 1e6, n.as_secs_f64() * 1e6, "us"));

    // 4. pipelined: 10 000 in flight.
    let mut rates = Vec::new();
    for _ in 0..if quick { 3 } else { 10 } {
        let t = Instant::now();
        let p: Vec<_> = (0..10_000).map(|_| ctx.call_async::<mito::functions::Ping>(&())).collect::<Result<_, _>>()?;
        for x in p {
            x.wait()?;
        }
        rates.push(t.elapsed());
    }
    let (m, n) = stats(rates);
    out.push((
        "pipelined no-op calls (calls/s, 10k in flight)".into(),
        10_000.0 / m.as_secs_f64(),
        10_000.0 / n.as_secs_f64(),
        "/s",
    ));

    // 5. exec `true` round trip.
    let mut ex = Vec::new();
    for _ in 0..if quick { 100 } else { 500 } {
        let t = Instant::now();
        ctx.exec(&["true"])?;
        ex.push(t.elapsed());
    }
    let (m, n) = stats(ex);
    out.push(("exec `true` round trip (ms)".into(), ms(m), ms(n), "ms"));

    // 6. read_file of 64 MiB.
    let big = base.join("big");
    std::fs::write(&big, vec![0x5au8; 64 << 20])?;
    let mut bulk = Vec::new();
    for _ in 0..if quick { 3 } else { 10 } {
        let t = Instant::now();
        let data = ctx.read_file(&big)?;
        assert_eq!(data.len(), 64 << 20);
        bulk.push(t.elapsed());
    }
    let (m, n) = stats(bulk);
    out.push(("read_file 64 MiB (MB/s)".into(), 67.108864 / m.as_secs_f64(), 67.108864 / n.as_secs_f64(), "MB/s"));

    // 7. idle RSS of the agent after calls.
    std::thread::sleep(Duration::from_millis(100));
    let fresh = router.local(opts(&cache))?;
    fresh.ping()?;
    let rss = rss_kib(fresh.connect_info().pid).unwrap_or(0) as f64;
    out.push(("idle agent RSS after one call (KiB)".into(), rss, rss, "KiB"));
    out.push(("agent bytes sent, first connect".into(), first_bytes as f64, first_bytes as f64, "B"));
    out.push(("agent bytes sent, repeat connect".into(), repeat_bytes as f64, repeat_bytes as f64, "B"));

    // 8. fan-out: 50 contexts, one call each, sequential.
    let t = Instant::now();
    let many: Vec<_> = (0..50).map(|_| router.local(opts(&cache))).collect::<Result<_, _>>()?;
    for c in &many {
        c.ping()?;
    }
    let fan = t.elapsed();
    out.push(("50 local contexts + one call each (ms)".into(), ms(fan), ms(fan), "ms"));
    drop(many);

    // 9. sudo (root -> mito-user, no password; scripts/test-become): connect
    // + first call, round trip and bulk through the sudo context.
    let sudo_user = "mito-user";
    if rustix::process::geteuid().is_root() && std::path::Path::new(&format!("/home/{sudo_user}")).exists() {
        router.sudo(mito::SudoOptions::new(sudo_user))?.shutdown();
        let mut conn = Vec::new();
        for _ in 0..if quick { 10 } else { 40 } {
            let t = Instant::now();
            let c = router.sudo(mito::SudoOptions::new(sudo_user))?;
            c.ping()?;
            conn.push(t.elapsed());
            c.shutdown();
        }
        let (m, n) = stats(conn);
        out.push(("sudo connect + first call, root -> user (ms)".into(), ms(m), ms(n), "ms"));
        let c = router.sudo(mito::SudoOptions::new(sudo_user))?;
        let mut rtt = Vec::new();
        for i in 0..if quick { 5000 } else { 20000 } + 1000 {
            let t = Instant::now();
            c.ping()?;
            if i >= 1000 {
                rtt.push(t.elapsed());
            }
        }
        let (m, n) = stats(rtt);
        out.push(("no-op round trip through sudo (µs)".into(), m.as_secs_f64() * 1e6, n.as_secs_f64() * 1e6, "us"));
        let data = c.exec(&["head", "-c", "67108864", "/dev/zero"])?;
        let t = Instant::now();
        let data2 = c.exec(&["head", "-c", "67108864", "/dev/zero"])?;
        let el = t.elapsed();
        assert_eq!((data.stdout.len(), data2.stdout.len()), (64 << 20, 64 << 20));
        out.push(("exec output 64 MiB through sudo (MB/s)".into(), 67.108864 / el.as_secs_f64(), 67.108864 / el.as_secs_f64(), "MB/s"));
    } else {
        eprintln!("sudo workloads: n/a (need root and the test user {sudo_user}: scripts/test-become)");
    }
    drop(router);
    let _ = std::fs::remove_dir_all(&base);

    for (name, med, min, unit) in &out {
        if json {
            println!("{{\"workload\":{name:?},\"median\":{med:.3},\"min\":{min:.3},\"unit\":{unit:?}}}");
        } else {
            println!("{name:<52} median {med:>12.2}   best {min:>12.2}");
        }
    }
    Ok(())
}
