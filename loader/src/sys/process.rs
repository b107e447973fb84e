//! Calls about this process that rustix does not wrap (safely).
//!
//! # References
//!  - [`personality(2)`](https://man7.org/linux/man-pages/man2/personality.2.html)
//!  - [`_exit(2)`](https://man7.org/linux/man-pages/man2/_exit.2.html)
//!  - [`clone(2)`](https://man7.org/linux/man-pages/man2/clone.2.html)
//!  - [`fcntl(2)`](https://man7.org/linux/man-pages/man2/fcntl.2.html), `F_GETFD`
//!  - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html), `POLLNVAL`
//!  - [`PR_GET_AUXV`](https://man7.org/linux/man-pages/man2/PR_GET_AUXV.2const.html)

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

/// The open fds below `bound` (in order), found with poll(2): it reports
/// `POLLNVAL` for a number that is not open, one call for many numbers,
/// where listing `/proc/self/fd` instantiates an inode for each fd.
#[must_use]
pub fn open_fds_below(bound: usize) -> Vec<RawFd> {
    // poll(2) refuses more entries than RLIMIT_NOFILE allows.
    let chunk = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(1024, |l| l.clamp(1, 1024) as usize);
    let mut open = Vec::new();
    let mut polled: Vec<libc::pollfd> = Vec::with_capacity(chunk);
    for from in (0..bound).step_by(chunk) {
        polled.clear();
        polled.extend((from..bound.min(from + chunk)).map(|fd| libc::pollfd {
            fd: fd as RawFd,
            events: 0,
            revents: 0,
        }));
        // SAFETY: `polled` is a valid array of `polled.len()` pollfds, which
        // poll(2) only reads and writes the `revents` of; a zero timeout
        // never blocks, and asking for no events changes nothing on any fd.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
        if n < 0 {
            // Unexpected (EINTR cannot happen with no wait): ask each number.
            open.extend(polled.iter().map(|p| p.fd).filter(|&fd| is_open(fd)));
            continue;
        }
        open.extend(
            polled
                .iter()
                .filter(|p| p.revents & libc::POLLNVAL == 0)
                .map(|p| p.fd),
        );
    }
    open
}

/// Whether fd number `fd` is open.
fn is_open(fd: RawFd) -> bool {
    // SAFETY: as in `is_cloexec`.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// This process's auxiliary vector, as bytes (the layout of
/// `/proc/self/auxv`), from `PR_GET_AUXV`; None before Linux 6.4.
#[must_use]
pub fn auxv() -> Option<Vec<u8>> {
    const PR_GET_AUXV: libc::c_int = 0x4155_5856;
    let mut buf = vec![0u8; 512];
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`,
        // which is ours and that long.
        let n = unsafe { libc::prctl(PR_GET_AUXV, buf.as_mut_ptr(), buf.len(), 0, 0) };
        let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        // It did not fit: the call gave the whole size.
        buf = vec![0u8; n];
    }
}

/// fork(2) as the bare system call (`clone` with only `SIGCHLD`): libc's
/// fork would run its handlers and take its locks, and errno is never set.
/// Returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// As for fork(2) in a process whose memory other threads use: the child
/// may only make system calls (no allocation, no locks) until it execs or
/// exits, and must never return into code that expects the parent's state.
pub unsafe fn raw_fork() -> Result<i32, rustix::io::Errno> {
    let ret: i64;
    // SAFETY: the clone system call with flags SIGCHLD and no new stack
    // copies this process as fork does; the kernel clobbers rcx and r11
    // only, and uses no stack of ours. The child resumes here with rax 0,
    // on its copy of our stack (the caller's promise covers what it does).
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_clone => ret,
            in("rdi") libc::SIGCHLD as u64,
            in("rsi") 0u64,
            in("rdx") 0u64,
            in("r10") 0u64,
            in("r8") 0u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        Err(rustix::io::Errno::from_raw_os_error(-ret as i32))
    } else {
        Ok(ret as i32)
    }
}

/// Ends the process at once with `code`, running none of the atexit
/// handlers or destructors of the monitor it may have been forked from.
/// Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) only ends the process; libc marks it unsafe as an
    // extern function, not for any precondition.
    unsafe { libc::_exit(code) }
}
