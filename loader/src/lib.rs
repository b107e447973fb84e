//! Run an unmodified x86-64 Linux program through our own ELF loader, with
//! its executable text served page by page through userfaultfd.
//!
//! The pipeline, one module each: [`elf`] (parse) → [`plan`] (place every
//! mapping) → [`stage`] (the forked child builds the address space) →
//! [`handoff`] (remove every trace of the monitor, jump to the program) →
//! serve (the `uprobe_runtime` fault server) → [`report`].
//!
//! ```
//! use uprobe_exec::{Command, Exit};
//!
//! let session = Command::new("/usr/bin/true").spawn()?;
//! let report = session.wait()?;
//! assert_eq!(report.exit, Exit::Code(0));
//! println!("served {} of {} text pages", report.text.served, report.text.pages);
//! # Ok::<(), uprobe_exec::Error>(())
//! ```

pub mod addr;
pub mod elf;
pub mod error;
pub mod guard;
pub mod handoff;
pub mod plan;
pub mod probes;
pub mod report;
mod session;
pub mod stack;
pub mod stage;
pub mod symbols;

pub use error::{ElfError, Error, Result};
pub use report::{Exit, Report};
pub use session::{functions, Command, Session};
