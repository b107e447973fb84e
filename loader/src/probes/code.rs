//! The probe area's code for a set of sites at a known address, and the
//! patches that send each site there. Data flows one way: the plan has
//! chosen the area's address; the bytes made here go back down to it.

use uprobe_runtime::area::{CodeLayout, Shared, TrapEntry};

use super::trampoline::{encode_trampoline, jump_patch, Counting};
use super::xol::encode_slot;
use super::{Action, Kind, ProbeError, Site};
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
        let not_relocatable = |why| ProbeError::NotRelocatable {
            site: s.label(),
            insn: String::new(),
            why,
        };
        let code = match s.kind {
            Kind::Int3 => {
                entries.push(TrapEntry {
                    site: ip,
                    slot,
                    index: i as u64,
                });
                patches.push((ip, vec![0xcc]));
                encode_slot(from, ip, slot).map_err(not_relocatable)?
            }
            Kind::Jump { len, flags_live } => {
                patches.push((ip, jump_patch(ip, len, slot)));
                let counting = Counting {
                    overflow: shared.overflow_addr(i),
                    index: i as u64,
                    row_page,
                };
                encode_trampoline(from, ip, len, flags_live, &counting, slot)
                    .map_err(not_relocatable)?
            }
        };
        slots.push(code);
    }
    Ok(AreaCode {
        bytes: layout.image(shared.addr(), row_page, entries, &slots),
        patches,
    })
}
