//! The `su` method: `su [-l] USER -c "sh -c '<stage0>'"` on a hybrid tty.
//!
//! su's prompt is localised, so it is recognised by the word for
//! "password" in common languages followed by a colon
//! ([`super::prompt::PASSWORD_WORDS`]). The command goes through the target
//! user's login shell, which must be able to run `sh -c`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::local::ChildCommand;
use super::prompt::{ends_with_password_prompt, BecomeFailure, Responder};
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
];

/// The command and its prompt responder.
pub fn prepare(opts: &SuOptions, context: &str, stage0: &str) -> (ChildCommand, Responder) {
    let mut c = ChildCommand::new(opts.su_path.clone().map_or_else(|| OsString::from("su"), PathBuf::into_os_string));
    c.tty = true;
    if opts.login {
        c.arg("-l");
    }
    c.arg(&opts.username).arg("-c").arg(format!("sh -c {}", sh_quote(stage0)));
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
    .answer_on_stdin();
    (c, r)
}
