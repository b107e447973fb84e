//! Sample programs for testing uprobe-exec.
//!
//! `build.rs` compiles every `c/*.c` and `c/*.cpp` file, and every
//! `rust/*.rs` file, into four ELF flavours (see [`Variant`]). Tests locate
//! the binaries with [`path`]:
//!
//! ```no_run
//! use uprobe_exec_samples::{path, Variant};
//! let hello = path("hello", Variant::Pie);
//! assert!(hello.exists());
//! ```
//!
//! The same binaries are also copied to `target/<profile>/samples/` for
//! running by hand.
//!
//! A few C samples are built only as dynamically linked programs
//! ([`DYNAMIC_NAMES`], variants [`Variant::Pie`] and [`Variant::NoPie`]), and
//! a few as shared objects ([`shared_object`]), in the same directory.

use std::path::PathBuf;

/// Names of all C and C++ samples (one per `c/*.c` or `c/*.cpp` file), sorted.
pub const NAMES: &[&str] = include!(concat!(env!("OUT_DIR"), "/names.rs"));

/// Names of the Rust samples (one per `rust/*.rs` file), sorted.
pub const RUST_NAMES: &[&str] = include!(concat!(env!("OUT_DIR"), "/rust_names.rs"));

/// Names of the C samples built only as dynamically linked programs
/// (`// build-kind: dynamic`): [`Variant::Pie`] and [`Variant::NoPie`].
pub const DYNAMIC_NAMES: &[&str] = include!(concat!(env!("OUT_DIR"), "/dynamic_names.rs"));

/// How a sample is compiled and linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `-static -no-pie`: classic static executable (`ET_EXEC`, no interpreter).
    Static,
    /// `-static-pie`: self-relocating static executable (`ET_DYN`, no interpreter).
    StaticPie,
    /// `-pie`: dynamically linked PIE (`ET_DYN` with `PT_INTERP`).
    Pie,
    /// `-no-pie`: dynamically linked fixed-address executable (`ET_EXEC` with `PT_INTERP`).
    NoPie,
}

impl Variant {
    /// Every variant, in build order.
    pub const ALL: [Variant; 4] = [
        Variant::Static,
        Variant::StaticPie,
        Variant::Pie,
        Variant::NoPie,
    ];

    /// File-name suffix of this variant: `"static"`, `"static-pie"`, `"pie"` or `"nopie"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Static => "static",
            Variant::StaticPie => "static-pie",
            Variant::Pie => "pie",
            Variant::NoPie => "nopie",
        }
    }
}

/// Directory holding the built sample binaries.
pub fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("OUT_DIR"), "/bin"))
}

/// Path of one sample binary, e.g. `path("hello", Variant::Pie)` is `<dir>/hello-pie`.
pub fn path(name: &str, variant: Variant) -> PathBuf {
    dir().join(format!("{name}-{}", variant.suffix()))
}

/// Path of a shared object built from a `// build-kind: shared FILE`
/// source, e.g. `shared_object("libplugin.so")`.
pub fn shared_object(file: &str) -> PathBuf {
    dir().join(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    /// (e_type, has PT_INTERP) of an x86-64 ELF file.
    fn elf_kind(bytes: &[u8]) -> (u16, bool) {
        let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
        let phentsize = u16_at(bytes, 54) as usize;
        let phnum = u16_at(bytes, 56) as usize;
        let interp = (0..phnum).any(|i| {
            let ph = phoff + i * phentsize;
            u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap()) == PT_INTERP
        });
        (u16_at(bytes, 16), interp)
    }

    #[test]
    fn all_samples_exist_and_are_elf() {
        assert!(NAMES.contains(&"hello"), "NAMES = {NAMES:?}");
        assert!(
            RUST_NAMES.contains(&"stdbacktrace"),
            "RUST_NAMES = {RUST_NAMES:?}"
        );
        for name in NAMES.iter().chain(RUST_NAMES) {
            for v in Variant::ALL {
                let p = path(name, v);
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert_eq!(&bytes[..4], b"\x7fELF", "{}", p.display());
                let expected = match v {
                    Variant::Static => (ET_EXEC, false),
                    Variant::StaticPie => (ET_DYN, false),
                    Variant::Pie => (ET_DYN, true),
                    Variant::NoPie => (ET_EXEC, true),
                };
                assert_eq!(
                    elf_kind(&bytes),
                    expected,
                    "(e_type, interp) of {}",
                    p.display()
                );
            }
        }
    }

    #[test]
    fn dynamic_samples_and_shared_objects_exist() {
        assert!(DYNAMIC_NAMES.contains(&"libcalls"), "{DYNAMIC_NAMES:?}");
        for name in DYNAMIC_NAMES {
            for (v, e_type) in [(Variant::Pie, ET_DYN), (Variant::NoPie, ET_EXEC)] {
                let p = path(name, v);
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert_eq!(elf_kind(&bytes), (e_type, true), "{}", p.display());
            }
        }
        let p = shared_object("libplugin.so");
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(elf_kind(&bytes), (ET_DYN, false), "{}", p.display());
    }

    #[test]
    fn hello_runs_natively_with_identical_output() {
        let mut outputs = Vec::new();
        for v in Variant::ALL {
            let out = Command::new(path("hello", v)).arg("x").output().unwrap();
            assert!(out.status.success(), "{v:?}: {:?}", out.status);
            let stdout = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                stdout.lines().next(),
                Some("hello from uprobe-exec sample"),
                "{v:?}"
            );
            // All variants must agree apart from the argv[0] line.
            let rest: Vec<String> = stdout
                .lines()
                .filter(|l| !l.starts_with("argv[0]="))
                .map(String::from)
                .collect();
            outputs.push(rest);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{outputs:#?}");
    }
}
