//! Trap-free probes: a jump to a trampoline wherever it is safe, the same
//! counts as int3 probes, and the right choice on code built to defeat
//! naive patching.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use common::{
    assert_jump_refused, assert_our_error, compare_with_report, hits, ours, printed, probe_sites,
    probed_report_with, read_report, Case, Output, TempDir,
};
use uprobe_exec_samples::{path, Variant};

fn with_mode(
    tag: &str,
    mode: &str,
    prog: &Path,
    args: &[&str],
    probes: &[&str],
) -> (Output, serde_json::Value) {
    probed_report_with(tag, &["--probe-mode", mode], prog, args, probes)
}

/// Functions of the probed sample where only an int3 fits, with the reason
/// a jump does not.
const ONLY_INT3_FITS: [(&str, &str); 1] = [("defeat_loop", "branches into the displaced bytes")];

#[test]
fn code_built_to_defeat_naive_patching_gets_the_right_choice() {
    // Where a jump fits, auto mode places one; where it does not, only
    // --probe-mode int3 places a probe (auto refuses a named function).
    for (mode, specs, want) in [
        (
            "auto",
            &[
                "defeat_tail",
                "defeat_flags+3",
                "site_mov",
                "defeat_short",
                "defeat_table",
            ][..],
            &[
                ("defeat_short", "jump-padding"), // shorter than 5 bytes, padding after it
                ("defeat_table", "jump"),         // a relative jump table, read whole
                ("defeat_tail", "jump"),          // tail call in the displaced bytes
                ("defeat_flags+0x3", "jump"),     // flags live across the site
                ("site_mov", "jump"),             // RIP-relative load in the displaced bytes
            ][..],
        ),
        (
            "int3",
            &["defeat_loop", "defeat_short", "defeat_table"][..],
            &[
                ("defeat_loop", "int3"),  // a loop branches back to entry+1
                ("defeat_short", "int3"), // shorter than 5 bytes
                ("defeat_table", "int3"), // jump-table dispatch
            ][..],
        ),
    ] {
        for v in Variant::ALL {
            let (out, r) = with_mode(
                "defeat",
                mode,
                &path("probed", v),
                &["defeat", "1000"],
                specs,
            );
            assert_eq!(printed(&out, "defeat"), 1000);
            let got = probe_sites(&r);
            for (label, kind) in want {
                let (_, k, hits) = got
                    .iter()
                    .find(|(l, _, _)| l == label)
                    .unwrap_or_else(|| panic!("{label} in {got:?}"));
                assert_eq!(k, kind, "{label} ({v:?})");
                let calls = if *label == "site_mov" { 0 } else { 1000 };
                assert_eq!(*hits, calls, "{label} ({v:?})");
            }
        }
    }
}

#[test]
fn auto_mode_refuses_a_named_site_where_only_an_int3_fits() {
    let s = path("probed", Variant::Pie);
    for (spec, why) in ONLY_INT3_FITS {
        let out = ours(&["-p", spec], &s, &["defeat", "1"]);
        assert_our_error(spec, &out, 125);
        let err = out.stderr_str();
        assert!(
            err.contains(why) && err.contains("--probe-mode int3"),
            "{spec}: {err}"
        );
    }
    // A pattern skips them, says so, and probes the rest.
    let dir = TempDir::new("defeatglob");
    let report = dir.join("r.json");
    let case = Case::new(&s, ["defeat", "1000"])
        .opt("--report-json")
        .opt(&report)
        .opt("-p")
        .opt("defeat_*");
    let (native, ours) = (case.run_native(), case.run_ours());
    assert_eq!(ours.stdout, native.stdout);
    assert_eq!(ours.code, native.code);
    let r = read_report(&report);
    let labels: Vec<String> = probe_sites(&r).into_iter().map(|(l, _, _)| l).collect();
    assert!(!labels.contains(&"defeat_loop".to_string()), "{labels:?}");
    assert_eq!(hits(&r, "defeat_tail"), printed(&ours, "defeat"));
    assert!(
        r["warnings"].to_string().contains("defeat_loop"),
        "{}",
        r["warnings"]
    );
    assert!(
        ours.stderr_str().contains("not probed"),
        "{}",
        ours.stderr_str()
    );
}

#[test]
fn jump_mode_refuses_unsafe_sites_with_the_reason() {
    assert_jump_refused(
        &path("probed", Variant::Pie),
        &["defeat", "1"],
        &ONLY_INT3_FITS,
    );
}

#[test]
fn counts_are_identical_between_modes() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["basic", "100000"], &["counted"]),
        (&["threads", "8", "20000"], &["counted_mt"]),
        (&["fib", "18"], &["fib"]),
        (&["signal", "200"], &["in_handler"]),
        (&["fork", "3000"], &["after_fork"]),
        (&["dontneed", "500"], &["dropped"]),
        (&["defeat", "300"], &["defeat_tail", "defeat_flags+3"]),
        (
            &["sites", "300"],
            &[
                "site_lea",
                "site_mov",
                "site_call+1",
                "site_jcc+2",
                "site_push",
                "site_adj",
                "site_straddle",
                "site_callee",
            ],
        ),
    ];
    for v in [Variant::Pie, Variant::Static] {
        let prog = path("probed", v);
        for (args, probes) in cases {
            let (_, int3) = with_mode("int3", "int3", &prog, args, probes);
            let (_, jump) = with_mode("jump", "jump", &prog, args, probes);
            let (_, auto) = with_mode("auto", "auto", &prog, args, probes);
            let counts = |r: &serde_json::Value| {
                probe_sites(r)
                    .into_iter()
                    .map(|(l, _, h)| (l, h))
                    .collect::<Vec<_>>()
            };
            assert!(probe_sites(&int3).iter().all(|(_, k, _)| k == "int3"));
            assert!(
                probe_sites(&jump).iter().all(|(_, k, _)| k == "jump"),
                "{args:?}: {:?}",
                probe_sites(&jump)
            );
            assert_eq!(counts(&int3), counts(&jump), "{args:?} {v:?}");
            assert_eq!(counts(&int3), counts(&auto), "{args:?} {v:?}");
            assert!(
                counts(&int3).iter().all(|(_, h)| *h > 0),
                "{args:?}: {:?}",
                counts(&int3)
            );
        }
    }
}

/// Threads hammering one jump site count in their own stack slots' blocks
/// of the process's row; the totals and the process's row stay exact.
#[test]
fn hits_from_many_threads_on_one_site_add_up_exactly() {
    for v in [Variant::Pie, Variant::Static] {
        let (out, r) = with_mode(
            "hitloop-mt",
            "jump",
            &path("probed", v),
            &["hammer", "push", "16", "40000"],
            &["hit_push"],
        );
        assert_eq!(printed(&out, "hit_push"), 16 * 40000);
        assert_eq!(
            probe_sites(&r),
            vec![("hit_push".to_string(), "jump".to_string(), 16 * 40000)]
        );
        let per = r["per_process"].as_array().expect("per_process");
        assert_eq!(per.len(), 1, "{per:?}");
        assert_eq!(
            per[0]["hits"]["hit_push"].as_u64(),
            Some(16 * 40000),
            "{per:?}"
        );
    }
}

#[test]
fn a_jump_that_straddles_a_page_is_consistent_whichever_page_comes_first() {
    // site_straddle's 5 bytes cross a page boundary; dropping both pages and
    // touching them in either order must give the same jump.
    let (out, r) = with_mode(
        "straddle",
        "jump",
        &path("probed", Variant::Static),
        &["sites", "2000"],
        &["site_straddle"],
    );
    assert_eq!(printed(&out, "sites"), 2000);
    assert_eq!(
        probe_sites(&r)[0],
        ("site_straddle".to_string(), "jump".to_string(), 2000)
    );
}

#[test]
fn python_with_py_star_in_auto_mode() {
    let script =
        "import json\nd = {str(i): [i] * 3 for i in range(2000)}\nprint(len(json.dumps(d)))\n";
    let case = Case::new("/usr/bin/python3.11", ["-c", script])
        .env("PYTHONHASHSEED", "0")
        .opt("-q")
        .opt("-p")
        .opt("Py*");
    let (_, ours, r) = compare_with_report("pyjump", case);
    assert_eq!(ours.stdout_str(), "51560\n");
    let all = probe_sites(&r);
    let jumps = all.iter().filter(|(_, k, _)| k == "jump").count();
    eprintln!("python3.11 Py*: {} sites, {jumps} jumps", all.len());
    assert!(
        jumps > all.len() / 2,
        "most Py* entries take a jump: {jumps} of {}",
        all.len()
    );
    let hits: u64 = all.iter().map(|(_, _, h)| h).sum();
    assert!(hits > 10_000, "{hits}");
}
