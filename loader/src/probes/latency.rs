//! Latency (`--latency`): the routines the trampolines call at a timed
//! function's entry and at each of its exits, and where the exits are.
//! The layout they follow is `uprobe_runtime::latency`'s.
//!
//! ```text
//!  enter (edx = function, r11 = rsp at the entry; uses rax, rcx, rdx, r11):
//!    slot of the thread: rdfsbase → hash → up to SLOT_TRIES slots, the first
//!      that holds it or, free, is claimed with lock cmpxchg (none: return)
//!    frames at or below rsp are over: each counts as left to its function
//!    push {rsp, func}, publish depth + 1, then {rsp, tsc, func} again (a
//!      signal handler that ran between them used the same frame, and left)
//!  exit (edx = function, r11 = rsp at the return, pointing at its address):
//!    the thread's slot (none: untimed)
//!    frames below rsp, or at it for another function, are over: left
//!    the top frame at rsp is this call's: pop it, time it
//!    none: untimed
//!  timed: ns = (now - tsc) × mult >> 32; sum, hist[bsr ns], min, max (the
//!    calls timed are the histogram's total: one locked add fewer)
//! ```
//!
//! Nothing waits and nothing asks the kernel. A frame is a thread's own:
//! only the thread (and its signal handlers, which nest) touch its slot.

use iced_x86::code_asm::{
    dword_ptr, ebx, ecx, edx, esi, qword_ptr, r10, r10d, r11, r11d, r8, r8d, r9, rax, rbx, rcx,
    rdi, rdx, rsi, CodeAssembler, CodeLabel,
};
use iced_x86::{FlowControl, IcedError, Instruction};
use uprobe_runtime::events::{
    ARGS, FLAG_RETURN, FLAG_TAIL, FLAG_UNTIMED, REC_ARGS, REC_FLAGS, REC_PROBE, REC_SEQ,
    REC_STRINGS, REC_TIME, RING_DROPPED, STR_BYTES,
};
use uprobe_runtime::latency::{
    EVENT_STR, FRAMES, FRAME_FUNC, FRAME_RSP, FRAME_SHIFT, FRAME_TSC, HEAD_DEPTH, HEAD_KEY,
    SLOT_FRAMES, SLOT_SHIFT, SLOT_TRIES, STATS_BYTES, STATS_EVENT, STATS_HIST, STATS_LEFT,
    STATS_MAX, STATS_MIN, STATS_SUM, STATS_UNTIMED, THREAD_HASH, THREAD_SLOTS,
};

/// In the function's number an exit trampoline passes: the exit is a
/// tail call (a `jmp` out of the function), which returns no value here.
pub const TAIL: u32 = 1 << 31;

use super::emit::{self, Emit};
use super::xol::{assemble_within, read_counter, Unrelocatable};
use super::{disasm, xol, Targets};

/// Bytes the probe area keeps for the two routines.
pub const LATENCY_BYTES: usize = 1280;

/// Where the routines work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The timing-stack table (private to each process, same address).
    pub table: u64,
    /// Function 0's statistics (shared).
    pub stats: u64,
    /// ns per counter tick × 2^32.
    pub mult: u64,
}

/// The two routines placed at `at`: their bytes, and the exit routine's
/// offset in them (the entry routine is at 0).
///
/// With `events` (the event ring, when there is one), a return of a
/// function whose [`Stats`](uprobe_runtime::latency::Stats) `event` is set
/// is also written to the ring as a return record.
pub fn encode_routines(
    t: &Timing,
    events: Option<&Emit>,
    at: u64,
) -> Result<(Vec<u8>, usize), Unrelocatable> {
    let code = |r: Result<(), IcedError>| r.map_err(|e| Unrelocatable::Code(e.to_string()));
    let mut a = CodeAssembler::new(64).map_err(|e| Unrelocatable::Code(e.to_string()))?;
    let mut exit = a.create_label();
    code(enter(&mut a, t))?;
    code(a.set_label(&mut exit))?;
    code(leave(&mut a, t, events))?;
    let bytes = assemble_within(&mut a, at, LATENCY_BYTES, |n| {
        format!("the latency routines take {n} bytes, more than the {LATENCY_BYTES} kept")
    })?;
    // The exit routine starts after the entry routine's last `ret`.
    let off =
        exit_offset(&bytes, at).ok_or_else(|| Unrelocatable::Code("no exit routine".into()))?;
    Ok((bytes, off))
}

/// The offset of the second routine: after the first `ret`.
fn exit_offset(bytes: &[u8], at: u64) -> Option<usize> {
    let mut d = iced_x86::Decoder::with_ip(64, bytes, at, iced_x86::DecoderOptions::NONE);
    let mut i = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut i);
        if i.flow_control() == FlowControl::Return {
            return Some((i.next_ip() - at) as usize);
        }
    }
    None
}

/// Saves what the routines use besides rax, rcx, rdx, r11 (which the
/// trampoline saves), and moves the function to r8.
fn save(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for r in [rbx, rsi, rdi, r8, r9] {
        a.push(r)?;
    }
    a.mov(r8d, edx)
}

/// Undoes [`save`] (at `out`).
fn restore(a: &mut CodeAssembler, out: &mut CodeLabel) -> Result<(), IcedError> {
    a.set_label(out)?;
    for r in [r9, r8, rdi, rsi, rbx] {
        a.pop(r)?;
    }
    Ok(())
}

/// Finds the thread's slot into rbx (claiming a free one if `claim`), or
/// jumps to `none`. Uses rax (the key), rcx, rsi, rdi.
fn slot(a: &mut CodeAssembler, t: &Timing, claim: bool, none: CodeLabel) -> Result<(), IcedError> {
    let mut again = a.create_label();
    let mut next = a.create_label();
    let mut found = a.create_label();
    let bits = THREAD_SLOTS.trailing_zeros();
    a.rdfsbase(rax)?;
    a.test(rax, rax)?;
    a.jz(none)?;
    a.mov(rcx, THREAD_HASH)?;
    a.imul_2(rcx, rax)?;
    a.shr(rcx, 64 - bits)?;
    a.mov(rdi, t.table)?;
    a.mov(esi, SLOT_TRIES)?;
    a.set_label(&mut again)?;
    a.mov(rbx, rcx)?;
    a.shl(rbx, SLOT_SHIFT)?;
    a.add(rbx, rdi)?;
    a.cmp(qword_ptr(rbx + HEAD_KEY as i32), rax)?;
    a.je(found)?;
    a.cmp(qword_ptr(rbx + HEAD_KEY as i32), 0)?;
    if claim {
        a.jne(next)?;
        // Free: take it (another thread may take it first).
        a.mov(r9, rax)?;
        a.xor(rax, rax)?;
        a.lock().cmpxchg(qword_ptr(rbx + HEAD_KEY as i32), r9)?;
        a.mov(rax, r9)?;
        a.je(found)?;
        a.cmp(qword_ptr(rbx + HEAD_KEY as i32), rax)?;
        a.je(found)?;
    } else {
        // Never claimed: this thread has no slot.
        a.je(none)?;
    }
    a.set_label(&mut next)?;
    a.inc(ecx)?;
    a.and(ecx, (THREAD_SLOTS - 1) as i32)?;
    a.dec(esi)?;
    a.jnz(again)?;
    a.jmp(none)?;
    a.set_label(&mut found)
}

/// rcx = the address of frame `rsi - 1` of the slot at rbx (the top).
fn top(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rcx, rsi)?;
    a.shl(rcx, FRAME_SHIFT)?;
    a.lea(
        rcx,
        qword_ptr(rbx + rcx + (SLOT_FRAMES as i32 - (1 << FRAME_SHIFT))),
    )
}

/// Counts the frame at rcx as left (its function's statistics), pops it
/// (rsi, the depth, published). Uses rax, rdi.
fn drop_left(a: &mut CodeAssembler, t: &Timing) -> Result<(), IcedError> {
    a.mov(rax, qword_ptr(rcx + FRAME_FUNC as i32))?;
    a.imul_3(rax, rax, STATS_BYTES as i32)?;
    a.mov(rdi, t.stats)?;
    a.lock().inc(qword_ptr(rax + rdi + STATS_LEFT as i32))?;
    a.dec(rsi)?;
    a.mov(qword_ptr(rbx + HEAD_DEPTH as i32), rsi)
}

/// The entry routine.
fn enter(a: &mut CodeAssembler, t: &Timing) -> Result<(), IcedError> {
    let mut out = a.create_label();
    let mut over = a.create_label();
    let mut push = a.create_label();
    save(a)?;
    slot(a, t, true, out)?;
    a.mov(rsi, qword_ptr(rbx + HEAD_DEPTH as i32))?;
    // Frames at or below the entry's rsp belong to calls already over.
    a.set_label(&mut over)?;
    a.test(rsi, rsi)?;
    a.jz(push)?;
    top(a)?;
    a.cmp(qword_ptr(rcx + FRAME_RSP as i32), r11)?;
    a.ja(push)?;
    drop_left(a, t)?;
    a.jmp(over)?;
    a.set_label(&mut push)?;
    a.cmp(rsi, FRAMES as i32)?;
    a.jae(out)?;
    a.inc(rsi)?;
    top(a)?;
    a.mov(qword_ptr(rcx + FRAME_RSP as i32), r11)?;
    a.mov(qword_ptr(rcx + FRAME_FUNC as i32), r8)?;
    read_counter(a)?;
    a.mov(qword_ptr(rcx + FRAME_TSC as i32), rax)?;
    a.mov(qword_ptr(rbx + HEAD_DEPTH as i32), rsi)?;
    // Again: a handler that ran before the depth was published pushed
    // its own frame here, and popped it.
    a.mov(qword_ptr(rcx + FRAME_RSP as i32), r11)?;
    a.mov(qword_ptr(rcx + FRAME_FUNC as i32), r8)?;
    a.mov(qword_ptr(rcx + FRAME_TSC as i32), rax)?;
    restore(a, &mut out)?;
    a.ret()
}

/// The function's number as the exit trampoline passes it (edx), with
/// [`TAIL`] when the exit is a `jmp` out of it.
const FUNC_MASK: u32 = !TAIL;

/// The exit routine.
fn leave(a: &mut CodeAssembler, t: &Timing, events: Option<&Emit>) -> Result<(), IcedError> {
    let mut out = a.create_label();
    // Where a call's end goes on: its return record, or straight out.
    let mut record = match events {
        Some(_) => a.create_label(),
        None => out,
    };
    let mut untimed = a.create_label();
    let mut again = a.create_label();
    let mut left = a.create_label();
    let mut min = a.create_label();
    let mut min_done = a.create_label();
    let mut max = a.create_label();
    let mut max_done = a.create_label();
    // With return records, r10 (saved here) holds a record's flags.
    if events.is_some() {
        a.push(r10)?;
    }
    save(a)?;
    if events.is_some() {
        a.mov(r10d, edx)?;
        a.shr(r10d, TAIL.trailing_zeros())?;
        a.shl(r10d, FLAG_TAIL)?;
    }
    a.and(r8d, FUNC_MASK)?;
    // The time first: nothing below is part of the call.
    read_counter(a)?;
    a.mov(r9, rax)?;
    slot(a, t, false, untimed)?;
    a.mov(rsi, qword_ptr(rbx + HEAD_DEPTH as i32))?;
    a.set_label(&mut again)?;
    a.test(rsi, rsi)?;
    a.jz(untimed)?;
    top(a)?;
    a.cmp(qword_ptr(rcx + FRAME_RSP as i32), r11)?;
    // Above this call's frame: this call has none.
    a.ja(untimed)?;
    a.jb(left)?;
    a.cmp(qword_ptr(rcx + FRAME_FUNC as i32), r8)?;
    a.jne(left)?;
    // This call's frame: pop it and time the call.
    a.dec(rsi)?;
    a.mov(qword_ptr(rbx + HEAD_DEPTH as i32), rsi)?;
    // rbx from here: the counter at the entry (for a return record).
    a.mov(rbx, qword_ptr(rcx + FRAME_TSC as i32))?;
    a.mov(rax, r9)?;
    a.sub(rax, rbx)?;
    // A counter a little behind on another CPU: no time rather than an
    // enormous one.
    a.mov(ecx, 0)?;
    a.cmovb(rax, rcx)?;
    a.mov(rcx, t.mult)?;
    a.mul(rcx)?;
    a.shrd(rax, rdx, 32)?;
    a.mov(rsi, rax)?;
    a.mov(rdi, r8)?;
    a.imul_3(rdi, rdi, STATS_BYTES as i32)?;
    a.mov(rcx, t.stats)?;
    a.add(rdi, rcx)?;
    a.lock().add(qword_ptr(rdi + STATS_SUM as i32), rsi)?;
    a.mov(rcx, rsi)?;
    a.or(rcx, 1)?;
    a.bsr(rcx, rcx)?;
    a.lock().inc(qword_ptr(rdi + rcx * 8 + STATS_HIST as i32))?;
    a.mov(rax, qword_ptr(rdi + STATS_MIN as i32))?;
    a.set_label(&mut min)?;
    a.cmp(rsi, rax)?;
    a.jae(min_done)?;
    a.lock().cmpxchg(qword_ptr(rdi + STATS_MIN as i32), rsi)?;
    a.jne(min)?;
    a.set_label(&mut min_done)?;
    a.mov(rax, qword_ptr(rdi + STATS_MAX as i32))?;
    a.set_label(&mut max)?;
    a.cmp(rsi, rax)?;
    a.jbe(max_done)?;
    a.lock().cmpxchg(qword_ptr(rdi + STATS_MAX as i32), rsi)?;
    a.jne(max)?;
    a.set_label(&mut max_done)?;
    a.jmp(record)?;
    // Below this call's frame, or at it for another function: over.
    a.set_label(&mut left)?;
    drop_left(a, t)?;
    a.jmp(again)?;
    a.set_label(&mut untimed)?;
    a.mov(rdi, r8)?;
    a.imul_3(rdi, rdi, STATS_BYTES as i32)?;
    a.mov(rcx, t.stats)?;
    a.add(rdi, rcx)?;
    a.lock().inc(qword_ptr(rdi + STATS_UNTIMED as i32))?;
    if let Some(e) = events {
        a.or(r10d, 1 << FLAG_UNTIMED)?;
        a.xor(ebx, ebx)?;
        a.set_label(&mut record)?;
        return_record(a, e, out)?;
    }
    restore(a, &mut out)?;
    if events.is_some() {
        a.pop(r10)?;
    }
    a.ret()
}

/// Where the exit routine with return records finds the program's rax:
/// above what it saved (r10, then [`save`]'s five), its return address and the trampoline's
/// r11, rdx and rcx (see [`call_routine`] and the trampoline's `enter`).
const PROGRAM_RAX: i32 = 8 * (1 + 5) + 8 + 8 * 3;

/// Writes a return record for the function whose statistics are at rdi,
/// if its returns are traced: flags r10d, the counter at the entry rbx
/// and at the return r9, the value the program's rax. Goes on to `out`.
/// Uses every register the exit routine saved.
fn return_record(a: &mut CodeAssembler, e: &Emit, out: CodeLabel) -> Result<(), IcedError> {
    let strings = e.layout.record_bytes >= REC_STRINGS + ARGS * STR_BYTES;
    let mut full = a.create_label();
    let mut commit = a.create_label();
    a.mov(r8, qword_ptr(rdi + STATS_EVENT as i32))?;
    a.test(r8, r8)?;
    a.jz(out)?;
    a.or(r10d, 1 << FLAG_RETURN)?;
    emit::reserve(a, e, full)?;
    a.mov(rdi, rax)?;
    a.lea(edx, qword_ptr(r8 - 1))?;
    a.mov(dword_ptr(rcx + REC_PROBE as i32), edx)?;
    a.mov(dword_ptr(rcx + REC_FLAGS as i32), r10d)?;
    a.mov(rax, qword_ptr(iced_x86::code_asm::rsp + PROGRAM_RAX))?;
    a.mov(qword_ptr(rcx + REC_ARGS as i32), rax)?;
    a.mov(qword_ptr(rcx + (REC_ARGS + 8) as i32), rbx)?;
    a.mov(qword_ptr(rcx + REC_TIME as i32), r9)?;
    emit::pid_and_tid(a, e)?;
    if strings {
        // The value as a string, unless the call ended in a tail call.
        a.bt(r8, EVENT_STR.trailing_zeros())?;
        a.jnc(commit)?;
        a.test(r10d, 1 << FLAG_TAIL)?;
        a.jnz(commit)?;
        a.mov(r11d, 1)?;
        emit::copy_strings(a, &mut commit)?;
    }
    a.set_label(&mut commit)?;
    a.inc(rdi)?;
    a.mov(qword_ptr(rcx + REC_SEQ as i32), rdi)?;
    a.jmp(out)?;
    a.set_label(&mut full)?;
    a.lea(edx, qword_ptr(r8 - 1))?;
    a.lock()
        .inc(qword_ptr(r11 + rdx * 8 + RING_DROPPED as i32))?;
    a.jmp(out)
}

/// Calls the routine at `routine` for function `func`, from a trampoline
/// whose rsp is `below` bytes under the program's (keeping rdx and r11).
pub(super) fn call_routine(
    a: &mut CodeAssembler,
    routine: u64,
    func: u32,
    below: i32,
) -> Result<(), IcedError> {
    a.push(rdx)?;
    a.push(r11)?;
    a.mov(edx, func)?;
    a.lea(r11, qword_ptr(iced_x86::code_asm::rsp + (below + 16)))?;
    a.call(routine)?;
    a.pop(r11)?;
    a.pop(rdx)
}

/// One exit of a function: whole instructions over `len` bytes at `addr`,
/// straight on to the last, the `ret` (or the `jmp` out of the function).
/// Fewer than 5 bytes: a jump needs padding after it (see `jump::padded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Where the jump goes.
    pub addr: u64,
    /// Bytes of instructions it displaces, the exit instruction last.
    pub len: usize,
}

/// The exits of the function `[start, end)` whose instructions are `insns`,
/// each with the instructions before it a jump can displace with it; or
/// why the function cannot be timed. An exit is a `ret`, or a `jmp` out
/// of the function (a tail call) unless `part` says its target is a part
/// of the same function placed elsewhere (gcc's `f.cold`: the same frame,
/// which comes back).
pub fn exits(
    insns: &[Instruction],
    start: u64,
    end: u64,
    targets: &Targets,
    part: impl Fn(u64) -> bool,
) -> Result<Vec<Exit>, String> {
    let mut out = Vec::new();
    for (k, i) in insns.iter().enumerate() {
        let is_exit = match i.flow_control() {
            FlowControl::Return => true,
            FlowControl::UnconditionalBranch => {
                let t = i.near_branch_target();
                (t < start || t >= end) && !part(t)
            }
            FlowControl::IndirectBranch => {
                return Err(format!(
                    "`{}` at {:#x} may leave it (a jump through a pointer)",
                    disasm(i),
                    i.ip()
                ))
            }
            _ => false,
        };
        if !is_exit {
            continue;
        }
        let end_at = i.next_ip();
        // Back over straight-line instructions until 5 bytes are covered,
        // or as far as they go (then padding after it must make up the
        // rest); nothing but the first may be entered from elsewhere.
        let mut first = k;
        while end_at - insns[first].ip() < 5 && first > 0 {
            let prev = &insns[first - 1];
            if prev.flow_control() != FlowControl::Next
                || xol::relocatable(prev).is_err()
                || targets.inside(prev.ip(), end_at).is_some()
            {
                break;
            }
            first -= 1;
        }
        let lo = insns[first].ip();
        if let Some((t, _)) = targets.inside(lo, end_at) {
            return Err(format!(
                "its exit `{}` at {:#x} shares the bytes a jump needs with a branch target at {t:#x}",
                disasm(i),
                i.ip()
            ));
        }
        for insn in &insns[first..=k] {
            xol::relocatable(insn).map_err(|why| format!("`{}` {why}", disasm(insn)))?;
        }
        out.push(Exit {
            addr: lo,
            len: (end_at - lo) as usize,
        });
    }
    // None (it calls something that never returns): its calls are
    // counted, none timed.
    Ok(out)
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    //! The routines run here, in the test's own process: a page of ours
    //! holds them, a table of ours the timing stacks, a buffer of ours the
    //! statistics.
    use super::*;
    use uprobe_runtime::latency::{Snapshot, Stats, Table, STATS_BYTES};

    struct Rig {
        code: u64,
        exit: u64,
        stats: Vec<u64>,
        _table: Table,
    }

    const FUNCS: usize = 3;

    impl Rig {
        fn new() -> Rig {
            let table = Table::map().unwrap();
            // 64-byte aligned statistics, the minima unset.
            let mut stats = vec![0u64; FUNCS * STATS_BYTES / 8 + 8];
            let base = (stats.as_ptr() as u64).next_multiple_of(64);
            let off = ((base - stats.as_ptr() as u64) / 8) as usize;
            for f in 0..FUNCS {
                stats[off + f * STATS_BYTES / 8 + STATS_MIN / 8] = u64::MAX;
            }
            // SAFETY: a new anonymous mapping of our own.
            let code = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(code, libc::MAP_FAILED);
            let t = Timing {
                table: table.addr(),
                stats: base,
                // One ns per tick.
                mult: 1 << 32,
            };
            let (bytes, exit) = encode_routines(&t, None, code as u64).unwrap();
            assert!(bytes.len() <= 4096);
            // SAFETY: our page, large enough (asserted).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), code.cast::<u8>(), bytes.len())
            };
            // SAFETY: our page, filled.
            let made = unsafe { libc::mprotect(code, 4096, libc::PROT_READ | libc::PROT_EXEC) };
            assert_eq!(made, 0);
            Rig {
                code: code as u64,
                exit: code as u64 + exit as u64,
                stats,
                _table: table,
            }
        }

        fn call(&self, routine: u64, func: u32, rsp: u64) {
            // SAFETY: the routine takes edx and r11, uses rax, rcx, rdx,
            // r11 and the flags, keeps every other register, and touches
            // only the table and statistics of this rig.
            unsafe {
                std::arch::asm!(
                    "call {f}",
                    f = in(reg) routine,
                    inout("edx") func => _,
                    inout("r11") rsp => _,
                    out("rax") _,
                    out("rcx") _,
                );
            }
        }

        fn enter(&self, func: u32, rsp: u64) {
            self.call(self.code, func, rsp);
        }

        fn exit(&self, func: u32, rsp: u64) {
            self.call(self.exit, func, rsp);
        }

        fn stats(&self, func: usize) -> Snapshot {
            let base = (self.stats.as_ptr() as u64).next_multiple_of(64);
            // SAFETY: inside our buffer, aligned, read while no routine runs.
            unsafe { &*((base + (func * STATS_BYTES) as u64) as *const Stats) }.snapshot()
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            // SAFETY: our page, no longer used (the table unmaps itself).
            unsafe { libc::munmap(self.code as *mut libc::c_void, 4096) };
        }
    }

    const SP: u64 = 0x7fff_0000_8000;

    #[test]
    fn nested_calls_are_timed_each() {
        let r = Rig::new();
        r.enter(0, SP);
        r.enter(1, SP - 64);
        std::thread::sleep(std::time::Duration::from_millis(2));
        r.exit(1, SP - 64);
        r.exit(0, SP);
        for f in [0, 1] {
            let s = r.stats(f);
            assert_eq!((s.timed, s.untimed, s.left), (1, 0, 0), "function {f}");
            // Ticks taken as ns: 2 ms is millions of ticks at any rate.
            assert!(s.min_ns > 1_000_000 && s.min_ns == s.max_ns, "{s:?}");
            assert_eq!(s.sum_ns, s.min_ns);
            assert_eq!(s.hist.iter().sum::<u64>(), 1);
            assert_eq!(s.hist[uprobe_runtime::latency::bucket(s.min_ns)], 1);
        }
    }

    #[test]
    fn a_call_left_by_a_longjmp_is_counted_left_when_an_outer_one_returns() {
        let r = Rig::new();
        r.enter(0, SP);
        for d in 1..=5 {
            r.enter(1, SP - 64 * d);
        }
        // A longjmp back into function 0's frame; then it returns.
        r.exit(0, SP);
        assert_eq!((r.stats(0).timed, r.stats(1).left), (1, 5));
        // The same depth again: a call at the rsp of a frame left over.
        r.enter(2, SP - 64);
        r.enter(2, SP - 64);
        r.exit(2, SP - 64);
        let s = r.stats(2);
        assert_eq!((s.timed, s.left, s.untimed), (1, 1, 0));
    }

    #[test]
    fn a_return_without_its_entry_is_untimed_and_touches_no_frame() {
        let r = Rig::new();
        r.exit(0, SP);
        r.enter(1, SP);
        // An inner return with no frame: the outer one stays.
        r.exit(0, SP - 128);
        r.exit(1, SP);
        assert_eq!(r.stats(0).untimed, 2);
        assert_eq!((r.stats(1).timed, r.stats(1).left), (1, 0));
    }

    #[test]
    fn threads_have_their_own_stacks() {
        let r = std::sync::Arc::new(Rig::new());
        let mut hs = Vec::new();
        for t in 0..4u64 {
            let r = std::sync::Arc::clone(&r);
            hs.push(std::thread::spawn(move || {
                for i in 0..1000 {
                    // The same rsp in every thread: only the slot tells them apart.
                    r.enter(0, SP);
                    r.enter(1, SP - 64 - (i % 3) * 16 - t);
                    r.exit(1, SP - 64 - (i % 3) * 16 - t);
                    r.exit(0, SP);
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        for f in [0, 1] {
            let s = r.stats(f);
            assert_eq!((s.timed, s.untimed, s.left), (4000, 0, 0), "function {f}");
        }
    }

    #[test]
    fn calls_deeper_than_the_stack_holds_are_counted_untimed() {
        let r = Rig::new();
        let n = uprobe_runtime::latency::FRAMES as u64 + 10;
        for d in 0..n {
            r.enter(0, SP - 64 * d);
        }
        for d in (0..n).rev() {
            r.exit(0, SP - 64 * d);
        }
        let s = r.stats(0);
        assert_eq!((s.timed, s.untimed, s.left), (n - 10, 10, 0));
    }
}
