//! Punned jumps: where even a 2-byte jump has no pad within reach (a
//! 1-byte function, a function entered at +1), the site can still take a
//! `jmp rel32` whose first bytes are ours and whose last bytes are the
//! bytes after the site, left as they are: the jump lands wherever those
//! bytes say. If that is an address we can map, a *landing* there (an
//! absolute `jmp` to the site's trampoline, in a page of ours) completes
//! it. Code that enters the bytes after the site still finds them intact.
//! E9Patch calls this instruction punning.
//!
//! ```text
//!   site:  [2e…] e9 v v | b b      the site's L bytes: ignored prefixes, the
//!                ╰─rel32─╯           jmp, the rel32's low bytes (ours); its
//!                                    high bytes b are the next instructions'
//!   landing (site + P + 5 + rel32):  jmp [rip]; .quad trampoline
//! ```
//!
//! The prefixes (`cs`, ignored on a near `jmp` in 64-bit mode) move the
//! rel32 along, so a site of L bytes has L placements, each with a window
//! of 256^(L−1−P) landings. A landing must lie where nothing of the program
//! goes: not in or near its image, not where its heap (brk) starts or
//! first grows (1.5 GiB above the image), not below 1 MiB, and in user
//! space; the page is reserved when the
//! probes are built, and a site whose landing cannot be reserved falls back
//! as a site without a jump does.

use iced_x86::Instruction;

use super::jump::JumpCheck;
use super::short::Room;
use super::{bytes_at, xol, Kind, Place, Targets};
use crate::addr::LinkAddr;
use crate::elf::{ElfKind, Image};

/// Bytes of a landing: `jmp qword [rip]` and the trampoline's address.
pub const LANDING: u64 = 14;
/// The prefix that moves the rel32: a `cs` segment override, which a near
/// `jmp` ignores in 64-bit mode (unlike `0x66`, which AMD honours).
pub const PREFIX: u8 = 0x2e;
const PAGE: u64 = 4096;
/// Landings tried per placement, stepping through its window.
const TRIES: u64 = 256;

/// A punned jump for the site `p`, in the function [`start`, `end`)
/// that `check` has decoded; or why not. The bytes it keeps are taken in
/// `room`; `landings` are those chosen so far (link-time [start, end)), to
/// which its own is added.
pub(super) fn site(
    image: &Image,
    p: &Place,
    (start, end): (LinkAddr, u64),
    check: &JumpCheck,
    room: &mut Room,
    landings: &mut Vec<(u64, u64)>,
) -> Result<Kind, String> {
    let s = p.addr.0;
    let insns = check.insns(start);
    let Some(first) = insns.iter().position(|i| i.ip() == s) else {
        return Err("the site is not an instruction boundary".into());
    };
    let (insns, targets) = (&insns[first..], check.targets());
    let lens = displaceable(insns, end, targets, s);
    if lens.is_empty() {
        return Err("nothing under 5 bytes at the site can be displaced".into());
    }
    let bytes = bytes_at(image, p.addr).unwrap_or(&[]);
    let bounds = Bounds::of(image);
    let mut seen = None;
    // Longer first: more bytes of the rel32 are ours.
    for &len in lens.iter().rev() {
        for prefixes in 0..len {
            let next = s + prefixes as u64 + 5;
            let kept = (s + len as u64, next);
            let Some(high) = bytes.get(len..prefixes + 5) else {
                continue;
            };
            if !room.free(kept.0, kept.1) {
                continue;
            }
            let free = len - 1 - prefixes;
            let span = 1u64 << (8 * free);
            let step = (span / TRIES).max(1);
            for v in (0..span).step_by(step as usize) {
                let mut rel = [0u8; 4];
                rel[..free].copy_from_slice(&v.to_le_bytes()[..free]);
                rel[free..].copy_from_slice(high);
                let at = next.wrapping_add(i32::from_le_bytes(rel) as i64 as u64);
                seen.get_or_insert(at);
                let landing = (at, at + LANDING);
                if !bounds.allow(at)
                    || at % PAGE > PAGE - LANDING
                    || landings
                        .iter()
                        .any(|&(a, b)| a < landing.1 && landing.0 < b)
                {
                    continue;
                }
                landings.push(landing);
                room.taken.insert(s, s + len as u64);
                room.taken.insert(kept.0, kept.1);
                return Ok(Kind::JumpPun {
                    len,
                    flags_live: p.addr != start,
                    prefixes,
                    landing: LinkAddr(at),
                });
            }
        }
    }
    Err(match seen {
        Some(at) => format!(
            "no punned jump either: the bytes after it make it land at {} and nearby, \
             where the program, its heap or the kernel's limits are",
            signed(at)
        ),
        None => "no punned jump either: the bytes after it are another probe's".into(),
    })
}

/// The lengths (< 5) of whole instructions from the site at `s` that a
/// punned jump can displace: they relocate, a `call`/`jmp`/`ret` only
/// last, within the function, nothing entering them past `s`.
fn displaceable(insns: &[Instruction], end: u64, targets: &Targets, s: u64) -> Vec<usize> {
    use iced_x86::FlowControl as F;
    let mut lens = Vec::new();
    let mut len = 0;
    for i in insns {
        if i.next_ip() > end || xol::relocatable(i).is_err() {
            break;
        }
        len += i.len();
        if len >= 5 || targets.inside(s, s + len as u64).is_some() {
            break;
        }
        lens.push(len);
        if matches!(
            i.flow_control(),
            F::Call | F::IndirectCall | F::Return | F::UnconditionalBranch | F::IndirectBranch
        ) {
            break;
        }
    }
    lens
}

/// Where landings may go, in link-time addresses of the image.
struct Bounds {
    /// The image's first and last byte.
    lo: u64,
    hi: u64,
    /// Link-time addresses are runtime ones (`ET_EXEC`).
    fixed: bool,
}

/// Room kept clear below the image (the probe area and the counters go
/// there), and above it: the kernel starts the heap (brk) up to 1 GiB
/// after the image (measured here: 0x1a…–0x35… for python3.11, whose
/// image ends at 0xac4000), and it may grow 512 MiB more before a landing
/// would stop it (malloc then goes on with mmap).
const BELOW: u64 = 256 << 20;
const ABOVE: u64 = 1536 << 20;
/// The lowest landing of a fixed image (mmap_min_addr and some).
const LOWEST: u64 = 1 << 20;
/// The top of user space we use.
const TOP: u64 = 0x7fff_0000_0000;

impl Bounds {
    fn of(image: &Image) -> Bounds {
        let lo = image.segments.iter().map(|s| s.vaddr.0).min().unwrap_or(0);
        let hi = image
            .segments
            .iter()
            .map(|s| s.vaddr.0 + s.memsz)
            .max()
            .unwrap_or(0);
        Bounds {
            lo,
            hi,
            fixed: image.kind == ElfKind::Exec,
        }
    }

    /// Whether a landing at `at` stays clear of the image, its heap and
    /// the probe area, and (for a fixed image) lies in user space.
    fn allow(&self, at: u64) -> bool {
        // A landing below a PIE's link-time 0 wraps: compare signed.
        let a = at as i64;
        let near = a >= self.lo as i64 - BELOW as i64 && a < (self.hi + ABOVE) as i64;
        !near && (!self.fixed || (LOWEST..TOP - LANDING).contains(&at))
    }
}

/// A link-time address that may lie below 0 (`-0x…`).
fn signed(at: u64) -> String {
    let a = at as i64;
    if a < 0 {
        format!("-{:#x}", a.unsigned_abs())
    } else {
        format!("{a:#x}")
    }
}
