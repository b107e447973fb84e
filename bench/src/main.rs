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
    assert!(p.exists(), "{} not found: run `cargo build --release` first", p.display());
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

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let ux = uprobe_exec();
    let ux = ux.to_str().expect("utf-8 path");
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
