//! The SIGTRAP guard: keeps the program from replacing the probes' trap
//! handler, without hiding anything from it.
//!
//! A seccomp filter sends every `rt_sigaction(SIGTRAP, …)` the program makes
//! (except the trap handler's own) to this thread as a user notification.
//! The thread records the program's handler in shared memory, answers the
//! call as the kernel would (old action included), and leaves ours in place.
//! The trap handler hands every SIGTRAP that is not a probe hit to the
//! recorded handler, so the program's own `int3`s and `kill(…, SIGTRAP)`
//! still reach it. Programs exec'd later inherit the filter; their calls are
//! passed through to the kernel unchanged.
//!
//! Not honoured for the program's handler: its `sa_mask`, `SA_RESETHAND` and
//! `SA_NODEFER` (our handler's flags apply).
//!
//! Reading the caller's memory needs ptrace access, which the kernel denies
//! to an unprivileged monitor once the process is not dumpable
//! (`PR_SET_DUMPABLE 0`, as ssh-agent and gpg-agent do). So the filter also
//! routes `prctl(PR_SET_DUMPABLE, …)` here: while the process is still
//! dumpable, the guard opens its `/proc/PID/mem`, which stays usable for that
//! mm whatever the process's dumpability later (the kernel checks access at
//! open). A process the guard cannot read at all (e.g. forked after it made
//! itself non-dumpable) and that has a SIGTRAP handler installed gets `EPERM`
//! from `rt_sigaction(SIGTRAP)`, never a silent replacement of ours.

#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use linux_raw_sys::general::{__NR_prctl, __NR_rt_sigaction};
use linux_raw_sys::ptrace::AUDIT_ARCH_X86_64;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use uprobe_runtime::area::Shared;

use crate::error::{Error, Result};

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: notify on `rt_sigaction(SIGTRAP, …)` unless the call comes
/// from the probe area `[lo, hi)`, and on `prctl(PR_SET_DUMPABLE, …)`. Empty
/// if the area straddles a 4 GiB line (the filter compares 32-bit halves).
#[must_use]
pub fn filter(lo: u64, hi: u64) -> Vec<libc::sock_filter> {
    if lo >> 32 != (hi - 1) >> 32 {
        return Vec::new();
    }
    const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // struct seccomp_data: nr @0, arch @4, instruction_pointer @8, args @16.
    // A jump goes to its index + 1 + offset: NOTIFY is 14, ALLOW 15.
    vec![
        /* 0 */ stmt(LD_ABS, 4),
        /* 1 */ jump(JEQ, AUDIT_ARCH_X86_64, 0, 13),
        /* 2 */ stmt(LD_ABS, 0),
        /* 3 */ jump(JEQ, __NR_prctl, 8, 0),
        /* 4 */ jump(JEQ, __NR_rt_sigaction, 0, 10),
        /* 5 */ stmt(LD_ABS, 16),
        /* 6 */ jump(JEQ, libc::SIGTRAP as u32, 0, 8),
        /* 7 */ stmt(LD_ABS, 12),
        /* 8 */ jump(JEQ, (lo >> 32) as u32, 0, 5),
        /* 9 */ stmt(LD_ABS, 8),
        /* 10 */ jump(JGE, lo as u32, 0, 3),
        /* 11 */ jump(JGE, hi as u32, 2, 3),
        /* 12 */ stmt(LD_ABS, 16),
        /* 13 */ jump(JEQ, libc::PR_SET_DUMPABLE as u32, 0, 1),
        /* 14 */ stmt(RET, libc::SECCOMP_RET_USER_NOTIF),
        /* 15 */ stmt(RET, libc::SECCOMP_RET_ALLOW),
    ]
}

/// What the guard needs to know of the program.
pub struct Target {
    /// The probe area's shared memory, where the program's own sigaction
    /// is kept (handler, flags, restorer, mask) for the trap handler.
    pub shared: Arc<Shared>,
    /// Address of our trap handler in the program: a process whose code there
    /// is ours is one we guard.
    pub handler: u64,
    /// Calls refused because the caller could not be read (see the module doc).
    pub refused: Arc<AtomicU64>,
}

/// The running guard thread; dropping it stops and joins it.
pub struct Guard {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Guard {
    /// Starts serving notifications from `listener`.
    pub fn start(listener: OwnedFd, target: Target) -> Result<Guard> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::sys("creating the guard's pipe", e))?;
        let thread = std::thread::Builder::new()
            .name("uprobe-exec-guard".into())
            .spawn(move || serve(&listener, &r, &target))
            .map_err(|e| Error::sys("starting the guard thread", e))?;
        Ok(Guard {
            stop: Some(w),
            thread: Some(thread),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &OwnedFd, stop: &OwnedFd, t: &Target) {
    let code = uprobe_runtime::trap::code();
    let magic = &code[..16.min(code.len())];
    let mut mem = Memory::default();
    loop {
        let mut pfds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut pfds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(_) => return,
        }
        let (notif, stopped) = (pfds[0].revents(), pfds[1].revents());
        if !stopped.is_empty() || notif.intersects(PollFlags::HUP | PollFlags::ERR) {
            return;
        }
        if !notif.contains(PollFlags::IN) {
            continue;
        }
        // SAFETY: seccomp_notif is plain data (integers), for which all-zero
        // bytes are a valid value; the kernel wants it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV writes one seccomp_notif into `req`, which is
        // one, valid and ours for the call.
        let received = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut req,
            )
        };
        if received != 0 {
            continue; // ENOENT: the caller died meanwhile.
        }
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        if req.data.nr == __NR_prctl as i32 {
            mem.before_dumpable(listener, &req, t, magic);
            resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        } else {
            answer(&mut mem, &req, &mut resp, t, magic);
        }
        // SAFETY: NOTIF_SEND only reads the seccomp_notif_resp we pass; a
        // failure means the caller is gone.
        unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
    }
}

/// The guard's access to the memory of the program's processes.
#[derive(Default)]
struct Memory {
    /// `/proc/PID/mem` of processes that made themselves non-dumpable, opened
    /// just before they did, by thread-group id. Each stays bound to the mm
    /// it was opened for: once that mm is gone (exit or exec) it reads 0 bytes.
    mem: HashMap<u32, File>,
    /// Processes known not to be ours (they exec'd another program), by
    /// (thread-group id, start time): a start time survives exec, not reuse.
    foreign: HashSet<(u32, u64)>,
}

impl Memory {
    /// Before `prctl(PR_SET_DUMPABLE, …)` of thread `req.pid` goes through:
    /// keeps its process's memory open if it is ours and still readable.
    fn before_dumpable(
        &mut self,
        listener: &OwnedFd,
        req: &libc::seccomp_notif,
        t: &Target,
        magic: &[u8],
    ) {
        let Some(tgid) = status_field(req.pid, "Tgid:").and_then(|v| v.parse().ok()) else {
            return;
        };
        if self.mem.contains_key(&tgid) && self.read(req.pid, tgid, t.handler, &mut [0]).is_ok() {
            return;
        }
        let mut code = [0u8; 16];
        if self.read(req.pid, tgid, t.handler, &mut code[..magic.len()]) != Ok(())
            || &code[..magic.len()] != magic
        {
            return;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", req.pid))
        else {
            return;
        };
        // The pid might have been reused between RECV and the open: only
        // keep the file if the caller is still waiting on this notification.
        // SAFETY: NOTIF_ID_VALID only reads the u64 we pass.
        let valid = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &req.id,
            )
        };
        if valid == 0 {
            self.mem.insert(tgid, f);
        }
    }

    /// Reads `buf.len()` bytes at `addr` in the process of thread `pid`
    /// (thread group `tgid`).
    fn read(&mut self, pid: u32, tgid: u32, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        if let Some(f) = self.mem.get(&tgid) {
            match f.read_exact_at(buf, addr) {
                Ok(()) => return Ok(()),
                // Its mm is gone (exec or exit): the tgid is someone else's now.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.mem.remove(&tgid);
                }
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        peek(pid, addr, buf)
    }

    /// Writes `buf` at `addr` in the process of thread `pid`.
    fn write(&self, pid: u32, tgid: u32, addr: u64, buf: &[u8]) -> bool {
        match self.mem.get(&tgid) {
            Some(f) => f.write_all_at(buf, addr).is_ok(),
            None => poke(pid, addr, buf),
        }
    }
}

/// The value of `key` in `/proc/PID/status` (readable whatever the
/// process's dumpability).
fn status_field(pid: u32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// The identity of the process of thread `pid` across pid reuse: (tgid,
/// start time in clock ticks, from `/proc/PID/stat`, readable whatever the
/// process's dumpability).
fn identity(pid: u32, tgid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at state (3).
    let rest = &s[s.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(22 - 3)?.parse().ok()?;
    Some((tgid, start))
}

/// Whether the process of thread `pid` has a handler installed for SIGTRAP.
/// Ours always has one; a program that exec'd starts without.
fn catches_sigtrap(pid: u32) -> bool {
    status_field(pid, "SigCgt:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_none_or(|m| m & (1 << (libc::SIGTRAP - 1)) != 0)
}

/// Reads `buf.len()` bytes at `addr` in process `pid`; the errno on failure.
fn peek(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most buf.len() bytes into `local`, our
    // buffer, borrowed mutably for the call; the remote range is another
    // process's memory, which the kernel checks and only reads.
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    if n == buf.len() as isize {
        Ok(())
    } else if n < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Err(libc::EFAULT)
    }
}

/// Writes `buf` at `addr` in process `pid`.
fn poke(pid: u32, addr: u64, buf: &[u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: the kernel only reads `local` (buf, borrowed for the call) and
    // writes the other process's memory, which is not ours: nothing of this
    // process changes.
    unsafe { libc::process_vm_writev(pid as i32, &local, 1, &remote, 1, 0) == buf.len() as isize }
}

fn answer(
    mem: &mut Memory,
    req: &libc::seccomp_notif,
    resp: &mut libc::seccomp_notif_resp,
    t: &Target,
    magic: &[u8],
) {
    let pid = req.pid;
    let tgid = status_field(pid, "Tgid:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(pid);
    let mut code = [0u8; 16];
    let id = identity(pid, tgid);
    let ours = match mem.read(pid, tgid, t.handler, &mut code[..magic.len()]) {
        Ok(()) => &code[..magic.len()] == magic,
        // We may not read it (it is not dumpable). Ours always has a SIGTRAP
        // handler (the probes'), and a program that exec'd starts without:
        // with one, and not known to have exec'd, it may be ours, so the
        // call must not go through.
        Err(libc::EPERM | libc::EACCES)
            if catches_sigtrap(pid) && id.is_none_or(|id| !mem.foreign.contains(&id)) =>
        {
            t.refused.fetch_add(1, Ordering::Relaxed);
            resp.error = -libc::EPERM;
            return;
        }
        Err(_) => false,
    };
    if !ours {
        // Not a process of ours (it exec'd another program): let the call through.
        if let Some(id) = id {
            mem.foreign.insert(id);
        }
        resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        return;
    }
    let (act, oact) = (req.data.args[1], req.data.args[2]);
    let words = t.shared.program_action();
    let old: Vec<u8> = words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    // As the kernel does: read the new action, set it, then write the old one.
    if act != 0 {
        let mut new = [0u8; 32];
        if mem.read(pid, tgid, act, &mut new).is_err() {
            resp.error = -libc::EFAULT;
            return;
        }
        for (word, bytes) in words.iter().zip(new.chunks_exact(8)) {
            let w = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
            word.store(w, Ordering::Relaxed);
        }
    }
    if oact != 0 && !mem.write(pid, tgid, oact, &old) {
        resp.error = -libc::EFAULT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every jump lands inside the program, and it ends in the two returns.
    #[test]
    fn filter_jumps_stay_inside() {
        let f = filter(0x7000_0000, 0x7000_4000);
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        assert_eq!(f[f.len() - 2].code, ret);
        assert_eq!(f[f.len() - 2].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(f[f.len() - 1].k, libc::SECCOMP_RET_ALLOW);
        for (i, ins) in f.iter().enumerate() {
            if ins.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(i + 1 + usize::from(ins.jt) < f.len(), "jt of {i}");
                assert!(i + 1 + usize::from(ins.jf) < f.len(), "jf of {i}");
            }
        }
        assert!(filter(0xffff_f000, 0x1_0000_1000).is_empty());
    }

    /// The kernel's numbers, as the filter compared them when they were
    /// written out by hand.
    #[test]
    fn filter_compares_the_x86_64_numbers() {
        let f = filter(0x7000_0000, 0x7000_4000);
        assert_eq!(f[1].k, 0xc000_003e, "AUDIT_ARCH_X86_64");
        assert_eq!(f[3].k, 157, "prctl");
        assert_eq!(f[4].k, 13, "rt_sigaction");
    }
}
