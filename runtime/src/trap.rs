//! The int3 trap handler that runs inside the program.
//!
//! It is self-contained, position-independent machine code copied into the
//! program's probe area: it must keep working after the hand-off has
//! unmapped the monitor, so it touches no TLS, allocates nothing, and calls
//! no libc. On SIGTRAP it looks the trapping address up in the site table
//! that follows it, counts the hit in shared memory, and resumes at the
//! site's out-of-line slot (the displaced instruction, then a jump back).
//!
//! ```text
//!  probe area:  handler code │ restorer │ table header │ entries … │ XOL slots …
//!  header:      count │ &program's handler │ &per-process rows │ &stray-trap counter
//!               &row page (pid, row) │ number of rows │ bytes per row
//!  entry:       site address │ slot address │ &hit counter │ site index   (sorted by site)
//!  row:         pid │ hits of site 0 │ hits of site 1 │ …              (shared memory)
//! ```
//!
//! A trap that is not a probe hit (the program's own `int3`, or a SIGTRAP
//! sent to it) is counted as stray and handed to the program's own SIGTRAP
//! handler, which the monitor records (see `loader`'s seccomp guard); with
//! none, the program dies of SIGTRAP as it would have without us.

#![allow(unsafe_code)]

use std::arch::global_asm;

global_asm!(
    ".pushsection .text.uprobe_exec_trap,\"ax\",@progbits",
    ".globl uprobe_exec_trap_start",
    ".globl uprobe_exec_trap_restorer",
    ".globl uprobe_exec_trap_table",
    ".globl uprobe_exec_claim_row",
    ".p2align 4",
    "uprobe_exec_trap_start:",
    // void handler(int sig /*rdi*/, siginfo_t *info /*rsi*/, ucontext_t *uc /*rdx*/)
    "    push rdi",
    "    push rsi",
    "    lea r8, [rip + uprobe_exec_trap_table]",
    "    cmp dword ptr [rsi + 8], 0x80", // si_code == SI_KERNEL: an int3, not a kill()
    "    jne .Luprobe_trap_stray",
    "    mov rax, [rdx + 168]", // uc->uc_mcontext.gregs[REG_RIP]: just past the int3
    "    dec rax",
    "    mov rcx, [r8]",     // number of sites
    "    lea r9, [r8 + 56]", // entries (after the 7-word header)
    "    xor r10d, r10d",    // lo
    "    mov r11, rcx",      // hi
    ".Luprobe_trap_search:",
    "    cmp r10, r11",
    "    jae .Luprobe_trap_found",
    "    lea rsi, [r10 + r11]",
    "    shr rsi, 1",
    "    mov rdi, rsi",
    "    shl rdi, 2", // entries are 4 words
    "    cmp [r9 + rdi * 8], rax",
    "    jae .Luprobe_trap_left",
    "    lea r10, [rsi + 1]",
    "    jmp .Luprobe_trap_search",
    ".Luprobe_trap_left:",
    "    mov r11, rsi",
    "    jmp .Luprobe_trap_search",
    ".Luprobe_trap_found:",
    "    cmp r10, rcx",
    "    jae .Luprobe_trap_stray",
    "    mov rdi, r10",
    "    shl rdi, 2",
    "    cmp [r9 + rdi * 8], rax",
    "    jne .Luprobe_trap_stray",
    "    mov rsi, [r9 + rdi * 8 + 8]",
    "    mov [rdx + 168], rsi",         // resume in the out-of-line slot
    "    mov r10, [r9 + rdi * 8 + 24]", // the site's index
    // The hit, in this process's row (shared memory); with no row left, in
    // the site's overflow counter.
    "    call uprobe_exec_claim_row",
    "    test rax, rax",
    "    jz .Luprobe_trap_overflow",
    "    lock inc qword ptr [rax + r10 * 8 + 8]",
    "    jmp .Luprobe_trap_counted",
    ".Luprobe_trap_overflow:",
    "    mov rax, [r9 + rdi * 8 + 16]",
    "    lock inc qword ptr [rax]",
    ".Luprobe_trap_counted:",
    "    pop rsi",
    "    pop rdi",
    "    ret",
    // Not a probe: the program's own int3, or a SIGTRAP sent to it.
    ".Luprobe_trap_stray:",
    "    pop rsi",
    "    pop rdi",
    "    mov rax, [r8 + 24]",
    "    lock inc qword ptr [rax]",
    "    mov rax, [r8 + 8]", // the program's own handler, as it set it
    "    mov rax, [rax]",
    "    test rax, rax", // SIG_DFL: the kernel would kill it
    "    jz .Luprobe_trap_die",
    "    cmp rax, 1", // SIG_IGN: nothing happens, as natively
    "    je .Luprobe_trap_ignored",
    "    jmp rax", // same arguments; it returns to our restorer
    ".Luprobe_trap_ignored:",
    "    ret",
    ".Luprobe_trap_die:",
    // rt_sigaction(SIGTRAP, &{SIG_DFL}, NULL, 8), then kill(getpid(), SIGTRAP):
    // the signal is delivered again once we return, now with its default action.
    "    sub rsp, 32",
    "    xor eax, eax",
    "    mov [rsp], rax",
    "    mov [rsp + 8], rax",
    "    mov [rsp + 16], rax",
    "    mov [rsp + 24], rax",
    "    mov edi, 5",
    "    mov rsi, rsp",
    "    xor edx, edx",
    "    mov r10d, 8",
    "    mov eax, 13",
    "    syscall",
    "    add rsp, 32",
    "    mov eax, 39", // getpid
    "    syscall",
    "    mov edi, eax",
    "    mov esi, 5",
    "    mov eax, 62", // kill
    "    syscall",
    "    ret",
    // rax = this process's row of the per-process table (0: none). No
    // system call: the row page (private to each process, wiped on fork) is
    // filled by the monitor on the process's first touch, through its uffd
    // (see the fault server's row page). Preserves every other register and
    // the flags; called by the trap handler and by jump trampolines.
    "uprobe_exec_claim_row:",
    "    lea rax, [rip + uprobe_exec_trap_table]",
    "    mov rax, [rax + 32]", // the row page: pid, row
    "    mov rax, [rax + 8]",
    "    ret",
    "uprobe_exec_trap_restorer:",
    "    mov eax, 15", // rt_sigreturn
    "    syscall",
    "    ud2",
    ".p2align 3",
    "uprobe_exec_trap_table:",
    ".popsection",
);

extern "C" {
    static uprobe_exec_trap_start: u8;
    static uprobe_exec_trap_restorer: u8;
    static uprobe_exec_trap_table: u8;
}

/// Bytes of the table header.
pub const HEADER_BYTES: usize = 56;
/// Bytes of one table entry (site, slot, counter address, site index).
pub const ENTRY_BYTES: usize = 32;

/// The handler's machine code, up to where the table must follow.
#[must_use]
pub fn code() -> &'static [u8] {
    // SAFETY: both symbols come from the global_asm above, in one section,
    // the table label after the start; the bytes between are our code.
    unsafe {
        let start = std::ptr::addr_of!(uprobe_exec_trap_start);
        let end = std::ptr::addr_of!(uprobe_exec_trap_table);
        std::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Offset of the `rt_sigreturn` restorer in [`code`].
#[must_use]
pub fn restorer_offset() -> usize {
    // Both labels are in the same section; only their addresses are taken.
    std::ptr::addr_of!(uprobe_exec_trap_restorer) as usize
        - std::ptr::addr_of!(uprobe_exec_trap_start) as usize
}

/// Where the per-process rows are (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerProcess {
    /// Address of the first row (shared memory).
    pub rows: u64,
    /// Number of rows.
    pub count: u64,
    /// Bytes per row: 8 * (1 + sites).
    pub stride: u64,
    /// Address of the two-word private cache (pid, row), writable and
    /// private to each process.
    pub cache: u64,
}

/// One probe site as the handler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapSite {
    /// Runtime address of the int3.
    pub site: u64,
    /// Runtime address of its out-of-line slot.
    pub slot: u64,
    /// Runtime address of its hit counter (shared memory).
    pub counter: u64,
    /// Its index in a per-process row.
    pub index: u64,
}

/// The table bytes that follow [`code`]: header and entries, sorted by site.
#[must_use]
///
/// `program_handler` is the address of a word in shared memory holding the
/// program's own SIGTRAP handler (0: default).
pub fn table(
    sites: &[TrapSite],
    stray_counter: u64,
    program_handler: u64,
    per: PerProcess,
) -> Vec<u8> {
    let mut sorted = sites.to_vec();
    sorted.sort_by_key(|s| s.site);
    let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * sorted.len());
    let header = [
        sorted.len() as u64,
        program_handler,
        per.rows,
        stray_counter,
        per.cache,
        per.count,
        per.stride,
    ];
    for w in header {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for s in &sorted {
        for w in [s.site, s.slot, s.counter, s.index] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}
