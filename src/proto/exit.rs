//! [`ExitStatus`]: how a process ended, the one shape for it everywhere:
//! the master's own children (`core::process_monitor`), commands an agent
//! ran, and the process that carried a lost child stream (`DelRoute`).

use serde::{Deserialize, Serialize};

/// How a process ended: an exit code or the signal that killed it (both
/// `None`: not known). On the wire, two optional varints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
}

impl core::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExitStatus;

    /// A struct of two options encodes exactly as the `(Option<i32>,
    /// Option<i32>)` tuple the wire carried before: no protocol change.
    #[test]
    fn encodes_like_the_tuple_it_replaced() {
        let st = ExitStatus { code: Some(3), signal: None };
        let tuple: (Option<i32>, Option<i32>) = (Some(3), None);
        let a = postcard::to_allocvec(&st).expect("encode");
        assert_eq!(a, postcard::to_allocvec(&tuple).expect("encode"));
        assert_eq!(postcard::from_bytes::<ExitStatus>(&a).expect("decode"), st);
        assert_eq!(ExitStatus { code: None, signal: Some(9) }.to_string(), "killed by signal 9");
    }
}
