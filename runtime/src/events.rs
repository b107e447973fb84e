//! The event ring: every hit of a traced probe as a fixed-size record in
//! the shared mapping (after the rows, at [`crate::area::Header::events`]),
//! written by the program's trampolines and trap handler, read by the
//! monitor while the program runs and once more after it has ended.
//!
//! ```text
//!  RingHeader (its own lines)             records (1 << record_shift bytes each)
//!  ┌──────┬──────┬──────────────────┐     ┌──────────────────────────────────────────────┐
//!  │ head │ tail │ dropped × sites  │ ... │ seq time pid tid probe flags args×6 strings… │ × n
//!  └──────┴──────┴──────────────────┘     └──────────────────────────────────────────────┘
//! ```
//!
//! The protocol, which [`Ring::write`] implements here for the tests and
//! the trampolines implement in their own code:
//!
//! 1. **Reserve.** Read `head` and `tail`. If `head - tail` is the capacity,
//!    the ring is full: increment the site's `dropped` counter and stop.
//!    Otherwise compare-and-swap `head` to `head + 1`; on failure start
//!    again. No writer ever waits for another, so a signal handler that
//!    interrupts a hit and hits a probe itself reserves its own record.
//! 2. **Write** the record at `head & mask`, all but `seq`.
//! 3. **Commit.** Store `seq = index + 1`, after every other field (x86
//!    keeps stores in order; the Rust writer uses a release store).
//!
//! The monitor reads at `tail`: a record whose `seq` is `tail + 1` is whole;
//! it copies it and moves on; storing the new `tail` (every
//! [`TAIL_EVERY`] records and at the end of a pass, not per record: every
//! writer reads it) frees the records behind it for writers one lap later. A record reserved but not yet committed stops the reader
//! there until it is: records are delivered in reservation order, which is
//! hit order within a thread. Once every writer is gone, [`Ring::finish`]
//! counts the records that were reserved and never committed (a process
//! killed between steps 1 and 3): they are lost, and said so.

#![allow(unsafe_code)]

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::area::LINE_BYTES;

/// How often [`Ring::drain`] publishes `tail` while it reads (records, a
/// power of two).
const TAIL_EVERY: u64 = 1024;

/// The argument registers an event records, in System V order: rdi, rsi,
/// rdx, rcx, r8, r9.
pub const ARGS: usize = 6;

/// Bytes kept of a `str` argument, its NUL included: at most 63
/// characters are kept, and a longer string is marked cut. The bytes after
/// the NUL are whatever an earlier record left there.
pub const STR_BYTES: usize = 64;

/// [`RecordBody::flags`]: bit `FLAG_UNREADABLE + i`, the `i`-th argument's
/// string pointer was NULL or unreadable.
pub const FLAG_UNREADABLE: u32 = 8;
/// [`RecordBody::flags`]: bit `FLAG_IS_STR + i`, the `i`-th argument was read
/// as a string (its room holds it).
pub const FLAG_IS_STR: u32 = 16;

/// [`RecordBody::flags`]: the record is a function's return
/// (`--trace 'f%return'`), not a hit: `args[0]` is the value returned
/// (rax), `args[1]` the time stamp counter at the call's entry, `probe`
/// the entry's site.
pub const FLAG_RETURN: u32 = 24;
/// [`RecordBody::flags`]: a return whose call was not timed (its entry was
/// not seen by this thread's timing stack): `args[1]` means nothing.
pub const FLAG_UNTIMED: u32 = 25;
/// [`RecordBody::flags`]: the call ended in a tail call (a `jmp` out of
/// the function), whose callee returns the value: `args[0]` means nothing.
pub const FLAG_TAIL: u32 = 26;

/// The start of the ring, on its own cache lines: writers hammer `head`,
/// the monitor writes `tail`.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// The next index a writer reserves.
    pub head: AtomicU64,
    _head_line: [u64; LINE_BYTES / 8 - 1],
    /// The next index the monitor reads.
    pub tail: AtomicU64,
    _tail_line: [u64; LINE_BYTES / 8 - 1],
    /// Per site: hits whose record did not fit (the ring was full).
    pub dropped: [AtomicU64; 0],
}

/// The fixed part of a record; `strings` follows it, [`STR_BYTES`] per
/// argument, in argument order, when a site has `str` arguments.
#[repr(C)]
#[derive(Debug)]
pub struct RecordHead {
    /// The record's index + 1 once it is whole; written last.
    pub seq: AtomicU64,
    /// The rest, written (and read) as one plain value.
    pub body: RecordBody,
    /// The strings start here.
    pub strings: [u8; 0],
}

/// The fields of a record after `seq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordBody {
    /// The time stamp counter at the hit (`rdtsc`); the monitor converts
    /// it to CLOCK_MONOTONIC.
    pub time: u64,
    /// The process (its pid as the row page holds it).
    pub pid: u32,
    /// The thread (its kernel tid).
    pub tid: u32,
    /// The site.
    pub probe: u32,
    /// Bit `i`: the `i`-th string was cut at [`STR_BYTES`]; bit
    /// [`FLAG_UNREADABLE`] `+ i`: its pointer was NULL or unreadable; bit
    /// [`FLAG_IS_STR`] `+ i`: the `i`-th argument is a string.
    pub flags: u32,
    /// rdi, rsi, rdx, rcx, r8, r9 at the hit.
    pub args: [u64; ARGS],
}

/// [`RingHeader::head`].
pub const RING_HEAD: usize = offset_of!(RingHeader, head);
/// [`RingHeader::tail`].
pub const RING_TAIL: usize = offset_of!(RingHeader, tail);
/// [`RingHeader::dropped`]: site `i`'s counter is at `ring + RING_DROPPED + 8 * i`.
pub const RING_DROPPED: usize = offset_of!(RingHeader, dropped);
/// [`RecordHead::seq`].
pub const REC_SEQ: usize = offset_of!(RecordHead, seq);
/// [`RecordHead::body`].
const REC_BODY: usize = offset_of!(RecordHead, body);
/// [`RecordBody::time`].
pub const REC_TIME: usize = offset_of!(RecordHead, body) + offset_of!(RecordBody, time);
/// [`RecordBody::pid`].
pub const REC_PID: usize = offset_of!(RecordHead, body) + offset_of!(RecordBody, pid);
/// [`RecordBody::tid`].
pub const REC_TID: usize = offset_of!(RecordHead, body) + offset_of!(RecordBody, tid);
/// [`RecordBody::probe`].
pub const REC_PROBE: usize = offset_of!(RecordHead, body) + offset_of!(RecordBody, probe);
/// [`RecordBody::flags`].
pub const REC_FLAGS: usize = offset_of!(RecordHead, body) + offset_of!(RecordBody, flags);
/// [`RecordBody::args`].
pub const REC_ARGS: usize = offset_of!(RecordHead, body) + offset_of!(RecordBody, args);
/// [`RecordHead::strings`].
pub const REC_STRINGS: usize = offset_of!(RecordHead, strings);

/// How big the ring is: `records` records (a power of two) of
/// `record_bytes` each (a power of two, room for the fixed part and the
/// most strings any traced site has), for `sites` sites' drop counters.
/// No records: no ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingLayout {
    /// Records in the ring.
    pub records: usize,
    /// Bytes of one record.
    pub record_bytes: usize,
    /// Sites (one drop counter each).
    pub sites: usize,
}

impl RingLayout {
    /// A ring of `records` (rounded up to a power of two) records, each
    /// with room for `strings` strings, for `sites` sites.
    #[must_use]
    pub fn new(records: usize, strings: usize, sites: usize) -> RingLayout {
        RingLayout {
            records: records.next_power_of_two(),
            record_bytes: (REC_STRINGS + strings * STR_BYTES).next_power_of_two(),
            sites,
        }
    }

    /// Offset of the first record from the ring's start: after the header
    /// and the drop counters, on a cache line.
    #[must_use]
    pub fn records_start(&self) -> usize {
        (RING_DROPPED + 8 * self.sites).next_multiple_of(LINE_BYTES)
    }

    /// Bytes of the whole ring (0: none).
    #[must_use]
    pub fn len(&self) -> usize {
        if self.records == 0 {
            return 0;
        }
        self.records_start() + self.records * self.record_bytes
    }

    /// Whether there is no ring.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// log2 of [`RingLayout::record_bytes`].
    #[must_use]
    pub fn record_shift(&self) -> u32 {
        self.record_bytes.trailing_zeros()
    }
}

/// One record as [`Ring::write`] takes it (the trampolines' protocol in
/// Rust, for tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its fields.
    pub body: RecordBody,
    /// Its strings, in the string room's layout ([`STR_BYTES`] per
    /// argument); cut to the room.
    pub strings: Vec<u8>,
}

/// A ring laid out as `layout` at a live, shared, zero-initialised
/// mapping's address `addr` (part of `area::Shared`).
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    addr: u64,
    layout: RingLayout,
}

impl Ring {
    /// The ring at `addr`.
    ///
    /// # Safety
    /// `[addr, addr + layout.len())` is mapped, 64-byte aligned, zeroed at
    /// first, lives as long as the `Ring` is used, and is only accessed as
    /// this protocol says.
    #[must_use]
    pub unsafe fn at(addr: u64, layout: RingLayout) -> Ring {
        Ring { addr, layout }
    }

    /// Its address (the program's trampolines use the same).
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Its layout.
    #[must_use]
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: the ring starts with its header (`Ring::at`'s contract).
        unsafe { &*(self.addr as *const RingHeader) }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset & 7 == 0 && offset + 8 <= self.layout.len());
        // SAFETY: in bounds (asserted), aligned, in the live mapping.
        unsafe { &*((self.addr + offset as u64) as *const AtomicU64) }
    }

    /// Offset of the record of index `i`.
    fn record(&self, i: u64) -> usize {
        let slot = (i as usize) & (self.layout.records - 1);
        self.layout.records_start() + (slot << self.layout.record_shift())
    }

    /// Hits of site `i` whose record did not fit.
    #[must_use]
    pub fn dropped(&self, i: usize) -> u64 {
        assert!(i < self.layout.sites);
        self.word(RING_DROPPED + 8 * i).load(Ordering::Relaxed)
    }

    /// Records reserved so far (delivered, waiting, or lost).
    #[must_use]
    pub fn reserved(&self) -> u64 {
        self.header().head.load(Ordering::Acquire)
    }

    /// Writes a record of `r` (its `strings` cut to the room) as the
    /// trampolines do: whether it fit; if not, the site's drop counter
    /// counts it.
    pub fn write(&self, r: &Record) -> bool {
        let h = self.header();
        let cap = self.layout.records as u64;
        let index = loop {
            let head = h.head.load(Ordering::Relaxed);
            let tail = h.tail.load(Ordering::Acquire);
            if head.wrapping_sub(tail) >= cap {
                self.word(RING_DROPPED + 8 * r.body.probe as usize)
                    .fetch_add(1, Ordering::Relaxed);
                return false;
            }
            if h.head
                .compare_exchange_weak(head, head + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break head;
            }
        };
        let at = self.addr + self.record(index) as u64;
        let room = self.layout.record_bytes - REC_STRINGS;
        // SAFETY: the record at `at` is ours alone from the reservation
        // until the commit below (no writer reserves it again before the
        // reader has passed it), in bounds of the ring, 8-aligned.
        unsafe { ((at + REC_BODY as u64) as *mut RecordBody).write(r.body) };
        // SAFETY: as above: the record's string room, ours until the commit.
        let dst =
            unsafe { std::slice::from_raw_parts_mut((at + REC_STRINGS as u64) as *mut u8, room) };
        // The whole room: bytes left by a record one lap earlier must not
        // show after a shorter string.
        let n = r.strings.len().min(room);
        dst[..n].copy_from_slice(&r.strings[..n]);
        dst[n..].fill(0);
        // SAFETY: in bounds, aligned; `seq` is atomic, stored last.
        let seq = unsafe { &*((at + REC_SEQ as u64) as *const AtomicU64) };
        seq.store(index + 1, Ordering::Release);
        true
    }

    /// Reads up to `max` whole records from the tail on, in order, giving
    /// each to `f` where it lies (its fields, and its string room when it
    /// has strings, else nothing); stops at the first not yet committed.
    /// Returns how many. Only the monitor reads, from one thread at a time.
    pub fn drain(&self, max: usize, mut f: impl FnMut(&RecordBody, &[u8])) -> usize {
        let h = self.header();
        let mut n = 0;
        let mut tail = h.tail.load(Ordering::Relaxed);
        loop {
            if n == max {
                h.tail.store(tail, Ordering::Release);
                return n;
            }
            let at = self.addr + self.record(tail) as u64;
            // SAFETY: in bounds; `seq` is an atomic the writers store last.
            let rec = unsafe { &*(at as *const RecordHead) };
            if rec.seq.load(Ordering::Acquire) != tail + 1 {
                h.tail.store(tail, Ordering::Release);
                return n;
            }
            let room = self.layout.record_bytes - REC_STRINGS;
            // SAFETY: a committed record, which no writer touches until
            // `tail` passes it (below); a plain value, read whole.
            let body = unsafe { ((at + REC_BODY as u64) as *const RecordBody).read_volatile() };
            let strings = if body.flags >> FLAG_IS_STR & 0x3f == 0 {
                &[][..]
            } else {
                // SAFETY: as above: its string room, not written again
                // before `tail` passes it, which is after `f` returns.
                unsafe { std::slice::from_raw_parts((at + REC_STRINGS as u64) as *const u8, room) }
            };
            f(&body, strings);
            tail += 1;
            n += 1;
            // `tail` is published now and then, not per record: every
            // hit reads it, and a store per record would take its cache
            // line from the writers' CPUs each time.
            if tail & (TAIL_EVERY - 1) == 0 {
                h.tail.store(tail, Ordering::Release);
            }
        }
    }

    /// After every writer is gone: the records still reserved and never
    /// committed (their processes were killed inside a probe), which are
    /// skipped. Call after a last [`Ring::drain`].
    pub fn finish(&self) -> u64 {
        let h = self.header();
        let head = h.head.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Relaxed);
        h.tail.store(head, Ordering::Release);
        head.wrapping_sub(tail)
    }
}

const _: () = assert!(size_of::<RingHeader>() == 2 * LINE_BYTES);
const _: () = assert!(REC_STRINGS == 80);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A zeroed, 64-byte aligned buffer for a ring.
    struct Buf(Vec<u64>);

    fn ring(layout: RingLayout) -> (Buf, Ring) {
        let buf = Buf(vec![0u64; layout.len().div_ceil(8) + 8]);
        let addr = (buf.0.as_ptr() as u64).next_multiple_of(64);
        // SAFETY: the buffer outlives the ring in every test (returned
        // with it), zeroed, aligned above.
        (buf, unsafe { Ring::at(addr, layout) })
    }

    fn record(probe: u32, tid: u32, n: u64) -> Record {
        Record {
            body: RecordBody {
                time: n,
                pid: 7,
                tid,
                probe,
                // Argument 0's room holds a string.
                flags: 1 << FLAG_IS_STR,
                // A checksum in the last argument: a torn record shows.
                args: [
                    n,
                    u64::from(tid),
                    !n,
                    n ^ 0x5555,
                    0,
                    n.wrapping_mul(31) ^ u64::from(tid),
                ],
            },
            strings: format!("t{tid} n{n}").into_bytes(),
        }
    }

    #[test]
    fn layout_offsets_are_what_the_trampolines_use() {
        assert_eq!((RING_HEAD, RING_TAIL, RING_DROPPED), (0, 64, 128));
        assert_eq!((REC_SEQ, REC_TIME, REC_PID, REC_TID), (0, 8, 16, 20));
        assert_eq!(
            (REC_PROBE, REC_FLAGS, REC_ARGS, REC_STRINGS),
            (24, 28, 32, 80)
        );
        let l = RingLayout::new(1000, 0, 3);
        assert_eq!((l.records, l.record_bytes), (1024, 128));
        assert_eq!(l.records_start(), 192);
        assert_eq!(RingLayout::new(8, 2, 1).record_bytes, 256);
        assert_eq!(RingLayout::default().len(), 0);
    }

    #[test]
    fn a_full_ring_drops_and_counts_and_frees_as_it_is_read() {
        let (_b, r) = ring(RingLayout::new(4, 1, 2));
        for n in 0..6 {
            assert_eq!(r.write(&record(1, 1, n)), n < 4);
        }
        assert_eq!((r.dropped(1), r.dropped(0)), (2, 0));
        let mut got = Vec::new();
        assert_eq!(r.drain(usize::MAX, |b, _| got.push(b.time)), 4);
        assert_eq!(got, [0, 1, 2, 3]);
        assert!(r.write(&record(0, 1, 9)), "room again after the read");
        r.drain(1, |_, s| assert_eq!(&s[..5], b"t1 n9"));
        assert_eq!(r.finish(), 0);
    }

    #[test]
    fn a_reserved_record_never_committed_is_lost_not_delivered() {
        let (_b, r) = ring(RingLayout::new(4, 0, 1));
        assert!(r.write(&record(0, 1, 0)));
        // A writer killed after reserving: head moves, seq never written.
        r.header().head.fetch_add(1, Ordering::AcqRel);
        assert!(r.write(&record(0, 1, 2)));
        assert_eq!(r.drain(usize::MAX, |_, _| {}), 1, "stops at the hole");
        assert_eq!(r.finish(), 2, "the hole and the one behind it");
    }

    #[test]
    fn many_writers_and_a_reader_lose_nothing_and_tear_nothing() {
        const THREADS: u32 = 4;
        const EACH: u64 = 50_000;
        let (_b, r) = ring(RingLayout::new(256, 1, THREADS as usize));
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..EACH).filter(|&n| r.write(&record(t, t, n))).count() as u64
                })
            })
            .collect();
        let reader = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut last = [None::<u64>; THREADS as usize];
                let mut seen = [0u64; THREADS as usize];
                let mut check = |b: &RecordBody, s: &[u8]| {
                    let x = Record {
                        body: *b,
                        strings: s.to_vec(),
                    };
                    let t = x.body.tid as usize;
                    let n = x.body.time;
                    assert_eq!(
                        x,
                        record(x.body.probe, x.body.tid, n).with_room(&x.strings),
                        "torn"
                    );
                    assert!(
                        last[t].is_none_or(|l| l < n),
                        "thread {t}: {last:?} then {n}"
                    );
                    last[t] = Some(n);
                    seen[t] += 1;
                };
                while !done.load(Ordering::Acquire) {
                    if r.drain(100, &mut check) == 0 {
                        std::thread::yield_now();
                    }
                }
                while r.drain(100, &mut check) > 0 {}
                seen
            })
        };
        let written: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        let seen = reader.join().unwrap();
        assert_eq!(r.finish(), 0);
        for t in 0..THREADS as usize {
            assert_eq!(seen[t], written[t], "thread {t}: delivered = written");
            assert_eq!(
                written[t] + r.dropped(t),
                EACH,
                "thread {t}: + dropped = hits"
            );
        }
    }

    impl Record {
        /// The record as the reader sees it: the strings padded to `room`.
        fn with_room(mut self, room: &[u8]) -> Record {
            self.strings.resize(room.len(), 0);
            self
        }
    }
}
