//! The `su` method: `su [-l] -c "sh -c '<stage0>'" -- USER` on a hybrid
//! tty, started through a small `sh` that first prints the invoking uid on
//! the tty.
//!
//! su's prompt is localised, so it is recognised by the word for
//! "password" in common languages followed by a colon
//! ([`super::prompt::PASSWORD_WORDS`]). The command goes through the target
//! user's login shell, which must be able to run `sh -c`.
//!
//! That prompt is text anyone can print, and su runs the target's shell
//! (and with `-l` its login scripts) before our command, so the responder
//! must know whether su will ask at all: the wrapper's first line says who
//! runs su, and root's su never asks (`pam_rootok`), so then no password
//! is typed whatever appears. Nor does su ask another user for a target
//! whose PAM needs no password (an empty one with `nullok`, `pam_wheel
//! trust`): it starts the target's shell at once, which the responder sees
//! in /proc as a child of su's process (the wrapper execs su in the process
//! mito started) before it would type anything (`prompt`'s module
//! documentation, rule 3).
//!
//! `--` ends su's options before the user name: a name such as `-m` or
//! `--shell=…` is a user that does not exist, never an option.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::child::ChildCommand;
use super::prompt::{announce, ends_with_password_prompt, BecomeFailure, Responder, INVOKER_LINE};
use super::stage0::sh_quote;

/// Options of [`crate::Router::su`].
#[derive(Clone)]
pub struct SuOptions {
    /// Name in logs and errors (default `su:<user>`).
    pub name: Option<String>,
    /// Target user.
    pub username: String,
    /// Password, typed at su's prompt if it asks.
    pub password: Option<String>,
    /// A login shell (`su -l`).
    pub login: bool,
    /// The su program.
    pub su_path: Option<PathBuf>,
    /// Limit for the whole bootstrap (prompt included).
    pub connect_timeout: Duration,
}

impl SuOptions {
    /// su to `username` with defaults.
    pub fn new(username: impl Into<String>) -> SuOptions {
        SuOptions {
            name: None,
            username: username.into(),
            password: None,
            login: false,
            su_path: None,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for SuOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuOptions")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

const FAILURES: &[(&str, BecomeFailure)] = &[
    // PAM's account check prints this before su's "Authentication
    // failure", even for root (no password asked): expiry, not a password.
    ("account has expired", BecomeFailure::AccountLocked),
    ("authentication failure", BecomeFailure::WrongPassword),
    ("su: sorry", BecomeFailure::WrongPassword),
    ("incorrect password", BecomeFailure::WrongPassword),
    ("permission denied", BecomeFailure::NotAllowed),
    ("does not exist", BecomeFailure::NoSuchUser),
    ("account expired", BecomeFailure::AccountLocked),
    ("account locked", BecomeFailure::AccountLocked),
    // The wrapper's own messages: the su program is not there; "-".
    ("mito-su: su not installed", BecomeFailure::ToolMissing),
    ("mito-su: no user is named", BecomeFailure::NoSuchUser),
];

/// Runs as the invoking user, before su, as `sh -c WRAPPER INVOKER_LINE
/// USER SU ARGS…`: prints [`INVOKER_LINE`] and the uid on the tty (fd 2),
/// then execs `SU ARGS… USER`. su takes a lone `-` even after `--` for its
/// login flag (and then becomes root), so that name is refused here.
///
/// It starts no process of its own on the way to su (the uid is read from
/// `/proc/self/status` with builtins; `id -u` only where that file is
/// missing): the process that becomes su has then reaped nothing, which
/// the responder's look at su relies on (`core::tool_process`).
const WRAPPER: &str = concat!(
    "i=;[ -r /proc/self/status ]&&while read -r k v _;do [ \"$k\" != Uid: ]||{ i=$v;break;};done</proc/self/status;",
    "[ -n \"$i\" ]||i=$(id -u);",
    "echo \"$0$i\" >&2;",
    "u=$1;shift;",
    "[ \"$u\" != - ]||{ printf 'mito-su: no user is named -\\n' >&2;exit 1;};",
    "command -v \"$1\" >/dev/null 2>&1||{ printf 'mito-su: su not installed: %s\\n' \"$1\" >&2;exit 127;};",
    "exec \"$@\" \"$u\""
);

/// The command and its prompt responder.
pub fn prepare(opts: &SuOptions, context: &str, stage0: &str) -> (ChildCommand, Responder) {
    let su = opts.su_path.clone().map_or_else(|| OsString::from("su"), PathBuf::into_os_string);
    // sh -c WRAPPER INVOKER_LINE USER su [-l] -c CMD --
    let mut c = ChildCommand::new("sh");
    c.tty = true;
    c.arg("-c").arg(WRAPPER).arg(INVOKER_LINE).arg(&opts.username).arg(su);
    if opts.login {
        c.arg("-l");
    }
    c.arg("-c").arg(format!("sh -c {}", sh_quote(&announce(stage0)))).arg("--");
    let r = Responder::new(
        context,
        "su",
        &opts.username,
        opts.password.clone(),
        Box::new(ends_with_password_prompt),
        FAILURES,
    )
    // PAM's conversation (misc_conv) prints the prompt on stderr but reads
    // the answer from stdin.
    .answer_on_stdin()
    .expect_invoker_line()
    // su's prompt is public text and su runs the target's shell before our
    // `echo`: where /proc cannot show su, nothing is typed.
    .forks_after_authenticating(true);
    (c, r)
}

#[cfg(test)]
mod tests {
    /// The wrapper prints the invoking uid first, then runs su with the
    /// user after `--`; a missing su is its own message.
    #[test]
    fn the_wrapper_says_who_runs_su_and_passes_every_argument() {
        let run = |user: &str, su: &str| {
            let (c, _) = super::prepare(&super::SuOptions::new(user), "c", "true");
            let mut args = c.args.clone();
            assert_eq!(args[4], "su");
            // `echo` instead of su: shows the arguments su would get.
            args[4] = su.into();
            std::process::Command::new(&c.program).args(&args).output().expect("sh")
        };
        let o = run("-m", "echo");
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(String::from_utf8_lossy(&o.stderr), format!("{}{uid}\n", super::INVOKER_LINE));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "-c sh -c 'echo;true' -- -m\n");
        let o = run("bob", "/nonexistent/su");
        assert_eq!(o.status.code(), Some(127));
        assert!(String::from_utf8_lossy(&o.stderr).contains("mito-su: su not installed: /nonexistent/su"));
        let o = run("-", "echo");
        assert_eq!((o.status.code(), &o.stdout[..]), (Some(1), &b""[..]));
        assert!(String::from_utf8_lossy(&o.stderr).contains("mito-su: no user is named -"));
    }

    /// The process that becomes su has reaped nothing (the responder's
    /// look at su counts on it): `sh` in su's place prints its own
    /// counters of reaped children with builtins.
    #[test]
    fn the_wrapper_starts_no_process_before_su() {
        let (c, _) = super::prepare(&super::SuOptions::new("bob"), "c", "true");
        let mut args = c.args[..4].to_vec();
        // exec sh -c SCRIPT -- bob: SCRIPT reads /proc/self/stat.
        args.extend(["sh", "-c", "read -r s </proc/self/stat; echo \"$s\"", "--"].map(Into::into));
        let o = std::process::Command::new(&c.program).args(&args).output().expect("sh");
        let stat = String::from_utf8_lossy(&o.stdout);
        let f: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 1..].split_whitespace().collect();
        // cminflt, cmajflt, cutime, cstime (proc(5)).
        assert_eq!([f[8], f[10], f[13], f[14]], ["0"; 4], "{stat}");
    }
}
