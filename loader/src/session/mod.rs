//! The public session API: find the program, plan it, fork the stage, serve
//! its faults, and report.
//!
//! The fork happens on the session's own monitor thread, which then serves
//! faults until the program ends: the program's `PR_SET_PDEATHSIG` is tied
//! to the thread that forked it, so that thread must outlive the program.

mod command;
mod monitor;
mod probes;
mod program;
mod start;
mod watchdog_client;

use std::ffi::OsStr;
use std::thread::JoinHandle;

pub use command::{Command, ProbeMode, DEFAULT_FAULT_AROUND};
use monitor::Outcome;
use program::resolve;

use crate::elf::Image;
use crate::error::{Error, Result};
use crate::report::{Exit, Report, Text};
use crate::symbols::Symbols;

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
            unprobeable: crate::probes::unprobeable(&image, &syms, f).map(|u| u.detail),
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
