//! The mito library side of scripts/bench's `fleet_10step` row (opt-in:
//! `BENCH_FLEET=1`; scripts/bench_fleet.py runs it).
//!
//! `bench_fleet HOSTS STEPS` connects HOSTS contexts over ssh (the private
//! sshd of scripts/test-sshd named by `BENCH_SSH="PORT DIR USER"`; one ssh
//! connection per context, nothing shared between them: each stands for a
//! host), all at once (a thread per host), runs STEPS `exec`s on each over
//! its one connection, then shuts them down. It prints one JSON line:
//! seconds for the whole run, for the connects and for the steps.

use std::path::PathBuf;
use std::time::Instant;

use mito::{Router, SshOptions};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const STEPS: [&[&str]; 10] = [
    &["true"],
    &["uname", "-n"],
    &["id", "-un"],
    &["pwd"],
    &["date"],
    &["uptime"],
    &["ls", "/"],
    &["cat", "/etc/hostname"],
    &["echo", "step9"],
    &["true"],
];

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().unwrap_or_else(|| "50".into()).parse()?;
    let steps: usize = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let v = std::env::var("BENCH_SSH").map_err(|_| "BENCH_SSH unset")?;
    let mut it = v.split_whitespace();
    let port: u16 = it.next().ok_or("BENCH_SSH: port")?.parse()?;
    let dir = PathBuf::from(it.next().ok_or("BENCH_SSH: dir")?);
    let user = it.next().ok_or("BENCH_SSH: user")?.to_string();
    let opts = |i: usize| {
        let mut o = SshOptions::new("127.0.0.1");
        o.name = Some(format!("h{:02}", i + 1));
        o.port = Some(port);
        o.username = Some(user.clone());
        o.ssh_config = Some("/dev/null".into());
        o.identity_file = Some(dir.join("id_ed25519"));
        o.options = vec![format!("UserKnownHostsFile={}", dir.join("known_hosts").display())];
        o
    };

    let router = Router::new()?;
    let t0 = Instant::now();
    // Per host: (seconds to connect, seconds for the steps).
    let per_host: Vec<Res<(f64, f64)>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..hosts)
            .map(|i| {
                let router = &router;
                let o = opts(i);
                s.spawn(move || -> Res<(f64, f64)> {
                    let t = Instant::now();
                    let c = router.ssh(o)?;
                    let connected = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    for k in 0..steps {
                        let r = c.exec(STEPS[k % STEPS.len()])?;
                        if r.status.code != Some(0) {
                            return Err(format!("step {k}: {}", r.status).into());
                        }
                    }
                    let stepped = t.elapsed().as_secs_f64();
                    c.shutdown();
                    Ok((connected, stepped))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
    });
    let total = t0.elapsed().as_secs_f64();
    let mut connect_max = 0f64;
    let mut steps_max = 0f64;
    for r in per_host {
        let (c, s) = r?;
        connect_max = connect_max.max(c);
        steps_max = steps_max.max(s);
    }
    println!(
        "{{\"unit\": \"s\", \"values\": [{total}], \"baseline\": [], \"connect_max\": {connect_max}, \"steps_max\": {steps_max}}}"
    );
    Ok(())
}
