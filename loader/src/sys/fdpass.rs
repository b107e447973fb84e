//! Messages with file descriptors attached (`SCM_RIGHTS`), over the
//! `SOCK_SEQPACKET` sockets between the monitor, the watchdog and the stage.
//!
//! Both the watchdog and the stage are forked from a threaded monitor and
//! must not allocate: everything here works on the stack (rustix's
//! `sendmsg`/`recvmsg` with stack buffers), and received fds come back in a
//! fixed-size [`Fds`], never a `Vec`.
//!
//! # References
//!  - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), "Ancillary messages"
//!  - [`cmsg(3)`](https://man7.org/linux/man-pages/man3/cmsg.3.html)

#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::{Errno, Result};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most fds one message carries (the stage sends its uffd and the SIGTRAP
/// guard's listener).
pub(crate) const MAX_FDS: usize = 2;

/// A message sent as its bytes.
///
/// # Safety
/// The type must be `#[repr(C)]` plain data without padding, for which every
/// bit pattern is a valid value: it is sent from its bytes and received into
/// them.
pub(crate) unsafe trait Message: Copy + Default {}

/// The fds that came with a message (closed when dropped unless taken).
#[derive(Debug, Default)]
pub(crate) struct Fds([Option<OwnedFd>; MAX_FDS]);

impl Fds {
    /// Takes the `i`th fd received, if there was one.
    pub(crate) fn take(&mut self, i: usize) -> Option<OwnedFd> {
        self.0.get_mut(i)?.take()
    }
}

/// Sends `msg` with `fds` attached (at most [`MAX_FDS`]), never raising
/// SIGPIPE. Async-signal-safe.
pub(crate) fn send<M: Message>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    // SAFETY: `M: Message` is plain data without padding, so all of its
    // size_of::<M>() bytes are initialized; the slice borrows `msg`.
    let bytes =
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(msg).cast::<u8>(), size_of::<M>()) };
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    let sent = sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // A datagram goes whole or not at all.
    if sent == bytes.len() {
        Ok(())
    } else {
        Err(Errno::MSGSIZE)
    }
}

/// Receives one message and the fds attached to it, close-on-exec.
/// `Ok(None)`: the peer is gone (end of file) or sent something of another
/// size. Async-signal-safe.
pub(crate) fn recv<M: Message>(sock: BorrowedFd<'_>, flags: RecvFlags) -> Result<Option<(M, Fds)>> {
    let mut msg = M::default();
    // SAFETY: `M: Message` accepts any bit pattern, so the kernel may write
    // any bytes into it; the slice borrows `msg` mutably.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(std::ptr::from_mut(&mut msg).cast::<u8>(), size_of::<M>())
    };
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        sock,
        &mut [IoSliceMut::new(bytes)],
        &mut control,
        flags | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Fds::default();
    let mut slots = fds.0.iter_mut();
    for cmsg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = cmsg {
            // Fds beyond MAX_FDS (none are sent) are closed as they drop.
            for (slot, fd) in slots.by_ref().zip(received) {
                *slot = Some(fd);
            }
        }
    }
    Ok((got.bytes == size_of::<M>()).then_some((msg, fds)))
}
