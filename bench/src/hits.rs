//! Probe hit, per hit, on the same functions of the same sample: unprobed,
//! our int3 probe, the kernel's uprobe on that site (through tracefs, as
//! root), and a ptrace stop (tracer: stop, read registers, continue). The
//! program times its own loop and prints ns per call.

#![allow(unsafe_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Sites: the first instruction the kernel handles differently.
pub const KINDS: [&str; 3] = ["push", "mov", "nop5"];

fn sample() -> PathBuf {
    uprobe_exec_samples::path("probed", uprobe_exec_samples::Variant::Pie)
}

fn ns_per_call(out: &[u8]) -> Option<f64> {
    let s = String::from_utf8_lossy(out);
    s.split_whitespace()
        .find_map(|w| w.strip_prefix("ns_per_call="))
        .and_then(|v| v.parse().ok())
}

fn run(argv: &[&str]) -> Option<f64> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    ns_per_call(&out.stdout)
}

/// Native, unprobed.
pub fn unprobed(kind: &str) -> Option<f64> {
    let s = sample();
    run(&[s.to_str()?, "hitloop", kind, "10000000"])
}

/// Our probe on the site in `mode` (`int3` or `jump`), over `calls` calls.
pub fn probed(ux: &str, kind: &str, mode: &str, calls: &str) -> Option<f64> {
    let s = sample();
    let f = format!("hit_{kind}");
    run(&[
        ux,
        "-q",
        "--probe-mode",
        mode,
        "-p",
        &f,
        s.to_str()?,
        "hitloop",
        kind,
        calls,
    ])
}

/// One probe (`hit_push`, a function entry) hammered by `threads` threads
/// at once, each calling it `calls` times: the mean ns per call per thread,
/// in thread CPU time (`probed hitloop_mt`), unprobed (`ux` None) or under
/// our jump probe.
pub fn hammered(ux: Option<&str>, threads: usize, calls: &str) -> Option<f64> {
    let s = sample();
    let t = threads.to_string();
    let mut argv = match ux {
        Some(ux) => vec![ux, "-q", "--probe-mode", "jump", "-p", "hit_push"],
        None => vec![],
    };
    argv.extend_from_slice(&[s.to_str()?, "hitloop_mt", "push", &t, calls]);
    run(&argv)
}

/// The scaling row: `hammered` with 1 and with 2 threads, unprobed and
/// probed, the four alternating, `runs` times each; their medians
/// (unprobed 1, probed 1, unprobed 2, probed 2).
pub fn scaling(ux: &str, runs: usize) -> Option<[f64; 4]> {
    let mut v: [Vec<f64>; 4] = Default::default();
    for _ in 0..runs {
        for (k, (probe, threads)) in [(None, 1), (Some(ux), 1), (None, 2), (Some(ux), 2)]
            .into_iter()
            .enumerate()
        {
            v[k].push(hammered(probe, threads, "10000000")?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Some([
        median(&mut v[0]),
        median(&mut v[1]),
        median(&mut v[2]),
        median(&mut v[3]),
    ])
}

/// The file offset of a function, as uprobe_events wants it.
fn file_offset(prog: &Path, name: &str) -> Option<u64> {
    let img = uprobe_exec::internals::Image::open(prog).ok()?;
    let f = uprobe_exec::functions(prog, &[name.to_string()])
        .ok()?
        .into_iter()
        .next()?;
    let seg = img
        .segments
        .iter()
        .find(|s| f.addr.0 >= s.vaddr.0 && f.addr.0 < s.vaddr.0 + s.filesz)?;
    Some(seg.offset + (f.addr.0 - seg.vaddr.0))
}

/// The kernel's uprobe on the site, or why it was skipped.
pub fn kernel_uprobe(kind: &str) -> Result<f64, String> {
    let s = sample();
    let event = format!("ux_bench_{kind}");
    with_kernel_uprobe(&s, &format!("hit_{kind}"), &event, "", |_| {
        run(&[s.to_str().unwrap_or(""), "hitloop", kind, "200000"])
            .ok_or_else(|| "no result".to_string())
    })
}

/// Runs `measure` while the kernel's uprobe `uprobes/EVENT` sits on the
/// entry of `function` in `prog`, enabled, with `fetch` (tracefs fetch
/// arguments such as `a=%di`, or empty) recorded at each hit. `measure` gets
/// the tracefs directory. The probe is removed afterwards, and tracefs
/// unmounted if it was mounted here. Err says why it could not be done: not
/// root, no tracefs, no such function, or the kernel refused the probe.
pub fn with_kernel_uprobe<T>(
    prog: &Path,
    function: &str,
    event: &str,
    fetch: &str,
    measure: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, String> {
    with_kernel_probes(prog, function, &[('p', event, fetch)], measure)
}

/// [`with_kernel_uprobe`] with several probes on `function`: (`'p'` for
/// its entry or `'r'` for its return, event name, fetch arguments).
pub fn with_kernel_probes<T>(
    prog: &Path,
    function: &str,
    probes: &[(char, &str, &str)],
    measure: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (tracefs uprobe_events)".into());
    }
    let mut mounted = None;
    let mut tracefs = PathBuf::from("/sys/kernel/tracing");
    if !tracefs.join("uprobe_events").exists() {
        let dir = std::env::temp_dir().join(format!("uprobe-exec-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "nodev"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return Err("tracefs could not be mounted".into());
        }
        tracefs = dir.clone();
        mounted = Some(dir);
    }
    let result = (|| {
        let off = file_offset(prog, function).ok_or("no such function")?;
        let events = tracefs.join("uprobe_events");
        let append = |line: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&events)
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(line.as_bytes())
                })
        };
        let mut added = Vec::new();
        let mut r = Ok(());
        for &(kind, event, fetch) in probes {
            let sep = if fetch.is_empty() { "" } else { " " };
            r = append(&format!(
                "{kind}:uprobes/{event} {}:{off:#x}{sep}{fetch}\n",
                prog.display()
            ))
            .map_err(|e| format!("adding the uprobe: {e}"))
            .and_then(|()| {
                added.push(event);
                std::fs::write(tracefs.join(format!("events/uprobes/{event}/enable")), "1")
                    .map_err(|e| format!("enabling: {e}"))
            });
            if r.is_err() {
                break;
            }
        }
        let r = r.and_then(|()| measure(&tracefs));
        for event in added {
            let _ = std::fs::write(tracefs.join(format!("events/uprobes/{event}/enable")), "0");
            let _ = append(&format!("-:uprobes/{event}\n"));
        }
        r
    })();
    if let Some(dir) = mounted {
        let _ = Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir(&dir);
    }
    result
}

/// A ptrace stop per hit: the sample's `hit_trap` starts with int3; the
/// tracer reads the registers and continues at each stop.
pub fn ptrace_stop() -> Option<f64> {
    let s = sample();
    let mut cmd = Command::new(&s);
    cmd.args(["hitloop", "trap", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let traced = || {
        // SAFETY: PTRACE_TRACEME touches no memory of ours.
        unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        Ok(())
    };
    // SAFETY: the hook only calls ptrace(PTRACE_TRACEME), which is
    // async-signal-safe.
    unsafe { cmd.pre_exec(traced) };
    let mut child = cmd.spawn().ok()?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    loop {
        let mut st = 0;
        // SAFETY: waits for our own traced child, writing `st`.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 || libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            break;
        }
        let sig = libc::WSTOPSIG(st);
        // SAFETY: user_regs_struct is integers: all-zero bytes are valid.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel writes one user_regs_struct into `regs`.
        unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                pid,
                0,
                &mut regs as *mut libc::user_regs_struct,
            )
        };
        let deliver = if sig == libc::SIGTRAP { 0 } else { sig };
        // SAFETY: resumes our stopped child; touches no memory of ours.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, deliver as usize) };
    }
    let out = reader.join().ok()?;
    ns_per_call(&out)
}
