//! One master holding many direct contexts: 1,000 local agents connected
//! (four connecting threads; the broker does the I/O), each called, a call
//! broadcast to all and gathered, then all shut down. Bounded in time but
//! not asserted as a timing; the numbers are printed (run with
//! `--nocapture`) and recorded in ARCHITECTURE.md ("Scale"): the master's
//! RSS, file descriptors and threads per context; the broadcast is
//! `call_many` (`master::broadcast`), beside one call each for comparison.
//! `MITO_SCALE_CONTEXTS` changes the count. Contexts behind a hop hold no thread and no
//! descriptor in the master once connected (`master::via`'s monitor).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::TempDir;
use mito::functions::Info;
use mito::master::broadcast::call_many;
use mito::{Context, Router};

/// This process's resident set (KiB), open descriptors and threads.
fn usage() -> (u64, usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    (field("VmRSS:"), fds, field("Threads:") as usize)
}

/// The tests here count this process's threads and descriptors: one at a
/// time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_thousand_local_contexts_in_one_master() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n: usize = std::env::var("MITO_SCALE_CONTEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let limit = mito::master::limits::raise_fd_limit().expect("raise RLIMIT_NOFILE");
    // Three descriptors per context (measured below), and room for the rest.
    if limit < (n as u64) * 5 + 256 {
        common::skip_loudly(
            "a_thousand_local_contexts_in_one_master",
            &format!("the hard RLIMIT_NOFILE ({limit}) is too low for {n} contexts"),
        );
        return;
    }
    let dir = TempDir::new("scale");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    // The first connect stores the agent; the others find it cached.
    let first = router.local(opts.clone()).expect("first local context");
    let before = usage();

    let t0 = Instant::now();
    let next = AtomicUsize::new(1);
    let made: Mutex<Vec<Context>> = Mutex::new(vec![first]);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let c = router.local(opts.clone()).expect("local context");
                    made.lock().expect("lock").push(c);
                }
            });
        }
    });
    let ctxs = made.into_inner().expect("lock");
    let connect = t0.elapsed();
    assert_eq!(ctxs.len(), n);
    let after = usage();

    let t1 = Instant::now();
    for c in &ctxs {
        c.ping().expect("ping");
    }
    let one_by_one = t1.elapsed();
    // A broadcast (`call_many`), each reply from the agent it was sent to.
    let t2 = Instant::now();
    let answers = call_many::<Info>(&ctxs, &(), Duration::from_secs(120));
    let broadcast = t2.elapsed();
    let mut pids = std::collections::HashSet::new();
    for (c, r) in answers {
        let pid = r.expect("info").pid;
        assert_eq!(pid, c.connect_info().pid, "{}", c.name());
        pids.insert(pid);
    }
    assert_eq!(pids.len(), n, "{n} distinct agents");
    // The same as one call each: every call sent, then every reply gathered.
    let t2 = Instant::now();
    let pending: Vec<_> = ctxs.iter().map(|c| c.call_async::<Info>(&()).expect("send")).collect();
    for p in pending {
        p.wait().expect("info");
    }
    let one_call_each = t2.elapsed();
    let peak = usage();

    let t3 = Instant::now();
    for c in &ctxs {
        let _ = c.shutdown();
    }
    let shutdown = t3.elapsed();
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / (n - 1) as f64;
    eprintln!(
        "scale: {n} local contexts: connect {connect:.2?} ({:.2} ms each), ping one by one {one_by_one:.2?}, \
         broadcast info (call_many) {broadcast:.2?}, one info call each {one_call_each:.2?}, shutdown {shutdown:.2?}",
        connect.as_secs_f64() * 1e3 / (n - 1) as f64
    );
    eprintln!(
        "scale: master RSS {} -> {} KiB ({:.1} KiB per context; {} KiB after the calls), fds {} -> {} ({:.2} per \
         context), threads {} -> {} ({:.3} per context)",
        before.0,
        after.0,
        per(after.0, before.0),
        peak.0,
        before.1,
        after.1,
        per(after.1 as u64, before.1 as u64),
        before.2,
        after.2,
        per(after.2 as u64, before.2 as u64)
    );
    // Bounded: the descriptors and threads do not grow with more than a
    // few per context (the numbers above are what ARCHITECTURE.md says).
    assert!(after.1 - before.1 <= 5 * (n - 1), "fds per context: {:?} -> {:?}", before, after);
    assert!(after.2 <= before.2 + 8, "threads grow with contexts: {:?} -> {:?}", before, after);
    assert!(connect < Duration::from_secs(300), "connect took {connect:?}");
}

#[test]
fn contexts_behind_a_hop_hold_no_thread_and_no_descriptor_in_the_master() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("scale-hop");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let hop = router.local(opts.clone()).expect("hop");
    // The first child stores the agent's cache on the hop's side.
    let first = hop.local(opts.clone()).expect("first child");
    first.ping().expect("ping");
    // Its connect's pump threads end just after it returns.
    std::thread::sleep(Duration::from_millis(300));
    let before = usage();
    let n = 20;
    let children: Vec<Context> = (0..n).map(|_| hop.local(opts.clone()).expect("child")).collect();
    // One broadcast reaches them all through the hop's stream.
    for (c, r) in call_many::<Info>(&children, &(), Duration::from_secs(60)) {
        assert_eq!(r.expect("info").pid, c.connect_info().pid, "{}", c.name());
    }
    // The bootstrap's threads and sockets go once each context is adopted
    // (the pump hands the command over to the router, then ends).
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let u = usage();
        if (u.1 <= before.1 && u.2 <= before.2) || Instant::now() > deadline {
            break u;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("scale: {n} contexts behind a hop: fds {} -> {}, threads {} -> {}", before.1, after.1, before.2, after.2);
    assert!(after.1 <= before.1, "descriptors held per context behind a hop: {before:?} -> {after:?}");
    assert!(after.2 <= before.2, "threads held per context behind a hop: {before:?} -> {after:?}");
    // The monitor still ends a context whose command is gone: killing the
    // child's agent disconnects it (through its command's exit).
    let victim = &children[0];
    let pid = victim.info().expect("info").pid;
    let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while victim.ping().is_ok() {
        assert!(Instant::now() < deadline, "a killed child still answers");
        std::thread::sleep(Duration::from_millis(50));
    }
    children[1].ping().expect("its siblings live on");
}
