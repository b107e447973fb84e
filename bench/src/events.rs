//! Events (`--trace`, issue 13): what a traced jump hit costs with six
//! integer arguments, beside a count-only probe and the kernel's uprobe
//! trace event fetching the same six registers; and how fast events are
//! drained to a JSON-lines file.
//!
//! Every figure comes from the `events` sample: `hitloop6 N` calls the
//! six-argument `ev()` N times and prints its loop's ns per call, in wall
//! time and in its thread's CPU time; `hitpace6 N R` makes the same calls
//! at R a second, a steady stream of events.

#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Section;

/// The trace spec: `ev`'s six arguments, of every integer type.
const SPEC: &str = "ev(int, int, uint, hex, uint, hex)";

/// Calls per run in the per-hit rows (ours and the unprobed loop).
const HIT_CALLS: u64 = 1 << 20;

/// Calls per run under the kernel's uprobe (about 1 µs each).
const KERNEL_CALLS: u64 = 200_000;

/// Events per run in the drain-rate rows.
const DRAIN_CALLS: u64 = 4_000_000;

/// The paced rates of the drain-rate rows (events per second).
const DRAIN_RATES: [u64; 4] = [1_000_000, 2_000_000, 2_500_000, 3_000_000];

/// The ring of the drain-rate rows: 8 MiB, 32 ms of events at 2 M/s, so
/// that a pause of the monitor's threads (this is a 2-vCPU VM) is absorbed
/// rather than dropped; the rate itself is the threads' throughput.
const DRAIN_RING: u64 = 1 << 16;

/// The drain rate the issue asks for.
const DRAIN_GOAL: u64 = 2_000_000;

/// The default `--event-ring` (records).
const DEFAULT_RING: u64 = uprobe_exec::DEFAULT_EVENT_RING as u64;

fn sample() -> PathBuf {
    uprobe_exec_samples::path("events", uprobe_exec_samples::Variant::Pie)
}

/// What one run printed and reported.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    wall_ms: f64,
    /// The loop's ns per call, wall time (0 for a paced run).
    ns: f64,
    /// The loop's ns per call, the thread's CPU time (0 for a paced run).
    cpu_ns: f64,
    /// The calls per second a paced run achieved.
    rate: Option<f64>,
    /// The report's `events`: delivered, dropped, lost.
    events: Option<[u64; 3]>,
}

/// One command line to run again and again: its argv, and where it writes
/// its report and its events (both removed after each run).
pub(crate) struct Case {
    pub(crate) argv: Vec<String>,
    report: Option<PathBuf>,
    output: Option<PathBuf>,
}

impl Case {
    fn native(calls: u64) -> Case {
        Case::sample(&["hitloop6", &calls.to_string()])
    }

    /// `argv`, run as it is.
    pub(crate) fn command(argv: Vec<String>) -> Case {
        Case {
            argv,
            report: None,
            output: None,
        }
    }

    /// The sample with `args`, unprobed.
    fn sample(args: &[&str]) -> Case {
        let mut argv = vec![sample().display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Case {
            argv,
            report: None,
            output: None,
        }
    }

    /// `ev` probed, counted only.
    fn counted(ux: &str, calls: u64) -> Case {
        let mut c = Case::native(calls);
        c.argv.splice(
            0..0,
            [ux, "-q", "--probe-mode", "jump", "-p", "ev"].map(String::from),
        );
        c
    }

    /// `ev` traced with its six arguments, the events written in `format`
    /// to a file in `dir`, through a ring of `ring` records.
    fn traced(ux: &str, dir: &Path, tag: &str, ring: u64, format: &str, calls: u64) -> Case {
        Case::native(calls).trace(ux, dir, tag, ring, format)
    }

    /// [`Case::traced`] with the calls paced at `rate` a second, through
    /// a ring of [`DRAIN_RING`] records.
    fn paced(ux: &str, dir: &Path, tag: &str, format: &str, calls: u64, rate: u64) -> Case {
        Case::sample(&["hitpace6", &calls.to_string(), &rate.to_string()])
            .trace(ux, dir, tag, DRAIN_RING, format)
    }

    /// This run under `ux`, tracing [`SPEC`] as [`Case::traced`] says.
    fn trace(self, ux: &str, dir: &Path, tag: &str, ring: u64, format: &str) -> Case {
        self.trace_spec(ux, SPEC, dir, tag, ring, format)
    }

    /// This run under `ux`, tracing `spec`, the events written in `format`
    /// to a file in `dir`, through a ring of `ring` records.
    fn trace_spec(
        self,
        ux: &str,
        spec: &str,
        dir: &Path,
        tag: &str,
        ring: u64,
        format: &str,
    ) -> Case {
        let report = dir.join(format!("{tag}.json"));
        let output = dir.join(format!("{tag}.events"));
        let mut c = self;
        let opts = [
            ux.to_string(),
            "-q".into(),
            "--probe-mode".into(),
            "jump".into(),
            "--trace".into(),
            spec.into(),
            "--event-ring".into(),
            ring.to_string(),
            "--format".into(),
            format.into(),
            "-o".into(),
            output.display().to_string(),
            "--report-json".into(),
            report.display().to_string(),
        ];
        c.argv.splice(0..0, opts);
        c.report = Some(report);
        c.output = Some(output);
        c
    }

    /// Runs it once; None if it failed or printed no figures.
    fn run(&self) -> Option<Run> {
        let t = Instant::now();
        let out = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let wall_ms = t.elapsed().as_secs_f64() * 1e3;
        let events = self.report.as_ref().and_then(|r| {
            let text = std::fs::read_to_string(r).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let e = &v["events"];
            Some([
                e["delivered"].as_u64()?,
                e["dropped"].as_u64()?,
                e["lost"].as_u64()?,
            ])
        });
        for f in self.report.iter().chain(&self.output) {
            let _ = std::fs::remove_file(f);
        }
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout);
        let rate = field(&s, "rate=");
        Some(Run {
            wall_ms,
            ns: field(&s, "ns_per_call=").or(rate.map(|_| 0.0))?,
            cpu_ns: field(&s, "cpu_ns_per_call=").or(rate.map(|_| 0.0))?,
            rate,
            events,
        })
    }
}

fn field(s: &str, key: &str) -> Option<f64> {
    s.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over the runs of one case: wall ms, ns, CPU ns per call; and
/// the events of its run with the most drops (so a bad run shows).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Figures {
    pub(crate) wall_ms: f64,
    pub(crate) ns: f64,
    pub(crate) cpu_ns: f64,
    /// The median rate a paced run achieved.
    rate: Option<f64>,
    events: Option<[u64; 3]>,
}

impl Figures {
    fn of(runs: &[Run]) -> Option<Figures> {
        if runs.is_empty() {
            return None;
        }
        Some(Figures {
            wall_ms: median(runs.iter().map(|r| r.wall_ms).collect()),
            ns: median(runs.iter().map(|r| r.ns).collect()),
            cpu_ns: median(runs.iter().map(|r| r.cpu_ns).collect()),
            rate: runs
                .iter()
                .map(|r| r.rate)
                .collect::<Option<Vec<f64>>>()
                .map(median),
            events: runs
                .iter()
                .filter_map(|r| r.events)
                .max_by_key(|e| (e[1], e[2])),
        })
    }

    /// "delivered D / dropped P (lost L)", or "–".
    fn events_text(&self) -> String {
        match self.events {
            Some([d, p, 0]) => format!("{d} / {p}"),
            Some([d, p, l]) => format!("{d} / {p} (lost {l})"),
            None => "–".into(),
        }
    }
}

/// Runs the cases one after another, `rounds` times (a warm-up first);
/// each one's figures, None where no run succeeded.
pub(crate) fn alternate(cases: &[Case], rounds: usize) -> Vec<Option<Figures>> {
    for c in cases {
        c.run();
    }
    let mut runs: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (c, r) in cases.iter().zip(&mut runs) {
            r.extend(c.run());
        }
    }
    runs.iter().map(|r| Figures::of(r)).collect()
}

/// The kernel's uprobe trace event on `ev` fetching the six argument
/// registers: the loop's figures over `rounds` runs and the hits the
/// kernel counted (`uprobe_profile`), or why it was skipped.
fn kernel(rounds: usize) -> Result<(Figures, Option<u64>), String> {
    let s = sample();
    let event = "ux_bench_ev6";
    crate::hits::with_kernel_uprobe(
        &s,
        "ev",
        event,
        "a=%di b=%si c=%dx d=%cx e=%r8 f=%r9",
        |tracefs| {
            let case = Case::native(KERNEL_CALLS);
            let runs: Vec<Run> = (0..rounds).filter_map(|_| case.run()).collect();
            let hits = std::fs::read_to_string(tracefs.join("uprobe_profile"))
                .ok()
                .and_then(|p| {
                    p.lines()
                        .find(|l| l.split_whitespace().any(|w| w == event))
                        .and_then(|l| l.split_whitespace().last()?.parse().ok())
                });
            Figures::of(&runs)
                .map(|f| (f, hits))
                .ok_or_else(|| "the sample printed no figures".to_string())
        },
    )
}

/// The thread's CPU time, ns.
fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// What writing one byte per `record` bytes of `bytes` of a fresh memfd
/// mapped shared costs, in CPU ns per record: the first pass (every page
/// faulted in, as a fresh event ring's are by the hits) and a second one
/// (pages resident). None if the memfd could not be made.
fn memfd_first_touch(bytes: usize, record: usize) -> Option<(f64, f64)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: a NUL-terminated name; no memory of ours is touched.
    let raw = unsafe { libc::memfd_create(c"uprobe-exec-bench".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sizes our own memfd; no memory of ours is touched.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } != 0 {
        return None;
    }
    // SAFETY: a new shared mapping of our memfd at a kernel-chosen address
    // (no mapping of ours is replaced), unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    drop(fd);
    if p == libc::MAP_FAILED {
        return None;
    }
    let base = p.cast::<u8>();
    let pass = |v: u8| {
        let t = thread_cpu_ns();
        for off in (0..bytes).step_by(record) {
            // SAFETY: `off < bytes`, inside the mapping.
            unsafe { base.wrapping_add(off).write_volatile(v) };
        }
        (thread_cpu_ns() - t) / (bytes / record) as f64
    };
    let first = pass(1);
    let warm = pass(2);
    // SAFETY: our mapping of `bytes`, no longer used.
    unsafe { libc::munmap(p, bytes) };
    Some((first, warm))
}

/// Calls per run in the `str` rows (each string costs a system call).
const STR_CALLS: u64 = 200_000;

/// What `str` arguments cost: `sv(a, b)` traced with none, one and two of
/// them read, beside the loop unprobed; a table into `md`.
fn strings(ux: &str, dir: &Path, rounds: usize, md: &mut String) {
    eprintln!("events: str arguments…");
    let calls = STR_CALLS.to_string();
    let base = || Case::sample(&["hitloopstr", &calls]);
    let ring = STR_CALLS.next_power_of_two();
    let specs = ["sv(hex, hex)", "sv(str)", "sv(str, str)"];
    let mut cases = vec![base()];
    for (i, spec) in specs.iter().enumerate() {
        cases.push(base().trace_spec(ux, spec, dir, &format!("str{i}"), ring, "text"));
    }
    let f = alternate(&cases, rounds);
    let _ = writeln!(md, "`str` arguments: `events hitloopstr {STR_CALLS}` calls `sv(\"alpha\", \"a string of 24 bytes....\", i)` and times its loop, traced with its two pointers as `hex`, then read as strings (one `process_vm_readv` system call on the process itself per string per hit, which never faults the program). Medians of {rounds} alternating runs, ring of {ring} records.\n");
    let _ = writeln!(
        md,
        "| trace | ns per call | own ns | per string | events delivered / dropped |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    let un = f[0];
    if let Some(u) = un {
        let _ = writeln!(md, "| unprobed | {:.1} | – | – | – |", u.ns);
    }
    let hex = f[1].zip(un).map(|(h, u)| h.ns - u.ns);
    for (i, (spec, f)) in specs.iter().zip(&f[1..]).enumerate() {
        match (f, un) {
            (Some(f), Some(u)) => {
                let own = f.ns - u.ns;
                let per = match hex {
                    Some(h) if i > 0 => format!("{:.0} ns", (own - h) / i as f64),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    md,
                    "| `{spec}` | {:.1} | {own:.1} | {per} | {} |",
                    f.ns,
                    f.events_text()
                );
            }
            _ => {
                let _ = writeln!(md, "| `{spec}` | failed | – | – | – |");
            }
        }
    }
    let _ = writeln!(md);
}

/// Measures both tables: the per-hit one with `hit_rounds` alternating
/// rounds, the drain rate with `drain_rounds`.
pub fn section(ux: &str, hit_rounds: usize, drain_rounds: usize) -> Section {
    let dir = std::env::temp_dir().join(format!("uprobe-exec-bench-e-{}", std::process::id()));
    let mut md = String::new();
    let mut goals = Vec::new();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        let _ = writeln!(
            md,
            "## 6. Events (`--trace`)\n\nSkipped: no temp dir ({e}).\n"
        );
        return Section { md, goals };
    }
    let _ = writeln!(md, "## 6. Events (`--trace`)\n");

    // Per hit.
    eprintln!("events: per hit…");
    let cases = [
        Case::native(HIT_CALLS),
        Case::counted(ux, HIT_CALLS),
        Case::traced(ux, &dir, "all", HIT_CALLS, "text", HIT_CALLS),
        Case::traced(ux, &dir, "default", DEFAULT_RING, "text", HIT_CALLS),
    ];
    let (f, cpu) = crate::cpu_while(|| alternate(&cases, hit_rounds));
    let k = kernel(hit_rounds);
    let _ = writeln!(md, "`events hitloop6 N` calls `ev(a, b, c, d, e, f)` (six integer arguments, a 5-instruction body) N times and times its loop, in wall time and in its thread's CPU time. Traced: `--trace '{SPEC}'`, events written as text to a file (`-o`). Own cost = the row minus the unprobed row. Medians of {hit_rounds} alternating runs of {HIT_CALLS} calls (the kernel's: {KERNEL_CALLS} calls); events delivered / dropped from the reports (the run with the most drops).\n");
    let _ = writeln!(
        md,
        "| run | ns per call | own ns | CPU ns per call | own CPU ns | events delivered / dropped |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
    let un = f[0];
    let row = |md: &mut String, name: &str, f: Option<Figures>| match (f, un) {
        (Some(f), Some(u)) if name != "unprobed" => {
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                f.ns,
                f.ns - u.ns,
                f.cpu_ns,
                f.cpu_ns - u.cpu_ns,
                f.events_text()
            );
        }
        (Some(f), _) => {
            let _ = writeln!(
                md,
                "| {name} | {:.1} | – | {:.1} | – | {} |",
                f.ns,
                f.cpu_ns,
                f.events_text()
            );
        }
        (None, _) => {
            let _ = writeln!(md, "| {name} | failed | – | – | – | – |");
        }
    };
    row(&mut md, "unprobed", f[0]);
    row(&mut md, "count only (`-p ev`), jump", f[1]);
    row(
        &mut md,
        &format!("traced, jump, ring of {HIT_CALLS} records (holds every hit)"),
        f[2],
    );
    row(
        &mut md,
        &format!("traced, jump, default ring ({DEFAULT_RING} records)"),
        f[3],
    );
    let kname = "kernel uprobe trace event fetching the six registers (`a=%di b=%si c=%dx d=%cx e=%r8 f=%r9`), recorded in the kernel's trace buffer, not drained (nothing reads `trace_pipe`)";
    let mut kernel_text = String::new();
    match &k {
        Ok((kf, hits)) => {
            row(&mut md, kname, Some(*kf));
            kernel_text = format!(
                "; the kernel's 6-register trace event: {:.0} ns",
                kf.ns - un.map_or(0.0, |u| u.ns)
            );
            if let Some(h) = hits {
                let _ = writeln!(md, "\nThe kernel counted {h} hits of its event (`uprobe_profile`, {hit_rounds} runs of {KERNEL_CALLS} calls).");
            }
        }
        Err(why) => {
            let _ = writeln!(
                md,
                "| kernel uprobe trace event | skipped: {why} | – | – | – | – |"
            );
        }
    }
    let ring_bytes = uprobe_runtime::events::RingLayout::new(HIT_CALLS as usize, 0, 1).record_bytes
        * HIT_CALLS as usize;
    let _ = writeln!(md, "\nA ring that holds every hit is {} MiB of shared memory (a memfd, {} pages), which the stage maps into the program before it starts (`MADV_POPULATE_READ`; a fork does not copy a shared mapping's page tables, and before this a hit took a page fault every 32 records, most of its cost: 80–100 ns). Each record is still two cache lines no hit has touched. Wall time above CPU time is time the program waited for a CPU while the monitor's drain and writer threads ran (2 CPUs), or while the host ran something else. {cpu}\n", ring_bytes >> 20, ring_bytes / 4096);
    let record = ring_bytes / HIT_CALLS as usize;
    if let Some((first, warm)) = memfd_first_touch(ring_bytes, record) {
        let _ = writeln!(md, "For scale, measured here in the same run: one byte written per {record}-byte record of a fresh {} MiB memfd mapped shared costs {first:.1} CPU ns per record (each page faulted in), {warm:.1} ns on a second pass (pages resident).\n", ring_bytes >> 20);
    }
    strings(ux, &dir, hit_rounds, &mut md);
    if let (Some(u), Some(t), Some(c)) = (un, f[2], f[1]) {
        let own = t.ns - u.ns;
        let ev = t.events.map_or("no report".into(), |[d, p, _]| {
            format!("delivered {d}, dropped {p}")
        });
        goals.push((
            "a traced jump hit with six integer arguments costs ≤ 30 ns of its own (ring holding every hit, events to a file)".into(),
            format!(
                "{own:.1} ns (CPU {:.1} ns; {ev}; count-only {:.1} ns{kernel_text})",
                t.cpu_ns - u.cpu_ns,
                c.ns - u.ns
            ),
            own <= 30.0 && t.events.is_some_and(|e| e[1] == 0),
        ));
    }

    // Drain rate.
    eprintln!("events: drain rate…");
    let mut cases: Vec<Case> = DRAIN_RATES
        .iter()
        .map(|&r| Case::paced(ux, &dir, &format!("json-{r}"), "json", DRAIN_CALLS, r))
        .collect();
    cases.push(Case::paced(
        ux,
        &dir,
        "text",
        "text",
        DRAIN_CALLS,
        DRAIN_GOAL,
    ));
    let (f, cpu) = crate::cpu_while(|| alternate(&cases, drain_rounds));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = writeln!(md, "Drain rate: `events hitpace6 {DRAIN_CALLS} R` makes the same calls at R a second (each call waits, spinning on the clock, for its turn: the program keeps one of the 2 CPUs busy, as a program making that many calls would), traced with `--format json -o FILE --event-ring {DRAIN_RING}` (8 MiB, 32 ms of events at 2 M/s: room for a pause of the monitor's threads on this 2-vCPU VM; the default ring is {DEFAULT_RING} records). The monitor's drain and writer threads share the other CPU. A rate is sustained when no event is dropped: delivered / dropped from the run with the most drops, over {drain_rounds} alternating runs.\n");
    let _ = writeln!(
        md,
        "| paced rate (events/s) | format | rate achieved | wall ms | events delivered / dropped (worst run) |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    let labels = DRAIN_RATES
        .iter()
        .map(|&r| (r, "JSON"))
        .chain([(DRAIN_GOAL, "text")]);
    let mut sustained = None;
    let mut at_goal = None;
    for ((rate, format), f) in labels.zip(&f) {
        match f {
            Some(f) => {
                let _ = writeln!(
                    md,
                    "| {:.1} M | {format} | {:.2} M/s | {:.0} | {} |",
                    rate as f64 / 1e6,
                    f.rate.unwrap_or(0.0) / 1e6,
                    f.wall_ms,
                    f.events_text()
                );
                let clean = f.events.is_some_and(|[_, p, l]| p == 0 && l == 0);
                if format == "JSON" && clean {
                    sustained = Some(rate);
                }
                if format == "JSON" && rate == DRAIN_GOAL {
                    at_goal = Some((clean, f.events_text()));
                }
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {:.1} M | {format} | failed | – | – |",
                    rate as f64 / 1e6
                );
            }
        }
    }
    let best = sustained.map_or("none".into(), |r| format!("{:.1} M/s", r as f64 / 1e6));
    let _ = writeln!(
        md,
        "\nThe highest paced rate drained to JSON with no drop in any run: {best}. {cpu}\n"
    );
    if let Some((clean, text)) = at_goal {
        goals.push((
            "events drained to a JSON-lines file at ≥ 2 M/s with no drops".into(),
            format!(
                "paced at 2 M/s: {text} (delivered / dropped, worst of {drain_rounds} runs); highest rate with no drop: {best}"
            ),
            clean,
        ));
    }
    Section { md, goals }
}
