//! ssh benchmark through the public API, next to plain `ssh` with the same
//! options in the same run (run by `scripts/bench-ssh`, which starts the
//! private sshd). Usage: bench_ssh PORT DIR USER [--quick]
//!
//! Prints: connect + first call vs `ssh host true`; no-op round trip vs a
//! raw one-byte echo over an ssh channel (`cat`); bulk read vs `ssh cat FILE`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mito::{Router, SshOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (port, dir, user) = (args[1].parse::<u16>()?, std::path::PathBuf::from(&args[2]), args[3].clone());
    let quick = args.iter().any(|a| a == "--quick");
    let key = dir.join("id_ed25519");
    let kh = format!("UserKnownHostsFile={}", dir.join("known_hosts").display());
    let ssh_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["-F", "/dev/null", "-T", "-p", &port.to_string(), "-l", &user, "-i"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(key.display().to_string());
        for o in [
            "IdentitiesOnly=yes",
            &kh,
            "LogLevel=ERROR",
            "Compression=no",
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
        ] {
            v.push("-o".into());
            v.push(o.to_string());
        }
        v.push("127.0.0.1".into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let opts = || {
        let mut o = SshOptions::new("127.0.0.1");
        o.port = Some(port);
        o.username = Some(user.clone());
        o.ssh_config = Some("/dev/null".into());
        o.identity_file = Some(key.clone());
        o.options = vec![kh.clone()];
        o
    };
    let router = Router::new()?;
    router.ssh(opts())?.shutdown(); // warm the target's cache
    let rounds = if quick { 5 } else { 15 };

    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let st = Command::new("ssh").args(ssh_args(&["true"])).stdin(Stdio::null()).status()?;
        assert!(st.success());
        base.push(t.elapsed());
        let t = Instant::now();
        let ctx = router.ssh(opts())?;
        ctx.ping()?;
        ours.push(t.elapsed());
        ctx.shutdown();
    }
    let (b, o) = (median(base), median(ours));
    println!(
        "ssh connect + first call: mito {:.1} ms, `ssh host true` {:.1} ms, ratio {:.2}",
        o.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        o.as_secs_f64() / b.as_secs_f64()
    );

    // Raw echo over an ssh channel vs a no-op call.
    let n = if quick { 2000 } else { 10000 };
    let mut cat = Command::new("ssh").args(ssh_args(&["cat"])).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let (mut cin, mut cout) = (cat.stdin.take().ok_or("stdin")?, cat.stdout.take().ok_or("stdout")?);
    let mut raw = Vec::new();
    let mut b1 = [0u8; 1];
    for i in 0..n + 200 {
        let t = Instant::now();
        cin.write_all(b"x")?;
        cout.read_exact(&mut b1)?;
        if i >= 200 {
            raw.push(t.elapsed());
        }
    }
    drop(cin);
    let _ = cat.wait();
    let ctx = router.ssh(opts())?;
    let mut calls = Vec::new();
    for i in 0..n + 200 {
        let t = Instant::now();
        ctx.ping()?;
        if i >= 200 {
            calls.push(t.elapsed());
        }
    }
    let (r, c) = (median(raw), median(calls));
    println!(
        "no-op round trip over ssh: mito {:.1} µs, raw echo {:.1} µs, ratio {:.2}",
        c.as_secs_f64() * 1e6,
        r.as_secs_f64() * 1e6,
        c.as_secs_f64() / r.as_secs_f64()
    );

    // Bulk: 64 MiB.
    let file = std::env::temp_dir().join(format!("mito-bench-ssh-{}", std::process::id()));
    std::fs::write(&file, vec![0x5au8; 64 << 20])?;
    let (mut sb, mut mb) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 3 } else { 7 } {
        let t = Instant::now();
        let st =
            Command::new("ssh").args(ssh_args(&["cat", &file.display().to_string()])).stdout(Stdio::null()).status()?;
        assert!(st.success());
        sb.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(ctx.read_file(&file)?.len(), 64 << 20);
        mb.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&file);
    let (s, m) = (median(sb), median(mb));
    println!(
        "bulk 64 MiB over ssh: mito read_file {:.0} MB/s, `ssh cat FILE` {:.0} MB/s (includes its login), ratio {:.2}",
        67.1 / m.as_secs_f64(),
        67.1 / s.as_secs_f64(),
        s.as_secs_f64() / m.as_secs_f64()
    );
    Ok(())
}
