//! Runs on host patterns of an Ansible inventory through the `mito` CLI
//! (README, "Fleets"): `--list-hosts` and patterns, a run on every host
//! with identical outputs folded, unreachable hosts reported without
//! stopping the others and within the connect timeout, the exit statuses,
//! `--json` lines, hosts behind a `mito_via` hop, and (as root, with the
//! private sshd of scripts/test-sshd and the users of scripts/test-become)
//! ssh hosts and a become host from inventory variables.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::TempDir;

const MITO: &str = env!("CARGO_BIN_EXE_mito");

use common::output_text as text;

/// `mito -i INV --connect-timeout 10 ARGS…`, from /tmp, no stdin, no
/// user ssh config, no shared ssh connections (none left behind; the
/// sharing is tested in tests/cli_ssh.rs).
fn mito(inv: &Path, args: &[&str]) -> Output {
    Command::new(MITO)
        .current_dir("/tmp")
        .env_remove("MITO_INVENTORY")
        .args(["-F", "/dev/null", "--no-control-master", "--connect-timeout", "10", "-i"])
        .arg(inv)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("mito runs")
}

/// A loopback port nothing listens on: bound, read, let go.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The JSON lines of a `--json` run, by host.
fn json_by_host(o: &Output) -> Vec<(String, serde_json::Value)> {
    text(o)
        .0
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (v["host"].as_str().expect("host").to_string(), v)
        })
        .collect()
}

/// Local hosts only (and one on a closed port): no root needed.
fn local_inventory(dir: &TempDir) -> std::path::PathBuf {
    let inv = dir.path().join("hosts.ini");
    let text = format!(
        "# hosts that are this machine\n\
         [web]\n\
         web[01:03] ansible_connection=local\n\
         \n\
         [db]\n\
         db1 ansible_connection=local mito_via=web01\n\
         \n\
         [gone]\n\
         dead ansible_host=127.0.0.1 ansible_port={}\n\
         \n\
         [prod:children]\n\
         web\n\
         db\n\
         \n\
         [prod:vars]\n\
         ansible_python_interpreter=/usr/bin/python3\n",
        closed_port()
    );
    std::fs::write(&inv, text).expect("write inventory");
    inv
}

/// `--list-hosts` prints what each pattern selects, in inventory order,
/// and exits 0 without connecting anywhere.
#[test]
fn patterns_select_hosts() {
    let dir = TempDir::new("fleet-patterns");
    let inv = local_inventory(&dir);
    for (pattern, want) in [
        ("all", "web01\nweb02\nweb03\ndb1\ndead\n"),
        ("prod", "web01\nweb02\nweb03\ndb1\n"),
        ("web*:db1", "web01\nweb02\nweb03\ndb1\n"),
        ("prod:!web02", "web01\nweb03\ndb1\n"),
        ("all:&prod:!db", "web01\nweb02\nweb03\n"),
        ("web[1:2]", "web02\nweb03\n"),
    ] {
        let o = mito(&inv, &["run", pattern, "--list-hosts"]);
        assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), want), "{pattern}: {}", text(&o).1);
    }
    let o = mito(&inv, &["ping", "all", "--limit", "db:gone", "--list-hosts"]);
    assert_eq!(text(&o).0, "db1\ndead\n");
    // Not a pattern of this inventory: a plain target, as without one.
    let o = mito(&inv, &["run", "local", "--", "echo", "plain"]);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "plain\n"), "{}", text(&o).1);
    let o = mito(&inv, &["run", "local,sudo:root", "--list-hosts"]);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), ""));
}

/// `mito run all`: identical outputs fold under one heading, the host on
/// the closed port is unreachable (connection refused) and does not stop
/// the others, the summary counts them, and the exit status says some
/// host was unreachable (4), or some command failed (3), or all ok (0).
#[test]
fn run_all_folds_outputs_and_reports_the_unreachable() {
    let dir = TempDir::new("fleet-run");
    let inv = local_inventory(&dir);
    let t0 = Instant::now();
    let o = mito(&inv, &["run", "all", "--", "echo", "same"]);
    let (out, err) = text(&o);
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(4), "{out}\n{err}");
    assert!(out.starts_with("web[01:03],db1 (4 hosts): ok\nsame\n"), "{out}");
    assert!(out.contains("dead: unreachable (connection-refused): "), "{out}");
    assert!(out.ends_with("4 ok, 0 failed, 1 unreachable\n"), "{out}");

    let o = mito(&inv, &["run", "prod:!db1", "--", "sh", "-c", "echo \"$1\"; exit 3", "sh", "x"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.starts_with("web[01:03] (3 hosts): failed (exit 3)\nx\n"), "{out}");
    assert!(out.ends_with("0 ok, 3 failed, 0 unreachable\n"), "{out}");

    let o = mito(&inv, &["ping", "prod", "-f", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(text(&o).0, "web[01:03],db1 (4 hosts): ok\npong\n4 ok, 0 failed, 0 unreachable\n");
}

/// `--json`: one object a line per host with its status, exit code,
/// output, duration and error kind; the summary goes to stderr. The host
/// behind `mito_via=web01` runs under web01's agent.
#[test]
fn json_lines_and_a_host_behind_a_via_hop() {
    let dir = TempDir::new("fleet-json");
    let inv = local_inventory(&dir);
    // The command's parent is its agent; print that agent's pid and its parent's.
    let show = "read -r _ _ _ ppid _ < /proc/$PPID/stat; echo $PPID $ppid";
    let o = mito(&inv, &["run", "all", "--json", "--", "sh", "-c", show]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    assert!(text(&o).1.contains("4 ok, 0 failed, 1 unreachable"), "{}", text(&o).1);
    let lines = json_by_host(&o);
    let names: Vec<&str> = lines.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, ["web01", "web02", "web03", "db1", "dead"]);
    for (host, v) in &lines[..4] {
        assert_eq!((v["status"].as_str(), v["exit_code"].as_i64()), (Some("ok"), Some(0)), "{host}: {v}");
        assert!(v["duration_ms"].as_u64().is_some() && v["error_kind"].is_null(), "{host}: {v}");
    }
    let dead = &lines[4].1;
    assert_eq!(
        (dead["status"].as_str(), dead["error_kind"].as_str(), dead["exit_code"].as_i64()),
        (Some("unreachable"), Some("connection-refused"), None),
        "{dead}"
    );
    assert!(dead["error"].as_str().is_some_and(|e| e.contains("connection refused")), "{dead}");
    let pids = |i: usize| -> Vec<u32> {
        let out = lines[i].1["stdout"].as_str().expect("stdout").to_string();
        out.split_whitespace().map(|p| p.parse().expect("pid")).collect()
    };
    let (web01, db1) = (pids(0), pids(3));
    assert_eq!(db1[1], web01[0], "db1's agent is a child of web01's agent");
    assert_ne!(pids(1)[0], web01[0], "one agent per host");

    let o = mito(&inv, &["run", "web01", "--json", "--", "sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(3));
    let v = &json_by_host(&o)[0].1;
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64(), v["stderr"].as_str(), v["error_kind"].as_str()),
        (Some("failed"), Some(7), Some("oops\n"), Some("exit")),
        "{v}"
    );
}

/// A bad inventory is an error naming its file and line (exit 255).
#[test]
fn a_bad_inventory_names_file_and_line() {
    let dir = TempDir::new("fleet-bad");
    let inv = dir.path().join("bad.ini");
    std::fs::write(&inv, "[web]\nweb1 ansible_connection=local\nweb2 ansible_port\n").expect("write");
    let o = mito(&inv, &["run", "all", "--", "true"]);
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(255), "{err}");
    assert!(err.contains(&format!("inventory {}:3: ", inv.display())), "{err}");
    let yml = dir.path().join("bad.yml");
    std::fs::write(&yml, "all:\n  hosts:\n    web1:\n      ansible_port: [1, 2\n").expect("write");
    let o = mito(&yml, &["ping", "all"]);
    assert_eq!(o.status.code(), Some(255));
    assert!(text(&o).1.contains(&format!("inventory {}:", yml.display())), "{}", text(&o).1);
}

/// As root: a YAML inventory with two hosts on the private sshd (key,
/// user and known_hosts from inventory variables), one become host
/// (`ansible_become=true ansible_become_user=mito-user`, root's sudo), two
/// local hosts and one on a closed port: `run all -- id -un` reaches
/// every host but the closed one, within the connect timeout.
#[test]
fn ssh_and_become_hosts_from_inventory_variables() {
    let Some(sshd) = Sshd::start("ssh_and_become_hosts_from_inventory_variables") else { return };
    if !common::become_users("ssh_and_become_hosts_from_inventory_variables") {
        return;
    }
    let dir = TempDir::new("fleet-ssh");
    let inv = dir.path().join("inventory.yml");
    let key = sshd.dir.path().join("id_ed25519");
    let kh = sshd.dir.path().join("known_hosts");
    let yaml = format!(
        "all:\n\
         \x20 vars:\n\
         \x20   ansible_ssh_common_args: '-o UserKnownHostsFile={kh}'\n\
         \x20 children:\n\
         \x20   sshd:\n\
         \x20     hosts:\n\
         \x20       s[1:2]:\n\
         \x20         ansible_host: 127.0.0.1\n\
         \x20     vars:\n\
         \x20       ansible_port: {port}\n\
         \x20       ansible_user: mito-user\n\
         \x20       ansible_ssh_private_key_file: {key}\n\
         \x20   locals:\n\
         \x20     vars:\n\
         \x20       ansible_connection: local\n\
         \x20     hosts:\n\
         \x20       l1:\n\
         \x20       l2:\n\
         \x20       app:\n\
         \x20         ansible_become: true\n\
         \x20         ansible_become_user: mito-user\n\
         \x20   gone:\n\
         \x20     hosts:\n\
         \x20       dead:\n\
         \x20         ansible_host: 127.0.0.1\n\
         \x20         ansible_port: {closed}\n",
        kh = kh.display(),
        port = sshd.port,
        key = key.display(),
        closed = closed_port()
    );
    std::fs::write(&inv, yaml).expect("write inventory");
    let t0 = Instant::now();
    let o = mito(&inv, &["run", "all", "--json", "--", "id", "-un"]);
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    let lines = json_by_host(&o);
    let got: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|(h, v)| (h.as_str(), v["status"].as_str().unwrap_or("?"), v["stdout"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(
        got,
        [
            ("s1", "ok", "mito-user\n"),
            ("s2", "ok", "mito-user\n"),
            ("l1", "ok", "root\n"),
            ("l2", "ok", "root\n"),
            ("app", "ok", "mito-user\n"),
            ("dead", "unreachable", "")
        ],
        "{}",
        text(&o).1
    );
    // The same run as text: outputs fold across ssh, local and become hosts.
    let o = mito(&inv, &["run", "all:!gone", "--", "id", "-un"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(
        text(&o).0,
        "s[1:2],app (3 hosts): ok\nmito-user\nl[1:2] (2 hosts): ok\nroot\n5 ok, 0 failed, 0 unreachable\n"
    );
    // --become on the command line: for hosts the inventory says nothing about.
    let o = mito(&inv, &["run", "locals", "--become", "--become-user", "mito-user", "--", "id", "-un"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(text(&o).0, "l[1:2],app (3 hosts): ok\nmito-user\n3 ok, 0 failed, 0 unreachable\n");
}

/// Hosts behind an unreachable `mito_via` host are unreachable too, with
/// its error, and the hop is tried once for all of them; `facts` runs on
/// the others.
#[test]
fn hosts_behind_an_unreachable_hop_and_facts() {
    let dir = TempDir::new("fleet-via");
    let inv = dir.path().join("via.ini");
    let port = closed_port();
    std::fs::write(
        &inv,
        format!(
            "gw ansible_host=127.0.0.1 ansible_port={port}\n\
             [behind]\n\
             b[1:3] ansible_connection=local mito_via=gw\n\
             [here]\n\
             h1 ansible_connection=local\n"
        ),
    )
    .expect("write");
    let o = mito(&inv, &["run", "behind", "--json", "--", "true"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    for (host, v) in json_by_host(&o) {
        assert_eq!(v["status"].as_str(), Some("unreachable"), "{host}: {v}");
        assert_eq!(v["error_kind"].as_str(), Some("connection-refused"), "{host}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.starts_with("gw: ")), "names the hop: {v}");
    }
    let o = mito(&inv, &["run", "all", "--", "true"]);
    let out = text(&o).0;
    assert!(out.contains("gw,b[1:3] (4 hosts): unreachable (connection-refused): "), "{out}");
    assert!(out.ends_with("h1: ok\n1 ok, 0 failed, 4 unreachable\n"), "{out}");

    let o = mito(&inv, &["facts", "here", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let lines = json_by_host(&o);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].1["facts"]["kernel"]["name"].as_str().is_some(), "{}", lines[0].1);
    let o = mito(&inv, &["facts", "here"]);
    assert!(text(&o).0.starts_with("h1: ok\n"), "{}", text(&o).0);
}

/// A host whose port accepts the connection and never answers is
/// unreachable (`timeout`) within the connect timeout, and the others are
/// not held up by it.
#[test]
fn a_silent_host_times_out_within_the_connect_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accepts and holds connections, never writing a byte; ends with the test.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(16) {
            held.push(c);
        }
    });
    let dir = TempDir::new("fleet-silent");
    let inv = dir.path().join("hosts");
    std::fs::write(&inv, format!("silent ansible_host=127.0.0.1 ansible_port={port}\nl1 ansible_connection=local\n"))
        .expect("write");
    let t0 = Instant::now();
    let o = Command::new(MITO)
        .current_dir("/tmp")
        .args(["-F", "/dev/null", "--no-control-master", "--connect-timeout", "2", "-i"])
        .arg(&inv)
        .args(["run", "all", "--json", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("mito");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    let lines = json_by_host(&o);
    assert_eq!(lines[0].1["error_kind"].as_str(), Some("timeout"), "{}", lines[0].1);
    assert_eq!(lines[1].1["status"].as_str(), Some("ok"), "{}", lines[1].1);
    assert!(
        lines[1].1["duration_ms"].as_u64().is_some_and(|ms| ms < 1500),
        "l1 did not wait for silent: {}",
        lines[1].1
    );
}

/// Without -I: $MITO_INVENTORY, else ./inventory; an ./inventory that is
/// not an inventory is a warning and targets stay plain.
#[test]
fn default_inventories() {
    let dir = TempDir::new("fleet-default");
    std::fs::write(dir.path().join("inventory"), "[here]\nh[1:2] ansible_connection=local\n").expect("write");
    let run = |cwd: &Path, env: Option<&Path>, args: &[&str]| {
        let mut c = Command::new(MITO);
        c.current_dir(cwd).env_remove("MITO_INVENTORY").args(args).stdin(Stdio::null());
        if let Some(e) = env {
            c.env("MITO_INVENTORY", e);
        }
        c.output().expect("mito")
    };
    let o = run(dir.path(), None, &["run", "here", "--list-hosts"]);
    assert_eq!(text(&o).0, "h1\nh2\n");
    let o = run(Path::new("/"), Some(&dir.path().join("inventory")), &["run", "here", "--", "echo", "hi"]);
    assert_eq!(
        (o.status.code(), text(&o).0.as_str()),
        (Some(0), "h[1:2] (2 hosts): ok\nhi\n2 ok, 0 failed, 0 unreachable\n")
    );
    let other = TempDir::new("fleet-not-inventory");
    std::fs::write(other.path().join("inventory"), "[unclosed\n").expect("write");
    let o = run(other.path(), None, &["run", "local", "--", "echo", "plain"]);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "plain\n"), "{}", text(&o).1);
    assert!(text(&o).1.contains("warning: ignoring ./inventory"), "{}", text(&o).1);
    let o = run(other.path(), Some(&other.path().join("inventory")), &["run", "local", "--", "true"]);
    assert_eq!(o.status.code(), Some(255), "named by $MITO_INVENTORY: an error");
}

/// Passwords from the inventory: `ansible_become_password` typed at
/// sudo's prompt for mito-sudoer (mito run as that user), a wrong one the
/// typed `become-failed` for that host only, none in the inventory taken
/// from `--become-pass-env` as for any target; `ansible_password` logs in
/// where only a password can. No password shows in the output.
#[test]
fn passwords_from_the_inventory() {
    let test = "passwords_from_the_inventory";
    let Some(sshd) = Sshd::start(test) else { return };
    if !common::become_users(test) {
        return;
    }
    let pw = common::sshd::PASSWORD;
    let dir = TempDir::new("fleet-pw");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let kh = dir.path().join("known_hosts");
    std::fs::copy(sshd.dir.path().join("known_hosts"), &kh).expect("copy known_hosts");
    let inv = dir.path().join("hosts");
    std::fs::write(
        &inv,
        format!(
            "[root]\n\
             right ansible_become_password={pw}\n\
             wrong ansible_become_password=not-the-password\n\
             asked\n\
             [root:vars]\n\
             ansible_connection=local\n\
             ansible_become=true\n\
             [ssh]\n\
             pwlogin ansible_host=127.0.0.1 ansible_port={port} ansible_user=mito-user ansible_password={pw} \
             ansible_ssh_common_args='-o PubkeyAuthentication=no -o UserKnownHostsFile={kh}'\n",
            port = sshd.port,
            kh = kh.display()
        ),
    )
    .expect("write");
    for p in [&inv, &kh] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    }
    let mito = common::shared_mito_dir().join("mito");
    let o = Command::new("runuser")
        .args(["-u", "mito-sudoer", "--", "env", "-C", "/tmp", "HOME=/home/mito-sudoer"])
        .arg(format!("ROOT_PW={pw}"))
        .arg(&mito)
        .args([
            "-F",
            "/dev/null",
            "--no-control-master",
            "--connect-timeout",
            "20",
            "--become-pass-env",
            "ROOT_PW",
            "-i",
        ])
        .arg(&inv)
        .args(["run", "all", "--json", "--", "id", "-un"])
        .stdin(Stdio::null())
        .output()
        .expect("runuser");
    let (out, err) = text(&o);
    assert!(!out.contains(pw) && !err.contains(pw), "a password leaked:\n{out}\n{err}");
    assert!(!out.contains("not-the-password") && !err.contains("not-the-password"), "{out}\n{err}");
    assert_eq!(o.status.code(), Some(4), "{err}");
    let got: Vec<(String, String, String)> = json_by_host(&o)
        .into_iter()
        .map(|(h, v)| {
            let status = v["status"].as_str().unwrap_or("?").to_string();
            let detail = v["stdout"].as_str().filter(|s| !s.is_empty()).or(v["error_kind"].as_str()).unwrap_or("?");
            (h, status, detail.to_string())
        })
        .collect();
    let want = [
        ("right", "ok", "root\n"),
        ("wrong", "unreachable", "become-failed"),
        ("asked", "ok", "root\n"),
        ("pwlogin", "ok", "mito-user\n"),
    ];
    let want: Vec<(String, String, String)> =
        want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(got, want, "{err}");
}

/// `-f N`: at most N hosts in flight. Six hosts sleeping 0.4 s take three
/// rounds with `-f 2`, one with `-f 6`.
#[test]
fn forks_bound_the_hosts_in_flight() {
    let dir = TempDir::new("fleet-forks");
    let inv = dir.path().join("hosts");
    std::fs::write(&inv, "h[1:6] ansible_connection=local\n").expect("write");
    let timed = |forks: &str| {
        let t0 = Instant::now();
        let o = mito(&inv, &["run", "all", "-f", forks, "--", "sleep", "0.4"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        assert!(text(&o).0.ends_with("6 ok, 0 failed, 0 unreachable\n"), "{}", text(&o).0);
        t0.elapsed()
    };
    let (two, six) = (timed("2"), timed("6"));
    assert!(two >= Duration::from_millis(1200), "-f 2 took {two:?}: more than 2 at a time?");
    assert!(six < two, "-f 6 ({six:?}) no faster than -f 2 ({two:?})");
}

/// `--stream`: each line as it comes, prefixed by its host, stdout's on
/// stdout and stderr's on stderr, a last line without a newline at the
/// exit; then the statuses, folded.
#[test]
fn stream_prefixes_lines_with_their_host() {
    let dir = TempDir::new("fleet-stream");
    let inv = dir.path().join("hosts");
    std::fs::write(&inv, "h[1:2] ansible_connection=local\n").expect("write");
    let o = mito(
        &inv,
        &["run", "all", "--stream", "--", "sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 2"],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    for h in ["h1", "h2"] {
        assert!(out.contains(&format!("{h} | out\n")) && out.contains(&format!("{h} | no newline\n")), "{out}");
        assert!(err.contains(&format!("{h} | err\n")), "{err}");
    }
    assert!(out.ends_with("h[1:2] (2 hosts): failed (exit 2)\n0 ok, 2 failed, 0 unreachable\n"), "{out}");
}

/// `put SRC PATTERN:/PATH` copies to every matched host (a host behind a
/// `mito_via` hop too, an unreachable one reported); `get PATTERN:/PATH
/// DIR` brings each host's copy into `DIR/<host>/`, files and (`-r`)
/// trees; host names that are not single file names are refused as
/// directory names.
#[test]
fn put_and_get_on_a_pattern() {
    let dir = TempDir::new("fleet-copy");
    let inv = local_inventory(&dir);
    let src = dir.path().join("motd");
    std::fs::write(&src, "hello fleet\n").expect("write");
    let dst = dir.path().join("remote");
    std::fs::create_dir(&dst).expect("mkdir");
    let to = format!("web:{}/motd", dst.display());
    let o = mito(&inv, &["put", src.to_str().expect("utf-8"), &to]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    // The three hosts are this machine: one path, put three times (the
    // later puts may find it already there).
    assert!(text(&o).0.contains("3 ok, 0 failed, 0 unreachable"), "{}", text(&o).0);
    assert!(text(&o).0.contains("12 bytes, xxh3-128 verified"), "{}", text(&o).0);
    assert_eq!(std::fs::read_to_string(dst.join("motd")).expect("put"), "hello fleet\n");

    // db1 is behind web01; dead is unreachable: exit 4, the others done.
    let out = dir.path().join("fetched");
    let from = format!("db:web01:dead:{}/motd", dst.display());
    let o = mito(&inv, &["get", &from, out.to_str().expect("utf-8"), "--json"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    let by_host = json_by_host(&o);
    let status: Vec<(&str, &str)> =
        by_host.iter().map(|(h, v)| (h.as_str(), v["status"].as_str().unwrap_or_default())).collect();
    assert_eq!(status, [("db1", "ok"), ("web01", "ok"), ("dead", "unreachable")], "in pattern order");
    for h in ["web01", "db1"] {
        assert_eq!(std::fs::read_to_string(out.join(h).join("motd")).expect(h), "hello fleet\n");
    }
    assert!(!out.join("dead").join("motd").exists());

    // A tree each way.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("sub/f"), "f\n").expect("write");
    let to = format!("web01:web02:{}/copied", dst.display());
    let o = mito(&inv, &["put", "-r", tree.to_str().expect("utf-8"), &to]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let from = format!("web01:web02:{}/copied", dst.display());
    let o = mito(&inv, &["get", "-r", &from, out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    for h in ["web01", "web02"] {
        assert_eq!(std::fs::read_to_string(out.join(h).join("copied/sub/f")).expect(h), "f\n");
    }

    // Names that would leave DIR are refused (the others still copied).
    let odd = dir.path().join("odd.ini");
    std::fs::write(&odd, "w/1 ansible_connection=local\n.. ansible_connection=local\nok1 ansible_connection=local\n")
        .expect("write");
    let from = format!("all:{}/motd", dst.display());
    let o = mito(&odd, &["get", &from, out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o).0);
    assert!(text(&o).0.contains("the host name \"w/1\" cannot be a directory name"), "{}", text(&o).0);
    assert!(text(&o).0.contains("the host name \"..\" cannot be a directory name"), "{}", text(&o).0);
    assert!(out.join("ok1/motd").exists());
}

/// A pattern's `put` and `get` take the options one target takes: a
/// copy the destination already holds is `unchanged` unless `--force`,
/// and `--checksum sha256` is the digest both ends compare (before,
/// the pattern's copies ignored all three).
#[test]
fn copy_options_hold_on_a_pattern() {
    let dir = TempDir::new("fleet-copy-opts");
    let inv = local_inventory(&dir);
    let src = dir.path().join("motd");
    std::fs::write(&src, "hello options\n").expect("write");
    let dst = dir.path().join("remote");
    std::fs::create_dir(&dst).expect("mkdir");
    let to = format!("web01:{}/motd", dst.display());
    let put = |extra: &[&str]| {
        let mut args = vec!["put", src.to_str().expect("utf-8"), &to];
        args.extend_from_slice(extra);
        let o = mito(&inv, &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        text(&o).0
    };
    assert!(put(&[]).contains("14 bytes, xxh3-128 verified"));
    assert!(put(&[]).contains("unchanged (14 bytes, xxh3-128 verified)"));
    let forced = put(&["--force"]);
    assert!(forced.contains("14 bytes, xxh3-128 verified") && !forced.contains("unchanged"), "{forced}");
    assert!(put(&["--checksum", "sha256"]).contains("unchanged (14 bytes, sha256 verified)"));
    assert!(put(&["--force", "--compress"]).contains("14 bytes, xxh3-128 verified"));

    let out = dir.path().join("fetched");
    let from = format!("web01:{}/motd", dst.display());
    let get = |extra: &[&str]| {
        let mut args = vec!["get", &from[..], out.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let o = mito(&inv, &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        text(&o).0
    };
    assert!(get(&[]).contains("14 bytes, xxh3-128 verified"));
    assert!(get(&[]).contains("unchanged (14 bytes"));
    let forced = get(&["--force", "--checksum", "sha256"]);
    assert!(forced.contains("14 bytes, sha256 verified") && !forced.contains("unchanged"), "{forced}");
    assert_eq!(std::fs::read_to_string(out.join("web01/motd")).expect("get"), "hello options\n");
}

/// A pattern's ssh hosts share connections like any ssh target (on by
/// default): the hosts that are one host, user and port share one master;
/// `ssh-close PATTERN` ends it (local hosts have none), and a second close
/// finds nothing.
#[test]
fn ssh_close_on_a_pattern() {
    let Some(sshd) = Sshd::start("ssh_close_on_a_pattern") else { return };
    let dir = TempDir::new("fleet-cm");
    let inv = dir.path().join("hosts.ini");
    std::fs::write(
        &inv,
        format!(
            "[sshd]\ns[1:2] ansible_host=127.0.0.1 ansible_port={} ansible_user=mito-user \
             ansible_ssh_private_key_file={} ansible_ssh_common_args='-o UserKnownHostsFile={}'\n\
             [locals]\nl1 ansible_connection=local\n",
            sshd.port,
            sshd.dir.path().join("id_ed25519").display(),
            sshd.dir.path().join("known_hosts").display()
        ),
    )
    .expect("write");
    let cm = dir.path().join("s");
    let shared = |args: &[&str]| {
        Command::new(MITO)
            .current_dir("/tmp")
            .env_remove("MITO_INVENTORY")
            .args(["-F", "/dev/null", "--connect-timeout", "10", "--control-path-dir"])
            .arg(&cm)
            .arg("-i")
            .arg(&inv)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("mito runs")
    };
    let o = shared(&["run", "all", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let sockets = std::fs::read_dir(&cm).map(|d| d.count()).unwrap_or(0);
    assert_eq!(sockets, 1, "s1 and s2 are one host, user and port: one master");
    let o = shared(&["ssh-close", "all"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let out = text(&o).0;
    assert!(out.contains("s1: closed\n") ^ out.contains("s2: closed\n"), "one of them closes it: {out}");
    assert!(out.contains(": no shared connection\n") && !out.contains("l1"), "{out}");
    let o = shared(&["ssh-close", "sshd"]);
    assert_eq!(text(&o).0, "s1: no shared connection\ns2: no shared connection\n");
}

/// Accepts TCP connections on a loopback port and holds them without a
/// byte (a host whose sshd stalls); ends with the test process.
fn silent_port(hold: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(hold) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    port
}

/// Threads of process `pid` now (0 once it is gone).
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// `mito run -f 50` on 30 hosts whose sshd accepts and never answers: all
/// 30 connects are in flight at once (30 ssh children), yet the master
/// keeps a few threads (main, broker, signals), not one per host; each
/// host times out on its own within the connect timeout.
#[test]
fn connects_in_flight_take_no_thread_each() {
    let port = silent_port(64);
    let dir = TempDir::new("fleet-threads");
    let inv = dir.path().join("hosts");
    std::fs::write(&inv, format!("s[01:30] ansible_host=127.0.0.1 ansible_port={port}\n")).expect("write");
    let t0 = Instant::now();
    let mut child = Command::new(MITO)
        .current_dir("/tmp")
        .env_remove("MITO_INVENTORY")
        .args(["-F", "/dev/null", "--no-control-master", "--connect-timeout", "3", "-i"])
        .arg(&inv)
        .args(["run", "all", "-f", "50", "--json", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mito");
    let pid = child.id();
    let (mut most_threads, mut most_children) = (0, 0);
    while child.try_wait().expect("try_wait").is_none() {
        most_threads = most_threads.max(threads_of(pid));
        most_children = most_children.max(common::children_of(pid).len());
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output().expect("output");
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o).1);
    let lines = json_by_host(&o);
    assert_eq!(lines.len(), 30);
    for (host, v) in &lines {
        assert_eq!(v["error_kind"].as_str(), Some("timeout"), "{host}: {v}");
    }
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(most_children >= 25, "only {most_children} connects were seen in flight at once");
    assert!(most_threads <= 4, "{most_threads} threads in the master with 30 connects in flight");
}

/// `Router::connect_many` from one thread: local hosts connect, a closed
/// port is `ConnectionRefused`, a host that accepts and never answers
/// times out after its own connect timeout, and the good ones are not held
/// up by it (they finish first); every spec gets exactly one result.
#[test]
fn connect_many_mixes_good_refused_and_silent_hosts() {
    use mito::master::ConnectSpec;
    use mito::{ConnectError, LocalOptions, Router, SshFailure, SshOptions};
    let silent = silent_port(8);
    let closed = closed_port();
    let local = |i: usize| {
        ConnectSpec::Local(LocalOptions {
            name: Some(format!("l{i}")),
            connect_timeout: Duration::from_secs(20),
            ..LocalOptions::default()
        })
    };
    let ssh = |port: u16| {
        let mut o = SshOptions::new("127.0.0.1");
        o.port = Some(port);
        o.ssh_config = Some("/dev/null".into());
        o.options = vec!["BatchMode=yes".into(), "UserKnownHostsFile=/dev/null".into()];
        o.connect_timeout = Duration::from_secs(2);
        ConnectSpec::Ssh(o)
    };
    let specs = vec![local(0), ssh(closed), ssh(silent), local(3), local(4), ssh(silent), local(6)];
    let n = specs.len();
    let router = Router::new().expect("router");
    let t0 = Instant::now();
    // Three in flight: the two silent hosts hold two slots for 2 s, the
    // locals pass through the third.
    let results: Vec<_> = router.connect_many(specs, 3).map(|(i, r)| (i, t0.elapsed(), r)).collect();
    let mut seen: Vec<usize> = results.iter().map(|(i, _, _)| *i).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "one result per spec");
    let order: Vec<usize> = results.iter().map(|(i, _, _)| *i).collect();
    for (i, at, r) in &results {
        match (i, r) {
            (0 | 3 | 4 | 6, Ok(ctx)) => {
                assert_eq!(ctx.name(), format!("l{i}"));
                ctx.ping().expect("ping");
                assert!(*at < Duration::from_millis(1900), "l{i} waited for the silent hosts: {at:?}");
            }
            (1, Err(ConnectError::Ssh { failure: SshFailure::ConnectionRefused, .. })) => {}
            (2 | 5, Err(e @ (ConnectError::Timeout { .. } | ConnectError::Ssh { .. }))) => {
                let timed_out = matches!(e, ConnectError::Timeout { .. })
                    || matches!(e, ConnectError::Ssh { failure: SshFailure::ConnectTimedOut, .. });
                assert!(timed_out, "silent host {i}: {e}");
                assert!(*at >= Duration::from_millis(1900) && *at < Duration::from_secs(5), "{i} after {at:?}");
            }
            (i, r) => panic!("spec {i}: {:?}", r.as_ref().map(|c| c.name().to_string())),
        }
    }
    let last_two: Vec<usize> = order[n - 2..].to_vec();
    assert!(last_two.contains(&2) && last_two.contains(&5), "silent hosts finish last: {order:?}");
    assert_eq!(router.contexts().len(), 4);
}

/// A sudo password typed by `connect_many`'s driver: sudo run as
/// mito-sudoer (through a wrapper, since root is never asked) prompts on
/// the context's tty; the right password connects, a wrong one is a typed
/// `Become` failure, while a local connect beside them goes on.
#[test]
fn connect_many_answers_sudo_prompts() {
    use mito::master::ConnectSpec;
    use mito::{BecomeFailure, ConnectError, LocalOptions, Router, SudoOptions};
    let test = "connect_many_answers_sudo_prompts";
    if !common::become_users(test) {
        return;
    }
    let dir = TempDir::new("fleet-sudo-driver");
    let wrapper = dir.path().join("sudo-as-sudoer");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nexec setpriv --reuid=mito-sudoer --regid=mito-sudoer --init-groups env HOME=/home/mito-sudoer /usr/bin/sudo \"$@\"\n",
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let sudo = |pw: &str| {
        let mut o = SudoOptions::new("root");
        o.sudo_path = Some(wrapper.clone());
        o.password = Some(pw.into());
        o.connect_timeout = Duration::from_secs(20);
        ConnectSpec::Sudo(o)
    };
    let specs = vec![
        sudo(common::sshd::PASSWORD),
        sudo("not-the-password"),
        ConnectSpec::Local(LocalOptions { connect_timeout: Duration::from_secs(20), ..LocalOptions::default() }),
    ];
    let router = Router::new().expect("router");
    let mut results: Vec<_> = router.connect_many(specs, 3).collect();
    results.sort_by_key(|(i, _)| *i);
    match &results[0].1 {
        Ok(ctx) => assert_eq!(ctx.exec(&["id", "-un"]).expect("id").stdout.as_slice(), b"root\n"),
        Err(e) => panic!("sudo with the right password: {e}"),
    }
    match &results[1].1 {
        Err(ConnectError::Become { failure: BecomeFailure::WrongPassword, output, .. }) => {
            assert!(!output.contains("not-the-password"), "{output}");
        }
        other => panic!("wrong password: {:?}", other.as_ref().map(|c| c.name().to_string())),
    }
    assert!(results[2].1.is_ok(), "local beside them");
}

/// `connect_many`'s `in_flight` bounds the connects started at once: four
/// silent hosts with a 2 s timeout take two rounds two at a time, one
/// round four at a time (each ends within 1 s after its timeout: the
/// wait for the method's own reason).
#[test]
fn connect_many_keeps_at_most_in_flight_connects() {
    use mito::master::ConnectSpec;
    use mito::{Router, SshOptions};
    let silent = silent_port(16);
    let spec = || {
        let mut o = SshOptions::new("127.0.0.1");
        o.port = Some(silent);
        o.ssh_config = Some("/dev/null".into());
        o.options = vec!["BatchMode=yes".into(), "UserKnownHostsFile=/dev/null".into()];
        o.connect_timeout = Duration::from_secs(2);
        ConnectSpec::Ssh(o)
    };
    let router = Router::new().expect("router");
    let timed = |in_flight: usize| {
        let t0 = Instant::now();
        let ends: Vec<Duration> = router
            .connect_many((0..4).map(|_| spec()).collect(), in_flight)
            .map(|(_, r)| {
                assert!(r.is_err(), "a silent host connected");
                t0.elapsed()
            })
            .collect();
        ends
    };
    let two = timed(2);
    assert!(two[1] < Duration::from_millis(3900), "the first two end after one timeout: {two:?}");
    assert!(two[2] >= Duration::from_millis(3900), "the last two start when the first two end: {two:?}");
    let four = timed(4);
    assert!(four[3] < Duration::from_millis(3900), "four at once end together: {four:?}");
}
