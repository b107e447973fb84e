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
//!  header:      count │ &program's handler │ (reserved) │ &stray-trap counter
//!  entry:       site address │ slot address │ &hit counter        (sorted by site)
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
    "    lea r9, [r8 + 32]", // entries
    "    xor r10d, r10d",    // lo
    "    mov r11, rcx",      // hi
    ".Luprobe_trap_search:",
    "    cmp r10, r11",
    "    jae .Luprobe_trap_found",
    "    lea rsi, [r10 + r11]",
    "    shr rsi, 1",
    "    lea rdi, [rsi + rsi * 2]",
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
    "    lea rdi, [r10 + r10 * 2]",
    "    cmp [r9 + rdi * 8], rax",
    "    jne .Luprobe_trap_stray",
    "    mov rsi, [r9 + rdi * 8 + 16]",
    "    lock inc qword ptr [rsi]", // the hit, in shared memory
    "    mov rsi, [r9 + rdi * 8 + 8]",
    "    mov [rdx + 168], rsi", // resume in the out-of-line slot
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
    "    cmp rax, 1", // SIG_DFL or SIG_IGN: the kernel would kill it
    "    jbe .Luprobe_trap_die",
    "    jmp rax", // same arguments; it returns to our restorer
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

/// Bytes of the table header (count, program-handler slot address, reserved, stray counter address).
pub const HEADER_BYTES: usize = 32;
/// Bytes of one table entry (site, slot, counter address).
pub const ENTRY_BYTES: usize = 24;

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

/// One probe site as the handler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapSite {
    /// Runtime address of the int3.
    pub site: u64,
    /// Runtime address of its out-of-line slot.
    pub slot: u64,
    /// Runtime address of its hit counter (shared memory).
    pub counter: u64,
}

/// The table bytes that follow [`code`]: header and entries, sorted by site.
#[must_use]
///
/// `program_handler` is the address of a word in shared memory holding the
/// program's own SIGTRAP handler (0: default).
pub fn table(sites: &[TrapSite], stray_counter: u64, program_handler: u64) -> Vec<u8> {
    let mut sorted = sites.to_vec();
    sorted.sort_by_key(|s| s.site);
    let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * sorted.len());
    for w in [sorted.len() as u64, program_handler, 0, stray_counter] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for s in &sorted {
        for w in [s.site, s.slot, s.counter] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}
