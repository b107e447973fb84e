//! Run an unmodified x86-64 Linux program through our own ELF loader, with
//! its executable text served page by page through userfaultfd, and count
//! the calls of its functions.
//!
//! The pipeline, one module each: `elf` (parse) → `symbols` and `probes`
//! (resolve probe specs to sites) → `plan` (place every mapping, patch
//! probed pages) → `stage` (the forked child builds the address space) →
//! `handoff` (remove every trace of the monitor, jump to the program) →
//! serve (the `uprobe_runtime` fault server, on the session's monitor
//! thread, with `guard` keeping the probes' SIGTRAP handler in place) →
//! `report`. Only the session API below is public.
//!
//! ```
//! use uprobe_exec::{Command, Exit};
//!
//! // Count the calls of every PyList_* function while python runs a script.
//! let session = Command::new("/usr/bin/python3.11")
//!     .args(["-c", "print(' '.join(['x'] * 100).split()[-1])"])
//!     .probe("PyList_*")
//!     .spawn()?;
//! let report = session.wait()?;
//! assert_eq!(report.exit, Exit::Code(0));
//! let append = report.probes.iter().find(|p| p.symbol == "PyList_Append").unwrap();
//! assert!(append.hits >= 88, "str.split appends each word past the 12th");
//! println!("served {} of {} text pages", report.text.served, report.text.pages);
//! # Ok::<(), uprobe_exec::Error>(())
//! ```
//!
//! While the program runs, [`Session::counts`] reads the hits so far,
//! [`Session::try_wait`] tells whether it has ended and [`Session::kill`]
//! ends it.
//!
//! The `cli` feature (on by default) builds the `uprobe-exec` binary and
//! brings in its argument parser; an embedder turns it off with
//! `default-features = false`.

// Unsafe code lives only in the modules that say `#![allow(unsafe_code)]`,
// one operation per block, each with its SAFETY argument:
//  - `sys/` (fdpass, mm, process, signal): the safe wrappers everything
//    above them calls;
//  - `stage` and `watchdog`: the processes made from the monitor, which
//    may only make system calls (the watchdog shares the monitor's memory
//    and forks the stage, after `Early::go` checked the stage plan against
//    the monitor's reservations);
//  - `handoff`: the blob that unmaps the monitor and jumps to the program;
//  - `guard`: seccomp user notifications and the program's memory.
#![deny(unsafe_code)]

mod addr;
mod cache;
mod elf;
mod error;
pub mod events;
mod guard;
mod handoff;
mod layout;
mod perfmap;
mod plan;
mod probes;
mod report;
mod session;
mod stack;
mod stage;
mod symbols;
mod sys;
mod vma;
mod watchdog;

pub use addr::LinkAddr;
pub use error::{ElfError, Error, Privilege, Result, StageStep};
pub use probes::{ArgType, Linked, Location, ObjectPattern, ProbeError, TraceSpec};
pub use report::{
    Bucket, EventCounts, Exit, Handoff, Latency, ProbeHits, ProcessHits, Report, Text,
};
pub use session::{
    functions, shared_objects, Command, ObjectServing, Prefetch, ProbeMode, Session, TextServing,
    DEFAULT_EVENT_RING, DEFAULT_FAULT_AROUND,
};
pub use symbols::Function;
pub use uprobe_runtime::ServeError;

/// Stages of the pipeline for this workspace's own fuzz test and benchmarks,
/// which drive them one by one. Not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::elf::{Image, Segment};
    pub use crate::layout::Aslr;
    pub use crate::plan::{Draft, Plan, TextBacking};
    pub use crate::symbols::Symbols;

    /// Probe specs resolved to sites, and the jump-safety check.
    pub mod probes {
        pub use crate::probes::{resolve, JumpCheck, Request, Site};
    }
}
