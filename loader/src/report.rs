//! Report: what happened, as the JSON file of `--report-json` and the
//! figures of `--stats`. The schema is documented in the README.

use serde::Serialize;
use uprobe_runtime::TextStats;

/// How the program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The shell's view: the code, or 128 + the signal.
    #[must_use]
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Text-serving figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Text {
    /// Text pages of the program.
    pub pages: u64,
    /// Distinct pages installed by us.
    pub served: u64,
    /// Page-fault events handled.
    pub faults: u64,
    /// Faults on pages served to the same process before.
    pub refaults: u64,
    /// Pages installed without a fault: all of them in user-mode-only mode,
    /// and the rest of the text for processes that outlive the first one.
    pub populated: u64,
    /// The program's pages in the recorded working set, installed in the
    /// background from its start (`--prefetch=recorded`; 0 without a
    /// record).
    pub recorded: u64,
}

impl From<TextStats> for Text {
    fn from(s: TextStats) -> Text {
        Text {
            pages: s.pages,
            served: s.served,
            faults: s.faults,
            refaults: s.refaults,
            populated: s.populated,
            recorded: 0,
        }
    }
}

/// The text-serving figures of one object (the program, its interpreter, a
/// shared library), when shared objects are served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObjectStats {
    /// Its file.
    pub path: String,
    /// Text pages (of every mapping of it, added up).
    pub pages: u64,
    /// Distinct pages installed by us.
    pub served: u64,
    /// Page-fault events handled.
    pub faults: u64,
    /// Faults on pages served to the same process before.
    pub refaults: u64,
    /// Pages installed without a fault.
    pub populated: u64,
}

impl ObjectStats {
    /// The figures `s` of the object at `path`.
    #[must_use]
    pub fn new(path: String, s: &TextStats) -> ObjectStats {
        ObjectStats {
            path,
            pages: s.pages,
            served: s.served,
            faults: s.faults,
            refaults: s.refaults,
            populated: s.populated,
        }
    }

    /// Adds the figures of another mapping of the same file.
    pub fn add(&mut self, s: &TextStats) {
        self.pages += s.pages;
        self.served += s.served;
        self.faults += s.faults;
        self.refaults += s.refaults;
        self.populated += s.populated;
    }
}

/// How faithfully the program was handed its address space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Handoff {
    /// `full` or `user-mode-only` (see the README).
    pub uffd_mode: String,
    /// `/proc/self/exe`, cmdline, environ, auxv and brk were set to the
    /// program's with `PR_SET_MM_MAP`.
    pub mm_map: bool,
    /// The hand-off code removed itself (no extra mapping remains).
    pub clean_exit: bool,
    /// What differs from a native execve in this run, one sentence each.
    pub limits: Vec<String>,
}

/// One probe site and its hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeHits {
    /// The spec it came from.
    pub spec: String,
    /// The function (demangled).
    pub symbol: String,
    /// Offset in the function.
    pub offset: u64,
    /// Link-time address, as `nm` prints it (`0x…`).
    pub address: String,
    /// Hits, in every process of the program.
    pub hits: u64,
    /// How the site is displaced: `int3`.
    pub kind: String,
    /// The object it is in: its path (the program's, for now).
    pub object: String,
}

/// The hits of one process of the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessHits {
    /// Its pid.
    pub pid: i64,
    /// Hits by probe (`symbol` or `symbol+0xoff`); probes it never hit are left out.
    pub hits: std::collections::BTreeMap<String, u64>,
}

/// Widest name column of the count table, in characters.
pub const NAME_COLUMN: usize = 48;

/// Everything reported at exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The ELF file that ran (the interpreter of a `#!` script).
    pub program: String,
    /// Its argv.
    pub args: Vec<String>,
    /// How it ended.
    pub exit: Exit,
    /// Probe sites and their hits.
    pub probes: Vec<ProbeHits>,
    /// The same hits, process by process (the first 256 processes that hit a probe).
    pub per_process: Vec<ProcessHits>,
    /// Text-serving figures (of every object served).
    pub text: Text,
    /// The same per object, when shared objects are served (`OBJECT:SPEC`
    /// probes): the program, its interpreter, then each library.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectStats>,
    /// Processes we served: the first and its forks.
    pub processes: u64,
    /// How the program was set up.
    pub handoff: Handoff,
    /// Things the user must know about this run's results (printed at exit).
    pub warnings: Vec<String>,
    /// Traced hits: how many became events, and how many did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventCounts>,
    /// Timed functions (`--latency`), in address order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<Latency>,
    /// How long the start took, step by step.
    pub startup: Startup,
}

/// How long [`Command::spawn`](crate::Command::spawn) took, step by step,
/// in µs: from the call until the program's text is registered and served
/// and its pid known (the program then runs once the stage has handed it
/// over). `--stats` prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Startup {
    /// Finding the program and opening its ELF file and its interpreter.
    pub open_us: u64,
    /// Laying out its address space (where each part goes).
    pub layout_us: u64,
    /// Resolving the probes, deciding each site's tactic (the analysis,
    /// cached per file), generating and mapping the probe area; 0 without
    /// probes.
    pub probes_us: u64,
    /// The rest before the launch: installing the text whole when
    /// unprivileged, the perf map's lines.
    pub prepare_us: u64,
    /// The launch: forking the watchdog, which forks the stage; the stage
    /// mapping the address space and registering the text; its
    /// userfaultfd passed back; the guard, the event drain and the fault
    /// server set up.
    pub launch_us: u64,
    /// The parts of `launch_us`: starting the monitor thread,
    pub thread_us: u64,
    /// building the program's stack and the list of our mappings the
    /// hand-off removes (reading `/proc/self/maps`),
    pub stack_us: u64,
    /// forking the watchdog, which forks the stage (until it says so; the
    /// stage starts its work meanwhile),
    pub fork_us: u64,
    /// the rest of the stage's work (mapping the address space and
    /// registering the text) until its userfaultfd arrives,
    pub stage_us: u64,
    /// and setting up the guard, the event drain and the fault server.
    pub serve_us: u64,
    /// All of it.
    pub total_us: u64,
}

/// One timed function's calls (`--latency`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// The function.
    pub symbol: String,
    /// Calls: every entry, in every process (a call still running when
    /// the program ended included).
    pub count: u64,
    /// Calls timed from entry to return.
    pub timed: u64,
    /// Returns that found no start time (the thread's timing stack was
    /// full or had no room for the thread).
    pub untimed: u64,
    /// Calls left without a return (`longjmp`, an exception, a thread's
    /// end), found when an outer call returned or a new one began.
    pub left: u64,
    /// Sum of the timed calls' durations, ns.
    pub sum_ns: u64,
    /// Shortest timed call, ns (0: none).
    pub min_ns: u64,
    /// Longest.
    pub max_ns: u64,
    /// Median, estimated from the histogram (within its bucket, linearly).
    pub p50_ns: u64,
    /// 99th percentile, estimated so.
    pub p99_ns: u64,
    /// Timed calls by duration: power-of-two buckets, from the first
    /// non-empty to the last.
    pub hist: Vec<Bucket>,
}

/// One bucket of a [`Latency`] histogram: calls that took `[lo_ns, hi_ns]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Shortest duration it holds.
    pub lo_ns: u64,
    /// Longest.
    pub hi_ns: u64,
    /// Calls.
    pub count: u64,
}

impl Latency {
    /// From the statistics the routines kept and the entry's hits.
    #[must_use]
    pub fn new(symbol: String, count: u64, s: &uprobe_runtime::latency::Snapshot) -> Latency {
        let range = |b: usize| {
            let lo = if b == 0 { 0 } else { 1u64 << b };
            let hi = if b >= 63 { u64::MAX } else { (2u64 << b) - 1 };
            (lo, hi)
        };
        let first = s.hist.iter().position(|&c| c > 0);
        let last = s.hist.iter().rposition(|&c| c > 0);
        let hist = match (first, last) {
            (Some(a), Some(b)) => (a..=b)
                .map(|k| {
                    let (lo_ns, hi_ns) = range(k);
                    Bucket {
                        lo_ns,
                        hi_ns,
                        count: s.hist[k],
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let total: u64 = s.hist.iter().sum();
        let quantile = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = (q * total as f64).ceil().max(1.0);
            let mut seen = 0.0;
            for b in &hist {
                let c = b.count as f64;
                if seen + c >= rank {
                    let frac = (rank - seen) / c;
                    let v = b.lo_ns as f64 + frac * (b.hi_ns - b.lo_ns) as f64;
                    return (v as u64).clamp(s.min_ns, s.max_ns);
                }
                seen += c;
            }
            s.max_ns
        };
        Latency {
            symbol,
            count,
            timed: s.timed,
            untimed: s.untimed,
            left: s.left,
            sum_ns: s.sum_ns,
            min_ns: s.min_ns,
            max_ns: s.max_ns,
            p50_ns: quantile(0.5),
            p99_ns: quantile(0.99),
            hist,
        }
    }
}

/// What became of traced hits and returns. `delivered + dropped` is the
/// traced sites' hits plus the traced functions' returns, exactly, unless a
/// process was killed inside a probe (`lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Handed to the session's event stream.
    pub delivered: u64,
    /// Not: the ring or the stream was full.
    pub dropped: u64,
    /// Reserved in the ring by a process killed before it wrote them.
    pub lost: u64,
}

impl Report {
    /// The timed functions as text, for stderr: one line per function
    /// (calls, average, p50, p99, max), then each one's histogram laid out
    /// as bcc's `funclatency` prints it. Empty without `--latency`.
    #[must_use]
    pub fn latency_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        // Functions never called make no line each (`--latency '*'` times
        // hundreds): one line counts them.
        let called = |l: &&Latency| l.count + l.timed + l.untimed + l.left > 0;
        for l in self.latency.iter().filter(called) {
            let avg = l.sum_ns.checked_div(l.timed).unwrap_or(0);
            let _ = writeln!(
                s,
                "uprobe-exec: {}: {} calls, avg {} ns, p50 {} ns, p99 {} ns, max {} ns{}{}",
                l.symbol,
                l.count,
                avg,
                l.p50_ns,
                l.p99_ns,
                l.max_ns,
                if l.left > 0 {
                    format!(", {} left without a return (untimed)", l.left)
                } else {
                    String::new()
                },
                if l.untimed > 0 {
                    format!(", {} returns untimed", l.untimed)
                } else {
                    String::new()
                },
            );
        }
        let idle = self.latency.len() - self.latency.iter().filter(called).count();
        if idle > 0 {
            let _ = writeln!(
                s,
                "uprobe-exec: {idle} other timed function{} never called",
                if idle == 1 { " was" } else { "s were" }
            );
        }
        for l in self.latency.iter().filter(|l| l.timed > 0) {
            let _ = writeln!(s, "\nFunction = {}", l.symbol);
            let _ = writeln!(s, "{:>24} : count    distribution", "nsecs");
            let most = l.hist.iter().map(|b| b.count).max().unwrap_or(0).max(1);
            for b in &l.hist {
                let stars = ((b.count as f64 / most as f64) * 40.0).round() as usize;
                let stars = if b.count > 0 { stars.max(1) } else { 0 };
                let _ = writeln!(
                    s,
                    "{:>10} -> {:<10} : {:<8} |{:<40}|",
                    b.lo_ns,
                    b.hi_ns,
                    b.count,
                    "*".repeat(stars)
                );
            }
        }
        s
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The count table printed at exit, like bcc's funccount: busiest first.
    #[must_use]
    pub fn count_table(&self) -> String {
        let mut rows: Vec<(String, u64)> = self
            .probes
            .iter()
            .map(|p| {
                (
                    if p.offset == 0 {
                        p.symbol.clone()
                    } else {
                        format!("{}+{:#x}", p.symbol, p.offset)
                    },
                    p.hits,
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        // As funccount: a name column of bounded width; a longer name keeps
        // its start and its end (C++ overloads differ at the end).
        let width = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(4, NAME_COLUMN);
        // Every tactic but the int3 is a jump (`jump-padding`, `jump-short-…`).
        let traps = self.probes.iter().filter(|p| p.kind == "int3").count();
        let mut s = format!(
            "uprobe-exec: {} probe sites: {} jump, {traps} int3\n",
            self.probes.len(),
            self.probes.len() - traps
        );
        s.push_str(&format!("{:<width$} {:>12}\n", "FUNC", "COUNT"));
        for (f, c) in rows {
            let f = crate::probes::short(&f, width);
            s.push_str(&format!("{f:<width$} {c:>12}\n"));
        }
        s
    }

    /// The `--stats` lines.
    #[must_use]
    pub fn stats_text(&self) -> String {
        let t = &self.text;
        let mut s = format!(
            "uprobe-exec: text pages {}, served {}, faults {}, refaults {}, populated {}, processes {} (uffd {})\n",
            t.pages, t.served, t.faults, t.refaults, t.populated, self.processes, self.handoff.uffd_mode
        );
        let u = &self.startup;
        let ms = |us: u64| us as f64 / 1000.0;
        s.push_str(&format!(
            "uprobe-exec: start-up {:.2} ms: open {:.2}, layout {:.2}, probes {:.2}, prepare {:.2}, launch {:.2} (thread {:.2}, stack {:.2}, forks {:.2}, stage {:.2}, serve {:.2})\n",
            ms(u.total_us),
            ms(u.open_us),
            ms(u.layout_us),
            ms(u.probes_us),
            ms(u.prepare_us),
            ms(u.launch_us),
            ms(u.thread_us),
            ms(u.stack_us),
            ms(u.fork_us),
            ms(u.stage_us),
            ms(u.serve_us),
        ));
        for l in &self.handoff.limits {
            s.push_str(&format!("uprobe-exec: note: {l}\n"));
        }
        s
    }
}
