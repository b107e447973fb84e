//! The watchdog: the program's parent, and the one that kills the whole
//! program if the monitor dies.
//!
//! ```text
//!  monitor (uprobe-exec) ──fork──▶ watchdog ──fork──▶ stage → program ──fork──▶ …
//!         │  alive pipe (EOF = monitor gone) ▲            (orphans reparent to the
//!         │  uffds of every process ─────────┘             watchdog: it is their subreaper)
//! ```
//!
//! Were the monitor killed, the kernel would drop the userfaultfd
//! registrations it alone held, and the program's processes would run
//! zero-filled text. The watchdog holds a copy of every uffd, so their
//! faults block instead; it sees the alive pipe close and kills the program
//! and every descendant (they all end up its children, since it is their
//! subreaper), then exits. When the monitor ends normally it first says
//! "detach", and the watchdog leaves processes that outlive the program alone.
//!
//! The watchdog is forked from a threaded monitor, so it only makes system
//! calls: no allocation, no locks.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::net::RecvFlags;
use rustix::process::{Pid, Signal, WaitOptions};
use uprobe_runtime::Uffd;

use crate::error::Error;
use crate::plan::Reservation;
use crate::stage::{self, StagePlan};
use crate::sys::fdpass;
use crate::sys::process::exit_now;

/// Watchdog → monitor: the program's pid, then its wait status.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchMsg {
    /// [`STARTED`] or [`EXITED`].
    pub kind: u32,
    /// The program's pid.
    pub pid: i32,
    /// Its wait status (for [`EXITED`]) or errno (fork failure).
    pub status: i32,
}

// SAFETY: #[repr(C)], three 4-byte integers: no padding, any bits valid.
unsafe impl fdpass::Message for WatchMsg {}

/// The program was forked.
pub const STARTED: u32 = 1;
/// The program ended; `status` is its wait status.
pub const EXITED: u32 = 2;
/// Monitor → watchdog: hold the attached uffd.
pub const HOLD: u32 = 3;
/// Monitor → watchdog: the session ended normally; exit without killing.
pub const DETACH: u32 = 4;
/// The fork of the program failed; `status` is the errno.
pub const FORK_FAILED: u32 = 5;

/// Most uffds held at once; past that, those of ended processes are dropped.
const MAX_HELD: usize = 4096;

fn send(sock: BorrowedFd<'_>, msg: WatchMsg) {
    // Nobody to tell if the monitor is gone.
    let _ = fdpass::send(sock, &msg, &[]);
}

/// Closes the held uffds of processes that have ended, packing the others
/// at the front; returns how many are left.
fn drop_ended(held: &mut [Option<Uffd>]) -> usize {
    let mut live = 0;
    for i in 0..held.len() {
        if held[i].as_ref().is_some_and(Uffd::mm_alive) {
            held.swap(live, i);
            live += 1;
        } else {
            held[i] = None;
        }
    }
    live
}

/// Sends SIGKILL to process `pid` (if it is a pid), ignoring failures.
fn kill(pid: libc::pid_t) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// Kills `first` and every process that ends up our child, until none is left.
///
/// A fork storm may be going on: each pass reads the whole list of our
/// children, kills them all, then reaps every one that has died without
/// waiting; it blocks only when nothing was left to reap. Orphans of the
/// killed processes become our children (we are their subreaper) and are
/// killed on the next pass.
fn kill_all(first: libc::pid_t) {
    kill(first);
    let mut buf = [0u8; 16384];
    loop {
        if let Ok(fd) = rustix::fs::open(
            c"/proc/thread-self/children",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            // The list can be longer than the buffer: read it all.
            let mut pid: libc::pid_t = 0;
            while let Ok(n @ 1..) = rustix::io::read(&fd, &mut buf) {
                for &b in &buf[..n] {
                    if b.is_ascii_digit() {
                        pid = pid * 10 + libc::pid_t::from(b - b'0');
                    } else {
                        if pid > 0 {
                            kill(pid);
                        }
                        pid = 0;
                    }
                }
            }
            if pid > 0 {
                kill(pid);
            }
        }
        let mut reaped = 0;
        loop {
            match rustix::process::waitpid(None, WaitOptions::NOHANG) {
                Ok(Some(_)) => reaped += 1,
                Ok(None) => break,
                Err(_) => return, // ECHILD: nobody left.
            }
        }
        if reaped == 0 && rustix::process::waitpid(None, WaitOptions::empty()).is_err() {
            return;
        }
    }
}

/// Closes every fd but those in `keep`.
///
/// # Safety
/// Nothing in this process may use any other fd afterwards (in the
/// watchdog: the monitor's, which only the monitor's threads used, and they
/// do not exist here).
unsafe fn close_all_but(mut keep: [RawFd; 3]) {
    keep.sort_unstable();
    let mut from = 0u32;
    for k in keep {
        if k as u32 > from {
            // SAFETY: the caller gives up every fd in the range; close_range
            // touches no memory.
            unsafe { libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0) };
        }
        from = k as u32 + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// Forks the watchdog, which forks the stage that runs `plan`; returns the
/// watchdog's pid. `alive` and `sock` are the watchdog's ends of the
/// monitor's pipe and socket.
///
/// Fails before forking unless `plan` [fits](StagePlan::fits) `held`: the
/// placeholders its mappings and hand-off blob go into.
pub(crate) fn spawn(
    plan: &StagePlan<'_>,
    held: &[&Reservation],
    alive: BorrowedFd<'_>,
    sock: BorrowedFd<'_>,
) -> Result<Pid, Error> {
    if !plan.fits(held) {
        return Err(Error::sys(
            "checking the stage plan",
            std::io::Error::other("it maps outside the reserved ranges (a bug of ours)"),
        ));
    }
    // SAFETY: fork(2) in a threaded process: the child runs only `run`,
    // which makes system calls without allocating or taking locks, and never
    // returns into the monitor's code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child just forked, from a thread that is not on
        // the `[stack]` mapping (`fits` checked it); the plan fits the
        // placeholders in `held`, which are borrowed across the fork and so
        // were mapped in the monitor when it forked; the fds the stage
        // closes are the monitor's close-on-exec ones and its channel ends.
        unsafe { run(plan, alive.as_raw_fd(), sock.as_raw_fd()) }
    }
    Pid::from_raw(pid).ok_or_else(|| Error::sys("fork", std::io::Error::last_os_error()))
}

/// The errno of the last libc call that failed.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs in the watchdog: forks the stage, then watches. Never returns.
///
/// # Safety
/// Must be called only in a child just forked from the monitor, with a
/// stage plan valid as for [`stage::run`], and fds `alive` and `sock` open.
unsafe fn run(stage_plan: &StagePlan<'_>, alive: RawFd, sock: RawFd) -> ! {
    // SAFETY: the monitor's socket stays open until we exit (close_all_but
    // spares it).
    let sock = unsafe { BorrowedFd::borrow_raw(sock) };
    // Any non-zero value makes us the subreaper.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    // Every signal blocked before the fork, SIGCHLD above all: were the
    // program to end before we block it, its SIGCHLD (ignored by
    // default) would be discarded, and we would never learn of its exit.
    // The stage sets the program's own mask.
    crate::sys::signal::set_blocked(&crate::sys::signal::full());
    let plan = StagePlan {
        monitor: rustix::process::getpid().as_raw_nonzero().get(),
        ..*stage_plan
    };
    // SAFETY: fork(2) again, from the only thread of this process.
    let program = unsafe { libc::fork() };
    if program == 0 {
        // SAFETY: the child just forked; the plan is valid as for
        // `stage::run` (our caller's promise), and fork kept every address.
        unsafe { stage::run(&plan) };
    }
    if program < 0 {
        let e = errno();
        send(
            sock,
            WatchMsg {
                kind: FORK_FAILED,
                pid: 0,
                status: e,
            },
        );
        exit_now(125);
    }
    send(
        sock,
        WatchMsg {
            kind: STARTED,
            pid: program,
            status: 0,
        },
    );
    let _ = rustix::thread::set_name(c"uprobe-exec-wd");

    // Our own life: no signal but SIGKILL can end it, and we keep no fd
    // of the program's (a pipe held open here would never see EOF).
    let chld = crate::sys::signal::sigset(1 << (libc::SIGCHLD - 1));
    // SAFETY: signalfd(2) reads the mask and returns a new fd; -1 asks
    // for a new one rather than changing an fd of ours.
    let sfd = unsafe { libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    // SAFETY: nothing here uses any other fd from now on: the monitor's
    // objects are copies in this process that no thread of ours touches.
    unsafe { close_all_but([alive, sock.as_raw_fd(), sfd]) };

    if sfd < 0 {
        // We could never tell the monitor how the program ended.
        kill_all(program);
        exit_now(125);
    }
    // SAFETY: open from here to our exit (close_all_but spared it).
    let alive = unsafe { BorrowedFd::borrow_raw(alive) };
    // SAFETY: as above; signalfd just returned it (sfd >= 0).
    let sfd = unsafe { BorrowedFd::borrow_raw(sfd) };

    let mut held: [Option<Uffd>; MAX_HELD] = [const { None }; MAX_HELD];
    let mut nheld = 0usize;
    let mut detached = false;
    loop {
        let mut pfds = [
            PollFd::new(&alive, PollFlags::IN),
            PollFd::new(&sock, PollFlags::IN),
            PollFd::new(&sfd, PollFlags::IN),
        ];
        if poll(&mut pfds, None).is_err() {
            continue;
        }
        let [alive_ev, sock_ev, chld_ev] = pfds.map(|p| p.revents());
        if !chld_ev.is_empty() {
            let mut si = [0u8; 128];
            while matches!(rustix::io::read(sfd, &mut si), Ok(n) if n > 0) {}
            while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG)
            {
                if pid.as_raw_nonzero().get() == program {
                    send(
                        sock,
                        WatchMsg {
                            kind: EXITED,
                            pid: program,
                            status: status.as_raw(),
                        },
                    );
                }
            }
        }
        if sock_ev.contains(PollFlags::IN) {
            while let Ok(Some((msg, mut fds))) = fdpass::recv::<WatchMsg>(sock, RecvFlags::DONTWAIT)
            {
                match (msg.kind, fds.take(0)) {
                    (HOLD, Some(fd)) => {
                        if nheld == MAX_HELD {
                            nheld = drop_ended(&mut held);
                        }
                        // Past MAX_HELD live ones, the newest is not held.
                        if let Some(slot) = held.get_mut(nheld) {
                            *slot = Some(Uffd::from_owned(fd));
                            nheld += 1;
                        }
                    }
                    (DETACH, _) => detached = true,
                    // Any other fd closes as it drops.
                    _ => {}
                }
            }
        }
        if !alive_ev.is_empty() || sock_ev.contains(PollFlags::HUP) {
            // The monitor is gone: ended normally (detached), or killed.
            if !detached {
                kill_all(program);
            }
            exit_now(0);
        }
    }
}
