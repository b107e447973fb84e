//! Short jumps: a site without room for a 5-byte `jmp` (a function of 2–4
//! bytes packed against the next one, or bytes that something enters at
//! +2…+4) takes a 2-byte `jmp rel8` to a *pad*: a 5-byte `jmp rel32` to its
//! trampoline, within 127 bytes, in bytes that no longer run. Those are:
//!
//! - **padding** after a function whose last instruction never runs on
//!   into it, which nothing enters ([`Via::Padding`]);
//! - the **dead bytes of a jump site**: past its own 5-byte `jmp`, the
//!   bytes it displaces no longer run. A site displaces whole instructions
//!   up to 10 bytes or more to hold a pad ([`Via::Displaced`]);
//! - the dead bytes of an **evicted neighbour**: instructions of code
//!   nearby that no probe asked for, displaced as a jump site's are, with
//!   a slot of their own that runs them and jumps back, counting nothing
//!   ([`Evicted`], [`Via::Evicted`]; E9Patch calls this neighbour
//!   eviction).
//!
//! ```text
//!   site:   eb 2a        jmp rel8 ──────────┐   (then int3s to its length)
//!           …                               │
//!   host:   e9 xx xx xx xx  jmp the host's slot (it runs the host's code)
//!   pad:    e9 yy yy yy yy  ◀───────────────┘   jmp the site's trampoline
//! ```
//!
//! Every byte a pad or an eviction takes obeys the jump sites' rules: whole
//! instructions that relocate, nothing entering them past their first
//! byte, in a function whose indirect jumps are bounded, no other site's
//! bytes, no function the program copies elsewhere. The text is patched
//! before any thread runs it, so no thread can be inside bytes that change.

use std::collections::BTreeMap;

use super::jump::{entered, span, JumpCheck};
use super::trampoline::{self, encode_evicted, TRIAL};
use super::{code_at, pun, Kind, Place, Via};
use crate::addr::LinkAddr;
use crate::elf::Image;

/// An evicted neighbour: `len` bytes of whole instructions at `addr` that
/// run out of line, in a slot of their own, behind a `jmp` at `addr`; the
/// bytes past that jump hold pads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evicted {
    /// Link-time address of its first instruction.
    pub addr: LinkAddr,
    /// Displaced bytes (≥ 10).
    pub len: usize,
}

/// Bytes of a `jmp rel32` (a pad, or a host's own jump).
const JMP: u64 = 5;
/// Bytes a host displaces at least: its own `jmp` and one pad.
const HOST: usize = 10;
/// How far a `jmp rel8` reaches back and ahead, from the end of it.
const BACK: u64 = 128;
const AHEAD: u64 = 127;
/// How a short jump's refusal starts.
const EITHER: &str = "no 2-byte jump either: ";

/// Gives each place that has no jump yet (its verdict an error) a short
/// jump where a pad can go, updating `verdicts`; a site that holds a pad
/// may displace more. Returns the neighbours evicted for pads. Places are
/// sorted and distinct.
pub(super) fn place(
    image: &Image,
    places: &[Place],
    verdicts: &mut [Result<Kind, String>],
    check: &mut JumpCheck,
) -> Vec<Evicted> {
    let mut room = Room::default();
    for (p, v) in places.iter().zip(verdicts.iter()) {
        let a = p.addr.0;
        // A place without a jump keeps at least its first byte (its int3).
        let len = v.as_ref().map_or(1, |k| k.patch_len());
        room.taken.insert(a, a + len as u64);
        if let Ok(Kind::Jump { len, .. }) = v {
            room.dead(a, *len, Via::Displaced);
        }
    }
    let mut short = Short {
        image,
        places,
        check,
        room,
        evicted: Vec::new(),
        landings: Vec::new(),
    };
    for i in 0..places.len() {
        if verdicts[i].is_ok() {
            continue;
        }
        let more = match short.site(i, verdicts) {
            Ok(kind) => {
                verdicts[i] = Ok(kind);
                continue;
            }
            Err(more) => more,
        };
        let punned = short.pun(i);
        let Err(why) = &mut verdicts[i] else {
            continue;
        };
        match punned {
            Ok(kind) => verdicts[i] = Ok(kind),
            Err(pun_why) => {
                for more in more.into_iter().chain(pun_why) {
                    if !why.contains(more.trim_start_matches(EITHER)) {
                        why.push_str("; ");
                        why.push_str(&more);
                    }
                }
            }
        }
    }
    short.evicted
}

/// The bytes of the text already taken, and the dead bytes free for pads.
#[derive(Default)]
pub(super) struct Room {
    /// [start, end) by start, disjoint: sites, pads, evicted neighbours,
    /// the bytes a punned jump keeps.
    pub(super) taken: BTreeMap<u64, u64>,
    /// Dead bytes of hosts not yet holding a pad.
    dead: Vec<Dead>,
}

/// [lo, hi): bytes past a host's own jump that no longer run.
struct Dead {
    lo: u64,
    hi: u64,
    via: Via,
}

impl Room {
    /// A room where `ranges` ([start, end), in any order, possibly
    /// overlapping) are taken, and no host holds pads.
    pub(super) fn taken_by(mut ranges: Vec<(u64, u64)>) -> Room {
        ranges.sort_unstable();
        let mut taken: BTreeMap<u64, u64> = BTreeMap::new();
        let mut last: Option<(u64, u64)> = None;
        for (lo, hi) in ranges {
            match last {
                Some((a, b)) if lo <= b => last = Some((a, b.max(hi))),
                Some((a, b)) => {
                    taken.insert(a, b);
                    last = Some((lo, hi));
                }
                None => last = Some((lo, hi)),
            }
        }
        if let Some((a, b)) = last {
            taken.insert(a, b);
        }
        Room {
            taken,
            dead: Vec::new(),
        }
    }

    /// Whether nothing has taken any of [lo, hi).
    pub(super) fn free(&self, lo: u64, hi: u64) -> bool {
        // The ranges are disjoint: only the last one starting before `hi`
        // can reach into it.
        self.taken
            .range(..hi)
            .next_back()
            .is_none_or(|(_, &end)| end <= lo)
    }

    /// A host of `len` displaced bytes at `a`: the bytes past its jump
    /// hold pads, when there is room for one.
    fn dead(&mut self, a: u64, len: usize, via: Via) {
        if len >= HOST {
            self.dead.push(Dead {
                lo: a + JMP,
                hi: a + len as u64,
                via,
            });
        }
    }
}

/// The search for pads, over one object.
struct Short<'a> {
    image: &'a Image,
    places: &'a [Place],
    check: &'a mut JumpCheck,
    room: Room,
    evicted: Vec<Evicted>,
    /// Punned jumps' landings so far: [start, end), link-time.
    landings: Vec<(u64, u64)>,
}

impl Short<'_> {
    /// A short jump for place `i`; or why not: `None` when the place has
    /// no 2 bytes to displace either (its verdict says why), the reason
    /// when no pad is within reach.
    fn site(
        &mut self,
        i: usize,
        verdicts: &mut [Result<Kind, String>],
    ) -> Result<Kind, Option<String>> {
        let p = &self.places[i];
        let (start, end) = self
            .check
            .function(self.image, p.function)
            .map_err(|_| None)?;
        let insns = self.check.insns(start);
        let first = insns.iter().position(|x| x.ip() == p.addr.0).ok_or(None)?;
        let len = span(&insns[first..], end, 2).map_err(|_| None)?;
        let (lo, hi) = (p.addr.0, p.addr.0 + len as u64);
        if let Some((t, how)) = self.check.targets().inside(lo, hi) {
            return Err(Some(format!("{EITHER}{}", entered(self.image, p, t, how))));
        }
        if !self.room.free(lo + 1, hi) {
            return Err(None);
        }
        self.room.taken.insert(lo, hi);
        let from = lo + 2;
        let window = (from.saturating_sub(BACK), from + AHEAD);
        let Some((pad, via)) = self.pad(window, verdicts) else {
            self.room.taken.insert(lo, lo + 1);
            return Err(Some(format!(
                "{EITHER}within its reach no padding, no jump site and no \
                     neighbouring code can make room for a 5-byte jump"
            )));
        };
        Ok(Kind::JumpShort {
            len,
            flags_live: p.addr != start,
            pad: LinkAddr(pad),
            via,
        })
    }

    /// A punned jump for place `i` (see `pun.rs`); or why not, when its
    /// function is one a jump can go in.
    fn pun(&mut self, i: usize) -> Result<Kind, Option<String>> {
        let p = &self.places[i];
        let (start, end) = self
            .check
            .function(self.image, p.function)
            .map_err(|_| None)?;
        pun::site(
            self.image,
            p,
            (start, end),
            self.check,
            &mut self.room,
            &mut self.landings,
        )
        .map_err(Some)
    }

    /// Where a pad can start in [wlo, whi], cheapest first: dead bytes
    /// already there, padding, a jump site displacing more, an evicted
    /// neighbour. The pad's bytes are taken.
    fn pad(
        &mut self,
        window: (u64, u64),
        verdicts: &mut [Result<Kind, String>],
    ) -> Option<(u64, Via)> {
        let (wlo, whi) = window;
        if let Some(d) = self
            .room
            .dead
            .iter_mut()
            .find(|d| d.hi - d.lo >= JMP && (wlo..=whi).contains(&d.lo))
        {
            let at = d.lo;
            d.lo += JMP;
            return Some((at, d.via));
        }
        if let Some(at) = self.padding(window) {
            self.room.taken.insert(at, at + JMP);
            return Some((at, Via::Padding));
        }
        if let Some(at) = self.displace_more(window, verdicts) {
            return Some((at, Via::Displaced));
        }
        self.evict(window).map(|at| (at, Via::Evicted))
    }

    /// Functions of known size that overlap [lo, hi].
    fn functions_near(&mut self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let sized = self.check.sized(self.image);
        let i = sized.partition_point(|&(s, _)| s < lo.saturating_sub(4096));
        sized[i..]
            .iter()
            .take_while(|&&(s, _)| s <= hi)
            .filter(|&&(_, e)| e > lo)
            .copied()
            .collect()
    }

    /// 5 free bytes in [wlo, whi] of the padding after a function: its
    /// last instruction never runs on, the padding is nops or int3s up to
    /// the next symbol, and nothing enters it.
    fn padding(&mut self, (wlo, whi): (u64, u64)) -> Option<u64> {
        use iced_x86::FlowControl as F;
        // Padding runs are short: a function ending up to 64 bytes before
        // the window can have some in it.
        for (s, e) in self.functions_near(wlo.saturating_sub(64), whi) {
            if e > whi {
                continue;
            }
            let Ok((start, end)) = self.check.function(self.image, Some((LinkAddr(s), e - s)))
            else {
                continue;
            };
            let Some(last) = self.check.insns(start).last() else {
                continue;
            };
            let never_runs_on = matches!(
                last.flow_control(),
                F::Return | F::UnconditionalBranch | F::IndirectBranch
            );
            if last.next_ip() != end || !never_runs_on {
                continue;
            }
            let gap = padding_end(self.image, end, self.check);
            let mut at = end.max(wlo);
            while at <= whi && at + JMP <= gap {
                if self.room.free(at, at + JMP) {
                    return Some(at);
                }
                at += 1;
            }
        }
        None
    }

    /// A jump site whose pad would be in [wlo, whi] that can displace
    /// whole instructions up to 10 bytes or more, its trampoline still in
    /// one slot: its `jmp`, then the pad.
    fn displace_more(
        &mut self,
        (wlo, whi): (u64, u64),
        verdicts: &mut [Result<Kind, String>],
    ) -> Option<u64> {
        let first = self.places.partition_point(|p| p.addr.0 + JMP < wlo);
        for (k, p) in self.places.iter().enumerate().skip(first) {
            let a = p.addr.0;
            if a + JMP > whi {
                break;
            }
            let Ok(Kind::Jump { len, flags_live }) = verdicts[k] else {
                continue;
            };
            if len >= HOST {
                continue;
            }
            let Ok((start, end)) = self.check.function(self.image, p.function) else {
                continue;
            };
            let insns = self.check.insns(start);
            let Some(at) = insns.iter().position(|x| x.ip() == a) else {
                continue;
            };
            let Ok(m) = span(&insns[at..], end, HOST) else {
                continue;
            };
            let hi = a + m as u64;
            if self.check.targets().inside(a, hi).is_some()
                || !self.room.free(a + len as u64, hi)
                || !fits_trampoline(self.image, a, m, flags_live)
            {
                continue;
            }
            verdicts[k] = Ok(Kind::Jump { len: m, flags_live });
            self.room.taken.insert(a, hi);
            self.room.dead(a + JMP, m - JMP as usize, Via::Displaced);
            return Some(a + JMP);
        }
        None
    }

    /// Evicts whole instructions of code nearby, 10 bytes or more from one
    /// whose end of `jmp` lands the pad in [wlo, whi]: no site's, nothing
    /// entering them past the first, relocatable, in one slot.
    fn evict(&mut self, (wlo, whi): (u64, u64)) -> Option<u64> {
        for (s, e) in self.functions_near(wlo.saturating_sub(JMP), whi) {
            let Ok((start, end)) = self.check.function(self.image, Some((LinkAddr(s), e - s)))
            else {
                continue;
            };
            let insns = self.check.insns(start);
            for (k, j) in insns.iter().enumerate() {
                let at = j.ip();
                if at + JMP < wlo {
                    continue;
                }
                if at + JMP > whi {
                    break;
                }
                let Ok(m) = span(&insns[k..], end, HOST) else {
                    continue;
                };
                let hi = at + m as u64;
                if self.check.targets().inside(at, hi).is_some()
                    || !self.room.free(at, hi)
                    || !fits_evicted(self.image, at, m)
                {
                    continue;
                }
                self.room.taken.insert(at, hi);
                self.room.dead(at + JMP, m - JMP as usize, Via::Evicted);
                self.evicted.push(Evicted {
                    addr: LinkAddr(at),
                    len: m,
                });
                return Some(at + JMP);
            }
        }
        None
    }
}

/// Where the padding from `end` (nops and int3s) ends: at the first other
/// instruction, the next symbol or FDE start, or the first byte something
/// enters, whichever comes first.
fn padding_end(image: &Image, end: u64, check: &JumpCheck) -> u64 {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let targets = check.targets();
    let mut stop = targets.next_start(end - 1).unwrap_or(end);
    if let Some((t, _)) = targets.inside(end - 1, stop) {
        stop = t;
    }
    let bytes = code_at(image, LinkAddr(end));
    let mut d = Decoder::with_ip(64, bytes, end, DecoderOptions::NONE);
    while d.can_decode() && d.ip() < stop {
        let i = d.decode();
        if !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Int3) {
            return i.ip().min(stop);
        }
    }
    d.ip().min(stop)
}

/// Whether the trampoline of a jump site at `a` displacing `len` bytes
/// fits one slot, placed as far as a slot can be.
fn fits_trampoline(image: &Image, a: u64, len: usize, flags_live: bool) -> bool {
    // As if traced: the longest the trampoline can be.
    trampoline::fits(code_at(image, LinkAddr(a)), a, len, flags_live, true, false)
}

/// Whether the slot of a neighbour evicted at `a` over `len` bytes fits.
fn fits_evicted(image: &Image, a: u64, len: usize) -> bool {
    encode_evicted(code_at(image, LinkAddr(a)), a, len, a + TRIAL).is_ok()
}
