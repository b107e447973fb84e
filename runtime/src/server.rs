//! The fault server: answers every first touch of a text page with the
//! page's image, in every process of the program.
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
//! A fork copies the resident pages; the child's missing pages are served
//! through the uffd that arrives in the fork event. Nothing on the fault path
//! allocates: page images are ready before the program starts, and the
//! per-process bitmaps are allocated when the process is first seen.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

pub use crate::image::{TextImage, TextRange};
use crate::uffd::{decode, empty_msgs, CopyOutcome, Event, Uffd, PAGE_SIZE};

/// A fixed-size bit set over page indices.
#[derive(Clone, Debug)]
struct PageBits(Vec<u64>);

impl PageBits {
    fn new(pages: usize) -> PageBits {
        PageBits(vec![0; pages.div_ceil(64)])
    }
    /// Sets bit `i`; returns whether it was set before.
    fn set(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.0[w] & b != 0;
        self.0[w] |= b;
        was
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }
    /// Clears bit `i`; returns whether it was set.
    fn clear(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.0[w] & b != 0;
        self.0[w] &= !b;
        was
    }
}

/// Why [`Server::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Wake {
    /// `stop` became readable: the first process ended.
    Stopped,
    /// `control` became readable: the caller has requests to answer.
    Control,
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
    /// Text pages of the program.
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

/// One process (mm) we serve.
struct Mm {
    /// None once the process is gone (the fd is closed then).
    uffd: Option<Uffd>,
    /// Pages served to this mm.
    served: PageBits,
    /// Served pages that a remove event dropped since: the next fault on
    /// one is a refault. (Several threads faulting on one page at once give
    /// several events for one missing page; only the first is served.)
    dropped: PageBits,
    gone: bool,
    /// Next page the background prefetch installs here (`pages()` when done).
    prefetch_at: usize,
}

/// Serves the page faults of one program and its forks.
pub struct Server {
    image: Arc<TextImage>,
    mms: Vec<Mm>,
    ever: PageBits,
    stats: TextStats,
    /// Copies that met `EAGAIN`, to retry once the pending events are read.
    deferred: Vec<(usize, usize)>,
    /// The other half of `deferred`'s double buffer (no allocation per retry).
    retry: Vec<(usize, usize)>,
    /// Bumped whenever a process appears or goes, to rebuild the poll set.
    generation: u64,
    /// Told of every forked process's uffd (e.g. to hand a copy to a keeper).
    on_new: Option<NewProcessHook>,
    /// Pages after a faulting page installed with it (when not present).
    fault_around: usize,
    /// Whether the background prefetch is on.
    prefetch: bool,
    /// Some process still has pages for the prefetch to install.
    prefetch_pending: bool,
    /// The page each process reads its per-process row from, if any.
    row_page: Option<RowPage>,
}

/// Called with the uffd of each new process.
type NewProcessHook = Box<dyn FnMut(BorrowedFd<'_>) + Send>;

/// Gives process number `m` (in the order we met them) its row, from the
/// id of a thread of it: `(pid, row address)`, or None when none is left.
type RowAssigner = Box<dyn FnMut(usize, u32) -> Option<(u64, u64)> + Send>;

/// A page, registered with every process's uffd, whose first touch in each
/// process is answered with that process's own words: its pid and the
/// address of its row of hit counters. Probe hits read it, so they find
/// their row without a system call; the page is wiped on fork, so a child
/// touches it afresh and gets its own.
struct RowPage {
    addr: u64,
    assign: RowAssigner,
    /// The answer given to each process, by process number.
    given: Vec<Option<(u64, u64)>>,
}

impl Server {
    /// A server for the program's first process.
    #[must_use]
    pub fn new(image: Arc<TextImage>, root: Uffd) -> Server {
        let pages = image.pages();
        let mut s = Server {
            image,
            mms: Vec::new(),
            ever: PageBits::new(pages),
            stats: TextStats {
                pages: pages as u64,
                ..TextStats::default()
            },
            deferred: Vec::with_capacity(64),
            retry: Vec::with_capacity(64),
            generation: 0,
            on_new: None,
            row_page: None,
            fault_around: 0,
            prefetch: false,
            prefetch_pending: false,
        };
        s.add_mm(root);
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

    /// Installs the next run of missing pages for the prefetch; false when
    /// no process has any left.
    fn prefetch_step(&mut self) -> Result<bool, ServeError> {
        if !self.prefetch_pending {
            return Ok(false);
        }
        let pages = self.image.pages();
        for m in 0..self.mms.len() {
            let mut index = self.mms[m].prefetch_at;
            while index < pages && !self.mms[m].gone && self.present(m, index) {
                index += 1;
            }
            if index >= pages || self.mms[m].gone {
                self.mms[m].prefetch_at = pages;
                continue;
            }
            let n = self.install_run(m, index, 64)?;
            self.stats.populated += n as u64;
            self.mms[m].prefetch_at = index + n.max(1);
            return Ok(true);
        }
        self.prefetch_pending = false;
        Ok(false)
    }

    /// Serves `addr` (a page registered with every process's uffd) as each
    /// process's row page (see `RowPage`): `assign(process number, tid)`
    /// gives the `(pid, row address)` to write there.
    pub fn set_row_page(
        &mut self,
        addr: u64,
        assign: impl FnMut(usize, u32) -> Option<(u64, u64)> + Send + 'static,
    ) {
        self.row_page = Some(RowPage {
            addr,
            assign: Box::new(assign),
            given: vec![None; self.mms.len()],
        });
    }

    /// Calls `f` with the uffd of every process forked from now on.
    pub fn on_new_process(&mut self, f: impl FnMut(BorrowedFd<'_>) + Send + 'static) {
        self.on_new = Some(Box::new(f));
    }

    fn add_mm(&mut self, uffd: Uffd) {
        if let Some(f) = &mut self.on_new {
            f(uffd.as_fd());
        }
        let pages = self.image.pages();
        self.mms.push(Mm {
            uffd: Some(uffd),
            served: PageBits::new(pages),
            dropped: PageBits::new(pages),
            gone: false,
            prefetch_at: 0,
        });
        self.prefetch_pending = self.prefetch;
        if let Some(rp) = &mut self.row_page {
            rp.given.push(None);
        }
        self.stats.processes += 1;
        self.generation += 1;
    }

    /// Records that every page is in place without us: the text comes from
    /// a file that holds the whole image (when forks cannot be followed).
    pub fn installed_up_front(&mut self) {
        let pages = self.image.pages() as u64;
        self.stats.served = pages;
        self.stats.populated = pages;
        for i in 0..self.image.pages() {
            self.ever.set(i);
        }
        // Nothing is registered to copy into.
        self.prefetch = false;
        self.prefetch_pending = false;
    }

    /// A fork copies the pages present in the parent (mm `parent`): the new
    /// process (the last mm) starts with them, so the prefetch skips them.
    /// (As elsewhere, "present" is as far as we know: a page missing after
    /// all still faults and is served.)
    fn inherit(&mut self, parent: usize) {
        let child = self.mms.len() - 1;
        if self.mms[parent].gone || self.mms[child].gone {
            return;
        }
        let words = self.mms[parent].served.0.len();
        for w in 0..words {
            let present = self.mms[parent].served.0[w] & !self.mms[parent].dropped.0[w];
            self.mms[child].served.0[w] = present;
        }
    }

    /// The figures so far.
    #[must_use]
    pub fn stats(&self) -> TextStats {
        self.stats
    }

    /// Installs every page not yet served in every live process, without
    /// waiting for faults. Used when forks cannot be followed (user-mode-only
    /// uffd) and when the first process has ended while others live on.
    pub fn populate_all(&mut self) -> Result<(), ServeError> {
        self.populate_once()?;
        // Copies deferred by EAGAIN: retry while their madvise callers resume.
        for _ in 0..1000 {
            if self.deferred.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            let mut msgs = empty_msgs::<32>();
            for m in 0..self.mms.len() {
                self.drain(m, &mut msgs)?;
            }
            self.retry_deferred()?;
        }
        Ok(())
    }

    fn populate_once(&mut self) -> Result<(), ServeError> {
        for m in 0..self.mms.len() {
            let mut index = 0;
            while index < self.image.pages() && !self.mms[m].gone {
                if self.present(m, index) {
                    index += 1;
                    continue;
                }
                let n = self.install_run(m, index, 256)?;
                self.stats.populated += n as u64;
                index += n.max(1);
            }
            // Wake anyone who faulted while we were installing without waking.
            if let Some(uffd) = &self.mms[m].uffd {
                for r in self.image.ranges() {
                    let _ = uffd.wake(r.start, r.end() - r.start);
                }
            }
        }
        Ok(())
    }

    /// Copies page `index` into mm `m`. Returns whether it was installed by this call.
    fn install(&mut self, m: usize, index: usize) -> Result<bool, ServeError> {
        self.install_run(m, index, 1).map(|n| n > 0)
    }

    /// Whether page `index` is in mm `m` now (as far as we know).
    fn present(&self, m: usize, index: usize) -> bool {
        self.mms[m].served.get(index) && !self.mms[m].dropped.get(index)
    }

    /// How many pages from `index` on can go in one copy: up to `max`,
    /// adjacent in the program and in the image. Pages that seem present are
    /// not left out: the program may have dropped them without telling us
    /// (drops are watched only for anonymous text), and the copy stops with
    /// `EEXIST` at the first page that really is present.
    fn run_length(&self, index: usize, max: usize) -> usize {
        let (addr, src) = (self.image.page_addr(index), self.image.src(index));
        let mut n = 1;
        while n < max && index + n < self.image.pages() {
            let j = index + n;
            let step = n as u64 * PAGE_SIZE;
            if self.image.page_addr(j) != addr + step
                || self.image.src(j) as u64 != src as u64 + step
            {
                break;
            }
            n += 1;
        }
        n
    }

    /// Copies up to `max` pages from page `index` on into mm `m`, in one
    /// `UFFDIO_COPY` (fault-around), waking whoever waits on them. Returns
    /// how many pages it installed.
    ///
    /// Invariant (security): this is the only place the fault server writes
    /// into a program's memory, and it writes only through `UFFDIO_COPY`,
    /// which the kernel confines to the ranges registered on that uffd: the
    /// program's text, as planned. `page_addr` comes from the image's ranges,
    /// never from the program.
    fn install_run(&mut self, m: usize, index: usize, max: usize) -> Result<usize, ServeError> {
        let n = if max > 1 {
            self.run_length(index, max)
        } else {
            1
        };
        let addr = self.image.page_addr(index);
        let src = self.image.src(index);
        let Some(uffd) = &self.mms[m].uffd else {
            return Ok(0);
        };
        // SAFETY: `src` starts `n` pages of the image that are adjacent in
        // memory (run_length checked), each readable for PAGE_SIZE bytes
        // (TextImage::new's contract).
        let (outcome, bytes) = unsafe { uffd.copy_partial(addr, src, n as u64 * PAGE_SIZE, true) };
        let wake = |s: &Self| {
            if let Some(u) = &s.mms[m].uffd {
                let _ = u.wake(addr, n as u64 * PAGE_SIZE);
            }
        };
        let copied = (bytes / PAGE_SIZE) as usize;
        for j in index..index + copied {
            self.mms[m].served.set(j);
            self.mms[m].dropped.clear(j);
            if !self.ever.set(j) {
                self.stats.served += 1;
            }
        }
        match outcome {
            CopyOutcome::Copied => {}
            // Someone else's fault installed a page first: make sure nobody
            // sleeps on the ones we did not copy.
            CopyOutcome::AlreadyPresent => wake(self),
            // A remove/unmap is pending: read events first, then try again.
            CopyOutcome::Retry if copied == 0 => self.deferred.push((m, index)),
            CopyOutcome::Retry => wake(self),
            // The process exited or exec'd: nothing left to serve there.
            CopyOutcome::Gone => self.retire(m),
            // The run crosses a split of the text: serve the page alone.
            CopyOutcome::NotInOneMapping if copied == 0 && n > 1 => {
                return self.install_run(m, index, 1);
            }
            // The page left the mapping since it faulted (or the rest of the
            // run is past a split): its threads touch it again and meet
            // whatever is there now, as natively.
            CopyOutcome::NotInOneMapping => wake(self),
            CopyOutcome::Failed(errno) => return Err(ServeError::Copy { addr, errno }),
        }
        Ok(copied)
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
        for mm in &self.mms {
            if let Some(uffd) = &mm.uffd {
                for r in self.image.ranges() {
                    let _ = uffd.wake(r.start, r.end() - r.start);
                }
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
            for msg in &msgs[..n] {
                match decode(msg) {
                    Event::PageFault { addr, tid, .. } => self.fault(m, addr, tid)?,
                    Event::Fork(child) => {
                        self.sweep();
                        self.add_mm(child);
                        self.inherit(m);
                    }
                    Event::Remove { start, end } => self.dropped(m, start, end),
                    // Unmapped or moved text is not served again (a fault there is an error).
                    Event::Unmap { .. } | Event::Remap { .. } => {}
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
        while let Some((dm, index)) = self.retry.pop() {
            self.install(dm, index)?;
        }
        Ok(())
    }

    fn fault(&mut self, m: usize, addr: u64, tid: u32) -> Result<(), ServeError> {
        let Some(index) = self.image.index_of(addr) else {
            if self
                .row_page
                .as_ref()
                .is_some_and(|r| r.addr == addr & !(PAGE_SIZE - 1))
            {
                return self.serve_row_page(m, tid);
            }
            return Err(ServeError::FaultOutside { addr });
        };
        self.stats.faults += 1;
        // Messages read in one batch can outlive their process.
        if self.mms[m].gone {
            return Ok(());
        }
        // Served here before and copied again: the program dropped it.
        // (A second event for a page being served meets EEXIST instead.)
        let again = self.mms[m].served.get(index);
        let n = self.install_run(m, index, 1 + self.fault_around)?;
        if again && n > 0 {
            self.stats.refaults += 1;
        }
        self.stats.populated += n.saturating_sub(1) as u64;
        Ok(())
    }

    /// Answers a process's first touch of the row page with its row.
    fn serve_row_page(&mut self, m: usize, tid: u32) -> Result<(), ServeError> {
        let Some(rp) = &mut self.row_page else {
            return Ok(());
        };
        if rp.given[m].is_none() {
            rp.given[m] = (rp.assign)(m, tid);
        }
        let mut page = [0u64; PAGE_SIZE as usize / 8];
        if let Some((pid, row)) = rp.given[m] {
            page[crate::area::ROW_PAGE_PID / 8] = pid;
            page[crate::area::ROW_PAGE_ROW / 8] = row;
        }
        let addr = rp.addr;
        let Some(uffd) = &self.mms[m].uffd else {
            return Ok(());
        };
        // SAFETY: `page` is a live, readable page-sized buffer on our stack.
        let (outcome, _) =
            unsafe { uffd.copy_partial(addr, page.as_ptr().cast(), PAGE_SIZE, true) };
        match outcome {
            CopyOutcome::Copied => Ok(()),
            CopyOutcome::AlreadyPresent | CopyOutcome::Retry | CopyOutcome::NotInOneMapping => {
                let _ = uffd.wake(addr, PAGE_SIZE);
                Ok(())
            }
            CopyOutcome::Gone => {
                self.retire(m);
                Ok(())
            }
            CopyOutcome::Failed(errno) => Err(ServeError::Copy { addr, errno }),
        }
    }

    /// Marks the served pages of `[start, end)` as dropped from mm `m`.
    ///
    /// A copy of one of those pages that is still deferred must not land now:
    /// it would bring back a page the program just dropped, with no fault.
    /// It is forgotten, and its waiters woken: they touch the page again and
    /// fault afresh.
    fn dropped(&mut self, m: usize, start: u64, end: u64) {
        if self.mms[m].gone {
            return;
        }
        let mut a = start & !(PAGE_SIZE - 1);
        while a < end {
            if let Some(index) = self.image.index_of(a) {
                if self.mms[m].served.get(index) {
                    self.mms[m].dropped.set(index);
                }
            }
            a += PAGE_SIZE;
        }
        let image = &self.image;
        let uffd = self.mms[m].uffd.as_ref();
        self.deferred.retain(|&(dm, index)| {
            let addr = image.page_addr(index);
            let stale = dm == m && addr + PAGE_SIZE > start && addr < end;
            if stale {
                if let Some(u) = uffd {
                    let _ = u.wake(addr, PAGE_SIZE);
                }
            }
            !stale
        });
    }

    /// Stops serving mm `m`: its process exited or exec'd.
    fn retire(&mut self, m: usize) {
        let mm = &mut self.mms[m];
        if !mm.gone {
            mm.gone = true;
            mm.uffd = None;
            mm.served = PageBits(Vec::new());
            mm.dropped = PageBits(Vec::new());
            self.generation += 1;
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
