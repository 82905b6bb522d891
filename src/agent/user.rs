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

use crate::proto::declare::is_user_name;
use crate::proto::functions::Function;
use crate::proto::{ErrorKind, RemoteError};

/// A function's body with its types erased: postcard arguments in,
/// postcard reply out.
type Body = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, RemoteError>>;

/// One registered function: its wire name and its body.
pub struct UserFunction {
    name: &'static str,
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
        Registry { functions }
    }

    /// Runs the function `name` on `args`, or `None` if there is none. A
    /// panic in it is an error of kind [`ErrorKind::Panicked`] carrying
    /// the panic's message.
    pub fn call(&self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, RemoteError>> {
        let f = self.functions.iter().find(|f| f.name == name)?;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.body)(args)));
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
    let registry = Registry::new(functions);
    let args: Vec<Vec<u8>> = std::env::args_os().map(std::os::unix::ffi::OsStringExt::into_vec).collect();
    let args: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    std::process::exit(super::external_context::main_with(&args, registry))
}
