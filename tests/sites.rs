//! Do no harm in placing probes: a jump never covers a place that other code
//! enters, a glob passes over what cannot be probed (and says so), and the
//! messages about probes stay readable. Every run is compared with a native
//! run of the same program.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use common::{
    assert_jump_refused, assert_our_error, assert_same, compare_with_report, installed, ours,
    printed, probe_sites, probed_report_with, read_report, Case, Output, TempDir,
};
use uprobe_exec_samples::{path, Variant, NAMES};

/// Our stderr without the lines of our own warnings.
fn without_our_warnings(mut out: Output) -> Output {
    let text = out.stderr_str();
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("uprobe-exec: warning: "))
        .collect();
    out.stderr = kept.into_bytes();
    out
}

/// Runs natively and under uprobe-exec with `opts`; the same output, apart
/// from our warnings on stderr. Returns our run as it was.
fn same_as_native(case: Case) -> Output {
    let native = case.run_native();
    let ours = case.run_ours();
    let what = format!("{:?} {:?}", case.opts, case.argv);
    assert_same(&what, &native, &without_our_warnings(ours.clone()));
    ours
}

#[test]
fn a_jump_never_covers_a_place_entered_from_elsewhere() {
    // Each xe_* function is entered at +1 from outside itself; xe_plain,
    // of the same shape, only at its entry. Auto mode takes a jump where
    // it fits and skips the others (an int3 is not safe); int3 mode
    // places int3s, which count exactly.
    let n = 1000;
    for v in Variant::ALL {
        for (mode, want) in [
            (
                "auto",
                &[
                    ("xe_plain", "jump", n),
                    ("xe_jumper", "jump", n),
                    ("xe_dispatch", "jump", n), // its relative jump table is read whole
                ][..],
            ),
            (
                "int3",
                &[
                    ("xe_target", "int3", n),        // jumped to at +1 by xe_jumper
                    ("xe_ptr", "int3", n),           // +1 is stored in data, called through it
                    ("xe_table", "int3", n + n / 2), // +1 is in xe_dispatch's jump table; +0 too
                    ("xe_label", "int3", n),         // a symbol at +1
                ][..],
            ),
        ] {
            let (out, r) = probed_report_with(
                "enter",
                &["--probe-mode", mode],
                &path("sites", v),
                &["enter", "1000"],
                &["xe_*"],
            );
            assert_eq!(printed(&out, "enter"), n);
            let got = probe_sites(&r);
            for (name, kind, hits) in want {
                let (_, k, h) = got
                    .iter()
                    .find(|(l, _, _)| l == name)
                    .unwrap_or_else(|| panic!("{name} in {got:?}"));
                assert_eq!((k.as_str(), *h), (*kind, *hits), "{name} ({v:?})");
            }
            if mode == "auto" {
                assert_eq!(got.len(), 3, "only the jump sites: {got:?}");
                assert!(r["warnings"].to_string().contains("xe_target"), "{r}");
            }
        }
    }
}

#[test]
fn jump_mode_names_what_enters_the_displaced_bytes() {
    let s = path("sites", Variant::Static);
    for (spec, why) in [
        (
            "xe_target",
            "branches into the displaced bytes, at xe_target+0x1",
        ),
        ("xe_ptr", "the pointer at"),
        ("xe_table", "the jump table at"),
        ("xe_label", "a symbol points into the displaced bytes"),
    ] {
        let out = ours(&["--probe-mode", "jump", "-p", spec], &s, &["enter", "1"]);
        assert_our_error(spec, &out, 125);
        assert!(
            out.stderr_str().contains(why),
            "{spec}: {}",
            out.stderr_str()
        );
    }
    // The same shape, entered only at its first byte, takes a jump.
    same_as_native(
        Case::new(&s, ["enter", "50"])
            .opt("-q")
            .opt("--probe-mode")
            .opt("jump")
            .opt("-p")
            .opt("xe_plain"),
    );
}

#[test]
fn a_jump_never_covers_an_exception_landing_pad() {
    // lp_fn+0xb is a landing pad (known only from the LSDA) that lp_fn+0x9
    // falls through to: a 5-byte jump at +0x9 would displace it, a 2-byte
    // one stops before it.
    for v in Variant::ALL {
        let s = path("sites", v);
        for (mode, kind) in [("jump", "jump-short-"), ("int3", "int3")] {
            let (out, r) = probed_report_with(
                "unwind",
                &["--probe-mode", mode],
                &s,
                &["unwind", "40"],
                &["lp_fn+9"],
            );
            assert_eq!(printed(&out, "landing_pad"), 40);
            let k = r["probes"][0]["kind"].as_str().unwrap_or_default();
            assert!(k.starts_with(kind), "{mode} {v:?}: {k}");
            // Only the threads that return fall through the site.
            assert_eq!(r["probes"][0]["hits"], 20, "{mode} {v:?}");
        }
    }
}

/// Small workloads for each sample.
fn workloads(name: &str) -> &'static [&'static [&'static str]] {
    match name {
        "hello" => &[&["a", "b"]],
        "bigtext" => &[&["50"]],
        "layout" => &[&["recurse", "1"]],
        "pages" => &[&["--threads", "4"], &["--fork"]],
        "probed" => &[&["sites", "20"], &["fork", "20"]],
        "sites" => &[&["enter", "20"], &["unwind", "6"]],
        "spin" => &[&["1000"]],
        "crash" => &[&["10"]],
        "harm" => &[&["blockedthread", "20"], &["ignoretrap", "5"]],
        "nodump" => &[&["10"]],
        // Its other modes print tids, pids or times, which differ run to run.
        "events" => &[&["strings", "10"]],
        "unwind" => &[
            &["throw", "3", "4"],
            &["catch", "5"],
            &["backtrace"],
            &["context", "5"],
        ],
        // Its fork mode prints pids.
        "latency" => &[
            &["fib", "12"],
            &["longjmp", "5", "3"],
            &["deep", "100"],
            &["threads", "2", "100"],
            &["sleeps", "1", "0"],
        ],
        // Reads its own text: under '*' it sees the probes (README).
        "selfmem" => &[],
        other => panic!("no workload for the sample {other}: add one here"),
    }
}

#[test]
fn every_function_of_every_sample_probed_runs_as_natively() {
    for name in NAMES {
        for v in Variant::ALL {
            for args in workloads(name) {
                same_as_native(Case::new(path(name, v), *args).opt("-q").opt("-p").opt("*"));
            }
        }
    }
}

/// Every workload of every sample's PIE build, run with `opts` after
/// `-q`, as natively; then `check(sample, args)`.
fn each_workload_runs_as_natively(opts: &[&std::ffi::OsStr], mut check: impl FnMut(&str, &[&str])) {
    for name in NAMES {
        for args in workloads(name) {
            let case = opts.iter().fold(
                Case::new(path(name, Variant::Pie), *args).opt("-q"),
                |c, o| c.opt(o),
            );
            same_as_native(case);
            check(name, args);
        }
    }
}

#[test]
fn every_function_of_every_sample_traced_runs_as_natively() {
    // --trace '*': every site also writes events (to a file, so that the
    // program's own stderr is compared too).
    let dir = TempDir::new("trace-star");
    let events = dir.join("events");
    let opts = [
        "--trace".as_ref(),
        "*".as_ref(),
        "-o".as_ref(),
        events.as_os_str(),
    ];
    each_workload_runs_as_natively(&opts, |_, _| {});
}

#[test]
fn every_function_of_every_sample_timed_runs_as_natively() {
    // --latency '*': every function that can be timed has its entry and
    // every exit patched; the program's output and exit are the native ones.
    each_workload_runs_as_natively(&["--latency".as_ref(), "*".as_ref()], |_, _| {});
}

#[test]
fn every_function_of_every_sample_with_its_returns_traced_runs_as_natively() {
    // Every entry traced and every return traced with its value read as a
    // string (a system call per return, on whatever rax holds), into a
    // timeline: the program's output and exit are the native ones, and the
    // timeline is JSON.
    let dir = TempDir::new("return-star");
    let timeline = dir.join("t.json");
    let opts = [
        "--trace".as_ref(),
        "*".as_ref(),
        "--trace".as_ref(),
        "*%return(str)".as_ref(),
        "--perfetto".as_ref(),
        timeline.as_os_str(),
    ];
    each_workload_runs_as_natively(&opts, |name, args| {
        let text = std::fs::read_to_string(&timeline).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} {args:?}: the timeline is not JSON: {e}"));
        assert!(v["traceEvents"].is_array(), "{name} {args:?}");
    });
}

#[test]
fn every_sample_counts_the_same_in_int3_and_jump_sites() {
    // Every function of every sample, once with the jumps auto mode places
    // (every tactic; auto places no int3) and once with int3s: each jump
    // site's count is its int3 count. Both runs print what natively does.
    // harm and nodump block or take SIGTRAP themselves, which an int3
    // cannot survive (README, "Int3 sites"): they have no int3 run to
    // compare.
    for name in NAMES.iter().filter(|&&n| n != "harm" && n != "nodump") {
        for args in workloads(name) {
            let run = |mode: &str| {
                let case = Case::new(path(name, Variant::Pie), *args)
                    .opt("-q")
                    .opt("--probe-mode")
                    .opt(mode)
                    .opt("-p")
                    .opt("*");
                let (_, _, r) = compare_with_report(&format!("{name}-{mode}"), case);
                probe_sites(&r)
            };
            let (jumps, traps) = (run("auto"), run("int3"));
            assert!(!jumps.is_empty(), "{name} {args:?}");
            for (label, kind, hits) in &jumps {
                assert!(kind.starts_with("jump"), "{name}: {label} {kind}");
                let (_, _, h) = traps
                    .iter()
                    .find(|(l, _, _)| l == label)
                    .unwrap_or_else(|| panic!("{name}: {label} in int3 mode"));
                assert_eq!(hits, h, "{name} {args:?}: {label} ({kind})");
            }
        }
    }
}

#[test]
fn a_glob_skips_what_cannot_be_probed_and_says_why() {
    let s = path("sites", Variant::Pie);
    let dir = TempDir::new("skip");
    let report = dir.join("r.json");
    let out = same_as_native(
        Case::new(&s, ["skip", "300"])
            .opt("-q")
            .opt("--report-json")
            .opt(&report)
            .opt("-p")
            .opt("skip_*"),
    );
    // -q keeps our warnings off the program's stderr; the report has them.
    assert!(
        !out.stderr_str().contains("uprobe-exec: warning"),
        "{}",
        out.stderr_str()
    );
    let r = read_report(&report);
    let all: Vec<String> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 1, "one summary warning: {all:?}");
    let warnings = [all[0].as_str()];
    for needle in [
        "skipped 3 of the 4",
        "not in the executable text: skip_marker",
        "cannot run out of line: skip_int3, skip_ud2",
    ] {
        assert!(warnings[0].contains(needle), "{needle}: {}", warnings[0]);
    }
    assert_eq!(
        probe_sites(&r),
        [("skip_ok".to_string(), "jump".to_string(), 300)]
    );

    // Named one by one, each is an error with its reason.
    for (spec, why) in [
        ("skip_ud2", "`ud2` is undefined on purpose"),
        ("skip_int3", "`int3` raises an interrupt"),
        ("skip_marker", "is not in the executable text"),
    ] {
        let out = ours(&["-p", spec], &s, &["skip", "1"]);
        assert_our_error(spec, &out, 125);
        assert!(
            out.stderr_str().contains(why),
            "{spec}: {}",
            out.stderr_str()
        );
    }

    // --list shows why.
    let out = ours(&["--list", "-p", "skip_*"], &s, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let list = out.stdout_str();
    for (name, why) in [
        (
            "skip_ud2",
            "(cannot be probed: its first instruction `ud2` is undefined on purpose)",
        ),
        (
            "skip_int3",
            "(cannot be probed: its first instruction `int3` raises an interrupt)",
        ),
        (
            "skip_marker",
            "(cannot be probed: it is not in the executable text)",
        ),
    ] {
        let line = list
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} in {list}"));
        assert!(line.contains(why), "{line}");
    }
    let ok = list
        .lines()
        .find(|l| l.contains(" skip_ok "))
        .expect("skip_ok listed");
    assert!(!ok.contains("cannot"), "{ok}");
    // The tactic auto mode takes at each entry, or why no jump fits.
    assert!(ok.ends_with(" skip_ok  [jump]"), "{ok}");
    let out = ours(&["--list", "-p", "pad_*"], &s, &[]);
    let list = out.stdout_str();
    for (name, tactic) in [
        ("pad_ret", "[jump-padding]"),
        ("pad_jumper", "[jump]"),
        ("pad_tight", "[jump-short-padding]"),
        ("pad_target", "[jump-short-padding]"),
    ] {
        let line = list
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} in {list}"));
        assert!(line.contains(tactic), "{line}");
    }
}

/// A command to run natively and under `--probe '*'`.
fn all_probed(prog: &str, args: &[&str]) -> Case {
    Case::new(prog, args).opt("-q").opt("-p").opt("*")
}

#[test]
fn every_function_of_bash_and_perl_probed_runs_as_natively() {
    let script = "x=0; for i in 1 2 3 4 5; do x=$((x + i * i)); done; echo \"sum $x\"; \
                  printf '%s\\n' \"${BASH_VERSINFO[0]}\" | tr 0-9 a-j; case abc in a*) echo glob;; esac";
    same_as_native(all_probed("/usr/bin/bash", &["-c", script]));
    let perl = "my %h = map { $_ => $_ * 2 } 1..50; my @k = sort { $a <=> $b } keys %h; \
                printf \"%d %s\\n\", scalar(@k), join(',', map { $h{$_} } @k[0..4]); \
                my $s = 'abc' x 3; $s =~ s/b/B/g; print \"$s\\n\"";
    same_as_native(all_probed("/usr/bin/perl", &["-e", perl]));
}

#[test]
fn node_keeps_its_copied_builtins_unprobed() {
    // V8 copies its embedded builtins (Builtins_*) next to its code range
    // and runs the copy: a probe there would break the copy. Before, a
    // jump in Builtins_* killed node with SIGSEGV, an int3 with SIGTRAP.
    let js = "console.log([3, 1, 2].map(x => x * 2).sort().join(','))";
    if !installed("/usr/bin/node") {
        return;
    }
    let case = all_probed("/usr/bin/node", &["-e", js]);
    let dir = TempDir::new("node");
    let report = dir.join("r.json");
    let case = Case {
        opts: ["-q", "-p", "Builtins_*", "-p", "uv_*", "--report-json"]
            .iter()
            .map(Into::into)
            .chain([report.clone().into_os_string()])
            .collect(),
        ..case
    };
    same_as_native(case);
    let r = read_report(&report);
    assert!(
        r["warnings"]
            .to_string()
            .contains("copied and run elsewhere by the program: Builtins_"),
        "{r}"
    );
    let out = ours(
        &["-p", "Builtins_ArrayMap"],
        Path::new("/usr/bin/node"),
        &["-e", "1"],
    );
    assert_our_error("Builtins_ArrayMap", &out, 125);
    assert!(
        out.stderr_str().contains("V8's embedded builtins"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn a_program_whose_code_is_all_in_shared_libraries_says_so() {
    // sqlite3 defines no function of its own that it exports, and has no
    // .symtab: its code is in libsqlite3.
    let out = ours(
        &["-p", "*"],
        Path::new("/usr/bin/sqlite3"),
        &[":memory:", "select 1;"],
    );
    assert_our_error("sqlite3 '*'", &out, 125);
    let err = out.stderr_str();
    assert!(
        err.contains("libsqlite3.so.0") && err.contains("OBJECT:PATTERN"),
        "{err}"
    );
}

#[test]
fn a_function_of_a_shared_library_is_named_as_such() {
    let hello = path("hello", Variant::Pie);
    for name in ["fprintf", "malloc"] {
        let out = ours(&["-p", name], &hello, &[]);
        assert_our_error(name, &out, 125);
        let err = out.stderr_str();
        assert!(
            err.contains("shared library") && err.contains("libc.so.6"),
            "{name}: {err}"
        );
        assert!(err.contains(&format!("OBJECT:{name}")), "{name}: {err}");
        assert!(
            !err.contains("close names") && !err.contains("stripped"),
            "{name}: {err}"
        );
    }
}

#[test]
fn close_names_rank_the_fewest_edits_first() {
    let out = ours(&["-p", "fbi"], path("probed", Variant::Pie), &["fib", "5"]);
    assert_our_error("fbi", &out, 125);
    assert!(
        out.stderr_str().contains("; close names: fib"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn the_count_table_caps_long_names() {
    // long_fn's symbol is 69637 characters long.
    for v in [Variant::Static, Variant::Pie] {
        let case = Case::new(path("sites", v), ["long", "7"])
            .opt("-p")
            .opt("long_*")
            .opt("-p")
            .opt("short_fn");
        let (native, out) = (case.run_native(), case.run_ours());
        // Ours printed the table after the program's (empty) stderr.
        let err = out.stderr_str();
        let table_at = err
            .find("uprobe-exec: 2 probe sites")
            .expect("the count table");
        let mut program_only = out.clone();
        program_only.stderr.truncate(table_at);
        assert_same("sites long", &native, &program_only);
        let table: Vec<&str> = err.lines().skip_while(|l| !l.starts_with("FUNC")).collect();
        assert_eq!(table.len(), 3, "{err}");
        let width = table[0].chars().count();
        assert!(width <= 64, "header is {width} characters");
        for l in &table {
            assert_eq!(l.chars().count(), width, "aligned: {l:?}");
        }
        assert!(
            table[1].starts_with("long_xxxx") && table[1].contains('…'),
            "{}",
            table[1]
        );
        assert!(
            table[1].ends_with(" 7")
                && table[2].starts_with("short_fn ")
                && table[2].ends_with(" 7")
        );
    }
}

/// A site as a report shows it: label, kind, hits.
type Expected<'a> = (&'a str, &'a str, u64);

/// `sites MODE 500` with `MODE_*` probed, in every variant, in auto and in
/// int3 mode: the output is native's, and the sites are exactly `want`'s
/// for that probe mode (label, kind, hits).
fn assert_site_kinds(mode: &str, want: &[(&str, &[Expected])]) {
    let pattern = format!("{mode}_*");
    for v in Variant::ALL {
        let s = path("sites", v);
        for (probe_mode, want) in want {
            let (out, r) = probed_report_with(
                mode,
                &["--probe-mode", probe_mode],
                &s,
                &[mode, "500"],
                &[&pattern],
            );
            assert_eq!(printed(&out, mode), 500);
            let got = probe_sites(&r);
            assert_eq!(got.len(), want.len(), "{probe_mode} {v:?}: {got:?}");
            for (name, kind, hits) in *want {
                let (_, k, h) = got
                    .iter()
                    .find(|(l, _, _)| l == name)
                    .unwrap_or_else(|| panic!("{name} in {got:?}"));
                let k = match kind.strip_suffix('-') {
                    Some(prefix) if k.starts_with(prefix) => kind,
                    _ => k.as_str(),
                };
                assert_eq!((k, *h), (*kind, *hits), "{name} {probe_mode} ({v:?})");
            }
        }
    }
}

#[test]
fn a_function_with_a_bounded_indirect_jump_takes_a_jump() {
    // ind_tail and ind_mem jump through a pointer loaded from memory, which
    // the whole-program scan knows; ind_arg jumps to what its caller passed:
    // auto mode skips it, as ind_calc's computed jump; ind_loop's own jump
    // table keeps its base in rbx across its cases, which the table
    // reaches. ind_back's stored pointer enters it at +2: a 2-byte jump
    // stops before that. int3 mode counts all.
    let n = 500;
    assert_site_kinds(
        "ind",
        &[
            (
                "auto",
                &[
                    ("ind_tail", "jump", n),
                    ("ind_mem", "jump", n),
                    ("ind_loop", "jump", n),
                    ("ind_back", "jump-short-", n), // padding or a neighbour's dead bytes
                ],
            ),
            (
                "int3",
                &[
                    ("ind_tail", "int3", n),
                    ("ind_mem", "int3", n),
                    ("ind_arg", "int3", n),
                    ("ind_back", "int3", n),
                    ("ind_calc", "int3", n),
                    ("ind_loop", "int3", n),
                ],
            ),
        ],
    );
    assert_jump_refused(
        &path("sites", Variant::Pie),
        &["ind", "1"],
        &[
            (
                "ind_arg",
                "`mov rax,rsi` sets RAX to what may not be a stored code pointer",
            ),
            (
                "ind_calc",
                "`add rax,rdi` sets RAX to what may not be a stored code pointer",
            ),
        ],
    );
}

#[test]
fn a_short_function_takes_a_jump_over_the_padding_after_it() {
    // pad_ret and pad_next (3 and 4 bytes, then alignment padding) take a
    // jump over the padding; pad_tight has no padding (pad_next follows at
    // once) and the padding after pad_target is jumped into: those two take
    // a 2-byte jump to a 5-byte one in padding nearby. int3 mode counts
    // all.
    let n = 500;
    assert_site_kinds(
        "pad",
        &[
            (
                "auto",
                &[
                    ("pad_ret", "jump-padding", n),
                    ("pad_tight", "jump-short-padding", n),
                    ("pad_next", "jump-padding", n),
                    ("pad_target", "jump-short-padding", n),
                    ("pad_jumper", "jump", n),
                ],
            ),
            (
                "int3",
                &[
                    ("pad_ret", "int3", n),
                    ("pad_tight", "int3", n),
                    ("pad_next", "int3", n),
                    ("pad_target", "int3", n),
                    ("pad_jumper", "int3", n),
                ],
            ),
        ],
    );
}

#[test]
fn a_function_symbol_without_a_size_ends_at_its_last_ret_before_the_next_symbol() {
    // nosize_long, nosize_fn and nosize_next take a jump; nosize_outer is
    // entered at +2 (the symbol nosize_inner, which lies inside it), so it
    // takes a 2-byte jump; nosize_fall runs on into nosize_next: auto mode
    // skips it and nosize_inner, int3 mode counts all six (nosize_inner and
    // nosize_next twice per round).
    let n = 500;
    assert_site_kinds(
        "nosize",
        &[
            (
                "auto",
                &[
                    ("nosize_long", "jump", n),
                    ("nosize_fn", "jump-padding", n),
                    ("nosize_outer", "jump-short-padding", n),
                    ("nosize_next", "jump-padding", 2 * n),
                ],
            ),
            (
                "int3",
                &[
                    ("nosize_long", "int3", n),
                    ("nosize_fn", "int3", n),
                    ("nosize_outer", "int3", n),
                    ("nosize_inner", "int3", 2 * n), // nosize_outer runs on into it
                    ("nosize_fall", "int3", n),
                    ("nosize_next", "int3", 2 * n),
                ],
            ),
        ],
    );
    assert_jump_refused(
        &path("sites", Variant::Pie),
        &["nosize", "1"],
        &[
            ("nosize_inner", "lies inside the function at"),
            ("nosize_fall", "does not end in a `ret` or `jmp`"),
        ],
    );
}

#[test]
fn a_function_too_short_for_a_jump_takes_a_2_byte_one_to_a_pad_nearby() {
    // Each tactic of short jumps, forced by a sample between walls of ud2
    // (see sites.c): the pad in padding, in a probed neighbour's displaced
    // bytes, in an evicted unprobed neighbour's; a function entered at +2
    // displaces only 2 bytes. rel8_at1 (entered at +1) and rel8_none (no
    // room) are skipped in auto mode. The output is native's in every
    // mode, evict_me's included; int3 mode counts all.
    let n = 500;
    assert_site_kinds(
        "rel8",
        &[
            (
                "auto",
                &[
                    ("rel8_pad", "jump-short-padding", n),
                    ("rel8_pad_end", "jump-padding", n),
                    ("rel8_disp", "jump-short-displaced", n),
                    ("rel8_host", "jump", n),
                    ("rel8_evict", "jump-short-evicted", n),
                    ("rel8_entered", "jump-short-displaced", n),
                    ("rel8_enter_host", "jump", n),
                    ("rel8_jump1", "jump", n),
                ],
            ),
            (
                "int3",
                &[
                    ("rel8_pad", "int3", n),
                    ("rel8_pad_end", "int3", n),
                    ("rel8_disp", "int3", n),
                    ("rel8_host", "int3", n),
                    ("rel8_evict", "int3", n),
                    ("rel8_entered", "int3", n),
                    ("rel8_enter_host", "int3", n),
                    ("rel8_at1", "int3", n),
                    ("rel8_jump1", "int3", n),
                    ("rel8_none", "int3", n),
                ],
            ),
        ],
    );
    assert_jump_refused(
        &path("sites", Variant::Pie),
        &["rel8", "1"],
        &[
            (
                "rel8_at1",
                "branches into the displaced bytes, at rel8_at1+0x1",
            ),
            (
                "rel8_none",
                "no 2-byte jump either: within its reach no padding, no jump site and no \
                 neighbouring code can make room for a 5-byte jump",
            ),
        ],
    );
    // Alone, rel8_disp has no probed neighbour to displace more: it
    // evicts rel8_host, which then runs out of line unprobed.
    let (out, r) = probed_report_with(
        "rel8-alone",
        &["--probe-mode", "jump"],
        &path("sites", Variant::Pie),
        &["rel8", "50"],
        &["rel8_disp"],
    );
    assert_eq!(printed(&out, "rel8"), 50);
    assert_eq!(
        probe_sites(&r),
        [(
            "rel8_disp".to_string(),
            "jump-short-evicted".to_string(),
            50
        )]
    );
}

#[test]
fn a_site_with_no_room_even_for_2_bytes_takes_a_punned_jump() {
    // pun_ret (a 1-byte `ret`) and pun_at1 (entered at +1) take a `jmp`
    // whose rel32 ends in the unchanged bytes after them, landing ~1.75 GiB
    // ahead in a page of ours; pun_none's bytes would land it inside the
    // program: skipped in auto mode, refused in jump mode. The output is
    // native's; int3 mode counts all.
    let n = 500;
    assert_site_kinds(
        "pun",
        &[
            (
                "auto",
                &[
                    ("pun_ret", "jump-pun", n),
                    ("pun_at1", "jump-pun", n),
                    ("pun_jump1", "jump", n),
                ],
            ),
            (
                "int3",
                &[
                    ("pun_ret", "int3", n),
                    ("pun_at1", "int3", n),
                    ("pun_jump1", "int3", n),
                    ("pun_none", "int3", n),
                ],
            ),
        ],
    );
    assert_jump_refused(
        &path("sites", Variant::Pie),
        &["pun", "1"],
        &[(
            "pun_none",
            "no punned jump either: the bytes after it make it land at",
        )],
    );
}
