//! The monitor's own mappings: address ranges held until the child maps
//! over them ([`Reservation`]), the probe area put in one, the program
//! file's read-only mapping and the text image served from it, and names in
//! `/proc/PID/maps`.
//!
//! # References
//!  - [`mmap(2)`](https://man7.org/linux/man-pages/man2/mmap.2.html),
//!    [`munmap(2)`](https://man7.org/linux/man-pages/man2/munmap.2.html),
//!    [`mprotect(2)`](https://man7.org/linux/man-pages/man2/mprotect.2.html),
//!    [`madvise(2)`](https://man7.org/linux/man-pages/man2/madvise.2.html)
//!  - [`PR_SET_VMA`](https://man7.org/linux/man-pages/man2/PR_SET_VMA.2const.html)

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;
use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags};
use uprobe_runtime::{TextImage, TextRange, PAGE_SIZE};

use crate::vma::NAME_MAX;

/// An address range held in the monitor, first with a `PROT_NONE`
/// placeholder; unmapped on drop.
///
/// Invariant: `[addr, addr + len)` is a mapping this value made and alone
/// owns. Nothing else in the process maps there, and no reference into it
/// exists outside the methods below (none returns one), so replacing or
/// re-protecting its pages cannot invalidate anything.
#[derive(Debug)]
pub struct Reservation {
    addr: u64,
    len: u64,
}

impl Reservation {
    /// Reserves `len` bytes anywhere, aligned to `align` (a power of two);
    /// `hint` is only a hint.
    pub fn anywhere(len: u64, align: u64, hint: u64) -> io::Result<Reservation> {
        let align = align.max(PAGE_SIZE);
        let total = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: without MAP_FIXED the kernel picks a free range (the hint
        // is only a hint), so the new mapping overlaps nothing of ours.
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
        if aligned > start {
            // SAFETY: the head [start, aligned) belongs to the mapping just
            // made, which nothing uses yet.
            let _ = unsafe { rustix::mm::munmap(p, (aligned - start) as usize) };
        }
        let tail = start + total - (aligned + len);
        if tail > 0 {
            // SAFETY: the tail [aligned + len, start + total) belongs to the
            // mapping just made, which nothing uses yet.
            let _ = unsafe { rustix::mm::munmap((aligned + len) as *mut _, tail as usize) };
        }
        Ok(Reservation { addr: aligned, len })
    }

    /// Reserves exactly `[addr, addr + len)`, failing if anything is there.
    pub fn fixed(addr: u64, len: u64) -> io::Result<Reservation> {
        // SAFETY: MAP_FIXED_NOREPLACE fails with EEXIST rather than replace
        // an existing mapping, so nothing of ours is touched.
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

    /// First byte.
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes (a page multiple).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// One past the last byte.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.addr + self.len
    }

    /// Whether `[start, end)` lies inside the range.
    #[must_use]
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.addr <= start && start <= end && end <= self.end()
    }

    /// Replaces the placeholder with fresh private read+write memory that
    /// starts with `bytes` (zeros after them). The child inherits it.
    pub fn fill(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: MAP_FIXED over our own range only, which by the type's
        // invariant holds nothing referenced anywhere else.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                self.addr as *mut _,
                self.len as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        }?;
        // SAFETY: `p` is the read+write mapping just made, at least
        // `bytes.len()` long (checked above); `bytes` is our own memory
        // elsewhere, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len()) };
        Ok(())
    }

    /// Replaces `len` bytes at `offset` (page multiples) with a shared
    /// mapping of `fd` from file offset 0, protected as `prot`. The child
    /// inherits it, still shared: what we write to `fd` later, it sees.
    pub fn map_shared(
        &mut self,
        offset: u64,
        len: u64,
        fd: std::os::fd::BorrowedFd<'_>,
        prot: ProtFlags,
    ) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: MAP_FIXED over our own range only, which by the type's
        // invariant holds nothing referenced anywhere else.
        unsafe {
            rustix::mm::mmap(
                (self.addr + offset) as *mut _,
                len as usize,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                0,
            )
        }?;
        Ok(())
    }

    /// Replaces `len` bytes at `offset` (page multiples) with fresh private
    /// read+write memory, zero-filled.
    pub fn map_private(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: MAP_FIXED over our own range only, which by the type's
        // invariant holds nothing referenced anywhere else.
        unsafe {
            rustix::mm::mmap_anonymous(
                (self.addr + offset) as *mut _,
                len as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        }?;
        Ok(())
    }

    /// Sets the protection of `len` bytes at `offset` (page multiples).
    pub fn protect(&mut self, offset: u64, len: u64, flags: MprotectFlags) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: our own pages, which no reference points into (the type's
        // invariant): a page made read-only or non-readable here is read or
        // written by nobody in this process.
        unsafe { rustix::mm::mprotect((self.addr + offset) as *mut _, len as usize, flags) }?;
        Ok(())
    }

    /// Makes `len` bytes at `offset` (page multiples) start zeroed in every
    /// forked child (`MADV_WIPEONFORK`); this process keeps its contents.
    pub fn wipe_on_fork(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: MADV_WIPEONFORK on our own pages changes nothing in this
        // process; only children see the pages zeroed.
        unsafe {
            rustix::mm::madvise(
                (self.addr + offset) as *mut _,
                len as usize,
                Advice::LinuxWipeOnFork,
            )
        }?;
        Ok(())
    }

    /// Names the whole range in `/proc/PID/maps` (see [`set_anon_name`]).
    pub fn name(&self, name: &[u8; NAME_MAX]) {
        set_anon_name(self.addr, self.len, name);
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        let aligned = (offset | len) & (PAGE_SIZE - 1) == 0;
        match offset.checked_add(len) {
            Some(end) if aligned && end <= self.len => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: our own mapping (the type's invariant), which nothing
        // references; after the fork the child has its own copy.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut _, self.len as usize) };
    }
}

/// The 4 bytes of `bytes` (4-aligned: a word of a shared mapping that
/// other processes change only with atomic instructions) as an atomic.
///
/// # Panics
/// If `bytes` is not 4 bytes at a 4-aligned address.
#[must_use]
pub fn atomic_u32(bytes: &[u8]) -> &std::sync::atomic::AtomicU32 {
    assert!(bytes.len() == 4 && (bytes.as_ptr() as usize).is_multiple_of(4));
    // SAFETY: in bounds and aligned (checked); AtomicU32 has the size and
    // alignment of u32, any 4 bytes are a valid value, and the reference
    // lives no longer than the borrow of `bytes`.
    unsafe { &*bytes.as_ptr().cast::<std::sync::atomic::AtomicU32>() }
}

/// A shared read+write mapping of the whole of `file`, a memfd of our own
/// that nothing else truncates.
pub fn map_own_memfd(file: &File) -> io::Result<memmap2::MmapMut> {
    // SAFETY: the file is our own memfd: no other process has it, and we
    // never shrink it, so the mapping stays valid for its life.
    unsafe { memmap2::MmapMut::map_mut(file) }
}

/// Names the anonymous mappings in `[addr, addr + len)` in
/// `/proc/PID/maps`. Best effort: a kernel without `CONFIG_ANON_VMA_NAME`
/// refuses, and nothing depends on the name. Only makes a system call, so
/// it may run in the forked stage.
pub fn set_anon_name(addr: u64, len: u64, name: &[u8; NAME_MAX]) {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    // SAFETY: the kernel reads at most NAME_MAX bytes of `name` (which is
    // that long; without a NUL among them the call fails with EINVAL) and
    // changes the name attribute of the mappings in the range, never their
    // contents or protection: any range, mapped or not, is sound (an
    // unmapped or file-backed one fails with ENOMEM or EBADF).
    unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        );
    }
}

/// Maps `file` (the program, or its interpreter) read-only and private.
pub fn map_program(file: &File) -> io::Result<Mmap> {
    // SAFETY: memmap2's contract is that nobody modifies the file while it
    // is mapped. A program file modified while it runs is as unsupported
    // here as under execve (which refuses with ETXTBSY): we read it as it
    // was, and a concurrent writer can only change the bytes we read, which
    // every parser here treats as untrusted input.
    unsafe { Mmap::map(file) }
}

/// The text's page images: the pages of each range come from `file` at the
/// byte range paired with it (zero-filled past its end), except the pages in
/// `patched` (runtime page address, page image).
///
/// # Panics
/// If a byte range is not inside `file`.
#[must_use]
pub fn text_image(
    file: &Arc<Mmap>,
    parts: &[(TextRange, Range<usize>)],
    patched: Vec<(u64, Box<[u8]>)>,
) -> TextImage {
    let slices: Vec<(TextRange, &[u8])> =
        parts.iter().map(|(r, b)| (*r, &file[b.clone()])).collect();
    let owner: Arc<dyn Send + Sync> = file.clone();
    // SAFETY: every slice points into the mapping of `file`, which `owner`
    // keeps alive as long as the image, and which is never written (a
    // private read-only mapping). A file mapping is readable up to the end
    // of its last page (the kernel zero-fills past the end of the file), so
    // each slice is readable up to the next page boundary past its end.
    unsafe { TextImage::new(&slices, patched, owner) }
}
