//! Run an unmodified x86-64 Linux program through our own ELF loader, with
//! its executable text served page by page through userfaultfd.
//!
//! The pipeline, one module each: [`elf`] (parse) → [`symbols`] and
//! [`probes`] (resolve probe specs to sites) → [`plan`] (place every mapping,
//! patch probed pages) → [`stage`] (the forked child builds the address
//! space) → [`handoff`] (remove every trace of the monitor, jump to the
//! program) → serve (the `uprobe_runtime` fault server, with [`guard`]
//! keeping the probes' SIGTRAP handler in place) → [`report`].
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

pub mod addr;
pub mod elf;
pub mod error;
pub mod guard;
pub mod handoff;
pub mod layout;
mod perfmap;
pub mod plan;
pub mod probes;
pub mod report;
mod session;
pub mod stack;
pub mod stage;
pub mod symbols;
pub mod vma;
pub mod watchdog;

pub use error::{ElfError, Error, Result};
pub use probes::Location;
pub use report::{Exit, Report};
pub use session::{functions, Command, ProbeMode, Session, DEFAULT_FAULT_AROUND};
