//! Reaping a child through its pidfd: one `waitid(P_PIDFD)` for the
//! master's `ProcessMonitor` and the agent's commands alike. A pidfd names
//! one process for good, so a reap can never take a recycled pid's status.

use rustix::fd::BorrowedFd;
use rustix::process::{waitid, WaitId, WaitIdOptions};

use crate::proto::ExitStatus;

/// Reaps the child behind `pidfd` and returns how it ended; `None` while
/// it runs (`block` false) or if it cannot be waited for (not our child,
/// already reaped). `block`: wait for it to exit.
pub fn reap(pidfd: BorrowedFd<'_>, block: bool) -> Option<ExitStatus> {
    let how = if block { WaitIdOptions::EXITED } else { WaitIdOptions::EXITED | WaitIdOptions::NOHANG };
    match waitid(WaitId::PidFd(pidfd), how) {
        Ok(Some(st)) => Some(ExitStatus { code: st.exit_status(), signal: st.terminating_signal() }),
        _ => None,
    }
}
