//! A reader of the few ELF64 little-endian fields the tests look at or
//! patch, written from the ELF specification rather than taken from the
//! loader: ground truth must not be the code under test.
//!
//! Everything is by file offset, so that a test can read a header and then
//! patch a copy of the file at `header.at + FIELD`.

use std::path::Path;

// ELF header (`Elf64_Ehdr`) fields, by file offset.
pub const EI_CLASS: usize = 4;
pub const EI_DATA: usize = 5;
pub const E_MACHINE: usize = 18;
pub const E_ENTRY: usize = 24;
pub const E_PHOFF: usize = 32;
pub const E_SHOFF: usize = 40;
pub const E_PHENTSIZE: usize = 54;
pub const E_PHNUM: usize = 56;
pub const E_SHENTSIZE: usize = 58;
pub const E_SHNUM: usize = 60;

// Program header (`Elf64_Phdr`) fields, from the start of the header.
pub const P_TYPE: usize = 0;
pub const P_FLAGS: usize = 4;
pub const P_OFFSET: usize = 8;
pub const P_VADDR: usize = 16;
pub const P_FILESZ: usize = 32;
pub const P_MEMSZ: usize = 40;
pub const P_ALIGN: usize = 48;
pub const PHDR_SIZE: usize = 56;

pub const PT_LOAD: u32 = 1;
pub const PT_INTERP: u32 = 3;
pub const PF_X: u32 = 1;

// Section header (`Elf64_Shdr`) fields, from the start of the header.
pub const SH_TYPE: usize = 4;
pub const SH_OFFSET: usize = 24;
pub const SH_SIZE: usize = 32;
pub const SH_LINK: usize = 40;

pub const SHT_SYMTAB: u32 = 2;

// Symbol (`Elf64_Sym`) fields, from the start of the entry.
pub const ST_NAME: usize = 0;
pub const ST_SHNDX: usize = 6;
pub const SYM_SIZE: usize = 24;

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
pub fn set_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn set_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn set_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// One program header of a file.
#[derive(Clone, Copy, Debug)]
pub struct Phdr {
    /// File offset of the header itself.
    pub at: usize,
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Every program header of `elf`, in file order.
pub fn program_headers(elf: &[u8]) -> Vec<Phdr> {
    let phoff = u64_at(elf, E_PHOFF) as usize;
    let (size, num) = (
        usize::from(u16_at(elf, E_PHENTSIZE)),
        usize::from(u16_at(elf, E_PHNUM)),
    );
    (0..num)
        .map(|i| {
            let at = phoff + i * size;
            Phdr {
                at,
                p_type: u32_at(elf, at + P_TYPE),
                flags: u32_at(elf, at + P_FLAGS),
                offset: u64_at(elf, at + P_OFFSET),
                vaddr: u64_at(elf, at + P_VADDR),
                filesz: u64_at(elf, at + P_FILESZ),
                memsz: u64_at(elf, at + P_MEMSZ),
            }
        })
        .collect()
}

/// The `PT_LOAD` headers of `elf`, in file order.
pub fn load_headers(elf: &[u8]) -> Vec<Phdr> {
    program_headers(elf)
        .into_iter()
        .filter(|p| p.p_type == PT_LOAD)
        .collect()
}

/// The `PT_INTERP` header of `elf`.
pub fn interp_header(elf: &[u8]) -> Option<Phdr> {
    program_headers(elf)
        .into_iter()
        .find(|p| p.p_type == PT_INTERP)
}

/// File offset of the first section header of type `sh_type`.
pub fn section_header(elf: &[u8], sh_type: u32) -> Option<usize> {
    let shoff = u64_at(elf, E_SHOFF) as usize;
    let (size, num) = (
        usize::from(u16_at(elf, E_SHENTSIZE)),
        usize::from(u16_at(elf, E_SHNUM)),
    );
    (0..num)
        .map(|i| shoff + i * size)
        .find(|&sh| u32_at(elf, sh + SH_TYPE) == sh_type)
}

/// Text pages of an ELF file: the pages covered by its executable `PT_LOAD`
/// segments.
pub fn text_pages(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    load_headers(&b)
        .iter()
        .filter(|p| p.flags & PF_X != 0)
        .map(|p| {
            let start = p.vaddr & !4095;
            let end = (p.vaddr + p.memsz + 4095) & !4095;
            (end - start) / 4096
        })
        .sum()
}
