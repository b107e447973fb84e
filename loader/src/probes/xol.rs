//! Running displaced instructions out of line: which can, how each is
//! relocated, and the slot of an `int3` site.
//!
//! A displaced instruction keeps its meaning in the probe area because the
//! area is within ±2 GiB of the text: the block encoder re-targets its
//! RIP-relative operand or branch to the same absolute address. A `call`
//! becomes push-original-return + `jmp`, so the callee returns to the
//! original code, not to the slot.

use iced_x86::code_asm::{qword_ptr, rax, rsp, CodeAssembler};
use iced_x86::{Code, IcedError, Instruction, MemoryOperand, Mnemonic, OpKind, Register};

use uprobe_runtime::area::SLOT_BYTES;

use super::{decode_one, disasm};

/// Why an instruction cannot run out of line, if it cannot (the kernel's
/// uprobes refuse the same ones).
fn refuse(i: &Instruction) -> Option<&'static str> {
    use Mnemonic as M;
    if i.code() == Code::INVALID {
        return Some("does not decode");
    }
    Some(match i.mnemonic() {
        M::Int3 | M::Int | M::Int1 | M::Into => "raises an interrupt",
        M::Syscall | M::Sysenter | M::Sysexit | M::Sysret | M::Iret | M::Iretd | M::Iretq => {
            "changes privilege level"
        }
        M::Hlt => "halts",
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            "does port I/O"
        }
        M::Ud0 | M::Ud1 | M::Ud2 => "is undefined on purpose",
        M::Xbegin | M::Xabort | M::Xend => "is part of a hardware transaction",
        M::Retf => "is a far return",
        _ if i.is_jmp_far()
            || i.is_call_far()
            || i.is_jmp_far_indirect()
            || i.is_call_far_indirect() =>
        {
            "is a far branch"
        }
        _ => return None,
    })
}

/// Checks that `insn` can run in a slot; otherwise why not.
pub(super) fn relocatable(insn: &Instruction) -> Result<(), String> {
    if let Some(why) = refuse(insn) {
        return Err(why.to_string());
    }
    if insn.mnemonic() == Mnemonic::Call
        && insn.op0_kind() == OpKind::Register
        && insn.op0_register() == Register::RSP
    {
        return Err("calls through rsp".into());
    }
    Ok(())
}

/// Why a site's out-of-line code cannot be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unrelocatable {
    /// One displaced instruction (disassembled) cannot run out of line.
    Insn {
        /// The instruction.
        insn: String,
        /// Why, to follow "its instruction `…`".
        why: String,
    },
    /// The code as a whole cannot be placed; `why` follows "its
    /// instruction `…`" or "its trampoline".
    Code(String),
}

/// Appends `insn` (decoded at its original address), relocated: a `call`
/// becomes push-original-return + `jmp` (so it needs no jump back);
/// anything else is copied as is, followed by a jump back to the
/// instruction after it when `jump_back`. The instruction keeps its
/// original address in the block, so a branch among the displaced
/// instructions keeps its target.
pub(super) fn displaced(
    a: &mut CodeAssembler,
    insn: &Instruction,
    jump_back: bool,
) -> Result<(), Unrelocatable> {
    let refused = |why| Unrelocatable::Insn {
        insn: disasm(insn),
        why,
    };
    relocatable(insn).map_err(refused)?;
    let e = |r: Result<(), IcedError>| r.map_err(|e| Unrelocatable::Code(e.to_string()));
    let next = insn.next_ip();
    if insn.mnemonic() != Mnemonic::Call {
        e(a.add_instruction(*insn))?;
        if jump_back {
            e(a.jmp(next))?;
        }
        return Ok(());
    }
    e(a.push(rax))?;
    e(a.mov(rax, next))?;
    e(a.xchg(qword_ptr(rsp), rax))?;
    match insn.code() {
        Code::Call_rel32_64 | Code::Call_rel16 | Code::Call_rel32_32 => {
            e(a.jmp(insn.near_branch_target()))
        }
        Code::Call_rm64 => {
            let mut jmp = *insn;
            if jmp.op0_kind() == OpKind::Memory && jmp.memory_base() == Register::RSP {
                // The return address we pushed moved rsp by 8.
                jmp.set_memory_displacement64(jmp.memory_displacement64().wrapping_add(8));
            }
            jmp.set_code(Code::Jmp_rm64);
            e(a.add_instruction(jmp))
        }
        _ => Err(refused(
            "is a call of a kind that cannot be relocated".into(),
        )),
    }
}

/// Assembles `a` at runtime address `at`, into at most one slot; `what`
/// says how the code grew ("relocates to", "takes").
pub(super) fn assemble(
    a: &mut CodeAssembler,
    at: u64,
    what: &str,
) -> Result<Vec<u8>, Unrelocatable> {
    assemble_within(a, at, SLOT_BYTES, |n| {
        format!("{what} {n} bytes, more than a slot holds")
    })
}

/// Assembles `a` at runtime address `at` into at most `max` bytes; what
/// `too_big` says of a length beyond them otherwise.
pub(super) fn assemble_within(
    a: &mut CodeAssembler,
    at: u64,
    max: usize,
    too_big: impl FnOnce(usize) -> String,
) -> Result<Vec<u8>, Unrelocatable> {
    let code = a
        .assemble(at)
        .map_err(|e| Unrelocatable::Code(format!("cannot be relocated to the probe area: {e}")))?;
    if code.len() > max {
        return Err(Unrelocatable::Code(too_big(code.len())));
    }
    Ok(code)
}

/// The time stamp counter, whole, into rax (`rdtsc`, then edx:eax joined).
/// Clobbers rdx.
pub(super) fn read_counter(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.rdtsc()?;
    a.shl(iced_x86::code_asm::rdx, 32)?;
    a.or(iced_x86::code_asm::rax, iced_x86::code_asm::rdx)
}

/// `mov reg, [addr]`, RIP-relative: `addr` lies in the probe area, within
/// reach of the code that loads it.
pub(super) fn load_rip(a: &mut CodeAssembler, reg: Register, addr: u64) -> Result<(), IcedError> {
    a.add_instruction(Instruction::with2(
        Code::Mov_r64_rm64,
        reg,
        MemoryOperand::with_base_displ(Register::RIP, addr as i64),
    )?)
}

/// The slot of an `int3` site at runtime address `ip` (its instruction is
/// the first of `bytes`), placed at runtime address `slot`: the instruction,
/// relocated, then a jump back.
pub fn encode_slot(bytes: &[u8], ip: u64, slot: u64) -> Result<Vec<u8>, Unrelocatable> {
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    displaced(&mut a, &decode_one(bytes, ip), true)?;
    assemble(&mut a, slot, "relocates to")
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    #[test]
    fn call_pushes_the_original_return_address() {
        // call rel32 at 0x1000 to 0x2000; slot at 0x10_0000.
        let call = [0xe8, 0xfb, 0x0f, 0x00, 0x00];
        let v = decode(&encode_slot(&call, 0x1000, 0x10_0000).unwrap(), 0x10_0000);
        assert_eq!(v[0].code(), Code::Push_r64);
        assert_eq!(v[1].immediate64(), 0x1005);
        assert_eq!(v[2].mnemonic(), Mnemonic::Xchg);
        assert_eq!(v[3].near_branch_target(), 0x2000);
        assert_eq!(v.len(), 4, "the callee returns to the original code");
    }

    #[test]
    fn call_through_the_stack_reads_past_the_pushed_return() {
        // call [rsp + 8] at 0x1000.
        let call = [0xff, 0x54, 0x24, 0x08];
        let v = decode(&encode_slot(&call, 0x1000, 0x10_0000).unwrap(), 0x10_0000);
        assert_eq!(v[1].immediate64(), 0x1004);
        assert_eq!(v[3].code(), Code::Jmp_rm64);
        assert_eq!(v[3].memory_base(), Register::RSP);
        assert_eq!(v[3].memory_displacement64(), 16);
    }

    #[test]
    fn rip_relative_operands_keep_their_target() {
        // lea rax, [rip + 0x10] at 0x1000 (next 0x1007): target 0x1017.
        let lea = [0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00];
        let v = decode(
            &encode_slot(&lea, 0x1000, 0x7000_0000).unwrap(),
            0x7000_0000,
        );
        assert_eq!(v[0].ip_rel_memory_address(), 0x1017);
        assert_eq!(v[1].near_branch_target(), 0x1007);
    }

    #[test]
    fn refuses_what_cannot_run_out_of_line() {
        assert!(encode_slot(&[0x0f, 0x05], 0x1000, 0x2000).is_err()); // syscall
        assert!(encode_slot(&[0xcc], 0x1000, 0x2000).is_err()); // int3
        assert!(encode_slot(&[0x0f, 0x0b], 0x1000, 0x2000).is_err()); // ud2
        assert!(encode_slot(&[0xff, 0xd4], 0x1000, 0x2000).is_err()); // call rsp
    }
}
