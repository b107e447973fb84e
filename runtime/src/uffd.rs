//! A small, fully owned userfaultfd wrapper over the kernel UAPI in
//! `linux-raw-sys`.
//!
//! Why not the `userfaultfd` crate: it runs bindgen at build time (a fresh
//! machine has no libclang), lacks the newer features, and reports `EAGAIN`
//! from `UFFDIO_COPY` as a partial copy of a huge length. The kernel's answers
//! matter on the fault path, so every one of them is named here.
//!
//! # References
//! userfaultfd(2), ioctl_userfaultfd(2), `Documentation/admin-guide/mm/userfaultfd.rst`.

// This module is one of the few places allowed to issue raw ioctls.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use linux_raw_sys::general as uapi;
use linux_raw_sys::ioctl as uioctl;
use rustix::io::Errno;

/// The size of a page on x86-64; the fault server serves whole pages.
pub const PAGE_SIZE: u64 = 4096;

/// How the kernel lets us handle faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdMode {
    /// Faults from user and kernel mode reach us, and fork events are
    /// available (needs `vm.unprivileged_userfaultfd=1` or `CAP_SYS_PTRACE`).
    Full,
    /// `UFFD_USER_MODE_ONLY`: what an ordinary user gets. Kernel-mode accesses
    /// to a page we have not served fail with `EFAULT`, and the kernel refuses
    /// `UFFD_FEATURE_EVENT_FORK` (it needs `CAP_SYS_PTRACE`).
    UserModeOnly,
}

impl UffdMode {
    /// The name used in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            UffdMode::Full => "full",
            UffdMode::UserModeOnly => "user-mode-only",
        }
    }
}

/// Feature bits we ask for.
pub mod features {
    use linux_raw_sys::general as uapi;
    /// A forked child's mm gets its own uffd, delivered to us in an event.
    pub const EVENT_FORK: u64 = uapi::UFFD_FEATURE_EVENT_FORK as u64;
    /// `mremap` of a registered range.
    pub const EVENT_REMAP: u64 = uapi::UFFD_FEATURE_EVENT_REMAP as u64;
    /// `MADV_DONTNEED`/`MADV_REMOVE` of a registered range.
    pub const EVENT_REMOVE: u64 = uapi::UFFD_FEATURE_EVENT_REMOVE as u64;
    /// `munmap` of a registered range.
    pub const EVENT_UNMAP: u64 = uapi::UFFD_FEATURE_EVENT_UNMAP as u64;
    /// Page-fault messages carry the faulting thread's id.
    pub const THREAD_ID: u64 = uapi::UFFD_FEATURE_THREAD_ID as u64;
    /// MINOR registration of shmem mappings, and `UFFDIO_CONTINUE`.
    pub const MINOR_SHMEM: u64 = uapi::UFFD_FEATURE_MINOR_SHMEM as u64;
}

/// One userfaultfd, bound to the mm of the process that created it (or, for
/// one received in a fork event, to that child's mm).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

/// What `UFFDIO_COPY` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The page is installed and the faulting threads woken.
    Copied,
    /// `EEXIST`: another fault already installed the page. The threads still
    /// waiting on it must be woken by hand.
    AlreadyPresent,
    /// `EAGAIN`: a remove/unmap/remap event is pending for this mm; read the
    /// events, then retry.
    Retry,
    /// `ESRCH`: the mm is gone (the process exited or exec'd).
    Gone,
    /// `ENOENT`: the range is not inside one registered mapping: it was
    /// unmapped since, or a multi-page copy crosses a boundary where the
    /// program split its text (`mprotect`, `madvise`).
    NotInOneMapping,
    /// Anything else: a bug or a kernel we do not understand.
    Failed(Errno),
}

impl CopyOutcome {
    /// What an install ioctl (`UFFDIO_COPY`, `UFFDIO_CONTINUE`) of `len`
    /// bytes answered, and how many bytes it installed: all of them, or what
    /// the kernel counted (`done`, negative when it installed none) before
    /// it stopped.
    fn of(answer: Result<(), Errno>, done: i64, len: u64) -> (CopyOutcome, u64) {
        let outcome = match answer {
            Ok(()) => CopyOutcome::Copied,
            Err(Errno::EXIST) => CopyOutcome::AlreadyPresent,
            Err(Errno::AGAIN) => CopyOutcome::Retry,
            Err(Errno::SRCH) => CopyOutcome::Gone,
            Err(Errno::NOENT) => CopyOutcome::NotInOneMapping,
            Err(e) => CopyOutcome::Failed(e),
        };
        let installed = match outcome {
            CopyOutcome::Copied => len,
            _ => u64::try_from(done).unwrap_or(0).min(len),
        };
        (outcome, installed)
    }
}

/// One event read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread touched a missing page.
    PageFault {
        /// The faulting address (not page aligned).
        addr: u64,
        /// The fault was a write.
        write: bool,
        /// The faulting thread, when `THREAD_ID` was negotiated.
        tid: u32,
    },
    /// The process forked; `uffd` serves the child's mm.
    Fork(Uffd),
    /// `madvise(MADV_DONTNEED)` dropped `[start, end)`.
    Remove {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `munmap` of `[start, end)`.
    Unmap {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `mremap` moved `len` bytes from `from` to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length in bytes.
        len: u64,
    },
    /// An event this build does not know.
    Unknown(u8),
}

/// One message as `read(2)` on a uffd fills it; see [`Uffd::read_events`].
/// Only the kernel writes one (its field is private): a fork message's fd
/// is then an fd the kernel gave us, which [`decode`] takes once.
#[repr(transparent)]
pub struct RawMsg(uapi::uffd_msg);

/// A zeroed message buffer to read into.
#[must_use]
pub fn empty_msgs<const N: usize>() -> [RawMsg; N] {
    // SAFETY: uffd_msg is plain old data (integers and unions of integers);
    // all-zero bytes are a valid value (event 0, which decodes as Unknown).
    unsafe { std::mem::zeroed() }
}

impl Uffd {
    /// Creates a userfaultfd for the calling process's mm, in full mode when
    /// the kernel allows it and in user-mode-only mode otherwise. The fd is
    /// non-blocking and close-on-exec.
    ///
    /// Only raw system calls: safe to call in a child forked from a threaded
    /// process.
    pub fn create() -> Result<(Uffd, UffdMode), Errno> {
        let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let create = |flags: i32| -> Result<OwnedFd, Errno> {
            // SAFETY: userfaultfd(2) takes an int and returns a new fd or -1;
            // it touches no memory of ours.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
            if fd < 0 {
                Err(Errno::from_raw_os_error(
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                ))
            } else {
                // SAFETY: the kernel just returned this fd to us; nobody else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
            }
        };
        match create(base) {
            Ok(fd) => Ok((Uffd { fd }, UffdMode::Full)),
            Err(Errno::PERM) => {
                let fd = create(base | uapi::UFFD_USER_MODE_ONLY as i32)?;
                Ok((Uffd { fd }, UffdMode::UserModeOnly))
            }
            Err(e) => Err(e),
        }
    }

    /// Wraps an fd known to be a userfaultfd.
    #[must_use]
    pub fn from_owned(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    /// Gives the fd up, e.g. to send it to the monitor.
    #[must_use]
    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }

    /// `UFFDIO_API`: the handshake. Returns the features the kernel offers.
    pub fn api(&self, features: u64) -> Result<u64, Errno> {
        let mut api = uapi::uffdio_api {
            api: uapi::UFFD_API as u64,
            features,
            ioctls: 0,
        };
        self.ioctl(uioctl::UFFDIO_API, &mut api)?;
        Ok(api.features)
    }

    /// `UFFDIO_REGISTER` in MISSING mode: first touches of `[start, start+len)`
    /// become events for us.
    pub fn register_missing(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut reg = uapi::uffdio_register {
            range: uapi::uffdio_range { start, len },
            mode: uapi::UFFDIO_REGISTER_MODE_MISSING as u64,
            ioctls: 0,
        };
        self.ioctl(uioctl::UFFDIO_REGISTER, &mut reg)
    }

    /// `UFFDIO_REGISTER` in MISSING and MINOR modes (shmem or hugetlbfs
    /// mappings only; the API handshake must have asked for
    /// `UFFD_FEATURE_MINOR_SHMEM`): first touches of pages the file does not
    /// hold, and of pages it holds but the process has not mapped, become
    /// events for us.
    pub fn register_missing_minor(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut reg = uapi::uffdio_register {
            range: uapi::uffdio_range { start, len },
            mode: u64::from(uapi::UFFDIO_REGISTER_MODE_MISSING | uapi::UFFDIO_REGISTER_MODE_MINOR),
            ioctls: 0,
        };
        self.ioctl(uioctl::UFFDIO_REGISTER, &mut reg)
    }

    /// `UFFDIO_CONTINUE` of `[dst, dst+len)`: maps the pages the file behind
    /// the (MINOR-registered) mapping holds there, copying nothing, waking
    /// the threads that wait on them unless `wake` is false. Returns what
    /// happened and how many bytes were mapped before the kernel stopped.
    pub fn continue_partial(&self, dst: u64, len: u64, wake: bool) -> (CopyOutcome, u64) {
        let mut c = uapi::uffdio_continue {
            range: uapi::uffdio_range { start: dst, len },
            mode: if wake {
                0
            } else {
                // UFFDIO_CONTINUE_MODE_DONTWAKE (linux/userfaultfd.h; not
                // in linux-raw-sys).
                1
            },
            mapped: 0,
        };
        let done = self.ioctl(uioctl::UFFDIO_CONTINUE, &mut c);
        CopyOutcome::of(done, c.mapped, len)
    }

    /// `UFFDIO_COPY` of `len` bytes from `src` (in our address space) to `dst`
    /// (in the served mm), waking the threads that wait on it unless `wake` is
    /// false.
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes.
    pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64, wake: bool) -> CopyOutcome {
        // SAFETY: forwarded contract.
        unsafe { self.copy_partial(dst, src, len, wake).0 }
    }

    /// Like [`Uffd::copy`], and also returns how many bytes were installed
    /// before the kernel stopped (a multi-page copy stops at the first page
    /// that is already present, with `EEXIST`).
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes.
    pub unsafe fn copy_partial(
        &self,
        dst: u64,
        src: *const u8,
        len: u64,
        wake: bool,
    ) -> (CopyOutcome, u64) {
        let mode = if wake {
            0
        } else {
            uapi::UFFDIO_COPY_MODE_DONTWAKE as u64
        };
        let mut c = uapi::uffdio_copy {
            dst,
            src: src as u64,
            len,
            mode,
            copy: 0,
        };
        let done = self.ioctl(uioctl::UFFDIO_COPY, &mut c);
        CopyOutcome::of(done, c.copy, len)
    }

    /// `UFFDIO_WAKE`: wakes threads waiting on `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mut r = uapi::uffdio_range { start, len };
        self.ioctl(uioctl::UFFDIO_WAKE, &mut r)
    }

    /// Whether the mm this uffd serves still exists. Unregistering a page
    /// where nothing of ours is registered changes nothing, but the kernel
    /// must take a reference on the mm first, and answers `ENOMEM` when it is
    /// gone (`EINVAL` or success while it lives).
    #[must_use]
    pub fn mm_alive(&self) -> bool {
        /// A page no program of ours maps (below every ELF base, above mmap_min_addr).
        const PROBE: u64 = 0x10000;
        let mut r = uapi::uffdio_range {
            start: PROBE,
            len: PAGE_SIZE,
        };
        self.ioctl(uioctl::UFFDIO_UNREGISTER, &mut r) != Err(Errno::NOMEM)
    }

    /// Reads up to `buf.len()` events without blocking. Returns how many were
    /// read (0 when none is pending).
    pub fn read_events(&self, buf: &mut [RawMsg]) -> Result<usize, Errno> {
        let size = std::mem::size_of::<RawMsg>();
        // SAFETY: buf is valid for buf.len()*size bytes, and any bytes are a
        // valid uffd_msg.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                buf.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(buf),
            )
        };
        match rustix::io::read(&self.fd, bytes) {
            Ok(n) => Ok(n / size),
            Err(Errno::AGAIN) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn ioctl<T>(&self, request: u32, arg: &mut T) -> Result<(), Errno> {
        // SAFETY: every caller passes the argument struct that `request`
        // expects, by a pointer valid for the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
        if r == 0 {
            Ok(())
        } else {
            Err(Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ))
        }
    }
}

/// Decodes one message read by [`Uffd::read_events`]. A fork message's fd
/// is taken out: decoding the same message again gives `Unknown(0)`, so
/// the fd has exactly one owner.
#[must_use]
pub fn decode(raw: &mut RawMsg) -> Event {
    let msg = &mut raw.0;
    let event = msg.event;
    // In each arm: the kernel fills the union member that `event` names,
    // and every member is plain integers, so reading it is sound.
    match u32::from(event) {
        uapi::UFFD_EVENT_PAGEFAULT => {
            // SAFETY: a page fault message carries `pagefault`.
            let pf = unsafe { msg.arg.pagefault };
            // SAFETY: `feat` is a union of one u32 (ptid, with
            // UFFD_FEATURE_THREAD_ID, else 0): any bits are valid.
            let tid = unsafe { pf.feat.ptid };
            Event::PageFault {
                addr: pf.address,
                write: pf.flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
                tid,
            }
        }
        uapi::UFFD_EVENT_FORK => {
            // SAFETY: a fork message carries `fork`.
            let ufd = unsafe { msg.arg.fork.ufd };
            // SAFETY: only the kernel fills a RawMsg (read_events): it
            // installed this new fd in our table for this message, and the
            // message is marked decoded below, so nobody else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(ufd as i32) };
            msg.event = 0;
            Event::Fork(Uffd { fd })
        }
        uapi::UFFD_EVENT_REMOVE => {
            // SAFETY: a remove message carries `remove`.
            let r = unsafe { msg.arg.remove };
            Event::Remove {
                start: r.start,
                end: r.end,
            }
        }
        uapi::UFFD_EVENT_UNMAP => {
            // SAFETY: an unmap message carries `remove` (the kernel's layout).
            let r = unsafe { msg.arg.remove };
            Event::Unmap {
                start: r.start,
                end: r.end,
            }
        }
        uapi::UFFD_EVENT_REMAP => {
            // SAFETY: a remap message carries `remap`.
            let r = unsafe { msg.arg.remap };
            Event::Remap {
                from: r.from,
                to: r.to,
                len: r.len,
            }
        }
        _ => Event::Unknown(event),
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
