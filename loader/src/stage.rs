//! Stage: the forked child builds the program's address space, hands its
//! userfaultfd to the monitor, and jumps to the hand-off blob.
//!
//! The child is forked from a possibly multi-threaded monitor, so it may only
//! make system calls: no allocation, no locks, no panics. Everything it needs
//! is computed before the fork and passed in [`StagePlan`].
//!
//! Each unsafe operation here is its own block: the child's mmaps go over
//! placeholders the monitor reserved (checked before the fork), its writes
//! into the mappings it just made or into the `[stack]` mapping it does not
//! run on.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::Errno;
use rustix::process::Pid;
use uprobe_runtime::uffd::features;
use uprobe_runtime::{Uffd, UffdMode};

use crate::addr::page_down;
use crate::error::{Error, StageStep};
use crate::plan::{MapOp, MapSource, Reservation};
use crate::sys::fdpass;
use crate::sys::mm::set_anon_name;

/// How a [`StageStep`] travels from the child: its number in
/// [`StageMsg::step`] (0 is success).
fn step_code(step: StageStep) -> u32 {
    match step {
        StageStep::Map => 1,
        StageStep::Stack => 2,
        StageStep::Userfaultfd => 3,
        StageStep::UffdApi => 4,
        StageStep::Register => 5,
        StageStep::Send => 6,
        StageStep::Blob => 8,
        // The monitor's own steps, never sent.
        StageStep::Start | StageStep::Receive => u32::MAX,
        StageStep::Unknown(n) => n,
    }
}

/// The step a failed [`StageMsg`] names.
fn step_of(code: u32) -> StageStep {
    match code {
        1 => StageStep::Map,
        2 => StageStep::Stack,
        3 => StageStep::Userfaultfd,
        4 => StageStep::UffdApi,
        5 => StageStep::Register,
        6 => StageStep::Send,
        8 => StageStep::Blob,
        n => StageStep::Unknown(n),
    }
}

/// The message the child sends on success: its uffd mode; the uffd rides
/// along as SCM_RIGHTS. On failure: step, errno and an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StageMsg {
    /// 0 on success, else a failed step (see `step_code`).
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

/// Everything the child needs, computed before the fork. The addresses are
/// plain numbers: the watchdog forks only a plan that
/// [fits](StagePlan::fits) the monitor's reservations.
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
    /// Other names for anonymous ranges (the interpreter's served text):
    /// (start, len, name), given after `text_name`.
    pub named: &'a [(u64, u64, [u8; crate::vma::NAME_MAX])],
    /// The program's stack.
    pub stack: StackPlan,
    /// The event ring's pages, to map now: a fork does not copy a shared
    /// mapping's page tables, and a traced hit that met an unmapped page
    /// would wait microseconds for it (one in 32 records).
    pub ring_pages: Option<(u64, u64)>,
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
    /// The program file's fd, which the hand-off blob still needs (for
    /// `PR_SET_MM_MAP`) and closes itself: spared when every other
    /// close-on-exec fd is closed on the way out.
    pub exe_fd: RawFd,
    /// Fds to close first thing: the monitor's ends of our sockets and pipes,
    /// so that we see EOF if it dies.
    pub close_first: &'a [RawFd],
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

impl StagePlan<'_> {
    /// Whether every address the child writes to or maps over is free for
    /// it: the mappings and the blob lie in `held` (the monitor's
    /// placeholders for them), the stack image in the `[stack]` mapping
    /// (or below it, where the kernel grows it), and the stack the child
    /// runs on, `runs_on` (the watchdog's), is neither there nor in the
    /// range below it that the program's stack keeps.
    pub(crate) fn fits(&self, held: &[&Reservation], runs_on: (u64, u64)) -> bool {
        let inside = |start: u64, len: u64| {
            start
                .checked_add(len)
                .is_some_and(|end| held.iter().any(|r| r.contains(start, end)))
        };
        let st = self.stack;
        let stack_lo = st.keep_from.min(st.vma.0);
        self.maps.iter().all(|m| inside(m.addr, m.len))
            && self.maps.iter().all(|m| {
                m.zero_from >= m.zero_to || (m.addr <= m.zero_from && m.zero_to <= m.addr + m.len)
            })
            && inside(self.blob_at.0, self.blob_at.1)
            && self.blob.len() as u64 <= self.blob_at.1
            && st.keep_from <= self.stack_image_at
            && self.stack_image_at <= self.params_at
            && self
                .stack_image_at
                .checked_add(self.stack_image.len() as u64)
                .is_some_and(|end| end <= st.vma.1)
            && (runs_on.1 <= stack_lo || st.vma.1 <= runs_on.0)
    }
}

/// The errno of the last libc call that failed.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Leaves at once (see `sys::process::exit_now`).
fn exit_now() -> ! {
    crate::sys::process::exit_now(125)
}

/// Tells the monitor which step failed, then leaves.
fn fail(sock: BorrowedFd<'_>, step: StageStep, err: i32, addr: u64) -> ! {
    let msg = StageMsg {
        step: step_code(step),
        errno: err,
        addr,
        ..StageMsg::default()
    };
    let _ = fdpass::send(sock, &msg, &[]);
    exit_now()
}

/// Closes fds by number.
///
/// # Safety
/// Nothing in this process may use any of `fds` afterwards (in the stage,
/// the monitor's fds, which only the monitor's threads used: they do not
/// exist in the child).
unsafe fn close_all(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: the caller gives up `fd`; close(2) touches no memory.
        unsafe { libc::close(fd) };
    }
}

/// Closes what execve would: every close-on-exec fd in our fd table but
/// `keep`, then `last`.
///
/// Our table is our own, a copy of the one the monitor's threads shared at
/// the fork: an fd another thread opened while the start was being
/// prepared is in it, and is closed here if it is close-on-exec, as a fork
/// and exec would. Every open fd is below the table's size (`FDSize`); the
/// numbers below it are polled, a chunk a call (`POLLNVAL`: not open).
/// Nothing here allocates.
///
/// # Safety
/// Nothing in this process may use any fd closed here afterwards.
unsafe fn close_on_exec(keep: RawFd, last: RawFd) {
    const CHUNK: usize = 256;
    let bound = fd_table_size().unwrap_or_else(|| {
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(1 << 20, |l| l.min(1 << 20) as usize)
    });
    let mut polled = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; CHUNK];
    let mut from = 0usize;
    while from < bound {
        let n = (bound - from).min(CHUNK);
        for (i, p) in polled[..n].iter_mut().enumerate() {
            *p = libc::pollfd {
                fd: (from + i) as RawFd,
                events: 0,
                revents: 0,
            };
        }
        // SAFETY: `polled[..n]` is ours and valid; poll(2) writes only the
        // `revents`, and with no events asked and no wait changes nothing.
        // It fails (EINVAL) when `n` exceeds RLIMIT_NOFILE: then every
        // number is asked below.
        let all = unsafe { libc::poll(polled.as_mut_ptr(), n as libc::nfds_t, 0) } < 0;
        for p in &polled[..n] {
            if p.fd == keep || p.fd == last || (!all && p.revents & libc::POLLNVAL != 0) {
                continue;
            }
            // SAFETY: F_GETFD only reads an fd's flags.
            let flags = unsafe { libc::fcntl(p.fd, libc::F_GETFD) };
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                // SAFETY: the caller gives up every close-on-exec fd but
                // `keep`; close(2) touches no memory.
                unsafe { libc::close(p.fd) };
            }
        }
        from += n;
    }
    // SAFETY: as above.
    unsafe { libc::close(last) };
}

/// The size of our fd table, from `/proc/self/status` (fs/proc/array.c,
/// `FDSize`), read into the stack.
fn fd_table_size() -> Option<usize> {
    let fd = rustix::fs::open(
        c"/proc/self/status",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match rustix::io::read(&fd, &mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let text = &buf[..len];
    const KEY: &[u8] = b"\nFDSize:";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut size = 0usize;
    let mut digits = 0;
    for &b in text[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() && **b != b'\n')
    {
        if !b.is_ascii_digit() {
            break;
        }
        size = size.checked_mul(10)?.checked_add(usize::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(size)
}

/// The kernel's `struct sigaction` for rt_sigaction(2).
#[repr(C)]
struct KernelSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

/// Raw rt_sigaction(2): glibc's wrapper refuses its own signals 32 and 33.
///
/// # Safety
/// A new handler (in `act`) must be `SIG_DFL`, `SIG_IGN`, or code that
/// stays mapped and is sound to run on that signal, with a restorer that
/// returns from it.
unsafe fn rt_sigaction(
    sig: i32,
    act: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> i64 {
    let act = act.map_or(std::ptr::null(), std::ptr::from_ref);
    let old = old.map_or(std::ptr::null_mut(), std::ptr::from_mut);
    // SAFETY: `act` is null or a valid struct the kernel reads, `old` null
    // or a valid struct it writes, both of the kernel's layout with an
    // 8-byte mask; the handler is the caller's to vouch for.
    unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act, old, 8usize) }
}

/// Resets what execve would reset and the fork carried over from the monitor.
fn reset_process(p: &StagePlan<'_>) {
    // Caught signals go back to their default action; ignored ones stay
    // ignored, as across execve. SIGPIPE is reset too unless the caller
    // was started with it ignored: Rust's runtime (or our CLI) ignores it
    // in the monitor, which a program must not inherit.
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
        // SAFETY: only reads the current action.
        if unsafe { rt_sigaction(sig, None, Some(&mut old)) } != 0 {
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
            // SAFETY: SIG_DFL, the default action.
            unsafe { rt_sigaction(sig, Some(&act), None) };
        }
    }
    let ss = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: SS_DISABLE only drops the monitor's alternate signal stack
    // (which the hand-off unmaps); `ss` is read, and a null old stack is
    // not written.
    unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
    // The kernel would keep writing the monitor's rseq area, which the
    // hand-off unmaps; the program's libc registers its own.
    unregister_rseq();
    if let Ok(comm) = std::ffi::CStr::from_bytes_until_nul(&p.comm) {
        let _ = rustix::thread::set_name(comm);
    }
    // The program dies with its parent, the watchdog.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if Pid::as_raw(rustix::process::getppid()) != p.monitor {
        exit_now();
    }
    if let Some((handler, restorer)) = p.trap {
        install_trap_handler(handler, restorer);
    }
    crate::sys::signal::set_blocked(&p.sigmask);
}

/// Installs the probe area's SIGTRAP handler with its own restorer: glibc's
/// would be unmapped with the monitor.
fn install_trap_handler(handler: u64, restorer: u64) {
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
    // SAFETY: the handler and its restorer are in the probe area, which the
    // monitor mapped before the fork and the hand-off keeps; the handler
    // (`uprobe_runtime::trap`) is written to run on any SIGTRAP, and the
    // restorer is a bare rt_sigreturn.
    unsafe { rt_sigaction(libc::SIGTRAP, Some(&act), None) };
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// Unregisters glibc's rseq area of this thread (the only one).
fn unregister_rseq() {
    const RSEQ_FLAG_UNREGISTER: i32 = 1;
    const RSEQ_SIG: u32 = 0x5305_3053;
    let tp: u64;
    // SAFETY: on x86-64 fs:0 holds the thread pointer (glibc's TCB self
    // pointer); reading it writes nothing and touches no stack or flags.
    unsafe {
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    // SAFETY: glibc defines `__rseq_offset` (2.35 and later) and never
    // writes it after start-up.
    let offset = unsafe { __rseq_offset };
    // SAFETY: as for `__rseq_offset`.
    let size = unsafe { __rseq_size };
    let area = (tp as i64 + offset as i64) as u64;
    // glibc 2.36 registers 32 bytes while reporting __rseq_size = 20.
    for len in [32u32, size] {
        // SAFETY: unregistering only makes the kernel stop writing the area
        // (which it checks is the registered one); no memory of ours changes.
        if unsafe { libc::syscall(libc::SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) } == 0
        {
            break;
        }
    }
}

/// Maps the segments over the monitor's placeholders and zeroes their bss
/// parts.
///
/// # Safety
/// As for [`run`]: every map lies in a placeholder of the monitor's, which
/// nothing in the child uses.
unsafe fn map_segments(sock: BorrowedFd<'_>, maps: &[MapOp]) {
    for m in maps {
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
        // SAFETY: MAP_FIXED over a placeholder (the caller's promise): no
        // memory the child uses is replaced.
        let r = unsafe { libc::mmap(m.addr as *mut _, m.len as usize, prot, flags, fd, off) };
        if r == libc::MAP_FAILED {
            fail(sock, StageStep::Map, errno(), m.addr);
        }
        if zero {
            // SAFETY: [zero_from, zero_to) lies in the mapping just made
            // (`StagePlan::fits`), writable (PROT_WRITE added above).
            unsafe {
                std::ptr::write_bytes(
                    m.zero_from as *mut u8,
                    0,
                    (m.zero_to - m.zero_from) as usize,
                );
            }
        }
    }
}

/// Makes our `[stack]` mapping the program's: the monitor's contents below
/// `keep_from` go, those above are zeroed, and the stack image is copied in.
///
/// # Safety
/// As for [`run`]: the `[stack]` mapping is not the stack we run on, and
/// the image lies in it.
unsafe fn build_stack(sock: BorrowedFd<'_>, p: &StagePlan<'_>) {
    let st = p.stack;
    if st.vma.0 < st.keep_from {
        // SAFETY: the monitor's main-thread stack, which the child does not
        // run on (the caller's promise) and nothing else references.
        if unsafe { libc::munmap(st.vma.0 as *mut _, (st.keep_from - st.vma.0) as usize) } != 0 {
            fail(sock, StageStep::Stack, errno(), st.vma.0);
        }
    }
    // Below the image the program's stack reads as zeros, as a fresh one:
    // the whole pages are dropped (they are zero pages again when touched,
    // and only then take memory, as natively), the rest of the image's first
    // page is zeroed. A write at `keep_from` first grows the mapping down to
    // there when it was shorter.
    let whole = st.keep_from..page_down(p.stack_image_at);
    if st.vma.0 > st.keep_from {
        // SAFETY: below the stack mapping within RLIMIT_STACK, where the
        // kernel grows it; no memory of ours is there (the caller's promise).
        unsafe { std::ptr::write_volatile(st.keep_from as *mut u8, 0) };
    }
    if whole.start < whole.end {
        // SAFETY: drops pages of the monitor's main-thread stack, which the
        // child does not run on and nothing else references (the caller's
        // promise); a private anonymous page reads as zeros after it.
        let r = unsafe {
            libc::madvise(
                whole.start as *mut _,
                (whole.end - whole.start) as usize,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            fail(sock, StageStep::Stack, errno(), whole.start);
        }
    }
    let from = whole.end.max(st.keep_from);
    // SAFETY: [from, stack_image_at) is in the stack mapping, part of the
    // image's first page; no memory of ours is there (the caller's promise).
    unsafe {
        std::ptr::write_bytes(from as *mut u8, 0, (p.stack_image_at - from) as usize);
    }
    // SAFETY: the image's destination lies in the stack mapping
    // (`StagePlan::fits`), writable; the source is the monitor's heap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            p.stack_image.as_ptr(),
            p.stack_image_at as *mut u8,
            p.stack_image.len(),
        );
    }
    if st.exec {
        // SAFETY: adds PROT_EXEC to the stack mapping only; what is
        // readable and writable stays so.
        let r = unsafe {
            libc::mprotect(
                st.keep_from as *mut _,
                (st.vma.1 - st.keep_from) as usize,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            )
        };
        if r != 0 {
            fail(sock, StageStep::Stack, errno(), st.keep_from);
        }
    }
}

/// Maps the hand-off blob read+exec at its placeholder.
///
/// # Safety
/// As for [`run`]: `blob_at` is a placeholder of the monitor's.
unsafe fn map_blob(sock: BorrowedFd<'_>, p: &StagePlan<'_>) -> u64 {
    let (b_at, b_len) = p.blob_at;
    // SAFETY: MAP_FIXED over the blob's placeholder (the caller's promise).
    let r = unsafe {
        libc::mmap(
            b_at as *mut _,
            b_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        fail(sock, StageStep::Blob, errno(), b_at);
    }
    // SAFETY: the mapping just made is writable and at least as long as the
    // blob (`StagePlan::fits`); the source is the monitor's binary.
    unsafe { std::ptr::copy_nonoverlapping(p.blob.as_ptr(), b_at as *mut u8, p.blob.len()) };
    // SAFETY: our own new mapping, referenced by nothing: read+exec only.
    if unsafe {
        libc::mprotect(
            b_at as *mut _,
            b_len as usize,
            libc::PROT_READ | libc::PROT_EXEC,
        )
    } != 0
    {
        fail(sock, StageStep::Blob, errno(), b_at);
    }
    b_at
}

/// Installs the SIGTRAP guard's seccomp filter; returns its listener (if
/// any) and how it went: 0 not installed, 1 installed, 2 installed with
/// no_new_privs.
fn install_guard(filter: &[libc::sock_filter]) -> (Option<OwnedFd>, u32) {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    let install = || {
        // SAFETY: the kernel copies the filter program that `prog` points
        // to (it does not write it); the filter only adds user
        // notifications for two system calls.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            ) as RawFd
        }
    };
    let mut listener = install();
    let mut guard = 1;
    if listener < 0 && errno() == libc::EACCES {
        // Without CAP_SYS_ADMIN the kernel wants no_new_privs first.
        let _ = rustix::thread::set_no_new_privs(true);
        listener = install();
        guard = 2;
    }
    if listener < 0 {
        return (None, 0);
    }
    // SAFETY: the seccomp call just returned this new fd: nobody else owns it.
    (Some(unsafe { OwnedFd::from_raw_fd(listener) }), guard)
}

/// Runs in the child: never returns.
///
/// Invariant (security): the child maps only the areas the plan reserved in
/// the monitor (segments, stack, hand-off page); the probe area and the
/// counters were mapped by the monitor before the fork. Nothing here takes
/// an address from the program.
///
/// # Safety
/// Must be called only in a child just forked by the watchdog from the
/// monitor's memory, on the watchdog's stack, with a plan that
/// [`StagePlan::fits`] the placeholders the monitor held at the fork, and
/// whose `close_first` fds are the monitor's own channel ends.
pub(crate) unsafe fn run(p: &StagePlan<'_>) -> ! {
    // SAFETY: the watchdog does not close the socket to the stage before
    // forking us, and we close it only on the way out (`close_on_exec`).
    let sock = unsafe { BorrowedFd::borrow_raw(p.sock) };
    // SAFETY: the monitor's ends of our channels: no thread of the monitor
    // exists here to use them.
    unsafe { close_all(p.close_first) };
    reset_process(p);

    // SAFETY: the caller's promise (`StagePlan::fits`).
    unsafe { map_segments(sock, p.maps) };
    for &(start, len) in p.text {
        set_anon_name(start, len, &p.text_name);
    }
    for (start, len, name) in p.named {
        set_anon_name(*start, *len, name);
    }
    // SAFETY: the caller's promise (`StagePlan::fits`).
    unsafe { build_stack(sock, p) };
    // SAFETY: the caller's promise (`StagePlan::fits`).
    let blob = unsafe { map_blob(sock, p) };
    if let Some((start, len)) = p.ring_pages {
        uprobe_runtime::area::populate(start, len);
    }

    let (uffd, mode) = match Uffd::create() {
        Ok(x) => x,
        Err(e) => fail(sock, StageStep::Userfaultfd, e.raw_os_error(), 0),
    };
    let mut want = features::EVENT_UNMAP | features::EVENT_REMAP | features::THREAD_ID;
    if mode == UffdMode::Full {
        want |= features::EVENT_FORK;
    }
    if p.watch_drops {
        want |= features::EVENT_REMOVE;
    }
    if let Err(e) = uffd.api(want) {
        fail(sock, StageStep::UffdApi, e.raw_os_error(), want);
    }
    for &(start, len) in p.text {
        if let Err(e) = uffd.register_missing(start, len) {
            fail(sock, StageStep::Register, e.raw_os_error(), start);
        }
    }

    // The SIGTRAP guard: installed last, so none of our own calls meet it.
    let (listener, guard) = p.seccomp.map_or((None, 0), install_guard);
    let msg = StageMsg {
        mode: u32::from(mode == UffdMode::UserModeOnly),
        guard,
        ..StageMsg::default()
    };
    let sent = match &listener {
        Some(l) => fdpass::send(sock, &msg, &[uffd.as_fd(), l.as_fd()]),
        None => fdpass::send(sock, &msg, &[uffd.as_fd()]),
    };
    drop(listener);
    if let Err(e) = sent {
        fail(sock, StageStep::Send, e.raw_os_error(), 0);
    }
    // Wait for the monitor to be ready to serve (and, in user-mode-only
    // mode, to have installed the whole text).
    let mut ack = [0u8];
    let got = rustix::net::recv(sock, &mut ack, rustix::net::RecvFlags::empty());
    if !matches!(got, Ok((1, _))) {
        exit_now();
    }
    // The monitor and the watchdog hold the uffd now: were the monitor
    // killed, the watchdog's copy keeps the registration (faults wait
    // rather than read zero pages) until it has killed us.
    drop(uffd);

    // SAFETY: every close-on-exec fd but the program file's and, last, our
    // socket to the monitor: nothing runs after this but the blob, which
    // uses only the program file's.
    unsafe { close_on_exec(p.exe_fd, p.sock) };
    // SAFETY: the blob was just mapped read+exec at `blob`; it takes the
    // parameter block on the new stack in rdi, unmaps everything of the
    // monitor's (we never come back) and jumps to the program.
    unsafe {
        std::arch::asm!(
            "jmp {blob}",
            blob = in(reg) blob,
            in("rdi") p.params_at,
            options(noreturn)
        );
    }
}

/// Why the stage failed, from its message: the step (with the address
/// involved, if any) and what the kernel said.
#[must_use]
pub fn failure(msg: &StageMsg) -> Error {
    Error::Stage {
        step: step_of(msg.step),
        addr: (msg.addr != 0).then_some(msg.addr),
        errno: Errno::from_raw_os_error(msg.errno),
    }
}
