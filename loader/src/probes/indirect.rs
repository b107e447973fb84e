//! Whether a function's indirect jumps have bounded targets, so that
//! [`Targets`] (which holds every code address the file stores or takes)
//! already says where they can land.
//!
//! A jump table whose entries are computed (`movsxd; add; jmp reg`) lands
//! on addresses that [`Targets`] finds only for the usual relative-table
//! shape; so a `jmp reg` is accepted only when, on every path to it, the
//! register was last written by a load of a whole code pointer from
//! memory (`mov reg, [mem]`) or by a RIP-relative `lea` (an address the
//! code takes). Such a value is a pointer stored somewhere, and every code
//! address that can be stored comes from the file: data words, relocations,
//! instruction operands (all entries), or a return address (after a
//! `call`, which never lies strictly inside displaced bytes). A jump
//! through memory (`jmp [mem]`) loads such a pointer itself. CPython's
//! tail calls through type slots (`mov rax, [rax+0x38]; …; jmp rax`) and
//! absolute jump tables (`jmp [table + rax*8]`) are of these kinds.

use std::collections::{HashMap, HashSet};

use iced_x86::{
    Code, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

use super::{disasm, Source, Targets};

/// `Ok` when every indirect jump of the function (`insns`, from `start`)
/// lands only where [`Targets`] knows control can arrive; otherwise why
/// not.
pub fn bounded(insns: &[Instruction], start: u64, targets: &Targets) -> Result<(), String> {
    let frame = frame_pointer(insns);
    let mut walk: Option<Walk<'_>> = None;
    for (k, i) in insns.iter().enumerate() {
        if i.flow_control() != FlowControl::IndirectBranch || i.is_ip_rel_memory_operand() {
            // A jump through a RIP-relative slot (the GOT) leaves the function.
            continue;
        }
        let refuse = |why: &str| {
            format!(
                "the function has an indirect jump (`{}` at +{:#x}) whose targets cannot be bounded: {why}",
                disasm(i),
                i.ip() - start
            )
        };
        if !targets.knows_stored_pointers() {
            return Err(refuse(
                "the file has no section headers to find stored code pointers",
            ));
        }
        if i.op0_kind() == OpKind::Memory && on_stack(i, frame) {
            return Err(refuse("it loads its target from the stack"));
        }
        if i.op0_kind() == OpKind::Register {
            walk.get_or_insert_with(|| Walk::new(insns))
                .loaded(k, i.op0_register().full_register(), frame, targets)
                .map_err(|why| refuse(&why))?;
        }
    }
    Ok(())
}

/// Predecessors of the instructions of one function.
struct Walk<'a> {
    insns: &'a [Instruction],
    /// Instruction address → index.
    index: HashMap<u64, usize>,
    /// Instruction index → the direct jumps of the function to it.
    jumps_to: HashMap<usize, Vec<usize>>,
}

/// What an instruction does to a register.
enum Effect {
    /// Nothing.
    Keeps,
    /// Sets it to a code pointer [`Targets`] knows.
    Loads,
    /// Sets it to something else (or may).
    Sets,
}

impl<'a> Walk<'a> {
    fn new(insns: &'a [Instruction]) -> Walk<'a> {
        let index: HashMap<u64, usize> =
            insns.iter().enumerate().map(|(k, i)| (i.ip(), k)).collect();
        let mut jumps_to: HashMap<usize, Vec<usize>> = HashMap::new();
        for (k, i) in insns.iter().enumerate() {
            if matches!(
                i.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) && i.op0_kind() == OpKind::NearBranch64
            {
                if let Some(&t) = index.get(&i.near_branch_target()) {
                    jumps_to.entry(t).or_default().push(k);
                }
            }
        }
        Walk {
            insns,
            index,
            jumps_to,
        }
    }

    /// `Ok` when on every path to instruction `at`, `reg` was last set by
    /// a load of a code pointer [`Targets`] knows.
    fn loaded(
        &self,
        at: usize,
        reg: Register,
        frame: bool,
        targets: &Targets,
    ) -> Result<(), String> {
        let mut info = InstructionInfoFactory::new();
        let mut todo = vec![at];
        let mut seen = HashSet::new();
        while let Some(k) = todo.pop() {
            let i = &self.insns[k];
            if k == 0 {
                return Err(format!("{reg:?} may come from the caller"));
            }
            let mut preds = self.jumps_to.get(&k).cloned().unwrap_or_default();
            for s in targets.sources_at(i.ip()) {
                let known = matches!(s, Source::Branch(from)
                    if self.index.get(&from).is_some_and(|f| preds.contains(f)));
                if !known {
                    return Err(format!(
                        "{reg:?} may come from where control enters at +{:#x}",
                        i.ip() - self.insns[0].ip()
                    ));
                }
            }
            let prev = &self.insns[k - 1];
            if !matches!(
                prev.flow_control(),
                FlowControl::UnconditionalBranch
                    | FlowControl::IndirectBranch
                    | FlowControl::Return
            ) {
                preds.push(k - 1);
            }
            for p in preds {
                if !seen.insert(p) {
                    continue;
                }
                match effect(&self.insns[p], reg, frame, &mut info) {
                    Effect::Keeps => todo.push(p),
                    Effect::Loads => {}
                    Effect::Sets => {
                        return Err(format!(
                            "`{}` sets {reg:?} to what may not be a stored code pointer",
                            disasm(&self.insns[p])
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `i`'s memory operand is a stack slot (RSP-based, or RBP-based
/// when `frame`: the function keeps a frame pointer), which can hold a
/// value computed and spilled rather than a stored pointer.
fn on_stack(i: &Instruction, frame: bool) -> bool {
    i.memory_base() == Register::RSP || (frame && i.memory_base() == Register::RBP)
}

/// Whether the function sets RBP from RSP (a frame pointer).
fn frame_pointer(insns: &[Instruction]) -> bool {
    insns.iter().any(|i| {
        matches!(i.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64)
            && i.op0_register() == Register::RBP
            && i.op1_register() == Register::RSP
    })
}

/// What `i` does to the 64-bit register `reg`.
fn effect(
    i: &Instruction,
    reg: Register,
    frame: bool,
    info: &mut InstructionInfoFactory,
) -> Effect {
    let call = matches!(
        i.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall
    ) || matches!(i.mnemonic(), Mnemonic::Syscall | Mnemonic::Sysenter);
    let callee_saved = matches!(
        reg,
        Register::RBX
            | Register::RBP
            | Register::R12
            | Register::R13
            | Register::R14
            | Register::R15
    );
    if call && !callee_saved {
        return Effect::Sets;
    }
    let writes = info.info(i).used_registers().iter().any(|u| {
        u.register().full_register() == reg
            && !matches!(
                u.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::None
            )
    });
    if !writes {
        return Effect::Keeps;
    }
    let load =
        i.code() == Code::Mov_r64_rm64 && i.op1_kind() == OpKind::Memory && !on_stack(i, frame);
    let taken = i.code() == Code::Lea_r64_m && i.is_ip_rel_memory_operand();
    if load || taken {
        Effect::Loads
    } else {
        Effect::Sets
    }
}
