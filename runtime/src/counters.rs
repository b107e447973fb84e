//! Hit counters in anonymous shared memory (a memfd, never a path).
//!
//! The monitor maps them before the fork, so the program and all its forks
//! share the one mapping at the same address: a count survives a crash of
//! the program and covers its children.

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// `len` u64 counters, shared with the program.
#[derive(Debug)]
pub struct Counters {
    addr: u64,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Counters {}
// SAFETY: as above.
unsafe impl Sync for Counters {}

impl Counters {
    /// Creates `len` zeroed counters in a fresh memfd, mapped shared.
    pub fn new(len: usize) -> Result<Counters, Errno> {
        let fd = rustix::fs::memfd_create("uprobe-exec-counters", rustix::fs::MemfdFlags::CLOEXEC)?;
        let bytes = (len.max(1) * 8).div_ceil(4096) * 4096;
        rustix::fs::ftruncate(&fd, bytes as u64)?;
        // SAFETY: a new shared mapping of our own memfd, at a kernel-chosen address.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        Ok(Counters {
            addr: p as u64,
            len,
            _fd: fd,
        })
    }

    /// Address of counter `i` (the same in the program, which inherits the mapping).
    #[must_use]
    pub fn addr_of(&self, i: usize) -> u64 {
        assert!(i < self.len);
        self.addr + 8 * i as u64
    }

    /// The mapping: (start, end).
    #[must_use]
    pub fn range(&self) -> (u64, u64) {
        (
            self.addr,
            self.addr + ((self.len.max(1) * 8).div_ceil(4096) * 4096) as u64,
        )
    }

    /// Sets counter `i` (a word the program only reads, such as a row's pid).
    pub fn set(&self, i: usize, v: u64) {
        assert!(i < self.len);
        // SAFETY: in bounds of our live mapping, 8-aligned; atomic store.
        unsafe { (*(self.addr_of(i) as *const AtomicU64)).store(v, Ordering::Relaxed) }
    }

    /// Reads counter `i`.
    #[must_use]
    pub fn get(&self, i: usize) -> u64 {
        assert!(i < self.len);
        // SAFETY: in bounds of our live mapping, 8-aligned; the program
        // updates it with `lock inc`, so an atomic load is the right view.
        unsafe { (*(self.addr_of(i) as *const AtomicU64)).load(Ordering::Relaxed) }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        let (a, b) = self.range();
        // SAFETY: our own mapping, no longer used.
        let _ = unsafe { rustix::mm::munmap(a as *mut _, (b - a) as usize) };
    }
}
