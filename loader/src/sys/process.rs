//! Calls about this process that rustix does not wrap (safely).
//!
//! # References
//!  - [`personality(2)`](https://man7.org/linux/man-pages/man2/personality.2.html)
//!  - [`_exit(2)`](https://man7.org/linux/man-pages/man2/_exit.2.html)
//!  - [`clone(2)`](https://man7.org/linux/man-pages/man2/clone.2.html)
//!  - [`PR_GET_AUXV`](https://man7.org/linux/man-pages/man2/PR_GET_AUXV.2const.html)

#![allow(unsafe_code)]

/// This process's execution domain and flags (`ADDR_NO_RANDOMIZE`, …).
#[must_use]
pub fn personality() -> u32 {
    // SAFETY: personality(0xffffffff) only queries the persona; it touches
    // no memory.
    unsafe { libc::personality(0xffff_ffff) as u32 }
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
