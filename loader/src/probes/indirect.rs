//! Whether a function's indirect jumps have bounded targets, so that
//! [`Targets`] (which holds every code address the file stores or takes)
//! already says where they can land.
//!
//! A `jmp reg` is accepted when, on every path to it, the register was
//! last written by:
//! - a load of a whole code pointer from memory (`mov reg, [mem]`, not a
//!   stack slot) or a RIP-relative `lea` (an address the code takes). Such
//!   a value is a pointer stored somewhere, and every code address that
//!   can be stored comes from the file: data words, relocations,
//!   instruction operands (all entries), or a return address (after a
//!   `call`, which never lies strictly inside displaced bytes);
//! - the sum of a relative jump table's base and one of its entries:
//!   `add reg, other`, one side a RIP-relative `lea` of a table that
//!   [`Targets`] read whole, the other a `movsxd` of a 32-bit entry
//!   (`[base + index*4]`) of such a table.
//!
//! A path may pass through a case of the function's own jump table: it
//! comes from one of the function's `jmp reg`s.
//!
//! A jump through memory (`jmp [mem]`) loads a stored pointer itself.
//! CPython's tail calls through type slots (`mov rax, [rax+0x38]; …;
//! jmp rax`), absolute jump tables (`jmp [table + rax*8]`) and the relative
//! jump tables of PIE code (`lea rdx, [rip+T]; movsxd rax, [rdx+rax*4];
//! add rax, rdx; jmp rax`) are of these kinds.

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
            let w = walk.get_or_insert_with(|| Walk::new(insns, frame, targets));
            w.jump_target(k, i.op0_register().full_register())
                .map_err(|why| refuse(&why))?;
        }
    }
    Ok(())
}

/// Predecessors of the instructions of one function.
struct Walk<'a> {
    insns: &'a [Instruction],
    /// The function keeps a frame pointer in RBP.
    frame: bool,
    targets: &'a Targets,
    /// Instruction address → index.
    index: HashMap<u64, usize>,
    /// Instruction index → the direct jumps of the function to it.
    jumps_to: HashMap<usize, Vec<usize>>,
    /// The relative jump tables the function takes the address of (read
    /// whole): their entries are reached by its own `jmp reg`s.
    tables: HashSet<u64>,
    /// The function's `jmp reg`s.
    reg_jumps: Vec<usize>,
}

impl<'a> Walk<'a> {
    fn new(insns: &'a [Instruction], frame: bool, targets: &'a Targets) -> Walk<'a> {
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
        let tables = insns
            .iter()
            .filter(|i| i.code() == Code::Lea_r64_m && i.is_ip_rel_memory_operand())
            .map(Instruction::ip_rel_memory_address)
            .filter(|&a| targets.is_table(a))
            .collect();
        let reg_jumps = insns
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                i.flow_control() == FlowControl::IndirectBranch && i.op0_kind() == OpKind::Register
            })
            .map(|(k, _)| k)
            .collect();
        Walk {
            insns,
            frame,
            targets,
            index,
            jumps_to,
            tables,
            reg_jumps,
        }
    }

    /// `Ok` when `reg`, jumped through at instruction `at`, holds a code
    /// address [`Targets`] knows on every path.
    fn jump_target(&self, at: usize, reg: Register) -> Result<(), String> {
        for d in self.origins(at, reg)? {
            let i = &self.insns[d];
            if self.pointer(i) {
                continue;
            }
            let other = match i.code() {
                Code::Add_r64_rm64 | Code::Add_rm64_r64 if i.op1_kind() == OpKind::Register => {
                    i.op1_register()
                }
                _ => return Err(sets(i, reg)),
            };
            // base + entry, in either order.
            let ok = |a: Register, b: Register| -> Result<bool, String> {
                Ok(self.all(d, a, |j| self.table_base(j))?
                    && self.all(d, b, |j| self.table_entry(j))?)
            };
            if !(ok(reg, other)? || ok(other, reg)?) {
                return Err(sets(i, reg));
            }
        }
        Ok(())
    }

    /// Whether every last write of `reg` before instruction `at` passes `f`.
    fn all(
        &self,
        at: usize,
        reg: Register,
        f: impl Fn(&Instruction) -> bool,
    ) -> Result<bool, String> {
        Ok(self.origins(at, reg)?.iter().all(|&d| f(&self.insns[d])))
    }

    /// A load of a stored code pointer, or a code address taken.
    fn pointer(&self, i: &Instruction) -> bool {
        let load = i.code() == Code::Mov_r64_rm64
            && i.op1_kind() == OpKind::Memory
            && !on_stack(i, self.frame);
        load || self.taken(i).is_some()
    }

    /// The address a RIP-relative `lea` takes.
    fn taken(&self, i: &Instruction) -> Option<u64> {
        (i.code() == Code::Lea_r64_m && i.is_ip_rel_memory_operand())
            .then(|| i.ip_rel_memory_address())
    }

    /// A RIP-relative `lea` of a relative jump table read whole.
    fn table_base(&self, i: &Instruction) -> bool {
        self.taken(i).is_some_and(|a| self.targets.is_table(a))
    }

    /// A `movsxd` of a 32-bit entry `[base + index*4]` of a relative jump
    /// table read whole (its base register set by [`Walk::table_base`]).
    fn table_entry(&self, i: &Instruction) -> bool {
        if i.code() != Code::Movsxd_r64_rm32
            || i.op1_kind() != OpKind::Memory
            || i.memory_index_scale() != 4
            || i.memory_displacement64() != 0
        {
            return false;
        }
        let base = i.memory_base();
        let Some(&k) = self.index.get(&i.ip()) else {
            return false;
        };
        base != Register::None
            && base != Register::RIP
            && self
                .all(k, base.full_register(), |j| self.table_base(j))
                .unwrap_or(false)
    }

    /// The instructions that last write `reg` before instruction `at`, on
    /// every path; an error where a path starts outside what is known
    /// (the caller, an entry from elsewhere, a call's clobber).
    fn origins(&self, at: usize, reg: Register) -> Result<Vec<usize>, String> {
        let mut info = InstructionInfoFactory::new();
        let mut todo = vec![at];
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(k) = todo.pop() {
            let i = &self.insns[k];
            if k == 0 {
                return Err(format!("{reg:?} may come from the caller"));
            }
            let mut preds = self.jumps_to.get(&k).cloned().unwrap_or_default();
            let mut by_table = false;
            for s in self.targets.sources_at(i.ip()) {
                // A case of one of the function's own jump tables is
                // reached by one of its own `jmp reg`s.
                by_table |= matches!(s, Source::Table(base) if self.tables.contains(&base));
                let known = by_table
                    || matches!(s, Source::Branch(from)
                    if self.index.get(&from).is_some_and(|f| preds.contains(f)));
                if !known {
                    return Err(format!(
                        "{reg:?} may come from where control enters at +{:#x}",
                        i.ip() - self.insns[0].ip()
                    ));
                }
            }
            if by_table {
                preds.extend(&self.reg_jumps);
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
                match writes(&self.insns[p], reg, &mut info) {
                    Some(true) => out.push(p),
                    Some(false) => todo.push(p),
                    None => return Err(sets(&self.insns[p], reg)),
                }
            }
        }
        Ok(out)
    }
}

/// Why `i`'s write of `reg` is not a known code address.
fn sets(i: &Instruction, reg: Register) -> String {
    format!(
        "`{}` sets {reg:?} to what may not be a stored code pointer",
        disasm(i)
    )
}

/// Whether `i` writes the 64-bit register `reg`; `None` for a call (or
/// system call) that clobbers it.
fn writes(i: &Instruction, reg: Register, info: &mut InstructionInfoFactory) -> Option<bool> {
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
        return None;
    }
    Some(info.info(i).used_registers().iter().any(|u| {
        u.register().full_register() == reg
            && !matches!(
                u.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::None
            )
    }))
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
