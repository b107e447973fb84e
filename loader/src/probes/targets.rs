//! Every address of an object where control can arrive other than by
//! falling through from the instruction before: built once per object, so
//! that a jump site is refused when any of them lies inside its displaced
//! bytes (past the first one). Static glibc's `__mempcpy_avx_unaligned_erms`
//! jumps to `__memcpy_avx_unaligned_erms+3`: a per-function look misses it.
//!
//! Sources, each found without running anything:
//! - direct branches and calls, from a decode of every executable section,
//!   restarted at every symbol and FDE start (so one bad decode does not
//!   run on);
//! - addresses of code that instructions take (RIP-relative operands and
//!   immediates pointing into the text: computed gotos, function pointers);
//! - relative jump tables: the 32-bit entries at a RIP-relative `lea`
//!   target outside the text, for as long as they land in the text;
//! - pointers into the text stored in data (aligned 64-bit words of the
//!   allocated sections, which covers absolute jump tables) and the addends
//!   of `R_X86_64_RELATIVE` / `IRELATIVE` relocations (their PIE form);
//! - every symbol (any type) and every `.eh_frame` FDE start;
//! - the landing pads of the LSDAs (`.gcc_except_table`) the FDEs name,
//!   which the unwinder enters by setting RIP.
//!
//! Extra entries only make sites fall back to an `int3`: where in doubt an
//! address goes in.

use goblin::elf::section_header::{SHF_ALLOC, SHF_EXECINSTR, SHT_NOBITS};
use goblin::elf::Elf;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

/// How control gets to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A direct branch or call at this address.
    Branch(u64),
    /// Entry of the relative jump table at this address.
    Table(u64),
    /// The 64-bit word at this address (or a relocation of it) holds it.
    Pointer(u64),
    /// The instruction at this address takes it as an address.
    Address(u64),
    /// A landing pad of the function at this address (its LSDA).
    LandingPad(u64),
    /// An `.eh_frame` FDE starts there.
    Fde,
    /// A symbol has this address.
    Symbol,
}

/// The entry points of one object, sorted by address.
#[derive(Debug, Default)]
pub struct Targets {
    /// Every (address, source), sorted; an address can have several.
    at: Entries,
    /// Whether the data sections were read for pointers (they are not
    /// without section headers): then every code pointer stored in the
    /// file is among the entries.
    data_read: bool,
    /// The relative jump tables read whole (sorted): their entries are
    /// all among `at`.
    tables: Vec<u64>,
    /// The executable sections (or segments), [start, end) sorted: code
    /// without a symbol size ends at its section's end at the latest.
    sections: Vec<(u64, u64)>,
}

/// `[start, end)` of a section and its bytes.
struct Section<'a> {
    addr: u64,
    bytes: &'a [u8],
}

impl Section<'_> {
    fn contains(&self, a: u64) -> bool {
        a >= self.addr && a - self.addr < self.bytes.len() as u64
    }
    fn at(&self, a: u64) -> Option<&[u8]> {
        self.contains(a)
            .then(|| &self.bytes[(a - self.addr) as usize..])
    }
}

/// The first bytes of a cache entry (its format's version in the last).
const MAGIC: &[u8; 8] = b"UPXTGT\x00\x02";

/// Bytes of one entry in a cache entry: address, source tag, value.
const ENTRY: usize = 17;

/// The bytes a cache entry is read from: the file mapped (a run reads the
/// few entries it looks up, not all of them), or a copy.
#[derive(Debug)]
enum Held {
    /// Mapped from the cache.
    Map(memmap2::Mmap),
    /// In memory (the tests' encodings).
    #[cfg(test)]
    Owned(Vec<u8>),
}

impl std::ops::Deref for Held {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Held::Map(m) => m,
            #[cfg(test)]
            Held::Owned(v) => v,
        }
    }
}

/// The (address, source) entries, sorted: built in memory, or read in
/// place from a cache entry's bytes ([`ENTRY`] each, checked whole and
/// sorted when opened).
#[derive(Debug)]
enum Entries {
    Built(Vec<(u64, Source)>),
    Held {
        bytes: Held,
        start: usize,
        len: usize,
    },
}

impl Default for Entries {
    fn default() -> Entries {
        Entries::Built(Vec::new())
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Entries) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i))
    }
}

impl From<Vec<(u64, Source)>> for Entries {
    fn from(v: Vec<(u64, Source)>) -> Entries {
        Entries::Built(v)
    }
}

impl Entries {
    fn len(&self) -> usize {
        match self {
            Entries::Built(v) => v.len(),
            Entries::Held { len, .. } => *len,
        }
    }

    /// Entry `i` (< `len`).
    fn get(&self, i: usize) -> (u64, Source) {
        match self {
            Entries::Built(v) => v[i],
            Entries::Held { bytes, start, .. } => {
                let e = &bytes[start + i * ENTRY..start + (i + 1) * ENTRY];
                let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
                let src = tag_source(e[8], word(&e[9..]))
                    .expect("the tags were checked when the entry was opened");
                (word(&e[..8]), src)
            }
        }
    }

    /// The address of entry `i` (< `len`).
    fn addr(&self, i: usize) -> u64 {
        match self {
            Entries::Built(v) => v[i].0,
            Entries::Held { bytes, start, .. } => {
                let at = start + i * ENTRY;
                u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
            }
        }
    }

    /// The first entry whose address `before` is false of (they are
    /// sorted: `before` is true of a prefix).
    fn partition_point(&self, before: impl Fn(u64) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.addr(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The entries from `i` on.
    fn from(&self, i: usize) -> impl Iterator<Item = (u64, Source)> + '_ {
        (i..self.len()).map(move |k| self.get(k))
    }

    #[cfg(test)]
    fn to_vec(&self) -> Vec<(u64, Source)> {
        self.from(0).collect()
    }
}

/// The source a cache entry's tag and value stand for.
fn tag_source(tag: u8, v: u64) -> Option<Source> {
    Some(match tag {
        0 => Source::Branch(v),
        1 => Source::Table(v),
        2 => Source::Pointer(v),
        3 => Source::Address(v),
        4 => Source::LandingPad(v),
        5 => Source::Fde,
        6 => Source::Symbol,
        _ => return None,
    })
}

/// Most relocations that carry code addresses in PIE/static-pie data.
const R_X86_64_RELATIVE: u32 = 8;
const R_X86_64_IRELATIVE: u32 = 37;
/// Entries of one relative jump table we read at most.
const MAX_TABLE: usize = 4096;

impl Targets {
    /// Collects the entry points of the object in `file` (its bytes).
    #[must_use]
    pub fn build(file: &[u8]) -> Targets {
        Targets::build_on(file, decode_threads())
    }

    /// [`Targets::build`], decoding on at most `threads` threads.
    fn build_on(file: &[u8], threads: usize) -> Targets {
        let Ok(elf) = Elf::parse(file) else {
            return Targets::default();
        };
        let section = |sh: &goblin::elf::SectionHeader| -> Option<Section<'_>> {
            if sh.sh_type == SHT_NOBITS || sh.sh_flags & u64::from(SHF_ALLOC) == 0 {
                return None;
            }
            let start = usize::try_from(sh.sh_offset).ok()?;
            let len = usize::try_from(sh.sh_size).ok()?;
            Some(Section {
                addr: sh.sh_addr,
                bytes: file.get(start..start.checked_add(len)?)?,
            })
        };
        let mut text = Vec::new();
        let mut data = Vec::new();
        for sh in &elf.section_headers {
            if let Some(s) = section(sh) {
                if sh.sh_flags & u64::from(SHF_EXECINSTR) != 0 {
                    text.push(s);
                } else {
                    data.push(s);
                }
            }
        }
        if text.is_empty() {
            // No section headers: the executable segments.
            for ph in elf.program_headers.iter().filter(|p| p.is_executable()) {
                let Ok(start) = usize::try_from(ph.p_offset) else {
                    continue;
                };
                let Some(end) = usize::try_from(ph.p_filesz)
                    .ok()
                    .and_then(|l| start.checked_add(l))
                else {
                    continue;
                };
                if let Some(bytes) = file.get(start..end) {
                    text.push(Section {
                        addr: ph.p_vaddr,
                        bytes,
                    });
                }
            }
        }
        // Most words of the data are no code address: one range check
        // (inclusive, as the ends saturate) rejects them before the
        // sections are looked at.
        let lo = text.iter().map(|s| s.addr).min().unwrap_or(0);
        let hi = text
            .iter()
            .map(|s| s.addr.saturating_add(s.bytes.len() as u64))
            .max()
            .unwrap_or(0);
        let in_text = |a: u64| (lo..=hi).contains(&a) && text.iter().any(|s| s.contains(a));
        let mut at: Vec<(u64, Source)> = Vec::new();

        for table in [&elf.syms, &elf.dynsyms] {
            for s in table.iter() {
                if s.st_shndx != 0 && in_text(s.st_value) {
                    at.push((s.st_value, Source::Symbol));
                }
            }
        }
        if let Some(eh) = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".eh_frame"))
            .and_then(section)
        {
            eh_frame(&eh, &data, &mut at);
        }
        for r in elf.dynrelas.iter().chain(elf.dynrels.iter()) {
            if matches!(r.r_type, R_X86_64_RELATIVE | R_X86_64_IRELATIVE) {
                let a = r.r_addend.unwrap_or(0) as u64;
                if in_text(a) {
                    at.push((a, Source::Pointer(r.r_offset)));
                }
            }
        }
        for s in &data {
            let base = s.addr.next_multiple_of(8);
            let skip = (base - s.addr) as usize;
            for (k, w) in s
                .bytes
                .get(skip..)
                .unwrap_or(&[])
                .chunks_exact(8)
                .enumerate()
            {
                let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
                if in_text(v) {
                    at.push((v, Source::Pointer(base + 8 * k as u64)));
                }
            }
        }

        // Decode each executable section from every known start: the
        // stretches between consecutive starts.
        let mut stretches: Vec<(u64, &[u8])> = Vec::new();
        for s in &text {
            let mut starts: Vec<u64> = at
                .iter()
                .filter(|(a, src)| matches!(src, Source::Symbol | Source::Fde) && s.contains(*a))
                .map(|&(a, _)| a)
                .collect();
            starts.push(s.addr);
            starts.sort_unstable();
            starts.dedup();
            for (k, &from) in starts.iter().enumerate() {
                let to = starts
                    .get(k + 1)
                    .copied()
                    .unwrap_or(s.addr + s.bytes.len() as u64);
                let Some(bytes) = s.at(from) else { continue };
                stretches.push((from, &bytes[..((to - from) as usize).min(bytes.len())]));
            }
        }
        let decoded = decode_all(&stretches, &in_text, threads);

        // A table ends where the next object the code refers to begins.
        let mut refs = Refs::default();
        for (_, r) in &decoded {
            refs.data.extend_from_slice(&r.data);
            refs.tables.extend_from_slice(&r.tables);
        }
        refs.data.sort_unstable();
        refs.data.dedup();
        refs.tables.sort_unstable();
        refs.tables.dedup();
        let mut tables = Vec::new();
        for &base in &refs.tables {
            let Some(s) = data.iter().find(|s| s.contains(base)) else {
                continue;
            };
            let next = refs.data.partition_point(|&a| a <= base);
            let end = refs.data.get(next).copied().unwrap_or(u64::MAX);
            if relative_table(s, base, end, &in_text, &mut at) {
                tables.push(base);
            }
        }

        sort(&mut at);
        let mut lists: Vec<_> = decoded.into_iter().map(|(v, _)| v).collect();
        lists.push(at);
        let at = merge(lists);
        let mut sections: Vec<(u64, u64)> = text
            .iter()
            .map(|s| (s.addr, s.addr + s.bytes.len() as u64))
            .collect();
        sections.sort_unstable();
        Targets {
            at: at.into(),
            data_read: !data.is_empty(),
            tables,
            sections,
        }
    }

    /// The entry points of `image`: kept in the user's cache from an
    /// earlier run on the same file (see `crate::cache`), or built and
    /// kept there.
    #[must_use]
    pub fn of(image: &crate::elf::Image) -> Targets {
        const KIND: &str = "targets";
        let cached = crate::cache::map(KIND, &image.file).map(Held::Map);
        if let Some(t) = cached.and_then(Targets::decode) {
            return t;
        }
        let t = Targets::build(&image.bytes);
        crate::cache::write(KIND, &image.file, &t.encode());
        t
    }

    /// The bytes a cache entry holds: a magic, `data_read`, the counts,
    /// then each entry (address, source tag, source value) and each table,
    /// little-endian.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.at.len() * ENTRY + self.tables.len() * 8);
        out.extend_from_slice(MAGIC);
        out.push(u8::from(self.data_read));
        out.extend_from_slice(&(self.at.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.tables.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.sections.len() as u64).to_le_bytes());
        for (a, src) in self.at.from(0) {
            let (tag, v) = match src {
                Source::Branch(v) => (0u8, v),
                Source::Table(v) => (1, v),
                Source::Pointer(v) => (2, v),
                Source::Address(v) => (3, v),
                Source::LandingPad(v) => (4, v),
                Source::Fde => (5, 0),
                Source::Symbol => (6, 0),
            };
            out.extend_from_slice(&a.to_le_bytes());
            out.push(tag);
            out.extend_from_slice(&v.to_le_bytes());
        }
        for t in &self.tables {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for &(a, b) in &self.sections {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
        out
    }

    /// What [`Targets::encode`] wrote, if `b` is that whole and sorted.
    fn decode(held: Held) -> Option<Targets> {
        let b: &[u8] = &held;
        let rest = b.strip_prefix(MAGIC.as_slice())?;
        let (&data_read, rest) = rest.split_first()?;
        let word =
            |b: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)) };
        let n = usize::try_from(word(rest)?).ok()?;
        let m = usize::try_from(word(rest.get(8..)?)?).ok()?;
        let k = usize::try_from(word(rest.get(16..)?)?).ok()?;
        let rest = rest.get(24..)?;
        let len = n
            .checked_mul(ENTRY)?
            .checked_add(m.checked_mul(8)?)?
            .checked_add(k.checked_mul(16)?)?;
        if rest.len() != len {
            return None;
        }
        let start = b.len() - rest.len();
        let (entries, rest) = rest.split_at(n * ENTRY);
        let (tables, sections) = rest.split_at(m * 8);
        // Every entry's tag known, and each after the one before: then any
        // entry read later is one that was written.
        let mut last: Option<(u64, u8, u64)> = None;
        for e in entries.chunks_exact(ENTRY) {
            let this = (word(&e[..8])?, e[8], word(&e[9..])?);
            tag_source(this.1, this.2)?;
            if last.is_some_and(|l| l >= this) {
                return None;
            }
            last = Some(this);
        }
        let tables: Vec<u64> = tables.chunks_exact(8).map(word).collect::<Option<_>>()?;
        let sections: Vec<(u64, u64)> = sections
            .chunks_exact(16)
            .map(|c| Some((word(&c[..8])?, word(&c[8..])?)))
            .collect::<Option<_>>()?;
        let sorted =
            tables.windows(2).all(|w| w[0] < w[1]) && sections.windows(2).all(|w| w[0] < w[1]);
        let data_read = data_read != 0;
        sorted.then_some(Targets {
            at: Entries::Held {
                bytes: held,
                start,
                len: n,
            },
            data_read,
            tables,
            sections,
        })
    }

    /// How control gets to `a`: every source found, none if it is
    /// reached only by falling through.
    pub fn sources_at(&self, a: u64) -> impl Iterator<Item = Source> + '_ {
        let i = self.at.partition_point(|e| e < a);
        self.at.from(i).take_while(move |e| e.0 == a).map(|e| e.1)
    }

    /// The first symbol or FDE start after `a`: where the code that starts
    /// at `a` ends at the latest.
    #[must_use]
    pub fn next_start(&self, a: u64) -> Option<u64> {
        let i = self.at.partition_point(|e| e <= a);
        self.at
            .from(i)
            .find(|e| matches!(e.1, Source::Symbol | Source::Fde))
            .map(|e| e.0)
    }

    /// The end of the executable section that holds `a`, if one does.
    #[must_use]
    pub fn section_end(&self, a: u64) -> Option<u64> {
        self.sections
            .iter()
            .find(|&&(s, e)| s <= a && a < e)
            .map(|&(_, e)| e)
    }

    /// Whether a relative jump table at `base` (32-bit offsets from it)
    /// was read whole, so that every entry of it is an entry point.
    #[must_use]
    pub fn is_table(&self, base: u64) -> bool {
        self.tables.binary_search(&base).is_ok()
    }

    /// Whether every code address the file stores or takes is an entry:
    /// the data sections were read for pointers, as were the relocations
    /// and the instructions. A code pointer loaded from memory at run time
    /// is then one of the entries.
    #[must_use]
    pub fn knows_stored_pointers(&self) -> bool {
        self.data_read
    }

    /// The first entry point strictly inside `(lo, hi)`, with how control gets there.
    #[must_use]
    pub fn inside(&self, lo: u64, hi: u64) -> Option<(u64, Source)> {
        let i = self.at.partition_point(|e| e <= lo);
        (i < self.at.len())
            .then(|| self.at.get(i))
            .filter(|e| e.0 < hi)
    }
}

/// Data addresses the code refers to (RIP-relative), and those of them
/// loaded with `lea`: the bases of relative jump tables among others.
#[derive(Default)]
struct Refs {
    data: Vec<u64>,
    tables: Vec<u64>,
}

/// The threads a build decodes on: every available core, at most
/// [`MAX_THREADS`].
fn decode_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
}

/// Decodes `stretches` (start address, bytes) on up to `threads` threads,
/// each (this one included) a run of consecutive stretches of about equal
/// bytes, and at least [`MIN_THREAD_BYTES`]: the decode is most of the
/// build. Each run's entries come back sorted (see [`sort`]), with the
/// data it refers to.
fn decode_all(
    stretches: &[(u64, &[u8])],
    in_text: &(dyn Fn(u64) -> bool + Sync),
    threads: usize,
) -> Vec<(Vec<(u64, Source)>, Refs)> {
    let total: usize = stretches.iter().map(|s| s.1.len()).sum();
    let threads = threads.min(total / MIN_THREAD_BYTES).max(1);
    let mut runs = Vec::with_capacity(threads);
    let (mut first, mut bytes) = (0, 0);
    for (k, s) in stretches.iter().enumerate() {
        bytes += s.1.len();
        if runs.len() + 1 < threads && bytes * threads >= total * (runs.len() + 1) {
            runs.push(&stretches[first..=k]);
            first = k + 1;
        }
    }
    if first < stretches.len() {
        runs.push(&stretches[first..]);
    }
    let Some((mine, rest)) = runs.split_first() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = rest
            .iter()
            .map(|run| scope.spawn(|| decode(run, in_text)))
            .collect();
        let mut out = vec![decode(mine, in_text)];
        for h in others {
            out.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}

/// Threads [`decode_all`] uses at most: the decode of a large program's
/// text takes some 20 ms, so more would mostly add start-up and merging.
const MAX_THREADS: usize = 4;

/// Bytes of code a thread gets at least: a thread costs its start and a
/// list of its own to merge, some tenths of a millisecond, so it should
/// take over milliseconds of decoding (256 KiB is about 2 ms).
const MIN_THREAD_BYTES: usize = 256 << 10;

/// The entries of the instructions in `stretches`, sorted, and the data
/// they refer to.
fn decode(stretches: &[(u64, &[u8])], in_text: &dyn Fn(u64) -> bool) -> (Vec<(u64, Source)>, Refs) {
    // About one entry per 14 bytes of code in python3.11: reserving for
    // more saves the growth copies (pages not written are never touched).
    let bytes: usize = stretches.iter().map(|s| s.1.len()).sum();
    let mut at = Vec::with_capacity(bytes / 8);
    let mut refs = Refs::default();
    let mut insn = Instruction::default();
    for &(from, bytes) in stretches {
        let mut d = Decoder::with_ip(64, bytes, from, DecoderOptions::NONE);
        while d.can_decode() {
            d.decode_out(&mut insn);
            instruction(&insn, in_text, &mut refs, &mut at);
        }
    }
    sort(&mut at);
    (at, refs)
}

/// Sorts entries into the order `sort_unstable` gives, about twice as
/// fast: by address alone (one `u64` compare instead of the tuple's,
/// enum included), then each run of one address that is not in order yet
/// by its sources. Calls make long runs, mostly in order already.
fn sort(at: &mut [(u64, Source)]) {
    at.sort_unstable_by_key(|e| e.0);
    for run in at.chunk_by_mut(|a, b| a.0 == b.0) {
        if !run.is_sorted() {
            run.sort_unstable();
        }
    }
}

/// One sorted, deduplicated list of the sorted lists: the others merged
/// into the longest, shortest first (each merge moves what it passes of
/// the merged so far), each from the back into room made at its end. A
/// fresh list to merge into would cost more in page faults than the
/// merge itself.
fn merge(mut lists: Vec<Vec<(u64, Source)>>) -> Vec<(u64, Source)> {
    lists.sort_unstable_by_key(Vec::len);
    let Some(mut all) = lists.pop() else {
        return Vec::new();
    };
    all.reserve(lists.iter().map(Vec::len).sum());
    for b in lists {
        let mut i = all.len();
        all.resize(i + b.len(), (0, Source::Symbol));
        // `all[..i]` and `b[..j]` are left to merge into `all[..k]`.
        let mut k = all.len();
        for j in (0..b.len()).rev() {
            while i > 0 && all[i - 1] > b[j] {
                i -= 1;
                k -= 1;
                all[k] = all[i];
            }
            k -= 1;
            all[k] = b[j];
        }
    }
    all.dedup();
    all
}

/// What one decoded instruction adds.
fn instruction(
    i: &Instruction,
    in_text: &dyn Fn(u64) -> bool,
    refs: &mut Refs,
    at: &mut Vec<(u64, Source)>,
) {
    let ip = i.ip();
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                at.push((i.near_branch_target(), Source::Branch(ip)));
            }
            OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64 => {
                let v = i.immediate(n);
                if in_text(v) {
                    at.push((v, Source::Address(ip)));
                }
            }
            OpKind::Memory if i.is_ip_rel_memory_operand() => {
                let a = i.ip_rel_memory_address();
                if in_text(a) {
                    at.push((a, Source::Address(ip)));
                } else {
                    refs.data.push(a);
                    if i.mnemonic() == Mnemonic::Lea {
                        refs.tables.push(a);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The entries of a relative jump table at `base`: 32-bit offsets from
/// `base`, read up to `end` and while they land in the text. Whether the
/// table was read whole (it did not run into [`MAX_TABLE`]).
fn relative_table(
    s: &Section<'_>,
    base: u64,
    end: u64,
    in_text: &dyn Fn(u64) -> bool,
    at: &mut Vec<(u64, Source)>,
) -> bool {
    let Some(bytes) = s.at(base) else {
        return false;
    };
    let n = usize::try_from((end - base) / 4).unwrap_or(usize::MAX);
    for w in bytes.chunks_exact(4).take(n.min(MAX_TABLE + 1)).enumerate() {
        let (k, w) = w;
        let off = i32::from_le_bytes(w.try_into().unwrap_or([0; 4]));
        let t = base.wrapping_add(off as i64 as u64);
        if !in_text(t) {
            return true;
        }
        if k == MAX_TABLE {
            return false;
        }
        at.push((t, Source::Table(base)));
    }
    true
}

/// FDE starts and the landing pads of their LSDAs.
fn eh_frame(eh: &Section<'_>, data: &[Section<'_>], at: &mut Vec<(u64, Source)>) {
    use gimli::UnwindSection;
    let frame = gimli::EhFrame::new(eh.bytes, gimli::LittleEndian);
    let bases = gimli::BaseAddresses::default().set_eh_frame(eh.addr);
    let mut entries = frame.entries(&bases);
    // A malformed entry ends the walk: what was found so far stays.
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(gimli::EhFrame::cie_from_offset) else {
            continue;
        };
        let start = fde.initial_address();
        at.push((start, Source::Fde));
        if let Some(gimli::Pointer::Direct(lsda)) = fde.lsda() {
            if let Some(s) = data.iter().find(|s| s.contains(lsda)) {
                for pad in landing_pads(s, lsda, start).unwrap_or_default() {
                    at.push((pad, Source::LandingPad(start)));
                }
            }
        }
    }
}

const DW_EH_PE_OMIT: u8 = 0xff;

/// A reader over a section's bytes that knows their addresses.
struct Cursor<'a> {
    s: &'a Section<'a>,
    pos: u64,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.s.at(self.pos)?.first()?;
        self.pos += 1;
        Some(b)
    }
    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b: [u8; N] = self.s.at(self.pos)?.get(..N)?.try_into().ok()?;
        self.pos += N as u64;
        Some(b)
    }
    fn uleb(&mut self) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }
    fn sleb(&mut self) -> Option<i64> {
        let (mut v, mut shift) = (0i64, 0u32);
        loop {
            let b = self.u8()?;
            v |= i64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }
    /// A `DW_EH_PE_*` encoded value (absolute or PC-relative; indirect
    /// values are taken as they are: they name no code).
    fn encoded(&mut self, enc: u8) -> Option<u64> {
        let field = self.pos;
        let v = match enc & 0x0f {
            0x00 | 0x04 => u64::from_le_bytes(self.fixed()?),
            0x01 => self.uleb()?,
            0x02 => u64::from(u16::from_le_bytes(self.fixed()?)),
            0x03 => u64::from(u32::from_le_bytes(self.fixed()?)),
            0x09 => self.sleb()? as u64,
            0x0a => i16::from_le_bytes(self.fixed()?) as i64 as u64,
            0x0b => i32::from_le_bytes(self.fixed()?) as i64 as u64,
            0x0c => i64::from_le_bytes(self.fixed()?) as u64,
            _ => return None,
        };
        Some(match enc & 0x70 {
            0x10 => v.wrapping_add(field),
            _ => v,
        })
    }
}

/// The landing pads of the LSDA at `lsda` (GCC's format: header, then
/// call-site records of start, length, landing pad, action).
fn landing_pads(s: &Section<'_>, lsda: u64, func: u64) -> Option<Vec<u64>> {
    let mut c = Cursor { s, pos: lsda };
    let lp_enc = c.u8()?;
    let lp_start = if lp_enc == DW_EH_PE_OMIT {
        func
    } else {
        c.encoded(lp_enc)?
    };
    if c.u8()? != DW_EH_PE_OMIT {
        c.uleb()?; // offset of the type table
    }
    let cs_enc = c.u8()?;
    let len = c.uleb()?;
    let end = c.pos.checked_add(len)?;
    let mut pads = Vec::new();
    while c.pos < end {
        let _start = c.encoded(cs_enc)?;
        let _len = c.encoded(cs_enc)?;
        let pad = c.encoded(cs_enc)?;
        c.uleb()?; // action
        if pad != 0 {
            pads.push(lp_start.wrapping_add(pad));
        }
    }
    Some(pads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_on_threads_gives_what_one_thread_and_a_plain_sort_give() {
        for path in ["/usr/bin/python3.11", "/usr/bin/bash"] {
            let file = std::fs::read(path).unwrap();
            let (many, one) = (Targets::build_on(&file, 4), Targets::build_on(&file, 1));
            assert!(one.at.len() > 10_000, "{path}: {} entries", one.at.len());
            assert!(many.at == one.at, "{path}: entries differ");
            assert_eq!(many.tables, one.tables, "{path}");
            assert_eq!(many.data_read, one.data_read, "{path}");
        }
        // `sort` and `merge` give what a plain sort and dedup of it all do.
        let file = std::fs::read("/usr/bin/python3.11").unwrap();
        let mut all = Targets::build_on(&file, 1).at.to_vec();
        let lists: Vec<Vec<(u64, Source)>> = all
            .chunks(all.len() / 3 + 1)
            .map(|c| {
                let mut v: Vec<_> = c.iter().rev().copied().collect();
                v.extend_from_slice(&c[..c.len().min(50)]); // duplicates
                sort(&mut v);
                v
            })
            .collect();
        assert!(lists.iter().all(|l| l.is_sorted()));
        all.sort_unstable();
        all.dedup();
        assert!(merge(lists) == all);
    }

    #[test]
    fn landing_pads_of_a_gcc_lsda() {
        // lpstart omitted, no type table, uleb128 call sites:
        // [0x10, +4) pad 0x20; [0x14, +2) no pad; [0x18, +3) pad 0x30.
        let lsda = [
            0xff, 0xff, 0x01, 12, 0x10, 4, 0x20, 0, 0x14, 2, 0, 0, 0x18, 3, 0x30, 1,
        ];
        let s = Section {
            addr: 0x5000,
            bytes: &lsda,
        };
        assert_eq!(landing_pads(&s, 0x5000, 0x1000), Some(vec![0x1020, 0x1030]));
    }

    #[test]
    fn entries_inside_a_range_exclude_its_first_byte() {
        let t = Targets {
            at: vec![
                (0x100, Source::Symbol),
                (0x103, Source::Branch(0x200)),
                (0x103, Source::Pointer(0x300)),
            ]
            .into(),
            data_read: true,
            tables: Vec::new(),
            sections: Vec::new(),
        };
        assert_eq!(t.inside(0x100, 0x105), Some((0x103, Source::Branch(0x200))));
        assert_eq!(t.inside(0x100, 0x103), None);
        assert_eq!(t.inside(0xff, 0x101), Some((0x100, Source::Symbol)));
        let at = |a| t.sources_at(a).collect::<Vec<_>>();
        assert_eq!(at(0x103), [Source::Branch(0x200), Source::Pointer(0x300)]);
        assert_eq!(at(0x101), []);
    }

    #[test]
    fn a_cache_entry_reads_back_whole_or_not_at_all() {
        let file = std::fs::read("/usr/bin/bash").expect("bash");
        let t = Targets::build(&file);
        let b = t.encode();
        let back = Targets::decode(Held::Owned(b.clone())).expect("reads back");
        assert!(back.at == t.at);
        assert!(matches!(back.at, Entries::Held { .. }), "read in place");
        assert_eq!(back.tables, t.tables);
        assert_eq!(back.data_read, t.data_read);
        assert_eq!(back.sections, t.sections);
        assert!(
            Targets::decode(Held::Owned(b[..b.len() - 1].to_vec())).is_none(),
            "short"
        );
        let mut foreign = b.clone();
        foreign[7] ^= 0xff;
        assert!(
            Targets::decode(Held::Owned(foreign)).is_none(),
            "another format"
        );
        let mut unsorted = b;
        unsorted[32..49].copy_from_slice(&[0xff; 17]);
        assert!(
            Targets::decode(Held::Owned(unsorted)).is_none(),
            "a bad entry"
        );
    }
}
