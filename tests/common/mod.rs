//! Helpers for the integration tests: a process runner with a timeout that
//! never leaves a process behind, temp dirs, and native-vs-ours comparison.

#![allow(dead_code, unsafe_code)]

pub mod elf;
pub mod kernel;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The uprobe-exec binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_uprobe-exec");

/// Default timeout of one run.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished process left.
#[derive(Clone, Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// Signal when a signal killed it.
    pub signal: Option<i32>,
    /// What was written to the inherited fd 5, when one was given.
    pub fd5: Option<Vec<u8>>,
}

impl Output {
    /// The shell's view: code, or 128 + signal.
    pub fn status(&self) -> i32 {
        self.code
            .unwrap_or_else(|| 128 + self.signal.expect("code or signal"))
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A spawned child that is killed (with its whole process group) and reaped
/// when dropped, whatever happens to the test.
pub struct Guard {
    pub child: Option<Child>,
}

impl Guard {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }
    pub fn kill_group(&mut self) {
        if let Some(c) = &mut self.child {
            kill_tree(c.id());
        }
    }
}

/// SIGKILL to our child `pid` and to its process group (`spawn_guarded`
/// puts it in its own).
fn kill_tree(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                kill_tree(c.id());
            }
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd` in its own process group, so that a timeout can kill
/// everything it started.
pub fn spawn_guarded(cmd: &mut Command) -> Guard {
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    Guard { child: Some(child) }
}

fn reader(mut r: impl Read + Send + 'static, tx: mpsc::Sender<(u8, Vec<u8>)>, which: u8) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send((which, buf));
    });
}

/// Runs `cmd` to the end with `stdin` (None: /dev/null), capturing stdout and
/// stderr; `after_spawn` fds are closed once it started (write ends given to
/// the child). Kills it and panics after `timeout`.
pub fn run_full(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    after_spawn: Vec<OwnedFd>,
    timeout: Duration,
) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // No core files from the signal tests.
    let no_core = || {
        let lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit only reads `lim`.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
        Ok(())
    };
    // SAFETY: the hook only calls setrlimit, which is async-signal-safe.
    unsafe { cmd.pre_exec(no_core) };
    let desc = format!("{cmd:?}");
    let deadline = Instant::now() + timeout;
    let mut guard = spawn_guarded(&mut cmd);
    drop(after_spawn);
    let child = guard.child.as_mut().expect("spawned");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let (tx, rx) = mpsc::channel();
    reader(child.stdout.take().expect("piped stdout"), tx.clone(), 1);
    reader(child.stderr.take().expect("piped stderr"), tx, 2);
    let status = wait_status(&mut guard, deadline, timeout, &desc);
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok((1, b)) => stdout = Some(b),
            Ok((_, b)) => stderr = Some(b),
            Err(_) => {
                guard.kill_group();
                panic!("timeout after {timeout:?} waiting for the output of {desc} (something still holds its pipes)");
            }
        }
    }
    Output {
        stdout: stdout.unwrap_or_default(),
        stderr: stderr.unwrap_or_default(),
        code: status.code(),
        signal: status.signal(),
        fd5: None,
    }
}

/// Waits for the child of `guard` to end; kills its process group and
/// panics at `deadline` (`timeout` after its start; `desc` names it).
pub fn wait_status(
    guard: &mut Guard,
    deadline: Instant,
    timeout: Duration,
    desc: &str,
) -> std::process::ExitStatus {
    loop {
        let child = guard.child.as_mut().expect("spawned");
        match child.try_wait() {
            Ok(Some(st)) => return st,
            Ok(None) => {}
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
        if Instant::now() > deadline {
            guard.kill_group();
            panic!("timeout after {timeout:?}: {desc}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs with /dev/null as stdin and the default timeout.
pub fn run(cmd: Command) -> Output {
    run_full(cmd, None, Vec::new(), TIMEOUT)
}

/// A pipe whose both ends are close-on-exec (so no other test's child inherits them).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe2")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, mode 0755, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("uprobe-core-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir { path }
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
    /// Copies `src` into the dir with mode `mode`; returns the new path.
    pub fn copy(&self, src: &Path, name: &str, mode: u32) -> PathBuf {
        let dst = self.join(name);
        install(src, &dst, mode);
        dst
    }
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let dst = self.join(name);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.join(format!(".{name}.{n}.tmp"));
        std::fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        install(&tmp, &dst, mode);
        let _ = std::fs::remove_file(&tmp);
        dst
    }
}

/// Creates `dst` as a copy of `src` with `mode`, written by a `cp` process
/// rather than by us. A file we wrote ourselves could not be executed
/// reliably: another test thread that forks while our write fd is open
/// holds a copy of it until its child execs, and execve of the file then
/// fails with ETXTBSY. No process but `cp` ever has `dst` open for writing,
/// and `cp` has exited when this returns.
fn install(src: &Path, dst: &Path, mode: u32) {
    // A fresh inode: an earlier one may still be mapped by a program.
    let _ = std::fs::remove_file(dst);
    let st = Command::new("/bin/cp")
        .arg("--")
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cp {} {}: {e}", src.display(), dst.display()));
    assert!(st.success(), "cp {} {}: {st}", src.display(), dst.display());
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dst.display()));
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub const NOBODY: u32 = 65534;

/// Whether this is a CI run (`CI=true`, as .ci/run is run), where every
/// prerequisite of every test is there and nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks a prerequisite of a test that cannot run without it. Missing,
/// it fails the test under CI (.ci/run installs everything and runs as
/// root); elsewhere it prints `skipped: WHAT` and returns false, and the
/// test leaves out what needs it.
#[must_use]
pub fn prerequisite(present: bool, what: &str) -> bool {
    if !present {
        assert!(
            !in_ci(),
            "a prerequisite is missing under CI=true (CI runs .ci/run, as root, which installs everything): {what}"
        );
        eprintln!("skipped: {what}");
    }
    present
}

/// Whether we are root, as a [`prerequisite`] of the part of a test that
/// needs it (`why`): the full hand-off (PR_SET_MM_MAP, userfaultfd for
/// kernel faults), or running a case as uid 65534 too.
#[must_use]
pub fn privileged(why: &str) -> bool {
    prerequisite(is_root(), &format!("needs root: {why}"))
}

/// Whether `program` (an absolute path) is installed, as a [`prerequisite`].
#[must_use]
pub fn installed(program: &str) -> bool {
    prerequisite(
        Path::new(program).exists(),
        &format!("{program} is not installed"),
    )
}

/// `argv` as a command, run as uid/gid 65534 (through setpriv) when
/// `nobody` and we are root; as ourselves otherwise.
pub fn command<S: AsRef<OsStr>>(nobody: bool, argv: &[S]) -> Command {
    let mut full: Vec<&OsStr> = Vec::new();
    if nobody && is_root() {
        full.extend(
            [
                "/usr/bin/setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
            ]
            .map(OsStr::new),
        );
    }
    full.extend(argv.iter().map(AsRef::as_ref));
    let mut c = Command::new(full[0]);
    c.args(&full[1..]);
    c
}

/// A temp dir that uid 65534 may write to (mode 0777), holding a copy of
/// uprobe-exec that it may run (the build's own may be out of its reach).
pub fn nobody_dir(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let tool = dir.copy(Path::new(BIN), "uprobe-exec", 0o755);
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.path.display()));
    (dir, tool)
}

/// Asserts that a report of a run without privileges (as uid 65534, or as
/// ourselves when we are not root) shows the unprivileged hand-off.
pub fn assert_unprivileged_handoff(what: &str, r: &serde_json::Value) {
    // Not root, we may still get userfaultfd for kernel faults where the
    // sysctl allows it to everyone.
    let sysctl =
        std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    if is_root() || sysctl.trim() == "0" {
        assert_eq!(r["handoff"]["uffd_mode"], "user-mode-only", "{what}: {r}");
    }
    assert_eq!(r["handoff"]["mm_map"], false, "{what}: {r}");
}

/// Runs uprobe-exec with exactly `args` (stdin /dev/null).
pub fn tool<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run(cmd)
}

/// Runs `uprobe-exec OPTS... PROG ARGS...` (stdin /dev/null).
pub fn ours(opts: &[&str], prog: impl AsRef<OsStr>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(opts).arg(prog).args(args);
    run(cmd)
}

/// The children of `pid` (of all its threads), from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new(); // gone
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Every descendant of `pid`, parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// One command line, run natively and under uprobe-exec with the same
/// environment, cwd, stdin and inherited fds.
#[derive(Clone, Debug, Default)]
pub struct Case {
    pub argv: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stdin: Option<Vec<u8>>,
    /// Give the program a pipe as fd 5 (not close-on-exec).
    pub fd5: bool,
    /// Fds closed when the process (ours or the program) starts.
    pub closed: Vec<RawFd>,
    /// Options of uprobe-exec, before PROGRAM.
    pub opts: Vec<OsString>,
    /// The uprobe-exec binary (default: BIN).
    pub tool: Option<PathBuf>,
    /// Run both as uid/gid 65534 (through setpriv) when we are root.
    pub nobody: bool,
    pub timeout: Option<Duration>,
}

impl Case {
    pub fn new<I, S>(prog: impl AsRef<OsStr>, args: I) -> Case
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv = vec![prog.as_ref().to_owned()];
        argv.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        Case {
            argv,
            ..Case::default()
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Case {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn cwd(mut self, p: &Path) -> Case {
        self.cwd = Some(p.to_owned());
        self
    }
    pub fn stdin(mut self, data: Vec<u8>) -> Case {
        self.stdin = Some(data);
        self
    }
    pub fn fd5(mut self) -> Case {
        self.fd5 = true;
        self
    }
    /// Starts both runs with `fd` closed (e.g. `>&-`).
    pub fn closed(mut self, fd: RawFd) -> Case {
        self.closed.push(fd);
        self
    }
    pub fn opt(mut self, o: impl AsRef<OsStr>) -> Case {
        self.opts.push(o.as_ref().to_owned());
        self
    }
    pub fn tool(mut self, p: &Path) -> Case {
        self.tool = Some(p.to_owned());
        self
    }
    pub fn nobody(mut self) -> Case {
        self.nobody = true;
        self
    }

    fn command(&self, full: Vec<OsString>) -> Command {
        let mut cmd = command(self.nobody, &full);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd
    }

    fn go(&self, mut cmd: Command) -> Output {
        let mut after = Vec::new();
        let mut read_end = None;
        if self.fd5 {
            let (r, w) = pipe();
            let raw = {
                use std::os::fd::AsRawFd;
                w.as_raw_fd()
            };
            let to_5 = move || {
                // dup2 onto itself would keep FD_CLOEXEC: clear it then.
                let r = if raw == 5 {
                    // SAFETY: only changes the flags of fd 5, the pipe's end.
                    unsafe { libc::fcntl(5, libc::F_SETFD, 0) }
                } else {
                    // SAFETY: fd 5 of the child (before exec) becomes the
                    // pipe's write end; nothing in the child uses fd 5.
                    unsafe { libc::dup2(raw, 5) }
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the hook only calls fcntl or dup2, async-signal-safe.
            unsafe { cmd.pre_exec(to_5) };
            after.push(w);
            read_end = Some(r);
        }
        let closed = self.closed.clone();
        if !closed.is_empty() {
            let close = move || {
                for &fd in &closed {
                    // SAFETY: the child (before exec) gives these fds up:
                    // nothing in it uses them.
                    unsafe { libc::close(fd) };
                }
                Ok(())
            };
            // SAFETY: the hook only calls close, which is async-signal-safe.
            unsafe { cmd.pre_exec(close) };
        }
        let mut out = run_full(
            cmd,
            self.stdin.clone(),
            after,
            self.timeout.unwrap_or(TIMEOUT),
        );
        if let Some(r) = read_end {
            let mut f = std::fs::File::from(r);
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            out.fd5 = Some(buf);
        }
        out
    }

    pub fn run_native(&self) -> Output {
        self.go(self.command(self.argv.clone()))
    }

    pub fn run_ours(&self) -> Output {
        let mut full = vec![self
            .tool
            .clone()
            .map_or_else(|| OsString::from(BIN), PathBuf::into_os_string)];
        full.extend(self.opts.iter().cloned());
        full.extend(self.argv.iter().cloned());
        self.go(self.command(full))
    }

    /// Runs both ways and asserts identical stdout, stderr, status (and fd 5).
    pub fn compare(&self) -> (Output, Output) {
        let native = self.run_native();
        let ours = self.run_ours();
        let what = format!("{:?}", self.argv);
        assert_same(&what, &native, &ours);
        (native, ours)
    }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().count() > 3000 {
        format!(
            "{}… ({} bytes)",
            s.chars().take(3000).collect::<String>(),
            b.len()
        )
    } else {
        s.into_owned()
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn same_bytes(what: &str, stream: &str, native: &[u8], ours: &[u8]) {
    if native != ours {
        if native.len() > 64 << 10 || ours.len() > 64 << 10 {
            panic!(
                "{what}: {stream} differs: native {} bytes, ours {} bytes, first difference at byte {}",
                native.len(),
                ours.len(),
                first_diff(native, ours)
            );
        }
        panic!(
            "{what}: {stream} differs\n--- native ---\n{}\n--- uprobe-exec ---\n{}",
            show(native),
            show(ours)
        );
    }
}

/// Asserts that `ours` (a uprobe-exec run) behaved exactly like `native`.
pub fn assert_same(what: &str, native: &Output, ours: &Output) {
    same_bytes(what, "stdout", &native.stdout, &ours.stdout);
    same_bytes(what, "stderr", &native.stderr, &ours.stderr);
    // A parent must see the same wait status: an exit code, or death by
    // the same signal.
    assert_eq!(
        (native.code, native.signal),
        (ours.code, ours.signal),
        "{what}: wait status differs (code, signal): native vs uprobe-exec; stderr of ours: {}",
        show(&ours.stderr)
    );
    assert_eq!(
        native.fd5, ours.fd5,
        "{what}: what was written to fd 5 differs"
    );
}

/// Reads and parses a `--report-json` file.
pub fn read_report(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("report {} is not JSON ({e}):\n{text}", path.display()))
}

/// `report["text"][field]` as u64.
pub fn text_field(r: &serde_json::Value, field: &str) -> u64 {
    r["text"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("text.{field} missing or not an integer in {r}"))
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts the run of uprobe-exec failed on its own with `code` and exactly
/// one stderr line starting with `uprobe-exec: `, and nothing on stdout.
pub fn assert_our_error(what: &str, out: &Output, code: i32) {
    let err = out.stderr_str();
    assert_eq!(
        out.code,
        Some(code),
        "{what}: exit status (signal {:?}); stderr: {err}",
        out.signal
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout not empty: {}",
        out.stdout_str()
    );
    assert!(
        err.starts_with("uprobe-exec: "),
        "{what}: stderr does not start with `uprobe-exec: `: {err:?}"
    );
    assert!(
        err.ends_with('\n') && err.lines().count() == 1,
        "{what}: stderr is not exactly one line: {err:?}"
    );
}

/// `--probe-mode jump -p SPEC PROG ARGS` fails for each `(SPEC, WHY)` of
/// `refused`, with our one-line error naming WHY.
pub fn assert_jump_refused(prog: &Path, args: &[&str], refused: &[(&str, &str)]) {
    for (spec, why) in refused {
        let out = ours(&["--probe-mode", "jump", "-p", spec], prog, args);
        assert_our_error(spec, &out, 125);
        assert!(
            out.stderr_str().contains(why),
            "{spec}: {}",
            out.stderr_str()
        );
    }
}

/// `key=value` from the program's own output.
pub fn printed(out: &Output, key: &str) -> u64 {
    let s = out.stdout_str();
    s.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {s}"))
        .parse()
        .unwrap()
}

/// Compares `case` with its native run (see [`Case::compare`]), ours with
/// `--report-json` into a temp dir named after `tag`; returns both runs and
/// the report.
pub fn compare_with_report(tag: &str, case: Case) -> (Output, Output, serde_json::Value) {
    let dir = TempDir::new(tag);
    let rep = dir.join("r.json");
    let (n, o) = case.opt("--report-json").opt(&rep).compare();
    (n, o, read_report(&rep))
}

/// Runs `prog args` natively and under uprobe-exec with `probes` (quiet,
/// with a report), asserts the same output; returns ours and the report.
pub fn probed_report(
    tag: &str,
    prog: &Path,
    args: &[&str],
    probes: &[&str],
) -> (Output, serde_json::Value) {
    probed_report_with(tag, &[], prog, args, probes)
}

/// [`probed_report`] with more options of uprobe-exec.
pub fn probed_report_with(
    tag: &str,
    opts: &[&str],
    prog: &Path,
    args: &[&str],
    probes: &[&str],
) -> (Output, serde_json::Value) {
    let mut case = Case::new(prog, args);
    for o in opts {
        case = case.opt(o);
    }
    case = case.opt("-q");
    for p in probes {
        case = case.opt("-p").opt(p);
    }
    let (_, ours, r) = compare_with_report(tag, case);
    (ours, r)
}

/// The hits of the probe labelled `label` in a report: `SYMBOL` for a probe
/// at a function's entry, `SYMBOL+0xOFFSET` for one inside it.
pub fn hits(r: &serde_json::Value, label: &str) -> u64 {
    let sites = probe_sites(r);
    sites
        .iter()
        .find(|(l, _, _)| l == label)
        .unwrap_or_else(|| panic!("no probe {label} in {sites:?}"))
        .2
}

/// (label, kind, hits) of each probe in a report; the label is as for [`hits`].
pub fn probe_sites(r: &serde_json::Value) -> Vec<(String, String, u64)> {
    r["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|p| {
            let (sym, off) = (p["symbol"].as_str().unwrap(), p["offset"].as_u64().unwrap());
            let label = if off == 0 {
                sym.to_string()
            } else {
                format!("{sym}+{off:#x}")
            };
            (
                label,
                p["kind"].as_str().unwrap().to_string(),
                p["hits"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The hits of the probes on `symbol` (at its entry, offset 0) in the
/// shared object whose file is named `object` (`libc.so.6`): the report's
/// `probes` entries whose `object` path ends with `/OBJECT`, summed when
/// there are several (e.g. one per spec that names it). Panics, listing
/// the probes, when there is none.
pub fn lib_hits(r: &serde_json::Value, object: &str, symbol: &str) -> u64 {
    let suffix = format!("/{object}");
    let probes = r["probes"].as_array().expect("probes");
    let matching: Vec<&serde_json::Value> = probes
        .iter()
        .filter(|p| {
            p["object"].as_str().is_some_and(|o| o.ends_with(&suffix))
                && p["symbol"].as_str() == Some(symbol)
                && p["offset"].as_u64() == Some(0)
        })
        .collect();
    if matching.is_empty() {
        let all: Vec<String> = probes
            .iter()
            .map(|p| {
                format!(
                    "{} {}+{} hits={}",
                    p["object"], p["symbol"], p["offset"], p["hits"]
                )
            })
            .collect();
        panic!("no probe on {symbol} in an object .../{object}; the probes: {all:#?}");
    }
    matching
        .iter()
        .map(|p| p["hits"].as_u64().unwrap_or_else(|| panic!("hits of {p}")))
        .sum()
}
