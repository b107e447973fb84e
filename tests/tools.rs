//! The program under uprobe-exec as debuggers, profilers and core dumps see
//! it, and programs that hide from them (`PR_SET_DUMPABLE 0`): each compared
//! with a native run of the same program.

mod common;

use std::path::Path;

use common::{is_root, read_report, Case, TempDir, BIN};
use uprobe_exec_samples::{path, Variant};

/// Hits of the probe on `symbol` (offset 0) in a report.
fn hits_of(r: &serde_json::Value, symbol: &str) -> u64 {
    r["probes"]
        .as_array()
        .expect("probes array")
        .iter()
        .find(|p| p["symbol"] == symbol && p["offset"] == 0)
        .unwrap_or_else(|| panic!("no probe {symbol} in {r}"))["hits"]
        .as_u64()
        .expect("hits")
}

/// A temp dir that uid 65534 may use, holding a copy of uprobe-exec.
fn shared_dir(tag: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new(tag);
    let tool = dir.copy(Path::new(BIN), "uprobe-exec", 0o755);
    std::fs::set_permissions(
        dir.join(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    (dir, tool)
}

#[test]
fn guard_holds_when_the_program_makes_itself_non_dumpable() {
    let (dir, tool) = shared_dir("nodump");
    for v in [Variant::Pie, Variant::Static] {
        let prog = dir.copy(&path("nodump", v), &format!("nodump-{}", v.suffix()), 0o755);
        for nobody in [false, true] {
            let report = dir.join(format!("r-{}-{nobody}.json", v.suffix()));
            let mut case = Case::new(&prog, ["1000"])
                .tool(&tool)
                .opt("-q")
                .opt("--probe-mode")
                .opt("int3")
                .opt("--report-json")
                .opt(&report)
                .opt("-p")
                .opt("work");
            if nobody {
                case = case.nobody();
            }
            let (_, out) = case.compare();
            let what = format!("{v:?} nobody={nobody}");
            assert!(out.stdout_str().contains("installed=ours"), "{what}");
            assert!(out.stdout_str().contains("traps=2"), "{what}");
            let r = read_report(&report);
            assert_eq!(hits_of(&r, "work"), 1000, "{what}");
            assert_eq!(r["warnings"].as_array().map(Vec::len), Some(0), "{what}: {r}");
        }
    }
}

/// A process born non-dumpable (forked after the prctl) cannot be read by an
/// unprivileged guard at all: its `rt_sigaction(SIGTRAP)` is refused and
/// reported, and the probes keep counting.
#[test]
fn guard_refuses_what_it_cannot_read_and_says_so() {
    if !is_root() {
        return; // needs a privileged and an unprivileged run to tell apart
    }
    let (dir, tool) = shared_dir("nodump-fork");
    let report = dir.join("r.json");
    let prog = dir.copy(&path("nodump", Variant::Pie), "nodump", 0o755);
    let case = Case::new(&prog, ["1000", "fork"])
        .tool(&tool)
        .nobody()
        .opt("-q")
        .opt("--probe-mode")
        .opt("int3")
        .opt("--report-json")
        .opt(&report)
        .opt("-p")
        .opt("work");
    let native = case.run_native();
    let ours = case.run_ours();
    assert_eq!(native.code, Some(0));
    assert_eq!(ours.code, Some(0), "{}", ours.stderr_str());
    assert!(native.stdout_str().contains("child: work=1000"));
    assert!(ours.stdout_str().contains("child: sigaction failed"), "{}", ours.stdout_str());
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
    assert_eq!(hits_of(&r, "work"), 1000);
    assert!(r["warnings"][0].as_str().unwrap_or("").contains("refused 1 rt_sigaction(SIGTRAP)"), "{r}");
}
