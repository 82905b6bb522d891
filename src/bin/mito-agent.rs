//! The agent binary: `no_std`, `no_main`, static musl. All logic lives in
//! `mito::agent`; this file holds only what a freestanding binary needs:
//! the C entry point, the allocator and the panic handler.
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(not(feature = "std"), no_main)]

extern crate alloc;

use alloc::vec::Vec;
use core::ffi::{c_char, c_int, CStr};

// musl's libc linked statically (without it: undefined memalign/memset/free).
#[cfg(not(feature = "std"))]
#[link(name = "c", kind = "static", modifiers = "-bundle")]
extern "C" {}

/// Heap allocation through musl's malloc.
#[cfg(not(feature = "std"))]
struct LibcAlloc;

#[cfg(not(feature = "std"))]
// SAFETY: forwards to libc's allocator, which meets GlobalAlloc's contract.
unsafe impl core::alloc::GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, l: core::alloc::Layout) -> *mut u8 {
        let p = if l.align() <= 16 {
            libc::malloc(l.size()) as *mut u8
        } else {
            libc::memalign(l.align(), l.size()) as *mut u8
        };
        ALLOC_FAILED.store(p.is_null(), core::sync::atomic::Ordering::Relaxed);
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: core::alloc::Layout) {
        libc::free(p as *mut libc::c_void)
    }
    unsafe fn realloc(&self, p: *mut u8, l: core::alloc::Layout, new: usize) -> *mut u8 {
        if l.align() <= 16 {
            let n = libc::realloc(p as *mut libc::c_void, new) as *mut u8;
            ALLOC_FAILED.store(n.is_null(), core::sync::atomic::Ordering::Relaxed);
            n
        } else {
            let n = self.alloc(core::alloc::Layout::from_size_align_unchecked(new, l.align()));
            if !n.is_null() {
                core::ptr::copy_nonoverlapping(p, n, l.size().min(new));
                self.dealloc(p, l);
            }
            n
        }
    }
}

#[cfg(not(feature = "std"))]
#[global_allocator]
static ALLOC: LibcAlloc = LibcAlloc;

/// The last allocation failed: a panic that follows at once is the
/// allocation error handler's (the heap ran out), not a bug.
#[cfg(not(feature = "std"))]
static ALLOC_FAILED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A panic is a bug (or the heap ran out): say so to the parent in a
/// goodbye frame (best effort, written straight to the parent fd: the
/// master reports "the agent crashed: it panicked …"), and on fd 2 (an
/// IoLogger pipe: a log line if the loop still runs), then abort.
///
/// The `PanicInfo` is not read: using its location keeps every panic
/// site's file name in the binary, its message all of `core::fmt`
/// (measured: +15 KB gzip, a sixth of the agent). A failed allocation,
/// the one panic a target can cause on purpose, is told apart instead.
#[cfg(not(feature = "std"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    let what = if ALLOC_FAILED.load(core::sync::atomic::Ordering::Relaxed) { "memory allocation failed" } else { "" };
    mito::agent::panic_goodbye::panic_goodbye(what);
    // SAFETY: fd 2 is always open in the agent; abort never returns.
    unsafe {
        let msg = b"mito-agent: internal error (panic); aborting\n";
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::abort()
    }
}

/// C entry point called by musl's start code.
#[cfg(not(feature = "std"))]
#[no_mangle]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let args: Vec<&[u8]> = (0..argc.max(0) as usize)
        // SAFETY: argv has argc valid C strings, alive for the whole process.
        .map(|i| unsafe { CStr::from_ptr(*argv.add(i)) }.to_bytes())
        .collect();
    mito::agent::main(&args)
}

#[cfg(feature = "std")]
fn main() {
    let args: Vec<Vec<u8>> = std::env::args_os().map(|a| std::os::unix::ffi::OsStringExt::into_vec(a)).collect();
    let args: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    std::process::exit(mito::agent::main(&args));
}
