//! "Do no harm" (issue 10): a probe never crashes, stops or changes the
//! program it watches. Every test compares with a native run.

#[path = "common/mod.rs"]
mod common;

use common::*;
use uprobe_exec_samples::{path as sample, Variant};

#[test]
fn processes_that_outlive_the_first_never_run_unfilled_text() {
    // The first process exits after 100 ms while its child forks 300
    // grandchildren; they wait, half of them drop the whole text, and all
    // call 2048 page-sized functions. Each must compute the native answer.
    for (v, probes) in [
        (Variant::Static, &[][..]),
        (Variant::Pie, &["-q", "-p", "big_00*"][..]),
        (
            Variant::StaticPie,
            &["-q", "--probe-mode", "int3", "-p", "big_7f*"][..],
        ),
    ] {
        let mut case = Case::new(sample("bigtext", v), ["--outlive", "300"]);
        for o in probes {
            case = case.opt(o);
        }
        let (n, _) = case.compare();
        assert_eq!(n.stdout_str(), "outlive ok=300 of 300\n", "{v:?}");
    }
}

#[test]
fn a_probe_hit_makes_no_system_call() {
    // Under SECCOMP_MODE_STRICT any other system call kills the program.
    // (int3 mode's SIGTRAP guard is a seccomp filter, which keeps a program
    // from entering strict mode at all: README, "Int3 sites".)
    for v in Variant::ALL {
        for mode in ["auto", "jump"] {
            let (out, r) = probed_report_with(
                "strict",
                &["--probe-mode", mode],
                &sample("harm", v),
                &["strict", "1000"],
                &["hit"],
            );
            assert!(out.stdout_str().starts_with("strict acc="), "{v:?} {mode}");
            assert_eq!(r["probes"][0]["hits"], 1000, "{v:?} {mode}: {r}");
        }
    }
}

#[test]
fn a_thread_with_every_signal_blocked_is_not_harmed() {
    // Go creates its threads with every signal blocked; auto mode places
    // no trap, so the thread runs as natively.
    for v in Variant::ALL {
        let (_, r) = probed_report_with(
            "blockedthread",
            &[],
            &sample("harm", v),
            &["blockedthread", "1000"],
            &["hit"],
        );
        assert_eq!(r["probes"][0]["hits"], 1000, "{v:?}: {r}");
        assert_eq!(r["probes"][0]["kind"], "jump", "{v:?}: {r}");
    }
}

#[test]
fn ignored_sigtrap_stays_ignored() {
    for (v, mode) in [
        (Variant::Pie, "auto"),
        (Variant::Static, "auto"),
        (Variant::Pie, "int3"),
        (Variant::Static, "int3"),
    ] {
        let (out, r) = probed_report_with(
            "ignoretrap",
            &["--probe-mode", mode],
            &sample("harm", v),
            &["ignoretrap", "100"],
            &["hit"],
        );
        assert!(out.stdout_str().contains("survived SIGTRAP"), "{v:?}");
        // The probe counted with SIGTRAP ignored, an int3 too.
        assert_eq!(hits(&r, "hit"), 100, "{v:?} {mode}: {r}");
    }
}

#[test]
fn python_with_sigtrap_blocked_runs_as_natively_under_py_star() {
    // Python code that blocks SIGTRAP, then runs under --probe 'Py*'.
    let script = "import signal, json\n\
                  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTRAP})\n\
                  d = {str(i): [i] * 3 for i in range(3000)}\n\
                  print(len(json.dumps(d)), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))\n";
    let (out, r) = probed_report_with(
        "pysigmask",
        &[],
        std::path::Path::new("/usr/bin/python3.11"),
        &["-c", script],
        &["Py*"],
    );
    assert!(
        out.stdout_str().contains("Signals.SIGTRAP"),
        "{}",
        out.stdout_str()
    );
    let probes = r["probes"].as_array().unwrap();
    assert!(
        probes
            .iter()
            .all(|p| p["kind"].as_str().is_some_and(|k| k.starts_with("jump"))),
        "auto mode places jumps only"
    );
    let hits: u64 = probes.iter().map(|p| p["hits"].as_u64().unwrap()).sum();
    assert!(hits > 10_000, "{hits}");
}

/// Processes (not zombies) whose process group is `pgid`, from /proc.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue; // not a process
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_killed_monitor_takes_a_fork_storm_with_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut cmd = Command::new(BIN);
    cmd.args(["-q", "-p", "hit"])
        .arg(sample("harm", Variant::Static))
        .args(["storm", "1000"])
        .stdout(Stdio::piped());
    let mut g = spawn_guarded(&mut cmd);
    let monitor = g.pid();
    let child = g.child.as_mut().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let before = group_members(monitor).len();
    assert!(before > 1000, "{before} processes");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    let _ = child.wait();
    let start = Instant::now();
    let mut left = group_members(monitor);
    while !left.is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
        left = group_members(monitor);
    }
    let took = start.elapsed();
    eprintln!("{before} processes gone in {took:?}");
    // How fast is a figure for the closing note, not a test (the kernel's
    // own teardown of a thousand processes varies with the machine's load);
    // that none is left is.
    assert!(
        left.is_empty(),
        "{} processes outlived their monitor by {took:?}",
        left.len()
    );
}

#[test]
fn sigtrap_in_every_form_behaves_as_natively() {
    // SA_RESETHAND with a mask, a handler that calls a probed function, the
    // program's own int3, a child changing its SIGTRAP action, and a
    // seccomp listener of the program's own: auto mode places jumps only,
    // so none of these meets a trap or a guard of ours.
    for v in Variant::ALL {
        let (out, r) = probed_report_with(
            "traps",
            &[],
            &sample("harm", v),
            &["traps", "100"],
            &["hit"],
        );
        assert!(
            out.stdout_str().contains("own listener: ok"),
            "{v:?}: {}",
            out.stdout_str()
        );
        assert_eq!(r["probes"][0]["kind"], "jump", "{v:?}");
        // 100, the handler's two (the raise and the own int3), the
        // child's one, 100.
        assert_eq!(r["probes"][0]["hits"], 203, "{v:?}: {r}");
    }
}

#[test]
fn kill_trap_from_outside_kills_as_natively() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    for ours in [false, true] {
        let mut cmd = if ours {
            let mut c = Command::new(BIN);
            c.args(["-q", "-p", "counted"])
                .arg(sample("probed", Variant::Pie));
            c
        } else {
            Command::new(sample("probed", Variant::Pie))
        };
        cmd.args(["pause", "5"]).stdout(Stdio::piped());
        let mut g = spawn_guarded(&mut cmd);
        let top = g.pid();
        let child = g.child.as_mut().unwrap();
        let mut line = String::new();
        let mut rd = BufReader::new(child.stdout.take().unwrap());
        while !line.contains("ready") {
            line.clear();
            assert!(rd.read_line(&mut line).unwrap() > 0, "no ready line");
        }
        // The program (not uprobe-exec) gets the signal, as from a shell.
        let target = if ours {
            // uprobe-exec → its watchdog → the program.
            let wd = children(top)[0];
            children(wd)[0]
        } else {
            top
        };
        // SAFETY: signalling a process of this test.
        unsafe { libc::kill(target, libc::SIGTRAP) };
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGTRAP), "ours={ours}: {st:?}");
    }
}
