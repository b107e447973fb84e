//! Robustness: fork trees, exec, many threads, exit paths, signals to the
//! tool, eviction storms, hostile input. Nothing lost, nothing hung.

#[path = "common/mod.rs"]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::elf::{self, set_u64};
use common::{
    assert_our_error, descendants, hits, installed, nobody_dir, ours, printed, privileged,
    probed_report as probed, read_report, run, spawn_guarded, Case, TempDir, BIN,
};
use uprobe_exec_samples::{path, Variant};

#[test]
fn fifty_children_on_cold_pages_are_all_counted() {
    for v in [Variant::Pie, Variant::Static] {
        let (out, r) = probed(
            "forktree",
            &path("probed", v),
            &["forktree", "50", "200"],
            &["after_fork"],
        );
        assert_eq!(printed(&out, "children"), 50);
        assert_eq!(hits(&r, "after_fork"), printed(&out, "after_fork"));
        if !privileged("forks are followed, process by process, in full mode") {
            continue;
        }
        assert_eq!(r["processes"], 51, "{v:?}");
        // Process by process: each child made its 200 calls.
        let per = r["per_process"].as_array().expect("per_process");
        assert_eq!(per.len(), 50, "{v:?}: {per:?}");
        assert!(
            per.iter().all(|p| p["hits"]["after_fork"] == 200),
            "{per:?}"
        );
        let mut pids: Vec<i64> = per.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), 50);
    }
}

#[test]
fn bash_running_200_external_commands() {
    let script = "n=0; for i in $(seq 200); do /bin/true; n=$((n+1)); done; echo ran $n";
    let (ours, r) = probed(
        "bash200",
        Path::new("/bin/bash"),
        &["-c", script],
        &["execute_command"],
    );
    assert_eq!(ours.stdout_str(), "ran 200\n");
    assert!(hits(&r, "execute_command") >= 200);
    if privileged("forks are followed in full mode") {
        assert!(
            r["processes"].as_u64().unwrap() >= 201,
            "{}",
            r["processes"]
        );
    }
}

#[test]
fn make_j1_and_j2() {
    if !installed("/usr/bin/make") {
        return;
    }
    let dir = TempDir::new("make");
    let mk = "all: a b c d\n\techo done\n%:\n\t@echo building $@ && /bin/true\n";
    dir.write("Makefile", mk.as_bytes(), 0o644);
    let (_, ours) = Case::new("/usr/bin/make", ["-s", "-j1"])
        .cwd(&dir.path)
        .env("LC_ALL", "C")
        .compare();
    assert_eq!(
        ours.stdout_str(),
        "building a\nbuilding b\nbuilding c\nbuilding d\ndone\n"
    );
    let case = Case::new("/usr/bin/make", ["-s", "-j2"]).cwd(&dir.path);
    let (native, ours) = (case.run_native(), case.run_ours());
    // -j2 may interleave: compare the sorted lines.
    let sorted = |o: &common::Output| {
        let mut l: Vec<String> = o.stdout_str().lines().map(String::from).collect();
        l.sort();
        l
    };
    assert_eq!(native.status(), ours.status());
    assert_eq!(sorted(&native), sorted(&ours));
    assert_eq!(sorted(&ours).len(), 5, "{}", ours.stdout_str());
}

#[test]
fn python_multiprocessing_pool() {
    let dir = TempDir::new("mp");
    let script = "import multiprocessing as mp\n\
def sq(x):\n    return x * x\n\
if __name__ == '__main__':\n    with mp.Pool(4) as p:\n        print(sum(p.map(sq, range(1000))))\n";
    let file = dir.write("mp.py", script.as_bytes(), 0o644);
    let (_, ours) = Case::new("/usr/bin/python3.11", [file.as_os_str()]).compare();
    assert_eq!(ours.stdout_str(), "332833500\n");
}

#[test]
fn sixty_four_threads_on_cold_probed_pages() {
    let (out, r) = probed(
        "t64",
        &path("probed", Variant::Pie),
        &["threads", "64", "20000"],
        &["counted_mt"],
    );
    assert_eq!(hits(&r, "counted_mt"), printed(&out, "counted_mt"));
    assert_eq!(hits(&r, "counted_mt"), 64 * 20000);
}

#[test]
fn exit_paths_keep_status_report_and_counts() {
    let prog = path("probed", Variant::Pie);
    for (mode, status) in [("exitthread", 7), ("abort", 134), ("segv", 139)] {
        let (out, r) = probed(mode, &prog, &[mode, "1234"], &["counted"]);
        assert_eq!(out.status(), status, "{mode}");
        assert_eq!(hits(&r, "counted"), 1234, "{mode}: counts up to the crash");
        if status > 128 {
            assert_eq!(r["exit"]["signal"], status - 128, "{mode}");
        } else {
            assert_eq!(r["exit"]["code"], status, "{mode}");
        }
    }
}

/// Starts uprobe-exec on `probed pause N` and returns it once the program
/// printed "ready", with the program's pid.
fn started_pause(report: &Path, extra: &[&str]) -> (common::Guard, i32) {
    let mut cmd = Command::new(BIN);
    cmd.args(["-q", "-p", "counted", "--report-json"])
        .arg(report)
        .args(extra)
        .arg(path("probed", Variant::Pie))
        .args(["pause", "77"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut g = spawn_guarded(&mut cmd);
    let mut stdout = g.child.as_mut().unwrap().stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("ready") {
        use std::io::Read;
        let mut b = [0u8; 64];
        let n = stdout.read(&mut b).unwrap_or(0);
        assert!(
            n > 0 && Instant::now() < deadline,
            "the program did not get ready: {seen}"
        );
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    // The program: the descendant whose comm is the sample's.
    let program = descendants(g.pid())
        .into_iter()
        .find(|k| {
            std::fs::read_to_string(format!("/proc/{k}/comm"))
                .is_ok_and(|c| c.trim() == "probed-pie")
        })
        .expect("the program among our descendants");
    std::mem::forget(stdout);
    (g, program)
}

#[test]
fn sigkill_from_outside_is_reported_with_counts() {
    let dir = TempDir::new("killed");
    let report = dir.join("r.json");
    let (mut g, program) = started_pause(&report, &[]);
    // SAFETY: killing a process we started.
    unsafe { libc::kill(program, libc::SIGKILL) };
    let st = g.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(st.signal(), Some(9), "we die of the program's signal");
    let r = read_report(&report);
    assert_eq!(r["exit"]["signal"], 9);
    assert_eq!(hits(&r, "counted"), 77);
}

#[test]
fn signals_sent_to_the_tool_reach_the_program() {
    // SIGTERM to uprobe-exec: the program dies of it, the report is written.
    let dir = TempDir::new("term");
    let report = dir.join("r.json");
    let (mut g, _) = started_pause(&report, &[]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(g.pid(), libc::SIGTERM) };
    let st = g.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(st.signal(), Some(15), "we die of the program's signal");
    assert_eq!(read_report(&report)["exit"]["signal"], 15);

    // Ctrl-C: SIGINT to the whole process group; a program that catches it
    // and exits 0 exits 0.
    let spin = path("spin", Variant::Pie);
    let mut cmd = Command::new(BIN);
    cmd.arg(&spin)
        .args(["1000", "--sigint-exit"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let own_group = || {
        // SAFETY: setpgid(2) touches no memory.
        unsafe { libc::setpgid(0, 0) };
        Ok(())
    };
    // SAFETY: the hook only calls setpgid, which is async-signal-safe.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, own_group) };
    let mut g = spawn_guarded(&mut cmd);
    let mut out = g.child.as_mut().unwrap().stdout.take().unwrap();
    let mut seen = String::new();
    while !seen.contains("ticks=") {
        use std::io::Read;
        let mut b = [0u8; 64];
        let n = out.read(&mut b).unwrap_or(0);
        assert!(n > 0, "spin did not start");
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling the process group we created.
    unsafe { libc::kill(-g.pid(), libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let st = g.child.as_mut().unwrap().wait().unwrap();
    assert!(
        rest.ends_with("caught SIGINT\n"),
        "the program's own handler ran: {seen:?} then {rest:?}"
    );
    assert_eq!(st.code(), Some(0), "the program's SIGINT handler exits 0");
}

#[test]
fn eviction_storm_with_four_threads() {
    // How often the workers call is up to the scheduler: the program's own
    // count is the truth, not a native run's.
    let dir = TempDir::new("evict");
    let report = dir.join("r.json");
    let out = Case::new(path("probed", Variant::Pie), ["evict", "10000"])
        .opt("--fault-around")
        .opt("0")
        .opt("-q")
        .opt("--report-json")
        .opt(&report)
        .opt("-p")
        .opt("evict_a")
        .opt("-p")
        .opt("evict_b")
        .run_ours();
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert!(
        out.stdout_str().ends_with("acc=d245d848d9e54a81\n"),
        "{}",
        out.stdout_str()
    );
    let r = read_report(&report);
    let calls = printed(&out, "evict_calls");
    assert_eq!(hits(&r, "evict_a"), calls);
    assert_eq!(hits(&r, "evict_b"), calls);
    let (refaults, faults) = (
        r["text"]["refaults"].as_u64().unwrap(),
        r["text"]["faults"].as_u64().unwrap(),
    );
    // Each cycle drops two pages that the main thread touches right after.
    if privileged("refaults are served (and counted) in full mode") {
        assert!(
            refaults >= 2 * 10000 * 9 / 10 && refaults <= faults,
            "refaults {refaults}, faults {faults}"
        );
    }
}

#[test]
fn exec_and_the_monitor_holds_no_leaked_fds() {
    // A shell running 300 commands, then pausing: the monitor's fds stay few.
    let mut cmd = Command::new(BIN);
    cmd.args([
        "/bin/bash",
        "-c",
        "for i in $(seq 300); do /bin/true; done; echo x; sleep 1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut g = spawn_guarded(&mut cmd);
    let mut out = g.child.as_mut().unwrap().stdout.take().unwrap();
    let mut b = [0u8; 2];
    use std::io::Read;
    out.read_exact(&mut b).expect("the shell's line");
    // The 300 commands ran; the shell now sleeps, under its monitor.
    assert_eq!(&b, b"x\n");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
        .unwrap()
        .count();
    let threads = std::fs::read_dir(format!("/proc/{}/task", g.pid()))
        .unwrap()
        .count();
    assert!(fds < 20, "the monitor holds {fds} fds after 300 forks");
    assert!(threads <= 4, "the monitor runs {threads} threads");
    assert!(g.child.as_mut().unwrap().wait().unwrap().success());
}

#[test]
fn the_kernel_reads_not_yet_served_text() {
    // write(1, func, 64) makes the kernel read text no thread has touched.
    // Compared with a native run, which reads the file's bytes.
    let (_, ours) = Case::new(path("probed", Variant::Pie), ["selfread", "3"]).compare();
    assert_eq!(ours.stdout.len(), 64 + "\nacc=38\n".len());
    // And as an ordinary user (user-mode-only: the text is installed eagerly).
    let (dir, tool) = nobody_dir("selfread");
    let prog = dir.copy(&path("probed", Variant::Pie), "probed", 0o755);
    Case::new(&prog, ["selfread", "3"])
        .tool(&tool)
        .nobody()
        .compare();
}

#[test]
fn malformed_elf_corpus_is_refused_with_126() {
    let dir = TempDir::new("corpus");
    let good = std::fs::read(path("hello", Variant::Pie)).unwrap();
    let phoff = elf::u64_at(&good, elf::E_PHOFF) as usize;
    let load: Vec<elf::Phdr> = elf::load_headers(&good);
    let interp = elf::interp_header(&good).expect("hello-pie has PT_INTERP");
    let patched = |at: usize, v: u64| {
        let mut b = good.clone();
        set_u64(&mut b, at, v);
        b
    };
    let mut corpus: Vec<(&str, Vec<u8>)> = Vec::new();
    // Shorter than the ELF magic is no ELF file: /bin/sh runs it, as execvp
    // does (core.rs, script_without_shebang_runs_with_sh).
    for n in [4usize, 16, 40, 63] {
        corpus.push(("truncated header", good[..n].to_vec()));
    }
    corpus.push(("headers cut off", good[..phoff + 20].to_vec()));
    corpus.push((
        "program headers past EOF",
        patched(elf::E_PHOFF, good.len() as u64 + 100),
    ));
    corpus.push((
        "segment past EOF",
        patched(load[1].at + elf::P_OFFSET, good.len() as u64),
    ));
    let mut b = patched(load[1].at + elf::P_VADDR, load[0].vaddr);
    set_u64(&mut b, load[1].at + elf::P_OFFSET, load[0].offset);
    corpus.push(("overlapping PT_LOAD", b));
    // PT_LOADs out of order and any p_align run as natively (core.rs,
    // unusual_load_layouts_run_as_natively).
    corpus.push((
        "p_filesz > p_memsz",
        patched(load[1].at + elf::P_FILESZ, load[1].memsz + 4096),
    ));
    corpus.push(("absurd size", patched(load[1].at + elf::P_MEMSZ, 1 << 50)));
    corpus.push(("entry outside text", patched(elf::E_ENTRY, 0x7fff_0000)));
    corpus.push((
        "PT_INTERP past EOF",
        patched(interp.at + elf::P_OFFSET, good.len() as u64 + 10),
    ));
    // A PT_INTERP pointing nowhere is 127: see core.rs, missing_interpreter_127.
    let ioff = interp.offset as usize;
    // Relative to the cwd, the dir: the name must fit in PT_INTERP.
    dir.write("not-elf.txt", b"hello\n", 0o755);
    let mut b = good.clone();
    let t = b"not-elf.txt\0";
    b[ioff..ioff + t.len()].copy_from_slice(t);
    corpus.push(("PT_INTERP is not an ELF", b));
    let mut b = good.clone();
    b[ioff + interp.filesz as usize - 1] = b'x';
    corpus.push(("PT_INTERP not NUL-terminated", b));
    let mut b = good.clone();
    b[elf::EI_CLASS] = 1;
    corpus.push(("32-bit", b));
    let mut b = good.clone();
    b[elf::EI_DATA] = 2;
    corpus.push(("big-endian", b));
    // libm is part of libc6, which every test program needs.
    let libm = std::fs::read("/usr/lib/x86_64-linux-gnu/libm.so.6").expect("libm.so.6");
    assert_eq!(
        elf::u64_at(&libm, elf::E_ENTRY),
        0,
        "libm.so.6 has no entry point"
    );
    corpus.push(("shared library without entry", libm));
    for (i, (what, bytes)) in corpus.iter().enumerate() {
        let file = dir.write(&format!("bad{i}"), bytes, 0o755);
        let mut cmd = Command::new(BIN);
        cmd.arg(&file).current_dir(&dir.path);
        assert_our_error(what, &run(cmd), 126);
    }
    eprintln!("malformed files tried: {}", corpus.len());
}

#[test]
fn fuzz_parse_resolve_plan() {
    // Mutated ELF files through the whole of parse, symbols, resolve and
    // plan, in-process: none may panic. Deterministic, so CI runs the same
    // inputs every time; UPROBE_FUZZ_CASES runs more.
    use uprobe_exec::internals::probes;
    use uprobe_exec::internals::Draft;
    use uprobe_exec::internals::Image;
    use uprobe_exec::internals::Symbols;
    let cases: u64 = std::env::var("UPROBE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let dir = TempDir::new("fuzz");
    let seeds = [
        std::fs::read(path("hello", Variant::Pie)).unwrap(),
        std::fs::read(path("hello", Variant::Static)).unwrap(),
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut outcomes = [0u64; 2];
    for case in 0..cases {
        let seed = &seeds[(case % 2) as usize];
        let mut b = seed.clone();
        let flips = 1 + rnd() % 8;
        for _ in 0..flips {
            // Mostly the headers, where the loader looks.
            let at = if rnd() % 4 == 0 {
                rnd() as usize % b.len()
            } else {
                rnd() as usize % 1024.min(b.len())
            };
            b[at] = rnd() as u8;
        }
        if rnd() % 16 == 0 {
            b.truncate(rnd() as usize % b.len());
        }
        let file = dir.write("case", &b, 0o755);
        let result = std::panic::catch_unwind(|| {
            let Ok(image) = Image::open(&file) else {
                return false;
            };
            let syms = Symbols::read(&image);
            let requests: Vec<probes::Request> = ["main", "*", "0x1000"]
                .into_iter()
                .map(|s| probes::Request::parse(s).unwrap())
                .collect();
            let sites = probes::resolve(&image, &syms, &requests, true)
                .map(|r| r.places)
                .unwrap_or_default();
            // The jump-safety analysis decodes whole functions: hostile too.
            let mut check = probes::JumpCheck::default();
            let jumps = sites
                .iter()
                .filter(|s| check.check(&image, s).is_ok())
                .count();
            let Ok(draft) = Draft::new(
                image,
                None,
                &uprobe_exec::internals::Aslr::current(),
                uprobe_exec::internals::TextBacking::File,
                false,
            ) else {
                return false;
            };
            let bias = draft.program.bias.0;
            let patches: Vec<(u64, Vec<u8>)> = sites
                .iter()
                .map(|s| (s.addr.0.wrapping_add(bias), vec![0xcc; 1 + jumps % 5]))
                .collect();
            let _plan = draft.finish(&patches);
            true
        });
        match result {
            Ok(planned) => outcomes[usize::from(planned)] += 1,
            Err(_) => panic!("case {case} panicked; input kept at {}", file.display()),
        }
    }
    eprintln!(
        "fuzz: {cases} inputs, {} refused, {} planned",
        outcomes[0], outcomes[1]
    );
    // Inputs that all fail to parse would test nothing past the parser.
    assert!(
        outcomes[0] > 0 && outcomes[1] >= cases / 10,
        "fuzz: {} refused, {} planned of {cases}",
        outcomes[0],
        outcomes[1]
    );
}

#[test]
fn hostile_probe_specs() {
    let s = path("probed", Variant::Pie);
    for spec in [
        "counted+0xffffffffffffffff",
        "counted+18446744073709551616",
        "0xffffffffffffffff",
        "0x",
        "+5",
        "[",
        "*+1",
    ] {
        assert_our_error(spec, &ours(&["-p", spec], &s, &["basic", "1"]), 125);
    }
}

#[test]
fn ten_thousand_probes() {
    // Every instruction of the first 10^4 of python3.11's functions, by
    // address, as objdump decodes them (binutils comes with cc, which builds
    // the samples).
    let py = "/usr/bin/python3.11";
    let first = uprobe_exec::functions(py, &[]).expect("python3.11's functions");
    let first = first.first().expect("python3.11 has function symbols");
    let dump = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={:#x}", first.addr.0))
        .arg(py)
        .output()
        .expect("objdump");
    assert!(dump.status.success(), "objdump: {dump:?}");
    let text = String::from_utf8_lossy(&dump.stdout);
    let addrs: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains(":\t"))
        .filter(|l| {
            !["(bad)", "int3", "ud2", "hlt"]
                .iter()
                .any(|b| l.contains(b))
        })
        .filter_map(|l| l.trim().split(':').next().map(|a| format!("0x{a}")))
        .take(10_000)
        .collect();
    assert_eq!(addrs.len(), 10_000);
    let dir = TempDir::new("many");
    let report = dir.join("r.json");
    let mut c = Command::new(BIN);
    // Addresses inside functions take int3s (auto mode places jumps only).
    c.args(["-q", "--unsafe", "--probe-mode", "int3", "--report-json"])
        .arg(&report);
    for a in &addrs {
        c.args(["-p", a]);
    }
    c.args([py, "-c", "print(sum(range(100)))"]);
    let out = run(c);
    assert_eq!(out.code, Some(0), "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "4950\n");
    let r = read_report(&report);
    let sites = common::probe_sites(&r);
    assert_eq!(sites.len(), 10_000);
    // Python's start-up runs some of those functions: the int3s counted.
    let hit = sites.iter().filter(|(_, _, h)| *h > 0).count();
    assert!(hit > 0, "none of 10^4 probes was hit");
}

#[test]
fn bad_symbol_tables_are_survived() {
    // Section headers do not matter to execve: the program still runs. Asking
    // for a probe reads the symbol table, which must fail cleanly if at all.
    let dir = TempDir::new("badsym");
    let good = std::fs::read(path("hello", Variant::Pie)).unwrap();
    let symtab = elf::section_header(&good, elf::SHT_SYMTAB).expect("hello has a .symtab");
    let sym_off = elf::u64_at(&good, symtab + elf::SH_OFFSET) as usize;
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = good.clone();
    elf::set_u32(&mut b, symtab + elf::SH_LINK, 9999);
    variants.push(("string table index out of range", b));
    let mut b = good.clone();
    set_u64(&mut b, symtab + elf::SH_OFFSET, 1 << 40);
    variants.push(("symbols past the end of the file", b));
    let mut b = good.clone();
    set_u64(&mut b, symtab + elf::SH_SIZE, u64::MAX);
    variants.push(("absurd symbol table size", b));
    let mut b = good.clone();
    for k in 1..40 {
        let st = sym_off + k * elf::SYM_SIZE;
        elf::set_u32(&mut b, st + elf::ST_NAME, 0xffff_fff0);
        elf::set_u16(&mut b, st + elf::ST_SHNDX, 0xfff0);
    }
    variants.push(("symbol names and section indices out of range", b));
    let mut b = good.clone();
    elf::set_u16(&mut b, elf::E_SHNUM, 0xffff);
    variants.push(("absurd section count", b));
    for (i, (what, bytes)) in variants.iter().enumerate() {
        let file = dir.write(&format!("badsym{i}"), bytes, 0o755);
        let (native, _) = Case::new(&file, ["x"]).compare();
        let out = ours(&["-q", "-p", "main"], &file, &["x"]);
        match out.code {
            // The symbol table read well enough: the program ran as natively.
            Some(0) => assert_eq!(out.stdout, native.stdout, "{what}"),
            Some(125) => assert_our_error(what, &out, 125),
            _ => panic!("{what}: {:?} {}", out.code, out.stderr_str()),
        }
    }
}

#[test]
fn files_the_helpers_write_run_while_other_threads_fork() {
    // A file written in-process could not be executed while another thread
    // forked: its child held the write fd until it exec'd (ETXTBSY).
    let dir = TempDir::new("etxtbsy");
    let bytes = std::fs::read(path("hello", Variant::Static)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forkers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut c = Command::new("/bin/true");
                    // SAFETY: an empty pre_exec hook (it makes std fork, not vfork).
                    unsafe {
                        use std::os::unix::process::CommandExt;
                        c.pre_exec(|| Ok(()));
                    }
                    let _ = c.status();
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for i in 0..100 {
        let f = dir.write(&format!("prog{i}"), &bytes, 0o755);
        if let Err(e) = Command::new(&f).stdout(Stdio::null()).status() {
            failures.push(e.to_string());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in forkers {
        t.join().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of 100 failed: {:?}",
        failures.len(),
        failures.first()
    );
}

#[test]
fn every_fd_limit_gives_the_program_or_a_clear_error() {
    // Each step of a start opens fds: at each limit from 5 to 24 open
    // files, either the program runs as natively, or we fail saying which
    // step ran out of fds, never with a step's consequence (a process gone,
    // a broken pipe) and never by hanging.
    for limit in 5u64..=24 {
        let mut cmd = Command::new(BIN);
        cmd.args(["-q", "--", "/bin/echo", "ran"]);
        use std::os::unix::process::CommandExt;
        let limit_fds = move || {
            // SAFETY: close_range only closes the child's own fds above
            // stderr, between fork and exec; async-signal-safe.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit reads `r`; async-signal-safe.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure only makes the two calls above.
        unsafe { cmd.pre_exec(limit_fds) };
        let o = run(cmd);
        let err = o.stderr_str();
        if o.code == Some(0) {
            assert_eq!(o.stdout_str(), "ran\n", "limit {limit}");
            continue;
        }
        assert!(
            matches!(o.code, Some(125 | 126))
                && err.starts_with("uprobe-exec: ")
                && err.lines().count() == 1
                && err.contains("Too many open files"),
            "limit {limit}: code {:?}, stderr {err:?}",
            o.code
        );
    }
}

#[test]
fn a_sandbox_that_refuses_unshare_gets_a_clear_error() {
    // The watchdog takes an fd table of its own with unshare(CLONE_FILES)
    // once it has forked the stage. A seccomp filter that refuses unshare
    // (some container profiles do) must give an error naming that step,
    // with the program not run, rather than a wrong one.
    let dir = TempDir::new("nounshare");
    let filter = dir.write(
        "deny_unshare.py",
        br#"import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
# load the syscall number; unshare (272 on x86-64) -> EPERM; else allow
prog = stmt(0x20, 0) + jump(0x15, 272, 0, 1) + stmt(0x06, 0x00050000 | 1) + stmt(0x06, 0x7fff0000)
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0
os.execv(sys.argv[1], sys.argv[1:])
"#,
        0o644,
    );
    let mut cmd = Command::new("/usr/bin/python3.11");
    cmd.arg(&filter).args([BIN, "-q", "--", "/bin/echo", "ran"]);
    let o = run(cmd);
    assert_eq!(o.code, Some(125), "{}", o.stderr_str());
    assert!(
        o.stderr_str().contains("unshare") && o.stderr_str().contains("Operation not permitted"),
        "{}",
        o.stderr_str()
    );
    assert!(o.stdout.is_empty(), "the program ran: {}", o.stdout_str());
}
