//! The shared objects' probe area: near the dynamic loader (so near the
//! objects it maps), it holds the mapping detour (see `probes::detour`),
//! the code of the objects' probes, written by the monitor while the
//! program runs, and the pages the detour and that code use.
//!
//! ```text
//!  +0            code: the detour, the routines, the trap table,   shared memfd, r-x
//!                the runs pages (one per slot), then each object's
//!                trampolines
//!  +CODE         request slots                                     shared memfd, rw
//!  +CODE+1 page  row page (pid, row): as the program's probe area's private, wiped on fork
//!  +CODE+2 pages doorbells, one page per request slot              private, wiped on fork
//! ```
//!
//! The code and the slots are one memfd, mapped shared before the fork (the
//! program inherits it) and a second time, writable, in the monitor only:
//! what the monitor writes there, every process of the program sees.

use std::os::fd::{AsFd, OwnedFd};

use memmap2::MmapMut;
use rustix::mm::ProtFlags;
use uprobe_runtime::PAGE_SIZE;

use super::{Draft, Reservation};
use crate::error::{Error, Result};
use crate::probes::detour::{self, Detour, SLOTS};

/// Bytes of code: the detour's page, the routines' page, the trap table,
/// then trampolines and slots (128 bytes a site).
const CODE: u64 = 32 << 20;

/// Pages of the objects' trap table (after the routines' page): room for
/// about 2700 int3 sites.
const TRAP_PAGES: u64 = 16;

/// Where the runs pages start (after the trap table): one per slot.
const RUNS_AT: u64 = (2 + TRAP_PAGES) * PAGE_SIZE;

/// Farthest a rel32 reaches, with a margin.
const REACH: u64 = (1 << 31) - (1 << 20);

/// A mapping request, as the detour wrote it in a slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The thread that holds the slot (0: free), as that thread sees it.
    pub tid: u32,
    /// The file descriptor mapped.
    pub fd: u32,
    /// Where the mapping is, its length (as asked) and file offset.
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
    /// The slot's request number.
    pub seq: u32,
    /// Which ring of the request: `detour::STEP_ASK` or `STEP_MAPPED`.
    pub step: u32,
    /// The file's device and inode, as the process's `fstat` gave them.
    pub dev: u64,
    pub ino: u64,
}

/// The area, mapped in the monitor (the program inherits it at the fork).
pub struct ObjectsArea {
    /// The whole area.
    pub reservation: Reservation,
    /// The detour's addresses.
    pub detour: Detour,
    /// The row page.
    pub row_page: u64,
    /// The doorbell pages: `[start, end)`.
    pub bells: (u64, u64),
    /// The monitor's writable view of the code and the request slots.
    view: MmapMut,
    /// The first free byte of code (offset), for the next object.
    next: u64,
    _memfd: OwnedFd,
}

impl ObjectsArea {
    /// Reserves the area near the interpreter of `draft`, maps it, and
    /// writes the detour for the `mmap` site at runtime address `site`.
    pub fn new(draft: &Draft, site: u64) -> Result<ObjectsArea> {
        let interp = draft
            .interp
            .as_ref()
            .expect("objects are served only for a dynamic program");
        let len = CODE + (2 + SLOTS as u64) * PAGE_SIZE;
        let lo = interp.reservation.addr();
        let fail = |what: &str, e: std::io::Error| Error::Layout {
            path: interp.image.path.clone(),
            what: what.into(),
            source: e,
        };
        let mut r = [
            lo.saturating_sub(len + (16 << 20)),
            interp.reservation.end() + (16 << 20),
        ]
        .into_iter()
        .filter_map(|hint| Reservation::anywhere(len, PAGE_SIZE, hint).ok())
        .find(|r| {
            r.end().abs_diff(lo) < REACH && r.addr().abs_diff(interp.reservation.end()) < REACH
        })
        .ok_or_else(|| Error::NoProbeRoom {
            path: interp.image.path.clone(),
        })?;
        let name = "uprobe-exec objects' probes";
        let flags = rustix::fs::MemfdFlags::CLOEXEC;
        // MFD_EXEC (Linux 6.3): needed where vm.memfd_noexec asks for it.
        let memfd = rustix::fs::memfd_create(name, flags | rustix::fs::MemfdFlags::EXEC)
            .or_else(|_| rustix::fs::memfd_create(name, flags))
            .map_err(|e| fail("memfd_create for the objects' probes", e.into()))?;
        rustix::fs::ftruncate(&memfd, CODE + PAGE_SIZE)
            .map_err(|e| fail("sizing the objects' probes", e.into()))?;
        let file = std::fs::File::from(memfd.try_clone().map_err(|e| fail("dup", e))?);
        let mut view = crate::sys::mm::map_own_memfd(&file)
            .map_err(|e| fail("mapping the objects' probes", e))?;
        r.map_shared(
            0,
            CODE + PAGE_SIZE,
            memfd.as_fd(),
            ProtFlags::READ | ProtFlags::EXEC,
        )
        .map_err(|e| fail("mapping the objects' probes", e))?;
        r.protect(
            CODE,
            PAGE_SIZE,
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
        )
        .map_err(|e| fail("protecting the request slots", e))?;
        r.map_private(CODE + PAGE_SIZE, (1 + SLOTS as u64) * PAGE_SIZE)
            .map_err(|e| fail("mapping the doorbells", e))?;
        r.wipe_on_fork(CODE + PAGE_SIZE, (1 + SLOTS as u64) * PAGE_SIZE)
            .map_err(|e| fail("MADV_WIPEONFORK on the doorbells", e))?;
        let base = r.addr();
        let name_at = PAGE_SIZE - 64;
        let d = Detour {
            site,
            at: base,
            requests: base + CODE,
            bells: base + CODE + 2 * PAGE_SIZE,
            runs: base + RUNS_AT,
            name: base + name_at,
        };
        let code = detour::encode(&d).map_err(|e| {
            fail(
                "assembling the mapping detour",
                std::io::Error::other(e.to_string()),
            )
        })?;
        assert!((code.len() as u64) < name_at);
        view[..code.len()].copy_from_slice(&code);
        let name = b"uprobe-exec served text\0";
        view[name_at as usize..name_at as usize + name.len()].copy_from_slice(name);
        // Request numbers start at 1: a doorbell page answered for a slot
        // nobody used yet (a stray touch) says 1, never a request's number
        // (2 on), nor 0, which says that the monitor is gone.
        for i in 0..SLOTS {
            let at = (CODE + i as u64 * detour::SLOT_BYTES + detour::slot::SEQ) as usize;
            view[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        }
        Ok(ObjectsArea {
            detour: d,
            row_page: base + CODE + PAGE_SIZE,
            bells: (d.bells, d.bells + SLOTS as u64 * PAGE_SIZE),
            reservation: r,
            view,
            // The detour's page, the routines', the trap table, the runs.
            next: RUNS_AT + SLOTS as u64 * PAGE_SIZE,
            _memfd: memfd,
        })
    }

    /// Where the event and latency routines of the objects' trampolines go:
    /// the second page, after the detour's.
    #[must_use]
    pub fn routines_at(&self) -> u64 {
        self.reservation.addr() + PAGE_SIZE
    }

    /// The objects' trap table (see `uprobe_runtime::area::TrapTable`),
    /// which the program's trap handler looks in for a trap not in its own.
    #[must_use]
    pub fn trap_table(&self) -> u64 {
        self.reservation.addr() + 2 * PAGE_SIZE
    }

    /// Fills the trap table's header: the shared counters at `shared`, and
    /// the event routine at `emit` (0: none), with no entry yet.
    pub fn init_traps(&mut self, shared: u64, emit: u64) {
        let table = uprobe_runtime::area::TrapTable {
            count: 0,
            shared,
            row_page: self.row_page,
            emit,
            objects: 0,
            entries: [],
        };
        let at = (2 * PAGE_SIZE) as usize;
        let words = [
            table.count,
            table.shared,
            table.row_page,
            table.emit,
            table.objects,
        ];
        for (k, w) in words.iter().enumerate() {
            self.view[at + 8 * k..at + 8 * k + 8].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Entries the trap table has room for still.
    #[must_use]
    pub fn traps_left(&self) -> usize {
        let cap = ((TRAP_PAGES * PAGE_SIZE) as usize - uprobe_runtime::area::TABLE_ENTRIES)
            / uprobe_runtime::area::ENTRY_BYTES;
        cap.saturating_sub(self.trap_count() as usize)
    }

    fn trap_count(&self) -> u64 {
        let at = (2 * PAGE_SIZE) as usize + uprobe_runtime::area::TABLE_COUNT;
        u64::from_le_bytes(self.view[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Adds `entry` to the trap table (room checked with [`traps_left`]):
    /// the entry first, then the count, so a handler reading the count
    /// reads only whole entries.
    ///
    /// [`traps_left`]: ObjectsArea::traps_left
    pub fn add_trap(&mut self, entry: &uprobe_runtime::area::TrapEntry) {
        use uprobe_runtime::area::{ENTRY_BYTES, TABLE_COUNT, TABLE_ENTRIES};
        let n = self.trap_count();
        let base = (2 * PAGE_SIZE) as usize;
        let at = base + TABLE_ENTRIES + n as usize * ENTRY_BYTES;
        for (k, w) in [entry.site, entry.slot, entry.index].iter().enumerate() {
            self.view[at + 8 * k..at + 8 * k + 8].copy_from_slice(&w.to_le_bytes());
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let c = base + TABLE_COUNT;
        self.view[c..c + 8].copy_from_slice(&(n + 1).to_le_bytes());
    }

    /// Takes `len` bytes of code room (128-byte aligned): its runtime
    /// address, or None when the area is full.
    pub fn take(&mut self, len: u64) -> Option<u64> {
        let at = self.next;
        let end = at.checked_add(len.next_multiple_of(128))?;
        if end > CODE {
            return None;
        }
        self.next = end;
        Some(self.reservation.addr() + at)
    }

    /// Writes `code` at runtime address `at` (room given by [`take`]).
    ///
    /// [`take`]: ObjectsArea::take
    pub fn write(&mut self, at: u64, code: &[u8]) {
        let off = (at - self.reservation.addr()) as usize;
        self.view[off..off + code.len()].copy_from_slice(code);
    }

    /// Writes `runs` (address, length) as the runs of the slot of doorbell
    /// page `bell` (at most `detour::MAX_RUNS`; see `Detour::runs`).
    pub fn set_runs(&mut self, bell: u64, runs: &[(u64, u64)]) {
        let Some(i) = bell
            .checked_sub(self.bells.0)
            .map(|o| (o / PAGE_SIZE) as usize)
            .filter(|&i| i < SLOTS)
        else {
            return;
        };
        let page = (RUNS_AT + i as u64 * PAGE_SIZE) as usize;
        let runs = &runs[..runs.len().min(detour::MAX_RUNS)];
        for (k, (a, l)) in runs.iter().enumerate() {
            let at = page + (detour::ANSWER_RUNS as usize) + 16 * k;
            self.view[at..at + 8].copy_from_slice(&a.to_le_bytes());
            self.view[at + 8..at + 16].copy_from_slice(&l.to_le_bytes());
        }
        let c = page + detour::ANSWER_COUNT as usize;
        self.view[c..c + 4].copy_from_slice(&(runs.len() as u32).to_le_bytes());
    }

    /// The request in the slot of doorbell page `bell`, as the detour
    /// wrote it (see `probes::detour::slot`).
    #[must_use]
    pub fn request(&self, bell: u64) -> Option<Request> {
        let i = (bell.checked_sub(self.bells.0)? / PAGE_SIZE) as usize;
        if i >= SLOTS {
            return None;
        }
        let at = (CODE + i as u64 * detour::SLOT_BYTES) as usize;
        let word = |o: u64, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&self.view[at + o as usize..at + o as usize + n]);
            u64::from_le_bytes(b)
        };
        Some(Request {
            tid: word(detour::slot::TID, 4) as u32,
            fd: word(detour::slot::FD, 4) as u32,
            addr: word(detour::slot::ADDR, 8),
            len: word(detour::slot::LEN, 8),
            offset: word(detour::slot::OFFSET, 8),
            seq: word(detour::slot::SEQ, 4) as u32,
            step: word(detour::slot::STEP, 4) as u32,
            dev: word(detour::slot::DEV, 8),
            ino: word(detour::slot::INO, 8),
        })
    }

    /// Frees the request slots held by threads that no longer exist (one
    /// killed while it waited for an answer): `alive(tid)` says. A slot is
    /// cleared only if it still holds that thread.
    pub fn free_dead_slots(&mut self, alive: impl Fn(u32) -> bool) {
        for i in 0..SLOTS {
            let off = (CODE + i as u64 * detour::SLOT_BYTES) as usize;
            let word = &self.view[off..off + 4];
            let tid = u32::from_le_bytes(word.try_into().expect("4 bytes"));
            if tid != 0 && !alive(tid) {
                let cell = crate::sys::mm::atomic_u32(&self.view[off..off + 4]);
                let _ = cell.compare_exchange(
                    tid,
                    0,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    }

    /// What a rel32 must reach from a site: `[start, end)` of the area
    /// (see [`within_reach`]).
    #[must_use]
    pub fn bounds(&self) -> (u64, u64) {
        (self.reservation.addr(), self.reservation.end())
    }
}

/// Whether a rel32 at `from` reaches all of `[start, end)`.
#[must_use]
pub fn within_reach((start, end): (u64, u64), from: u64) -> bool {
    start.abs_diff(from) < REACH && end.abs_diff(from) < REACH
}

impl ObjectsArea {}
