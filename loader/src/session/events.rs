//! The drain: a thread of the monitor that reads the event ring while the
//! program runs, and once more after it has ended, turning each record's
//! time stamp counter into CLOCK_MONOTONIC and handing it to the session's
//! sink (the CLI's formatter, or the library's channel).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use uprobe_runtime::events::{RecordBody, Ring};

use crate::sys::clock;

/// Where events go: each record (its fields and its string room, where it
/// lies in the ring) with its CLOCK_MONOTONIC time in ns.
pub type Sink = Box<dyn FnMut(&RecordBody, &[u8], u64) + Send>;

/// How long the drain sleeps when the ring is empty. The ring holds 16 Ki
/// records by default: at 2 ms, a program would have to make 8 million traced hits
/// a second to fill it between two reads.
const IDLE: Duration = Duration::from_millis(2);

/// Records read in one pass (a ring can hold millions): the clock's pair
/// is read again between passes.
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

/// Whether a record is a return whose entry was timed: its `args[1]` is
/// the counter at the entry.
fn is_timed_return(body: &RecordBody) -> bool {
    use uprobe_runtime::events::{FLAG_RETURN, FLAG_UNTIMED};
    body.flags & (1 << FLAG_RETURN | 1 << FLAG_UNTIMED) == 1 << FLAG_RETURN
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
                    let n = ring.drain(PASS, |body, strings| {
                        if let Some(d) = delivered.get_mut(body.probe as usize) {
                            *d += 1;
                        }
                        let time = clock.monotonic(body.time);
                        if is_timed_return(body) {
                            // The entry on the same clock (a timeline's
                            // calls nest as they did), as `args[1]`.
                            let mut b = *body;
                            b.args[1] = clock.monotonic(b.args[1]);
                            sink(&b, strings, time);
                        } else {
                            sink(body, strings, time);
                        }
                    });
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
/// the drain starts (before the program runs), then one whenever a record
/// comes more than [`STALE_NS`] after the last (read after the record was
/// written, so after it). A record less far past the last pair is placed
/// from it at the whole run's rate. The error is that of reading a pair,
/// tens of nanoseconds, plus the clock's slewing over [`STALE_NS`].
struct Clock {
    /// (counter, CLOCK_MONOTONIC ns), in order, the last [`PAIRS`].
    pairs: std::collections::VecDeque<(u64, u64)>,
    /// The first pair, for the rate over the whole run.
    first: (u64, u64),
    /// The segment the last conversion used.
    last: Option<Segment>,
    /// The counter value [`STALE_NS`] after the last pair (0 until the
    /// rate is known: the first record reads a pair).
    horizon: u64,
}

/// A pair, the counter value up to which a conversion may use it, and the
/// clock's rate from it.
#[derive(Clone, Copy, Debug)]
struct Segment {
    lo: (u64, u64),
    /// The next pair's counter value (`u64::MAX` past the last pair).
    end: u64,
    /// ns per counter tick.
    rate: f64,
}

impl Segment {
    fn at(&self, tsc: u64) -> u64 {
        let t = self.lo.1 as f64 + (tsc as f64 - self.lo.0 as f64) * self.rate;
        t.max(0.0) as u64
    }
}

/// Pairs kept: one per 250 µs of steady events at most, so the last second
/// or more (a value older than the oldest pair is extrapolated from it,
/// still in order).
const PAIRS: usize = 4096;

/// How far past the last pair a record may be placed without a new pair
/// (16 reads of the clock: a pair per record would cost more than the
/// record). The clock's slewing (500 ppm at most) makes such a record's
/// time wrong by at most an eighth of a microsecond.
const STALE_NS: f64 = 250_000.0;

impl Clock {
    fn new() -> Clock {
        let p = clock::pair();
        Clock {
            pairs: std::collections::VecDeque::from([p]),
            first: p,
            last: None,
            horizon: 0,
        }
    }

    /// Reads a pair now.
    fn read_pair(&mut self) {
        self.add_pair(clock::pair());
    }

    /// Takes `p`, read now, as the last pair.
    fn add_pair(&mut self, p: (u64, u64)) {
        let last = *self.pairs.back().unwrap_or(&self.first);
        if p.0 <= last.0 {
            return;
        }
        // Values up to the horizon may have been placed past `last` at the
        // run's rate already: the horizon's place on that line becomes a
        // pair too, so that the times stay one continuous, increasing
        // function of the counter (a thread's events never go back).
        let mut p = p;
        if self.horizon > last.0 && self.horizon < p.0 && last.0 > self.first.0 {
            let line = Segment {
                lo: last,
                end: u64::MAX,
                rate: self.run_rate(last),
            };
            let knot = (self.horizon, line.at(self.horizon));
            self.push(knot);
            // A clock a little slower than the run's rate: time stands
            // still until it catches up, rather than going back.
            p.1 = p.1.max(knot.1);
        }
        self.push(p);
        let rate = self.run_rate(p);
        self.horizon = if rate > 0.0 {
            p.0.saturating_add((STALE_NS / rate) as u64)
        } else {
            // A clock that did not move (a coarse one): a pair per record.
            p.0
        };
    }

    /// Appends a pair (the oldest goes beyond [`PAIRS`]); a segment that
    /// ran past the old last pair ends at it now.
    fn push(&mut self, p: (u64, u64)) {
        if self.pairs.len() == PAIRS {
            self.pairs.pop_front();
        }
        self.pairs.push_back(p);
        if let Some(s) = self.last.as_mut().filter(|s| s.end == u64::MAX) {
            s.end = p.0;
        }
    }

    /// ns per counter tick from the first pair to `p` (a later one).
    fn run_rate(&self, p: (u64, u64)) -> f64 {
        p.1.saturating_sub(self.first.1) as f64 / p.0.saturating_sub(self.first.0).max(1) as f64
    }

    /// The CLOCK_MONOTONIC time of counter value `tsc`.
    fn monotonic(&mut self, tsc: u64) -> u64 {
        if tsc >= self.horizon {
            self.read_pair();
        }
        // Records come in nearly time order: most fall in the segment
        // the one before did.
        if let Some(s) = self.last.filter(|s| s.lo.0 <= tsc && tsc < s.end) {
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
        let rate = hi.1.saturating_sub(lo.1) as f64 / (hi.0 - lo.0) as f64;
        // The segment from the pair before `tsc` is reused; before the
        // first pair kept, nothing is.
        self.last = i.checked_sub(1).map(|k| Segment {
            lo: self.pairs[k],
            end: self.pairs.get(i).map_or(u64::MAX, |p| p.0),
            rate,
        });
        match self.last {
            Some(s) => s.at(tsc),
            None => Segment {
                lo,
                end: hi.0,
                rate,
            }
            .at(tsc),
        }
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
            c.read_pair();
        }
        for (t, m) in read {
            let got = c.monotonic(t);
            assert!(got.abs_diff(m) < 1_000, "{got} vs {m}");
        }
    }

    #[test]
    fn times_never_go_back_when_a_new_pair_changes_the_rate() {
        // Counter ticks at 1 ns over the first 1 ms, then the clock slows
        // to half a ns a tick: values placed at the run's rate before the
        // new pair and values converted after it stay in order.
        let mut c = synthetic();
        c.add_pair((2_000_000, 2_000_000));
        let h = c.horizon;
        assert_eq!(h, 2_250_000, "250 µs at 1 ns a tick");
        let before: Vec<u64> = (0..10)
            .map(|k| c.monotonic(2_000_000 + k * 20_000))
            .collect();
        c.add_pair((3_000_000, 2_600_000));
        let after: Vec<u64> = (0..60)
            .map(|k| c.monotonic(2_000_000 + k * 20_000))
            .collect();
        assert_eq!(
            &after[..10],
            &before[..],
            "values already placed keep their place"
        );
        assert!(after.windows(2).all(|w| w[0] < w[1]), "{after:?}");
        assert_eq!(c.monotonic(3_000_000), 2_600_000);
    }

    #[test]
    fn a_pair_behind_the_run_s_line_holds_time_still_rather_than_back() {
        // The pair after the horizon says less than the line did there.
        let mut c = synthetic();
        c.add_pair((2_000_000, 2_000_000));
        let at_horizon = c.monotonic(2_249_999);
        assert_eq!(at_horizon, 2_249_999);
        c.add_pair((2_250_100, 2_249_000));
        let v: Vec<u64> = (0..20).map(|k| c.monotonic(2_249_990 + k * 10)).collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "{v:?}");
        assert_eq!(v[1], 2_250_000, "the horizon's place on the line");
        assert!(v[19] < 2_250_100, "{v:?}");
    }

    #[test]
    fn a_clock_that_does_not_move_reads_a_pair_per_value() {
        let mut c = synthetic();
        c.add_pair((2_000_000, 1_000_000));
        assert_eq!(c.horizon, 2_000_000, "no rate: no horizon");
    }

    /// A clock whose first pair is (1 000 000, 1 000 000).
    fn synthetic() -> Clock {
        Clock {
            pairs: std::collections::VecDeque::from([(1_000_000, 1_000_000)]),
            first: (1_000_000, 1_000_000),
            last: None,
            horizon: 0,
        }
    }

    #[test]
    fn a_counter_value_past_the_last_pair_is_placed_at_the_run_s_rate() {
        let mut c = Clock::new();
        std::thread::sleep(Duration::from_millis(3));
        c.read_pair();
        // Less than STALE_NS later: no new pair, the value is extrapolated.
        let p = clock::pair();
        let n = c.pairs.len();
        let got = c.monotonic(p.0);
        assert_eq!(c.pairs.len(), n, "no new pair");
        assert!(got.abs_diff(p.1) < 1_000, "{got} vs {p:?}");
        // Farther: its conversion reads a pair first, and the values
        // before it still convert (through the segment cut at the pair).
        std::thread::sleep(Duration::from_millis(1));
        let q = clock::pair();
        let got = c.monotonic(q.0);
        assert_eq!(
            c.pairs.len(),
            n + 2,
            "a new pair for a record past the horizon, and the horizon's place"
        );
        assert!(got.abs_diff(q.1) < 1_000, "{got} vs {q:?}");
        for (t, m) in [p, q] {
            let got = c.monotonic(t);
            assert!(got.abs_diff(m) < 1_000, "{got} vs {m}");
        }
    }
}
