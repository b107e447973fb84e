//! The probe area's code for a set of sites at a known address, and the
//! patches that send each site there. Data flows one way: the plan has
//! chosen the area's address; the bytes made here go back down to it.

use uprobe_runtime::area::{CodeLayout, Shared, TrapEntry, ENTRY_TRACED};

use super::emit::{encode_emit, Emit, Tid, STR_MASK_SHIFT};
use super::latency::{encode_routines, Timing};
use super::pun::{LANDING, PREFIX};
use super::trampoline::{
    encode_evicted, encode_exit, encode_trampoline, jump_patch, short_patch, Counting,
};
use super::xol::{encode_slot, Unrelocatable};
use super::{code_at, decode_one, disasm, Action, Evicted, Kind, ProbeError, Site, EMIT_BYTES};
use crate::addr::Bias;
use crate::elf::Image;

/// What [`generate`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AreaCode {
    /// The code pages ([`CodeLayout::code_len`] bytes): the trap handler,
    /// its table, each site's slot or trampoline.
    pub bytes: Vec<u8>,
    /// What the text gets: (runtime address, bytes) of each site's `int3`
    /// or `jmp`, each evicted neighbour's `jmp`, then the short jumps'
    /// pads, which go over the filler of their hosts (so they come last).
    pub patches: Vec<(u64, Vec<u8>)>,
    /// Punned jumps' landings: (runtime address, code), in pages that
    /// [`landing_pages`] reserves.
    pub landings: Vec<(u64, Vec<u8>)>,
}

/// The code for `sites` and the neighbours `evicted` for their pads (in
/// the program `image`, placed with `bias`), in an area laid out as
/// `layout` at runtime address `base`, counting hits in `shared` (and
/// tracing them in its event ring, learning thread ids as `tid` says).
/// Site `i` gets slot `i` and counter `i`; evicted neighbour `k` gets slot
/// `sites.len() + k`.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    image: &Image,
    bias: Bias,
    sites: &[Site],
    evicted: &[Evicted],
    layout: &CodeLayout,
    base: u64,
    shared: &Shared,
    tid: Tid,
    timing: Option<Timing>,
    objects_traps: u64,
) -> Result<AreaCode, ProbeError> {
    let row_page = base + layout.row_page() as u64;
    let emit_at = base + layout.emit() as u64;
    // An event ring: some site is traced, or some function's returns.
    let ring = shared
        .ring()
        .filter(|_| layout.emit_bytes > 0)
        .map(|ring| Emit {
            ring: ring.addr(),
            layout: ring.layout(),
            row_page,
            tid,
        });
    let traced = ring.is_some();
    let emit = match &ring {
        Some(e) => encode_emit(e, emit_at).map_err(|e| ProbeError::Trampoline {
            site: "the event routine".into(),
            insns: String::new(),
            why: match e {
                Unrelocatable::Code(why) | Unrelocatable::Insn { why, .. } => why,
            },
        })?,
        None => Vec::new(),
    };
    // The latency routines after the event routine, in the same room.
    let latency_at = emit_at + if traced { EMIT_BYTES as u64 } else { 0 };
    let (routines, enter_at, exit_at) = match timing {
        Some(t) => {
            let (code, exit) = encode_routines(&t, ring.as_ref(), latency_at).map_err(|e| {
                ProbeError::Trampoline {
                    site: "the latency routines".into(),
                    insns: String::new(),
                    why: match e {
                        Unrelocatable::Code(why) | Unrelocatable::Insn { why, .. } => why,
                    },
                }
            })?;
            (code, latency_at, latency_at + exit as u64)
        }
        None => (Vec::new(), 0, 0),
    };
    let emit_ok = !emit.is_empty();
    let mut room = emit;
    if !routines.is_empty() {
        room.resize(latency_at as usize - emit_at as usize, 0xcc);
        room.extend_from_slice(&routines);
    }
    debug_assert!(room.len() <= layout.emit_bytes);
    let counting = |i: usize| Counting {
        overflow: shared.overflow_addr(i),
        index: i as u64,
        row_page,
        block_shift: shared.layout().block_shift(),
        slot_bits: shared.layout().slot_bits(),
        emit: (sites[i].action.traced() && emit_ok).then_some(emit_at),
        strings: sites[i].action.strings(),
        enter: sites[i]
            .timed
            .filter(|_| enter_at != 0)
            .map(|f| (enter_at, f)),
    };
    let mut slots = Vec::with_capacity(sites.len());
    let mut entries = Vec::new();
    let mut patches = Vec::with_capacity(sites.len() + evicted.len());
    let mut pads = Vec::new();
    let mut landings = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        let slot = base + layout.slot(i) as u64;
        let ip = s.place.runtime(bias);
        let from = s.place.bytes(image);
        // A jump site's trampoline: an exit's runs the latency exit routine
        // before its last instruction; any other counts (and traces).
        let body = |len: usize, flags_live: bool| match s.action {
            Action::Exit { func } => encode_exit(from, ip, len, exit_at, func, slot),
            _ => encode_trampoline(from, ip, len, flags_live, &counting(i), slot),
        };
        let code = match s.kind {
            Kind::Int3 => {
                // A traced site: the event routine's `edx` in the low 32
                // bits, the traced bit above (see `area::TrapEntry::index`).
                let traced = if s.action.traced() && emit_ok {
                    1 << ENTRY_TRACED | u64::from(s.action.strings()) << STR_MASK_SHIFT
                } else {
                    0
                };
                entries.push(TrapEntry {
                    site: ip,
                    slot,
                    index: i as u64 | traced,
                });
                patches.push((ip, vec![0xcc]));
                encode_slot(from, ip, slot)
            }
            Kind::Jump { len, flags_live }
            | Kind::JumpPadding {
                len, flags_live, ..
            } => {
                patches.push((ip, jump_patch(ip, s.kind.patch_len(), slot)));
                body(len, flags_live)
            }
            Kind::JumpShort {
                len,
                flags_live,
                pad,
                ..
            } => {
                let pad = bias.apply(pad).0;
                patches.push((ip, short_patch(ip, len, pad)));
                pads.push((pad, jump_patch(pad, 5, slot)));
                body(len, flags_live)
            }
            Kind::JumpPun {
                len,
                flags_live,
                prefixes,
                landing,
            } => {
                let landing = bias.apply(landing).0;
                patches.push((ip, pun_patch(from, ip, len, prefixes, landing)));
                landings.push((landing, landing_code(slot)));
                body(len, flags_live)
            }
        };
        let code = code.map_err(|e| site_error(s, from, ip, e))?;
        slots.push(code);
    }
    for (k, e) in evicted.iter().enumerate() {
        let slot = base + layout.slot(sites.len() + k) as u64;
        let ip = bias.apply(e.addr).0;
        patches.push((ip, jump_patch(ip, e.len, slot)));
        let from = code_at(image, e.addr);
        let code = encode_evicted(from, ip, e.len, slot).map_err(|why| {
            let label = format!("{:#x} (code moved to make room for a short jump)", e.addr.0);
            code_error(label, Some(e.len), from, ip, why)
        })?;
        slots.push(code);
    }
    patches.extend(pads);
    Ok(AreaCode {
        bytes: layout.image(
            base,
            shared.addr(),
            row_page,
            entries,
            &room,
            &slots,
            objects_traps,
        ),
        patches,
        landings,
    })
}

/// The event routine (when `shared` has a ring) and the latency routines
/// (with `timing`) for the objects' probe area, at `at`, reading the row
/// page at `row_page`: their code, and where each is.
pub fn object_routines(
    shared: &Shared,
    tid: Tid,
    timing: Option<Timing>,
    row_page: u64,
    at: u64,
) -> Result<(Vec<u8>, ObjectCalls), ProbeError> {
    let fail = |what: &str, e: Unrelocatable| ProbeError::Trampoline {
        site: what.into(),
        insns: String::new(),
        why: match e {
            Unrelocatable::Code(why) | Unrelocatable::Insn { why, .. } => why,
        },
    };
    let ring = shared.ring().map(|ring| Emit {
        ring: ring.addr(),
        layout: ring.layout(),
        row_page,
        tid,
    });
    let mut calls = ObjectCalls {
        row_page,
        emit: None,
        enter: None,
        exit: None,
    };
    let mut code = Vec::new();
    if let Some(e) = &ring {
        code = encode_emit(e, at).map_err(|e| fail("the objects' event routine", e))?;
        code.resize(EMIT_BYTES, 0xcc);
        calls.emit = Some(at);
    }
    if let Some(t) = timing {
        let latency_at = at + code.len() as u64;
        let (routines, exit) = encode_routines(&t, ring.as_ref(), latency_at)
            .map_err(|e| fail("the objects' latency routines", e))?;
        code.extend_from_slice(&routines);
        calls.enter = Some(latency_at);
        calls.exit = Some(latency_at + exit as u64);
    }
    Ok((code, calls))
}

/// One site of a shared object and the counter column its hits go to.
pub type ObjectSite = (Site, usize);

/// What [`object_code`] makes for one mapping of a shared object.
#[derive(Debug, Default)]
pub struct ObjectCode {
    /// The `int3` sites' entries, for the objects' trap table.
    pub traps: Vec<TrapEntry>,
    /// Each trampoline: its address, its code.
    pub trampolines: Vec<(u64, Vec<u8>)>,
    /// What the object's text gets: (runtime address, bytes).
    pub patches: Vec<(u64, Vec<u8>)>,
    /// The sites placed (indices into the sites given).
    pub placed: Vec<usize>,
    /// Sites passed over: (label, why).
    pub skipped: Vec<(String, String)>,
}

/// What a shared object's trampolines call and read, in the objects' probe
/// area: the row page, and the event and latency routines when some site
/// is traced or timed.
#[derive(Clone, Copy, Debug)]
pub struct ObjectCalls {
    /// The row page.
    pub row_page: u64,
    /// The event routine.
    pub emit: Option<u64>,
    /// The latency entry routine.
    pub enter: Option<u64>,
    /// The latency exit routine.
    pub exit: Option<u64>,
}

/// The trampolines of a shared object's `sites` (each a jump, plain or
/// short, and its counter column) and of the neighbours `evicted` for the
/// short jumps' pads, the object `image` placed with `bias`: each in the
/// room `take` gives (`SLOT_BYTES`, within a rel32 of the site as `reaches`
/// says), counting in `shared` and calling what `calls` gives. At most
/// `traps_left` int3s, each at an address `int3_free` allows.
#[allow(clippy::too_many_arguments)]
pub fn object_code(
    image: &Image,
    bias: Bias,
    sites: &[ObjectSite],
    evicted: &[Evicted],
    shared: &Shared,
    calls: &ObjectCalls,
    reaches: impl Fn(u64) -> bool,
    mut take: impl FnMut() -> Option<u64>,
    mut traps_left: usize,
    int3_free: impl Fn(u64) -> bool,
) -> ObjectCode {
    let mut out = ObjectCode::default();
    let mut pads = Vec::new();
    // A short jump's pad lies in bytes that no longer run only when their
    // owner (an evicted neighbour, or another site, past its own jump) has
    // its code moved: if any of those is not placed, only the short jumps
    // whose pads are in padding are.
    let mut hosts_placed = true;
    // Neighbours whose code moves out of the way of short jumps' pads.
    for e in evicted {
        let ip = bias.apply(e.addr).0;
        let Some(slot) = reaches(ip).then(&mut take).flatten() else {
            hosts_placed = false;
            continue;
        };
        let from = code_at(image, e.addr);
        match encode_evicted(from, ip, e.len, slot) {
            Ok(code) => {
                out.trampolines.push((slot, code));
                out.patches.push((ip, jump_patch(ip, e.len, slot)));
            }
            Err(_) => hosts_placed = false,
        }
    }
    // The other sites, then the short jumps.
    let short = |s: &Site| matches!(s.kind, Kind::JumpShort { .. });
    let order = sites
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| !short(s))
        .chain(sites.iter().enumerate().filter(|(_, (s, _))| short(s)));
    let others = sites.iter().filter(|(s, _)| !short(s)).count();
    let mut others_placed = None;
    for (k, (s, column)) in order {
        // Once the others are done: were they all placed?
        if short(s) && others_placed.is_none() {
            others_placed = Some(out.placed.len() == others);
        }
        if let Kind::JumpShort { via, .. } = s.kind {
            if via != super::Via::Padding && !(hosts_placed && others_placed == Some(true)) {
                out.skipped.push((
                    s.label(),
                    "its short jump's pad is in code that was not moved (a neighbour could \
                     not be placed)"
                        .into(),
                ));
                continue;
            }
        }
        let ip = s.place.runtime(bias);
        if s.kind == Kind::Int3 {
            // An int3: the displaced instruction in a slot, found by the
            // trap handler in the objects' trap table.
            if traps_left == 0 || !reaches(ip) || !int3_free(ip) {
                out.skipped.push((
                    s.label(),
                    "no int3 there: the objects' trap table is full, the probe area out of \
                     reach, or another object had an int3 at that address"
                        .into(),
                ));
                continue;
            }
            let Some(slot) = take() else {
                out.skipped
                    .push((s.label(), "the objects' probe area is full".into()));
                continue;
            };
            let from = s.place.bytes(image);
            match encode_slot(from, ip, slot) {
                Ok(code) => {
                    let traced = if s.action.traced() && calls.emit.is_some() {
                        1 << ENTRY_TRACED | u64::from(s.action.strings()) << STR_MASK_SHIFT
                    } else {
                        0
                    };
                    out.traps.push(TrapEntry {
                        site: ip,
                        slot,
                        index: *column as u64 | traced,
                    });
                    out.trampolines.push((slot, code));
                    out.patches.push((ip, vec![0xcc]));
                    out.placed.push(k);
                    traps_left -= 1;
                }
                Err(e) => out
                    .skipped
                    .push((s.label(), site_error(s, from, ip, e).to_string())),
            }
            continue;
        }
        let Some((len, flags_live)) = s.kind.jump().filter(|_| {
            matches!(
                s.kind,
                Kind::Jump { .. } | Kind::JumpPadding { .. } | Kind::JumpShort { .. }
            )
        }) else {
            out.skipped.push((
                s.label(),
                "a punned jump is not placed in shared objects yet".into(),
            ));
            continue;
        };
        if !reaches(ip) {
            out.skipped.push((
                s.label(),
                format!("the objects' probe area is beyond a jump's reach of {ip:#x}"),
            ));
            continue;
        }
        let Some(slot) = take() else {
            out.skipped
                .push((s.label(), "the objects' probe area is full".into()));
            continue;
        };
        let counting = Counting {
            overflow: shared.overflow_addr(*column),
            index: *column as u64,
            row_page: calls.row_page,
            block_shift: shared.layout().block_shift(),
            slot_bits: shared.layout().slot_bits(),
            emit: calls.emit.filter(|_| s.action.traced()),
            strings: s.action.strings(),
            enter: s.timed.and_then(|f| calls.enter.map(|e| (e, f))),
        };
        let from = s.place.bytes(image);
        let code = match (s.action, calls.exit) {
            (Action::Exit { func }, Some(exit)) => encode_exit(from, ip, len, exit, func, slot),
            (Action::Exit { .. }, None) => continue,
            _ => encode_trampoline(from, ip, len, flags_live, &counting, slot),
        };
        match code {
            Ok(code) => {
                out.trampolines.push((slot, code));
                match s.kind {
                    Kind::JumpShort { len, pad, .. } => {
                        let pad = bias.apply(pad).0;
                        out.patches.push((ip, short_patch(ip, len, pad)));
                        pads.push((pad, jump_patch(pad, 5, slot)));
                    }
                    _ => out
                        .patches
                        .push((ip, jump_patch(ip, s.kind.patch_len(), slot))),
                }
                out.placed.push(k);
            }
            Err(e) => out
                .skipped
                .push((s.label(), site_error(s, from, ip, e).to_string())),
        }
    }
    // Pads go over their hosts' filler: last.
    out.patches.extend(pads);
    out
}

/// The `len` bytes at `ip` (its code `from`) of a punned jump: `prefixes`
/// ignored prefixes, `jmp`, then the low bytes of the rel32 to `landing`;
/// its high bytes are `from`'s after them, which stay as they are.
fn pun_patch(from: &[u8], ip: u64, len: usize, prefixes: usize, landing: u64) -> Vec<u8> {
    let rel = landing.wrapping_sub(ip + prefixes as u64 + 5) as i64 as i32;
    let rel = rel.to_le_bytes();
    let mut v = vec![PREFIX; prefixes];
    v.push(0xe9);
    v.extend_from_slice(&rel[..len - 1 - prefixes]);
    debug_assert_eq!(
        &rel[len - 1 - prefixes..],
        &from[len..prefixes + 5],
        "the rel32 ends in the bytes after the site"
    );
    v
}

/// A landing: `jmp qword [rip]`, then the trampoline's address.
fn landing_code(slot: u64) -> Vec<u8> {
    let mut v = vec![0xff, 0x25, 0, 0, 0, 0];
    v.extend_from_slice(&slot.to_le_bytes());
    debug_assert_eq!(v.len() as u64, LANDING);
    v
}

/// The pages that `landings` (runtime addresses) need: page start, and
/// the page's bytes (int3 filler elsewhere).
#[must_use]
pub fn landing_pages(landings: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    const PAGE: u64 = 4096;
    let mut pages: Vec<(u64, Vec<u8>)> = Vec::new();
    for (at, code) in landings {
        let page = at & !(PAGE - 1);
        let i = match pages.iter().position(|(p, _)| *p == page) {
            Some(i) => i,
            None => {
                pages.push((page, vec![0xcc; PAGE as usize]));
                pages.len() - 1
            }
        };
        let off = (at - page) as usize;
        pages[i].1[off..off + code.len()].copy_from_slice(code);
    }
    pages.sort_by_key(|p| p.0);
    pages
}

/// Why site `s` (at runtime address `ip`, its code starting with `from`)
/// cannot be probed: the instruction to blame, or, when the code as a whole
/// is the trouble, the instructions it displaces.
fn site_error(s: &Site, from: &[u8], ip: u64, e: Unrelocatable) -> ProbeError {
    code_error(s.label(), s.kind.jump().map(|(len, _)| len), from, ip, e)
}

/// Why the code at `label` (runtime address `ip`, its bytes starting with
/// `from`; `len` displaced bytes behind a jump, or one instruction behind
/// an int3) cannot run out of line.
fn code_error(
    label: String,
    len: Option<usize>,
    from: &[u8],
    ip: u64,
    e: Unrelocatable,
) -> ProbeError {
    match (e, len) {
        (Unrelocatable::Insn { insn, why }, _) => ProbeError::NotRelocatable {
            site: label,
            insn,
            why,
        },
        (Unrelocatable::Code(why), None) => ProbeError::NotRelocatable {
            site: label,
            insn: disasm(&decode_one(from, ip)),
            why,
        },
        (Unrelocatable::Code(why), Some(len)) => {
            let mut insns = Vec::new();
            let mut off = 0;
            while off < len.min(from.len()) {
                let insn = decode_one(&from[off..], ip + off as u64);
                insns.push(disasm(&insn));
                off += insn.len().max(1);
            }
            ProbeError::Trampoline {
                site: label,
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
                trace: None,
                latency: None,
                ret: None,
            },
            kind,
            action: crate::probes::Action::Count,
            timed: None,
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
            emit: None,
            strings: 0,
            enter: None,
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
