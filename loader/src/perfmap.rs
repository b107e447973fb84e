//! The JIT symbol map for profilers: `/tmp/perf-PID.map`.
//!
//! The program's text is anonymous memory, so perf, samply and bcc/bpftrace
//! find no file to read symbols from. For anonymous code they all read this
//! file instead, the convention JITs (V8's `--perf-basic-prof`, Python's
//! `-X perf`) use: one line per function, `START SIZE NAME`, START and SIZE
//! in hex, runtime addresses. perf reads it when it *reports*, after the
//! program is gone, so like those JITs we leave it in place; whoever asked
//! for it removes it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::addr::Bias;
use crate::symbols::Symbols;

/// The map's lines: every function with a size, at its runtime address,
/// sorted by address, then `extra` ranges (start, len, name).
#[must_use]
pub fn lines(syms: &Symbols, bias: Bias, extra: &[(u64, u64, String)]) -> String {
    let mut out = String::new();
    let mut last = None;
    for f in syms.all().iter().filter(|f| f.size > 0) {
        let start = bias.apply(f.addr).0;
        // One line per address: aliases (e.g. `memcpy` and `__memcpy`) would
        // make the profiler pick one at random.
        if last == Some(start) {
            continue;
        }
        last = Some(start);
        let _ = writeln!(out, "{start:x} {:x} {}", f.size, one_line(f.display_name()));
    }
    for (start, len, name) in extra {
        let _ = writeln!(out, "{start:x} {len:x} {}", one_line(name));
    }
    out
}

fn one_line(name: &str) -> String {
    name.replace(['\n', '\r'], " ")
}

/// Writes `text` to `/tmp/perf-PID.map`, refusing to follow a symlink or to
/// write into a file someone else owns (`/tmp` is shared).
pub fn write(pid: i32, text: &str) -> std::io::Result<PathBuf> {
    let path = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let meta = f.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me || meta.nlink() != 1 {
        return Err(std::io::Error::other(format!(
            "{} exists and is not a plain file of ours",
            path.display()
        )));
    }
    f.set_len(0)?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}
