//! The public session API: find the program, plan it, fork the stage, serve
//! its faults, and report.
//!
//! The fork happens on the session's own monitor thread, which then serves
//! faults until the program ends: the program's `PR_SET_PDEATHSIG` is tied
//! to the thread that forked it, so that thread must outlive the program.

mod command;
mod control;
mod events;
mod monitor;
mod probes;
mod program;
mod shared_objects;
mod start;
mod watchdog_client;
mod working_set;

use std::ffi::OsStr;
use std::thread::JoinHandle;

pub use command::{Command, ObjectServing, Prefetch, ProbeMode, TextServing, DEFAULT_FAULT_AROUND};
use control::{Control, Request};
use monitor::Outcome;
pub use probes::DEFAULT_EVENT_RING;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::events::{Event, ProbeId, ProbeInfo};
use crate::report::EventCounts;

/// The traced hits' way to the session: a bounded channel, filled by the
/// monitor's drain.
pub(crate) struct EventStream {
    sender: crossbeam_channel::Sender<Event>,
    receiver: crossbeam_channel::Receiver<Event>,
    /// Events drained from the ring that the channel had no room for.
    undelivered: Arc<AtomicU64>,
}

/// Events the stream holds while nobody reads it: with the ring, what
/// absorbs a reader's pauses (a write to a file can wait milliseconds for
/// the disk). About 2 MB, touched only as it fills.
const STREAM_EVENTS: usize = 1 << 14;

/// Events the drain keeps between itself and the reader.
const SLACK: usize = 64;

/// How long the drain sleeps while the stream is full.
const NAP: std::time::Duration = std::time::Duration::from_micros(200);

/// How long a full stream may go unread before it is taken as abandoned.
const STALLED: std::time::Duration = std::time::Duration::from_secs(1);

impl EventStream {
    fn new() -> EventStream {
        let (sender, receiver) = crossbeam_channel::bounded(STREAM_EVENTS);
        EventStream {
            sender,
            receiver,
            undelivered: Arc::default(),
        }
    }

    /// The drain's sink: each record as an event. A full stream holds the
    /// drain back (the ring, filling meanwhile, is where hits are dropped
    /// and counted), unless nobody has read it for [`STALLED`]: then the
    /// stream is taken as abandoned, and what it cannot hold is counted.
    fn sink(&self) -> events::Sink {
        let sender = self.sender.clone();
        let undelivered = Arc::clone(&self.undelivered);
        let mut abandoned = false;
        // Events that can be sent before the room is looked at again
        // (looking reads both ends of the stream, which the reader's CPU
        // keeps writing).
        let mut room = 0;
        Box::new(move |body, strings, t| {
            let e = Event::from_record(body, strings, t);
            // Wait for room asleep, not spinning: on two CPUs the spin
            // would take the reader's.
            let mut waited = std::time::Duration::ZERO;
            // Room to spare, not just room: a sender that meets the slot
            // the reader is still copying out spins until it is done.
            while room == 0 && !abandoned && waited < STALLED {
                room = STREAM_EVENTS.saturating_sub(sender.len() + SLACK);
                if room == 0 {
                    std::thread::sleep(NAP);
                    waited += NAP;
                }
            }
            // Unread for STALLED: abandoned, whatever room the slack
            // still has (each slack event would wait as long again).
            if room == 0 && waited >= STALLED {
                abandoned = true;
            }
            room = room.saturating_sub(1);
            let sent = sender.try_send(e).is_ok();
            if !sent {
                abandoned = true;
                undelivered.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
}
use program::resolve;

use crate::elf::Image;
use crate::error::{Error, Result};
use crate::report::{Exit, ProbeHits, Report, Text};
use crate::symbols::Symbols;

/// The functions of `program` (found as [`Command::new`] finds it) whose
/// names match any of `patterns` (globs or exact names; all when empty),
/// sorted by address — what `uprobe-exec --list` prints. A pattern
/// `OBJECT:PATTERN` lists the functions of the shared objects the program
/// maps at start that OBJECT names, each named `OBJECT:NAME` (by the name
/// the program asks for it by), after the program's.
pub fn functions(
    program: impl AsRef<OsStr>,
    patterns: &[String],
) -> Result<Vec<crate::symbols::Function>> {
    let resolved = resolve(program.as_ref(), &[])?;
    let image = Image::open(&resolved.elf)?;
    let mut own = Vec::new();
    let mut others = Vec::new();
    for p in patterns {
        match crate::probes::split_object(p).map_err(Error::Probe)? {
            (None, rest) => own.push(rest.to_string()),
            (Some(o), rest) => others.push((o, rest.to_string(), p.clone())),
        }
    }
    let mut out = if others.is_empty() || !own.is_empty() {
        functions_of(&image, &own)?
    } else {
        Vec::new()
    };
    if others.is_empty() {
        return Ok(out);
    }
    let linked = objects(&image, &resolved.elf, &own_env())?;
    for (object, pattern, spec) in others {
        let named: Vec<&crate::probes::Linked> =
            linked.iter().filter(|o| object.matches(o)).collect();
        if named.is_empty() {
            return Err(Error::Probe(crate::probes::ProbeError::BadSpec {
                spec,
                why: format!(
                    "no object the program maps at start is {object} (it maps {})",
                    names_of(&linked)
                ),
            }));
        }
        for o in named {
            let lib = Image::open_object(&o.path)?;
            let label = o.short_name().to_string();
            out.extend(
                functions_of(&lib, std::slice::from_ref(&pattern))?
                    .into_iter()
                    .map(|f| {
                        let why = match &f.tactic {
                            Some(Ok(kind)) if !matches!(*kind, "jump" | "jump-padding") => Some(
                                "its jump would need moving other code (a short jump or a punned \
                                 one), which shared objects do not do yet"
                                    .into(),
                            ),
                            _ => f.unprobeable.clone(),
                        };
                        crate::symbols::Function {
                            name: format!("{label}:{}", f.name),
                            demangled: f.demangled.clone().map(|d| format!("{label}:{d}")),
                            unprobeable: why,
                            ..f
                        }
                    }),
            );
        }
    }
    Ok(out)
}

/// The shared objects `program` (found as [`Command::new`] finds it) maps
/// at start, in the order its interpreter maps them (none for a static
/// program): what `OBJECT:SPEC` can name.
pub fn shared_objects(program: impl AsRef<OsStr>) -> Result<Vec<crate::probes::Linked>> {
    let resolved = resolve(program.as_ref(), &[])?;
    let image = Image::open(&resolved.elf)?;
    objects(&image, &resolved.elf, &own_env())
}

/// Our environment as `KEY=VALUE` strings: what a program inherits.
pub(crate) fn own_env() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, v)| {
            let mut s = k;
            s.push("=");
            s.push(v);
            s
        })
        .collect()
}

/// The shared objects the program `image` (at `path`) maps at start, as
/// its interpreter finds them in the environment `env` (none for a static
/// program).
pub(crate) fn objects(
    image: &Image,
    path: &std::path::Path,
    env: &[std::ffi::OsString],
) -> Result<Vec<crate::probes::Linked>> {
    match &image.interp {
        Some(interp) => crate::probes::linked(interp, path, env).map_err(|why| {
            Error::Probe(crate::probes::ProbeError::BadSpec {
                spec: path.display().to_string(),
                why: format!("cannot list the objects the program maps: {why}"),
            })
        }),
        None => Ok(Vec::new()),
    }
}

/// The objects' names, for a message.
pub(crate) fn names_of(linked: &[crate::probes::Linked]) -> String {
    if linked.is_empty() {
        return "none".into();
    }
    linked
        .iter()
        .map(|o| o.short_name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The functions of `image` whose names match any of `patterns` (all
/// when empty), with whether and how each can be probed.
fn functions_of(image: &Image, patterns: &[String]) -> Result<Vec<crate::symbols::Function>> {
    let syms = Symbols::read(image);
    let pats: Vec<glob::Pattern> = patterns
        .iter()
        .map(|p| {
            glob::Pattern::new(p).map_err(|e| {
                Error::Probe(crate::probes::ProbeError::BadSpec {
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
            unprobeable: crate::probes::unprobeable(image, &syms, f).map(|u| u.detail),
            ..f.clone()
        })
        .collect();
    // The tactic each would get with all of them probed together (short
    // jumps' pads depend on what the others take).
    let mut places: Vec<crate::probes::Place> = out
        .iter()
        .filter(|f| f.unprobeable.is_none())
        .map(|f| crate::probes::Place {
            object: crate::probes::ObjectId::MAIN,
            addr: f.addr,
            symbol: f.display_name().to_string(),
            offset: 0,
            function: Some((f.addr, f.size)),
            request: 0,
            trace: None,
            latency: None,
            ret: None,
        })
        .collect();
    places.sort_by_key(|p| p.addr);
    places.dedup_by_key(|p| p.addr);
    let (verdicts, _) = crate::probes::decide(image, &places);
    for f in out.iter_mut().filter(|f| f.unprobeable.is_none()) {
        if let Ok(i) = places.binary_search_by_key(&f.addr, |p| p.addr) {
            f.tactic = Some(verdicts[i].clone().map(crate::probes::Kind::name));
        }
    }
    out.dedup_by(|a, b| a.addr == b.addr && a.display_name() == b.display_name());
    Ok(out)
}

/// A running program.
///
/// While it runs, [`Session::counts`] reads the hits so far and
/// [`Session::kill`] ends it; [`Session::try_wait`] and [`Session::wait`]
/// give the [`Report`] once it has ended. Requests go to the monitor thread
/// through its control channel, between the faults it serves.
#[must_use = "a dropped session detaches: the program runs on, served, but its report is lost"]
pub struct Session {
    pid: i32,
    /// The monitor thread, until it has been joined.
    monitor: Option<JoinHandle<Result<Outcome>>>,
    control: Control,
    /// The report, once the monitor has returned.
    ended: Option<Report>,
    program: String,
    args: Vec<String>,
    warnings: Vec<String>,
    /// Limits that come from the options (added to the hand-off's).
    limits: Vec<String>,
    /// The sites as events name them, in site order.
    info: crate::events::ProbeTable,
    /// CLOCK_MONOTONIC when the program was let go, in ns.
    started_ns: u64,
    /// How long the start took, step by step.
    startup: crate::report::Startup,
    /// The traced hits, when any site is traced.
    stream: Option<EventStream>,
}

impl Session {
    /// Warnings from resolving the probes (e.g. `--unsafe` addresses).
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The traced hits as they come: each hit of a traced site (see
    /// [`Command::trace`]), in hit order within a thread. The channel is
    /// bounded: while nobody reads, events beyond its room are dropped
    /// and counted ([`Report::events`]). It ends once the program has and
    /// its last events are read. `None` when no site is traced.
    ///
    /// ```no_run
    /// # fn main() -> uprobe_exec::Result<()> {
    /// let session = uprobe_exec::Command::new("./app")
    ///     .trace("parse(int, hex)")
    ///     .spawn()?;
    /// let events = session.events().expect("a traced probe");
    /// let printer = std::thread::spawn(move || {
    ///     for e in events {
    ///         println!("{}/{} parse({}, {:#x})", e.pid, e.tid, e.args[0] as i64, e.args[1]);
    ///     }
    /// });
    /// let report = session.wait()?;
    /// printer.join().expect("printer");
    /// println!("{:?}", report.events);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn events(&self) -> Option<crossbeam_channel::Receiver<Event>> {
        self.stream.as_ref().map(|s| s.receiver.clone())
    }

    /// CLOCK_MONOTONIC (ns) when the program was let go: the origin of the
    /// text events' times.
    #[must_use]
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// The probe an event's `probe` names: its label and argument types
    /// (`None` for a shared object's probe until the object is mapped).
    #[must_use]
    pub fn probe_info(&self, probe: ProbeId) -> Option<&ProbeInfo> {
        self.info.get(probe)
    }

    /// Every probe, as events name them, in a table that a shared object's
    /// probes join when the object is mapped: for a reader of the events
    /// on another thread.
    #[must_use]
    pub fn probe_table(&self) -> crate::events::ProbeTable {
        self.info.clone()
    }

    /// The program's process id.
    #[must_use]
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The hits of every probe so far, in every process of the program, in
    /// the order of [`Report::probes`]. Once the program has ended, the
    /// final counts, as in the report (this then waits for the monitor to
    /// finish it, which takes moments).
    pub fn counts(&mut self) -> Result<Vec<ProbeHits>> {
        if self.ended.is_none() {
            if let Some(hits) = self.control.ask(Request::Counts) {
                return Ok(hits);
            }
        }
        // No answer: the monitor has stopped serving, the program has ended.
        Ok(self.finish()?.probes.clone())
    }

    /// The report if the program has ended, `None` while it runs. Does not
    /// wait; asked again after it has ended, gives the same report.
    pub fn try_wait(&mut self) -> Result<Option<Report>> {
        if self.monitor.as_ref().is_some_and(|m| !m.is_finished()) {
            return Ok(None);
        }
        self.finish().map(|r| Some(r.clone()))
    }

    /// Kills the program's first process with SIGKILL, as
    /// [`std::process::Child::kill`] does: the report then says
    /// `Exit::Signal(9)`. Processes it forked live on, as they would. No
    /// error if it has ended already.
    pub fn kill(&self) -> Result<()> {
        match self.control.ask(Request::Kill) {
            Some(Err(e)) => Err(Error::sys("killing the program", e)),
            Some(Ok(())) | None => Ok(()),
        }
    }

    /// Waits for the program to end and returns the report.
    pub fn wait(mut self) -> Result<Report> {
        self.finish().cloned()
    }

    /// Waits for the monitor to return and keeps the report it makes.
    fn finish(&mut self) -> Result<&Report> {
        if let Some(monitor) = self.monitor.take() {
            let out = match monitor.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::sys(
                        "the monitor thread",
                        std::io::Error::other("panicked; the program was killed"),
                    ))
                }
            };
            self.ended = Some(self.report(out));
        }
        self.ended.as_ref().ok_or_else(|| {
            Error::sys(
                "the monitor thread",
                std::io::Error::other("failed (the error was returned before)"),
            )
        })
    }

    /// The report of the monitor's outcome.
    fn report(&self, out: Outcome) -> Report {
        let mut warnings = self.warnings.clone();
        warnings.extend(out.warnings.iter().cloned());
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
        let events = out.events.map(|t| {
            let undelivered = self
                .stream
                .as_ref()
                .map_or(0, |s| s.undelivered.load(Ordering::Relaxed));
            EventCounts {
                delivered: t.delivered.iter().sum::<u64>() - undelivered,
                dropped: t.dropped.iter().sum::<u64>() + undelivered,
                lost: t.lost,
            }
        });
        if let Some(e) = events.filter(|e| e.dropped > 0) {
            warnings.push(format!(
                "{} of {} events were dropped (the event ring or the stream was full): the \
                 events written are not all; a larger --event-ring holds more",
                e.dropped,
                e.dropped + e.delivered
            ));
        }
        Report {
            program: self.program.clone(),
            args: self.args.clone(),
            exit: out.exit,
            probes: out.probes,
            per_process: out.per_process,
            text: Text {
                recorded: out.recorded,
                ..Text::from(out.stats)
            },
            objects: out.objects,
            processes: out.stats.processes,
            handoff: {
                let mut h = out.handoff;
                h.limits.extend(self.limits.iter().cloned());
                h
            },
            events,
            latency: out.latency,
            startup: self.startup,
            warnings,
        }
    }
}
