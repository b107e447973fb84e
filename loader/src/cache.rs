//! What we learn from a file and can keep for the next run: entries in
//! the user's cache directory (`$XDG_CACHE_HOME/uprobe-exec`, or
//! `~/.cache/uprobe-exec`), one per file and kind, each named by a key that
//! changes whenever the file or this program does:
//!
//! - the file's device, inode, size, and modification and change times
//!   (the change time cannot be set back by anyone but the kernel);
//! - the same of the running executable (`/proc/self/exe`), so that a new
//!   build of uprobe-exec never reads what an old one wrote.
//!
//! An entry is written to a temporary file and renamed into place, so a
//! reader sees a whole entry or none. Anything that does not read back
//! whole (no directory, no permission, a short or foreign file) is a miss:
//! the cache only ever saves time. At most [`KEEP`] entries of a kind stay;
//! the least recently written go first.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Entries kept per kind.
pub const KEEP: usize = 32;

/// The cache directory for `kind` (created on first use), if the user has
/// one and it is not turned off (`UPROBE_EXEC_CACHE=off`).
fn dir(kind: &str) -> Option<PathBuf> {
    if std::env::var_os("UPROBE_EXEC_CACHE").is_some_and(|v| v == "off") {
        return None;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("uprobe-exec").join(kind);
    fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// The identity of a file's current contents, as the kernel keeps it.
fn identity(m: &fs::Metadata) -> [i64; 7] {
    [
        m.dev() as i64,
        m.ino() as i64,
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
}

/// The key of `file`'s entries: its identity and ours, as hex.
fn key(file: &File) -> Option<String> {
    let ours = fs::metadata("/proc/self/exe").ok()?;
    let theirs = file.metadata().ok()?;
    let mut k = String::new();
    for v in identity(&theirs).into_iter().chain(identity(&ours)) {
        k.push_str(&format!("{:x}-", v as u64));
    }
    k.pop();
    Some(k)
}

/// The entry of `kind` for `file`, if there is one, mapped: a reader
/// looks at the few bytes it needs, and nothing is copied.
pub fn map(kind: &str, file: &File) -> Option<memmap2::Mmap> {
    let path = dir(kind)?.join(key(file)?);
    let entry = File::open(path).ok()?;
    // SAFETY: an entry is never written in place (a new one is renamed
    // over it) and a removed one stays whole while mapped, so the bytes do
    // not change under the mapping; they are only read, and checked
    // before use.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&entry) }.ok()?;
    Some(map)
}

/// Keeps `bytes` as the entry of `kind` for `file`; failures are ignored
/// (the next run computes it again).
pub fn write(kind: &str, file: &File, bytes: &[u8]) {
    let (Some(dir), Some(key)) = (dir(kind), key(file)) else {
        return;
    };
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    let written = File::create(&tmp).and_then(|mut f| f.write_all(bytes));
    if written.is_err() || fs::rename(&tmp, dir.join(&key)).is_err() {
        let _ = fs::remove_file(&tmp);
        return;
    }
    prune(&dir);
}

/// Removes the oldest entries beyond [`KEEP`].
fn prune(dir: &std::path::Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<(i64, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.mtime(), e.path())))
        .collect();
    if entries.len() <= KEEP {
        return;
    }
    entries.sort();
    for (_, p) in &entries[..entries.len() - KEEP] {
        let _ = fs::remove_file(p);
    }
}
