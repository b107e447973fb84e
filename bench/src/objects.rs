//! Shared objects (issue 15): a probe hit in a `dlopen`ed object beside one
//! in the program, and what serving an object costs a short run, side by
//! side in one set of alternating runs.

use std::fmt::Write as _;

use crate::Section;
use std::process::{Command, Stdio};

/// The sample's own ns per call (`ns_per_call=` on its stdout).
fn ns_per_call(argv: &[&str]) -> Option<f64> {
    crate::printed(argv, "ns_per_call=")
}

/// `runs` alternating rounds of: the hit loops (in the program and in a
/// shared object, unprobed and probed with a jump), and `python3.11 -c
/// pass` under uprobe-exec with no probe, a probe in the program, and a
/// probe in libc (which serves libc's and ld.so's text).
pub fn section(ux: &str, runs: usize) -> Section {
    use uprobe_exec_samples::{path, shared_object, Variant};
    let probed = path("probed", Variant::Pie);
    let libcalls = path("libcalls", Variant::Pie);
    let plugin = shared_object("libplugin.so");
    let (probed, libcalls, plugin) = (
        probed.to_str().expect("utf-8"),
        libcalls.to_str().expect("utf-8"),
        plugin.to_str().expect("utf-8"),
    );
    let n = "10000000";
    let hit_cmds: [Vec<&str>; 4] = [
        vec![probed, "hitloop", "push", n],
        vec![
            ux,
            "-q",
            "--probe-mode",
            "jump",
            "-p",
            "hit_push",
            probed,
            "hitloop",
            "push",
            n,
        ],
        vec![libcalls, "hitloop", n, plugin],
        vec![
            ux,
            "-q",
            "-p",
            "libplugin.so:plugin_hit",
            libcalls,
            "hitloop",
            n,
            plugin,
        ],
    ];
    let py = "/usr/bin/python3.11";
    // The last two without the cache: the analysis, the objects at start
    // and libc's sites found afresh at each start.
    let start_cmds: [(Vec<&str>, bool); 6] = [
        (vec![py, "-c", "pass"], true),
        (vec![ux, "-q", py, "-c", "pass"], true),
        (vec![ux, "-q", "-p", "Py_Main", py, "-c", "pass"], true),
        (
            vec![ux, "-q", "-p", "libc.so.6:getpid", py, "-c", "pass"],
            true,
        ),
        (vec![ux, "-q", "-p", "Py_Main", py, "-c", "pass"], false),
        (
            vec![ux, "-q", "-p", "libc.so.6:getpid", py, "-c", "pass"],
            false,
        ),
    ];
    let mut hits: [Vec<f64>; 4] = Default::default();
    let mut ms: [Vec<f64>; 6] = Default::default();
    for round in 0..=runs {
        for (c, v) in hit_cmds.iter().zip(&mut hits) {
            if let Some(x) = ns_per_call(c) {
                if round > 0 {
                    v.push(x);
                }
            }
        }
        for ((c, cached), v) in start_cmds.iter().zip(&mut ms) {
            let mut cmd = Command::new(c[0]);
            if !cached {
                cmd.env("UPROBE_EXEC_CACHE", "off");
            }
            let t = std::time::Instant::now();
            let ok = cmd
                .args(&c[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok && round > 0 {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "## 9. Shared objects\n");
    let mut goals = Vec::new();
    if hits.iter().all(|v| !v.is_empty()) {
        let [u, j, lu, lj] = hits.map(|v| crate::median(&v));
        let (own, lib_own) = (j - u, lj - lu);
        let _ = writeln!(md, "A jump probe's hit in the program (`probed hitloop push`, `hit_push`) and in a `dlopen`ed object (`libcalls hitloop`, the plugin's `plugin_hit`, the same code), ns per call, medians of {runs} alternating rounds:\n");
        let _ = writeln!(md, "| where | unprobed ns | jump ns | own cost ns |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        let _ = writeln!(md, "| program | {u:.2} | {j:.2} | {own:.2} |");
        let _ = writeln!(md, "| shared object | {lu:.2} | {lj:.2} | {lib_own:.2} |\n");
        goals.push((
            "a hit in a shared object costs what one in the program costs (own cost within 1 ns)"
                .to_string(),
            format!("{lib_own:.2} ns vs {own:.2} ns"),
            (lib_own - own).abs() <= 1.0,
        ));
    }
    if ms.iter().all(|v| !v.is_empty()) {
        let [native, none, main, lib, main_cold, lib_cold] = ms.map(|v| crate::median(&v));
        let _ = writeln!(md, "`python3.11 -c pass`, wall ms, medians of {runs} alternating rounds. A probe in libc serves the page of libc that holds `getpid` and ld.so's text (the rest of libc, and the other objects, stay the kernel's). With the cache (as after a first run): the program's analysis, the objects at start (`ld.so --list`) and libc's sites are read from it; without (`UPROBE_EXEC_CACHE=off`), found afresh at each start:\n");
        let _ = writeln!(md, "| run | ms | / native | / probe in the program |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        let _ = writeln!(md, "| native | {native:.1} | 1.00× | |");
        let _ = writeln!(
            md,
            "| ours, no probe | {none:.1} | {:.2}× | |",
            none / native
        );
        let _ = writeln!(
            md,
            "| ours, `-p Py_Main` | {main:.1} | {:.2}× | 1.00× |",
            main / native
        );
        let _ = writeln!(
            md,
            "| ours, `-p libc.so.6:getpid` | {lib:.1} | {:.2}× | {:.2}× |",
            lib / native,
            lib / main
        );
        let _ = writeln!(
            md,
            "| ours, `-p Py_Main`, no cache | {main_cold:.1} | {:.2}× | 1.00× |",
            main_cold / native
        );
        let _ = writeln!(
            md,
            "| ours, `-p libc.so.6:getpid`, no cache | {lib_cold:.1} | {:.2}× | {:.2}× |\n",
            lib_cold / native,
            lib_cold / main_cold
        );
        goals.push((
            "`python3.11 -c pass` with libc's text served ≤ 1.05× of main-executable-only serving (one probe each)".to_string(),
            format!("{:.2}×", lib / main),
            lib / main <= 1.05,
        ));
    }
    Section { md, goals }
}
