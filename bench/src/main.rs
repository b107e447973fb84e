//! `uprobe-exec-bench`: whole-program wall time, uprobe-exec vs native,
//! measured side by side (runs alternate, so drift on this noisy VM hits
//! both sides alike). Fault-path and probe-hit benchmarks come later.
//!
//! Usage: `cargo run --release -p uprobe-exec-bench -- [RUNS]`
//! (build the workspace first so `target/release/uprobe-exec` exists).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn uprobe_exec() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("target dir");
    let p = dir.join("uprobe-exec");
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

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Alternates the commands `runs` times and returns each one's median.
fn side_by_side(cmds: &[Vec<&str>], runs: usize) -> Vec<Duration> {
    for c in cmds {
        time_once(c);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); cmds.len()];
    for _ in 0..runs {
        for (c, t) in cmds.iter().zip(&mut times) {
            t.push(time_once(c));
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

/// Cost of one int3 probe hit: a loop of 10^6 calls of `counted`, probed
/// minus unprobed, under uprobe-exec in the same run.
fn probe_hit(ux: &str, runs: usize) {
    let sample = uprobe_exec_samples::path("probed", uprobe_exec_samples::Variant::Pie);
    let sample = sample.to_str().expect("utf-8 path");
    let n = 1_000_000u32;
    let ns = n.to_string();
    let cmds = vec![
        vec![sample, "basic", ns.as_str()],
        vec![ux, sample, "basic", ns.as_str()],
        vec![ux, "-q", "-p", "counted", sample, "basic", ns.as_str()],
    ];
    let m = side_by_side(&cmds, runs);
    println!();
    println!("| probe hit (10^6 calls of `counted`) | median (ms) |");
    println!("| --- | --- |");
    println!("| native, unprobed | {:.2} |", m[0].as_secs_f64() * 1e3);
    println!(
        "| uprobe-exec, unprobed | {:.2} |",
        m[1].as_secs_f64() * 1e3
    );
    println!(
        "| uprobe-exec, int3 probe | {:.2} |",
        m[2].as_secs_f64() * 1e3
    );
    let per_hit = (m[2].as_secs_f64() - m[1].as_secs_f64()) / f64::from(n) * 1e9;
    println!("| **int3 per hit** | **{per_hit:.0} ns** |");
}

/// Start-up with many probes: python3.11 with and without `-p 'Py*'`.
fn many_probes(ux: &str, runs: usize) {
    let cmds = vec![
        vec![ux, "/usr/bin/python3.11", "-c", "pass"],
        vec![ux, "-q", "-p", "Py*", "/usr/bin/python3.11", "-c", "pass"],
        vec![ux, "--list", "-p", "Py*", "/usr/bin/python3.11"],
    ];
    let m = side_by_side(&cmds, runs);
    println!();
    println!("| python3.11 -c pass | median (ms) |");
    println!("| --- | --- |");
    println!(
        "| uprobe-exec, no probes | {:.2} |",
        m[0].as_secs_f64() * 1e3
    );
    println!(
        "| uprobe-exec, `-p 'Py*'` (setup and every hit) | {:.2} |",
        m[1].as_secs_f64() * 1e3
    );
    println!(
        "| `--list -p 'Py*'` (symbol read and match only) | {:.2} |",
        m[2].as_secs_f64() * 1e3
    );
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let ux = uprobe_exec();
    let ux = ux.to_str().expect("utf-8 path");
    probe_hit(ux, runs.min(10));
    many_probes(ux, runs);
    println!();
    let cases: &[(&str, &[&str])] = &[
        ("python3.11 -c pass", &["/usr/bin/python3.11", "-c", "pass"]),
        ("/usr/bin/true", &["/usr/bin/true"]),
    ];
    println!("| program | native median (ms) | uprobe-exec median (ms) | ratio |");
    println!("| --- | --- | --- | --- |");
    for (name, argv) in cases {
        let mut under: Vec<&str> = vec![ux];
        under.extend_from_slice(argv);
        // Warm the page cache for both.
        time_once(argv);
        time_once(&under);
        let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            a.push(time_once(argv));
            b.push(time_once(&under));
        }
        let (ma, mb) = (median(&mut a), median(&mut b));
        println!(
            "| `{name}` | {:.2} | {:.2} | {:.2}× |",
            ma.as_secs_f64() * 1e3,
            mb.as_secs_f64() * 1e3,
            mb.as_secs_f64() / ma.as_secs_f64()
        );
    }
}
