//! Integration tests of the core loader ("Core loader" issue).
//!
//! Ground truth is never our own code: every program is also run natively
//! (same argv, environment, cwd, stdin and fds) and must behave byte for
//! byte the same under uprobe-exec; counts in reports are checked against
//! what the sample sources and ELF headers say.

#![allow(unsafe_code)]

#[path = "common/mod.rs"]
mod common;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use uprobe_exec_samples::{path as sample, Variant};

// ---------------------------------------------------------------------------
// helpers

fn os(s: &str) -> OsString {
    OsString::from(s)
}

/// Checks text figures that hold for every run of `prog` in full
/// (privileged) mode.
fn check_text_full(what: &str, r: &serde_json::Value, prog: &Path) {
    let (pages, served, faults, refaults, populated) = (
        text_field(r, "pages"),
        text_field(r, "served"),
        text_field(r, "faults"),
        text_field(r, "refaults"),
        text_field(r, "populated"),
    );
    assert_eq!(
        pages,
        elf::text_pages(prog),
        "{what}: text.pages vs the executable PT_LOAD pages of {}",
        prog.display()
    );
    assert!(
        served > 0 && served <= pages,
        "{what}: served {served} of {pages} pages"
    );
    // Every page we installed came with a fault or around one.
    assert!(
        faults + populated >= served + refaults,
        "{what}: faults {faults} + populated {populated} < served {served} + refaults {refaults}"
    );
}

// ---------------------------------------------------------------------------
// samples, all four variants

fn hello_case(v: Variant, args: &[&str], cwd: &TempDir) -> Case {
    Case::new(sample("hello", v), args).cwd(&cwd.path)
}

#[test]
fn hello_args_all_variants() {
    let d = TempDir::new("hello-args");
    for v in Variant::ALL {
        let (n, _) = hello_case(v, &["a", "b c", "", "--", "ünïcode", "-x"], &d).compare();
        assert!(
            n.stdout_str().contains("argc=7\n"),
            "{v:?}: {}",
            n.stdout_str()
        );
    }
}

#[test]
fn hello_env_all_variants() {
    let d = TempDir::new("hello-env");
    for v in Variant::ALL {
        let (_, o) = hello_case(v, &["e"], &d)
            .env("SAMPLE_ENV", "value with spaces=1")
            .compare();
        assert!(
            o.stdout_str().contains("SAMPLE_ENV=value with spaces=1\n"),
            "{v:?}: {}",
            o.stdout_str()
        );
    }
}

#[test]
fn hello_exit_code_all_variants() {
    let d = TempDir::new("hello-exit");
    for v in Variant::ALL {
        let (n, _) = hello_case(v, &["--exit", "3"], &d).compare();
        assert_eq!(n.code, Some(3), "{v:?}");
    }
}

#[test]
fn hello_stdin_all_variants() {
    let d = TempDir::new("hello-stdin");
    let data = pseudo_random(300_000, 7);
    for v in Variant::ALL {
        let (n, _) = hello_case(v, &["--stdin"], &d)
            .stdin(data.clone())
            .compare();
        assert!(
            n.stdout_str().contains("stdin_bytes=300000 "),
            "{v:?}: {}",
            n.stdout_str()
        );
    }
}

#[test]
fn hello_inherited_fd_all_variants() {
    let d = TempDir::new("hello-fd");
    for v in Variant::ALL {
        let (n, o) = hello_case(v, &["--write-fd", "5"], &d).fd5().compare();
        assert_eq!(n.fd5.as_deref(), Some(&b"fd 5 ok\n"[..]), "{v:?}: native");
        assert!(
            o.stdout_str().contains("wrote fd 5\n"),
            "{v:?}: {}",
            o.stdout_str()
        );
    }
}

#[test]
fn hello_raise_sigsegv_all_variants() {
    let d = TempDir::new("hello-raise");
    for v in Variant::ALL {
        let (n, o) = hello_case(v, &["--raise", "11"], &d).compare();
        assert_eq!(n.signal, Some(11), "{v:?}: native must die of SIGSEGV");
        assert_eq!(
            o.signal,
            Some(11),
            "{v:?}: uprobe-exec must die of SIGSEGV too"
        );
    }
}

#[test]
fn hello_stderr_all_variants() {
    let d = TempDir::new("hello-stderr");
    for v in Variant::ALL {
        let (n, _) = hello_case(v, &["--stderr"], &d).compare();
        assert_eq!(n.stderr, b"to stderr\n", "{v:?}");
    }
}

#[test]
fn hello_cwd_from_temp_dir_all_variants() {
    let d = TempDir::new("hello-cwd");
    let real = std::fs::canonicalize(&d.path).unwrap();
    for v in Variant::ALL {
        let (_, o) = hello_case(v, &["cwd"], &d).compare();
        assert!(
            o.stdout_str()
                .contains(&format!("cwd={}\n", real.display())),
            "{v:?}: {}",
            o.stdout_str()
        );
    }
}

/// `case` with the whole text served (`--serve-text all`): what the text
/// figures of these tests count.
fn whole_text(case: Case) -> Case {
    case.opt("--serve-text").opt("all")
}

#[test]
fn pages_default_all_variants() {
    for v in Variant::ALL {
        let p = sample("pages", v);
        let (n, _, r) = compare_with_report("pages", whole_text(Case::new(&p, [""; 0])));
        assert!(
            n.stdout_str().starts_with("pages: calls=64 sum="),
            "{v:?}: {}",
            n.stdout_str()
        );
        if privileged("text figures of full mode") {
            check_text_full(&format!("pages {v:?}"), &r, &p);
            // 64 functions, each on its own page of the program's text.
            assert!(text_field(&r, "served") >= 64, "{v:?}: {r}");
            assert_eq!(r["processes"], 1, "{v:?}");
        }
    }
}

/// `pages --threads N` in every variant: N threads call the 64 functions,
/// each on its own page, at once.
fn pages_threads_all_variants(threads: u32) {
    for v in Variant::ALL {
        let p = sample("pages", v);
        let n_arg = threads.to_string();
        let (n, _, r) =
            compare_with_report("pages", whole_text(Case::new(&p, ["--threads", &n_arg])));
        assert!(
            n.stdout_str()
                .starts_with(&format!("threads={threads} sum=")),
            "{v:?}: {}",
            n.stdout_str()
        );
        if privileged("text figures of full mode") {
            check_text_full(&format!("pages --threads {threads} {v:?}"), &r, &p);
            assert!(text_field(&r, "served") >= 64, "{v:?}: {r}");
        }
    }
}

#[test]
fn pages_threads_8_all_variants() {
    pages_threads_all_variants(8);
}

#[test]
fn pages_threads_64_all_variants() {
    pages_threads_all_variants(64);
}

/// Many runs of `pages --threads 64`, four at a time: every one must exit 0
/// with the native output (the race of the bug above shows in a few %).
#[test]
fn pages_threads_64_exit_race_stress() {
    let p = sample("pages", Variant::Pie);
    let native = Case::new(&p, ["--threads", "64"]).run_native();
    assert_eq!(native.code, Some(0));
    let mut failures = Vec::new();
    for round in 0..40 {
        let runs: Vec<Output> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Case::new(&p, ["--threads", "64"]).run_ours()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in runs {
            if o.code != Some(0) || o.stdout != native.stdout || !o.stderr.is_empty() {
                let last = o.stderr_str().lines().last().unwrap_or("").to_string();
                failures.push(format!(
                    "round {round}: code {:?}, last stderr line {last:?}",
                    o.code
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 160 runs failed, first: {}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn pages_fork_all_variants() {
    for v in Variant::ALL {
        let p = sample("pages", v);
        let (n, _, r) = compare_with_report("pages", whole_text(Case::new(&p, ["--fork"])));
        assert!(
            n.stdout_str().contains("child_status=0\n"),
            "{v:?}: {}",
            n.stdout_str()
        );
        if privileged("text figures of full mode") {
            check_text_full(&format!("pages --fork {v:?}"), &r, &p);
            assert_eq!(
                r["processes"], 2,
                "{v:?}: the parent and its fork were served: {r}"
            );
        }
    }
}

/// pages.c: after one warm-up call of all 64 functions, every cycle drops
/// the page of each of the 64 page-aligned functions (64 distinct pages) and
/// calls all 64 again, so each cycle refaults each of the 64 pages exactly
/// once: 200 cycles give 200 * 64 refaults.
#[test]
fn pages_dontneed_200_all_variants() {
    for v in Variant::ALL {
        let p = sample("pages", v);
        // Strictly lazy, so that each dropped page refaults on its own.
        let (n, _, r) = compare_with_report(
            "pages",
            whole_text(Case::new(&p, ["--dontneed", "200"]))
                .opt("--fault-around")
                .opt("0"),
        );
        assert!(
            n.stdout_str().starts_with("dontneed cycles=200 sum="),
            "{v:?}: {}",
            n.stdout_str()
        );
        if privileged("text figures of full mode") {
            check_text_full(&format!("pages --dontneed 200 {v:?}"), &r, &p);
            assert_eq!(text_field(&r, "refaults"), 200 * 64, "{v:?}: {r}");
            assert!(
                text_field(&r, "faults") >= text_field(&r, "refaults"),
                "{v:?}: {r}"
            );
        }
    }
}

#[test]
fn pages_exec_true_all_variants() {
    for v in Variant::ALL {
        let (n, _) = Case::new(sample("pages", v), ["--exec", "/bin/true"]).compare();
        assert_eq!(n.code, Some(0), "{v:?}");
        // A failed execv would print an error and exit 4.
        let (n, _) = Case::new(sample("pages", v), ["--exec", "/nonexistent/x"]).compare();
        assert_eq!(n.code, Some(4), "{v:?}");
    }
}

#[test]
fn spin_1000_all_variants() {
    for v in Variant::ALL {
        let (n, _) = Case::new(sample("spin", v), ["1000"]).compare();
        assert!(
            n.stdout_str().starts_with("ticks=1000 acc="),
            "{v:?}: {}",
            n.stdout_str()
        );
    }
}

// ---------------------------------------------------------------------------
// system programs

#[test]
fn usr_bin_true() {
    let (n, _) = Case::new("/usr/bin/true", [""; 0]).compare();
    assert_eq!(n.code, Some(0));
    let (n, _) = Case::new("/usr/bin/false", [""; 0]).compare();
    assert_eq!(n.code, Some(1));
}

#[test]
fn ls_la_usr_share_doc() {
    let (n, _) = Case::new("/usr/bin/ls", ["-la", "/usr/share/doc"])
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .compare();
    assert!(n.stdout.len() > 100, "{}", n.stdout_str());
}

#[test]
fn env_is_passed_unchanged() {
    let d = TempDir::new("env");
    let (n, _) = Case::new("/usr/bin/env", [""; 0])
        .env("UPROBE_TEST_VAR", "a=b c")
        .cwd(&d.path)
        .compare();
    assert!(n.stdout_str().contains("UPROBE_TEST_VAR=a=b c\n"));
}

#[test]
fn gzip_4mib_file_and_stdin() {
    let d = TempDir::new("gzip");
    let data = pseudo_random(4 << 20, 0x5eed);
    let f = d.write("data.bin", &data, 0o644);
    let (n, _) = Case::new("/usr/bin/gzip", [OsString::from("-c"), f.into_os_string()]).compare();
    assert!(
        n.stdout.len() > 4 << 20,
        "random data does not compress: {} bytes",
        n.stdout.len()
    );
    let (n, _) = Case::new("/usr/bin/gzip", ["-c"]).stdin(data).compare();
    assert!(n.stdout.len() > 4 << 20);
}

const PY_THREADS: &str = r#"
import threading
res = [0] * 8
def work(i):
    s = 0
    for k in range(i * 20000, (i + 1) * 20000):
        s += k * k % 7
    res[i] = s
ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in ts: t.start()
for t in ts: t.join()
print(res, sum(res))
"#;

const PY_SUBPROCESS: &str = r#"
import subprocess, sys
r = subprocess.run(["/bin/echo", "x"])
print("rc", r.returncode, flush=True)
r = subprocess.run(["/bin/sh", "-c", "echo y; echo z >&2; exit 3"], capture_output=True)
print(r.stdout, r.stderr, r.returncode)
"#;

const PY_FORK: &str = r#"
import os, sys
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    print("child", os.getppid() != 0)
    sys.stdout.flush()
    os._exit(5)
_, st = os.waitpid(pid, 0)
print("parent: child exit", os.waitstatus_to_exitcode(st))
"#;

#[test]
fn python_threads() {
    let (n, _) = Case::new("/usr/bin/python3.11", ["-c", PY_THREADS]).compare();
    assert!(n.stdout_str().starts_with('['), "{}", n.stdout_str());
}

#[test]
fn python_subprocess() {
    let (n, _) = Case::new("/usr/bin/python3.11", ["-c", PY_SUBPROCESS]).compare();
    assert_eq!(n.stdout_str(), "x\nrc 0\nb'y\\n' b'z\\n' 3\n");
}

#[test]
fn python_fork_waitpid() {
    let (n, _) = Case::new("/usr/bin/python3.11", ["-c", PY_FORK]).compare();
    assert_eq!(n.stdout_str(), "child True\nparent: child exit 5\n");
}

#[test]
fn perl_computation_and_exit_code() {
    let script = r#"my $s = 0; for my $i (1..200000) { $s = ($s * 31 + $i) % 1000003 } print "s=$s\n"; printf STDERR "err %d\n", 42; exit 9"#;
    let (n, _) = Case::new("/usr/bin/perl", ["-e", script]).compare();
    assert_eq!(n.code, Some(9));
    assert!(n.stdout_str().starts_with("s="));
}

#[test]
fn bash_external_commands_exit_7() {
    let d = TempDir::new("bash");
    d.write("f1", b"1", 0o644);
    d.write("f2", b"2", 0o644);
    let script = r#"ls; ls /usr/share/doc | head -n 3; /bin/echo external; printf 'b\na\nc\n' | sort | tr a-z A-Z; echo $(( 6 * 7 )) >&2; exit 7"#;
    let (n, _) = Case::new("/usr/bin/bash", ["-c", script])
        .env("LC_ALL", "C")
        .cwd(&d.path)
        .compare();
    assert_eq!(n.code, Some(7));
    assert!(n.stdout_str().starts_with("f1\nf2\n"), "{}", n.stdout_str());
    assert!(
        n.stdout_str().ends_with("external\nA\nB\nC\n"),
        "{}",
        n.stdout_str()
    );
    assert_eq!(n.stderr, b"42\n");
}

#[test]
fn sqlite3_memory() {
    let (n, _) = Case::new(
        "/usr/bin/sqlite3",
        [
            ":memory:",
            "create table t(x); insert into t values(1),(2); select sum(x) from t;",
        ],
    )
    .compare();
    assert_eq!(n.stdout, b"3\n");
}

#[test]
fn path_lookup() {
    // `true` through PATH, as execvp would find it.
    let (n, _) = Case::new("true", [""; 0]).compare();
    assert_eq!(n.code, Some(0));
    // argv[0] stays the name as given; PATH is searched in order.
    let d = TempDir::new("path");
    let path = format!(
        "{}:{}",
        d.path.display(),
        uprobe_exec_samples::dir().display()
    );
    let (n, _) = Case::new("hello-pie", ["p"])
        .env("PATH", &path)
        .cwd(&d.path)
        .compare();
    assert!(
        n.stdout_str().contains("argv[0]=hello-pie\n"),
        "{}",
        n.stdout_str()
    );
    // A name that is in no PATH directory.
    let o = tool(&["no-such-program-uprobe-xyz"]);
    assert_our_error("name not in PATH", &o, 127);
}

#[test]
fn double_dash_and_program_options_go_to_the_program() {
    let d = TempDir::new("dashdash");
    let p = sample("hello", Variant::Pie);
    let (n, o) = Case::new(&p, ["--stats", "--report-json", "x"])
        .opt("--")
        .cwd(&d.path)
        .compare();
    assert!(n.stdout_str().contains("argv[1]=--stats\n"));
    assert!(!o.stderr_str().contains("uprobe-exec"));
    assert!(
        !d.join("x").exists(),
        "the program's --report-json was taken as ours"
    );
    // Without `--` too: everything after PROGRAM belongs to it.
    Case::new(&p, ["--stats", "--report-json", "x"])
        .cwd(&d.path)
        .compare();
    assert!(!d.join("x").exists());
}

// ---------------------------------------------------------------------------
// #! scripts

#[test]
fn shebang_sh_script() {
    let d = TempDir::new("shebang-sh");
    let s = d.write(
        "script.sh",
        b"#!/bin/sh\necho \"$0 $@\"\necho err >&2\nexit 4\n",
        0o755,
    );
    let (n, _) = Case::new(&s, ["a b", "c"]).cwd(&d.path).compare();
    assert_eq!(n.stdout_str(), format!("{} a b c\n", s.display()));
    assert_eq!(n.code, Some(4));
}

#[test]
fn shebang_with_interpreter_argument() {
    let d = TempDir::new("shebang-perl");
    let s = d.write(
        "script.pl",
        b"#!/usr/bin/perl -w\nprint \"$0 @ARGV\\n\";\nmy $x; my $y = \"v\" . $x;\nprint \"done\\n\";\n",
        0o755,
    );
    let rep = d.join("r.json");
    let (n, _) = Case::new(&s, ["x"])
        .cwd(&d.path)
        .opt("--report-json")
        .opt(&rep)
        .compare();
    assert_eq!(n.stdout_str(), format!("{} x\ndone\n", s.display()));
    assert!(
        n.stderr_str().contains("uninitialized"),
        "-w was not in effect natively?! {}",
        n.stderr_str()
    );
    let r = read_report(&rep);
    let args: Vec<String> =
        serde_json::from_value(r["args"].clone()).expect("args is a list of strings");
    assert_eq!(
        args,
        ["/usr/bin/perl", "-w", &s.display().to_string(), "x"],
        "argv as execve builds it: {r}"
    );
}

// ---------------------------------------------------------------------------
// errors of ours

/// A copy of hello-pie with `patch` applied at `offset`.
fn patched_elf(d: &TempDir, name: &str, offset: usize, patch: &[u8]) -> PathBuf {
    let mut b = std::fs::read(sample("hello", Variant::Pie)).unwrap();
    b[offset..offset + patch.len()].copy_from_slice(patch);
    d.write(name, &b, 0o755)
}

#[test]
fn error_nonexistent_path_127() {
    let o = tool(&["/nonexistent/dir/prog", "a"]);
    assert_our_error("nonexistent path", &o, 127);
}

#[test]
fn script_without_shebang_runs_with_sh() {
    // execve says ENOEXEC; execvp (here: std's spawn), env and nohup then
    // run `/bin/sh FILE ARGS...`.
    let d = TempDir::new("noshebang");
    let f = d.write(
        "text",
        b"echo \"0=$0 args=$*\"\necho err >&2\nexit 3\n",
        0o755,
    );
    let (n, _) = Case::new(&f, ["a b", "c"]).cwd(&d.path).compare();
    assert_eq!(n.stdout_str(), format!("0={} args=a b c\n", f.display()));
    assert_eq!(n.code, Some(3));
    Case::new(&f, ["x"]).cwd(&d.path).nobody().compare();
    // Found through PATH: $0 is the path found.
    let path = format!("{}:/usr/bin:/bin", d.path.display());
    let (n, _) = Case::new("text", ["p"]).env("PATH", &path).compare();
    assert!(n
        .stdout_str()
        .starts_with(&format!("0={}", d.join("text").display())));
    // An empty file runs as an empty shell script.
    let e = d.write("empty", b"", 0o755);
    let (n, _) = Case::new(&e, ["x"]).compare();
    assert_eq!(n.code, Some(0));
    // A #! interpreter that is neither: ENOEXEC too, for the whole chain.
    let s = d.write("via-text", format!("#!{}\n", f.display()).as_bytes(), 0o755);
    Case::new(&s, ["y"]).compare();
}

#[test]
fn missing_interpreter_127() {
    // execve says ENOENT: env(1) and a shell exit 127.
    let d = TempDir::new("nointerp");
    let script = d.write("script", b"#!/nonexistent/interp -x\necho hi\n", 0o755);
    let mut bytes = std::fs::read(sample("hello", Variant::Pie)).unwrap();
    let interp = elf::interp_header(&bytes).expect("hello-pie has PT_INTERP");
    let at = interp.offset as usize;
    let name = b"/nonexistent/ld.so\0";
    bytes[at..at + name.len()].copy_from_slice(name);
    let prog = d.write("prog", &bytes, 0o755);
    for (f, missing) in [
        (&script, "/nonexistent/interp"),
        (&prog, "/nonexistent/ld.so"),
    ] {
        let native = run({
            let mut c = Command::new("/usr/bin/env");
            c.arg(f);
            c
        });
        assert_eq!(
            native.code,
            Some(127),
            "env {}: {}",
            f.display(),
            native.stderr_str()
        );
        let ours = tool(&[&f]);
        assert_our_error(missing, &ours, 127);
        assert!(ours.stderr_str().contains(missing), "{}", ours.stderr_str());
    }
}

#[test]
fn unusual_load_layouts_run_as_natively() {
    // What fs/binfmt_elf.c accepts: any p_align (its maximum_alignment skips
    // values that are not a power of two; 0 means none), and PT_LOAD headers
    // in any order.
    let d = TempDir::new("layouts");
    for v in Variant::ALL {
        let good = std::fs::read(sample("hello", v)).unwrap();
        let loads: Vec<usize> = elf::load_headers(&good).iter().map(|p| p.at).collect();
        let mut files = Vec::new();
        for align in [0u64, 3, 0x1234, 1 << 21, 1 << 40] {
            let mut b = good.clone();
            for &ph in &loads {
                elf::set_u64(&mut b, ph + elf::P_ALIGN, align);
            }
            files.push((format!("align {align:#x}"), b));
        }
        let mut b = good.clone();
        let entries: Vec<&[u8]> = loads
            .iter()
            .map(|&ph| &good[ph..ph + elf::PHDR_SIZE])
            .collect();
        for (&ph, e) in loads.iter().zip(entries.iter().rev()) {
            b[ph..ph + elf::PHDR_SIZE].copy_from_slice(e);
        }
        files.push(("PT_LOADs in reverse order".into(), b));
        for (i, (what, bytes)) in files.iter().enumerate() {
            let f = d.write(&format!("{}-{i}", v.suffix()), bytes, 0o755);
            let (n, _) = Case::new(&f, ["x"]).compare();
            assert_eq!(n.code, Some(0), "{v:?} {what}: {}", n.stderr_str());
        }
    }
    // A PIE is loaded at an address aligned to its largest p_align, as natively.
    let mut b = std::fs::read(sample("hello", Variant::Pie)).unwrap();
    for ph in elf::load_headers(&b) {
        elf::set_u64(&mut b, ph.at + elf::P_ALIGN, 1 << 21);
    }
    let f = d.write("aligned", &b, 0o755);
    let case = Case::new(&f, Vec::<&str>::new()).env("LD_SHOW_AUXV", "1");
    for out in [case.run_native(), case.run_ours()] {
        let phdr = out
            .stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix("AT_PHDR:"))
            .and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
            .expect("AT_PHDR");
        assert_eq!(
            phdr % (1 << 21),
            elf::u64_at(&b, elf::E_PHOFF),
            "AT_PHDR {phdr:#x}"
        );
    }
}

#[test]
fn error_foreign_elfs_126() {
    let d = TempDir::new("badelf");
    let cases = [
        ("elf32", elf::EI_CLASS, vec![1u8]),
        ("bigendian", elf::EI_DATA, vec![2u8]),
        ("aarch64", elf::E_MACHINE, 0xB7u16.to_le_bytes().to_vec()),
        ("noentry", elf::E_ENTRY, 0u64.to_le_bytes().to_vec()),
    ];
    for (name, off, patch) in cases {
        let f = patched_elf(&d, name, off, &patch);
        assert_our_error(name, &tool(&[&f]), 126);
    }
}

#[test]
fn error_directory_126() {
    let d = TempDir::new("dir");
    assert_our_error("directory", &tool(&[&d.path]), 126);
}

#[test]
fn error_no_execute_permission_126() {
    let d = TempDir::new("noexec");
    let f = d.copy(&sample("hello", Variant::Pie), "hello", 0o644);
    assert_our_error("mode 0644", &tool(&[&f]), 126);
}

#[test]
fn error_setuid_setgid_126() {
    let d = TempDir::new("setid");
    let u = d.copy(&sample("hello", Variant::Pie), "suid", 0o4755);
    assert_eq!(
        std::fs::metadata(&u).unwrap().permissions().mode() & 0o7777,
        0o4755
    );
    assert_our_error("set-user-ID", &tool(&[&u]), 126);
    let g = d.copy(&sample("hello", Variant::Pie), "sgid", 0o2755);
    assert_our_error("set-group-ID", &tool(&[&g]), 126);
    // Set-group-ID without group execute is not set-group-ID for execve: it runs.
    let l = d.copy(&sample("hello", Variant::Pie), "sgid-nox", 0o2745);
    Case::new(&l, ["ok"]).cwd(&d.path).compare();
}

#[test]
fn error_file_capabilities_126() {
    let d = TempDir::new("fcaps");
    let f = d.copy(&sample("hello", Variant::Pie), "capped", 0o755);
    // struct vfs_cap_data, revision 2, effective; permitted[0] = CAP_NET_BIND_SERVICE.
    let mut blob = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        blob.extend_from_slice(&w.to_le_bytes());
    }
    let cpath = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a live buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            cpath.as_ptr(),
            c"security.capability".as_ptr(),
            blob.as_ptr().cast(),
            blob.len(),
            0,
        )
    };
    // Setting file capabilities takes CAP_SETFCAP (root).
    let why = format!(
        "setxattr security.capability: {}",
        std::io::Error::last_os_error()
    );
    if !prerequisite(r == 0, &why) {
        return;
    }
    assert_our_error("file capabilities", &tool(&[&f]), 126);
}

#[test]
fn error_bad_option_125() {
    let o = tool(&["--no-such-flag", "/usr/bin/true"]);
    assert_our_error("--no-such-flag", &o, 125);
}

#[test]
fn error_usage_messages_have_our_prefix() {
    assert_our_error("no PROGRAM", &tool::<&str>(&[]), 125);
    assert_our_error("--report-json without FILE", &tool(&["--report-json"]), 125);
}

// ---------------------------------------------------------------------------
// report and stats

#[test]
fn report_json_schema_and_values() {
    let d = TempDir::new("report-schema");
    let p = sample("hello", Variant::Pie);
    let rep = d.join("r.json");
    let (_, o) = whole_text(Case::new(&p, ["a", "--exit", "3"]))
        .cwd(&d.path)
        .opt("--report-json")
        .opt(&rep)
        .compare();
    assert_eq!(o.code, Some(3));
    let r = read_report(&rep);
    assert_eq!(r["program"], p.display().to_string(), "{r}");
    assert_eq!(
        r["args"],
        serde_json::json!([p.display().to_string(), "a", "--exit", "3"]),
        "{r}"
    );
    assert_eq!(r["exit"], serde_json::json!({"code": 3}), "{r}");
    assert_eq!(r["probes"], serde_json::json!([]), "{r}");
    for f in ["pages", "served", "faults", "refaults"] {
        text_field(&r, f);
    }
    assert_eq!(r["processes"], 1, "{r}");
    let h = &r["handoff"];
    assert!(
        h["uffd_mode"] == "full" || h["uffd_mode"] == "user-mode-only",
        "{r}"
    );
    assert!(
        h["mm_map"].is_boolean() && h["clean_exit"].is_boolean(),
        "{r}"
    );
    assert!(
        h["limits"]
            .as_array()
            .is_some_and(|l| l.iter().all(serde_json::Value::is_string)),
        "{r}"
    );
    if privileged("text figures and hand-off of full mode") {
        check_text_full("hello-pie", &r, &p);
        assert_eq!(text_field(&r, "refaults"), 0, "{r}");
        assert_eq!(h["uffd_mode"], "full", "{r}");
        assert_eq!(h["mm_map"], true, "{r}");
    }

    // Killed by a signal.
    let (_, o) = Case::new(&p, ["--raise", "11"])
        .cwd(&d.path)
        .opt("--report-json")
        .opt(&rep)
        .compare();
    assert_eq!(o.signal, Some(11));
    let r = read_report(&rep);
    assert_eq!(r["exit"], serde_json::json!({"signal": 11}), "{r}");
}

#[test]
fn stats_line_on_stderr() {
    let d = TempDir::new("stats");
    let p = sample("hello", Variant::Static);
    let rep = d.join("r.json");
    let case = Case::new(&p, ["--stderr", "--exit", "2"]).cwd(&d.path);
    let n = case.run_native();
    let case = whole_text(case);
    let o = case
        .clone()
        .opt("--stats")
        .opt("--report-json")
        .opt(&rep)
        .run_ours();
    assert_eq!(n.stdout, o.stdout, "stdout must not change with --stats");
    assert_eq!(n.status(), o.status());
    let err = o.stderr_str();
    let extra = err
        .strip_prefix(&n.stderr_str())
        .unwrap_or_else(|| panic!("program's stderr first: {err:?}"));
    assert!(extra.starts_with("uprobe-exec: text pages "), "{extra:?}");
    assert!(
        extra.lines().all(|l| l.starts_with("uprobe-exec: ")),
        "{extra:?}"
    );
    let r = read_report(&rep);
    let pages: u64 = extra["uprobe-exec: text pages ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no page count in {extra:?}"));
    assert_eq!(pages, text_field(&r, "pages"));
    assert_eq!(pages, elf::text_pages(&p));
}

// ---------------------------------------------------------------------------
// privileged hand-off

#[test]
fn handoff_proc_self_exe_and_cmdline() {
    if !privileged("PR_SET_MM_MAP and full userfaultfd") {
        return;
    }
    let script = "import os, sys\nsys.stdout.write(os.readlink('/proc/self/exe') + '\\n')\nsys.stdout.buffer.write(open('/proc/self/cmdline', 'rb').read())\n";
    let (n, o) = Case::new("/usr/bin/python3.11", ["-c", script, "arg 1", "", "x"]).compare();
    let mut expect = b"/usr/bin/python3.11\n/usr/bin/python3.11\0-c\0".to_vec();
    expect.extend_from_slice(script.as_bytes());
    expect.extend_from_slice(b"\0arg 1\0\0x\0");
    assert_eq!(
        String::from_utf8_lossy(&n.stdout),
        String::from_utf8_lossy(&expect),
        "native"
    );
    assert_eq!(o.stdout, expect);
}

fn maps_names(maps: &str) -> std::collections::BTreeSet<String> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(String::from)
        .collect()
}

#[test]
fn handoff_proc_self_maps() {
    if !privileged("PR_SET_MM_MAP and full userfaultfd") {
        return;
    }
    let case = Case::new("/bin/cat", ["/proc/self/maps"]);
    let n = case.run_native();
    // Served nothing (no probe): the same files and special mappings as
    // natively, the text mapped from the program's file.
    let o = case.run_ours();
    assert_eq!(o.code, Some(0), "{}", o.stderr_str());
    assert_eq!(
        maps_names(&o.stdout_str()),
        maps_names(&n.stdout_str()),
        "native:\n{}\nours:\n{}",
        n.stdout_str(),
        o.stdout_str()
    );
    assert!(
        !o.stdout_str().contains("uprobe-exec"),
        "{}",
        o.stdout_str()
    );
    // Served whole.
    let o = whole_text(case).run_ours();
    assert_eq!(o.code, Some(0), "{}", o.stderr_str());
    let maps = o.stdout_str();
    let bin = std::fs::canonicalize(BIN).unwrap();
    assert!(
        !maps.contains(BIN) && !maps.contains(&*bin.to_string_lossy()),
        "our binary is mapped:\n{maps}"
    );
    // Only the program's text names us: it is mapped from our memfd.
    assert!(
        maps.lines()
            .filter(|l| l.contains("uprobe-exec"))
            .all(|l| l.ends_with("/memfd:uprobe-exec text of /bin/cat (deleted)")),
        "{maps}"
    );
    assert!(
        maps.lines().any(|l| l.ends_with("[heap]")),
        "no [heap]:\n{maps}"
    );
    assert!(
        maps.lines().any(|l| l.ends_with("[stack]")),
        "no [stack]:\n{maps}"
    );
    // Same files and special mappings as natively (but the text's own
    // file): nothing of ours left.
    let mut names = maps_names(&maps);
    names.remove("/memfd:uprobe-exec");
    assert_eq!(
        maps_names(&n.stdout_str()),
        names,
        "native:\n{}\nours:\n{maps}",
        n.stdout_str()
    );
    // The program's text is an r-xp mapping of our memfd right after its
    // first file mapping, where natively /usr/bin/cat is mapped r-xp.
    let lines: Vec<Vec<&str>> = maps
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        !lines
            .iter()
            .any(|f| f.get(5) == Some(&"/usr/bin/cat") && f[1] == "r-xp"),
        "text is file-backed:\n{maps}"
    );
    let range = |f: &Vec<&str>| {
        let (a, b) = f[0].split_once('-').unwrap();
        (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        )
    };
    let first_cat = lines
        .iter()
        .find(|f| f.get(5) == Some(&"/usr/bin/cat"))
        .expect("cat mapped");
    let text = lines.iter().find(|f| {
        f[1] == "r-xp"
            && f.get(5) == Some(&"/memfd:uprobe-exec")
            && range(f).0 == range(first_cat).1
    });
    assert!(
        text.is_some(),
        "no r-xp memfd text after the first cat mapping:\n{maps}"
    );
}

#[test]
fn lazy_python_serves_part_of_its_text() {
    if !privileged("PR_SET_MM_MAP and full userfaultfd") {
        return;
    }
    // Lazy: without the background prefetch (on by default).
    let (_, _, r) = compare_with_report(
        "lazy-python",
        whole_text(Case::new("/usr/bin/python3.11", ["-c", "pass"])).opt("--no-prefetch"),
    );
    let (pages, served, faults) = (
        text_field(&r, "pages"),
        text_field(&r, "served"),
        text_field(&r, "faults"),
    );
    assert_eq!(pages, elf::text_pages(Path::new("/usr/bin/python3.11")));
    assert!(0 < served && served < pages, "served {served} of {pages}");
    let populated = text_field(&r, "populated");
    assert!(
        faults > 0 && faults + populated >= served,
        "faults {faults} + around {populated} < served {served}"
    );
    assert_eq!(r["handoff"]["uffd_mode"], "full");
}

// ---------------------------------------------------------------------------
// unprivileged (uid 65534)

/// [`nobody_dir`] with copies of `samples` that uid 65534 may run.
fn nobody_samples(tag: &str, samples: &[(&str, Variant)]) -> (TempDir, PathBuf) {
    let (d, bin) = nobody_dir(tag);
    for (name, v) in samples {
        d.copy(&sample(name, *v), &format!("{name}-{}", v.suffix()), 0o755);
    }
    (d, bin)
}

/// Compares `case` run unprivileged (as uid 65534 when we are root) with
/// a native run, checking the report it writes into `dir`.
fn check_unprivileged(case: Case, dir: &TempDir) -> (Output, Output) {
    let rep = dir.join("r.json");
    let (n, o) = whole_text(case.nobody())
        .opt("--report-json")
        .opt(&rep)
        .compare();
    let r = read_report(&rep);
    assert_unprivileged_handoff("", &r);
    assert!(text_field(&r, "served") > 0, "{r}");
    (n, o)
}

#[test]
fn unprivileged_hello_pie() {
    let (d, bin) = nobody_samples("nobody-hello", &[("hello", Variant::Pie)]);
    let case = Case::new(d.join("hello-pie"), ["a", "--stderr", "--exit", "3"])
        .tool(&bin)
        .cwd(&d.path);
    let (n, _) = check_unprivileged(case, &d);
    assert_eq!(n.code, Some(3));
}

#[test]
fn unprivileged_probes_say_what_they_cannot_do() {
    // Unprivileged with probes, one line under the count table says so and
    // that limits apply (the details are --stats'); -q, or no probes, keeps
    // stderr the program's own.
    let (d, bin) = nobody_samples("nobody-note", &[("probed", Variant::Pie)]);
    let prog = d.join("probed-pie");
    let run_as_nobody = |opts: &[&str]| {
        let mut argv: Vec<OsString> = vec![bin.clone().into()];
        argv.extend(opts.iter().map(OsString::from));
        argv.extend([prog.clone().into(), "basic".into(), "10".into()]);
        let mut cmd = command(true, &argv);
        cmd.current_dir(&d.path);
        run(cmd)
    };
    let o = run_as_nobody(&["-p", "counted"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr_str());
    let err = o.stderr_str();
    let notes = err
        .lines()
        .filter(|l| l.starts_with("uprobe-exec: note:"))
        .count();
    assert_eq!(notes, 1, "{err}");
    assert!(
        err.contains("uprobe-exec: note: unprivileged (uffd user-mode-only): ")
            && err.contains(" limits of this run, --stats lists them"),
        "{err}"
    );
    let q = run_as_nobody(&["-q", "-p", "counted"]);
    assert_eq!(q.code, Some(0), "{}", q.stderr_str());
    assert!(q.stderr.is_empty(), "{}", q.stderr_str());
    let plain = run_as_nobody(&[]);
    assert!(plain.stderr.is_empty(), "{}", plain.stderr_str());
}

#[test]
fn unprivileged_pages_static_fork() {
    let (d, bin) = nobody_samples("nobody-pages", &[("pages", Variant::Static)]);
    let case = Case::new(d.join("pages-static"), ["--fork"])
        .tool(&bin)
        .cwd(&d.path);
    let (n, _) = check_unprivileged(case, &d);
    assert!(
        n.stdout_str().contains("child_status=0\n"),
        "{}",
        n.stdout_str()
    );
}

#[test]
fn unprivileged_python_threads_fork_subprocess() {
    let (d, bin) = nobody_samples("nobody-python", &[]);
    let script =
        format!("{PY_THREADS}\n{PY_FORK}\n{PY_SUBPROCESS}\nimport os\nprint(os.getuid())\n");
    let case = Case::new("/usr/bin/python3.11", ["-c", &script])
        .tool(&bin)
        .cwd(&d.path);
    let (n, _) = check_unprivileged(case, &d);
    assert!(
        n.stdout_str().contains("parent: child exit 5\n"),
        "{}",
        n.stdout_str()
    );
    if is_root() {
        assert!(n.stdout_str().ends_with("65534\n"), "{}", n.stdout_str());
    }
}

#[test]
fn unprivileged_bash_external_commands() {
    let (d, bin) = nobody_samples("nobody-bash", &[]);
    let script = r#"ls; /bin/echo hi | tr a-z A-Z; id -u; exit 7"#;
    let case = Case::new("/usr/bin/bash", ["-c", script])
        .tool(&bin)
        .cwd(&d.path)
        .env("LC_ALL", "C");
    let (n, _) = check_unprivileged(case, &d);
    assert_eq!(n.code, Some(7));
    assert!(
        n.stdout_str().starts_with("uprobe-exec\nHI\n"),
        "{}",
        n.stdout_str()
    );
}

// ---------------------------------------------------------------------------
// the monitor dies: the program dies too

/// Dead: gone from /proc, or a zombie.
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                == Some('Z')
        }
    }
}

#[test]
fn monitor_sigkill_kills_program() {
    let spin = sample("spin", Variant::Pie);
    let cases: [Vec<OsString>; 3] = [
        vec![os("/usr/bin/sleep"), os("30")],
        vec![spin.into_os_string(), os("1"), os("--sigint-exit")],
        // A tree: the shell, a background sleep, and python with three forks.
        vec![
            os("/bin/bash"),
            os("-c"),
            os("/usr/bin/python3.11 -c 'import os,time; os.fork(); os.fork(); time.sleep(30)' & sleep 30 & wait"),
        ],
    ];
    for argv in cases {
        let mut cmd = Command::new(BIN);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut g = spawn_guarded(&mut cmd);
        let monitor = g.pid();
        // The program, once handed off (its cmdline is then its own argv).
        let mut want = Vec::new();
        for a in &argv {
            want.extend_from_slice(a.as_encoded_bytes());
            want.push(0);
        }
        let forks = if argv[0] == os("/bin/bash") { 6 } else { 1 };
        let deadline = Instant::now() + Duration::from_secs(10);
        let tree = loop {
            let tree = descendants(monitor);
            let started = tree.iter().any(|&c| {
                std::fs::read(format!("/proc/{c}/cmdline")).is_ok_and(|b| !is_root() || b == want)
            });
            // The watchdog plus the program's processes.
            if started && tree.len() > forks {
                break tree;
            }
            assert!(
                Instant::now() < deadline,
                "{argv:?}: the program did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            tree.iter().all(|&p| !is_dead(p)),
            "{argv:?}: the program ended by itself"
        );
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(monitor, libc::SIGKILL) }, 0);
        let st = g.child.as_mut().unwrap().wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
        // How fast is the bench's figure (bench/RESULTS.md, teardown); a
        // test only bounds it, loosely enough for a loaded machine.
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(2);
        while tree.iter().any(|&p| !is_dead(p)) {
            if Instant::now() > deadline {
                let left: Vec<i32> = tree.iter().copied().filter(|&p| !is_dead(p)).collect();
                for &p in &left {
                    // SAFETY: our own descendants, left behind by the failure.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                panic!("{argv:?}: processes {left:?} outlived their monitor by 2 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn monitor_sigkill_at_random_moments_leaves_nothing_behind() {
    // Kill the monitor at moments spread over start-up, hand-off, 64 threads
    // entering cold pages, and a storm of refaults (a page dropped and touched
    // again 10^5 times), 40 times.
    let pages = sample("pages", Variant::Pie);
    let probed = sample("probed", Variant::Pie);
    // How many kills found a process of the program alive: a kill after
    // the program ended, or before it started, proves nothing.
    let mut alive_at_kill = 0;
    for i in 0..40u64 {
        let mut cmd = Command::new(BIN);
        if i % 2 == 0 {
            cmd.arg(&pages).args(["--threads", "64"]);
        } else {
            cmd.arg(&probed).args(["dontneed", "100000"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut g = spawn_guarded(&mut cmd);
        let monitor = g.pid();
        let mut seen = Vec::new();
        let until = Instant::now()
            + Duration::from_micros(if i % 2 == 0 {
                200 * (i * 7 % 25)
            } else {
                1000 * (i * 13 % 40)
            });
        while Instant::now() < until {
            for p in descendants(monitor) {
                if !seen.contains(&p) {
                    seen.push(p);
                }
            }
        }
        seen.extend(
            descendants(monitor)
                .into_iter()
                .filter(|p| !seen.contains(p))
                .collect::<Vec<_>>(),
        );
        if seen.iter().any(|&p| !is_dead(p)) {
            alive_at_kill += 1;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(monitor, libc::SIGKILL) };
        let _ = g.child.as_mut().unwrap().wait();
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.iter().any(|&p| !is_dead(p)) {
            if Instant::now() > deadline {
                let left: Vec<i32> = seen.iter().copied().filter(|&p| !is_dead(p)).collect();
                for &p in &left {
                    // SAFETY: our own descendants, left behind by the failure.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                let what: Vec<String> = left
                    .iter()
                    .map(|p| {
                        let stat =
                            std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                        let stack =
                            std::fs::read_to_string(format!("/proc/{p}/stack")).unwrap_or_default();
                        format!("{stat} {stack}")
                    })
                    .collect();
                panic!("iteration {i}: processes {left:?} outlived their monitor by 2 s: {what:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    eprintln!("kills with the program alive: {alive_at_kill} of 40");
    assert!(
        alive_at_kill >= 16,
        "only {alive_at_kill} of 40 kills found the program running"
    );
}

/// Starts uprobe-exec on python running `script` with probes on every
/// function and no cache (in `cache`), so that planning takes tens of ms;
/// returns it and its watchdog, waiting for its order meanwhile.
fn planning_python(cache: &TempDir, script: &str, out: fn() -> Stdio) -> (Guard, i32) {
    let mut cmd = Command::new(BIN);
    cmd.env("XDG_CACHE_HOME", cache.join("cache"))
        .args(["-p", "*", "/usr/bin/python3.11", "-c", script])
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out());
    let g = spawn_guarded(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(&w) = descendants(g.pid()).first() {
            return (g, w);
        }
        assert!(Instant::now() < deadline, "no watchdog was made");
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn monitor_sigkill_while_it_plans_leaves_no_watchdog_behind() {
    // The watchdog is made before the program is planned. Probes on every
    // function of python, with no cache, take tens of ms to resolve: a
    // monitor killed meanwhile must take its waiting watchdog along.
    for delay_ms in [2u64, 15, 30] {
        let cache = TempDir::new("plankill");
        let (mut g, watchdog) = planning_python(&cache, "pass", Stdio::null);
        let monitor = g.pid();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // Still waiting for its order: the program is not started yet.
        let comm = std::fs::read_to_string(format!("/proc/{watchdog}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim_end(),
            "uprobe-exec-wdp",
            "{delay_ms} ms: not before the order"
        );
        assert_eq!(descendants(monitor), [watchdog], "{delay_ms} ms");
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(monitor, libc::SIGKILL) }, 0);
        let _ = g.child.as_mut().unwrap().wait();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !is_dead(watchdog) {
            if Instant::now() > deadline {
                // SAFETY: our own descendant, left behind by the failure.
                unsafe { libc::kill(watchdog, libc::SIGKILL) };
                panic!("{delay_ms} ms: the watchdog outlived its monitor by 2 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn a_watchdog_killed_before_the_program_starts_is_an_error_not_a_hang() {
    // Killed from outside while the monitor plans (probes on every function
    // of python, no cache): the monitor must see it gone when it gives the
    // order, and fail, not wait for a message that never comes.
    let cache = TempDir::new("wdkill");
    let (mut g, watchdog) = planning_python(&cache, "print('ran')", Stdio::piped);
    let comm = std::fs::read_to_string(format!("/proc/{watchdog}/comm")).unwrap_or_default();
    assert_eq!(comm.trim_end(), "uprobe-exec-wdp", "not before the order");
    // SAFETY: signalling our own descendant.
    assert_eq!(unsafe { libc::kill(watchdog, libc::SIGKILL) }, 0);
    let child = g.child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "uprobe-exec hangs without its watchdog"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(125), "{err}");
    assert!(err.contains("watchdog"), "{err}");
    assert!(
        !out.contains("ran"),
        "the program ran without a watchdog: {out}"
    );
}

// ---------------------------------------------------------------------------
// library API

#[test]
fn library_api_spawn_wait() {
    for v in [Variant::Static, Variant::Pie] {
        let p = sample("hello", v);
        let session = uprobe_exec::Command::new(&p)
            .args(["lib", "--exit", "5"])
            .serve_text(uprobe_exec::TextServing::All)
            .spawn()
            .expect("spawn");
        assert!(session.pid() > 0);
        let report = session.wait().expect("wait");
        assert_eq!(report.exit, uprobe_exec::Exit::Code(5), "{v:?}");
        assert!(report.text.served > 0, "{v:?}: {report:?}");
        assert_eq!(report.text.pages, elf::text_pages(&p), "{v:?}");
        assert_eq!(
            report.args,
            [
                p.display().to_string(),
                "lib".into(),
                "--exit".into(),
                "5".into()
            ]
        );
    }
    let p = sample("hello", Variant::NoPie);
    let report = uprobe_exec::Command::new(&p)
        .args(["--raise", "11"])
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.exit, uprobe_exec::Exit::Signal(11));
    assert_eq!(report.exit.status(), 139);
    let err = uprobe_exec::Command::new("no-such-program-uprobe-xyz")
        .spawn()
        .err()
        .expect("not found");
    assert_eq!(err.exit_code(), 127);
}

/// An environment larger than the host's own `[stack]` (given through the
/// library): the program's stack image reaches below it, and all of it
/// survives the hand-off.
#[test]
fn library_a_large_environment_reaches_the_program_whole() {
    let env: Vec<String> = (0..12000)
        .map(|i| format!("UX_LARGE_ENV_{i}=value-{i}"))
        .chain(["PATH=/usr/bin:/bin".to_string()])
        .collect();
    let report = uprobe_exec::Command::new("/bin/sh")
        .args([
            "-c",
            "test \"$(env | grep -c ^UX_LARGE_ENV_)\" = 12000 && test \"$UX_LARGE_ENV_11999\" = value-11999",
        ])
        .env_list(&env)
        .spawn()
        .expect("spawn")
        .wait()
        .expect("wait");
    assert_eq!(report.exit, uprobe_exec::Exit::Code(0), "{report:?}");
}

// ---------------------------------------------------------------------------
// signal state handed to the program

#[test]
fn sigint_reaches_the_program() {
    let (n, _) = Case::new("/bin/sh", ["-c", "kill -INT $$; echo survived"]).compare();
    assert_eq!(n.signal, Some(libc::SIGINT));
}

#[test]
fn closed_std_fds_stay_closed() {
    // `echo hi >&-`: writing to a closed stdout fails with EBADF.
    let echo = Case::new("/bin/sh", ["-c", "echo hi; echo status $? >&2"]).closed(1);
    let (n, _) = echo.compare();
    assert!(n.stderr_str().contains("status 1"), "{}", n.stderr_str());
    echo.nobody().compare();
    // The first open() gets the lowest closed fd, as natively.
    for fds in [&[0][..], &[0, 2], &[2]] {
        let mut c = Case::new("/bin/ls", ["-1", "/proc/self/fd"]);
        for &fd in fds {
            c = c.closed(fd);
        }
        let (n, _) = c.compare();
        let lowest = fds[0].to_string();
        assert!(
            n.stdout_str().lines().any(|l| l == lowest),
            "{fds:?}: {}",
            n.stdout_str()
        );
        c.nobody().compare();
    }
    // All three closed: output through fd 5 only.
    let all = Case::new("/bin/sh", ["-c", "exec ls -1 /proc/self/fd >&5"])
        .fd5()
        .closed(0)
        .closed(1)
        .closed(2);
    let (n, _) = all.compare();
    let listed = String::from_utf8_lossy(n.fd5.as_deref().unwrap_or_default()).into_owned();
    let listed: Vec<&str> = listed.lines().collect();
    assert!(
        ["0", "1", "5"].iter().all(|f| listed.contains(f)) && !listed.contains(&"2"),
        "{listed:?}"
    );
}

#[test]
fn high_numbered_fds_are_kept_or_closed_as_execve_would() {
    // Fds far above the usual ones, where an fd table has grown: 300 is
    // inherited (not close-on-exec) and kept; 900 is close-on-exec, so
    // execve closes it before we are started.
    let list = |tool: Option<&str>| {
        let mut c = Command::new(tool.unwrap_or("/bin/ls"));
        if tool.is_some() {
            c.arg("/bin/ls");
        }
        c.args(["-1", "/proc/self/fd"]);
        use std::os::unix::process::CommandExt;
        let dup = |from: i32, to: i32, flags: i32| {
            // SAFETY: dup3 only makes fd `to` in the child about to exec;
            // async-signal-safe, and it touches no memory.
            if unsafe { libc::dup3(from, to, flags) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure only calls dup3 (see above) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                dup(0, 300, 0)?;
                dup(0, 900, libc::O_CLOEXEC)
            });
        }
        run(c)
    };
    let (native, ours) = (list(None), list(Some(BIN)));
    assert_same("ls /proc/self/fd with fds 300 and 900", &native, &ours);
    let fds: Vec<&str> = std::str::from_utf8(&native.stdout)
        .unwrap()
        .lines()
        .collect();
    assert!(fds.contains(&"300") && !fds.contains(&"900"), "{fds:?}");
}

#[test]
fn library_a_close_on_exec_fd_far_up_the_table_does_not_reach_the_program() {
    // An embedding program's own fds are close-on-exec; one numbered 901
    // grows the fd table past its first 64 or 256 entries, and execve would
    // close it: so must we.
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    use std::os::fd::AsRawFd;
    // SAFETY: dup3 makes fd 901, which nothing else in this test binary uses,
    // close-on-exec so that no other test's child inherits it.
    let fd = unsafe { libc::dup3(null.as_raw_fd(), 901, libc::O_CLOEXEC) };
    assert_eq!(fd, 901, "dup3: {}", std::io::Error::last_os_error());
    let report = uprobe_exec::Command::new("/bin/sh")
        .args(["-c", "test -e /proc/$$/fd/0 && test ! -e /proc/$$/fd/901"])
        .spawn()
        .expect("spawn")
        .wait()
        .expect("wait");
    // SAFETY: fd 901 is the one made above, closed once.
    unsafe { libc::close(901) };
    assert_eq!(report.exit, uprobe_exec::Exit::Code(0), "{report:?}");
}

/// Runs `outer` natively twice, with the inner command `inner` as given and
/// with `inner` run under uprobe-exec, where `outer` ends with the inner
/// command's words; asserts the same output and wait status.
fn compare_as_inner(outer: &[&str], inner: &[&str]) -> (Output, Output) {
    let run_with = |tool: Option<&str>| {
        let mut c = std::process::Command::new(outer[0]);
        c.args(&outer[1..]).args(tool).args(inner);
        run(c)
    };
    let (native, ours) = (run_with(None), run_with(Some(BIN)));
    assert_same(&format!("{outer:?} {inner:?}"), &native, &ours);
    (native, ours)
}

#[test]
fn death_by_signal_is_passed_on_to_our_parent() {
    // Python's subprocess sees the program's signal as -N, not 128+N.
    let py = "import subprocess, sys; print(subprocess.run(sys.argv[1:]).returncode)";
    for sig in ["INT", "TERM", "SEGV", "KILL"] {
        let kill = format!("kill -{sig} $$");
        let (n, _) = compare_as_inner(&["/usr/bin/python3", "-c", py], &["/bin/sh", "-c", &kill]);
        assert!(n.stdout_str().starts_with('-'), "{sig}: {}", n.stdout_str());
    }
    // Ctrl-C stops a shell script: bash sees its child die of SIGINT (not
    // exit 130) and ends itself the same way, without running the rest.
    let (n, _) = compare_as_inner(
        &["/bin/bash", "-c", "\"$@\"; echo went on after $?", "_"],
        &["/bin/sh", "-c", "kill -INT 0; sleep 5"],
    );
    assert_eq!(n.signal, Some(libc::SIGINT), "{}", n.stdout_str());
}

#[test]
fn ignored_sigpipe_is_inherited() {
    // A caller that ignores SIGPIPE passes that on through execve; so must we
    // (our own runtime ignores it too, and resets it only when we did not
    // inherit it ignored).
    let (n, _) = compare_as_inner(
        &["/bin/sh", "-c", "trap '' PIPE; exec \"$@\"", "_"],
        &["/usr/bin/grep", "^SigIgn", "/proc/self/status"],
    );
    assert!(n.stdout_str().contains("1000"), "{}", n.stdout_str());
    let (n, _) = compare_as_inner(
        &["/bin/sh", "-c", "exec \"$@\"", "_"],
        &["/usr/bin/grep", "^SigIgn", "/proc/self/status"],
    );
    assert!(!n.stdout_str().contains("1000"), "{}", n.stdout_str());
}

#[test]
fn signal_dispositions_match_native() {
    let (n, _) = Case::new("/usr/bin/grep", ["^Sig[IC]", "/proc/self/status"]).compare();
    assert!(n.stdout_str().contains("SigIgn:"));
}

// ---------------------------------------------------------------------------
// LD_* variables reach the program only (uprobe-exec is linked statically)

/// `text` without the numbers ld.so prints that differ from run to run:
/// `(0x…)` load addresses and the `PID:` prefix of LD_DEBUG lines.
fn without_addresses(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = match l.split_once("(0x") {
                Some((a, b)) => format!("{a}({}", b.split_once(')').map_or("", |x| x.1)),
                None => l.to_string(),
            };
            match l.trim_start().split_once(":\t") {
                Some((pid, rest)) if pid.bytes().all(|c| c.is_ascii_digit()) => rest.to_string(),
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn ld_trace_loaded_objects_lists_the_programs_libraries() {
    let case = Case::new("/bin/ls", ["/"]).env("LD_TRACE_LOADED_OBJECTS", "1");
    let (native, ours) = (case.run_native(), case.run_ours());
    assert_eq!(ours.code, Some(0), "{}", ours.stderr_str());
    assert!(ours.stderr.is_empty(), "{}", ours.stderr_str());
    let ldd = run({
        let mut c = Command::new("/usr/bin/ldd");
        c.arg("/bin/ls");
        c
    });
    assert!(
        native.stdout_str().contains("libc.so.6"),
        "{}",
        native.stdout_str()
    );
    for (what, expected) in [("native", &native), ("ldd", &ldd)] {
        assert_eq!(
            without_addresses(&ours.stdout_str()),
            without_addresses(&expected.stdout_str()),
            "against {what}"
        );
    }
}

#[test]
fn ld_preload_constructor_runs_once() {
    let d = TempDir::new("ld-preload");
    let src = d.write(
        "ctor.c",
        b"#include <unistd.h>\n__attribute__((constructor)) static void c(void) { write(2, \"ctor\\n\", 5); }\n",
        0o644,
    );
    let so = d.join("ctor.so");
    let cc = run({
        let mut c = Command::new("cc");
        c.args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src);
        c
    });
    assert_eq!(cc.code, Some(0), "cc: {}", cc.stderr_str());
    let case = Case::new("/bin/echo", ["hi"]).env("LD_PRELOAD", so.to_str().unwrap());
    let (n, _) = case.compare();
    assert_eq!(n.stderr_str(), "ctor\n");
    case.nobody().compare();
}

#[test]
fn ld_show_auxv_and_ld_debug_come_from_the_program_only() {
    let keys = |o: &Output| {
        let mut k: Vec<String> = o
            .stdout_str()
            .lines()
            .map(|l| l.split(':').next().unwrap_or("").to_string())
            .collect();
        k.sort();
        k
    };
    let case = Case::new("/bin/echo", ["hi"]).env("LD_SHOW_AUXV", "1");
    let (native, ours) = (case.run_native(), case.run_ours());
    assert_eq!(keys(&ours), keys(&native), "{}", ours.stdout_str());
    assert!(
        ours.stdout_str().ends_with("\nhi\n"),
        "{}",
        ours.stdout_str()
    );
    assert_eq!(ours.code, Some(0));

    let case = Case::new("/bin/echo", ["hi"]).env("LD_DEBUG", "libs");
    let (native, ours) = (case.run_native(), case.run_ours());
    assert_eq!(ours.stdout, native.stdout);
    assert_eq!(
        without_addresses(&ours.stderr_str()),
        without_addresses(&native.stderr_str())
    );
}

#[test]
fn the_report_says_how_long_each_step_of_the_start_took() {
    // No thresholds (times are the machine's): the steps are there, in
    // µs, add up to no more than the whole, and --stats prints them.
    let dir = TempDir::new("startup");
    let report = dir.join("r.json");
    let prog = sample("hello", Variant::Pie);
    let out = ours(
        &[
            "--stats",
            "--report-json",
            report.to_str().unwrap(),
            "-p",
            "main",
        ],
        &prog,
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let r = read_report(&report);
    let s = &r["startup"];
    let us = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    let parts: u64 = [
        "open_us",
        "layout_us",
        "probes_us",
        "prepare_us",
        "launch_us",
    ]
    .iter()
    .map(|k| us(k))
    .sum();
    assert!(parts <= us("total_us"), "{s}");
    assert!(us("launch_us") > 0 && us("probes_us") > 0, "{s}");
    assert!(
        out.stderr_str().contains("uprobe-exec: start-up ")
            && out.stderr_str().contains(", launch "),
        "{}",
        out.stderr_str()
    );
}
