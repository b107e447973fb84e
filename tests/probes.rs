//! Probes: hits counted exactly, against counts the programs print
//! themselves; output unchanged; every error with its exit code.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_our_error, assert_unprivileged_handoff, hits, nobody_dir, ours, printed, privileged,
    probe_sites, read_report, tool, Case, TempDir,
};
use uprobe_exec_samples::{path, Variant};

/// Runs `prog args` natively and with `probes` placed as int3s, asserts
/// the same output, and returns ours and the report.
fn probed(
    tag: &str,
    prog: &Path,
    args: &[&str],
    probes: &[&str],
) -> (common::Output, serde_json::Value) {
    // These tests are about int3 sites: auto mode places jumps only.
    common::probed_report_with(tag, &["--probe-mode", "int3"], prog, args, probes)
}

fn probed_sample(v: Variant) -> PathBuf {
    path("probed", v)
}

/// The address of `symbol` in `prog` as nm prints it (binutils builds the
/// samples, with cc).
fn nm_address(prog: &Path, symbol: &str) -> u64 {
    let nm = std::process::Command::new("nm")
        .arg(prog)
        .output()
        .expect("nm");
    let nm = String::from_utf8_lossy(&nm.stdout);
    nm.lines()
        .find(|l| l.ends_with(&format!(" {symbol}")))
        .map(|l| u64::from_str_radix(&l[..16], 16).unwrap())
        .unwrap_or_else(|| panic!("no {symbol} in nm {}:\n{nm}", prog.display()))
}

#[test]
fn a_function_called_a_million_times_is_hit_a_million_times() {
    for v in [Variant::Static, Variant::Pie] {
        let (out, r) = probed(
            "million",
            &probed_sample(v),
            &["basic", "1000000"],
            &["counted"],
        );
        assert_eq!(printed(&out, "counted"), 1_000_000);
        assert_eq!(hits(&r, "counted"), 1_000_000, "{v:?}");
    }
}

#[test]
fn eight_threads_on_cold_pages_at_once_are_counted_exactly() {
    for v in Variant::ALL {
        let (out, r) = probed(
            "threads",
            &probed_sample(v),
            &["threads", "8", "100000"],
            &["counted_mt"],
        );
        assert_eq!(hits(&r, "counted_mt"), printed(&out, "counted_mt"), "{v:?}");
        assert_eq!(hits(&r, "counted_mt"), 800_000);
    }
}

#[test]
fn recursion_signal_handlers_forks_and_dropped_pages() {
    for v in [Variant::NoPie, Variant::StaticPie] {
        let s = probed_sample(v);
        let (out, r) = probed("fib", &s, &["fib", "20"], &["fib"]);
        assert_eq!(hits(&r, "fib"), printed(&out, "fib_calls"), "fib {v:?}");

        let (out, r) = probed("signal", &s, &["signal", "300"], &["in_handler"]);
        assert_eq!(
            hits(&r, "in_handler"),
            printed(&out, "in_handler"),
            "signal {v:?}"
        );

        let (out, r) = probed("fork", &s, &["fork", "5000"], &["after_fork"]);
        assert!(
            out.stdout_str().contains("child after_fork=5000"),
            "{}",
            out.stdout_str()
        );
        assert_eq!(
            hits(&r, "after_fork"),
            5000,
            "the child's hits count (fork {v:?})"
        );

        let (out, r) = probed("dontneed", &s, &["dontneed", "2000"], &["dropped"]);
        assert_eq!(
            hits(&r, "dropped"),
            printed(&out, "dropped"),
            "dontneed {v:?}"
        );
    }
}

#[test]
fn dropped_pages_are_patched_again_when_they_fault_back() {
    let (out, r) = common::probed_report(
        "refault",
        &probed_sample(Variant::Pie),
        &["dontneed", "500"],
        &["dropped"],
    );
    assert_eq!(hits(&r, "dropped"), printed(&out, "dropped"));
    // Every call after the first found its page dropped.
    if privileged("refaults are served (and counted) in full mode") {
        assert!(r["text"]["refaults"].as_u64().unwrap() >= 499, "{r}");
    }
}

#[test]
fn sites_of_every_kind_run_out_of_line_correctly() {
    let specs = [
        "site_lea",
        "site_lea+4",
        "site_mov",
        "site_call+1",
        "site_jcc+2",
        "site_jmp",
        "site_push",
        "site_adj",
        "site_adj+2",
        "site_straddle",
        "many_*",
    ];
    for v in Variant::ALL {
        let (out, r) = probed("sites", &probed_sample(v), &["sites", "1000"], &specs);
        let n = printed(&out, "sites");
        assert_eq!(n, 1000);
        for label in [
            "site_lea",
            "site_lea+0x4",
            "site_mov",
            "site_call+0x1",
            "site_jcc+0x2",
            "site_jmp",
            "site_push",
            "site_adj",
            "site_adj+0x2",
            "site_straddle",
        ] {
            assert_eq!(hits(&r, label), n, "{label} ({v:?})");
        }
        let many: Vec<u64> = probe_sites(&r)
            .into_iter()
            .filter(|(l, _, _)| l.starts_with("many_"))
            .map(|(_, _, h)| h)
            .collect();
        assert_eq!(many.len(), 32, "32 probes on one page ({v:?})");
        assert!(many.iter().all(|&c| c == n), "{many:?}");
    }
}

#[test]
fn python_with_list_append_and_all_of_py_star() {
    // str.split() appends each word past its first 12 with PyList_Append, so
    // 5000 more words are exactly 5000 more hits.
    let script = |n: u32| format!("s = ' '.join(['x'] * {n})\nprint(len(s.split()))\n");
    let py = Path::new("/usr/bin/python3.11");
    let run_once = |script: &str, probe: &str| {
        let case = Case::new(py, ["-c", script])
            .env("PYTHONHASHSEED", "0")
            .opt("-q")
            .opt("-p")
            .opt(probe);
        common::compare_with_report("py", case).2
    };
    let appends = |words| hits(&run_once(&script(words), "PyList_Append"), "PyList_Append");
    let (a, b, c) = (appends(5000), appends(5000), appends(10000));
    assert_eq!(a, b, "the same deterministic script gives the same count");
    assert_eq!(c - a, 5000, "{a} then {c}");

    let sites = probe_sites(&run_once(&script(100), "Py*"));
    assert!(sites.len() > 500, "Py* makes many probes: {}", sites.len());
    let total: u64 = sites.iter().map(|(_, _, h)| h).sum();
    assert!(total > 5000, "{total}");
}

#[test]
fn bash_execute_command() {
    let script = "for i in 1 2 3 4 5; do /bin/true; done; echo done";
    let once = || {
        let bash = Path::new("/bin/bash");
        let (out, r) = common::probed_report("bash", bash, &["-c", script], &["execute_command"]);
        assert_eq!(out.stdout_str(), "done\n");
        hits(&r, "execute_command")
    };
    let (a, b) = (once(), once());
    assert!(a >= 5, "one per command at least: {a}");
    assert_eq!(a, b);
}

#[test]
fn the_count_table_goes_to_stderr_busiest_first() {
    let out = ours(
        &["-p", "counted", "-p", "fib"],
        probed_sample(Variant::Pie),
        &["basic", "7"],
    );
    assert_eq!(out.code, Some(0));
    assert_eq!(printed(&out, "counted"), 7, "the program's own count");
    let err = out.stderr_str();
    let lines: Vec<&str> = err.lines().collect();
    // fib's entry is a jump site; counted's is too (both start with push/mov).
    assert_eq!(
        lines[0], "uprobe-exec: 2 probe sites: 2 jump, 0 int3",
        "{err}"
    );
    assert!(
        lines[1].starts_with("FUNC") && lines[1].ends_with("COUNT"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("counted") && lines[2].ends_with(" 7"),
        "{err}"
    );
    assert!(
        lines[3].starts_with("fib") && lines[3].ends_with(" 0"),
        "{err}"
    );
    assert!(!out.stdout_str().contains("FUNC"));
}

#[test]
fn list_prints_functions_sorted_by_address() {
    let prog = probed_sample(Variant::NoPie);
    let out = ours(&["--list", "-p", "site_*", "-p", "counted"], &prog, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let rows: Vec<(u64, u64, String)> = out
        .stdout_str()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                u64::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect();
    assert!(
        rows.windows(2).all(|w| w[0].0 <= w[1].0),
        "sorted by address"
    );
    let names: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    for n in ["counted", "site_lea", "site_straddle", "site_callee"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    // The address is the one nm prints.
    assert_eq!(
        rows.iter().find(|r| r.2 == "counted").unwrap().0,
        nm_address(&prog, "counted")
    );
}

#[test]
fn a_program_with_its_own_sigtrap_handler_keeps_it_and_the_probes() {
    for v in [Variant::Pie, Variant::Static] {
        let (out, r) = probed(
            "trapown",
            &probed_sample(v),
            &["trapown", "100"],
            &["counted"],
        );
        assert!(
            out.stdout_str()
                .contains("initial=default\ninstalled=ours\n"),
            "{}",
            out.stdout_str()
        );
        assert_eq!(
            printed(&out, "own_traps"),
            101,
            "its own int3s and raise() reach its handler"
        );
        assert_eq!(hits(&r, "counted"), 100);
    }
}

#[test]
fn a_probe_hit_while_sigtrap_is_blocked_is_reported() {
    // A jump probe has no trap: the program runs as it would natively.
    let (out, r) = common::probed_report(
        "blocked-jump",
        &probed_sample(Variant::Pie),
        &["blocked", "3"],
        &["counted"],
    );
    assert_eq!(printed(&out, "counted"), 3);
    assert_eq!(hits(&r, "counted"), 3);
    // An int3 probe cannot be protected: the kernel kills; we say why.
    let dir = TempDir::new("blocked");
    let report = dir.join("r.json");
    let out = ours(
        &[
            "--probe-mode",
            "int3",
            "-p",
            "counted",
            "--report-json",
            report.to_str().unwrap(),
        ],
        probed_sample(Variant::Pie),
        &["blocked", "3"],
    );
    assert_eq!(
        out.status(),
        128 + 5,
        "killed by SIGTRAP: {}",
        out.stderr_str()
    );
    assert!(
        out.stderr_str().contains("SIGTRAP was blocked"),
        "{}",
        out.stderr_str()
    );
    let r = read_report(&report);
    assert_eq!(r["exit"]["signal"], 5);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("SIGTRAP was blocked"),
        "{r}"
    );
}

#[test]
fn probe_errors_say_what_to_do() {
    let s = probed_sample(Variant::Pie);
    let s = s.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["-p", "countd", s, "basic", "1"], "close names: counted"),
        (
            &["-p", "zz_nothing*", s, "basic", "1"],
            "matches no function",
        ),
        (
            &["-p", "site_lea+1", s, "basic", "1"],
            "nearest are site_lea+0x0 and site_lea+0x4",
        ),
        (&["-p", "site_lea+0x400", s, "basic", "1"], "past the end"),
        (&["-p", "0x10", s, "basic", "1"], "--unsafe"),
        (&["-p", "0xffffffffffffffff", s, "basic", "1"], "--unsafe"),
        (&["-p", "counted+0xzz", s, "basic", "1"], "not a number"),
        (&["-p", "main", "/bin/true"], "stripped"),
    ];
    for (args, needle) in cases {
        let out = tool(args);
        assert_our_error(&format!("{args:?}"), &out, 125);
        assert!(
            out.stderr_str().contains(needle),
            "{args:?}: {}",
            out.stderr_str()
        );
    }
}

#[test]
fn an_instruction_that_cannot_run_out_of_line_is_refused_by_name() {
    // site_jmp+2 is the ud2 after the jmp.
    let out = ours(
        &["-p", "site_jmp+2"],
        probed_sample(Variant::Pie),
        &["basic", "1"],
    );
    assert_our_error("ud2", &out, 125);
    assert!(out.stderr_str().contains("`ud2`"), "{}", out.stderr_str());
}

#[test]
fn unsafe_addresses_warn_and_work() {
    // The first instruction of site_adj, by address, is inside a function:
    // allowed without --unsafe; the test checks the address form hits too.
    let prog = probed_sample(Variant::NoPie);
    let addr = format!("{:#x}", nm_address(&prog, "site_adj"));
    let (out, r) = probed("addr", &prog, &["sites", "10"], &[&addr]);
    assert_eq!(printed(&out, "sites"), 10);
    assert_eq!(hits(&r, "site_adj"), 10);
}

#[test]
fn probes_work_unprivileged() {
    let (dir, tool) = nobody_dir("unpriv");
    let prog = dir.copy(&probed_sample(Variant::Pie), "probed", 0o755);
    let report = dir.join("r.json");
    for (mode, args, probe, key) in [
        (
            "threads",
            vec!["threads", "8", "10000"],
            "counted_mt",
            "counted_mt",
        ),
        (
            "fork",
            vec!["fork", "1000"],
            "after_fork",
            "child after_fork",
        ),
        ("trapown", vec!["trapown", "10"], "counted", "counted"),
    ] {
        let case = Case::new(&prog, &args)
            .tool(&tool)
            .nobody()
            .opt("-q")
            .opt("--report-json")
            .opt(&report)
            .opt("-p")
            .opt(probe);
        let (_, out) = case.compare();
        let r = read_report(&report);
        assert_unprivileged_handoff(mode, &r);
        let want = if mode == "fork" {
            1000
        } else {
            printed(&out, key)
        };
        assert_eq!(hits(&r, probe), want, "{mode}");
    }
}

#[test]
fn mangled_names_match_demangled_and_mangled() {
    let s = probed_sample(Variant::Pie);
    let (out, r) = probed(
        "mangled",
        &s,
        &["mangled", "321"],
        &[
            "app::widget::poke(unsigned long)",
            "app::core::tick",
            "app::tock",
        ],
    );
    assert_eq!(printed(&out, "mangled"), 321);
    for f in [
        "app::widget::poke(unsigned long)",
        "app::core::tick",
        "app::tock",
    ] {
        assert_eq!(hits(&r, f), 321, "{f}");
    }
    // The mangled form and a glob over demangled names name the same functions.
    let (_, r) = probed(
        "mangled2",
        &s,
        &["mangled", "5"],
        &["_ZN3app4core4tick17h0123456789abcdefE", "app::*"],
    );
    let sites = probe_sites(&r);
    assert_eq!(sites.len(), 3, "{sites:?}");
    assert!(sites.iter().all(|(_, _, c)| *c == 5), "{sites:?}");
}

#[test]
fn unsafe_allows_an_address_outside_every_function_and_warns() {
    // deregister_tm_clones has no size in the symbol table: its address is
    // in no known function. It runs once, at exit.
    let prog = probed_sample(Variant::NoPie);
    let addr = format!("{:#x}", nm_address(&prog, "deregister_tm_clones"));
    let refused = ours(&["-p", &addr], &prog, &["basic", "3"]);
    assert_our_error("without --unsafe", &refused, 125);
    let dir = TempDir::new("unsafe");
    let report = dir.join("r.json");
    let report = report.to_str().unwrap();
    let out = ours(
        &[
            "--unsafe",
            "--probe-mode",
            "int3",
            "-p",
            &addr,
            "--report-json",
            report,
        ],
        &prog,
        &["basic", "3"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "counted=3 acc=28\n");
    let sites = probe_sites(&read_report(Path::new(report)));
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0].2, 1, "called once, at exit: {sites:?}");
    assert!(
        out.stderr_str().contains("uprobe-exec: warning: probing"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn the_analysis_cache_never_serves_a_changed_file() {
    // The entry points of a file are kept in the user's cache, keyed by the
    // file's identity (device, inode, size, times) and ours. A file changed
    // in place, its modification time put back, is analysed afresh: its
    // listing is the one made without the cache, and probes on it count
    // what natively runs.
    let dir = TempDir::new("cache");
    let prog = dir.join("prog");
    let list = |cache: &str| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.env("XDG_CACHE_HOME", dir.join("cache"))
            .env("UPROBE_EXEC_CACHE", cache)
            .args(["--list", "-p", "*"])
            .arg(&prog);
        common::run(cmd)
    };
    std::fs::copy(path("sites", Variant::Pie), &prog).unwrap();
    let first = list("on");
    assert_eq!(first.code, Some(0), "{}", first.stderr_str());
    let entries = std::fs::read_dir(dir.join("cache/uprobe-exec/targets"))
        .expect("a cache entry")
        .count();
    assert_eq!(entries, 1);
    assert_eq!(list("on").stdout, first.stdout, "read from the cache");
    // Another program in the same file, with the old modification time.
    let mtime = std::fs::metadata(&prog).unwrap().modified().unwrap();
    std::fs::write(&prog, std::fs::read(probed_sample(Variant::Pie)).unwrap()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&prog)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let fresh = list("off");
    assert_ne!(fresh.stdout, first.stdout);
    assert_eq!(list("on").stdout, fresh.stdout, "not the stale entry");
    let case = Case::new(&prog, ["sites", "200"])
        .env("XDG_CACHE_HOME", dir.join("cache").to_str().unwrap())
        .opt("-q")
        .opt("-p")
        .opt("site_*");
    let (native, ours) = case.compare();
    assert_eq!(ours.stdout, native.stdout);
}

/// The shared objects a native run of `bash -c` has mapped executable,
/// by the kernel's account (`/proc/self/maps`), canonical paths.
fn mapped_by_bash(env: &[(&str, &str)]) -> std::collections::BTreeSet<PathBuf> {
    let mut cmd = std::process::Command::new("/bin/bash");
    cmd.args(["-c", "cat /proc/$$/maps; true"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = common::run(cmd);
    out.stdout_str()
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .map(|p| std::fs::canonicalize(p).unwrap())
        .collect()
}

#[test]
fn the_objects_mapped_at_start_are_those_the_kernel_shows_mapped() {
    // bash as the kernel maps it natively, with and without an LD_PRELOAD:
    // the same objects, as the program's interpreter finds them.
    for env in [vec![], vec![("LD_PRELOAD", "libz.so.1")]] {
        let native = mapped_by_bash(&env);
        assert!(native.len() >= 2, "{native:?}");
        // What `--list` says the program maps, in the same environment.
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["--list", "/bin/bash"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = common::run(cmd);
        assert_eq!(out.code, Some(0), "{}", out.stderr_str());
        let ours: std::collections::BTreeSet<PathBuf> = out
            .stderr_str()
            .lines()
            .filter_map(|l| l.strip_prefix("uprobe-exec: maps at start: "))
            .filter_map(|l| l.split_once(" (")?.1.split_once(')'))
            .map(|(p, _)| std::fs::canonicalize(p).unwrap())
            .collect();
        assert_eq!(ours, native, "{env:?}");
    }
    // A static program maps none.
    let none = uprobe_exec::shared_objects(path("hello", Variant::Static)).unwrap();
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn object_specs_list_their_functions_and_wait_for_their_object() {
    let prog = probed_sample(Variant::Pie);
    // --list: the object's functions by their link-time address, as nm
    // gives it, named OBJECT:NAME.
    let out = ours(&["--list", "-p", "libc.so.6:strtol"], &prog, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let libc = uprobe_exec::shared_objects(&prog)
        .unwrap()
        .into_iter()
        .find(|o| o.name == "libc.so.6")
        .expect("libc.so.6")
        .path;
    let nm = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&libc)
        .output()
        .unwrap();
    let nm = String::from_utf8_lossy(&nm.stdout).into_owned();
    let addr = nm
        .lines()
        .find(|l| l.ends_with(" strtol") || l.contains(" strtol@"))
        .map(|l| u64::from_str_radix(&l[..16], 16).unwrap())
        .expect("strtol in libc's dynamic symbols");
    let line = out.stdout_str();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        u64::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap(),
        addr
    );
    assert_eq!(f[2], "libc.so.6:strtol");
    assert!(line.contains("[jump]"), "{line}");
    // The dynamic loader's exported functions are listed too, probeable.
    let out = ours(
        &["--list", "-p", "ld-linux-x86-64.so.2:_dl_catch_*"],
        &prog,
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert!(
        out.stdout_str()
            .contains("ld-linux-x86-64.so.2:_dl_catch_exception  [jump]"),
        "{}",
        out.stdout_str()
    );

    // An object that is never mapped: nothing probed, the run as native,
    // and a warning at exit.
    let mut native = std::process::Command::new(&prog);
    native.args(["basic", "3"]);
    let native = common::run(native);
    let out = ours(&["-p", "libplugin*:plugin_fn"], &prog, &["basic", "3"]);
    assert_eq!(
        (out.code, out.stdout_str()),
        (native.code, native.stdout_str())
    );
    assert!(
        out.stderr_str()
            .contains("'libplugin*:plugin_fn' probed nothing: the program never mapped libplugin*"),
        "{}",
        out.stderr_str()
    );
    // Malformed.
    for (spec, why) in [
        (":strtol", "no object before ':'"),
        ("libc.so.6:", "no function after 'libc.so.6:'"),
        ("lib[c:strtol", "bad object pattern 'lib[c'"),
    ] {
        let out = ours(&["-p", spec], &prog, &["basic", "3"]);
        assert_eq!(out.code, Some(125), "{spec}");
        assert!(
            out.stderr_str().contains(why),
            "{spec}: {}",
            out.stderr_str()
        );
    }
}

#[test]
fn each_probe_in_the_report_names_its_object() {
    let prog = probed_sample(Variant::Pie);
    let dir = TempDir::new("object-key");
    let report = dir.join("r.json");
    let out = ours(
        &[
            "-q",
            "--report-json",
            report.to_str().unwrap(),
            "-p",
            "counted",
        ],
        &prog,
        &["basic", "3"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let r = common::read_report(&report);
    let object = r["probes"][0]["object"].as_str().expect("object");
    assert_eq!(
        std::fs::canonicalize(object).unwrap(),
        std::fs::canonicalize(&prog).unwrap()
    );
}

/// The program's resolved sites are kept in the cache under its file's
/// identity and the probes: a run of the same file reads them (and still
/// counts exactly); the file rewritten in place with another build (other
/// addresses) gets its own, never the stale ones, and counts exactly too;
/// another probe set gets its own.
#[test]
fn the_program_s_sites_are_found_again_when_its_file_changes() {
    let dir = TempDir::new("program-sites");
    let cache = dir.join("cache");
    let prog = dir.copy(&probed_sample(Variant::Pie), "probed", 0o755);
    let run = |probe: &str, what: &str| {
        let case = Case::new(&prog, ["basic", "3000"])
            .env("XDG_CACHE_HOME", cache.to_str().unwrap())
            .opt("-q")
            .opt("-p")
            .opt(probe);
        let (_, out, r) = common::compare_with_report("program-sites-run", case);
        assert_eq!(hits(&r, "counted"), printed(&out, "counted"), "{what}");
        assert_eq!(hits(&r, "counted"), 3000, "{what}");
    };
    let kept = || {
        std::fs::read_dir(cache.join("uprobe-exec").join("program-sites"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    run("counted", "first run");
    assert_eq!(kept(), 1, "the first run keeps its sites");
    run("counted", "from the cache");
    assert_eq!(kept(), 1, "a second run reads them");
    // Another build of the program, written over the same file: other
    // addresses for `counted`.
    let other = std::fs::read(probed_sample(Variant::NoPie)).unwrap();
    std::fs::write(&prog, &other).unwrap();
    run("counted", "the file changed in place");
    assert_eq!(kept(), 2, "the changed file's own entry");
    run("counted*", "another probe set");
    assert_eq!(kept(), 3);
    // An entry whose sites are not in the program's text (written by
    // anything but us) is a miss, and written anew.
    let entries = cache.join("uprobe-exec").join("program-sites");
    for e in std::fs::read_dir(&entries).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let bad = text.replace("\"addr\":", "\"addr\":1");
        assert_ne!(bad, text);
        std::fs::write(e.path(), bad).unwrap();
    }
    run("counted", "a foreign entry");
    // Our cache directory made writable by others is made private again;
    // one that someone else owns is not used: nothing is kept there.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let top = cache.join("uprobe-exec");
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o777)).unwrap();
    run("coun?ed", "a cache directory others may write");
    assert_eq!(std::fs::metadata(&top).unwrap().mode() & 0o777, 0o755);
    if common::is_root() {
        let before = kept();
        std::os::unix::fs::chown(&top, Some(65534), Some(65534)).unwrap();
        run("c?unted", "someone else's cache directory");
        assert_eq!(kept(), before, "nothing kept in someone else's directory");
    }
}
