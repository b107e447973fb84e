//! Plan: where every piece of the target's address space goes, decided in
//! the monitor before the fork so that both sides agree on every address.
//!
//! Each planned area is first *reserved* in the monitor with a `PROT_NONE`
//! mapping, which keeps the monitor (and the library's other threads) from
//! placing anything there until the child has mapped over it.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rustix::mm::{MapFlags, ProtFlags};
use uprobe_runtime::{TextImage, TextRange, PAGE_SIZE};

use crate::addr::{page_down, page_up, Bias, RuntimeAddr};
use crate::elf::{ElfKind, Image};
use crate::error::{Error, Result};

/// An area held with a `PROT_NONE` mapping in the monitor; released on drop.
#[derive(Debug)]
pub struct Reservation {
    /// First byte.
    pub addr: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
}

impl Reservation {
    /// Reserves `len` bytes anywhere, aligned to `align` (a power of two).
    pub fn anywhere(len: u64, align: u64, hint: u64) -> std::io::Result<Reservation> {
        let align = align.max(PAGE_SIZE);
        let total = len + align;
        // SAFETY: a fresh PROT_NONE anonymous mapping at an address of the
        // kernel's choosing (the hint is only a hint) overlaps nothing of ours.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                hint as *mut _,
                total as usize,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?;
        let start = p as u64;
        let aligned = (start + align - 1) & !(align - 1);
        // Trim the slack on both sides.
        // SAFETY: both trimmed pieces belong to the mapping just made.
        unsafe {
            if aligned > start {
                let _ = rustix::mm::munmap(p, (aligned - start) as usize);
            }
            let tail = start + total - (aligned + len);
            if tail > 0 {
                let _ = rustix::mm::munmap((aligned + len) as *mut _, tail as usize);
            }
        }
        Ok(Reservation { addr: aligned, len })
    }

    /// Reserves exactly `[addr, addr+len)`, failing if anything is there.
    pub fn fixed(addr: u64, len: u64) -> std::io::Result<Reservation> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        unsafe {
            rustix::mm::mmap_anonymous(
                addr as *mut _,
                len as usize,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED_NOREPLACE,
            )
        }?;
        Ok(Reservation { addr, len })
    }

    /// One past the last byte.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.addr + self.len
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the area is our own PROT_NONE placeholder (or, in the
        // parent after the fork, still that placeholder): nothing else lives there.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut _, self.len as usize) };
    }
}

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
}

impl Placed {
    /// The image's entry point in the target.
    #[must_use]
    pub fn entry(&self) -> RuntimeAddr {
        self.bias.apply(self.image.entry)
    }
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
    /// Where the initial brk goes (just after the program).
    pub brk: u64,
}

/// The probe area: handler code, site table and out-of-line slots, mapped
/// read+exec in the monitor before the fork (the child inherits it), within
/// ±2 GiB of the text. Dropping it unmaps the monitor's copy.
pub struct ProbeArea {
    /// The area (its mapping replaced the reservation's placeholder).
    pub reservation: Reservation,
    /// The SIGTRAP handler's address.
    pub handler: u64,
    /// The `rt_sigreturn` restorer's address.
    pub restorer: u64,
    /// The private read+write page after the code (the handler's cache).
    pub cache: u64,
}

/// Farthest a rel32 reaches, with a margin.
const REACH: u64 = (1 << 31) - (1 << 20);

/// Where the kernel would put a PIE (`ELF_ET_DYN_BASE` on x86-64).
const PIE_HINT: u64 = 0x5555_5555_4000;

fn place(image: Image, hint: u64) -> Result<Placed> {
    let lo = image.min_vaddr();
    let span = image.max_vaddr() - lo;
    let reservation = match image.kind {
        ElfKind::Exec => Reservation::fixed(lo, span).map_err(|e| Error::Plan {
            path: image.path.clone(),
            reason: format!(
                "its fixed addresses {lo:#x}..{:#x} are taken in the monitor ({e}); \
                 this happens only if the monitor itself sits there",
                lo + span
            ),
        })?,
        ElfKind::Dyn => Reservation::anywhere(span, PAGE_SIZE, hint).map_err(|e| Error::Plan {
            path: image.path.clone(),
            reason: format!("no room for {span:#x} bytes: {e}"),
        })?,
    };
    let bias = Bias(reservation.addr.wrapping_sub(lo));
    Ok(Placed {
        image,
        bias,
        reservation,
    })
}

/// Mapping ops for one image. With `serve_text`, executable segments become
/// anonymous memory served by the uffd; their ranges are returned.
fn map_image(
    p: &Placed,
    serve_text: bool,
    maps: &mut Vec<MapOp>,
) -> Vec<(TextRange, std::ops::Range<usize>)> {
    let fd = p.image.file.as_raw_fd();
    let segs = &p.image.segments;
    let file_len = p.image.bytes.len() as u64;
    let mut text = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let start = page_down(p.bias.0 + s.vaddr.0);
        let file_end = page_up(p.bias.0 + s.vaddr.0 + s.filesz);
        let mem_end = page_up(p.bias.0 + s.end());
        if serve_text && s.exec {
            // A page shared with the next segment is mapped by that segment, as the kernel would.
            let next_start = segs
                .get(i + 1)
                .map_or(u64::MAX, |n| page_down(p.bias.0 + n.vaddr.0));
            let end = mem_end.min(next_start.max(start + PAGE_SIZE));
            maps.push(MapOp {
                addr: start,
                len: end - start,
                prot: s.prot(),
                source: MapSource::Anon,
                zero_from: 0,
                zero_to: 0,
            });
            let off = page_down(s.offset);
            let bytes_end = page_up(s.offset + s.filesz).min(file_len);
            let pages = ((end - start) / PAGE_SIZE) as usize;
            text.push((TextRange { start, pages }, off as usize..bytes_end as usize));
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

impl Plan {
    /// Places the program (and its interpreter) and plans every mapping.
    /// The text is served as in the file until [`Plan::patch`] says otherwise.
    pub fn new(program: Image, interp: Option<Image>) -> Result<Plan> {
        let program = place(program, PIE_HINT)?;
        let interp = interp.map(|i| place(i, 0)).transpose()?;
        let mut maps = Vec::new();
        let text_parts = map_image(&program, true, &mut maps);
        if let Some(i) = &interp {
            map_image(i, false, &mut maps);
        }
        let text = text_parts.iter().map(|(r, _)| *r).collect();
        let brk = program.reservation.end();
        let mut plan = Plan {
            program,
            interp,
            maps,
            text,
            text_parts,
            image: Arc::new(TextImage::empty()),
            brk,
        };
        plan.patch(&[]);
        Ok(plan)
    }

    /// Serves the text with `patches` applied: (runtime address, bytes). A
    /// patch may straddle pages; every page it touches gets it, so the two
    /// halves agree whichever page is served first.
    pub fn patch(&mut self, patches: &[(u64, Vec<u8>)]) {
        let bytes = Arc::clone(&self.program.image.bytes);
        let parts: Vec<(TextRange, &[u8])> = self
            .text_parts
            .iter()
            .map(|(r, b)| (*r, &bytes[b.clone()]))
            .collect();
        let mut patched: Vec<(u64, Box<[u8]>)> = Vec::new();
        for (at, code) in patches {
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
        // SAFETY: the slices point into the file mapping that `owner` keeps
        // alive; a file mapping is readable up to the end of its last page.
        self.image = Arc::new(unsafe { TextImage::new(&parts, patched, bytes.clone()) });
    }

    /// Where the program starts: the interpreter's entry, or the program's.
    #[must_use]
    pub fn start(&self) -> RuntimeAddr {
        self.interp
            .as_ref()
            .map_or_else(|| self.program.entry(), Placed::entry)
    }

    /// Maps the probe area near the text: `build(base)` returns its bytes
    /// for a given base address and the handler and restorer offsets.
    /// The area is `code_len` bytes of read+exec code and data, then one
    /// read+write page private to each process (the handler's cache).
    pub fn map_probe_area(
        &self,
        code_len: usize,
        build: impl FnOnce(u64) -> Result<(Vec<u8>, u64, u64)>,
    ) -> Result<ProbeArea> {
        let code_len = page_up(code_len as u64);
        let len = code_len + PAGE_SIZE;
        let lo = self
            .text
            .iter()
            .map(|t| t.start)
            .min()
            .unwrap_or(self.program.reservation.addr);
        let hi = self
            .text
            .iter()
            .map(TextRange::end)
            .max()
            .unwrap_or(self.program.reservation.end());
        let fail = |reason: String| Error::Plan {
            path: self.program.image.path.clone(),
            reason,
        };
        // After the program with room for a 1 GiB brk heap, else just before it.
        let mut tries = vec![
            self.program.reservation.end() + (1 << 30),
            lo.saturating_sub(len + (1 << 24)),
        ];
        tries.push(self.program.reservation.end() + (64 << 20));
        let reservation = tries
            .into_iter()
            .filter_map(|hint| Reservation::anywhere(len, PAGE_SIZE, hint).ok())
            .find(|r| r.end().saturating_sub(lo) < REACH && hi.saturating_sub(r.addr) < REACH)
            .ok_or_else(|| fail("no room for the probe area within 2 GiB of the text".into()))?;
        let (bytes, handler, restorer) = build(reservation.addr)?;
        // SAFETY: replacing our own PROT_NONE placeholder with the area's
        // bytes; nothing else lives in the reservation.
        unsafe {
            let p = rustix::mm::mmap_anonymous(
                reservation.addr as *mut _,
                len as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
            .map_err(|e| fail(format!("mapping the probe area: {e}")))?;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len());
            rustix::mm::mprotect(
                p,
                code_len as usize,
                rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::EXEC,
            )
            .map_err(|e| fail(format!("protecting the probe area: {e}")))?;
            // The cache page (pid, row) starts empty in every forked process.
            rustix::mm::madvise(
                p.cast::<u8>().add(code_len as usize).cast(),
                PAGE_SIZE as usize,
                rustix::mm::Advice::LinuxWipeOnFork,
            )
            .map_err(|e| fail(format!("MADV_WIPEONFORK on the probe area: {e}")))?;
            crate::vma::name(
                reservation.addr,
                len,
                &crate::vma::anon_name("probes", &self.program.image.path),
            );
        }
        Ok(ProbeArea {
            handler: reservation.addr + handler,
            restorer: reservation.addr + restorer,
            cache: reservation.addr + code_len,
            reservation,
        })
    }

    /// The areas the child must keep when it unmaps the monitor.
    #[must_use]
    pub fn reserved(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(
            self.program.reservation.addr,
            self.program.reservation.end(),
        )];
        if let Some(i) = &self.interp {
            v.push((i.reservation.addr, i.reservation.end()));
        }
        v
    }
}
