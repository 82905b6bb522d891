//! The README runs as written: every command line of its ```` ```sh ````
//! blocks is listed in [`checks`] with what it must print and exit with, and
//! runs here exactly as a user would paste it. A README command that is not
//! listed, or a listed one the README no longer shows, fails the test, so a
//! README edit cannot break (or drop) a command silently.
//!
//! The world the commands assume is built by `scripts/test-readme`: the
//! operator `deploy` runs them from a shell in their home, with an ordinary
//! `~/.ssh/config` that maps the README's hosts (`web1`, `db1`, `bastion`,
//! `10.0.0.5`, …) to a private sshd on 127.0.0.1 ports 22 and 2222. All of it
//! lives in a private mount and network namespace: only loopback exists (no
//! packet can leave, whatever a host name resolves to), and `/tmp`, `/srv`,
//! `/home/deploy` are private and `/etc` copy-on-write, so the commands that write
//! `/etc/motd` or `/srv` change nothing on the machine.
//!
//! Commands that cannot run unattended (an interactive `top`, a `tail -f`)
//! or that CI runs itself (`.ci/run` runs the set-up commands) are marked
//! in [`checks`] with the reason and, where there is one, the test that
//! covers their behaviour.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// scripts/test-sshd, as copied into the namespace.
const SSHD_SCRIPT: &str = "/tmp/mito-readme/test-sshd";

/// What one README command must do.
#[derive(Default)]
struct Check {
    /// Extra environment (what the README's comment says the user set).
    env: Vec<(&'static str, String)>,
    /// Standard input, when the command reads it (else /dev/null).
    stdin: Option<&'static str>,
    /// Exit status.
    code: i32,
    /// Text stdout must contain.
    stdout: Vec<&'static str>,
    /// Text stderr must contain.
    stderr: Vec<&'static str>,
    /// Further checks on the world afterwards (files written, …).
    after: Option<fn(&World, &std::process::Output)>,
}

enum How {
    /// Runs here and must do what the check says.
    Run(Check),
    /// Does not run unattended; the reason, and what covers it instead.
    NotRun(&'static str),
    /// `.ci/run` runs this line itself (it must appear there verbatim).
    ByCi,
}

fn run(code: i32, stdout: &[&'static str], stderr: &[&'static str]) -> How {
    How::Run(Check { code, stdout: stdout.to_vec(), stderr: stderr.to_vec(), ..Check::default() })
}

fn with(how: How, f: impl FnOnce(&mut Check)) -> How {
    match how {
        How::Run(mut c) => {
            f(&mut c);
            How::Run(c)
        }
        other => other,
    }
}

/// Every command line of the README's sh blocks, comment stripped.
fn checks() -> Vec<(&'static str, How)> {
    let pw = common::sshd::PASSWORD.to_string();
    vec![
        // Two commands
        ("rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl && cargo run --release -- run local -- uname -a", How::ByCi),
        ("rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl && cargo test", How::ByCi),
        // Containers
        ("mito info setns:4242", How::NotRun("needs a container; the setns:PID hop is tested in tests/containers.rs (cli_setns_and_chroot_hops)")),
        (
            "mito facts ssh://web1,sudo:root,setns:4242",
            How::NotRun("needs a container on web1; setns behind a hop is tested in tests/containers.rs (setns_behind_a_hop_starts_the_hops_own_agent)"),
        ),
        (
            "mito get sudo:root,chroot:/srv/rescue:/etc/fstab ./fstab",
            How::NotRun("needs a rescue tree; chroot hops (direct and behind one) are tested in tests/containers.rs (cli_setns_and_chroot_hops, chroot_runs_the_agent_in_a_tree_directly_and_behind_a_hop)"),
        ),
        (
            "mito run docker:web -- cat /etc/os-release",
            How::NotRun("needs a docker daemon; docker's forms through sh are tested over namespaces in tests/engines.rs (shim_every_tool_through_sh_and_without_a_shell)"),
        ),
        (
            "mito -v info podman:app",
            How::NotRun("needs a podman container; podman without a shell, with -v, is tested for real in tests/engines.rs (podman_for_real)"),
        ),
        (
            "mito facts ssh://node1,kubectl:prod/api-0/app",
            How::NotRun("needs a cluster; kubectl's forms, behind a hop too, are tested in tests/engines.rs (shim_behind_a_hop_and_from_the_cli)"),
        ),
        (
            "mito info ssh://host1,sudo:root,incus:c1",
            How::NotRun("needs incus on a host; incus, lxc and nerdctl are tested in tests/engines.rs (shim_every_tool_through_sh_and_without_a_shell), hops in shim_behind_a_hop_and_from_the_cli"),
        ),
        // CLI
        ("mito run local -- sh -c 'echo out; echo err >&2; exit 3'", run(3, &["out\n"], &["err\n"])),
        ("echo hi | mito run local -- tr a-z A-Z", run(0, &["HI\n"], &[])),
        (
            "mito run ssh://web1 -- tail -f /var/log/syslog",
            How::NotRun("runs until ^C; ^C forwarding to the remote process group is tested in tests/cli_run.rs"),
        ),
        (
            "mito run -t ssh://web1 -- top",
            How::NotRun("interactive; -t pty size and resize are tested in tests/cli_run.rs"),
        ),
        ("mito run --timeout 5 local -- sleep 60", run(124, &[], &["timed out after 5"])),
        ("mito run -e LANG=C --cwd /tmp local -- env", run(0, &["LANG=C\n"], &[])),
        ("mito ping local -c 1000", run(0, &["999 round trips: median"], &[])),
        (
            "mito info local --json",
            with(run(0, &["\"context\": \"local\""], &[]), |c| {
                c.after = Some(|_, out| {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info --json is JSON");
                    assert_eq!(v["user"], "deploy", "{v}");
                })
            }),
        ),
        ("mito -v run local -- true", run(0, &[], &["agent bytes sent"])),
        (
            "mito completions bash > ~/.mito.bash",
            with(run(0, &[], &[]), |c| {
                c.after = Some(|w, _| {
                    let script = std::fs::read_to_string(w.path("/home/deploy/.mito.bash")).expect("the script");
                    assert!(script.contains("ssh-close") && script.contains("--private-key"), "{script}");
                    let st = Command::new("bash").arg("-n").arg(w.path("/home/deploy/.mito.bash")).status();
                    assert!(st.is_ok_and(|s| s.success()), "bash -n accepts it");
                })
            }),
        ),
        // ssh
        ("mito run ssh://deploy@web1 -- id -un", run(0, &["deploy\n"], &[])),
        ("mito run ssh://web1:2222 --private-key ~/.ssh/id_ed25519 -- uptime", run(0, &["load average"], &[])),
        ("mito -o ProxyJump=bastion run ssh://10.0.0.5 -- df -h", run(0, &["Filesystem", "/srv"], &[])),
        (
            "mito --password-env MITO_PW run ssh://bob@host -- id",
            with(run(0, &["(bob)"], &[]), |c| c.env = vec![("MITO_PW", pw.clone())]),
        ),
        // The README's hosts are all one sshd: web1's shared connection is
        // newhost's too, and accept-new would have no key to record.
        ("mito ssh-close web1", run(0, &["web1: closed\n"], &[])),
        (
            "mito --check-host-keys accept-new info ssh://newhost",
            with(run(0, &["user:      deploy"], &[]), |c| {
                c.after = Some(|w, _| {
                    // Hashed or not (Debian hashes known_hosts), ssh-keygen -F finds it.
                    let kh = w.path("/home/deploy/.ssh/known_hosts_new");
                    let found = Command::new("ssh-keygen").args(["-F", "newhost", "-f"]).arg(&kh).output();
                    assert!(
                        found.is_ok_and(|o| o.status.success() && !o.stdout.is_empty()),
                        "accept-new recorded newhost's key in {}",
                        kh.display()
                    );
                })
            }),
        ),
        ("mito -v ping ssh://host", run(0, &["connected in"], &["agent bytes sent"])),
        // sudo, su, doas
        ("mito run sudo:www-data -- id -un", run(0, &["www-data\n"], &[])),
        (
            "mito --ask-become-pass run sudo:root -- apt-get update",
            How::NotRun("prompts on the terminal; --ask-become-pass through a pty is tested in tests/cli_become.rs"),
        ),
        (
            "mito --become-pass-env MITO_PW run su:alice -- id -un",
            with(run(0, &["alice\n"], &[]), |c| c.env = vec![("MITO_PW", pw.clone())]),
        ),
        ("mito --become-pass-file ~/.pw run doas:root -- id", run(0, &["uid=0(root)"], &[])),
        ("mito --preserve-env run sudo:alice -- env", run(0, &["USER=alice\n", "README_CHECK=kept\n"], &[])),
        ("mito --login run sudo:alice -- pwd", run(0, &["/home/alice\n"], &[])),
        // Chains
        ("mito run ssh://web1,sudo:root -- id -u", run(0, &["0\n"], &[])),
        ("mito run ssh://bastion,ssh://db1,sudo:www-data -- id -un", run(0, &["www-data\n"], &[])),
        (
            "mito put ./motd ssh://web1,sudo:root:/etc/motd ssh://web2,sudo:root:/etc/motd",
            with(run(0, &[], &["xxh3-128 verified"]), |c| {
                c.after = Some(|w, out| {
                    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("xxh3-128 verified").count(), 2);
                    assert_eq!(std::fs::read(w.path("/etc/motd")).ok(), Some(b"welcome from mito\n".to_vec()));
                })
            }),
        ),
        (
            "mito put ./pkg.deb ssh://gw,local:/tmp/a ssh://gw,sudo:root:/tmp/a",
            with(run(0, &[], &["xxh3-128 verified"]), |c| {
                c.after = Some(|w, out| {
                    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("xxh3-128 verified").count(), 2);
                    assert_eq!(
                        std::fs::read(w.path("/tmp/a")).ok(),
                        std::fs::read(w.path("/home/deploy/pkg.deb")).ok()
                    );
                })
            }),
        ),
        // Fleets (tests/fleet.rs covers local, ssh, become, mito_via and unreachable hosts)
        ("printf '[web]\\nweb[1:2]\\n[db]\\ndb1 ansible_become=true\\n' > hosts.ini", run(0, &[], &[])),
        ("mito -i hosts.ini run all --list-hosts", run(0, &["web1\nweb2\ndb1\n"], &[])),
        (
            "mito -i hosts.ini run all -- id -un",
            run(0, &["web[1:2] (2 hosts): ok\ndeploy\ndb1: ok\nroot\n3 ok, 0 failed, 0 unreachable\n"], &[]),
        ),
        (
            "mito -i hosts.ini run 'all:!db' --json -- uname -s",
            with(run(0, &["\"host\":\"web2\""], &["2 ok, 0 failed, 0 unreachable"]), |c| {
                c.after = Some(|_, out| {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let hosts: Vec<String> = text
                        .lines()
                        .map(|l| {
                            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                            assert_eq!((v["status"].as_str(), v["stdout"].as_str()), (Some("ok"), Some("Linux\n")), "{v}");
                            v["host"].as_str().unwrap_or_default().to_string()
                        })
                        .collect();
                    assert_eq!(hosts, ["web1", "web2"]);
                })
            }),
        ),
        (
            "mito -i hosts.ini run web --stream -- uname -n",
            run(0, &["web1 | ", "web2 | ", "web[1:2] (2 hosts): ok\n2 ok, 0 failed, 0 unreachable\n"], &[]),
        ),
        (
            "mito -i hosts.ini put motd 'web:/tmp/motd'",
            // web1 and web2 are one machine here: the second put may find the file there.
            with(run(0, &["put motd -> /tmp/motd: ", "2 ok, 0 failed, 0 unreachable\n"], &[]), |c| {
                c.after = Some(|w, _| {
                    assert_eq!(std::fs::read(w.path("/tmp/motd")).ok().as_deref(), Some(&b"welcome from mito\n"[..]));
                })
            }),
        ),
        (
            "mito -i hosts.ini get 'all:/etc/hostname' fetched",
            with(run(0, &["3 ok, 0 failed, 0 unreachable"], &[]), |c| {
                c.after = Some(|w, _| {
                    for h in ["web1", "web2", "db1"] {
                        let p = w.path(&format!("/home/deploy/fetched/{h}/hostname"));
                        assert!(p.exists(), "{} was fetched", p.display());
                    }
                })
            }),
        ),
        (
            "mito -i 'web1,127.0.0.1:1,' ping all",
            run(4, &["web1: ok\npong\n", "127.0.0.1: unreachable (connection-refused)", "1 ok, 0 failed, 1 unreachable"], &[]),
        ),
        // Files and facts
        (
            "mito put ./app.tar.gz ssh://web1:/srv/app.tar.gz",
            with(run(0, &[], &["xxh3-128 verified"]), |c| {
                c.after = Some(|w, _| {
                    let (a, b) = (w.path("/home/deploy/app.tar.gz"), w.path("/srv/app.tar.gz"));
                    assert_eq!(std::fs::read(b).expect("/srv/app.tar.gz"), std::fs::read(a).expect("app.tar.gz"));
                })
            }),
        ),
        (
            "mito get sudo:root:/etc/shadow ./shadow.copy",
            with(run(0, &[], &["xxh3-128 verified"]), |c| {
                c.after = Some(|w, _| {
                    // Compared without printing it; other test binaries may
                    // change test users' hashes meanwhile, so line by name.
                    let copy = std::fs::read_to_string(w.path("/home/deploy/shadow.copy")).expect("shadow.copy");
                    let real = std::fs::read_to_string("/etc/shadow").expect("/etc/shadow");
                    let names =
                        |t: &str| t.lines().map(|l| l.split(':').next().unwrap_or("").to_string()).collect::<Vec<_>>();
                    assert!(names(&copy) == names(&real), "shadow.copy lists the same accounts as /etc/shadow");
                    let root = |t: &str| t.lines().find(|l| l.starts_with("root:")).map(str::to_string);
                    assert!(root(&copy).is_some() && root(&copy) == root(&real), "root's line is the same");
                })
            }),
        ),
        (
            "mito put -r ./site ssh://web1:/srv/site",
            with(run(0, &[], &["2 files, 2 dirs"]), |c| {
                c.after = Some(|w, _| {
                    assert_eq!(std::fs::read(w.path("/srv/site/css/main.css")).ok(), Some(b"body{}\n".to_vec()));
                })
            }),
        ),
        // Sync
        (
            "mito sync -r ./site ssh://web1:/srv/www",
            with(run(0, &["changed index.html", "changed css/main.css"], &["2 files checked, 2 changed"]), |c| {
                c.after = Some(|w, _| {
                    assert_eq!(std::fs::read(w.path("/srv/www/css/main.css")).ok(), Some(b"body{}\n".to_vec()));
                })
            }),
        ),
        (
            "mito sync -r --delete ./site local:/tmp/site-mirror",
            with(run(0, &["index.html"], &["2 files checked"]), |c| {
                c.after = Some(|w, _| {
                    assert_eq!(std::fs::read(w.path("/tmp/site-mirror/index.html")).ok(), Some(b"<h1>hi</h1>\n".to_vec()));
                })
            }),
        ),
        (
            "mito get ssh://web1:/etc/hosts ./backup/",
            with(run(0, &[], &["xxh3-128 verified"]), |c| {
                c.after = Some(|w, _| {
                    assert_eq!(
                        std::fs::read(w.path("/home/deploy/backup/hosts")).ok(),
                        std::fs::read("/etc/hosts").ok()
                    );
                })
            }),
        ),
        (
            "mito facts ssh://web1 --json",
            with(run(0, &["\"kernel\""], &[]), |c| {
                c.after = Some(|_, out| {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("facts --json is JSON");
                    assert!(v["cpus"].as_u64().is_some_and(|n| n >= 1), "{v}");
                })
            }),
        ),
        // Measured
        (
            "scripts/bench --quick",
            How::NotRun("a benchmark: minutes of both cores and 1.3 GiB of files; .ci/run runs the --only line"),
        ),
        (
            "scripts/bench --json results.jsonl",
            How::NotRun("the full benchmark (~5 minutes); .ci/run runs the --only line"),
        ),
        ("scripts/bench --only rtt_local,ssh_connect", How::ByCi),
        // Your own functions: cargo builds in the checkout, not in the
        // README's namespace; tests/custom_agent.rs builds and runs the same
        // example agent (and a test agent) too.
        (
            "cargo build --release --example custom_agent --no-default-features --features agent,std --target x86_64-unknown-linux-musl",
            How::ByCi,
        ),
        ("cargo run --release --example custom_master -- /etc", How::ByCi),
        (
            "mito build-agent --example custom_agent --no-default-features --features agent,std",
            How::NotRun(
                "cargo builds in the checkout, not in the README's namespace; \
                 tests/custom_agent.rs mito_build_agent_builds_and_checks_the_example_agent runs it there",
            ),
        ),
    ]
}

/// The command lines of the README's ```` ```sh ```` blocks.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if !in_sh || t.is_empty() || t.starts_with('#') {
            continue;
        }
        // A comment is set off by two spaces ("cmd   # what it does").
        let cmd = t.find("  #").map_or(t, |i| &t[..i]).trim_end();
        out.push(cmd.to_string());
    }
    out
}

#[test]
fn every_readme_command_is_checked_and_no_check_is_stale() {
    let readme = readme_commands();
    let checks = checks();
    let unlisted: Vec<_> = readme.iter().filter(|c| !checks.iter().any(|(k, _)| k == c)).collect();
    assert!(unlisted.is_empty(), "README commands with no check in tests/readme.rs (add one): {unlisted:#?}");
    let stale: Vec<_> = checks.iter().filter(|(k, _)| !readme.iter().any(|c| c == k)).map(|(k, _)| k).collect();
    assert!(stale.is_empty(), "checks for commands the README no longer shows: {stale:#?}");
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).expect(".ci/run");
    for (cmd, how) in &checks {
        match how {
            How::ByCi => {
                assert!(ci.lines().any(|l| l.trim() == *cmd), ".ci/run must run the README's `{cmd}` verbatim")
            }
            How::NotRun(why) => {
                assert!(why.len() > 20, "say why `{cmd}` does not run, and what covers it");
                // A test file named as covering it must exist.
                for word in why.split_whitespace().filter(|w| w.starts_with("tests/")) {
                    let f = word.trim_end_matches([',', ';', ')']);
                    assert!(Path::new(ROOT).join(f).exists(), "`{cmd}`: {f} (named as covering it) does not exist");
                }
            }
            How::Run(_) => {}
        }
    }
}

/// The private namespaces the commands run in, and the sshd there.
struct World {
    holder: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl World {
    /// `path` as seen inside the namespace.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-n", "--"]);
        c
    }

    /// Writes `data` at `path` inside, owned by `owner`.
    fn write(&self, path: &str, data: &[u8], mode: u32, owner: u32) {
        let p = self.path(path);
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&p, Some(owner), Some(owner)).expect("chown");
    }

    /// Kills the master ssh processes the README's ssh commands left
    /// (mito shares connections for 60 s; an idle master holds SIGTERM
    /// back, so SIGKILL): by pid, those whose control
    /// socket is deploy's and whose mount namespace is this world's.
    fn stop_shared_connections(&self) {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let ours = ns(&self.pid.to_string());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            let Ok(n) = pid.parse::<i32>() else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"ssh: /home/deploy/.cache/mito/ssh/") && ours.is_some() && ns(&pid) == ours {
                if let Some(p) = rustix::process::Pid::from_raw(n) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }

    fn mkdir(&self, path: &str, mode: u32, owner: u32) {
        let p = self.path(path);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&p, Some(owner), Some(owner)).expect("chown");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_shared_connections();
        let _ = self.nsenter().args([SSHD_SCRIPT, "stop", "/tmp/sshd"]).status();
        drop(self.stdin.take());
        let _ = self.holder.wait();
    }
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no user {user}"))
}

/// Builds the README's world: users, namespaces, sshd, deploy's home.
fn world() -> World {
    let st = Command::new(Path::new(ROOT).join("scripts/test-readme"))
        .arg("users")
        .env("MITO_TEST_PASSWORD", common::sshd::PASSWORD)
        .status();
    assert!(st.is_ok_and(|s| s.success()), "scripts/test-readme users failed");
    let mut holder = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(Path::new(ROOT).join("scripts/test-readme"))
        .arg("ns")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare runs (util-linux)");
    let mut line = String::new();
    let stdout = holder.stdout.take().expect("stdout");
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "scripts/test-readme ns did not set up the namespaces");
    let stdin = holder.stdin.take();
    let w = World { pid: holder.id(), holder, stdin };

    // The namespace's /tmp is a fresh tmpfs: a checkout (and the target
    // dir) under /tmp is not visible in there, so what runs inside is
    // copied in first.
    w.mkdir("/tmp/mito-readme/bin", 0o755, 0);
    for (from, to) in [
        (Path::new(ROOT).join("scripts/test-sshd"), SSHD_SCRIPT),
        (PathBuf::from(env!("CARGO_BIN_EXE_mito")), "/tmp/mito-readme/bin/mito"),
    ] {
        std::fs::copy(&from, w.path(to)).unwrap_or_else(|e| panic!("copy {} in: {e}", from.display()));
        std::fs::set_permissions(w.path(to), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let st = w.nsenter().args([SSHD_SCRIPT, "start", "/tmp/sshd", "22,2222"]).output();
    assert!(
        st.as_ref().is_ok_and(|o| o.status.success()),
        "test-sshd start in the namespace: {:?}",
        st.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );

    let deploy = uid_of("deploy");

    // deploy's ~/.ssh: the key the sshd accepts, its host key, and a config
    // naming the README's hosts. `newhost` has its own, empty known_hosts
    // (accept-new records it there); bob logs in with a password only.
    w.mkdir("/home/deploy/.ssh", 0o700, deploy);
    let key = std::fs::read(w.path("/tmp/sshd/id_ed25519")).expect("client key");
    w.write("/home/deploy/.ssh/id_ed25519", &key, 0o600, deploy);
    let host_key = std::fs::read_to_string(w.path("/tmp/sshd/host_ed25519.pub")).expect("host key");
    let host_key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    w.write("/home/deploy/.ssh/known_hosts", format!("mito-readme-sshd {host_key}\n").as_bytes(), 0o600, deploy);
    let config = "\
Host newhost
    HostKeyAlias newhost
    UserKnownHostsFile ~/.ssh/known_hosts_new
Match user bob
    PubkeyAuthentication no
Host web1 web2 db1 bastion gw host newhost 10.0.0.5
    HostName 127.0.0.1
    User deploy
    HostKeyAlias mito-readme-sshd
";
    w.write("/home/deploy/.ssh/config", config.as_bytes(), 0o600, deploy);

    // The files the README's commands name, in deploy's home.
    let files: [(&str, &[u8]); 5] = [
        ("/home/deploy/.pw", format!("{}\n", common::sshd::PASSWORD).into_bytes().leak()),
        ("/home/deploy/motd", b"welcome from mito\n"),
        ("/home/deploy/pkg.deb", vec![7u8; 300_000].leak()),
        ("/home/deploy/app.tar.gz", vec![42u8; 1_500_000].leak()),
        ("/home/deploy/site/index.html", b"<h1>hi</h1>\n"),
    ];
    w.mkdir("/home/deploy/site/css", 0o755, deploy);
    w.mkdir("/home/deploy/backup", 0o755, deploy);
    for (p, data) in files {
        w.write(p, data, 0o600, deploy);
    }
    w.write("/home/deploy/site/css/main.css", b"body{}\n", 0o644, deploy);
    w
}

/// Runs `cmd` as deploy would type it in a shell in their home.
fn run_as_deploy(w: &World, cmd: &str, check: &Check) -> std::process::Output {
    let mut c = w.nsenter();
    c.args(["runuser", "-u", "deploy", "--", "env", "-i"]);
    c.args([
        "PATH=/tmp/mito-readme/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME=/home/deploy",
        "USER=deploy",
        "LOGNAME=deploy",
        "SHELL=/bin/sh",
        "LANG=C.UTF-8",
        "README_CHECK=kept",
    ]);
    for (k, v) in &check.env {
        c.arg(format!("{k}={v}"));
    }
    c.args(["bash", "-c", &format!("cd ~ && {cmd}")]);
    c.stdin(if check.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("nsenter runs");
    if let (Some(text), Some(mut i)) = (check.stdin, child.stdin.take()) {
        let _ = i.write_all(text.as_bytes());
    }
    // Read both pipes on threads, so a command that fills one never blocks.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("README command `{cmd}` still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() }
}

#[test]
fn readme_commands_run_as_written() {
    if !common::is_root() {
        common::skip_loudly(
            "readme_commands_run_as_written",
            "the README's world (users, sudoers, namespaces, an sshd on port 22 of a private network) needs root",
        );
        return;
    }
    let w = world();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (cmd, how) in checks() {
        let How::Run(check) = how else { continue };
        ran += 1;
        let out = run_as_deploy(&w, cmd, &check);
        let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let mut why = Vec::new();
        if out.status.code() != Some(check.code) {
            why.push(format!("exit {:?}, expected {}", out.status.code(), check.code));
        }
        why.extend(check.stdout.iter().filter(|s| !so.contains(*s)).map(|s| format!("stdout lacks {s:?}")));
        why.extend(check.stderr.iter().filter(|s| !se.contains(*s)).map(|s| format!("stderr lacks {s:?}")));
        if why.is_empty() {
            if let Some(after) = check.after {
                if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| after(&w, &out))) {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    why.push(format!("afterwards: {msg}"));
                }
            }
        }
        if !why.is_empty() {
            failures.push(format!("`{cmd}`: {}\n--- stdout:\n{so}--- stderr:\n{se}", why.join("; ")));
        }
    }
    assert!(ran >= 25, "only {ran} README commands ran");
    assert!(failures.is_empty(), "{} README command(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}
