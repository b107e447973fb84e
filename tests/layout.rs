//! Execve parity of the address space (issue "Execve parity", items 1–5
//! and 11): randomisation, stack growth, executable stacks, bss in an
//! executable segment, brk room, madvise on text.
//!
//! Ground truth is a native run of the same sample (`samples/c/layout.c`),
//! which prints what it sees of its own address space.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use uprobe_exec_samples::{path as sample, Variant};

/// `key=value` lines of a run's stdout.
fn values(out: &Output) -> HashMap<String, String> {
    out.stdout_str()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn hex(v: &HashMap<String, String>, key: &str) -> u64 {
    let s = v.get(key).unwrap_or_else(|| panic!("no {key} in {v:?}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// `prefix... uprobe-exec opts... program args...` (ours) or
/// `prefix... program args...` (native), run to the end.
fn run_via(prefix: &[&str], ours: Option<&[&str]>, program: &Path, args: &[&str]) -> Output {
    let mut argv: Vec<OsString> = prefix.iter().map(OsString::from).collect();
    if let Some(opts) = ours {
        argv.push(BIN.into());
        argv.extend(opts.iter().map(OsString::from));
    }
    argv.push(program.into());
    argv.extend(args.iter().map(OsString::from));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    run(cmd)
}

fn native(program: &Path, args: &[&str]) -> Output {
    run_via(&[], None, program, args)
}

fn ours(program: &Path, args: &[&str]) -> Output {
    run_via(&[], Some(&[]), program, args)
}

/// The same command under `sh -c 'ulimit -s LIMIT; exec "$@"'`.
fn with_stack_limit(
    limit: &str,
    ours_opts: Option<&[&str]>,
    program: &Path,
    args: &[&str],
) -> Output {
    let script = format!("ulimit -s {limit} && exec \"$@\"");
    run_via(&["/bin/sh", "-c", &script, "sh"], ours_opts, program, args)
}

fn ok(what: &str, out: &Output) {
    assert_eq!(
        out.code,
        Some(0),
        "{what}: status {:?}/{:?}, stderr: {}",
        out.code,
        out.signal,
        out.stderr_str()
    );
}

/// Whether brk is the program's own: set with PR_SET_MM_MAP, which needs
/// privileges (unprivileged, it goes on from uprobe-exec's heap: README).
fn program_brk() -> bool {
    privileged("brk is the program's only with PR_SET_MM_MAP")
}

#[test]
fn layout_is_randomised_like_execve_all_variants() {
    let keys: &[&str] = if program_brk() {
        &["main", "brk", "stack"]
    } else {
        &["main", "stack"]
    };
    for v in Variant::ALL {
        let prog = sample("layout", v);
        let runs: Vec<HashMap<String, String>> = (0..4)
            .map(|_| {
                let o = ours(&prog, &["addrs"]);
                ok(&format!("{v:?}"), &o);
                values(&o)
            })
            .collect();
        let nat: Vec<HashMap<String, String>> =
            (0..4).map(|_| values(&native(&prog, &["addrs"]))).collect();
        for &key in keys {
            let distinct = |rs: &[HashMap<String, String>]| {
                let mut all: Vec<u64> = rs.iter().map(|r| hex(r, key)).collect();
                all.sort_unstable();
                all.dedup();
                all.len()
            };
            assert_eq!(
                distinct(&runs) > 1,
                distinct(&nat) > 1,
                "{v:?} {key}: ours vary unlike native runs: {runs:?} vs {nat:?}"
            );
            // The same page offset as natively, and the same region.
            let (o, n) = (hex(&runs[0], key), hex(&nat[0], key));
            assert_eq!(o & 0xf, n & 0xf, "{v:?} {key}: {o:#x} vs native {n:#x}");
            assert_eq!(
                o >> 44,
                n >> 44,
                "{v:?} {key}: {o:#x} in another region than native {n:#x}"
            );
        }
    }
}

#[test]
fn setarch_r_gives_the_native_layout() {
    if !installed("/usr/bin/setarch") {
        return;
    }
    let brk = program_brk();
    for v in Variant::ALL {
        let prog = sample("layout", v);
        let d = TempDir::new("setarch");
        let rep = d.join("r.json");
        let rep_s = rep.to_string_lossy().into_owned();
        let n = run_via(&["/usr/bin/setarch", "-R"], None, &prog, &["addrs"]);
        let o = run_via(
            &["/usr/bin/setarch", "-R"],
            Some(&["--report-json", &rep_s]),
            &prog,
            &["addrs"],
        );
        ok(&format!("{v:?}"), &o);
        let (n, o) = (values(&n), values(&o));
        let limits = read_report(&rep)["handoff"]["limits"].to_string();
        // Our own heap sits where the kernel puts a PIE without
        // randomisation; a static-pie goes in the mmap area, below our own
        // mappings (README, known limits). Everything else is as native.
        let keys: &[&str] = match v {
            Variant::StaticPie => &["brk", "stack"],
            Variant::Pie if limits.contains("0x555555554000") => &["stack"],
            _ => &["main", "brk", "stack"],
        };
        for key in keys.iter().filter(|&&k| brk || k != "brk") {
            assert_eq!(o[*key], n[*key], "{v:?} {key} under setarch -R");
        }
    }
}

#[test]
fn stack_grows_to_an_unlimited_rlimit() {
    // 400 MiB of recursion: natively fine with `ulimit -s unlimited`.
    for v in [Variant::Pie, Variant::Static] {
        let prog = sample("layout", v);
        let n = with_stack_limit("unlimited", None, &prog, &["recurse", "400"]);
        let o = with_stack_limit("unlimited", Some(&[]), &prog, &["recurse", "400"]);
        assert_same(&format!("{v:?} recurse 400"), &n, &o);
        ok("recurse", &o);
    }
}

#[test]
fn stack_overflows_at_the_native_depth() {
    for (limit, v) in [
        ("8192", Variant::Pie),
        ("2048", Variant::Static),
        ("8192", Variant::StaticPie),
    ] {
        let prog = sample("layout", v);
        let n = with_stack_limit(limit, None, &prog, &["overflow"]);
        let o = with_stack_limit(limit, Some(&[]), &prog, &["overflow"]);
        ok("native overflow", &n);
        ok("overflow", &o);
        let depth = |out: &Output| values(out)["overflow_depth"].parse::<i64>().unwrap();
        let (dn, d) = (depth(&n), depth(&o));
        // Each frame is a little over 1 KiB; the stack's contents (argv,
        // environment) differ by a few frames at most.
        assert!(
            (dn - d).abs() <= dn / 50 + 8,
            "{v:?} ulimit -s {limit}: overflow after {d} frames, natively {dn}"
        );
    }
}

#[test]
fn executable_stack_when_pt_gnu_stack_asks() {
    for v in Variant::ALL {
        let case = Case::new(sample("layout", v), ["nested", "5"]);
        let (n, _) = case.compare();
        assert_eq!(n.stdout_str(), "nested=19\n");
    }
}

#[test]
fn executable_stack_for_a_dlopened_execstack_library() {
    // An execstack library loaded with dlopen: glibc makes the stack
    // executable with mprotect(PROT_GROWSDOWN), which needs a real stack.
    // (cc builds the samples, and python3.11 runs in many tests: both are
    // needed by the suite as a whole.)
    let d = TempDir::new("execstack");
    let src = d.write("x.c", b"int answer(void) { return 42; }\n", 0o644);
    let lib = d.join("libx.so");
    let cc = run({
        let mut c = Command::new("cc");
        c.args(["-shared", "-fPIC", "-z", "execstack", "-o"])
            .arg(&lib)
            .arg(&src);
        c
    });
    ok("cc", &cc);
    let script = format!(
        "import ctypes; print(ctypes.CDLL({:?}).answer())",
        lib.display().to_string()
    );
    let (n, _) = Case::new("/usr/bin/python3.11", ["-c", &script]).compare();
    assert_eq!(n.stdout_str(), "42\n");
}

#[test]
fn brk_has_the_native_room_with_probes() {
    for v in Variant::ALL {
        let case = Case::new(sample("layout", v), ["sbrk", "4000"])
            .opt("-q")
            .opt("-p")
            .opt("recurse");
        let (n, _) = case.compare();
        assert_eq!(n.stdout_str(), "sbrk_mb=4000\n", "{v:?}");
    }
}

#[test]
fn madvise_on_text_answers_as_for_a_file_mapping() {
    for v in Variant::ALL {
        let (n, _) = Case::new(sample("layout", v), ["madvise"]).compare();
        assert!(
            n.stdout_str().contains("MADV_FREE=Invalid argument"),
            "{}",
            n.stdout_str()
        );
    }
}

/// A static program linked with `-N`: text, data and bss in one writable,
/// executable PT_LOAD whose memory outlasts its file bytes (as in packed
/// binaries). Freestanding: static glibc cannot be linked with `-N`.
fn omagic(d: &TempDir) -> PathBuf {
    let src = d.write(
        "omagic.c",
        br#"static char zeros[20000];
static int set = 7;
static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    long sum = set;
    for (unsigned i = 0; i < sizeof zeros; i++) sum += zeros[i];
    zeros[5] = 1;
    static const char good[] = "bss is zero\n", bad[] = "bss is NOT zero\n";
    if (sum == 7 && zeros[5] == 1) sys3(1, 1, (long)good, sizeof good - 1);
    else sys3(1, 1, (long)bad, sizeof bad - 1);
    sys3(60, 0, 0, 0);
}
"#,
        0o644,
    );
    freestanding(d, &src, "omagic", &["-Wl,-N", "-Wl,--no-warn-rwx-segments"])
}

/// `src` built with cc as a static program without libc (`_start` its
/// own), with `extra` flags, into `d`/`name`.
fn freestanding(d: &TempDir, src: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = d.join(name);
    let cc = run({
        let mut c = Command::new("cc");
        c.args([
            "-O1",
            "-static",
            "-nostdlib",
            "-fno-builtin",
            "-fno-stack-protector",
        ])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(src);
        c
    });
    ok(&format!("cc -static -nostdlib {}", extra.join(" ")), &cc);
    out
}

#[test]
fn bss_in_an_executable_segment_is_zero() {
    let d = TempDir::new("omagic");
    let prog = omagic(&d);
    let (n, _) = Case::new(&prog, Vec::<&str>::new()).compare();
    assert_eq!(n.stdout_str(), "bss is zero\n");
}

/// Unprivileged, `--perf-map` runs the program from a copy of its file
/// left for profilers, the text at its own place in it: the pages of an
/// executable segment past its file bytes (its bss) are not written over
/// what follows the segment in the copy (here its symbols).
#[test]
fn the_perf_map_copy_keeps_what_follows_an_executable_bss() {
    if !common::is_root() {
        return;
    }
    let (dir, tool) = nobody_dir("omagic-perf");
    let prog = omagic(&dir);
    let rep = dir.join("r.json");
    let (n, _) = Case::new(&prog, Vec::<&str>::new())
        .nobody()
        .tool(&tool)
        .opt("--perf-map")
        .opt("--report-json")
        .opt(&rep)
        .compare();
    assert_eq!(n.stdout_str(), "bss is zero\n");
    let r = common::read_report(&rep);
    let limits = r["handoff"]["limits"].to_string();
    let copy = limits
        .split("left at ")
        .nth(1)
        .and_then(|t| t.split(" for profilers").next())
        .unwrap_or_else(|| panic!("no copy named in {limits}"));
    let (copy_bytes, orig) = (std::fs::read(copy).unwrap(), std::fs::read(&prog).unwrap());
    let _ = std::fs::remove_dir_all(Path::new(copy).parent().unwrap());
    // Not longer than the file's last page: the text's pages past its
    // bytes are not in the copy.
    assert!(
        copy_bytes.len() <= orig.len().next_multiple_of(4096),
        "a copy of {} bytes of a {}-byte file",
        copy_bytes.len(),
        orig.len()
    );
    // The text's last page, zero past its bytes as at run time, at most.
    let differing = copy_bytes.iter().zip(&orig).filter(|(a, b)| a != b).count();
    assert!(differing < 4096, "{differing} bytes of the copy differ");
}

/// A freestanding static program that counts the non-zero bytes between
/// 96 KiB and 4 KiB below its initial stack pointer (nothing has run on
/// them: no libc, no dynamic loader) and prints the count.
fn below_sp(d: &TempDir) -> PathBuf {
    let src = d.write(
        "belowsp.c",
        br#"static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    const volatile unsigned char *sp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    unsigned long nonzero = 0;
    for (const volatile unsigned char *p = sp - 96 * 1024; p < sp - 4096; p++) nonzero += *p != 0;
    char buf[32] = "nonzero below sp: ";
    int n = 18;
    char digits[20];
    int k = 0;
    do { digits[k++] = '0' + nonzero % 10; nonzero /= 10; } while (nonzero);
    while (k) buf[n++] = digits[--k];
    buf[n++] = '\n';
    sys3(1, 1, (long)buf, n);
    sys3(60, 0, 0, 0);
}
"#,
        0o644,
    );
    freestanding(d, &src, "belowsp", &[])
}

/// The stack below the program's initial sp is fresh, as natively: none of
/// the monitor's own stack (which the program's is made from) shows there.
#[test]
fn the_stack_below_the_initial_sp_reads_as_zeros() {
    let d = TempDir::new("belowsp");
    let prog = below_sp(&d);
    let (n, _) = Case::new(&prog, Vec::<&str>::new()).compare();
    assert_eq!(n.stdout_str(), "nonzero below sp: 0\n");
}

/// [`nobody_dir`] with a copy of the layout sample that uid 65534 may run.
fn nobody_copies(tag: &str, v: Variant) -> (TempDir, PathBuf, PathBuf) {
    let (d, bin) = nobody_dir(tag);
    let prog = d.copy(&sample("layout", v), "layout", 0o755);
    (d, bin, prog)
}

#[test]
fn unprivileged_text_dropped_before_fork_is_refilled() {
    // Forks are not followed without privileges: a child's dropped text
    // page must still come back with the program's bytes, never zeros.
    for v in [Variant::Pie, Variant::Static] {
        let (_d, bin, prog) = nobody_copies("dropfork", v);
        let (n, _) = Case::new(&prog, ["dropfork", "300"])
            .tool(&bin)
            .nobody()
            .compare();
        assert_eq!(n.stdout_str(), "children_ok=300\n");
        let (n, _) = Case::new(&prog, ["dropfork", "50"])
            .tool(&bin)
            .nobody()
            .opt("-q")
            .opt("-p")
            .opt("recurse")
            .compare();
        assert_eq!(n.stdout_str(), "children_ok=50\n");
    }
}

/// Runs `layout wait` (natively, or under `tool`), overwrites the program's
/// file while it waits, then lets it go on. Returns its output and whether
/// the write was refused with ETXTBSY.
fn overwrite_while_running(tool: Option<&Path>, prog: &Path, nobody: bool) -> (String, bool) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut argv: Vec<&OsStr> = tool.map(Path::as_os_str).into_iter().collect();
    argv.extend([prog.as_os_str(), OsStr::new("wait")]);
    let mut cmd = command(nobody, &argv);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut g = spawn_guarded(&mut cmd);
    let child = g.child.as_mut().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let size = std::fs::metadata(prog).unwrap().len() as usize;
    let refused = match std::fs::OpenOptions::new().write(true).open(prog) {
        Ok(mut f) => {
            // Everything after the first page becomes 0xff.
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(4096)).unwrap();
            f.write_all(&vec![0xff; size - 4096]).unwrap();
            false
        }
        Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => true,
        Err(e) => panic!("opening {} for writing: {e}", prog.display()),
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let st = child.wait().unwrap();
    (format!("{rest}status={st}"), refused)
}

#[test]
fn the_program_file_cannot_change_under_the_program() {
    let (_d, bin, prog) = nobody_copies("overwrite", Variant::Static);
    let (native, refused) = overwrite_while_running(None, &prog, false);
    assert!(refused, "natively the kernel refuses writers (ETXTBSY)");
    if privileged("PR_SET_MM_MAP") {
        // Privileged: PR_SET_MM_MAP makes the file the process's exe, which
        // the kernel write-protects as for execve.
        let (ours, refused) = overwrite_while_running(Some(&bin), &prog, false);
        assert_eq!(ours, native);
        assert!(
            refused,
            "with PR_SET_MM_MAP writers are refused as natively"
        );
    }
    // Unprivileged (as uid 65534 when we are root, and the file is still
    // ours to write): the write goes through, but the program runs from a
    // sealed copy taken at start.
    let (ours, refused) = overwrite_while_running(Some(&bin), &prog, true);
    assert_eq!(ours, native, "the program saw the file change");
    assert!(!refused, "unprivileged, nothing write-protects the file");
}
