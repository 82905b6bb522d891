//! The `doas` method: `doas -u USER sh -c '<stage0>'` on a hybrid tty.
//! Its prompt is `doas (user@host) password:`: public text, but doas runs
//! our `sh -c` directly, whose first act is to print on stdout, after which
//! nothing is typed (`prompt`'s module documentation). OpenDoas with PAM
//! also forks that command only once authenticated, so a child of doas'
//! process means its prompt is over (rule 3; doas without PAM execs the
//! command in its own process, where rule 1 alone holds).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::child::ChildCommand;
use super::prompt::{announce, BecomeFailure, Responder};

/// Options of [`crate::Router::doas`].
#[derive(Clone)]
pub struct DoasOptions {
    /// Name in logs and errors (default `doas:<user>`).
    pub name: Option<String>,
    /// Target user (`-u`).
    pub username: String,
    /// Password, typed at doas' prompt if it asks.
    pub password: Option<String>,
    /// The doas program.
    pub doas_path: Option<PathBuf>,
    /// Limit for the whole bootstrap (prompt included).
    pub connect_timeout: Duration,
}

impl DoasOptions {
    /// doas to `username` with defaults.
    pub fn new(username: impl Into<String>) -> DoasOptions {
        DoasOptions {
            name: None,
            username: username.into(),
            password: None,
            doas_path: None,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for DoasOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoasOptions")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

const FAILURES: &[(&str, BecomeFailure)] = &[
    ("authentication failed", BecomeFailure::WrongPassword),
    ("operation not permitted", BecomeFailure::NotAllowed),
    ("not permitted", BecomeFailure::NotAllowed),
    ("unknown user", BecomeFailure::NoSuchUser),
    ("no such user", BecomeFailure::NoSuchUser),
];

/// The command and its prompt responder.
pub fn prepare(opts: &DoasOptions, context: &str, stage0: &str) -> (ChildCommand, Responder) {
    let mut c =
        ChildCommand::new(opts.doas_path.clone().map_or_else(|| OsString::from("doas"), PathBuf::into_os_string));
    c.tty = true;
    c.arg("-u").arg(&opts.username).arg("sh").arg("-c").arg(announce(stage0));
    let is_prompt = Box::new(|t: &str| {
        // doas starts its prompt with a carriage return.
        let last = t.lines().last().unwrap_or("").trim();
        last.starts_with("doas (") && last.ends_with("password:")
    });
    let r = Responder::new(context, "doas", &opts.username, opts.password.clone(), is_prompt, FAILURES);
    (c, r.forks_after_authenticating(false))
}
