//! The initial stack, laid out as execve(2) lays it out, built in the
//! monitor as bytes for a known top address and copied by the child.
//!
//! ```text
//!  top ─▶ 8 zero bytes
//!         execfn string                     (AT_EXECFN)
//!         envp strings, ascending           (env_start..env_end)
//!         argv strings, ascending           (arg_start..arg_end)
//!         random padding, < 8 KiB           (arch_align_stack)
//!         "x86_64", 16 random bytes         (AT_PLATFORM, AT_RANDOM)
//!         padding to 16
//!         auxv pairs, AT_NULL
//!         envp pointers, NULL
//!         argv pointers, NULL
//!  sp ──▶ argc                              (16-byte aligned)
//!         below sp: the hand-off parameters (wiped before the program runs)
//! ```

/// auxv keys we fill in.
pub mod at {
    pub const NULL: u64 = 0;
    pub const PHDR: u64 = 3;
    pub const PHENT: u64 = 4;
    pub const PHNUM: u64 = 5;
    /// Passed on from our own auxv; named by the tests.
    #[cfg(test)]
    pub const PAGESZ: u64 = 6;
    pub const BASE: u64 = 7;
    pub const FLAGS: u64 = 8;
    pub const ENTRY: u64 = 9;
    pub const SECURE: u64 = 23;
    pub const PLATFORM: u64 = 15;
    pub const RANDOM: u64 = 25;
    pub const EXECFN: u64 = 31;
}

/// The stack bytes and where things landed.
#[derive(Debug)]
pub struct StackImage {
    /// Address of `bytes[0]`.
    pub base: u64,
    /// Everything from `base` to the top of the stack.
    pub bytes: Vec<u8>,
    /// The program's initial stack pointer (points at argc).
    pub sp: u64,
    /// First byte of the argv strings.
    pub arg_start: u64,
    /// One past the last argv string.
    pub arg_end: u64,
    /// First byte of the envp strings.
    pub env_start: u64,
    /// One past the last envp string.
    pub env_end: u64,
    /// Address of the auxv in the stack.
    pub auxv_addr: u64,
    /// Size of the auxv in bytes, AT_NULL included.
    pub auxv_bytes: u64,
}

/// Builds the stack for `top` (one past its highest byte). `auxv` holds
/// every entry but the pointers into the stack (EXECFN, RANDOM, PLATFORM),
/// which this fills in. `pad` bytes of randomisation go below the strings,
/// and `below` bytes are left under `sp` for the hand-off.
#[must_use]
#[allow(clippy::too_many_arguments)]
pub fn build(
    top: u64,
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    execfn: &[u8],
    auxv: &[(u64, u64)],
    random: [u8; 16],
    pad: u64,
    below: usize,
) -> StackImage {
    // Strings, from the top down; `hi` collects them in ascending order.
    let cstr_len = |s: &[u8]| s.len() as u64 + 1;
    let mut p = top - 8;
    p -= cstr_len(execfn);
    let execfn_addr = p;
    let env_bytes: u64 = envp.iter().map(|s| cstr_len(s)).sum();
    let arg_bytes: u64 = argv.iter().map(|s| cstr_len(s)).sum();
    p -= env_bytes;
    let env_start = p;
    p -= arg_bytes;
    let arg_start = p;
    // arch_align_stack, then the platform string and the random bytes.
    p = (p - pad) & !15;
    p -= 7;
    let platform_addr = p;
    p -= 16;
    let random_addr = p;

    // The pointers into the stack keep their places in the kernel's order.
    let mut aux: Vec<(u64, u64)> = auxv
        .iter()
        .copied()
        .filter(|&(k, _)| k != at::NULL)
        .collect();
    for (key, value) in [
        (at::EXECFN, execfn_addr),
        (at::RANDOM, random_addr),
        (at::PLATFORM, platform_addr),
    ] {
        match aux.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => aux.push((key, value)),
        }
    }
    aux.push((at::NULL, 0));
    // create_elf_tables: the vectors go right below, rounded down to 16.
    let words = 1 + (argv.len() + 1) + (envp.len() + 1) + 2 * aux.len();
    let mut sp = p - 8 * words as u64;
    sp &= !15;
    let base = sp - below as u64;

    let mut bytes = vec![0u8; (top - base) as usize];
    let mut put = |addr: u64, data: &[u8]| {
        let o = (addr - base) as usize;
        bytes[o..o + data.len()].copy_from_slice(data);
    };
    put(execfn_addr, execfn);
    let mut q = arg_start;
    let mut argv_ptrs = Vec::with_capacity(argv.len());
    for s in argv {
        argv_ptrs.push(q);
        put(q, s);
        q += cstr_len(s);
    }
    let mut envp_ptrs = Vec::with_capacity(envp.len());
    for s in envp {
        envp_ptrs.push(q);
        put(q, s);
        q += cstr_len(s);
    }
    put(platform_addr, b"x86_64");
    put(random_addr, &random);

    let auxv_addr = sp + 8 * (1 + argv.len() as u64 + 1 + envp.len() as u64 + 1);
    let words = std::iter::once(argv.len() as u64)
        .chain(argv_ptrs.iter().copied())
        .chain([0])
        .chain(envp_ptrs.iter().copied())
        .chain([0])
        .chain(aux.iter().flat_map(|&(k, v)| [k, v]));
    for (i, v) in words.enumerate() {
        put(sp + 8 * i as u64, &v.to_le_bytes());
    }
    StackImage {
        base,
        bytes,
        sp,
        arg_start,
        arg_end: env_start,
        env_start,
        env_end: execfn_addr,
        auxv_addr,
        auxv_bytes: 16 * aux.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_what_a_program_expects() {
        let top = 0x7fff_0000_0000;
        let argv = vec![b"prog".to_vec(), b"a".to_vec()];
        let envp = vec![b"K=V".to_vec()];
        let s = build(
            top,
            &argv,
            &envp,
            b"/bin/prog",
            &[(at::PAGESZ, 4096)],
            [7; 16],
            0,
            64,
        );
        assert_eq!(s.sp % 16, 0);
        let word =
            |a: u64| u64::from_le_bytes(s.bytes[(a - s.base) as usize..][..8].try_into().unwrap());
        let cstr = |a: u64| {
            let b = &s.bytes[(a - s.base) as usize..];
            b[..b.iter().position(|&c| c == 0).unwrap()].to_vec()
        };
        assert_eq!(word(s.sp), 2);
        assert_eq!(cstr(word(s.sp + 8)), b"prog");
        assert_eq!(cstr(word(s.sp + 16)), b"a");
        assert_eq!(word(s.sp + 24), 0);
        assert_eq!(cstr(word(s.sp + 32)), b"K=V");
        assert_eq!(word(s.sp + 40), 0);
        assert_eq!(s.auxv_addr, s.sp + 48);
        assert_eq!(
            (word(s.auxv_addr), word(s.auxv_addr + 8)),
            (at::PAGESZ, 4096)
        );
        // argv strings then envp strings, contiguous: /proc/self/cmdline and environ.
        assert_eq!(
            &s.bytes[(s.arg_start - s.base) as usize..(s.env_end - s.base) as usize],
            b"prog\0a\0K=V\0"
        );
    }
}
