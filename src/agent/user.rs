//! A user's own functions, in a custom agent (issue 15).
//!
//! A custom agent is the user's static musl `std` binary that links this
//! runtime (`mito` with `default-features = false, features = ["agent",
//! "std"]`) and registers its functions in `main`, in one call:
//!
//! ```ignore
//! fn main() {
//!     mito::agent::serve(vec![
//!         mito::agent::function::<DiskUsage, _>(disk_usage),
//!         mito::agent::function::<Greet, _>(|name| Ok::<_, String>(format!("hello {name}"))),
//!     ])
//! }
//! ```
//!
//! The dispatcher runs the built-ins first and asks the [`Registry`] for
//! any other name. A function's error becomes the [`RemoteError`] it
//! converts to (`String`/`&str`: kind `User`; `io::Error`: kind `Os` with
//! its errno); a panic is caught (the agent must unwind: the default
//! `panic = "unwind"`) and replied as kind `Panicked`, and the agent goes
//! on serving. Why an explicit list and not a linker section or
//! constructors: ARCHITECTURE.md, "Your own functions".
//!
//! Only in a `std` build: the default agent (`no_std`, `panic = "abort"`)
//! links none of this.
#![cfg(feature = "std")]

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::proto::declare::{is_user_name, split_signed_name};
use crate::proto::functions::Function;
use crate::proto::{ErrorKind, RemoteError};

/// A function's body with its types erased: postcard arguments in,
/// postcard reply out.
type Body = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, RemoteError>>;

/// One registered function: its wire name and its body.
pub struct UserFunction {
    name: &'static str,
    /// The declaration's hash ([`Function::SIGNATURE`]), compared with the
    /// caller's.
    signature: Option<u64>,
    body: Body,
}

impl core::fmt::Debug for UserFunction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UserFunction").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Registers `body` as the implementation of `F` (declared with
/// [`declare_function!`](crate::declare_function)): it gets `F::Args`
/// decoded and returns `F::Reply` or an error that becomes a
/// [`RemoteError`].
pub fn function<F, E>(body: impl Fn(F::Args) -> Result<F::Reply, E> + 'static) -> UserFunction
where
    F: Function,
    E: Into<RemoteError>,
{
    UserFunction {
        name: F::NAME,
        signature: F::SIGNATURE,
        body: Box::new(move |args| {
            let a = postcard::from_bytes(args).map_err(|_| RemoteError::new(ErrorKind::BadArgs, F::NAME))?;
            let reply = body(a).map_err(Into::into)?;
            postcard::to_allocvec(&reply).map_err(|_| RemoteError::new(ErrorKind::Internal, "reply does not encode"))
        }),
    }
}

/// The user's functions of one agent, looked up by name.
#[derive(Debug, Default)]
pub struct Registry {
    functions: Vec<UserFunction>,
    /// Test only: the function whose call panics in the runtime itself,
    /// outside the catch (see [`RUNTIME_PANIC_VAR`]).
    runtime_panic_on: Option<String>,
}

/// Test only: a custom agent started with this variable set to a function
/// name panics in its runtime (not in the function, whose panics are
/// caught) when that function is called, so a test sees what a bug in the
/// runtime does: the agent's goodbye. Read once by [`serve`] from the
/// agent's environment, which only whoever starts the agent sets (the
/// master's `LocalOptions::env`, a login's environment); no call can set it.
pub const RUNTIME_PANIC_VAR: &str = "MITO_AGENT_TEST_RUNTIME_PANIC";

std::thread_local! {
    /// Whether a panic on this thread is the runtime's: set on the thread
    /// that runs [`serve`]'s loop, cleared while a user function runs on it
    /// (its panics are caught and replied). Other threads (the user's own)
    /// never set it: their panics are theirs to handle.
    static IN_RUNTIME: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

impl Registry {
    /// A registry of `functions`. Panics on a name without a `.` (it could
    /// be a built-in's) or registered twice: a bug in the agent's `main`,
    /// better seen when the agent is first run than as a wrong reply.
    pub fn new(functions: Vec<UserFunction>) -> Registry {
        for (i, f) in functions.iter().enumerate() {
            assert!(is_user_name(f.name), "mito: user function {:?} needs a '.' in its name", f.name);
            assert!(
                functions[..i].iter().all(|g| g.name != f.name),
                "mito: user function {:?} registered twice",
                f.name
            );
        }
        Registry { functions, runtime_panic_on: None }
    }

    /// Runs the function `name` on `args`, or `None` if there is none. A
    /// panic in it is an error of kind [`ErrorKind::Panicked`] carrying
    /// the panic's message.
    ///
    /// `name` is the wire name: a declared function's caller sends
    /// `name@<signature>` and a signature other than this agent's is an
    /// error of kind [`ErrorKind::SignatureMismatch`] (`name@<ours>, called
    /// as @<theirs>`): the body is not run, its arguments would not decode
    /// as its types, or worse, would. A bare name (a `Function` implemented
    /// by hand, without a signature) is not checked.
    pub fn call(&self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, RemoteError>> {
        let (name, theirs) = split_signed_name(name);
        let f = self.functions.iter().find(|f| f.name == name)?;
        if let (Some(theirs), Some(ours)) = (theirs, f.signature) {
            if theirs != ours {
                let why = alloc::format!("{name}@{ours:016x}, called as @{theirs:016x}");
                return Some(Err(RemoteError::new(ErrorKind::SignatureMismatch, why)));
            }
        }
        if self.runtime_panic_on.as_deref() == Some(name) {
            panic!("{RUNTIME_PANIC_VAR} asked for a runtime panic");
        }
        // The body's panics are caught below, not the runtime's: the hook
        // (`install_panic_goodbye`) must leave them alone.
        let was = IN_RUNTIME.replace(false);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.body)(args)));
        IN_RUNTIME.set(was);
        Some(r.unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| String::from(*s))
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| String::from("a panic without a message"));
            Err(RemoteError::new(ErrorKind::Panicked, alloc::format!("{name}: {why}")))
        }))
    }
}

/// The custom agent's `main`: runs the agent loop (`mito-agent HASH
/// CONTEXT_ID`, as stage0 starts it) with the built-ins and `functions`,
/// and exits with its status.
pub fn serve(functions: Vec<UserFunction>) -> ! {
    let mut registry = Registry::new(functions);
    registry.runtime_panic_on = std::env::var(RUNTIME_PANIC_VAR).ok();
    install_panic_goodbye();
    let args: Vec<Vec<u8>> = std::env::args_os().map(std::os::unix::ffi::OsStringExt::into_vec).collect();
    let args: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    std::process::exit(super::external_context::main_with(&args, registry))
}

/// Makes a panic in the runtime (a bug: the user's functions' panics are
/// caught) end the agent as the `no_std` agent's panic handler does: a
/// goodbye frame naming the panic and the call, so the master reports
/// "the agent crashed: it panicked (…)" rather than a lost connection, the
/// standard hook's text on stderr, then abort (the loop's state is not to
/// be trusted after a panic in it; unwinding through it could write half
/// frames after the goodbye). Panics on other threads and in the user's
/// functions go to the standard hook alone.
fn install_panic_goodbye() {
    IN_RUNTIME.set(true);
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_RUNTIME.try_with(core::cell::Cell::get).unwrap_or(false) {
            return standard(info);
        }
        let p = info.payload();
        let why = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
        let at = info.location().map(|l| alloc::format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        super::panic_goodbye::panic_goodbye(&alloc::format!("{}{at}", why.unwrap_or("")));
        standard(info);
        std::process::abort()
    }));
}

/// One file for both halves: a program that is its own agent calls this
/// first in its `main`. When stage0 started this process as an agent (see
/// [`started_as_agent`]) it serves the built-ins and `functions` and never
/// returns; otherwise it returns at once and `main` goes on as the master,
/// which uploads this very file (`mito::Agent::this_executable()`).
///
/// `functions` is called only in agent mode, so the master builds nothing.
pub fn serve_if_agent(functions: impl FnOnce() -> Vec<UserFunction>) {
    if started_as_agent() {
        serve(functions())
    }
}

/// Whether stage0 started this process as an agent. stage0 runs an agent
/// in one of two ways, and nothing else makes either command line:
/// - from the target's cache: `<dir>/agent-<sha256> <sha256> <context id>`,
///   argv\[0\] an absolute path whose name ends in the hash that is
///   argv\[1\];
/// - from a memfd (no writable exec-able directory): `mito-agent <sha256>
///   <context id>` with `/proc/self/exe` a `/memfd:` file, which no
///   command line can fake.
///
/// Both need exactly three arguments, a 64-digit lowercase hex hash and a
/// decimal id. A command line a person types (`prog <a hash> 3`) has
/// neither argv\[0\], so it never turns the master into an agent; no
/// hashing of the executable is needed either (stage0 already checked it).
pub fn started_as_agent() -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(4).collect();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    is_agent_command_line(&args, || {
        std::fs::read_link("/proc/self/exe").ok().map(|p| p.as_os_str().as_bytes().to_vec())
    })
}

/// [`started_as_agent`] on `args`, with `exe` reading `/proc/self/exe`
/// (only asked when argv\[0\] is `mito-agent`).
fn is_agent_command_line(args: &[&[u8]], exe: impl FnOnce() -> Option<Vec<u8>>) -> bool {
    let [zero, hash, id] = args else { return false };
    let hex = hash.len() == 64 && hash.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex || super::util::parse_decimal(id).is_none() {
        return false;
    }
    let cached = zero.starts_with(b"/")
        && zero.len() > hash.len() + 7
        && zero.ends_with(hash)
        && zero[..zero.len() - hash.len()].ends_with(b"/agent-");
    cached || (*zero == b"mito-agent" && exe().is_some_and(|p| p.starts_with(b"/memfd:")))
}

#[cfg(test)]
mod tests {
    use super::is_agent_command_line;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn check(args: &[&str], exe: &str) -> bool {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        is_agent_command_line(&args, || Some(exe.as_bytes().to_vec()))
    }

    #[test]
    fn only_stage0s_command_lines_are_agents() {
        let cached = format!("/home/u/.cache/mito/agent-{H}");
        let memfd = "/memfd:mito-agent (deleted)";
        assert!(check(&[&cached, H, "7"], "/x"));
        assert!(check(&["mito-agent", H, "12"], memfd));
        // What a person might type.
        assert!(!check(&["./prog", H, "7"], "/x"));
        assert!(!check(&["mito-agent", H, "7"], "/usr/bin/mito-agent"));
        assert!(!check(&[&format!("agent-{H}"), H, "7"], "/x"));
        assert!(!check(&[&format!("/c/agent-{H}"), &H.replace('a', "b"), "7"], "/x"));
        assert!(!check(&[&format!("/c/agent-{H}"), H, "7", "more"], "/x"));
        assert!(!check(&[&format!("/c/agent-{H}"), H, "x"], "/x"));
        assert!(!check(&[&format!("/c/agent-{}", H.to_uppercase()), &H.to_uppercase(), "7"], "/x"));
        assert!(!check(&[&format!("/c/xagent-{H}"), H, "7"], "/x"));
        assert!(!check(&["prog"], memfd));
    }
}
