//! Names for our anonymous mappings in `/proc/PID/maps`.
//!
//! The program's text and the probe area are anonymous memory. Named
//! (`[anon:uprobe-exec text PATH]`, kernels with `CONFIG_ANON_VMA_NAME`),
//! they say what they are to a person or tool reading the maps. Profilers
//! still need `/tmp/perf-PID.map` (see `perfmap`): perf's own mmap records
//! carry no anonymous names.
//!
//! Both stay in core dumps (no `MADV_DONTDUMP`): gdb reads memory that a
//! core leaves out from a file only where the core's `NT_FILE` note names
//! one, which it never does for anonymous memory; left out, text would read
//! as zeros.
//!
//! The name is set with `sys::mm::set_anon_name`.

use std::path::Path;

/// The kernel's limit on an anonymous mapping's name, NUL included
/// (`ANON_VMA_NAME_MAX_LEN`).
pub const NAME_MAX: usize = 80;

/// A NUL-terminated name for `PR_SET_VMA_ANON_NAME`: `uprobe-exec WHAT PATH`,
/// with the characters the kernel refuses (non-printable, `\`, `` ` ``, `$`,
/// `[`, `]`) replaced by `?`, and a long path cut from the left.
#[must_use]
pub fn anon_name(what: &str, path: &Path) -> [u8; NAME_MAX] {
    let head = format!("uprobe-exec {what} ");
    let p = path.as_os_str().as_encoded_bytes();
    let room = NAME_MAX - 1 - head.len();
    let tail = if p.len() > room {
        let mut t = b"...".to_vec();
        t.extend_from_slice(&p[p.len() - (room - 3)..]);
        t
    } else {
        p.to_vec()
    };
    let mut out = [0u8; NAME_MAX];
    for (o, &c) in out.iter_mut().zip(head.as_bytes().iter().chain(&tail)) {
        let ok = (0x20..0x7f).contains(&c) && !b"\\`$[]".contains(&c);
        *o = if ok { c } else { b'?' };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: &[u8; NAME_MAX]) -> &str {
        std::str::from_utf8(&n[..n.iter().position(|&c| c == 0).unwrap()]).unwrap()
    }

    #[test]
    fn names_fit_the_kernel_rules() {
        let n = anon_name("text", Path::new("/usr/bin/python3.11"));
        assert_eq!(text(&n), "uprobe-exec text /usr/bin/python3.11");
        let n = anon_name("text", Path::new("/tmp/a[1]$x\\y\n"));
        assert_eq!(text(&n), "uprobe-exec text /tmp/a?1??x?y?");
        let long = format!("/{}/prog", "d".repeat(200));
        let n = anon_name("text", Path::new(&long));
        let t = text(&n);
        assert_eq!(t.len(), NAME_MAX - 1);
        assert!(
            t.starts_with("uprobe-exec text ...d") && t.ends_with("/prog"),
            "{t}"
        );
    }
}
