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

/// How long the drain sleeps when the ring is empty. The ring holds 64 Ki
/// records: at 2 ms, a program would have to make 32 million traced hits
/// a second to fill it between two reads.
const IDLE: Duration = Duration::from_millis(2);

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
                loop {
                    // Read the flag first: a record committed before the
                    // program ended is then read by this pass or the last.
                    let last = flag.load(Ordering::Acquire);
                    clock.tick();
                    let n = ring.drain(|r| {
                        if let Some(d) = delivered.get_mut(r.probe as usize) {
                            *d += 1;
                        }
                        let t = clock.monotonic(r.time);
                        sink(r, t);
                    });
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

/// Turns time stamp counter values into CLOCK_MONOTONIC: a line through
/// the first (counter, clock) pair and the latest, re-read on every pass,
/// so the rate follows the clock's own adjustments.
struct Clock {
    first: (u64, u64),
    last: (u64, u64),
}

impl Clock {
    fn new() -> Clock {
        let p = clock::pair();
        Clock { first: p, last: p }
    }

    fn tick(&mut self) {
        self.last = clock::pair();
    }

    /// The CLOCK_MONOTONIC time of counter value `tsc`.
    fn monotonic(&self, tsc: u64) -> u64 {
        let (t0, m0) = self.first;
        let (t1, m1) = self.last;
        if t1 <= t0 {
            return m0;
        }
        let ns_per_tick = (m1 - m0) as f64 / (t1 - t0) as f64;
        // From the latest pair, which is the nearer for most records.
        let dt = tsc as i128 - t1 as i128;
        (m1 as i128 + (dt as f64 * ns_per_tick) as i128).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_converts_to_the_monotonic_clock_within_a_microsecond() {
        let mut c = Clock::new();
        std::thread::sleep(Duration::from_millis(30));
        c.tick();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(3));
            let (t, m) = clock::pair();
            let got = c.monotonic(t);
            assert!(got.abs_diff(m) < 1_000, "{got} vs {m}");
        }
    }
}
