//! The `sudo` method: `SUDO_PROMPT=<secret> sudo -u USER … -- sh -c
//! '<stage0>'` on a hybrid tty.
//!
//! The prompt is our own secret per connect, so localised or customised
//! prompts do not matter; sudo-rs shows it as `[sudo: <secret>] Password:`,
//! which is recognised too. It goes in sudo's environment, not in `-p`:
//! argv is public (`ps`), and a target's login script that could print the
//! prompt would be typed the password (`prompt`'s module documentation).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::child::ChildCommand;
use super::prompt::{announce, BecomeFailure, Responder};

/// Options of [`crate::Router::sudo`].
#[derive(Clone)]
pub struct SudoOptions {
    /// Name in logs and errors (default `sudo:<user>`).
    pub name: Option<String>,
    /// Target user (`-u`).
    pub username: String,
    /// Password, typed at sudo's prompt if (and only if) it asks.
    pub password: Option<String>,
    /// Keep the environment (`-E`).
    pub preserve_env: bool,
    /// Run through the target's login shell (`-i`).
    pub login: bool,
    /// SELinux role (`-r`).
    pub selinux_role: Option<String>,
    /// SELinux type (`-t`).
    pub selinux_type: Option<String>,
    /// Extra arguments placed before `--`.
    pub sudo_args: Vec<String>,
    /// The sudo program.
    pub sudo_path: Option<PathBuf>,
    /// Limit for the whole bootstrap (prompt included).
    pub connect_timeout: Duration,
}

impl SudoOptions {
    /// sudo to `username` with defaults (no password, 30 s).
    pub fn new(username: impl Into<String>) -> SudoOptions {
        SudoOptions {
            name: None,
            username: username.into(),
            password: None,
            preserve_env: false,
            login: false,
            selinux_role: None,
            selinux_type: None,
            sudo_args: Vec::new(),
            sudo_path: None,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for SudoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SudoOptions")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("preserve_env", &self.preserve_env)
            .field("login", &self.login)
            .field("sudo_args", &self.sudo_args)
            .finish_non_exhaustive()
    }
}

/// Failure messages of sudo (lower case).
const FAILURES: &[(&str, BecomeFailure)] = &[
    ("sorry, try again", BecomeFailure::WrongPassword),
    ("incorrect password attempt", BecomeFailure::WrongPassword),
    ("authentication failed", BecomeFailure::WrongPassword),
    ("is not in the sudoers file", BecomeFailure::NotInSudoers),
    ("is not allowed to execute", BecomeFailure::NotAllowed),
    ("is not allowed to run sudo", BecomeFailure::NotAllowed),
    // Before "a password is required": sudo prints both for an expired or
    // locked invoking account ("account validation failure, is your
    // account locked?"), and the account is the cause.
    ("account locked", BecomeFailure::AccountLocked),
    ("account expired", BecomeFailure::AccountLocked),
    ("a password is required", BecomeFailure::PasswordRequired),
    ("you must have a tty", BecomeFailure::RequireTty),
    ("a terminal is required", BecomeFailure::RequireTty),
    ("unknown user", BecomeFailure::NoSuchUser),
];

/// A prompt nobody else can print: 128 bits from the kernel's random
/// source.
fn secret_prompt() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // A kernel older than 3.17: /dev/urandom, else std's own seeds.
        use std::io::Read;
        if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
            use std::hash::BuildHasher;
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let one = std::collections::hash_map::RandomState::new().hash_one(t);
            let two = std::collections::hash_map::RandomState::new().hash_one(one);
            b[..8].copy_from_slice(&one.to_le_bytes());
            b[8..].copy_from_slice(&two.to_le_bytes());
        }
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("mito-sudo-{hex}:")
}

/// The command and its prompt responder.
pub fn prepare(opts: &SudoOptions, context: &str, stage0: &str) -> (ChildCommand, Responder) {
    let tok = secret_prompt();
    let mut c =
        ChildCommand::new(opts.sudo_path.clone().map_or_else(|| OsString::from("sudo"), PathBuf::into_os_string));
    c.tty = true;
    c.env.push(("SUDO_PROMPT".into(), tok.clone().into()));
    c.arg("-u").arg(&opts.username);
    if opts.preserve_env {
        c.arg("-E");
    }
    if opts.login {
        c.arg("-i");
    }
    if let Some(r) = &opts.selinux_role {
        c.arg("-r").arg(r);
    }
    if let Some(t) = &opts.selinux_type {
        c.arg("-t").arg(t);
    }
    for a in &opts.sudo_args {
        c.arg(a);
    }
    c.arg("--").arg("sh").arg("-c");
    // With -E (or !env_reset) sudo hands SUDO_PROMPT on: the agent and its
    // commands need not see a spent secret (a nested sudo would show it).
    let script = announce(&format!("unset SUDO_PROMPT;{stage0}"));
    if opts.login {
        c.arg(without_dollars(&script));
    } else {
        c.arg(script);
    }
    // The prompt check sees the text since the last answer; sudo-rs puts
    // the token in brackets before its own translated "Password:".
    let bracketed = format!("[sudo: {tok}]");
    let is_prompt = Box::new(move |t: &str| t.ends_with(tok.as_str()) || (t.contains(&bracketed) && t.ends_with(':')));
    let r = Responder::new(context, "sudo", &opts.username, opts.password.clone(), is_prompt, FAILURES);
    (c, r.prompt_is_secret().forks_after_authenticating(false))
}

/// `script` as a shell command with no `$` in it, for `sudo -i`.
///
/// With `-i` sudo hands the command to the target's login shell as one
/// string, backslash-escaping every character but letters, digits, `_`,
/// `-` and `$` — so `$` is expanded by the login shell before `sh -c` sees
/// the script (stage0's variables arrived empty: "no agent for
/// architecture \"\""). The script is therefore spelt as octal escapes for
/// `printf`, whose output `eval` runs: the login shell sees only escaped
/// quotes and backquotes, which it unescapes back into this command.
fn without_dollars(script: &str) -> String {
    use std::fmt::Write;
    let mut out = String::from("eval \"`printf '");
    for b in script.bytes() {
        if b.is_ascii_alphanumeric() || b" _-./,:=".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    out.push_str("'`\"");
    out
}

#[cfg(test)]
mod tests {
    use super::without_dollars;

    #[test]
    fn an_expired_account_is_the_cause_not_the_missing_password() {
        use crate::connect::bootstrap::{Hooks, Prompt};
        use crate::connect::error::ConnectError;
        let (_, mut r) = super::prepare(&super::SudoOptions::new("root"), "c", "true");
        // As sudo prints them, in one read.
        let out = b"sudo: account validation failure, is your account locked?\r\nsudo: a password is required\r\n";
        match r.on_stderr(out) {
            Prompt::Fail(ConnectError::Become { failure, .. }) => {
                assert_eq!(failure, super::BecomeFailure::AccountLocked)
            }
            _ => panic!("expected a typed failure"),
        }
    }

    #[test]
    fn a_login_command_has_no_dollar_and_sh_gets_the_script_back() {
        let script = "x=$(echo 'a b'); printf '%s|%s\\n' \"$x\" \"`echo \\$HOME`\"; exit 3";
        let cmd = without_dollars(script);
        assert!(!cmd.contains('$'), "{cmd}");
        let direct = std::process::Command::new("sh").args(["-c", script]).env("HOME", "/h").output().expect("sh");
        let wrapped = std::process::Command::new("sh").args(["-c", &cmd]).env("HOME", "/h").output().expect("sh");
        assert_eq!(direct.status.code(), Some(3));
        assert_eq!(wrapped.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&wrapped.stdout), "a b|/h\n");
        assert_eq!(wrapped.stdout, direct.stdout);
    }
}
