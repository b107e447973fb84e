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
    /// The address space could not be planned (exit 125).
    /// Auto mode at a site where only an int3 would fit.
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
    #[error("cannot lay out {}: {reason}", path.display())]
    Plan {
        /// The image being placed.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The child failed while building the program's address space (exit 125).
    #[error("setting up the program failed: {step}: {errno}")]
    Stage {
        /// What the child was doing.
        step: String,
        /// What the kernel said.
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

/// Result with the loader's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
