//! The event routine: one piece of code in the probe area that a traced
//! site's trampoline calls after counting, to write the hit as a record
//! in the event ring (`uprobe_runtime::events`, whose protocol it
//! follows). No lock, no wait: a full ring counts a drop.
//!
//! ```text
//!  in:  edx = the site; rdi, rsi, rdx*, rcx*, r8, r9 as at the hit
//!       (* the caller's saved copies: see below); rsp below the red zone
//!  uses rax, rcx, rdx, r11 and the flags, which the trampoline saves
//!
//!  reserve: head, tail → full? lock inc dropped[site]; ret
//!           lock cmpxchg head, head + 1 (again on failure)
//!  write:   record = ring + RECORDS + ((index & mask) << shift)
//!           args, site, flags = 0, pid (the row page's), tid, rdtsc
//!  commit:  seq = index + 1 (a plain store: x86 keeps stores in order)
//! ```
//!
//! The thread id: a glibc program keeps it in its thread block, at a fixed
//! offset from the thread pointer (`fs`), which `rdfsbase` reads without
//! the kernel; the block is recognised by its self pointer (`tcbhead_t`'s
//! `self`, at 0x10, equal to the thread pointer). Anywhere else (no glibc,
//! no thread block yet, no `rdfsbase`), the routine asks the kernel
//! (`gettid`): a system call per hit, which the README states.

use iced_x86::code_asm::{
    byte_ptr, dword_ptr, eax, ecx, edi, edx, qword_ptr, r10, r11, r11d, r8, r8d, r9, r9d, rax, rcx,
    rdi, rdx, rsi, rsp, CodeAssembler,
};
use iced_x86::{IcedError, Register};
use uprobe_runtime::area::ROW_PAGE_PID;
use uprobe_runtime::events::{
    RingLayout, ARGS, REC_ARGS, REC_FLAGS, REC_PID, REC_PROBE, REC_SEQ, REC_STRINGS, REC_TID,
    REC_TIME, RING_DROPPED, RING_HEAD, RING_TAIL, STR_BYTES,
};

use super::xol::{assemble_within, load_rip, read_counter, Unrelocatable};

/// Bytes the probe area keeps for the routine.
pub const EMIT_BYTES: usize = 512;

/// Where the routine finds the program's rdx and rcx, from rsp at its
/// entry: above its return address and the r11 the trampoline saved (the
/// trampoline pushed rax and rcx on entering, then rdx and r11).
pub const SAVED_RDX: i32 = 16;
pub const SAVED_RCX: i32 = 24;

/// `tcbhead_t::self` in glibc's x86-64 thread block.
const TCB_SELF: i32 = 0x10;

/// How the routine learns the thread id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tid {
    /// From glibc's thread block at this offset from the thread pointer
    /// (`struct pthread::tid`, which libc.so.6's `_thread_db_pthread_tid`
    /// describes: 0x2d0 in glibc 2.36), `gettid` where there is none.
    Glibc(i32),
    /// `gettid` on every hit.
    Syscall,
}

/// Where the routine writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emit {
    /// The ring's address (in the shared mapping).
    pub ring: u64,
    /// Its layout.
    pub layout: RingLayout,
    /// The row page (its pid word is the process's).
    pub row_page: u64,
    /// How to learn the thread id.
    pub tid: Tid,
}

/// The routine, placed at `at`.
pub fn encode_emit(e: &Emit, at: u64) -> Result<Vec<u8>, Unrelocatable> {
    let code = |r: Result<(), IcedError>| r.map_err(|e| Unrelocatable::Code(e.to_string()));
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    code(routine(&mut a, e))?;
    assemble_within(&mut a, at, EMIT_BYTES, |n| {
        format!("the event routine takes {n} bytes, more than the {EMIT_BYTES} kept for it")
    })
}

/// The site's index in `edx` below this bit; its `str` arguments' mask
/// (bit `i`: argument `i`) above.
pub const STR_MASK_SHIFT: u32 = 24;

/// The record's flags (see `RecordBody::flags`): bit `i` the `i`-th
/// string was cut; bit `UNREADABLE + i` its pointer was NULL or could not
/// be read; bit `IS_STR + i` argument `i` was read as a string.
pub use uprobe_runtime::events::{FLAG_IS_STR as IS_STR, FLAG_UNREADABLE as UNREADABLE};

/// `process_vm_readv`'s system call number on x86-64.
const SYS_PROCESS_VM_READV: i32 = 310;
/// `gettid`'s.
const SYS_GETTID: i32 = 186;
/// `getpid`'s.
const SYS_GETPID: i32 = 39;

fn routine(a: &mut CodeAssembler, e: &Emit) -> Result<(), IcedError> {
    let strings = e.layout.record_bytes >= REC_STRINGS + ARGS * STR_BYTES;
    let mut full = a.create_label();
    let mut commit = a.create_label();
    // The site and its strings' mask, kept until the commit.
    a.push(rdx)?;
    reserve(a, e, full)?;
    // Stack from here: the index, the site, the return address, then the
    // trampoline's r11, rdx, rcx.
    a.push(rax)?;
    a.mov(edx, dword_ptr(rsp + 8))?;
    a.and(edx, (1 << STR_MASK_SHIFT) - 1)?;
    a.mov(dword_ptr(rcx + REC_PROBE as i32), edx)?;
    a.mov(dword_ptr(rcx + REC_FLAGS as i32), 0)?;
    a.mov(qword_ptr(rcx + REC_ARGS as i32), rdi)?;
    a.mov(qword_ptr(rcx + (REC_ARGS + 8) as i32), rsi)?;
    a.mov(r11, qword_ptr(rsp + 16 + SAVED_RDX))?;
    a.mov(qword_ptr(rcx + (REC_ARGS + 16) as i32), r11)?;
    a.mov(r11, qword_ptr(rsp + 16 + SAVED_RCX))?;
    a.mov(qword_ptr(rcx + (REC_ARGS + 24) as i32), r11)?;
    a.mov(qword_ptr(rcx + (REC_ARGS + 32) as i32), r8)?;
    a.mov(qword_ptr(rcx + (REC_ARGS + 40) as i32), r9)?;
    pid_and_tid(a, e)?;
    read_counter(a)?;
    a.mov(qword_ptr(rcx + REC_TIME as i32), rax)?;
    if strings {
        a.mov(r11d, dword_ptr(rsp + 8))?;
        a.shr(r11d, STR_MASK_SHIFT)?;
        a.test(r11d, r11d)?;
        a.jz(commit)?;
        copy_strings(a, &mut commit)?;
    }
    // Commit.
    a.set_label(&mut commit)?;
    a.pop(rax)?;
    a.inc(rax)?;
    a.mov(qword_ptr(rcx + REC_SEQ as i32), rax)?;
    a.pop(rdx)?;
    a.ret()?;
    // Full: count the drop.
    a.set_label(&mut full)?;
    a.pop(rdx)?;
    a.and(edx, (1 << STR_MASK_SHIFT) - 1)?;
    a.lea(rax, qword_ptr(r11 + RING_DROPPED as i32))?;
    a.lock().inc(qword_ptr(rax + rdx * 8))?;
    a.ret()
}

/// Reserves a record (step 1 of the protocol): rax = its index, rcx = its
/// address, r11 = the ring; a full ring jumps to `full` with r11 = the
/// ring. Uses rax, rcx, r11 and the flags.
pub(super) fn reserve(
    a: &mut CodeAssembler,
    e: &Emit,
    full: iced_x86::code_asm::CodeLabel,
) -> Result<(), IcedError> {
    let l = e.layout;
    let mask = i32::try_from(l.records - 1).unwrap_or(i32::MAX);
    let cap = i32::try_from(l.records).unwrap_or(i32::MAX);
    let records = i32::try_from(l.records_start()).unwrap_or(i32::MAX);
    let mut retry = a.create_label();
    a.mov(r11, e.ring)?;
    a.set_label(&mut retry)?;
    a.mov(rax, qword_ptr(r11 + RING_HEAD as i32))?;
    a.mov(rcx, rax)?;
    a.sub(rcx, qword_ptr(r11 + RING_TAIL as i32))?;
    a.cmp(rcx, cap)?;
    a.jae(full)?;
    a.lea(rcx, qword_ptr(rax + 1))?;
    a.lock().cmpxchg(qword_ptr(r11 + RING_HEAD as i32), rcx)?;
    a.jne(retry)?;
    a.mov(rcx, rax)?;
    a.and(ecx, mask)?;
    a.shl(rcx, l.record_shift())?;
    a.lea(rcx, qword_ptr(r11 + rcx + records))
}

/// Writes the process and the thread into the record at rcx. Uses rax,
/// rdx, r11 and the flags; keeps rcx.
pub(super) fn pid_and_tid(a: &mut CodeAssembler, e: &Emit) -> Result<(), IcedError> {
    let mut slow = a.create_label();
    let mut have_tid = a.create_label();
    let mut have_pid = a.create_label();
    // The process, from the row page (in the probe area, RIP-relative).
    load_rip(a, Register::RDX, e.row_page + ROW_PAGE_PID as u64)?;
    // A process we do not serve (a fork when unprivileged: no fork events)
    // has a row page of zeros: ask the kernel.
    a.test(edx, edx)?;
    a.jnz(have_pid)?;
    a.push(rcx)?;
    a.mov(eax, SYS_GETPID)?;
    a.syscall()?;
    a.pop(rcx)?;
    a.mov(edx, eax)?;
    a.set_label(&mut have_pid)?;
    a.mov(dword_ptr(rcx + REC_PID as i32), edx)?;
    // The thread.
    if let Tid::Glibc(offset) = e.tid {
        a.rdfsbase(rax)?;
        a.test(rax, rax)?;
        a.jz(slow)?;
        a.cmp(qword_ptr(rax + TCB_SELF), rax)?;
        a.jne(slow)?;
        a.mov(eax, dword_ptr(rax + offset))?;
        a.test(eax, eax)?;
        a.jg(have_tid)?;
    }
    a.set_label(&mut slow)?;
    a.push(rcx)?;
    a.mov(eax, SYS_GETTID)?;
    a.syscall()?;
    a.pop(rcx)?;
    a.set_label(&mut have_tid)?;
    a.mov(dword_ptr(rcx + REC_TID as i32), eax)
}

/// Copies each `str` argument (bit `i` of r11d, not 0: argument `i`)
/// into the record at rcx (whose pid is written), [`STR_BYTES`] for argument `i` at
/// `REC_STRINGS + 64 * i`, with `process_vm_readv` on the process itself:
/// the kernel reads what can be read and says how much, so a bad pointer
/// costs an error code, never a fault. Keeps every register but rax, rdx
/// and r11 (and rcx, the record, is back on the way out); jumps to
/// `commit` when done.
pub(super) fn copy_strings(
    a: &mut CodeAssembler,
    commit: &mut iced_x86::code_asm::CodeLabel,
) -> Result<(), IcedError> {
    let mut next = a.create_label();
    let mut null = a.create_label();
    let mut scan = a.create_label();
    let mut cut = a.create_label();
    let mut done = a.create_label();
    // The program's registers the system call takes, kept.
    for r in [rdi, rsi, r8, r9, r10] {
        a.push(r)?;
    }
    // The two iovecs: [rsp] ours (into the record), [rsp + 16] the string.
    a.sub(rsp, 32)?;
    a.set_label(&mut next)?;
    a.test(r11d, r11d)?;
    a.jz(done)?;
    a.bsf(eax, r11d)?;
    a.btr(r11d, eax)?;
    a.lea(edx, dword_ptr(rax + IS_STR as i32))?;
    a.bts(dword_ptr(rcx + REC_FLAGS as i32), edx)?;
    a.mov(rsi, qword_ptr(rcx + rax * 8 + REC_ARGS as i32))?;
    a.mov(rdx, rax)?;
    a.shl(rdx, STR_BYTES.trailing_zeros())?;
    a.lea(rdi, qword_ptr(rcx + rdx + REC_STRINGS as i32))?;
    a.mov(byte_ptr(rdi), 0)?;
    a.test(rsi, rsi)?;
    a.jz(null)?;
    a.mov(qword_ptr(rsp), rdi)?;
    a.mov(qword_ptr(rsp + 8), STR_BYTES as i32)?;
    a.mov(qword_ptr(rsp + 16), rsi)?;
    a.mov(qword_ptr(rsp + 24), STR_BYTES as i32)?;
    // The call clobbers rcx and r11; rax is the argument's number.
    a.push(rcx)?;
    a.push(r11)?;
    a.push(rax)?;
    a.mov(edi, dword_ptr(rcx + REC_PID as i32))?;
    a.lea(rsi, qword_ptr(rsp + 24))?;
    a.mov(edx, 1)?;
    a.lea(r10, qword_ptr(rsp + 40))?;
    a.mov(r8d, 1)?;
    a.xor(r9d, r9d)?;
    a.mov(eax, SYS_PROCESS_VM_READV)?;
    a.syscall()?;
    a.mov(rdx, rax)?;
    a.pop(rax)?;
    a.pop(r11)?;
    a.pop(rcx)?;
    a.test(rdx, rdx)?;
    a.jle(null)?;
    // Up to the NUL among the bytes read; none: the string is cut.
    a.mov(rdi, qword_ptr(rsp))?;
    a.xor(r8d, r8d)?;
    a.set_label(&mut scan)?;
    a.cmp(r8, rdx)?;
    a.jae(cut)?;
    a.cmp(byte_ptr(rdi + r8), 0)?;
    a.je(next)?;
    a.inc(r8)?;
    a.jmp(scan)?;
    a.set_label(&mut cut)?;
    a.bts(dword_ptr(rcx + REC_FLAGS as i32), eax)?;
    a.mov(r8d, (STR_BYTES - 1) as u32)?;
    a.cmp(rdx, r8)?;
    a.cmova(rdx, r8)?;
    a.mov(byte_ptr(rdi + rdx), 0)?;
    a.jmp(next)?;
    a.set_label(&mut null)?;
    a.lea(edx, dword_ptr(rax + UNREADABLE as i32))?;
    a.bts(dword_ptr(rcx + REC_FLAGS as i32), edx)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.add(rsp, 32)?;
    for r in [r10, r9, r8, rsi, rdi] {
        a.pop(r)?;
    }
    a.jmp(*commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    const AT: u64 = 0x7f00_0000_1000;

    fn emit(tid: Tid) -> Vec<iced_x86::Instruction> {
        let e = Emit {
            ring: 0x7f00_4000_0000,
            layout: RingLayout::new(1 << 16, 0, 939),
            row_page: 0x7f00_0000_9000,
            tid,
        };
        let code = encode_emit(&e, AT).unwrap();
        assert!(code.len() <= EMIT_BYTES, "{} bytes", code.len());
        Decoder::with_ip(64, &code, AT, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    fn has(v: &[iced_x86::Instruction], m: Mnemonic) -> bool {
        v.iter().any(|i| i.mnemonic() == m)
    }

    #[test]
    fn reserves_with_one_locked_exchange_and_counts_drops() {
        let v = emit(Tid::Glibc(0x2d0));
        let xchg = v
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Cmpxchg)
            .unwrap();
        assert!(xchg.has_lock_prefix());
        assert_eq!(xchg.memory_displacement64(), RING_HEAD as u64);
        let inc = v
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Inc && i.has_lock_prefix());
        assert!(inc.is_some(), "a full ring counts a drop");
        // The pid comes from the row page, RIP-relative.
        assert!(v.iter().any(|i| i.is_ip_rel_memory_operand()
            && i.ip_rel_memory_address() == 0x7f00_0000_9000 + ROW_PAGE_PID as u64));
        assert!(has(&v, Mnemonic::Rdtsc));
        assert_eq!(v.last().unwrap().mnemonic(), Mnemonic::Ret);
    }

    #[test]
    fn the_thread_id_comes_from_glibc_or_from_the_kernel() {
        let v = emit(Tid::Glibc(0x2d0));
        assert!(has(&v, Mnemonic::Rdfsbase));
        assert!(v.iter().any(|i| i.memory_displacement64() == 0x2d0));
        assert!(
            has(&v, Mnemonic::Syscall),
            "gettid where there is no thread block"
        );
        let v = emit(Tid::Syscall);
        assert!(!has(&v, Mnemonic::Rdfsbase));
        assert!(has(&v, Mnemonic::Syscall));
    }
}
