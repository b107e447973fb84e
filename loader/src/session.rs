//! The public session API: find the program, plan it, fork the stage, serve
//! its faults, and report.
//!
//! The fork happens on the session's own monitor thread, which then serves
//! faults until the program ends: the program's `PR_SET_PDEATHSIG` is tied
//! to the thread that forked it, so that thread must outlive the program.

#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rustix::io::Errno;
use uprobe_runtime::{Server, Uffd, UffdMode, PAGE_SIZE};

use crate::elf::Image;
use crate::error::{ElfError, Error, Result};
use crate::handoff::{self, MmMap, Params};
use crate::plan::ProbeArea;
use crate::plan::{Draft, Plan, Reservation, TextBacking};
use crate::probes::{self, Kind, Location, ProbeError, Request, Resolution, Site};
use crate::report::{Exit, Handoff, Report, Text};
use crate::report::{ProbeHits, ProcessHits};
use crate::stack::{self, at};
use crate::stage::{self, StageMsg, StagePlan};
use crate::symbols::Symbols;
use uprobe_runtime::area::{self, CodeLayout, Shared};

/// A program to run under uprobe-exec, like [`std::process::Command`].
#[derive(Clone, Debug)]
#[must_use]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Option<Vec<OsString>>,
    /// Parsed when given; an error is reported by `spawn`, in its turn.
    probes: Vec<Result<Request, ProbeError>>,
    unsafe_addrs: bool,
    /// Signals (bit n-1 for signal n) blocked when the program starts; by
    /// default the spawning thread's mask.
    blocked: Option<u64>,
    /// The program starts with SIGPIPE ignored rather than at its default.
    sigpipe_ignored: bool,
    fault_around: usize,
    prefetch: bool,
    perf_map: bool,
    mode: ProbeMode,
}

pub use crate::probes::ProbeMode;

/// Pages installed with each faulting page by default (see
/// [`Command::fault_around`]; chosen from `uprobe-exec-bench`'s figures).
pub const DEFAULT_FAULT_AROUND: usize = 15;

impl Command {
    /// A command for `program`, looked up in `PATH` when it has no slash.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: None,
            probes: Vec::new(),
            unsafe_addrs: false,
            blocked: None,
            sigpipe_ignored: false,
            fault_around: DEFAULT_FAULT_AROUND,
            prefetch: true,
            perf_map: false,
            mode: ProbeMode::Auto,
        }
    }

    /// Adds a probe: `SYMBOL`, `SYMBOL+OFFSET`, `0xADDR` or a glob (see
    /// [`Location`]). A spec that does not parse makes [`Command::spawn`]
    /// fail, when it comes to it.
    pub fn probe(mut self, spec: impl Into<String>) -> Command {
        self.probes.push(Request::parse(spec));
        self
    }

    /// Adds a probe at a typed location.
    pub fn probe_at(mut self, location: Location) -> Command {
        self.probes.push(Ok(location.into()));
        self
    }

    /// The signals blocked when the program starts (bit n-1 for signal n),
    /// for a caller that blocks signals itself to forward them (as the CLI
    /// does). By default the program gets the spawning thread's mask.
    pub fn blocked_signals(mut self, mask: u64) -> Command {
        self.blocked = Some(mask);
        self
    }

    /// Whether the program starts with SIGPIPE ignored, as execve would
    /// leave it for a caller that was started with it ignored. By default
    /// it gets the default action: a Rust program's runtime ignores SIGPIPE
    /// for itself, so the caller's own disposition says nothing. (The CLI
    /// records the disposition it was started with and passes it on.)
    pub fn sigpipe_ignored(mut self, ignored: bool) -> Command {
        self.sigpipe_ignored = ignored;
        self
    }

    /// How many neighbouring pages (not yet present, adjacent in the
    /// program) are installed with each faulting page, in one copy. 0 serves
    /// strictly the pages touched.
    pub fn fault_around(mut self, pages: usize) -> Command {
        self.fault_around = pages;
        self
    }

    /// Installs the rest of the text in the background once the program
    /// runs (on by default), in every process of it, so later first touches
    /// find their pages present, and so do debuggers, `/proc/PID/mem` and
    /// core dumps, which the fault server cannot serve.
    pub fn prefetch(mut self, on: bool) -> Command {
        self.prefetch = on;
        self
    }

    /// Writes the program's functions to `/tmp/perf-PID.map` once it runs,
    /// for profilers (perf, samply, bpftrace) that cannot read symbols from
    /// anonymous text. The file is left in place (perf reads it at report time).
    pub fn perf_map(mut self, on: bool) -> Command {
        self.perf_map = on;
        self
    }

    /// How probe sites are displaced (default: jump where safe).
    pub fn probe_mode(mut self, mode: ProbeMode) -> Command {
        self.mode = mode;
        self
    }

    /// Allows `0xADDR` probes outside every known function.
    pub fn allow_unsafe_addresses(mut self, yes: bool) -> Command {
        self.unsafe_addrs = yes;
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Command {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Command {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets the whole environment (`KEY=VALUE` strings); by default the
    /// monitor's own is passed on.
    pub fn env_list<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, env: I) -> Command {
        self.env = Some(env.into_iter().map(|a| a.as_ref().to_owned()).collect());
        self
    }

    /// Starts the program. Returns once its text is registered and being
    /// served; the program runs on while the [`Session`] is alive.
    pub fn spawn(&self) -> Result<Session> {
        let resolved = resolve(&self.program, &self.args)?;
        let env = self.env.clone().unwrap_or_else(|| {
            std::env::vars_os()
                .map(|(k, v)| {
                    let mut s = k;
                    s.push("=");
                    s.push(v);
                    s
                })
                .collect()
        });
        let program = Image::open(&resolved.elf)?;
        let interp = match &program.interp {
            Some(p) => Some(Image::open(p).map_err(|e| match e {
                ElfError::Open { path, source }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Error::NoInterpreter {
                        program: resolved.elf.clone(),
                        interp: path,
                    }
                }
                ElfError::Open { path, source } => Error::CannotRun {
                    path: resolved.elf.clone(),
                    reason: format!("its interpreter {}: {source}", path.display()),
                },
                ElfError::Malformed { path, reason } => Error::CannotRun {
                    path: resolved.elf.clone(),
                    reason: format!("its interpreter {} is unusable: {reason}", path.display()),
                },
            })?),
            None => None,
        };
        let mut resolution = Resolution::default();
        if !self.probes.is_empty() {
            let syms = Symbols::read(&program);
            let mut resolver = probes::Resolver::new(&program, &syms, self.unsafe_addrs);
            for request in &self.probes {
                resolver.add(request.clone()?)?;
            }
            resolution = resolver.finish();
        }
        let warnings = std::mem::take(&mut resolution.warnings);
        // Without the right to follow forks (user-mode-only userfaultfd), the
        // text goes in whole before the program starts, from its file.
        let eager = matches!(Uffd::create(), Ok((_, UffdMode::UserModeOnly)));
        let backing = if self.perf_map && !eager {
            TextBacking::Anon
        } else {
            TextBacking::File
        };
        let mut backing_limits = Vec::new();
        if self.perf_map && backing == TextBacking::Anon {
            backing_limits.push(
                "--perf-map: the text is anonymous memory, whose map file profilers read; so \
                 madvise(MADV_FREE or MADV_WIPEONFORK) on it succeeds where natively it fails \
                 with EINVAL, and processes that outlive the first one get the rest of the text \
                 installed only if we knew of them"
                    .to_string(),
            );
        }
        let draft = Draft::new(program, interp, &crate::layout::Aslr::current(), backing)?;
        let mut skipped = Vec::new();
        let (mut plan, probes) = Probes::build(draft, resolution, self.mode, &mut skipped)?;
        let mut warnings = warnings;
        if !skipped.is_empty() {
            let shown: Vec<String> = skipped
                .iter()
                .take(5)
                .map(|(site, why)| format!("{site} ({why})"))
                .collect();
            warnings.push(format!(
                "{} of the matched functions not probed: a jump does not fit there, and an int3 \
                 can kill or change the program, so --probe-mode auto places none \
                 (--probe-mode int3 does): {}{}",
                skipped.len(),
                shown.join(", "),
                if skipped.len() > 5 { ", …" } else { "" }
            ));
        }
        let perf_map = self.perf_map.then(|| {
            let area = probes.as_ref().map(|p| {
                let r = &p.area.reservation;
                (r.addr, r.len, "[uprobe-exec probes]".to_string())
            });
            crate::perfmap::lines(
                &Symbols::read(&plan.program.image),
                plan.program.bias,
                area.as_slice(),
            )
        });
        if eager {
            // Profilers read symbols from a file mapping's path: with
            // --perf-map the copy the program runs from is a file left for them.
            let dir = if self.perf_map {
                Some(
                    perf_copy_dir()
                        .map_err(|e| Error::sys("creating a directory for --perf-map", e))?,
                )
            } else {
                None
            };
            if let Some(copy) = plan.install_text(dir.as_deref())? {
                backing_limits.push(format!(
                    "--perf-map: the program runs from a copy left at {} for profilers to read \
                     its symbols from (delete it when done); unlike the sealed copy of other \
                     unprivileged runs, a writer to that copy could change text not yet run",
                    copy.display()
                ));
            }
        }
        let (tx, rx) = mpsc::channel();
        let signals = Signals {
            blocked: self.blocked.unwrap_or_else(current_mask),
            sigpipe_ignored: self.sigpipe_ignored,
        };
        let serving = (self.fault_around, self.prefetch);
        let args = resolved
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program_name = resolved.elf.display().to_string();
        let thread = std::thread::Builder::new()
            .name("uprobe-exec-monitor".into())
            .spawn(move || monitor(plan, probes, resolved, env, signals, serving, tx))
            .map_err(|e| Error::sys("starting the monitor thread", e))?;
        match rx.recv() {
            Ok(Ok(pid)) => {
                let mut warnings = warnings;
                if let Some(text) = perf_map {
                    if let Err(e) = crate::perfmap::write(pid, &text) {
                        warnings.push(format!("no perf map for process {pid}: {e}"));
                    }
                }
                Ok(Session {
                    pid,
                    thread,
                    program: program_name,
                    args,
                    warnings,
                    limits: backing_limits,
                })
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::sys(
                    "the monitor thread",
                    std::io::Error::other("ended before the program started"),
                )),
            },
        }
    }
}

/// The functions of `program` (found as [`Command::new`] finds it) whose
/// names match any of `patterns` (globs or exact names; all when empty),
/// sorted by address — what `uprobe-exec --list` prints.
pub fn functions(
    program: impl AsRef<OsStr>,
    patterns: &[String],
) -> Result<Vec<crate::symbols::Function>> {
    let resolved = resolve(program.as_ref(), &[])?;
    let image = Image::open(&resolved.elf)?;
    let syms = Symbols::read(&image);
    let pats: Vec<glob::Pattern> = patterns
        .iter()
        .map(|p| {
            glob::Pattern::new(p).map_err(|e| {
                Error::Probe(probes::ProbeError::BadSpec {
                    spec: p.clone(),
                    why: e.to_string(),
                })
            })
        })
        .collect::<Result<_>>()?;
    let mut out: Vec<crate::symbols::Function> = syms
        .all()
        .iter()
        .filter(|f| {
            pats.is_empty()
                || pats.iter().any(|p| {
                    p.matches(&f.name) || f.demangled.as_deref().is_some_and(|d| p.matches(d))
                })
        })
        .map(|f| crate::symbols::Function {
            unprobeable: probes::unprobeable(&image, &syms, f).map(|u| u.detail),
            ..f.clone()
        })
        .collect();
    out.dedup_by(|a, b| a.addr == b.addr && a.display_name() == b.display_name());
    Ok(out)
}

/// A running program.
#[must_use = "a dropped session detaches: the program runs on, served, but its report is lost"]
pub struct Session {
    pid: i32,
    thread: JoinHandle<Result<Outcome>>,
    program: String,
    args: Vec<String>,
    warnings: Vec<String>,
    /// Limits that come from the options (added to the hand-off's).
    limits: Vec<String>,
}

impl Session {
    /// Warnings from resolving the probes (e.g. `--unsafe` addresses).
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The program's process id.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the program to end and returns the report.
    pub fn wait(self) -> Result<Report> {
        let out = match self.thread.join() {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::sys(
                    "the monitor thread",
                    std::io::Error::other("panicked; the program was killed"),
                ))
            }
        };
        let mut warnings = self.warnings;
        if out.exit == Exit::Signal(libc::SIGTRAP) && !out.probes.is_empty() {
            warnings.push(if out.stray_traps > 0 {
                "the program executed an int3 of its own (not a probe) and died of SIGTRAP, as it would natively".into()
            } else {
                "the program died of SIGTRAP at a probe: SIGTRAP was blocked, or the program had replaced \
                 uprobe-exec's SIGTRAP handler, when the probe was hit"
                    .into()
            });
        }
        if out.guard_refused > 0 {
            warnings.push(format!(
                "refused {} rt_sigaction(SIGTRAP) call(s) with EPERM: the calling process was not \
                 dumpable and its memory could not be read, so its handler could not be recorded \
                 (it would have replaced the probes' handler)",
                out.guard_refused
            ));
        }
        Ok(Report {
            program: self.program,
            args: self.args,
            exit: out.exit,
            probes: out.probes,
            per_process: out.per_process,
            text: Text::from(out.stats),
            processes: out.stats.processes,
            handoff: {
                let mut h = out.handoff;
                h.limits.extend(self.limits);
                h
            },
            warnings,
        })
    }
}

/// What the monitor thread returns.
struct Outcome {
    exit: Exit,
    stats: uprobe_runtime::TextStats,
    handoff: Handoff,
    probes: Vec<ProbeHits>,
    per_process: Vec<ProcessHits>,
    stray_traps: u64,
    guard_refused: u64,
}

/// The probes of one session: sites, their counters and the probe area.
struct Probes {
    /// What was asked for (the report repeats each site's spec).
    requests: Vec<Request>,
    /// The sites, in site-number order (slot, counter and row column `i`
    /// are site `i`'s).
    sites: Vec<Site>,
    /// The probe area's shared memory: stray traps, the program's own
    /// SIGTRAP action, the hit counters (see `uprobe_runtime::area`).
    counters: Arc<Shared>,
    area: ProbeArea,
    /// The seccomp filter guarding the trap handler.
    filter: Vec<libc::sock_filter>,
    /// `rt_sigaction(SIGTRAP)` calls the guard refused (caller unreadable).
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Probes {
    /// Chooses how each place is displaced, decides where the probe area
    /// goes, generates its code for that address, maps it, and makes the
    /// plan with the patched pages. Without sites, just the plan.
    ///
    /// The patches are fixed before the program starts, so a page that is
    /// dropped and faults again gets the same jump: no thread can be inside
    /// the displaced bytes of a page that was not there. (A probe added to a
    /// page already served would have to be an int3: a thread could be
    /// stopped inside the bytes a jump displaces.)
    fn build(
        draft: Draft,
        resolution: Resolution,
        mode: ProbeMode,
        skipped: &mut Vec<(String, String)>,
    ) -> Result<(Plan, Option<Probes>)> {
        if resolution.places.is_empty() {
            return Ok((draft.finish(&[]), None));
        }
        let chosen = probes::choose(&draft.program.image, &resolution, mode)?;
        skipped.extend(chosen.skipped);
        let sites = chosen.sites;
        if sites.is_empty() {
            return Ok((draft.finish(&[]), None));
        }
        let counters = Arc::new(
            Shared::new(sites.len(), area::ROWS)
                .map_err(|e| Error::sys("creating the hit counters", e))?,
        );
        let traps = sites.iter().filter(|s| s.kind == Kind::Int3).count();
        let layout = CodeLayout::new(sites.len(), traps);
        let room = draft.probe_room(&layout)?;
        let code = probes::generate(
            &draft.program.image,
            draft.program.bias,
            &sites,
            &layout,
            room.addr,
            &counters,
        )?;
        let area = draft.map_probe_area(room, &layout, &code.bytes)?;
        let plan = draft.finish(&code.patches);
        let filter = if traps > 0 {
            crate::guard::filter(area.reservation.addr, area.reservation.end())
        } else {
            Vec::new()
        };
        let probes = Probes {
            requests: resolution.requests,
            sites,
            counters,
            area,
            filter,
            refused: Arc::default(),
        };
        Ok((plan, Some(probes)))
    }

    /// Whether any site traps (and so needs the trap handler and its guard).
    fn traps(&self) -> bool {
        self.sites.iter().any(|s| s.kind == Kind::Int3)
    }

    /// What the guard thread needs.
    fn guard_target(&self) -> crate::guard::Target {
        crate::guard::Target {
            shared: Arc::clone(&self.counters),
            handler: self.area.handler,
            refused: Arc::clone(&self.refused),
        }
    }

    /// Gives each process of the program its row of hit counters, when it
    /// first touches its row page (see the fault server): rows in the order
    /// processes first hit a probe, until none is left.
    fn row_assigner(&self, first_pid: i32) -> impl FnMut(usize, u32) -> Option<(u64, u64)> + Send {
        let counters = Arc::clone(&self.counters);
        let mut next = 0usize;
        move |m, tid| {
            if next == counters.layout().rows {
                return None;
            }
            let pid = if m == 0 {
                first_pid as u64
            } else {
                tgid_of(tid).unwrap_or(u64::from(tid))
            };
            let row = next;
            next += 1;
            counters.set_row_pid(row, pid);
            Some((pid, counters.row_addr(row)))
        }
    }

    /// The rows given to processes, with their pids (rows are given in
    /// order, so the first free one ends them).
    fn rows(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.counters.layout().rows)
            .map(|r| (r, self.counters.row_pid(r)))
            .take_while(|&(_, pid)| pid != 0)
    }

    /// All hits of site `i`: every process's row, plus the overflow counter.
    fn total(&self, i: usize) -> u64 {
        let rows: u64 = self.rows().map(|(r, _)| self.counters.row_hits(r, i)).sum();
        rows + self.counters.overflow(i)
    }

    /// Hits per process (pid), from the rows the trap handler fills.
    fn per_process(&self) -> Vec<ProcessHits> {
        let labels: Vec<String> = self.sites.iter().map(Site::label).collect();
        self.rows()
            .map(|(r, pid)| {
                let hits = (0..self.sites.len())
                    .map(|i| (i, self.counters.row_hits(r, i)))
                    .filter(|&(_, c)| c > 0)
                    .map(|(i, c)| (labels[i].clone(), c))
                    .collect();
                ProcessHits {
                    pid: pid as i64,
                    hits,
                }
            })
            .collect()
    }

    fn hits(&self) -> Vec<ProbeHits> {
        self.sites
            .iter()
            .enumerate()
            .map(|(i, s)| ProbeHits {
                spec: self.requests[s.place.request].spec.clone(),
                symbol: s.place.symbol.clone(),
                offset: s.place.offset,
                address: format!("{:#x}", s.place.addr.0),
                hits: self.total(i),
                kind: s.kind.name().into(),
            })
            .collect()
    }
}

/// The ELF to load and the argv/execfn it gets.
struct Resolved {
    elf: PathBuf,
    argv: Vec<Vec<u8>>,
    execfn: Vec<u8>,
}

/// The shell execvp(3) runs a file with when execve(2) says ENOEXEC
/// (glibc's `_PATH_BSHELL`).
const SHELL: &str = "/bin/sh";

/// Finds the program as execvp(3) would, and follows `#!` lines as execve(2)
/// does. A file that is neither ELF nor `#!` (execve: ENOEXEC) runs as
/// `/bin/sh FILE ARGS...`, as execvp, env(1) and nohup(1) run it.
fn resolve(program: &OsStr, args: &[OsString]) -> Result<Resolved> {
    let path = if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        if !p.exists() {
            return Err(Error::NoSuchFile { path: p });
        }
        p
    } else {
        let path_var =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path_var)
            .map(|d| d.join(program))
            .find(|p| p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok())
            .ok_or_else(|| Error::NotFound {
                program: program.to_string_lossy().into_owned(),
            })?
    };
    let args = args.iter().map(|a| a.as_bytes().to_vec());
    let argv = std::iter::once(program.as_bytes().to_vec())
        .chain(args.clone())
        .collect();
    if let Some(r) = follow(&path, argv)? {
        return Ok(r);
    }
    // glibc's execvp: argv[0] gives way to the shell and the file found.
    let argv = [
        SHELL.as_bytes().to_vec(),
        path.as_os_str().as_bytes().to_vec(),
    ]
    .into_iter()
    .chain(args)
    .collect();
    follow(Path::new(SHELL), argv)?.ok_or_else(|| Error::CannotRun {
        path: SHELL.into(),
        reason: "not an ELF file".into(),
    })
}

/// What execve makes of a file from its first bytes.
enum Format {
    /// `#!`: the interpreter and its optional argument.
    Script(PathBuf, Option<Vec<u8>>),
    /// The ELF magic: the ELF parser decides whether it can run.
    Elf,
    /// Neither: execve fails with ENOEXEC.
    Other,
}

/// Follows the `#!` lines from `path`, run with `argv`, to an ELF file, as
/// execve does. `None` where execve would fail with ENOEXEC.
fn follow(path: &Path, mut argv: Vec<Vec<u8>>) -> Result<Option<Resolved>> {
    let execfn = path.as_os_str().as_bytes().to_vec();
    let mut elf = path.to_owned();
    // The kernel follows at most 4 levels of interpreters.
    for _ in 0..5 {
        check_runnable(&elf)?;
        let (interp, optarg) = match format(&elf)? {
            Format::Elf => return Ok(Some(Resolved { elf, argv, execfn })),
            Format::Other => return Ok(None),
            Format::Script(interp, optarg) => (interp, optarg),
        };
        if matches!(std::fs::metadata(&interp), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            return Err(Error::NoInterpreter {
                program: elf,
                interp,
            });
        }
        let mut next = vec![interp.as_os_str().as_bytes().to_vec()];
        next.extend(optarg);
        next.push(elf.as_os_str().as_bytes().to_vec());
        next.extend(argv.drain(..).skip(1));
        argv = next;
        elf = interp;
    }
    Err(Error::CannotRun {
        path: elf,
        reason: "too many levels of #! interpreters".into(),
    })
}

/// Refuses what a userland loader cannot run faithfully.
fn check_runnable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::CannotRun {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if meta.is_dir() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "is a directory".into(),
        });
    }
    if !meta.is_file() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    if rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_err() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "permission denied (no execute permission)".into(),
        });
    }
    let mode = meta.permissions().mode();
    let refuse = |what: &str| Error::CannotRun {
        path: path.into(),
        reason: format!(
            "it is {what}; a user-space loader cannot grant the privileges execve would, \
             so uprobe-exec refuses rather than run it with the wrong ones"
        ),
    };
    if mode & 0o4000 != 0 {
        return Err(refuse("set-user-ID"));
    }
    if mode & 0o2010 == 0o2010 {
        return Err(refuse("set-group-ID"));
    }
    match rustix::fs::getxattr(path, "security.capability", &mut [0u8; 0][..]) {
        Ok(_) | Err(Errno::RANGE) => {
            return Err(refuse("given file capabilities (security.capability)"))
        }
        Err(_) => {}
    }
    Ok(())
}

/// Whether `path` is a `#!` script (and its interpreter and optional
/// argument), an ELF file, or neither.
fn format(path: &Path) -> Result<Format> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error::CannotRun {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        return Ok(Format::Elf);
    }
    if !head.starts_with(b"#!") {
        return Ok(Format::Other);
    }
    let line = head[2..].split(|&c| c == b'\n').next().unwrap_or(&[]);
    let line = line.trim_ascii();
    let (interp, rest) = match line.iter().position(|c| c.is_ascii_whitespace()) {
        Some(i) => (&line[..i], line[i..].trim_ascii()),
        None => (line, &[][..]),
    };
    if interp.is_empty() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "its #! line names no interpreter".into(),
        });
    }
    let optarg = (!rest.is_empty()).then(|| rest.to_vec());
    Ok(Format::Script(
        PathBuf::from(OsString::from_vec(interp.to_vec())),
        optarg,
    ))
}

/// The signal state the program starts with (besides the dispositions,
/// which the stage resets as execve does).
#[derive(Clone, Copy, Debug)]
struct Signals {
    /// Blocked signals, bit n-1 for signal n.
    blocked: u64,
    /// SIGPIPE stays ignored.
    sigpipe_ignored: bool,
}

/// The calling thread's blocked signals, bit n-1 for signal n.
fn current_mask() -> u64 {
    // SAFETY: reading the calling thread's mask into a local, then testing it.
    unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
        (1..=64)
            .filter(|&sig| libc::sigismember(&m, sig) == 1)
            .fold(0u64, |acc, sig| acc | 1 << (sig - 1))
    }
}

/// Whether `PR_SET_MM_MAP` is allowed: CAP_SYS_RESOURCE or CAP_CHECKPOINT_RESTORE.
fn may_set_mm_map() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 24 | 1 << 40) != 0
}

/// The monitor's auxv, from which the program's is made.
fn own_auxv() -> Vec<(u64, u64)> {
    let raw = std::fs::read("/proc/self/auxv").unwrap_or_default();
    raw.chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(c[8..].try_into().unwrap_or_default()),
            )
        })
        .take_while(|&(k, _)| k != at::NULL)
        .collect()
}

/// The monitor's close-on-exec fds: closed in the child, as execve would.
fn cloexec_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            // SAFETY: F_GETFD on an fd number only reads its flags; a closed
            // number gives -1.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC != 0
        })
        .collect()
}

/// Gives the calling (monitor) thread a higher scheduling priority where we
/// may: a program's threads wait on it for every fault and every dropped
/// page, and with hundreds of busy threads it would otherwise wait for its
/// turn behind all of them. Unprivileged, the priority stays as it is.
fn raise_priority() {
    // SAFETY: setpriority on the calling thread (who = 0) only.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, -20);
    }
}

/// The process a thread belongs to.
fn tgid_of(tid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A new private directory under the temp dir for the copy a profiler reads.
fn perf_copy_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = [0u8; 6];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let tag: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let dir = std::env::temp_dir().join(format!(
        "uprobe-exec-perf-{}-{tag}",
        rustix::process::getuid().as_raw()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Our own main thread's `[stack]` mapping: (start, top).
fn own_stack() -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter(|l| l.ends_with("[stack]"))
        .find_map(handoff::parse_range)
}

/// Where the program's stack mapping starts at hand-off: the kernel maps
/// 128 KiB below the initial stack contents, within `RLIMIT_STACK`
/// (fs/exec.c `setup_arg_pages`).
fn stack_keep_from(top: u64, base: u64) -> u64 {
    const EXPAND: u64 = 128 << 10;
    let used = top - (base & !(PAGE_SIZE - 1));
    let lim = rustix::process::getrlimit(rustix::process::Resource::Stack)
        .current
        .map_or(u64::MAX, |l| l & !(PAGE_SIZE - 1));
    top - (used + EXPAND).min(lim.max(used))
}

/// The monitor thread: forks the stage, then serves faults until the program ends.
fn monitor(
    plan: Plan,
    probes: Option<Probes>,
    r: Resolved,
    env: Vec<OsString>,
    signals: Signals,
    (fault_around, prefetch): (usize, bool),
    started: mpsc::Sender<Result<i32>>,
) -> Result<Outcome> {
    match start(&plan, probes.as_ref(), &r, &env, signals) {
        Ok((pid, pidfd, uffd, mode, handoff, listener, watchdog)) => {
            let guard = match (listener, &probes) {
                (Some(l), Some(p)) => Some(crate::guard::Guard::start(l, p.guard_target())?),
                _ => None,
            };
            raise_priority();
            let mut server = Server::new(plan.image.clone(), uffd);
            server.set_fault_around(fault_around);
            server.set_prefetch(prefetch);
            let keeper = watchdog.sender();
            server.on_new_process(move |fd| keeper.hold_fd(fd));
            if let Some(p) = &probes {
                server.set_row_page(p.area.cache, p.row_assigner(pid));
            }
            let mut result: Result<()> = Ok(());
            if plan.text_installed() {
                server.installed_up_front();
            } else if mode == UffdMode::UserModeOnly {
                result = server.populate_all().map_err(Error::from);
            }
            // Let the child go on to the program.
            let _ = started.send(Ok(pid));
            if result.is_ok() {
                result = release(&pidfd.1).and_then(|()| {
                    // A panic here must not leave the program hanging on its next fault.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        server.run(pidfd.0.as_fd())
                    }))
                    .unwrap_or(Err(uprobe_runtime::ServeError::Panicked))
                    .map_err(Error::from)
                });
            }
            // The first process ended; forks may live on, some perhaps not
            // known to us yet, and nobody serves faults from now on.
            if result.is_ok() && !plan.text_installed() && server.forked() {
                result = match plan.backing {
                    // The text file gets every page: the kernel serves them
                    // from it, in any process.
                    TextBacking::File => plan
                        .fill_text()
                        .map_err(|e| Error::sys("filling the text file", e)),
                    // No file to fill: install what is left in the
                    // processes we know of (README: known limits).
                    TextBacking::Anon => server.populate_all().map_err(Error::from),
                };
                server.wake_all();
            }
            if let Err(e) = result {
                let _ = rustix::process::pidfd_send_signal(&pidfd.0, rustix::process::Signal::KILL);
                let _ = watchdog.status();
                return Err(e);
            }
            let exit = watchdog.status()?;
            watchdog.detach();
            drop(guard);
            let hits = probes.as_ref().map(Probes::hits).unwrap_or_default();
            let per_process = probes.as_ref().map(Probes::per_process).unwrap_or_default();
            let stray_traps = probes.as_ref().map_or(0, |p| p.counters.stray());
            let guard_refused = probes
                .as_ref()
                .map_or(0, |p| p.refused.load(std::sync::atomic::Ordering::Relaxed));
            Ok(Outcome {
                exit,
                stats: server.stats(),
                handoff,
                probes: hits,
                per_process,
                stray_traps,
                guard_refused,
            })
        }
        Err(e) => {
            let _ = started.send(Err(e));
            Err(Error::sys(
                "starting the program",
                std::io::Error::other("failed (reported to the caller)"),
            ))
        }
    }
}

/// Tells the child it may start the program.
fn release(sock: &OwnedFd) -> Result<()> {
    rustix::io::write(sock, &[1]).map_err(|e| Error::sys("releasing the program", e))?;
    Ok(())
}

/// The monitor's side of the watchdog (see `watchdog`).
struct Watchdog {
    pid: i32,
    sock: OwnedFd,
    /// Dropping it tells the watchdog we are gone.
    alive: Option<OwnedFd>,
}

/// Sends uffds to the watchdog from the fault server's thread.
struct Keeper(RawFd);

impl Keeper {
    fn hold_fd(&self, fd: std::os::fd::BorrowedFd<'_>) {
        send_fd(
            self.0,
            crate::watchdog::WatchMsg {
                kind: crate::watchdog::HOLD,
                pid: 0,
                status: 0,
            },
            Some(fd.as_raw_fd()),
        );
    }
}

fn send_fd(sock: RawFd, msg: crate::watchdog::WatchMsg, fd: Option<RawFd>) {
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: (&msg as *const crate::watchdog::WatchMsg).cast_mut().cast(),
        iov_len: std::mem::size_of::<crate::watchdog::WatchMsg>(),
    };
    // SAFETY: msghdr and the control buffer are plain data on our stack, sized
    // for one fd; sendmsg only reads them.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if let Some(fd) = fd {
            hdr.msg_control = cbuf.as_mut_ptr().cast();
            hdr.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
        libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL);
    }
}

impl Watchdog {
    /// The next message from the watchdog (blocking); None if it died.
    fn next(&self) -> Option<crate::watchdog::WatchMsg> {
        let mut m = crate::watchdog::WatchMsg::default();
        loop {
            // SAFETY: reading one plain struct from our socket.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    (&mut m as *mut crate::watchdog::WatchMsg).cast(),
                    std::mem::size_of::<crate::watchdog::WatchMsg>(),
                    0,
                )
            };
            if n == std::mem::size_of::<crate::watchdog::WatchMsg>() as isize {
                return Some(m);
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
    }

    /// Waits for the program's wait status, which the watchdog (its parent) reports.
    fn status(&self) -> Result<Exit> {
        loop {
            match self.next() {
                Some(m) if m.kind == crate::watchdog::EXITED => {
                    let st = m.status;
                    return Ok(if libc::WIFSIGNALED(st) {
                        Exit::Signal(libc::WTERMSIG(st))
                    } else {
                        Exit::Code(libc::WEXITSTATUS(st))
                    });
                }
                Some(_) => continue,
                None => {
                    return Err(Error::sys(
                        "waiting for the program",
                        std::io::Error::other("the watchdog died"),
                    ))
                }
            }
        }
    }

    fn hold(&self, uffd: &Uffd) {
        self.sender().hold_fd(uffd.as_fd());
    }

    fn sender(&self) -> Keeper {
        Keeper(self.sock.as_raw_fd())
    }

    /// The session ended normally: processes that outlive the program live on.
    fn detach(&self) {
        send_fd(
            self.sock.as_raw_fd(),
            crate::watchdog::WatchMsg {
                kind: crate::watchdog::DETACH,
                pid: 0,
                status: 0,
            },
            None,
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the pipe ends the watchdog (killing the program unless
        // detached); then reap it.
        drop(self.alive.take());
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
    }
}

type Started = (
    i32,
    (OwnedFd, OwnedFd),
    Uffd,
    UffdMode,
    Handoff,
    Option<OwnedFd>,
    Watchdog,
);

/// Forks the stage and receives its uffd. Returns (pid, (pidfd, socket), uffd, mode, handoff).
fn start(
    plan: &Plan,
    probes: Option<&Probes>,
    r: &Resolved,
    env: &[OsString],
    signals: Signals,
) -> Result<Started> {
    let stack_vma = own_stack().ok_or_else(|| {
        Error::sys(
            "finding our own [stack] mapping",
            std::io::Error::other("not in /proc/self/maps"),
        )
    })?;
    let stack_pad = plan.aslr.stack_pad();
    let blob = handoff::blob();
    let blob_len = (blob.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let blob_res = Reservation::anywhere(blob_len, PAGE_SIZE, 0)
        .map_err(|e| Error::sys("reserving the hand-off page", e))?;

    let prog = &plan.program;
    let mut auxv = own_auxv();
    let set = |auxv: &mut Vec<(u64, u64)>, k: u64, v: u64| match auxv
        .iter_mut()
        .find(|(key, _)| *key == k)
    {
        Some(e) => e.1 = v,
        None => auxv.push((k, v)),
    };
    let phdr = prog.image.phdr.map_or(0, |p| prog.bias.apply(p).0);
    set(&mut auxv, at::PHDR, phdr);
    set(&mut auxv, at::PHENT, u64::from(prog.image.phentsize));
    set(&mut auxv, at::PHNUM, u64::from(prog.image.phnum));
    set(
        &mut auxv,
        at::BASE,
        plan.interp.as_ref().map_or(0, |i| i.reservation.addr),
    );
    set(&mut auxv, at::ENTRY, prog.entry().0);
    set(&mut auxv, at::FLAGS, 0);
    set(&mut auxv, at::SECURE, 0);
    let mut random = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
    let envb: Vec<Vec<u8>> = env.iter().map(|e| e.as_bytes().to_vec()).collect();

    let (sock_parent, sock_child) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("creating the stage socket", e))?;

    let prog_fd = prog.image.file.as_raw_fd();
    let interp_fd = plan.interp.as_ref().map(|i| i.image.file.as_raw_fd());
    // Created before the list of fds the program must not inherit.
    let (alive_r, alive_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::sys("creating the watchdog's pipe", e))?;
    let (wsock, wsock_child) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("creating the watchdog's socket", e))?;
    let close: Vec<RawFd> = cloexec_fds()
        .into_iter()
        .filter(|&fd| fd != prog_fd && Some(fd) != interp_fd && fd != sock_child.as_raw_fd())
        .chain([sock_child.as_raw_fd()])
        .collect();
    let close_after_map: Vec<RawFd> = interp_fd.into_iter().collect();
    let close_first = [
        sock_parent.as_raw_fd(),
        alive_r.as_raw_fd(),
        alive_w.as_raw_fd(),
        wsock.as_raw_fd(),
        wsock_child.as_raw_fd(),
    ];
    let mm_map_ok = may_set_mm_map();
    let gadget = handoff::vdso().and_then(|(a, b)| handoff::find_exit_gadget(b, a));

    let mut keep = plan.reserved();
    let mut stack_plan = None;
    // The stage trims our [stack] mapping itself; the blob leaves it alone.
    keep.push(stack_vma);
    keep.push((blob_res.addr, blob_res.end()));
    if let Some(p) = probes {
        keep.push((p.area.reservation.addr, p.area.reservation.end()));
        keep.push(p.counters.range());
    }
    // Build the stack until the monitor's mappings stop changing under us
    // (building it may itself map memory).
    let mut unmap = Vec::new();
    let mut image = None;
    for _ in 0..4 {
        let now = handoff::monitor_mappings(&keep)
            .map_err(|e| Error::sys("reading /proc/self/maps", e))?;
        if image.is_some() && now == unmap {
            break;
        }
        unmap = now;
        let below = Params::size(unmap.len());
        let mut st = stack::build(
            stack_vma.1,
            &r.argv,
            &envb,
            &r.execfn,
            &auxv,
            random,
            stack_pad,
            below,
        );
        let keep_from = stack_keep_from(stack_vma.1, st.base);
        stack_plan = Some(crate::stage::StackPlan {
            vma: stack_vma,
            keep_from,
            exec: prog.image.exec_stack,
        });
        let code: Vec<&crate::elf::Segment> =
            prog.image.segments.iter().filter(|s| s.exec).collect();
        let data: Vec<&crate::elf::Segment> =
            prog.image.segments.iter().filter(|s| s.write).collect();
        let b = prog.bias.0;
        let mm_map = mm_map_ok.then(|| MmMap {
            start_code: code.first().map_or(0, |s| b + s.vaddr.0),
            end_code: code.last().map_or(0, |s| b + s.vaddr.0 + s.filesz),
            start_data: data.first().map_or(plan.brk, |s| b + s.vaddr.0),
            end_data: data.last().map_or(plan.brk, |s| b + s.vaddr.0 + s.filesz),
            start_brk: plan.brk,
            brk: plan.brk,
            start_stack: st.sp,
            arg_start: st.arg_start,
            arg_end: st.arg_end,
            env_start: st.env_start,
            env_end: st.env_end,
            auxv: st.auxv_addr as *mut u64,
            auxv_size: st.auxv_bytes as u32,
            exe_fd: prog_fd as u32,
        });
        let params = Params {
            entry: plan.start().0,
            sp: st.sp,
            unmap: &unmap,
            mm_map,
            exe_fd: Some(prog_fd),
            gadget,
            blob: (blob_res.addr, blob_res.len),
        };
        params.write(&mut st.bytes[..below], st.base);
        image = Some(st);
    }
    let st = image.expect("built at least once");

    let mut text: Vec<(u64, u64)> = if plan.text_installed() {
        Vec::new()
    } else {
        plan.text
            .iter()
            .map(|t| (t.start, t.end() - t.start))
            .collect()
    };
    // Each process's row page is answered by the monitor (see the server).
    if let Some(p) = probes {
        text.push((p.area.cache, PAGE_SIZE));
    }
    // SAFETY: building a sigset_t in a local with the libc helpers.
    let sigmask = unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut m);
        for sig in 1..=64 {
            if signals.blocked & (1 << (sig - 1)) != 0 {
                libc::sigaddset(&mut m, sig);
            }
        }
        m
    };
    let sp = StagePlan {
        sock: sock_child.as_raw_fd(),
        sigmask,
        sigpipe_ignored: signals.sigpipe_ignored,
        maps: &plan.maps,
        text: &text,
        stack: stack_plan.expect("planned with the stack image"),
        watch_drops: plan.backing == TextBacking::Anon,
        stack_image: &st.bytes,
        stack_image_at: st.base,
        blob_at: (blob_res.addr, blob_res.len),
        blob,
        params_at: st.base,
        close: &close,
        close_first: &close_first,
        close_after_map: &close_after_map,
        // The watchdog fills in its own pid.
        monitor: 0,
        comm: {
            let base = r.execfn.rsplit(|&c| c == b'/').next().unwrap_or(&[]);
            let mut c = [0u8; 16];
            let n = base.len().min(15);
            c[..n].copy_from_slice(&base[..n]);
            c
        },
        trap: probes
            .filter(|p| p.traps())
            .map(|p| (p.area.handler, p.area.restorer)),
        seccomp: probes
            .map(|p| p.filter.as_slice())
            .filter(|f| !f.is_empty()),
        text_name: crate::vma::anon_name("text", &plan.program.image.path),
    };

    // SAFETY: the child runs only watchdog::run, which makes system calls
    // and never returns; the parent goes on as usual.
    let wpid = unsafe { libc::fork() };
    if wpid < 0 {
        return Err(Error::sys("fork", std::io::Error::last_os_error()));
    }
    if wpid == 0 {
        // SAFETY: we are the freshly forked child, and every address in `sp`
        // was reserved before the fork.
        unsafe { crate::watchdog::run(&sp, alive_r.as_raw_fd(), wsock_child.as_raw_fd()) }
    }
    drop((sock_child, alive_r, wsock_child));
    drop(blob_res);
    let watchdog = Watchdog {
        pid: wpid,
        sock: wsock,
        alive: Some(alive_w),
    };
    let first = watchdog.next();
    let pid = match first {
        Some(m) if m.kind == crate::watchdog::STARTED => m.pid,
        Some(m) if m.kind == crate::watchdog::FORK_FAILED => {
            return Err(Error::sys(
                "fork",
                std::io::Error::from_raw_os_error(m.status),
            ))
        }
        _ => {
            return Err(Error::sys(
                "starting the watchdog",
                std::io::Error::other("it died"),
            ))
        }
    };
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| Error::sys("pidfd_open", e))?;

    let (msg, mut fds) = match receive(&sock_parent) {
        Ok(x) => x,
        Err(e) => {
            let _ = watchdog.status();
            return Err(e);
        }
    };
    if msg.step != 0 {
        let _ = watchdog.status();
        let (step, errno) = stage::describe_failure(&msg);
        return Err(Error::Stage { step, errno });
    }
    if fds.is_empty() {
        let _ = watchdog.status();
        return Err(Error::Stage {
            step: "receiving the userfaultfd".into(),
            errno: Errno::BADMSG,
        });
    }
    let fd = fds.remove(0);
    let listener = fds.pop();
    let mode = if msg.mode == 1 {
        UffdMode::UserModeOnly
    } else {
        UffdMode::Full
    };
    let mut limits = Vec::new();
    if mode == UffdMode::UserModeOnly {
        limits.push(
            "unprivileged (vm.unprivileged_userfaultfd=0): userfaultfd runs in user-mode-only mode, \
             which cannot follow forks, so the whole text was written to a sealed file before the \
             program started (no lazy serving, no refault counts), and writers to the program file \
             are not refused (the program runs from a sealed copy taken at start)"
                .to_string(),
        );
    }
    if probes.is_some() {
        limits.push(
            "probe sites read as what was patched in (a jmp to a trampoline or an int3) in \
             debuggers, /proc/PID/mem and core dumps"
                .into(),
        );
    }
    if let Some(at) = plan.program.displaced_from {
        limits.push(format!(
            "the program was loaded at {:#x} in the mmap area instead of {at:#x}, where the kernel \
             would have put it: uprobe-exec's own mappings (its heap, under setarch -R) are there",
            plan.program.reservation.addr
        ));
    }
    if !mm_map_ok {
        limits.push(
            "without CAP_SYS_RESOURCE, /proc/self/exe still names uprobe-exec and /proc/self/cmdline, \
             /proc/self/auxv and the start of brk are not the program's (so a debugger attaching, or \
             reading a core, finds uprobe-exec's file and cannot tell where a PIE program is loaded)"
                .to_string(),
        );
    }
    if gadget.is_none() {
        limits.push(
            "no clean exit sequence in the vDSO: one anonymous page of hand-off code stays mapped"
                .into(),
        );
    }
    if probes.is_some_and(Probes::traps) {
        match msg.guard {
            0 => limits.push(
                "the SIGTRAP guard (seccomp) could not be installed: a program that sets its own SIGTRAP \
                 handler would take the probes' traps"
                    .into(),
            ),
            2 => limits.push(
                "the SIGTRAP guard needed no_new_privs: programs this one executes cannot gain privileges \
                 (set-user-ID, file capabilities)"
                    .into(),
            ),
            _ => {}
        }
    }
    let handoff = Handoff {
        uffd_mode: mode.name().into(),
        mm_map: mm_map_ok,
        clean_exit: gadget.is_some(),
        limits,
    };
    let uffd = Uffd::from_owned(fd);
    watchdog.hold(&uffd);
    Ok((
        pid,
        (pidfd, sock_parent),
        uffd,
        mode,
        handoff,
        listener,
        watchdog,
    ))
}

/// Receives the stage's message (and uffd, and the guard's listener).
fn receive(sock: &OwnedFd) -> Result<(StageMsg, Vec<OwnedFd>)> {
    let mut msg = StageMsg::default();
    let mut cbuf = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: (&mut msg as *mut StageMsg).cast(),
        iov_len: std::mem::size_of::<StageMsg>(),
    };
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = cbuf.len();
    // SAFETY: hdr points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(Error::sys(
            "receiving from the stage",
            std::io::Error::last_os_error(),
        ));
    }
    if n as usize != std::mem::size_of::<StageMsg>() {
        return Err(Error::Stage {
            step: "starting the program (the child died early)".into(),
            errno: Errno::PIPE,
        });
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control message the kernel wrote into cbuf; each
    // fd in it is new in our table and ours to own.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&hdr);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
            for i in 0..n {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i));
                fds.push(OwnedFd::from_raw_fd(raw));
            }
        }
    }
    Ok((msg, fds))
}
