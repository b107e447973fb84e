//! The [`Command`] builder, and `spawn`: resolve the program, plan it, place
//! the probes, and start the monitor thread.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use uprobe_runtime::{Uffd, UffdMode};

use super::control;
use super::monitor::{monitor, Job, Launched};
use super::probes::Probes;
use super::program::resolve;
use super::start::Signals;
use super::{EventStream, Session};
use crate::elf::Image;
use crate::error::{ElfError, Error, Result};
use crate::plan::{Draft, TextBacking};
use crate::probes::{self, Location, ProbeError, Request, Resolution};
use crate::symbols::Symbols;

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
    prefetch: Prefetch,
    perf_map: bool,
    mode: ProbeMode,
    ring_records: usize,
    objects: ObjectServing,
    /// See [`Command::serve_text`].
    text: TextServing,
}

pub use crate::probes::ProbeMode;

/// Which of the program's text pages are installed without waiting for
/// their first touch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    /// All of them, in the background once the program runs, in every
    /// process of it (debuggers and core dumps then see the whole text).
    #[default]
    All,
    /// The pages a run of the same program file with the same probes
    /// touched first before (its working set, kept in the user's cache),
    /// in the background from the start, before anything else; the rest on
    /// first touch. The run records its own working set for the next. A
    /// changed file's record is never used.
    Recorded,
    /// None: every page on first touch.
    None,
}

/// How an error names `--serve-objects all`.
const SERVE_ALL: &str = "--serve-objects all";

/// Which text of the program's shared objects uprobe-exec serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ObjectServing {
    /// The pages that hold the sites of `OBJECT:SPEC` probes (and the
    /// dynamic loader's text, when there are any): every other page is the
    /// file's, mapped by the kernel as natively.
    #[default]
    Probed,
    /// The whole text of every executable object the dynamic loader maps
    /// (the loader's, each library's, each `dlopen`ed object's), probed or
    /// not, served as the program's is. Needs privileges (as root).
    All,
}

/// Which of the program's text uprobe-exec serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TextServing {
    /// The pages that hold probe sites (patched bytes): every other page is
    /// the program file's, mapped by the kernel as natively (its page
    /// cache, its path in `/proc/PID/maps`), and never reaches the fault
    /// server. Without probes, no page is served, but those of an
    /// executable segment past its file bytes (its bss), which no file
    /// mapping can give.
    #[default]
    Probed,
    /// Every page: each first touch, and each touch after a drop, is served
    /// (and counted) by the fault server, patched as it is installed.
    All,
}

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
            prefetch: Prefetch::All,
            perf_map: false,
            mode: ProbeMode::Auto,
            ring_records: super::probes::DEFAULT_EVENT_RING,
            objects: ObjectServing::Probed,
            text: TextServing::Probed,
        }
    }

    /// Adds a probe: `SYMBOL`, `SYMBOL+OFFSET`, `0xADDR` or a glob (see
    /// [`Location`]). A spec that does not parse makes [`Command::spawn`]
    /// fail, when it comes to it.
    pub fn probe(mut self, spec: impl Into<String>) -> Command {
        self.probes.push(Request::parse(spec));
        self
    }

    /// Adds a traced probe: `SPEC` or `SPEC(TYPE, …)` (see [`TraceSpec`]).
    /// Each hit counts and becomes an [`Event`](crate::events::Event) of
    /// [`Session::events`], with the first arguments as typed. A spec that
    /// does not parse makes [`Command::spawn`] fail, when it comes to it.
    ///
    /// `SPEC%return` or `SPEC%return(TYPE)` traces the function's returns
    /// instead: each is an event with [`Event::ret`](crate::events::Event)
    /// (the value, typed, and the call's duration), and the function is
    /// timed as by [`Command::latency`].
    pub fn trace(mut self, spec: impl Into<String>) -> Command {
        self.probes.push(Request::parse_trace(spec));
        self
    }

    /// Times each call of the functions `spec` names (see [`Location`];
    /// `--latency`): from entry to return, in every thread and process.
    /// Each is counted too; the report's `latency` gives the calls, their
    /// durations and a histogram. A function whose entry or returns cannot
    /// each take a jump cannot be timed: [`Command::spawn`] fails for one
    /// named on its own, and a pattern passes over it with a warning.
    pub fn latency(mut self, spec: impl Into<String>) -> Command {
        self.probes.push(Request::parse_latency(spec));
        self
    }

    /// As [`Command::latency`], and each return is also an event, as
    /// `SPEC%return` traces it (its value shown as `hex`): for a timeline
    /// of every call (`--perfetto`).
    pub fn latency_events(mut self, spec: impl Into<String>) -> Command {
        self.probes
            .push(Request::parse_latency(spec).map(|r| Request {
                ret: Some(crate::probes::ArgType::Hex),
                ..r
            }));
        self
    }

    /// Records the event ring holds (rounded up to a power of two;
    /// [`DEFAULT_EVENT_RING`](crate::DEFAULT_EVENT_RING) by default): a traced hit that finds it full is dropped and counted.
    pub fn event_ring(mut self, records: usize) -> Command {
        self.ring_records = records;
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
        self.prefetch = if on { Prefetch::All } else { Prefetch::None };
        self
    }

    /// Which pages are installed before their first touch (default: all,
    /// in the background; see [`Prefetch`]).
    pub fn prefetch_mode(mut self, which: Prefetch) -> Command {
        self.prefetch = which;
        self
    }

    /// Writes the program's functions to `/tmp/perf-PID.map` once it runs,
    /// for profilers (perf, samply, bpftrace) that cannot read symbols from
    /// anonymous text. The file is left in place (perf reads it at report time).
    pub fn perf_map(mut self, on: bool) -> Command {
        self.perf_map = on;
        self
    }

    /// Which text of the shared objects is served (default: the pages
    /// that hold probe sites; see [`ObjectServing`]).
    pub fn serve_objects(mut self, which: ObjectServing) -> Command {
        self.objects = which;
        self
    }

    /// Which of the program's text is served (default: the pages that hold
    /// probe sites; see [`TextServing`]).
    pub fn serve_text(mut self, which: TextServing) -> Command {
        self.text = which;
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
        let mut clock = crate::sys::clock::Steps::new();
        // Made first, on a thread of its own: it is ready by the time the
        // program is planned. Dropped without an order, it exits.
        let watchdog = crate::watchdog::Early::start()?;
        // The start of the interval the counter's rate is measured over
        // (timed functions need it; a millisecond or more).
        let since = crate::sys::clock::pair();
        let resolved = resolve(&self.program, &self.args)?;
        let env = self.env.clone().unwrap_or_else(super::own_env);
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
                source => Error::BadInterpreter {
                    program: resolved.elf.clone(),
                    source,
                },
            })?),
            None => None,
        };
        let open_us = clock.step();
        let mut resolution = Resolution::default();
        let mut pending = Vec::new();
        // The objects' probes, resolved on a thread while the rest of the
        // start goes on, and the mapping site in ld.so.
        let mut listing = None;
        // How the event routine learns thread ids (from the program's symbols).
        let mut tid = probes::Tid::Syscall;
        let mut chosen = probes::Chosen::default();
        // Without the right to follow forks (user-mode-only userfaultfd), the
        // text goes in whole before the program starts, from its file.
        let eager = matches!(Uffd::create(), Ok((_, UffdMode::UserModeOnly)));
        let all_objects = self.objects == ObjectServing::All;
        if !self.probes.is_empty() || all_objects {
            let requests = self
                .probes
                .iter()
                .cloned()
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let (requests, mut theirs): (Vec<Request>, Vec<Request>) =
                requests.into_iter().partition(|r| r.object.is_none());
            // The objects the program maps at start, asked of its
            // interpreter while the program's own probes are resolved, when
            // an OBJECT:SPEC or --serve-objects all wants them; an error
            // names the first of those.
            let refuse = |why: String| match theirs.first() {
                Some(r) => Error::Probe(ProbeError::BadSpec {
                    spec: r.spec.clone(),
                    why,
                }),
                None => Error::Unavailable {
                    option: SERVE_ALL.into(),
                    why,
                },
            };
            let wanted = !theirs.is_empty() || all_objects;
            listing = match (wanted, &interp) {
                (true, Some(interp)) => {
                    if eager {
                        return Err(refuse(
                            "serving shared objects (to probe them) needs privileges: their \
                             text is served in every process of the program, and following \
                             forks needs userfaultfd's fork events, which the kernel gives \
                             only with CAP_SYS_PTRACE (as root); as an ordinary user only the \
                             program's own functions can be probed"
                                .into(),
                        ));
                    }
                    let Some(site) = crate::probes::detour::find_site(interp) else {
                        return Err(refuse(format!(
                            "{} is not a dynamic loader uprobe-exec knows: it has no single \
                                 mmap system call through which it maps objects",
                            interp.path.display()
                        )));
                    };
                    let (i, p, e) = (interp.path.clone(), resolved.elf.clone(), env.clone());
                    let (mode, unsafe_addrs) = (self.mode, self.unsafe_addrs);
                    let theirs = std::mem::take(&mut theirs);
                    let list = std::thread::spawn(move || {
                        let linked = crate::probes::linked(&i, &p, &e).map_err(|why| {
                            Error::Probe(ProbeError::BadSpec {
                                spec: p.display().to_string(),
                                why: format!("cannot list the objects the program maps: {why}"),
                            })
                        })?;
                        let objects = super::shared_objects::SharedObjects::new(
                            theirs,
                            linked,
                            mode,
                            unsafe_addrs,
                            all_objects,
                        );
                        // The monitor writes the objects' trampolines
                        // while the program waits: iced's tables are
                        // built now, in time this thread has to spare.
                        crate::probes::warm_up();
                        objects
                    });
                    Some((list, site))
                }
                _ => {
                    // A static program maps no shared object.
                    in_program(theirs.clone(), &resolved.elf, &mut pending);
                    None
                }
            };
            (resolution, tid, chosen) =
                super::probes::resolve_program(&program, requests, self.mode, self.unsafe_addrs)?;
        }
        let probes_us = clock.step();
        let mut warnings = std::mem::take(&mut resolution.warnings);
        warnings.extend(pending);
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
        let mut draft = Draft::new(
            program,
            interp,
            &crate::layout::Aslr::current(),
            backing,
            listing.is_some(),
        )?;
        draft.serve_probed_only = self.text == TextServing::Probed;
        let mut needs = super::shared_objects::ObjectNeeds::default();
        let objects = match listing {
            Some((list, site)) => {
                let interp = draft.interp.as_ref().expect("objects need an interpreter");
                let site = interp.bias.apply(crate::addr::LinkAddr(site)).0;
                let area = crate::plan::ObjectsArea::new(&draft, site)?;
                draft.interp_patches = vec![(site, crate::probes::detour::patch(&area.detour))];
                let (so, n) = list.join().unwrap_or_else(|_| {
                    Err(Error::sys(
                        "resolving the shared objects' probes",
                        std::io::Error::other("panicked"),
                    ))
                })?;
                needs = n;
                Some((area, so))
            }
            None => None,
        };
        let layout_us = clock.step();
        let mut skipped = Vec::new();
        let mut unseen = Vec::new();
        let mut objects = objects;
        let (mut plan, probes) = Probes::build(
            draft,
            resolution,
            chosen,
            self.mode,
            self.ring_records,
            since,
            objects.as_mut().map(|(area, _)| (area, needs)),
            tid,
            &mut skipped,
            &mut unseen,
        )?;
        plan.objects_whole = all_objects;
        // Every probe as events name it: the program's now, the shared
        // objects' as they are placed.
        let info = crate::events::ProbeTable::new(
            probes.as_ref().map(Probes::info).unwrap_or_default(),
            probes.as_ref().map_or(0, |p| p.counters.layout().sites),
        );
        let objects = objects.map(|(area, mut so)| {
            if let Some(p) = &probes {
                so.place(
                    p.object_columns,
                    p.object_stats,
                    Arc::clone(&p.counters),
                    info.clone(),
                    p.object_calls.unwrap_or(crate::probes::ObjectCalls {
                        row_page: area.row_page,
                        emit: None,
                        enter: None,
                        exit: None,
                    }),
                );
            }
            (area, so)
        });
        let probes_us = probes_us + clock.step();
        if !unseen.is_empty() {
            let shown: Vec<String> = unseen
                .iter()
                .take(5)
                .map(|(at, why)| format!("{at} ({why})"))
                .collect();
            warnings.push(format!(
                "{} return(s) of timed functions (--latency, %return) take no jump; calls that \
                 return there are counted as left, untimed, with no return event: {}{}",
                unseen.len(),
                shown.join(", "),
                if unseen.len() > 5 { ", …" } else { "" }
            ));
        }
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
                (r.addr(), r.len(), "[uprobe-exec probes]".to_string())
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
        let stream = (needs.traced || info.any_traced()).then(EventStream::new);
        let (tx, rx) = mpsc::channel();
        let signals = Signals {
            blocked: self.blocked.unwrap_or_else(crate::sys::signal::blocked),
            sigpipe_ignored: self.sigpipe_ignored,
        };
        let args = resolved
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program_name = resolved.elf.display().to_string();
        let job = Job {
            plan,
            probes,
            program: resolved,
            env,
            signals,
            fault_around: self.fault_around,
            prefetch: self.prefetch,
            // The working set's record is kept per probe set: the specs as
            // given, the mode.
            working_set: (self.prefetch == Prefetch::Recorded)
                .then(|| format!("{:?} {:?} {}", self.probes, self.mode, self.unsafe_addrs)),
            objects,
            events: stream.as_ref().map(EventStream::sink),
        };
        let (control, inbox) =
            control::channel().map_err(|e| Error::sys("creating the control channel", e))?;
        let prepare_us = clock.step();
        let spawned = std::time::Instant::now();
        let thread = std::thread::Builder::new()
            .name("uprobe-exec-monitor".into())
            .spawn(move || monitor(job, watchdog, spawned, inbox, tx))
            .map_err(|e| Error::sys("starting the monitor thread", e))?;
        match rx.recv() {
            Ok(Ok(Launched {
                pid,
                started_ns,
                parts,
            })) => {
                let launch_us = clock.step();
                let [thread_us, stack_us, fork_us, stage_us, serve_us] = parts;
                let startup = crate::report::Startup {
                    open_us,
                    layout_us,
                    probes_us,
                    prepare_us,
                    launch_us,
                    thread_us,
                    stack_us,
                    fork_us,
                    stage_us,
                    serve_us,
                    total_us: clock.total(),
                };
                let mut warnings = warnings;
                if let Some(text) = perf_map {
                    if let Err(e) = crate::perfmap::write(pid, &text) {
                        warnings.push(format!("no perf map for process {pid}: {e}"));
                    }
                }
                Ok(Session {
                    pid,
                    monitor: Some(thread),
                    control,
                    ended: None,
                    program: program_name,
                    args,
                    warnings,
                    limits: backing_limits,
                    info,
                    stream,
                    started_ns,
                    startup,
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

/// The warnings for `OBJECT:SPEC` requests of a static program (at `path`),
/// which maps no shared object: each probes nothing.
fn in_program(requests: Vec<Request>, path: &std::path::Path, pending: &mut Vec<String>) {
    for r in requests {
        if let Some(object) = &r.object {
            pending.push(format!(
                "'{}' probes nothing: {} is a static program, which maps no shared object such as {object}",
                r.spec,
                path.display(),
            ));
        }
    }
}
