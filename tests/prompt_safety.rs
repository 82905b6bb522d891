//! Passwords reach only what they are for (issue 13), through the `mito`
//! CLI with real sudo, su and sshd:
//!
//! - a target user's login scripts that print fake prompts ("Password:",
//!   sudo's prompt read from its ancestors' argv with `ps`) and read the
//!   answer from the tty and stdin never receive the become password —
//!   NOPASSWD sudo, root's sudo and su, and after a real prompt was
//!   answered — and mito fails at once with a typed error, not a hang;
//! - nor do those of a user whose PAM asks for no password (an empty one),
//!   su'd to by another user: su has started (or reaped) the login shell;
//!   behind a hop too, where the hop's agent looks at su before typing;
//! - a become password belongs to the hop it names, never to the next hop
//!   of a chain;
//! - `--password-env`/`--become-pass-env` variables are not inherited by
//!   anything mito starts (`sudo -E`, a local agent);
//! - a ProxyJump host is never sent the target host's ssh password;
//! - a su "user" that looks like an option is a user that does not exist.

mod common;
mod tty;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{output_text, TempDir};

const PASSWORD: &str = common::sshd::PASSWORD;
/// The user whose login scripts lie (scripts/test-become).
const TRAP: &str = "mito-trap";

/// The test users once, and a copy of mito every user can run; None (with
/// a loud skip) when not root.
fn setup(test: &str) -> Option<&'static Path> {
    if !common::become_users(test) {
        return None;
    }
    Some(common::shared_mito_dir())
}

/// mito as `user` (root: directly), from /tmp, with `vars` in its
/// environment and stdin from /dev/null.
fn mito_as(dir: &Path, user: &str, vars: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = if user == "root" {
        Command::new(env!("CARGO_BIN_EXE_mito"))
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--", "env", &format!("HOME=/home/{user}")]).arg(dir.join("mito"));
        c
    };
    c.current_dir("/tmp").args(["--connect-timeout", "20"]).args(args).stdin(Stdio::null());
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

/// Runs `c`, which must end within `limit`.
fn output_within(c: &mut Command, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let o = c.output().expect("run mito");
    let took = t0.elapsed();
    assert!(took < limit, "took {took:?} (limit {limit:?}): {:?}", output_text(&o));
    (o, took)
}

/// The hostile login script: says it ran, finds sudo's `-p` prompt in the
/// argv of its sudo ancestor with `ps`, prints `Password: ` and then that prompt on
/// its stderr (the tty), and after each reads a line from the tty and from
/// stdin for 3 s into `captured`. Then the login goes on.
const PROFILE: &str = r#"# Written by mito's tests/prompt_safety.rs: a login script that fakes prompts.
h=/home/mito-trap
echo ran >"$h/ran"
tok=
p=$PPID
while [ "${p:-0}" -gt 1 ]; do
    if [ "$(ps -o comm= -p "$p")" = sudo ]; then
        t=$(ps -ww -o args= -p "$p" | tr ' ' '\n' | sed -n '/^-p$/{n;p;q;}')
        [ -n "$t" ] && tok=$t
    fi
    p=$(ps -o ppid= -p "$p" | tr -d ' ')
done
echo "token from ps: [$tok]" >>"$h/ran"
grab() {
    timeout --foreground 3 sh -c 'IFS= read -r l </dev/tty && printf "tty:%s\n" "$l"' >>"$h/captured" 2>/dev/null &
    timeout --foreground 3 sh -c 'IFS= read -r l && printf "stdin:%s\n" "$l"' >>"$h/captured" 2>/dev/null
    wait
}
printf 'Password: ' >&2
grab
if [ -n "$tok" ]; then
    printf '%s' "$tok" >&2
    grab
fi
"#;

/// Installs a login script as a test user's ~/.profile for the life of
/// the value (one test at a time: tests share the users).
struct Trap {
    user: &'static str,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Trap {
    fn home(&self) -> PathBuf {
        PathBuf::from(format!("/home/{}", self.user))
    }

    fn set(user: &'static str, profile: &str) -> Trap {
        static ONE: Mutex<()> = Mutex::new(());
        let guard = ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let trap = Trap { user, _one_at_a_time: guard };
        trap.write_profile(profile);
        trap.reset();
        trap
    }

    fn write_profile(&self, profile: &str) {
        let path = self.home().join(".profile");
        std::fs::write(&path, profile).expect("write .profile");
        let (uid, gid) = ids(self.user);
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
    }

    /// Forgets what the last run captured.
    fn reset(&self) {
        for f in ["captured", "ran"] {
            let _ = std::fs::remove_file(self.home().join(f));
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.home().join(name)).unwrap_or_default()
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.home().join(".profile"));
        self.reset();
    }
}

/// uid and gid of `user`.
fn ids(user: &str) -> (u32, u32) {
    let o = Command::new("id").arg(user).output().expect("id");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let num = |key: &str| -> u32 {
        let rest = &text[text.find(key).unwrap_or_else(|| panic!("{key} in {text}")) + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
    };
    (num("uid="), num("gid="))
}

/// With `--login` and a become password, the trap's login script runs and
/// fakes prompts: where nothing (or only the tool, already answered)
/// should be typed — NOPASSWD sudo, root's sudo, root's su, and after a
/// real prompt — it never receives the password, and mito fails at once
/// with the typed "not the tool's own" error.
#[test]
fn login_scripts_that_fake_prompts_never_get_the_password() {
    let Some(dir) = setup("login_scripts_that_fake_prompts_never_get_the_password") else { return };
    let trap = Trap::set(TRAP, PROFILE);
    let pw = [("MITO_PW", PASSWORD)];
    let sudo = format!("sudo:{TRAP}");
    let su = format!("su:{TRAP}");
    let cases: [(&str, &str, &str); 5] = [
        // Invoking user, target, what the case is.
        ("mito-nopw", &sudo, "NOPASSWD sudo: no prompt, the login script's are fake"),
        ("root", &sudo, "root's sudo: no prompt"),
        ("root", &su, "root's su: no prompt"),
        ("mito-sudoer", &sudo, "sudo asks (answered once); then the login script"),
        ("mito-sudoer", &su, "su asks (answered once); then the login script"),
    ];
    for (user, target, what) in cases {
        trap.reset();
        let args = ["--login", "--become-pass-env", "MITO_PW", "run", target, "--", "id", "-un"];
        let (o, took) = output_within(&mut mito_as(dir, user, &pw, &args), Duration::from_secs(15));
        let (out, err) = output_text(&o);
        let ran = trap.read("ran");
        let captured = trap.read("captured");
        eprintln!("{what}: {took:?}, exit {:?}\n  stderr: {err}  login script: {ran:?}", o.status.code());
        assert!(ran.starts_with("ran"), "{what}: the login script did not run: {out} {err}");
        assert!(!captured.contains(PASSWORD), "{what}: the login script got the password: {captured:?} ({ran})");
        assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD), "{what}: the password was shown: {out} {err}");
        common::assert_cli_fails(&o, "a password prompt that is not the tool's own", PASSWORD);
        assert!(err.contains(&format!("{target}: ")), "{what}: the error names the hop: {err}");
    }
    drop(trap);
}

/// The user with an empty password (scripts/test-become): su to it asks
/// nobody for a password (pam_unix `nullok`), so su runs its login script
/// at once.
const BLANK: &str = "mito-blank";

/// mito-blank's login script: fakes su's prompt at once, and reads a line
/// from the tty and from stdin for 3 s into `captured`.
const BLANK_PROFILE: &str = r#"# Written by mito's tests/prompt_safety.rs: su to this user asks nothing, then this fakes su's prompt.
h=/home/mito-blank
echo ran >"$h/ran"
printf 'Password: ' >&2
timeout --foreground 3 sh -c 'IFS= read -r l </dev/tty && printf "tty:%s\n" "$l"' >>"$h/captured" 2>/dev/null &
timeout --foreground 3 sh -c 'IFS= read -r l && printf "stdin:%s\n" "$l"' >>"$h/captured" 2>/dev/null
wait
"#;

/// mito-blank's login script, later: leaves a process behind that holds
/// stdin, and ends the login shell; once su has reaped the shell (its
/// children list, which anyone may read, is empty) while su is still
/// ending, that process fakes su's prompt and reads stdin. A look at su
/// then finds no child: what gives su away is that it exits, or had
/// reaped a process.
const LATE_PROFILE: &str = r#"# Written by mito's tests/prompt_safety.rs: fakes su's prompt after su reaped this shell.
h=/home/mito-blank
echo ran >"$h/ran"
su=$PPID
exec 3<&0
(
    trap '' HUP
    n=0
    while [ $n -lt 5000 ] && [ -n "$(cat /proc/$su/task/$su/children 2>/dev/null)" ]; do n=$((n + 1)); done
    echo "su reaped the shell after $n looks" >>"$h/ran"
    printf 'Password: ' >&2
    IFS= read -r l <&3 && printf 'stdin:%s\n' "$l" >>"$h/captured"
) &
exit 0
"#;

/// su run by a user other than root, to a user whose PAM asks nothing
/// (an empty password with `nullok`), runs the target's login script at
/// once. A "Password:" that script prints is not su's: su already has a
/// child (the script's shell), or has reaped it and is ending. With a
/// become password given, the script never receives it and mito fails at
/// once with the typed "not the tool's own" error naming the hop (it
/// cannot know whether the script would go on without an answer, and
/// waiting would hang on one that does not); a login script that prints
/// nothing lets the connect succeed, nothing typed.
#[test]
fn su_that_asks_nothing_never_types_into_the_targets_login_script() {
    let Some(dir) = setup("su_that_asks_nothing_never_types_into_the_targets_login_script") else { return };
    su_to_blank_never_types_into_its_login_script(dir, &format!("su:{BLANK}"));
}

/// The same behind a hop (`local,su:mito-blank`: mito-user's local agent
/// runs su): the master sees su's tty only as relayed text, and the hop's
/// agent, which runs su, looks at su's process before it types the
/// answer (`ExecOp::AnswerTool`). It refuses, and mito fails at once with
/// the same typed error, not a timeout.
#[test]
fn su_behind_a_hop_that_asks_nothing_never_types_into_the_targets_login_script() {
    let test = "su_behind_a_hop_that_asks_nothing_never_types_into_the_targets_login_script";
    let Some(dir) = setup(test) else { return };
    su_to_blank_never_types_into_its_login_script(dir, &format!("local,su:{BLANK}"));
}

/// mito-user's `mito --login --become-pass-env MITO_PW run TARGET -- id
/// -un`, where TARGET ends in su to mito-blank, against each hostile
/// login script, then against one that prints no prompt.
///
/// Behind a hop, the late prompt may also never reach the master: once su
/// has exited, the hop's agent takes the command's output as complete (a
/// grandchild's later output is not the command's), and the connect fails
/// at once as a target that ended before its agent started. Nothing is
/// typed either way.
fn su_to_blank_never_types_into_its_login_script(dir: &Path, target: &str) {
    let behind_a_hop = target.contains(',');
    let pw = [("MITO_PW", PASSWORD)];
    let args = ["--login", "--become-pass-env", "MITO_PW", "run", target, "--", "id", "-un"];
    let trap = Trap::set(BLANK, BLANK_PROFILE);
    let cases = [
        (BLANK_PROFILE, "the login script fakes su's prompt while su waits for it"),
        (LATE_PROFILE, "a process the login script left fakes su's prompt once su reaped the script's shell"),
    ];
    for (profile, what) in cases {
        trap.write_profile(profile);
        trap.reset();
        let (o, took) = output_within(&mut mito_as(dir, "mito-user", &pw, &args), Duration::from_secs(10));
        let (out, err) = output_text(&o);
        // Whatever was left behind reads until its stdin closes or 3 s.
        std::thread::sleep(Duration::from_millis(300));
        let ran = trap.read("ran");
        let captured = trap.read("captured");
        eprintln!("{target}: {what}: {took:?}, exit {:?}\n  stderr: {err}  login script: {ran:?}", o.status.code());
        assert!(ran.starts_with("ran"), "{what}: the login script did not run: {out} {err}");
        assert!(!captured.contains(PASSWORD), "{what}: the login script got the password: {captured:?} ({ran})");
        let ended = "the target closed the connection before the agent started";
        if behind_a_hop && profile == LATE_PROFILE && err.contains(ended) {
            common::assert_cli_fails(&o, &format!("{target}: bootstrap failed: {ended}"), PASSWORD);
        } else {
            common::assert_cli_fails(&o, "a password prompt that is not the tool's own", PASSWORD);
            assert!(err.contains(&format!("{target}: su to {BLANK}: ")), "{what}: the error names the hop: {err}");
        }
        assert!(took < Duration::from_secs(5), "{what}: not at once: {took:?}");
    }
    // A login script that prints no prompt: su asks nothing, nothing is
    // typed, and the connect goes on.
    trap.write_profile("echo ran >/home/mito-blank/ran\n");
    trap.reset();
    let (o, _) = output_within(&mut mito_as(dir, "mito-user", &pw, &args), Duration::from_secs(15));
    assert_eq!(output_text(&o), (format!("{BLANK}\n"), String::new()));
    assert_eq!(trap.read("ran"), "ran\n");
}

/// A chain's second become hop does not get the first hop's password:
/// given without a hop, a password is for the first become hop only; the
/// second one is "a password is required" until one is named for it
/// (by hop, or by the chain that ends in it), and different hops take
/// different passwords.
#[test]
fn each_become_hop_takes_its_own_password() {
    let Some(dir) = setup("each_become_hop_takes_its_own_password") else { return };
    // root → mito-sudoer needs none; mito-sudoer → root asks for mito-sudoer's.
    let chain = "sudo:mito-sudoer,sudo:root";
    let run = |vars: &[(&str, &str)], flags: &[&str]| {
        let args = [flags, &["run", chain, "--", "id", "-un"][..]].concat();
        output_within(&mut mito_as(dir, "root", vars, &args), Duration::from_secs(40)).0
    };
    let right = [("PW", PASSWORD)];
    let o = run(&right, &["--become-pass-env", "PW"]);
    let err = common::assert_cli_fails(&o, "a password is required", PASSWORD);
    assert!(err.contains("sudo:mito-sudoer,sudo:root: sudo to root"), "names the second hop: {err}");
    for named in ["sudo:root=PW", "sudo=PW", "sudo:mito-sudoer,sudo:root=PW"] {
        let o = run(&right, &["--become-pass-env", named]);
        assert_eq!(output_text(&o), ("root\n".into(), String::new()), "--become-pass-env {named}");
    }
    // Two hops, two passwords: the bare one (wrong, unused: root's sudo
    // does not ask) stays with the first hop.
    let two = [("WRONG", "not-the-password"), ("PW", PASSWORD)];
    let o = run(&two, &["--become-pass-env", "WRONG", "--become-pass-env", "sudo:root=PW"]);
    assert_eq!(output_text(&o).0, "root\n", "{}", output_text(&o).1);
    let o = run(&two, &["--become-pass-env", "PW", "--become-pass-env", "sudo:root=WRONG"]);
    common::assert_cli_fails(&o, "sudo:mito-sudoer,sudo:root: sudo to root: wrong password", PASSWORD);
    // A file for a named hop works the same way.
    let files = TempDir::new("hop-pw");
    let f = files.path().join("pw");
    std::fs::write(&f, format!("{PASSWORD}\n")).expect("write");
    let o = run(&[], &["--become-pass-file", &format!("sudo:root={}", f.display())]);
    assert_eq!(output_text(&o).0, "root\n", "{}", output_text(&o).1);
    // Two passwords for the same hop at the same level: refused, not guessed.
    let o = run(&two, &["--become-pass-env", "sudo:root=WRONG", "--become-pass-env", "sudo:root=PW"]);
    common::assert_cli_fails(&o, "more than one become password given for sudo:mito-sudoer,sudo:root", PASSWORD);
}

/// `--ask-become-pass=HOP` asks on the terminal, naming the hop, when that
/// hop is reached, and only for it (root's sudo to mito-sudoer asks nothing).
#[test]
fn ask_become_pass_for_a_named_hop() {
    let Some(dir) = setup("ask_become_pass_for_a_named_hop") else { return };
    let args = ["--ask-become-pass=sudo:root", "run", "sudo:mito-sudoer,sudo:root", "--", "id", "-un"];
    let mut p = tty::OnPty::spawn(&mut mito_as(dir, "root", &[], &args), 24, 80);
    let (st, screen) = p.answer("become password for sudo:root: ", Duration::from_secs(15), PASSWORD);
    assert_eq!(st.code(), Some(0), "{screen:?}");
    assert!(screen.contains("root\r\n"), "{screen:?}");
    assert!(!screen.contains(PASSWORD), "the password was echoed: {screen:?}");
    assert_eq!(screen.matches("password").count(), 1, "asked once, for that hop only: {screen:?}");
}

/// Both hops of `sudo:mito-user,su:mito-sudoer` (run as mito-sudoer) ask:
/// the bare password is sudo's, su's must be named.
#[test]
fn a_chain_where_both_hops_ask() {
    let Some(dir) = setup("a_chain_where_both_hops_ask") else { return };
    let chain = "sudo:mito-user,su:mito-sudoer";
    let run = |vars: &[(&str, &str)], flags: &[&str]| {
        let args = [flags, &["run", chain, "--", "id", "-un"][..]].concat();
        output_within(&mut mito_as(dir, "mito-sudoer", vars, &args), Duration::from_secs(40)).0
    };
    let vars = [("PW", PASSWORD), ("WRONG", "not-the-password")];
    let o = run(&vars, &["--become-pass-env", "PW"]);
    common::assert_cli_fails(&o, "su:mito-sudoer: su to mito-sudoer: a password is required", PASSWORD);
    let o = run(&vars, &["--become-pass-env", "PW", "--become-pass-env", "su:mito-sudoer=WRONG"]);
    common::assert_cli_fails(&o, "su to mito-sudoer: wrong password", PASSWORD);
    let o = run(&vars, &["--become-pass-env", "PW", "--become-pass-env", "su:mito-sudoer=PW"]);
    assert_eq!(output_text(&o).0, "mito-sudoer\n", "{}", output_text(&o).1);
}

/// The password variables leave mito's environment: `sudo -E` and a local
/// agent, which take mito's environment along, do not see them.
#[test]
fn password_variables_are_not_inherited() {
    let Some(dir) = setup("password_variables_are_not_inherited") else { return };
    let secret = "the-secret-value-7f3a";
    let runs: [(&str, &[&str]); 3] = [
        ("MITO_BPW", &["--become-pass-env", "MITO_BPW", "--preserve-env", "run", "sudo:mito-user", "--", "env"]),
        (
            "MITO_NAMED",
            &["--become-pass-env", "sudo:root=MITO_NAMED", "--preserve-env", "run", "sudo:mito-user", "--", "env"],
        ),
        ("MITO_SPW", &["--password-env", "MITO_SPW", "run", "local", "--", "env"]),
    ];
    for (var, args) in runs {
        let vars = [(var, secret), ("MITO_KEEP", "kept")];
        let (o, _) = output_within(&mut mito_as(dir, "root", &vars, args), Duration::from_secs(30));
        let (out, err) = output_text(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(out.contains("MITO_KEEP=kept"), "{args:?}: the environment went along: {out}");
        assert!(!out.contains(secret), "{args:?}: ${var} was inherited: {out}");
    }
}

/// A su "user" that is an option (`-m`: keep the environment and become
/// root; `--shell=…`) is a user that does not exist.
#[test]
fn su_user_names_are_never_options() {
    let Some(dir) = setup("su_user_names_are_never_options") else { return };
    for user in ["-m", "--shell=/bin/sh", "-"] {
        let target = format!("su:{user}");
        let (o, _) = output_within(
            &mut mito_as(dir, "root", &[], &["run", &target, "--", "id", "-un"]),
            Duration::from_secs(30),
        );
        common::assert_cli_fails(&o, &format!("{target}: su to {user}: no such user"), PASSWORD);
    }
}

/// A second sshd whose log (LogLevel INFO) says who authenticated how,
/// sharing the test sshd's host key and authorized keys; stopped by pid.
struct JumpSshd {
    dir: TempDir,
    port: u16,
    pid: u32,
}

impl JumpSshd {
    fn start(target: &common::sshd::Sshd) -> JumpSshd {
        let dir = TempDir::new("jump-sshd");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
        let t = target.dir.path();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}/host_ed25519\nPidFile {}/sshd.pid\n\
                 AuthorizedKeysFile {}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\nPrintMotd no\nLogLevel INFO\n",
                t.display(),
                dir.path().display(),
                t.display()
            ),
        )
        .expect("write sshd_config");
        let st = Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.path().join("sshd.log"))
            .status()
            .expect("start sshd");
        assert!(st.success(), "jump sshd did not start");
        let pidfile = dir.path().join("sshd.pid");
        let t0 = Instant::now();
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()) {
                break pid;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no pid file from the jump sshd");
            std::thread::sleep(Duration::from_millis(20));
        };
        JumpSshd { dir, port, pid }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for JumpSshd {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
}

/// `-o ProxyJump=…` with `--password-env`: OpenSSH runs the jump as its
/// own ssh, which inherits SSH_ASKPASS. A jump host that wants a password
/// is not sent the target's (it fails, saying so); a jump host that takes
/// a key lets the password reach the target as before.
#[test]
fn a_proxyjump_host_never_gets_the_target_password() {
    let test = "a_proxyjump_host_never_gets_the_target_password";
    let Some(target) = common::sshd::Sshd::start(test) else { return };
    let jump = JumpSshd::start(&target);
    let t = target.dir.path();
    let files = TempDir::new("jump-client");
    let key = std::fs::read_to_string(t.join("host_ed25519.pub")).expect("host key");
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    let known = files.path().join("known_hosts");
    let line = |port: u16| format!("[127.0.0.1]:{port} {}\n", key.join(" "));
    std::fs::write(&known, line(target.port) + &line(jump.port)).expect("known_hosts");
    // -F is the one thing ssh hands its ProxyJump ssh: both read this.
    let config = files.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host jumpkey jumppw\n  HostName 127.0.0.1\n  Port {}\n  User mito-user\n\
             Host jumppw\n  PubkeyAuthentication no\n\
             Host *\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  IdentityFile {}/id_ed25519\n  IdentitiesOnly yes\n",
            jump.port,
            known.display(),
            t.display()
        ),
    )
    .expect("ssh_config");
    let run = |jump_host: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mito"));
        c.args(["--connect-timeout", "15", "-F"]).arg(&config);
        c.args(["-o", "PubkeyAuthentication=no", "-o", &format!("ProxyJump={jump_host}")]);
        c.args(["--password-env", "MITO_PW", "run", &format!("ssh://mito-user@127.0.0.1:{}", target.port)]);
        c.args(["--", "id", "-un"]).env("MITO_PW", PASSWORD).stdin(Stdio::null());
        output_within(&mut c, Duration::from_secs(25)).0
    };

    let o = run("jumppw");
    let log = jump.log();
    assert!(!log.contains("Accepted password"), "the jump host was sent the target's password:\n{log}");
    let err = common::assert_cli_fails(&o, "ProxyJump", PASSWORD);
    assert!(err.contains("only for the target host"), "{err}");

    let o = run("jumpkey");
    let (out, err) = output_text(&o);
    assert_eq!(out, "mito-user\n", "the jump by key, the target by password: {err}");
    let log = jump.log();
    assert!(log.contains("Accepted publickey for mito-user"), "{log}");
    assert!(!log.contains("Accepted password"), "{log}");
}

/// The password reaches only the target host; an `id -un` through the
/// askpass path without a jump still works (the check is on the ssh that
/// asks, which mito started).
#[test]
fn ssh_password_without_a_jump_still_works() {
    let Some(sshd) = common::sshd::Sshd::start("ssh_password_without_a_jump_still_works") else { return };
    let router = mito::Router::new().expect("router");
    let ctx = router.ssh(sshd.password_opts("mito-user", Some(PASSWORD))).expect("ssh with a password");
    assert_eq!(ctx.info().expect("info").user, "mito-user");
}
