//! Timed functions (`--latency`): each one's exits become sites of their
//! own, after [`super::choose`] has decided every other site (see
//! `latency.rs` for the exits and the routines).

use super::jump::{padded, JumpCheck};
use super::latency::{exits, Exit};
use super::{pun, short, trampoline, Action, Evicted, Kind, Place, Resolution, Site};
use crate::addr::LinkAddr;
use crate::elf::Image;
use crate::error::{Error, Result};
use crate::symbols::Symbols;

/// `sites` with the exits of each timed function added, each function
/// numbered in address order; a function whose entry or exits cannot all
/// take a jump of their own is refused (skipped for a pattern's match): an
/// exit not seen would leave its calls untimed. Returns no jump fits go in
/// `unseen` (calls that return there count as left).
pub(super) fn add_exits(
    image: &Image,
    resolution: &Resolution,
    sites: Vec<Site>,
    evicted: &[Evicted],
    check: &mut JumpCheck,
    skipped: &mut Vec<(String, String)>,
    unseen: &mut Vec<(String, String)>,
) -> Result<Vec<Site>> {
    if sites.iter().all(|s| s.place.latency.is_none()) {
        return Ok(sites);
    }
    let mut room = Room::new(image, &sites, evicted);
    // Where short jumps' pads went: a site whose bytes hold one stays,
    // timed or not (its jump is what keeps the pad from running).
    let pads: Vec<u64> = sites
        .iter()
        .filter_map(|s| match s.kind {
            Kind::JumpShort { pad, .. } => Some(pad.0),
            _ => None,
        })
        .collect();
    let hosts = |s: &Site| {
        let (lo, hi) = (s.addr().0, s.addr().0 + s.kind.patch_len() as u64);
        pads.iter().any(|&p| lo <= p && p < hi)
    };
    let mut out = Vec::with_capacity(sites.len());
    let mut exit_sites = Vec::new();
    let mut func = 0u32;
    for s in sites {
        let Some(request) = s.place.latency else {
            out.push(s);
            continue;
        };
        match room.exits_of(check, &s) {
            Ok((found, mut missed)) => {
                unseen.append(&mut missed);
                for (x, kind) in found {
                    exit_sites.push(Site {
                        place: Place {
                            addr: LinkAddr(x.addr),
                            offset: x.addr - s.place.addr.0 + s.place.offset,
                            trace: None,
                            ret: None,
                            ..s.place.clone()
                        },
                        kind,
                        action: Action::Exit { func },
                        timed: None,
                    });
                }
                out.push(Site {
                    timed: Some(func),
                    ..s
                });
                func += 1;
            }
            Err(why) if resolution.requests[request].location.is_glob() => {
                skipped.push((
                    s.label(),
                    format!("cannot time it (--latency, %return): {why}"),
                ));
                // Still counted if another request probes it, or if it
                // holds another site's pad.
                if s.place.request != request || s.place.trace.is_some() || hosts(&s) {
                    out.push(Site {
                        place: Place {
                            latency: None,
                            ret: None,
                            ..s.place
                        },
                        ..s
                    });
                }
            }
            Err(why) => {
                return Err(Error::Untimeable {
                    site: s.label(),
                    why,
                })
            }
        }
    }
    out.extend(exit_sites);
    out.sort_by_key(|s| s.addr());
    Ok(out)
}

/// What the exits may use: the bytes nothing else has taken, and the
/// landings of punned jumps not yet chosen.
struct Room<'a> {
    image: &'a Image,
    syms: Symbols,
    /// [start, end): every site's patch, the pads of short jumps, the bytes
    /// punned jumps keep, the evicted neighbours, and the exits so far.
    taken: Vec<(u64, u64)>,
    /// Punned jumps' landings, [start, end).
    landings: Vec<(u64, u64)>,
}

/// A timed function's exits that take a jump, and those that do not:
/// (label, why).
type Found = (Vec<(Exit, Kind)>, Vec<(String, String)>);

impl<'a> Room<'a> {
    fn new(image: &'a Image, sites: &[Site], evicted: &[Evicted]) -> Room<'a> {
        let mut taken: Vec<(u64, u64)> = evicted
            .iter()
            .map(|e| (e.addr.0, e.addr.0 + e.len as u64))
            .collect();
        let mut landings = Vec::new();
        for s in sites {
            taken.push((s.addr().0, s.addr().0 + s.kind.patch_len() as u64));
            match s.kind {
                Kind::JumpShort { pad, .. } => taken.push((pad.0, pad.0 + 5)),
                Kind::JumpPun { landing, .. } => {
                    taken.extend(kept(s.addr().0, s.kind));
                    landings.push((landing.0, landing.0 + pun::LANDING));
                }
                _ => {}
            }
        }
        taken.sort_unstable();
        Room {
            image,
            syms: Symbols::read(image),
            taken,
            landings,
        }
    }

    /// The exits of the timed entry `s`, each with how it is displaced; or
    /// why the function cannot be timed.
    fn exits_of(&mut self, check: &mut JumpCheck, s: &Site) -> std::result::Result<Found, String> {
        let Some((len, flags_live)) = s.kind.jump() else {
            return Err("its entry cannot take a jump".into());
        };
        let (image, a) = (self.image, s.addr().0);
        if !trampoline::fits(
            s.place.bytes(image),
            a,
            len,
            flags_live,
            s.action.traced(),
            true,
        ) {
            return Err(
                "its entry's trampoline, with the timing call, would not fit a slot".into(),
            );
        }
        let (start, end) = check.function(image, s.place.function)?;
        let name = self
            .syms
            .containing(start)
            .map_or(String::new(), |f| f.name.clone());
        let part = |t| self.is_part_of(&name, t);
        let xs = exits(check.insns(start), start.0, end, check.targets(), part)?;
        let entry = (a, a + s.kind.patch_len() as u64);
        let (mut found, mut missed) = (Vec::new(), Vec::new());
        for x in xs {
            let kind = match self.kind(check, s, start, x) {
                Ok(k) => k,
                Err(why) => {
                    // Not seen: calls that return here count as left,
                    // untimed (the program runs as ever).
                    let at = x.addr - s.place.addr.0 + s.place.offset;
                    missed.push((
                        format!("{}+{at:#x}", s.place.symbol),
                        format!("{} bytes of room for a jump, {why}", x.len),
                    ));
                    continue;
                }
            };
            let (lo, hi) = (x.addr, x.addr + kind.patch_len() as u64);
            if self.taken.iter().any(|&(a, b)| a < hi && lo < b) || (lo < entry.1 && entry.0 < hi) {
                return Err(format!(
                    "its exit at {:#x} shares its bytes with another probe's",
                    x.addr
                ));
            }
            self.taken.push((lo, hi));
            self.taken.extend(kept(x.addr, kind));
            found.push((x, kind));
        }
        if found.is_empty() && !missed.is_empty() {
            return Err("none of its returns can take a jump".into());
        }
        Ok((found, missed))
    }

    /// How the exit `x` of the function at `start` (timed at the entry `s`)
    /// takes a jump: over its instructions, or, short of 5 bytes, with the
    /// padding after it or punned over the bytes after it; and its
    /// trampoline fits a slot.
    fn kind(
        &mut self,
        check: &JumpCheck,
        s: &Site,
        start: LinkAddr,
        x: Exit,
    ) -> std::result::Result<Kind, String> {
        let kind = if x.len >= 5 {
            Kind::Jump {
                len: x.len,
                flags_live: true,
            }
        } else {
            let at = Place {
                addr: LinkAddr(x.addr),
                ..s.place.clone()
            };
            let insns = check.insns(start);
            let from = insns.iter().position(|i| i.ip() == x.addr).unwrap_or(0);
            let end = x.addr + x.len as u64;
            padded(self.image, &insns[from..], &at, start, end, check.targets()).or_else(|why| {
                let mut room = short::Room::taken_by(self.taken.clone());
                let landings = &mut self.landings;
                pun::site(self.image, &at, (start, end), check, &mut room, landings)
                    .map_err(|pun| format!("{why}; {pun}"))
            })?
        };
        if !trampoline::exit_fits(super::code_at(self.image, LinkAddr(x.addr)), x.addr, x.len) {
            return Err("its trampoline would not fit a slot".into());
        }
        Ok(kind)
    }

    /// Whether `t` lies in a part of the function `f` placed elsewhere:
    /// gcc's `f.cold`, in `f`'s frame.
    fn is_part_of(&self, f: &str, t: u64) -> bool {
        self.syms.containing(LinkAddr(t)).is_some_and(|c| {
            c.name
                .strip_prefix(f)
                .is_some_and(|rest| rest == ".cold" || rest.starts_with(".cold."))
        })
    }
}

/// The bytes after a punned jump at `addr` that it keeps as they are.
fn kept(addr: u64, kind: Kind) -> Option<(u64, u64)> {
    match kind {
        Kind::JumpPun { len, prefixes, .. } => {
            Some((addr + len as u64, addr + prefixes as u64 + 5))
        }
        _ => None,
    }
}
