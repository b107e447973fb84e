//! The probe area's code for a set of sites at a known address, and the
//! patches that send each site there. Data flows one way: the plan has
//! chosen the area's address; the bytes made here go back down to it.

use uprobe_runtime::area::{CodeLayout, Shared, TrapEntry};

use super::trampoline::{encode_trampoline, jump_patch, Counting};
use super::xol::{encode_slot, Unrelocatable};
use super::{decode_one, disasm, Action, Kind, ProbeError, Site};
use crate::addr::Bias;
use crate::elf::Image;

/// What [`generate`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AreaCode {
    /// The code pages ([`CodeLayout::code_len`] bytes): the trap handler,
    /// its table, each site's slot or trampoline.
    pub bytes: Vec<u8>,
    /// What the text gets: (runtime address, bytes) of each site's `int3`
    /// or `jmp`.
    pub patches: Vec<(u64, Vec<u8>)>,
}

/// The code for `sites` (in the program `image`, placed with `bias`), in
/// an area laid out as `layout` at runtime address `base`, counting hits
/// in `shared`. Site `i` gets slot `i` and counter `i`.
pub fn generate(
    image: &Image,
    bias: Bias,
    sites: &[Site],
    layout: &CodeLayout,
    base: u64,
    shared: &Shared,
) -> Result<AreaCode, ProbeError> {
    let row_page = base + layout.row_page() as u64;
    let mut slots = Vec::with_capacity(sites.len());
    let mut entries = Vec::new();
    let mut patches = Vec::with_capacity(sites.len());
    for (i, s) in sites.iter().enumerate() {
        // Counting is the only action: the handler and the trampolines do it.
        let Action::Count = s.action;
        let slot = base + layout.slot(i) as u64;
        let ip = s.place.runtime(bias);
        let from = s.place.bytes(image);
        let code = match s.kind {
            Kind::Int3 => {
                entries.push(TrapEntry {
                    site: ip,
                    slot,
                    index: i as u64,
                });
                patches.push((ip, vec![0xcc]));
                encode_slot(from, ip, slot)
            }
            Kind::Jump { len, flags_live }
            | Kind::JumpPadding {
                len, flags_live, ..
            } => {
                patches.push((ip, jump_patch(ip, s.kind.patch_len(), slot)));
                let counting = Counting {
                    overflow: shared.overflow_addr(i),
                    index: i as u64,
                    row_page,
                    block_shift: shared.layout().block_shift(),
                    slot_bits: shared.layout().slot_bits(),
                };
                encode_trampoline(from, ip, len, flags_live, &counting, slot)
            }
        };
        let code = code.map_err(|e| site_error(s, from, ip, e))?;
        slots.push(code);
    }
    Ok(AreaCode {
        bytes: layout.image(shared.addr(), row_page, entries, &slots),
        patches,
    })
}

/// Why site `s` (at runtime address `ip`, its code starting with `from`)
/// cannot be probed: the instruction to blame, or, when the code as a whole
/// is the trouble, the instructions it displaces.
fn site_error(s: &Site, from: &[u8], ip: u64, e: Unrelocatable) -> ProbeError {
    match (e, s.kind) {
        (Unrelocatable::Insn { insn, why }, _) => ProbeError::NotRelocatable {
            site: s.label(),
            insn,
            why,
        },
        (Unrelocatable::Code(why), Kind::Int3) => ProbeError::NotRelocatable {
            site: s.label(),
            insn: disasm(&decode_one(from, ip)),
            why,
        },
        (Unrelocatable::Code(why), Kind::Jump { len, .. } | Kind::JumpPadding { len, .. }) => {
            let mut insns = Vec::new();
            let mut off = 0;
            while off < len.min(from.len()) {
                let insn = decode_one(&from[off..], ip + off as u64);
                insns.push(disasm(&insn));
                off += insn.len().max(1);
            }
            ProbeError::Trampoline {
                site: s.label(),
                insns: insns.join("; "),
                why,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::LinkAddr;
    use crate::probes::{ObjectId, Place};

    fn site(kind: Kind) -> Site {
        Site {
            place: Place {
                object: ObjectId::MAIN,
                addr: LinkAddr(0x1000),
                symbol: "f".into(),
                offset: 0,
                function: None,
                request: 0,
            },
            kind,
            action: Action::Count,
        }
    }

    /// `lea rax, [rip + 0x10]` at `IP`, its slot 40 TiB away: its target
    /// is out of rel32 reach (and above 4 GiB), so the block encoder
    /// refuses the whole slot.
    const LEA: [u8; 7] = [0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00];
    const IP: u64 = 0x5555_0000_1000;
    const FAR: u64 = 0x7f00_0000_0000;

    #[test]
    fn a_slot_that_cannot_be_placed_names_its_instruction() {
        let e = encode_slot(&LEA, IP, FAR).unwrap_err();
        assert!(matches!(e, Unrelocatable::Code(_)), "{e:?}");
        let msg = site_error(&site(Kind::Int3), &LEA, IP, e).to_string();
        assert!(!msg.contains("``"), "{msg}");
        assert!(
            msg.starts_with("cannot probe f: its instruction `lea rax,"),
            "{msg}"
        );
        assert!(
            msg.contains("cannot be relocated to the probe area"),
            "{msg}"
        );
    }

    #[test]
    fn a_trampoline_that_cannot_be_placed_names_its_instructions() {
        // lea (7 bytes), then nop: a jump site displacing 7 bytes.
        let mut code = LEA.to_vec();
        code.push(0x90);
        let counting = Counting {
            overflow: FAR + 0x1000,
            index: 0,
            row_page: FAR + 0x2000,
            block_shift: 6,
            slot_bits: 5,
        };
        let kind = Kind::Jump {
            len: 7,
            flags_live: false,
        };
        let e = encode_trampoline(&code, IP, 7, false, &counting, FAR).unwrap_err();
        let msg = site_error(&site(kind), &code, IP, e).to_string();
        assert!(!msg.contains("``"), "{msg}");
        assert!(
            msg.starts_with("cannot probe f: the trampoline for its instructions `lea rax,"),
            "{msg}"
        );
    }

    #[test]
    fn a_refused_instruction_is_named() {
        let syscall = [0x0f, 0x05];
        let e = encode_slot(&syscall, 0x1000, 0x2000).unwrap_err();
        let msg = site_error(&site(Kind::Int3), &syscall, 0x1000, e).to_string();
        assert_eq!(
            msg,
            "cannot probe f: its instruction `syscall` changes privilege level"
        );
    }
}
