//! `--serve-text probed`: only the program's text pages that probes patch
//! are served; every other page is mapped from the program's file by the
//! kernel, as natively. Hits are checked against counts the programs print
//! themselves, output against native runs, and the mappings against the
//! kernel's own account (`/proc/self/maps`).

#[path = "common/mod.rs"]
mod common;

use common::{hits, printed, privileged, probed_report_with, text_field, Case};
use uprobe_exec_samples::{path, Variant};

const PY: &str = "/usr/bin/python3.11";

/// `--serve-text probed` and, after it, `extra`.
fn opts<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--serve-text", "probed"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn probes_count_exactly_when_only_their_pages_are_served() {
    for v in Variant::ALL {
        let s = path("probed", v);
        let (out, r) = probed_report_with(
            "st-basic",
            &opts(&[]),
            &s,
            &["basic", "100000"],
            &["counted"],
        );
        assert_eq!(hits(&r, "counted"), printed(&out, "counted"), "{v:?}");
        assert_eq!(hits(&r, "counted"), 100_000, "{v:?}");
        // One function's page (two if its patch straddles a page end).
        let pages = text_field(&r, "pages");
        assert!((1..=2).contains(&pages), "{v:?}: {pages} pages served: {r}");

        let (out, r) = probed_report_with(
            "st-threads",
            &opts(&[]),
            &s,
            &["threads", "8", "20000"],
            &["counted_mt"],
        );
        assert_eq!(hits(&r, "counted_mt"), printed(&out, "counted_mt"), "{v:?}");

        let (out, r) = probed_report_with(
            "st-fork",
            &opts(&[]),
            &s,
            &["fork", "3000"],
            &["after_fork"],
        );
        assert!(
            out.stdout_str().contains("child after_fork=3000"),
            "{}",
            out.stdout_str()
        );
        assert_eq!(hits(&r, "after_fork"), 3000, "the child's hits ({v:?})");

        let (out, r) = probed_report_with(
            "st-int3",
            &opts(&["--probe-mode", "int3"]),
            &s,
            &["fib", "18"],
            &["fib"],
        );
        assert_eq!(hits(&r, "fib"), printed(&out, "fib_calls"), "{v:?}");
    }
}

#[test]
fn a_dropped_probed_page_is_patched_again() {
    let s = path("probed", Variant::Pie);
    for mode in ["jump", "int3"] {
        let (out, r) = probed_report_with(
            "st-dontneed",
            &opts(&["--probe-mode", mode, "--no-prefetch"]),
            &s,
            &["dontneed", "500"],
            &["dropped"],
        );
        assert_eq!(hits(&r, "dropped"), printed(&out, "dropped"), "{mode}");
        assert_eq!(hits(&r, "dropped"), 500, "{mode}");
        if privileged("refaults are served (and counted) in full mode") {
            assert!(text_field(&r, "refaults") >= 499, "{mode}: {r}");
        }
    }
}

/// The bytes of python's text mapped from its file, as python reads them
/// in `/proc/self/maps`, after some work with C code (json, re).
const TEXT_FROM_FILE: &str = "import json, re
print(json.dumps([re.sub('a+', 'b', 'caaat')] * 3))
n = 0
for l in open('/proc/self/maps'):
    f = l.split()
    if f[1] == 'r-xp' and f[-1].endswith('/python3.11'):
        lo, hi = (int(x, 16) for x in f[0].split('-'))
        n += hi - lo
print('text', n)";

fn text_from_file(out: &common::Output) -> u64 {
    let s = out.stdout_str();
    s.lines()
        .find_map(|l| l.strip_prefix("text "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no text line in {s}"))
}

#[test]
fn the_program_s_unprobed_text_is_its_file_as_natively() {
    let native = Case::new(PY, ["-c", TEXT_FROM_FILE]).run_native();
    assert_eq!(native.code, Some(0), "{}", native.stderr_str());
    let whole = text_from_file(&native);
    assert!(whole > 1 << 20, "python's text from its file: {whole}");

    // Probed: all of it but the served pages, which hold the probes' sites.
    let dir = common::TempDir::new("st-python");
    let report = dir.join("r.json");
    let out = Case::new(PY, ["-c", TEXT_FROM_FILE])
        .opt("--serve-text")
        .opt("probed")
        .opt("-q")
        .opt("-p")
        .opt("PyList_Append")
        .opt("-p")
        .opt("PyDict_SetItem")
        .opt("--report-json")
        .opt(&report)
        .run_ours();
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(
        out.stdout_str().lines().next(),
        native.stdout_str().lines().next()
    );
    let r = common::read_report(&report);
    let served = text_field(&r, "pages");
    // Two functions' pages, and what lies between them if that is short.
    assert!((2..=4 + 16).contains(&served), "{served} pages served: {r}");
    assert_eq!(
        text_from_file(&out),
        whole - served * 4096,
        "{}",
        out.stdout_str()
    );
    assert!(
        hits(&r, "PyList_Append") > 0 && hits(&r, "PyDict_SetItem") > 0,
        "{r}"
    );

    // No probe: nothing served, nothing faults, maps as natively.
    let report = dir.join("none.json");
    let case = Case::new(PY, ["-c", TEXT_FROM_FILE])
        .opt("--serve-text")
        .opt("probed")
        .opt("--report-json")
        .opt(&report);
    let (native, ours) = case.compare();
    assert_eq!(text_from_file(&ours), text_from_file(&native));
    let r = common::read_report(&report);
    assert_eq!(text_field(&r, "pages"), 0, "{r}");
    assert_eq!(text_field(&r, "faults"), 0, "{r}");
}

#[test]
fn shells_and_forks_run_as_natively_with_probed_text() {
    let script = "for i in 1 2 3; do echo line $i; done | gzip | gzip -d | sort -r; \
                  ( exit 4 ); echo sub=$?; exit 3";
    Case::new("/bin/bash", ["-c", script])
        .opt("--serve-text")
        .opt("probed")
        .compare();
    Case::new("/bin/bash", ["-c", script])
        .opt("--serve-text")
        .opt("probed")
        .opt("-q")
        .opt("-p")
        .opt("execute_command")
        .compare();
    // Every function of a static glibc program probed: most pages served,
    // the others the file's, side by side.
    Case::new(path("hello", Variant::Static), ["a", "b"])
        .opt("--serve-text")
        .opt("probed")
        .opt("-q")
        .opt("-p")
        .opt("*")
        .compare();
}

#[test]
fn an_ordinary_user_s_probed_text_is_served_from_the_sealed_copy() {
    if !common::is_root() {
        return;
    }
    let (dir, tool) = common::nobody_dir("st-nobody");
    let s = dir.copy(&path("probed", Variant::Pie), "probed", 0o755);
    let report = dir.join("r.json");
    let case = Case::new(&s, ["basic", "5000"])
        .nobody()
        .tool(&tool)
        .opt("--serve-text")
        .opt("probed")
        .opt("-q")
        .opt("-p")
        .opt("counted")
        .opt("--report-json")
        .opt(&report);
    let (_, ours) = case.compare();
    let r = common::read_report(&report);
    common::assert_unprivileged_handoff("probed text as nobody", &r);
    assert_eq!(hits(&r, "counted"), printed(&ours, "counted"));
    assert_eq!(hits(&r, "counted"), 5000);
    assert!((1..=2).contains(&text_field(&r, "pages")), "{r}");
}
