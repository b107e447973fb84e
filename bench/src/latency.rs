//! Latency (`--latency`, issue 14): what timing a call costs, entry plus
//! return, beside the kernel's uprobe and uretprobe on the same function;
//! and a real program with every `PyList_*` function timed.
//!
//! The per-call figures come from the `latency` sample's `loop N` mode,
//! which calls `work(i)` (a 5-instruction leaf) N times and prints its
//! loop's ns per call, in wall time and in its thread's CPU time.

use std::fmt::Write as _;

use crate::events::{alternate, Case};
use crate::Section;

/// Calls per run (ours and the unprobed loop).
const CALLS: u64 = 1 << 21;

/// Calls per run under the kernel's probes (microseconds each).
const KERNEL_CALLS: u64 = 100_000;

fn sample() -> String {
    uprobe_exec_samples::path("latency", uprobe_exec_samples::Variant::Pie)
        .display()
        .to_string()
}

fn with(prefix: &[&str], calls: u64) -> Case {
    looping(prefix, "loop", calls)
}

/// `latency MODE CALLS` after `prefix`.
fn looping(prefix: &[&str], mode: &str, calls: u64) -> Case {
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    argv.extend([sample(), mode.into(), calls.to_string()]);
    Case::command(argv)
}

/// Measures the per-call rows with `rounds` alternating rounds, and the
/// python row with `runs` runs of each.
pub fn section(ux: &str, rounds: usize, runs: usize) -> Section {
    let mut md = String::new();
    let mut goals = Vec::new();
    let _ = writeln!(md, "## 7. Latency (`--latency`)\n");
    eprintln!("latency: per call…");
    let cases = [
        with(&[], CALLS),
        with(&[ux, "-q", "--probe-mode", "jump", "-p", "work"], CALLS),
        with(&[ux, "-q", "--latency", "work"], CALLS),
        looping(&[], "tscloop", CALLS),
    ];
    let (f, cpu) = crate::cpu_while(|| alternate(&cases, rounds));
    let kernel = kernel(rounds);
    let _ = writeln!(md, "`latency loop N` calls `work(i)` (a 5-instruction leaf) N times and times its loop, in wall time and in its thread's CPU time. Own cost = the row minus the unprobed row. Medians of {rounds} alternating runs of {CALLS} calls (the kernel's: {KERNEL_CALLS} calls). {cpu}\n");
    let _ = writeln!(
        md,
        "| run | ns per call | own ns | CPU ns per call | own CPU ns |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    let un = f[0];
    let mut row = |name: &str, f: Option<crate::events::Figures>| match (f, un) {
        (Some(f), Some(u)) if name != "unprobed" => {
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
                f.ns,
                f.ns - u.ns,
                f.cpu_ns,
                f.cpu_ns - u.cpu_ns
            );
        }
        (Some(f), _) => {
            let _ = writeln!(md, "| {name} | {:.1} | – | {:.1} | – |", f.ns, f.cpu_ns);
        }
        (None, _) => {
            let _ = writeln!(md, "| {name} | failed | – | – | – |");
        }
    };
    row("unprobed", f[0]);
    row("count only (`-p work`), jump", f[1]);
    row("timed (`--latency work`): entry and return, jumps", f[2]);
    row(
        "floor: unprobed, each call between two `rdtsc` (what any timer of calls reads)",
        f[3],
    );
    let mut kernel_text = String::from("the kernel's: skipped");
    match kernel {
        Ok(k) => {
            row(
                "kernel uprobe + uretprobe on `work` (`p:` and `r:` trace events, not drained)",
                Some(k),
            );
            if let Some(u) = un {
                kernel_text = format!("the kernel's uprobe + uretprobe: {:.0} ns", k.ns - u.ns);
            }
        }
        Err(why) => {
            let _ = writeln!(
                md,
                "| kernel uprobe + uretprobe | skipped: {why} | – | – | – |"
            );
        }
    }
    if let (Some(u), Some(t)) = (un, f[2]) {
        let own = t.ns - u.ns;
        goals.push((
            "an entry plus return on jump sites costs ≤ 40 ns of its own".into(),
            format!(
                "{own:.1} ns (CPU {:.1} ns; {kernel_text})",
                t.cpu_ns - u.cpu_ns
            ),
            own <= 40.0,
        ));
    }

    // A real program.
    eprintln!("latency: python…");
    let script = "l = []\nfor i in range(200000):\n    l.append(i)\nl.sort()\nprint(len(l))";
    let py = ["/usr/bin/python3.11", "-c", script];
    let mut timed = vec![ux, "-q", "--latency", "PyList_*"];
    timed.extend(py);
    let m = crate::side_by_side(&[py.to_vec(), timed], runs);
    let ratio = m[1] / m[0];
    let _ = writeln!(md, "\nA real program: `python3.11` appending 200 000 items to a list and sorting it, unprobed and with `--latency 'PyList_*'` (every `PyList_` function a jump fits timed), medians of {runs} alternating runs: {:.1} ms and {:.1} ms, {ratio:.2}×.\n", m[0], m[1]);
    goals.push((
        "python with `--latency 'PyList_*'` within 1.5× of unprobed".into(),
        format!("{ratio:.2}×"),
        ratio <= 1.5,
    ));
    Section { md, goals }
}

/// The kernel's uprobe and uretprobe on `work`, as trace events: the
/// loop's figures over `rounds` runs, or why they were skipped.
fn kernel(rounds: usize) -> Result<crate::events::Figures, String> {
    let s = std::path::PathBuf::from(sample());
    crate::hits::with_kernel_probes(
        &s,
        "work",
        &[
            ('p', "ux_bench_work_in", ""),
            ('r', "ux_bench_work_out", ""),
        ],
        |_| {
            let case = with(&[], KERNEL_CALLS);
            alternate(std::slice::from_ref(&case), rounds)
                .into_iter()
                .next()
                .flatten()
                .ok_or_else(|| "the sample printed no figures".to_string())
        },
    )
}
