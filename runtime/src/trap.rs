//! The int3 trap handler that runs inside the program.
//!
//! It is self-contained, position-independent machine code copied into the
//! program's probe area: it must keep working after the hand-off has
//! unmapped the monitor, so it touches no TLS, allocates nothing, and calls
//! no libc. On SIGTRAP it looks the trapping address up in the site table
//! that follows it, counts the hit in shared memory, for a traced site
//! calls the event routine (as a trampoline does, with the interrupted
//! context's registers), and resumes at the site's out-of-line slot (the
//! displaced instruction, then a jump back).
//!
//! The table's layout, the shared counters' and the row page's are defined
//! once in [`crate::area`]; the assembly takes their offsets as `const`
//! operands.
//!
//! A trap that is not a probe hit (the program's own `int3`, or a SIGTRAP
//! sent to it) is counted as stray and handed to the program's own SIGTRAP
//! handler, which the monitor records (see `loader`'s seccomp guard); with
//! none, the program dies of SIGTRAP as it would have without us.

#![allow(unsafe_code)]

use std::arch::global_asm;

use crate::area;

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
    "    cmp dword ptr [rsi + {si_code}], {si_kernel}", // an int3, not a kill()
    "    jne .Luprobe_trap_stray",
    "    mov rax, [rdx + {uc_rip}]", // just past the int3
    "    dec rax",
    "    mov rcx, [r8 + {t_count}]",
    "    lea r9, [r8 + {t_entries}]",
    "    xor r10d, r10d", // lo
    "    mov r11, rcx",   // hi
    ".Luprobe_trap_search:",
    "    cmp r10, r11",
    "    jae .Luprobe_trap_found",
    "    lea rsi, [r10 + r11]",
    "    shr rsi, 1",
    "    imul rdi, rsi, {e_bytes}",
    "    cmp [r9 + rdi + {e_site}], rax",
    "    jae .Luprobe_trap_left",
    "    lea r10, [rsi + 1]",
    "    jmp .Luprobe_trap_search",
    ".Luprobe_trap_left:",
    "    mov r11, rsi",
    "    jmp .Luprobe_trap_search",
    ".Luprobe_trap_found:",
    "    cmp r10, rcx",
    "    jae .Luprobe_trap_objects",
    "    imul rdi, r10, {e_bytes}",
    "    cmp [r9 + rdi + {e_site}], rax",
    "    jne .Luprobe_trap_objects",
    ".Luprobe_trap_hit:",
    "    mov rsi, [r9 + rdi + {e_slot}]",
    "    mov [rdx + {uc_rip}], rsi", // resume in the out-of-line slot
    "    mov r11, [r9 + rdi + {e_index}]", // the site, and whether it is traced
    "    mov r10d, r11d",
    "    and r10d, {site_mask}",
    // The hit, in this process's row (shared memory); with no row left, in
    // the site's overflow counter.
    "    call uprobe_exec_claim_row",
    "    test rax, rax",
    "    jz .Luprobe_trap_overflow",
    "    lock inc qword ptr [rax + r10 * 8 + {row_hits}]",
    "    jmp .Luprobe_trap_counted",
    ".Luprobe_trap_overflow:",
    "    mov rax, [r8 + {t_shared}]",
    "    lock inc qword ptr [rax + r10 * 8 + {overflow}]",
    ".Luprobe_trap_counted:",
    // A traced site: the event routine, with the program's registers as
    // a trampoline would give them (rdx and rcx pushed, then a word for
    // r11; rdi, rsi, r8, r9 loaded). The kernel restores them all from the
    // context on return, so the handler may clobber any.
    "    bt r11, {traced}",
    "    jnc .Luprobe_trap_untraced",
    "    mov rax, [r8 + {t_emit}]",
    "    test rax, rax",
    "    jz .Luprobe_trap_untraced",
    "    push qword ptr [rdx + {uc_rcx}]",
    "    push qword ptr [rdx + {uc_rdx}]",
    "    push r11",
    "    mov rdi, [rdx + {uc_rdi}]",
    "    mov rsi, [rdx + {uc_rsi}]",
    "    mov r8, [rdx + {uc_r8}]",
    "    mov r9, [rdx + {uc_r9}]",
    "    mov edx, r11d",
    "    call rax",
    "    add rsp, 24",
    ".Luprobe_trap_untraced:",
    "    pop rsi",
    "    pop rdi",
    "    ret",
    // Not in this table: the shared objects' (entries in no order, added
    // while the program runs: the count is read first, then only entries
    // below it), with r8 as that table from here on.
    ".Luprobe_trap_objects:",
    "    mov r8, [r8 + {t_objects}]",
    "    test r8, r8",
    "    jz .Luprobe_trap_not_ours",
    "    mov rcx, [r8 + {t_count}]",
    "    lea r9, [r8 + {t_entries}]",
    "    xor r10d, r10d",
    ".Luprobe_trap_objects_next:",
    "    cmp r10, rcx",
    "    jae .Luprobe_trap_not_ours",
    "    imul rdi, r10, {e_bytes}",
    "    cmp [r9 + rdi + {e_site}], rax",
    "    je .Luprobe_trap_hit",
    "    inc r10",
    "    jmp .Luprobe_trap_objects_next",
    ".Luprobe_trap_not_ours:",
    "    lea r8, [rip + uprobe_exec_trap_table]",
    // Not a probe: the program's own int3, or a SIGTRAP sent to it.
    ".Luprobe_trap_stray:",
    "    pop rsi",
    "    pop rdi",
    "    mov rax, [r8 + {t_shared}]",
    "    lock inc qword ptr [rax + {stray}]",
    "    mov rax, [rax + {program_handler}]", // as the program set it
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
    "    mov edi, {sigtrap}",
    "    mov rsi, rsp",
    "    xor edx, edx",
    "    mov r10d, 8",
    "    mov eax, {sys_rt_sigaction}",
    "    syscall",
    "    add rsp, 32",
    "    mov eax, {sys_getpid}",
    "    syscall",
    "    mov edi, eax",
    "    mov esi, {sigtrap}",
    "    mov eax, {sys_kill}",
    "    syscall",
    "    ret",
    // rax = this process's row of the per-process table (0: none). No
    // system call: the row page (private to each process, wiped on fork) is
    // filled by the monitor on the process's first touch, through its uffd
    // (see the fault server's row page). Preserves every other register and
    // the flags.
    "uprobe_exec_claim_row:",
    "    lea rax, [rip + uprobe_exec_trap_table]",
    "    mov rax, [rax + {t_row_page}]",
    "    mov rax, [rax + {rp_row}]",
    "    ret",
    "uprobe_exec_trap_restorer:",
    "    mov eax, {sys_rt_sigreturn}",
    "    syscall",
    "    ud2",
    ".p2align 3",
    "uprobe_exec_trap_table:",
    ".popsection",
    si_code = const std::mem::offset_of!(libc::siginfo_t, si_code),
    si_kernel = const libc::SI_KERNEL,
    uc_rip = const UC_RIP,
    t_count = const area::TABLE_COUNT,
    t_shared = const area::TABLE_SHARED,
    t_row_page = const area::TABLE_ROW_PAGE,
    t_entries = const area::TABLE_ENTRIES,
    e_bytes = const area::ENTRY_BYTES,
    e_site = const area::ENTRY_SITE,
    e_slot = const area::ENTRY_SLOT,
    e_index = const area::ENTRY_INDEX,
    site_mask = const (1u32 << area::ENTRY_SITE_BITS) - 1,
    traced = const area::ENTRY_TRACED,
    t_emit = const area::TABLE_EMIT,
    t_objects = const area::TABLE_OBJECTS,
    uc_rcx = const uc_reg(libc::REG_RCX),
    uc_rdx = const uc_reg(libc::REG_RDX),
    uc_rdi = const uc_reg(libc::REG_RDI),
    uc_rsi = const uc_reg(libc::REG_RSI),
    uc_r8 = const uc_reg(libc::REG_R8),
    uc_r9 = const uc_reg(libc::REG_R9),
    rp_row = const area::ROW_PAGE_ROW,
    row_hits = const area::ROW_HITS,
    overflow = const area::SHARED_OVERFLOW,
    stray = const area::SHARED_STRAY,
    program_handler = const area::SHARED_PROGRAM_HANDLER,
    sigtrap = const libc::SIGTRAP,
    sys_rt_sigaction = const linux_raw_sys::general::__NR_rt_sigaction,
    sys_getpid = const linux_raw_sys::general::__NR_getpid,
    sys_kill = const linux_raw_sys::general::__NR_kill,
    sys_rt_sigreturn = const linux_raw_sys::general::__NR_rt_sigreturn,
);

/// Offset of register `reg` (a `REG_*`) in a `ucontext_t`
/// (`uc_mcontext.gregs[reg]`).
const fn uc_reg(reg: libc::c_int) -> usize {
    std::mem::offset_of!(libc::ucontext_t, uc_mcontext)
        + std::mem::offset_of!(libc::mcontext_t, gregs)
        + 8 * reg as usize
}

/// Offset of the interrupted RIP in a `ucontext_t`.
const UC_RIP: usize = uc_reg(libc::REG_RIP);

extern "C" {
    static uprobe_exec_trap_start: u8;
    static uprobe_exec_trap_restorer: u8;
    static uprobe_exec_trap_table: u8;
}

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

/// The probe area's code pages for `slots` slots (sites, then evicted
/// neighbours) and `traps` `int3` sites, with this build's handler.
#[must_use]
pub fn layout(slots: usize, traps: usize) -> crate::area::CodeLayout {
    crate::area::CodeLayout::new(code(), restorer_offset(), slots, traps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_offsets() {
        // The x86-64 ucontext_t and siginfo_t, as the kernel lays them out.
        assert_eq!(UC_RIP, 168);
        assert_eq!(std::mem::offset_of!(libc::siginfo_t, si_code), 8);
    }

    /// The system calls the handler makes, by the numbers in its
    /// `mov eax, imm32` (b8 + 4 bytes): rt_sigaction, getpid, kill and
    /// rt_sigreturn on x86-64.
    #[test]
    fn syscall_numbers() {
        let c = code();
        let nrs: Vec<u32> = c
            .windows(7)
            .filter(|w| w[0] == 0xb8 && w[5..] == [0x0f, 0x05])
            .map(|w| u32::from_le_bytes([w[1], w[2], w[3], w[4]]))
            .collect();
        assert_eq!(nrs, [13, 39, 62, 15]);
    }
}
