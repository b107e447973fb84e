//! Timed functions (`--latency`): every call counted, and timed from entry
//! to return, checked against what the `latency` sample says it did (its
//! own call counts, the durations it slept), and the program running as
//! natively (same output, same exit).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::{ours, read_report, Output, TempDir};
use serde_json::Value;
use uprobe_exec_samples::{path, Variant};

/// `latency ARGS` natively and with `--latency SPEC`: both runs, and the
/// report's entry for the function.
fn timed(tag: &str, spec: &str, args: &[&str]) -> (Output, Output, Value, Value) {
    timed_in("latency", tag, &[spec], args)
}

/// `SAMPLE ARGS` natively and with `--latency` for each of `specs`: both
/// runs, the report's entry for the first, and the report.
fn timed_in(
    sample: &str,
    tag: &str,
    specs: &[&str],
    args: &[&str],
) -> (Output, Output, Value, Value) {
    timed_variant(sample, Variant::Pie, tag, specs, args)
}

/// [`timed_in`] with the sample built as `variant`.
fn timed_variant(
    sample: &str,
    variant: Variant,
    tag: &str,
    specs: &[&str],
    args: &[&str],
) -> (Output, Output, Value, Value) {
    let spec = specs[0];
    let prog = path(sample, variant);
    let mut cmd = std::process::Command::new(&prog);
    cmd.args(args);
    let native = common::run(cmd);
    let dir = TempDir::new(tag);
    let report = dir.join("r.json");
    let mut opts = vec!["-q", "--report-json", report.to_str().unwrap()];
    for s in specs {
        opts.extend(["--latency", s]);
    }
    let out = ours(&opts, &prog, args);
    let r = read_report(&report);
    let l = r["latency"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["symbol"] == spec))
        .cloned()
        .unwrap_or_else(|| panic!("no latency for {spec}: {r}"));
    (native, out, l, r)
}

/// `key=value` pairs the program printed (all lines).
fn said(out: &Output) -> HashMap<String, String> {
    out.stdout_str()
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn n(l: &Value, k: &str) -> u64 {
    l[k].as_u64().unwrap_or_else(|| panic!("{k} in {l}"))
}

fn same_as_native(native: &Output, out: &Output) {
    assert_eq!(out.code, native.code, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), native.stdout_str());
}

#[test]
fn known_sleeps_land_in_their_buckets_and_every_call_is_counted() {
    // 20 naps of 2 ms and 20 of 20 ms: a nap lasts at least that long.
    let (native, out, l, _) = timed("lat-sleeps", "nap", &["sleeps", "20", "20"]);
    same_as_native(&native, &out);
    assert_eq!((n(&l, "count"), n(&l, "timed")), (40, 40), "{l}");
    assert!(n(&l, "min_ns") >= 2_000_000, "{l}");
    assert!(n(&l, "max_ns") >= 20_000_000, "{l}");
    let hist = l["hist"].as_array().unwrap();
    let calls = |lo: u64, hi: u64| -> u64 {
        hist.iter()
            .filter(|b| n(b, "lo_ns") >= lo && n(b, "hi_ns") < hi)
            .map(|b| n(b, "count"))
            .sum()
    };
    // 2 ms is in [2^20, 2^21) ns: the short naps, with room for a loaded
    // machine to wake them late (under 16 ms); 20 ms is in [2^24, 2^25),
    // or the next bucket if late.
    assert_eq!(calls(1 << 20, 1 << 24), 20, "{l}");
    assert_eq!(calls(1 << 24, 1 << 26), 20, "{l}");
    assert_eq!(hist.iter().map(|b| n(b, "count")).sum::<u64>(), 40);
    let sum = n(&l, "sum_ns");
    assert!(sum >= 20 * 2_000_000 + 20 * 20_000_000, "{l}");
}

#[test]
fn recursive_fib_22_is_57313_calls_each_timed() {
    let (native, out, l, _) = timed("lat-fib", "fib", &["fib", "22"]);
    same_as_native(&native, &out);
    let calls: u64 = said(&out)["calls"].parse().unwrap();
    assert_eq!(calls, 57_313);
    assert_eq!(
        (
            n(&l, "count"),
            n(&l, "timed"),
            n(&l, "left"),
            n(&l, "untimed")
        ),
        (calls, calls, 0, 0),
        "{l}"
    );
}

#[test]
fn calls_left_by_longjmp_are_counted_and_the_program_runs_as_natively() {
    // 100 times: 5 nested dives, the deepest longjmps out of all of them.
    let (native, out, l, r) = timed("lat-longjmp", "dive", &["longjmp", "100", "5"]);
    same_as_native(&native, &out);
    assert_eq!(said(&out)["dives"], "500");
    assert_eq!(n(&l, "count"), 500, "{l}");
    // None returns: each is left, found when the next dive begins at its
    // stack pointer; the last 5 are never found.
    assert_eq!(n(&l, "timed"), 0, "{l}");
    assert!(n(&l, "left") >= 495, "{l}");
    assert!(r["warnings"].to_string().contains("dive+0x"), "{r}");
}

#[test]
fn ten_thousand_frames_deep_every_call_is_timed() {
    let (native, out, l, _) = timed("lat-deep", "dive2", &["deep", "10000"]);
    same_as_native(&native, &out);
    assert_eq!(said(&out)["calls"], "10001");
    assert_eq!((n(&l, "count"), n(&l, "timed")), (10_001, 10_001), "{l}");
    // Each call lasts at least as long as every call it made.
    assert!(n(&l, "max_ns") >= n(&l, "min_ns"));
}

#[test]
fn eight_threads_each_time_their_own_calls() {
    let (native, out, l, _) = timed("lat-threads", "work", &["threads", "8", "20000"]);
    same_as_native(&native, &out);
    assert_eq!(said(&out)["calls"], "160000");
    assert_eq!(
        (
            n(&l, "count"),
            n(&l, "timed"),
            n(&l, "left"),
            n(&l, "untimed")
        ),
        (160_000, 160_000, 0, 0),
        "{l}"
    );
}

#[test]
fn a_fork_inside_a_timed_function_returns_in_both_processes() {
    let (native, out, l, _) = timed("lat-fork", "forked", &["fork"]);
    assert_eq!(out.code, native.code, "{}", out.stderr_str());
    let text = out.stdout_str();
    assert!(
        text.contains("role=child") && text.contains("role=parent child_status=0"),
        "{text}"
    );
    // One call, two returns: the child's timing stack is a copy of its
    // parent's, as its stack is.
    assert_eq!((n(&l, "count"), n(&l, "timed")), (1, 2), "{l}");
}

#[test]
fn a_function_named_that_cannot_be_timed_is_refused_with_the_reason() {
    // `--latency` names whole functions.
    let prog = path("latency", Variant::Pie);
    let out = ours(&["--latency", "fib+0x4"], &prog, &["fib", "3"]);
    assert_eq!(out.code, Some(125), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("--latency times whole functions"),
        "{}",
        out.stderr_str()
    );
}

#[test]
fn the_histogram_goes_to_stderr_as_funclatency_prints_it() {
    let prog = path("latency", Variant::Pie);
    let out = ours(&["--latency", "nap"], &prog, &["sleeps", "3", "0"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let err = out.stderr_str();
    assert!(err.contains("uprobe-exec: nap: 3 calls, avg "), "{err}");
    assert!(err.contains("Function = nap"), "{err}");
    assert!(err.contains("nsecs : count    distribution"), "{err}");
    // Buckets of `lo -> hi : count |stars|`, the three naps among them.
    let counts: Vec<u64> = err
        .lines()
        .filter(|l| l.contains(" -> ") && l.ends_with('|'))
        .map(|l| {
            let count = l
                .split(':')
                .nth(1)
                .and_then(|c| c.split_whitespace().next());
            count
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("{l}"))
        })
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 3, "{err}");
    // Nothing of ours on stdout.
    assert_eq!(out.stdout_str(), "naps=3\n");
}

#[test]
fn unprivileged_calls_are_timed_the_same() {
    let (d, bin) = common::nobody_dir("lat-nobody");
    let prog = d.copy(&path("latency", Variant::Pie), "latency-pie", 0o755);
    let report = d.join("r.json");
    let argv: Vec<std::ffi::OsString> = vec![
        bin.clone().into(),
        "-q".into(),
        "--latency".into(),
        "fib".into(),
        "--report-json".into(),
        report.clone().into(),
        prog.into(),
        "fib".into(),
        "18".into(),
    ];
    let mut cmd = common::command(true, &argv);
    cmd.current_dir(&d.path);
    let out = common::run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let calls: u64 = said(&out)["calls"].parse().unwrap();
    let r = read_report(&report);
    common::assert_unprivileged_handoff("--latency", &r);
    let l = &r["latency"][0];
    assert_eq!((n(l, "count"), n(l, "timed")), (calls, calls), "{l}");

    // Return events and a timeline, unprivileged: one of each per call,
    // and the child of a fork inside a traced function returns 0 in its own.
    let events = d.join("ev.json");
    let trace_file = d.join("t.json");
    let argv: Vec<std::ffi::OsString> = vec![
        bin.into(),
        "-q".into(),
        "--trace".into(),
        "fib%return(int)".into(),
        "--trace".into(),
        "forked%return(int)".into(),
        "--format".into(),
        "json".into(),
        "-o".into(),
        events.clone().into(),
        "--perfetto".into(),
        trace_file.clone().into(),
        d.join("latency-pie").into(),
        "fib".into(),
        "18".into(),
    ];
    let mut cmd = common::command(true, &argv);
    cmd.current_dir(&d.path);
    let out = common::run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(json_events(&events).len() as u64, calls);
    let slices = timeline(&trace_file)
        .iter()
        .filter(|e| e["ph"] == "X")
        .count() as u64;
    assert_eq!(slices, calls);
    let mut argv = argv;
    argv.truncate(argv.len() - 2);
    argv.push("fork".into());
    let mut cmd = common::command(true, &argv);
    cmd.current_dir(&d.path);
    let out = common::run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let rets: Vec<i64> = json_events(&events)
        .iter()
        .map(|e| e["ret"].as_i64().unwrap())
        .collect();
    let child: i64 = out
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_suffix(" role=child")?.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rets.len(), 2, "{rets:?}");
    assert!(rets.contains(&0) && rets.contains(&child), "{rets:?}");
}

/// The entry of `symbol` in a report's `latency`.
fn entry<'a>(r: &'a Value, symbol: &str) -> &'a Value {
    r["latency"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["symbol"] == symbol))
        .unwrap_or_else(|| panic!("no latency for {symbol}: {r}"))
}

#[test]
fn an_exception_through_seven_timed_frames_unwinds_as_natively() {
    // 5000 throws, each from 7 nested calls of `layer`, caught in main: the
    // unwinder reads return addresses, which are never replaced.
    let (native, out, l, _) = timed_in("unwind", "lat-throw", &["layer"], &["throw", "5000", "7"]);
    same_as_native(&native, &out);
    assert_eq!(said(&out)["layers"], "35000");
    assert_eq!(n(&l, "count"), 35_000, "{l}");
    assert_eq!(n(&l, "timed"), 0, "{l}");
    assert!(n(&l, "left") >= 35_000 - 7, "{l}");
}

#[test]
fn a_catch_inside_a_timed_function_returns_and_is_timed() {
    // `catcher` calls `fails`, which throws; `catcher` catches (in gcc's
    // `catcher.cold`, the same frame) and returns.
    let (native, out, _, r) = timed_in(
        "unwind",
        "lat-catch",
        &["catcher", "fails"],
        &["catch", "100"],
    );
    same_as_native(&native, &out);
    let c = entry(&r, "catcher");
    assert_eq!(
        (n(c, "count"), n(c, "timed"), n(c, "untimed"), n(c, "left")),
        (100, 100, 0, 0),
        "{c}"
    );
    let f = entry(&r, "fails");
    assert_eq!((n(f, "count"), n(f, "timed")), (100, 0), "{f}");
    assert!(n(f, "left") >= 99, "{f}");
}

#[test]
fn backtrace_inside_timed_functions_finds_the_native_frames() {
    // inner() prints its first three frames relative to main.
    let (native, out, l, _) = timed_in("unwind", "lat-bt", &["inner", "outer"], &["backtrace"]);
    same_as_native(&native, &out);
    assert_eq!(n(&l, "timed"), 1, "{l}");
}

#[test]
fn std_backtrace_inside_timed_functions_names_the_native_frames() {
    // std's symbolizer reads the program's own file, found by the name of
    // its first mapping in /proc/self/maps or by /proc/self/exe. Without
    // the full hand-off, those name a sealed copy (a memfd) and uprobe-exec,
    // and std names none of the program's frames, --latency or not.
    if !common::privileged("std::backtrace names frames from the program's file") {
        return;
    }
    let fns = ["bt_inner", "bt_middle", "bt_outer"];
    for v in Variant::ALL {
        // 100 times, bt_outer calls bt_middle, which calls bt_inner, which
        // captures a backtrace; the program prints the first one's names.
        let (native, out, _, r) = timed_variant("stdbacktrace", v, "lat-stdbt", &fns, &["100"]);
        same_as_native(&native, &out);
        let text = out.stdout_str();
        assert!(text.contains("calls=100 same=100"), "{v:?}: {text}");
        let frames: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("frame="))
            .collect();
        let at = frames.iter().position(|f| *f == "bt_inner");
        let at = at.unwrap_or_else(|| panic!("{v:?}: no bt_inner in {frames:?}"));
        assert_eq!(frames[at..at + 3], fns, "{v:?}: {frames:?}");
        assert!(frames[at + 3..].contains(&"main"), "{v:?}: {frames:?}");
        for f in fns {
            let l = entry(&r, f);
            assert_eq!((n(l, "count"), n(l, "timed")), (100, 100), "{v:?}: {l}");
        }
    }
}

#[test]
fn swapcontext_in_the_middle_of_a_timed_call_runs_as_natively() {
    // A coroutine calls `hop`, which switches back to main's stack in the
    // middle; main switches in again, and `hop` returns (100 times; the
    // last `hop` never returns).
    let (native, out, l, _) = timed_in("unwind", "lat-ctx", &["hop"], &["context", "100"]);
    same_as_native(&native, &out);
    assert_eq!(said(&out)["hops"], "100");
    assert_eq!((n(&l, "count"), n(&l, "timed")), (100, 99), "{l}");
}

#[test]
fn a_call_that_ends_in_a_tail_call_is_timed_to_its_jump() {
    // `tailer` ends with `jmp work`: that jump is one of its exits.
    let (native, out, l, _) = timed("lat-tail", "tailer", &["tail", "1000"]);
    same_as_native(&native, &out);
    assert_eq!(
        (
            n(&l, "count"),
            n(&l, "timed"),
            n(&l, "untimed"),
            n(&l, "left")
        ),
        (1000, 1000, 0, 0),
        "{l}"
    );
}

#[test]
fn threads_that_exit_inside_a_timed_function_leave_it_counted() {
    // 8 threads each end (pthread_exit) inside `quitter`.
    let (native, out, l, _) = timed("lat-pexit", "quitter", &["pexit", "8"]);
    same_as_native(&native, &out);
    assert_eq!((n(&l, "count"), n(&l, "timed")), (8, 0), "{l}");
}

#[test]
fn every_py_function_timed_and_some_traced_python_runs_as_natively() {
    // Hundreds of sites: the counters' offsets are long, and an entry that
    // counts, traces and times must still fit its slot, or be passed over
    // (never the whole run refused for a pattern's match).
    let py = "/usr/bin/python3.11";
    if !common::prerequisite(std::path::Path::new(py).exists(), "python3.11") {
        return;
    }
    let script = "import json; print(json.dumps({'a': sorted([3, 1, 2])}))";
    let mut cmd = std::process::Command::new(py);
    cmd.args(["-c", script]);
    let native = common::run(cmd);
    let dir = TempDir::new("lat-py");
    let report = dir.join("r.json");
    let out = ours(
        &[
            "-q",
            "--latency",
            "Py*",
            "--trace",
            "PyList_*",
            "-o",
            "/dev/null",
            "--report-json",
            report.to_str().unwrap(),
        ],
        py,
        &["-c", script],
    );
    same_as_native(&native, &out);
    let r = read_report(&report);
    let timed = r["latency"].as_array().map_or(0, Vec::len);
    assert!(timed > 500, "{timed} functions timed");
}

// Return events (`--trace 'f%return'`) and the timeline (`--perfetto`).

/// `latency ARGS` natively and with `OPTS` (events and timeline go to
/// files in `dir`): both runs.
fn with_events(dir: &TempDir, opts: &[&str], args: &[&str]) -> (Output, Output) {
    let prog = path("latency", Variant::Pie);
    let mut cmd = std::process::Command::new(&prog);
    cmd.args(args);
    let native = common::run(cmd);
    let report = dir.join("r.json");
    let mut all = vec!["-q", "--report-json", report.to_str().unwrap()];
    all.extend(opts);
    let out = ours(&all, &prog, args);
    same_as_native(&native, &out);
    (native, out)
}

/// The JSON lines of an events file.
fn json_events(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The values every call of fib(n) returns, in any order.
fn fib_returns(n: u64, out: &mut Vec<u64>) -> u64 {
    let r = if n < 2 {
        n
    } else {
        fib_returns(n - 1, out) + fib_returns(n - 2, out)
    };
    out.push(r);
    r
}

/// Whether intervals (start, end) of one thread nest: any two are
/// disjoint or one holds the other.
fn nested(mut spans: Vec<(u64, u64)>) -> Result<(), String> {
    spans.sort_by_key(|&(s, e)| (s, std::cmp::Reverse(e)));
    let mut open: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        while open.last().is_some_and(|&(_, oe)| oe <= s) {
            open.pop();
        }
        if let Some(&(os, oe)) = open.last() {
            if e > oe {
                return Err(format!("[{s}, {e}] overlaps [{os}, {oe}]"));
            }
        }
        open.push((s, e));
    }
    Ok(())
}

#[test]
fn each_return_is_an_event_with_its_value_and_its_calls_nest_in_time() {
    let dir = TempDir::new("ret-fib");
    let events = dir.join("ev.json");
    let (native, _) = with_events(
        &dir,
        &[
            "--trace",
            "fib%return(int)",
            "--format",
            "json",
            "-o",
            events.to_str().unwrap(),
        ],
        &["fib", "15"],
    );
    let said = said(&native);
    let mut expected = Vec::new();
    let f = fib_returns(15, &mut expected);
    assert_eq!(said["fib"], f.to_string());
    assert_eq!(said["calls"], expected.len().to_string());
    let ev = json_events(&events);
    assert_eq!(ev.len(), expected.len(), "one event per return");
    for e in &ev {
        assert_eq!(e["probe"], "fib", "{e}");
        assert_eq!(e["args"], serde_json::json!([]), "{e}");
        assert!(e["duration_ns"].is_u64(), "every call timed: {e}");
    }
    let mut got: Vec<u64> = ev.iter().map(|e| n(e, "ret")).collect();
    // The last return is the outermost call's, and the longest.
    assert_eq!(*got.last().unwrap(), f);
    let longest = ev.iter().map(|e| n(e, "duration_ns")).max().unwrap();
    assert_eq!(n(ev.last().unwrap(), "duration_ns"), longest);
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "the values fib returned");
    let spans = ev
        .iter()
        .map(|e| (n(e, "time_ns") - n(e, "duration_ns"), n(e, "time_ns")))
        .collect();
    nested(spans).unwrap();
}

#[test]
fn a_tail_call_returns_no_value_of_its_own_and_strings_are_read() {
    // tailer(i) ends in a jump to work(3i + 1), which returns for both.
    let dir = TempDir::new("ret-tail");
    let events = dir.join("ev.txt");
    with_events(
        &dir,
        &[
            "--trace",
            "tailer%return",
            "--trace",
            "work%return(uint)",
            "-o",
            events.to_str().unwrap(),
        ],
        &["tail", "3"],
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let tails: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" tailer() = "))
        .collect();
    assert_eq!(tails.len(), 3, "{text}");
    assert!(
        tails.iter().all(|l| l.contains(" tailer() = ? <0.")),
        "{text}"
    );
    let work = |x: u64| x.wrapping_mul(2_654_435_761) >> 3;
    let values: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(" work() = "))
        .map(|(_, v)| v.split(' ').next().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..3).map(|i| work(3 * i + 1).to_string()).collect();
    assert_eq!(values, expected, "{text}");

    // A `str` value: as the program printed it; NULL; cut at 63 bytes.
    let dir = TempDir::new("ret-str");
    let events = dir.join("ev.txt");
    let (native, _) = with_events(
        &dir,
        &[
            "--trace",
            "name_of%return(str)",
            "-o",
            events.to_str().unwrap(),
        ],
        &["names", "8"],
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let got: Vec<&str> = text
        .lines()
        .map(|l| l.split_once(" name_of() = ").unwrap().1)
        .map(|v| v.rsplit_once(" <").unwrap().0)
        .collect();
    let expected: Vec<String> = native
        .stdout_str()
        .lines()
        .map(|l| match l.strip_prefix("name=").unwrap() {
            "(null)" => "NULL".to_string(),
            s if s.len() > 63 => format!("\"{}\"...", &s[..63]),
            s => format!("\"{}\"", s.replace('"', "\\\"")),
        })
        .collect();
    assert_eq!(got, expected, "{text}");
}

#[test]
fn return_probes_refuse_what_they_cannot_show() {
    let prog = path("latency", Variant::Pie);
    for (spec, why) in [
        ("fib(int)%return", "trace 'fib(int)' and 'fib%return' apart"),
        ("fib+4%return", "whole functions, and fib+0x4 is inside one"),
        ("fib%return(int, int)", "one value, so one type"),
    ] {
        let out = ours(&["--trace", spec], &prog, &["fib", "3"]);
        assert_eq!(out.code, Some(125), "{spec}: {}", out.stderr_str());
        assert!(
            out.stderr_str().contains(why),
            "{spec}: {}",
            out.stderr_str()
        );
        assert!(out.stdout_str().is_empty(), "the program did not run");
    }
}

/// A `--perfetto` file, parsed: its events.
fn timeline(file: &std::path::Path) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
        .unwrap_or_else(|e| panic!("not JSON: {e}"));
    assert_eq!(v["displayTimeUnit"], "ns");
    v["traceEvents"].as_array().expect("traceEvents").clone()
}

/// µs with three decimals, as the timeline writes them, in ns.
fn ns(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1000.0).round() as u64
}

#[test]
fn a_timeline_has_a_slice_per_call_nested_per_thread() {
    // fib(12), its entries traced too: every slice has its argument and
    // the value fib returns for it.
    let dir = TempDir::new("perfetto-fib");
    let file = dir.join("t.json");
    let (native, _) = with_events(
        &dir,
        &[
            "--latency",
            "fib",
            "--trace",
            "fib(int)",
            "--perfetto",
            file.to_str().unwrap(),
        ],
        &["fib", "12"],
    );
    let ev = timeline(&file);
    let calls: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(calls.len().to_string(), said(&native)["calls"]);
    for c in &calls {
        let arg = c["args"]["args"][0].as_u64().expect("the entry's argument");
        let ret = u64::from_str_radix(
            c["args"]["ret"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        assert_eq!(ret, fib_returns(arg, &mut Vec::new()), "{c}");
        assert_eq!(c["name"], "fib");
    }
    nested(
        calls
            .iter()
            .map(|c| (ns(&c["ts"]), ns(&c["ts"]) + ns(&c["dur"])))
            .collect(),
    )
    .unwrap();
    let names: Vec<&str> = ev
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["process_name", "thread_name"]);
    assert!(!ev.iter().any(|e| e["ph"] == "i"), "no call was left");

    // 4 threads: each its own track, its calls nested on it.
    let dir = TempDir::new("perfetto-threads");
    let file = dir.join("t.json");
    with_events(
        &dir,
        &["--latency", "work", "--perfetto", file.to_str().unwrap()],
        &["threads", "4", "500"],
    );
    let ev = timeline(&file);
    let mut by_thread: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for c in ev.iter().filter(|e| e["ph"] == "X") {
        by_thread
            .entry(n(c, "tid"))
            .or_default()
            .push((ns(&c["ts"]), ns(&c["ts"]) + ns(&c["dur"])));
    }
    assert_eq!(by_thread.len(), 4);
    assert!(by_thread.values().all(|v| v.len() == 500));
    for spans in by_thread.into_values() {
        nested(spans).unwrap();
    }
    let threads = ev.iter().filter(|e| e["name"] == "thread_name").count();
    assert_eq!(threads, 4);

    // longjmp: the traced entries of calls left are instants, marked.
    let dir = TempDir::new("perfetto-left");
    let file = dir.join("t.json");
    let (native, _) = with_events(
        &dir,
        &[
            "--latency",
            "dive",
            "--trace",
            "dive(int)",
            "--perfetto",
            file.to_str().unwrap(),
        ],
        &["longjmp", "10", "5"],
    );
    let ev = timeline(&file);
    let left = ev
        .iter()
        .filter(|e| e["ph"] == "i" && e["args"]["left"] == true)
        .count();
    assert_eq!(said(&native)["dives"], left.to_string());
    assert!(!ev.iter().any(|e| e["ph"] == "X"), "no dive returned");

    // A longjmp into the middle of a recursion: the calls below the catch
    // are left, those above it return, each paired with its own entry
    // (climb(d) returns d - 2), not the innermost one of its name.
    let dir = TempDir::new("perfetto-mid");
    let file = dir.join("t.json");
    let (native, _) = with_events(
        &dir,
        &[
            "--latency",
            "climb",
            "--trace",
            "climb(int)",
            "--perfetto",
            file.to_str().unwrap(),
        ],
        &["midjump", "20"],
    );
    let ev = timeline(&file);
    let said = said(&native);
    let calls: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(calls.len().to_string(), said["returned"]);
    for c in &calls {
        let arg = c["args"]["args"][0].as_u64().unwrap();
        assert!((3..=5).contains(&arg), "{c}");
        assert_eq!(c["args"]["ret"], format!("{:#x}", arg - 2), "{c}");
    }
    let left: Vec<u64> = ev
        .iter()
        .filter(|e| e["ph"] == "i" && e["args"]["left"] == true)
        .map(|e| e["args"]["args"][0].as_u64().unwrap())
        .collect();
    assert_eq!(left.len().to_string(), said["left"]);
    assert!(left.iter().all(|&d| d <= 2), "{left:?}");
}

#[test]
fn a_timeline_needs_calls_to_draw_and_a_file_of_its_own() {
    let prog = path("latency", Variant::Pie);
    let dir = TempDir::new("perfetto-refused");
    let file = dir.join("t.json");
    let f = file.to_str().unwrap();
    for (opts, why) in [
        (vec!["--perfetto", f, "-p", "fib"], "give one"),
        (
            vec!["--perfetto", f, "-o", f, "--latency", "fib"],
            "name the same file",
        ),
        (
            vec!["--perfetto", f, "--latency", "fib+4"],
            "fib+0x4 is inside one",
        ),
    ] {
        let out = ours(&opts, &prog, &["fib", "3"]);
        assert_eq!(out.code, Some(125), "{opts:?}: {}", out.stderr_str());
        assert!(
            out.stderr_str().contains(why),
            "{opts:?}: {}",
            out.stderr_str()
        );
        assert!(!file.exists(), "{opts:?}: no file of no run");
    }
}

#[test]
fn dropped_return_events_are_said_at_exit() {
    // Two records of room for 1973 returns: most are dropped, and said.
    let prog = path("latency", Variant::Pie);
    let dir = TempDir::new("ret-dropped");
    let report = dir.join("r.json");
    let out = ours(
        &[
            "--event-ring",
            "2",
            "--trace",
            "fib%return",
            "-o",
            "/dev/null",
            "--report-json",
            report.to_str().unwrap(),
        ],
        &prog,
        &["fib", "15"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let r = read_report(&report);
    let (delivered, dropped) = (n(&r["events"], "delivered"), n(&r["events"], "dropped"));
    assert_eq!(delivered + dropped, 1973, "one record per return: {r}");
    assert!(dropped > 0, "{r}");
    assert!(
        out.stderr_str()
            .contains(&format!("{dropped} of 1973 events were dropped")),
        "{}",
        out.stderr_str()
    );
}
