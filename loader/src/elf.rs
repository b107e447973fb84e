//! Parse: an ELF file, checked for everything the loader relies on.
//!
//! Every check here exists so that a malformed file gives a one-line reason
//! (exit 126) instead of a crash of ours or of the program.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::program_header::{PF_W, PF_X, PT_INTERP, PT_LOAD, PT_PHDR};
use memmap2::Mmap;

use crate::addr::{page_down, page_up, LinkAddr};
use crate::error::ElfError;

/// ELF type: fixed addresses, or position independent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfKind {
    /// `ET_EXEC`: loaded at its link-time addresses.
    Exec,
    /// `ET_DYN`: loaded at a base of our choosing (PIE, static-pie, ld.so).
    Dyn,
}

/// One `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Link-time address of the first byte.
    pub vaddr: LinkAddr,
    /// Bytes in memory.
    pub memsz: u64,
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes taken from the file (the rest of `memsz` is zero).
    pub filesz: u64,
    /// Executable.
    pub exec: bool,
    /// Writable.
    pub write: bool,
    /// Readable.
    pub read: bool,
}

impl Segment {
    /// `PROT_*` bits for this segment.
    #[must_use]
    pub fn prot(&self) -> rustix::mm::ProtFlags {
        use rustix::mm::ProtFlags as P;
        let mut p = P::empty();
        if self.read {
            p |= P::READ;
        }
        if self.write {
            p |= P::WRITE;
        }
        if self.exec {
            p |= P::EXEC;
        }
        p
    }

    /// One past the last byte in memory (link time).
    #[must_use]
    pub fn end(&self) -> u64 {
        self.vaddr.0 + self.memsz
    }
}

/// A parsed, checked ELF file, mapped read-only.
pub struct Image {
    /// The path it was opened by.
    pub path: PathBuf,
    /// The open file (kept for mapping segments in the child and for `/proc/self/exe`).
    pub file: File,
    /// The whole file, mapped.
    pub bytes: Arc<Mmap>,
    /// Fixed or position independent.
    pub kind: ElfKind,
    /// Entry point, link time.
    pub entry: LinkAddr,
    /// Link-time address of the program headers in memory, when loaded.
    pub phdr: Option<LinkAddr>,
    /// Size of one program header.
    pub phentsize: u16,
    /// Number of program headers.
    pub phnum: u16,
    /// `PT_LOAD` segments, in ascending address order (whatever their
    /// order in the program headers).
    pub segments: Vec<Segment>,
    /// Alignment of the load address of an `ET_DYN` image: the largest
    /// power-of-two `p_align` of its segments, at least a page. Other
    /// values (0, not a power of two) are ignored, as the kernel's
    /// `maximum_alignment` ignores them.
    pub align: u64,
    /// The requested program interpreter (`PT_INTERP`).
    pub interp: Option<PathBuf>,
    /// `PT_GNU_STACK` asks for an executable stack (`PF_X`).
    pub exec_stack: bool,
}

/// Sizes beyond this are absurd for a user-space program (1 TiB).
const MAX_SPAN: u64 = 1 << 40;

/// The page size the kernel's ELF loader aligns to on x86-64.
const PAGE: u64 = 4096;

impl Image {
    /// Opens, maps and checks `path`, a program.
    pub fn open(path: &Path) -> Result<Image, ElfError> {
        Image::open_as(path, true)
    }

    /// Opens, maps and checks `path`, a shared object (which may have no
    /// entry point).
    pub fn open_object(path: &Path) -> Result<Image, ElfError> {
        Image::open_as(path, false)
    }

    fn open_as(path: &Path, program: bool) -> Result<Image, ElfError> {
        let file = File::open(path).map_err(|source| ElfError::Open {
            path: path.to_owned(),
            source,
        })?;
        let bytes = crate::sys::mm::map_program(&file).map_err(|source| ElfError::Open {
            path: path.to_owned(),
            source,
        })?;
        let bytes = Arc::new(bytes);
        let parsed = parse(&bytes, program).map_err(|reason| ElfError::Malformed {
            path: path.to_owned(),
            reason,
        })?;
        Ok(parsed.into_image(path.to_owned(), file, bytes))
    }

    /// Lowest page of the image, link time.
    #[must_use]
    pub fn min_vaddr(&self) -> u64 {
        page_down(self.segments[0].vaddr.0)
    }

    /// One past the highest page of the image, link time.
    #[must_use]
    pub fn max_vaddr(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| page_up(s.end()))
            .max()
            .unwrap_or(0)
    }
}

/// The fields of an [`Image`] that come from the bytes.
struct Parsed {
    kind: ElfKind,
    entry: LinkAddr,
    phdr: Option<LinkAddr>,
    phentsize: u16,
    phnum: u16,
    segments: Vec<Segment>,
    align: u64,
    interp: Option<PathBuf>,
    exec_stack: bool,
}

impl Parsed {
    fn into_image(self, path: PathBuf, file: File, bytes: Arc<Mmap>) -> Image {
        Image {
            path,
            file,
            bytes,
            kind: self.kind,
            entry: self.entry,
            phdr: self.phdr,
            phentsize: self.phentsize,
            phnum: self.phnum,
            segments: self.segments,
            align: self.align,
            interp: self.interp,
            exec_stack: self.exec_stack,
        }
    }
}

/// Checks the bytes of an ELF file; the error is a short reason a person can read.
fn parse(b: &[u8], program: bool) -> Result<Parsed, String> {
    if b.len() < 4 || &b[..4] != b"\x7fELF" {
        if b.starts_with(b"#!") {
            return Err("a script whose interpreter line could not be used".into());
        }
        return Err("not an ELF file".into());
    }
    if b.len() < 64 {
        return Err(format!("truncated ELF header ({} bytes)", b.len()));
    }
    if b[EI_CLASS] != ELFCLASS64 {
        return Err("a 32-bit program: only x86-64 (64-bit) programs can be run".into());
    }
    if b[EI_DATA] != ELFDATA2LSB {
        return Err("a big-endian ELF file: only x86-64 programs can be run".into());
    }
    let header = goblin::elf::Elf::parse_header(b).map_err(|e| format!("bad ELF header: {e}"))?;
    if header.e_machine != EM_X86_64 {
        return Err(format!(
            "built for machine {} ({}), not x86-64",
            header.e_machine,
            goblin::elf::header::machine_to_str(header.e_machine)
        ));
    }
    let kind = match header.e_type {
        ET_EXEC => ElfKind::Exec,
        ET_DYN => ElfKind::Dyn,
        t => {
            return Err(format!(
                "ELF type {} is not an executable",
                goblin::elf::header::et_to_str(t)
            ))
        }
    };
    if header.e_entry == 0 && program {
        return Err("no entry point (a shared library, not a program?)".into());
    }
    let phentsize = header.e_phentsize;
    if usize::from(phentsize) != goblin::elf64::program_header::SIZEOF_PHDR {
        return Err(format!("program header size {phentsize}, expected 56"));
    }
    let phnum = header.e_phnum;
    let ph_end = header
        .e_phoff
        .checked_add(u64::from(phnum) * u64::from(phentsize))
        .filter(|&e| e <= b.len() as u64)
        .ok_or("program headers lie past the end of the file")?;
    let ctx = goblin::container::Ctx::new(
        goblin::container::Container::Big,
        goblin::container::Endian::Little,
    );
    let phdrs =
        goblin::elf::ProgramHeader::parse(b, header.e_phoff as usize, usize::from(phnum), ctx)
            .map_err(|e| format!("bad program headers: {e}"))?;

    let mut segments = Vec::new();
    let mut align = PAGE;
    let mut interp = None;
    let mut phdr = None;
    let mut exec_stack = false;
    for ph in &phdrs {
        match ph.p_type {
            PT_LOAD => {
                if ph.p_memsz == 0 {
                    continue;
                }
                if ph.p_filesz > ph.p_memsz {
                    return Err(format!(
                        "segment at {:#x} has more file bytes ({:#x}) than memory ({:#x})",
                        ph.p_vaddr, ph.p_filesz, ph.p_memsz
                    ));
                }
                if ph
                    .p_offset
                    .checked_add(ph.p_filesz)
                    .is_none_or(|e| e > b.len() as u64)
                {
                    return Err(format!(
                        "segment at {:#x} lies past the end of the file",
                        ph.p_vaddr
                    ));
                }
                if ph.p_memsz > MAX_SPAN || ph.p_vaddr > MAX_SPAN * 64 {
                    return Err(format!(
                        "segment at {:#x} has an absurd size or address",
                        ph.p_vaddr
                    ));
                }
                if ph.p_vaddr % 4096 != ph.p_offset % 4096 {
                    return Err(format!(
                        "segment at {:#x}: address and file offset {:#x} disagree modulo the page size",
                        ph.p_vaddr, ph.p_offset
                    ));
                }
                if ph.p_align.is_power_of_two() {
                    align = align.max(ph.p_align);
                }
                segments.push(Segment {
                    vaddr: LinkAddr(ph.p_vaddr),
                    memsz: ph.p_memsz,
                    offset: ph.p_offset,
                    filesz: ph.p_filesz,
                    exec: ph.p_flags & PF_X != 0,
                    write: ph.p_flags & PF_W != 0,
                    read: ph.p_flags & goblin::elf::program_header::PF_R != 0,
                });
            }
            PT_INTERP => {
                let start = ph.p_offset as usize;
                let end = ph
                    .p_offset
                    .checked_add(ph.p_filesz)
                    .filter(|&e| e <= b.len() as u64);
                let Some(end) = end else {
                    return Err("PT_INTERP lies past the end of the file".into());
                };
                let raw = &b[start..end as usize];
                // The kernel refuses a name that does not end in NUL.
                if raw.last() != Some(&0) {
                    return Err("PT_INTERP is not NUL-terminated".into());
                }
                let raw = raw.split(|&c| c == 0).next().unwrap_or(&[]);
                if raw.is_empty() {
                    return Err("PT_INTERP names no interpreter".into());
                }
                use std::os::unix::ffi::OsStrExt;
                interp = Some(PathBuf::from(std::ffi::OsStr::from_bytes(raw)));
            }
            PT_PHDR => phdr = Some(LinkAddr(ph.p_vaddr)),
            goblin::elf::program_header::PT_GNU_STACK => exec_stack = ph.p_flags & PF_X != 0,
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err("no loadable segment".into());
    }
    // The kernel maps the segments in header order; any order works if
    // they do not overlap.
    segments.sort_by_key(|s| s.vaddr.0);
    for w in segments.windows(2) {
        if w[1].vaddr.0 < w[0].end() {
            return Err(format!(
                "loadable segments overlap ({:#x} and {:#x})",
                w[0].vaddr.0, w[1].vaddr.0
            ));
        }
    }
    let span = page_up(segments.last().map_or(0, Segment::end)) - page_down(segments[0].vaddr.0);
    if span > MAX_SPAN {
        return Err(format!("the segments span an absurd {span:#x} bytes"));
    }
    let entry = LinkAddr(header.e_entry);
    if program
        && !segments
            .iter()
            .any(|s| s.exec && entry.0 >= s.vaddr.0 && entry.0 < s.end())
    {
        return Err(format!(
            "entry point {:#x} is outside every executable segment",
            entry.0
        ));
    }
    if phdr.is_none() {
        // No PT_PHDR: the headers are in memory if a segment maps their file bytes.
        phdr = segments.iter().find_map(|s| {
            (header.e_phoff >= s.offset && ph_end <= s.offset + s.filesz)
                .then(|| LinkAddr(s.vaddr.0 + header.e_phoff - s.offset))
        });
    }
    Ok(Parsed {
        kind,
        entry,
        phdr,
        phentsize,
        phnum,
        segments,
        align,
        interp,
        exec_stack,
    })
}
