//! The monitor thread: forks the stage (through `start`), then serves the
//! program's faults until it ends, and gathers what the report needs.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;

use uprobe_runtime::{Server, UffdMode};

use super::probes::Probes;
use super::program::Resolved;
use super::start::{start, Signals};
use crate::error::{Error, Result};
use crate::plan::{Plan, TextBacking};
use crate::report::{Exit, Handoff, ProbeHits, ProcessHits};

/// What the monitor thread returns.
pub(super) struct Outcome {
    pub(super) exit: Exit,
    pub(super) stats: uprobe_runtime::TextStats,
    pub(super) handoff: Handoff,
    pub(super) probes: Vec<ProbeHits>,
    pub(super) per_process: Vec<ProcessHits>,
    pub(super) stray_traps: u64,
    pub(super) guard_refused: u64,
}

/// The monitor thread: forks the stage, then serves faults until the program ends.
pub(super) fn monitor(
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
            let stray_traps = probes.as_ref().map_or(0, |p| p.counters.get(0));
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
