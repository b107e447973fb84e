//! Finding the program as execvp(3) and execve(2) would: `PATH`, `#!` lines,
//! the shell for files that are neither, and the refusals (set-user-ID,
//! file capabilities) a user-space loader owes.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::error::{Error, Privilege, Result};

/// The ELF to load and the argv/execfn it gets.
pub(super) struct Resolved {
    pub(super) elf: PathBuf,
    pub(super) argv: Vec<Vec<u8>>,
    pub(super) execfn: Vec<u8>,
}

/// The shell execvp(3) runs a file with when execve(2) says ENOEXEC
/// (glibc's `_PATH_BSHELL`).
const SHELL: &str = "/bin/sh";

/// Finds the program as execvp(3) would, and follows `#!` lines as execve(2)
/// does. A file that is neither ELF nor `#!` (execve: ENOEXEC) runs as
/// `/bin/sh FILE ARGS...`, as execvp, env(1) and nohup(1) run it.
pub(super) fn resolve(program: &OsStr, args: &[OsString]) -> Result<Resolved> {
    let path = if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        if !p.exists() {
            return Err(Error::NoSuchFile { path: p });
        }
        p
    } else {
        let path_var =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path_var)
            .map(|d| d.join(program))
            .find(|p| p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok())
            .ok_or_else(|| Error::NotFound {
                program: program.to_string_lossy().into_owned(),
            })?
    };
    let args = args.iter().map(|a| a.as_bytes().to_vec());
    let argv = std::iter::once(program.as_bytes().to_vec())
        .chain(args.clone())
        .collect();
    if let Some(r) = follow(&path, argv)? {
        return Ok(r);
    }
    // glibc's execvp: argv[0] gives way to the shell and the file found.
    let argv = [
        SHELL.as_bytes().to_vec(),
        path.as_os_str().as_bytes().to_vec(),
    ]
    .into_iter()
    .chain(args)
    .collect();
    follow(Path::new(SHELL), argv)?.ok_or_else(|| Error::CannotRun {
        path: SHELL.into(),
        reason: "not an ELF file".into(),
    })
}

/// What execve makes of a file from its first bytes.
enum Format {
    /// `#!`: the interpreter and its optional argument.
    Script(PathBuf, Option<Vec<u8>>),
    /// The ELF magic: the ELF parser decides whether it can run.
    Elf,
    /// Neither: execve fails with ENOEXEC.
    Other,
}

/// Follows the `#!` lines from `path`, run with `argv`, to an ELF file, as
/// execve does. `None` where execve would fail with ENOEXEC.
fn follow(path: &Path, mut argv: Vec<Vec<u8>>) -> Result<Option<Resolved>> {
    let execfn = path.as_os_str().as_bytes().to_vec();
    let mut elf = path.to_owned();
    // The kernel follows at most 4 levels of interpreters.
    for _ in 0..5 {
        check_runnable(&elf)?;
        let (interp, optarg) = match format(&elf)? {
            Format::Elf => return Ok(Some(Resolved { elf, argv, execfn })),
            Format::Other => return Ok(None),
            Format::Script(interp, optarg) => (interp, optarg),
        };
        if matches!(std::fs::metadata(&interp), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            return Err(Error::NoInterpreter {
                program: elf,
                interp,
            });
        }
        let mut next = vec![interp.as_os_str().as_bytes().to_vec()];
        next.extend(optarg);
        next.push(elf.as_os_str().as_bytes().to_vec());
        next.extend(argv.drain(..).skip(1));
        argv = next;
        elf = interp;
    }
    Err(Error::CannotRun {
        path: elf,
        reason: "too many levels of #! interpreters".into(),
    })
}

/// Refuses what a userland loader cannot run faithfully.
fn check_runnable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Unreadable {
        path: path.into(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "is a directory".into(),
        });
    }
    if !meta.is_file() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    if rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_err() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "permission denied (no execute permission)".into(),
        });
    }
    let mode = meta.permissions().mode();
    let refuse = |privilege| Error::Privileged {
        path: path.into(),
        privilege,
    };
    if mode & 0o4000 != 0 {
        return Err(refuse(Privilege::SetUid));
    }
    if mode & 0o2010 == 0o2010 {
        return Err(refuse(Privilege::SetGid));
    }
    match rustix::fs::getxattr(path, "security.capability", &mut [0u8; 0][..]) {
        Ok(_) | Err(Errno::RANGE) => return Err(refuse(Privilege::Capabilities)),
        Err(_) => {}
    }
    Ok(())
}

/// Whether `path` is a `#!` script (and its interpreter and optional
/// argument), an ELF file, or neither.
fn format(path: &Path) -> Result<Format> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|source| Error::Unreadable {
            path: path.into(),
            source,
        })?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        return Ok(Format::Elf);
    }
    if !head.starts_with(b"#!") {
        return Ok(Format::Other);
    }
    let line = head[2..].split(|&c| c == b'\n').next().unwrap_or(&[]);
    let line = line.trim_ascii();
    let (interp, rest) = match line.iter().position(|c| c.is_ascii_whitespace()) {
        Some(i) => (&line[..i], line[i..].trim_ascii()),
        None => (line, &[][..]),
    };
    if interp.is_empty() {
        return Err(Error::CannotRun {
            path: path.into(),
            reason: "its #! line names no interpreter".into(),
        });
    }
    let optarg = (!rest.is_empty()).then(|| rest.to_vec());
    Ok(Format::Script(
        PathBuf::from(OsString::from_vec(interp.to_vec())),
        optarg,
    ))
}
