//! Hand-off: the last code that runs in the child before the program.
//!
//! The child is a fork of the monitor, so its address space still holds the
//! monitor's binary, heap, libraries and thread stacks. The hand-off blob
//! unmaps all of that, then (when we hold CAP_SYS_RESOURCE or
//! CAP_CHECKPOINT_RESTORE) tells the kernel with `PR_SET_MM_MAP` that the
//! process's exe, argument and environment areas, auxv and brk are the
//! program's, wipes its own parameters, and jumps to the program's entry.
//!
//! Because the monitor's code is gone by then, the blob is self-contained,
//! position-independent machine code that lives in its own anonymous page.
//! It removes even that page on the way out: its last system call,
//! `munmap(blob)`, is issued from a `syscall; xor…; ret` sequence found in the
//! vDSO, whose `ret` lands on the program's entry point with a clean `rdx`
//! (the `atexit` argument of `_start`). Without such a sequence the blob page
//! stays mapped (one anonymous r-x page), which the report says.

#![allow(unsafe_code)]

use std::arch::global_asm;

use uprobe_runtime::PAGE_SIZE;

/// Offsets in the parameter block (u64 slots), shared with the assembly below.
mod slot {
    pub const ENTRY: usize = 0;
    pub const SP: usize = 1;
    pub const UNMAP_PTR: usize = 2;
    pub const UNMAP_COUNT: usize = 3;
    pub const MM_MAP_PTR: usize = 4;
    pub const MM_MAP_SIZE: usize = 5;
    pub const EXE_FD: usize = 6;
    pub const GADGET: usize = 7;
    pub const BLOB_ADDR: usize = 8;
    pub const BLOB_LEN: usize = 9;
    pub const COUNT: usize = 11;
}

// The blob. Entered with rdi = parameter block (on the program's stack,
// below its initial sp). Uses no stack of the monitor's.
global_asm!(
    ".pushsection .text.uprobe_exec_handoff,\"ax\",@progbits",
    ".globl uprobe_exec_handoff_start",
    ".globl uprobe_exec_handoff_end",
    ".p2align 4",
    "uprobe_exec_handoff_start:",
    "    mov r12, rdi",
    "    mov rsp, rdi", // a stack that survives: below the parameters
    // 1. Unmap every mapping of the monitor.
    "    mov r13, [r12 + 16]",
    "    mov r14, [r12 + 24]",
    ".Luprobe_unmap_loop:",
    "    test r14, r14",
    "    jz .Luprobe_unmapped",
    "    mov rdi, [r13]",
    "    mov rsi, [r13 + 8]",
    "    mov eax, {nr_munmap}",
    "    syscall",
    "    add r13, 16",
    "    dec r14",
    "    jmp .Luprobe_unmap_loop",
    ".Luprobe_unmapped:",
    // 2. exe, cmdline, environ, auxv and brk become the program's.
    "    mov rdx, [r12 + 32]",
    "    test rdx, rdx",
    "    jz .Luprobe_no_prctl",
    "    mov edi, {pr_set_mm}",
    "    mov esi, {pr_set_mm_map}",
    "    mov r10, [r12 + 40]",
    "    xor r8d, r8d",
    "    mov eax, {nr_prctl}",
    "    syscall",
    "    mov [r12 + 80], rax",
    ".Luprobe_no_prctl:",
    // 3. Close the program file we held for PR_SET_MM_MAP.
    "    mov rdi, [r12 + 48]",
    "    cmp rdi, -1",
    "    je .Luprobe_closed",
    "    mov eax, {nr_close}",
    "    syscall",
    ".Luprobe_closed:",
    // 4. Keep what the jump needs in registers, then wipe the parameters.
    "    mov r13, [r12 + 0]",  // entry
    "    mov r14, [r12 + 8]",  // sp
    "    mov r15, [r12 + 56]", // gadget (0: none)
    "    mov rbx, [r12 + 64]", // blob address
    "    mov rbp, [r12 + 72]", // blob length
    "    mov rdi, r12",
    "    mov rcx, r14",
    "    sub rcx, r12",
    "    xor eax, eax",
    "    cld",
    "    rep stosb",
    "    mov rsp, r14",
    "    test r15, r15",
    "    jz .Luprobe_no_gadget",
    // 5a. munmap(blob) from the vDSO; its `ret` pops the entry point.
    "    mov [rsp - 8], r13",
    "    mov [rsp - 16], r15",
    "    sub rsp, 16",
    "    mov rdi, rbx",
    "    mov rsi, rbp",
    "    xor ebx, ebx",
    "    xor ebp, ebp",
    "    xor r8d, r8d",
    "    xor r9d, r9d",
    "    xor r10d, r10d",
    "    xor r12d, r12d",
    "    xor r13d, r13d",
    "    xor r14d, r14d",
    "    xor r15d, r15d",
    "    xor edx, edx",
    "    mov eax, {nr_munmap}",
    "    ret",         // into the vDSO's `syscall; xor…; ret`
    // 5b. No gadget: jump straight to the entry; this page stays mapped.
    ".Luprobe_no_gadget:",
    "    xor ebx, ebx",
    "    xor ebp, ebp",
    "    xor ecx, ecx",
    "    xor edx, edx",
    "    xor esi, esi",
    "    xor edi, edi",
    "    xor r8d, r8d",
    "    xor r9d, r9d",
    "    xor r10d, r10d",
    "    xor r11d, r11d",
    "    xor r12d, r12d",
    "    xor r14d, r14d",
    "    xor r15d, r15d",
    "    xor eax, eax",
    "    jmp r13",
    "uprobe_exec_handoff_end:",
    ".popsection",
    nr_munmap = const linux_raw_sys::general::__NR_munmap,
    nr_prctl = const linux_raw_sys::general::__NR_prctl,
    nr_close = const linux_raw_sys::general::__NR_close,
    pr_set_mm = const linux_raw_sys::prctl::PR_SET_MM,
    pr_set_mm_map = const linux_raw_sys::prctl::PR_SET_MM_MAP,
);

extern "C" {
    static uprobe_exec_handoff_start: u8;
    static uprobe_exec_handoff_end: u8;
}

/// The blob's machine code.
#[must_use]
pub fn blob() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm above, in one
    // section, end after start; the bytes between them are our code.
    unsafe {
        let start = std::ptr::addr_of!(uprobe_exec_handoff_start);
        let end = std::ptr::addr_of!(uprobe_exec_handoff_end);
        std::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Finds `syscall` followed only by `xor reg32, reg32` (same register) and
/// `ret` in the vDSO: the sequence the blob leaves through.
#[must_use]
pub fn find_exit_gadget(vdso: &[u8], vdso_addr: u64) -> Option<u64> {
    'start: for i in 0..vdso.len().saturating_sub(2) {
        if vdso[i] != 0x0f || vdso[i + 1] != 0x05 {
            continue;
        }
        let mut j = i + 2;
        for _ in 0..16 {
            match vdso.get(j..) {
                Some([0xc3, ..]) => return Some(vdso_addr + i as u64),
                Some([0x31, m, ..]) if m >> 6 == 3 && (m >> 3) & 7 == m & 7 => j += 2,
                Some([0x45, 0x31, m, ..]) if m >> 6 == 3 && (m >> 3) & 7 == m & 7 => j += 3,
                _ => continue 'start,
            }
        }
    }
    None
}

/// The vDSO of this process (the child inherits it at the same address),
/// as `maps` (this process's `/proc/self/maps`) places it.
#[must_use]
pub fn vdso(maps: &str) -> Option<(u64, &'static [u8])> {
    // SAFETY: getauxval has no preconditions.
    let addr = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if addr == 0 {
        return None;
    }
    let (lo, hi) = maps
        .lines()
        .filter(|l| l.ends_with("[vdso]"))
        .find_map(parse_range)?;
    if lo != addr {
        return None;
    }
    // SAFETY: the vDSO is mapped readable for [lo, hi) for the life of the process.
    Some((addr, unsafe {
        std::slice::from_raw_parts(lo as *const u8, (hi - lo) as usize)
    }))
}

/// The address range at the start of a `/proc/PID/maps` line.
pub(crate) fn parse_range(line: &str) -> Option<(u64, u64)> {
    let r = line.split_whitespace().next()?;
    let (a, b) = r.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// The highest user address on x86-64 with 4-level page tables (the
/// kernel's `TASK_SIZE_MAX`).
const USER_END: u64 = (1 << 47) - PAGE_SIZE;

/// The user address space above [`USER_END`] with 5-level page tables, where
/// only a mapping asked for there goes: unmapped as its own range, which a
/// 4-level kernel refuses (EINVAL, ignored by the blob) as it has none.
const HIGH: (u64, u64) = (1 << 47, (1 << 56) - PAGE_SIZE);

/// The kernel's special mappings in `maps`, which the hand-off keeps.
fn special_mappings(maps: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    maps.lines()
        .filter(|l| {
            ["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"]
                .iter()
                .any(|s| l.ends_with(s))
        })
        .filter_map(parse_range)
}

/// The most ranges [`unmap_all_but`] gives with `keep` ranges: one more than
/// the ranges kept (with the kernel's special mappings), and the high half.
#[must_use]
pub fn unmap_ranges_at_most(maps: &str, keep: usize) -> usize {
    keep + special_mappings(maps).count() + 2
}

/// What the child must unmap: every address range but the `keep` ranges
/// and the kernel's special mappings in `maps` (this process's
/// `/proc/self/maps`), so everything of the monitor's, including what it
/// maps after `maps` was read (a hole in a range is no error for munmap).
/// A few calls, in address order, whatever the monitor's mappings.
#[must_use]
pub fn unmap_all_but(maps: &str, keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut keep: Vec<(u64, u64)> = keep
        .iter()
        .copied()
        .chain(special_mappings(maps))
        .filter(|&(a, b)| a < b)
        .collect();
    keep.sort_unstable();
    let mut out = Vec::new();
    let mut at = PAGE_SIZE;
    for &(a, b) in &keep {
        if a > at {
            out.push((at, a.min(USER_END)));
        }
        at = at.max(b);
        if at >= USER_END {
            break;
        }
    }
    if at < USER_END {
        out.push((at, USER_END));
    }
    out.retain(|&(a, b)| a < b);
    // Nothing kept up there (vsyscall is above it): all of it goes.
    if !keep.iter().any(|&(a, b)| a < HIGH.1 && b > HIGH.0) {
        out.push(HIGH);
    }
    out
}

/// `struct prctl_mm_map` (linux/prctl.h).
pub type MmMap = linux_raw_sys::prctl::prctl_mm_map;

/// What the blob needs, to be written below the program's initial sp.
pub struct Params<'a> {
    /// Where the program starts.
    pub entry: u64,
    /// Its initial stack pointer.
    pub sp: u64,
    /// Mappings to remove.
    pub unmap: &'a [(u64, u64)],
    /// `PR_SET_MM_MAP` argument, when we may use it (its auxv pointer is into the stack).
    pub mm_map: Option<MmMap>,
    /// The program's fd, closed after `PR_SET_MM_MAP`.
    pub exe_fd: Option<i32>,
    /// The vDSO exit sequence, if found.
    pub gadget: Option<u64>,
    /// Where the blob lives, and its length (page multiple).
    pub blob: (u64, u64),
}

impl Params<'_> {
    /// Bytes needed below sp: the block, the unmap list, the mm map, and two
    /// slots for the exit's return chain.
    #[must_use]
    pub fn size(unmap: usize) -> usize {
        8 * slot::COUNT + 16 * unmap + std::mem::size_of::<MmMap>() + 16
    }

    /// Writes the block at `dst[0..]`, which will sit at address `at`.
    pub fn write(&self, dst: &mut [u8], at: u64) {
        let mut words = [0u64; slot::COUNT];
        let unmap_at = at + 8 * slot::COUNT as u64;
        let mm_at = unmap_at + 16 * self.unmap.len() as u64;
        words[slot::ENTRY] = self.entry;
        words[slot::SP] = self.sp;
        words[slot::UNMAP_PTR] = unmap_at;
        words[slot::UNMAP_COUNT] = self.unmap.len() as u64;
        words[slot::MM_MAP_PTR] = if self.mm_map.is_some() { mm_at } else { 0 };
        words[slot::MM_MAP_SIZE] = std::mem::size_of::<MmMap>() as u64;
        words[slot::EXE_FD] = self.exe_fd.map_or(u64::MAX, |fd| fd as u64);
        words[slot::GADGET] = self.gadget.unwrap_or(0);
        words[slot::BLOB_ADDR] = self.blob.0;
        words[slot::BLOB_LEN] = self.blob.1;
        let mut o = 0;
        for w in words {
            dst[o..o + 8].copy_from_slice(&w.to_le_bytes());
            o += 8;
        }
        for &(a, b) in self.unmap {
            dst[o..o + 8].copy_from_slice(&a.to_le_bytes());
            dst[o + 8..o + 16].copy_from_slice(&(b - a).to_le_bytes());
            o += 16;
        }
        if let Some(m) = &self.mm_map {
            // SAFETY: prctl_mm_map is plain data (integers and one pointer
            // value); viewing it as bytes is sound.
            let raw = unsafe {
                std::slice::from_raw_parts(
                    (m as *const MmMap).cast::<u8>(),
                    std::mem::size_of::<MmMap>(),
                )
            };
            dst[o..o + raw.len()].copy_from_slice(raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_off_unmaps_everything_but_what_is_kept_and_the_kernel_s_own() {
        let maps = "\
5555aaaa0000-5555aaab0000 r--p 00000000 fd:01 1 /usr/bin/uprobe-exec
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0 [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
";
        let keep = [
            (0x7ffd_0000_0000, 0x7ffd_0002_1000),
            (0x4000_0000, 0x4001_0000),
            // Overlapping and touching kept ranges merge.
            (0x4000_8000, 0x4002_0000),
            (0x4002_0000, 0x4003_0000),
        ];
        assert_eq!(
            unmap_all_but(maps, &keep),
            [
                (0x1000, 0x4000_0000),
                (0x4003_0000, 0x7ffd_0000_0000),
                (0x7ffd_0002_1000, 0x7ffd_0010_0000),
                (0x7ffd_0010_6000, USER_END),
                HIGH,
            ]
        );
        assert!(unmap_all_but(maps, &keep).len() <= unmap_ranges_at_most(maps, keep.len()));
        // The monitor's own file mapping is in a gap, like anything it maps later.
        assert!(unmap_all_but(maps, &keep)
            .iter()
            .any(|&(a, b)| a <= 0x5555_aaaa_0000 && 0x5555_aaab_0000 <= b));
    }

    #[test]
    fn gadget_search_accepts_only_clean_exits() {
        let code = [0x90, 0x0f, 0x05, 0x31, 0xd2, 0x45, 0x31, 0xdb, 0xc3];
        assert_eq!(find_exit_gadget(&code, 0x1000), Some(0x1001));
        let bad = [0x0f, 0x05, 0x48, 0x83, 0xc4, 0x30, 0xc3];
        assert_eq!(find_exit_gadget(&bad, 0x1000), None);
        let cross = [0x0f, 0x05, 0x31, 0xd1, 0xc3]; // xor ecx, edx: not a clearing
        assert_eq!(find_exit_gadget(&cross, 0), None);
    }

    #[test]
    fn this_kernels_vdso_has_an_exit() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let (addr, bytes) = vdso(&maps).expect("a vDSO");
        assert!(
            find_exit_gadget(bytes, addr).is_some(),
            "no syscall;xor…;ret in this vDSO"
        );
    }

    #[test]
    fn blob_is_assembled() {
        assert!(blob().len() > 64 && blob().len() < 4096);
    }
}
