//! Starting the program: build its stack and auxv, fork the watchdog (which
//! forks the stage), and receive the stage's userfaultfd.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;
use uprobe_runtime::{Uffd, UffdMode, PAGE_SIZE};

use super::probes::Probes;
use super::program::Resolved;
use super::watchdog_client::Watchdog;
use crate::error::{Error, Result};
use crate::handoff::{self, MmMap, Params};
use crate::plan::{Plan, Reservation, TextBacking};
use crate::report::Handoff;
use crate::stack::{self, at};
use crate::stage::{self, StageMsg, StagePlan};

/// The signal state the program starts with (besides the dispositions,
/// which the stage resets as execve does).
#[derive(Clone, Copy, Debug)]
pub(super) struct Signals {
    /// Blocked signals, bit n-1 for signal n.
    pub(super) blocked: u64,
    /// SIGPIPE stays ignored.
    pub(super) sigpipe_ignored: bool,
}

pub(super) type Started = (
    i32,
    (OwnedFd, OwnedFd),
    Uffd,
    UffdMode,
    Handoff,
    Option<OwnedFd>,
    Watchdog,
);

/// Forks the stage and receives its uffd. Returns (pid, (pidfd, socket), uffd, mode, handoff).
pub(super) fn start(
    plan: &Plan,
    probes: Option<&Probes>,
    r: &Resolved,
    env: &[OsString],
    signals: Signals,
) -> Result<Started> {
    let stack_vma = own_stack().ok_or_else(|| {
        Error::sys(
            "finding our own [stack] mapping",
            std::io::Error::other("not in /proc/self/maps"),
        )
    })?;
    let stack_pad = plan.aslr.stack_pad();
    let blob = handoff::blob();
    let blob_len = (blob.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let blob_res = Reservation::anywhere(blob_len, PAGE_SIZE, 0)
        .map_err(|e| Error::sys("reserving the hand-off page", e))?;

    let prog = &plan.program;
    let mut auxv = own_auxv();
    let set = |auxv: &mut Vec<(u64, u64)>, k: u64, v: u64| match auxv
        .iter_mut()
        .find(|(key, _)| *key == k)
    {
        Some(e) => e.1 = v,
        None => auxv.push((k, v)),
    };
    let phdr = prog.image.phdr.map_or(0, |p| prog.bias.apply(p).0);
    set(&mut auxv, at::PHDR, phdr);
    set(&mut auxv, at::PHENT, u64::from(prog.image.phentsize));
    set(&mut auxv, at::PHNUM, u64::from(prog.image.phnum));
    set(
        &mut auxv,
        at::BASE,
        plan.interp.as_ref().map_or(0, |i| i.reservation.addr),
    );
    set(&mut auxv, at::ENTRY, prog.entry().0);
    set(&mut auxv, at::FLAGS, 0);
    set(&mut auxv, at::SECURE, 0);
    let mut random = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
    let envb: Vec<Vec<u8>> = env.iter().map(|e| e.as_bytes().to_vec()).collect();

    let (sock_parent, sock_child) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("creating the stage socket", e))?;

    let prog_fd = prog.image.file.as_raw_fd();
    let interp_fd = plan.interp.as_ref().map(|i| i.image.file.as_raw_fd());
    // Created before the list of fds the program must not inherit.
    let (alive_r, alive_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::sys("creating the watchdog's pipe", e))?;
    let (wsock, wsock_child) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("creating the watchdog's socket", e))?;
    let close: Vec<RawFd> = cloexec_fds()
        .into_iter()
        .filter(|&fd| fd != prog_fd && Some(fd) != interp_fd && fd != sock_child.as_raw_fd())
        .chain([sock_child.as_raw_fd()])
        .collect();
    let close_after_map: Vec<RawFd> = interp_fd.into_iter().collect();
    let close_first = [
        sock_parent.as_raw_fd(),
        alive_r.as_raw_fd(),
        alive_w.as_raw_fd(),
        wsock.as_raw_fd(),
        wsock_child.as_raw_fd(),
    ];
    let mm_map_ok = may_set_mm_map();
    let gadget = handoff::vdso().and_then(|(a, b)| handoff::find_exit_gadget(b, a));

    let mut keep = plan.reserved();
    let mut stack_plan = None;
    // The stage trims our [stack] mapping itself; the blob leaves it alone.
    keep.push(stack_vma);
    keep.push((blob_res.addr, blob_res.end()));
    if let Some(p) = probes {
        keep.push((p.area.reservation.addr, p.area.reservation.end()));
        keep.push(p.counters.range());
    }
    // Build the stack until the monitor's mappings stop changing under us
    // (building it may itself map memory).
    let mut unmap = Vec::new();
    let mut image = None;
    for _ in 0..4 {
        let now = handoff::monitor_mappings(&keep)
            .map_err(|e| Error::sys("reading /proc/self/maps", e))?;
        if image.is_some() && now == unmap {
            break;
        }
        unmap = now;
        let below = Params::size(unmap.len());
        let mut st = stack::build(
            stack_vma.1,
            &r.argv,
            &envb,
            &r.execfn,
            &auxv,
            random,
            stack_pad,
            below,
        );
        let keep_from = stack_keep_from(stack_vma.1, st.base);
        stack_plan = Some(crate::stage::StackPlan {
            vma: stack_vma,
            keep_from,
            exec: prog.image.exec_stack,
        });
        let code: Vec<&crate::elf::Segment> =
            prog.image.segments.iter().filter(|s| s.exec).collect();
        let data: Vec<&crate::elf::Segment> =
            prog.image.segments.iter().filter(|s| s.write).collect();
        let b = prog.bias.0;
        let mm_map = mm_map_ok.then(|| MmMap {
            start_code: code.first().map_or(0, |s| b + s.vaddr.0),
            end_code: code.last().map_or(0, |s| b + s.vaddr.0 + s.filesz),
            start_data: data.first().map_or(plan.brk, |s| b + s.vaddr.0),
            end_data: data.last().map_or(plan.brk, |s| b + s.vaddr.0 + s.filesz),
            start_brk: plan.brk,
            brk: plan.brk,
            start_stack: st.sp,
            arg_start: st.arg_start,
            arg_end: st.arg_end,
            env_start: st.env_start,
            env_end: st.env_end,
            auxv: st.auxv_addr as *mut u64,
            auxv_size: st.auxv_bytes as u32,
            exe_fd: prog_fd as u32,
        });
        let params = Params {
            entry: plan.start().0,
            sp: st.sp,
            unmap: &unmap,
            mm_map,
            exe_fd: Some(prog_fd),
            gadget,
            blob: (blob_res.addr, blob_res.len),
        };
        params.write(&mut st.bytes[..below], st.base);
        image = Some(st);
    }
    let st = image.expect("built at least once");

    let mut text: Vec<(u64, u64)> = if plan.text_installed() {
        Vec::new()
    } else {
        plan.text
            .iter()
            .map(|t| (t.start, t.end() - t.start))
            .collect()
    };
    // Each process's row page is answered by the monitor (see the server).
    if let Some(p) = probes {
        text.push((p.area.cache, PAGE_SIZE));
    }
    // SAFETY: building a sigset_t in a local with the libc helpers.
    let sigmask = unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut m);
        for sig in 1..=64 {
            if signals.blocked & (1 << (sig - 1)) != 0 {
                libc::sigaddset(&mut m, sig);
            }
        }
        m
    };
    let sp = StagePlan {
        sock: sock_child.as_raw_fd(),
        sigmask,
        sigpipe_ignored: signals.sigpipe_ignored,
        maps: &plan.maps,
        text: &text,
        stack: stack_plan.expect("planned with the stack image"),
        watch_drops: plan.backing == TextBacking::Anon,
        stack_image: &st.bytes,
        stack_image_at: st.base,
        blob_at: (blob_res.addr, blob_res.len),
        blob,
        params_at: st.base,
        close: &close,
        close_first: &close_first,
        close_after_map: &close_after_map,
        // The watchdog fills in its own pid.
        monitor: 0,
        comm: {
            let base = r.execfn.rsplit(|&c| c == b'/').next().unwrap_or(&[]);
            let mut c = [0u8; 16];
            let n = base.len().min(15);
            c[..n].copy_from_slice(&base[..n]);
            c
        },
        trap: probes
            .filter(|p| p.traps())
            .map(|p| (p.area.handler, p.area.restorer)),
        seccomp: probes
            .map(|p| p.filter.as_slice())
            .filter(|f| !f.is_empty()),
        text_name: crate::vma::anon_name("text", &plan.program.image.path),
    };

    // SAFETY: the child runs only watchdog::run, which makes system calls
    // and never returns; the parent goes on as usual.
    let wpid = unsafe { libc::fork() };
    if wpid < 0 {
        return Err(Error::sys("fork", std::io::Error::last_os_error()));
    }
    if wpid == 0 {
        // SAFETY: we are the freshly forked child, and every address in `sp`
        // was reserved before the fork.
        unsafe { crate::watchdog::run(&sp, alive_r.as_raw_fd(), wsock_child.as_raw_fd()) }
    }
    drop((sock_child, alive_r, wsock_child));
    drop(blob_res);
    let watchdog = Watchdog {
        pid: wpid,
        sock: wsock,
        alive: Some(alive_w),
    };
    let first = watchdog.next();
    let pid = match first {
        Some(m) if m.kind == crate::watchdog::STARTED => m.pid,
        Some(m) if m.kind == crate::watchdog::FORK_FAILED => {
            return Err(Error::sys(
                "fork",
                std::io::Error::from_raw_os_error(m.status),
            ))
        }
        _ => {
            return Err(Error::sys(
                "starting the watchdog",
                std::io::Error::other("it died"),
            ))
        }
    };
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| Error::sys("pidfd_open", e))?;

    let (msg, mut fds) = match receive(&sock_parent) {
        Ok(x) => x,
        Err(e) => {
            let _ = watchdog.status();
            return Err(e);
        }
    };
    if msg.step != 0 {
        let _ = watchdog.status();
        let (step, errno) = stage::describe_failure(&msg);
        return Err(Error::Stage { step, errno });
    }
    if fds.is_empty() {
        let _ = watchdog.status();
        return Err(Error::Stage {
            step: "receiving the userfaultfd".into(),
            errno: Errno::BADMSG,
        });
    }
    let fd = fds.remove(0);
    let listener = fds.pop();
    let mode = if msg.mode == 1 {
        UffdMode::UserModeOnly
    } else {
        UffdMode::Full
    };
    let mut limits = Vec::new();
    if mode == UffdMode::UserModeOnly {
        limits.push(
            "unprivileged (vm.unprivileged_userfaultfd=0): userfaultfd runs in user-mode-only mode, \
             which cannot follow forks, so the whole text was written to a sealed file before the \
             program started (no lazy serving, no refault counts), and writers to the program file \
             are not refused (the program runs from a sealed copy taken at start)"
                .to_string(),
        );
    }
    if probes.is_some() {
        limits.push(
            "probe sites read as what was patched in (a jmp to a trampoline or an int3) in \
             debuggers, /proc/PID/mem and core dumps"
                .into(),
        );
    }
    if let Some(at) = plan.program.displaced_from {
        limits.push(format!(
            "the program was loaded at {:#x} in the mmap area instead of {at:#x}, where the kernel \
             would have put it: uprobe-exec's own mappings (its heap, under setarch -R) are there",
            plan.program.reservation.addr
        ));
    }
    if !mm_map_ok {
        limits.push(
            "without CAP_SYS_RESOURCE, /proc/self/exe still names uprobe-exec and /proc/self/cmdline, \
             /proc/self/auxv and the start of brk are not the program's (so a debugger attaching, or \
             reading a core, finds uprobe-exec's file and cannot tell where a PIE program is loaded)"
                .to_string(),
        );
    }
    if gadget.is_none() {
        limits.push(
            "no clean exit sequence in the vDSO: one anonymous page of hand-off code stays mapped"
                .into(),
        );
    }
    if probes.is_some_and(Probes::traps) {
        match msg.guard {
            0 => limits.push(
                "the SIGTRAP guard (seccomp) could not be installed: a program that sets its own SIGTRAP \
                 handler would take the probes' traps"
                    .into(),
            ),
            2 => limits.push(
                "the SIGTRAP guard needed no_new_privs: programs this one executes cannot gain privileges \
                 (set-user-ID, file capabilities)"
                    .into(),
            ),
            _ => {}
        }
    }
    let handoff = Handoff {
        uffd_mode: mode.name().into(),
        mm_map: mm_map_ok,
        clean_exit: gadget.is_some(),
        limits,
    };
    let uffd = Uffd::from_owned(fd);
    watchdog.hold(&uffd);
    Ok((
        pid,
        (pidfd, sock_parent),
        uffd,
        mode,
        handoff,
        listener,
        watchdog,
    ))
}

/// Receives the stage's message (and uffd, and the guard's listener).
fn receive(sock: &OwnedFd) -> Result<(StageMsg, Vec<OwnedFd>)> {
    let mut msg = StageMsg::default();
    let mut cbuf = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: (&mut msg as *mut StageMsg).cast(),
        iov_len: std::mem::size_of::<StageMsg>(),
    };
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = cbuf.len();
    // SAFETY: hdr points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(Error::sys(
            "receiving from the stage",
            std::io::Error::last_os_error(),
        ));
    }
    if n as usize != std::mem::size_of::<StageMsg>() {
        return Err(Error::Stage {
            step: "starting the program (the child died early)".into(),
            errno: Errno::PIPE,
        });
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control message the kernel wrote into cbuf; each
    // fd in it is new in our table and ours to own.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&hdr);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
            for i in 0..n {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i));
                fds.push(OwnedFd::from_raw_fd(raw));
            }
        }
    }
    Ok((msg, fds))
}

/// Whether `PR_SET_MM_MAP` is allowed: CAP_SYS_RESOURCE or CAP_CHECKPOINT_RESTORE.
fn may_set_mm_map() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 24 | 1 << 40) != 0
}

/// The monitor's auxv, from which the program's is made.
fn own_auxv() -> Vec<(u64, u64)> {
    let raw = std::fs::read("/proc/self/auxv").unwrap_or_default();
    raw.chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(c[8..].try_into().unwrap_or_default()),
            )
        })
        .take_while(|&(k, _)| k != at::NULL)
        .collect()
}

/// The monitor's close-on-exec fds: closed in the child, as execve would.
fn cloexec_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            // SAFETY: F_GETFD on an fd number only reads its flags; a closed
            // number gives -1.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC != 0
        })
        .collect()
}

/// Our own main thread's `[stack]` mapping: (start, top).
fn own_stack() -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter(|l| l.ends_with("[stack]"))
        .find_map(handoff::parse_range)
}

/// Where the program's stack mapping starts at hand-off: the kernel maps
/// 128 KiB below the initial stack contents, within `RLIMIT_STACK`
/// (fs/exec.c `setup_arg_pages`).
fn stack_keep_from(top: u64, base: u64) -> u64 {
    const EXPAND: u64 = 128 << 10;
    let used = top - (base & !(PAGE_SIZE - 1));
    let lim = rustix::process::getrlimit(rustix::process::Resource::Stack)
        .current
        .map_or(u64::MAX, |l| l & !(PAGE_SIZE - 1));
    top - (used + EXPAND).min(lim.max(used))
}
