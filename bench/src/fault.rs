//! Fault service per 4 KiB page, as the faulting thread sees it: our fault
//! server, a minimal userfaultfd handler written inline (the floor for this
//! mechanism), the kernel's file-backed fault with one page per VMA (so no
//! fault-around), and the kernel's anonymous read fault.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Instant;

use uprobe_runtime::uffd::{decode, empty_msgs, Event};
use uprobe_runtime::{Server, TextImage, TextRange, Uffd, PAGE_SIZE};

/// Pages per measurement.
pub const PAGES: usize = 512;
const PS: usize = PAGE_SIZE as usize;

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is an array of integers, for which all-zero bytes
    // are a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t; CPU_SET checks `cpu` is in range.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: reads `set` for our own thread (0).
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// Lets the calling thread run on every CPU again, as it did before
/// [`pin`]: the processes the later sections start inherit its affinity.
pub fn unpin() {
    // SAFETY: as in `pin`: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
    for cpu in 0..cpus.min(libc::CPU_SETSIZE as usize) {
        // SAFETY: `set` is a valid cpu_set_t; `cpu` is in range.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: reads `set` for our own thread (0).
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// A fresh anonymous mapping; never unmapped (the benchmark is short-lived).
fn anon(len: usize, prot: i32) -> *mut u8 {
    // SAFETY: a new private anonymous mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    p.cast()
}

/// Reads one byte of each page, timing each read; ns per read.
fn touch(pages: &[*const u8]) -> Vec<f64> {
    let mut out = Vec::with_capacity(pages.len());
    for &p in pages {
        let t = Instant::now();
        // SAFETY: p is a mapped (or uffd-served) readable page.
        unsafe { std::ptr::read_volatile(p) };
        out.push(t.elapsed().as_nanos() as f64);
    }
    out
}

fn region_pages(base: *mut u8, n: usize) -> Vec<*const u8> {
    (0..n)
        .map(|i| base.wrapping_add(i * PS).cast_const())
        .collect()
}

/// A registered region and the source pages it is served from.
fn uffd_region() -> (Uffd, *mut u8, &'static [u8]) {
    let src = anon(PAGES * PS, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: src is PAGES pages of fresh writable memory.
    unsafe { std::ptr::write_bytes(src, 0xab, PAGES * PS) };
    // SAFETY: the mapping lives as long as the process.
    let src: &'static [u8] = unsafe { std::slice::from_raw_parts(src, PAGES * PS) };
    let region = anon(PAGES * PS, libc::PROT_READ);
    let (uffd, _) = Uffd::create().expect("userfaultfd");
    uffd.api(0).expect("UFFDIO_API");
    uffd.register_missing(region as u64, (PAGES * PS) as u64)
        .expect("UFFDIO_REGISTER");
    (uffd, region, src)
}

/// Our fault server (`fault_around` pages with each fault) on `cpu`;
/// returns ns per page touched (for fault-around: per page installed).
pub fn ours(cpu: usize, fault_around: usize) -> Vec<f64> {
    let (uffd, region, src) = uffd_region();
    // SAFETY: src lives for the rest of the process.
    let image = Arc::new(unsafe {
        TextImage::new(
            &[(
                TextRange {
                    start: region as u64,
                    pages: PAGES,
                },
                src,
            )],
            Vec::new(),
            Arc::new(()),
        )
    });
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let server = std::thread::spawn(move || {
        pin(cpu);
        let mut s = Server::new(image, uffd);
        s.set_fault_around(fault_around);
        let wake = s.run(r.as_fd(), None).expect("serve");
        assert_eq!(wake, uprobe_runtime::Wake::Stopped);
    });
    pin(0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let t = Instant::now();
    let times = touch(&region_pages(region, PAGES));
    let total = t.elapsed().as_nanos() as f64;
    rustix::io::write(&w, &[1]).expect("stop");
    server.join().expect("server thread");
    if fault_around == 0 {
        times
    } else {
        vec![total / PAGES as f64]
    }
}

/// The floor: a handler loop that only reads events and copies pages.
pub fn floor(cpu: usize) -> Vec<f64> {
    let (uffd, region, src) = uffd_region();
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let src_addr = src.as_ptr() as u64;
    let region_addr = region as u64;
    let server = std::thread::spawn(move || {
        pin(cpu);
        let mut msgs = empty_msgs::<16>();
        loop {
            let mut p = [
                libc::pollfd {
                    fd: uffd.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
            if p[1].revents != 0 {
                return;
            }
            let n = uffd.read_events(&mut msgs).unwrap_or(0);
            for m in &mut msgs[..n] {
                if let Event::PageFault { addr, .. } = decode(m) {
                    let page = addr & !(PAGE_SIZE - 1);
                    let src = (src_addr + (page - region_addr)) as *const u8;
                    // SAFETY: src is a page of the source buffer.
                    unsafe { uffd.copy(page, src, PAGE_SIZE, true) };
                }
            }
        }
    });
    pin(0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let times = touch(&region_pages(region, PAGES));
    rustix::io::write(&w, &[1]).expect("stop");
    server.join().expect("handler thread");
    times
}

/// The kernel's file-backed read fault, one page per VMA (no fault-around);
/// the file is in the page cache.
pub fn kernel_file() -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("uprobe-exec-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pages");
    std::fs::write(&path, vec![0xcdu8; PAGES * PS]).expect("write");
    let f = std::fs::File::open(&path).expect("open");
    let mut pages = Vec::with_capacity(PAGES);
    for i in 0..PAGES {
        // SAFETY: a new private read-only mapping of one page of our file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PS,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                (i * PS) as i64,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        pages.push(p.cast::<u8>().cast_const());
    }
    pin(0);
    let times = touch(&pages);
    let _ = std::fs::remove_dir_all(&dir);
    times
}

/// The kernel's anonymous read fault (maps the zero page).
pub fn kernel_anon() -> Vec<f64> {
    let region = anon(PAGES * PS, libc::PROT_READ);
    pin(0);
    touch(&region_pages(region, PAGES))
}
