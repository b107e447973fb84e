//! The program under uprobe-exec as debuggers, profilers and core dumps see
//! it, and programs that hide from them (`PR_SET_DUMPABLE 0`): each compared
//! with a native run of the same program.

#[path = "common/mod.rs"]
mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{command, hits, is_root, nobody_dir, privileged, read_report, run, Case};
use uprobe_exec_samples::{path, Variant};

/// `prog args` under our copy `tool`, with an int3 probe on `work` (the
/// SIGTRAP guard is what these tests are about).
fn work_probed<S: AsRef<OsStr>>(prog: &Path, args: &[S], tool: &Path) -> Case {
    Case::new(prog, args)
        .tool(tool)
        .opt("-q")
        .opt("--probe-mode")
        .opt("int3")
        .opt("-p")
        .opt("work")
}

#[test]
fn guard_holds_when_the_program_makes_itself_non_dumpable() {
    let (dir, tool) = nobody_dir("nodump");
    for v in [Variant::Pie, Variant::Static] {
        let prog = dir.copy(&path("nodump", v), &format!("nodump-{}", v.suffix()), 0o755);
        for nobody in users() {
            let report = dir.join(format!("r-{}-{nobody}.json", v.suffix()));
            let mut case = work_probed(&prog, &["1000"], &tool)
                .opt("--report-json")
                .opt(&report);
            if nobody {
                case = case.nobody();
            }
            let (_, out) = case.compare();
            let what = format!("{v:?} nobody={nobody}");
            assert!(out.stdout_str().contains("installed=ours"), "{what}");
            assert!(out.stdout_str().contains("traps=2"), "{what}");
            let r = read_report(&report);
            assert_eq!(hits(&r, "work"), 1000, "{what}");
            assert_eq!(
                r["warnings"].as_array().map(Vec::len),
                Some(0),
                "{what}: {r}"
            );
        }
    }
}

/// A process born non-dumpable (forked after the prctl) cannot be read by an
/// unprivileged guard at all: its `rt_sigaction(SIGTRAP)` is refused and
/// reported, and the probes keep counting.
#[test]
fn guard_refuses_what_it_cannot_read_and_says_so() {
    if !privileged("a privileged and an unprivileged run to tell apart") {
        return;
    }
    let (dir, tool) = nobody_dir("nodump-fork");
    let report = dir.join("r.json");
    let prog = dir.copy(&path("nodump", Variant::Pie), "nodump", 0o755);
    let case = work_probed(&prog, &["1000", "fork"], &tool)
        .nobody()
        .opt("--report-json")
        .opt(&report);
    let native = case.run_native();
    let ours = case.run_ours();
    assert_eq!(native.code, Some(0));
    assert_eq!(ours.code, Some(0), "{}", ours.stderr_str());
    assert!(native.stdout_str().contains("child: work=1000"));
    assert!(
        ours.stdout_str().contains("child: sigaction failed"),
        "{}",
        ours.stdout_str()
    );
    // The main process is not affected.
    let main = |o: &common::Output| {
        o.stdout_str()
            .lines()
            .filter(|l| l.starts_with("main:"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(main(&native), main(&ours));
    let r = read_report(&report);
    assert_eq!(hits(&r, "work"), 1000);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("refused 1 rt_sigaction(SIGTRAP)"),
        "{r}"
    );

    // A program that execs is no longer ours: the guard lets its calls
    // through, even once it is not dumpable and has a handler.
    // (`nodump exec ARGS` execs itself with ARGS as its argv.)
    let (native, _) = work_probed(&prog, &["exec", "1000", "fork"], &tool)
        .nobody()
        .compare();
    assert!(
        native.stdout_str().contains("child: work=1000"),
        "{}",
        native.stdout_str()
    );
}

/// Whether a run by `nobody` (see [`users`]) goes without privileges.
fn unprivileged(nobody: bool) -> bool {
    nobody || !is_root()
}

/// Who runs a case: root and uid 65534 (ourselves only, when not root).
fn users() -> Vec<bool> {
    if privileged("the same case as root and as uid 65534") {
        vec![false, true]
    } else {
        vec![false]
    }
}

/// Hex addresses replaced, for comparing runs that load at different addresses.
fn no_addresses(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i + 2]);
        rest = &rest[i + 2..];
        let n = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        out.push('…');
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

/// Never-run text read through `/proc/self/mem` is the file's, as natively:
/// the kernel does not route such reads to userfaultfd, so the text must be
/// there before anyone looks (the background prefetch puts it there).
#[test]
fn proc_self_mem_reads_never_run_text() {
    let (dir, tool) = nobody_dir("selfmem");
    for v in Variant::ALL {
        let prog = dir.copy(
            &path("selfmem", v),
            &format!("selfmem-{}", v.suffix()),
            0o755,
        );
        for nobody in users() {
            // --fault-around 0: no neighbour of a touched page gets installed by luck.
            let mut case = Case::new(&prog, ["20"])
                .tool(&tool)
                .opt("--serve-text")
                .opt("all")
                .opt("--fault-around")
                .opt("0");
            if nobody {
                case = case.nobody();
            }
            let (native, _) = case.compare();
            assert_eq!(native.stdout_str(), "cold_fn: the same as in the file\n");
        }
        if privileged("full userfaultfd, to see a page never installed") {
            // What the kernel allows: without the prefetch, the same read of
            // a page the fault server never installed fails.
            let out = Case::new(&prog, ["20"])
                .tool(&tool)
                .opt("--serve-text")
                .opt("all")
                .opt("--fault-around")
                .opt("0")
                .opt("--no-prefetch")
                .run_ours();
            assert_eq!(
                out.stdout_str(),
                "/proc/self/mem at cold_fn: Input/output error\n",
                "{v:?}"
            );
        }
    }
}

/// What `gdb -batch PROGRAM -p PID` prints for `x/3i cold_fn` of a sleeping
/// selfmem run by `argv`. (PROGRAM is named, and kept when gdb finds
/// another: unprivileged, `/proc/PID/exe` names uprobe-exec.)
fn gdb_attached(nobody: bool, prog: &Path, argv: &[&OsStr]) -> String {
    let mut cmd = command(nobody, argv);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut child = common::spawn_guarded(&mut cmd);
    let stdout = child
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("pid line");
    let pid = line
        .trim()
        .strip_prefix("pid ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let gdb = run(command(
        nobody,
        &[
            OsStr::new("gdb"),
            OsStr::new("-nx"),
            OsStr::new("-batch"),
            OsStr::new("-iex"),
            OsStr::new("set exec-file-mismatch off"),
            prog.as_os_str(),
            OsStr::new("-p"),
            OsStr::new(pid),
            OsStr::new("-ex"),
            OsStr::new("x/3i cold_fn"),
        ],
    ));
    drop(child);
    let all = gdb.stdout_str() + &gdb.stderr_str();
    all.lines()
        .filter(|l| l.contains("cold_fn") || l.contains("Cannot access"))
        .map(|l| no_addresses(l) + "\n")
        .collect()
}

/// `gdb -p` disassembles a function that has not run yet, as natively.
#[test]
fn gdb_attached_disassembles_never_run_text() {
    let (dir, tool) = nobody_dir("gdb-attach");
    for v in [Variant::Static, Variant::Pie] {
        let prog = dir.copy(
            &path("selfmem", v),
            &format!("selfmem-{}", v.suffix()),
            0o755,
        );
        for nobody in users() {
            if unprivileged(nobody) && v == Variant::Pie {
                // Unprivileged, /proc/PID/auxv is uprobe-exec's (no
                // PR_SET_MM_MAP), so gdb relocates a PIE wrongly: a known limit.
                continue;
            }
            let args = [prog.as_os_str(), OsStr::new("3000"), OsStr::new("pid")];
            let native = gdb_attached(nobody, &prog, &args);
            let mut with_tool = vec![
                tool.as_os_str(),
                OsStr::new("-q"),
                OsStr::new("--fault-around"),
                OsStr::new("0"),
            ];
            with_tool.extend_from_slice(&args);
            let ours = gdb_attached(nobody, &prog, &with_tool);
            assert!(
                native.contains("<cold_fn>:\tlea"),
                "{v:?}: native gdb printed {native:?}"
            );
            assert_eq!(native, ours, "{v:?} nobody={nobody}");
        }
    }
}

/// Runs `argv` (as 65534 when `nobody`) in `cwd` with core dumps enabled;
/// returns its output and the core it left there.
fn crash_with_core(
    nobody: bool,
    cwd: &Path,
    argv: &[&OsStr],
) -> (common::Output, std::path::PathBuf) {
    // The test runner disables cores in its children; the shell enables them again.
    let mut sh: Vec<&OsStr> = vec![
        OsStr::new("/bin/sh"),
        OsStr::new("-c"),
        OsStr::new("ulimit -c unlimited && exec \"$0\" \"$@\""),
    ];
    sh.extend_from_slice(argv);
    let mut cmd = command(nobody, &sh);
    cmd.current_dir(cwd);
    let out = run(cmd);
    let core = std::fs::read_dir(cwd)
        .expect("read_dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("core"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no core in {} (core_pattern must be a plain file name)",
                cwd.display()
            )
        });
    (out, core)
}

/// What gdb disassembles from a core, addresses left out.
fn gdb_core(prog: &Path, core: &Path, funcs: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch"]);
    for f in funcs {
        cmd.args(["-ex", &format!("x/3i {f}")]);
    }
    cmd.arg(prog).arg(core);
    let out = run(cmd);
    out.stdout_str()
        .lines()
        .filter(|l| funcs.iter().any(|f| l.contains(&format!("<{f}"))))
        .map(|l| no_addresses(l) + "\n")
        .collect()
}

/// Allocated bytes of a file (a core is sparse where memory was never touched).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).expect("core metadata").blocks() * 512
}

/// A core of a crash under uprobe-exec holds the program's text as the
/// file has it (never-run pages included), and gdb disassembles it as it
/// does a native core. Probe sites are the exception (see the README).
#[test]
fn core_dump_of_a_crash_has_the_text() {
    let core_pattern =
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core_pattern");
    let plain = !core_pattern.starts_with('|') && !core_pattern.contains('/');
    let why = format!("kernel.core_pattern {core_pattern:?} is not a file name in the cwd");
    if !common::prerequisite(plain, &why) {
        return;
    }
    let (dir, tool) = nobody_dir("core");
    let funcs = ["far_fn", "never_called", "crash_here", "main"];
    for v in [Variant::Static, Variant::Pie] {
        let prog = dir.copy(&path("crash", v), &format!("crash-{}", v.suffix()), 0o755);
        for nobody in users() {
            if unprivileged(nobody) && v == Variant::Pie {
                // Unprivileged, the core's auxv is uprobe-exec's, so gdb
                // relocates a PIE wrongly (as with gdb -p): a known limit.
                continue;
            }
            let what = format!("{v:?} nobody={nobody}");
            let run_dir = |tag: &str| {
                let d = dir.join(format!("{tag}-{}-{nobody}", v.suffix()));
                std::fs::create_dir(&d).expect("mkdir");
                std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                    .expect("chmod");
                d
            };
            let args = [prog.as_os_str(), OsStr::new("2000000")];
            let (native, native_core) = crash_with_core(nobody, &run_dir("native"), &args);
            let mut ours_argv = vec![
                tool.as_os_str(),
                OsStr::new("-q"),
                OsStr::new("-p"),
                OsStr::new("crunch"),
            ];
            ours_argv.extend_from_slice(&args);
            let (ours, ours_core) = crash_with_core(nobody, &run_dir("ours"), &ours_argv);
            assert_eq!(native.stdout, ours.stdout, "{what}");
            assert_eq!(native.status(), 128 + libc::SIGSEGV, "{what}");
            assert_eq!(
                ours.status(),
                native.status(),
                "{what}: {}",
                ours.stderr_str()
            );
            let want = gdb_core(&prog, &native_core, &funcs);
            assert_eq!(
                want.lines().count(),
                3 * funcs.len(),
                "{what}: native gdb printed {want}"
            );
            assert_eq!(gdb_core(&prog, &ours_core, &funcs), want, "{what}");
            // At most the program's text more than native: the text is
            // anonymous memory here, and the kernel dumps that.
            let text = common::elf::text_pages(&prog) * 4096;
            let (n, o) = (allocated(&native_core), allocated(&ours_core));
            assert!(
                o <= n + text + (256 << 10),
                "{what}: core {o} bytes, native {n}, text {text}"
            );
        }
    }
}

/// The symbol perf reports most samples in, for the process named `comm`.
fn perf_top_symbol(nobody: bool, dir: &Path, argv: &[&OsStr], comm: &str) -> String {
    let data = dir.join(format!("perf-{}.data", std::process::id()));
    let mut rec: Vec<&OsStr> = vec![
        OsStr::new("perf"),
        OsStr::new("record"),
        OsStr::new("-q"),
        OsStr::new("-e"),
        OsStr::new("cpu-clock"),
        OsStr::new("-o"),
        data.as_os_str(),
        OsStr::new("--"),
    ];
    rec.extend_from_slice(argv);
    let out = run(command(nobody, &rec));
    assert_eq!(out.code, Some(0), "perf record: {}", out.stderr_str());
    let rep = run(command(
        nobody,
        &[
            OsStr::new("perf"),
            OsStr::new("report"),
            OsStr::new("-i"),
            data.as_os_str(),
            OsStr::new("--stdio"),
            OsStr::new("--comm"),
            OsStr::new(comm),
            OsStr::new("--sort"),
            OsStr::new("pid,sym"),
        ],
    ));
    let _ = std::fs::remove_file(&data);
    // "  98.23%  4242:spin-static  [.] tick"
    let top = rep
        .stdout_str()
        .lines()
        .find(|l| !l.starts_with('#') && l.contains("[.]"))
        .map(String::from)
        .unwrap_or_else(|| panic!("no user-space sample in {}", rep.stdout_str()));
    let pid = top
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.split(':').next())
        .unwrap_or("");
    // The map is left for `perf report` (as JITs leave theirs): remove it here.
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    top.split("[.]")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// perf names the function a program spins in, as natively, from the map
/// `--perf-map` writes (the text has no file for perf to read symbols from).
#[test]
fn perf_names_the_functions_of_the_program() {
    let (dir, tool) = nobody_dir("perf");
    for v in [Variant::Static, Variant::Pie] {
        let prog = dir.copy(&path("spin", v), &format!("spin-{}", v.suffix()), 0o755);
        let comm = format!("spin-{}", v.suffix());
        for nobody in users() {
            let args = [prog.as_os_str(), OsStr::new("30000000")];
            let native = perf_top_symbol(nobody, &dir.join(""), &args, &comm);
            assert_eq!(native, "tick", "{v:?}");
            let mut ours_argv = vec![tool.as_os_str(), OsStr::new("-q"), OsStr::new("--perf-map")];
            ours_argv.extend_from_slice(&args);
            let ours = perf_top_symbol(nobody, &dir.join(""), &ours_argv, &comm);
            // Unprivileged, the program ran from a copy left for perf.
            for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("uprobe-exec-perf-65534-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            assert_eq!(ours, native, "{v:?} nobody={nobody}");
        }
    }
}
