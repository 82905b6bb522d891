//! The README's ssh claims, through the `mito` CLI against the private sshd
//! (scripts/test-sshd): password flags, host key policies, the ssh command
//! line mito builds, chains sharing one connection, and typed failures (no
//! route, connect timeout, no POSIX sh, a password through a hop), and
//! connection sharing (ControlMaster: reuse, stale sockets, off, a
//! foreign directory, ssh-close, the agent's end).

mod common;
mod tty;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{Sshd, PASSWORD};
use common::{skip_loudly, TempDir};

const MITO: &str = env!("CARGO_BIN_EXE_mito");

/// `mito` with no user ssh config, this sshd's known_hosts, a 20 s connect
/// timeout, and no standard input.
fn mito(sshd: &Sshd) -> Command {
    mito_with_known_hosts(&sshd.dir.path().join("known_hosts"))
}

/// Without connection sharing: these tests count their own ssh
/// processes and leave no master behind (the sharing tests are below).
fn mito_with_known_hosts(kh: &Path) -> Command {
    let mut c = Command::new(MITO);
    c.args(["-F", "/dev/null", "--no-control-master", "--connect-timeout", "20", "-o"])
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .stdin(Stdio::null());
    c
}

/// Only a password can log in (no keys offered).
fn password_only(c: &mut Command) -> &mut Command {
    c.args(["-o", "PubkeyAuthentication=no"])
}

/// The test key.
fn with_key<'a>(c: &'a mut Command, sshd: &Sshd) -> &'a mut Command {
    c.arg("--private-key").arg(sshd.dir.path().join("id_ed25519"))
}

fn target(sshd: &Sshd, user: &str) -> String {
    format!("ssh://{user}@127.0.0.1:{}", sshd.port)
}

use common::output_text as text;

/// Exit 255 with `want` on stderr (and never the test password).
fn assert_fails(o: &Output, want: &str) -> String {
    common::assert_cli_fails(o, want, PASSWORD)
}

fn assert_no_secret(o: &Output, secret: &str) {
    let (out, err) = text(o);
    assert!(!out.contains(secret) && !err.contains(secret), "{secret:?} appears in the output:\n{out}\n{err}");
}

/// `--password-env` and `--password-file` log in where only a password
/// can; a wrong one is the typed "wrong password", exit 255; the password
/// shows nowhere, not even in the debug log.
#[test]
fn ssh_password_from_env_and_file_and_a_wrong_one() {
    let Some(sshd) = Sshd::start("ssh_password_from_env_and_file_and_a_wrong_one") else { return };
    let t = target(&sshd, "mito-user");

    let o = password_only(&mut mito(&sshd))
        .args(["-v", "--password-env", "MITO_PW", "run", &t, "--", "id", "-un"])
        .env("MITO_PW", PASSWORD)
        .output()
        .expect("mito");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(text(&o).0, "mito-user\n");
    assert_no_secret(&o, PASSWORD);

    let dir = TempDir::new("ssh-pwfile");
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{PASSWORD}\nnot part of it\n")).expect("write");
    let o = password_only(&mut mito(&sshd))
        .arg("--password-file")
        .arg(&file)
        .args(["run", &t, "--", "id", "-un"])
        .output()
        .expect("mito");
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "mito-user\n"), "{}", text(&o).1);
    assert_no_secret(&o, PASSWORD);

    // Without the flag the same login is refused: the flags did the work.
    let o = password_only(&mut mito(&sshd)).args(["run", &t, "--", "true"]).output().expect("mito");
    assert_fails(&o, "ssh: permission denied (");

    let wrong = "not-the-mito-password";
    for how in ["env", "file"] {
        let mut c = mito(&sshd);
        password_only(&mut c).arg("-v");
        if how == "env" {
            c.args(["--password-env", "MITO_PW"]).env("MITO_PW", wrong);
        } else {
            std::fs::write(&file, format!("{wrong}\n")).expect("write");
            c.arg("--password-file").arg(&file);
        }
        let o = c.args(["run", &t, "--", "true"]).output().expect("mito");
        assert_fails(&o, &format!("mito-user@127.0.0.1:{}: ssh: permission denied: wrong password", sshd.port));
        assert_no_secret(&o, wrong);
    }
}

/// `--ask-password` prompts on the terminal with echo off; what is typed
/// logs in, and never shows on the screen.
#[test]
fn ssh_ask_password_on_a_terminal() {
    let Some(sshd) = Sshd::start("ssh_ask_password_on_a_terminal") else { return };
    let t = target(&sshd, "mito-user");
    for (typed, ok) in [(PASSWORD, true), ("typed-wrong-password", false)] {
        let mut c = mito(&sshd);
        password_only(&mut c).args(["--ask-password", "run", &t, "--", "id", "-un"]);
        let mut p = tty::OnPty::spawn(&mut c, 24, 80);
        let (st, screen) = p.answer("ssh password: ", Duration::from_secs(10), typed);
        assert!(!screen.contains(typed), "the password was echoed: {screen:?}");
        if ok {
            assert_eq!(st.code(), Some(0), "{screen:?}");
            assert!(screen.contains("mito-user"), "{screen:?}");
        } else {
            assert_eq!(st.code(), Some(255), "{screen:?}");
            assert!(screen.contains("ssh: permission denied: wrong password"), "{screen:?}");
        }
    }
}

/// `--check-host-keys`: enforce refuses an unknown host; accept-new
/// records its key in known_hosts, after which enforce connects; a changed
/// key fails under both and is not overwritten.
#[test]
fn check_host_keys_accept_new_then_enforce_and_a_changed_key() {
    let Some(sshd) = Sshd::start("check_host_keys_accept_new_then_enforce_and_a_changed_key") else { return };
    let d = sshd.dir.path();
    let t = target(&sshd, "mito-user");
    let kh = d.join("cli_known_hosts");
    std::fs::write(&kh, "").expect("write");
    let run = |policy: &str, kh: &Path| {
        with_key(&mut mito_with_known_hosts(kh), &sshd)
            .args(["--check-host-keys", policy, "run", &t, "--", "echo", "in"])
            .output()
            .expect("mito")
    };
    assert_fails(&run("enforce", &kh), "host key verification failed: the host is not in known_hosts");
    assert_eq!(std::fs::read_to_string(&kh).expect("read"), "", "enforce records nothing");

    let o = run("accept-new", &kh);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "in\n"), "{}", text(&o).1);
    let host_key = std::fs::read_to_string(d.join("host_ed25519.pub")).expect("host key");
    let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    let recorded = std::fs::read_to_string(&kh).expect("read");
    assert!(
        recorded.lines().any(|l| l.starts_with(&format!("[127.0.0.1]:{} ", sshd.port)) && l.contains(&key.join(" "))),
        "known_hosts has the host's key: {recorded:?}"
    );
    let o = run("enforce", &kh);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "in\n"), "{}", text(&o).1);

    let other = d.join("cli_other_key");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status();
    assert!(st.is_ok_and(|s| s.success()));
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
    let wrong = d.join("cli_wrong_known_hosts");
    let line =
        format!("[127.0.0.1]:{} {}\n", sshd.port, other_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    std::fs::write(&wrong, &line).expect("write");
    for policy in ["accept-new", "enforce"] {
        assert_fails(&run(policy, &wrong), "ssh: host key verification failed: the host key has CHANGED");
        assert_eq!(std::fs::read_to_string(&wrong).expect("read"), line, "{policy} left the recorded key alone");
    }
}

/// An `ssh` first on PATH that records its argv and environment (NUL
/// separated, one file pair per call), then runs the real one.
struct SshSpy {
    dir: TempDir,
}

impl SshSpy {
    fn new() -> SshSpy {
        let dir = TempDir::new("ssh-spy");
        let real = ["/usr/bin/ssh", "/bin/ssh"].into_iter().find(|p| Path::new(p).exists()).expect("an ssh client");
        let d = dir.path().display();
        let script =
            format!("#!/bin/sh\nprintf '%s\\0' \"$@\" > '{d}/argv.'$$\nenv -0 > '{d}/env.'$$\nexec {real} \"$@\"\n");
        let p = dir.path().join("ssh");
        std::fs::write(&p, script).expect("write spy");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        SshSpy { dir }
    }

    /// PATH with the spy first.
    fn path(&self) -> std::ffi::OsString {
        let mut p = self.dir.path().as_os_str().to_owned();
        p.push(":");
        p.push(std::env::var_os("PATH").unwrap_or_default());
        p
    }

    /// (argv, environment) of every call so far.
    fn calls(&self) -> Vec<(Vec<String>, Vec<String>)> {
        let split = |p: PathBuf| -> Vec<String> {
            let b = std::fs::read(p).expect("read spy log");
            b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).expect("spy dir").filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("argv.") {
                out.push((split(e.path()), split(self.dir.path().join(format!("env.{pid}")))));
            }
        }
        out
    }
}

/// The `-o` options in an ssh argv.
fn dash_o(argv: &[String]) -> Vec<&str> {
    argv.windows(2).filter(|w| w[0] == "-o").map(|w| w[1].as_str()).collect()
}

/// The ssh command line is the README's: `-T` and only `-o` options
/// (LogLevel=ERROR, ConnectTimeout, Compression=no, ServerAliveInterval=15,
/// StrictHostKeyChecking), `BatchMode=yes` when no password is given, and
/// with a password `NumberOfPasswordPrompts=1` and askpass forced, the
/// password in neither argv nor environment; the remote command `sh -c`.
#[test]
fn ssh_command_line_batch_mode_or_one_password_prompt() {
    let Some(sshd) = Sshd::start("ssh_command_line_batch_mode_or_one_password_prompt") else { return };
    let t = target(&sshd, "mito-user");

    let spy = SshSpy::new();
    let o = with_key(&mut mito(&sshd), &sshd).env("PATH", spy.path()).args(["run", &t, "--", "true"]).output();
    let o = o.expect("mito");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let calls = spy.calls();
    assert_eq!(calls.len(), 1, "one ssh call: {calls:?}");
    let (argv, env) = &calls[0];
    let opts = dash_o(argv);
    for want in [
        "LogLevel=ERROR",
        "ConnectTimeout=20",
        "Compression=no",
        "ServerAliveInterval=15",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
    ] {
        assert!(opts.contains(&want), "-o {want} missing from {argv:?}");
    }
    assert!(argv.iter().any(|a| a == "-T"), "{argv:?}");
    assert!(!opts.iter().any(|o| o.starts_with("NumberOfPasswordPrompts")), "{argv:?}");
    assert!(argv.last().is_some_and(|c| c.starts_with("sh -c ")), "the remote command is sh -c: {argv:?}");
    assert!(!env.iter().any(|e| e.starts_with("SSH_ASKPASS")), "no askpass without a password: {env:?}");

    let spy = SshSpy::new();
    let o = password_only(&mut mito(&sshd))
        .env("PATH", spy.path())
        .env("MITO_PW", PASSWORD)
        .args(["--password-env", "MITO_PW", "run", &t, "--", "true"])
        .output()
        .expect("mito");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let calls = spy.calls();
    assert_eq!(calls.len(), 1, "one ssh call: {calls:?}");
    let (argv, env) = &calls[0];
    let opts = dash_o(argv);
    assert!(opts.contains(&"NumberOfPasswordPrompts=1"), "{argv:?}");
    assert!(!opts.iter().any(|o| o.starts_with("BatchMode")), "a password login must not be batch mode: {argv:?}");
    assert!(env.iter().any(|e| e == "SSH_ASKPASS_REQUIRE=force"), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("SSH_ASKPASS=")), "{env:?}");
    // MITO_PW is the test's own variable, handed down by inheritance:
    // nothing else in ssh's environment may carry the password.
    let leaks: Vec<_> = env.iter().filter(|e| e.contains(PASSWORD) && !e.starts_with("MITO_PW=")).collect();
    assert!(leaks.is_empty(), "password in ssh's environment: {leaks:?}");
    assert!(!argv.iter().any(|a| a.contains(PASSWORD)), "password in ssh's argv");
}

/// `ssh://H,sudo:a` and `ssh://H,sudo:b` in one command: one ssh client
/// (one login) carries both chains; each file lands as its own user.
#[test]
fn two_chains_through_one_host_share_one_ssh_connection() {
    let Some(sshd) = Sshd::start("two_chains_through_one_host_share_one_ssh_connection") else { return };
    if !common::become_users("two_chains_through_one_host_share_one_ssh_connection") {
        return;
    }
    let dir = TempDir::new("ssh-chains");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let src = dir.path().join("src");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&src, &data).expect("write");
    let (a, b) = (dir.path().join("as-root"), dir.path().join("as-user"));
    let host = target(&sshd, "mito-nopw");
    let spy = SshSpy::new();
    let o = with_key(&mut mito(&sshd), &sshd)
        .env("PATH", spy.path())
        .arg("put")
        .arg(&src)
        .arg(format!("{host},sudo:root:{}", a.display()))
        .arg(format!("{host},sudo:mito-user:{}", b.display()))
        .output()
        .expect("mito put");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let calls = spy.calls();
    assert_eq!(calls.len(), 1, "the two chains share one ssh connection, not {}: {calls:?}", calls.len());
    use std::os::unix::fs::MetadataExt;
    let user_uid = std::fs::metadata("/home/mito-user").expect("home").uid();
    for (p, uid) in [(&a, 0), (&b, user_uid)] {
        assert_eq!(std::fs::read(p).expect("copy"), data, "{}", p.display());
        assert_eq!(std::fs::metadata(p).expect("meta").uid(), uid, "{} written by its own chain", p.display());
    }
}

/// An ssh password cannot yet go through a hop: a typed `Unsupported`
/// (library and CLI) before any ssh starts, without the password in it.
#[test]
fn an_ssh_password_through_a_hop_is_unsupported() {
    let router = mito::Router::new().expect("router");
    let hop = router.local(mito::LocalOptions::default()).expect("hop");
    let secret = "secret-through-a-hop";
    let mut o = mito::SshOptions::new("127.0.0.1");
    o.port = Some(1);
    o.password = Some(secret.into());
    match hop.ssh(o) {
        Err(e @ mito::ConnectError::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("an ssh password through a hop is not supported yet"), "{msg}");
            assert!(msg.starts_with(hop.name()), "names the hop: {msg}");
            assert!(!msg.contains(secret), "{msg}");
        }
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(c) => panic!("connected to {}", c.name()),
    }
    hop.ping().expect("the hop carries on");

    let spy = SshSpy::new();
    let o = Command::new(MITO)
        .args([
            "-F",
            "/dev/null",
            "--password-env",
            "MITO_PW",
            "run",
            "local,ssh://mito-user@127.0.0.1:1",
            "--",
            "true",
        ])
        .env("MITO_PW", secret)
        .env("PATH", spy.path())
        .stdin(Stdio::null())
        .output()
        .expect("mito");
    assert_fails(&o, "an ssh password through a hop is not supported yet");
    assert_no_secret(&o, secret);
    assert!(spy.calls().is_empty(), "no ssh was started: {:?}", spy.calls());
}

/// No route: in a network namespace of our own whose only interface (lo)
/// is down, 127.0.0.1 is unreachable: the typed "no route to host".
#[test]
fn no_route_is_a_typed_error() {
    if !common::is_root() {
        return skip_loudly("no_route_is_a_typed_error", "a network namespace (unshare -n) needs root");
    }
    let t0 = Instant::now();
    let o = Command::new("unshare")
        .args([
            "-n",
            "--",
            MITO,
            "-F",
            "/dev/null",
            "--connect-timeout",
            "20",
            "run",
            "ssh://127.0.0.1:22",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let err = assert_fails(&o, "127.0.0.1:22: ssh: no route to host");
    assert!(err.contains("Network is unreachable"), "shows what ssh said: {err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "at once, not after the timeout: {:?}", t0.elapsed());
}

/// Connect timeout: a listener whose accept queue is full drops every new
/// SYN, so ssh's connect times out; mito says so, typed, at about
/// `--connect-timeout`.
#[test]
fn connect_timeout_is_a_typed_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // listen() again on a listening socket sets its backlog.
    // SAFETY: a valid socket fd.
    assert_eq!(unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) }, 0, "listen");
    let addr = listener.local_addr().expect("addr");
    // Backlog 0 queues one connection; once it is queued, SYNs are dropped.
    let mut fill = Vec::new();
    for _ in 0..2 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fill.push(s);
        }
    }
    assert!(!fill.is_empty(), "one connection queued");
    let t0 = Instant::now();
    let o = Command::new(MITO)
        .args(["-F", "/dev/null", "--connect-timeout", "2", "run", &format!("ssh://127.0.0.1:{}", addr.port())])
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("mito");
    let took = t0.elapsed();
    let err = assert_fails(&o, &format!("127.0.0.1:{}: ssh: connection timed out", addr.port()));
    assert!(err.contains("Connection timed out"), "shows what ssh said: {err}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "{took:?}");
}

/// A user whose login shell runs commands without `sh` on its PATH: the
/// bootstrap's `sh -c` cannot start, and mito says "no POSIX sh".
#[test]
fn no_posix_sh_is_a_typed_error() {
    let Some(sshd) = Sshd::start("no_posix_sh_is_a_typed_error") else { return };
    let user = "mito-nosh";
    let shell = "/usr/local/sbin/mito-test-nosh-shell";
    std::fs::create_dir_all("/usr/local/sbin").expect("mkdir");
    // A dash whose PATH has no sh: `dash -c "sh -c '…'"` → "sh: not found".
    let tmp = format!("{shell}.{}", std::process::id());
    std::fs::write(&tmp, "#!/bin/dash\nPATH=/nonexistent\nexport PATH\nexec /bin/dash \"$@\"\n").expect("write shell");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, shell).expect("rename");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "id -u {user} >/dev/null 2>&1 || useradd -m -s {shell} {user}; usermod -s {shell} {user} && echo '{user}:{PASSWORD}' | chpasswd"
        ))
        .status()
        .expect("useradd");
    assert!(st.success(), "creating {user}");
    let t0 = Instant::now();
    let o = with_key(&mut mito(&sshd), &sshd).args(["run", &target(&sshd, user), "--", "true"]).output().expect("mito");
    let err = assert_fails(
        &o,
        &format!("{user}@127.0.0.1:{}: ssh: the remote shell could not run the bootstrap (no POSIX sh?)", sshd.port),
    );
    assert!(err.contains("sh: not found"), "shows what the target said: {err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// `mito` sharing connections (the default) with its control sockets in
/// `dir`, this sshd's key and known_hosts.
fn shared(sshd: &Sshd, dir: &Path) -> Command {
    shared_timeout(sshd, dir, "20")
}

/// [`shared`] with a connect timeout of `secs`.
fn shared_timeout(sshd: &Sshd, dir: &Path, secs: &str) -> Command {
    let mut c = Command::new(MITO);
    c.args(["-F", "/dev/null", "--connect-timeout", secs, "--control-path-dir"])
        .arg(dir)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", sshd.dir.path().join("known_hosts").display()))
        .stdin(Stdio::null());
    with_key(&mut c, sshd);
    c
}

/// Whether a master answers on `dir`'s socket for this sshd (`ssh -O check`).
fn master_alive(sshd: &Sshd, dir: &Path) -> bool {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-p", &sshd.port.to_string(), "-l", "mito-user", "-o"])
        .arg(format!("ControlPath={}/%C", dir.display()))
        .args(["-O", "check", "127.0.0.1"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The sockets in `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Ends the master for this sshd in `dir` (`mito ssh-close`), so the test
/// leaves no ssh behind; says whether one was there.
fn close_master(sshd: &Sshd, dir: &Path) -> String {
    let o = shared(sshd, dir).args(["ssh-close", &target(sshd, "mito-user")]).output().expect("mito ssh-close");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    text(&o).0
}

/// The first run leaves a master (0700 directory, `ssh -O check`); a
/// second run goes through it alone: with the sshd's listener stopped it
/// still connects and runs. `ssh-close` ends it; then nothing answers.
#[test]
fn a_second_run_reuses_the_shared_connection() {
    let Some(sshd) = Sshd::start("a_second_run_reuses_the_shared_connection") else { return };
    let dir = TempDir::new("cm");
    let cm = dir.path().join("s");
    let t = target(&sshd, "mito-user");
    let o = shared(&sshd, &cm).args(["run", &t, "--", "echo", "first"]).output().expect("mito");
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "first\n"), "{}", text(&o).1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cm).expect("control dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the control directory is private");
    assert_eq!(sockets(&cm).len(), 1, "one control socket");
    assert!(master_alive(&sshd, &cm), "a master answers after mito exited");

    // No new TCP connection can be made now: only the master can serve.
    let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-sshd"))
        .arg("stop")
        .arg(sshd.dir.path())
        .status();
    assert!(st.is_ok_and(|s| s.success()));
    let t0 = Instant::now();
    let o = shared(&sshd, &cm).args(["ping", &t]).output().expect("mito");
    assert_eq!(o.status.code(), Some(0), "through the master: {}", text(&o).1);
    eprintln!("second connect through the master: {:?} for the whole run; {}", t0.elapsed(), text(&o).0.trim());
    let o = shared(&sshd, &cm).args(["--no-control-master", "run", &t, "--", "true"]).output().expect("mito");
    assert_fails(&o, "connection refused");

    assert_eq!(close_master(&sshd, &cm), format!("mito-user@127.0.0.1:{}: closed\n", sshd.port));
    assert!(!master_alive(&sshd, &cm), "no master after ssh-close");
    assert_eq!(close_master(&sshd, &cm), format!("mito-user@127.0.0.1:{}: no shared connection\n", sshd.port));
}

/// A socket file no master listens on (left by a killed master), or a
/// plain file where the socket goes: ssh replaces it and connects; one
/// that accepts and never answers: a typed timeout, no hang. `--no-control-master` and `--control-persist 0` leave no socket;
/// a control directory that is not private is not used (a warning, and
/// the run goes on unshared).
#[test]
fn stale_sockets_off_and_a_foreign_directory() {
    let Some(sshd) = Sshd::start("stale_sockets_off_and_a_foreign_directory") else { return };
    let dir = TempDir::new("cm");
    let cm = dir.path().join("s");
    let t = target(&sshd, "mito-user");
    let run = |extra: &[&str]| {
        let t0 = Instant::now();
        let o = shared(&sshd, &cm).args(extra).args(["run", &t, "--", "echo", "ok"]).output().expect("mito");
        assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "ok\n"), "{extra:?}: {}", text(&o).1);
        assert!(t0.elapsed() < Duration::from_secs(15), "{extra:?}: {:?}", t0.elapsed());
        o
    };
    run(&["--no-control-master"]);
    run(&["--control-persist", "0"]);
    assert!(sockets(&cm).is_empty(), "off: no socket: {:?}", sockets(&cm));

    run(&[]);
    let sock = sockets(&cm).pop().expect("a socket");
    assert!(master_alive(&sshd, &cm));
    close_master(&sshd, &cm);
    // A stale socket: bound, then its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind a stale socket"));
    run(&[]);
    assert!(master_alive(&sshd, &cm), "ssh replaced the stale socket with a live master");
    close_master(&sshd, &cm);
    std::fs::write(&sock, "not a socket").expect("write");
    run(&[]);
    close_master(&sshd, &cm);
    // A socket something listens on and never answers (a hung master):
    // no hang, a typed timeout within the connect timeout.
    let _ = std::fs::remove_file(&sock);
    let hung = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let t0 = Instant::now();
    let o = shared_timeout(&sshd, &cm, "3").args(["run", &t, "--", "true"]).output().expect("mito");
    assert_fails(&o, "timed out after 3s");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    drop(hung);
    let _ = std::fs::remove_file(&sock);

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let o = run(&[]);
    assert!(text(&o).1.contains("not sharing the connection"), "{}", text(&o).1);
    assert!(sockets(&cm).iter().all(|p| p.file_name() != sock.file_name()) || !master_alive(&sshd, &cm));
    assert!(!master_alive(&sshd, &cm), "no master in a directory others may use");
}

/// With a shared connection the agent still ends with mito: killed with
/// SIGKILL, its pipes close, the master ssh sees EOF on the session's
/// stdin and the agent exits; and when the ssh that mito started (the
/// multiplexing client) is killed, the master closes its session too, the
/// agent exits and mito reports the broken connection. The master itself
/// lives on (that is its point) until ssh-close.
#[test]
fn the_agent_ends_with_mito_through_a_shared_connection() {
    let Some(sshd) = Sshd::start("the_agent_ends_with_mito_through_a_shared_connection") else { return };
    let dir = TempDir::new("cm");
    let cm = dir.path().join("s");
    let t = target(&sshd, "mito-user");
    let start = || {
        let mut c = shared(&sshd, &cm);
        c.args(["run", "-n", &t, "--", "sh", "-c", "echo $PPID; exec sleep 60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().expect("mito");
        let mut out = child.stdout.take().expect("stdout");
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while std::io::Read::read(&mut out, &mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
            line.push(b[0]);
        }
        let agent: u32 = String::from_utf8_lossy(&line).trim().parse().expect("the agent's pid");
        (child, agent)
    };
    for round in 0..2 {
        let (mut child, agent) = start();
        assert!(common::alive(agent));
        assert!(master_alive(&sshd, &cm), "round {round}: shared");
        if round == 0 {
            common::kill9(child.id());
            let _ = child.wait();
        } else {
            let ssh = common::children_of(child.id())
                .into_iter()
                .map(|(p, _)| p)
                .find(|p| std::fs::read(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with(b"ssh")))
                .expect("mito's ssh");
            common::kill9(ssh);
            let st = child.wait().expect("wait");
            assert_eq!(st.code(), Some(255), "the lost connection is mito's failure");
        }
        assert!(common::wait_gone(agent, Duration::from_secs(10)).is_some(), "round {round}: agent {agent} orphaned");
        assert!(master_alive(&sshd, &cm), "round {round}: the master lives on");
    }
    close_master(&sshd, &cm);
}

/// The user's ssh config wins: with its own ControlMaster/ControlPath
/// (here in a `-F` file, through an `Include`), mito adds none of its
/// options, the master's socket is where that config says, and
/// `ssh-close` asks that master.
#[test]
fn the_users_own_control_master_wins() {
    let Some(sshd) = Sshd::start("the_users_own_control_master_wins") else { return };
    let dir = TempDir::new("cm");
    let (ours, theirs) = (dir.path().join("s"), dir.path().join("u"));
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let inc = dir.path().join("cm.conf");
    std::fs::write(
        &inc,
        format!("Host *\n  ControlMaster auto\n  ControlPath {}/%C\n  ControlPersist 30\n", theirs.display()),
    )
    .expect("write");
    let cfg = dir.path().join("config");
    std::fs::write(&cfg, format!("Include {}\n", inc.display())).expect("write");
    let t = target(&sshd, "mito-user");
    let run = |args: &[&str]| {
        let mut c = Command::new(MITO);
        c.arg("-F").arg(&cfg).args(["--connect-timeout", "20", "--control-path-dir"]).arg(&ours).arg("-o");
        c.arg(format!("UserKnownHostsFile={}", sshd.dir.path().join("known_hosts").display()));
        with_key(&mut c, &sshd).args(args).stdin(Stdio::null()).output().expect("mito")
    };
    let o = run(&["run", &t, "--", "echo", "ok"]);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "ok\n"), "{}", text(&o).1);
    assert!(sockets(&ours).is_empty(), "mito's directory unused: {:?}", sockets(&ours));
    assert_eq!(sockets(&theirs).len(), 1, "the user's master");
    let o = run(&["ssh-close", &t]);
    assert_eq!(text(&o).0, format!("mito-user@127.0.0.1:{}: closed\n", sshd.port), "{}", text(&o).1);
    assert!(sockets(&theirs).is_empty(), "ended: {:?}", sockets(&theirs));
}
