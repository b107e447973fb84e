//! The monitor's side of the watchdog (see `crate::watchdog`): its messages,
//! the uffds it must hold, and telling it to detach.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use uprobe_runtime::Uffd;

use crate::error::{Error, Result};
use crate::report::Exit;

/// The monitor's side of the watchdog (see `watchdog`).
pub(super) struct Watchdog {
    pub(super) pid: i32,
    pub(super) sock: OwnedFd,
    /// Dropping it tells the watchdog we are gone.
    pub(super) alive: Option<OwnedFd>,
}

/// Sends uffds to the watchdog from the fault server's thread.
pub(super) struct Keeper(RawFd);

impl Keeper {
    pub(super) fn hold_fd(&self, fd: std::os::fd::BorrowedFd<'_>) {
        send_fd(
            self.0,
            crate::watchdog::WatchMsg {
                kind: crate::watchdog::HOLD,
                pid: 0,
                status: 0,
            },
            Some(fd.as_raw_fd()),
        );
    }
}

fn send_fd(sock: RawFd, msg: crate::watchdog::WatchMsg, fd: Option<RawFd>) {
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: (&msg as *const crate::watchdog::WatchMsg).cast_mut().cast(),
        iov_len: std::mem::size_of::<crate::watchdog::WatchMsg>(),
    };
    // SAFETY: msghdr and the control buffer are plain data on our stack, sized
    // for one fd; sendmsg only reads them.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if let Some(fd) = fd {
            hdr.msg_control = cbuf.as_mut_ptr().cast();
            hdr.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
        libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL);
    }
}

impl Watchdog {
    /// The next message from the watchdog (blocking); None if it died.
    pub(super) fn next(&self) -> Option<crate::watchdog::WatchMsg> {
        let mut m = crate::watchdog::WatchMsg::default();
        loop {
            // SAFETY: reading one plain struct from our socket.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    (&mut m as *mut crate::watchdog::WatchMsg).cast(),
                    std::mem::size_of::<crate::watchdog::WatchMsg>(),
                    0,
                )
            };
            if n == std::mem::size_of::<crate::watchdog::WatchMsg>() as isize {
                return Some(m);
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
    }

    /// Waits for the program's wait status, which the watchdog (its parent) reports.
    pub(super) fn status(&self) -> Result<Exit> {
        loop {
            match self.next() {
                Some(m) if m.kind == crate::watchdog::EXITED => {
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

    pub(super) fn hold(&self, uffd: &Uffd) {
        self.sender().hold_fd(uffd.as_fd());
    }

    pub(super) fn sender(&self) -> Keeper {
        Keeper(self.sock.as_raw_fd())
    }

    /// The session ended normally: processes that outlive the program live on.
    pub(super) fn detach(&self) {
        send_fd(
            self.sock.as_raw_fd(),
            crate::watchdog::WatchMsg {
                kind: crate::watchdog::DETACH,
                pid: 0,
                status: 0,
            },
            None,
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the pipe ends the watchdog (killing the program unless
        // detached); then reap it.
        drop(self.alive.take());
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
    }
}
