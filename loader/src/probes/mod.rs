//! Probes: specs → sites → out-of-line slots and patched pages.
//!
//! Resolution decodes each probed function once, at startup; nothing on the
//! fault path decodes or allocates. A site is displaced by an `int3`; its
//! instruction runs out of line in a slot of the probe area (within ±2 GiB
//! of the text, so RIP-relative operands and branches relocate), followed by
//! a jump back.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, Formatter, Instruction,
    InstructionBlock, IntelFormatter, MemoryOperand, Mnemonic, OpKind, Register,
};

use crate::addr::{Bias, LinkAddr};
use crate::elf::Image;
use crate::symbols::{Function, Symbols};

pub mod targets;
pub use targets::{Source, Targets};

/// Bytes of one out-of-line slot.
pub const SLOT_BYTES: usize = 128;

/// A probe spec as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// `SYMBOL` or `SYMBOL+OFFSET`.
    Symbol {
        /// Function name (mangled or demangled).
        name: String,
        /// Byte offset into the function.
        offset: u64,
    },
    /// `0xADDR`, a link-time address.
    Addr(u64),
    /// A glob over function names: one probe per match, at offset 0.
    Glob(String),
}

/// Why a probe cannot be placed (exit 125).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A malformed spec.
    #[error("bad probe '{spec}': {why}")]
    BadSpec {
        /// The spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// No such function.
    #[error("no function '{name}' in {program}{hint}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The program.
        program: String,
        /// Close names or the stripped-binary hint.
        hint: String,
    },
    /// A glob matched nothing.
    #[error("probe pattern '{pattern}' matches no function in {program}{hint}")]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// The program.
        program: String,
        /// Where to look instead.
        hint: String,
    },
    /// The function is one the program takes from a shared library.
    #[error(
        "'{name}' is not in {program}: it is defined in a shared library the program loads ({libraries}), \
         and only the main executable can be probed for now"
    )]
    InSharedLibrary {
        /// The name asked for.
        name: String,
        /// The program.
        program: String,
        /// Its `DT_NEEDED` libraries.
        libraries: String,
    },
    /// The offset is inside an instruction.
    #[error(
        "{symbol}+{offset:#x} is not an instruction boundary; the nearest are {before} and {after}"
    )]
    NotBoundary {
        /// Function.
        symbol: String,
        /// Offset asked for.
        offset: u64,
        /// Boundary before, as `sym+0x..`.
        before: String,
        /// Boundary after.
        after: String,
    },
    /// The offset is past the end of the function.
    #[error("{symbol}+{offset:#x} is past the end of the function ({size:#x} bytes)")]
    PastEnd {
        /// Function.
        symbol: String,
        /// Offset asked for.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// An address outside every known function.
    #[error("address {addr:#x} is not inside any function of {program}; pass --unsafe to probe it anyway")]
    OutsideFunctions {
        /// The address.
        addr: u64,
        /// The program.
        program: String,
    },
    /// An address outside the program's text.
    #[error("address {addr:#x} is not in the executable text of {program}")]
    NotText {
        /// The address.
        addr: u64,
        /// The program.
        program: String,
    },
    /// `--probe-mode jump` on a site where a jump is not safe.
    #[error("cannot put a jump at {site}: {why} (use --probe-mode auto or int3)")]
    NoJump {
        /// `sym+0x..`.
        site: String,
        /// Why not.
        why: String,
    },
    /// The program runs a copy of the code elsewhere.
    #[error("cannot probe {site}: {why}")]
    Copied {
        /// `sym+0x..`.
        site: String,
        /// Which code, and why.
        why: String,
    },
    /// The instruction cannot be single-stepped out of line.
    #[error("cannot probe {site}: its instruction `{insn}` {why}")]
    NotRelocatable {
        /// `sym+0x..`.
        site: String,
        /// The instruction, disassembled.
        insn: String,
        /// Why.
        why: String,
    },
}

/// Parses one spec.
pub fn parse(spec: &str) -> Result<Spec, ProbeError> {
    let bad = |why: &str| ProbeError::BadSpec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let s = spec.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16)
            .map(Spec::Addr)
            .map_err(|_| bad("not a hexadecimal address"));
    }
    if s.contains(['*', '?', '[']) {
        glob::Pattern::new(s).map_err(|e| bad(&format!("bad pattern: {e}")))?;
        return Ok(Spec::Glob(s.to_string()));
    }
    if let Some((name, off)) = s.rsplit_once('+') {
        // A suffix that looks numeric must be an offset; anything else (as in
        // C++'s `operator+`) is part of the name.
        let looks_numeric = off.starts_with("0x")
            || off.starts_with("0X")
            || off.starts_with(|c: char| c.is_ascii_digit());
        if looks_numeric && !name.is_empty() {
            let parsed = match off.strip_prefix("0x").or_else(|| off.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => off.parse().ok(),
            };
            return match parsed {
                Some(offset) => Ok(Spec::Symbol {
                    name: name.to_string(),
                    offset,
                }),
                None => Err(bad("the offset is not a number (write 0x1a or 26)")),
            };
        }
    }
    Ok(Spec::Symbol {
        name: s.to_string(),
        offset: 0,
    })
}

/// A resolved probe site.
#[derive(Clone, Debug)]
pub struct Site {
    /// The spec it came from.
    pub spec: String,
    /// The function (display name), or the address for `--unsafe` sites.
    pub symbol: String,
    /// Offset into the function.
    pub offset: u64,
    /// Link-time address.
    pub addr: LinkAddr,
    /// The function it is in (start, size), when known.
    pub function: Option<(LinkAddr, u64)>,
}

impl Site {
    /// `sym+0x..` for messages and the count table.
    #[must_use]
    pub fn label(&self) -> String {
        if self.offset == 0 {
            self.symbol.clone()
        } else {
            format!("{}+{:#x}", self.symbol, self.offset)
        }
    }
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

fn decode_one(bytes: &[u8], ip: u64) -> Instruction {
    let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    d.decode()
}

fn disasm(i: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(i, &mut out);
    out
}

/// Why an instruction cannot run out of line, if it cannot (the kernel's
/// uprobes refuse the same ones).
fn refuse(i: &Instruction) -> Option<&'static str> {
    use Mnemonic as M;
    if i.code() == Code::INVALID {
        return Some("does not decode");
    }
    Some(match i.mnemonic() {
        M::Int3 | M::Int | M::Int1 | M::Into => "raises an interrupt",
        M::Syscall | M::Sysenter | M::Sysexit | M::Sysret | M::Iret | M::Iretd | M::Iretq => {
            "changes privilege level"
        }
        M::Hlt => "halts",
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            "does port I/O"
        }
        M::Ud0 | M::Ud1 | M::Ud2 => "is undefined on purpose",
        M::Xbegin | M::Xabort | M::Xend => "is part of a hardware transaction",
        M::Retf => "is a far return",
        _ if i.is_jmp_far()
            || i.is_call_far()
            || i.is_jmp_far_indirect()
            || i.is_call_far_indirect() =>
        {
            "is a far branch"
        }
        _ => return None,
    })
}

/// Checks that `insn` (at runtime address `ip`) can run in a slot.
fn relocatable(insn: &Instruction) -> Result<(), String> {
    if let Some(why) = refuse(insn) {
        return Err(why.to_string());
    }
    if insn.mnemonic() == Mnemonic::Call
        && insn.op0_kind() == OpKind::Register
        && insn.op0_register() == Register::RSP
    {
        return Err("calls through rsp".into());
    }
    Ok(())
}

/// The out-of-line instructions for a site at runtime address `ip`: the
/// displaced instruction (a `call` becomes push-original-return + jmp, so
/// the callee returns to the original code), then a jump back.
fn xol_block(bytes: &[u8], ip: u64) -> Result<Vec<Instruction>, String> {
    let mut insn = decode_one(bytes, ip);
    relocatable(&insn)?;
    let next = insn.next_ip();
    let mut v = Vec::with_capacity(5);
    if insn.mnemonic() == Mnemonic::Call {
        let mk = |r: Result<Instruction, iced_x86::IcedError>| r.map_err(|e| e.to_string());
        v.push(mk(Instruction::with1(Code::Push_r64, Register::RAX))?);
        v.push(mk(Instruction::with2(
            Code::Mov_r64_imm64,
            Register::RAX,
            next,
        ))?);
        v.push(mk(Instruction::with2(
            Code::Xchg_rm64_r64,
            MemoryOperand::with_base(Register::RSP),
            Register::RAX,
        ))?);
        match insn.code() {
            Code::Call_rel32_64 | Code::Call_rel16 | Code::Call_rel32_32 => v.push(mk(
                Instruction::with_branch(Code::Jmp_rel32_64, insn.near_branch_target()),
            )?),
            Code::Call_rm64 => {
                if insn.op0_kind() == OpKind::Memory && insn.memory_base() == Register::RSP {
                    // The return address we pushed moved rsp by 8.
                    insn.set_memory_displacement64(insn.memory_displacement64().wrapping_add(8));
                }
                insn.set_code(Code::Jmp_rm64);
                v.push(insn);
            }
            _ => return Err("is a call of a kind that cannot be relocated".into()),
        }
    } else {
        v.push(insn);
        v.push(Instruction::with_branch(Code::Jmp_rel32_64, next).map_err(|e| e.to_string())?);
    }
    Ok(v)
}

/// Encodes the slot for a site; the bytes go at runtime address `slot`.
pub fn encode_slot(bytes: &[u8], ip: u64, slot: u64) -> Result<Vec<u8>, String> {
    let block = xol_block(bytes, ip)?;
    let r = BlockEncoder::encode(
        64,
        InstructionBlock::new(&block, slot),
        BlockEncoderOptions::NONE,
    )
    .map_err(|e| format!("cannot be relocated to the probe area: {e}"))?;
    if r.code_buffer.len() > SLOT_BYTES {
        return Err(format!(
            "relocates to {} bytes, more than a slot holds",
            r.code_buffer.len()
        ));
    }
    Ok(r.code_buffer)
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
    decoded: &mut std::collections::HashMap<LinkAddr, Vec<u64>>,
    program: &str,
) -> Result<(), ProbeError> {
    let b = match decoded.entry(f.addr) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
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
    relocatable(&insn).err().map(|why| Unprobeable {
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

/// Resolves specs against the program. With `unsafe_addrs`, an address
/// outside every function is accepted; a warning is returned for it.
pub fn resolve(
    image: &Image,
    syms: &Symbols,
    specs: &[String],
    unsafe_addrs: bool,
) -> Result<(Vec<Site>, Vec<String>), ProbeError> {
    let program = image.path.display().to_string();
    let mut sites: Vec<Site> = Vec::new();
    let mut decoded: std::collections::HashMap<LinkAddr, Vec<u64>> =
        std::collections::HashMap::new();
    let mut outside = Vec::new();
    let mut warnings = Vec::new();
    let mut skipped: Vec<(String, Unprobeable)> = Vec::new();
    let mut matched = std::collections::HashSet::new();
    let add = |spec: &str,
               f: Option<&Function>,
               addr: LinkAddr,
               sites: &mut Vec<Site>|
     -> Result<(), ProbeError> {
        let symbol = f.map_or_else(
            || format!("{:#x}", addr.0),
            |f| f.display_name().to_string(),
        );
        let offset = f.map_or(0, |f| addr.0 - f.addr.0);
        let label = if offset == 0 {
            symbol.clone()
        } else {
            format!("{symbol}+{offset:#x}")
        };
        if let Some(why) = syms.copied(addr) {
            return Err(ProbeError::Copied {
                site: label,
                why: why.into(),
            });
        }
        let bytes = bytes_at(image, addr).ok_or(ProbeError::NotText {
            addr: addr.0,
            program: program.clone(),
        })?;
        let insn = decode_one(bytes, addr.0);
        relocatable(&insn).map_err(|why| ProbeError::NotRelocatable {
            site: label,
            insn: disasm(&insn),
            why,
        })?;
        // Duplicates go after the stable sort below (a linear search here
        // made `'*'` quadratic: seconds for node's 78 000 functions).
        sites.push(Site {
            spec: spec.to_string(),
            symbol,
            offset,
            addr,
            function: f.map(|f| (f.addr, f.size)),
        });
        Ok(())
    };
    for spec in specs {
        match parse(spec)? {
            Spec::Glob(p) => {
                let pat = glob::Pattern::new(&p).map_err(|e| ProbeError::BadSpec {
                    spec: spec.clone(),
                    why: e.to_string(),
                })?;
                let found = syms.matching(&pat);
                if found.is_empty() {
                    return Err(ProbeError::NoMatch {
                        pattern: p,
                        hint: no_match_hint(syms, &program),
                        program,
                    });
                }
                matched.extend(found.iter().map(|f| f.addr));
                for f in found {
                    // A glob places what it can and says what it passed over.
                    if let Some(why) = unprobeable(image, syms, f) {
                        skipped.push((f.display_name().to_string(), why));
                        continue;
                    }
                    let f = if f.size == 0 {
                        syms.sized_at(f.addr).unwrap_or(f)
                    } else {
                        f
                    };
                    add(spec, Some(f), f.addr, &mut sites)?;
                }
            }
            Spec::Symbol { name, offset } => {
                let found = syms.named(&name);
                let Some(&f) = found.first() else {
                    if syms.is_import(&name) {
                        return Err(ProbeError::InSharedLibrary {
                            name,
                            program,
                            libraries: libraries(syms),
                        });
                    }
                    let hint = if !syms.has_symtab {
                        format!(
                            "; the program is stripped (no .symtab), so only its {} exported (.dynsym) functions \
                             can be named — probe a link-time address instead (0x…)",
                            syms.all().len()
                        )
                    } else {
                        let close = syms.close_to(&name, 5);
                        if close.is_empty() && !syms.needed.is_empty() {
                            format!(
                                "; if it is in a shared library the program loads ({}), only the main \
                                 executable can be probed for now",
                                libraries(syms)
                            )
                        } else if close.is_empty() {
                            String::new()
                        } else {
                            format!("; close names: {}", close.join(", "))
                        }
                    };
                    return Err(ProbeError::NotFound {
                        name,
                        program,
                        hint,
                    });
                };
                if offset > 0 {
                    if offset >= f.size {
                        return Err(ProbeError::PastEnd {
                            symbol: f.display_name().into(),
                            offset,
                            size: f.size,
                        });
                    }
                    check_boundary(image, f, offset, &mut decoded, &program)?;
                }
                for &f in &found {
                    add(spec, Some(f), LinkAddr(f.addr.0 + offset), &mut sites)?;
                }
            }
            Spec::Addr(a) => match syms.containing(LinkAddr(a)) {
                Some(f) => {
                    let offset = a - f.addr.0;
                    if offset > 0 {
                        check_boundary(image, f, offset, &mut decoded, &program)?;
                    }
                    add(spec, Some(f), LinkAddr(a), &mut sites)?;
                }
                None if unsafe_addrs => {
                    outside.push(a);
                    add(spec, None, LinkAddr(a), &mut sites)?;
                }
                None => return Err(ProbeError::OutsideFunctions { addr: a, program }),
            },
        }
    }
    // One site per address, from the first spec that named it.
    sites.sort_by_key(|s| s.addr);
    sites.dedup_by_key(|s| s.addr);
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    skipped.dedup();
    if !skipped.is_empty() {
        warnings.push(skipped_summary(&skipped, matched.len()));
    }
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
    Ok((sites, warnings))
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
            ": it has no .symtab and exports no function; its code is in the shared libraries it loads ({}), \
             and only the main executable can be probed for now",
            libraries(syms)
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

/// Runtime address of a site.
#[must_use]
pub fn runtime(site: &Site, bias: Bias) -> u64 {
    bias.apply(site.addr).0
}

/// The bytes a slot is encoded from: the file bytes at the site.
#[must_use]
pub fn site_bytes<'a>(image: &'a Image, site: &Site) -> &'a [u8] {
    let b = bytes_at(image, site.addr).unwrap_or(&[]);
    &b[..b.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            parse("main").unwrap(),
            Spec::Symbol {
                name: "main".into(),
                offset: 0
            }
        );
        assert_eq!(
            parse("main+0x1a").unwrap(),
            Spec::Symbol {
                name: "main".into(),
                offset: 0x1a
            }
        );
        assert_eq!(
            parse("main+26").unwrap(),
            Spec::Symbol {
                name: "main".into(),
                offset: 26
            }
        );
        assert_eq!(parse("0x401000").unwrap(), Spec::Addr(0x401000));
        assert_eq!(parse("PyList_*").unwrap(), Spec::Glob("PyList_*".into()));
        assert_eq!(
            parse("operator+").unwrap(),
            Spec::Symbol {
                name: "operator+".into(),
                offset: 0
            }
        );
        assert!(parse("0xzz").is_err());
        assert!(parse("main+0xzz").is_err());
    }

    #[test]
    fn call_pushes_the_original_return_address() {
        // call rel32 at 0x1000 to 0x2000; slot at 0x10_0000.
        let call = [0xe8, 0xfb, 0x0f, 0x00, 0x00];
        let code = encode_slot(&call, 0x1000, 0x10_0000).unwrap();
        let mut d = Decoder::with_ip(64, &code, 0x10_0000, DecoderOptions::NONE);
        let v: Vec<Instruction> = d.iter().collect();
        assert_eq!(v[0].code(), Code::Push_r64);
        assert_eq!(v[1].immediate64(), 0x1005);
        assert_eq!(v[2].mnemonic(), Mnemonic::Xchg);
        assert_eq!(v[3].near_branch_target(), 0x2000);
    }

    #[test]
    fn rip_relative_operands_keep_their_target() {
        // lea rax, [rip + 0x10] at 0x1000 (next 0x1007): target 0x1017.
        let lea = [0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00];
        let code = encode_slot(&lea, 0x1000, 0x7000_0000).unwrap();
        let mut d = Decoder::with_ip(64, &code, 0x7000_0000, DecoderOptions::NONE);
        let v: Vec<Instruction> = d.iter().collect();
        assert_eq!(v[0].ip_rel_memory_address(), 0x1017);
        assert_eq!(v[1].near_branch_target(), 0x1007);
    }

    #[test]
    fn refuses_what_cannot_run_out_of_line() {
        assert!(encode_slot(&[0x0f, 0x05], 0x1000, 0x2000).is_err()); // syscall
        assert!(encode_slot(&[0xcc], 0x1000, 0x2000).is_err()); // int3
        assert!(encode_slot(&[0x0f, 0x0b], 0x1000, 0x2000).is_err()); // ud2
    }
}

/// How a site is displaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl Kind {
    /// The report's name for it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int3 => "int3",
            Kind::Jump { .. } => "jump",
        }
    }
}

/// Decides whether sites can take a jump, decoding each function once and
/// finding the object's entry points ([`Targets`]) once.
#[derive(Default)]
pub struct JumpCheck {
    /// Per function start: its instructions, or why jumps cannot go in it.
    decoded: std::collections::HashMap<LinkAddr, Result<Vec<Instruction>, String>>,
    /// Where control can arrive in the object, built at the first check.
    targets: Option<Targets>,
}

impl JumpCheck {
    /// Whether `site` can be displaced by a 5-byte jump, and over how many
    /// bytes; otherwise why not. The rule: the displaced instructions are
    /// whole, cover ≥ 5 bytes, stay inside the function and relocate; a
    /// `call`, `jmp` or `ret` among them is the last; nothing in the whole
    /// object enters them other than at their first byte (see [`Targets`]);
    /// the function has no indirect jump whose targets cannot be bounded.
    pub fn check(&mut self, image: &Image, site: &Site) -> Result<Kind, String> {
        let Some((start, size)) = site.function.filter(|&(_, size)| size > 0) else {
            return Err("it is in no function of known size".into());
        };
        let insns = self
            .decoded
            .entry(start)
            .or_insert_with(|| decode_function(image, start, size))
            .as_ref()
            .map_err(Clone::clone)?;
        let end = start.0 + size;
        if site.addr.0 + 5 > end {
            return Err(format!(
                "fewer than 5 bytes from the site to the end of the function ({})",
                end - site.addr.0
            ));
        }
        let first = insns
            .iter()
            .position(|i| i.ip() == site.addr.0)
            .ok_or("the site is not an instruction boundary")?;
        let mut len = 0usize;
        let mut k = first;
        while len < 5 {
            let Some(i) = insns.get(k) else {
                return Err(format!(
                    "fewer than 5 bytes from the site to the end of the function ({len})"
                ));
            };
            if i.next_ip() > end {
                return Err("the displaced bytes would leave the function".into());
            }
            relocatable(i).map_err(|why| format!("`{}` {why}", disasm(i)))?;
            len += i.len();
            use iced_x86::FlowControl as F;
            let ends_flow = matches!(
                i.flow_control(),
                F::Call | F::IndirectCall | F::Return | F::UnconditionalBranch | F::IndirectBranch
            );
            if ends_flow && len < 5 {
                return Err(format!(
                    "`{}` would not be the last displaced instruction",
                    disasm(i)
                ));
            }
            k += 1;
        }
        let (lo, hi) = (site.addr.0, site.addr.0 + len as u64);
        let targets = self
            .targets
            .get_or_insert_with(|| Targets::build(&image.bytes));
        if let Some((t, how)) = targets.inside(lo, hi) {
            return Err(entered(image, site, t, how));
        }
        Ok(Kind::Jump {
            len,
            flags_live: site.addr != start,
        })
    }
}

/// Why a site is refused because control enters its displaced bytes at `t`.
fn entered(image: &Image, site: &Site, t: u64, how: Source) -> String {
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
        // A jump through a register or a computed address (a jump table):
        // its targets cannot be bounded. A jump through a RIP-relative slot
        // (a tail call through the GOT) leaves the function.
        if i.flow_control() == iced_x86::FlowControl::IndirectBranch
            && !i.is_ip_rel_memory_operand()
        {
            return Err(format!(
                "the function has an indirect jump (`{}` at +{:#x}) whose targets cannot be bounded",
                disasm(&i),
                i.ip() - start.0
            ));
        }
        out.push(i);
    }
    Ok(out)
}

/// Where a trampoline counts a hit.
#[derive(Clone, Copy, Debug)]
pub struct Counting {
    /// The site's overflow counter (shared memory): hits of processes
    /// beyond the per-process rows.
    pub counter: u64,
    /// The site's index in a per-process row.
    pub index: u64,
    /// The row page (pid, row): private, wiped on fork, filled by the
    /// monitor on each process's first touch.
    pub cache: u64,
}

/// The trampoline for a jump site at runtime address `ip`, placed at
/// `at`: skip the red zone, count the hit (saving the flags where they may
/// be live), run the displaced instructions, jump back.
pub fn encode_trampoline(
    bytes: &[u8],
    ip: u64,
    len: usize,
    flags_live: bool,
    count: &Counting,
    at: u64,
) -> Result<Vec<u8>, String> {
    let e = |r: Result<Instruction, iced_x86::IcedError>| r.map_err(|e| e.to_string());
    let rsp = |d: i64| MemoryOperand::with_base_displ(Register::RSP, d);
    let rax = |d: i64| MemoryOperand::with_base_displ(Register::RAX, d);
    // Our own instructions get made-up addresses, so the block encoder can
    // resolve the two branches between them.
    const HAVE: u64 = 0xffff_f000_0000_0010;
    const DONE: u64 = 0xffff_f000_0000_0020;
    let locked = |m: MemoryOperand| -> Result<Instruction, String> {
        let mut i = e(Instruction::with1(Code::Inc_rm64, m))?;
        i.set_has_lock_prefix(true);
        Ok(i)
    };
    let mut v = Vec::with_capacity(24);
    v.push(e(Instruction::with2(
        Code::Lea_r64_m,
        Register::RSP,
        rsp(-128),
    ))?);
    if flags_live {
        v.push(Instruction::with(Code::Pushfq));
    }
    v.push(e(Instruction::with1(Code::Push_r64, Register::RAX))?);
    // The hit goes in this process's row, from its row page (filled by the
    // monitor on first touch, wiped on fork); with none, in the site's
    // overflow counter.
    v.push(e(Instruction::with2(
        Code::Mov_r64_imm64,
        Register::RAX,
        count.cache,
    ))?);
    v.push(e(Instruction::with2(
        Code::Mov_r64_rm64,
        Register::RAX,
        rax(8),
    ))?);
    v.push(e(Instruction::with2(
        Code::Test_rm64_r64,
        Register::RAX,
        Register::RAX,
    ))?);
    v.push(e(Instruction::with_branch(Code::Jne_rel32_64, HAVE))?);
    v.push(e(Instruction::with2(
        Code::Mov_r64_imm64,
        Register::RAX,
        count.counter,
    ))?);
    v.push(locked(MemoryOperand::with_base(Register::RAX))?);
    v.push(e(Instruction::with_branch(Code::Jmp_rel32_64, DONE))?);
    let mut have = locked(rax(8 + 8 * count.index as i64))?;
    have.set_ip(HAVE);
    v.push(have);
    let mut done = e(Instruction::with1(Code::Pop_r64, Register::RAX))?;
    done.set_ip(DONE);
    v.push(done);
    if flags_live {
        v.push(Instruction::with(Code::Popfq));
    }
    v.push(e(Instruction::with2(
        Code::Lea_r64_m,
        Register::RSP,
        rsp(128),
    ))?);
    let mut off = 0;
    while off < len {
        let block = xol_block(&bytes[off..], ip + off as u64)?;
        let last = off + block_len(&bytes[off..], ip + off as u64) >= len;
        // xol_block ends each instruction with a jump back to the next one;
        // only the last displaced instruction keeps it.
        let keep = if last { block.len() } else { block.len() - 1 };
        off += block_len(&bytes[off..], ip + off as u64);
        v.extend_from_slice(&block[..keep]);
    }
    let r = BlockEncoder::encode(64, InstructionBlock::new(&v, at), BlockEncoderOptions::NONE)
        .map_err(|e| format!("cannot be relocated to the probe area: {e}"))?;
    if r.code_buffer.len() > SLOT_BYTES {
        return Err(format!(
            "its trampoline takes {} bytes, more than a slot holds",
            r.code_buffer.len()
        ));
    }
    Ok(r.code_buffer)
}

fn block_len(bytes: &[u8], ip: u64) -> usize {
    decode_one(bytes, ip).len()
}

/// The bytes that replace `len` bytes at `ip`: `jmp rel32` to `target`,
/// then `int3` filler (never executed: nothing branches there).
#[must_use]
pub fn jump_patch(ip: u64, len: usize, target: u64) -> Vec<u8> {
    let rel = target.wrapping_sub(ip + 5) as i64 as i32;
    let mut v = vec![0xe9];
    v.extend_from_slice(&rel.to_le_bytes());
    v.resize(len, 0xcc);
    v
}
