//! Probes: specs → sites → out-of-line slots, trampolines and patches.
//!
//! ```text
//!  spec ──parse──▶ Location ──resolve──▶ Place ──choose──▶ Site ──generate──▶ area code + patches
//!  (spec.rs)                 (resolve.rs)      (jump.rs)        (code.rs: xol.rs, trampoline.rs)
//! ```
//!
//! Resolution decodes each probed function once, at startup; nothing on the
//! fault path decodes or allocates. A site is displaced by a `jmp` to its
//! trampoline where that is safe ([`JumpCheck`]), by an `int3` otherwise;
//! either way its instructions run out of line in its slot of the probe
//! area (within ±2 GiB of the text, so RIP-relative operands and branches
//! relocate), followed by a jump back. The area's layout is
//! `uprobe_runtime::area`'s.

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

use crate::addr::{Bias, LinkAddr};
use crate::elf::Image;
use serde::{Deserialize, Serialize};

mod code;
pub mod detour;
mod emit;
mod indirect;
mod jump;
mod latency;
mod object;
mod pun;
mod resolve;
mod short;
mod spec;
pub mod targets;
mod timed;
mod trampoline;
mod xol;

pub use code::{generate, landing_pages, object_code, object_routines, ObjectCalls, ObjectSite};
pub use emit::{Tid, EMIT_BYTES};
pub use latency::{Timing, LATENCY_BYTES};

/// The event routine's record flags (see `emit.rs`).
pub mod emit_flags {
    pub use super::emit::{IS_STR, UNREADABLE};
}
pub use jump::{choose, decide, Chosen, JumpCheck};
pub use object::{linked, Linked, ObjectPattern};
pub use resolve::{resolve, unprobeable, Resolution, Resolver};
pub use short::Evicted;
pub use spec::{ArgType, Location, TraceSpec, ARG_REGISTERS};
pub use targets::{Source, Targets};
pub use trampoline::warm_up;

pub use crate::error::ProbeError;

/// One probe as asked for: where, and the words it was asked in (which
/// the report repeats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The spec as written.
    pub spec: String,
    /// The object it is in (`OBJECT:SPEC`); `None`: the program.
    pub object: Option<ObjectPattern>,
    /// What it says.
    pub location: Location,
    /// Traced (`--trace`): each hit is an event, with these arguments.
    pub trace: Option<Vec<ArgType>>,
    /// Timed (`--latency`, or a return probe): each call of the
    /// function, entry to return.
    pub latency: bool,
    /// A return probe (`--trace 'f%return(TYPE)'`): each return is an
    /// event, with the value returned shown as this type.
    pub ret: Option<ArgType>,
}

impl Request {
    /// Parses a spec (see [`Location`]'s grammar).
    pub fn parse(spec: impl Into<String>) -> Result<Request, ProbeError> {
        let spec = spec.into();
        let (object, rest) = split_object(&spec)?;
        let location = rest.parse().map_err(|e| in_spec(e, &spec))?;
        Ok(Request {
            spec,
            object,
            location,
            trace: None,
            latency: false,
            ret: None,
        })
    }

    /// Parses a timed spec (`--latency`): a [`Location`] naming functions.
    pub fn parse_latency(spec: impl Into<String>) -> Result<Request, ProbeError> {
        Ok(Request {
            latency: true,
            ..Request::parse(spec)?
        })
    }

    /// Parses a traced spec: `SPEC` or `SPEC(TYPE, …)` (see [`TraceSpec`]).
    pub fn parse_trace(spec: impl Into<String>) -> Result<Request, ProbeError> {
        let spec = spec.into();
        let (object, rest) = split_object(&spec)?;
        let t: TraceSpec = rest.parse().map_err(|e| in_spec(e, &spec))?;
        // A return probe times its function: the duration comes with
        // each return.
        Ok(Request {
            spec,
            object,
            location: t.location,
            trace: t.ret.is_none().then_some(t.args),
            latency: t.ret.is_some(),
            ret: t.ret,
        })
    }
}

/// `OBJECT:SPEC` split (see `object::split`), or why it is malformed.
pub(crate) fn split_object(spec: &str) -> Result<(Option<ObjectPattern>, &str), ProbeError> {
    object::split(spec).map_err(|why| ProbeError::BadSpec {
        spec: spec.to_string(),
        why,
    })
}

/// A malformed SPEC's error, naming the whole `OBJECT:SPEC`.
fn in_spec(e: ProbeError, spec: &str) -> ProbeError {
    match e {
        ProbeError::BadSpec { why, .. } => ProbeError::BadSpec {
            spec: spec.to_string(),
            why,
        },
        other => other,
    }
}

impl From<Location> for Request {
    fn from(location: Location) -> Request {
        Request {
            object: None,
            spec: location.to_string(),
            location,
            trace: None,
            latency: false,
            ret: None,
        }
    }
}

/// An object of the program's address space that probes go in. Only the
/// main program for now.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ObjectId(pub u32);

impl ObjectId {
    /// The program itself.
    pub const MAIN: ObjectId = ObjectId(0);
}

/// What a probe does when hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Count the hit (per process, in the shared counters).
    #[default]
    Count,
    /// Count it, and write it to the event ring with its thread, time and
    /// argument registers (jump sites only, for now).
    Trace {
        /// The arguments read as strings (bit `i`: argument `i`).
        strings: u8,
    },
    /// An exit of timed function `func` (a `ret` or a tail call): time the
    /// call that ends here. Counts nothing, and is no probe of the report.
    Exit {
        /// The function's index among the timed ones.
        func: u32,
    },
}

impl Action {
    /// Whether hits become events.
    #[must_use]
    pub fn traced(self) -> bool {
        matches!(self, Action::Trace { .. })
    }

    /// The arguments read as strings (bit `i`: argument `i`).
    #[must_use]
    pub fn strings(self) -> u8 {
        match self {
            Action::Trace { strings } => strings,
            Action::Count | Action::Exit { .. } => 0,
        }
    }
}

/// How probe sites are displaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeMode {
    /// A jump to a trampoline where that is safe, an int3 elsewhere.
    #[default]
    Auto,
    /// Always an int3.
    Int3,
    /// Always a jump; a site where it is not safe is an error.
    Jump,
}

/// A resolved probe location: one instruction of an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The object it is in.
    pub object: ObjectId,
    /// Link-time address of the instruction.
    pub addr: LinkAddr,
    /// The function (display name), or the address for `--unsafe` sites.
    pub symbol: String,
    /// Offset into the function.
    pub offset: u64,
    /// The function it is in (start, size), when known.
    pub function: Option<(LinkAddr, u64)>,
    /// The first request that named it (its index in [`Resolution::requests`]).
    pub request: usize,
    /// The first traced request that named it (it need not be the first
    /// request), whose argument types its events have.
    pub trace: Option<usize>,
    /// A function timed (`--latency` or a return probe): the first
    /// request that asked. On an exit site, the function's entry is the
    /// one that says.
    pub latency: Option<usize>,
    /// A function whose returns are traced: the first return probe that
    /// named it, whose type its return events show.
    pub ret: Option<usize>,
}

impl Place {
    /// `sym+0x..` for messages and the count table.
    #[must_use]
    pub fn label(&self) -> String {
        if self.offset == 0 {
            self.symbol.clone()
        } else {
            format!("{}+{:#x}", self.symbol, self.offset)
        }
    }

    /// Runtime address, for an object placed with `bias`.
    #[must_use]
    pub fn runtime(&self, bias: Bias) -> u64 {
        bias.apply(self.addr).0
    }

    /// The file bytes its code is generated from: up to 32 (a jump that
    /// also holds a pad displaces up to 24), fewer at the end of its
    /// segment.
    #[must_use]
    pub fn bytes<'a>(&self, image: &'a Image) -> &'a [u8] {
        code_at(image, self.addr)
    }
}

/// A probe site: where, how it is displaced, and what a hit does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Where.
    pub place: Place,
    /// How it is displaced.
    pub kind: Kind,
    /// What a hit does.
    pub action: Action,
    /// The entry of timed function `i` (`--latency`): a hit also starts
    /// timing the call.
    pub timed: Option<u32>,
}

impl Site {
    /// The object it is in.
    #[must_use]
    pub fn object(&self) -> ObjectId {
        self.place.object
    }

    /// Link-time address.
    #[must_use]
    pub fn addr(&self) -> LinkAddr {
        self.place.addr
    }

    /// `sym+0x..` for messages and the count table.
    #[must_use]
    pub fn label(&self) -> String {
        self.place.label()
    }
}

/// How a site is displaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// An `int3`, handled by the in-program trap handler.
    Int3,
    /// A `jmp rel32` to a per-site trampoline over `len` bytes of whole
    /// instructions; `flags_live`: the trampoline preserves the flags.
    Jump {
        /// Displaced bytes (≥ 5).
        len: usize,
        /// Not at a function entry: the flags may be live.
        flags_live: bool,
    },
    /// A `jmp rel32` to a per-site trampoline over the function's last
    /// `len` (< 5) bytes of instructions, which end in a `ret` or `jmp`,
    /// and `pad` bytes of the alignment padding after them (nops or int3s
    /// that nothing enters).
    JumpPadding {
        /// Displaced instruction bytes (< 5).
        len: usize,
        /// Padding bytes the jump covers (`len + pad` = 5).
        pad: usize,
        /// Not at a function entry: the flags may be live.
        flags_live: bool,
    },
    /// A 2-byte `jmp rel8` over `len` (≥ 2) bytes of whole instructions,
    /// to a `jmp rel32` to the site's trampoline at `pad`, within 127
    /// bytes, in bytes that no longer run (see `short.rs`).
    JumpShort {
        /// Displaced bytes (≥ 2).
        len: usize,
        /// Not at a function entry: the flags may be live.
        flags_live: bool,
        /// Where the 5-byte `jmp rel32` to the trampoline goes.
        pad: LinkAddr,
        /// Whose bytes those are.
        via: Via,
    },
    /// A `jmp rel32` punned over the site's `len` (< 5) bytes and the bytes
    /// after them, which stay as they are: its rel32 ends in them, so it
    /// lands where they say, at `landing`, where a mapping of ours jumps on
    /// to the trampoline (see `pun.rs`).
    JumpPun {
        /// Displaced bytes (1–4).
        len: usize,
        /// Not at a function entry: the flags may be live.
        flags_live: bool,
        /// Ignored prefixes before the `jmp` (they move the rel32 along).
        prefixes: usize,
        /// Where it lands (link-time address).
        landing: LinkAddr,
    },
}

/// Where the pad of a [`Kind::JumpShort`] lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// In alignment padding after a function that never runs on into it.
    Padding,
    /// In the dead bytes of another jump site, past its own `jmp`: that
    /// site displaces enough instructions to hold it.
    Displaced,
    /// In the dead bytes of an evicted neighbour ([`Evicted`]): code
    /// nearby that runs out of line behind a jump of its own.
    Evicted,
}

impl Kind {
    /// The report's name for it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int3 => "int3",
            Kind::Jump { .. } => "jump",
            Kind::JumpPadding { .. } => "jump-padding",
            Kind::JumpShort {
                via: Via::Padding, ..
            } => "jump-short-padding",
            Kind::JumpShort {
                via: Via::Displaced,
                ..
            } => "jump-short-displaced",
            Kind::JumpShort {
                via: Via::Evicted, ..
            } => "jump-short-evicted",
            Kind::JumpPun { .. } => "jump-pun",
        }
    }

    /// A jump's displaced instruction bytes and whether the flags may be
    /// live there; `None` for an `int3`.
    #[must_use]
    pub fn jump(self) -> Option<(usize, bool)> {
        match self {
            Kind::Int3 => None,
            Kind::Jump { len, flags_live }
            | Kind::JumpPadding {
                len, flags_live, ..
            }
            | Kind::JumpShort {
                len, flags_live, ..
            }
            | Kind::JumpPun {
                len, flags_live, ..
            } => Some((len, flags_live)),
        }
    }

    /// The bytes of the text the patch covers.
    #[must_use]
    pub fn patch_len(self) -> usize {
        match self {
            Kind::Int3 => 1,
            Kind::Jump { len, .. } => len,
            Kind::JumpPadding { len, pad, .. } => len + pad,
            Kind::JumpShort { len, .. } | Kind::JumpPun { len, .. } => len,
        }
    }
}

/// `s` cut to at most `max` characters, keeping its start and its end.
#[must_use]
pub fn short(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let tail = max / 3;
    let head = max - 1 - tail;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// The file bytes at a link-time address, up to the end of its segment.
fn bytes_at(image: &Image, a: LinkAddr) -> Option<&[u8]> {
    let s = image
        .segments
        .iter()
        .find(|s| s.exec && a.0 >= s.vaddr.0 && a.0 < s.vaddr.0 + s.filesz)?;
    let off = (s.offset + (a.0 - s.vaddr.0)) as usize;
    let end = (s.offset + s.filesz) as usize;
    image.bytes.get(off..end)
}

/// The file bytes at `a` that code is generated from: up to 32.
fn code_at(image: &Image, a: LinkAddr) -> &[u8] {
    let b = bytes_at(image, a).unwrap_or(&[]);
    &b[..b.len().min(32)]
}

fn decode_one(bytes: &[u8], ip: u64) -> Instruction {
    let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    d.decode()
}

fn disasm(i: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(i, &mut out);
    out
}
