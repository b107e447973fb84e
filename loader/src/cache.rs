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
//! reader sees a whole entry or none. The directories must be the user's
//! own and writable by nobody else, or the cache is not used. Anything that
//! does not read back
//! whole (no directory, no permission, a short or foreign file) is a miss:
//! the cache only ever saves time. At most [`KEEP`] entries of a kind stay;
//! the least recently written go first.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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
    let ours = base.join("uprobe-exec");
    let dir = ours.join(kind);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    // What is read from the cache decides where probes are patched in: it
    // is trusted as the user's own files are, and only then. A directory
    // that someone else owns (root reading a user's cache through a kept
    // XDG_CACHE_HOME or HOME) or may write to is not used.
    let euid = rustix::process::geteuid().as_raw();
    // Ours but writable by the group or others (made under a umask of 002 by
    // an older build): made private first.
    let private = |p: &std::path::Path| {
        let Ok(m) = fs::symlink_metadata(p) else {
            return false;
        };
        if !m.is_dir() || m.uid() != euid {
            return false;
        }
        m.mode() & 0o022 == 0
            || fs::set_permissions(
                p,
                std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o755),
            )
            .is_ok()
    };
    (private(&ours) && private(&dir)).then_some(dir)
}

/// The identity of a file's current contents, as the kernel keeps it.
pub fn identity(m: &fs::Metadata) -> [i64; 7] {
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
    put(kind, key(file), &[bytes]);
}

/// Writes `parts` as the entry `key` of `kind`, renamed into place whole.
fn put(kind: &str, key: Option<String>, parts: &[&[u8]]) {
    let (Some(dir), Some(key)) = (dir(kind), key) else {
        return;
    };
    // Two threads of one process (the library's) may write one entry.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{key}.{}.{n}", std::process::id()));
    let written =
        File::create(&tmp).and_then(|mut f| parts.iter().try_for_each(|p| f.write_all(p)));
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

/// The identity of the file at `path` as one word (`-` when there is none:
/// a missing file is part of a key too).
pub fn identity_of(path: &std::path::Path) -> String {
    match fs::metadata(path) {
        Ok(m) => identity(&m)
            .iter()
            .map(|v| format!("{:x}", *v as u64))
            .collect::<Vec<_>>()
            .join("-"),
        Err(_) => "-".into(),
    }
}

/// The entry of `kind` whose key is `material` (any bytes that say what
/// the entry depends on, besides this program): its bytes after the
/// material, which the entry repeats and which is compared whole, so a
/// collision of the name it hashes to is a miss.
pub fn read_keyed(kind: &str, material: &[u8]) -> Option<Vec<u8>> {
    let bytes = fs::read(dir(kind)?.join(keyed_name(material)?)).ok()?;
    let rest = bytes.strip_prefix(material)?;
    Some(rest.to_vec())
}

/// Keeps `bytes` as the entry of `kind` for `material` (see [`read_keyed`]).
pub fn write_keyed(kind: &str, material: &[u8], bytes: &[u8]) {
    put(kind, keyed_name(material), &[material, bytes]);
}

/// The name of the entry for `material`: a hash of it and of this program's
/// identity (a new build never reads an old one's entries).
fn keyed_name(material: &[u8]) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let ours = fs::metadata("/proc/self/exe").ok()?;
    let mut h = std::hash::DefaultHasher::new();
    material.hash(&mut h);
    identity(&ours).hash(&mut h);
    Some(format!("{:016x}", h.finish()))
}
