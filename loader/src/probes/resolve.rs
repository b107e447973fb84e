//! Resolution: requests → places, each an instruction boundary of a
//! function that is in the text and not copied elsewhere; what a glob
//! passes over is summed up in one warning.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};

use super::{
    bytes_at, decode_one, disasm, short, xol, Location, ObjectId, Place, ProbeError, Request,
};
use crate::addr::LinkAddr;
use crate::elf::Image;
use crate::symbols::{Function, Symbols};

/// What resolution found: the requests, and one place per address (from
/// the first request that named it), sorted by address.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    /// The requests, in the order given.
    pub requests: Vec<Request>,
    /// The places, sorted by address, one per address.
    pub places: Vec<Place>,
    /// What the user must know: globs that passed over functions, `--unsafe` addresses.
    pub warnings: Vec<String>,
}

/// Resolves requests one at a time against the main program, so the first
/// one that fails is the one reported.
pub struct Resolver<'a> {
    image: &'a Image,
    syms: &'a Symbols,
    /// An address outside every function is accepted (with a warning).
    unsafe_addrs: bool,
    program: String,
    requests: Vec<Request>,
    places: Vec<Place>,
    /// Instruction boundaries per function start, decoded once.
    decoded: HashMap<LinkAddr, Vec<u64>>,
    outside: Vec<u64>,
    skipped: Vec<(String, Unprobeable)>,
    matched: HashSet<LinkAddr>,
    /// The request being resolved is traced.
    tracing: bool,
    /// The request being resolved is timed.
    timing: bool,
    /// The request being resolved is a return probe.
    returning: bool,
}

/// Resolves `requests` against the program. With `unsafe_addrs`, an
/// address outside every function is accepted; a warning is returned for it.
pub fn resolve(
    image: &Image,
    syms: &Symbols,
    requests: &[Request],
    unsafe_addrs: bool,
) -> Result<Resolution, ProbeError> {
    let mut r = Resolver::new(image, syms, unsafe_addrs);
    for q in requests {
        r.add(q.clone())?;
    }
    Ok(r.finish())
}

impl<'a> Resolver<'a> {
    /// A resolver for the program `image` with its symbols.
    #[must_use]
    pub fn new(image: &'a Image, syms: &'a Symbols, unsafe_addrs: bool) -> Resolver<'a> {
        Resolver {
            image,
            syms,
            unsafe_addrs,
            program: image.path.display().to_string(),
            requests: Vec::new(),
            places: Vec::new(),
            decoded: HashMap::new(),
            outside: Vec::new(),
            skipped: Vec::new(),
            matched: HashSet::new(),
            tracing: false,
            timing: false,
            returning: false,
        }
    }

    /// Resolves one request.
    pub fn add(&mut self, request: Request) -> Result<(), ProbeError> {
        let (image, syms) = (self.image, self.syms);
        let index = self.requests.len();
        self.tracing = request.trace.is_some();
        self.timing = request.latency;
        self.returning = request.ret.is_some();
        match &request.location {
            Location::Glob(p) => {
                let pat = glob::Pattern::new(p).map_err(|e| ProbeError::BadSpec {
                    spec: request.spec.clone(),
                    why: e.to_string(),
                })?;
                let found = syms.matching(&pat);
                if found.is_empty() {
                    return Err(ProbeError::NoMatch {
                        pattern: p.clone(),
                        hint: no_match_hint(syms, &self.program),
                        program: self.program.clone(),
                    });
                }
                self.matched.extend(found.iter().map(|f| f.addr));
                for f in found {
                    // A glob places what it can and says what it passed over.
                    if let Some(why) = unprobeable(image, syms, f) {
                        self.skipped.push((f.display_name().to_string(), why));
                        continue;
                    }
                    let f = if f.size == 0 {
                        syms.sized_at(f.addr).unwrap_or(f)
                    } else {
                        f
                    };
                    self.place(index, Some(f), f.addr)?;
                }
            }
            Location::Symbol(name) => self.symbol(index, name, 0)?,
            Location::SymbolOffset(name, offset) => self.symbol(index, name, *offset)?,
            &Location::Address(a) => match syms.containing(LinkAddr(a)) {
                Some(f) => {
                    let offset = a - f.addr.0;
                    if offset > 0 {
                        check_boundary(image, f, offset, &mut self.decoded, &self.program)?;
                    }
                    self.place(index, Some(f), LinkAddr(a))?;
                }
                None if self.unsafe_addrs => {
                    self.outside.push(a);
                    self.place(index, None, LinkAddr(a))?;
                }
                None => {
                    return Err(ProbeError::OutsideFunctions {
                        addr: a,
                        program: self.program.clone(),
                    })
                }
            },
        }
        self.requests.push(request);
        Ok(())
    }

    /// `name+offset`, in every function of that name.
    fn symbol(&mut self, index: usize, name: &str, offset: u64) -> Result<(), ProbeError> {
        let (image, syms) = (self.image, self.syms);
        let found = syms.named(name);
        let Some(&f) = found.first() else {
            return Err(not_found(syms, name, &self.program));
        };
        if offset > 0 {
            if offset >= f.size {
                return Err(ProbeError::PastEnd {
                    symbol: f.display_name().into(),
                    offset,
                    size: f.size,
                });
            }
            check_boundary(image, f, offset, &mut self.decoded, &self.program)?;
        }
        for &f in &found {
            self.place(index, Some(f), LinkAddr(f.addr.0 + offset))?;
        }
        Ok(())
    }

    /// Adds the place at `addr` (in `f`, when known) if a probe can go there.
    fn place(
        &mut self,
        request: usize,
        f: Option<&Function>,
        addr: LinkAddr,
    ) -> Result<(), ProbeError> {
        let symbol = f.map_or_else(
            || format!("{:#x}", addr.0),
            |f| f.display_name().to_string(),
        );
        let offset = f.map_or(0, |f| addr.0 - f.addr.0);
        let place = Place {
            object: ObjectId::MAIN,
            addr,
            symbol,
            offset,
            function: f.map(|f| (f.addr, f.size)),
            request,
            trace: self.tracing.then_some(request),
            latency: self.timing.then_some(request),
            ret: self.returning.then_some(request),
        };
        if place.latency.is_some() && offset != 0 {
            return Err(ProbeError::BadSpec {
                spec: self
                    .requests
                    .get(request)
                    .map_or_else(String::new, |r| r.spec.clone()),
                why: format!(
                    "{} whole functions, and {} is inside one",
                    if self.returning
                        && self
                            .requests
                            .get(request)
                            .is_some_and(|r| r.trace.is_none() && r.spec.contains("%return"))
                    {
                        "a return probe traces the returns of"
                    } else {
                        "--latency times"
                    },
                    place.label()
                ),
            });
        }
        if let Some(why) = self.syms.copied(addr) {
            return Err(ProbeError::Copied {
                site: place.label(),
                why: why.into(),
            });
        }
        let bytes = bytes_at(self.image, addr).ok_or_else(|| ProbeError::NotText {
            addr: addr.0,
            program: self.program.clone(),
        })?;
        let insn = decode_one(bytes, addr.0);
        xol::relocatable(&insn).map_err(|why| ProbeError::NotRelocatable {
            site: place.label(),
            insn: disasm(&insn),
            why,
        })?;
        // Duplicates go after the stable sort in `finish` (a linear search
        // here made `'*'` quadratic: seconds for node's 78 000 functions).
        self.places.push(place);
        Ok(())
    }

    /// The places, one per address, and the warnings.
    #[must_use]
    pub fn finish(mut self) -> Resolution {
        let mut warnings = Vec::new();
        // One place per address, from the first request that named it,
        // traced if any request that named it is. Of a request's names for
        // one address (aliases, as libc's `malloc` and `__libc_malloc`),
        // the public one: without a leading underscore, then the shortest.
        let public = |p: &Place| (p.symbol.starts_with('_'), p.symbol.len());
        self.places.sort_by(|a, b| {
            (a.addr, a.request)
                .cmp(&(b.addr, b.request))
                .then_with(|| public(a).cmp(&public(b)))
        });
        self.places.dedup_by(|later, first| {
            let same = later.addr == first.addr;
            if same && first.trace.is_none() {
                first.trace = later.trace;
            }
            if same && first.latency.is_none() {
                first.latency = later.latency;
            }
            if same && first.ret.is_none() {
                first.ret = later.ret;
            }
            same
        });
        self.skipped.sort_by(|a, b| a.0.cmp(&b.0));
        self.skipped.dedup();
        if !self.skipped.is_empty() {
            warnings.push(skipped_summary(&self.skipped, self.matched.len()));
        }
        let outside = &self.outside;
        if !outside.is_empty() {
            let shown: Vec<String> = outside.iter().take(3).map(|a| format!("{a:#x}")).collect();
            let more = if outside.len() > 3 {
                format!(" and {} more", outside.len() - 3)
            } else {
                String::new()
            };
            warnings.push(format!(
                "probing {}{more} outside every known function (--unsafe): an address that is not the start of \
                 an instruction will break the program",
                shown.join(", ")
            ));
        }
        Resolution {
            requests: self.requests,
            places: self.places,
            warnings,
        }
    }
}

/// No function `name`: in a shared library, or close names, or the
/// stripped-binary hint.
fn not_found(syms: &Symbols, name: &str, program: &str) -> ProbeError {
    if syms.is_import(name) {
        return ProbeError::InSharedLibrary {
            name: name.into(),
            program: program.into(),
            libraries: libraries(syms),
        };
    }
    let close = syms.close_to(name, 5);
    let hint = if !syms.has_symtab {
        format!(
            "; it is stripped (no .symtab), so only its {} exported (.dynsym) functions \
             can be named — probe a link-time address instead (0x…){}",
            syms.all().len(),
            if close.is_empty() {
                String::new()
            } else {
                format!("; close names: {}", close.join(", "))
            }
        )
    } else {
        if close.is_empty() && !syms.needed.is_empty() {
            format!(
                "; if it is in a shared library the program loads ({}), name it as \
                 OBJECT:{name} (e.g. {}:{name})",
                libraries(syms),
                syms.needed.first().map_or("libc.so.6", String::as_str)
            )
        } else if close.is_empty() {
            String::new()
        } else {
            format!("; close names: {}", close.join(", "))
        }
    };
    ProbeError::NotFound {
        name: name.into(),
        program: program.into(),
        hint,
    }
}

/// Instruction boundaries of a function, as offsets.
fn boundaries(f: &Function, bytes: &[u8]) -> Vec<u64> {
    let len = (f.size as usize).min(bytes.len());
    let mut d = Decoder::with_ip(64, &bytes[..len], f.addr.0, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut insn = Instruction::default();
    while d.can_decode() {
        out.push(d.ip() - f.addr.0);
        d.decode_out(&mut insn);
        if insn.code() == Code::INVALID {
            break;
        }
    }
    out
}

/// Checks that `offset` is an instruction boundary of `f`, decoding each
/// function once however many specs name it.
fn check_boundary(
    image: &Image,
    f: &Function,
    offset: u64,
    decoded: &mut HashMap<LinkAddr, Vec<u64>>,
    program: &str,
) -> Result<(), ProbeError> {
    let b = match decoded.entry(f.addr) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let bytes = bytes_at(image, f.addr).ok_or(ProbeError::NotText {
                addr: f.addr.0,
                program: program.into(),
            })?;
            e.insert(boundaries(f, bytes))
        }
    };
    if b.binary_search(&offset).is_ok() {
        return Ok(());
    }
    let name = f.display_name();
    let before = b
        .iter()
        .rev()
        .find(|&&o| o < offset)
        .map_or("(none)".into(), |o| format!("{name}+{o:#x}"));
    let after = b
        .iter()
        .find(|&&o| o > offset)
        .map_or("(none)".into(), |o| format!("{name}+{o:#x}"));
    Err(ProbeError::NotBoundary {
        symbol: name.into(),
        offset,
        before,
        after,
    })
}

/// Why a probe cannot be placed at a function's entry: what a glob passes
/// over, and `--list` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unprobeable {
    /// The kind of reason, shared by many functions (for the summary).
    pub kind: &'static str,
    /// The reason for this function.
    pub detail: String,
}

/// Why no probe can go at the entry of `f`, if none can. A zero-size
/// symbol with a sized function at the same address is that function; one
/// without (a marker, or hand-written code without `.size`) can be probed
/// where its first instruction can (with an `int3`).
#[must_use]
pub fn unprobeable(image: &Image, syms: &Symbols, f: &Function) -> Option<Unprobeable> {
    let f = if f.size == 0 {
        syms.sized_at(f.addr).unwrap_or(f)
    } else {
        f
    };
    if let Some(why) = syms.copied(f.addr) {
        return Some(Unprobeable {
            kind: "copied and run elsewhere by the program",
            detail: why.into(),
        });
    }
    let Some(bytes) = bytes_at(image, f.addr) else {
        return Some(Unprobeable {
            kind: "not in the executable text",
            detail: "it is not in the executable text".into(),
        });
    };
    let end = if f.size == 0 {
        bytes.len()
    } else {
        bytes.len().min(f.size as usize)
    };
    let insn = decode_one(&bytes[..end], f.addr.0);
    xol::relocatable(&insn).err().map(|why| Unprobeable {
        kind: "first instruction cannot run out of line",
        detail: format!("its first instruction `{}` {why}", disasm(&insn)),
    })
}

/// The one warning about what globs passed over: each kind of reason
/// with a few of the functions.
fn skipped_summary(skipped: &[(String, Unprobeable)], matched: usize) -> String {
    let mut kinds: Vec<&str> = skipped.iter().map(|(_, u)| u.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let groups: Vec<String> = kinds
        .iter()
        .map(|&k| {
            let names: Vec<&str> = skipped
                .iter()
                .filter(|(_, u)| u.kind == k)
                .map(|(n, _)| n.as_str())
                .collect();
            let shown: Vec<String> = names.iter().take(4).map(|n| short(n, 60)).collect();
            let more = if names.len() > 4 {
                format!(" and {} more", names.len() - 4)
            } else {
                String::new()
            };
            format!("{k}: {}{more}", shown.join(", "))
        })
        .collect();
    format!(
        "the probe patterns skipped {} of the {matched} functions they match, which cannot be probed \
         (`uprobe-exec --list -p PATTERN PROGRAM` says why): {}",
        skipped.len(),
        groups.join("; ")
    )
}

/// The shared libraries the program names, for messages.
fn libraries(syms: &Symbols) -> String {
    if syms.needed.is_empty() {
        "none named in its dynamic section".into()
    } else {
        syms.needed.join(", ")
    }
}

/// What to say when a pattern matches nothing.
fn no_match_hint(syms: &Symbols, program: &str) -> String {
    if syms.all().is_empty() && !syms.needed.is_empty() {
        format!(
            ": it has no .symtab and exports no function; its code is in the shared libraries it loads ({}): \
             name one as OBJECT:PATTERN (e.g. '{}:*')",
            libraries(syms),
            syms.needed.first().map_or("libc.so.6", String::as_str)
        )
    } else if !syms.has_symtab {
        format!(
            ": it is stripped (no .symtab), so only its {} exported (.dynsym) functions can be matched \
             (see `uprobe-exec --list {program}`)",
            syms.all().len()
        )
    } else {
        format!(" (see `uprobe-exec --list {program}`)")
    }
}
