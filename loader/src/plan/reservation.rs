//! Address ranges held in the monitor until the child maps over them.

#![allow(unsafe_code)]

use rustix::mm::{MapFlags, ProtFlags};
use uprobe_runtime::PAGE_SIZE;

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
        let total = len
            .checked_add(align)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
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
