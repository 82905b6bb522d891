//! [`declare_function!`](crate::declare_function): a user's own remote
//! function, declared once in a module that both halves of the user's
//! program compile (the master that calls it, the custom agent that runs
//! it), so both agree on its wire name and its types.

/// Declares a remote function: a unit struct implementing
/// [`Function`](crate::functions::Function) with its wire name, argument
/// and reply types (any serde types; postcard on the wire).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Usage { pub files: u64, pub bytes: u64 }
///
/// mito::declare_function!(
///     /// Bytes and files under a directory.
///     pub DiskUsage, "example.disk_usage", String, Usage
/// );
/// assert_eq!(<DiskUsage as mito::functions::Function>::NAME, "example.disk_usage");
/// ```
///
/// The name must contain a `.` (say `crate_name.function`): built-in
/// names never do, so a built-in added later can never shadow it (checked
/// at compile time). The master calls it with
/// `ctx.call::<DiskUsage>(&args)`; the agent registers its body with
/// `mito::agent::user::function::<DiskUsage, _>(body)` (ARCHITECTURE.md,
/// "Your own functions").
#[macro_export]
macro_rules! declare_function {
    ($(#[$doc:meta])* $vis:vis $ty:ident, $name:literal, $args:ty, $reply:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        $vis struct $ty;
        impl $crate::functions::Function for $ty {
            const NAME: &'static str = $name;
            type Args = $args;
            type Reply = $reply;
        }
        const _: () = assert!(
            $crate::proto::declare::is_user_name($name),
            "a user function's name needs a '.' (e.g. \"my_crate.my_function\"): built-in names have none"
        );
    };
}

/// Whether `name` may be a user function's name: it has a `.` that is
/// neither first nor last (built-in names have none).
pub const fn is_user_name(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 1;
    while i + 1 < b.len() {
        if b[i] == b'.' {
            return true;
        }
        i += 1;
    }
    false
}
