//! The control channel from a [`Session`](super::Session) to its monitor
//! thread: a queue of requests, and an eventfd in the fault server's poll set
//! that rings when there is something in it. The server returns to the
//! monitor when it rings (see `uprobe_runtime::Wake`), the monitor answers
//! every queued request, and serving goes on; faults never wait on a lock.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{mpsc, Arc};

use rustix::event::{eventfd, EventfdFlags};

use crate::report::ProbeHits;

/// What a session asks of its monitor. Each request carries the sender its
/// answer goes back on.
pub(super) enum Request {
    /// The hits of every probe so far (all processes).
    Counts(mpsc::Sender<Vec<ProbeHits>>),
    /// SIGKILL to the program's first process.
    Kill(mpsc::Sender<rustix::io::Result<()>>),
}

/// The session's end: queues requests and rings.
#[derive(Debug)]
pub(super) struct Control {
    queue: mpsc::Sender<Request>,
    bell: Arc<OwnedFd>,
}

/// The monitor's end: the bell to poll, and the requests behind it.
pub(super) struct Inbox {
    queue: mpsc::Receiver<Request>,
    bell: Arc<OwnedFd>,
}

/// A new channel. The eventfd is close-on-exec, so the program never sees it.
pub(super) fn channel() -> std::io::Result<(Control, Inbox)> {
    let bell = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        Control {
            queue: tx,
            bell: Arc::clone(&bell),
        },
        Inbox { queue: rx, bell },
    ))
}

impl Control {
    /// Sends the request `make` builds around a reply sender, and waits for
    /// the answer. None when the monitor no longer answers: it has stopped
    /// serving (the program's first process ended) and is about to return.
    pub(super) fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Request) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        self.queue.send(make(tx)).ok()?;
        // Queued before the ring, so the monitor, which silences the bell
        // before it reads the queue, cannot miss it.
        rustix::io::write(&*self.bell, &1u64.to_ne_bytes()).ok()?;
        rx.recv().ok()
    }
}

impl Inbox {
    /// The fd that becomes readable when requests wait.
    pub(super) fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    /// Silences the bell and returns the requests queued so far.
    pub(super) fn take(&self) -> mpsc::TryIter<'_, Request> {
        // EAGAIN: it was not ringing. Reading resets the count to zero.
        let _ = rustix::io::read(&*self.bell, &mut [0u8; 8]);
        self.queue.try_iter()
    }
}
