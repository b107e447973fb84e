//! Calls about this process that rustix does not wrap (safely).
//!
//! # References
//!  - [`personality(2)`](https://man7.org/linux/man-pages/man2/personality.2.html)
//!  - [`_exit(2)`](https://man7.org/linux/man-pages/man2/_exit.2.html)
//!  - [`fcntl(2)`](https://man7.org/linux/man-pages/man2/fcntl.2.html), `F_GETFD`

#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// This process's execution domain and flags (`ADDR_NO_RANDOMIZE`, …).
#[must_use]
pub fn personality() -> u32 {
    // SAFETY: personality(0xffffffff) only queries the persona; it touches
    // no memory.
    unsafe { libc::personality(0xffff_ffff) as u32 }
}

/// Whether fd number `fd` is open and close-on-exec.
#[must_use]
pub fn is_cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of an fd number: it changes
    // nothing, whoever owns the fd, and a closed number gives -1 (EBADF).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC != 0
}

/// Ends the process at once with `code`, running none of the atexit
/// handlers or destructors of the monitor it may have been forked from.
/// Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) only ends the process; libc marks it unsafe as an
    // extern function, not for any precondition.
    unsafe { libc::_exit(code) }
}
