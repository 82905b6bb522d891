//! A private sshd on 127.0.0.1 per test, via scripts/test-sshd; stopped by
//! pid on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use super::TempDir;

/// Password of the test users (created by `scripts/test-sshd users`).
pub const PASSWORD: &str = "mito-test-password";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-sshd")
}

/// A running test sshd.
pub struct Sshd {
    pub dir: TempDir,
    pub port: u16,
}

impl Sshd {
    /// Starts one on a free port, or says loudly why it cannot and returns
    /// None (under CI that is a failure: see `skip_loudly`).
    pub fn start(test: &str) -> Option<Sshd> {
        if !Path::new("/usr/sbin/sshd").exists() {
            super::skip_loudly(test, "no /usr/sbin/sshd (apt-get install openssh-server; .ci/run does)");
            return None;
        }
        if !super::is_root() {
            super::skip_loudly(test, "the test sshd logs in as several test users, which needs root");
            return None;
        }
        static USERS: Once = Once::new();
        USERS.call_once(|| {
            let st =
                Command::new(script()).args(["users", "/nonexistent"]).env("MITO_TEST_PASSWORD", PASSWORD).status();
            assert!(st.is_ok_and(|s| s.success()), "creating test users failed");
        });
        let dir = TempDir::new("sshd");
        for _ in 0..5 {
            // A free port: bind one, read its number, let it go.
            let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(addr) => addr.port(),
                Err(e) => {
                    super::skip_loudly(test, &format!("cannot bind a port on 127.0.0.1 for the test sshd: {e}"));
                    return None;
                }
            };
            let st = Command::new(script())
                .arg("start")
                .arg(dir.path())
                .arg(port.to_string())
                .output()
                .expect("test-sshd runs");
            if st.status.success() {
                return Some(Sshd { dir, port });
            }
            eprintln!("test-sshd start failed on port {port}: {}", String::from_utf8_lossy(&st.stderr));
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("could not start the test sshd");
    }

    /// Options for `user` with this sshd's port, key and known_hosts, and no
    /// user ssh config (OpenSSH reads ~/.ssh from the passwd entry, so the
    /// test passes everything explicitly).
    pub fn opts(&self, user: &str) -> mito::SshOptions {
        let mut o = mito::SshOptions::new("127.0.0.1");
        o.port = Some(self.port);
        o.username = Some(user.into());
        o.ssh_config = Some("/dev/null".into());
        o.identity_file = Some(self.dir.path().join("id_ed25519"));
        o.options = vec![format!("UserKnownHostsFile={}", self.dir.path().join("known_hosts").display())];
        o.connect_timeout = Duration::from_secs(20);
        o
    }

    /// Options that can only log in with a password.
    pub fn password_opts(&self, user: &str, password: Option<&str>) -> mito::SshOptions {
        let mut o = self.opts(user);
        o.identity_file = None;
        o.options.push("PubkeyAuthentication=no".into());
        o.password = password.map(str::to_string);
        o
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("sshd.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}
