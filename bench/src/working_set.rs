//! A recorded working set (`--prefetch=recorded`, issue 16) beside the
//! default prefetch, serving on first touch, and serving only the probed
//! pages (`--serve-text probed`), for a program that uses all of its text
//! at once (`python3.11 -c pass`), one that uses a tenth of it (`bigtext`)
//! and one that does nothing (`/bin/true`), in one set of alternating runs.

use std::fmt::Write as _;

use crate::Section;
use std::process::{Command, Stdio};

/// Wall ms of one run of `argv` with the cache in `cache` (output dropped).
fn time(argv: &[&str], cache: &std::path::Path) -> f64 {
    let t = std::time::Instant::now();
    let _ = Command::new(argv[0])
        .args(&argv[1..])
        .env("XDG_CACHE_HOME", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    t.elapsed().as_secs_f64() * 1e3
}

/// `runs` alternating rounds of each program natively and under uprobe-exec
/// with the default prefetch, with a recorded working set (recorded by
/// five runs first), and with none.
pub fn section(ux: &str, runs: usize) -> Section {
    let bigtext = uprobe_exec_samples::path("bigtext", uprobe_exec_samples::Variant::Pie);
    let bigtext = bigtext.to_str().expect("utf-8").to_string();
    let programs: [(&str, Vec<&str>); 3] = [
        (
            "`python3.11 -c pass`",
            vec!["/usr/bin/python3.11", "-c", "pass"],
        ),
        ("`bigtext` (8 MiB of text, touches 10%)", vec![&bigtext]),
        ("`/bin/true`", vec!["/bin/true"]),
    ];
    let cache = std::env::temp_dir().join(format!("uprobe-exec-bench-ws-{}", std::process::id()));
    let mut md = String::new();
    let mut goals = Vec::new();
    let _ = writeln!(
        md,
        "## 10. Serving less: the probed pages only, a recorded working set\n"
    );
    let _ = writeln!(md, "Wall ms, medians of {runs} alternating rounds (each command once a round). The record was made by five runs first (the analysis cache is warm too, in a cache directory of the bench's own).\n");
    let _ = writeln!(md, "No probes: the default serves none of the program's text (`--serve-text probed`); the other columns serve all of it (`--serve-text all`), with the default prefetch, a recorded working set, or none.\n");
    let _ = writeln!(md, "| program | native | default | ratio | `--serve-text all` | ratio | `all --prefetch=recorded` | ratio | `all --no-prefetch` | ratio |");
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (name, argv) in &programs {
        let with = |opts: &[&'static str]| {
            let mut v = vec![ux, "-q"];
            v.extend_from_slice(opts);
            v.extend(argv.iter().copied());
            v
        };
        // Native, the default, and the whole text served three ways.
        let cmds = [
            argv.clone(),
            with(&[]),
            with(&["--serve-text", "all"]),
            with(&["--serve-text", "all", "--prefetch=recorded"]),
            with(&["--serve-text", "all", "--no-prefetch"]),
        ];
        for _ in 0..5 {
            time(&cmds[3], &cache);
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); cmds.len()];
        for round in 0..=runs {
            for (c, t) in cmds.iter().zip(&mut times) {
                let ms = time(c, &cache);
                if round > 0 {
                    t.push(ms);
                }
            }
        }
        let m: Vec<f64> = times.iter().map(|t| crate::median(t)).collect();
        let _ = writeln!(md, "| {name} | {} |", crate::cells_vs_first(&m));
        if name.contains("python") {
            goals.push((
                "`python3.11 -c pass` ≤ 1.10× native with default options".to_string(),
                format!(
                    "{:.2}× (`--serve-text all`: {:.2}×)",
                    m[1] / m[0],
                    m[2] / m[0]
                ),
                m[1] / m[0] <= 1.10,
            ));
            goals.push((
                "`python3.11 -c pass` ≤ 1.05× native with a recorded working set (`--serve-text all`)".to_string(),
                format!("{:.2}×", m[3] / m[0]),
                m[3] / m[0] <= 1.05,
            ));
        } else if name.contains("true") {
            goals.push((
                "`uprobe-exec /bin/true` ≤ 1 ms more than `/bin/true`".to_string(),
                format!(
                    "+{:.2} ms (`--serve-text all`: +{:.2} ms)",
                    m[1] - m[0],
                    m[2] - m[0]
                ),
                m[1] - m[0] <= 1.0,
            ));
        } else {
            goals.push((
                "`bigtext` (8 MiB of text, touches 10%) ≤ 2× native".to_string(),
                format!(
                    "{:.2}× (`--serve-text all`: {:.2}×, with a record {:.2}×)",
                    m[1] / m[0],
                    m[2] / m[0],
                    m[3] / m[0]
                ),
                m[1] / m[0] <= 2.0,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    Section { md, goals }
}
