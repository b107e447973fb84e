//! Starting the program: build its stack and auxv, fork the watchdog (which
//! forks the stage), and receive the stage's userfaultfd.
//!
//! The stack image carries the list of what the hand-off unmaps: every
//! address range but what the program keeps (its reservations, the stack,
//! the blob, the probe areas) and the kernel's special mappings, so it does
//! not depend on what the monitor maps meanwhile.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use rustix::process::{Pid, PidfdFlags};
use uprobe_runtime::{Uffd, UffdMode, PAGE_SIZE};

use super::probes::Probes;
use super::program::Resolved;
use super::watchdog_client::Watchdog;
use crate::error::{Error, Result, StageStep};
use crate::handoff::{self, MmMap, Params};
use crate::plan::{ObjectsArea, Plan, Reservation, TextBacking};
use crate::report::Handoff;
use crate::stack::{self, at, StackImage};
use crate::stage::{self, StackPlan, StageMsg, StagePlan};
use crate::sys::fdpass;
use crate::watchdog::{Early, FORK_FAILED, STARTED, UNSHARE_FAILED, WATCH_FAILED};

/// The signal state the program starts with (besides the dispositions,
/// which the stage resets as execve does).
#[derive(Clone, Copy, Debug)]
pub(super) struct Signals {
    /// Blocked signals, bit n-1 for signal n.
    pub(super) blocked: u64,
    /// SIGPIPE stays ignored.
    pub(super) sigpipe_ignored: bool,
}

/// The launch's parts, timed as they end (see
/// [`Startup`](crate::report::Startup)): µs each.
pub(super) struct LaunchClock {
    steps: crate::sys::clock::Steps,
    pub(super) parts: [u64; 5],
}

impl LaunchClock {
    pub(super) const THREAD: usize = 0;
    pub(super) const STACK: usize = 1;
    pub(super) const FORKS: usize = 2;
    pub(super) const STAGE: usize = 3;
    pub(super) const SERVE: usize = 4;

    /// A clock started at `since`.
    pub(super) fn since(since: std::time::Instant) -> LaunchClock {
        LaunchClock {
            steps: crate::sys::clock::Steps::since(since),
            parts: [0; 5],
        }
    }

    /// `part` ends now.
    pub(super) fn mark(&mut self, part: usize) {
        self.parts[part] = self.steps.step();
    }
}

/// A program started and waiting for the monitor to release it.
pub(super) struct Started {
    /// Its first process.
    pub(super) pid: i32,
    /// A pidfd of the first process: readable once it has ended.
    pub(super) pidfd: OwnedFd,
    /// The socket to the stage: a byte on it lets the program start.
    pub(super) stage: OwnedFd,
    /// The first process's userfaultfd, registered over the text.
    pub(super) uffd: Uffd,
    /// What that uffd can do.
    pub(super) mode: UffdMode,
    /// How the hand-off went, for the report.
    pub(super) handoff: Handoff,
    /// The SIGTRAP guard's seccomp listener, when it was installed.
    pub(super) listener: Option<OwnedFd>,
    /// The program's parent.
    pub(super) watchdog: Watchdog,
}

/// Orders the watchdog (`early`) to fork the stage, and receives the
/// stage's uffd.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    early: Early,
    plan: &Plan,
    probes: Option<&Probes>,
    objects: Option<&ObjectsArea>,
    r: &Resolved,
    env: &[OsString],
    signals: Signals,
    clock: &mut LaunchClock,
) -> Result<Started> {
    // Our mappings, read once: the stack, the vDSO and the kernel's other
    // special mappings, which the hand-off keeps.
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| Error::sys("reading /proc/self/maps", e))?;
    let stack_vma = own_stack(&maps).ok_or_else(|| {
        Error::sys(
            "finding our own [stack] mapping",
            std::io::Error::other("not in /proc/self/maps"),
        )
    })?;
    let blob = handoff::blob();
    let blob_len = (blob.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let blob_res = Reservation::anywhere(blob_len, PAGE_SIZE, 0)
        .map_err(|e| Error::sys("reserving the hand-off page", e))?;
    let contents = Contents {
        argv: &r.argv,
        env: env.iter().map(|e| e.as_bytes().to_vec()).collect(),
        execfn: &r.execfn,
        auxv: program_auxv(plan),
        random: {
            let mut random = [0u8; 16];
            let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
            random
        },
    };
    let ch = Channels::new()?;
    let prog_fd = plan.program.image.file.as_raw_fd();
    let close_first = ch.monitor_ends();
    let exit = Exit {
        mm_map: may_set_mm_map(),
        gadget: handoff::vdso(&maps).and_then(|(a, b)| handoff::find_exit_gadget(b, a)),
        blob: (blob_res.addr(), blob_res.len()),
        exe_fd: prog_fd,
    };

    // What the hand-off keeps, besides the program's stack (see build_stack).
    let mut keep = plan.reserved();
    keep.push((blob_res.addr(), blob_res.end()));
    if let Some(p) = probes {
        keep.push((p.area.reservation.addr(), p.area.reservation.end()));
        keep.push(p.counters.range());
        keep.extend(p.landings.iter().map(|r| (r.addr(), r.end())));
        keep.extend(p.table.as_ref().map(uprobe_runtime::latency::Table::range));
    }
    if let Some(o) = objects {
        keep.push((o.reservation.addr(), o.reservation.end()));
    }
    let (st, stack_plan) = build_stack(plan, &keep, stack_vma, &contents, &exit, &maps);

    let text = registered_text(plan, probes, objects);
    let interp_name = plan
        .interp
        .as_ref()
        .map(|i| crate::vma::anon_name("text", &i.image.path));
    let named: Vec<(u64, u64, [u8; crate::vma::NAME_MAX])> = plan
        .interp_text
        .iter()
        .flat_map(|img| img.ranges().iter().map(|r| (r.start, r.end() - r.start)))
        .filter_map(|(a, l)| interp_name.map(|n| (a, l, n)))
        .collect();
    let sp = StagePlan {
        sock: ch.stage_child.as_raw_fd(),
        sigmask: crate::sys::signal::sigset(signals.blocked),
        sigpipe_ignored: signals.sigpipe_ignored,
        maps: &plan.maps,
        text: &text,
        named: &named,
        stack: stack_plan,
        ring_pages: probes.and_then(|p| p.counters.ring_pages()),
        watch_drops: plan.backing == TextBacking::Anon,
        stack_image: &st.bytes,
        stack_image_at: st.base,
        blob_at: exit.blob,
        blob,
        params_at: st.base,
        exe_fd: prog_fd,
        close_first: &close_first,
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

    let mut held: Vec<&Reservation> = vec![&plan.program.reservation, &blob_res];
    held.extend(plan.interp.as_ref().map(|i| &i.reservation));
    clock.mark(LaunchClock::STACK);
    let reaper = early.go(&sp, &held, ch.alive_r.as_fd(), ch.watchdog_child.as_fd())?;
    let watchdog = Watchdog::new(reaper, ch.watchdog, ch.alive_w);
    // Until the watchdog says it forked the program (or dies), it reads the
    // plan and shares our fd table: what they name stays until then.
    let pid = program_pid(&watchdog);
    drop((ch.stage_child, ch.alive_r, ch.watchdog_child));
    drop(held);
    drop(blob_res);
    let stage_sock = ch.stage;
    let pid = pid?;
    clock.mark(LaunchClock::FORKS);
    let pidfd = rustix::process::pidfd_open(
        Pid::from_raw(pid).expect("fork returned a positive pid"),
        PidfdFlags::empty(),
    )
    .map_err(|e| Error::sys("pidfd_open", e))?;
    let (msg, uffd, listener) = match receive(&stage_sock) {
        Ok(got) => got,
        Err(e) => {
            // The program is dead or dying: reap it before saying why.
            let _ = watchdog.status();
            return Err(e);
        }
    };
    clock.mark(LaunchClock::STAGE);
    let mode = if msg.mode == 1 {
        UffdMode::UserModeOnly
    } else {
        UffdMode::Full
    };
    let handoff = Handoff {
        uffd_mode: mode.name().into(),
        mm_map: exit.mm_map,
        clean_exit: exit.gadget.is_some(),
        limits: limits(plan, probes, mode, &exit, msg.guard),
    };
    let uffd = Uffd::from_owned(uffd);
    watchdog.hold(&uffd);
    Ok(Started {
        pid,
        pidfd,
        stage: stage_sock,
        uffd,
        mode,
        handoff,
        listener,
        watchdog,
    })
}

/// What the program's initial stack holds.
struct Contents<'a> {
    argv: &'a [Vec<u8>],
    env: Vec<Vec<u8>>,
    execfn: &'a [u8],
    auxv: Vec<(u64, u64)>,
    random: [u8; 16],
}

/// What the hand-off blob needs on the way out, besides the stack.
struct Exit {
    /// `PR_SET_MM_MAP` is allowed.
    mm_map: bool,
    /// The vDSO's `syscall; xor…; ret` sequence, if found.
    gadget: Option<u64>,
    /// The blob's own page(s): address and length.
    blob: (u64, u64),
    /// The program file, for `PR_SET_MM_MAP`'s exe.
    exe_fd: RawFd,
}

/// The sockets and pipe between the monitor, the watchdog and the stage,
/// all close-on-exec.
struct Channels {
    /// The monitor's end of the stage socket.
    stage: OwnedFd,
    stage_child: OwnedFd,
    /// The watchdog reads EOF from it when the monitor is gone.
    alive_r: OwnedFd,
    alive_w: OwnedFd,
    /// The monitor's end of the watchdog socket.
    watchdog: OwnedFd,
    watchdog_child: OwnedFd,
}

impl Channels {
    fn new() -> Result<Channels> {
        let seqpacket = || {
            rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::SEQPACKET,
                SocketFlags::CLOEXEC,
                None,
            )
        };
        let (stage, stage_child) =
            seqpacket().map_err(|e| Error::sys("creating the stage socket", e))?;
        let (alive_r, alive_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::sys("creating the watchdog's pipe", e))?;
        let (watchdog, watchdog_child) =
            seqpacket().map_err(|e| Error::sys("creating the watchdog's socket", e))?;
        Ok(Channels {
            stage,
            stage_child,
            alive_r,
            alive_w,
            watchdog,
            watchdog_child,
        })
    }

    /// The fds the stage closes first thing, so that it sees EOF if the
    /// monitor dies (its own end of the stage socket stays).
    fn monitor_ends(&self) -> [RawFd; 5] {
        [
            self.stage.as_raw_fd(),
            self.alive_r.as_raw_fd(),
            self.alive_w.as_raw_fd(),
            self.watchdog.as_raw_fd(),
            self.watchdog_child.as_raw_fd(),
        ]
    }
}

/// The program's auxv: the monitor's, with the program's own entries.
fn program_auxv(plan: &Plan) -> Vec<(u64, u64)> {
    let prog = &plan.program;
    let mut auxv = own_auxv();
    let mut set = |k: u64, v: u64| match auxv.iter_mut().find(|(key, _)| *key == k) {
        Some(e) => e.1 = v,
        None => auxv.push((k, v)),
    };
    set(
        at::PHDR,
        prog.image.phdr.map_or(0, |p| prog.bias.apply(p).0),
    );
    set(at::PHENT, u64::from(prog.image.phentsize));
    set(at::PHNUM, u64::from(prog.image.phnum));
    set(
        at::BASE,
        plan.interp.as_ref().map_or(0, |i| i.reservation.addr()),
    );
    set(at::ENTRY, prog.entry().0);
    set(at::FLAGS, 0);
    set(at::SECURE, 0);
    auxv
}

/// Builds the program's stack image, with the hand-off's parameters below
/// it: the list of what the hand-off unmaps is everything but `keep`, the
/// program's stack and the kernel's special mappings in `maps` (read by the
/// caller), so what the monitor maps meanwhile goes too. The stack kept is
/// our `[stack]` mapping (`stack_vma`) and, below it, down to where the
/// stage grows it (`keep_from`): the image may reach below our own stack's
/// bottom (a large environment given through the library), and the room for
/// the list is reserved before the image is laid out, for as many ranges as
/// the kept ones can leave.
fn build_stack(
    plan: &Plan,
    keep: &[(u64, u64)],
    stack_vma: (u64, u64),
    c: &Contents<'_>,
    exit: &Exit,
    maps: &str,
) -> (StackImage, StackPlan) {
    let prog = &plan.program;
    // The stack's own kept range is one more.
    let below = Params::size(handoff::unmap_ranges_at_most(maps, keep.len() + 1));
    let mut st = stack::build(
        stack_vma.1,
        c.argv,
        &c.env,
        c.execfn,
        &c.auxv,
        c.random,
        plan.aslr.stack_pad(),
        below,
    );
    let stack_plan = StackPlan {
        vma: stack_vma,
        keep_from: stack_keep_from(stack_vma.1, st.base),
        exec: prog.image.exec_stack,
    };
    let mut kept = keep.to_vec();
    kept.push((stack_plan.keep_from.min(stack_vma.0), stack_vma.1));
    let unmap = handoff::unmap_all_but(maps, &kept);
    let code: Vec<&crate::elf::Segment> = prog.image.segments.iter().filter(|s| s.exec).collect();
    let data: Vec<&crate::elf::Segment> = prog.image.segments.iter().filter(|s| s.write).collect();
    let b = prog.bias.0;
    let mm_map = exit.mm_map.then(|| MmMap {
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
        exe_fd: exit.exe_fd as u32,
    });
    let params = Params {
        entry: plan.start().0,
        sp: st.sp,
        unmap: &unmap,
        mm_map,
        exe_fd: Some(exit.exe_fd),
        gadget: exit.gadget,
        blob: exit.blob,
    };
    params.write(&mut st.bytes[..below], st.base);
    (st, stack_plan)
}

/// The ranges the stage registers with its uffd: the text (unless it is
/// installed whole already) and the row page, which the monitor answers for
/// each process (see the server).
fn registered_text(
    plan: &Plan,
    probes: Option<&Probes>,
    objects: Option<&ObjectsArea>,
) -> Vec<(u64, u64)> {
    let mut text: Vec<(u64, u64)> = if plan.text_installed() {
        Vec::new()
    } else {
        plan.text
            .iter()
            .map(|t| (t.start, t.end() - t.start))
            .collect()
    };
    if let Some(p) = probes {
        text.push((p.area.cache, PAGE_SIZE));
    }
    // The interpreter's text, the objects' row page and the doorbells.
    if let Some(img) = &plan.interp_text {
        text.extend(img.ranges().iter().map(|r| (r.start, r.end() - r.start)));
    }
    if let Some(o) = objects {
        text.push((o.row_page, PAGE_SIZE));
        text.push((o.bells.0, o.bells.1 - o.bells.0));
    }
    text
}

/// The program's pid, which the watchdog sends once it has forked it.
fn program_pid(watchdog: &Watchdog) -> Result<i32> {
    match watchdog.first() {
        Some(m) if m.kind == STARTED => Ok(m.pid),
        Some(m) if m.kind == FORK_FAILED => Err(Error::sys(
            "fork",
            std::io::Error::from_raw_os_error(m.status),
        )),
        Some(m) if m.kind == UNSHARE_FAILED => Err(Error::sys(
            "giving the watchdog an fd table of its own (unshare)",
            std::io::Error::from_raw_os_error(m.status),
        )),
        Some(m) if m.kind == WATCH_FAILED => Err(Error::sys(
            "the watchdog's signalfd, to learn how the program ends",
            std::io::Error::from_raw_os_error(m.status),
        )),
        _ => Err(Error::sys(
            "starting the watchdog",
            std::io::Error::other("it died"),
        )),
    }
}

/// Receives the stage's message, its uffd and the guard's listener (if any).
fn receive(sock: &OwnedFd) -> Result<(StageMsg, OwnedFd, Option<OwnedFd>)> {
    let (msg, mut fds) = match fdpass::recv::<StageMsg>(sock.as_fd(), RecvFlags::empty()) {
        Ok(Some(got)) => got,
        Ok(None) => {
            return Err(Error::Stage {
                step: StageStep::Start,
                addr: None,
                errno: Errno::PIPE,
            })
        }
        Err(e) => return Err(Error::sys("receiving from the stage", e)),
    };
    if msg.step != 0 {
        return Err(stage::failure(&msg));
    }
    let Some(uffd) = fds.take(0) else {
        return Err(Error::Stage {
            step: StageStep::Receive,
            addr: None,
            errno: Errno::BADMSG,
        });
    };
    Ok((msg, uffd, fds.take(1)))
}

/// What this run cannot do as execve would, for the report.
fn limits(
    plan: &Plan,
    probes: Option<&Probes>,
    mode: UffdMode,
    exit: &Exit,
    guard: u32,
) -> Vec<String> {
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
    if plan.interp_text.is_some() && plan.objects_whole {
        limits.push(
            "shared objects are served (--serve-objects all): /proc/PID/maps shows the text of \
             every object the dynamic loader maps, and its own, as anonymous memory (named \
             [anon:uprobe-exec served text] where the kernel names anonymous mappings), not \
             their files' paths, and their pages are each process's own copies rather than the \
             page cache's (dl_iterate_phdr, dladdr and debuggers, which read the loader's own \
             lists, are unchanged; profilers that name code by the file behind a mapping do not \
             name their functions)"
                .into(),
        );
    } else if plan.interp_text.is_some() {
        limits.push(
            "shared objects are served: /proc/PID/maps shows the pages that hold probe sites of \
             each object a probe names as anonymous memory (named [anon:uprobe-exec served text] \
             where the kernel names anonymous mappings) between the mappings of its file, and \
             ld.so's text whole (dl_iterate_phdr, dladdr and debuggers, which read the loader's \
             own lists, are unchanged; profilers that name code by the file behind a mapping do \
             not name the functions on those pages)"
                .into(),
        );
    }
    if let Some(at) = plan.program.displaced_from {
        limits.push(format!(
            "the program was loaded at {:#x} in the mmap area instead of {at:#x}, where the kernel \
             would have put it: uprobe-exec's own mappings (its heap, under setarch -R) are there",
            plan.program.reservation.addr()
        ));
    }
    if !exit.mm_map {
        limits.push(
            "without CAP_SYS_RESOURCE, /proc/self/exe still names uprobe-exec and /proc/self/cmdline, \
             /proc/self/auxv and the start of brk are not the program's (so a debugger attaching, or \
             reading a core, finds uprobe-exec's file and cannot tell where a PIE program is loaded, \
             and a symbolizer inside the program that reads its own file through /proc/self/exe, \
             such as Rust's std::backtrace, names the program's frames <unknown>)"
                .to_string(),
        );
    }
    if exit.gadget.is_none() {
        limits.push(
            "no clean exit sequence in the vDSO: one anonymous page of hand-off code stays mapped"
                .into(),
        );
    }
    if probes.is_some_and(Probes::traps) {
        match guard {
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
    limits
}

/// Whether `PR_SET_MM_MAP` is allowed: CAP_SYS_RESOURCE or CAP_CHECKPOINT_RESTORE.
fn may_set_mm_map() -> bool {
    use rustix::thread::CapabilitySet;
    rustix::thread::capabilities(None).is_ok_and(|c| {
        c.effective
            .intersects(CapabilitySet::SYS_RESOURCE | CapabilitySet::CHECKPOINT_RESTORE)
    })
}

/// The monitor's auxv, from which the program's is made.
fn own_auxv() -> Vec<(u64, u64)> {
    let raw = crate::sys::process::auxv()
        .unwrap_or_else(|| std::fs::read("/proc/self/auxv").unwrap_or_default());
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

/// Our own main thread's `[stack]` mapping: (start, top).
fn own_stack(maps: &str) -> Option<(u64, u64)> {
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
