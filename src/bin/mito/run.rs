//! `mito run`: a remote command wired to this terminal, as ssh does it.
//!
//! - stdin: a thread copies this process's stdin to the command (bounded
//!   window, see `mito::Process`); EOF here is EOF there.
//! - signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT are blocked before any
//!   thread starts and taken by one thread with `sigwait`: before the
//!   command runs they end mito (exit 128+N); afterwards they are forwarded
//!   to the command's process group, so ^C stops the remote command and mito
//!   exits with the command's status. A third ^C gives up on it and exits.
//! - `-t`: the command runs on a pty sized like this terminal; this terminal
//!   goes raw (keys, ^C included, travel as bytes) and SIGWINCH resizes it.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use mito::functions::ExecArgs;
use mito::{Context, ProcessEvent, ProcessInput};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};

use super::cli::RunArgs;
use super::settings::exec_args;
use super::target::Targets;

/// The terminal settings to put back on exit, while raw.
static SAVED_TERMIOS: Mutex<Option<Termios>> = Mutex::new(None);

fn restore_terminal() {
    if let Some(t) = SAVED_TERMIOS.lock().unwrap_or_else(PoisonError::into_inner).take() {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &t);
    }
}

/// Rows and columns of this terminal (24×80 when there is none).
pub fn window_size() -> (u16, u16) {
    for fd in [std::io::stdout().as_fd(), std::io::stdin().as_fd(), std::io::stderr().as_fd()] {
        if let Ok(ws) = rustix::termios::tcgetwinsize(fd) {
            if ws.ws_row > 0 && ws.ws_col > 0 {
                return (ws.ws_row, ws.ws_col);
            }
        }
    }
    (24, 80)
}

/// The signal thread and where it forwards to.
pub struct Signals {
    target: Arc<OnceLock<ProcessInput>>,
}

impl Signals {
    /// Blocks the signals in this (still single) thread, so every thread
    /// started later inherits the mask, and starts the thread that waits for them.
    pub fn start() -> Signals {
        let target: Arc<OnceLock<ProcessInput>> = Arc::new(OnceLock::new());
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGWINCH] {
            set.add(s);
        }
        if set.thread_block().is_err() {
            return Signals { target };
        }
        let t = target.clone();
        std::thread::spawn(move || {
            let mut interrupts = 0;
            loop {
                let Ok(sig) = set.wait() else { continue };
                let Some(input) = t.get() else {
                    if sig == Signal::SIGWINCH {
                        continue;
                    }
                    // Still connecting: nothing remote to stop.
                    restore_terminal();
                    std::process::exit(128 + sig as i32);
                };
                if sig == Signal::SIGWINCH {
                    let (rows, cols) = window_size();
                    let _ = input.resize(rows, cols);
                    continue;
                }
                if sig == Signal::SIGINT {
                    interrupts += 1;
                    if interrupts >= 3 {
                        restore_terminal();
                        eprintln!("\nmito: interrupted three times; leaving the command to its agent's end");
                        std::process::exit(130);
                    }
                }
                if input.signal(sig as i32).is_err() {
                    restore_terminal();
                    std::process::exit(128 + sig as i32);
                }
            }
        });
        Signals { target }
    }
}

/// `mito run`: connects to the target, runs the command there and
/// returns the exit status mito should end with.
pub fn command(a: &RunArgs, targets: &mut Targets<'_>, signals: Option<Signals>) -> Result<ExitCode, String> {
    let ctx = targets.connect(&a.target)?;
    let args = exec_args(a)?;
    run(&ctx, &args, !a.no_stdin, signals)
}

/// Runs `args` in `ctx` with stdin forwarded (unless `forward_stdin` is
/// false) and output streamed; returns the exit status mito should end with.
fn run(ctx: &Context, args: &ExecArgs, forward_stdin: bool, signals: Option<Signals>) -> Result<ExitCode, String> {
    let raw = args.pty.is_some() && std::io::stdin().is_terminal();
    let mut p = ctx.spawn(args).map_err(|e| e.to_string())?;
    let input = p.take_input().ok_or("no stdin handle")?;
    if let Some(s) = signals {
        let _ = s.target.set(input.clone());
    }
    if raw {
        if let Ok(saved) = termios::tcgetattr(std::io::stdin().as_fd()) {
            let mut t = saved.clone();
            termios::cfmakeraw(&mut t);
            if termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &t).is_ok() {
                *SAVED_TERMIOS.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
            }
        }
    }
    if forward_stdin {
        std::thread::spawn(move || copy_stdin(input));
    } else {
        let _ = input.close();
    }
    let result = pump(&mut p);
    restore_terminal();
    let reply = result?;
    if reply.timed_out {
        let secs = args.timeout_ms.unwrap_or_default() as f64 / 1e3;
        eprintln!("mito: {}: command timed out after {secs} s and was killed", ctx.name());
        return Ok(ExitCode::from(124));
    }
    Ok(ExitCode::from(exit_status(reply.status.code, reply.status.signal)))
}

/// The exit status for a command's code or signal, as ssh gives it (128 +
/// N for signal N). Both come from the target: any i32 maps to 0..=255
/// without overflow.
fn exit_status(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(s)) => (128 + i64::from(s)).clamp(0, 255) as u8,
        _ => 255,
    }
}

/// Output to our stdout/stderr until the exit. When our stdout is a pipe
/// whose reader went away (`mito run … | head`), the command gets the
/// SIGPIPE it would have got writing there itself (SIGKILL if it is still
/// there 2 s later), its further output is dropped, and its end — killed by
/// signal 13, exit status 141 — is ours, as for any program in a pipeline.
fn pump(p: &mut mito::Process) -> Result<mito::functions::ExecReply, String> {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let mut kill_at: Option<Instant> = None;
    loop {
        let event = match p.next(kill_at) {
            Err(mito::CallError::Timeout { .. }) if kill_at.is_some() => {
                let _ = p.signal(libc::SIGKILL);
                kill_at = None;
                continue;
            }
            e => e.map_err(|e| e.to_string())?,
        };
        match event {
            ProcessEvent::Output { .. } if kill_at.is_some() => {}
            ProcessEvent::Output { fd: 1, data } => {
                if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        let _ = p.signal(libc::SIGPIPE);
                        kill_at = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
            // A closed stderr is not worth stopping the command for.
            ProcessEvent::Output { data, .. } => {
                let _ = err.write_all(&data);
            }
            ProcessEvent::Exit(r) => return Ok(r),
        }
    }
}

fn copy_stdin(input: ProcessInput) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if input.write(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = input.close();
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_code_or_signal_from_a_target_is_an_exit_status() {
        use super::exit_status;
        assert_eq!(exit_status(Some(3), None), 3);
        assert_eq!(exit_status(None, Some(15)), 143);
        assert_eq!(exit_status(None, Some(i32::MAX)), 255);
        assert_eq!(exit_status(None, Some(i32::MIN)), 0);
        assert_eq!(exit_status(Some(-1), None), 0);
        assert_eq!(exit_status(Some(i32::MAX), None), 255);
        assert_eq!(exit_status(None, None), 255);
    }
}
