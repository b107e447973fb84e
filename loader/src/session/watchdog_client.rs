//! The monitor's side of the watchdog (see `crate::watchdog`): the program's
//! pid and wait status come from it, and it must hold a copy of every uffd.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use uprobe_runtime::Uffd;

use crate::error::{Error, Result};
use crate::report::Exit;
use crate::sys::fdpass;
use crate::watchdog::{Reaper, WatchMsg, DETACH, EXITED, HOLD};

/// The watchdog process, seen from the monitor. Dropping it ends the
/// watchdog (which kills the program unless detached) and reaps it.
pub(super) struct Watchdog {
    sock: Arc<OwnedFd>,
    /// Dropping it tells the watchdog we are gone.
    alive: Option<OwnedFd>,
    /// Dropping it waits for the watchdog to be reaped.
    reaper: Option<Reaper>,
}

/// Hands uffds to the watchdog from the fault server's thread.
pub(super) struct Keeper(Arc<OwnedFd>);

impl Keeper {
    /// Has the watchdog hold a copy of `uffd` (see `crate::watchdog`).
    pub(super) fn hold_fd(&self, uffd: BorrowedFd<'_>) {
        send(&self.0, HOLD, Some(uffd));
    }
}

/// Sends the watchdog an order; nothing to do if it is gone (the monitor
/// learns of that from its next message).
fn send(sock: &OwnedFd, kind: u32, fd: Option<BorrowedFd<'_>>) {
    let msg = WatchMsg {
        kind,
        pid: 0,
        status: 0,
    };
    let _ = fdpass::send(sock.as_fd(), &msg, fd.as_slice());
}

impl Watchdog {
    /// The watchdog ordered to start the program, with our end of its
    /// socket and the write end of its alive pipe.
    pub(super) fn new(reaper: Reaper, sock: OwnedFd, alive: OwnedFd) -> Watchdog {
        Watchdog {
            sock: Arc::new(sock),
            alive: Some(alive),
            reaper: Some(reaper),
        }
    }

    /// The next message from the watchdog (blocking); None if it died.
    pub(super) fn next(&self) -> Option<WatchMsg> {
        loop {
            match fdpass::recv::<WatchMsg>(self.sock.as_fd(), RecvFlags::empty()) {
                Ok(Some((m, _))) => return Some(m),
                Err(Errno::INTR) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The first message from the watchdog, ordered to start the program:
    /// None if it died first. Until then it shares our fd table, where our
    /// end of its socket stays open: its death shows on its pidfd, not as
    /// the socket's end.
    ///
    /// Without a message, the watchdog is dead when this returns: until it
    /// has forked, it reads the plan and the fds our caller then releases.
    pub(super) fn first(&self) -> Option<WatchMsg> {
        let pidfd = &self.reaper.as_ref()?.pidfd;
        loop {
            let mut pfds = [
                PollFd::new(&*self.sock, PollFlags::IN),
                PollFd::new(pidfd, PollFlags::IN),
            ];
            match rustix::event::poll(&mut pfds, None) {
                Err(Errno::INTR) => continue,
                Err(_) => break,
                Ok(_) => {}
            }
            if !pfds[0].revents().is_empty() {
                if let Some(m) = self.next() {
                    return Some(m);
                }
                break;
            }
            if !pfds[1].revents().is_empty() {
                break;
            }
        }
        // Gone, or we cannot hear it: make sure it is gone.
        let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
        loop {
            let mut pfd = [PollFd::new(pidfd, PollFlags::IN)];
            match rustix::event::poll(&mut pfd, None) {
                Ok(_) if !pfd[0].revents().is_empty() => return None,
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }

    /// Waits for the program's wait status, which the watchdog (its parent) reports.
    pub(super) fn status(&self) -> Result<Exit> {
        loop {
            match self.next() {
                Some(m) if m.kind == EXITED => {
                    let st = m.status;
                    return Ok(if libc::WIFSIGNALED(st) {
                        Exit::Signal(libc::WTERMSIG(st))
                    } else {
                        Exit::Code(libc::WEXITSTATUS(st))
                    });
                }
                Some(_) => continue,
                None => {
                    return Err(Error::sys(
                        "waiting for the program",
                        std::io::Error::other("the watchdog died"),
                    ))
                }
            }
        }
    }

    /// Has the watchdog hold a copy of the first process's uffd.
    pub(super) fn hold(&self, uffd: &Uffd) {
        self.sender().hold_fd(uffd.as_fd());
    }

    /// A handle that passes the uffds of new processes to the watchdog.
    pub(super) fn sender(&self) -> Keeper {
        Keeper(Arc::clone(&self.sock))
    }

    /// The session ended normally: processes that outlive the program live on.
    pub(super) fn detach(&self) {
        send(&self.sock, DETACH, None);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the pipe ends the watchdog (killing the program unless
        // detached); then wait for its parent thread to have reaped it.
        drop(self.alive.take());
        drop(self.reaper.take());
    }
}
