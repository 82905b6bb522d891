//! Password prompts of privilege-changing tools (sudo, su, doas): what a
//! prompt looks like, what failure looks like, and answering exactly once.
//!
//! The tools write to the pty that is their controlling terminal (see
//! `local::ChildCommand::tty`); the bootstrap hands every new piece of that
//! output to a [`Responder`]. Rules (DESIGN.md "Prompts"): never type a
//! password before a prompt is seen (NOPASSWD and cached credentials show
//! none); answer once; a second prompt or a failure message is a typed error.

use super::bootstrap::{AnswerTo, Hooks, Prompt};
use super::error::{format_output, ConnectError};

/// Why a privilege change failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BecomeFailure {
    /// The password was refused.
    #[error("wrong password")]
    WrongPassword,
    /// The tool asked for a password and none was given.
    #[error("a password is required, and none was given")]
    PasswordRequired,
    /// sudo: the invoking user is not in sudoers.
    #[error("the user is not in the sudoers file")]
    NotInSudoers,
    /// sudo/doas: the rules do not allow this user or command.
    #[error("not allowed by the policy (sudoers / doas.conf)")]
    NotAllowed,
    /// sudo `requiretty` without a tty.
    #[error("the tool requires a tty")]
    RequireTty,
    /// The target or invoking account is locked or expired.
    #[error("the account is locked or expired")]
    AccountLocked,
    /// The target user does not exist.
    #[error("no such user")]
    NoSuchUser,
    /// The tool is not installed (or not at the given path).
    #[error("the tool is not installed")]
    ToolMissing,
}

/// Recognises a tool's prompts and failures and answers the prompt once.
pub struct Responder {
    context: String,
    tool: &'static str,
    user: String,
    password: Option<String>,
    is_prompt: Box<dyn Fn(&str) -> bool>,
    failures: &'static [(&'static str, BecomeFailure)],
    answer_to: AnswerTo,
    answered: bool,
    seen: Vec<u8>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("tool", &self.tool).field("user", &self.user).finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for `tool` becoming `user`. `is_prompt` is given the
    /// output since the last answer, trailing whitespace removed; `failures`
    /// are lower-case substrings that end the bootstrap with that failure.
    pub fn new(
        context: &str,
        tool: &'static str,
        user: &str,
        password: Option<String>,
        is_prompt: Box<dyn Fn(&str) -> bool>,
        failures: &'static [(&'static str, BecomeFailure)],
    ) -> Responder {
        Responder {
            context: context.into(),
            tool,
            user: user.into(),
            password,
            is_prompt,
            failures,
            answer_to: AnswerTo::Tty,
            answered: false,
            seen: Vec::new(),
        }
    }

    /// Answers on the process's stdin instead of the tty (su via PAM).
    pub fn answer_on_stdin(mut self) -> Responder {
        self.answer_to = AnswerTo::Stdin;
        self
    }

    fn error(&self, failure: BecomeFailure, output: &[u8]) -> ConnectError {
        ConnectError::Become {
            context: self.context.clone(),
            tool: self.tool,
            user: self.user.clone(),
            failure,
            output: format_output(output, b""),
        }
    }

    fn failure_in(&self, text: &str) -> Option<BecomeFailure> {
        let lower = text.to_lowercase();
        self.failures.iter().find(|(needle, _)| lower.contains(needle)).map(|(_, f)| f.clone())
    }
}

impl Hooks for Responder {
    fn on_stderr(&mut self, unscanned: &[u8]) -> Prompt {
        self.seen.extend_from_slice(unscanned);
        let text = String::from_utf8_lossy(unscanned);
        if let Some(f) = self.failure_in(&text) {
            return Prompt::Fail(self.error(f, unscanned));
        }
        if !(self.is_prompt)(text.trim_end()) {
            return Prompt::Wait;
        }
        if self.answered {
            // Asked again: the first answer was refused.
            return Prompt::Fail(self.error(BecomeFailure::WrongPassword, b""));
        }
        match &self.password {
            None => Prompt::Fail(self.error(BecomeFailure::PasswordRequired, b"")),
            Some(pw) => {
                self.answered = true;
                let mut answer = pw.clone().into_bytes();
                answer.push(b'\n');
                Prompt::Answer(answer, self.answer_to)
            }
        }
    }

    fn classify(&self, stderr: &[u8]) -> Option<ConnectError> {
        let text = String::from_utf8_lossy(stderr);
        self.failure_in(&text).map(|f| self.error(f, stderr))
    }
}

/// Words for "password" in su's prompt, in the languages its translations
/// most often use (lower case). su's prompt is localised; sudo's and doas'
/// are not a problem (sudo gets our own `-p` prompt).
pub const PASSWORD_WORDS: &[&str] = &[
    "password",
    "passwort",
    "mot de passe",
    "contraseña",
    "senha",
    "parola",
    "wachtwoord",
    "lösenord",
    "adgangskode",
    "passord",
    "salasana",
    "hasło",
    "heslo",
    "jelszó",
    "şifre",
    "пароль",
    "密码",
    "密碼",
    "パスワード",
    "암호",
    "비밀번호",
    "κωδικός",
    "סיסמה",
    "كلمة المرور",
];

/// A localised "Password:" at the end of the output.
pub fn ends_with_password_prompt(text: &str) -> bool {
    let last = text.lines().last().unwrap_or("").trim().to_lowercase();
    (last.ends_with(':') || last.ends_with('：')) && PASSWORD_WORDS.iter().any(|w| last.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(t: &str) -> bool {
        t.ends_with("TOKEN:")
    }
    const FAILS: &[(&str, BecomeFailure)] = &[("sorry, try again", BecomeFailure::WrongPassword)];

    #[test]
    fn answers_once_then_fails() {
        let mut r = Responder::new("c", "sudo", "root", Some("pw".into()), Box::new(prompt), FAILS);
        assert!(matches!(r.on_stderr(b"some lecture\n"), Prompt::Wait));
        assert!(matches!(r.on_stderr(b"TOKEN:"), Prompt::Answer(a, AnswerTo::Tty) if a == b"pw\n"));
        assert!(matches!(
            r.on_stderr(b"\nSorry, try again.\nTOKEN:"),
            Prompt::Fail(ConnectError::Become { failure: BecomeFailure::WrongPassword, .. })
        ));
        let mut r = Responder::new("c", "sudo", "root", None, Box::new(prompt), FAILS);
        assert!(matches!(
            r.on_stderr(b"TOKEN: "),
            Prompt::Fail(ConnectError::Become { failure: BecomeFailure::PasswordRequired, .. })
        ));
    }

    #[test]
    fn localised_su_prompts() {
        for p in ["Password:", "Passwort: ", "Mot de passe :", "Пароль:", "密码：", "bob's password:"] {
            assert!(ends_with_password_prompt(p), "{p}");
        }
        assert!(!ends_with_password_prompt("password was changed yesterday"));
    }
}
