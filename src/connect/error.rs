//! [`ConnectError`]: why a context could not be created, naming the hop.

use std::time::Duration;

use thiserror::Error;

/// A failed connect. Every variant names the context (the hop) it is about.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The method's program could not be started.
    #[error("{context}: cannot start {program}: {source}")]
    Spawn {
        /// Context name.
        context: String,
        /// What we tried to run.
        program: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A phase took longer than the connect timeout.
    #[error("{context}: timed out after {timeout:?} while {phase}{output}")]
    Timeout {
        /// Context name.
        context: String,
        /// What was going on.
        phase: &'static str,
        /// The limit.
        timeout: Duration,
        /// What the target printed meanwhile (formatted, may be empty).
        output: String,
    },
    /// The target's architecture has no embedded agent.
    #[error("{context}: no agent for architecture {arch:?} is embedded in this master (have: {have})")]
    UnsupportedArch {
        /// Context name.
        context: String,
        /// `uname -m` of the target.
        arch: String,
        /// Embedded architectures.
        have: String,
    },
    /// No writable directory allows exec, and no interpreter for a memfd.
    #[error(
        "{context}: no directory to run the agent from: the cache directory, $XDG_RUNTIME_DIR, /dev/shm, /var/tmp and /tmp are read-only or mounted noexec, and there is no perl for an in-memory start"
    )]
    NoExecDir {
        /// Context name.
        context: String,
    },
    /// Writing the uploaded agent failed (disk full, quota, read-only).
    #[error("{context}: could not write the agent into {dir} (disk full or read-only?)")]
    WriteFailed {
        /// Context name.
        context: String,
        /// Directory stage0 chose.
        dir: String,
    },
    /// The uploaded agent did not match its hash after storing.
    #[error("{context}: the agent stored in {dir} failed its sha256 check")]
    VerifyFailed {
        /// Context name.
        context: String,
        /// Directory stage0 chose.
        dir: String,
    },
    /// The agent speaks another protocol version.
    #[error("{context}: the agent speaks protocol version {got}, this master speaks {want}")]
    Version {
        /// Context name.
        context: String,
        /// Agent's version.
        got: u16,
        /// Ours.
        want: u16,
    },
    /// The bootstrap ended without a working agent.
    #[error("{context}: bootstrap failed: {reason}{output}")]
    Bootstrap {
        /// Context name.
        context: String,
        /// What happened.
        reason: String,
        /// What the target printed (formatted, may be empty).
        output: String,
    },
    /// ssh could not log in or run the bootstrap.
    #[error("{context}: ssh{}: {failure}{output}", if context == host { String::new() } else { format!(" to {host}") })]
    Ssh {
        /// Context name.
        context: String,
        /// `[user@]host[:port]`.
        host: String,
        /// What went wrong.
        failure: super::ssh::SshFailure,
        /// What ssh printed (formatted, may be empty).
        output: String,
    },
    /// sudo, su or doas refused or failed.
    #[error("{context}: {tool} to {user}: {failure}{output}")]
    Become {
        /// Context name.
        context: String,
        /// `sudo`, `su` or `doas`.
        tool: &'static str,
        /// Target user.
        user: String,
        /// What went wrong.
        failure: super::prompt::BecomeFailure,
        /// What the tool printed (formatted, may be empty).
        output: String,
    },
    /// Entering a container (setns) or a chroot failed.
    #[error("{context}: {failure}")]
    Enter {
        /// Context name.
        context: String,
        /// What went wrong.
        failure: super::setns::EnterFailure,
    },
    /// A container engine's tool (docker, podman, nerdctl, kubectl, lxc,
    /// incus) refused or failed.
    #[error("{context}: {tool} container {container:?}: {failure}{output}")]
    Engine {
        /// Context name.
        context: String,
        /// The engine (`docker`, `podman`, …).
        tool: &'static str,
        /// The container as the target names it (`web`, `ns/pod/ct`).
        container: String,
        /// What went wrong.
        failure: super::engine::EngineFailure,
        /// What the tool printed (formatted, escaped; may be empty).
        output: String,
    },
    /// The context to connect through failed or went away.
    #[error("{context}: through {hop}: {reason}")]
    Hop {
        /// Context name.
        context: String,
        /// The hop's name.
        hop: String,
        /// What went wrong there.
        reason: String,
    },
    /// The method cannot be used this way yet.
    #[error("{context}: {what} is not supported yet")]
    Unsupported {
        /// Context name.
        context: String,
        /// What was asked for.
        what: &'static str,
    },
    /// The broker could not take the new stream.
    #[error("{context}: {source}")]
    Io {
        /// Context name.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Formats captured target output for an error message ("" when empty).
pub fn format_output(stderr: &[u8], stdout_noise: &[u8]) -> String {
    let mut s = String::new();
    for (label, bytes) in [("stderr", stderr), ("stdout", stdout_noise)] {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if !text.is_empty() {
            s.push_str(&format!("\n  target {label}:"));
            for line in text.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev() {
                s.push_str("\n    ");
                // Control characters escaped, and cut at a length a person reads
                // (sudo echoes a refused command: the whole stage0, one line).
                s.push_str(&crate::core::text::printable(line.as_bytes(), 240));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn target_output_cannot_drive_the_terminal_or_flood_the_error() {
        let hostile = b"\x1b]0;owned\x07\x1b[2Jsudo: refused\n";
        let long = "x".repeat(5000);
        let s = super::format_output(hostile, long.as_bytes());
        assert!(!s.contains('\x1b') && !s.contains('\x07'), "{s:?}");
        assert!(s.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2Jsudo: refused"), "{s}");
        assert!(s.contains("… (4760 more characters)") && s.len() < 600, "{s}");
    }
}
