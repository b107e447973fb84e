//! Jump sites: the `jmp` patched over the site, and the trampoline it
//! leads to, assembled from pieces: [`enter`], [`count`], [`leave`], the
//! displaced instructions ([`super::xol::displaced`]) and the jump back.
//!
//! ```text
//!  enter:   lea rsp, [rsp-128]        ; off the red zone
//!           (pushfq)                  ; where the flags may be live
//!           push rax
//!  count:   mov rax, ROW_PAGE ; mov rax, [rax+ROW_PAGE_ROW] ; test rax, rax ; jne in_row
//!           mov rax, OVERFLOW ; lock inc qword [rax] ; jmp done
//!  in_row:  lock inc qword [rax + ROW_HITS + 8*index]
//!  done:
//!  leave:   pop rax ; (popfq) ; lea rsp, [rsp+128]
//!  displaced instructions, relocated; jmp back (unless the last is a call)
//! ```

use iced_x86::code_asm::{ptr, qword_ptr, rax, rsp, CodeAssembler};
use iced_x86::IcedError;
use uprobe_runtime::area::{ROW_HITS, ROW_PAGE_ROW};

use super::decode_one;
use super::xol::{assemble, displaced, Unrelocatable};

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
}

/// Steps over the red zone and saves what [`count`] clobbers: rax, and the
/// flags when `flags_live`.
fn enter(a: &mut CodeAssembler, flags_live: bool) -> Result<(), IcedError> {
    a.lea(rsp, ptr(rsp - 128))?;
    if flags_live {
        a.pushfq()?;
    }
    a.push(rax)
}

/// Counts the hit in this process's row, found through its row page; with
/// none, in the site's overflow counter. Clobbers rax and the flags.
fn count(a: &mut CodeAssembler, c: &Counting) -> Result<(), IcedError> {
    let mut in_row = a.create_label();
    let mut done = a.create_label();
    a.mov(rax, c.row_page)?;
    a.mov(rax, qword_ptr(rax + ROW_PAGE_ROW))?;
    a.test(rax, rax)?;
    a.jne(in_row)?;
    a.mov(rax, c.overflow)?;
    a.lock().inc(qword_ptr(rax))?;
    a.jmp(done)?;
    a.set_label(&mut in_row)?;
    a.lock()
        .inc(qword_ptr(rax + (ROW_HITS as u64 + 8 * c.index)))?;
    // The next instruction (the first of `leave`) carries the label.
    a.set_label(&mut done)
}

/// Undoes [`enter`].
fn leave(a: &mut CodeAssembler, flags_live: bool) -> Result<(), IcedError> {
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
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    e(enter(&mut a, flags_live))?;
    e(count(&mut a, count_at))?;
    e(leave(&mut a, flags_live))?;
    let mut off = 0;
    while off < len {
        let insn = decode_one(&bytes[off..], ip + off as u64);
        off += insn.len();
        // Only the last displaced instruction jumps back.
        displaced(&mut a, &insn, off >= len)?;
    }
    assemble(&mut a, at, "takes")
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
    };

    fn decode(code: &[u8]) -> Vec<Instruction> {
        Decoder::with_ip(64, code, AT, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    /// The instructions after the counting prologue and epilogue.
    fn after_leave(v: &[Instruction]) -> &[Instruction] {
        let at = v
            .iter()
            .position(|i| i.code() == Code::Lea_r64_m && i.memory_displacement64() == 128)
            .expect("leave restores rsp");
        &v[at + 1..]
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
        // The row page's row word.
        assert_eq!(v[2].immediate64(), COUNTING.row_page);
        assert_eq!(v[3].memory_base(), Register::RAX);
        assert_eq!(v[3].memory_displacement64(), ROW_PAGE_ROW as u64);
        // No row: the overflow counter.
        assert_eq!(v[5].mnemonic(), Mnemonic::Jne);
        assert_eq!(v[6].immediate64(), COUNTING.overflow);
        assert!(v[7].has_lock_prefix() && v[7].mnemonic() == Mnemonic::Inc);
        assert_eq!(v[7].memory_displacement64(), 0);
        // The jne lands on the row's counter of this site.
        let in_row = v
            .iter()
            .find(|i| i.ip() == v[5].near_branch_target())
            .unwrap();
        assert!(in_row.has_lock_prefix() && in_row.mnemonic() == Mnemonic::Inc);
        assert_eq!(in_row.memory_base(), Register::RAX);
        assert_eq!(
            in_row.memory_displacement64(),
            ROW_HITS as u64 + 8 * COUNTING.index
        );
        // Both paths meet at `pop rax`.
        let done = v
            .iter()
            .find(|i| i.ip() == v[8].near_branch_target())
            .unwrap();
        assert_eq!(done.code(), Code::Pop_r64);
        assert_eq!(done.ip(), in_row.next_ip());
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
        let before = &v[..v.len() - rest.len()];
        assert_eq!(before[before.len() - 2].code(), Code::Popfq);
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
}
