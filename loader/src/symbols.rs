//! Function symbols of an image: `.symtab` and `.dynsym` merged, names
//! matched mangled and demangled (Rust legacy and v0, C++).

use goblin::elf::sym::{STT_FUNC, STT_GNU_IFUNC, STT_NOTYPE};
use goblin::elf::Elf;

use crate::addr::LinkAddr;
use crate::elf::Image;

/// One function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The symbol as stored (mangled).
    pub name: String,
    /// The demangled name, when the symbol is mangled (Rust hash suffix dropped).
    pub demangled: Option<String>,
    /// Link-time address of the first byte.
    pub addr: LinkAddr,
    /// Size in bytes (0 when the symbol does not say).
    pub size: u64,
    /// Why no probe can be placed at its entry (what a glob passes over),
    /// when that was checked (`--list`).
    pub unprobeable: Option<String>,
    /// How `auto` mode displaces a probe at its entry (the report's kind:
    /// `jump`, `jump-padding`), or why no jump fits there, when that was
    /// checked (`--list`).
    pub tactic: Option<Result<&'static str, String>>,
}

impl Function {
    /// The name people read: demangled when there is one.
    #[must_use]
    pub fn display_name(&self) -> &str {
        self.demangled.as_deref().unwrap_or(&self.name)
    }

    /// Whether `name` names this function, mangled or demangled.
    #[must_use]
    pub fn is_named(&self, name: &str) -> bool {
        self.name == name || self.demangled.as_deref() == Some(name)
    }

    /// Whether `a` lies inside the function.
    #[must_use]
    pub fn contains(&self, a: LinkAddr) -> bool {
        a.0 >= self.addr.0 && a.0 < self.addr.0 + self.size.max(1)
    }
}

/// All functions of an image, sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    funcs: Vec<Function>,
    /// Whether the file has a `.symtab` (false: stripped, only `.dynsym`).
    pub has_symtab: bool,
    /// Functions the program uses but does not define (undefined `.dynsym`
    /// entries), sorted.
    imports: Vec<String>,
    /// The shared libraries it names (`DT_NEEDED`), in order.
    pub needed: Vec<String>,
    /// Code the program copies and runs at another address: V8's embedded
    /// builtins (`[start, end)`), which V8 remaps next to its code range.
    /// A jump or an `int3` there breaks the copy.
    pub copied: Option<(LinkAddr, LinkAddr)>,
}

/// The label V8's `mksnapshot` puts at the start of the embedded builtins
/// (`Builtins_*`), which V8 may copy next to its code range at run time
/// ("short builtin calls") and run there.
const V8_BLOB: &str = "v8_Default_embedded_blob_code_";

/// Demangles Rust (legacy and v0) and C++ names.
#[must_use]
pub fn demangle(name: &str) -> Option<String> {
    // Rust's legacy names and C++'s start `_Z`, Rust's v0 names `_R`: the
    // rest (C's, most of a library's) are not looked at further.
    if !(name.starts_with("_Z") || name.starts_with("_R")) {
        return None;
    }
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return Some(format!("{d:#}"));
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            return sym.demangle().ok();
        }
    }
    None
}

/// `funcs` by address, then name, then size: an order of small keys is
/// sorted, and each function moved once (libc's 2 800 functions sort in a
/// fraction of the time their moves would take).
fn sorted(funcs: Vec<Function>) -> Vec<Function> {
    let mut order: Vec<u32> = (0..funcs.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&funcs[a as usize], &funcs[b as usize]);
        (a.addr, &a.name, a.size).cmp(&(b.addr, &b.name, b.size))
    });
    let mut slots: Vec<Option<Function>> = funcs.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i as usize].take().expect("each index once"))
        .collect()
}

impl Symbols {
    /// Reads the function symbols of `image`.
    #[must_use]
    pub fn read(image: &Image) -> Symbols {
        let Ok(elf) = Elf::parse(&image.bytes) else {
            return Symbols::default();
        };
        let mut funcs = Vec::new();
        let mut imports = Vec::new();
        for s in elf.dynsyms.iter() {
            let t = s.st_type();
            if s.st_shndx == 0 && (t == STT_FUNC || t == STT_GNU_IFUNC || t == STT_NOTYPE) {
                if let Some(name) = elf.dynstrtab.get_at(s.st_name).filter(|n| !n.is_empty()) {
                    imports.push(name.to_string());
                }
            }
        }
        imports.sort();
        imports.dedup();
        let tables = [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)];
        for (syms, strs) in tables {
            for s in syms.iter() {
                let t = s.st_type();
                if (t != STT_FUNC && t != STT_GNU_IFUNC) || s.st_shndx == 0 || s.st_value == 0 {
                    continue;
                }
                let Some(name) = strs.get_at(s.st_name).filter(|n| !n.is_empty()) else {
                    continue;
                };
                // ELF symbol versions ride along in .dynsym names only through
                // the version table; strip any "@VER" a .symtab may carry.
                let name = name.split('@').next().unwrap_or(name).to_string();
                let demangled = demangle(&name);
                funcs.push(Function {
                    name,
                    demangled,
                    addr: LinkAddr(s.st_value),
                    size: s.st_size,
                    unprobeable: None,
                    tactic: None,
                });
            }
        }
        let blob = elf
            .syms
            .iter()
            .find(|s| s.st_shndx != 0 && elf.strtab.get_at(s.st_name) == Some(V8_BLOB))
            .map(|s| LinkAddr(s.st_value));
        let copied = blob.and_then(|start| {
            let end = funcs
                .iter()
                .filter(|f| f.addr >= start && f.name.starts_with("Builtins_"))
                .map(|f| f.addr.0 + f.size.max(1))
                .max()?;
            Some((start, LinkAddr(end)))
        });
        let mut funcs = sorted(funcs);
        funcs.dedup_by(|a, b| a.addr == b.addr && a.name == b.name);
        Symbols {
            funcs,
            has_symtab: !elf.syms.is_empty(),
            imports,
            needed: elf.libraries.iter().map(|l| (*l).to_string()).collect(),
            copied,
        }
    }

    /// Every function, by address.
    #[must_use]
    pub fn all(&self) -> &[Function] {
        &self.funcs
    }

    /// Functions named `name` (mangled or demangled). Aliases at one address
    /// count once.
    #[must_use]
    pub fn named(&self, name: &str) -> Vec<&Function> {
        let mut v: Vec<&Function> = self.funcs.iter().filter(|f| f.is_named(name)).collect();
        v.dedup_by_key(|f| f.addr);
        v
    }

    /// Functions whose name (mangled or demangled) matches a glob, one per address.
    #[must_use]
    pub fn matching(&self, pattern: &glob::Pattern) -> Vec<&Function> {
        let mut v: Vec<&Function> = self
            .funcs
            .iter()
            .filter(|f| {
                pattern.matches(&f.name)
                    || f.demangled.as_deref().is_some_and(|d| pattern.matches(d))
            })
            .collect();
        // Of aliases at one address (libc's `malloc` and `__libc_malloc`),
        // the public name: without a leading underscore, then the shortest.
        v.sort_by_key(|f| (f.addr, f.name.starts_with('_'), f.name.len()));
        v.dedup_by_key(|f| f.addr);
        v
    }

    /// Whether the program uses `name` from a shared library without
    /// defining it.
    #[must_use]
    pub fn is_import(&self, name: &str) -> bool {
        self.imports
            .binary_search_by(|i| i.as_str().cmp(name))
            .is_ok()
    }

    /// Why code at `a` cannot take a probe because the program runs a copy
    /// of it elsewhere, if it does.
    #[must_use]
    pub fn copied(&self, a: LinkAddr) -> Option<&'static str> {
        self.copied
            .filter(|&(start, end)| a >= start && a < end)
            .map(|_| "it is in V8's embedded builtins, which V8 copies and runs at another address, where a probe would break it")
    }

    /// A function of known size that starts at `a`, if any.
    #[must_use]
    pub fn sized_at(&self, a: LinkAddr) -> Option<&Function> {
        let i = self.funcs.partition_point(|f| f.addr < a);
        self.funcs[i..]
            .iter()
            .take_while(|f| f.addr == a)
            .find(|f| f.size > 0)
    }

    /// The function containing `a` (the one with a size that covers it).
    #[must_use]
    pub fn containing(&self, a: LinkAddr) -> Option<&Function> {
        let i = self.funcs.partition_point(|f| f.addr <= a);
        self.funcs[..i]
            .iter()
            .rev()
            .take(16)
            .find(|f| f.size > 0 && f.contains(a))
    }

    /// Up to `n` names closest to `name`, for "did you mean": fewest edits
    /// first (a transposition is one edit), then the most similar start,
    /// among names at most about half their length away.
    #[must_use]
    pub fn close_to(&self, name: &str, n: usize) -> Vec<String> {
        let lower = name.to_lowercase();
        let limit = (lower.chars().count() / 2).max(2);
        let mut scored: Vec<(usize, f64, &str)> = self
            .funcs
            .iter()
            .filter_map(|f| {
                let d = f.display_name();
                // Far longer names cannot be close; skip the quadratic cost.
                if d.len() > 4 * lower.len() + 16 {
                    return None;
                }
                let dl = d.to_lowercase();
                let edits = strsim::osa_distance(&lower, &dl);
                (edits <= limit).then(|| (edits, strsim::jaro_winkler(&lower, &dl), d))
            })
            .collect();
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(b.2)));
        let mut out: Vec<String> = Vec::new();
        for (_, _, d) in scored {
            if !out.iter().any(|o| o == d) {
                out.push(d.to_string());
            }
            if out.len() == n {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE").as_deref(),
            Some("core::fmt::write")
        );
        assert_eq!(demangle("_ZN3foo3barEv").as_deref(), Some("foo::bar()"));
        assert_eq!(demangle("main"), None);
    }
}
