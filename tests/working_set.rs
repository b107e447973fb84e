//! `--prefetch=recorded`: the pages of the program's text a run touched
//! first (its faults), kept in the user's cache under the program file's
//! identity and the probes, and installed in the background from the start
//! of the next run of the same file with the same probes, before anything
//! else. Every run's output is
//! compared with a native run; what a run touches is what the sample says
//! of itself: `bigtext` (2048 one-page functions) calls every 10th.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use common::{compare_with_report, privileged, text_field, Case, TempDir};
use uprobe_exec_samples::{path as sample, Variant};

/// Functions `bigtext` calls by default: every 10th of its 2048.
const TOUCHED: u64 = 2048_u64.div_ceil(10);

/// Runs `prog` natively and ours with `--prefetch=recorded` and `opts`,
/// the whole text served (a record is of the pages we serve), the cache
/// under `dir`: the report's (recorded, faults, served, pages).
fn recorded_run(dir: &TempDir, prog: &Path, opts: &[&str]) -> (u64, u64, u64, u64) {
    let mut case = Case::new(prog, Vec::<&str>::new())
        .env("XDG_CACHE_HOME", dir.join("cache").to_str().unwrap())
        .opt("-q")
        .opt("--serve-text")
        .opt("all")
        .opt("--prefetch=recorded");
    for o in opts {
        case = case.opt(o);
    }
    let (n, _, r) = compare_with_report("recorded", case);
    assert_eq!(n.code, Some(0), "{}", n.stderr_str());
    let f = |k| text_field(&r, k);
    (f("recorded"), f("faults"), f("served"), f("pages"))
}

#[test]
fn a_recorded_working_set_is_installed_from_the_start() {
    if !privileged("the working set is installed through the fault server, in full mode") {
        return;
    }
    let dir = TempDir::new("ws-converge");
    let prog = dir.copy(&sample("bigtext", Variant::Pie), "bigtext", 0o755);
    // No record yet: every touched page faults (with its neighbours).
    let (recorded, first_faults, _, _) = recorded_run(&dir, &prog, &[]);
    assert_eq!(recorded, 0);
    assert!(first_faults > 0);
    // A page that fault-around installed before its first touch is not
    // known to be touched; it faults once its neighbour is installed up
    // front, and joins: a few runs make the record whole.
    let mut last = (0, 0, 0, 0);
    for _ in 0..4 {
        last = recorded_run(&dir, &prog, &[]);
    }
    let (recorded, faults, served, pages) = last;
    // The program runs while the record is installed: a page it reaches
    // first faults, but fewer than without a record.
    assert!(
        faults < first_faults,
        "{faults} faults with the record, {first_faults} without"
    );
    assert!(
        served < pages / 4,
        "the working set, not the text: {served} of {pages}"
    );
    // The same with a shared object served too (a probe in libc): its
    // mapping must not stop the record's install.
    let (_, first_with_lib, _, _) = recorded_run(&dir, &prog, &["-p", "libc.so.6:getpid"]);
    let mut with_lib = first_with_lib;
    for _ in 0..4 {
        with_lib = recorded_run(&dir, &prog, &["-p", "libc.so.6:getpid"]).1;
    }
    assert!(
        with_lib * 2 < first_with_lib,
        "{with_lib} faults with the record and a library served, {first_with_lib} without"
    );
    // The called functions' pages, and those of main and the rest
    // (the text's pages beyond the 2048 functions', and one to spare).
    let rest = pages - 2048;
    assert!(
        (TOUCHED..=TOUCHED + rest + 1).contains(&recorded),
        "recorded {recorded} of {pages} pages; bigtext touches {TOUCHED} functions"
    );
}

#[test]
fn a_record_is_not_used_for_a_changed_file_nor_other_probes() {
    if !privileged("the working set is installed through the fault server, in full mode") {
        return;
    }
    let dir = TempDir::new("ws-stale");
    let prog = dir.copy(&sample("bigtext", Variant::Pie), "bigtext", 0o755);
    recorded_run(&dir, &prog, &[]);
    let (recorded, ..) = recorded_run(&dir, &prog, &[]);
    assert!(recorded > 0, "the second run uses the first one's record");
    // Other probes: another record, none yet.
    let (recorded, faults, ..) = recorded_run(&dir, &prog, &["-p", "big_000"]);
    assert_eq!((recorded, faults > 0), (0, true));
    // The file changed in place (another build of the program: other
    // addresses): its record is never read, and the run is as native.
    std::fs::write(
        &prog,
        std::fs::read(sample("bigtext", Variant::NoPie)).unwrap(),
    )
    .unwrap();
    let (recorded, faults, ..) = recorded_run(&dir, &prog, &[]);
    assert_eq!(
        (recorded, faults > 0),
        (0, true),
        "a stale record is ignored"
    );
    let (recorded, ..) = recorded_run(&dir, &prog, &[]);
    assert!(recorded > 0, "the changed file's own record");
}
