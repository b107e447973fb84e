//! Errors of the loader, with the exit codes of env(1)/timeout(1): 127 the
//! program was not found, 126 it was found but we cannot run it, 125 any
//! other failure of ours.

use std::io;
use std::path::PathBuf;

use uprobe_runtime::ServeError;

/// Why an ELF file cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Opening or mapping the file failed.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The file is not a program we can load.
    #[error("cannot run {}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// A one-line reason.
        reason: String,
    },
}

/// Everything that can go wrong in running a program under uprobe-exec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such program (exit 127).
    #[error("{program}: command not found (not a path, and not in PATH)")]
    NotFound {
        /// The name as given.
        program: String,
    },
    /// The program file does not exist (exit 127).
    #[error("{}: no such file", path.display())]
    NoSuchFile {
        /// The path as given.
        path: PathBuf,
    },
    /// The interpreter a program names (`PT_INTERP` or `#!`) does not exist
    /// (exit 127: execve fails with ENOENT, and a shell says 127).
    #[error("cannot run {}: its interpreter {} does not exist", program.display(), interp.display())]
    NoInterpreter {
        /// The program or script that names it.
        program: PathBuf,
        /// The missing interpreter.
        interp: PathBuf,
    },
    /// Found, but not something we can run (exit 126).
    #[error("cannot run {}: {reason}", path.display())]
    CannotRun {
        /// The file.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// A malformed or foreign ELF file (exit 126).
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// A probe cannot be placed (exit 125).
    #[error(transparent)]
    Probe(#[from] crate::probes::ProbeError),
    /// Auto mode at a site where only an int3 would fit (exit 125).
    #[error(
        "cannot probe {site} safely: a jump does not fit there ({why}), and an int3 can kill \
         or change the program (a thread with SIGTRAP blocked dies at the hit), so \
         --probe-mode auto places none; --probe-mode int3 places one anyway"
    )]
    UnsafeSite {
        /// `sym+0x..`.
        site: String,
        /// Why a jump does not fit.
        why: String,
    },
    /// A non-PIE program's fixed addresses are taken in the monitor
    /// (exit 125).
    #[error(
        "cannot lay out {}: its fixed addresses {start:#x}..{end:#x} are taken in the monitor \
         ({source}); this happens only if the monitor itself sits there",
        path.display()
    )]
    AddressesTaken {
        /// The image being placed.
        path: PathBuf,
        /// Its lowest address.
        start: u64,
        /// One past its highest.
        end: u64,
        /// What the kernel said (`EEXIST`: a mapping is there).
        #[source]
        source: io::Error,
    },
    /// No free range of the address space holds an image (exit 125).
    #[error(
        "cannot lay out {}: no room for {len:#x} bytes aligned to {align:#x}: {source}",
        path.display()
    )]
    NoRoom {
        /// The image being placed.
        path: PathBuf,
        /// Its span.
        len: u64,
        /// Its `p_align`.
        align: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The probe area cannot be placed within reach of a rel32 from the
    /// text (exit 125): the address space near the program is full.
    #[error(
        "cannot lay out {}: no room for the probe area within 2 GiB of the text",
        path.display()
    )]
    NoProbeRoom {
        /// The program.
        path: PathBuf,
    },
    /// A system call failed while laying out the program's memory (exit 125).
    #[error("cannot lay out {}: {what}: {source}", path.display())]
    Layout {
        /// The image being placed.
        path: PathBuf,
        /// What we were doing.
        what: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The child failed while building the program's address space (exit 125).
    #[error("setting up the program failed: {step}{}: {errno}", at(.addr))]
    Stage {
        /// What the child was doing.
        step: StageStep,
        /// The address involved, if any.
        addr: Option<u64>,
        /// What the kernel said.
        #[source]
        errno: rustix::io::Errno,
    },
    /// The fault server could not go on; the program was killed (exit 125).
    #[error("the fault server stopped: {0}; the program was killed")]
    Serve(#[from] ServeError),
    /// A system call of ours failed (exit 125).
    #[error("{what}: {source}")]
    Sys {
        /// What we were doing.
        what: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The exit status the CLI uses for this error.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotFound { .. } | Error::NoSuchFile { .. } | Error::NoInterpreter { .. } => 127,
            Error::CannotRun { .. } => 126,
            Error::Elf(ElfError::Open { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                127
            }
            Error::Elf(_) => 126,
            _ => 125,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Sys {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// ` (at 0x…)` for an address, nothing without.
fn at(addr: &Option<u64>) -> String {
    addr.map_or_else(String::new, |a| format!(" (at {a:#x})"))
}

/// What the child was doing when it failed to set the program up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StageStep {
    /// Mapping a segment at its planned address.
    Map,
    /// Setting up the program's stack.
    Stack,
    /// Creating the userfaultfd (`ENOSYS`, `EPERM`: userfaultfd is off).
    Userfaultfd,
    /// The `UFFDIO_API` handshake.
    UffdApi,
    /// Registering the text with the userfaultfd.
    Register,
    /// Sending the userfaultfd to the monitor.
    Send,
    /// Mapping the hand-off code.
    Blob,
    /// The child died before it said how it went.
    Start,
    /// Its message came without the userfaultfd.
    Receive,
    /// A step this monitor does not know (by its number).
    Unknown(u32),
}

impl std::fmt::Display for StageStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageStep::Map => "mapping a segment of the program",
            StageStep::Stack => "setting up the program's stack",
            StageStep::Userfaultfd => {
                "creating a userfaultfd (is userfaultfd enabled in this kernel?)"
            }
            StageStep::UffdApi => "negotiating userfaultfd features",
            StageStep::Register => "registering the program's text with userfaultfd",
            StageStep::Send => "passing the userfaultfd to the monitor",
            StageStep::Blob => "mapping the hand-off code",
            StageStep::Start => "starting the program (the child died early)",
            StageStep::Receive => "receiving the userfaultfd",
            StageStep::Unknown(_) => "an unknown step",
        })
    }
}

/// Result with the loader's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
