//! Password prompts of privilege-changing tools (sudo, su, doas): what a
//! prompt looks like, what failure looks like, and when a password may be
//! typed at all.
//!
//! The tools write to the pty that is their controlling terminal (see
//! `child::ChildCommand::tty`); the bootstrap hands every new piece of that
//! output to a [`Responder`], and tells it ([`Hooks::target_spoke`]) when
//! the command's stdout produced its first byte.
//!
//! # When the password is typed
//!
//! The tool runs the target user's code right after it authenticated (or
//! decided it needs no password): `sudo -i` and `su -l` run the target's
//! login scripts (`~/.profile`, `~/.bash_profile`…), su runs the target's
//! own shell (zsh reads `~/.zshenv`, csh `~/.cshrc` even for `-c`). That
//! code shares the tty and stdin with the tool and can print anything,
//! `Password:` included. So the password is typed exactly once, and only
//! into a prompt that, at that moment, can only be the tool's:
//!
//! 1. **Before the target's side spoke.** The command starts with `echo`
//!    (see [`announce`]), so the first byte on its stdout comes before
//!    anything stage0 does; from that byte on ([`Hooks::target_spoke`]) or
//!    stdout's end, nothing is typed. The bootstrap checks stdout *after*
//!    reading a piece of tty text and *before* showing it to the responder:
//!    text written after that first byte is never taken for a prompt. (This
//!    rule alone covers doas and sudo without `-i`, which run `sh -c`
//!    directly; through a hop stdout and tty are relayed as separate
//!    streams, so there it is a second line of defence, not the first.)
//! 2. **A prompt only the tool can print.**
//!    - sudo: the prompt is a per-connect secret of 128 random bits, given
//!      to sudo in its environment (`SUDO_PROMPT`), not in its argv (which
//!      `ps` shows to everyone; sudo's own environment is root's to read).
//!      With `-i` sudo always builds the login shell a fresh environment,
//!      so the target's login scripts cannot know the secret. Without `-i`
//!      (where `-E` or `!env_reset` do hand it on) the command is `sh -c`
//!      itself, and rule 1 holds before any code of the target's runs.
//!    - su and doas print fixed, public text ("Password:", `doas (u@h)
//!      password:`). doas runs `sh -c` directly, so rule 1 suffices. su runs
//!      the target's shell before our command, so su is started through a
//!      small `sh` that first prints the invoking uid on the tty (see
//!      `su::prepare`): that line comes before su exists, so nothing can
//!      forge it. su run by root never asks (`pam_rootok`), so then nothing
//!      is typed at all.
//! 3. **While the tool has started nothing.** sudo, su and doas start the
//!    target's side in a child only once authenticated (or told no
//!    password is needed), and none has a child while it prompts: checked
//!    on sudo 1.9.13 (`use_pty` or not), util-linux su and OpenDoas with
//!    PAM, each of which forks right after authenticating and waits.
//!    So right before typing, the tool's process is read in /proc
//!    (`core::tool_process`, one implementation for both places): on the
//!    master's own machine by the responder ([`Hooks::spawned`] gives the
//!    tool's pid: su's wrapper execs su, so it is su's); behind a hop by
//!    the hop's agent, which started the tool and types the answer
//!    (`master::via` sends it as `ExecOp::AnswerTool`; a refusal comes
//!    back as this responder's `UnexpectedPrompt`). A child of the tool
//!    (`/proc/PID/task/PID/children`, which everyone may read, for a
//!    setuid tool too; for a tool with several threads, or a kernel
//!    without that file, a scan of every process's parent), or a tool
//!    that has exited, means the prompt is not the tool's. A tool whose
//!    child has already ended reaped it, which its counters of reaped
//!    children show (`cminflt`, … in `/proc/PID/stat`; su's wrapper reaps
//!    nothing, see `su::WRAPPER`);
//!    as PAM may reap a helper before the prompt (unix_chkpwd under
//!    SELinux), such a tool is watched for 200 ms and refused if it exits,
//!    starts or reaps a process meanwhile — one that reaped the target's
//!    side ends in milliseconds, one at its prompt sits still. This is
//!    what keeps su by a user other than root safe when the target's PAM
//!    asks nothing (an empty password with `nullok`, `pam_wheel trust`):
//!    su then runs the target's start-up files at once, and a "Password:"
//!    they print is refused because su has a child. For su the rule is
//!    required: where /proc does not show su (`hidepid`), nothing is
//!    typed. For sudo (a secret prompt) and doas (`sh -c` directly, rule 1)
//!    it is a second line of defence, skipped where /proc is blind (behind
//!    a hop, told apart by where the answer goes: su's on stdin, theirs on
//!    the tty).
//! 4. **Once.** After the answer nothing is typed again.
//!
//! Anything that looks like a password prompt (`PASSWORD_WORDS` and a
//! colon, or the tool's own shape) but fails these rules is a typed
//! [`BecomeFailure::UnexpectedPrompt`] at once, never an answer and never a
//! hang. A second prompt of sudo's secret shape means the first answer was
//! refused ([`BecomeFailure::WrongPassword`]); su and doas never ask twice.
//!
//! What remains: rule 3 trusts the tool not to fork before its prompt (a
//! PAM module that leaves a child running while the tool prompts makes
//! every prompt of that tool refused, never answered). A tool that reaped
//! the target's side but is still alive 200 ms later, unchanged (its PAM
//! session close stalled that long, say, on a badly overloaded host), would
//! be believed again by a prompt printed in that window. A process of the
//! target user that is already running and may `ptrace` the new command
//! could forge output in the microseconds before its first `echo`; for sudo
//! it would also need the secret, which only `-E` hands to the command.

use super::bootstrap::{AnswerTo, Hooks, Prompt};
use super::error::{format_output, ConnectError};
use crate::core::tool_process;
use crate::proto::functions::ToolState;

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
    /// Something that looks like a password prompt appeared where only
    /// code other than the tool's could be asking (a login script of the
    /// target user, say): it was not answered. `why` says what ruled the
    /// tool out (see the module documentation).
    #[error("a password prompt that is not the tool's own ({why}): not answered")]
    UnexpectedPrompt {
        /// What ruled the tool out.
        why: &'static str,
    },
}

/// The command a become method runs, as given to `sh -c`: `stage0` after
/// an `echo`, so that the command's first byte on stdout (an empty line,
/// which the bootstrap ignores) comes before anything else it does. From
/// that byte on no password is typed ([`Hooks::target_spoke`]).
pub fn announce(stage0: &str) -> String {
    format!("echo;{stage0}")
}

/// What su's wrapper (`su::prepare`) prints as the first line on the tty,
/// followed by the invoking uid.
pub const INVOKER_LINE: &str = "mito-su: run by uid ";

/// Whether the responder knows who runs the tool yet (su only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invoker {
    /// Not needed (sudo, doas).
    Irrelevant,
    /// su: waiting for [`INVOKER_LINE`].
    Pending,
    /// Seen.
    Known,
}

/// Recognises a tool's prompts and failures, and types the password into
/// the tool's own prompt at most once (the rules are in the module
/// documentation).
pub struct Responder {
    context: String,
    tool: &'static str,
    user: String,
    password: Option<String>,
    is_prompt: Box<dyn Fn(&str) -> bool>,
    /// A match of `is_prompt` proves the tool printed it (sudo's secret).
    proven: bool,
    failures: &'static [(&'static str, BecomeFailure)],
    answer_to: AnswerTo,
    answered: bool,
    /// Why nothing may be typed any more; `None` while armed.
    disarmed: Option<&'static str>,
    invoker: Invoker,
    /// Look at the tool's process before answering ([`Self::forks_after_authenticating`]).
    watch: Watch,
    /// The tool's process, when it runs on this machine ([`Hooks::spawned`]).
    pid: Option<u32>,
}

/// What a responder makes of the tool's process before it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Nothing (a responder not built by sudo, su or doas).
    No,
    /// Refuse when the process is past its authentication; answer when
    /// /proc does not show it (sudo's secret prompt, doas' `sh -c`).
    WhenVisible,
    /// Refuse too when /proc does not show it (su).
    Required,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("tool", &self.tool)
            .field("user", &self.user)
            .field("answered", &self.answered)
            .field("disarmed", &self.disarmed)
            .finish_non_exhaustive()
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
            proven: false,
            failures,
            answer_to: AnswerTo::Tty,
            answered: false,
            disarmed: None,
            invoker: Invoker::Irrelevant,
            watch: Watch::No,
            pid: None,
        }
    }

    /// Answers on the process's stdin instead of the tty (su via PAM).
    pub fn answer_on_stdin(mut self) -> Responder {
        self.answer_to = AnswerTo::Stdin;
        self
    }

    /// `is_prompt` matches only what the tool itself can print (a secret
    /// prompt): a second match means the first answer was refused.
    pub fn prompt_is_secret(mut self) -> Responder {
        self.proven = true;
        self
    }

    /// The first line on the tty is [`INVOKER_LINE`] and a uid, printed
    /// before the tool started (su): uid 0 disarms (root's su never asks),
    /// and so does a first line that is not this one.
    pub fn expect_invoker_line(mut self) -> Responder {
        self.invoker = Invoker::Pending;
        self
    }

    /// The tool runs the target's side only after authenticating, and in a
    /// process it starts (sudo, su and doas do): on this machine (behind a
    /// hop, the hop's agent does it), before it types or reports a missing
    /// password, the responder looks at the tool's process in /proc
    /// (`core::tool_process`) and refuses once that process has a child,
    /// has exited, or goes on reaping and ending. `required`: refuse also
    /// when /proc does not show the process (su, whose prompt any program
    /// can print).
    pub fn forks_after_authenticating(mut self, required: bool) -> Responder {
        self.watch = if required { Watch::Required } else { Watch::WhenVisible };
        self
    }

    fn disarm(&mut self, why: &'static str) {
        if self.disarmed.is_none() {
            log::debug!(
                "[{}] {} to {}: no password will be typed from now on: {why}",
                self.context,
                self.tool,
                self.user
            );
            self.disarmed = Some(why);
        }
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

    /// Reads su's wrapper line at the start of `text`; returns the text
    /// after it (or all of it when there is none).
    fn invoker_line<'t>(&mut self, text: &'t str) -> Option<&'t str> {
        if !text.starts_with(INVOKER_LINE) {
            if self.invoker == Invoker::Pending && !INVOKER_LINE.starts_with(text) {
                self.invoker = Invoker::Known;
                self.disarm("the first line on su's tty was not its wrapper's");
            }
            return (self.invoker != Invoker::Pending).then_some(text);
        }
        // Not the whole line yet: wait for it.
        let (line, rest) = text.split_once('\n')?;
        if self.invoker == Invoker::Pending {
            self.invoker = Invoker::Known;
            if line[INVOKER_LINE.len()..].trim() == "0" {
                self.disarm("su run by root, which su does not ask for a password");
            }
        }
        Some(rest)
    }
}

impl Hooks for Responder {
    fn target_spoke(&mut self) {
        self.disarm("the target's side had started: its stdout spoke");
    }

    fn spawned(&mut self, pid: u32) {
        self.pid = Some(pid);
    }

    fn refused(&mut self, why: &'static str, output: &[u8]) -> Option<ConnectError> {
        self.disarm(why);
        Some(self.error(BecomeFailure::UnexpectedPrompt { why }, output))
    }

    fn on_stderr(&mut self, unscanned: &[u8]) -> Prompt {
        let all = String::from_utf8_lossy(unscanned);
        let text = if self.invoker == Invoker::Irrelevant {
            &all[..]
        } else {
            match self.invoker_line(&all) {
                Some(rest) => rest,
                None => return Prompt::Wait,
            }
        };
        if let Some(f) = self.failure_in(text) {
            return Prompt::Fail(self.error(f, text.as_bytes()));
        }
        let t = text.trim_end();
        let own = (self.is_prompt)(t);
        if !own && !ends_with_password_prompt(t) {
            return Prompt::Wait;
        }
        let unexpected = |r: &Self, why| Prompt::Fail(r.error(BecomeFailure::UnexpectedPrompt { why }, t.as_bytes()));
        if let Some(why) = self.disarmed {
            return unexpected(self, why);
        }
        if !own {
            return unexpected(self, "not in the tool's prompt format");
        }
        if self.answered {
            if self.proven {
                // sudo's secret prompt again: the first answer was refused.
                return Prompt::Fail(self.error(BecomeFailure::WrongPassword, b""));
            }
            return unexpected(self, "a second prompt, where the tool asks once");
        }
        if let (Some(pid), true) = (self.pid, self.watch != Watch::No) {
            match tool_process::tool_process(pid) {
                ToolState::AtItsPrompt => {}
                // With no password there is nothing to protect: say what is
                // missing rather than what could not be checked.
                ToolState::Unseen if self.watch == Watch::WhenVisible || self.password.is_none() => {
                    log::debug!("[{}] {}: /proc does not show pid {pid}", self.context, self.tool)
                }
                past => return unexpected(self, tool_process::why(past)),
            }
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
    use crate::core::tool_process::fixture::Tool;

    fn prompt(t: &str) -> bool {
        t.ends_with("TOKEN:")
    }
    const FAILS: &[(&str, BecomeFailure)] = &[("sorry, try again", BecomeFailure::WrongPassword)];

    fn responder(pw: Option<&str>) -> Responder {
        Responder::new("c", "sudo", "root", pw.map(str::to_string), Box::new(prompt), FAILS)
    }

    fn failure(p: Prompt) -> BecomeFailure {
        match p {
            Prompt::Fail(ConnectError::Become { failure, .. }) => failure,
            other => panic!("expected a typed failure, got {other:?}"),
        }
    }

    #[test]
    fn answers_once_then_fails() {
        let mut r = responder(Some("pw")).prompt_is_secret();
        assert!(matches!(r.on_stderr(b"some lecture\n"), Prompt::Wait));
        assert!(matches!(r.on_stderr(b"TOKEN:"), Prompt::Answer(a, AnswerTo::Tty) if a == b"pw\n"));
        assert_eq!(failure(r.on_stderr(b"\nSorry, try again.\nTOKEN:")), BecomeFailure::WrongPassword);
        // The secret prompt again, without sudo's "Sorry": still refused.
        let mut r = responder(Some("pw")).prompt_is_secret();
        assert!(matches!(r.on_stderr(b"TOKEN:"), Prompt::Answer(..)));
        assert_eq!(failure(r.on_stderr(b"TOKEN:")), BecomeFailure::WrongPassword);
        let mut r = responder(None);
        assert_eq!(failure(r.on_stderr(b"TOKEN: ")), BecomeFailure::PasswordRequired);
    }

    #[test]
    fn nothing_is_typed_once_the_target_spoke() {
        let mut r = responder(Some("pw"));
        r.target_spoke();
        assert!(matches!(failure(r.on_stderr(b"TOKEN:")), BecomeFailure::UnexpectedPrompt { .. }));
        assert!(matches!(failure(r.on_stderr(b"Password: ")), BecomeFailure::UnexpectedPrompt { .. }));
    }

    #[test]
    fn a_prompt_not_in_the_tools_format_is_never_answered() {
        let mut r = responder(Some("pw")).prompt_is_secret();
        assert!(matches!(r.on_stderr(b"Welcome\n"), Prompt::Wait));
        assert!(matches!(failure(r.on_stderr(b"Welcome\nPassword: ")), BecomeFailure::UnexpectedPrompt { .. }));
        // After an answer, an unproven tool's prompt is never taken for a retry.
        let mut r = responder(Some("pw"));
        assert!(matches!(r.on_stderr(b"TOKEN:"), Prompt::Answer(..)));
        assert!(matches!(failure(r.on_stderr(b"TOKEN:")), BecomeFailure::UnexpectedPrompt { .. }));
    }

    #[test]
    fn su_by_root_types_nothing_and_su_by_a_user_answers() {
        let su = |pw| {
            Responder::new("c", "su", "bob", pw, Box::new(ends_with_password_prompt), FAILS)
                .answer_on_stdin()
                .expect_invoker_line()
        };
        let mut r = su(Some("pw".into()));
        assert!(matches!(r.on_stderr(b"mito-su: run by"), Prompt::Wait));
        assert!(matches!(r.on_stderr(b"mito-su: run by uid 0\r\n"), Prompt::Wait));
        let f = failure(r.on_stderr(b"mito-su: run by uid 0\r\nPassword: "));
        assert!(matches!(f, BecomeFailure::UnexpectedPrompt { why } if why.contains("root")), "{f:?}");

        let mut r = su(Some("pw".into()));
        let answer = r.on_stderr(b"mito-su: run by uid 1000\nPassword: ");
        assert!(matches!(answer, Prompt::Answer(a, AnswerTo::Stdin) if a == b"pw\n"));
        // The target's login script printing a prompt after su's.
        assert!(matches!(failure(r.on_stderr(b"Password: ")), BecomeFailure::UnexpectedPrompt { .. }));

        // Anything else first (the wrapper did not run): nothing is typed.
        let mut r = su(Some("pw".into()));
        assert!(matches!(failure(r.on_stderr(b"Password: ")), BecomeFailure::UnexpectedPrompt { .. }));
    }

    #[test]
    fn a_tool_past_its_prompt_is_never_answered() {
        let su = |pw: Option<&str>, pid: u32| {
            let mut r =
                Responder::new("c", "su", "bob", pw.map(str::to_string), Box::new(ends_with_password_prompt), FAILS)
                    .answer_on_stdin()
                    .expect_invoker_line()
                    .forks_after_authenticating(true);
            r.spawned(pid);
            r
        };
        let text = b"mito-su: run by uid 1000\nPassword: ";
        let why = |p| match failure(p) {
            BecomeFailure::UnexpectedPrompt { why } => why,
            f => panic!("expected UnexpectedPrompt, got {f:?}"),
        };
        // su authenticated silently and runs the target's shell, which
        // prints "Password:".
        let has_child = tool_process::why(ToolState::HasChild);
        let shell = Tool::start("sleep 3; :");
        shell.until_child();
        assert_eq!(why(su(Some("pw"), shell.pid()).on_stderr(text)), has_child);
        assert_eq!(why(su(None, shell.pid()).on_stderr(text)), has_child, "not 'a password is required'");
        drop(shell);
        // su at its prompt.
        let waiting = Tool::start("exec sleep 5");
        assert!(matches!(su(Some("pw"), waiting.pid()).on_stderr(text), Prompt::Answer(..)));
        // su not in /proc: nothing typed; without a password, say so.
        assert_eq!(why(su(Some("pw"), u32::MAX).on_stderr(text)), tool_process::why(ToolState::Unseen));
        assert_eq!(failure(su(None, u32::MAX).on_stderr(text)), BecomeFailure::PasswordRequired);
        // sudo and doas: their prompt or rule 1 suffice where /proc is blind.
        let mut r = responder(Some("pw")).prompt_is_secret().forks_after_authenticating(false);
        r.spawned(u32::MAX);
        assert!(matches!(r.on_stderr(b"TOKEN:"), Prompt::Answer(..)));
        // Behind a hop (no pid): not checked here; the hop's agent checks
        // before it types (`ExecOp::AnswerTool`, tests/prompt_safety.rs).
        let mut r = Responder::new("c", "su", "bob", Some("pw".into()), Box::new(ends_with_password_prompt), FAILS)
            .expect_invoker_line()
            .forks_after_authenticating(true);
        assert!(matches!(r.on_stderr(text), Prompt::Answer(..)));
    }

    #[test]
    fn localised_su_prompts() {
        for p in ["Password:", "Passwort: ", "Mot de passe :", "Пароль:", "密码：", "bob's password:"] {
            assert!(ends_with_password_prompt(p), "{p}");
        }
        assert!(!ends_with_password_prompt("password was changed yesterday"));
    }
}
