//! Traced probes (`--trace`): every hit an event with its arguments, pid,
//! tid and time, checked against what the `events` sample says itself
//! (its threads' `gettid()`, its processes' pids, its own clock).

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::{hits, ours, read_report, Output, TempDir};
use serde_json::Value;
use uprobe_exec_samples::{path, Variant};

/// `events ARGS` with `ev` traced as `trace`, in JSON, into a file: the
/// run, its events, its report.
fn traced(
    tag: &str,
    v: Variant,
    trace: &str,
    opts: &[&str],
    args: &[&str],
) -> (Output, Vec<Value>, Value) {
    let dir = TempDir::new(tag);
    let (events, report) = (dir.join("events"), dir.join("r.json"));
    let mut all = vec!["-q", "--format", "json", "--trace", trace];
    all.extend_from_slice(opts);
    let (e, r) = (events.to_str().unwrap(), report.to_str().unwrap());
    all.extend_from_slice(&["-o", e, "--report-json", r]);
    let out = ours(&all, path("events", v), args);
    let events = json_lines(&std::fs::read_to_string(&events).expect("the events file"));
    (out, events, read_report(&report))
}

/// `events ARGS` with `trace` in the text form, into a file: the run
/// (which must succeed) and the file's text.
fn text_events(tag: &str, v: Variant, trace: &str, args: &[&str]) -> (Output, String) {
    let dir = TempDir::new(tag);
    let file = dir.join("events");
    let out = ours(
        &["-q", "--trace", trace, "-o", file.to_str().unwrap()],
        path("events", v),
        args,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    (out, std::fs::read_to_string(&file).unwrap())
}

/// Each line of `text` as JSON.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Which process of `events fork` made the event: its second argument
/// says (1: the parent, 2: the child).
fn role(e: &Value) -> &'static str {
    if int(&e["args"][1]) == 1 {
        "parent"
    } else {
        "child"
    }
}

/// The pid the program says for each `role=` (`events fork`).
fn pids_by_role(out: &Output) -> HashMap<String, i64> {
    said(out)
        .iter()
        .map(|l| (l["role"].clone(), l["pid"].parse().unwrap()))
        .collect()
}

/// `key=value` pairs of each line of the program's output.
fn said(out: &Output) -> Vec<HashMap<String, String>> {
    out.stdout_str()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The report's events: (delivered, dropped, lost).
fn counts(r: &Value) -> (u64, u64, u64) {
    let e = &r["events"];
    let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("events.{k} in {r}"));
    (n("delivered"), n("dropped"), n("lost"))
}

#[test]
fn each_thread_s_events_have_its_tid_its_arguments_in_order() {
    // 4 threads call ev(i, -i, t, 0xdead0000 + i, 3i, ~i) 300 times each
    // and print their own gettid(); with a jump, and with an int3 (the
    // trap handler writes the same events).
    for (v, mode) in [
        (Variant::Pie, "auto"),
        (Variant::Static, "auto"),
        (Variant::Pie, "int3"),
    ] {
        let (out, events, r) = traced(
            "ev-threads",
            v,
            "ev(int, int, uint, hex, uint, hex)",
            &["--probe-mode", mode],
            &["threads", "4", "300"],
        );
        let kind = &r["probes"][0]["kind"];
        assert_eq!(kind == "int3", mode == "int3", "{kind}");
        assert_eq!(out.code, Some(0), "{}", out.stderr_str());
        let thread_of: HashMap<i64, i64> = said(&out)
            .iter()
            .map(|l| (l["tid"].parse().unwrap(), l["thread"].parse().unwrap()))
            .collect();
        assert_eq!(thread_of.len(), 4);
        assert_eq!(events.len(), 1200, "{v:?}");
        assert_eq!(counts(&r), (1200, 0, 0));
        assert_eq!(hits(&r, "ev"), 1200);
        let pid = r["per_process"][0]["pid"].as_i64().unwrap();
        let mut next: HashMap<i64, (i64, u64)> = HashMap::new();
        for e in &events {
            assert_eq!(int(&e["pid"]), pid);
            assert_eq!(e["probe"], "ev");
            let tid = int(&e["tid"]);
            let t = thread_of[&tid];
            let (i, last) = next.entry(tid).or_insert((0, 0));
            let a = &e["args"];
            assert_eq!(int(&a[0]), *i, "hit order within thread {tid}");
            assert_eq!(int(&a[1]), -*i);
            assert_eq!(int(&a[2]), t);
            assert_eq!(a[3], format!("{:#x}", 0xdead_0000 + *i));
            assert_eq!(int(&a[4]), 3 * *i);
            assert_eq!(a[5], format!("{:#x}", !(*i as u64)));
            let time = e["time_ns"].as_u64().unwrap();
            assert!(time >= *last, "time goes forward in thread {tid}");
            *last = time;
            *i += 1;
        }
        assert!(next.values().all(|&(i, _)| i == 300));
    }
}

#[test]
fn the_text_form_is_one_line_per_event() {
    let (out, text) = text_events(
        "ev-text",
        Variant::Pie,
        "ev(int, int, uint)",
        &["fork", "2"],
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let parent = pids_by_role(&out)["parent"];
    // `0.000141684 17705/17705 ev(0, 1, 0)`
    let first: Vec<&str> = lines[0].split(' ').collect();
    let (secs, frac) = first[0].split_once('.').unwrap();
    assert!(
        secs.parse::<u64>().is_ok() && frac.len() == 9,
        "{}",
        lines[0]
    );
    assert_eq!(first[1], format!("{parent}/{parent}"));
    assert_eq!(&lines[0][lines[0].find("ev(").unwrap()..], "ev(0, 1, 0)");
    assert!(lines[1].ends_with(" ev(1, 1, 0)"), "{}", lines[1]);
}

#[test]
fn a_forked_child_s_events_carry_its_pid() {
    let (out, events, r) = traced(
        "ev-fork",
        Variant::Pie,
        "ev(int, int)",
        &[],
        &["fork", "50"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let pid_of = pids_by_role(&out);
    assert_eq!(events.len(), 100);
    assert_eq!(counts(&r), (100, 0, 0));
    for e in &events {
        let role = role(e);
        assert_eq!(int(&e["pid"]), pid_of[role], "{e}");
        assert_eq!(
            int(&e["tid"]),
            pid_of[role],
            "a single-threaded process: tid = pid"
        );
    }
}

#[test]
fn a_program_that_crashes_right_after_its_hits_loses_none_of_them() {
    let (out, events, r) = traced(
        "ev-crash",
        Variant::Pie,
        "ev(int, int)",
        &[],
        &["crash", "500"],
    );
    assert_eq!(out.signal, Some(libc::SIGSEGV), "{}", out.stderr_str());
    assert_eq!(events.len(), 500);
    assert_eq!(counts(&r), (500, 0, 0));
    assert_eq!(int(&events[499]["args"][0]), 499);
}

#[test]
fn a_full_ring_drops_and_counts_what_it_cannot_hold() {
    // A ring of 16 records and a hot loop: most hits are dropped; those
    // delivered and those dropped are the hits, and the file holds exactly
    // the delivered ones.
    let (out, events, r) = traced(
        "ev-full",
        Variant::Pie,
        "ev(int, int)",
        &["--event-ring", "16"],
        &["signal", "200000"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let (delivered, dropped, lost) = counts(&r);
    assert!(dropped > 0, "{delivered} delivered");
    assert_eq!(lost, 0);
    assert_eq!(delivered + dropped, hits(&r, "ev"));
    assert_eq!(events.len() as u64, delivered);
}

#[test]
fn traced_hits_take_no_page_fault_writing_their_records() {
    // 20000 records are 625 pages of the ring. The program's own page
    // fault count over its loop (getrusage) is what it is natively: the
    // stage mapped the ring's pages before the program started (a fork
    // copies no page tables of a shared mapping).
    let mut cmd = std::process::Command::new(path("events", Variant::Pie));
    cmd.args(["hitloop6", "20000"]);
    let native = common::run(cmd);
    let (out, events, r) = traced(
        "ev-nofault",
        Variant::Pie,
        "ev(int, int, uint, hex, uint, hex)",
        &["--event-ring", "32768"],
        &["hitloop6", "20000"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(counts(&r), (20_000, 0, 0));
    assert_eq!(events.len(), 20_000);
    let faults = |o: &Output| -> i64 { said(o)[0]["minflt"].parse().unwrap() };
    assert!(
        faults(&out) <= faults(&native) + 8,
        "traced loop: {} page faults, native: {}",
        faults(&out),
        faults(&native)
    );
}

#[test]
fn hits_in_a_signal_handler_that_interrupted_a_hit_are_events_too() {
    // A 50 µs interval timer whose handler calls ev(-1, 5) interrupts the
    // loop's hits, some inside the event routine: every hit is an event
    // (the ring is large enough), the handler's as many as it says.
    let (out, events, r) = traced(
        "ev-signal",
        Variant::Pie,
        "ev(int, int)",
        &["--event-ring", "1048576"],
        &["signal", "300000"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let handled: usize = said(&out)[0]["handled"].parse().unwrap();
    assert!(handled > 0);
    assert_eq!(counts(&r), (hits(&r, "ev"), 0, 0));
    let in_handler = events.iter().filter(|e| int(&e["args"][1]) == 5).count();
    assert_eq!(in_handler, handled);
    let looped: Vec<i64> = events
        .iter()
        .filter(|e| int(&e["args"][1]) == 4)
        .map(|e| int(&e["args"][0]))
        .collect();
    assert_eq!(looped, (0..300_000).collect::<Vec<i64>>());
}

#[test]
fn event_times_are_the_program_s_own_monotonic_clock() {
    // The program reads CLOCK_MONOTONIC just before each call: each event's
    // time lies between that reading and the next, to within a microsecond
    // (the next reading follows the call by tens of nanoseconds, about
    // what reading a (counter, clock) pair costs).
    let (out, events, _) = traced("ev-clock", Variant::Pie, "ev(int)", &[], &["clock", "200"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let before: Vec<u64> = said(&out)
        .iter()
        .map(|l| l["before"].parse().unwrap())
        .collect();
    assert_eq!(events.len(), 200);
    for (i, e) in events.iter().enumerate() {
        let t = e["time_ns"].as_u64().unwrap();
        assert!(
            t + 1_000 >= before[i],
            "event {i}: {t} before the program's {}",
            before[i]
        );
        if let Some(&next) = before.get(i + 1) {
            assert!(
                t <= next + 1_000,
                "event {i}: {t} after the program's next reading {next}"
            );
        }
    }
}

#[test]
fn a_traced_site_is_one_probe_with_its_hits_and_bad_types_are_refused() {
    let (out, events, r) = traced(
        "ev-both",
        Variant::Pie,
        "ev(int)",
        &["-p", "ev"],
        &["fork", "3"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(r["probes"].as_array().unwrap().len(), 1);
    assert_eq!(hits(&r, "ev"), 6);
    assert_eq!(events.len(), 6);
    for (spec, why) in [
        (
            "ev(int, str)%return",
            "trace 'ev(int, str)' and 'ev%return' apart",
        ),
        ("ev(int, char)", "unknown argument type"),
        (
            "ev(int, int, int, int, int, int, int)",
            "rdi, rsi, rdx, rcx, r8, r9",
        ),
    ] {
        let out = ours(
            &["--trace", spec],
            path("events", Variant::Pie),
            &["fork", "1"],
        );
        assert_eq!(out.code, Some(125), "{spec}");
        assert!(
            out.stderr_str().contains(why),
            "{spec}: {}",
            out.stderr_str()
        );
    }
}

#[test]
fn strings_are_read_without_ever_faulting_the_program() {
    // sv(a, b, i) over five pairs (see events.c): plain and escaped, NULL
    // and unmapped, 70 bytes (cut at 63) and empty, 3 bytes that end a
    // mapping (cut where the mapping ends) and "x", a non-UTF-8 byte.
    for mode in ["auto", "int3"] {
        strings_as_they_are(mode);
    }
}

fn strings_as_they_are(mode: &str) {
    let (out, events, r) = traced(
        "ev-str",
        Variant::Pie,
        "sv(str, str, int)",
        &["--probe-mode", mode],
        &["strings", "10"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(counts(&r), (10, 0, 0));
    let digits = "0123456789".repeat(7);
    let want: [(Value, Value); 5] = [
        ("alpha".into(), "with \"quote\"\n\tand tab".into()),
        (Value::Null, Value::Null),
        (digits[..63].into(), "".into()),
        ("end".into(), "x".into()),
        ("\u{fffd}".into(), "ok".into()),
    ];
    for (i, e) in events.iter().enumerate() {
        let a = &e["args"];
        assert_eq!(
            (&a[0], &a[1]),
            (&want[i % 5].0, &want[i % 5].1),
            "event {i}: {e}"
        );
        assert_eq!(int(&a[2]), i as i64);
        let cut = matches!(i % 5, 2 | 3);
        assert_eq!(e.get("truncated").is_some(), cut, "event {i}: {e}");
    }
    // The text form keeps every byte, escaped.
    let (_, text) = text_events(
        "ev-str-text",
        Variant::Static,
        "sv(str, str, int)",
        &["strings", "5"],
    );
    let calls: Vec<&str> = text.lines().map(|l| &l[l.find("sv(").unwrap()..]).collect();
    assert_eq!(
        calls,
        [
            r#"sv("alpha", "with \"quote\"\n\tand tab", 0)"#,
            "sv(NULL, 0x10, 1)",
            &format!("sv(\"{}\"..., \"\", 2)", &digits[..63]),
            r#"sv("end"..., "x", 3)"#,
            r#"sv("\xff", "ok", 4)"#,
        ]
    );
}

#[test]
fn unprivileged_a_forked_child_s_events_carry_its_pid_too() {
    // Without privileges there are no fork events: a child is not served,
    // its row page is zeros, and the event routine asks the kernel for its
    // pid instead.
    let (d, bin) = common::nobody_dir("ev-nobody");
    let prog = d.copy(&path("events", Variant::Pie), "events-pie", 0o755);
    let file = d.join("events");
    let argv: Vec<std::ffi::OsString> = vec![
        bin.into(),
        "-q".into(),
        "--format".into(),
        "json".into(),
        "--trace".into(),
        "ev(int, int)".into(),
        "-o".into(),
        file.clone().into(),
        prog.into(),
        "fork".into(),
        "20".into(),
    ];
    let mut cmd = common::command(true, &argv);
    cmd.current_dir(&d.path);
    let out = common::run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let pid_of = pids_by_role(&out);
    let events = json_lines(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(events.len(), 40);
    for e in &events {
        let role = role(e);
        assert_eq!(int(&e["pid"]), pid_of[role], "{e}");
    }
}
