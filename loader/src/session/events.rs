//! The drain: a thread of the monitor that reads the event ring while the
//! program runs, and once more after it has ended, turning each record's
//! time stamp counter into CLOCK_MONOTONIC and handing it to the session's
//! sink (the CLI's formatter, or the library's channel).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use uprobe_runtime::events::{Record, Ring};

use crate::sys::clock;

/// Where events go: each record with its CLOCK_MONOTONIC time in ns.
pub type Sink = Box<dyn FnMut(Record, u64) + Send>;

/// How long the drain sleeps when the ring is empty. The ring holds 16 Ki
/// records by default: at 2 ms, a program would have to make 8 million traced hits
/// a second to fill it between two reads.
const IDLE: Duration = Duration::from_millis(2);

/// Records read in one go: a pass's batch stays small enough to stay in
/// the cache (a ring can hold millions).
const PASS: usize = 4096;

/// What the drain counted, per site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records handed to the sink, per site.
    pub delivered: Vec<u64>,
    /// Hits whose record did not fit, per site (the ring's counters).
    pub dropped: Vec<u64>,
    /// Records reserved and never written: a process was killed inside
    /// the event routine (not attributable to a site).
    pub lost: u64,
}

/// The running drain.
pub struct Drain {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Totals>,
}

impl Drain {
    /// Starts draining `ring` into `sink`.
    pub fn start(ring: Ring, mut sink: Sink) -> std::io::Result<Drain> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("uprobe-exec-ev".into())
            .spawn(move || {
                let sites = ring.layout().sites;
                let mut delivered = vec![0u64; sites];
                let mut clock = Clock::new();
                let mut batch = Vec::new();
                loop {
                    // Read the flag first: a record committed before the
                    // program ended is then read by this pass or the last.
                    let last = flag.load(Ordering::Acquire);
                    let n = ring.drain(PASS, |r| batch.push(r));
                    // After the read: every record read has its counter
                    // value below this pair's, so its time is interpolated.
                    clock.tick();
                    for r in batch.drain(..) {
                        if let Some(d) = delivered.get_mut(r.body.probe as usize) {
                            *d += 1;
                        }
                        let t = clock.monotonic(r.body.time);
                        sink(r, t);
                    }
                    if n == PASS {
                        continue;
                    }
                    if last {
                        break;
                    }
                    if n == 0 {
                        std::thread::sleep(IDLE);
                    }
                }
                Totals {
                    delivered,
                    dropped: (0..sites).map(|i| ring.dropped(i)).collect(),
                    lost: ring.finish(),
                }
            })?;
        Ok(Drain { stop, thread })
    }

    /// Reads what is left (every process that writes is gone) and stops.
    pub fn finish(self) -> Totals {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

/// Turns time stamp counter values into CLOCK_MONOTONIC by interpolating
/// between the (counter, clock) pairs read before and after it: one when
/// the drain starts (before the program runs), one after each read of the
/// ring. The clock's own adjustments then show within a pass of 2 ms, and
/// the error is that of reading a pair, tens of nanoseconds.
struct Clock {
    /// (counter, CLOCK_MONOTONIC ns), in order, the last [`PAIRS`].
    pairs: std::collections::VecDeque<(u64, u64)>,
    /// The first pair, for the rate over the whole run.
    first: (u64, u64),
    /// The segment the last conversion used.
    last: Option<Segment>,
}

/// Two pairs and the clock's rate between them.
#[derive(Clone, Copy, Debug)]
struct Segment {
    lo: (u64, u64),
    hi: (u64, u64),
    /// ns per counter tick.
    rate: f64,
}

impl Segment {
    fn at(&self, tsc: u64) -> u64 {
        let t = self.lo.1 as f64 + (tsc as f64 - self.lo.0 as f64) * self.rate;
        t.max(0.0) as u64
    }
}

/// Pairs kept: at 2 ms a pass, the last 8 seconds or more.
const PAIRS: usize = 4096;

impl Clock {
    fn new() -> Clock {
        let p = clock::pair();
        Clock {
            pairs: std::collections::VecDeque::from([p]),
            first: p,
            last: None,
        }
    }

    fn tick(&mut self) {
        let p = clock::pair();
        if self.pairs.back().is_some_and(|b| p.0 <= b.0) {
            return;
        }
        if self.pairs.len() == PAIRS {
            self.pairs.pop_front();
        }
        self.pairs.push_back(p);
    }

    /// The CLOCK_MONOTONIC time of counter value `tsc`.
    fn monotonic(&mut self, tsc: u64) -> u64 {
        // Records come in nearly time order: most fall in the segment
        // the one before did.
        if let Some(s) = self.last.filter(|s| s.lo.0 <= tsc && tsc < s.hi.0) {
            return s.at(tsc);
        }
        let i = self.pairs.partition_point(|p| p.0 <= tsc);
        let (a, b) = match (
            i.checked_sub(1).and_then(|k| self.pairs.get(k)),
            self.pairs.get(i),
        ) {
            (Some(&a), Some(&b)) => (a, b),
            // Outside the pairs kept: the rate over the whole run, from
            // the nearest pair.
            (Some(&a), None) => (a, self.far(a)),
            (None, Some(&b)) => (self.far(b), b),
            (None, None) => return self.first.1,
        };
        let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
        if hi.0 == lo.0 {
            return lo.1;
        }
        let s = Segment {
            lo,
            hi,
            rate: (hi.1 - lo.1) as f64 / (hi.0 - lo.0) as f64,
        };
        // Only a segment between two kept pairs is reused.
        self.last = (i > 0 && i < self.pairs.len()).then_some(s);
        s.at(tsc)
    }

    /// The pair farthest from `p` (for the longest baseline).
    fn far(&self, p: (u64, u64)) -> (u64, u64) {
        let last = *self.pairs.back().unwrap_or(&self.first);
        if last == p {
            self.first
        } else {
            last
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_converts_to_the_monotonic_clock_within_a_microsecond() {
        let mut c = Clock::new();
        let mut read = Vec::new();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(3));
            read.push(clock::pair());
            c.tick();
        }
        for (t, m) in read {
            let got = c.monotonic(t);
            assert!(got.abs_diff(m) < 1_000, "{got} vs {m}");
        }
    }
}
