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
/// at compile time).
///
/// The declaration also gets a [signature](signature): a hash of the name
/// and of the argument and reply types as written, computed at compile
/// time. The master sends it with each call and the agent compares it with
/// its own, so an agent built from another declaration (types changed,
/// agent not rebuilt) is the typed `CallError::SignatureMismatch`, not a
/// decode error or a wrong value. It hashes the types' spelling, not their
/// definitions: a field added to `Usage` is not seen; rename the function
/// (`"example.disk_usage2"`) when a type's shape changes.
///
/// The master calls it with
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
            const SIGNATURE: Option<u64> =
                Some($crate::proto::declare::signature(&[$name, stringify!($args), stringify!($reply)]));
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

/// FNV-1a (64 bits) of `parts`, ASCII whitespace left out (how a compiler
/// spaces `stringify!` of a type may change between versions; the tokens
/// do not), each part ended by a 0 byte (so `("ab", "c")` and `("a",
/// "bc")` differ). A `const fn`: [`declare_function!`](crate::declare_function)
/// computes it at compile time, and the declaration compiled into both
/// halves gives both the same value (`core::any::type_name` would not: it
/// differs between crates).
pub const fn signature(parts: &[&str]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut p = 0;
    while p < parts.len() {
        let b = parts[p].as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_whitespace() {
                h = (h ^ b[i] as u64).wrapping_mul(PRIME);
            }
            i += 1;
        }
        h = h.wrapping_mul(PRIME); // the 0 byte: h ^ 0 == h
        p += 1;
    }
    h
}

/// The wire name of a call of a function with `signature`:
/// `name@<16 hex digits>`. Built-ins (no signature) keep their bare name.
pub fn signed_name(name: &str, signature: u64) -> alloc::string::String {
    alloc::format!("{name}@{signature:016x}")
}

/// Splits a wire name into the function's name and, for a signed one
/// (`name@<16 hex digits>`), its signature. Anything else is a bare name
/// (a built-in, or a `Function` implemented by hand without a signature).
pub fn split_signed_name(wire: &str) -> (&str, Option<u64>) {
    match wire.rsplit_once('@') {
        Some((name, hex)) if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            match u64::from_str_radix(hex, 16) {
                Ok(sig) => (name, Some(sig)),
                Err(_) => (wire, None),
            }
        }
        _ => (wire, None),
    }
}

#[cfg(test)]
mod tests {
    use super::{signature, signed_name, split_signed_name};

    #[test]
    fn a_signature_depends_on_the_tokens_not_their_spacing() {
        let a = signature(&["x.f", "Vec<(u64, String)>", "()"]);
        assert_eq!(a, signature(&["x.f", "Vec < (u64,String) >", " ( ) "]));
        assert_ne!(a, signature(&["x.f", "Vec<(u64, String)>", "u8"]));
        assert_ne!(a, signature(&["x.g", "Vec<(u64, String)>", "()"]));
        assert_ne!(signature(&["ab", "c"]), signature(&["a", "bc"]));
    }

    #[test]
    fn a_signed_name_splits_back() {
        let w = signed_name("x.f", 0x0123_4567_89ab_cdef);
        assert_eq!(w, "x.f@0123456789abcdef");
        assert_eq!(split_signed_name(&w), ("x.f", Some(0x0123_4567_89ab_cdef)));
        assert_eq!(split_signed_name("ping"), ("ping", None));
        assert_eq!(split_signed_name("x.f@12"), ("x.f@12", None));
        assert_eq!(split_signed_name("x.f@0123456789abcdeg"), ("x.f@0123456789abcdeg", None));
    }
}
