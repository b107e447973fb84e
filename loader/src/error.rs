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
    /// Found, but its type or first bytes cannot be read (exit 126).
    #[error("cannot run {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A program execve would run with privileges we cannot grant (exit 126).
    #[error(
        "cannot run {}: it is {privilege}; a user-space loader cannot grant the privileges \
         execve would, so uprobe-exec refuses rather than run it with the wrong ones",
        path.display()
    )]
    Privileged {
        /// The file.
        path: PathBuf,
        /// What it would be granted.
        privilege: Privilege,
    },
    /// The interpreter a program names (`PT_INTERP`) exists but cannot be
    /// loaded (exit 126).
    #[error("cannot run {}: its interpreter {}", program.display(), interpreter_problem(source))]
    BadInterpreter {
        /// The program.
        program: PathBuf,
        /// Why its interpreter cannot be loaded.
        #[source]
        source: ElfError,
    },
    /// A malformed or foreign ELF file (exit 126).
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// A probe cannot be placed (exit 125).
    #[error(transparent)]
    Probe(#[from] ProbeError),
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
    /// An option this run cannot honour (exit 125).
    #[error("{option}: {why}")]
    Unavailable {
        /// The option, as written.
        option: String,
        /// Why.
        why: String,
    },
    /// A function `--latency` (or a return probe) cannot time (exit 125).
    #[error("cannot time {site} (--latency, %return): {why}")]
    Untimeable {
        /// The function.
        site: String,
        /// Why.
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
            Error::CannotRun { .. }
            | Error::Unreadable { .. }
            | Error::Privileged { .. }
            | Error::BadInterpreter { .. } => 126,
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

/// What execve would grant a program that we cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Privilege {
    /// The set-user-ID bit.
    SetUid,
    /// The set-group-ID bit (with group execute).
    SetGid,
    /// File capabilities (`security.capability`).
    Capabilities,
}

impl std::fmt::Display for Privilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Privilege::SetUid => "set-user-ID",
            Privilege::SetGid => "set-group-ID",
            Privilege::Capabilities => "given file capabilities (security.capability)",
        })
    }
}

/// `PATH: what went wrong` of an interpreter, after "its interpreter ".
fn interpreter_problem(e: &ElfError) -> String {
    match e {
        ElfError::Open { path, source } => format!("{}: {source}", path.display()),
        ElfError::Malformed { path, reason } => {
            format!("{} is unusable: {reason}", path.display())
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

/// Why a probe cannot be placed (exit 125).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProbeError {
    /// A malformed spec.
    #[error("bad probe '{spec}': {why}")]
    BadSpec {
        /// The spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// No such function.
    #[error("no function '{name}' in {program}{hint}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The program.
        program: String,
        /// Close names or the stripped-binary hint.
        hint: String,
    },
    /// A glob matched nothing.
    #[error("probe pattern '{pattern}' matches no function in {program}{hint}")]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// The program.
        program: String,
        /// Where to look instead.
        hint: String,
    },
    /// The function is one the program takes from a shared library.
    #[error(
        "'{name}' is not in {program}: it is defined in a shared library the program loads ({libraries}), \
         so name it with its object: OBJECT:{name}"
    )]
    InSharedLibrary {
        /// The name asked for.
        name: String,
        /// The program.
        program: String,
        /// Its `DT_NEEDED` libraries.
        libraries: String,
    },
    /// The offset is inside an instruction.
    #[error(
        "{symbol}+{offset:#x} is not an instruction boundary; the nearest are {before} and {after}"
    )]
    NotBoundary {
        /// Function.
        symbol: String,
        /// Offset asked for.
        offset: u64,
        /// Boundary before, as `sym+0x..`.
        before: String,
        /// Boundary after.
        after: String,
    },
    /// The offset is past the end of the function.
    #[error("{symbol}+{offset:#x} is past the end of the function ({size:#x} bytes)")]
    PastEnd {
        /// Function.
        symbol: String,
        /// Offset asked for.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// An address outside every known function.
    #[error("address {addr:#x} is not inside any function of {program}; pass --unsafe to probe it anyway")]
    OutsideFunctions {
        /// The address.
        addr: u64,
        /// The program.
        program: String,
    },
    /// An address outside the program's text.
    #[error("address {addr:#x} is not in the executable text of {program}")]
    NotText {
        /// The address.
        addr: u64,
        /// The program.
        program: String,
    },
    /// `--probe-mode jump` on a site where a jump is not safe.
    #[error("cannot put a jump at {site}: {why} (use --probe-mode auto or int3)")]
    NoJump {
        /// `sym+0x..`.
        site: String,
        /// Why not.
        why: String,
    },
    /// The program runs a copy of the code elsewhere.
    #[error("cannot probe {site}: {why}")]
    Copied {
        /// `sym+0x..`.
        site: String,
        /// Which code, and why.
        why: String,
    },
    /// The instruction cannot be single-stepped out of line.
    #[error("cannot probe {site}: its instruction `{insn}` {why}")]
    NotRelocatable {
        /// `sym+0x..`.
        site: String,
        /// The instruction, disassembled.
        insn: String,
        /// Why.
        why: String,
    },
    /// The trampoline of a jump site cannot be made.
    #[error("cannot probe {site}: the trampoline for its instructions `{insns}` {why}")]
    Trampoline {
        /// `sym+0x..`.
        site: String,
        /// The displaced instructions, disassembled, `; ` between them.
        insns: String,
        /// Why.
        why: String,
    },
}

/// Result with the loader's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_errors_read_as_before() {
        let e = Error::Stage {
            step: StageStep::Map,
            addr: Some(0x40_0000),
            errno: rustix::io::Errno::NOMEM,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "setting up the program failed: mapping a segment of the program (at 0x400000): {}",
                io::Error::from_raw_os_error(libc::ENOMEM)
            )
        );
        assert_eq!(
            std::error::Error::source(&e).map(ToString::to_string),
            Some(rustix::io::Errno::NOMEM.to_string())
        );
        let e = Error::Stage {
            step: StageStep::Start,
            addr: None,
            errno: rustix::io::Errno::PIPE,
        };
        assert!(e.to_string().starts_with(
            "setting up the program failed: starting the program (the child died early): "
        ));
        assert_eq!(e.exit_code(), 125);
    }

    #[test]
    fn refusals_say_why_and_exit_126() {
        let e = Error::Privileged {
            path: "/usr/bin/passwd".into(),
            privilege: Privilege::SetUid,
        };
        assert!(e
            .to_string()
            .starts_with("cannot run /usr/bin/passwd: it is set-user-ID; a user-space loader"));
        assert_eq!(e.exit_code(), 126);
        let e = Error::BadInterpreter {
            program: "/p".into(),
            source: ElfError::Malformed {
                path: "/lib/ld.so".into(),
                reason: "not x86-64".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "cannot run /p: its interpreter /lib/ld.so is unusable: not x86-64"
        );
        assert_eq!(e.exit_code(), 126);
    }
}
