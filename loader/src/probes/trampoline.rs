//! Jump sites: the `jmp` patched over the site, and the trampoline it
//! leads to, assembled from pieces: [`enter`], [`count`], [`leave`], the
//! displaced instructions ([`super::xol::displaced`]) and the jump back.
//!
//! ```text
//!  enter:   lea rsp, [rsp-128]        ; off the red zone
//!           (pushfq)                  ; where the flags may be live
//!           push rax ; push rcx
//!  count:   mov rcx, rsp ; shr rcx, STACK_GRANULE_SHIFT       ; the stack slot's
//!           imul ecx, ecx, STACK_SLOT_HASH                     ; block, from the
//!           shr ecx, 32-SLOT_BITS ; shl rcx, BLOCK_SHIFT       ; start of the row
//!           (one slot: xor ecx, ecx)
//!           mov rax, [rip + ROW_PAGE+ROW_PAGE_ROW] ; test rax, rax ; je overflow
//!           lock inc qword [rax + rcx + ROW_HITS + 8*index]
//!  done:
//!  leave:   pop rcx ; pop rax ; (popfq) ; lea rsp, [rsp+128]
//!  displaced instructions, relocated; jmp back (unless the last is a call)
//!  overflow: mov rax, OVERFLOW ; lock inc qword [rax] ; jmp done
//! ```
//!
//! The counter is the site's in the block of the hit's stack slot
//! (`uprobe_runtime::area::stack_slot`): threads on different stacks
//! increment different cache lines, so counting does not serialise them.
//! The increment stays `lock`ed: two threads may share a slot, and a
//! thread may be preempted anywhere, so only an atomic increment keeps the
//! totals exact. Nothing here asks the kernel anything (no `rdpid`, no
//! system call): the stack pointer is at hand, and costs no latency.

use iced_x86::code_asm::{
    ecx, edx, ptr, qword_ptr, r11, rax, rcx, rdx, rsp, CodeAssembler, CodeLabel,
};
use iced_x86::{IcedError, Register};
use uprobe_runtime::area::{ROW_HITS, ROW_PAGE_ROW, STACK_GRANULE_SHIFT, STACK_SLOT_HASH};

use super::decode_one;
use super::emit::STR_MASK_SHIFT;
use super::xol::{assemble, displaced, load_rip, Unrelocatable};

/// Where a trampoline counts a hit (addresses in the program; see
/// `uprobe_runtime::area`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counting {
    /// The site's overflow counter (shared memory): hits of processes
    /// beyond the per-process rows.
    pub overflow: u64,
    /// The site's index in a per-process row.
    pub index: u64,
    /// The row page (pid, row): private, wiped on fork, filled by the
    /// monitor on each process's first touch.
    pub row_page: u64,
    /// log2 of the bytes of a row's block (one per stack slot):
    /// `SharedLayout::block_shift`.
    pub block_shift: u32,
    /// log2 of the stack slots in a row: `SharedLayout::slot_bits`.
    pub slot_bits: u32,
    /// The event routine's address, when the site is traced: after
    /// counting, the hit is written to the event ring (see `emit.rs`).
    pub emit: Option<u64>,
    /// Its `str` arguments (bit `i`: argument `i`), which the routine reads.
    pub strings: u8,
    /// The latency entry routine and the function, when the site is a
    /// timed function's entry (see `latency.rs`).
    pub enter: Option<(u64, u32)>,
}

/// Steps over the red zone and saves what [`count`] clobbers: rax, rcx,
/// and the flags when `flags_live`.
fn enter(a: &mut CodeAssembler, flags_live: bool) -> Result<(), IcedError> {
    a.lea(rsp, ptr(rsp - 128))?;
    if flags_live {
        a.pushfq()?;
    }
    a.push(rax)?;
    a.push(rcx)
}

/// Counts the hit in this process's row, found through its row page, in
/// the block of the stack slot; with no row, jumps to `overflow` (see
/// [`overflow`]), which comes back to `done`. Clobbers rax, rcx and the
/// flags. The slot's offset does not wait for the row's load.
fn count(
    a: &mut CodeAssembler,
    c: &Counting,
    overflow: CodeLabel,
    done: &mut CodeLabel,
) -> Result<(), IcedError> {
    if c.slot_bits == 0 {
        // One slot (`shr ecx, 32` would shift by 0).
        a.xor(ecx, ecx)?;
    } else {
        a.mov(rcx, rsp)?;
        a.shr(rcx, STACK_GRANULE_SHIFT)?;
        a.imul_3(ecx, ecx, STACK_SLOT_HASH as i32)?;
        a.shr(ecx, 32 - c.slot_bits)?;
        a.shl(rcx, c.block_shift)?;
    }
    // The row page lies in the probe area, within reach of a RIP-relative load.
    load_rip(a, Register::RAX, c.row_page + ROW_PAGE_ROW as u64)?;
    a.test(rax, rax)?;
    a.je(overflow)?;
    a.lock()
        .inc(qword_ptr(rax + rcx + (ROW_HITS as u64 + 8 * c.index)))?;
    // The next instruction (the first of `leave`) carries the label.
    a.set_label(done)
}

/// The way out of [`count`] for a process without a row: the site's
/// overflow counter, then back to `done`.
fn overflow(
    a: &mut CodeAssembler,
    c: &Counting,
    at: &mut CodeLabel,
    done: CodeLabel,
) -> Result<(), IcedError> {
    a.set_label(at)?;
    a.mov(rax, c.overflow)?;
    a.lock().inc(qword_ptr(rax))?;
    a.jmp(done)
}

/// Calls the event routine at `emit` for `site` (its index, its strings'
/// mask above `STR_MASK_SHIFT`), keeping rdx and r11 (the routine's
/// layout of the stack depends on this order: `emit::SAVED_RDX`,
/// `emit::SAVED_RCX`).
fn trace(a: &mut CodeAssembler, site: u64, emit: u64) -> Result<(), IcedError> {
    a.push(rdx)?;
    a.push(r11)?;
    a.mov(edx, site as u32)?;
    a.call(emit)?;
    a.pop(r11)?;
    a.pop(rdx)
}

/// [`trace`], then the latency entry routine (as `call_routine`), with
/// rdx and r11 saved once.
fn trace_and_time(
    a: &mut CodeAssembler,
    site: u64,
    emit: u64,
    (routine, func): (u64, u32),
    below: i32,
) -> Result<(), IcedError> {
    a.push(rdx)?;
    a.push(r11)?;
    a.mov(edx, site as u32)?;
    a.call(emit)?;
    a.mov(edx, func)?;
    a.lea(r11, ptr(rsp + (below + 16)))?;
    a.call(routine)?;
    a.pop(r11)?;
    a.pop(rdx)
}

/// Undoes [`enter`].
fn leave(a: &mut CodeAssembler, flags_live: bool) -> Result<(), IcedError> {
    a.pop(rcx)?;
    a.pop(rax)?;
    if flags_live {
        a.popfq()?;
    }
    a.lea(rsp, ptr(rsp + 128))
}

/// The trampoline for a jump site at runtime address `ip` displacing the
/// first `len` bytes of `bytes` (whole instructions), placed at runtime
/// address `at`: count the hit (saving the flags where they may be live),
/// run the displaced instructions, jump back to `ip + len`.
pub fn encode_trampoline(
    bytes: &[u8],
    ip: u64,
    len: usize,
    flags_live: bool,
    count_at: &Counting,
    at: u64,
) -> Result<Vec<u8>, Unrelocatable> {
    let e = |r: Result<(), IcedError>| r.map_err(|e| Unrelocatable::Code(e.to_string()));
    if count_at.block_shift > 31 || !(0..=16).contains(&count_at.slot_bits) {
        return Err(Unrelocatable::Code(format!(
            "takes 2^{} counter blocks of 2^{} bytes, more than the trampoline addresses",
            count_at.slot_bits, count_at.block_shift
        )));
    }
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    let mut to_overflow = a.create_label();
    let mut done = a.create_label();
    e(enter(&mut a, flags_live))?;
    e(count(&mut a, count_at, to_overflow, &mut done))?;
    let site = count_at.index | u64::from(count_at.strings) << STR_MASK_SHIFT;
    // Below the program's rsp: the red zone, the flags, rax and rcx.
    let below = 128 + 16 + if flags_live { 8 } else { 0 };
    match (count_at.emit, count_at.enter) {
        (Some(emit), None) => e(trace(&mut a, site, emit))?,
        (None, Some((routine, func))) => {
            e(super::latency::call_routine(&mut a, routine, func, below))?;
        }
        // Both within one save of rdx and r11: the slot is tight.
        (Some(emit), Some((routine, func))) => {
            e(trace_and_time(&mut a, site, emit, (routine, func), below))?;
        }
        (None, None) => {}
    }
    e(leave(&mut a, flags_live))?;
    let mut off = 0;
    while off < len {
        let insn = decode_one(&bytes[off..], ip + off as u64);
        off += insn.len();
        // Only the last displaced instruction jumps back (or a call leaves).
        displaced(&mut a, &insn, off >= len)?;
    }
    // Out of the way of the hot path: nothing falls through to it.
    e(overflow(&mut a, count_at, &mut to_overflow, done))?;
    assemble(&mut a, at, "takes")
}

/// The trampoline of an exit of a timed function: the `len` bytes at `ip`
/// (whole instructions, the last a `ret` or a `jmp` out of the function)
/// run out of line, and before the last, with the stack as at the return,
/// the latency exit routine at `exit` for `func`. The flags are not kept:
/// a return leaves none live.
pub fn encode_exit(
    bytes: &[u8],
    ip: u64,
    len: usize,
    exit: u64,
    func: u32,
    at: u64,
) -> Result<Vec<u8>, Unrelocatable> {
    let e = |r: Result<(), IcedError>| r.map_err(|e| Unrelocatable::Code(e.to_string()));
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    let mut insns = Vec::new();
    let mut off = 0;
    while off < len {
        let insn = decode_one(&bytes[off..], ip + off as u64);
        off += insn.len();
        insns.push(insn);
    }
    let (last, before) = insns
        .split_last()
        .ok_or_else(|| Unrelocatable::Code("an exit of no instruction".into()))?;
    for insn in before {
        displaced(&mut a, insn, false)?;
    }
    // A tail call's value is its callee's: the routine is told.
    let func = match last.flow_control() {
        iced_x86::FlowControl::Return => func,
        _ => func | super::latency::TAIL,
    };
    e(exit_hook(&mut a, exit, func))?;
    displaced(&mut a, last, false)?;
    assemble(&mut a, at, "takes")
}

/// Calls the latency exit routine for `func` with the stack as the
/// program has it (no flags kept: a return leaves none live).
fn exit_hook(a: &mut CodeAssembler, exit: u64, func: u32) -> Result<(), IcedError> {
    enter(a, false)?;
    super::latency::call_routine(a, exit, func, 128 + 16)?;
    leave(a, false)
}

/// Where code is encoded on trial, from the code it displaces: farther
/// than any short form reaches, so the trial is the longest it can be.
pub const TRIAL: u64 = 1 << 30;

/// Whether the trampoline of a jump site at `ip` displacing `len` bytes of
/// `bytes` fits one slot, placed as far as a slot can be, with a high site
/// number (its counter's offset takes 4 bytes), tracing if `traced` and
/// calling the latency entry routine if `timed`.
pub fn fits(
    bytes: &[u8],
    ip: u64,
    len: usize,
    flags_live: bool,
    traced: bool,
    timed: bool,
) -> bool {
    let at = ip + TRIAL;
    let counting = Counting {
        overflow: at + 0x1000,
        index: 1 << 20,
        row_page: at + 0x2000,
        block_shift: 16,
        slot_bits: 10,
        emit: traced.then_some(at + 0x3000),
        strings: 0,
        enter: timed.then_some((at + 0x4000, 0)),
    };
    encode_trampoline(bytes, ip, len, flags_live, &counting, at).is_ok()
}

/// Whether the trampoline of an exit over `len` bytes of `bytes` at `ip`
/// fits one slot (see [`fits`]).
pub fn exit_fits(bytes: &[u8], ip: u64, len: usize) -> bool {
    let at = ip + TRIAL;
    encode_exit(bytes, ip, len, at + 0x4000, 0, at).is_ok()
}

/// The slot of a neighbour evicted to hold pads (`super::short`): its
/// `len` displaced bytes at `ip` (the first of `bytes`), relocated to `at`,
/// then the jump back. It counts nothing and touches nothing else.
pub fn encode_evicted(
    bytes: &[u8],
    ip: u64,
    len: usize,
    at: u64,
) -> Result<Vec<u8>, Unrelocatable> {
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    let mut off = 0;
    while off < len {
        let insn = decode_one(&bytes[off..], ip + off as u64);
        off += insn.len();
        displaced(&mut a, &insn, off >= len)?;
    }
    assemble(&mut a, at, "relocates to")
}

/// The bytes that replace `len` (≥ 2) bytes at `ip`: `jmp rel8` to `pad`
/// (within reach), then `int3` filler (never executed).
#[must_use]
pub fn short_patch(ip: u64, len: usize, pad: u64) -> Vec<u8> {
    let rel = pad.wrapping_sub(ip + 2) as i64;
    debug_assert!((-128..=127).contains(&rel), "a pad out of reach");
    let mut v = vec![0xeb, rel as i8 as u8];
    v.resize(len, 0xcc);
    v
}

/// The bytes that replace `len` bytes at `ip`: `jmp rel32` to `target`,
/// then `int3` filler (never executed: nothing branches there).
#[must_use]
pub fn jump_patch(ip: u64, len: usize, target: u64) -> Vec<u8> {
    let rel = target.wrapping_sub(ip + 5) as i64 as i32;
    let mut v = vec![0xe9];
    v.extend_from_slice(&rel.to_le_bytes());
    v.resize(len, 0xcc);
    v
}

/// Builds the decoder's and encoder's tables, which iced builds on their
/// first use (about a millisecond): a thread that has time to spare calls
/// this so that the monitor does not, while a program waits on it.
pub fn warm_up() {
    // push rbp ; mov rbp, rsp ; call rel32 (relocated: the block encoder).
    let bytes = [0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0];
    let _ = encode_evicted(&bytes, 0x10_0000, bytes.len(), 0x20_0000);
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

    const AT: u64 = 0x7f00_0000_1000;
    const IP: u64 = 0x7f00_1000_0000;
    const COUNTING: Counting = Counting {
        overflow: 0x7f00_2000_0050,
        index: 3,
        row_page: 0x7f00_0000_9000,
        block_shift: 9,
        slot_bits: 5,
        emit: None,
        strings: 0,
        enter: None,
    };

    fn decode(code: &[u8]) -> Vec<Instruction> {
        Decoder::with_ip(64, code, AT, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    /// The instructions after the counting prologue and epilogue, up to
    /// the overflow path (three instructions at the end).
    fn after_leave(v: &[Instruction]) -> &[Instruction] {
        let at = v
            .iter()
            .position(|i| i.code() == Code::Lea_r64_m && i.memory_displacement64() == 128)
            .expect("leave restores rsp");
        &v[at + 1..v.len() - 3]
    }

    #[test]
    fn counts_in_the_row_or_the_overflow_counter() {
        // push rbp; mov rbp, rsp (4 bytes) + sub rsp, 0x10 (4 bytes).
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10];
        let t = encode_trampoline(&code, IP, 8, false, &COUNTING, AT).unwrap();
        let v = decode(&t);
        assert_eq!(v[0].code(), Code::Lea_r64_m);
        assert_eq!(v[0].memory_displacement64() as i64, -128);
        assert_eq!(v[1].code(), Code::Push_r64, "no pushfq at an entry");
        assert_eq!(
            (v[1].op0_register(), v[2].op0_register()),
            (Register::RAX, Register::RCX)
        );
        // The stack slot's block, from the stack pointer.
        assert_eq!(v[3].code(), Code::Mov_rm64_r64);
        assert_eq!(
            (v[3].op0_register(), v[3].op1_register()),
            (Register::RCX, Register::RSP)
        );
        assert_eq!(v[4].mnemonic(), Mnemonic::Shr);
        assert_eq!(u32::from(v[4].immediate8()), STACK_GRANULE_SHIFT);
        assert_eq!(v[5].code(), Code::Imul_r32_rm32_imm32);
        assert_eq!(v[5].immediate32(), STACK_SLOT_HASH);
        assert_eq!(
            (v[6].mnemonic(), v[6].op0_register()),
            (Mnemonic::Shr, Register::ECX)
        );
        assert_eq!(u32::from(v[6].immediate8()), 32 - COUNTING.slot_bits);
        assert_eq!(
            (v[7].mnemonic(), v[7].op0_register()),
            (Mnemonic::Shl, Register::RCX)
        );
        assert_eq!(u32::from(v[7].immediate8()), COUNTING.block_shift);
        // The row page's row word, RIP-relative.
        assert!(v[8].is_ip_rel_memory_operand());
        assert_eq!(
            v[8].ip_rel_memory_address(),
            COUNTING.row_page + ROW_PAGE_ROW as u64
        );
        // No row: the overflow path at the end.
        assert_eq!(v[10].mnemonic(), Mnemonic::Je);
        let o = v.len() - 3;
        assert_eq!(v[10].near_branch_target(), v[o].ip());
        assert_eq!(v[o].immediate64(), COUNTING.overflow);
        assert!(v[o + 1].has_lock_prefix() && v[o + 1].mnemonic() == Mnemonic::Inc);
        assert_eq!(v[o + 1].memory_base(), Register::RAX);
        assert_eq!(v[o + 1].memory_displacement64(), 0);
        // A row: the site's counter in the slot's block.
        let in_row = &v[11];
        assert!(in_row.has_lock_prefix() && in_row.mnemonic() == Mnemonic::Inc);
        assert_eq!(in_row.memory_base(), Register::RAX);
        assert_eq!(in_row.memory_index(), Register::RCX);
        assert_eq!(in_row.memory_index_scale(), 1);
        assert_eq!(
            in_row.memory_displacement64(),
            ROW_HITS as u64 + 8 * COUNTING.index
        );
        // Both paths meet at `pop rcx; pop rax`.
        assert_eq!(v[o + 2].near_branch_target(), v[12].ip());
        assert_eq!(
            (v[12].code(), v[12].op0_register()),
            (Code::Pop_r64, Register::RCX)
        );
        assert_eq!(v[13].op0_register(), Register::RAX);
    }

    #[test]
    fn the_slot_computation_is_the_layouts() {
        // What the five instructions compute, step by step, for stack
        // pointers of several threads.
        for sp in [
            0x7ffd_1234_5678_u64,
            0x7f00_0080_1ff0,
            0x1_0000,
            u64::MAX - 7,
        ] {
            let granule = sp >> STACK_GRANULE_SHIFT;
            let slot = (granule as u32).wrapping_mul(STACK_SLOT_HASH) >> (32 - COUNTING.slot_bits);
            let offset = u64::from(slot) << COUNTING.block_shift;
            assert_eq!(
                slot as usize,
                uprobe_runtime::area::stack_slot(sp, COUNTING.slot_bits)
            );
            let l = uprobe_runtime::area::SharedLayout {
                sites: 64,
                rows: 1,
                slots: 1 << COUNTING.slot_bits,
                ring: uprobe_runtime::events::RingLayout::default(),
                latency: 0,
            };
            assert_eq!(l.block_shift(), COUNTING.block_shift);
            assert_eq!(offset as usize + ROW_HITS, l.block(slot as usize));
        }
    }

    #[test]
    fn one_slot_counts_in_block_zero() {
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10];
        let c = Counting {
            slot_bits: 0,
            ..COUNTING
        };
        let v = decode(&encode_trampoline(&code, IP, 8, false, &c, AT).unwrap());
        assert_eq!(v[3].mnemonic(), Mnemonic::Xor);
        assert_eq!(
            (v[3].op0_register(), v[3].op1_register()),
            (Register::ECX, Register::ECX)
        );
        assert!(v[4].is_ip_rel_memory_operand());
    }

    #[test]
    fn a_block_too_large_to_address_is_refused() {
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10];
        let c = Counting {
            block_shift: 40,
            ..COUNTING
        };
        assert!(encode_trampoline(&code, IP, 8, false, &c, AT).is_err());
    }

    #[test]
    fn displaced_instructions_run_then_jump_back() {
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10];
        let t = encode_trampoline(&code, IP, 8, false, &COUNTING, AT).unwrap();
        let v = decode(&t);
        let rest = after_leave(&v);
        assert_eq!(rest.len(), 4);
        assert_eq!(rest[0].code(), Code::Push_r64);
        assert_eq!(rest[1].code(), Code::Mov_rm64_r64);
        assert_eq!(rest[2].code(), Code::Sub_rm64_imm8);
        assert_eq!(rest[3].mnemonic(), Mnemonic::Jmp);
        assert_eq!(rest[3].near_branch_target(), IP + 8);
    }

    #[test]
    fn flags_are_saved_where_they_may_be_live() {
        let code = [0x48, 0x83, 0xec, 0x10, 0x90];
        let t = encode_trampoline(&code, IP, 5, true, &COUNTING, AT).unwrap();
        let v = decode(&t);
        assert_eq!(v[1].code(), Code::Pushfq);
        let rest = after_leave(&v);
        let before = &v[..v.len() - rest.len() - 3];
        assert_eq!(before[before.len() - 2].code(), Code::Popfq);
        assert_eq!(before[before.len() - 3].op0_register(), Register::RAX);
        assert_eq!(rest.last().unwrap().near_branch_target(), IP + 5);
    }

    #[test]
    fn rip_relative_displaced_instructions_keep_their_target() {
        // mov rax, [rip + 0x100] at IP (7 bytes): reads IP + 7 + 0x100.
        let code = [0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00];
        let t = encode_trampoline(&code, IP, 7, false, &COUNTING, AT).unwrap();
        let rest = after_leave(&decode(&t)).to_vec();
        assert!(rest[0].is_ip_rel_memory_operand());
        assert_eq!(rest[0].ip_rel_memory_address(), IP + 7 + 0x100);
        assert_eq!(rest[1].near_branch_target(), IP + 7);
    }

    #[test]
    fn a_displaced_call_returns_to_the_original_code() {
        // nop; call rel32 to IP + 0x1000 (at IP + 1, next IP + 6).
        let code = [0x90, 0xe8, 0xfb, 0x0f, 0x00, 0x00];
        let t = encode_trampoline(&code, IP, 6, false, &COUNTING, AT).unwrap();
        let rest = after_leave(&decode(&t)).to_vec();
        assert_eq!(rest[0].mnemonic(), Mnemonic::Nop);
        assert_eq!(rest[1].code(), Code::Push_r64);
        assert_eq!(rest[2].immediate64(), IP + 6);
        assert_eq!(rest[3].mnemonic(), Mnemonic::Xchg);
        assert_eq!(rest[4].op0_kind(), OpKind::NearBranch64);
        assert_eq!(rest[4].near_branch_target(), IP + 1 + 0x1000);
        assert_eq!(rest.len(), 5, "no jump back after a call");
    }

    #[test]
    fn the_patch_jumps_to_the_trampoline() {
        let p = jump_patch(IP, 7, AT);
        assert_eq!(p.len(), 7);
        let i = Decoder::with_ip(64, &p, IP, DecoderOptions::NONE).decode();
        assert_eq!(i.near_branch_target(), AT);
        assert_eq!(&p[5..], &[0xcc, 0xcc]);
    }

    #[test]
    fn a_traced_site_calls_the_event_routine_after_counting() {
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10];
        let emit = AT + 0x800;
        let traced = Counting {
            emit: Some(emit),
            ..COUNTING
        };
        let v = decode(&encode_trampoline(&code, IP, 8, false, &traced, AT).unwrap());
        let inc = v
            .iter()
            .position(|i| i.mnemonic() == Mnemonic::Inc && i.has_lock_prefix())
            .unwrap();
        let call = v
            .iter()
            .position(|i| i.mnemonic() == Mnemonic::Call)
            .expect("a call");
        assert!(inc < call, "after counting");
        assert_eq!(v[call].near_branch_target(), emit);
        // rdx then r11 saved (the routine reads rdx and rcx above them),
        // the site's index in edx.
        assert_eq!(
            (v[call - 3].op0_register(), v[call - 2].op0_register()),
            (Register::RDX, Register::R11)
        );
        assert_eq!(
            (v[call - 1].op0_register(), v[call - 1].immediate32()),
            (Register::EDX, 3)
        );
        // The overflow path comes back before the call: its hits are traced too.
        let back = v.last().unwrap().near_branch_target();
        assert_eq!(back, v[call - 3].ip());
        // Untraced: no call.
        let v = decode(&encode_trampoline(&code, IP, 8, false, &COUNTING, AT).unwrap());
        assert!(!v.iter().any(|i| i.mnemonic() == Mnemonic::Call));
    }
}
