//! The time stamp counter and CLOCK_MONOTONIC, read together, to turn the
//! counter values the event routine records into CLOCK_MONOTONIC times.

#![allow(unsafe_code)]

/// The time stamp counter (`rdtsc`).
#[must_use]
pub fn tsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter; every x86-64 CPU has it and user
    // code may read it (Linux leaves CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Most tries [`pair`] makes.
const TRIES: usize = 256;

/// Counter ticks between a pair's two counter reads below which [`pair`]
/// stops trying: about 0.3 µs at 3 GHz (an undisturbed pair takes tens of
/// nanoseconds, a vDSO clock read and two `rdtsc`).
const TIGHT: u64 = 1000;

/// CLOCK_MONOTONIC in nanoseconds.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A (counter, CLOCK_MONOTONIC) pair read as close together as we can:
/// the clock between two counter reads, the counter taken as their middle;
/// of a few tries, the one with the two counter reads closest together (a
/// thread preempted between them would make the pair off by half the
/// preemption). A loaded machine (or host) can disturb all of a few tries:
/// up to [`TRIES`] are made until two reads lie within [`TIGHT`] ticks.
#[must_use]
pub fn pair() -> (u64, u64) {
    let mut best = (u64::MAX, (0, 0));
    for k in 0..TRIES {
        if k >= 8 && best.0 <= TIGHT {
            break;
        }
        let a = tsc();
        let m = monotonic_ns();
        let b = tsc();
        let gap = b.wrapping_sub(a);
        if gap < best.0 {
            best = (gap, (a + gap / 2, m));
        }
    }
    best.1
}

/// The time of each step of a start, one after another.
#[derive(Clone, Copy, Debug)]
pub struct Steps {
    start: std::time::Instant,
    last: std::time::Instant,
}

impl Steps {
    /// Steps counted from now.
    #[must_use]
    pub fn new() -> Steps {
        Steps::since(std::time::Instant::now())
    }

    /// Steps counted from `start`.
    #[must_use]
    pub fn since(start: std::time::Instant) -> Steps {
        Steps { start, last: start }
    }

    /// µs since the last step (or the start).
    pub fn step(&mut self) -> u64 {
        let now = std::time::Instant::now();
        let us = now.duration_since(self.last).as_micros() as u64;
        self.last = now;
        us
    }

    /// µs since the start.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}
