//! `uprobe-exec-bench`: the numbers people choose a probe tool on, measured
//! side by side in one run on this machine (a noisy 2-vCPU VM: compare the
//! ratios, not absolute times across runs).
//!
//! 1. Fault service per page: our server, a minimal inline handler (the
//!    floor), the kernel's file-backed and anonymous faults; server on the
//!    faulting thread's CPU and on the other one.
//! 2. Probe hit: unprobed, our int3, the kernel's uprobe (root), a ptrace stop.
//! 3. Whole programs, uprobe-exec vs native.
//! 4. Teardown of a fork storm.
//! 5. Jump coverage per binary, by tactic.
//! 6. Events (`--trace`): a traced hit with six arguments beside a
//!    count-only probe and the kernel's uprobe trace event; the drain rate
//!    to a JSON-lines file.
//!
//! It writes `bench/RESULTS.md` and `bench/fault-latency.svg`.
//!
//! Usage: `cargo run --release -p uprobe-exec-bench -- [RUNS]`, or
//! `-- coverage` to print only the coverage section, `-- events [RUNS]`
//! only the events section and its goals (nothing written), `-- objects [RUNS]` only the shared objects section, `-- startup
//! [RUNS]` only the start-up breakdown.

mod coverage;
mod events;
mod fault;
mod hits;
mod latency;
mod memory;
mod objects;
mod plot;
mod startup;
mod teardown;
mod working_set;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn uprobe_exec() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let p = exe.parent().expect("target dir").join("uprobe-exec");
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release` first",
        p.display()
    );
    p
}

fn time_once(argv: &[&str]) -> Duration {
    let t = Instant::now();
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    let d = t.elapsed();
    assert!(st.success(), "{argv:?} failed: {st}");
    d
}

/// The median of `v` (the upper one of an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A section of RESULTS.md: its markdown and its goal rows (what, measured,
/// met).
pub struct Section {
    pub md: String,
    pub goals: Vec<(String, String, bool)>,
}

/// Table cells for medians `m`: the first as it is, each other followed by
/// its ratio to the first (`| a | b | b/a× | …`, without the row's ends).
pub fn cells_vs_first(m: &[f64]) -> String {
    let mut cells = vec![format!("{:.2}", m[0])];
    for v in &m[1..] {
        cells.push(format!("{v:.2} | {:.2}×", v / m[0]));
    }
    cells.join(" | ")
}

/// Runs `argv` (stderr dropped) and returns the number its stdout gives
/// after `key` (`key` then the number, one word).
pub fn printed(argv: &[&str], key: &str) -> Option<f64> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// Alternates the commands `runs` times; each one's median in ms.
fn side_by_side(cmds: &[Vec<&str>], runs: usize) -> Vec<f64> {
    for c in cmds {
        time_once(c);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); cmds.len()];
    for _ in 0..runs {
        for (c, t) in cmds.iter().zip(&mut times) {
            t.push(time_once(c).as_secs_f64() * 1e3);
        }
    }
    times.iter().map(|t| median(t)).collect()
}

/// The text figures of one run under uprobe-exec.
fn text_figures(ux: &str, args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("uprobe-exec-bench-r-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let report = dir.join("r.json");
    let mut cmd = Command::new(ux);
    cmd.arg("--report-json")
        .arg(&report)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = cmd.status();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let field = |k: &str| {
        text.split(&format!("\"{k}\": "))
            .nth(1)
            .and_then(|r| r.split([',', '\n', '}']).next())
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    format!(
        "{} / {} / {} / {}",
        field("pages"),
        field("served"),
        field("faults"),
        field("populated")
    )
}

/// The machine's CPU time so far, from `/proc/stat` (ticks): (all, idle
/// and iowait, stolen by the host).
fn cpu_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    (f.iter().take(8).sum(), at(3) + at(4), at(7))
}

/// What the CPUs did while `f` ran, as a sentence for a section: busy,
/// and stolen by the host (a noisy neighbour shows here, not in our
/// figures' medians alone).
pub(crate) fn cpu_while<T>(f: impl FnOnce() -> T) -> (T, String) {
    let a = cpu_ticks();
    let out = f();
    let b = cpu_ticks();
    let all = (b.0 - a.0).max(1) as f64;
    let pct = |x: u64| 100.0 * x as f64 / all;
    let busy = (b.0 - a.0).saturating_sub(b.1 - a.1);
    (
        out,
        format!(
            "The CPUs were busy {:.0}% of the time these runs took, {:.1}% stolen by the host.",
            pct(busy),
            pct(b.2 - a.2)
        ),
    )
}

/// A section run alone: its markdown, then its goal rows as a table.
fn print_alone(md: &str, goals: Vec<(String, String, bool)>) {
    print!("{md}");
    println!("\n| goal | measured | met |\n| --- | --- | --- |");
    for (what, measured, met) in goals {
        println!(
            "| {what} | {measured} | {} |",
            if met { "yes" } else { "no" }
        );
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{cpu}, {cpus} CPUs, Linux {}", kernel.trim())
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("coverage") {
        print!(
            "{}",
            coverage::section(uprobe_exec().to_str().expect("utf-8 path")).0
        );
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("memory") {
        let runs: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let s = memory::section(uprobe_exec().to_str().expect("utf-8 path"), runs);
        print_alone(&s.md, s.goals);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("faults") {
        let s = fault::section();
        print_alone(&s.md, s.goals);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("latency") {
        let runs: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let s = latency::section(uprobe_exec().to_str().expect("utf-8 path"), runs, runs);
        print_alone(&s.md, s.goals);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("startup") {
        let runs: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(11);
        print!(
            "{}",
            startup::section(uprobe_exec().to_str().expect("utf-8 path"), runs)
        );
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("recorded") {
        let runs: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(11);
        let s = working_set::section(uprobe_exec().to_str().expect("utf-8 path"), runs);
        print_alone(&s.md, s.goals);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("objects") {
        let runs: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(11);
        let s = objects::section(uprobe_exec().to_str().expect("utf-8 path"), runs);
        print_alone(&s.md, s.goals);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("events") {
        let runs: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let s = events::section(
            uprobe_exec().to_str().expect("utf-8 path"),
            runs,
            runs.min(3),
        );
        print_alone(&s.md, s.goals);
        return;
    }
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let ux_path = uprobe_exec();
    let ux = ux_path.to_str().expect("utf-8 path");
    let mut md = String::new();
    let _ = writeln!(md, "# uprobe-exec benchmark results\n");
    let _ = writeln!(
        md,
        "Written by `cargo run --release -p uprobe-exec-bench -- {runs}` (do not edit by hand).\n"
    );
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(md, "- Method: every row of a table is measured in the same run, alternating where it can; medians. The machine is a noisy 2-vCPU VM: read the ratios, not the absolute times.\n");

    // 1. Fault service.
    let faults = fault::section();
    md.push_str(&faults.md);

    // 2. Probe hits.
    eprintln!("probe hits…");
    let _ = writeln!(md, "## 2. Probe hit, per hit\n");
    let _ = writeln!(md, "The sample `probed hitloop KIND N` times its own loop of calls. Sites: first instruction `push rbp`, `mov`, and a 5-byte nop.\n");
    let ptrace = hits::ptrace_stop();
    let _ = writeln!(
        md,
        "| site | unprobed ns | uprobe-exec jump ns | uprobe-exec int3 ns | kernel uprobe ns | ptrace stop ns | int3 / kernel | kernel / jump |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut int3_vs_stepped = None;
    let mut jump_entry = None;
    let mut kernel_nop5_vs_jump = None;
    for kind in hits::KINDS {
        let un = hits::unprobed(kind);
        let jump = hits::probed(ux, kind, "jump", "10000000");
        let ours = hits::probed(ux, kind, "int3", "200000");
        let kernel = hits::kernel_uprobe(kind);
        let fmt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        // Per hit: the probed loop minus the unprobed one.
        let net = |v: Option<f64>| v.zip(un).map(|(v, u)| v - u);
        if kind == "push" {
            jump_entry = net(jump);
        }
        let (k, ratio, kj) = match (&kernel, ours) {
            (Ok(k), Some(o)) => {
                if kind == "mov" {
                    int3_vs_stepped = Some(o / k);
                }
                let kj = net(jump).map(|j| k / j);
                if kind == "nop5" {
                    kernel_nop5_vs_jump = kj;
                }
                (
                    format!("{k:.1}"),
                    format!("{:.2}", o / k),
                    kj.map_or("–".into(), |r| format!("{r:.0}×")),
                )
            }
            (Err(why), _) => (format!("skipped: {why}"), "–".into(), "–".into()),
            _ => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            md,
            "| `{kind}` | {} | {} | {} | {k} | {} | {ratio} | {kj} |",
            fmt(un),
            fmt(jump),
            fmt(ours),
            fmt(ptrace)
        );
    }
    let _ = writeln!(
        md,
        "\nA jump probe's own cost per hit is its row minus the unprobed row (the call itself).\n"
    );
    // One jump probe hammered by 1 and by 2 threads (one per core).
    let srun = runs.clamp(3, 9);
    let scaling = hits::scaling(ux, srun);
    if let Some([u1, p1, u2, p2]) = scaling {
        let _ = writeln!(md, "Scaling: one jump probe (`hit_push`) hammered by 1 thread and by 2 threads at once (`probed hitloop_mt push T N`, ns per call per thread in thread CPU time), medians of {srun} alternating runs:\n");
        let _ = writeln!(md, "| threads | unprobed ns | jump ns | own cost ns |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        let _ = writeln!(md, "| 1 | {u1:.1} | {p1:.1} | {:.1} |", p1 - u1);
        let _ = writeln!(md, "| 2 | {u2:.1} | {p2:.1} | {:.1} |", p2 - u2);
        let _ = writeln!(
            md,
            "\nPer call, 2 threads / 1 thread: {:.2}× (unprobed {:.2}×).\n",
            p2 / p1,
            u2 / u1
        );
    }
    // python3.11 with every Py* function probed, int3 vs jump.
    let pyscript =
        "import json\nd = {str(i): [i] * 3 for i in range(20000)}\nprint(len(json.dumps(d)))";
    let py = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = vec![ux];
        v.extend_from_slice(extra);
        v.extend_from_slice(&["/usr/bin/python3.11", "-c", pyscript]);
        v
    };
    let pruns = runs.min(10);
    let m = side_by_side(
        &[
            py(&[]),
            py(&["-q", "--probe-mode", "int3", "-p", "Py*"]),
            py(&["-q", "--probe-mode", "auto", "-p", "Py*"]),
            {
                // The same without the analysis cache: every run scans
                // the whole text for entry points (README, "Cache").
                let mut v = vec!["/usr/bin/env", "UPROBE_EXEC_CACHE=off"];
                v.extend(py(&["-q", "--probe-mode", "auto", "-p", "Py*"]));
                v
            },
        ],
        pruns,
    );
    let _ = writeln!(md, "`python3.11` running a JSON script with every `Py*` function probed (939 sites), medians of {pruns} runs:\n");
    let _ = writeln!(md, "| probes | ms | slowdown |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let _ = writeln!(md, "| none | {:.1} | 1.00× |", m[0]);
    let _ = writeln!(md, "| `Py*`, int3 | {:.1} | {:.2}× |", m[1], m[1] / m[0]);
    let py_auto_ratio = m[2] / m[0];
    let _ = writeln!(
        md,
        "| `Py*`, auto (jumps where safe) | {:.1} | {:.2}× |",
        m[2],
        m[2] / m[0]
    );
    let py_cold_ratio = m[3] / m[0];
    let _ = writeln!(
        md,
        "| `Py*`, auto, without the analysis cache | {:.1} | {py_cold_ratio:.2}× |",
        m[3]
    );
    let _ = writeln!(md);

    // 3. Whole programs.
    eprintln!("whole programs…");
    let dir = std::env::temp_dir().join(format!("uprobe-exec-bench-w-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let big = dir.join("32MiB.txt");
    let mut data = Vec::with_capacity(32 << 20);
    let mut x = 0x2545_f491u64;
    while data.len() < 32 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(format!("{} {}\n", x % 1000, x % 97).as_bytes());
    }
    data.truncate(32 << 20);
    std::fs::write(&big, &data).expect("write");
    let big = big.to_str().expect("utf-8").to_string();
    let bigtext = uprobe_exec_samples::path("bigtext", uprobe_exec_samples::Variant::Pie);
    let bigtext = bigtext.to_str().expect("utf-8").to_string();
    let harm = uprobe_exec_samples::path("harm", uprobe_exec_samples::Variant::Pie);
    let harm = harm.to_str().expect("utf-8").to_string();
    let script = "d = {}\nfor i in range(300000):\n    d[i % 1000] = d.get(i % 1000, 0) + i\nprint(sum(d.values()))";
    let programs: Vec<(String, Vec<&str>)> = vec![
        (
            "`python3.11 -c pass`".into(),
            vec!["/usr/bin/python3.11", "-c", "pass"],
        ),
        (
            "`python3.11` small benchmark script".into(),
            vec!["/usr/bin/python3.11", "-c", script],
        ),
        ("`gzip -c` of 32 MiB".into(), vec!["/bin/gzip", "-c", &big]),
        (
            "`bigtext` (8 MiB of text, touches 10%)".into(),
            vec![&bigtext],
        ),
        (
            "`harm evict 256 1000` (eviction storm: 256 threads run two pages the main thread drops 1000 times)".into(),
            vec![&harm, "evict", "256", "1000"],
        ),
    ];
    let _ = writeln!(md, "## 3. Whole programs, wall time\n");
    let _ = writeln!(md, "Medians of {runs} alternating runs, no probes: the default serves no page of the program's text then (`--serve-text probed`); `--serve-text all` serves all of it, as with `-p '*'`. Text figures (pages / served / faults / installed around faults) from one run with `--serve-text all` and the default fault-around.\n");
    let _ = writeln!(md, "| program | native ms | uprobe-exec ms | ratio | `--serve-text all` ms | ratio | `--serve-text all --no-prefetch --fault-around 0` ms | ratio | text pages / served / faults / around |");
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut python_ratio = 0.0;
    let mut evict_ratio = 0.0;
    for (name, argv) in &programs {
        let mut ours = vec![ux];
        ours.extend(argv.iter().copied());
        let mut all = vec![ux, "--serve-text", "all"];
        all.extend(argv.iter().copied());
        let mut lazy = vec![
            ux,
            "--serve-text",
            "all",
            "--no-prefetch",
            "--fault-around",
            "0",
        ];
        lazy.extend(argv.iter().copied());
        let n = if name.contains("gzip") || name.contains("evict") {
            runs.min(3)
        } else {
            runs
        };
        let m = side_by_side(&[argv.clone(), ours, all, lazy], n);
        if name.contains("-c pass") {
            python_ratio = m[1] / m[0];
        }
        if name.contains("evict") {
            // Refaults are served only where the text is.
            evict_ratio = m[2] / m[0];
        }
        let mut whole = vec!["--serve-text", "all"];
        whole.extend(argv.iter().copied());
        let fig = text_figures(ux, &whole);
        let _ = writeln!(md, "| {name} | {} | {fig} |", cells_vs_first(&m));
    }
    let _ = std::fs::remove_dir_all(&dir);

    // 4. Teardown.
    eprintln!("teardown of a fork storm…");
    let harm_static = uprobe_exec_samples::path("harm", uprobe_exec_samples::Variant::Static);
    let harm_static = harm_static.to_str().expect("utf-8").to_string();
    let storm_n = 2000;
    let (storm_native, storm_ours) = teardown::storm(ux, &harm_static, storm_n, runs.min(5));
    let _ = writeln!(md, "\n## 4. Teardown of a fork storm\n");
    let _ = writeln!(md, "`harm storm {storm_n}` forks {storm_n} processes that wait, and keeps forking short-lived ones. Time from the kill until no process of the group is left (zombies not counted), medians of {} alternating runs.\n", runs.min(5));
    let _ = writeln!(md, "| kill | ms |");
    let _ = writeln!(md, "| --- | --- |");
    let _ = writeln!(
        md,
        "| native: `killpg(SIGKILL)` of the program's group | {storm_native:.0} |"
    );
    let _ = writeln!(md, "| uprobe-exec: `SIGKILL` to the monitor only (its watchdog kills the program) | {storm_ours:.0} |");

    // 5. Jump coverage.
    eprintln!("jump coverage…");
    let (coverage_md, python_coverage) = coverage::section(ux);
    md.push_str(&coverage_md);

    // 6. Events.
    eprintln!("events…");
    let events = events::section(ux, runs.clamp(3, 7), runs.clamp(1, 3));
    md.push('\n');
    md.push_str(&events.md);

    // 7. Latency.
    eprintln!("latency…");
    let latency = latency::section(ux, runs.clamp(3, 7), runs.clamp(3, 7));
    md.push('\n');
    md.push_str(&latency.md);

    // 8. Start-up, step by step.
    eprintln!("start-up…");
    md.push('\n');
    md.push_str(&startup::section(ux, runs.clamp(5, 21)));

    // 9. Shared objects.
    eprintln!("shared objects…");
    let objects = objects::section(ux, runs.clamp(5, 21));
    md.push('\n');
    md.push_str(&objects.md);

    // 10. Recorded working set.
    eprintln!("recorded working set…");
    let recorded = working_set::section(ux, runs.clamp(5, 21));
    md.push('\n');
    md.push_str(&recorded.md);

    // 11. Memory.
    eprintln!("memory…");
    let memory = memory::section(ux, 3);
    md.push('\n');
    md.push_str(&memory.md);

    let _ = writeln!(md, "\n## Goals\n");
    let _ = writeln!(md, "| goal | measured | met |");
    let _ = writeln!(md, "| --- | --- | --- |");
    // One row: what the goal is, what was measured, whether it is met.
    let mut goal = |what: String, measured: String, met: bool| {
        let met = if met { "yes" } else { "no" };
        let _ = writeln!(md, "| {what} | {measured} | {met} |");
    };
    goal(
        "`python3.11 -c pass` within 1.15× of native".into(),
        format!("{python_ratio:.2}×"),
        python_ratio <= 1.15,
    );
    goal(
        "python3.11 with every `Py*` probed in auto mode ≤ 2× unprobed (analysis cached)".into(),
        format!("{py_auto_ratio:.2}× (without the cache {py_cold_ratio:.2}×)"),
        py_auto_ratio <= 2.0,
    );
    goal(
        "eviction storm (`harm evict 256 1000`, `--serve-text all`) within 5× of native".into(),
        format!("{evict_ratio:.2}×"),
        evict_ratio <= 5.0,
    );
    goal(
        format!("a killed monitor's fork storm ({storm_n} processes) all gone within 100 ms (native `killpg`: {storm_native:.0} ms)"),
        format!("{storm_ours:.0} ms"),
        storm_ours <= 100.0,
    );
    if let Some(j) = jump_entry {
        goal(
            "jump probe's own cost ≤ 3 ns per hit at a function entry (`push` site)".into(),
            format!("{j:.1} ns"),
            j <= 3.0,
        );
    }
    if let Some([_, p1, _, p2]) = scaling {
        let r = p2 / p1;
        goal(
            "one jump probe hammered by 2 threads costs ≤ 1.3× per hit what it costs with 1".into(),
            format!("{r:.2}×"),
            r <= 1.3,
        );
    }
    if let Some(r) = kernel_nop5_vs_jump {
        goal(
            "jump probe ≥ 100× cheaper than the kernel's optimized nop5 uprobe".into(),
            format!("{r:.0}×"),
            r >= 100.0,
        );
    }
    if let Some(c) = python_coverage {
        goal(
            "jump coverage of python3.11 `Py*` at least 99%".into(),
            format!("{c:.1}%"),
            c >= 99.0,
        );
    }
    for (what, measured, met) in faults
        .goals
        .into_iter()
        .chain(events.goals)
        .chain(latency.goals)
        .chain(objects.goals)
        .chain(recorded.goals)
        .chain(memory.goals)
    {
        goal(what, measured, met);
    }
    match int3_vs_stepped {
        Some(r) => goal(
            "int3 hit at most half of the kernel's single-stepped uprobe (`mov` site)".into(),
            format!("{r:.2}×"),
            r <= 0.5,
        ),
        None => {
            let _ = writeln!(md, "| int3 hit at most half of the kernel's single-stepped uprobe | kernel uprobe skipped | – |");
        }
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    std::fs::write(&out, &md).expect("write RESULTS.md");
    print!("{md}");
    eprintln!("wrote {}", out.display());
}
