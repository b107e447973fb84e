//! Start-up, step by step (issue 16): the report's `startup` (how long
//! each step of `Command::spawn` took) for a few programs, beside the
//! whole run's wall time and the native run's, in one set of alternating
//! runs.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

/// The steps, as the report names them, and as the table heads them.
const STEPS: [(&str, &str); 11] = [
    ("open_us", "open"),
    ("layout_us", "layout"),
    ("probes_us", "probes"),
    ("prepare_us", "prepare"),
    ("launch_us", "launch"),
    ("thread_us", "thread"),
    ("stack_us", "stack"),
    ("fork_us", "forks"),
    ("stage_us", "stage"),
    ("serve_us", "serve"),
    ("total_us", "start-up"),
];

/// One run under uprobe-exec: its wall ms and its report's steps (µs).
fn run_ours(ux: &str, opts: &[&str], prog: &[&str]) -> Option<(f64, Vec<u64>)> {
    let report = std::env::temp_dir().join(format!(
        "uprobe-exec-bench-startup-{}.json",
        std::process::id()
    ));
    let t = std::time::Instant::now();
    let status = Command::new(ux)
        .arg("-q")
        .arg("--report-json")
        .arg(&report)
        .args(opts)
        .args(prog)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        return None;
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).ok()?).ok()?;
    let _ = std::fs::remove_file(&report);
    let steps = STEPS
        .iter()
        .map(|(k, _)| r["startup"][*k].as_u64())
        .collect::<Option<Vec<u64>>>()?;
    Some((ms, steps))
}

/// One native run's wall ms.
fn run_native(prog: &[&str]) -> Option<f64> {
    let t = std::time::Instant::now();
    let status = Command::new(prog[0])
        .args(&prog[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| t.elapsed().as_secs_f64() * 1e3)
}

/// The section's markdown: for each case, medians over `runs` alternating
/// runs (native, then ours).
pub fn section(ux: &str, runs: usize) -> String {
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("`/bin/true`", &[], &["/bin/true"]),
        (
            "`python3.11 -c pass`",
            &[],
            &["/usr/bin/python3.11", "-c", "pass"],
        ),
        (
            "`python3.11 -c pass`, `-p 'PyList_*'`",
            &["-p", "PyList_*"],
            &["/usr/bin/python3.11", "-c", "pass"],
        ),
        (
            "`python3.11 -c pass`, `--latency 'PyList_*'`",
            &["--latency", "PyList_*"],
            &["/usr/bin/python3.11", "-c", "pass"],
        ),
    ];
    let mut md = String::new();
    let _ = writeln!(md, "## 8. Start-up, step by step\n");
    let _ = writeln!(md, "The report's `startup` (README, \"Report\"): how long each step of the start took, until the program's text is registered and served and its pid known; the program then runs once the stage has handed it over. Whole runs timed from outside, the native run and ours alternating. Medians of {runs} runs, ms.\n");
    let heads: Vec<&str> = STEPS.iter().map(|(_, h)| *h).collect();
    let _ = writeln!(md, "| run | native | ours | {} |", heads.join(" | "));
    let _ = writeln!(md, "|{}", " --- |".repeat(3 + STEPS.len()));
    for (name, opts, prog) in cases {
        // One of each first, not counted: caches warm, the analysis kept.
        let _ = run_native(prog);
        let _ = run_ours(ux, opts, prog);
        let mut native = Vec::new();
        let mut ours = Vec::new();
        let mut steps: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
        for _ in 0..runs {
            native.extend(run_native(prog));
            if let Some((ms, s)) = run_ours(ux, opts, prog) {
                ours.push(ms);
                for (v, us) in steps.iter_mut().zip(s) {
                    v.push(us as f64 / 1000.0);
                }
            }
        }
        if native.is_empty() || ours.is_empty() {
            let _ = writeln!(md, "| {name} | failed |{}", " – |".repeat(1 + STEPS.len()));
            continue;
        }
        let cells: Vec<String> = steps
            .iter()
            .map(|v| format!("{:.2}", crate::median(v)))
            .collect();
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.2} | {} |",
            crate::median(&native),
            crate::median(&ours),
            cells.join(" | ")
        );
    }
    let _ = writeln!(md, "\n`open`: finding the program, opening its ELF file and interpreter. `layout`: placing its parts. `probes`: resolving the probes, the analysis (cached per file), the probe area. `launch`: the order to the watchdog (made at the start of `open`, alongside the steps that follow) and its fork of the stage, the stage mapping the address space and registering the text, the userfaultfd passed back, the server set up; its parts: `thread` (starting the monitor thread), `stack` (the program's stack image and the list of what the hand-off unmaps, from one read of our maps), `forks` (from the order until the watchdog says the stage is forked), `stage` (until the stage's userfaultfd arrives), `serve` (the guard, the drain, the server). What the whole run adds beyond `start-up` is the stage's hand-off, the serving of the program's text, and the teardown.");
    md
}
