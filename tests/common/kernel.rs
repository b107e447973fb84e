//! The kernel's own uprobes as ground truth for probe counts.
//!
//! [`KernelProbes`] puts a uprobe (tracefs `uprobe_events`) on the entry of
//! each of a few functions of ELF files, and counts their hits in one
//! process tree: [`KernelProbes::run`] starts a command held just before its
//! `execve`, lets only that process and its descendants (tracefs
//! `set_event_pid` with the `event-fork` option) record events in a private
//! tracefs instance, releases it, and counts the events in the instance's
//! buffer after it exited. Nothing of uprobe-exec is used: a function's file
//! offset comes from `readelf` (binutils) and the ELF reader of
//! `common/elf.rs` (written from the ELF specification).
//!
//! Everything is undone on drop, panics included: the events are disabled
//! and removed, the instance removed, tracefs unmounted if it was mounted
//! here. Probes and instances left by a test process that was killed
//! (named `uetest_PID_…`, PID no longer running) are removed by the next
//! [`KernelProbes::new`].

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{elf, Guard, Output};

/// Prefix of every probe event and instance made here.
const PREFIX: &str = "uetest_";

/// Per-CPU buffer of the instance, KiB: room for about 600 000 events per
/// CPU. A run that overflows it fails (the buffer's `overrun`), it never
/// undercounts silently.
const BUFFER_KB: u32 = 16384;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The file offset of the entry of `function` in the ELF file `object`, as
/// `uprobe_events` wants it. The address comes from `readelf -W --syms`
/// (both symbol tables); a versioned name (`strtol@@GLIBC_2.2.5`) counts as
/// its base name. Panics when the function is missing, ambiguous, or an
/// IFUNC (its symbol's address is the resolver, not the function).
pub fn file_offset(object: &Path, function: &str) -> u64 {
    let out = Command::new("readelf")
        .args(["-W", "--syms", "--dyn-syms"])
        .arg(object)
        .output()
        .unwrap_or_else(|e| panic!("readelf {}: {e}", object.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    // (value, type, default version or unversioned)
    let mut found: Vec<(u64, String, bool)> = Vec::new();
    for l in text.lines() {
        // Num: Value Size Type Bind Vis Ndx Name
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < 8 || !w[0].ends_with(':') || w[6] == "UND" {
            continue;
        }
        let name = w[7];
        let (base, default) = match name.find('@') {
            Some(i) => (&name[..i], name[i..].starts_with("@@")),
            None => (name, true),
        };
        if base != function || !(w[3] == "FUNC" || w[3] == "IFUNC") {
            continue;
        }
        let value = u64::from_str_radix(w[1], 16).expect("readelf value");
        found.push((value, w[3].to_string(), default));
    }
    assert!(
        !found.is_empty(),
        "no function {function} in {} (readelf)",
        object.display()
    );
    assert!(
        found.iter().all(|f| f.1 == "FUNC"),
        "{function} in {} is an IFUNC: its symbol is the resolver",
        object.display()
    );
    let mut values: Vec<u64> = found.iter().filter(|f| f.2).map(|f| f.0).collect();
    if values.is_empty() {
        values = found.iter().map(|f| f.0).collect();
    }
    values.sort_unstable();
    values.dedup();
    assert_eq!(
        values.len(),
        1,
        "{function} in {} has several addresses: {found:?}",
        object.display()
    );
    let addr = values[0];
    let bytes = std::fs::read(object).unwrap_or_else(|e| panic!("{}: {e}", object.display()));
    let seg = elf::load_headers(&bytes)
        .into_iter()
        .find(|p| p.flags & elf::PF_X != 0 && p.vaddr <= addr && addr < p.vaddr + p.filesz)
        .unwrap_or_else(|| {
            panic!(
                "{function} ({addr:#x}) is in no executable PT_LOAD of {}",
                object.display()
            )
        });
    seg.offset + (addr - seg.vaddr)
}

/// The canonical path of the `libc.so.6` this test process runs with (the
/// one python3.11 and bash take from the same cache), from /proc/self/maps.
pub fn libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let p = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .unwrap_or_else(|| panic!("no libc.so.6 in /proc/self/maps:\n{maps}"));
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn write(path: &Path, data: &str) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("writing {data:?} to {}: {e}", path.display()))
}

fn append(path: &Path, line: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("appending {line:?} to {}: {e}", path.display()))
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Uprobes on a few functions, enabled in a private tracefs instance
/// during [`KernelProbes::run`] only.
pub struct KernelProbes {
    tracefs: PathBuf,
    /// Our own mount point of tracefs, when none was mounted.
    mounted: Option<PathBuf>,
    instance: Option<PathBuf>,
    /// Event names (under `uprobes/`), one per site.
    events: Vec<String>,
    /// `OBJECT:FUNCTION` of each site, for messages.
    labels: Vec<String>,
}

impl KernelProbes {
    /// Uprobes on the entries of `sites` (ELF file, function). Err says why
    /// it cannot be done here: not root, or no tracefs with uprobe events.
    pub fn new(sites: &[(&Path, &str)]) -> Result<KernelProbes, String> {
        if !super::is_root() {
            return Err("kernel uprobes need root (tracefs uprobe_events)".into());
        }
        let mut kp = KernelProbes {
            tracefs: PathBuf::new(),
            mounted: None,
            instance: None,
            events: Vec::new(),
            labels: Vec::new(),
        };
        let known = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("uprobe_events").exists());
        kp.tracefs = match known {
            Some(d) => d,
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "{PREFIX}tracefs-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let ok = Command::new("mount")
                    .args(["-t", "tracefs", "nodev"])
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = std::fs::remove_dir(&dir);
                    return Err("tracefs is not mounted and could not be mounted".into());
                }
                kp.mounted = Some(dir.clone());
                if !dir.join("uprobe_events").exists() {
                    return Err("the kernel has no uprobe events (CONFIG_UPROBE_EVENTS)".into());
                }
                dir
            }
        };
        kp.sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}_{n}", std::process::id());
        let uprobe_events = kp.tracefs.join("uprobe_events");
        for (i, (object, function)) in sites.iter().enumerate() {
            let off = file_offset(object, function);
            let clean: String = function
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(24)
                .collect();
            let event = format!("{tag}_{i}_{clean}");
            append(
                &uprobe_events,
                &format!("p:uprobes/{event} {}:{off:#x}\n", object.display()),
            )?;
            kp.events.push(event);
            kp.labels.push(format!("{}:{function}", object.display()));
        }
        let instance = kp.tracefs.join("instances").join(&tag);
        std::fs::create_dir(&instance)
            .map_err(|e| format!("creating the instance {}: {e}", instance.display()))?;
        kp.instance = Some(instance.clone());
        write(&instance.join("tracing_on"), "0")?;
        write(&instance.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        write(&instance.join("options/event-fork"), "1")?;
        Ok(kp)
    }

    /// Removes the instances and events of test processes that are gone.
    fn sweep_stale(&self) {
        let stale = |name: &str| {
            name.strip_prefix(PREFIX)
                .and_then(|r| r.split('_').next())
                .is_some_and(|pid| pid.parse::<u32>().is_ok() && !pid_alive(pid))
        };
        if let Ok(dir) = std::fs::read_dir(self.tracefs.join("instances")) {
            for e in dir.flatten() {
                if stale(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let events =
            std::fs::read_to_string(self.tracefs.join("uprobe_events")).unwrap_or_default();
        for l in events.lines() {
            let Some(name) = l
                .split_whitespace()
                .next()
                .and_then(|w| w.split_once(':'))
                .map(|(_, n)| n)
            else {
                continue;
            };
            if let Some(ev) = name.strip_prefix("uprobes/") {
                if stale(ev) {
                    let _ = append(&self.tracefs.join("uprobe_events"), &format!("-:{name}\n"));
                }
            }
        }
    }

    fn instance(&self) -> &Path {
        self.instance.as_deref().expect("instance")
    }

    fn set_enabled(&self, on: bool) -> Result<(), String> {
        for ev in &self.events {
            let f = self.instance().join(format!("events/uprobes/{ev}/enable"));
            write(&f, if on { "1" } else { "0" })?;
        }
        Ok(())
    }

    /// Runs `argv` with `env` added to ours (stdin /dev/null, stdout and
    /// stderr captured), counting the hits of each site in it and in every
    /// process it forks. Panics on a timeout, or when the buffer overflowed.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        argv: &[S],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Counted {
        let inst = self.instance().to_path_buf();
        write(&inst.join("tracing_on"), "0").unwrap();
        self.set_enabled(false).unwrap();
        write(&inst.join("trace"), "").unwrap(); // clears the buffer
        write(&inst.join("set_event_pid"), "").unwrap();

        // The child says its pid through one pipe and waits on the other,
        // in a pre_exec hook, until its events are on. spawn() only returns
        // once the child exec'd, so a thread of ours does the setting up.
        let (pid_r, pid_w) = super::pipe();
        let (go_r, go_w) = super::pipe();
        let (pid_w_fd, go_r_fd, go_w_fd) = (pid_w.as_raw_fd(), go_r.as_raw_fd(), go_w.as_raw_fd());
        let mut cmd = Command::new(argv[0].as_ref());
        cmd.args(argv[1..].iter().map(AsRef::as_ref))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // In the child, between fork and exec: only async-signal-safe
        // calls on fds of ours, and nothing allocates. The pid is got by a
        // raw system call, since libc's getpid may be a probed function.
        let hold = move || {
            // SAFETY: closes the child's copy of the write end of `go`.
            unsafe { libc::close(go_w_fd) };
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) } as i32;
            let b = pid.to_ne_bytes();
            // SAFETY: writes the 4 bytes of `b` to the pid pipe.
            if unsafe { libc::write(pid_w_fd, b.as_ptr().cast(), 4) } != 4 {
                return Err(std::io::Error::from_raw_os_error(libc::EPIPE));
            }
            let mut go = 0u8;
            loop {
                // SAFETY: reads one byte into `go`.
                let r = unsafe { libc::read(go_r_fd, (&mut go as *mut u8).cast(), 1) };
                if r == 1 {
                    return Ok(());
                }
                if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The setting up failed: do not run the program.
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
        };
        // SAFETY: the hook only makes async-signal-safe calls (above).
        unsafe { cmd.pre_exec(hold) };
        let this = SetUp {
            instance: inst.clone(),
            events: self.events.clone(),
        };
        let setter = std::thread::spawn(move || {
            let mut pid_r = std::fs::File::from(pid_r);
            let mut go_w = std::fs::File::from(go_w);
            let mut b = [0u8; 4];
            pid_r
                .read_exact(&mut b)
                .map_err(|e| format!("the child's pid: {e}"))?;
            let pid = i32::from_ne_bytes(b);
            this.arm(pid)?;
            go_w.write_all(b"g")
                .map_err(|e| format!("releasing the child: {e}"))?;
            Ok::<i32, String>(pid)
        });
        let desc = format!("{cmd:?}");
        let spawned = cmd.spawn();
        drop((pid_w, go_r));
        let armed = setter.join().expect("the setting-up thread panicked");
        let child = match (spawned, armed) {
            (Ok(c), Ok(_)) => c,
            (Err(e), Err(why)) => panic!("{desc}: {why} (spawn: {e})"),
            (Err(e), Ok(_)) => panic!("spawning {desc}: {e}"),
            (Ok(_), Err(why)) => panic!("{desc}: {why}"),
        };
        let out = wait_output(Guard { child: Some(child) }, timeout, &desc);
        write(&inst.join("tracing_on"), "0").unwrap();
        self.set_enabled(false).unwrap();
        write(&inst.join("set_event_pid"), "").unwrap();
        let (counts, pids) = self.counts();
        Counted { out, counts, pids }
    }

    /// The events of each site in the instance's buffer, and the processes
    /// (thread ids) they came from; panics if the buffer lost any.
    fn counts(&self) -> (Vec<u64>, BTreeSet<i32>) {
        let inst = self.instance();
        if let Ok(cpus) = std::fs::read_dir(inst.join("per_cpu")) {
            for cpu in cpus.flatten() {
                let stats = std::fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
                for l in stats.lines() {
                    if let Some(v) = l
                        .strip_prefix("overrun: ")
                        .or_else(|| l.strip_prefix("dropped events: "))
                    {
                        assert_eq!(
                            v.trim(),
                            "0",
                            "the trace buffer lost events ({}): {stats}",
                            cpu.path().display()
                        );
                    }
                }
            }
        }
        let trace = std::fs::read_to_string(inst.join("trace")).expect("reading the trace");
        let keys: Vec<String> = self.events.iter().map(|e| format!(" {e}: ")).collect();
        let mut counts = vec![0u64; self.events.len()];
        let mut pids = BTreeSet::new();
        for l in trace.lines().filter(|l| !l.starts_with('#')) {
            if let Some(i) = keys.iter().position(|k| l.contains(k.as_str())) {
                counts[i] += 1;
                // `COMM-PID [CPU] FLAGS TIME: EVENT: (ADDRESS)`
                let task = l.split(" [").next().unwrap_or("").trim();
                if let Some(pid) = task.rsplit_once('-').and_then(|(_, p)| p.parse().ok()) {
                    pids.insert(pid);
                }
            }
        }
        (counts, pids)
    }

    /// `OBJECT:FUNCTION` of each site.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

/// A run under [`KernelProbes::run`].
#[derive(Debug)]
pub struct Counted {
    pub out: Output,
    /// The hits of each site, in the order of [`KernelProbes::new`].
    pub counts: Vec<u64>,
    /// The tasks (thread ids) the hits came from.
    pub pids: BTreeSet<i32>,
}

/// What the setting-up thread needs.
struct SetUp {
    instance: PathBuf,
    events: Vec<String>,
}

impl SetUp {
    fn arm(&self, pid: i32) -> Result<(), String> {
        write(&self.instance.join("set_event_pid"), &pid.to_string())?;
        for ev in &self.events {
            write(
                &self.instance.join(format!("events/uprobes/{ev}/enable")),
                "1",
            )?;
        }
        write(&self.instance.join("tracing_on"), "1")
    }
}

impl Drop for KernelProbes {
    fn drop(&mut self) {
        if let Some(inst) = self.instance.take() {
            let _ = std::fs::write(inst.join("tracing_on"), "0");
            for ev in &self.events {
                let _ = std::fs::write(inst.join(format!("events/uprobes/{ev}/enable")), "0");
            }
            if let Err(e) = std::fs::remove_dir(&inst) {
                eprintln!("removing the tracefs instance {}: {e}", inst.display());
            }
        }
        for ev in &self.events {
            if let Err(e) = append(
                &self.tracefs.join("uprobe_events"),
                &format!("-:uprobes/{ev}\n"),
            ) {
                eprintln!("{e}");
            }
        }
        if let Some(dir) = self.mounted.take() {
            let _ = Command::new("umount").arg(&dir).status();
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Waits for the child of `guard` (stdout and stderr piped) and collects
/// its output; kills its process group and panics after `timeout`.
fn wait_output(mut guard: Guard, timeout: Duration, desc: &str) -> Output {
    let deadline = Instant::now() + timeout;
    let child = guard.child.as_mut().expect("spawned");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped stderr")),
    ]
    .into_iter()
    .map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    })
    .collect();
    let status = super::wait_status(&mut guard, deadline, timeout, desc);
    let mut bufs = readers.into_iter().map(|h| h.join().unwrap_or_default());
    Output {
        stdout: bufs.next().unwrap(),
        stderr: bufs.next().unwrap(),
        code: status.code(),
        signal: status.signal(),
        fd5: None,
    }
}

/// Timeout of one run under the kernel's uprobes.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Kernel uprobes on `sites`, or None (after `skipped: …`, outside CI) when
/// they cannot be had here.
pub fn probes_or_skip(sites: &[(&Path, &str)]) -> Option<KernelProbes> {
    match KernelProbes::new(sites) {
        Ok(k) => Some(k),
        Err(why) => {
            let _ = super::prerequisite(false, &format!("kernel uprobes: {why}"));
            None
        }
    }
}

/// Runs `argv` natively under the kernel's uprobes `k`, asserting it exited
/// 0; returns its output, the kernel's count of each site and the processes
/// the hits came from (and says them on stderr).
pub fn counts(k: &KernelProbes, argv: &[&str], env: &[(&str, &str)]) -> Counted {
    let run = k.run(argv, env, TIMEOUT);
    assert_eq!(
        run.out.code,
        Some(0),
        "{argv:?} under kernel uprobes: signal {:?}, stderr {}",
        run.out.signal,
        run.out.stderr_str()
    );
    eprintln!(
        "kernel uprobes, {:?}: {:?} in {} processes",
        argv.iter()
            .map(|a| a.lines().next().unwrap_or(""))
            .collect::<Vec<_>>(),
        k.labels().iter().zip(&run.counts).collect::<Vec<_>>(),
        run.pids.len()
    );
    run
}

/// `p` with its links resolved.
pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
