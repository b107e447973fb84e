//! Signal masks as `sigset_t`, built and read with libc's helpers (which
//! know glibc's layout and its reserved signals). All of them are
//! async-signal-safe and allocate nothing: the forked watchdog and stage
//! use them too.
//!
//! # References
//!  - [`sigsetops(3)`](https://man7.org/linux/man-pages/man3/sigsetops.3.html)
//!  - [`pthread_sigmask(3)`](https://man7.org/linux/man-pages/man3/pthread_sigmask.3.html)

#![allow(unsafe_code)]

/// The signals in `mask` (bit n-1 for signal n, up to 64) as a `sigset_t`.
#[must_use]
pub fn sigset(mask: u64) -> libc::sigset_t {
    // SAFETY: sigset_t is an array of integers, for which all-zero bytes
    // are a valid (empty) value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t on our stack.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in (1..=64).filter(|&s| mask & (1 << (s - 1)) != 0) {
        // SAFETY: as above; a signal number out of range only fails (EINVAL).
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// Every signal (but glibc's own, which it never lets a program block).
#[must_use]
pub fn full() -> libc::sigset_t {
    let mut set = sigset(0);
    // SAFETY: `set` is a valid, writable sigset_t on our stack.
    unsafe { libc::sigfillset(&mut set) };
    set
}

/// Sets the calling thread's blocked signals to `set`.
pub fn set_blocked(set: &libc::sigset_t) {
    // SAFETY: `set` is a valid sigset_t, only read; a null old mask is not
    // written. Blocking or unblocking signals is memory-safe.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, std::ptr::null_mut()) };
}

/// The signals in `set`, bit n-1 for signal n.
#[must_use]
pub fn mask_of(set: &libc::sigset_t) -> u64 {
    (1..=64)
        // SAFETY: `set` is a valid sigset_t, only read.
        .filter(|&sig| unsafe { libc::sigismember(set, sig) } == 1)
        .fold(0u64, |acc, sig| acc | 1 << (sig - 1))
}

/// The calling thread's blocked signals, bit n-1 for signal n.
#[must_use]
pub fn blocked() -> u64 {
    let mut set = sigset(0);
    // SAFETY: a null new set only reads the mask, into `set`, a valid
    // sigset_t on our stack.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut set) };
    mask_of(&set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        let m = 1 << (libc::SIGUSR1 - 1) | 1 << (libc::SIGCHLD - 1) | 1 << 63;
        assert_eq!(mask_of(&sigset(m)), m);
    }
}
