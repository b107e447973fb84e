//! Probes on functions of shared objects (`OBJECT:SPEC`): libc's text and a
//! dlopen'ed plugin's, served by us and probed, counted exactly against
//! ground truth that is not ours: counts the programs print themselves, and
//! the kernel's own uprobes on the same functions of the same files
//! (`common/kernel.rs`), for the same command run natively. Output, stderr
//! and exit status are compared with native runs throughout.
//!
//! Library text is served in full mode only (root); unprivileged, a spec
//! naming a shared object is refused.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::kernel;
use common::{
    assert_our_error, compare_with_report, elf, hits, lib_hits, nobody_dir, ours, printed,
    privileged, read_report, text_field, Case,
};
use uprobe_exec_samples::{path, shared_object, Variant};

const PY: &str = "/usr/bin/python3.11";
const BASH: &str = "/usr/bin/bash";

fn plugin() -> PathBuf {
    shared_object("libplugin.so")
}

/// python3.11 running `script` under uprobe-exec with a probe on libc's
/// getpid (exit 0 asserted): its output and the report.
fn python_probing_getpid(tag: &str, script: &str) -> (common::Output, serde_json::Value) {
    let dir = common::TempDir::new(tag);
    let report = dir.join("r.json");
    let opts = [
        "-q",
        "--report-json",
        report.to_str().unwrap(),
        "-p",
        "libc.so.6:getpid",
    ];
    let out = ours(&opts, PY, &["-c", script]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    (out, read_report(&report))
}

/// `case` with the options `opts`, in order.
fn with_opts(case: Case, opts: &[&str]) -> Case {
    opts.iter().fold(case, |c, o| c.opt(o))
}

/// `libcalls PLUGIN` (PIE) with the options `opts`: it calls strtol 12345
/// times and the plugin's `plugin_fn` 1554 times, over two dlopen rounds.
fn libcalls(opts: &[&str]) -> Case {
    with_opts(Case::new(path("libcalls", Variant::Pie), [plugin()]), opts)
}

/// `-p libc.so.6:F` for each function F, quiet, into `case`.
fn libc_probes(mut case: Case, functions: &[&str]) -> Case {
    case = case.opt("-q");
    for f in functions {
        case = case.opt("-p").opt(format!("libc.so.6:{f}"));
    }
    case
}

/// The report's `probes` entries whose `object` ends with `/OBJECT`.
fn probes_in<'a>(r: &'a serde_json::Value, object: &str) -> Vec<&'a serde_json::Value> {
    let suffix = format!("/{object}");
    r["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|p| p["object"].as_str().is_some_and(|o| o.ends_with(&suffix)))
        .collect()
}

// ---------------------------------------------------------------------------
// counts

#[test]
fn strtol_and_a_plugin_loaded_twice_are_counted_exactly() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let plugin = plugin();
    let libc = kernel::libc();
    for v in [Variant::Pie, Variant::NoPie] {
        let prog = path("libcalls", v);
        // The sample itself, natively, under the kernel's uprobes: the
        // counts the test expects are the real ones.
        if let Some(k) = kernel::probes_or_skip(&[(&libc, "strtol"), (&plugin, "plugin_fn")]) {
            let argv = [prog.to_str().unwrap(), plugin.to_str().unwrap()];
            let run = kernel::counts(&k, &argv, &[]);
            assert_eq!(
                run.counts,
                [12345, 1554],
                "kernel's counts of libcalls {v:?}"
            );
            assert_eq!(printed(&run.out, "strtol_calls"), 12345);
        }
        let case = with_opts(
            Case::new(&prog, [&plugin]),
            &[
                "-q",
                "-p",
                "libc.so.6:strtol",
                "-p",
                "libplugin.so:plugin_fn",
            ],
        );
        let (n, _, r) = compare_with_report("libcalls", case);
        assert_eq!(printed(&n, "strtol_calls"), 12345, "{v:?}");
        assert_eq!(printed(&n, "plugin_calls"), 1554, "{v:?}");
        assert_eq!(lib_hits(&r, "libc.so.6", "strtol"), 12345, "{v:?}: {r}");
        assert_eq!(
            lib_hits(&r, "libplugin.so", "plugin_fn"),
            1554,
            "{v:?}: both loads of the plugin count: {r}"
        );
        // One entry per (spec, object, symbol, offset), whatever the loads;
        // `object` is the file's canonical path.
        for (object, symbol, file) in [
            ("libc.so.6", "strtol", libc.clone()),
            ("libplugin.so", "plugin_fn", kernel::canonical(&plugin)),
        ] {
            let entries = probes_in(&r, object);
            assert_eq!(entries.len(), 1, "{v:?}: {entries:#?}");
            assert_eq!(entries[0]["symbol"], symbol, "{v:?}");
            assert_eq!(
                entries[0]["object"].as_str(),
                file.to_str(),
                "{v:?}: {:#}",
                entries[0]
            );
        }
    }
}

/// Calls os.getpid() argv[1] times.
const PY_GETPID: &str = "import os, sys
n = int(sys.argv[1])
for i in range(n):
    os.getpid()
print('getpid calls:', n)
";

#[test]
fn python_getpid_counts_match_the_kernel_s_uprobe() {
    if !privileged("shared objects are served in full mode only") || !common::installed(PY) {
        return;
    }
    let libc = kernel::libc();
    let Some(k) = kernel::probes_or_skip(&[(&libc, "getpid")]) else {
        return;
    };
    // Python calls getpid a few times on its own while it starts: the
    // kernel's count of a run without the loop says how many, and the loop
    // adds exactly its 5000.
    let base = kernel::counts(&k, &[PY, "-c", PY_GETPID, "0"], &[]).counts;
    let with_loop = kernel::counts(&k, &[PY, "-c", PY_GETPID, "5000"], &[]).counts;
    assert_eq!(
        with_loop[0] - base[0],
        5000,
        "the kernel's getpid counts: {base:?} without the loop, {with_loop:?} with it"
    );
    drop(k);
    for (n, kernel_count) in [("0", base[0]), ("5000", with_loop[0])] {
        let case = libc_probes(Case::new(PY, ["-c", PY_GETPID, n]), &["getpid"]);
        let (_, _, r) = compare_with_report("getpid", case);
        assert_eq!(
            lib_hits(&r, "libc.so.6", "getpid"),
            kernel_count,
            "python3.11 calling getpid {n} times: ours vs the kernel's uprobe"
        );
    }
}

/// Functions of libc counted against the kernel in [`COMMANDS`]: none is an
/// IFUNC (the symbol of `strlen` or `strchr` is its resolver, called once
/// per binding, not the string function).
const FUNCTIONS: &[&str] = &["malloc", "free", "calloc", "realloc", "getenv"];

/// A command line and the environment variables it adds.
type Command = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// The commands of the kernel comparison: bash with a loop, string
/// operations and a subshell (a forked process counts too); python with
/// json and re.
const COMMANDS: &[Command] = &[
    (
        &[
            BASH,
            "-c",
            r#"x=; for ((i = 0; i < 500; i++)); do x+="$i,"; done
y=${x//1/one}; echo ${#x} ${#y} "${HOME:+home}"
(z=${y^^}; echo "subshell ${#z}")
echo done"#,
        ],
        &[("LC_ALL", "C")],
    ),
    (
        &[
            PY,
            "-c",
            r#"import json, re, os
d = {str(i): [i, i * i, 'v' * (i % 7)] for i in range(2000)}
s = json.dumps(d, sort_keys=True)
print(len(s), len(re.findall(r'\d+', s)), os.getenv('NO_SUCH_VARIABLE'))
"#,
        ],
        &[("PYTHONHASHSEED", "0"), ("LC_ALL", "C")],
    ),
];

#[test]
fn libc_function_counts_in_bash_and_python_match_the_kernel_s_uprobes() {
    if !privileged("shared objects are served in full mode only")
        || !common::installed(PY)
        || !common::installed(BASH)
    {
        return;
    }
    let libc = kernel::libc();
    let sites: Vec<(&Path, &str)> = FUNCTIONS.iter().map(|f| (libc.as_path(), *f)).collect();
    let Some(k) = kernel::probes_or_skip(&sites) else {
        return;
    };
    // Natively, twice: the counts of each command must not vary from run
    // to run, or comparing them with ours would mean nothing.
    let mut expected = Vec::new();
    for (argv, env) in COMMANDS {
        let first = kernel::counts(&k, argv, env);
        let second = kernel::counts(&k, argv, env).counts;
        assert_eq!(
            first.counts, second,
            "{}: the kernel's counts of {FUNCTIONS:?} differ between two native runs",
            argv[0]
        );
        assert!(
            first.counts[0] > 0,
            "{}: no malloc at all? {first:?}",
            argv[0]
        );
        if argv[0] == BASH {
            // The subshell's hits are counted too.
            assert_eq!(first.pids.len(), 2, "bash and its subshell: {first:?}");
        }
        expected.push((first.out, first.counts));
    }
    drop(k);
    for ((argv, env), (native, counts)) in COMMANDS.iter().zip(expected) {
        let mut case = Case::new(argv[0], &argv[1..]);
        for (key, value) in *env {
            case = case.env(key, value);
        }
        let (n, _, r) = compare_with_report("kernel-counts", libc_probes(case, FUNCTIONS));
        assert_eq!(n.stdout, native.stdout, "{}: the same run", argv[0]);
        let ours: Vec<u64> = FUNCTIONS
            .iter()
            .map(|f| lib_hits(&r, "libc.so.6", f))
            .collect();
        assert_eq!(
            ours, counts,
            "{}: hits of {FUNCTIONS:?}, ours (left) vs the kernel's uprobes (right)",
            argv[0]
        );
    }
}

// ---------------------------------------------------------------------------
// serving

#[test]
fn libc_s_probed_pages_and_only_those_are_served_lazily() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let prog = path("libcalls", Variant::Pie);
    let plugin = plugin();
    // Strictly on first touch: the background prefetch (on by default)
    // would install the rest. Every str* function of libc probed: pages
    // with probe sites all over its text, most of them never run here.
    let case = with_opts(
        Case::new(&prog, [&plugin]),
        &["--no-prefetch", "-q", "-p", "libc.so.6:str*"],
    );
    let (_, _, r) = compare_with_report("lazy-libc", case);
    assert_eq!(lib_hits(&r, "libc.so.6", "strtol"), 12345);
    let objects = r["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {r}"));
    let path_of = |o: &serde_json::Value| PathBuf::from(o["path"].as_str().expect("path"));
    let field = |o: &serde_json::Value, k: &str| {
        o[k].as_u64()
            .unwrap_or_else(|| panic!("objects[].{k} missing or not an integer: {o}"))
    };
    // The program, then its interpreter, then the libraries.
    let bytes = std::fs::read(&prog).unwrap();
    let interp = elf::interp_header(&bytes).expect("PT_INTERP");
    let interp = &bytes[interp.offset as usize..(interp.offset + interp.filesz) as usize];
    let interp = std::str::from_utf8(interp).unwrap().trim_end_matches('\0');
    assert!(objects.len() >= 3, "{objects:#?}");
    assert_eq!(
        path_of(&objects[0]),
        kernel::canonical(&prog),
        "{objects:#?}"
    );
    assert_eq!(
        path_of(&objects[1]),
        kernel::canonical(Path::new(interp)),
        "{objects:#?}"
    );
    let libc = kernel::libc();
    let entry = objects[2..]
        .iter()
        .find(|o| path_of(o) == libc)
        .unwrap_or_else(|| panic!("no {} in {objects:#?}", libc.display()));
    let (pages, served, faults, populated) = (
        field(entry, "pages"),
        field(entry, "served"),
        field(entry, "faults"),
        field(entry, "populated"),
    );
    // Ours are the pages with probe sites: some of libc's text, not all.
    let text = elf::text_pages(&libc);
    assert!(
        1 < pages && pages < text,
        "libc: {pages} of {text} pages ours"
    );
    assert!(
        0 < served && served < pages,
        "libc: served {served} of {pages}"
    );
    assert!(
        faults > 0 && faults + populated >= served,
        "libc: faults {faults} + around {populated} < served {served}"
    );
    // `text` is the total over the objects.
    for k in ["pages", "served", "faults"] {
        let sum: u64 = objects.iter().map(|o| field(o, k)).sum();
        assert_eq!(text_field(&r, k), sum, "text.{k} vs the objects': {r}");
    }
}

/// Some work for python: json, re, sorting, printing.
const PY_WORK: &str = r#"import json, re
data = [{"id": i, "name": "item%d" % (i * 7 % 13), "tags": ["t%d" % (i % 5), "x" * (i % 4)]}
        for i in range(300)]
text = json.dumps(data, sort_keys=True)
back = json.loads(text)
names = sorted({d["name"] for d in back}, key=lambda s: (len(s), s))
nums = re.findall(r'"id": (\d+)', text)
words = sorted(re.split(r'\W+', text))
print(len(text), len(nums), sum(map(int, nums)))
print(names)
print(words[:5], words[-5:])
print(sorted(range(50), key=lambda i: (i * 37) % 11)[:10])
print("%.6f" % sum(1 / (k + 1) for k in range(10000)))
"#;

/// Some work for bash: a loop, string operations, a subshell, pipes.
const BASH_WORK: &str = r#"s=""
for ((i = 0; i < 200; i++)); do s+="${i}x"; done
echo "${#s} ${s:0:20} ${s//x/-}" | cut -c1-60
up=$(echo "${s^^}" | tr -d 0-9)
echo "${#up}"
(cd / && echo "subshell in $PWD")
words=(banana apple cherry)
printf '%s\n' "${words[@]}" | sort | while read -r w; do echo "word: $w"; done
case "$s" in *199x) echo ends with 199x;; esac
printf '%05d|%-4s|\n' 42 ab
exit 3"#;

#[test]
fn every_libc_function_probed_python_and_bash_run_as_natively() {
    if !privileged("shared objects are served in full mode only")
        || !common::installed(PY)
        || !common::installed(BASH)
    {
        return;
    }
    let cases = [
        Case::new(PY, ["-c", PY_WORK]).env("PYTHONHASHSEED", "0"),
        Case::new(BASH, ["-c", BASH_WORK]).env("LC_ALL", "C"),
    ];
    for case in cases {
        let what = format!("{:?}", case.argv[0]);
        let (n, _, r) =
            compare_with_report("libc-all", case.opt("-q").opt("-p").opt("libc.so.6:*"));
        assert!(!n.stdout.is_empty(), "{what}");
        // libc.so.6 defines some 2900 functions; auto mode may pass over a
        // few (int3 only, or not probeable), never most of them.
        let libc_probes = probes_in(&r, "libc.so.6");
        assert!(
            libc_probes.len() >= 1000,
            "{what}: only {} probes in libc",
            libc_probes.len()
        );
        assert!(
            lib_hits(&r, "libc.so.6", "malloc") > 0,
            "{what}: malloc never hit"
        );
    }
}

// ---------------------------------------------------------------------------
// errors

#[test]
fn an_unknown_function_of_libc_is_an_error_before_the_program_starts() {
    if !privileged("shared objects are probed in full mode only") {
        return;
    }
    let out = ours(
        &["-p", "libc.so.6:no_such_fn_xyz"],
        path("libcalls", Variant::Pie),
        &[plugin().to_str().unwrap()],
    );
    assert_our_error("libc.so.6:no_such_fn_xyz", &out, 125);
    assert!(
        out.stderr_str().contains("no_such_fn_xyz"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn a_malformed_object_spec_is_an_error() {
    for spec in [":f", "libc.so.6:"] {
        let out = ours(
            &["-p", spec],
            path("libcalls", Variant::Pie),
            &[plugin().to_str().unwrap()],
        );
        assert_our_error(spec, &out, 125);
    }
}

#[test]
fn an_object_never_loaded_is_a_warning_and_leaves_the_status_alone() {
    if !privileged("shared objects are probed in full mode only") {
        return;
    }
    let plugin = plugin();
    for (args, status) in [(vec![plugin.to_str().unwrap()], 0), (vec![], 2)] {
        let case = Case::new(path("libcalls", Variant::Pie), &args)
            .opt("-p")
            .opt("libnothere.so:f");
        let (n, o) = (case.run_native(), case.run_ours());
        assert_eq!(n.code, Some(status), "native {args:?}: {}", n.stderr_str());
        assert_eq!((o.code, o.signal), (n.code, n.signal), "{}", o.stderr_str());
        assert_eq!(o.stdout, n.stdout);
        let err = o.stderr_str();
        assert!(
            err.lines()
                .any(|l| l.starts_with("uprobe-exec: warning:") && l.contains("libnothere.so")),
            "{err}"
        );
        // The program's own stderr is there too.
        assert!(err.contains(&n.stderr_str()), "{err}");
    }
}

#[test]
fn unprivileged_a_library_spec_is_refused_and_other_runs_work() {
    let (d, bin) = nobody_dir("nobody-lib");
    let prog = d.copy(&path("libcalls", Variant::Pie), "libcalls-pie", 0o755);
    let plugin = d.copy(&plugin(), "libplugin.so", 0o755);
    let run_as_nobody = |opts: &[&str]| {
        let mut argv: Vec<std::ffi::OsString> = vec![bin.clone().into()];
        argv.extend(opts.iter().map(Into::into));
        argv.extend([prog.clone().into(), plugin.clone().into()]);
        let mut cmd = common::command(true, &argv);
        cmd.current_dir(&d.path);
        common::run(cmd)
    };
    for opts in [&["-p", "libc.so.6:strtol"][..], &["--serve-objects", "all"]] {
        let out = run_as_nobody(opts);
        assert_our_error(&format!("unprivileged {opts:?}"), &out, 125);
        let err = out.stderr_str();
        assert!(
            err.contains("privilege") || err.contains("CAP_SYS_PTRACE"),
            "{err}"
        );
    }
    // Without a library spec: as natively, main's probe counted.
    let rep = d.join("r.json");
    let case = Case::new(&prog, [&plugin])
        .tool(&bin)
        .cwd(&d.path)
        .nobody()
        .opt("-q")
        .opt("-p")
        .opt("main")
        .opt("--report-json")
        .opt(&rep);
    let (n, _) = case.compare();
    assert_eq!(printed(&n, "plugin_calls"), 1554);
    let r = read_report(&rep);
    common::assert_unprivileged_handoff("libcalls", &r);
    assert_eq!(hits(&r, "main"), 1, "{r}");
}

/// `--trace` on a dlopen'ed plugin's function: one event per call, in
/// both loads, each with the argument the program passed
/// (`i + 1000 * round`, rounds 1 and 2, i below 777: libcalls.c), labelled
/// with the object; the run as native.
#[test]
fn a_plugin_s_calls_are_traced_with_their_arguments() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let prog = path("libcalls", Variant::Pie);
    let plugin = plugin();
    let dir = common::TempDir::new("lib-trace");
    let events = dir.join("events.jsonl");
    let case = Case::new(&prog, [&plugin])
        .opt("-q")
        .opt("--format")
        .opt("json")
        .opt("-o")
        .opt(&events)
        .opt("--trace")
        .opt("libplugin.so:plugin_fn(int)");
    let (native, ours) = case.compare();
    assert_eq!(printed(&native, "plugin_calls"), 1554);
    assert_eq!(ours.code, Some(0));
    let text = std::fs::read_to_string(&events).unwrap();
    let mut got: Vec<i64> = Vec::new();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["probe"], "libplugin.so:plugin_fn", "{e}");
        got.push(e["args"][0].as_i64().unwrap_or_else(|| panic!("{e}")));
    }
    got.sort_unstable();
    let mut want: Vec<i64> = (1..=2)
        .flat_map(|round| (0..777).map(move |i| i + 1000 * round))
        .collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

/// Return probes and `--latency` on libc's `getpid`: python calls it 5000
/// times; every return event's value is the pid the program printed, and
/// the latency report counts 5000 calls.
#[test]
fn libc_returns_are_traced_and_timed() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let dir = common::TempDir::new("lib-ret");
    let events = dir.join("events.jsonl");
    let report = dir.join("r.json");
    let script = "import os
for i in range(5000):
    os.getpid()
print('pid', os.getpid())";
    let out = ours(
        &[
            "-q",
            "--format",
            "json",
            "-o",
            events.to_str().unwrap(),
            "--report-json",
            report.to_str().unwrap(),
            "--trace",
            "libc.so.6:getpid%return(int)",
        ],
        PY,
        &["-c", script],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let pid: i64 = out
        .stdout_str()
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.stdout_str()));
    let text = std::fs::read_to_string(&events).unwrap();
    let rets: Vec<i64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["probe"] == "libc.so.6:getpid")
        .map(|e| e["ret"].as_i64().unwrap_or_else(|| panic!("{e}")))
        .collect();
    assert_eq!(rets.len(), 5001, "one return per call");
    assert!(
        rets.iter().all(|&r| r == pid),
        "every getpid returned {pid}"
    );
    let r = read_report(&report);
    let l = r["latency"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["symbol"] == "libc.so.6:getpid"))
        .unwrap_or_else(|| panic!("no latency for getpid: {r}"));
    assert_eq!(l["count"], 5001, "{l}");
    assert_eq!(l["timed"], 5001, "{l}");
    assert_eq!(lib_hits(&r, "libc.so.6", "getpid"), 5001, "{r}");
}

/// An object no probe names stays the kernel's: its text is mapped from its
/// file (so `/proc/self/maps` names it). Of a probed one, only the pages
/// that hold probe sites are ours (anonymous): the rest of its text is
/// mapped from its file, as natively.
#[test]
fn only_probed_pages_of_probed_objects_are_served() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    // The bytes of each library's text that are mapped from its file.
    let script = "import math
size = {}
for l in open('/proc/self/maps'):
    f = l.split()
    if f[1] == 'r-xp' and f[-1].startswith('/'):
        lo, hi = (int(x, 16) for x in f[0].split('-'))
        name = f[-1].rsplit('/', 1)[-1]
        size[name] = size.get(name, 0) + hi - lo
print('libm', size['libm.so.6'])
print('libc', size['libc.so.6'])";
    let native = common::run({
        let mut c = std::process::Command::new(PY);
        c.args(["-c", script]);
        c
    });
    assert_eq!(native.code, Some(0), "{}", native.stderr_str());
    let (out, r) = python_probing_getpid("lib-unprobed", script);
    let served: Vec<(&str, u64)> = r["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["path"].as_str().unwrap(), o["pages"].as_u64().unwrap()))
        .collect();
    let libc_pages = served
        .iter()
        .find(|(p, _)| p.ends_with("/libc.so.6"))
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("libc is served: {served:?}"));
    assert_eq!(libc_pages, 1, "getpid's page: {served:?}");
    assert!(
        !served.iter().any(|(p, _)| p.contains("libm.so")),
        "{served:?}"
    );
    // libm's text is all its file's, libc's all but getpid's page.
    let value = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    let (n, o) = (native.stdout_str(), out.stdout_str());
    assert_eq!(value(&o, "libm"), value(&n, "libm"), "{o}");
    assert_eq!(
        value(&o, "libc"),
        value(&n, "libc") - 4096 * libc_pages,
        "{o}"
    );
}

/// The dynamic loader's own functions: `_dl_debug_state` (which it calls at
/// each change of its object list, gdb's breakpoint) and
/// `_dl_catch_exception`, counted as the kernel's uprobes on ld.so count
/// them for libcalls (two dlopen/dlclose rounds).
#[test]
fn the_dynamic_loader_s_functions_count_as_the_kernel_s_uprobes() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let ld = kernel::canonical(Path::new("/lib64/ld-linux-x86-64.so.2"));
    let prog = path("libcalls", Variant::Pie);
    let plugin = plugin();
    let argv = [prog.to_str().unwrap(), plugin.to_str().unwrap()];
    let Some(k) = kernel::probes_or_skip(&[(&ld, "_dl_debug_state"), (&ld, "_dl_catch_exception")])
    else {
        return;
    };
    let run = kernel::counts(&k, &argv, &[]);
    assert!(run.counts[0] >= 8, "{:?}", run.counts);
    let case = with_opts(
        Case::new(&prog, [&plugin]),
        &[
            "-q",
            "-p",
            "ld-linux-x86-64.so.2:_dl_debug_state",
            "-p",
            "ld-linux-x86-64.so.2:_dl_catch_exception",
        ],
    );
    let (_, _, r) = compare_with_report("ld.so", case);
    let ours = [
        lib_hits(&r, "ld-linux-x86-64.so.2", "_dl_debug_state"),
        lib_hits(&r, "ld-linux-x86-64.so.2", "_dl_catch_exception"),
    ];
    assert_eq!(ours.to_vec(), run.counts, "{r}");
}

/// `--probe-mode int3` reaches shared objects: their int3 sites are found
/// by the program's trap handler in the objects' trap table, added while
/// the program runs (a plugin's, when it is dlopen'ed). Counts exact, runs
/// as native, with every libc function an int3 in python.
#[test]
fn int3_sites_in_shared_objects() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let case = libcalls(&[
        "-q",
        "--probe-mode",
        "int3",
        "-p",
        "libc.so.6:strtol",
        "-p",
        "libplugin.so:plugin_fn",
    ]);
    let (_, _, r) = compare_with_report("libcalls-int3", case);
    assert_eq!(lib_hits(&r, "libc.so.6", "strtol"), 12345, "{r}");
    assert_eq!(lib_hits(&r, "libplugin.so", "plugin_fn"), 1554, "{r}");
    for p in probes_in(&r, "libc.so.6")
        .into_iter()
        .chain(probes_in(&r, "libplugin.so"))
    {
        assert_eq!(p["kind"], "int3", "{p}");
    }
    let script = "import json, re
d = {'a': [1, 2, 3], 'b': 'x' * 50}
s = json.dumps(d, sort_keys=True)
print(s, len(re.findall(r'\\w+', s)), sorted([5, 3, 9, 1]))";
    let case = Case::new(PY, ["-c", script])
        .opt("-q")
        .opt("--probe-mode")
        .opt("int3")
        .opt("-p")
        .opt("libc.so.6:*");
    let (_, _, r) = compare_with_report("python-int3", case);
    let n = probes_in(&r, "libc.so.6").len();
    assert!(n > 1000, "{n} int3 sites in libc");
    assert!(lib_hits(&r, "libc.so.6", "malloc") > 0, "{r}");
}

/// A program that locks its memory (`mlockall(MCL_CURRENT | MCL_FUTURE)`:
/// every page, ours included, is filled at once, and mappings made later
/// are filled as they are made) and then loads a C extension: the
/// extension's text is served, not zero-filled, its probe counts, and the
/// run is as native.
#[test]
fn an_object_loaded_after_mlockall_is_served() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let script = "import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print('mlockall', libc.mlockall(3))
import _decimal
print(_decimal.Decimal(1) / _decimal.Decimal(7))";
    let case = Case::new(PY, ["-c", script])
        .opt("-q")
        .opt("-p")
        .opt("_decimal*:PyInit__decimal");
    let (native, _, r) = compare_with_report("mlockall", case);
    assert!(
        native.stdout_str().starts_with("mlockall 0\n"),
        "{}",
        native.stdout_str()
    );
    assert_eq!(
        lib_hits(
            &r,
            "_decimal.cpython-311-x86_64-linux-gnu.so",
            "PyInit__decimal"
        ),
        1,
        "{r}"
    );
}

/// Per-process hits include a shared object's probes, named
/// `OBJECT:FUNCTION`: the parent calls getpid 3 times, each of its three
/// children once (each child's pid is what the parent's fork returned).
#[test]
fn per_process_hits_name_shared_objects_probes() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let script = "import os
kids = []
for i in range(3):
    os.getpid()
    p = os.fork()
    if p == 0:
        os.getpid()
        os._exit(0)
    kids.append(p)
    os.wait()
print(os.getpid(), *kids)";
    let (out, r) = python_probing_getpid("lib-per-process", script);
    let pids: Vec<i64> = out
        .stdout_str()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let per: std::collections::BTreeMap<i64, u64> = r["per_process"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_i64().unwrap(),
                p["hits"]["libc.so.6:getpid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: std::collections::BTreeMap<i64, u64> = pids
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, if i == 0 { 4 } else { 1 }))
        .collect();
    assert_eq!(per, want, "{r}");
}

/// A process in a PID namespace of its own (unshare, then fork, without
/// exec) sees other thread ids than the monitor: the file it maps is
/// checked by its identity, and an object that cannot be found is left to
/// the kernel, never served from another file. The run is as native.
#[test]
fn a_process_in_another_pid_namespace_runs_as_natively() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let script = "import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x20000000) == 0
p = os.fork()
if p == 0:
    import _decimal
    print('child', os.getpid(), _decimal.Decimal(1) / _decimal.Decimal(7))
    os._exit(0)
os.wait()
print('parent done')";
    let case = with_opts(
        Case::new(PY, ["-c", script]),
        &["-q", "-p", "_decimal*:PyInit__decimal"],
    );
    let (native, _, _) = compare_with_report("pid-namespace", case);
    assert!(
        native.stdout_str().starts_with("child 1 "),
        "{}",
        native.stdout_str()
    );
}

/// A spec that names a function the dlopen'ed object lacks is a warning;
/// the other specs for that object still probe, each under its own spec.
#[test]
fn an_unresolvable_spec_for_a_later_object_leaves_the_others() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let case = libcalls(&[
        "-q",
        "-p",
        "libplugin.so:no_such_fn",
        "-p",
        "libplugin.so:plugin_fn",
    ]);
    let (_, _, r) = compare_with_report("unresolvable", case);
    assert_eq!(lib_hits(&r, "libplugin.so", "plugin_fn"), 1554, "{r}");
    let entries = probes_in(&r, "libplugin.so");
    assert_eq!(entries[0]["spec"], "libplugin.so:plugin_fn", "{r}");
    assert!(
        r["warnings"].to_string().contains("no_such_fn"),
        "{}",
        r["warnings"]
    );
}

// ---------------------------------------------------------------------------
// the objects at start, kept between runs

/// The entries of the objects-at-start cache under `cache`, as (name, inode).
fn list_entries(cache: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dir = cache.join("uprobe-exec/objects");
    let mut v: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    (e.file_name().to_string_lossy().into_owned(), m.ino())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_objects_at_start_and_their_sites_are_found_again_when_their_files_change() {
    if !privileged("shared objects are probed in full mode only") {
        return;
    }
    // LD_PRELOAD=libx.so, found through LD_LIBRARY_PATH=early:late; at
    // first only late/ has it (the strtol-counting preload).
    let dir = common::TempDir::new("list-cache");
    let (early, late, cache) = (dir.join("early"), dir.join("late"), dir.join("cache"));
    for d in [&early, &late] {
        std::fs::create_dir(d).unwrap();
    }
    // A platform subdirectory ld.so searches before early/ itself, there
    // from the start: a library put in it later changes no directory the
    // kept answer names but that one.
    std::fs::create_dir(early.join("x86_64")).unwrap();
    let preload = shared_object("libfidpreload.so");
    let late_lib = late.join("libx.so");
    std::fs::copy(&preload, &late_lib).unwrap();
    let search = format!("{}:{}", early.display(), late.display());
    // Runs /usr/bin/true with one probe spec, natively and ours (same
    // output, the preload's line when it is loaded): ours, and the
    // report's probes as (object, symbol).
    let run = |spec: &str, preloaded: bool| {
        let case = Case::new("/usr/bin/true", Vec::<&str>::new())
            .env("LD_LIBRARY_PATH", &search)
            .env("LD_PRELOAD", "libx.so")
            .env("XDG_CACHE_HOME", cache.to_str().unwrap())
            .opt("-q")
            .opt("-p")
            .opt(spec);
        let (n, o, r) = compare_with_report("list-cache-run", case);
        assert_eq!(n.code, Some(0), "natively: {}", n.stderr_str());
        let line = if preloaded {
            "preload: strtol calls=0\n"
        } else {
            ""
        };
        assert_eq!(n.stderr_str(), line);
        let probes: Vec<(String, String)> = r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let s = |k: &str| p[k].as_str().unwrap().to_string();
                (s("object"), s("symbol"))
            })
            .collect();
        (o, probes)
    };
    let canonical = |p: &Path| kernel::canonical(p).display().to_string();
    let symbols = |probes: &[(String, String)], object: &Path| -> Vec<String> {
        let object = canonical(object);
        probes
            .iter()
            .map(|(o, s)| {
                assert_eq!(*o, object, "{probes:?}");
                s.clone()
            })
            .collect()
    };

    let (_, probes) = run("libx.so:strtol", true);
    assert_eq!(symbols(&probes, &late_lib), ["strtol"]);
    let first = list_entries(&cache);
    assert_eq!(first.len(), 1, "one entry kept: {first:?}");
    // The same run again takes it from the cache: the entry is not
    // written again.
    run("libx.so:strtol", true);
    assert_eq!(list_entries(&cache), first, "a hit rewrites nothing");

    // Another libx.so (the plugin) appears in early/x86_64/, searched
    // first: the kept answer would probe late/libx.so's strtol; the
    // interpreter is asked again.
    let early_lib = early.join("x86_64/libx.so");
    std::fs::copy(plugin(), &early_lib).unwrap();
    let (o, probes) = run("libx.so:*", false);
    assert_eq!(o.code, Some(0), "{}", o.stderr_str());
    let plugin_syms = symbols(&probes, &early_lib);
    assert!(
        plugin_syms.iter().any(|s| s == "plugin_fn"),
        "{plugin_syms:?}"
    );
    assert!(
        !plugin_syms.iter().any(|s| s == "strtol"),
        "{plugin_syms:?}"
    );
    let second = list_entries(&cache);
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "the entry was written again");

    // early/libx.so changed in place (same inode, the preload's contents):
    // asked again, and the same spec's sites are those of what the file
    // holds now, not the ones kept for its old contents.
    std::fs::copy(&preload, &early_lib).unwrap();
    let (o, probes) = run("libx.so:*", true);
    assert_eq!(o.code, Some(0), "{}", o.stderr_str());
    let preload_syms = symbols(&probes, &early_lib);
    assert!(
        preload_syms.iter().any(|s| s == "strtol"),
        "{preload_syms:?}"
    );
    assert!(
        !preload_syms.iter().any(|s| s == "plugin_fn"),
        "{preload_syms:?}"
    );
    assert_ne!(list_entries(&cache), second, "the entry was written again");
}

// ---------------------------------------------------------------------------
// --serve-objects all

/// The served objects of a report: path → (pages, served, faults).
fn served_objects(r: &serde_json::Value) -> Vec<(String, u64, u64, u64)> {
    r["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {r}"))
        .iter()
        .map(|o| {
            let n = |k: &str| o[k].as_u64().unwrap();
            (
                o["path"].as_str().unwrap().to_string(),
                n("pages"),
                n("served"),
                n("faults"),
            )
        })
        .collect()
}

#[test]
fn serving_every_object_whole_python_and_bash_run_as_natively_lazily() {
    if !privileged("shared objects are served in full mode only") || !common::installed(PY) {
        return;
    }
    let libc = kernel::libc();
    // python: json and re (C extensions dlopen'ed), math (libm), and its
    // own view of its maps: no executable mapping of a library's file is
    // left (all of them are ours), where natively every one is.
    let maps = "\nexe = [l.split()[-1] for l in open('/proc/self/maps') if ' r-xp ' in l]\n\
                print('libm file', any(p.endswith('/libm.so.6') for p in exe))\n\
                print('libc file', any(p.endswith('/libc.so.6') for p in exe))\n";
    let script = format!("{PY_WORK}import math\nprint(math.sqrt(2)){maps}");
    let native = common::run({
        let mut c = std::process::Command::new(PY);
        c.args(["-c", &script]);
        c
    });
    assert!(native
        .stdout_str()
        .ends_with("libm file True\nlibc file True\n"));
    let case = with_opts(
        Case::new(PY, ["-c", PY_WORK]),
        &["-q", "--serve-objects", "all"],
    );
    let (_, _, r) = compare_with_report("serve-all-py", case);
    let objects = served_objects(&r);
    // Every object whole: libc's text, libm's, and the C extensions'.
    let whole = |name: &str| {
        let (path, pages, served, _) = objects
            .iter()
            .find(|(p, ..)| p.rsplit('/').next() == Some(name) || p.contains(name))
            .unwrap_or_else(|| panic!("{name} not served: {objects:?}"))
            .clone();
        assert_eq!(
            pages,
            elf::text_pages(Path::new(&path)),
            "{name}: {objects:?}"
        );
        served
    };
    assert!(whole("libc.so.6") > 0);
    assert!(whole("libm.so.6") > 0);
    assert!(whole("_json.cpython") > 0);
    let out = ours(&["-q", "--serve-objects", "all"], PY, &["-c", &script]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let expected = native.stdout_str().replace(
        "libm file True\nlibc file True\n",
        "libm file False\nlibc file False\n",
    );
    assert_eq!(out.stdout_str(), expected);

    // bash with forks and pipes, strictly on first touch: the same output
    // and status as natively, and libc's text served lazily in whole.
    let case = with_opts(
        Case::new(BASH, ["-c", BASH_WORK]),
        &["-q", "--serve-objects", "all", "--no-prefetch"],
    );
    let (n, _, r) = compare_with_report("serve-all-bash", case);
    assert_eq!(n.code, Some(3));
    let objects = served_objects(&r);
    let (_, pages, served, faults) = objects
        .iter()
        .find(|(p, ..)| p.ends_with("/libc.so.6"))
        .unwrap_or_else(|| panic!("libc not served: {objects:?}"))
        .clone();
    assert_eq!(pages, elf::text_pages(&libc));
    assert!(
        0 < served && served < pages && faults > 0,
        "libc: {objects:?}"
    );
}

#[test]
fn probes_count_exactly_with_every_object_served_whole() {
    if !privileged("shared objects are served in full mode only") || !common::installed(PY) {
        return;
    }
    // Python calls getpid on its own while it starts: the loop adds
    // exactly its 5000, in either way of serving.
    let count = |serving: &str, n: &str| {
        let case = libc_probes(Case::new(PY, ["-c", PY_GETPID, n]), &["getpid"])
            .opt("--serve-objects")
            .opt(serving);
        let (_, _, r) = compare_with_report("serve-all-getpid", case);
        lib_hits(&r, "libc.so.6", "getpid")
    };
    let base = count("all", "0");
    assert_eq!(count("all", "5000"), base + 5000);
    assert_eq!(count("probed", "0"), base);
}

/// Python calls getpid N times, drops the page of libc that holds getpid
/// (`madvise(MADV_DONTNEED)`), and calls it N times again.
const PY_DROP: &str = r#"import ctypes, os, sys
n = int(sys.argv[1])
for _ in range(n): os.getpid()
libc = ctypes.CDLL("libc.so.6")
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = ctypes.cast(libc.getpid, ctypes.c_void_p).value & ~4095
print("madvise", libc.madvise(page, 4096, 4))
for _ in range(n): os.getpid()
"#;

#[test]
fn a_dropped_page_of_a_library_is_patched_again() {
    if !privileged("shared objects are served in full mode only") || !common::installed(PY) {
        return;
    }
    for serving in ["probed", "all"] {
        let count = |n: &str| {
            let case = libc_probes(Case::new(PY, ["-c", PY_DROP, n]), &["getpid"])
                .opt("--serve-objects")
                .opt(serving);
            let (nat, _, r) = compare_with_report("drop-lib", case);
            assert_eq!(nat.stdout_str(), "madvise 0\n");
            let objects = served_objects(&r);
            let refaults = r["objects"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| {
                    o["path"]
                        .as_str()
                        .is_some_and(|p| p.ends_with("/libc.so.6"))
                })
                .and_then(|o| o["refaults"].as_u64())
                .unwrap_or_else(|| panic!("libc served: {objects:?}"));
            (lib_hits(&r, "libc.so.6", "getpid"), refaults)
        };
        let (base, _) = count("0");
        let (hits, refaults) = count("1000");
        assert_eq!(
            hits,
            base + 2000,
            "{serving}: the calls after the drop count too"
        );
        assert!(
            refaults >= 1,
            "{serving}: the dropped page came back through us"
        );
    }
}
