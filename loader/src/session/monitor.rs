//! The monitor thread: forks the stage (through `start`), then serves the
//! program's faults until its first process ends, answering the session's
//! requests (see `control`) in between, and gathers what the report needs.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use rustix::io::Errno;
use rustix::process::{pidfd_send_signal, Signal};
use uprobe_runtime::{ObjectId, ServeError, Server, UffdMode, Wake};

use super::control::{Inbox, Request};
use super::events::{Drain, Sink, Totals};
use super::probes::Probes;
use super::program::Resolved;
use super::shared_objects::SharedObjects;
use super::start::{start, LaunchClock, Signals, Started};
use crate::error::{Error, Result};
use crate::plan::{ObjectsArea, Plan, TextBacking};
use crate::report::{Exit, Handoff, ObjectStats, ProbeHits, ProcessHits};
use crate::watchdog::Early;

/// What the monitor thread runs: the planned program and how to serve it.
pub(super) struct Job {
    pub(super) plan: Plan,
    pub(super) probes: Option<Probes>,
    pub(super) program: Resolved,
    pub(super) env: Vec<OsString>,
    pub(super) signals: Signals,
    /// See [`Command::fault_around`](super::Command::fault_around).
    pub(super) fault_around: usize,
    /// See [`Command::prefetch_mode`](super::Command::prefetch_mode).
    pub(super) prefetch: super::command::Prefetch,
    /// With a recorded working set: the probes it is recorded for.
    pub(super) working_set: Option<String>,
    /// Where traced hits go (see `events`), when any site is traced.
    pub(super) events: Option<Sink>,
    /// The shared objects' probe area and probes, when objects are served.
    pub(super) objects: Option<(ObjectsArea, SharedObjects)>,
}

/// What the monitor thread returns.
pub(super) struct Outcome {
    pub(super) exit: Exit,
    pub(super) stats: uprobe_runtime::TextStats,
    /// Pages installed from the recorded working set before the start.
    pub(super) recorded: u64,
    pub(super) handoff: Handoff,
    pub(super) probes: Vec<ProbeHits>,
    pub(super) per_process: Vec<ProcessHits>,
    pub(super) stray_traps: u64,
    pub(super) guard_refused: u64,
    /// What the drain counted, when sites were traced.
    pub(super) events: Option<Totals>,
    /// The timed functions' calls.
    pub(super) latency: Vec<crate::report::Latency>,
    /// Each object served, when shared objects are.
    pub(super) objects: Vec<ObjectStats>,
    /// What serving the shared objects passed over or could not do.
    pub(super) warnings: Vec<String>,
}

/// A program started, as the monitor thread tells the session.
pub(super) struct Launched {
    pub(super) pid: i32,
    /// CLOCK_MONOTONIC just before the program was let go.
    pub(super) started_ns: u64,
    /// The launch's parts, µs: thread, stack, forks, stage, serve (see
    /// [`Startup`](crate::report::Startup)).
    pub(super) parts: [u64; 5],
}

/// The monitor thread (spawned at `spawned`): has `watchdog` fork the
/// stage, tells `started` the program's pid and the CLOCK_MONOTONIC time
/// just before it lets it go (or why it could not start), then serves
/// faults until the program ends.
pub(super) fn monitor(
    mut job: Job,
    watchdog: Early,
    spawned: std::time::Instant,
    inbox: Inbox,
    started: mpsc::Sender<Result<Launched>>,
) -> Result<Outcome> {
    let mut clock = LaunchClock::since(spawned);
    clock.mark(LaunchClock::THREAD);
    match start(
        watchdog,
        &job.plan,
        job.probes.as_ref(),
        job.objects.as_ref().map(|(a, _)| a),
        &job.program,
        &job.env,
        job.signals,
        &mut clock,
    ) {
        Ok(program) => {
            let sink = job.events.take();
            let objects = job.objects.take();
            run(&job, sink, objects, program, &inbox, &started, clock)
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

/// Serves the started program until it ends, and gathers the outcome.
fn run(
    job: &Job,
    sink: Option<Sink>,
    mut objects: Option<(ObjectsArea, SharedObjects)>,
    program: Started,
    inbox: &Inbox,
    started: &mpsc::Sender<Result<Launched>>,
    mut clock: LaunchClock,
) -> Result<Outcome> {
    let (plan, probes) = (&job.plan, job.probes.as_ref());
    let Started {
        pid,
        pidfd,
        stage,
        uffd,
        mode,
        handoff,
        listener,
        watchdog,
    } = program;
    let guard = match (listener, probes) {
        (Some(l), Some(p)) => Some(crate::guard::Guard::start(l, p.guard_target())?),
        _ => None,
    };
    raise_priority();
    let mut server = Server::new(plan.image.clone(), uffd);
    server.set_fault_around(job.fault_around);
    server.set_prefetch(job.prefetch == super::command::Prefetch::All);
    let keeper = watchdog.sender();
    server.on_new_process(move |fd| keeper.hold_fd(fd));
    if let Some(p) = probes {
        server.set_row_page(p.area.cache, p.row_assigner(pid));
    }
    // The interpreter's text, with the mapping detour's jump and its own
    // probes' jumps: object 1.
    if let (Some(image), Some(interp), Some((area, o))) =
        (&plan.interp_text, &plan.interp, &mut objects)
    {
        let detour = crate::probes::detour::patch(&area.detour);
        o.serve_interp(
            &mut server,
            area,
            interp,
            image.ranges(),
            (area.detour.site, detour),
        )
        .map_err(|e| Error::sys("serving the interpreter", std::io::Error::other(e)))?;
        server.add_row_page(area.row_page);
        server.set_doorbells(area.bells.0, area.bells.1);
    }
    // The drain reads the ring from before the program runs.
    let drain = match (probes.and_then(|p| p.counters.ring()), sink) {
        (Some(ring), Some(sink)) => {
            Some(Drain::start(ring, sink).map_err(|e| Error::sys("starting the event drain", e))?)
        }
        _ => None,
    };
    let mut result: Result<()> = Ok(());
    // The working set a run of this program recorded, if any.
    let record = job.working_set.as_ref().and_then(|probes| {
        let pages = server.object_stats(ObjectId::MAIN).pages as usize;
        super::working_set::Record::new(&plan.program.image.file, pages, probes)
    });
    let mut recorded = Vec::new();
    if plan.text_installed() {
        server.installed_up_front();
    } else if mode == UffdMode::UserModeOnly {
        result = server.populate_all().map_err(Error::from);
    } else if let Some(pages) = record.as_ref().and_then(super::working_set::Record::read) {
        // Installed in the background from the start, the program running
        // meanwhile (a page it touches first is served by its fault):
        // bigtext took 0.86× the time of one batch before the start.
        server.set_wanted(ObjectId::MAIN, pages.clone());
        recorded = pages;
    }
    // Let the child go on to the program.
    // Before the program is let go: no event of it can be earlier.
    clock.mark(LaunchClock::SERVE);
    let _ = started.send(Ok(Launched {
        pid,
        started_ns: crate::sys::clock::monotonic_ns(),
        parts: clock.parts,
    }));
    if result.is_ok() {
        result = release(&stage)
            .and_then(|()| serve(&mut server, &pidfd, inbox, probes, objects.as_mut()));
    }
    // The first process ended; forks may live on, some perhaps not
    // known to us yet, and nobody serves faults from now on.
    if result.is_ok() && !plan.text_installed() && server.forked() {
        result = hand_over_text(plan, &mut server, objects.is_some());
    }
    if let Err(e) = result {
        let _ = pidfd_send_signal(&pidfd, Signal::KILL);
        let _ = watchdog.status();
        drain.map(Drain::finish);
        return Err(e);
    }
    let exit = watchdog.status();
    // The program has ended: what it committed is in the ring, read last.
    let events = drain.map(Drain::finish);
    let exit = exit?;
    watchdog.detach();
    // The next run's working set: the pages installed from this one's
    // record (taken as touched: no fault can say), and the pages that
    // faulted. A page fault-around brought in before its first touch is
    // not known to be touched: once its neighbour is installed up front,
    // it faults itself and joins.
    if let Some(r) = &record {
        let mut pages = server.faulted_pages(ObjectId::MAIN);
        pages.extend(&recorded);
        pages.sort_unstable();
        pages.dedup();
        if pages != recorded {
            r.write(&pages);
        }
    }
    drop(guard);
    let hits = all_hits(probes, objects.as_ref().map(|(_, o)| o));
    let object_stats = objects.as_ref().map_or_else(Vec::new, |(_, o)| {
        let mut v = vec![ObjectStats::new(
            plan.program.image.path.display().to_string(),
            &server.object_stats(ObjectId::MAIN),
        )];
        // The interpreter first (served first), then the others.
        v.extend(o.stats(&server));
        v
    });
    let object_warnings = objects
        .as_ref()
        .map_or_else(Vec::new, |(_, o)| o.warnings());
    let per_process = all_per_process(probes, objects.as_ref().map(|(_, o)| o));
    let stray_traps = probes.map_or(0, |p| p.counters.stray());
    let guard_refused = probes.map_or(0, |p| p.refused.load(std::sync::atomic::Ordering::Relaxed));
    let mut latency = probes.map(Probes::latency).unwrap_or_default();
    if let (Some(p), Some((_, o))) = (probes, &objects) {
        latency.extend(o.latency(&p.column_hits()));
    }
    Ok(Outcome {
        exit,
        stats: server.stats(),
        recorded: recorded.len() as u64,
        handoff,
        probes: hits,
        per_process,
        stray_traps,
        guard_refused,
        events,
        latency,
        objects: object_stats,
        warnings: object_warnings,
    })
}

/// The hits of each process (by pid): the program's probes, then the
/// shared objects' (named `OBJECT:FUNCTION`).
fn all_per_process(probes: Option<&Probes>, objects: Option<&SharedObjects>) -> Vec<ProcessHits> {
    let mut v = probes.map(Probes::per_process).unwrap_or_default();
    let (Some(p), Some(o)) = (probes, objects) else {
        return v;
    };
    let labels = o.labelled_columns();
    if labels.is_empty() {
        return v;
    }
    for (r, pid) in p.rows() {
        let hits = p.counters.row_hits(r);
        let i = match v.iter().position(|x| x.pid == pid as i64) {
            Some(i) => i,
            None => {
                v.push(ProcessHits {
                    pid: pid as i64,
                    hits: Default::default(),
                });
                v.len() - 1
            }
        };
        for (c, label) in &labels {
            if let Some(&n) = hits.get(*c).filter(|&&n| n > 0) {
                v[i].hits.insert(label.clone(), n);
            }
        }
    }
    v.retain(|x| !x.hits.is_empty());
    v
}

/// The hits of every probe: the program's, then the shared objects'.
fn all_hits(probes: Option<&Probes>, objects: Option<&SharedObjects>) -> Vec<ProbeHits> {
    let mut hits = probes.map(Probes::hits).unwrap_or_default();
    if let (Some(p), Some(o)) = (probes, objects) {
        hits.extend(o.hits(&p.column_hits()));
    }
    hits
}

/// Serves faults until the first process (`first`, a pidfd) ends, and
/// answers the session's requests whenever they come.
fn serve(
    server: &mut Server,
    first: &OwnedFd,
    inbox: &Inbox,
    probes: Option<&Probes>,
    mut objects: Option<&mut (ObjectsArea, SharedObjects)>,
) -> Result<()> {
    loop {
        // A panic here must not leave the program hanging on its next fault.
        let wake = catch_unwind(AssertUnwindSafe(|| {
            server.run(first.as_fd(), Some(inbox.bell()))
        }))
        .unwrap_or(Err(ServeError::Panicked))?;
        match wake {
            Wake::Stopped => return Ok(()),
            Wake::Control => {
                for request in inbox.take() {
                    answer(request, first, probes, objects.as_deref().map(|(_, o)| o));
                }
            }
            Wake::Bells => {
                for bell in server.take_bells() {
                    match &mut objects {
                        Some((area, o)) => o.ring(server, area, &bell)?,
                        // Doorbells exist only with objects.
                        None => {
                            server.answer_bell(&bell, &[0; uprobe_runtime::PAGE_SIZE as usize])?
                        }
                    }
                }
            }
        }
    }
}

/// Answers one request of the session. A session that stopped waiting for
/// the answer is no error.
fn answer(
    request: Request,
    first: &OwnedFd,
    probes: Option<&Probes>,
    objects: Option<&SharedObjects>,
) {
    match request {
        Request::Counts(reply) => {
            let _ = reply.send(all_hits(probes, objects));
        }
        Request::Kill(reply) => {
            let sent = match pidfd_send_signal(first, Signal::KILL) {
                // Ended already (and not reaped yet): nothing left to kill.
                Err(Errno::SRCH) => Ok(()),
                other => other,
            };
            let _ = reply.send(sent);
        }
    }
}

/// Makes the rest of the text available without us, once the first process
/// has ended and others live on, then wakes whoever waits for a page.
fn hand_over_text(plan: &Plan, server: &mut Server, objects: bool) -> Result<()> {
    let mut result = match plan.backing {
        // The text file gets every page: the kernel serves them
        // from it, in any process.
        TextBacking::File => plan
            .fill_text()
            .map_err(|e| Error::sys("filling the text file", e)),
        // No file to fill: install what is left in the
        // processes we know of (README: known limits).
        TextBacking::Anon => server.populate_all().map_err(Error::from),
    };
    // The interpreter's and the shared objects' text is anonymous: what is
    // left of it goes in the processes we know of (README: known limits).
    if objects && plan.backing == TextBacking::File && result.is_ok() {
        result = server.populate_all().map_err(Error::from);
    }
    server.wake_all();
    result
}

/// Tells the child it may start the program.
fn release(sock: &OwnedFd) -> Result<()> {
    rustix::io::write(sock, &[1]).map_err(|e| Error::sys("releasing the program", e))?;
    Ok(())
}

/// Gives the calling (monitor) thread a higher scheduling priority where we
/// may: a program's threads wait on it for every fault and every dropped
/// page, and with hundreds of busy threads it would otherwise wait for its
/// turn behind all of them. Unprivileged, the priority stays as it is.
fn raise_priority() {
    // PRIO_PROCESS with no pid: on Linux, the calling thread only.
    let _ = rustix::process::setpriority_process(None, -20);
}
