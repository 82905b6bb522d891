//! The mito library side of scripts/bench's `fleet_10step` and
//! `fleet_put8get` rows (opt-in: `BENCH_FLEET=1`; scripts/bench_fleet.py
//! runs it).
//!
//! `bench_fleet HOSTS STEPS [put8get FILE]` connects HOSTS contexts over
//! ssh (the private sshd of scripts/test-sshd named by `BENCH_SSH="PORT
//! DIR USER"`, the user overridden by `BENCH_FLEET_USER`; one ssh
//! connection per context, nothing shared between them: each stands for a
//! host), all in flight at once through `Router::connect_many` (one
//! thread drives every connect), then on each host, over its one
//! connection and on a thread of its own: STEPS `exec`s, or with
//! `put8get` a put of FILE, 8 commands and a get of the file back (into a
//! temporary directory per host). It prints one JSON line: seconds for the
//! whole run, the slowest connect and the slowest host's steps.

use std::path::PathBuf;
use std::time::Instant;

use mito::master::ConnectSpec;
use mito::{Context, Router, SshOptions};

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

/// What each host does once connected.
enum Work {
    /// These many of [`STEPS`], in turn.
    Steps(usize),
    /// A put of this file, 8 commands, a get of it back into a directory
    /// of its own under this one.
    PutCommandsGet(PathBuf, PathBuf),
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().unwrap_or_else(|| "50".into()).parse()?;
    let steps: usize = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let work = match args.next().as_deref() {
        Some("put8get") => {
            let file = PathBuf::from(args.next().ok_or("put8get: FILE missing")?);
            let back = std::env::temp_dir().join(format!("bench-fleet-get.{}", std::process::id()));
            std::fs::create_dir_all(&back)?;
            Work::PutCommandsGet(file, back)
        }
        Some(other) => return Err(format!("unknown mode {other:?}").into()),
        None => Work::Steps(steps),
    };
    let v = std::env::var("BENCH_SSH").map_err(|_| "BENCH_SSH unset")?;
    let mut it = v.split_whitespace();
    let port: u16 = it.next().ok_or("BENCH_SSH: port")?.parse()?;
    let dir = PathBuf::from(it.next().ok_or("BENCH_SSH: dir")?);
    let user = std::env::var("BENCH_FLEET_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| it.next().map(str::to_string))
        .ok_or("BENCH_SSH: user")?;
    let opts = |i: usize| {
        let mut o = SshOptions::new("127.0.0.1");
        o.name = Some(format!("h{:02}", i + 1));
        o.port = Some(port);
        o.username = Some(user.clone());
        o.ssh_config = Some("/dev/null".into());
        o.identity_file = Some(dir.join("id_ed25519"));
        o.options = vec![format!("UserKnownHostsFile={}", dir.join("known_hosts").display())];
        ConnectSpec::Ssh(o)
    };

    let router = Router::new()?;
    let t0 = Instant::now();
    let mut contexts: Vec<Option<Context>> = (0..hosts).map(|_| None).collect();
    let mut connect_max = 0f64;
    for (i, r) in router.connect_many((0..hosts).map(opts).collect(), hosts) {
        contexts[i] = Some(r?);
        connect_max = connect_max.max(t0.elapsed().as_secs_f64());
    }
    // Per host: seconds for its work.
    let per_host: Vec<Res<f64>> = std::thread::scope(|s| {
        let threads: Vec<_> = contexts
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| {
                let work = &work;
                s.spawn(move || -> Res<f64> {
                    let t = Instant::now();
                    host_work(c, i, work)?;
                    Ok(t.elapsed().as_secs_f64())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
    });
    for c in contexts.iter().flatten() {
        c.shutdown();
    }
    let total = t0.elapsed().as_secs_f64();
    let mut steps_max = 0f64;
    for r in per_host {
        steps_max = steps_max.max(r?);
    }
    if let Work::PutCommandsGet(_, back) = &work {
        let _ = std::fs::remove_dir_all(back);
    }
    println!(
        "{{\"unit\": \"s\", \"values\": [{total}], \"baseline\": [], \"connect_max\": {connect_max}, \"steps_max\": {steps_max}}}"
    );
    Ok(())
}

/// The work of host `i` over its context.
fn host_work(c: &Context, i: usize, work: &Work) -> Res<()> {
    let run = |k: usize, argv: &[&str]| -> Res<()> {
        let r = c.exec(argv)?;
        if r.status.code != Some(0) {
            return Err(format!("step {k}: {}", r.status).into());
        }
        Ok(())
    };
    match work {
        Work::Steps(n) => {
            for k in 0..*n {
                run(k, STEPS[k % STEPS.len()])?;
            }
        }
        Work::PutCommandsGet(file, back) => {
            // Each host's own remote name: the 50 "hosts" share one machine.
            let remote = format!("/tmp/bench-fleet-put.{}.h{:02}", std::process::id(), i + 1);
            c.put(file, &remote)?;
            for (k, argv) in STEPS.iter().enumerate().take(9).skip(1) {
                run(k, argv)?;
            }
            let dest = back.join(format!("h{:02}", i + 1));
            // Left in place, as Ansible's copy leaves its file: the name is
            // new per run, so no run finds the last one's copy unchanged.
            c.get(&remote, &dest)?;
        }
    }
    Ok(())
}
