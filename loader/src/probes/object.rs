//! `OBJECT:SPEC`: which of the program's executable objects a probe is
//! in, and the objects the dynamic loader maps at start.
//!
//! ```text
//!   libc.so.6:malloc                      a soname or file name
//!   /usr/lib/x86_64-linux-gnu/libc.so.6:malloc   a path
//!   'libssl*:SSL_*'                       a glob over file names and sonames
//!   ns::f, ns::f(int)                     no object: the program (`::` never splits)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// The object part of `OBJECT:SPEC`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectPattern {
    /// A path (it has a `/`): that file, however it is reached.
    Path(PathBuf),
    /// A file name or soname, e.g. `libc.so.6`.
    Name(String),
    /// A glob over file names and sonames, e.g. `libssl*`.
    Glob(String),
}

impl fmt::Display for ObjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectPattern::Path(p) => write!(f, "{}", p.display()),
            ObjectPattern::Name(n) | ObjectPattern::Glob(n) => f.write_str(n),
        }
    }
}

impl ObjectPattern {
    /// Whether `object` is one this names.
    #[must_use]
    pub fn matches(&self, object: &Linked) -> bool {
        let file = object.path.file_name().map(|n| n.to_string_lossy());
        match self {
            ObjectPattern::Path(p) => same_file(p, &object.path),
            ObjectPattern::Name(n) => object.name == *n || file.is_some_and(|f| f == *n),
            ObjectPattern::Glob(g) => glob::Pattern::new(g)
                .is_ok_and(|p| p.matches(&object.name) || file.is_some_and(|f| p.matches(&f))),
        }
    }
}

/// Whether two paths name one file (its device and inode), or, when
/// either cannot be read, the same text.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}

/// Splits `OBJECT:SPEC` at its object's colon: the first `:` that is not
/// half of a `::` (which C++ and Rust names hold, and no object name
/// needs). No such colon: the whole is SPEC, in the program. An empty
/// OBJECT or SPEC, or an OBJECT glob that does not parse, is an error.
pub fn split(spec: &str) -> Result<(Option<ObjectPattern>, &str), String> {
    let bytes = spec.as_bytes();
    let at = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
    });
    let Some(at) = at else {
        return Ok((None, spec));
    };
    let (object, rest) = (spec[..at].trim(), &spec[at + 1..]);
    if object.is_empty() {
        return Err("no object before ':' (write OBJECT:SPEC, e.g. libc.so.6:malloc)".into());
    }
    if rest.trim().is_empty() {
        return Err(format!(
            "no function after '{object}:' (write OBJECT:SPEC, e.g. {object}:malloc)"
        ));
    }
    let pattern = if object.contains('/') {
        ObjectPattern::Path(PathBuf::from(object))
    } else if object.contains(['*', '?', '[']) {
        glob::Pattern::new(object).map_err(|e| format!("bad object pattern '{object}': {e}"))?;
        ObjectPattern::Glob(object.to_string())
    } else {
        ObjectPattern::Name(object.to_string())
    };
    Ok((Some(pattern), rest))
}

/// An object the dynamic loader maps for the program at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    /// How it was asked for: the `DT_NEEDED` name (a soname, usually),
    /// or the interpreter's path.
    pub name: String,
    /// The file it was found at.
    pub path: PathBuf,
}

impl Linked {
    /// Its name without directories (the interpreter's is a path).
    #[must_use]
    pub fn short_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
}

/// The objects the interpreter `interp` maps for `program` at start, in
/// its order, as it finds them: the `DT_NEEDED` closure through
/// `LD_LIBRARY_PATH`, `DT_RUNPATH`/`DT_RPATH`, its cache and its default
/// directories, with `LD_PRELOAD`'s objects, and itself. Asked of the
/// interpreter (`--list`, what ldd does; it maps the objects and runs none
/// of their code), in the program's environment `env` (`KEY=VALUE`): no
/// second implementation of its search to differ from it. The vDSO, which
/// no file holds, is left out. An object it cannot find is an error, as
/// it is for the program's start.
///
/// The answer is kept in the user's cache (kind `objects`), under a key of
/// everything it depends on (see [`ListKey`]), and taken from there while
/// every file and every directory searched for them is unchanged: the run of
/// the interpreter costs a few milliseconds at each start.
pub fn linked(
    interp: &Path,
    program: &Path,
    env: &[std::ffi::OsString],
) -> Result<Vec<Linked>, String> {
    let key = ListKey::new(interp, program, env);
    if let Some(objects) = key.as_ref().and_then(ListKey::read) {
        return Ok(objects);
    }
    let (objects, searched) = ask(interp, program, env)?;
    if let Some(key) = key {
        key.write(&objects, &searched);
    }
    Ok(objects)
}

/// What the interpreter's answer depends on, besides the files and
/// directories it was found through (which the entry names, with their
/// identities): the program, the interpreter, the working directory
/// (relative search paths), the interpreter's cache and preload files,
/// and the variables it reads (`LD_*`, `GLIBC_TUNABLES`).
struct ListKey(Vec<u8>);

/// The cache's kind for the objects at start.
const LIST_KIND: &str = "objects";

impl ListKey {
    fn new(interp: &Path, program: &Path, env: &[std::ffi::OsString]) -> Option<ListKey> {
        use crate::cache::identity_of;
        use std::fmt::Write;
        let mut k = String::from("uprobe-exec objects 1\n");
        let cwd = std::env::current_dir().ok()?;
        for (what, path) in [
            ("program", program),
            ("interp", interp),
            ("file", Path::new("/etc/ld.so.cache")),
            ("file", Path::new("/etc/ld.so.preload")),
        ] {
            writeln!(k, "{what} {} {}", path.display(), identity_of(path)).ok()?;
        }
        writeln!(k, "cwd {}", cwd.display()).ok()?;
        for kv in env {
            let kv = kv.to_str()?;
            if kv.starts_with("LD_") || kv.starts_with("GLIBC_TUNABLES=") {
                writeln!(k, "env {kv}").ok()?;
            }
        }
        k.push_str("--\n");
        Some(ListKey(k.into_bytes()))
    }

    /// The objects of a whole entry whose files and directories are all
    /// as they were.
    fn read(&self) -> Option<Vec<Linked>> {
        let bytes = crate::cache::read_keyed(LIST_KIND, &self.0)?;
        let text = String::from_utf8(bytes).ok()?;
        let mut objects = Vec::new();
        for line in text.lines() {
            let (what, rest) = line.split_once(' ')?;
            let fields: Vec<&str> = rest.split('\t').collect();
            match (what, fields.as_slice()) {
                ("O", [name, path, id]) => {
                    if crate::cache::identity_of(Path::new(path)) != *id {
                        return None;
                    }
                    objects.push(Linked {
                        name: (*name).to_string(),
                        path: PathBuf::from(path),
                    });
                }
                ("D", [dir, id]) if crate::cache::identity_of(Path::new(dir)) == *id => {}
                _ => return None,
            }
        }
        Some(objects)
    }

    /// Keeps `objects` with the identities of their files and of every
    /// directory the interpreter searched for them (`searched`, from its
    /// `LD_DEBUG=libs` output: `LD_LIBRARY_PATH`'s, `DT_RUNPATH`'s and
    /// `DT_RPATH`'s with their `glibc-hwcaps`, `tls` and platform
    /// subdirectories, and the system's), and of their own directories.
    fn write(&self, objects: &[Linked], searched: &[PathBuf]) {
        use crate::cache::identity_of;
        use std::fmt::Write;
        let mut dirs: Vec<PathBuf> = searched.to_vec();
        dirs.extend(
            objects
                .iter()
                .filter_map(|o| o.path.parent().map(Path::to_path_buf)),
        );
        dirs.sort();
        dirs.dedup();
        let mut body = String::new();
        for o in objects {
            let path = o.path.display().to_string();
            if o.name.contains(['\t', '\n']) || path.contains(['\t', '\n']) {
                return;
            }
            let _ = writeln!(body, "O {}\t{path}\t{}", o.name, identity_of(&o.path));
        }
        for d in &dirs {
            let shown = d.display().to_string();
            if shown.contains(['\t', '\n']) {
                return;
            }
            let _ = writeln!(body, "D {shown}\t{}", identity_of(d));
        }
        crate::cache::write_keyed(LIST_KIND, &self.0, body.as_bytes());
    }
}

/// Asks the interpreter (`--list`, with `LD_DEBUG=libs`); see [`linked`].
/// Also gives the directories it searched.
fn ask(
    interp: &Path,
    program: &Path,
    env: &[std::ffi::OsString],
) -> Result<(Vec<Linked>, Vec<PathBuf>), String> {
    use std::os::unix::ffi::OsStrExt;
    let vars = env.iter().filter_map(|kv| {
        let b = kv.as_bytes();
        let eq = b.iter().position(|&c| c == b'=')?;
        Some((
            std::ffi::OsStr::from_bytes(&b[..eq]),
            std::ffi::OsStr::from_bytes(&b[eq + 1..]),
        ))
    });
    let out = std::process::Command::new(interp)
        .env_clear()
        .envs(vars)
        .env("LD_DEBUG", "libs")
        .arg("--list")
        .arg(program)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {} --list: {e}", interp.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let objects = parse_list(&text)?;
    let (searched, said) = parse_debug(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && objects.is_empty() {
        return Err(format!(
            "{} --list {} failed ({}): {}",
            interp.display(),
            program.display(),
            out.status,
            said.trim()
        ));
    }
    Ok((objects, searched))
}

/// The directories of the `search path=` lines of the interpreter's
/// `LD_DEBUG=libs` output (`PID:\t…`), and the rest of what it said.
fn parse_debug(text: &str) -> (Vec<PathBuf>, String) {
    let mut dirs = Vec::new();
    let mut said = String::new();
    for line in text.lines() {
        let debug = line
            .trim_start()
            .split_once(":\t")
            .filter(|(pid, _)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        let Some((_, what)) = debug else {
            said.push_str(line);
            said.push('\n');
            continue;
        };
        if let Some(paths) = what.trim_start().strip_prefix("search path=") {
            let paths = paths.split('\t').next().unwrap_or(paths);
            dirs.extend(
                paths
                    .split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from),
            );
        }
    }
    (dirs, said)
}

/// The objects of the interpreter's `--list` output: `NAME => PATH (ADDR)`
/// for a needed object, `PATH (ADDR)` for the interpreter, `NAME (ADDR)`
/// for the vDSO (left out), `NAME => not found` (an error).
fn parse_list(text: &str) -> Result<Vec<Linked>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, rest) = match line.split_once(" => ") {
            Some((name, rest)) => (name.trim(), rest.trim()),
            None => ("", line),
        };
        if rest == "not found" {
            return Err(format!("{name} is needed and not found"));
        }
        // The path, without the load address after it.
        let path = rest.rsplit_once(" (").map_or(rest, |(p, _)| p).trim();
        if !path.starts_with('/') {
            continue;
        }
        out.push(Linked {
            name: if name.is_empty() { path } else { name }.to_string(),
            path: PathBuf::from(path),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_split_off_at_a_lone_colon() {
        let name = |n: &str| Some(ObjectPattern::Name(n.into()));
        assert_eq!(split("malloc"), Ok((None, "malloc")));
        assert_eq!(split("ns::f(int)"), Ok((None, "ns::f(int)")));
        assert_eq!(split("libc.so.6:malloc"), Ok((name("libc.so.6"), "malloc")));
        assert_eq!(
            split("libfoo.so:ns::f%return(int)"),
            Ok((name("libfoo.so"), "ns::f%return(int)"))
        );
        assert_eq!(
            split("/lib/x86_64-linux-gnu/libc.so.6:str*"),
            Ok((
                Some(ObjectPattern::Path(
                    "/lib/x86_64-linux-gnu/libc.so.6".into()
                )),
                "str*"
            ))
        );
        assert_eq!(
            split("libssl*:SSL_read"),
            Ok((Some(ObjectPattern::Glob("libssl*".into())), "SSL_read"))
        );
        assert!(split(":malloc")
            .unwrap_err()
            .contains("no object before ':'"));
        assert!(split("libc.so.6:")
            .unwrap_err()
            .contains("no function after 'libc.so.6:'"));
        assert!(split("lib[c:malloc")
            .unwrap_err()
            .contains("bad object pattern 'lib[c'"));
    }

    #[test]
    fn the_interpreters_list_is_read_as_it_prints_it() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5a1f2000)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f58dec53000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f58dea27000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f58ded46000)\n";
        let got = parse_list(text).unwrap();
        let names: Vec<&str> = got.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            ["libm.so.6", "libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
        );
        assert_eq!(got[1].path, Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(
            parse_list("\tlibgone.so.1 => not found\n").unwrap_err(),
            "libgone.so.1 is needed and not found"
        );
    }

    #[test]
    fn objects_match_by_name_file_path_or_glob() {
        let libc = Linked {
            name: "libc.so.6".into(),
            path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
        };
        let (Ok((Some(a), _)), Ok((Some(b), _)), Ok((Some(c), _)), Ok((Some(d), _))) = (
            split("libc.so.6:f"),
            split("/usr/lib/x86_64-linux-gnu/libc.so.6:f"),
            split("libc*:f"),
            split("libm.so.6:f"),
        ) else {
            panic!("all parse");
        };
        assert!(a.matches(&libc));
        // /lib is a link to /usr/lib here: the same file.
        assert_eq!(
            b.matches(&libc),
            same_file(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"), &libc.path)
        );
        assert!(c.matches(&libc));
        assert!(!d.matches(&libc));
    }

    #[test]
    fn the_searched_directories_are_read_from_ld_debug() {
        let text = "     13557:\tfind library=libbz2.so.1.0 [0]; searching\n\
             13557:\t search path=/lp/glibc-hwcaps/x86-64-v3:/lp/x86_64:/lp\t\t(LD_LIBRARY_PATH)\n\
             13557:\t  trying file=/lp/x86_64/libbz2.so.1.0\n\
             13557:\t search cache=/etc/ld.so.cache\n\
             ld.so: something went wrong\n";
        let (dirs, said) = parse_debug(text);
        assert_eq!(
            dirs,
            ["/lp/glibc-hwcaps/x86-64-v3", "/lp/x86_64", "/lp"].map(PathBuf::from)
        );
        assert_eq!(said, "ld.so: something went wrong\n");
    }
}
