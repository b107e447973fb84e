//! Stage: the forked child builds the program's address space, hands its
//! userfaultfd to the monitor, and jumps to the hand-off blob.
//!
//! The child is forked from a possibly multi-threaded monitor, so it may only
//! make system calls: no allocation, no locks, no panics. Everything it needs
//! is computed before the fork and passed in [`StagePlan`].

#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::Errno;
use uprobe_runtime::uffd::features;
use uprobe_runtime::{Uffd, UffdMode};

use crate::plan::{MapOp, MapSource};
use crate::sys::fdpass;

/// Steps of the stage, named in error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Mapping a segment at its planned address.
    Map = 1,
    /// Mapping the stack.
    Stack = 2,
    /// Creating the userfaultfd.
    Userfaultfd = 3,
    /// The UFFDIO_API handshake.
    UffdApi = 4,
    /// Registering the text.
    Register = 5,
    /// Sending the uffd to the monitor.
    Send = 6,
    /// Mapping the hand-off blob.
    Blob = 8,
}

impl Step {
    /// Decodes a step number from the child.
    #[must_use]
    pub fn from_u32(v: u32) -> Option<Step> {
        Some(match v {
            1 => Step::Map,
            2 => Step::Stack,
            3 => Step::Userfaultfd,
            4 => Step::UffdApi,
            5 => Step::Register,
            6 => Step::Send,
            8 => Step::Blob,
            _ => return None,
        })
    }

    /// What the step does, for messages.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Step::Map => "mapping a segment of the program",
            Step::Stack => "setting up the program's stack",
            Step::Userfaultfd => "creating a userfaultfd (is userfaultfd enabled in this kernel?)",
            Step::UffdApi => "negotiating userfaultfd features",
            Step::Register => "registering the program's text with userfaultfd",
            Step::Send => "passing the userfaultfd to the monitor",
            Step::Blob => "mapping the hand-off code",
        }
    }
}

/// The message the child sends on success: its uffd mode; the uffd rides
/// along as SCM_RIGHTS. On failure: step, errno and an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StageMsg {
    /// 0 on success, else a [`Step`].
    pub step: u32,
    /// errno of the failure.
    pub errno: i32,
    /// 0 full mode, 1 user-mode-only.
    pub mode: u32,
    /// The SIGTRAP guard: 0 none, 1 installed, 2 installed with no_new_privs.
    pub guard: u32,
    /// The address involved, if any.
    pub addr: u64,
}

// SAFETY: #[repr(C)], four 4-byte integers then a u64: no padding, any bits valid.
unsafe impl fdpass::Message for StageMsg {}

/// The program's stack: our own `[stack]` mapping, at the top the kernel
/// chose (and randomised) for us, growing down on demand up to
/// `RLIMIT_STACK` with the kernel's guard gap, as the program's would.
#[derive(Clone, Copy, Debug)]
pub struct StackPlan {
    /// The `[stack]` mapping as the monitor saw it before the fork.
    pub vma: (u64, u64),
    /// The lowest byte the program's stack starts with (page aligned): the
    /// old contents below it are unmapped, those above are zeroed.
    pub keep_from: u64,
    /// `PT_GNU_STACK` asked for an executable stack.
    pub exec: bool,
}

/// Everything the child needs, computed before the fork.
#[derive(Clone, Copy)]
pub struct StagePlan<'a> {
    /// The socket to the monitor.
    pub sock: RawFd,
    /// The signal mask the program starts with.
    pub sigmask: libc::sigset_t,
    /// SIGPIPE stays ignored (the caller was started with it ignored);
    /// otherwise it gets its default action back.
    pub sigpipe_ignored: bool,
    /// Mappings to make, in order.
    pub maps: &'a [MapOp],
    /// Text ranges to register: (start, len).
    pub text: &'a [(u64, u64)],
    /// The program's stack.
    pub stack: StackPlan,
    /// Whether the monitor must learn of `madvise(MADV_DONTNEED)` on the
    /// text (`UFFD_EVENT_REMOVE`): only for anonymous text, whose dropped
    /// pages it must install again before it stops serving. A file-backed
    /// text needs no such event, and without it `madvise` never waits for
    /// the monitor (an eviction storm is one round trip per refault).
    pub watch_drops: bool,
    /// The stack image, copied to `stack_image_at`.
    pub stack_image: &'a [u8],
    /// Where the image goes.
    pub stack_image_at: u64,
    /// Where the blob goes, and its mapping length.
    pub blob_at: (u64, u64),
    /// The blob code.
    pub blob: &'a [u8],
    /// The hand-off parameter block (on the new stack).
    pub params_at: u64,
    /// Fds to close (the monitor's own, close-on-exec ones).
    pub close: &'a [RawFd],
    /// Fds to close first thing: the monitor's ends of our sockets and pipes,
    /// so that we see EOF if it dies.
    pub close_first: &'a [RawFd],
    /// Fds to close after mapping (the interpreter's file).
    pub close_after_map: &'a [RawFd],
    /// The parent's pid (the watchdog's), to notice if it died before
    /// PDEATHSIG was set.
    pub monitor: libc::pid_t,
    /// The probe trap handler and its restorer, when there are int3 probes.
    pub trap: Option<(u64, u64)>,
    /// The seccomp filter that guards the trap handler (see `guard`).
    pub seccomp: Option<&'a [libc::sock_filter]>,
    /// The text's name in `/proc/PID/maps` (see `vma`).
    pub text_name: [u8; crate::vma::NAME_MAX],
    /// The program's name as execve would set it (`comm`: the file name's
    /// last component, at most 15 bytes, NUL-terminated).
    pub comm: [u8; 16],
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fail(sock: RawFd, step: Step, err: i32, addr: u64) -> ! {
    let msg = StageMsg {
        step: step as u32,
        errno: err,
        addr,
        ..StageMsg::default()
    };
    // SAFETY: the socket to the monitor is open until we exit.
    let _ = fdpass::send(unsafe { BorrowedFd::borrow_raw(sock) }, &msg, &[]);
    // SAFETY: leaving without running any of the monitor's exit handlers.
    unsafe { libc::_exit(125) }
}

/// Resets what execve would reset and the fork carried over from the monitor.
unsafe fn reset_process(p: &StagePlan<'_>) {
    // SAFETY: (whole function) plain system calls on our own process, with
    // arguments built on the stack.
    unsafe {
        // Caught signals go back to their default action; ignored ones stay
        // ignored, as across execve. SIGPIPE is reset too unless the caller
        // was started with it ignored: Rust's runtime (or our CLI) ignores it
        // in the monitor, which a program must not inherit. Raw
        // rt_sigaction: glibc's wrapper refuses its own signals 32 and 33.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction {
                handler: 0,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            let null = std::ptr::null::<KernelSigaction>();
            if libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                null,
                &mut old as *mut KernelSigaction,
                8usize,
            ) != 0
            {
                continue;
            }
            let (dfl, ign) = (libc::SIG_DFL as u64, libc::SIG_IGN as u64);
            let reset_ign = sig == libc::SIGPIPE && !p.sigpipe_ignored;
            if old.handler != dfl && (old.handler != ign || reset_ign) {
                let act = KernelSigaction {
                    handler: dfl,
                    flags: 0,
                    restorer: 0,
                    mask: 0,
                };
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &act as *const KernelSigaction,
                    null,
                    8usize,
                );
            }
        }
        let ss = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        libc::sigaltstack(&ss, std::ptr::null_mut());
        // The kernel would keep writing the monitor's rseq area, which the
        // hand-off unmaps; the program's libc registers its own.
        unregister_rseq();
        libc::prctl(libc::PR_SET_NAME, p.comm.as_ptr(), 0, 0, 0);
        // The program dies with its parent, the watchdog.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != p.monitor {
            libc::_exit(125);
        }
        if let Some((handler, restorer)) = p.trap {
            install_trap_handler(handler, restorer);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &p.sigmask, std::ptr::null_mut());
    }
}

/// The kernel's `struct sigaction` for rt_sigaction(2).
#[repr(C)]
struct KernelSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

/// Installs the probe area's SIGTRAP handler with its own restorer: glibc's
/// would be unmapped with the monitor.
unsafe fn install_trap_handler(handler: u64, restorer: u64) {
    const SA_RESTORER: u64 = 0x0400_0000;
    let act = KernelSigaction {
        handler,
        flags: libc::SA_SIGINFO as u64
            | libc::SA_ONSTACK as u64
            | libc::SA_RESTART as u64
            | SA_RESTORER,
        restorer,
        mask: 0,
    };
    // SAFETY: a raw rt_sigaction with a valid struct and the kernel's sigset size.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::SIGTRAP,
            &act as *const KernelSigaction,
            0usize,
            8usize,
        );
    }
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

unsafe fn unregister_rseq() {
    const RSEQ_FLAG_UNREGISTER: i32 = 1;
    const RSEQ_SIG: u32 = 0x5305_3053;
    // SAFETY: fs:0 holds the thread pointer on x86-64 (glibc's TCB self
    // pointer); __rseq_offset is glibc's offset of its rseq area from it.
    unsafe {
        let tp: u64;
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
        let area = (tp as i64 + __rseq_offset as i64) as u64;
        // glibc 2.36 registers 32 bytes while reporting __rseq_size = 20.
        for len in [32u32, __rseq_size] {
            if libc::syscall(libc::SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0 {
                break;
            }
        }
    }
}

/// Runs in the child: never returns.
///
/// Invariant (security): the child maps only the areas the plan reserved in
/// the monitor (segments, stack, hand-off page); the probe area and the
/// counters were mapped by the monitor before the fork. Nothing here takes
/// an address from the program.
///
/// # Safety
/// Must be called only in a child just forked from the monitor, with a plan
/// whose addresses were reserved in the monitor before the fork.
pub(crate) unsafe fn run(p: &StagePlan<'_>) -> ! {
    // SAFETY: (whole function) system calls on the child's own address
    // space, at addresses the monitor reserved for exactly this.
    unsafe {
        for &fd in p.close_first {
            libc::close(fd);
        }
        reset_process(p);

        for m in p.maps {
            let (flags, fd, off) = match m.source {
                MapSource::Anon => (
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                ),
                MapSource::File { fd, offset } => {
                    (libc::MAP_PRIVATE | libc::MAP_FIXED, fd, offset as i64)
                }
            };
            let zero = m.zero_to > m.zero_from;
            let prot = m.prot.bits() as i32 | if zero { libc::PROT_WRITE } else { 0 };
            let r = libc::mmap(m.addr as *mut _, m.len as usize, prot, flags, fd, off);
            if r == libc::MAP_FAILED {
                fail(p.sock, Step::Map, errno(), m.addr);
            }
            if zero {
                std::ptr::write_bytes(
                    m.zero_from as *mut u8,
                    0,
                    (m.zero_to - m.zero_from) as usize,
                );
            }
        }
        for &fd in p.close_after_map {
            libc::close(fd);
        }
        for &(start, len) in p.text {
            crate::vma::name(start, len, &p.text_name);
        }

        // The monitor's stack contents go; its mapping becomes the program's.
        let st = p.stack;
        if st.vma.0 < st.keep_from
            && libc::munmap(st.vma.0 as *mut _, (st.keep_from - st.vma.0) as usize) != 0
        {
            fail(p.sock, Step::Stack, errno(), st.vma.0);
        }
        // Zeroing from the bottom up also grows the mapping down to
        // `keep_from` when it was shorter.
        std::ptr::write_bytes(
            st.keep_from as *mut u8,
            0,
            (p.stack_image_at - st.keep_from) as usize,
        );
        std::ptr::copy_nonoverlapping(
            p.stack_image.as_ptr(),
            p.stack_image_at as *mut u8,
            p.stack_image.len(),
        );
        if st.exec
            && libc::mprotect(
                st.keep_from as *mut _,
                (st.vma.1 - st.keep_from) as usize,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            ) != 0
        {
            fail(p.sock, Step::Stack, errno(), st.keep_from);
        }

        let (b_at, b_len) = p.blob_at;
        let r = libc::mmap(
            b_at as *mut _,
            b_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        if r == libc::MAP_FAILED {
            fail(p.sock, Step::Blob, errno(), b_at);
        }
        std::ptr::copy_nonoverlapping(p.blob.as_ptr(), b_at as *mut u8, p.blob.len());
        if libc::mprotect(
            b_at as *mut _,
            b_len as usize,
            libc::PROT_READ | libc::PROT_EXEC,
        ) != 0
        {
            fail(p.sock, Step::Blob, errno(), b_at);
        }

        let (uffd, mode) = match Uffd::create() {
            Ok(x) => x,
            Err(e) => fail(p.sock, Step::Userfaultfd, e.raw_os_error(), 0),
        };
        let mut want = features::EVENT_UNMAP | features::EVENT_REMAP | features::THREAD_ID;
        if mode == UffdMode::Full {
            want |= features::EVENT_FORK;
        }
        if p.watch_drops {
            want |= features::EVENT_REMOVE;
        }
        if let Err(e) = uffd.api(want) {
            fail(p.sock, Step::UffdApi, e.raw_os_error(), want);
        }
        for &(start, len) in p.text {
            if let Err(e) = uffd.register_missing(start, len) {
                fail(p.sock, Step::Register, e.raw_os_error(), start);
            }
        }

        // The SIGTRAP guard: installed last, so none of our own calls meet it.
        let (mut listener, mut guard) = (-1, 0);
        if let Some(filter) = p.seccomp {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            let install = || {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &prog as *const libc::sock_fprog,
                ) as RawFd
            };
            listener = install();
            guard = 1;
            if listener < 0 && errno() == libc::EACCES {
                // Without CAP_SYS_ADMIN the kernel wants no_new_privs first.
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                listener = install();
                guard = 2;
            }
            if listener < 0 {
                guard = 0;
            }
        }
        let msg = StageMsg {
            mode: u32::from(mode == UffdMode::UserModeOnly),
            guard,
            ..StageMsg::default()
        };
        // SAFETY: the socket to the monitor is open until we exit; the
        // listener, when there is one, is ours (the seccomp call made it).
        let sock = BorrowedFd::borrow_raw(p.sock);
        let listener = (listener >= 0).then(|| OwnedFd::from_raw_fd(listener));
        let sent = match &listener {
            Some(l) => fdpass::send(sock, &msg, &[uffd.as_fd(), l.as_fd()]),
            None => fdpass::send(sock, &msg, &[uffd.as_fd()]),
        };
        drop(listener);
        if let Err(e) = sent {
            fail(p.sock, Step::Send, e.raw_os_error(), 0);
        }
        // Wait for the monitor to be ready to serve (and, in user-mode-only
        // mode, to have installed the whole text).
        let mut ack = [0u8];
        let got = rustix::net::recv(sock, &mut ack, rustix::net::RecvFlags::empty());
        if !matches!(got, Ok((1, _))) {
            libc::_exit(125);
        }
        // The monitor and the watchdog hold the uffd now: were the monitor
        // killed, the watchdog's copy keeps the registration (faults wait
        // rather than read zero pages) until it has killed us.
        drop(uffd);

        for &fd in p.close {
            libc::close(fd);
        }
        std::arch::asm!(
            "jmp {blob}",
            blob = in(reg) b_at,
            in("rdi") p.params_at,
            options(noreturn)
        );
    }
}

/// Why the stage failed, read by the monitor.
pub fn describe_failure(msg: &StageMsg) -> (String, Errno) {
    let step = Step::from_u32(msg.step).map_or("an unknown step", Step::describe);
    let what = if msg.addr != 0 {
        format!("{step} (at {:#x})", msg.addr)
    } else {
        step.to_string()
    };
    (what, Errno::from_raw_os_error(msg.errno))
}
