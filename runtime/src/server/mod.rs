//! The fault server: answers every first touch of a text page with the
//! page's image, in every process of the program.
//!
//! What it serves is a set of objects (the program's text today; libraries
//! later), each an image of pages ([`TextImage`]) that processes map at
//! addresses of their own. A fault is looked up through the faulting
//! process: its mapping whose range holds the address, then the page of that
//! mapping's object:
//!
//! ```text
//!  Server ── objects: ObjectId → image (pages), pages ever served
//!     └──── mms: MmId → uffd + mappings: (ObjectId, bias, served, dropped)
//!                       + spans sorted by address → (mapping, first page)
//!  fault(mm, addr) ─▶ span holding addr ─▶ (mapping, page) ─▶ UFFDIO_COPY
//! ```
//!
//! The life of one text page in one process (mm):
//!
//! ```text
//!            first touch                      UFFDIO_COPY (image, patched)
//!  missing ─────────────▶ fault event ───────────────────────────────────▶ resident
//!     ▲                  (thread waits)                                      │
//!     │                                                                      │ MADV_DONTNEED
//!     │         remove event (the madvise caller waits until we read it)     │
//!     └──────────────────────────────────────────────────────────────────────┘
//!           the next touch faults again: a *refault*, served the same way
//! ```
//!
//! A fork copies the resident pages and the mappings; the child's missing
//! pages are served through the uffd that arrives in the fork event. Nothing
//! on the fault path allocates: page images are ready before they are
//! mapped, and the per-process bitmaps are allocated when a process is first
//! seen or maps an object. Objects are added, mapped and unmapped between
//! calls of [`Server::run`] (see [`Wake::Control`]).

mod bits;
mod install;
mod mm;
mod objects;
mod prefetch;
mod row_page;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

pub use self::mm::MapError;
pub use self::mm::MmId;
use self::mm::{AddressSpace, Mm};
pub use self::objects::ObjectId;
use self::objects::Objects;
use self::row_page::RowPage;
pub use crate::image::{TextImage, TextRange};
use crate::uffd::{decode, empty_msgs, Event, Uffd, PAGE_SIZE};

/// Why [`Server::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Wake {
    /// `stop` became readable: the first process ended.
    Stopped,
    /// `control` became readable: the caller has requests to answer.
    Control,
    /// A thread rang a doorbell (see [`Server::set_doorbells`]): the caller
    /// takes the rings with [`Server::take_bells`] and answers each with
    /// [`Server::answer_bell`].
    Bells,
}

/// A ring of a doorbell: a thread of process `mm` touched the doorbell page
/// at `addr`, and waits until it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bell {
    /// The process.
    pub mm: MmId,
    /// The page touched.
    pub addr: u64,
    /// The thread (0 when the kernel does not say).
    pub tid: u32,
}

/// An empty poll set in the memory of `v`, which no longer borrows anything
/// (collecting an empty `Vec` into one of the same layout reuses its memory).
fn recycle<'a>(mut v: Vec<PollFd<'_>>) -> Vec<PollFd<'a>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

/// Figures of the text serving, as reported at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextStats {
    /// Text pages of the program (of every object added).
    pub pages: u64,
    /// Distinct pages installed by us (in any process).
    pub served: u64,
    /// Page-fault events handled.
    pub faults: u64,
    /// Faults on pages that had been served to the same process before
    /// (dropped with `MADV_DONTNEED` since).
    pub refaults: u64,
    /// Processes of the program we served: the first, plus every fork.
    pub processes: u64,
    /// Pages installed without a fault (eager population).
    pub populated: u64,
}

/// Why the server stopped serving before the program ended.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A fault outside every served range: we cannot answer it.
    #[error("the program faulted at {addr:#x}, outside the text we serve (did it move its text with mremap?)")]
    FaultOutside {
        /// The faulting address.
        addr: u64,
    },
    /// The kernel refused a page copy for a reason we do not handle.
    #[error("UFFDIO_COPY to {addr:#x} failed: {errno}")]
    Copy {
        /// Destination page.
        addr: u64,
        /// The kernel's answer.
        errno: Errno,
    },
    /// Reading events or polling failed.
    #[error("reading userfaultfd events failed: {0}")]
    Read(Errno),
    /// A bug of ours: the server panicked.
    #[error("the fault server panicked (a bug: please report it)")]
    Panicked,
}

/// Serves the page faults of one program and its forks.
pub struct Server {
    objects: Objects,
    /// Every process met, by [`MmId`]; a gone one stays (numbers are kept).
    mms: Vec<Mm>,
    stats: TextStats,
    /// Copies (process, page address) that met `EAGAIN`, to retry once the
    /// pending events are read.
    deferred: Vec<(usize, u64)>,
    /// The other half of `deferred`'s double buffer (no allocation per retry).
    retry: Vec<(usize, u64)>,
    /// Told of every forked process's uffd (e.g. to hand a copy to a keeper).
    on_new: Option<NewProcessHook>,
    /// Pages after a faulting page installed with it (when not present).
    fault_around: usize,
    /// Whether the background prefetch is on.
    prefetch: bool,
    /// Some process still has pages for the prefetch to install.
    prefetch_pending: bool,
    /// Pages of an object to install in the first process before any other
    /// (a recorded working set), and how many of them are done.
    wanted: (ObjectId, Vec<usize>, usize),
    /// The page each process reads its per-process row from, if any.
    row_page: Option<RowPage>,
    /// Pages `[start, end)` whose faults are rings of doorbells.
    doorbells: (u64, u64),
    /// Rings not yet taken by the caller.
    bells: Vec<Bell>,
}

/// Called with the uffd of each new process.
type NewProcessHook = Box<dyn FnMut(BorrowedFd<'_>) + Send>;

impl Server {
    /// A server for the program's first process ([`MmId::FIRST`], served
    /// through `root`), with `image` as object [`ObjectId::MAIN`] mapped
    /// there at the image's own addresses.
    #[must_use]
    pub fn new(image: Arc<TextImage>, root: Uffd) -> Server {
        let mut s = Server {
            objects: Objects::default(),
            mms: Vec::new(),
            stats: TextStats::default(),
            deferred: Vec::with_capacity(64),
            retry: Vec::with_capacity(64),
            on_new: None,
            row_page: None,
            fault_around: 0,
            prefetch: false,
            prefetch_pending: false,
            wanted: (ObjectId::MAIN, Vec::new(), 0),
            doorbells: (0, 0),
            bells: Vec::new(),
        };
        s.add_mm(root, None);
        let main = s.add_object(image);
        // Cannot fail: nothing else is mapped, and a zero bias moves nothing.
        // (Were the image's own ranges to overlap, its faults would be
        // reported as outside the text, and the program killed.)
        let _ = s.map_object(MmId::FIRST, main, 0);
        s
    }

    /// Installs up to `pages` neighbouring pages (not yet present, adjacent
    /// in the program and in the image) with each faulting page, in the same
    /// `UFFDIO_COPY`. 0: strictly lazy.
    pub fn set_fault_around(&mut self, pages: usize) {
        self.fault_around = pages;
    }

    /// Installs the rest of the text in the background, whenever no event is
    /// waiting, in every process of the program (forks included), so later
    /// first touches find their pages, and so do accesses that cannot be
    /// served: other processes' reads (`/proc/PID/mem`, `ptrace`, debuggers)
    /// and core dumps never reach a userfaultfd.
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on;
        self.prefetch_pending = on;
    }

    /// Whether the prefetch may have pages to install: it is on, or wanted
    /// pages (see [`Server::set_wanted`]) are left.
    fn more_to_prefetch(&self) -> bool {
        self.prefetch || self.wanted.2 < self.wanted.1.len()
    }

    /// Installs the pages of `object` with the indices `pages` (in order)
    /// in the first process, in the background once the program runs,
    /// before any other prefetch: a recorded working set. A page the
    /// program touches first is served by its fault, as any other.
    pub fn set_wanted(&mut self, object: ObjectId, pages: Vec<usize>) {
        self.prefetch_pending |= !pages.is_empty();
        self.wanted = (object, pages, 0);
    }

    /// Serves `addr` (a page registered with every process's uffd) as each
    /// process's row page (see `row_page.rs`): `assign(process number, tid)`
    /// gives the `(pid, row address)` to write there; the process number is
    /// its [`MmId`]'s.
    pub fn set_row_page(
        &mut self,
        addr: u64,
        assign: impl FnMut(usize, u32) -> Option<(u64, u64)> + Send + 'static,
    ) {
        self.row_page = Some(RowPage::new(addr, Box::new(assign), self.mms.len()));
    }

    /// Serves `addr` as a row page too (after [`Server::set_row_page`]):
    /// each process gets there the same words as in the first.
    pub fn add_row_page(&mut self, addr: u64) {
        if let Some(rp) = &mut self.row_page {
            rp.addrs.push(addr);
        }
    }

    /// Makes the faults on pages `[start, end)` (registered with every
    /// process's uffd) rings of doorbells: [`Server::run`] returns
    /// [`Wake::Bells`] once it has read them, and the ringing thread waits
    /// until [`Server::answer_bell`].
    pub fn set_doorbells(&mut self, start: u64, end: u64) {
        self.doorbells = (start, end);
    }

    /// The rings read so far, oldest first.
    pub fn take_bells(&mut self) -> Vec<Bell> {
        std::mem::take(&mut self.bells)
    }

    /// Answers a ring: `page` becomes the doorbell page's contents in that
    /// process, and the ringing thread goes on.
    pub fn answer_bell(
        &mut self,
        bell: &Bell,
        page: &[u8; PAGE_SIZE as usize],
    ) -> Result<(), ServeError> {
        self.copy_page(bell.mm.0, bell.addr & !(PAGE_SIZE - 1), page)
    }

    /// Registers `[start, start + len)` of process `mm` with its uffd
    /// (missing pages fault to us), e.g. an object mapped while it runs.
    pub fn register(&mut self, mm: MmId, start: u64, len: u64) -> Result<(), Errno> {
        let uffd = self.mms.get(mm.0).and_then(|p| p.uffd.as_ref());
        uffd.ok_or(Errno::SRCH)?.register_missing(start, len)
    }

    /// Stops serving, in process `mm`, every object mapped over any of
    /// `[start, end)` (the process mapped something else there since).
    pub fn unmap_range(&mut self, mm: MmId, start: u64, end: u64) {
        let Some(process) = self.mms.get(mm.0).filter(|p| !p.gone()) else {
            return;
        };
        let stale: Vec<ObjectId> = process
            .space
            .ranges_of()
            .filter(|&(_, s, e)| s < end && start < e)
            .map(|(id, _, _)| id)
            .collect();
        for id in stale {
            let _ = self.unmap_object(mm, id);
        }
    }

    /// The figures of one object (its pages, served, faults, refaults and
    /// installs without a fault; `processes` is the server's).
    #[must_use]
    pub fn object_stats(&self, id: ObjectId) -> TextStats {
        self.objects
            .get(id)
            .map_or_else(TextStats::default, |o| TextStats {
                pages: o.image.pages() as u64,
                served: o.ever.count() as u64,
                processes: self.stats.processes,
                ..o.stats
            })
    }

    /// The pages of `id` some process faulted on so far (their indices, in
    /// order): the pages touched before anything installed them. A page
    /// installed with a neighbour's fault (fault-around) or without a fault
    /// is not among them, touched or not.
    #[must_use]
    pub fn faulted_pages(&self, id: ObjectId) -> Vec<usize> {
        self.objects.get(id).map_or_else(Vec::new, |o| {
            (0..o.image.pages()).filter(|&i| o.faulted.get(i)).collect()
        })
    }

    /// Calls `f` with the uffd of every process forked from now on.
    pub fn on_new_process(&mut self, f: impl FnMut(BorrowedFd<'_>) + Send + 'static) {
        self.on_new = Some(Box::new(f));
    }

    /// Adds an object to serve, mapped in no process yet; ids are given in
    /// order, from [`ObjectId::MAIN`].
    pub fn add_object(&mut self, image: Arc<TextImage>) -> ObjectId {
        self.stats.pages += image.pages() as u64;
        self.objects.add(image)
    }

    /// Serves `object` in process `mm` at its image's addresses plus `bias`
    /// (a multiple of the page size), with none of its pages there yet. The
    /// ranges must be registered with that process's uffd, and should be
    /// mapped when the process's events are read up to now (`run` returned):
    /// a fork event read later gives the child this mapping too.
    pub fn map_object(&mut self, mm: MmId, object: ObjectId, bias: u64) -> Result<(), MapError> {
        let image = &self
            .objects
            .get(object)
            .ok_or(MapError::NoObject { object })?
            .image;
        let process = self.mms.get_mut(mm.0).filter(|p| !p.gone());
        let process = process.ok_or(MapError::NoProcess { mm })?;
        process.space.map(mm, object, image, bias)?;
        self.prefetch_pending = self.more_to_prefetch();
        Ok(())
    }

    /// Stops serving `object` in process `mm` and forgets which of its pages
    /// were there; copies of them still deferred are dropped.
    pub fn unmap_object(&mut self, mm: MmId, object: ObjectId) -> Result<(), MapError> {
        let process = self.mms.get_mut(mm.0).filter(|p| !p.gone());
        let process = process.ok_or(MapError::NoProcess { mm })?;
        process.space.unmap(mm, object)?;
        let space = &process.space;
        self.deferred
            .retain(|&(m, addr)| m != mm.0 || space.find(addr).is_some());
        Ok(())
    }

    /// The object mapped at `addr` in process `mm`, and the index of the
    /// page there in the object's image.
    #[must_use]
    pub fn object_at(&self, mm: MmId, addr: u64) -> Option<(ObjectId, usize)> {
        self.mms.get(mm.0)?.space.object_at(addr)
    }

    /// The processes being served (not known to have ended).
    pub fn processes(&self) -> impl Iterator<Item = MmId> + '_ {
        let live = self.mms.iter().enumerate().filter(|(_, p)| !p.gone());
        live.map(|(m, _)| MmId(m))
    }

    /// A new process: `parent`'s fork, or the first.
    fn add_mm(&mut self, uffd: Uffd, parent: Option<usize>) {
        if let Some(f) = &mut self.on_new {
            f(uffd.as_fd());
        }
        let space = parent.map_or_else(AddressSpace::default, |p| self.mms[p].space.fork());
        self.mms.push(Mm {
            uffd: Some(uffd),
            space,
        });
        self.prefetch_pending = self.more_to_prefetch();
        if let Some(rp) = &mut self.row_page {
            rp.add_process();
        }
        self.stats.processes += 1;
    }

    /// Records that every page is in place without us: the text comes from
    /// a file that holds the whole image (when forks cannot be followed).
    pub fn installed_up_front(&mut self) {
        for object in self.objects.iter_mut() {
            for i in 0..object.image.pages() {
                object.ever.set(i);
            }
        }
        self.stats.served = self.stats.pages;
        self.stats.populated = self.stats.pages;
        // Nothing is registered to copy into.
        self.prefetch = false;
        self.prefetch_pending = false;
    }

    /// The figures so far.
    #[must_use]
    pub fn stats(&self) -> TextStats {
        self.stats
    }

    /// Serves until `stop` becomes readable (a pidfd: the first process
    /// ended), or `control` does (the caller has requests to answer; calling
    /// `run` again goes on serving where it left off). Nobody serves faults
    /// after it returns [`Wake::Stopped`]: the caller must make the text
    /// available otherwise (fill the file the text is mapped from) and then
    /// [`Server::wake_all`].
    pub fn run(
        &mut self,
        stop: BorrowedFd<'_>,
        control: Option<BorrowedFd<'_>>,
    ) -> Result<Wake, ServeError> {
        let mut msgs = empty_msgs::<32>();
        // The poll set borrows the processes' uffds, which serving may
        // close, so it is built afresh for each wait, in reused memory.
        let mut spare: Vec<PollFd<'static>> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        let mut ready: Vec<usize> = Vec::new();
        loop {
            // With copies deferred, wake up soon even if no event comes: the
            // kernel keeps answering EAGAIN until the madvise caller whose
            // event we read has resumed, which sends us nothing.
            let timeout = if self.prefetch_pending {
                Some(Timespec::default())
            } else if self.deferred.is_empty() {
                None
            } else {
                Some(Timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                })
            };
            let mut pfds = recycle(std::mem::take(&mut spare));
            pfds.push(PollFd::new(&stop, PollFlags::IN));
            pfds.extend(control.as_ref().map(|c| PollFd::new(c, PollFlags::IN)));
            let first_uffd = pfds.len();
            owners.clear();
            for (i, m) in self.mms.iter().enumerate() {
                if let Some(uffd) = &m.uffd {
                    pfds.push(PollFd::new(uffd, PollFlags::IN));
                    owners.push(i);
                }
            }
            let n = match poll(&mut pfds, timeout.as_ref()) {
                Ok(n) => n,
                Err(Errno::INTR) => {
                    spare = recycle(pfds);
                    continue;
                }
                Err(e) => return Err(ServeError::Read(e)),
            };
            let stopped = !pfds[0].revents().is_empty();
            let controlled = control.is_some() && !pfds[1].revents().is_empty();
            ready.clear();
            for (k, p) in pfds[first_uffd..].iter().enumerate() {
                if !p.revents().is_empty() {
                    ready.push(owners[k]);
                }
            }
            spare = recycle(pfds);
            for &m in &ready {
                self.drain(m, &mut msgs)?;
            }
            self.retry_deferred()?;
            // Rings first: their threads wait, and after Stopped nobody
            // would answer them (the caller calls again, and `stop` is
            // still readable).
            if !self.bells.is_empty() {
                return Ok(Wake::Bells);
            }
            if stopped {
                return Ok(Wake::Stopped);
            }
            if controlled {
                return Ok(Wake::Control);
            }
            if n == 0 {
                self.prefetch_step()?;
            }
        }
    }

    /// Whether the program forked. A process cannot finish `fork()` before
    /// we read its fork event, so once the first process has ended, false
    /// means no other process of the program exists.
    #[must_use]
    pub fn forked(&self) -> bool {
        self.mms.len() > 1
    }

    /// Wakes every thread waiting on a fault in a process we know of, so
    /// that it faults again (after the text became available otherwise).
    pub fn wake_all(&self) {
        for m in 0..self.mms.len() {
            self.wake(m);
        }
    }

    /// Wakes every thread of mm `m` waiting on a fault in its mapped text.
    fn wake(&self, m: usize) {
        if let Some(uffd) = &self.mms[m].uffd {
            for (start, end) in self.mms[m].space.ranges() {
                let _ = uffd.wake(start, end - start);
            }
        }
    }

    /// Reads and handles every pending event of mm `m`.
    fn drain(&mut self, m: usize, msgs: &mut [crate::uffd::RawMsg]) -> Result<(), ServeError> {
        while let Some(uffd) = &self.mms[m].uffd {
            let n = match uffd.read_events(msgs) {
                Ok(n) => n,
                Err(e) => return Err(ServeError::Read(e)),
            };
            if n == 0 {
                break;
            }
            for msg in &mut msgs[..n] {
                match decode(msg) {
                    Event::PageFault { addr, tid, .. } => self.fault(m, addr, tid)?,
                    Event::Fork(child) => {
                        self.sweep();
                        self.add_mm(child, Some(m));
                    }
                    Event::Remove { start, end } => self.dropped(m, start, end),
                    // An object unmapped whole (dlclose) is forgotten there, so
                    // that another can take its place. Text unmapped in part
                    // or moved is not served again (a fault there is an error).
                    Event::Unmap { start, end } => self.unmapped(m, start, end),
                    Event::Remap { .. } => {}
                    Event::Unknown(_) => {}
                }
            }
        }
        self.retry_deferred()
    }

    /// Retries the copies that met `EAGAIN` (their events have been read
    /// since); those that meet it again stay deferred.
    fn retry_deferred(&mut self) -> Result<(), ServeError> {
        std::mem::swap(&mut self.deferred, &mut self.retry);
        while let Some((m, addr)) = self.retry.pop() {
            self.install_at(m, addr)?;
        }
        Ok(())
    }

    fn fault(&mut self, m: usize, addr: u64, tid: u32) -> Result<(), ServeError> {
        let Some(page) = self.mms[m].space.find(addr) else {
            if self.row_page.as_ref().is_some_and(|r| r.holds(addr)) {
                return self.serve_row_page(m, addr, tid);
            }
            if (self.doorbells.0..self.doorbells.1).contains(&addr) {
                self.bells.push(Bell {
                    mm: MmId(m),
                    addr,
                    tid,
                });
                return Ok(());
            }
            return Err(ServeError::FaultOutside { addr });
        };
        self.stats.faults += 1;
        // Messages read in one batch can outlive their process.
        if self.mms[m].gone() {
            return Ok(());
        }
        // Served here before and copied again: the program dropped it.
        // (A second event for a page being served meets EEXIST instead.)
        let again = self.mms[m].space.mappings()[page.slot]
            .served
            .get(page.index);
        let n = self.install_run(m, page, 1 + self.fault_around)?;
        let object = self.mms[m].space.mappings()[page.slot].object;
        let o = self.objects.get_mut(object);
        o.faulted.set(page.index);
        let stats = &mut o.stats;
        stats.faults += 1;
        if again && n > 0 {
            self.stats.refaults += 1;
            stats.refaults += 1;
        }
        self.count_populated(m, page.slot, n.saturating_sub(1));
        Ok(())
    }

    /// Counts `n` pages installed without a fault in mapping `slot` of mm `m`.
    fn count_populated(&mut self, m: usize, slot: usize, n: usize) {
        let object = self.mms[m].space.mappings()[slot].object;
        self.objects.get_mut(object).stats.populated += n as u64;
        self.stats.populated += n as u64;
    }

    /// Marks the served pages of `[start, end)` as dropped from mm `m`.
    ///
    /// A copy of one of those pages that is still deferred must not land now:
    /// it would bring back a page the program just dropped, with no fault.
    /// It is forgotten, and its waiters woken: they touch the page again and
    /// fault afresh.
    fn dropped(&mut self, m: usize, start: u64, end: u64) {
        let mm = &mut self.mms[m];
        let Some(uffd) = &mm.uffd else {
            return;
        };
        mm.space.drop_pages(start, end);
        self.deferred.retain(|&(dm, addr)| {
            let stale = dm == m && addr + PAGE_SIZE > start && addr < end;
            if stale {
                let _ = uffd.wake(addr, PAGE_SIZE);
            }
            !stale
        });
    }

    /// Forgets, in mm `m`, the objects that lay wholly in `[start, end)`.
    fn unmapped(&mut self, m: usize, start: u64, end: u64) {
        let gone: Vec<ObjectId> = self.mms[m]
            .space
            .ranges_of()
            .filter(|&(_, s, e)| s >= start && e <= end)
            .map(|(id, _, _)| id)
            .collect();
        for id in gone {
            if !self.mms[m]
                .space
                .ranges_of()
                .any(|(o, s, e)| o == id && (s < start || e > end))
            {
                let _ = self.unmap_object(MmId(m), id);
            }
        }
    }

    /// Stops serving mm `m`: its process exited or exec'd.
    fn retire(&mut self, m: usize) {
        let mm = &mut self.mms[m];
        if mm.uffd.take().is_some() {
            mm.space.release_pages();
        }
    }

    /// Retires forked processes that have ended. There is no uffd event when
    /// an mm goes away, so without this a shell running thousands of commands
    /// would leave us holding thousands of dead uffds.
    fn sweep(&mut self) {
        for m in 1..self.mms.len() {
            if self.mms[m].uffd.as_ref().is_some_and(|u| !u.mm_alive()) {
                self.retire(m);
            }
        }
    }
}

#[cfg(test)]
mod tests;
