//! Jump sites: whether a site can take a 5-byte `jmp` ([`JumpCheck`]),
//! and the choice of each site's [`Kind`] under a [`ProbeMode`] ([`choose`]).

use std::collections::HashMap;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};

use super::{
    bytes_at, decode_one, disasm, indirect, short, xol, Action, ArgType, Evicted, Kind, Place,
    ProbeError, ProbeMode, Resolution, Site, Source, Targets,
};
use crate::addr::LinkAddr;
use crate::elf::Image;
use crate::error::{Error, Result};
use crate::symbols::Symbols;

/// Chooses how each place of `resolution` is displaced under `mode`: a
/// jump where [`decide`] finds one; otherwise an `int3` with
/// [`ProbeMode::Int3`], an error with [`ProbeMode::Jump`], and with
/// [`ProbeMode::Auto`] an error for a place named on its own or a skip for
/// a pattern's match (an int3 cannot be made safe: README, "Int3 sites").
pub fn choose(image: &Image, resolution: &Resolution, mode: ProbeMode) -> Result<Chosen> {
    let places = &resolution.places;
    let mut check = JumpCheck::default();
    let (verdicts, evicted) = match mode {
        ProbeMode::Int3 => (Vec::new(), Vec::new()),
        _ => decide_with(image, places, &mut check),
    };
    let mut sites = Vec::with_capacity(places.len());
    let mut skipped = Vec::new();
    for (i, p) in places.iter().enumerate() {
        let kind = match (mode, verdicts.get(i).cloned()) {
            (ProbeMode::Int3, _) | (_, None) => Kind::Int3,
            (_, Some(Ok(k))) => k,
            (ProbeMode::Auto, Some(Err(why)))
                if resolution.requests[p.request].location.is_glob() =>
            {
                skipped.push((p.label(), why));
                continue;
            }
            (ProbeMode::Auto, Some(Err(why))) => {
                return Err(Error::UnsafeSite {
                    site: p.label(),
                    why,
                });
            }
            (ProbeMode::Jump, Some(Err(why))) => {
                return Err(Error::Probe(ProbeError::NoJump {
                    site: p.label(),
                    why,
                }));
            }
        };
        let action = match p.trace.map(|r| &resolution.requests[r]) {
            Some(r) => Action::Trace {
                strings: r
                    .trace
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, t)| **t == ArgType::Str)
                    .fold(0, |m, (i, _)| m | 1 << i),
            },
            None => Action::Count,
        };
        sites.push(Site {
            place: p.clone(),
            kind,
            action,
            timed: None,
        });
    }
    // A skipped place's bytes stay as they are: no evicted neighbour holds
    // a pad for it (pads are only made for places that take a jump).
    let mut unseen = Vec::new();
    let sites = super::timed::add_exits(
        image,
        resolution,
        sites,
        &evicted,
        &mut check,
        &mut skipped,
        &mut unseen,
    )?;
    Ok(Chosen {
        sites,
        skipped,
        evicted,
        unseen,
    })
}

/// How each of `places` (sorted, distinct) can take a jump, all of them
/// probed together, or why it cannot; and the neighbours evicted to hold
/// the pads of short jumps. First each place on its own ([`JumpCheck`]);
/// then the places that have no room for a 5-byte jump try a 2-byte one
/// (`short.rs`), in the bytes the others leave.
#[must_use]
pub fn decide(image: &Image, places: &[Place]) -> (Vec<Result<Kind, String>>, Vec<Evicted>) {
    decide_with(image, places, &mut JumpCheck::default())
}

/// [`decide`] with `check`, which keeps what it decoded for later use.
fn decide_with(
    image: &Image,
    places: &[Place],
    check: &mut JumpCheck,
) -> (Vec<Result<Kind, String>>, Vec<Evicted>) {
    let mut verdicts: Vec<Result<Kind, String>> = places
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let k = check.check(image, p)?;
            // A jump must not cover another probe's site (places are sorted).
            match places.get(i + 1) {
                Some(next) if next.addr.0 < p.addr.0 + k.patch_len() as u64 => Err(format!(
                    "its displaced bytes would cover the probe at {}",
                    next.label()
                )),
                _ => Ok(k),
            }
        })
        .collect();
    let evicted = short::place(image, places, &mut verdicts, check);
    (verdicts, evicted)
}

/// What [`choose`] decided.
#[derive(Clone, Debug, Default)]
pub struct Chosen {
    /// The sites, in address order.
    pub sites: Vec<Site>,
    /// The pattern matches passed over: (label, why a jump does not fit).
    pub skipped: Vec<(String, String)>,
    /// The neighbours evicted to hold short jumps' pads.
    pub evicted: Vec<Evicted>,
    /// Returns of timed functions that no jump fits: (label, why). Calls
    /// that return there count as left, untimed.
    pub unseen: Vec<(String, String)>,
}

/// Decides whether sites can take a jump, decoding each function once and
/// finding the object's entry points (`Targets`) once.
#[derive(Default)]
pub struct JumpCheck {
    /// Per function start: its instructions, or why jumps cannot go in it.
    decoded: HashMap<LinkAddr, Result<Vec<Instruction>, String>>,
    /// Where control can arrive in the object, built at the first check.
    targets: Option<Targets>,
    /// The functions of known size, [start, end) sorted, read at the first
    /// need: for symbols without a size, and for short jumps' neighbours.
    sized: Option<Vec<(u64, u64)>>,
}

impl JumpCheck {
    /// Whether `site` can be displaced by a 5-byte jump, and over how many
    /// bytes; otherwise why not. The rule: the displaced instructions are
    /// whole, cover ≥ 5 bytes, stay inside the function and relocate; a
    /// `call`, `jmp` or `ret` among them is the last; nothing in the whole
    /// object enters them other than at their first byte (see [`Targets`]);
    /// the function has no indirect jump whose targets cannot be bounded
    /// ([`indirect::bounded`]).
    pub fn check(&mut self, image: &Image, site: &Place) -> Result<Kind, String> {
        let (start, end) = self.function(image, site.function)?;
        let insns = self.insns(start);
        let targets = self.targets();
        let first = insns
            .iter()
            .position(|i| i.ip() == site.addr.0)
            .ok_or("the site is not an instruction boundary")?;
        if site.addr.0 + 5 > end {
            let fewer = format!(
                "fewer than 5 bytes from the site to the end of the function ({})",
                end - site.addr.0
            );
            return padded(image, &insns[first..], site, start, end, targets)
                .map_err(|why| format!("{fewer}, {why}"));
        }
        let len = span(&insns[first..], end, 5)?;
        let (lo, hi) = (site.addr.0, site.addr.0 + len as u64);
        if let Some((t, how)) = targets.inside(lo, hi) {
            return Err(entered(image, site, t, how));
        }
        Ok(Kind::Jump {
            len,
            flags_live: site.addr != start,
        })
    }

    /// The function `f` (start, size; a size of 0: up to its last `ret` or
    /// `jmp`, see [`extent`]) decoded, as (start, end); or why jumps cannot
    /// go in it. Its instructions are then [`JumpCheck::insns`].
    pub(super) fn function(
        &mut self,
        image: &Image,
        f: Option<(LinkAddr, u64)>,
    ) -> Result<(LinkAddr, u64), String> {
        let Some((start, size)) = f else {
            return Err("it is in no function of known size".into());
        };
        let targets = self.targets.get_or_insert_with(|| Targets::of(image));
        let size = if size > 0 {
            size
        } else {
            let sized = self.sized.get_or_insert_with(|| sized(image));
            extent(image, start, targets, sized).map_err(|why| {
                format!("it is in no function of known size: its symbol has no size, {why}")
            })?
        };
        self.decoded
            .entry(start)
            .or_insert_with(|| {
                let insns = decode_function(image, start, size)?;
                indirect::bounded(&insns, start.0, targets)?;
                Ok(insns)
            })
            .as_ref()
            .map_err(Clone::clone)?;
        Ok((start, start.0 + size))
    }

    /// The instructions of a function [`JumpCheck::function`] decoded.
    pub(super) fn insns(&self, start: LinkAddr) -> &[Instruction] {
        match self.decoded.get(&start) {
            Some(Ok(insns)) => insns,
            _ => &[],
        }
    }

    /// The object's entry points: built by [`JumpCheck::function`], which
    /// comes first on every path here.
    pub(super) fn targets(&self) -> &Targets {
        self.targets
            .as_ref()
            .expect("JumpCheck::function builds the targets first")
    }

    /// The functions of known size, [start, end) sorted by start, except
    /// those the program copies and runs elsewhere.
    pub(super) fn sized(&mut self, image: &Image) -> &[(u64, u64)] {
        self.sized.get_or_insert_with(|| sized(image))
    }
}

/// The bytes of whole instructions from the first of `insns` that cover at
/// least `min`: they stay before `end` (the function's) and relocate, and
/// a `call`, `jmp` or `ret` among them is the last. Or why there are none.
pub(super) fn span(insns: &[Instruction], end: u64, min: usize) -> Result<usize, String> {
    use iced_x86::FlowControl as F;
    let mut len = 0usize;
    for i in insns {
        if len >= min {
            break;
        }
        if i.next_ip() > end {
            return Err("the displaced bytes would leave the function".into());
        }
        xol::relocatable(i).map_err(|why| format!("`{}` {why}", disasm(i)))?;
        len += i.len();
        let ends_flow = matches!(
            i.flow_control(),
            F::Call | F::IndirectCall | F::Return | F::UnconditionalBranch | F::IndirectBranch
        );
        if ends_flow && len < min {
            return Err(format!(
                "`{}` would not be the last displaced instruction",
                disasm(i)
            ));
        }
    }
    if len < min {
        return Err(format!(
            "fewer than {min} bytes from the site to the end of the function ({len})"
        ));
    }
    Ok(len)
}

/// The functions of known size in `image`, sorted, without those the
/// program runs a copy of elsewhere (no byte of them may change).
fn sized(image: &Image) -> Vec<(u64, u64)> {
    let syms = Symbols::read(image);
    let mut v: Vec<(u64, u64)> = syms
        .all()
        .iter()
        .filter(|f| f.size > 0 && syms.copied(f.addr).is_none())
        .map(|f| (f.addr.0, f.addr.0 + f.size))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The size of the code at the symbol `start`, which has none: up to its
/// last `ret` or `jmp` before the next symbol or FDE start or its
/// section's end, and the
/// padding (nops, int3s) after it. Refused when the symbol lies inside a
/// function of known size (a label) or the code does not decode.
fn extent(
    image: &Image,
    start: LinkAddr,
    targets: &Targets,
    sized: &[(u64, u64)],
) -> Result<u64, String> {
    use iced_x86::{FlowControl as F, Mnemonic};
    if let Some((s, _)) = sized.iter().find(|&&(s, e)| s < start.0 && start.0 < e) {
        return Err(format!("and it lies inside the function at {s:#x}"));
    }
    // Up to the next symbol or FDE, within the section (`_fini` is the
    // last of `.fini`, `_init` runs on into `.plt` otherwise).
    let next = match (targets.next_start(start.0), targets.section_end(start.0)) {
        (Some(n), Some(e)) => n.min(e),
        (n, e) => n.or(e).ok_or("and no symbol follows it")?,
    };
    let bytes = bytes_at(image, start).ok_or("and it is not in the text")?;
    let n = usize::try_from(next - start.0)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let insns: Vec<Instruction> = Decoder::with_ip(64, &bytes[..n], start.0, DecoderOptions::NONE)
        .into_iter()
        .collect();
    if insns.iter().any(|i| i.code() == Code::INVALID) {
        return Err("and the code up to the next symbol does not decode".into());
    }
    let body = insns
        .iter()
        .rposition(|i| !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Int3))
        .ok_or("and there is only padding up to the next symbol")?;
    let last = &insns[body];
    if !matches!(
        last.flow_control(),
        F::Return | F::UnconditionalBranch | F::IndirectBranch
    ) {
        return Err(format!(
            "and the code up to the next symbol does not end in a `ret` or `jmp` (`{}`)",
            disasm(last)
        ));
    }
    Ok(last.next_ip() - start.0)
}

/// A jump over the last instructions of a function (`insns`, from the
/// site to `end`, fewer than 5 bytes) and the alignment padding after it:
/// the last instruction never falls through (`ret`, `jmp`), the padding
/// up to 5 bytes is nops or `int3`s, and nothing enters any of it (a
/// symbol, a branch target) past the site.
pub(super) fn padded(
    image: &Image,
    insns: &[Instruction],
    site: &Place,
    start: LinkAddr,
    end: u64,
    targets: &Targets,
) -> Result<Kind, String> {
    use iced_x86::{FlowControl as F, Mnemonic};
    let len = (end - site.addr.0) as usize;
    let last = insns
        .iter()
        .position(|i| i.next_ip() == end)
        .ok_or("and it does not end on an instruction boundary")?;
    for (k, i) in insns[..=last].iter().enumerate() {
        xol::relocatable(i).map_err(|why| format!("and `{}` {why}", disasm(i)))?;
        let ends_flow = matches!(
            i.flow_control(),
            F::Call | F::IndirectCall | F::Return | F::UnconditionalBranch | F::IndirectBranch
        );
        if ends_flow != (k == last)
            || i.flow_control() == F::Call
            || i.flow_control() == F::IndirectCall
        {
            return Err(format!(
                "and its last instruction may run on into the bytes after it (`{}`)",
                disasm(&insns[last])
            ));
        }
    }
    let pad = 5 - len;
    let after = bytes_at(image, LinkAddr(end)).unwrap_or(&[]);
    let mut d = Decoder::with_ip(64, after, end, DecoderOptions::NONE);
    while d.ip() < end + pad as u64 {
        let i = d.decode();
        if !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Int3) {
            return Err(format!(
                "and no padding after it (`{}` at its end)",
                disasm(&i)
            ));
        }
    }
    let (lo, hi) = (site.addr.0, site.addr.0 + 5);
    if let Some((t, how)) = targets.inside(lo, hi) {
        return Err(format!("and {}", entered(image, site, t, how)));
    }
    Ok(Kind::JumpPadding {
        len,
        pad,
        flags_live: site.addr != start,
    })
}

/// Why a site is refused because control enters its displaced bytes at `t`.
pub(super) fn entered(image: &Image, site: &Place, t: u64, how: Source) -> String {
    let at = format!("{}+{:#x}", site.symbol, t - site.addr.0 + site.offset);
    let insn = |a: u64| {
        bytes_at(image, LinkAddr(a)).map_or_else(String::new, |b| {
            format!(" (`{}`)", disasm(&decode_one(b, a)))
        })
    };
    let what = match how {
        Source::Branch(from) => format!("the instruction at {from:#x}{} branches into", insn(from)),
        Source::Address(from) => {
            format!(
                "the instruction at {from:#x}{} takes an address in",
                insn(from)
            )
        }
        Source::Table(base) => format!("the jump table at {base:#x} leads into"),
        Source::Pointer(word) => format!("the pointer at {word:#x} points into"),
        Source::LandingPad(func) => {
            format!("an exception landing pad of the function at {func:#x} is in")
        }
        Source::Fde => "an unwind table entry (FDE) starts in".into(),
        Source::Symbol => "a symbol points into".into(),
    };
    format!("{what} the displaced bytes, at {at}")
}

fn decode_function(image: &Image, start: LinkAddr, size: u64) -> Result<Vec<Instruction>, String> {
    let bytes = bytes_at(image, start).ok_or("the function is not in the text")?;
    let len = (size as usize).min(bytes.len());
    let mut d = Decoder::with_ip(64, &bytes[..len], start.0, DecoderOptions::NONE);
    let mut out = Vec::new();
    for i in &mut d {
        if i.code() == Code::INVALID {
            return Err(format!(
                "the function does not decode at +{:#x}",
                i.ip() - start.0
            ));
        }
        out.push(i);
    }
    Ok(out)
}
