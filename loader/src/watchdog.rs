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
//! The watchdog is made before the program is planned, so that its start
//! costs the program's start nothing: a thread of ours (its parent, which
//! reaps it) clones it sharing our memory and our fd table
//! (`CLONE_VM | CLONE_FILES`), on a stack of its own. It waits for the
//! monitor's order (a futex in that shared memory), forks the stage from
//! our memory as it is then (the plan, the reservations and every area the
//! program keeps included), and only then takes a copy of the fd table for
//! itself and closes all but its own fds. Sharing our memory, it needs no
//! copy of it: neither making it nor its exit costs a copy or a teardown
//! of our page tables. Until the order it dies with its parent thread
//! (`PR_SET_PDEATHSIG`): there is no program yet to kill.
//!
//! It runs in our memory, with the thread-local storage of the thread that
//! made it (which only waits for it), so it only makes system calls: no
//! allocation, no locks, nothing of ours but its stack and the order.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::futex;
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
/// Taking an fd table of our own (`unshare(CLONE_FILES)`) after the fork
/// failed, and the program was killed; `status` is the errno.
pub const UNSHARE_FAILED: u32 = 6;
/// The watchdog could not watch the program (its `signalfd` failed), and
/// killed it; `status` is the errno.
pub const WATCH_FAILED: u32 = 7;

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
    // A negative number names no fd: nothing to spare.
    for k in keep.into_iter().filter(|&k| k >= 0) {
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

/// The watchdog's stack (it only waits and forks; `run` keeps an array of
/// the uffds it holds), and the guard page below it.
const STACK_LEN: usize = 512 << 10;
const GUARD_LEN: usize = 4096;

/// The states of [`Control::state`].
const STARTING: u32 = 0;
/// Cloned; waiting for the order.
const READY: u32 = 1;
/// The clone failed (errno in [`Control::errno`]).
const FAILED: u32 = 2;
/// The order is given: run it.
const GO: u32 = 3;
/// No program after all: exit.
const QUIT: u32 = 4;

/// FUTEX_WAKE's count for every waiter (the kernel reads an int: u32::MAX
/// would be -1, which wakes one: the monitor and the watchdog may both wait).
const ALL: u32 = i32::MAX as u32;

/// What the monitor orders the watchdog to run.
#[derive(Clone, Copy)]
struct Order {
    /// The stage plan, which the monitor keeps until the watchdog says it
    /// forked the stage (or died).
    plan: *const StagePlan<'static>,
    alive: RawFd,
    sock: RawFd,
}

/// Shared by the monitor, the watchdog's parent thread and the watchdog.
struct Control {
    /// One of STARTING, READY, FAILED, GO, QUIT; a futex word.
    state: AtomicU32,
    /// Why the clone failed.
    errno: AtomicI32,
    /// Our pid: the watchdog's parent process, as long as we live.
    monitor: i32,
    /// The watchdog's stack, where the stage runs too: [start, end).
    stack: (AtomicU64, AtomicU64),
    /// A pidfd of the watchdog (from the clone itself), or -1; whoever
    /// takes it (swapping in -1) owns it.
    pidfd: AtomicI32,
    /// Written once, by the monitor, before `state` becomes GO; read by the
    /// watchdog only after it has seen GO.
    order: UnsafeCell<Option<Order>>,
}

// SAFETY: `order` is written by one thread before the Release store of GO
// and read only after an Acquire load of GO (see `Early::go` and `entry`);
// the rest are atomics or never written.
unsafe impl Sync for Control {}
// SAFETY: as above; the plan pointer is only read by the watchdog while
// the monitor keeps the plan.
unsafe impl Send for Control {}

impl Control {
    /// Sets the state and wakes every waiter.
    fn set(&self, state: u32) {
        self.state.store(state, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        let _ = futex::wake(&self.state, futex::Flags::PRIVATE, ALL);
    }

    /// Waits until the state is one `done` accepts; returns it.
    fn wait_for(&self, done: impl Fn(u32) -> bool) -> u32 {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if done(s) {
                return s;
            }
            let _ = futex::wait(&self.state, futex::Flags::PRIVATE, s, None);
        }
    }
}

/// A watchdog made ahead of the plan, waiting for its order.
pub(crate) struct Early {
    control: Arc<Control>,
    /// The thread that made it and reaps it.
    parent: Option<JoinHandle<()>>,
}

/// The watchdog once it has its order: its pidfd, readable once it has
/// ended, and its parent thread, which joining waits for the watchdog to
/// have ended and been reaped.
pub(crate) struct Reaper {
    pub(crate) pidfd: OwnedFd,
    parent: Option<JoinHandle<()>>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(t) = self.parent.take() {
            let _ = t.join();
        }
    }
}

impl Early {
    /// Starts the thread that makes the watchdog; returns at once.
    pub(crate) fn start() -> Result<Early, Error> {
        let control = Arc::new(Control {
            state: AtomicU32::new(STARTING),
            errno: AtomicI32::new(0),
            monitor: rustix::process::getpid().as_raw_nonzero().get(),
            stack: (AtomicU64::new(0), AtomicU64::new(0)),
            pidfd: AtomicI32::new(-1),
            order: UnsafeCell::new(None),
        });
        let shared = Arc::clone(&control);
        let parent = std::thread::Builder::new()
            .name("uprobe-exec-wdp".into())
            .spawn(move || parent(&shared))
            .map_err(|e| Error::sys("starting the watchdog's thread", e))?;
        Ok(Early {
            control,
            parent: Some(parent),
        })
    }

    /// Waits until the watchdog is made (in practice long done). Returns
    /// the stack it runs on, where the stage will run too.
    pub(crate) fn ready(&self) -> Result<(u64, u64), Error> {
        let c = &self.control;
        if c.wait_for(|s| s != STARTING) == FAILED {
            return Err(Error::sys(
                "making the watchdog",
                std::io::Error::from_raw_os_error(c.errno.load(Ordering::Relaxed)),
            ));
        }
        Ok((
            c.stack.0.load(Ordering::Relaxed),
            c.stack.1.load(Ordering::Relaxed),
        ))
    }

    /// Orders the watchdog to fork the stage that runs `plan`, and watch
    /// it; returns once the order is given. `alive` and `sock` are the
    /// watchdog's ends of the monitor's pipe and socket: the caller keeps
    /// them, `plan` and the placeholders in `held` until the watchdog says
    /// it started the program (or has died).
    ///
    /// Fails before ordering anything unless `plan` [fits](StagePlan::fits)
    /// `held`: the placeholders its mappings and hand-off blob go into.
    pub(crate) fn go(
        mut self,
        plan: &StagePlan<'_>,
        held: &[&Reservation],
        alive: BorrowedFd<'_>,
        sock: BorrowedFd<'_>,
    ) -> Result<Reaper, Error> {
        // The stage runs on the watchdog's stack.
        let stack = self.ready()?;
        if !plan.fits(held, stack) {
            return Err(Error::sys(
                "checking the stage plan",
                std::io::Error::other("it maps outside the reserved ranges (a bug of ours)"),
            ));
        }
        let c = &self.control;
        let raw = c.pidfd.swap(-1, Ordering::AcqRel);
        if raw < 0 {
            return Err(Error::sys(
                "making the watchdog",
                std::io::Error::other("no pidfd of it"),
            ));
        }
        // SAFETY: the clone made this fd for us, and swapping -1 in made
        // it ours alone.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: only this call writes `order`, once (it consumes the
        // Early), and the watchdog reads it only after seeing GO, stored
        // below with Release. The plan's lifetime is erased: the caller
        // keeps it until the watchdog has forked.
        unsafe {
            *c.order.get() = Some(Order {
                plan: std::ptr::from_ref(plan).cast(),
                alive: alive.as_raw_fd(),
                sock: sock.as_raw_fd(),
            });
        }
        c.set(GO);
        Ok(Reaper {
            pidfd,
            parent: self.parent.take(),
        })
    }
}

impl Drop for Early {
    /// Without an order: the watchdog exits, and its parent thread reaps it.
    fn drop(&mut self) {
        if let Some(t) = self.parent.take() {
            self.control.set(QUIT);
            let _ = t.join();
        }
        let raw = self.control.pidfd.swap(-1, Ordering::AcqRel);
        if raw >= 0 {
            // SAFETY: the clone made this fd, and swapping -1 in made it
            // ours alone.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
}

/// The watchdog's parent thread: clones the watchdog, then waits for it to
/// end and reaps it.
///
/// The watchdog runs with this thread's thread-local storage (errno
/// included), so from the clone on this thread makes only rustix's raw
/// system calls, which touch none of it, until the watchdog is reaped.
fn parent(control: &Arc<Control>) {
    // No handler of the process's runs here, nor in the watchdog, which is
    // born with this mask: a signal to the process group while it waits
    // for its order is not the watchdog's (it keeps them all blocked from
    // then on). This thread only waits.
    crate::sys::signal::set_blocked(&crate::sys::signal::full());
    let failed = |e: i32| {
        control.errno.store(e, Ordering::Relaxed);
        control.set(FAILED);
    };
    // Read-write memory above a PROT_NONE guard page.
    let total = (GUARD_LEN + STACK_LEN) as u64;
    let stack = match Reservation::anywhere(total, 0, 0).and_then(|mut r| {
        r.map_private(GUARD_LEN as u64, STACK_LEN as u64)?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => return failed(e.raw_os_error().unwrap_or(libc::ENOMEM)),
    };
    control.stack.0.store(stack.addr(), Ordering::Relaxed);
    control.stack.1.store(stack.end(), Ordering::Relaxed);
    let top = stack.end();
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone(2) through libc's wrapper, which runs `entry` on the
    // new stack in the child and exits with its return value. The child
    // shares our memory: it uses only its own stack (mapped above, kept
    // until it is reaped) and `control` (kept alive by our Arc until then),
    // and makes only system calls (see `entry`). CLONE_PIDFD writes the
    // new pidfd (close-on-exec) into `pidfd`, which lives through the call.
    let pid = unsafe {
        libc::clone(
            entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD,
            Arc::as_ptr(control).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return failed(errno());
    }
    control.pidfd.store(pidfd, Ordering::Release);
    // QUIT may already be there: then it stays.
    let _ = control
        .state
        .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    control.wake();
    if let Some(pid) = Pid::from_raw(pid) {
        while let Err(Errno::INTR) = rustix::process::waitpid(Some(pid), WaitOptions::empty()) {}
    }
    drop(stack);
}

/// The watchdog's first steps, on its own stack: waits for the order, then
/// runs it. Returns (and so exits) only without one.
extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the Control our parent thread keeps alive until it
    // has reaped us.
    let c = unsafe { &*arg.cast::<Control>().cast_const() };
    // Until the order, nothing of ours outlives our parent thread (the
    // whole monitor, if it is killed).
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(c.monitor) {
        return 0;
    }
    if c.wait_for(|s| s == GO || s == QUIT) == QUIT {
        return 0;
    }
    // From the order on, the program's: the monitor's death is seen on the
    // alive pipe, and answered by killing the program (see `run`).
    let _ = rustix::process::set_parent_process_death_signal(None);
    // SAFETY: GO was seen (Acquire), so `order` was written before it.
    let Some(order) = (unsafe { *c.order.get() }) else {
        return 0;
    };
    // SAFETY: the monitor keeps the plan until we say we started the
    // program (`Early::go`), so the pointer is valid and the plan unchanged.
    let plan = unsafe { &*order.plan };
    // SAFETY: we are the watchdog, sharing the monitor's memory and fd
    // table, where `alive` and `sock` are open.
    unsafe { run(plan, order.alive, order.sock) }
}

/// Tells the monitor the program could not be started, and exits.
fn fail(sock: BorrowedFd<'_>, kind: u32, e: Errno) -> ! {
    send(
        sock,
        WatchMsg {
            kind,
            pid: 0,
            status: e.raw_os_error(),
        },
    );
    exit_now(125)
}

/// The errno of the last libc call that failed.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs in the watchdog: forks the stage, then watches. Never returns.
///
/// # Safety
/// Must be called only in the watchdog (see `entry`), sharing the
/// monitor's memory and fd table, with a stage plan valid as for
/// [`stage::run`], and fds `alive` and `sock` open.
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
    // SAFETY: the bare fork system call (no libc fork: its handlers would
    // take the locks of the memory we share with the monitor's threads);
    // the child copies our memory, which is the monitor's as it is now.
    let program = match unsafe { crate::sys::process::raw_fork() } {
        Ok(0) => {
            // SAFETY: the child just forked; the plan is valid as for
            // `stage::run` (our caller's promise), and fork kept every address.
            unsafe { stage::run(&plan) }
        }
        Ok(pid) => pid,
        Err(e) => fail(sock, FORK_FAILED, e),
    };
    // Our own fd table from now on: the stage has its copy of the shared
    // one, and the monitor may close its ends of ours once told STARTED.
    // SAFETY: unsharing the fd table leaves every fd number we hold open
    // (ours becomes a copy); we are the only thread of this process.
    let unshared = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES) };
    if let Err(e) = unshared {
        kill_all(program);
        fail(sock, UNSHARE_FAILED, e);
    }
    // Our own life: no signal but SIGKILL can end it, and we keep no fd
    // of the program's (a pipe held open here would never see EOF). The
    // table is ours now: closing all but our two fds first leaves room
    // for the signalfd however near its limit the monitor's table was.
    // SAFETY: nothing here uses any other fd from now on: the monitor's
    // objects are copies in this process that no thread of ours touches.
    unsafe { close_all_but([alive, sock.as_raw_fd(), -1]) };
    let chld = crate::sys::signal::sigset(1 << (libc::SIGCHLD - 1));
    // SAFETY: signalfd(2) reads the mask and returns a new fd; -1 asks
    // for a new one rather than changing an fd of ours.
    let sfd = unsafe { libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if sfd < 0 {
        // We could never tell the monitor how the program ended.
        let e = Errno::from_raw_os_error(errno());
        kill_all(program);
        fail(sock, WATCH_FAILED, e);
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
