//! Latency (`--latency`): how long each call of a function takes, from its
//! entry to its return, measured without touching the program's stack.
//!
//! The entry's trampoline pushes a frame (the stack pointer at the entry,
//! which points at the return address, the time stamp counter, the
//! function) on its thread's *timing stack*; the trampoline of each of the
//! function's exits (a `ret`, or a `jmp` out of it: a tail call) pops it,
//! at the same stack pointer, and adds the duration to the function's
//! [`Stats`]. The return address is never replaced: the unwinder, a
//! `longjmp`, `backtrace()`, `swapcontext` and `fork` see the stack as
//! natively. A frame whose call was left some other way (a `longjmp`, an
//! exception, a thread's end) is found by its stack pointer: an entry or
//! exit at or above it means its call is over. It is counted as left, not
//! timed.
//!
//! ```text
//!  timing stacks: private to each process (a fork copies its parent's, as
//!  it copies the stack), one slot per thread, found by hashing the thread
//!  pointer (fs base):
//!  ┌──────────────────────┬────────────────────────────────────────────┐
//!  │ ThreadHead {key,depth}│ Frame {rsp, tsc, func} × FRAMES            │ × THREAD_SLOTS
//!  └──────────────────────┴────────────────────────────────────────────┘
//!  statistics: in the shared mapping, one Stats per function
//! ```

#![allow(unsafe_code)]

use std::mem::{offset_of, size_of};
use std::sync::atomic::AtomicU64;

/// log2 of the bytes of one thread's slot (512 KiB).
pub const SLOT_SHIFT: u32 = 19;

/// Thread slots in a process's table: threads beyond them (or whose
/// slot's neighbourhood is taken) are counted, not timed.
pub const THREAD_SLOTS: usize = 256;

/// Slots tried from a thread's hash before it gives up.
pub const SLOT_TRIES: u32 = 16;

/// Bytes of the table (only the pages threads touch are ever allocated).
pub const TABLE_BYTES: usize = THREAD_SLOTS << SLOT_SHIFT;

/// Multiplier of the thread pointer's hash (Fibonacci hashing, 64-bit).
pub const THREAD_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The start of a thread's slot.
#[repr(C)]
#[derive(Debug)]
pub struct ThreadHead {
    /// The thread pointer (fs base) that owns the slot; 0: free.
    pub key: AtomicU64,
    /// Frames on the timing stack.
    pub depth: AtomicU64,
    _line: [u64; 6],
}

/// One call in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The stack pointer at the entry (the return address's slot).
    pub rsp: u64,
    /// The time stamp counter at the entry.
    pub tsc: u64,
    /// The function (its index among the `--latency` functions).
    pub func: u64,
    _pad: u64,
}

/// Frames a thread's timing stack holds: deeper calls are counted, not
/// timed.
pub const FRAMES: usize = ((1 << SLOT_SHIFT) - size_of::<ThreadHead>()) / size_of::<Frame>();

/// log2 of [`Frame`]'s bytes.
pub const FRAME_SHIFT: u32 = size_of::<Frame>().trailing_zeros();

/// Log2 buckets of a histogram: bucket `b` counts durations in
/// `[2^b, 2^(b+1))` ns (bucket 0 also 0 ns).
pub const BUCKETS: usize = 64;

/// One function's statistics, in the shared mapping.
#[repr(C)]
#[derive(Debug)]
pub struct Stats {
    /// Unused: the calls timed are the histogram's total.
    pub timed: AtomicU64,
    /// Returns that found no frame of theirs (the timing stack was full,
    /// the thread had no slot, or a frame was taken for left).
    pub untimed: AtomicU64,
    /// Calls found left without a return (a `longjmp`, an exception).
    pub left: AtomicU64,
    /// Sum of the timed durations, ns.
    pub sum_ns: AtomicU64,
    /// Shortest, ns (`u64::MAX`: none yet).
    pub min_ns: AtomicU64,
    /// Longest, ns.
    pub max_ns: AtomicU64,
    /// Return events (`--trace 'f%return'`): 0, none; else the entry
    /// site's index + 1, with [`EVENT_STR`] when the value is a string.
    /// Set by the monitor before the program starts.
    pub event: AtomicU64,
    _pad: u64,
    /// Timed durations by log2 bucket.
    pub hist: [AtomicU64; BUCKETS],
}

/// Bytes of one [`Stats`].
pub const STATS_BYTES: usize = size_of::<Stats>();

/// [`ThreadHead::key`].
pub const HEAD_KEY: usize = offset_of!(ThreadHead, key);
/// [`ThreadHead::depth`].
pub const HEAD_DEPTH: usize = offset_of!(ThreadHead, depth);
/// Offset of frame 0 from a slot's start.
pub const SLOT_FRAMES: usize = size_of::<ThreadHead>();
/// [`Frame::rsp`].
pub const FRAME_RSP: usize = offset_of!(Frame, rsp);
/// [`Frame::tsc`].
pub const FRAME_TSC: usize = offset_of!(Frame, tsc);
/// [`Frame::func`].
pub const FRAME_FUNC: usize = offset_of!(Frame, func);
/// [`Stats::untimed`].
pub const STATS_UNTIMED: usize = offset_of!(Stats, untimed);
/// [`Stats::left`].
pub const STATS_LEFT: usize = offset_of!(Stats, left);
/// [`Stats::sum_ns`].
pub const STATS_SUM: usize = offset_of!(Stats, sum_ns);
/// [`Stats::min_ns`].
pub const STATS_MIN: usize = offset_of!(Stats, min_ns);
/// [`Stats::max_ns`].
pub const STATS_MAX: usize = offset_of!(Stats, max_ns);
/// [`Stats::event`].
pub const STATS_EVENT: usize = offset_of!(Stats, event);
/// [`Stats::event`]: the returned value is read as a string.
pub const EVENT_STR: u64 = 1 << 32;
/// [`Stats::hist`].
pub const STATS_HIST: usize = offset_of!(Stats, hist);

const _: () = assert!(size_of::<ThreadHead>() == 64);
const _: () = assert!(size_of::<Frame>() == 32);
const _: () = assert!(STATS_BYTES & 63 == 0);

/// What one function's [`Stats`] held, read by the monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Calls timed: the histogram's total.
    pub timed: u64,
    /// [`Stats::untimed`].
    pub untimed: u64,
    /// [`Stats::left`].
    pub left: u64,
    /// [`Stats::sum_ns`].
    pub sum_ns: u64,
    /// [`Stats::min_ns`] (0 when nothing was timed).
    pub min_ns: u64,
    /// [`Stats::max_ns`].
    pub max_ns: u64,
    /// [`Stats::hist`].
    pub hist: [u64; BUCKETS],
}

impl Stats {
    /// Its values now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let mut hist = [0; BUCKETS];
        for (h, a) in hist.iter_mut().zip(&self.hist) {
            *h = a.load(Relaxed);
        }
        let timed = hist.iter().sum();
        Snapshot {
            timed,
            untimed: self.untimed.load(Relaxed),
            left: self.left.load(Relaxed),
            sum_ns: self.sum_ns.load(Relaxed),
            min_ns: if timed == 0 {
                0
            } else {
                self.min_ns.load(Relaxed)
            },
            max_ns: self.max_ns.load(Relaxed),
            hist,
        }
    }
}

/// The bucket of a duration of `ns` (as the exit routine computes it:
/// `bsr(ns | 1)`).
#[must_use]
pub fn bucket(ns: u64) -> usize {
    (63 - (ns | 1).leading_zeros()) as usize
}

/// The timing-stack table, mapped by the monitor before the program's
/// fork (which inherits it, as each later fork does, a private copy at
/// the same address); unmapped from the monitor when dropped.
#[derive(Debug)]
pub struct Table {
    addr: u64,
}

impl Table {
    /// Maps a table (see [`map_table`]).
    pub fn map() -> std::io::Result<Table> {
        map_table().map(|addr| Table { addr })
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Its range, [start, end).
    #[must_use]
    pub fn range(&self) -> (u64, u64) {
        (self.addr, self.addr + TABLE_BYTES as u64)
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing of ours uses any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, TABLE_BYTES) };
    }
}

/// Maps the timing-stack table for this process: private, anonymous,
/// without swap reservation, out of core dumps. Its address, to be kept
/// (the program inherits it at the same address).
pub fn map_table() -> std::io::Result<u64> {
    // SAFETY: a new private anonymous mapping at an address the kernel
    // chooses: no mapping of ours is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            TABLE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: advice on our own new mapping.
    unsafe { libc::madvise(p, TABLE_BYTES, libc::MADV_DONTDUMP) };
    Ok(p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_what_the_routines_use() {
        assert_eq!((HEAD_KEY, HEAD_DEPTH, SLOT_FRAMES), (0, 8, 64));
        assert_eq!(
            (FRAME_RSP, FRAME_TSC, FRAME_FUNC, FRAME_SHIFT),
            (0, 8, 16, 5)
        );
        assert_eq!(FRAMES, 16382);
        assert_eq!(STATS_BYTES, 576);
        assert_eq!(STATS_HIST, 64);
        assert_eq!(TABLE_BYTES, 128 << 20);
    }

    #[test]
    fn buckets_are_log2() {
        assert_eq!(
            [0, 1, 2, 3, 4, 1023, 1024, u64::MAX].map(bucket),
            [0, 0, 1, 1, 2, 9, 10, 63]
        );
    }
}
