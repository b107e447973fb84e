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

/// A minimal handler on a thread pinned to `cpu`: it reads `uffd`'s
/// events and answers each page fault with `answer(uffd, page)`, until a
/// byte is written to the returned pipe end.
fn minimal_handler(
    uffd: Uffd,
    cpu: usize,
    answer: impl Fn(&Uffd, u64) + Send + 'static,
) -> (std::thread::JoinHandle<()>, std::os::fd::OwnedFd) {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let handler = std::thread::spawn(move || {
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
                    answer(&uffd, addr & !(PAGE_SIZE - 1));
                }
            }
        }
    });
    (handler, w)
}

/// The floor: a handler loop that only reads events and copies pages.
pub fn floor(cpu: usize) -> Vec<f64> {
    let (uffd, region, src) = uffd_region();
    let src_addr = src.as_ptr() as u64;
    let region_addr = region as u64;
    let (server, w) = minimal_handler(uffd, cpu, move |uffd, page| {
        let src = (src_addr + (page - region_addr)) as *const u8;
        // SAFETY: src is a page of the source buffer.
        unsafe { uffd.copy(page, src, PAGE_SIZE, true) };
    });
    pin(0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let times = touch(&region_pages(region, PAGES));
    rustix::io::write(&w, &[1]).expect("stop");
    server.join().expect("handler thread");
    times
}

/// How a minimal handler installs a run of pages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// `UFFDIO_COPY` from our buffer into fresh anonymous pages.
    Copy,
    /// `UFFDIO_CONTINUE` of the pages a memfd already holds (minor faults).
    Continue,
}

/// A minimal handler on `cpu` that installs `1 + around` pages per fault
/// with `how`; ns per page installed (the whole touch over the pages).
pub fn minimal_around(cpu: usize, around: usize, how: Install) -> Vec<f64> {
    let len = PAGES * PS;
    let (uffd, _) = Uffd::create().expect("userfaultfd");
    let (region, src) = match how {
        Install::Copy => {
            let src = anon(len, libc::PROT_READ | libc::PROT_WRITE);
            // SAFETY: src is `len` bytes of fresh writable memory.
            unsafe { std::ptr::write_bytes(src, 0xab, len) };
            uffd.api(0).expect("UFFDIO_API");
            let region = anon(len, libc::PROT_READ);
            uffd.register_missing(region as u64, len as u64)
                .expect("UFFDIO_REGISTER");
            (region, src as u64)
        }
        Install::Continue => {
            let fd = rustix::fs::memfd_create("bench-minor", rustix::fs::MemfdFlags::CLOEXEC)
                .expect("memfd");
            rustix::io::write(&fd, &vec![0xabu8; len]).expect("fill memfd");
            // SAFETY: a new private read-only mapping of the whole memfd.
            let region = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    fd.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(region, libc::MAP_FAILED, "mmap");
            uffd.api(uprobe_runtime::uffd::features::MINOR_SHMEM)
                .expect("UFFDIO_API with MINOR_SHMEM");
            uffd.register_missing_minor(region as u64, len as u64)
                .expect("UFFDIO_REGISTER minor");
            // The mapping keeps the memfd's pages.
            std::mem::forget(fd);
            (region.cast::<u8>(), 0)
        }
    };
    let region_addr = region as u64;
    let (server, w) = minimal_handler(uffd, cpu, move |uffd, page| {
        let end = (page + (1 + around as u64) * PAGE_SIZE).min(region_addr + len as u64);
        match how {
            Install::Copy => {
                let s = (src + (page - region_addr)) as *const u8;
                // SAFETY: s starts `end - page` bytes of the source buffer.
                let _ = unsafe { uffd.copy_partial(page, s, end - page, true) };
            }
            Install::Continue => {
                let _ = uffd.continue_partial(page, end - page, true);
            }
        }
    });
    pin(0);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let t = Instant::now();
    let _ = touch(&region_pages(region, PAGES));
    let total = t.elapsed().as_nanos() as f64;
    rustix::io::write(&w, &[1]).expect("stop");
    server.join().expect("handler thread");
    vec![total / PAGES as f64]
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

/// The kernel's file-backed read fault with its fault-around (one VMA over
/// the whole file, in the page cache): ns per page, the whole touch over
/// the pages, as for our fault-around.
pub fn kernel_file_around() -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("uprobe-exec-bench-around-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pages");
    std::fs::write(&path, vec![0xcdu8; PAGES * PS]).expect("write");
    let f = std::fs::File::open(&path).expect("open");
    // SAFETY: a new private read-only mapping of our whole file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PS,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    pin(0);
    let t = Instant::now();
    let _ = touch(&region_pages(p.cast(), PAGES));
    let total = t.elapsed().as_nanos() as f64;
    let _ = std::fs::remove_dir_all(&dir);
    vec![total / PAGES as f64]
}

/// The kernel's anonymous read fault (maps the zero page).
pub fn kernel_anon() -> Vec<f64> {
    let region = anon(PAGES * PS, libc::PROT_READ);
    pin(0);
    touch(&region_pages(region, PAGES))
}

/// Section 1: the fault service per page, every path in the same run,
/// the rounds alternating the paths.
pub fn section() -> crate::Section {
    use std::fmt::Write as _;
    let mut md = String::new();
    eprintln!("fault service…");
    let reps = 7;
    type Measure = Box<dyn Fn() -> Vec<f64>>;
    let paths: Vec<(&str, Measure)> = vec![
        (
            "uprobe-exec fault server, same CPU",
            Box::new(|| ours(0, 0)),
        ),
        (
            "uprobe-exec fault server, other CPU",
            Box::new(|| ours(1, 0)),
        ),
        (
            "minimal uffd handler (floor), same CPU",
            Box::new(|| floor(0)),
        ),
        (
            "minimal uffd handler (floor), other CPU",
            Box::new(|| floor(1)),
        ),
        (
            "uprobe-exec, fault-around 15 (per page), same CPU",
            Box::new(|| ours(0, 15)),
        ),
        (
            "uprobe-exec, fault-around 15 (per page), other CPU",
            Box::new(|| ours(1, 15)),
        ),
        (
            "kernel file-backed fault, 1 page per VMA",
            Box::new(kernel_file),
        ),
        (
            "kernel file-backed fault-around (per page)",
            Box::new(kernel_file_around),
        ),
        ("kernel anonymous read fault", Box::new(kernel_anon)),
        (
            "minimal handler, `UFFDIO_COPY` of 16 pages per fault (per page), other CPU",
            Box::new(|| minimal_around(1, 15, Install::Copy)),
        ),
        (
            "minimal handler, `UFFDIO_CONTINUE` of 16 pages per fault (per page), other CPU",
            Box::new(|| minimal_around(1, 15, Install::Continue)),
        ),
        (
            "minimal handler, `UFFDIO_COPY` of 64 pages per fault (per page), other CPU",
            Box::new(|| minimal_around(1, 63, Install::Copy)),
        ),
        (
            "minimal handler, `UFFDIO_CONTINUE` of 64 pages per fault (per page), other CPU",
            Box::new(|| minimal_around(1, 63, Install::Continue)),
        ),
    ];
    // Rounds alternate the paths, so drift on the VM hits them alike.
    let mut rows: Vec<(&str, Vec<f64>)> = paths.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for _ in 0..reps {
        for ((_, f), (_, v)) in paths.iter().zip(&mut rows) {
            v.extend(f());
        }
    }
    // The rows pinned this thread to one CPU; every later section's
    // processes would inherit it (and two threads would share one CPU).
    unpin();
    let floor_same = crate::median(&rows[2].1);
    let floor_other = crate::median(&rows[3].1);
    let _ = writeln!(md, "## 1. Fault service, per 4 KiB page\n");
    let _ = writeln!(md, "Each row touches {} fresh pages in each of {reps} rounds (the rounds alternate the rows), timing every touch on the faulting thread, pinned to CPU 0.\n", PAGES);
    let _ = writeln!(md, "| path | median ns | vs floor (same placement) |");
    let _ = writeln!(md, "| --- | --- | --- |");
    for (i, (name, v)) in rows.iter().enumerate() {
        let floor = if name.contains("other CPU") {
            floor_other
        } else {
            floor_same
        };
        let ratio = if i < 6 {
            format!("{:.2}×", crate::median(v) / floor)
        } else {
            "–".into()
        };
        let _ = writeln!(md, "| {name} | {:.0} | {ratio} |", crate::median(v));
    }
    let ours_vs_floor = crate::median(&rows[0].1) / floor_same;
    let around_kernel = crate::median(&rows[7].1);
    let around_same = crate::median(&rows[4].1) / around_kernel;
    let around_other = crate::median(&rows[5].1) / around_kernel;
    let _ = writeln!(
        md,
        "\nFault-around, per page installed, against the kernel's file fault-around (the page cache's pages mapped, nothing copied): {around_same:.2}× with the server on the same CPU, {around_other:.2}× on the other. What a minimal handler on the other CPU reaches per page against it: copying 16 pages per fault {:.2}×, mapping 16 pages a memfd holds (`UFFDIO_CONTINUE`, minor faults) {:.2}×; 64 pages per fault: {:.2}× and {:.2}×.",
        crate::median(&rows[9].1) / around_kernel,
        crate::median(&rows[10].1) / around_kernel,
        crate::median(&rows[11].1) / around_kernel,
        crate::median(&rows[12].1) / around_kernel,
    );
    let _ = writeln!(
        md,
        "\nThe distribution: [fault-latency.svg](fault-latency.svg).\n"
    );
    let series: Vec<(&str, &[f64])> = [0usize, 2, 1, 3, 6, 8]
        .iter()
        .map(|&i| (rows[i].0, rows[i].1.as_slice()))
        .collect();
    let svg = crate::plot::cdf_svg("Fault service latency per page (CDF)", &series);
    std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fault-latency.svg"),
        svg,
    )
    .expect("write svg");
    crate::Section {
        md,
        goals: vec![
            (
                "fault server within 1.15× of the minimal handler (single page, same CPU)".into(),
                format!("{ours_vs_floor:.2}×"),
                ours_vs_floor <= 1.15,
            ),
            (
                "serving with fault-around (15) at most 2× the kernel's file fault-around per page (server on the other CPU, as in a run)".into(),
                format!("{around_other:.2}× (same CPU {around_same:.2}×)"),
                around_other <= 2.0,
            ),
        ],
    }
}
