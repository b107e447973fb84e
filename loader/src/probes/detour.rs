//! The dynamic loader's mapping detour: how the pages of a shared object
//! that hold probe sites become text we serve.
//!
//! ld.so makes every executable mapping of an object with one `mmap` system
//! call (glibc's ld.so has exactly one `mov eax, 9; syscall`). We load ld.so
//! ourselves and serve its text, so that site's page gets a `jmp` to the
//! detour below, in the objects' probe area. The detour makes the call as
//! asked; when it mapped a file private and executable, it writes what was
//! asked in a request slot and touches that slot's doorbell page (a ring).
//! The monitor reads the request, writes the runs of pages that hold its
//! probes' sites into the slot's runs page, and answers "runs" (or "left":
//! the mapping stays the file's, as the kernel made it). The detour puts
//! inaccessible anonymous memory over each run and rings again; the monitor registers the runs with the
//! process's userfaultfd and answers "served"; the detour gives the runs
//! the protection asked for. From then on each first touch of a run is
//! served (and patched) like the program's text, and every other page of
//! the object is the file's: shared with every process that maps it,
//! served by the kernel, and named by its path in `/proc/PID/maps`.
//!
//! ```text
//!  ld.so: jmp detour ; nop ; nop        (was: mov eax, 9 ; syscall)
//!  detour: mov eax, 9 ; syscall          the call as asked
//!          error, not PROT_EXEC, not a private file mapping ─▶ back
//!          lea rsp, [rsp-128] ; save rbx rdi rsi rdx r8 r9 r10 r12 r13 r14 r15
//!          gettid ─▶ r13 ; claim a slot: lock cmpxchg [slot], tid (0: free)
//!            (all busy for 1000 yields: leave the file's mapping as it is)
//!          the request into the slot (STEP 1), fstat, SEQ+1 ; ring
//!          answer "runs": mmap(run, PROT_NONE, MAP_FIXED|MAP_ANONYMOUS) each
//!            (the runs from the slot's runs page, which outlives the answer)
//!            (one fails: the file back over every run)
//!          STEP 2, SEQ+1 ; ring
//!          answer "served": mprotect(run, prot) each
//!          anything else: mmap(run, as asked, MAP_FIXED) the file back over each
//!          re-arm the doorbell (munlock, madvise) ; free the slot
//!          restore ; rax = at (or an error)
//!  back:   jmp site+7
//! ```
//!
//! A slot is claimed with the thread's id in shared memory, so no two
//! threads (of any process of the program) use one slot, nor the doorbell
//! page of that slot (in their own process) at once. The doorbell pages are
//! wiped on fork: a child never reads its parent's answer.

use iced_x86::code_asm::{
    dword_ptr, eax, ecx, edi, edx, esi, ptr, qword_ptr, r10, r10d, r12, r13, r13d, r14, r15, r15d,
    r8, r9, r9d, rax, rbx, rcx, rdi, rdx, rsi, rsp, AsmRegister64, CodeAssembler, CodeLabel,
};
use iced_x86::IcedError;

use crate::elf::Image;

/// `mov eax, 9 ; syscall`: the site the detour takes the place of.
pub const MMAP_SITE: [u8; 7] = [0xb8, 0x09, 0, 0, 0, 0x0f, 0x05];

/// Request slots (and doorbell pages).
pub const SLOTS: usize = 64;

/// Bytes of a request slot.
pub const SLOT_BYTES: u64 = 64;

/// A request slot: what the detour writes for the monitor.
pub mod slot {
    /// u32: the thread that holds the slot (0: free).
    pub const TID: u64 = 0;
    /// i32: the file descriptor mapped.
    pub const FD: u64 = 4;
    /// u64: where the mapping is.
    pub const ADDR: u64 = 8;
    /// u64: its length, as asked.
    pub const LEN: u64 = 16;
    /// u64: the file offset.
    pub const OFFSET: u64 = 24;
    /// u32: the protection.
    pub const PROT: u64 = 32;
    /// u32: the flags, as asked.
    pub const FLAGS: u64 = 36;
    /// u32: the slot's request number, one more for each request (written
    /// last): a ring whose number was answered already is a repeat (the
    /// thread's wait was interrupted), which gets no second answer.
    pub const SEQ: u64 = 40;
    /// u64: the file's device (`st_dev`, as `fstat` gives it; 0 if it failed).
    pub const DEV: u64 = 48;
    /// u64: the file's inode (`st_ino`).
    pub const INO: u64 = 56;
    /// u32: which ring of the request this is: [`super::STEP_ASK`] or
    /// [`super::STEP_MAPPED`].
    pub const STEP: u64 = 44;
}

/// A slot's first ring: "this was mapped; which pages are yours?"
pub const STEP_ASK: u32 = 1;

/// A slot's second ring: "the runs you named are anonymous now; register
/// them."
pub const STEP_MAPPED: u32 = 2;

/// Bytes of `struct stat` on x86-64 (the detour's `fstat` buffer).
const STAT_BYTES: i32 = 144;

/// Rounds of looking for a free request slot (each after a `sched_yield`)
/// before a mapping is left as the file's.
const CLAIM_TRIES: u32 = 1000;

/// The monitor's answer "not ours": the mapping stays the file's, as the
/// kernel made it (after the first ring), or the file goes back over the
/// runs (after the second). Any answer but [`RUNS`] or [`SERVED`] is this.
pub const LEFT: u64 = 0;

/// The monitor's answer to the second ring: the runs are registered and
/// served.
pub const SERVED: u64 = 1;

/// The monitor's answer to the first ring: the runs of pages it serves
/// follow (see [`ANSWER_RUNS`]).
pub const RUNS: u64 = 2;

/// Where the detour lives and what it uses, at runtime addresses.
#[derive(Clone, Copy, Debug)]
pub struct Detour {
    /// The `mov eax, 9` in ld.so.
    pub site: u64,
    /// The detour's first byte.
    pub at: u64,
    /// The request slots ([`SLOTS`] of [`SLOT_BYTES`], shared memory).
    pub requests: u64,
    /// The first doorbell page ([`SLOTS`] pages, one per slot).
    pub bells: u64,
    /// The first runs page ([`SLOTS`] pages, one per slot, shared memory
    /// the monitor writes): the runs named in answer to the slot's last
    /// first ring (count at [`ANSWER_COUNT`], runs at [`ANSWER_RUNS`]).
    /// They outlive the doorbell page's answer, which is dropped to ring
    /// again, so that the file can be put back over them whatever the
    /// second answer is, or if none comes.
    pub runs: u64,
    /// A NUL-terminated name for the anonymous text (`/proc/PID/maps`).
    pub name: u64,
}

/// The one `mov eax, 9 ; syscall` in the executable segments of `interp`
/// (link-time address), if there is exactly one.
#[must_use]
pub fn find_site(interp: &Image) -> Option<u64> {
    let mut found = None;
    for s in interp.segments.iter().filter(|s| s.exec) {
        let from = s.offset as usize;
        let to = (s.offset + s.filesz) as usize;
        let bytes = interp.bytes.get(from..to)?;
        for (i, w) in bytes.windows(MMAP_SITE.len()).enumerate() {
            if w == MMAP_SITE {
                if found.is_some() {
                    return None;
                }
                found = Some(s.vaddr.0 + i as u64);
            }
        }
    }
    found
}

/// The 7 bytes patched over the site: `jmp` to the detour, then two `nop`s
/// (never run: the detour comes back after them).
#[must_use]
pub fn patch(d: &Detour) -> Vec<u8> {
    let mut v = super::trampoline::jump_patch(d.site, 5, d.at);
    v.extend_from_slice(&[0x90, 0x90]);
    v
}

/// Offset in the doorbell page of the answer's request number (u32): the
/// slot's [`slot::SEQ`] the answer is for. The status is the first word.
pub const ANSWER_SEQ: u64 = 8;

/// Offset in a slot's runs page of the number of runs (u32).
pub const ANSWER_COUNT: u64 = 16;

/// Offset in a slot's runs page of the runs: (address, length) pairs of
/// u64, page-aligned, inside the mapping, in address order.
pub const ANSWER_RUNS: u64 = 24;

/// Runs an answer holds.
pub const MAX_RUNS: usize = ((4096 - ANSWER_RUNS) / 16) as usize;

/// rcx = the doorbell page of the slot at r12: bells + (slot - requests) * 64.
fn bell_page(a: &mut CodeAssembler, d: &Detour) -> Result<(), IcedError> {
    slot_page(a, d, d.bells)
}

/// rcx = the page of the slot at r12 among [`SLOTS`] pages from `first`
/// (a page per slot): first + (slot - requests) * 64. Clobbers rax.
fn slot_page(a: &mut CodeAssembler, d: &Detour, first: u64) -> Result<(), IcedError> {
    a.mov(rcx, r12)?;
    a.mov(rax, d.requests)?;
    a.sub(rcx, rax)?;
    a.shl(rcx, 6)?;
    a.mov(rax, first)?;
    a.add(rcx, rax)
}

/// Drops the slot's doorbell page, so the next touch faults to the monitor:
/// `munlock` first (a page locked by the program's `mlockall` cannot be
/// dropped), then `madvise(MADV_DONTNEED)`. Clobbers rax, rcx, rdx, rsi,
/// rdi, r11.
fn rearm(a: &mut CodeAssembler, d: &Detour) -> Result<(), IcedError> {
    const MADV_DONTNEED: u32 = 4;
    bell_page(a, d)?;
    a.mov(rdi, rcx)?;
    a.mov(esi, 4096u32)?;
    a.mov(eax, 150u32)?; // munlock
    a.syscall()?;
    bell_page(a, d)?;
    a.mov(rdi, rcx)?;
    a.mov(esi, 4096u32)?;
    a.mov(edx, MADV_DONTNEED)?;
    a.mov(eax, 28u32)?; // madvise
    a.syscall()
}

/// The registers the detour saves (below the red zone), in push order.
const SAVED: [AsmRegister64; 11] = [rbx, rdi, rsi, rdx, r8, r9, r10, r12, r13, r14, r15];

/// Where `reg`, as the caller had it, is saved: its offset from rsp once
/// every register of [`SAVED`] is pushed.
fn saved(reg: AsmRegister64) -> i32 {
    let i = SAVED
        .iter()
        .position(|r| *r == reg)
        .expect("a saved register");
    8 * (SAVED.len() - 1 - i) as i32
}

/// Rings the doorbell of the slot at r12 for the request written there:
/// its number one more, then the answer with that number, read from the
/// doorbell page (a fault until the monitor answers). An answer to another
/// request (a stale page: a repeated ring answered late, or a touch without
/// a request, e.g. mlockall) is dropped and the bell rung again; number 0
/// is nobody's answer (the monitor is gone: a zero page). Leaves the status
/// in r13 (0 when nobody answers).
fn ring(a: &mut CodeAssembler, d: &Detour) -> Result<(), IcedError> {
    let mut again = a.create_label();
    let mut gone = a.create_label();
    let mut answered = a.create_label();
    a.lock().inc(dword_ptr(r12 + slot::SEQ))?;
    a.set_label(&mut again)?;
    bell_page(a, d)?;
    a.mov(eax, dword_ptr(rcx + ANSWER_SEQ))?;
    a.mov(r13, qword_ptr(rcx))?;
    a.cmp(eax, dword_ptr(r12 + slot::SEQ))?;
    a.je(answered)?;
    a.test(eax, eax)?;
    a.jz(gone)?;
    rearm(a, d)?;
    a.jmp(again)?;
    a.set_label(&mut gone)?;
    a.xor(r13d, r13d)?;
    a.set_label(&mut answered)?;
    Ok(())
}

/// Runs `body` for each run in the slot's runs page (those of the answer
/// to its first ring), with r14 at the run (address at [r14], length at
/// [r14+8]); `body` keeps r14 and r15 (system calls do). Then goes on to
/// `then`, or to what follows (`None`).
fn each_run(
    a: &mut CodeAssembler,
    d: &Detour,
    then: Option<CodeLabel>,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut done = then.unwrap_or_else(|| a.create_label());
    slot_page(a, d, d.runs)?;
    a.lea(r14, ptr(rcx + ANSWER_RUNS))?;
    a.mov(r15d, dword_ptr(rcx + ANSWER_COUNT))?;
    a.cmp(r15d, MAX_RUNS as u32)?;
    a.jbe(top)?;
    a.mov(r15d, MAX_RUNS as u32)?;
    a.set_label(&mut top)?;
    a.test(r15d, r15d)?;
    a.jz(done)?;
    body(a)?;
    a.add(r14, 16)?;
    a.dec(r15d)?;
    a.jmp(top)?;
    if then.is_none() {
        a.set_label(&mut done)?;
    }
    Ok(())
}

/// The detour's code, assembled at `d.at`.
pub fn encode(d: &Detour) -> Result<Vec<u8>, IcedError> {
    const PROT_EXEC: u32 = 4;
    const MAP_PRIVATE_FIXED_ANON: u32 = 0x32;
    const MAP_FIXED: u32 = 0x10;
    const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;
    const MAP_ANONYMOUS: u32 = 0x20;
    const PR_SET_VMA: u32 = 0x5356_4d41;
    let (len_at, prot_at, flags_at) = (saved(rsi), saved(rdx), saved(r10));
    let (fd_at, offset_at) = (saved(r8), saved(r9));
    let mut a = CodeAssembler::new(64)?;
    let mut back = a.create_label();
    let mut claim = a.create_label();
    let mut next = a.create_label();
    let mut claimed = a.create_label();
    let mut unclaimed = a.create_label();
    let mut stat_ok = a.create_label();
    let mut restore = a.create_label();
    let mut finish = a.create_label();
    a.mov(eax, 9u32)?;
    a.syscall()?;
    a.cmp(rax, -4095i32)?;
    a.jae(back)?;
    a.test(edx, PROT_EXEC)?;
    a.jz(back)?;
    // A private file mapping: (flags & 3) == MAP_PRIVATE, not anonymous.
    a.mov(ecx, r10d)?;
    a.and(ecx, 3u32)?;
    a.cmp(ecx, 2u32)?;
    a.jne(back)?;
    a.test(r10d, MAP_ANONYMOUS)?;
    a.jnz(back)?;
    a.lea(rsp, ptr(rsp - 128))?;
    for r in SAVED {
        a.push(r)?;
    }
    a.mov(rbx, rax)?;
    a.mov(eax, 186u32)?; // gettid
    a.syscall()?;
    a.mov(r13d, eax)?;
    // Tries for a free slot; all of them busy that long, the mapping stays
    // the file's (unprobed) rather than wait on.
    a.mov(edi, CLAIM_TRIES)?;
    a.set_label(&mut claim)?;
    a.mov(r12, d.requests)?;
    a.set_label(&mut next)?;
    a.xor(eax, eax)?;
    a.lock().cmpxchg(dword_ptr(r12), r13d)?;
    a.je(claimed)?;
    a.add(r12, SLOT_BYTES as i32)?;
    a.mov(rcx, d.requests + SLOTS as u64 * SLOT_BYTES)?;
    a.cmp(r12, rcx)?;
    a.jb(next)?;
    // Every slot is taken (64 threads mapping objects at once): yield.
    a.dec(edi)?;
    a.jz(unclaimed)?;
    a.mov(eax, 24u32)?; // sched_yield
    a.syscall()?;
    a.jmp(claim)?;
    a.set_label(&mut claimed)?;
    // The request.
    a.mov(qword_ptr(r12 + slot::ADDR), rbx)?;
    a.mov(rax, qword_ptr(rsp + len_at))?;
    a.mov(qword_ptr(r12 + slot::LEN), rax)?;
    a.mov(rax, qword_ptr(rsp + offset_at))?;
    a.mov(qword_ptr(r12 + slot::OFFSET), rax)?;
    a.mov(eax, dword_ptr(rsp + fd_at))?;
    a.mov(dword_ptr(r12 + slot::FD), eax)?;
    a.mov(eax, dword_ptr(rsp + prot_at))?;
    a.mov(dword_ptr(r12 + slot::PROT), eax)?;
    a.mov(eax, dword_ptr(rsp + flags_at))?;
    a.mov(dword_ptr(r12 + slot::FLAGS), eax)?;
    a.mov(dword_ptr(r12 + slot::STEP), STEP_ASK)?;
    // The file's identity as this process sees it, for the monitor to
    // check the file it finds: fstat(fd) into a buffer below the saves.
    a.mov(edi, dword_ptr(rsp + fd_at))?;
    a.sub(rsp, STAT_BYTES)?;
    a.mov(rsi, rsp)?;
    a.mov(eax, 5u32)?; // fstat
    a.syscall()?;
    a.mov(rcx, qword_ptr(rsp))?; // st_dev
    a.mov(rdx, qword_ptr(rsp + 8))?; // st_ino
    a.add(rsp, STAT_BYTES)?;
    a.test(rax, rax)?;
    a.jz(stat_ok)?;
    a.xor(ecx, ecx)?;
    a.xor(edx, edx)?;
    a.set_label(&mut stat_ok)?;
    a.mov(qword_ptr(r12 + slot::DEV), rcx)?;
    a.mov(qword_ptr(r12 + slot::INO), rdx)?;
    ring(&mut a, d)?;
    // Not "runs": the mapping stays the file's.
    a.cmp(r13, RUNS as i32)?;
    a.jne(finish)?;
    // Anonymous memory in place of the file's over each run, inaccessible
    // until it is registered: under mlockall(MCL_FUTURE) an accessible one
    // would be filled with zero pages at once, which no fault would ever
    // replace. One that cannot be made: the file back over all of them.
    each_run(&mut a, d, None, |a| {
        a.mov(rdi, qword_ptr(r14))?;
        a.mov(rsi, qword_ptr(r14 + 8))?;
        a.xor(edx, edx)?;
        a.mov(r10d, MAP_PRIVATE_FIXED_ANON)?;
        a.mov(r8, -1i64)?;
        a.xor(r9d, r9d)?;
        a.mov(eax, 9u32)?;
        a.syscall()?;
        a.cmp(rax, qword_ptr(r14))?;
        a.jne(restore)?;
        // Its name in /proc/PID/maps (an error here changes nothing).
        a.mov(edi, PR_SET_VMA)?;
        a.xor(esi, esi)?;
        a.mov(rdx, qword_ptr(r14))?;
        a.mov(r10, qword_ptr(r14 + 8))?;
        a.mov(r8, d.name)?;
        a.mov(eax, 157u32)?; // prctl
        a.syscall()
    })?;
    rearm(&mut a, d)?;
    a.mov(dword_ptr(r12 + slot::STEP), STEP_MAPPED)?;
    ring(&mut a, d)?;
    a.cmp(r13, SERVED as i32)?;
    a.jne(restore)?;
    // Served: the protection asked for (a locked mapping is filled now,
    // through faults we serve). One that fails makes the call fail.
    each_run(&mut a, d, None, |a| {
        let mut ok = a.create_label();
        a.mov(rdi, qword_ptr(r14))?;
        a.mov(rsi, qword_ptr(r14 + 8))?;
        a.mov(rdx, qword_ptr(rsp + prot_at))?;
        a.mov(eax, 10u32)?; // mprotect
        a.syscall()?;
        a.test(rax, rax)?;
        a.jz(ok)?;
        a.mov(rbx, rax)?;
        a.set_label(&mut ok)?;
        Ok(())
    })?;
    a.jmp(finish)?;
    a.set_label(&mut restore)?;
    // Not served: the file back over each run, as it was asked for.
    each_run(&mut a, d, Some(finish), |a| {
        a.mov(rdi, qword_ptr(r14))?;
        a.mov(rsi, qword_ptr(r14 + 8))?;
        a.mov(rdx, qword_ptr(rsp + prot_at))?;
        a.mov(r10, qword_ptr(rsp + flags_at))?;
        a.and(r10d, !MAP_FIXED_NOREPLACE)?;
        a.or(r10d, MAP_FIXED)?;
        a.mov(r8, qword_ptr(rsp + fd_at))?;
        a.mov(r9, qword_ptr(rsp + offset_at))?;
        a.add(r9, rdi)?;
        a.sub(r9, rbx)?;
        a.mov(eax, 9u32)?;
        a.syscall()
    })?;
    a.set_label(&mut finish)?;
    // Re-arm the doorbell, then free the slot.
    rearm(&mut a, d)?;
    a.mov(dword_ptr(r12 + slot::TID), 0u32)?;
    a.set_label(&mut unclaimed)?;
    a.mov(rax, rbx)?;
    for r in SAVED.iter().rev() {
        a.pop(*r)?;
    }
    a.lea(rsp, ptr(rsp + 128))?;
    a.set_label(&mut back)?;
    a.jmp(d.site + MMAP_SITE.len() as u64)?;
    a.assemble(d.at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    const D: Detour = Detour {
        site: 0x7f00_0002_0c9c,
        at: 0x7f00_1000_0000,
        requests: 0x7f00_1100_0000,
        bells: 0x7f00_1100_2000,
        runs: 0x7f00_1001_2000,
        name: 0x7f00_1000_0f00,
    };

    #[test]
    fn the_patch_jumps_to_the_detour_and_the_detour_back_after_the_site() {
        let p = patch(&D);
        assert_eq!(p.len(), MMAP_SITE.len());
        let jmp = Decoder::with_ip(64, &p, D.site, DecoderOptions::NONE).decode();
        assert_eq!(jmp.near_branch_target(), D.at);
        let code = encode(&D).unwrap();
        let insns: Vec<_> = Decoder::with_ip(64, &code, D.at, DecoderOptions::NONE)
            .into_iter()
            .collect();
        let last = insns.last().unwrap();
        assert_eq!(last.mnemonic(), Mnemonic::Jmp);
        assert_eq!(last.near_branch_target(), D.site + 7);
        // The system calls it makes, in order: mmap as asked, gettid,
        // sched_yield, fstat, munlock and madvise (a stale answer to the
        // first ring), mmap anonymous and prctl (each run), munlock and
        // madvise (re-arm), the same for a stale answer to the second ring,
        // mprotect (each run), mmap the file back (each run), munlock and
        // madvise (re-arm).
        let nrs: Vec<u64> = insns
            .windows(2)
            .filter(|w| w[1].mnemonic() == Mnemonic::Syscall)
            .map(|w| w[0].immediate(1))
            .collect();
        assert_eq!(
            nrs,
            [9, 186, 24, 5, 150, 28, 9, 157, 150, 28, 150, 28, 10, 9, 150, 28]
        );
        // Pushes and pops pair up.
        let pushes = insns
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Push)
            .count();
        let pops = insns
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Pop)
            .count();
        assert_eq!((pushes, pops), (11, 11));
    }
}

/// The detour run in this process on a file mapping, with answers written
/// where the monitor writes them. The doorbell page here is private
/// anonymous memory, not registered with a userfaultfd: once the detour
/// drops it to ring again, it reads a zero page, which is what it reads
/// when the monitor is gone (its userfaultfd closed).
#[cfg(test)]
#[allow(unsafe_code)]
mod run_tests {
    use super::*;

    const P: usize = 4096;

    fn mmap(len: usize, prot: i32, flags: i32) -> usize {
        // SAFETY: a fresh mapping of our own, at an address the kernel picks.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        assert_ne!(p, libc::MAP_FAILED);
        p as usize
    }

    /// The line of /proc/self/maps that holds `addr`.
    fn maps_line(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find(|l| {
                let range = l.split(' ').next().unwrap();
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                a <= addr && addr < b
            })
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn the_file_goes_back_over_the_runs_when_nobody_answers_the_second_ring() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("ux-detour-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lib");
        std::fs::write(&path, vec![0x41u8; 3 * P]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let code = mmap(3 * P, rw | libc::PROT_EXEC, anon);
        let requests = mmap(P, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS);
        let bells = mmap(SLOTS * P, rw, anon);
        let runs = mmap(SLOTS * P, rw, anon);
        let target = mmap(3 * P, libc::PROT_NONE, anon);
        let d = Detour {
            site: code as u64,
            at: (code + P) as u64,
            requests: requests as u64,
            bells: bells as u64,
            runs: runs as u64,
            name: (code + 2 * P) as u64,
        };
        let detour = encode(&d).unwrap();
        let site = patch(&d);
        let put = |at: usize, bytes: &[u8]| {
            // SAFETY: every address written is in one of the mappings made
            // above, writable, for the length written.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
        };
        put(code + P, &detour);
        put(code, &site);
        put(code + MMAP_SITE.len(), &[0xc3]);
        put(code + 2 * P, b"served\0");
        // The slot's number starts at 1 (as the objects' area sets it): the
        // first ring is request 2, answered "runs": the middle page.
        put(requests + slot::SEQ as usize, &1u32.to_le_bytes());
        put(bells, &RUNS.to_le_bytes());
        put(bells + ANSWER_SEQ as usize, &2u32.to_le_bytes());
        put(runs + ANSWER_COUNT as usize, &1u32.to_le_bytes());
        put(
            runs + ANSWER_RUNS as usize,
            &((target + P) as u64).to_le_bytes(),
        );
        put(runs + ANSWER_RUNS as usize + 8, &(P as u64).to_le_bytes());
        let ret: u64;
        // SAFETY: runs the detour (our code, written above) with the
        // registers of mmap(target, 3 pages, r-x, private|fixed, fd, 0); it
        // comes back to the `ret` after the site, having touched only the
        // mappings above and the target range.
        unsafe {
            core::arch::asm!(
                "call {site}",
                site = in(reg) code as u64,
                inout("rdi") target as u64 => _,
                inout("rsi") (3 * P) as u64 => _,
                inout("rdx") (libc::PROT_READ | libc::PROT_EXEC) as u64 => _,
                inout("r10") (libc::MAP_PRIVATE | libc::MAP_FIXED) as u64 => _,
                inout("r8") file.as_raw_fd() as u64 => _,
                inout("r9") 0u64 => _,
                lateout("rax") ret,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        assert_eq!(ret, target as u64, "the call succeeds as asked");
        // Every page of the mapping is the file's again, the run too, and
        // reads what the file holds; the slot is free.
        for i in 0..3 {
            let line = maps_line(target + i * P);
            assert!(
                line.contains(" r-xp ") && line.ends_with(path.to_str().unwrap()),
                "page {i}: {line}"
            );
        }
        // SAFETY: the middle page is mapped readable (checked above).
        assert_eq!(unsafe { *((target + P) as *const u8) }, 0x41);
        // SAFETY: the slot is in the requests page mapped above.
        assert_eq!(unsafe { *(requests as *const u32) }, 0, "the slot is free");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
