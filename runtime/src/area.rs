//! The probe area: the one definition of the memory that the trap handler
//! (`trap.rs`), the jump trampolines, the SIGTRAP guard and the monitor
//! share. Every offset they use comes from the types here; the handler's
//! assembly takes them as `const` operands.
//!
//! Three mappings, each at the same address in the monitor and in every
//! process of the program:
//!
//! ```text
//!  code pages: private r-x, within ±2 GiB of the text, inherited on fork
//!  ┌──────────────┬───────────┬───────────────────┬─────┬────────────────────────┐
//!  │ handler code │ TrapTable │ TrapEntry × traps │ pad │ slot × sites           │
//!  │ (trap.rs)    │           │ (sorted by site)  │     │ (SLOT_BYTES each)      │
//!  └──────────────┴───────────┴───────────────────┴─────┴────────────────────────┘
//!  row page: the page after them; private rw, wiped on fork, each process's
//!  first touch answered by the monitor (see the fault server)
//!  ┌─────────────────────┐
//!  │ RowPage { pid, row }│
//!  └─────────────────────┘
//!  shared: a memfd mapped shared; survives a crash of the program, covers its forks
//!  ┌────────┬────────────────────────┬─────┬──────────────────────────────────────────────┐
//!  │ Header │ overflow counter×sites │ pad │ row × rows: pid, pad │ block × slots          │
//!  └────────┴────────────────────────┴─────┴──────────────────────────────────────────────┘
//!   a block: hits × sites, padded to a power of two (at least a cache line);
//!   rows and blocks start on a cache line; the mapping is left out of core dumps
//!   then, when probes are traced, the event ring ([`crate::events`]) on a
//!   page of its own, at the offset `Header::events` gives (0 = absent);
//!   (to come: per-thread state, at `Header::threads`)
//! ```
//!
//! A hit goes in its process's row, found through the row page; a process
//! beyond the rows (or one whose row page says none) counts in the site's
//! overflow counter. Within the row, a jump hit counts in the block of its
//! stack slot ([`stack_slot`]): threads run on different stacks, so threads
//! hammering one probe mostly increment different cache lines, and the
//! `lock inc` stays uncontended. Two threads that share a slot only share
//! a line: every increment is atomic, so totals stay exact whatever the
//! slot. An `int3` hit counts in block 0. Sites are numbered in one order
//! for all three: out-of-line slot
//! `i`, overflow counter `i` and row column `i` are site `i`'s.

#![allow(unsafe_code)]

use std::mem::{offset_of, size_of};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::events::{Ring, RingLayout};
use crate::PAGE_SIZE;

/// The layout's version, in [`Header::version`]; bumped whenever anything
/// here moves.
pub const VERSION: u64 = 2;

/// Bytes of one out-of-line slot or trampoline.
pub const SLOT_BYTES: usize = 128;

/// Processes whose hits are counted one by one; hits of processes beyond
/// that count only in the totals.
pub const ROWS: usize = 256;

/// Most blocks of counters in a process's row (one per stack slot).
pub const MAX_STACK_SLOTS: usize = 1024;

/// Stack slots per CPU, before rounding up to a power of two: threads that
/// run at once (at most one per CPU) then rarely share a slot, even when
/// their stacks lie at random (about `T²/2` pairs over the slots share
/// one: at 64 CPUs, 1024 slots, about 2 pairs).
pub const STACK_SLOTS_PER_CPU: usize = 16;

/// Bytes the rows may take in all; beyond that, fewer slots (down to one:
/// threads then share their process's counters, as before slots).
pub const ROWS_BUDGET: usize = 1 << 30;

/// A stack slot is chosen by the stack pointer's bits from this one up: a
/// thread's stack stays within one or two 64 KiB granules while it
/// hammers a function, and two threads' stacks never share a granule
/// unless they are smaller than it.
pub const STACK_GRANULE_SHIFT: u32 = 16;

/// Multiplier of the slot hash (Fibonacci hashing: 2^32 / golden ratio),
/// which spreads granules that are a fixed stride apart, as thread stacks
/// often are, over the slots.
pub const STACK_SLOT_HASH: u32 = 0x9e37_79b1;

/// Bytes of a cache line: rows and blocks start on one.
pub const LINE_BYTES: usize = 64;

/// The stack slot, among `1 << bits`, of a hit with stack pointer `sp`, as
/// the trampolines compute it:
/// `((sp >> STACK_GRANULE_SHIFT) as u32 * STACK_SLOT_HASH) >> (32 - bits)`.
#[must_use]
pub fn stack_slot(sp: u64, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    let granule = (sp >> STACK_GRANULE_SHIFT) as u32;
    (granule.wrapping_mul(STACK_SLOT_HASH) >> (32 - bits)) as usize
}

/// Start of the shared mapping. Written by the monitor before the program
/// starts, except for the counters and the program's action.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`VERSION`].
    pub version: AtomicU64,
    /// Number of probe sites: the length of the overflow counters and of a row's hits.
    pub sites: AtomicU64,
    /// Number of per-process rows.
    pub rows: AtomicU64,
    /// Traps that were no probe hit (the program's own `int3`, a SIGTRAP sent to it).
    pub stray: AtomicU64,
    /// The program's own SIGTRAP sigaction (handler, flags, restorer,
    /// mask), which the guard records in place of installing it; the
    /// handler passes stray traps to it.
    pub program_action: [AtomicU64; 4],
    /// Reserved: offset from the header of per-thread state (0: none).
    pub threads: AtomicU64,
    /// Offset from the header of the event ring (0: none; see
    /// [`crate::events`]).
    pub events: AtomicU64,
    /// Stack slots (blocks) in a row.
    pub slots: AtomicU64,
    /// The per-site overflow counters start here.
    pub overflow: [AtomicU64; 0],
}

/// The start of a per-process row; `hits` starts [`STACK_SLOTS`] blocks of
/// one counter per site each (see [`SharedLayout::block_bytes`]).
#[repr(C)]
pub struct RowStart {
    /// The process (0: the row is free).
    pub pid: u64,
    /// Keeps the blocks off the line of the pid, which the monitor writes.
    pub pad: [u64; 7],
    /// Block 0's hits of site 0, 1, … start here, on a cache line.
    pub hits: [u64; 0],
}

/// The row page's words, written by the monitor for each process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowPage {
    /// The process the page was answered for.
    pub pid: u64,
    /// Address of its row in the shared mapping (0: none, count in the overflow counters).
    pub row: u64,
}

/// The trap table, right after the handler's code in the code pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapTable {
    /// Number of entries.
    pub count: u64,
    /// Address of the shared mapping's [`Header`].
    pub shared: u64,
    /// Address of the [`RowPage`].
    pub row_page: u64,
    /// Address of the event routine (0: no site is traced), which the
    /// handler calls for an entry whose [`TrapEntry::index`] has
    /// [`ENTRY_TRACED`] set.
    pub emit: u64,
    /// Address of a second table (0: none): the shared objects', whose
    /// entries, in no order, are added while the program runs; the handler
    /// looks there for a trap that is not in this one.
    pub objects: u64,
    /// The entries start here.
    pub entries: [TrapEntry; 0],
}

/// One `int3` site, as the trap handler finds it (entries sorted by `site`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapEntry {
    /// Runtime address of the `int3`.
    pub site: u64,
    /// Runtime address of its out-of-line slot, where the handler resumes.
    pub slot: u64,
    /// Its site number (overflow counter, row column) in the low 24 bits;
    /// for a traced site, its `str` arguments' mask above them and
    /// [`ENTRY_TRACED`]: the low 32 bits are what the event routine takes
    /// in `edx`.
    pub index: u64,
}

/// Bits of [`TrapEntry::index`] that are the site number.
pub const ENTRY_SITE_BITS: u32 = 24;
/// The bit of [`TrapEntry::index`] that says the site is traced.
pub const ENTRY_TRACED: u32 = 32;

// The offsets the handler's assembly and the trampolines use.

/// [`TrapTable::count`].
pub const TABLE_COUNT: usize = offset_of!(TrapTable, count);
/// [`TrapTable::shared`].
pub const TABLE_SHARED: usize = offset_of!(TrapTable, shared);
/// [`TrapTable::row_page`].
pub const TABLE_ROW_PAGE: usize = offset_of!(TrapTable, row_page);
/// [`TrapTable::emit`].
pub const TABLE_EMIT: usize = offset_of!(TrapTable, emit);
/// [`TrapTable::objects`].
pub const TABLE_OBJECTS: usize = offset_of!(TrapTable, objects);
/// [`TrapTable::entries`].
pub const TABLE_ENTRIES: usize = offset_of!(TrapTable, entries);
/// Bytes of one [`TrapEntry`].
pub const ENTRY_BYTES: usize = size_of::<TrapEntry>();
/// [`TrapEntry::site`].
pub const ENTRY_SITE: usize = offset_of!(TrapEntry, site);
/// [`TrapEntry::slot`].
pub const ENTRY_SLOT: usize = offset_of!(TrapEntry, slot);
/// [`TrapEntry::index`].
pub const ENTRY_INDEX: usize = offset_of!(TrapEntry, index);
/// [`RowPage::row`].
pub const ROW_PAGE_ROW: usize = offset_of!(RowPage, row);
/// Offset of [`RowPage::pid`].
pub const ROW_PAGE_PID: usize = offset_of!(RowPage, pid);
/// [`RowStart::hits`]: site `i`'s hits in stack slot `s` are at
/// `row + ROW_HITS + (s << block_shift) + 8 * i` (`int3` hits: slot 0).
pub const ROW_HITS: usize = offset_of!(RowStart, hits);
/// [`Header::stray`].
pub const SHARED_STRAY: usize = offset_of!(Header, stray);
/// [`Header::program_action`]'s first word: the program's handler.
pub const SHARED_PROGRAM_HANDLER: usize = offset_of!(Header, program_action);
/// [`Header::overflow`]: site `i`'s overflow counter is at `shared + SHARED_OVERFLOW + 8 * i`.
pub const SHARED_OVERFLOW: usize = offset_of!(Header, overflow);

/// Types whose bytes are their `u64` fields in order, with no padding.
///
/// # Safety
/// `#[repr(C)]` with only `u64` fields (or zero-length arrays of such types).
unsafe trait Words: Sized {
    fn bytes(&self) -> &[u8] {
        // SAFETY: by the trait's contract every byte is part of an initialised u64.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}
// SAFETY: repr(C), four u64 and a zero-length array of TrapEntry.
unsafe impl Words for TrapTable {}
// SAFETY: repr(C), three u64.
unsafe impl Words for TrapEntry {}

/// Where things are in the shared mapping for `sites` sites, `rows` rows
/// and `slots` stack slots per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedLayout {
    /// Probe sites.
    pub sites: usize,
    /// Per-process rows.
    pub rows: usize,
    /// Stack slots (blocks) per row: a power of two.
    pub slots: usize,
    /// The event ring after the rows (none by default).
    pub ring: RingLayout,
    /// Functions whose calls are timed (`--latency`): one
    /// [`crate::latency::Stats`] each, after the ring.
    pub latency: usize,
}

impl SharedLayout {
    /// The layout for a machine of `cpus` CPUs: [`STACK_SLOTS_PER_CPU`]
    /// slots per CPU, rounded up to a power of two, at most
    /// [`MAX_STACK_SLOTS`], and fewer while the rows would take more than
    /// [`ROWS_BUDGET`] (their pages are only used where threads hit, but
    /// the mapping counts in the program's address space).
    #[must_use]
    pub fn new(sites: usize, rows: usize, cpus: usize) -> SharedLayout {
        let mut l = SharedLayout {
            sites,
            rows,
            slots: (STACK_SLOTS_PER_CPU * cpus.max(1))
                .next_power_of_two()
                .min(MAX_STACK_SLOTS),
            ring: RingLayout::default(),
            latency: 0,
        };
        while l.slots > 1 && l.rows * l.row_bytes() > ROWS_BUDGET {
            l.slots /= 2;
        }
        l
    }

    /// Offset of site `i`'s overflow counter.
    #[must_use]
    pub fn overflow(&self, i: usize) -> usize {
        assert!(i < self.sites);
        SHARED_OVERFLOW + 8 * i
    }

    /// log2 of [`SharedLayout::slots`].
    #[must_use]
    pub fn slot_bits(&self) -> u32 {
        self.slots.trailing_zeros()
    }

    /// Bytes of one block: one counter per site, padded to a power of two
    /// (at least a cache line), so that a trampoline finds its slot's block
    /// with a shift.
    #[must_use]
    pub fn block_bytes(&self) -> usize {
        (8 * self.sites).next_power_of_two().max(LINE_BYTES)
    }

    /// log2 of [`SharedLayout::block_bytes`].
    #[must_use]
    pub fn block_shift(&self) -> u32 {
        self.block_bytes().trailing_zeros()
    }

    /// Offset of stack slot `s`'s block from the start of a row.
    #[must_use]
    pub fn block(&self, s: usize) -> usize {
        assert!(s < self.slots);
        ROW_HITS + s * self.block_bytes()
    }

    /// Bytes of one row: the pid and its line, then a block per stack slot.
    #[must_use]
    pub fn row_bytes(&self) -> usize {
        ROW_HITS + self.slots * self.block_bytes()
    }

    /// Offset of row 0: after the overflow counters, on a cache line.
    fn rows_start(&self) -> usize {
        (SHARED_OVERFLOW + 8 * self.sites).next_multiple_of(LINE_BYTES)
    }

    /// Offset of row `r`.
    #[must_use]
    pub fn row(&self, r: usize) -> usize {
        assert!(r < self.rows);
        self.rows_start() + r * self.row_bytes()
    }

    /// The same with an event ring laid out as `ring`.
    #[must_use]
    pub fn with_ring(self, ring: RingLayout) -> SharedLayout {
        SharedLayout { ring, ..self }
    }

    /// Offset of the event ring: after the rows, on a page of its own.
    #[must_use]
    pub fn ring_start(&self) -> usize {
        (self.rows_start() + self.rows * self.row_bytes()).next_multiple_of(PAGE_SIZE as usize)
    }

    /// The same with statistics for `functions` timed functions.
    #[must_use]
    pub fn with_latency(self, functions: usize) -> SharedLayout {
        SharedLayout {
            latency: functions,
            ..self
        }
    }

    /// Offset of the latency statistics: after the rows and the ring, on
    /// a cache line.
    #[must_use]
    pub fn latency_start(&self) -> usize {
        let end = if self.ring.is_empty() {
            self.rows_start() + self.rows * self.row_bytes()
        } else {
            self.ring_start() + self.ring.len()
        };
        end.next_multiple_of(LINE_BYTES)
    }

    /// Bytes used (the mapping is this, rounded up to pages).
    #[must_use]
    pub fn len(&self) -> usize {
        self.latency_start() + self.latency * crate::latency::STATS_BYTES
    }

    /// Whether there is nothing past the header.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sites == 0 && self.rows == 0
    }
}

/// The shared mapping: an anonymous memfd (never a path), mapped by the
/// monitor before the fork, so the program and all its forks share it at
/// the same address.
#[derive(Debug)]
pub struct Shared {
    addr: u64,
    layout: SharedLayout,
    _fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// A fresh zeroed mapping laid out as `layout`, its header written.
    pub fn new(layout: SharedLayout) -> Result<Shared, Errno> {
        let fd = rustix::fs::memfd_create("uprobe-exec-counters", rustix::fs::MemfdFlags::CLOEXEC)?;
        let bytes = mapped_len(&layout);
        rustix::fs::ftruncate(&fd, bytes as u64)?;
        // SAFETY: a new shared mapping of our own memfd, at a kernel-chosen address.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        // Out of core dumps (the program's and ours), which would otherwise
        // hold every row's blocks, written or not.
        // SAFETY: advice only, on the whole of our new mapping.
        unsafe { rustix::mm::madvise(p, bytes, rustix::mm::Advice::LinuxDontDump) }?;
        let shared = Shared {
            addr: p as u64,
            layout,
            _fd: fd,
        };
        let h = shared.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.sites.store(layout.sites as u64, Ordering::Relaxed);
        h.rows.store(layout.rows as u64, Ordering::Relaxed);
        h.slots.store(layout.slots as u64, Ordering::Relaxed);
        if !layout.ring.is_empty() {
            h.events
                .store(layout.ring_start() as u64, Ordering::Relaxed);
        }
        for i in 0..layout.latency {
            shared.stats(i).min_ns.store(u64::MAX, Ordering::Relaxed);
        }
        Ok(shared)
    }

    /// The event ring's pages, (start, length), if there is a ring: for
    /// the stage to [`populate`] in the program, so that no traced hit
    /// waits for a page (a page first touched by a hit costs microseconds,
    /// thirty times what writing the record does; bench §6). Nothing else
    /// populates them: a fork does not copy a shared mapping's page tables
    /// (the program's children fault the pages in as they write), and the
    /// monitor's drain reads them as they fill.
    #[must_use]
    pub fn ring_pages(&self) -> Option<(u64, u64)> {
        let l = self.layout.ring;
        (!l.is_empty()).then(|| {
            (
                self.addr + self.layout.ring_start() as u64,
                l.len().next_multiple_of(PAGE_SIZE as usize) as u64,
            )
        })
    }

    /// Where things are.
    #[must_use]
    pub fn layout(&self) -> SharedLayout {
        self.layout
    }

    /// Address of the header (the same in the program, which inherits the mapping).
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The mapping: (start, end).
    #[must_use]
    pub fn range(&self) -> (u64, u64) {
        (self.addr, self.addr + mapped_len(&self.layout) as u64)
    }

    /// The header.
    #[must_use]
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (page aligned, at least
        // its size, zero-initialised); its fields are atomics.
        unsafe { &*(self.addr as *const Header) }
    }

    /// The word at `offset` (a multiple of 8 inside the layout).
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset & 7 == 0 && offset + 8 <= self.layout.len());
        // SAFETY: in bounds of our live mapping (asserted), 8-aligned;
        // the program updates it with `lock inc`, so atomics are the right view.
        unsafe { &*((self.addr + offset as u64) as *const AtomicU64) }
    }

    /// Address of site `i`'s overflow counter.
    #[must_use]
    pub fn overflow_addr(&self, i: usize) -> u64 {
        self.addr + self.layout.overflow(i) as u64
    }

    /// Hits of site `i` in processes without a row.
    #[must_use]
    pub fn overflow(&self, i: usize) -> u64 {
        self.word(self.layout.overflow(i)).load(Ordering::Relaxed)
    }

    /// Address of row `r`.
    #[must_use]
    pub fn row_addr(&self, r: usize) -> u64 {
        self.addr + self.layout.row(r) as u64
    }

    /// The process of row `r` (0: free).
    #[must_use]
    pub fn row_pid(&self, r: usize) -> u64 {
        self.word(self.layout.row(r)).load(Ordering::Relaxed)
    }

    /// Gives row `r` to process `pid`.
    pub fn set_row_pid(&self, r: usize, pid: u64) {
        self.word(self.layout.row(r)).store(pid, Ordering::Relaxed);
    }

    /// Hits of each site in row `r`: the sum over its stack slots.
    /// Blocks no thread has touched are holes of the memfd: they are
    /// skipped without reading them (which would allocate their pages),
    /// one `SEEK_DATA` per block that has any.
    #[must_use]
    pub fn row_hits(&self, r: usize) -> Vec<u64> {
        let l = self.layout;
        let mut hits = vec![0; l.sites];
        let blocks = l.row(r) + l.block(0);
        let mut s = 0;
        while s < l.slots {
            let Some(data) = self.next_data(blocks + s * l.block_bytes()) else {
                break;
            };
            // The block holding that byte (or the next, when it is in the
            // padding of one); a block before `s` has no data.
            s = s.max(data.saturating_sub(blocks) / l.block_bytes());
            if s >= l.slots {
                break;
            }
            let block = blocks + s * l.block_bytes();
            for (i, h) in hits.iter_mut().enumerate() {
                *h += self.word(block + 8 * i).load(Ordering::Relaxed);
            }
            s += 1;
        }
        hits
    }

    /// The first offset at or after `at` in a page that has been written
    /// (`at` itself when the kernel cannot tell); None: none.
    fn next_data(&self, at: usize) -> Option<usize> {
        match rustix::fs::seek(&self._fd, rustix::fs::SeekFrom::Data(at as u64)) {
            Ok(data) => Some(usize::try_from(data).unwrap_or(usize::MAX).max(at)),
            // ENXIO: no data from `at` to the end of the file.
            Err(Errno::NXIO) => None,
            Err(_) => Some(at),
        }
    }

    /// Address of function `i`'s latency statistics.
    #[must_use]
    pub fn stats_addr(&self, i: usize) -> u64 {
        assert!(i < self.layout.latency);
        self.addr + (self.layout.latency_start() + i * crate::latency::STATS_BYTES) as u64
    }

    /// Function `i`'s latency statistics.
    #[must_use]
    pub fn stats(&self, i: usize) -> &crate::latency::Stats {
        // SAFETY: in bounds of our live mapping (asserted by `stats_addr`),
        // 64-byte aligned, only ever accessed through atomics.
        unsafe { &*(self.stats_addr(i) as *const crate::latency::Stats) }
    }

    /// The event ring, if the layout has one.
    #[must_use]
    pub fn ring(&self) -> Option<Ring> {
        let l = self.layout.ring;
        // SAFETY: the ring's range lies inside our live mapping (the
        // layout's length covers it), zeroed at creation, page aligned;
        // it lives as long as `self`, and only the ring protocol touches it.
        (!l.is_empty()).then(|| unsafe { Ring::at(self.addr + self.layout.ring_start() as u64, l) })
    }

    /// Traps that were no probe hit.
    #[must_use]
    pub fn stray(&self) -> u64 {
        self.header().stray.load(Ordering::Relaxed)
    }

    /// The program's own SIGTRAP sigaction, as the guard keeps it.
    #[must_use]
    pub fn program_action(&self) -> &[AtomicU64; 4] {
        &self.header().program_action
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let (a, b) = self.range();
        // SAFETY: our own mapping, no longer used.
        let _ = unsafe { rustix::mm::munmap(a as *mut _, (b - a) as usize) };
    }
}

fn mapped_len(layout: &SharedLayout) -> usize {
    layout.len().next_multiple_of(PAGE_SIZE as usize)
}

/// Where things are in the code pages and the row page, from the start of
/// the area, for `slot_count` slots (one per probe site, then one per
/// neighbour evicted to make room for a short jump) and `traps` `int3`
/// sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    /// The handler's code (the table follows it): `trap::code()`.
    pub handler_code: &'static [u8],
    /// Offset of the handler's `rt_sigreturn` restorer in it.
    pub restorer: usize,
    /// Slots: probe sites first, then evicted neighbours.
    pub slot_count: usize,
    /// `int3` sites (one trap-table entry each).
    pub traps: usize,
    /// Bytes kept for the event routine (0: no site is traced), which
    /// the traced sites' trampolines call.
    pub emit_bytes: usize,
}

impl CodeLayout {
    /// The layout for this handler (`trap::layout` gives the one with this
    /// build's trap handler).
    #[must_use]
    pub fn new(
        handler_code: &'static [u8],
        restorer: usize,
        slot_count: usize,
        traps: usize,
    ) -> CodeLayout {
        CodeLayout {
            handler_code,
            restorer,
            slot_count,
            traps,
            emit_bytes: 0,
        }
    }

    /// The same with `bytes` kept for the event routine.
    #[must_use]
    pub fn with_emit(self, bytes: usize) -> CodeLayout {
        CodeLayout {
            emit_bytes: bytes,
            ..self
        }
    }

    /// Offset of the event routine: after the trap table.
    #[must_use]
    pub fn emit(&self) -> usize {
        (self.table() + TABLE_ENTRIES + ENTRY_BYTES * self.traps).next_multiple_of(16)
    }

    /// Offset of the SIGTRAP handler.
    #[must_use]
    pub fn handler(&self) -> usize {
        0
    }

    /// Offset of its `rt_sigreturn` restorer.
    #[must_use]
    pub fn restorer(&self) -> usize {
        self.restorer
    }

    /// Offset of the [`TrapTable`].
    #[must_use]
    pub fn table(&self) -> usize {
        self.handler_code.len()
    }

    /// Offset of the first slot: after the event routine.
    #[must_use]
    pub fn slots(&self) -> usize {
        (self.emit() + self.emit_bytes).next_multiple_of(16)
    }

    /// Offset of slot `i` (site `i`'s, for a site).
    #[must_use]
    pub fn slot(&self, i: usize) -> usize {
        assert!(i < self.slot_count);
        self.slots() + i * SLOT_BYTES
    }

    /// Bytes of code and data (mapped read+exec).
    #[must_use]
    pub fn code_len(&self) -> usize {
        self.slots() + self.slot_count * SLOT_BYTES
    }

    /// Offset of the row page (the page after the code).
    #[must_use]
    pub fn row_page(&self) -> usize {
        self.code_len().next_multiple_of(PAGE_SIZE as usize)
    }

    /// Bytes of the whole area, row page included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.row_page() + PAGE_SIZE as usize
    }

    /// Whether the area has no slot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slot_count == 0
    }

    /// The code pages' bytes ([`CodeLayout::code_len`] of them), for an
    /// area at `base`: the handler, its table (the shared mapping's, the
    /// row page's and the event routine's addresses, and `entries`, sorted
    /// here), the event routine `emit`
    /// (at most [`CodeLayout::emit_bytes`]), and each site's slot
    /// (`slots[i]`, at most [`SLOT_BYTES`]); `int3` filler elsewhere.
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn image(
        &self,
        base: u64,
        shared: u64,
        row_page: u64,
        mut entries: Vec<TrapEntry>,
        emit: &[u8],
        slots: &[Vec<u8>],
        objects: u64,
    ) -> Vec<u8> {
        assert_eq!(entries.len(), self.traps);
        assert_eq!(slots.len(), self.slot_count);
        assert!(emit.len() <= self.emit_bytes);
        entries.sort_by_key(|e| e.site);
        let mut out = vec![0xcc; self.code_len()];
        out[..self.handler_code.len()].copy_from_slice(self.handler_code);
        let table = TrapTable {
            count: entries.len() as u64,
            shared,
            row_page,
            emit: if emit.is_empty() {
                0
            } else {
                base + self.emit() as u64
            },
            objects,
            entries: [],
        };
        let at = self.table();
        out[at..at + TABLE_ENTRIES].copy_from_slice(table.bytes());
        for (k, e) in entries.iter().enumerate() {
            let at = self.table() + TABLE_ENTRIES + k * ENTRY_BYTES;
            out[at..at + ENTRY_BYTES].copy_from_slice(e.bytes());
        }
        out[self.emit()..][..emit.len()].copy_from_slice(emit);
        for (i, code) in slots.iter().enumerate() {
            assert!(code.len() <= SLOT_BYTES);
            out[self.slot(i)..][..code.len()].copy_from_slice(code);
        }
        out
    }
}

/// Maps `[start, start + len)` of a shared mapping of the calling
/// process now, allocating the pages that have none yet
/// (`MADV_POPULATE_READ`: a read fault maps a shared memfd page writable
/// too, and costs a quarter of a write fault here). Best effort: before
/// Linux 5.14 the pages are faulted in as they are touched.
/// Async-signal-safe (one system call).
pub fn populate(start: u64, len: u64) {
    const MADV_POPULATE_READ: i32 = 22;
    // SAFETY: advice only; it changes no page's contents.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, len as usize, MADV_POPULATE_READ) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_the_ones_the_assembly_expects() {
        // The handler's assembly indexes with these; every field is a word.
        assert_eq!(TABLE_COUNT, 0);
        assert_eq!(TABLE_SHARED, 8);
        assert_eq!(TABLE_ROW_PAGE, 16);
        assert_eq!(TABLE_EMIT, 24);
        assert_eq!(TABLE_OBJECTS, 32);
        assert_eq!(TABLE_ENTRIES, 40);
        assert_eq!(size_of::<TrapTable>(), TABLE_ENTRIES);
        assert_eq!((ENTRY_SITE, ENTRY_SLOT, ENTRY_INDEX), (0, 8, 16));
        assert_eq!(ENTRY_BYTES, 24);
        // The monitor answers a process's first touch of the row page with
        // its pid in word 0 and its row in word 1.
        assert_eq!(offset_of!(RowPage, pid), 0);
        assert_eq!(ROW_PAGE_ROW, 8);
        assert_eq!(offset_of!(RowStart, pid), 0);
        assert_eq!(offset_of!(RowStart, pad), 8);
        assert_eq!(ROW_HITS, LINE_BYTES);
        assert_eq!(size_of::<RowStart>(), ROW_HITS);
        assert_eq!(offset_of!(Header, version), 0);
        assert_eq!(SHARED_STRAY, 24);
        assert_eq!(SHARED_PROGRAM_HANDLER, 32);
        assert_eq!(offset_of!(Header, threads), 64);
        assert_eq!(offset_of!(Header, events), 72);
        assert_eq!(offset_of!(Header, slots), 80);
        assert_eq!(SHARED_OVERFLOW, 88);
        assert_eq!(size_of::<Header>(), SHARED_OVERFLOW);
    }

    #[test]
    fn shared_rows_follow_the_counters() {
        let l = SharedLayout {
            sites: 3,
            rows: 2,
            slots: 64,
            ring: RingLayout::default(),
            latency: 0,
        };
        assert_eq!(l.overflow(0), SHARED_OVERFLOW);
        assert_eq!(l.overflow(2), SHARED_OVERFLOW + 16);
        // Three counters fill part of a line; blocks and rows start on lines.
        assert_eq!(l.block_bytes(), 64);
        assert_eq!(l.block(0), ROW_HITS);
        assert_eq!(l.block(1), ROW_HITS + 64);
        assert_eq!(l.row_bytes(), ROW_HITS + 64 * 64);
        assert_eq!(
            l.row(0),
            128,
            "after the header and overflow counters (112 bytes)"
        );
        assert_eq!(l.row(1), 128 + l.row_bytes());
        assert_eq!(l.len(), 128 + 2 * l.row_bytes());
        let l = SharedLayout {
            sites: 9,
            rows: 1,
            slots: 2,
            ring: RingLayout::default(),
            latency: 0,
        };
        assert_eq!(l.block_bytes(), 128);
        assert_eq!(l.block_shift(), 7);
        let l = SharedLayout {
            sites: 939,
            rows: 1,
            slots: 1,
            ring: RingLayout::default(),
            latency: 0,
        };
        assert_eq!(l.block_bytes(), 8192);
    }

    #[test]
    fn slots_follow_the_cpus_within_the_budget() {
        let slots = |sites, cpus| SharedLayout::new(sites, ROWS, cpus).slots;
        assert_eq!(slots(10, 2), 32);
        assert_eq!(slots(10, 3), 64);
        assert_eq!(slots(10, 64), MAX_STACK_SLOTS);
        // python3.11's Py*: 939 sites, 8 KiB blocks, 256 rows.
        assert_eq!(slots(939, 64), 256);
        assert!(SharedLayout::new(939, ROWS, 64).len() <= ROWS_BUDGET + 8192);
        // Huge programs fall back to one block per process.
        assert_eq!(slots(1 << 20, 64), 1);
        assert_eq!(SharedLayout::new(10, ROWS, 2).slot_bits(), 5);
    }

    #[test]
    fn stack_slots_spread_thread_stacks() {
        // One granule, one slot.
        let sp = 0x7f12_3456_7000_u64;
        assert_eq!(stack_slot(sp, 10), stack_slot(sp | 0xfff8, 10));
        assert!(stack_slot(u64::MAX, 10) < 1024);
        assert_eq!(stack_slot(sp, 0), 0);
        // glibc's thread stacks: 8 MiB plus a guard page apart, downwards.
        // 64 of them (64 CPUs: 1024 slots) land in 64 slots.
        let stride = (8 << 20) + 4096;
        let slots: std::collections::BTreeSet<usize> =
            (0..64).map(|t| stack_slot(sp - t * stride, 10)).collect();
        assert_eq!(slots.len(), 64);
        // Two of them (2 CPUs: 32 slots) in two.
        assert_ne!(stack_slot(sp, 5), stack_slot(sp - stride, 5));
    }

    #[test]
    fn shared_mapping_reads_back_what_is_written() {
        let s = Shared::new(SharedLayout {
            sites: 2,
            rows: 4,
            slots: 8,
            ring: RingLayout::new(16, 1, 2),
            latency: 3,
        })
        .unwrap();
        // Latency statistics after the ring, on a line, the minimum unset.
        assert!(
            s.stats_addr(0) >= s.ring().unwrap().addr() + s.ring().unwrap().layout().len() as u64
        );
        assert_eq!(s.stats_addr(0) % 64, 0);
        assert_eq!(s.stats(2).snapshot().min_ns, 0, "nothing timed");
        assert_eq!(s.stats(2).min_ns.load(Ordering::Relaxed), u64::MAX);
        assert!(s.stats_addr(2) + 576 <= s.addr() + s.layout().len() as u64);
        // The ring: after the rows, on its own page, found through the header.
        let ring = s.ring().expect("a ring");
        assert_eq!(ring.addr() % PAGE_SIZE, 0);
        assert_eq!(
            s.header().events.load(Ordering::Relaxed),
            ring.addr() - s.addr()
        );
        assert!(ring.addr() >= s.row_addr(3) + s.layout().row_bytes() as u64);
        assert!(s.range().1 >= ring.addr() + ring.layout().len() as u64);
        assert_eq!(s.header().version.load(Ordering::Relaxed), VERSION);
        assert_eq!(s.header().sites.load(Ordering::Relaxed), 2);
        assert_eq!(s.header().rows.load(Ordering::Relaxed), 4);
        s.set_row_pid(3, 42);
        assert_eq!(s.row_pid(3), 42);
        assert_eq!(s.row_addr(3), s.addr() + s.layout().row(3) as u64);
        // What a trampoline's `lock inc [row + ROW_HITS + slot * block + 8 * i]` hits.
        assert_eq!(s.row_hits(3), vec![0, 0]);
        let word = (s.row_addr(3) + ROW_HITS as u64 + 8) as *const AtomicU64;
        // SAFETY: inside the mapping, 8-aligned.
        unsafe { &*word }.fetch_add(1, Ordering::Relaxed);
        let block = s.row_addr(3) + s.layout().block(7) as u64;
        // SAFETY: inside the mapping, 8-aligned.
        unsafe { &*((block + 8) as *const AtomicU64) }.fetch_add(2, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { &*(block as *const AtomicU64) }.fetch_add(4, Ordering::Relaxed);
        assert_eq!(s.row_hits(3), vec![4, 3], "summed over the slots");
        assert_eq!(s.row_hits(2), vec![0, 0]);
        let word = s.overflow_addr(1) as *const AtomicU64;
        // SAFETY: inside the mapping, 8-aligned.
        unsafe { &*word }.fetch_add(5, Ordering::Relaxed);
        assert_eq!(s.overflow(1), 5);
        let stray = (s.addr() + SHARED_STRAY as u64) as *const AtomicU64;
        // SAFETY: inside the mapping, 8-aligned.
        unsafe { &*stray }.fetch_add(1, Ordering::Relaxed);
        assert_eq!(s.stray(), 1);
        let (a, b) = s.range();
        assert!(b - a >= s.layout().len() as u64);
    }

    #[test]
    fn code_image_puts_table_entries_and_slots_where_the_layout_says() {
        static HANDLER: [u8; 40] = [0xf4; 40];
        let l = CodeLayout::new(&HANDLER, 8, 3, 2);
        assert_eq!(l.slots() % 16, 0);
        assert!(l.slots() >= l.table() + TABLE_ENTRIES + 2 * ENTRY_BYTES);
        let entries = vec![
            TrapEntry {
                site: 0x2000,
                slot: 0x1100,
                index: 2,
            },
            TrapEntry {
                site: 0x1000,
                slot: 0x1000,
                index: 0,
            },
        ];
        let slots = vec![vec![0x90], vec![0x90, 0x90], vec![0xc3]];
        let img = l.image(0x1000, 0x5000, 0x6000, entries, &[], &slots, 0);
        assert_eq!(img.len(), l.code_len());
        let word = |at: usize| u64::from_le_bytes(img[at..at + 8].try_into().unwrap());
        assert_eq!(&img[..l.handler_code.len()], &HANDLER);
        assert_eq!(word(l.table() + TABLE_COUNT), 2);
        assert_eq!(word(l.table() + TABLE_SHARED), 0x5000);
        assert_eq!(word(l.table() + TABLE_ROW_PAGE), 0x6000);
        let e0 = l.table() + TABLE_ENTRIES;
        assert_eq!(word(e0 + ENTRY_SITE), 0x1000, "sorted by site");
        assert_eq!(word(e0 + ENTRY_BYTES + ENTRY_INDEX), 2);
        assert_eq!(img[l.slot(2)], 0xc3);
        assert_eq!(&img[l.slot(1)..l.slot(1) + 3], &[0x90, 0x90, 0xcc]);
        assert_eq!(l.row_page() % PAGE_SIZE as usize, 0);
        assert!(l.row_page() >= l.code_len());
    }
}
