//! Plan: where every piece of the target's address space goes, decided in
//! the monitor before the fork so that both sides agree on every address.
//!
//! Each planned area is first *reserved* in the monitor with a `PROT_NONE`
//! mapping, which keeps the monitor (and the library's other threads) from
//! placing anything there until the child has mapped over it.
//!
//! Two steps, one way: a [`Draft`] places every image and chooses the probe
//! area's address; the probes' code is generated for that address and handed
//! down; [`Draft::finish`] fixes the text, patches included, in a [`Plan`],
//! which nothing patches afterwards.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use rustix::mm::ProtFlags;
use uprobe_runtime::{TextImage, TextRange, PAGE_SIZE};

use crate::addr::{page_down, page_up, Bias, RuntimeAddr};
use crate::elf::{ElfKind, Image};
use crate::error::{Error, Result};
use crate::layout::Aslr;

mod objects_area;
mod probe_area;

pub use crate::sys::mm::Reservation;
pub use objects_area::{within_reach, ObjectsArea, Request as MapRequest};
pub use probe_area::ProbeArea;

/// How the child creates one mapping.
#[derive(Clone, Copy, Debug)]
pub enum MapSource {
    /// Anonymous memory (text served by uffd, bss).
    Anon,
    /// A private mapping of `fd` at `offset`.
    File {
        /// The image's file.
        fd: RawFd,
        /// Page-aligned file offset.
        offset: u64,
    },
}

/// One `mmap(MAP_FIXED)` the child performs, then zeroes `[zero_from, zero_to)`.
#[derive(Clone, Copy, Debug)]
pub struct MapOp {
    /// First byte (page aligned).
    pub addr: u64,
    /// Length (page multiple).
    pub len: u64,
    /// Protection.
    pub prot: ProtFlags,
    /// Where the bytes come from.
    pub source: MapSource,
    /// Start of the bytes to zero after mapping (the tail of the last file page of a writable segment).
    pub zero_from: u64,
    /// End of the bytes to zero.
    pub zero_to: u64,
}

/// An image placed in the target.
pub struct Placed {
    /// The parsed file.
    pub image: Image,
    /// Runtime = link + bias.
    pub bias: Bias,
    /// Holds the area until the fork.
    pub reservation: Reservation,
    /// Not where the kernel would have put it (our own mappings were
    /// there): the address the kernel would have chosen.
    pub displaced_from: Option<u64>,
}

impl Placed {
    /// The image's entry point in the target.
    #[must_use]
    pub fn entry(&self) -> RuntimeAddr {
        self.bias.apply(self.image.entry)
    }
}

/// The target's address space with every image placed and every mapping
/// planned, its text not yet fixed: where the probe area goes is decided
/// here, before its code exists.
pub struct Draft {
    /// The program.
    pub program: Placed,
    /// Its interpreter (ld.so), for a dynamic program.
    pub interp: Option<Placed>,
    /// Mappings for the child to make, in order.
    maps: Vec<MapOp>,
    /// The program's executable text, registered with the uffd and served by us.
    pub text: Vec<TextRange>,
    /// Each text range and the file bytes it is served from.
    text_parts: Vec<(TextRange, std::ops::Range<usize>)>,
    /// Zeros over the file bytes that follow the end of an executable
    /// segment's file part when it has bss (applied before the probes).
    text_zero: Vec<(u64, Vec<u8>)>,
    /// See [`Plan`]'s.
    text_file: OwnedFd,
    /// Where the initial brk goes (just after the program, or randomised).
    brk: u64,
    /// How the layout is randomised.
    aslr: Aslr,
    /// What the text is mapped from.
    backing: TextBacking,
    /// The interpreter's text, when we serve it: each range and its bytes.
    interp_parts: Vec<(TextRange, std::ops::Range<usize>)>,
    /// Patches of the interpreter's text (the mapping detour's jump).
    pub interp_patches: Vec<(u64, Vec<u8>)>,
    /// Serve only the program's text pages that probes patch (see
    /// [`Draft::finish`]); the others are the file's, as natively.
    pub serve_probed_only: bool,
}

/// The target's address space.
pub struct Plan {
    /// The program.
    pub program: Placed,
    /// Its interpreter (ld.so), for a dynamic program.
    pub interp: Option<Placed>,
    /// Mappings for the child to make, in order.
    pub maps: Vec<MapOp>,
    /// The program's executable text, registered with the uffd and served by us.
    pub text: Vec<TextRange>,
    /// The page images of `text`.
    pub image: Arc<TextImage>,
    /// Each text range and the file bytes it is served from.
    text_parts: Vec<(TextRange, std::ops::Range<usize>)>,
    /// The file the text is mapped from (private, so the program's pages are
    /// its own): a memfd whose page i is text page i. Empty (all holes) when
    /// we serve faults, so every first touch reaches us; filled with the
    /// whole image and sealed by [`Plan::install_text`] otherwise. A file
    /// mapping answers `madvise` as the program's file would
    /// (`MADV_FREE`, `MADV_WIPEONFORK`: EINVAL).
    text_file: OwnedFd,
    /// Where the initial brk goes (just after the program, or randomised).
    pub brk: u64,
    /// How the layout is randomised.
    pub aslr: Aslr,
    /// The sealed copy of the program file its segments are mapped from,
    /// after [`Plan::install_text`].
    snapshot: Option<OwnedFd>,
    /// What the text is mapped from.
    pub backing: TextBacking,
    /// The interpreter's text, when we serve it (shared objects are served):
    /// anonymous memory, registered with the uffd.
    pub interp_text: Option<Arc<TextImage>>,
    /// Every shared object's whole text is served (`--serve-objects all`),
    /// not only the pages of its probes' sites.
    pub objects_whole: bool,
}

/// How many random load biases to try for a PIE before giving up on the
/// kernel's range (the monitor's own mappings may sit at one of them).
const PIE_TRIES: usize = 16;

/// Places an image as `execve` would: `ET_EXEC` at its own addresses; a
/// PIE at a (randomised) `ELF_ET_DYN_BASE`; a static-pie or an interpreter
/// where the kernel puts new mappings (the mmap area inherited from us).
fn place(image: Image, role: Role, aslr: &Aslr) -> Result<Placed> {
    let lo = image.min_vaddr();
    let span = image.max_vaddr() - lo;
    let mut displaced_from = None;
    let reservation = match (image.kind, role) {
        (ElfKind::Exec, _) => {
            Reservation::fixed(lo, span).map_err(|source| Error::AddressesTaken {
                path: image.path.clone(),
                start: lo,
                end: lo + span,
                source,
            })?
        }
        (ElfKind::Dyn, Role::Program { has_interp: true }) => {
            // Without randomisation every try is the same address.
            let tries = if aslr.on { PIE_TRIES } else { 1 };
            let mut biases = (0..tries).map(|_| aslr.pie_bias(lo, image.align));
            match biases.find_map(|bias| Reservation::fixed(bias.wrapping_add(lo), span).ok()) {
                Some(r) => r,
                // Only our own mappings can be in the way: take the mmap area.
                None => {
                    displaced_from = Some(aslr.pie_bias(lo, image.align).wrapping_add(lo));
                    anywhere_aligned(&image, span)?
                }
            }
        }
        (ElfKind::Dyn, _) => anywhere_aligned(&image, span)?,
    };
    let bias = Bias(reservation.addr().wrapping_sub(lo));
    Ok(Placed {
        image,
        bias,
        reservation,
        displaced_from,
    })
}

/// Room for `span` bytes in the mmap area, aligned to the image's `p_align`.
fn anywhere_aligned(image: &Image, span: u64) -> Result<Reservation> {
    Reservation::anywhere(span, image.align, 0)
        .or_else(|e| {
            // An alignment too large to find room for: the kernel aligns
            // its base address down to it (to 0 from 2^47 up), as here.
            let base = crate::layout::ELF_ET_DYN_BASE & !(image.align - 1);
            Reservation::fixed(base, span).map_err(|_| e)
        })
        .map_err(|source| Error::NoRoom {
            path: image.path.clone(),
            len: span,
            align: image.align,
            source,
        })
}

/// A new memfd for (part of) the program at `path`, mappable executable.
fn text_memfd(path: &std::path::Path) -> Result<OwnedFd> {
    use rustix::fs::MemfdFlags as F;
    // /proc/PID/maps shows "/memfd:NAME (deleted)".
    let name = format!("uprobe-exec text of {}", path.display());
    let name: String = name.chars().take(240).collect();
    let base = F::CLOEXEC | F::ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3): needed where vm.memfd_noexec asks for it.
    rustix::fs::memfd_create(&name, base | F::EXEC)
        .or_else(|_| rustix::fs::memfd_create(&name, base))
        .map_err(|e| Error::Layout {
            path: path.to_owned(),
            what: "memfd_create for the text".into(),
            source: e.into(),
        })
}

fn write_all_at(fd: &OwnedFd, mut bytes: &[u8], mut at: u64) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = rustix::io::pwrite(fd, bytes, at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        at += n as u64;
    }
    Ok(())
}

fn seal(fd: &OwnedFd) -> std::io::Result<()> {
    use rustix::fs::SealFlags as S;
    rustix::fs::fcntl_add_seals(fd, S::WRITE | S::SHRINK | S::GROW | S::SEAL)?;
    Ok(())
}

/// What an image is to the process, which decides where the kernel puts it.
#[derive(Clone, Copy)]
enum Role {
    Program { has_interp: bool },
    Interpreter,
}

/// What the program's text is mapped from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextBacking {
    /// A private mapping of our text memfd: `madvise` answers as for the
    /// program's file, and the memfd can hold the whole image.
    File,
    /// Anonymous memory: profilers read `/tmp/perf-PID.map` for anonymous
    /// executable memory only (perf names a file mapping by its path).
    Anon,
}

/// How the executable segments of one image are mapped.
#[derive(Clone, Copy)]
enum Text {
    /// Like every other segment (the interpreter).
    AsFile,
    /// Served by us, from this memfd.
    Served(RawFd),
    /// Served by us, anonymous.
    ServedAnon,
}

/// Mapping ops for one image. With `serve_text`, executable segments become
/// anonymous memory served by the uffd; their ranges are returned.
fn map_image(
    p: &Placed,
    text_map: Text,
    maps: &mut Vec<MapOp>,
    zero: &mut Vec<(u64, Vec<u8>)>,
) -> Vec<(TextRange, std::ops::Range<usize>)> {
    let fd = p.image.file.as_raw_fd();
    let segs = &p.image.segments;
    let file_len = p.image.bytes.len() as u64;
    let mut text = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let start = page_down(p.bias.0 + s.vaddr.0);
        let file_end = page_up(p.bias.0 + s.vaddr.0 + s.filesz);
        let mem_end = page_up(p.bias.0 + s.end());
        if s.exec && !matches!(text_map, Text::AsFile) {
            // A page shared with the next segment is mapped by that segment, as the kernel would.
            let next_start = segs
                .get(i + 1)
                .map_or(u64::MAX, |n| page_down(p.bias.0 + n.vaddr.0));
            let end = mem_end.min(next_start.max(start + PAGE_SIZE));
            // Page i of the text (counted across ranges) is page i of the file.
            let first: usize = text.iter().map(|(r, _): &(TextRange, _)| r.pages).sum();
            maps.push(MapOp {
                addr: start,
                len: end - start,
                prot: s.prot(),
                source: match text_map {
                    Text::Served(fd) => MapSource::File {
                        fd,
                        offset: first as u64 * PAGE_SIZE,
                    },
                    _ => MapSource::Anon,
                },
                zero_from: 0,
                zero_to: 0,
            });
            let off = page_down(s.offset);
            let bytes_end = page_up(s.offset + s.filesz).min(file_len);
            let pages = ((end - start) / PAGE_SIZE) as usize;
            text.push((TextRange { start, pages }, off as usize..bytes_end as usize));
            // bss in an executable segment: the rest of its last file page
            // is zero, as the kernel makes it (the pages after are zero).
            if s.memsz > s.filesz {
                let from = p.bias.0 + s.vaddr.0 + s.filesz;
                zero.push((from, vec![0; (page_up(from) - from) as usize]));
            }
            continue;
        }
        if s.filesz > 0 {
            // A writable segment whose memory outlasts its file bytes gets the
            // rest of its last file page zeroed, as the kernel does (ld.so's
            // early malloc relies on it); the pages after are anonymous.
            let (zero_from, zero_to) = if s.write && s.memsz > s.filesz {
                (p.bias.0 + s.vaddr.0 + s.filesz, file_end)
            } else {
                (0, 0)
            };
            maps.push(MapOp {
                addr: start,
                len: file_end - start,
                prot: s.prot(),
                source: MapSource::File {
                    fd,
                    offset: page_down(s.offset),
                },
                zero_from,
                zero_to,
            });
        }
        let anon_from = if s.filesz > 0 { file_end } else { start };
        if mem_end > anon_from {
            maps.push(MapOp {
                addr: anon_from,
                len: mem_end - anon_from,
                prot: s.prot(),
                source: MapSource::Anon,
                zero_from: 0,
                zero_to: 0,
            });
        }
    }
    text
}

impl Draft {
    /// Places the program (and its interpreter) and plans every mapping.
    pub fn new(
        program: Image,
        interp: Option<Image>,
        aslr: &Aslr,
        backing: TextBacking,
        serve_interp: bool,
    ) -> Result<Draft> {
        let has_interp = interp.is_some();
        let static_pie = program.kind == ElfKind::Dyn && !has_interp;
        let program = place(program, Role::Program { has_interp }, aslr)?;
        let interp = interp
            .map(|i| place(i, Role::Interpreter, aslr))
            .transpose()?;
        let text_file = text_memfd(&program.image.path)?;
        let mut maps = Vec::new();
        let mut text_zero = Vec::new();
        let text_map = match backing {
            TextBacking::File => Text::Served(text_file.as_raw_fd()),
            TextBacking::Anon => Text::ServedAnon,
        };
        let text_parts = map_image(&program, text_map, &mut maps, &mut text_zero);
        let mut interp_parts = Vec::new();
        if let Some(i) = &interp {
            let how = if serve_interp {
                Text::ServedAnon
            } else {
                Text::AsFile
            };
            interp_parts = map_image(i, how, &mut maps, &mut Vec::new());
        }
        let pages: usize = text_parts.iter().map(|(r, _)| r.pages).sum();
        rustix::fs::ftruncate(&text_file, pages as u64 * PAGE_SIZE).map_err(|e| Error::Layout {
            path: program.image.path.clone(),
            what: "sizing the text file".into(),
            source: e.into(),
        })?;
        let text = text_parts.iter().map(|(r, _)| *r).collect();
        let brk = aslr.brk_start(program.reservation.end(), static_pie);
        Ok(Draft {
            program,
            interp,
            maps,
            text,
            text_parts,
            text_zero,
            text_file,
            brk,
            aslr: *aslr,
            backing,
            interp_parts,
            interp_patches: Vec::new(),
            serve_probed_only: false,
        })
    }

    /// The interpreter's served text ranges (empty when it is mapped from
    /// its file).
    #[must_use]
    pub fn interp_text(&self) -> Vec<TextRange> {
        self.interp_parts.iter().map(|(r, _)| *r).collect()
    }

    /// The plan, its text served with `patches` applied: (runtime address,
    /// bytes). A patch may straddle pages; every page it touches gets it, so
    /// the two halves agree whichever page is served first.
    ///
    /// With [`Draft::serve_probed_only`], only the pages `patches` (or the
    /// zeros of an executable bss) touch are served; the others are mapped
    /// from the program's file, as the kernel maps them.
    #[must_use]
    pub fn finish(mut self, patches: &[(u64, Vec<u8>)]) -> Plan {
        if self.serve_probed_only {
            let pages = touched_pages(self.text_zero.iter().chain(patches));
            self.serve_only(&pages);
        }
        let image = Arc::new(self.text_image(patches));
        let interp_text = self
            .interp
            .as_ref()
            .filter(|_| !self.interp_parts.is_empty())
            .map(|i| {
                Arc::new(patched_image(
                    &i.image.bytes,
                    &self.interp_parts,
                    &[],
                    &self.interp_patches,
                ))
            });
        Plan {
            program: self.program,
            interp: self.interp,
            maps: self.maps,
            text: self.text,
            image,
            text_parts: self.text_parts,
            text_file: self.text_file,
            brk: self.brk,
            aslr: self.aslr,
            snapshot: None,
            backing: self.backing,
            interp_text,
            objects_whole: false,
        }
    }

    /// Narrows the served text to `pages` (page addresses) and the pages
    /// past the end of the file's bytes (which no file mapping can give):
    /// each text mapping becomes runs, those served mapped from the text
    /// file (page i of the served text at page i of it) or anonymous as
    /// before, the others from the program's file at their own offsets.
    fn serve_only(&mut self, pages: &std::collections::BTreeSet<u64>) {
        let file = self.program.image.file.as_raw_fd();
        let text_fd = self.text_file.as_raw_fd();
        let mut served_parts = Vec::new();
        let mut served_pages = 0usize;
        for (r, b) in std::mem::take(&mut self.text_parts) {
            let Some(at) = self
                .maps
                .iter()
                .position(|m| m.addr == r.start && m.len == r.pages as u64 * PAGE_SIZE)
            else {
                continue;
            };
            let op = self.maps.remove(at);
            let mut served: Vec<bool> = (0..r.pages)
                .map(|i| {
                    pages.contains(&(r.start + i as u64 * PAGE_SIZE))
                        || i as u64 * PAGE_SIZE >= b.len() as u64
                })
                .collect();
            fill_short_gaps(&mut served, MIN_FILE_RUN);
            // One mapping per run of pages served alike.
            let mut ops = Vec::new();
            let mut from = 0;
            while from < r.pages {
                let kind = served[from];
                let to = (from..r.pages)
                    .find(|&i| served[i] != kind)
                    .unwrap_or(r.pages);
                let addr = r.start + from as u64 * PAGE_SIZE;
                let source = if kind {
                    let bytes_from = (b.start + from * PAGE_SIZE as usize).min(b.end);
                    let bytes_to = (b.start + to * PAGE_SIZE as usize).min(b.end);
                    let source = match op.source {
                        MapSource::File { fd, .. } if fd == text_fd => MapSource::File {
                            fd,
                            offset: served_pages as u64 * PAGE_SIZE,
                        },
                        other => other,
                    };
                    let range = TextRange {
                        start: addr,
                        pages: to - from,
                    };
                    served_parts.push((range, bytes_from..bytes_to));
                    served_pages += to - from;
                    source
                } else {
                    MapSource::File {
                        fd: file,
                        offset: (b.start + from * PAGE_SIZE as usize) as u64,
                    }
                };
                ops.push(MapOp {
                    addr,
                    len: (to - from) as u64 * PAGE_SIZE,
                    prot: op.prot,
                    source,
                    zero_from: 0,
                    zero_to: 0,
                });
                from = to;
            }
            self.maps.splice(at..at, ops);
        }
        self.text = served_parts.iter().map(|(r, _)| *r).collect();
        self.text_parts = served_parts;
    }

    /// The text's page images with the bss zeros and `patches` applied.
    fn text_image(&self, patches: &[(u64, Vec<u8>)]) -> TextImage {
        patched_image(
            &self.program.image.bytes,
            &self.text_parts,
            &self.text_zero,
            patches,
        )
    }
}

/// Fewest pages between two served runs that are left to the file (see
/// [`Draft::serve_only`]): a shorter gap is served too. A mapping of its own
/// would cost the stage a call and the program a VMA (with every function
/// probed, one per page), and the kernel's fault-around maps 16 pages at once
/// anyway.
const MIN_FILE_RUN: usize = 16;

/// Marks served the runs of unserved entries shorter than `min` that lie
/// between two served ones.
fn fill_short_gaps(served: &mut [bool], min: usize) {
    let mut i = 0;
    while i < served.len() {
        if served[i] {
            i += 1;
            continue;
        }
        let from = i;
        while i < served.len() && !served[i] {
            i += 1;
        }
        if from > 0 && i < served.len() && i - from < min {
            served[from..i].fill(true);
        }
    }
}

/// The pages (addresses) that `patches` (runtime address, bytes) touch.
fn touched_pages<'a>(
    patches: impl Iterator<Item = &'a (u64, Vec<u8>)>,
) -> std::collections::BTreeSet<u64> {
    let mut pages = std::collections::BTreeSet::new();
    for (at, code) in patches.filter(|(_, c)| !c.is_empty()) {
        let mut page = page_down(*at);
        while page < at + code.len() as u64 {
            pages.insert(page);
            page += PAGE_SIZE;
        }
    }
    pages
}

/// The page images of `text_parts` (ranges and their bytes in `bytes`, a
/// file mapping), with `zero` and then `patches` (runtime address, bytes)
/// applied.
pub(crate) fn patched_image(
    bytes: &std::sync::Arc<memmap2::Mmap>,
    text_parts: &[(TextRange, std::ops::Range<usize>)],
    zero: &[(u64, Vec<u8>)],
    patches: &[(u64, Vec<u8>)],
) -> TextImage {
    {
        let parts: Vec<(TextRange, &[u8])> = text_parts
            .iter()
            .map(|(r, b)| (*r, &bytes[b.clone()]))
            .collect();
        let mut patched: Vec<(u64, Box<[u8]>)> = Vec::new();
        for (at, code) in zero.iter().chain(patches) {
            for (k, &byte) in code.iter().enumerate() {
                let rt = at + k as u64;
                let page = page_down(rt);
                let slot = match patched.iter().position(|(a, _)| *a == page) {
                    Some(slot) => slot,
                    None => {
                        let Some((r, b)) = parts
                            .iter()
                            .find(|(r, _)| page >= r.start && page < r.end())
                        else {
                            continue;
                        };
                        let mut img = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
                        let off = (page - r.start) as usize;
                        if off < b.len() {
                            let n = (b.len() - off).min(PAGE_SIZE as usize);
                            img[..n].copy_from_slice(&b[off..off + n]);
                        }
                        patched.push((page, img));
                        patched.len() - 1
                    }
                };
                patched[slot].1[(rt - page) as usize] = byte;
            }
        }
        crate::sys::mm::text_image(bytes, text_parts, patched)
    }
}

impl Plan {
    /// Writes every page image into the text file and seals it, for when
    /// faults cannot be served in every process (user-mode-only
    /// userfaultfd: forks are not followed). The kernel then maps the pages
    /// from the file in any process, forks and refaults included. The other
    /// segments are mapped from a sealed copy of the program file too, so
    /// that nothing the program reads can change after it starts (without
    /// `PR_SET_MM_MAP` the kernel does not deny writes to the file).
    ///
    /// With `visible_in`, the copy is instead a file left in that directory
    /// (which must exist and be ours), with the patched text at its place in
    /// the file, and the text is mapped from it too: profilers name the
    /// program's functions from its symbols (`--perf-map` when forks cannot
    /// be followed). Such a copy is not sealed. Returns its path.
    pub fn install_text(
        &mut self,
        visible_in: Option<&std::path::Path>,
    ) -> Result<Option<std::path::PathBuf>> {
        let fail = |what: &str, source: std::io::Error| Error::Layout {
            path: self.program.image.path.clone(),
            what: what.into(),
            source,
        };
        self.fill_text()
            .map_err(|e| fail("filling the text file", e))?;
        let (copy, path): (OwnedFd, _) = match visible_in {
            None => (text_memfd(&self.program.image.path)?, None),
            Some(dir) => {
                let name = self
                    .program
                    .image
                    .path
                    .file_name()
                    .map_or_else(|| "program".into(), |n| n.to_os_string());
                let path = dir.join(name);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| fail(&format!("creating {}", path.display()), e))?;
                (f.into(), Some(path))
            }
        };
        write_all_at(&copy, &self.program.image.bytes, 0)
            .map_err(|e| fail("copying the program file", e))?;
        let file = self.program.image.file.as_raw_fd();
        let text_fd = self.text_file.as_raw_fd();
        let mut text_ranges = self.text_parts.iter();
        let mut first_page = 0;
        let mut maps = Vec::with_capacity(self.maps.len() + 1);
        for mut m in std::mem::take(&mut self.maps) {
            // The pages of a text range past its file bytes (an executable
            // segment's bss): zeros, anonymous, not written over what
            // follows the segment in the copy.
            let mut past = None;
            if let MapSource::File { fd, offset } = &mut m.source {
                if *fd == file {
                    *fd = copy.as_raw_fd();
                } else if *fd == text_fd && path.is_some() {
                    // The patched text, at its own place in the copy.
                    let Some((range, bytes)) = text_ranges.next() else {
                        maps.push(m);
                        continue;
                    };
                    let in_file = bytes.len().div_ceil(PAGE_SIZE as usize).min(range.pages);
                    for i in 0..in_file {
                        let at = bytes.start as u64 + i as u64 * PAGE_SIZE;
                        write_all_at(&copy, self.image.page(first_page + i), at)
                            .map_err(|e| fail("writing the text into the copy", e))?;
                    }
                    first_page += range.pages;
                    *fd = copy.as_raw_fd();
                    *offset = bytes.start as u64;
                    if in_file < range.pages {
                        past = Some(MapOp {
                            addr: m.addr + in_file as u64 * PAGE_SIZE,
                            len: (range.pages - in_file) as u64 * PAGE_SIZE,
                            prot: m.prot,
                            source: MapSource::Anon,
                            zero_from: 0,
                            zero_to: 0,
                        });
                        m.len = in_file as u64 * PAGE_SIZE;
                    }
                }
            }
            if m.len > 0 {
                maps.push(m);
            }
            maps.extend(past);
        }
        self.maps = maps;
        if path.is_none() {
            seal(&copy).map_err(|e| fail("sealing the copy of the program", e))?;
        }
        self.snapshot = Some(copy);
        Ok(path)
    }

    /// Writes every page image into the text file and seals it. From then
    /// on the kernel maps any text page that is missing in any process of
    /// the program from the file, without a fault reaching us: processes
    /// we never heard of (a fork whose event we did not read) included.
    ///
    /// # Errors
    /// `Unsupported` for anonymous text, which no file backs.
    pub fn fill_text(&self) -> std::io::Result<()> {
        if self.backing == TextBacking::Anon {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        for i in 0..self.image.pages() {
            write_all_at(&self.text_file, self.image.page(i), i as u64 * PAGE_SIZE)?;
        }
        seal(&self.text_file)
    }

    /// Whether [`Plan::install_text`] put the whole text in place.
    #[must_use]
    pub fn text_installed(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Where the program starts: the interpreter's entry, or the program's.
    #[must_use]
    pub fn start(&self) -> RuntimeAddr {
        self.interp
            .as_ref()
            .map_or_else(|| self.program.entry(), Placed::entry)
    }

    /// The areas the child must keep when it unmaps the monitor.
    #[must_use]
    pub fn reserved(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(
            self.program.reservation.addr(),
            self.program.reservation.end(),
        )];
        if let Some(i) = &self.interp {
            v.push((i.reservation.addr(), i.reservation.end()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_that_straddles_a_page_end_touches_both_pages() {
        let patches = [
            (0x1000 + 4094, vec![0xe9, 1, 2, 3, 4]),
            (0x5000, vec![0xcc]),
            (0x7000, Vec::new()),
        ];
        let pages: Vec<u64> = touched_pages(patches.iter()).into_iter().collect();
        assert_eq!(pages, [0x1000, 0x2000, 0x5000]);
    }

    #[test]
    fn only_short_gaps_between_served_pages_are_served_too() {
        let mut v = [
            false, true, false, false, true, false, false, false, false, true, false,
        ];
        fill_short_gaps(&mut v, 3);
        assert_eq!(
            v,
            [false, true, true, true, true, false, false, false, false, true, false]
        );
    }
}
