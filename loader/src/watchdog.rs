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

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::RecvFlags;

use crate::stage::{self, StagePlan};
use crate::sys::fdpass;

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

/// Whether the mm behind a uffd still exists (see `Uffd::mm_alive`).
///
/// # Safety
/// `uffd` must be a userfaultfd: the ioctl number means nothing else there.
unsafe fn mm_alive(uffd: BorrowedFd<'_>) -> bool {
    let mut r = linux_raw_sys::general::uffdio_range {
        start: 0x10000,
        len: 4096,
    };
    // SAFETY: UFFDIO_UNREGISTER with a valid range struct on our stack.
    let rc = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            linux_raw_sys::ioctl::UFFDIO_UNREGISTER as _,
            &mut r,
        )
    };
    !(rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM))
}

/// Closes the held uffds of processes that have ended, packing the others
/// at the front; returns how many are left.
///
/// # Safety
/// Every fd in `held` must be a userfaultfd.
unsafe fn drop_ended(held: &mut [Option<OwnedFd>]) -> usize {
    let mut live = 0;
    for i in 0..held.len() {
        let alive = match &held[i] {
            // SAFETY: a uffd, as the caller promises.
            Some(u) => unsafe { mm_alive(u.as_fd()) },
            None => false,
        };
        if alive {
            held.swap(live, i);
            live += 1;
        } else {
            held[i] = None;
        }
    }
    live
}

/// Kills `first` and every process that ends up our child, until none is left.
///
/// A fork storm may be going on: each pass reads the whole list of our
/// children, kills them all, then reaps every one that has died without
/// waiting; it blocks only when nothing was left to reap. Orphans of the
/// killed processes become our children (we are their subreaper) and are
/// killed on the next pass.
unsafe fn kill_all(first: libc::pid_t) {
    // SAFETY: kill, open, read, waitpid on our own children, buffers on our stack.
    unsafe {
        libc::kill(first, libc::SIGKILL);
        let mut buf = [0u8; 16384];
        loop {
            let fd = libc::open(
                c"/proc/thread-self/children".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                // The list can be longer than the buffer: read it all.
                let mut pid: libc::pid_t = 0;
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        break;
                    }
                    for &b in &buf[..n as usize] {
                        if b.is_ascii_digit() {
                            pid = pid * 10 + libc::pid_t::from(b - b'0');
                        } else {
                            if pid > 0 {
                                libc::kill(pid, libc::SIGKILL);
                            }
                            pid = 0;
                        }
                    }
                }
                if pid > 0 {
                    libc::kill(pid, libc::SIGKILL);
                }
                libc::close(fd);
            }
            let mut reaped = 0;
            loop {
                let mut st = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if r > 0 {
                    reaped += 1;
                    continue;
                }
                if r < 0 {
                    return; // ECHILD: nobody left.
                }
                break;
            }
            if reaped == 0 {
                let mut st = 0;
                if libc::waitpid(-1, &mut st, 0) < 0 {
                    return;
                }
            }
        }
    }
}

/// Runs in the watchdog: forks the stage, then watches. Never returns.
///
/// # Safety
/// Must be called only in a child just forked from the monitor, with a
/// stage plan valid as for [`stage::run`].
pub(crate) unsafe fn run(stage_plan: &StagePlan<'_>, alive: RawFd, sock: RawFd) -> ! {
    // SAFETY: (whole function) system calls on our own process and children.
    unsafe {
        // SAFETY: the monitor's socket stays open until we exit.
        let sock = BorrowedFd::borrow_raw(sock);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // Every signal blocked before the fork, SIGCHLD above all: were the
        // program to end before we block it, its SIGCHLD (ignored by
        // default) would be discarded, and we would never learn of its exit.
        // The stage sets the program's own mask.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let plan = StagePlan {
            monitor: libc::getpid(),
            ..*stage_plan
        };
        let program = libc::fork();
        if program == 0 {
            stage::run(&plan);
        }
        if program < 0 {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            send(
                sock,
                WatchMsg {
                    kind: FORK_FAILED,
                    pid: 0,
                    status: e,
                },
            );
            libc::_exit(125);
        }
        send(
            sock,
            WatchMsg {
                kind: STARTED,
                pid: program,
                status: 0,
            },
        );
        libc::prctl(libc::PR_SET_NAME, c"uprobe-exec-wd".as_ptr(), 0, 0, 0);

        // Our own life: no signal but SIGKILL can end it, and we keep no fd
        // of the program's (a pipe held open here would never see EOF).
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        let sfd = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        let mut keep = [alive, sock.as_raw_fd(), sfd];
        keep.sort_unstable();
        let mut from = 0u32;
        for k in keep {
            if k as u32 > from {
                libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0);
            }
            from = k as u32 + 1;
        }
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0);

        if sfd < 0 {
            // We could never tell the monitor how the program ended.
            kill_all(program);
            libc::_exit(125);
        }
        // SAFETY: both are open from here to our exit (close_range spared them).
        let (alive, sfd) = (BorrowedFd::borrow_raw(alive), BorrowedFd::borrow_raw(sfd));

        let mut held: [Option<OwnedFd>; MAX_HELD] = [const { None }; MAX_HELD];
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
                loop {
                    let mut st = 0;
                    let pid = libc::waitpid(-1, &mut st, libc::WNOHANG);
                    if pid <= 0 {
                        break;
                    }
                    if pid == program {
                        send(
                            sock,
                            WatchMsg {
                                kind: EXITED,
                                pid,
                                status: st,
                            },
                        );
                    }
                }
            }
            if sock_ev.contains(PollFlags::IN) {
                while let Ok(Some((msg, mut fds))) =
                    fdpass::recv::<WatchMsg>(sock, RecvFlags::DONTWAIT)
                {
                    match (msg.kind, fds.take(0)) {
                        (HOLD, Some(fd)) => {
                            if nheld == MAX_HELD {
                                nheld = drop_ended(&mut held);
                            }
                            // Past MAX_HELD live ones, the newest is not held.
                            if let Some(slot) = held.get_mut(nheld) {
                                *slot = Some(fd);
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
                libc::_exit(0);
            }
        }
    }
}
