//! Fidelity of the shared objects whose text we serve (`OBJECT:SPEC`, root
//! only): with a probe on `libc.so.6:strtol`, the pages that hold probe sites
//! in the executable mappings ld.so makes of a shared object (at start and by
//! `dlopen`) are anonymous memory filled from the file by our userfaultfd
//! server, between the file's own mappings. What a program can learn
//! of its objects through the dynamic loader must not change: the objects
//! `dl_iterate_phdr` lists, `dladdr`, `backtrace_symbols`, symbol binding
//! under `RTLD_DEEPBIND`, `LD_LIBRARY_PATH` and `LD_PRELOAD`, and Python's
//! C extensions (ctypes through libffi, math through libm, `_decimal`,
//! `_json`, `_hashlib` through libcrypto). Each case is run natively and
//! under uprobe-exec with the same environment, and stdout, stderr and exit
//! status must be identical; probe counts are compared with the kernel's
//! own uprobes on the same functions of the same files, natively.
//!
//! The one thing that does differ on purpose, which file backs the text in
//! /proc/self/maps at the probed functions, dlfidelity writes to fd 5,
//! outside the compared output, and it is checked on its own: the library's
//! file natively, anonymous memory (named `[anon:uprobe-exec served text]`
//! where the kernel names anonymous mappings) under uprobe-exec.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kernel;
use common::{assert_same, lib_hits, prerequisite, printed, privileged, Case, Output, TempDir};
use uprobe_exec_samples::{path, shared_object, Variant};

const PY: &str = "/usr/bin/python3.11";

/// Timeout of one run (native or ours) of a case.
const RUN_TIMEOUT: Duration = Duration::from_secs(15);

/// The calls of strtol dlfidelity makes itself, and those it makes
/// through fid_parse in each of its two rounds (dlfidelity.c).
const MAIN_CALLS: u64 = 1000;
const LIB_CALLS: u64 = 300;
const STRTOL_CALLS: u64 = MAIN_CALLS + 2 * LIB_CALLS;
const FID_PARSE_CALLS: u64 = 2 * LIB_CALLS;

/// The name our mmap detour gives the anonymous text it maps for ld.so.
const SERVED_NAME: &str = "[anon:uprobe-exec served text]";

fn library() -> PathBuf {
    shared_object("libfidelity.so")
}

fn preload() -> PathBuf {
    shared_object("libfidpreload.so")
}

/// Whether this kernel names anonymous mappings (`CONFIG_ANON_VMA_NAME`):
/// prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME) on a page of our own.
fn kernel_names_anonymous_mappings() -> bool {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    // SAFETY: a fresh private anonymous page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mmap of one page");
    let name = c"uprobe-exec-test";
    // SAFETY: names our own page; the name is a NUL-terminated string.
    let r = unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            page as libc::c_ulong,
            4096 as libc::c_ulong,
            name.as_ptr(),
        )
    };
    // SAFETY: the page mapped above, used by nothing else.
    unsafe { libc::munmap(page, 4096) };
    r == 0
}

/// Runs `case` natively and under uprobe-exec (with `--report-json`),
/// asserting identical stdout, stderr and exit status; what the two wrote
/// to fd 5 (when the case has one) may differ and is returned with them.
fn compare_but_fd5(tag: &str, case: Case) -> (Output, Output, serde_json::Value) {
    let dir = TempDir::new(tag);
    let rep = dir.join("r.json");
    let mut case = case.opt("--report-json").opt(&rep);
    case.timeout = Some(RUN_TIMEOUT);
    let native = case.run_native();
    let ours = case.run_ours();
    let strip = |o: &Output| Output {
        fd5: None,
        ..o.clone()
    };
    assert_same(
        &format!("{tag}: {:?}", case.argv),
        &strip(&native),
        &strip(&ours),
    );
    (native, ours, common::read_report(&rep))
}

/// The lines dlfidelity wrote to fd 5: `round N WHAT: PERMS file PATH` or
/// `round N WHAT: PERMS anon NAME`, as (round, what, rest).
fn mappings(out: &Output) -> Vec<(String, String, String)> {
    let text = String::from_utf8_lossy(out.fd5.as_deref().expect("fd 5 was given")).into_owned();
    text.lines()
        .map(|l| {
            let (head, rest) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("fd 5 line {l:?}"));
            let mut w = head.splitn(3, ' ');
            assert_eq!(w.next(), Some("round"), "{l:?}");
            let round = w.next().expect("round number").to_string();
            let what = w.next().expect("what").to_string();
            (round, what, rest.to_string())
        })
        .collect()
}

/// The mapping dlfidelity reported for WHAT in each of its two rounds.
fn mapping_of(out: &Output, what: &str) -> Vec<String> {
    let m = mappings(out);
    let found: Vec<String> = m
        .iter()
        .filter(|(_, w, _)| w == what)
        .map(|(_, _, rest)| rest.clone())
        .collect();
    assert_eq!(found.len(), 2, "{what} in each round: {m:?}");
    found
}

/// Asserts the text of the library holding fid_parse, and of libc
/// (unless `libc` is None: strtol is then another object's), is mapped
/// from its file natively and served from anonymous memory by us.
fn assert_served(native: &Output, ours: &Output, lib: &Path, libc: Option<&Path>) {
    let names = kernel_names_anonymous_mappings();
    let served = if names {
        format!("r-xp anon {SERVED_NAME}")
    } else {
        // No name without CONFIG_ANON_VMA_NAME: the path field is empty.
        "r-xp anon ".to_string()
    };
    let mut checks = vec![("fid_parse", lib)];
    checks.extend(libc.map(|l| ("strtol", l)));
    for (what, file) in checks {
        let file = kernel::canonical(file);
        for n in mapping_of(native, what) {
            assert_eq!(
                n,
                format!("r-xp file {}", file.display()),
                "natively, the text of {what} is the file's"
            );
        }
        for o in mapping_of(ours, what) {
            assert_eq!(
                o,
                served,
                "under uprobe-exec, the text of {what} ({}) is served from anonymous memory \
                 (the kernel names anonymous mappings: {names})",
                file.display()
            );
        }
    }
}

/// The lines of dlfidelity's stdout the test relies on, whatever else it
/// prints: each shows that the sample did what it is meant to.
fn assert_dlfidelity_ran(n: &Output, prog: &Path) {
    let out = n.stdout_str();
    let prog = prog.file_name().unwrap().to_str().unwrap();
    for line in [
        "round 1 (RTLD_NOW): the library's helper() is main's".to_string(),
        "round 2 (RTLD_NOW|RTLD_DEEPBIND): the library's helper() is library's".to_string(),
        "round 1: after dlclose the library is gone".to_string(),
        "round 2: after dlclose the library is gone".to_string(),
        "dladdr fid_parse: fname=libfidelity.so sname=fid_parse exact=yes".to_string(),
        "  frame 0: libfidelity.so(fid_trace)".to_string(),
        format!("  frame 1: {prog}(call_trace)"),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "dlfidelity's output has no line {line:?}:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l.starts_with("  object ")
            && l.ends_with(": libfidelity.so loads=4 addr_page_aligned=yes")),
        "dl_iterate_phdr did not list the library: {out}"
    );
    assert_eq!(printed(n, "strtol_calls"), STRTOL_CALLS, "{out}");
    assert_eq!(printed(n, "fid_parse_calls"), FID_PARSE_CALLS, "{out}");
}

/// dlfidelity `arg` with `env`: natively twice (the output must not vary,
/// or comparing ours with it would mean nothing), natively under the
/// kernel's uprobes on libc's strtol and the library's fid_parse, then
/// natively and ours with `-p libc.so.6:strtol -p libfidelity.so:fid_parse`
/// and fd 5. Returns the native run, ours and our report.
fn dlfidelity(
    tag: &str,
    v: Variant,
    arg: &str,
    lib: &Path,
    env: &[(&str, &str)],
) -> (Output, Output, serde_json::Value) {
    let prog = path("dlfidelity", v);
    let mut case = Case::new(&prog, [arg]);
    for (k, val) in env {
        case = case.env(k, val);
    }
    case.timeout = Some(RUN_TIMEOUT);
    let first = case.run_native();
    let second = case.run_native();
    assert_same(&format!("{tag} {v:?}: two native runs"), &first, &second);
    assert_dlfidelity_ran(&first, &prog);
    let libc = kernel::libc();
    if let Some(k) = kernel::probes_or_skip(&[(&libc, "strtol"), (lib, "fid_parse")]) {
        let run = kernel::counts(&k, &[prog.to_str().unwrap(), arg], env);
        assert_eq!(run.out.stdout, first.stdout, "{tag} {v:?}: the same run");
        assert_eq!(
            run.counts,
            [STRTOL_CALLS, FID_PARSE_CALLS],
            "{tag} {v:?}: the kernel's counts of strtol and fid_parse"
        );
    }
    let case = case
        .fd5()
        .opt("-q")
        .opt("-p")
        .opt("libc.so.6:strtol")
        .opt("-p")
        .opt("libfidelity.so:fid_parse");
    let (n, o, r) = compare_but_fd5(tag, case);
    assert_eq!(
        lib_hits(&r, "libc.so.6", "strtol"),
        STRTOL_CALLS,
        "{tag} {v:?}: ours vs the program's own count (and the kernel's): {r}"
    );
    assert_eq!(
        lib_hits(&r, "libfidelity.so", "fid_parse"),
        FID_PARSE_CALLS,
        "{tag} {v:?}: both loads of the library count: {r}"
    );
    (n, o, r)
}

// ---------------------------------------------------------------------------
// dl_iterate_phdr, dladdr, backtrace_symbols, RTLD_DEEPBIND

#[test]
fn dlfidelity_sees_its_objects_as_natively() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let lib = library();
    let libc = kernel::libc();
    for v in [Variant::Pie, Variant::NoPie] {
        let (n, o, _) = dlfidelity("fidelity", v, lib.to_str().unwrap(), &lib, &[]);
        assert_served(&n, &o, &lib, Some(&libc));
    }
}

// ---------------------------------------------------------------------------
// LD_LIBRARY_PATH, LD_PRELOAD

#[test]
fn ld_library_path_and_ld_preload_act_as_natively() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    // The library only in a directory of its own, found by its soname
    // through LD_LIBRARY_PATH.
    let dir = TempDir::new("fid-ldpath");
    let lib = dir.copy(&library(), "libfidelity.so", 0o755);
    let dir_str = dir.path.to_str().unwrap().to_string();
    let preload = preload();
    let preload_str = preload.to_str().unwrap().to_string();
    let libc = kernel::libc();
    for v in [Variant::Pie, Variant::NoPie] {
        let env = [("LD_LIBRARY_PATH", dir_str.as_str())];
        let (n, o, r) = dlfidelity("ldpath", v, "libfidelity.so", &lib, &env);
        assert_served(&n, &o, &lib, Some(&libc));
        let objects: Vec<&str> = r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["object"].as_str())
            .collect();
        assert!(
            objects.contains(&kernel::canonical(&lib).to_str().unwrap()),
            "{v:?}: the library found through LD_LIBRARY_PATH is the one probed: {objects:?}"
        );

        // And with a preloaded strtol that counts the calls it passes on
        // to libc's: all calls reach libc (the program's own count, ours
        // and the kernel's), but the library opened with RTLD_DEEPBIND
        // binds strtol to libc's directly, before the global scope, so the
        // preload sees the program's and the first round's only.
        let env = [
            ("LD_LIBRARY_PATH", dir_str.as_str()),
            ("LD_PRELOAD", preload_str.as_str()),
        ];
        let (n, o, _) = dlfidelity("preload", v, "libfidelity.so", &lib, &env);
        let err = n.stderr_str();
        assert_eq!(
            err,
            format!("preload: strtol calls={}\n", MAIN_CALLS + LIB_CALLS),
            "{v:?}: the preload's count, natively"
        );
        let out = n.stdout_str();
        assert!(
            out.contains("dladdr strtol: fname=libfidpreload.so sname=strtol"),
            "{v:?}: strtol is the preload's: {out}"
        );
        // strtol (RTLD_DEFAULT) is the preload's here: the library's text
        // is checked, not libc's.
        assert_served(&n, &o, &lib, None);
    }
}

// ---------------------------------------------------------------------------
// Python's C extensions

/// Python with C extensions loaded from .so files (dlopen'ed by the
/// interpreter): ctypes (libffi) calling libc's strtol argv[1] times,
/// math's cbrt (libm) argv[1] times, other math, _decimal, _json, and
/// _hashlib (libcrypto). Prints which file each extension came from
/// (basename) and results only.
const PY_EXTENSIONS: &str = r#"import sys, os, ctypes, ctypes.util, math, json, decimal, hashlib
import _ctypes, _decimal, _json, _hashlib
n = int(sys.argv[1])
for m in (_ctypes, _decimal, _json, _hashlib):
    print(m.__name__, os.path.basename(getattr(m, "__file__", "(built in)")))
print("json's C scanner:", json.decoder.scanstring is json.decoder.c_scanstring)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
strtol = libc.strtol
strtol.restype = ctypes.c_long
strtol.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
end = ctypes.c_char_p()
total = 0
for i in range(n):
    s = b"%x;" % (i * 2654435761 % 1000003)
    total = (total * 31 + strtol(s, ctypes.byref(end), 16) + len(end.value)) % (1 << 61)
print("ctypes strtol: calls=%d checksum=%d" % (n, total))
c = 0.0
for i in range(n):
    c += math.cbrt(i * 1.5 + 0.25)
print("cbrt: calls=%d sum=%r" % (n, c))
print("math:", repr(math.erf(0.5)), repr(math.exp(1.5)), repr(math.atan2(1, 3)),
      repr(math.lgamma(7.25)), math.factorial(25), math.gcd(2**40 - 1, 3**20 - 1),
      repr(math.fsum([0.1] * 10)), repr(math.pow(2.5, 3.5)), repr(math.log1p(1e-9)))
decimal.getcontext().prec = 60
D = decimal.Decimal
print("decimal:", D(1) / D(7), D(2).sqrt(), D(10).ln(), D("1.5").exp(),
      D("123.456").quantize(D("0.1")))
doc = {"k%d" % i: [i, i / 4, "v" * (i % 5), None, True] for i in range(200)}
text = json.dumps(doc, sort_keys=True)
print("json:", len(text), json.loads(text) == doc)
print("sha256:", hashlib.sha256(text.encode()).hexdigest())
print("md5:", hashlib.md5(b"uprobe-exec").hexdigest(),
      "blake2b:", hashlib.blake2b(b"x", digest_size=8).hexdigest())
"#;

/// The canonical path of the file an object whose name starts with
/// `prefix` is mapped from, in python3.11 once it imported `module`
/// (natively), if any.
fn python_object(module: &str, prefix: &str) -> Option<PathBuf> {
    let script = format!(
        "import {module}\nfor l in open('/proc/self/maps'):\n    w = l.split()\n    \
         if len(w) > 5 and w[5].rsplit('/', 1)[-1].startswith('{prefix}'):\n        \
         print(w[5]); break\n"
    );
    let out = Case::new(PY, ["-c", script.as_str()]).run_native();
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    let p = out.stdout_str().trim().to_string();
    (!p.is_empty()).then(|| kernel::canonical(Path::new(&p)))
}

#[test]
fn python_c_extensions_run_as_natively_with_exact_counts() {
    if !privileged("shared objects are served in full mode only") || !common::installed(PY) {
        return;
    }
    let env = [("PYTHONHASHSEED", "0"), ("LC_ALL", "C")];
    let libc = kernel::libc();
    let libm = python_object("math", "libm.so.6").expect("python3.11 maps libm.so.6");
    let libffi = python_object("_ctypes", "libffi.so");
    let py_case = |n: &str| {
        let mut c = Case::new(PY, ["-c", PY_EXTENSIONS, n]);
        for (k, v) in env {
            c = c.env(k, v);
        }
        c
    };
    // Natively, under the kernel's uprobes: python calls strtol (and cbrt,
    // ffi_call) on its own too, so the counts with the loops are the
    // counts without them plus exactly the loops' N, and ours must equal
    // the kernel's in both runs, not just be >= N.
    let mut sites: Vec<(&Path, &str)> = vec![(&libc, "strtol"), (&libm, "cbrt")];
    if let Some(f) = &libffi {
        sites.push((f, "ffi_call"));
    }
    let mut expected: Vec<(&str, Vec<u64>)> = Vec::new();
    if let Some(k) = kernel::probes_or_skip(&sites) {
        for n in ["0", "100"] {
            let argv = [PY, "-c", PY_EXTENSIONS, n];
            let run = kernel::counts(&k, &argv, &env);
            let again = kernel::counts(&k, &argv, &env);
            assert_eq!(
                run.counts, again.counts,
                "python {n}: the kernel's counts differ between two native runs"
            );
            expected.push((n, run.counts));
        }
        let (base, loops) = (&expected[0].1, &expected[1].1);
        for (i, (_, f)) in sites.iter().enumerate() {
            assert_eq!(
                loops[i] - base[i],
                100,
                "{f}: the kernel's counts without the loops {base:?}, with them {loops:?}"
            );
        }
    }
    for n in ["0", "100"] {
        // strtol in libc, and ffi_call in libffi (which _ctypes, a
        // dlopen'ed extension, pulls in), named by its path.
        let mut case = py_case(n).opt("-q").opt("-p").opt("libc.so.6:strtol");
        if let Some(f) = &libffi {
            case = case.opt("-p").opt(format!("{}:ffi_call", f.display()));
        }
        let (native, _, r) = compare_but_fd5("py-strtol", case);
        assert!(
            native
                .stdout_str()
                .contains(&format!("ctypes strtol: calls={n} ")),
            "{}",
            native.stdout_str()
        );
        let mut ours = vec![lib_hits(&r, "libc.so.6", "strtol")];
        if let Some(f) = &libffi {
            let file = f.file_name().unwrap().to_str().unwrap();
            ours.push(lib_hits(&r, file, "ffi_call"));
        }
        if let Some((_, counts)) = expected.iter().find(|(m, _)| *m == n) {
            let mut want = vec![counts[0]];
            if libffi.is_some() {
                want.push(counts[2]);
            }
            assert_eq!(
                ours, want,
                "python {n}: strtol (and ffi_call) hits, ours (left) vs the kernel's uprobes"
            );
        } else {
            // No kernel uprobes here: at least the loop's calls (python
            // may call strtol itself, e.g. while it starts).
            let n: u64 = n.parse().unwrap();
            assert!(ours[0] >= n, "python {n}: strtol hits {ours:?}");
        }

        // Every function of libm probed.
        let case = py_case(n).opt("-q").opt("-p").opt("libm.so.6:*");
        let (_, _, r) = compare_but_fd5("py-libm", case);
        let cbrt = lib_hits(&r, "libm.so.6", "cbrt");
        if let Some((_, counts)) = expected.iter().find(|(m, _)| *m == n) {
            assert_eq!(
                cbrt, counts[1],
                "python {n}: cbrt hits, ours vs the kernel's"
            );
        } else {
            assert!(cbrt >= n.parse().unwrap(), "python {n}: cbrt hits {cbrt}");
        }
        let libm_probes = r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["object"]
                    .as_str()
                    .is_some_and(|o| o.ends_with("/libm.so.6"))
            })
            .count();
        assert!(
            libm_probes >= 300,
            "python {n}: only {libm_probes} probes in libm"
        );
    }
}

// ---------------------------------------------------------------------------
// a dlopen'ed object named by its soname, its file having another name

/// The hits of the probes on `symbol` in any object, and the report's
/// warnings (for messages).
fn hits_anywhere(r: &serde_json::Value, symbol: &str) -> (u64, String) {
    let hits = r["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|p| p["symbol"].as_str() == Some(symbol) && p["offset"].as_u64() == Some(0))
        .map(|p| p["hits"].as_u64().expect("hits"))
        .sum();
    (
        hits,
        format!("probes {:#}, warnings {:#}", r["probes"], r["warnings"]),
    )
}

/// As shared objects are installed: the file has a versioned name
/// (libfidelity.so.1.0), and its soname (libfidelity.so, its DT_SONAME)
/// is a symlink to it, through which dlopen finds it. `OBJECT` may be a
/// soname, and for an object mapped at start it is matched as one (e.g.
/// python's `libz.so.1:crc32`, file libz.so.1.2.13); a dlopen'ed object
/// must be too.
#[test]
fn a_dlopened_object_is_found_by_its_soname_when_its_file_is_versioned() {
    if !privileged("shared objects are served in full mode only") {
        return;
    }
    let dir = TempDir::new("fid-soname");
    dir.copy(&library(), "libfidelity.so.1.0", 0o755);
    std::os::unix::fs::symlink("libfidelity.so.1.0", dir.join("libfidelity.so"))
        .expect("symlink libfidelity.so");
    let case = Case::new(path("dlfidelity", Variant::Pie), ["libfidelity.so"])
        .env("LD_LIBRARY_PATH", dir.path.to_str().unwrap())
        .opt("-q")
        .opt("-p")
        .opt("libfidelity.so:fid_parse");
    let (n, _, r) = compare_but_fd5("soname", case);
    assert_eq!(printed(&n, "fid_parse_calls"), FID_PARSE_CALLS);
    let (hits, all) = hits_anywhere(&r, "fid_parse");
    assert_eq!(
        hits, FID_PARSE_CALLS,
        "-p libfidelity.so:fid_parse, the library dlopen'ed by that soname from the file \
         libfidelity.so.1.0: {all}"
    );
}

/// The same with python: _ctypes (dlopen'ed) needs libffi.so.8, a symlink
/// to libffi.so.8.1.2 here.
#[test]
fn python_s_libffi_is_found_by_its_soname() {
    if !privileged("shared objects are served in full mode only") || !common::installed(PY) {
        return;
    }
    let Some(libffi) = python_object("_ctypes", "libffi.so") else {
        let _ = prerequisite(false, "_ctypes of python3.11 without a libffi.so");
        return;
    };
    let soname = "libffi.so.8";
    if !prerequisite(
        libffi.file_name().is_some_and(|f| f != soname) && libffi.with_file_name(soname).exists(),
        &format!("{soname}, a symlink to {}", libffi.display()),
    ) {
        return;
    }
    let case = Case::new(PY, ["-c", PY_EXTENSIONS, "100"])
        .env("PYTHONHASHSEED", "0")
        .opt("-q")
        .opt("-p")
        .opt(format!("{soname}:ffi_call"));
    let (_, _, r) = compare_but_fd5("ffi-soname", case);
    let (hits, all) = hits_anywhere(&r, "ffi_call");
    assert!(
        hits >= 100,
        "-p {soname}:ffi_call, ctypes calling strtol 100 times: {all}"
    );
}
