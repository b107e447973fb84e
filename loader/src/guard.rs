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

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use uprobe_runtime::counters::Counters;

use crate::error::{Error, Result};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const NR_RT_SIGACTION: u32 = 13;

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
/// from the probe area `[lo, hi)`. Empty if the area straddles a 4 GiB line
/// (the filter compares 32-bit halves).
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
    vec![
        /* 0 */ stmt(LD_ABS, 4),
        /* 1 */ jump(JEQ, AUDIT_ARCH_X86_64, 0, 10),
        /* 2 */ stmt(LD_ABS, 0),
        /* 3 */ jump(JEQ, NR_RT_SIGACTION, 0, 8),
        /* 4 */ stmt(LD_ABS, 16),
        /* 5 */ jump(JEQ, libc::SIGTRAP as u32, 0, 6),
        /* 6 */ stmt(LD_ABS, 12),
        /* 7 */ jump(JEQ, (lo >> 32) as u32, 0, 3),
        /* 8 */ stmt(LD_ABS, 8),
        /* 9 */ jump(JGE, lo as u32, 0, 1),
        /* 10 */ jump(JGE, hi as u32, 0, 1),
        /* 11 */ stmt(RET, libc::SECCOMP_RET_USER_NOTIF),
        /* 12 */ stmt(RET, libc::SECCOMP_RET_ALLOW),
    ]
}

/// What the guard needs to know of the program.
pub struct Target {
    /// Keeps the shared memory mapped.
    pub counters: Arc<Counters>,
    /// Address of the four words holding the program's sigaction
    /// (handler, flags, restorer, mask), mapped in both processes.
    pub program_action: u64,
    /// Address of our trap handler in the program: a process whose code there
    /// is ours is one we guard.
    pub handler: u64,
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
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if pfds[1].revents != 0 || pfds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return;
        }
        if pfds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills the struct we pass.
        if unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut req,
            )
        } != 0
        {
            continue; // ENOENT: the caller died meanwhile.
        }
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        answer(&req, &mut resp, t, magic);
        // SAFETY: SEND reads the struct we pass; a failure means the caller is gone.
        unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
    }
}

/// Reads `buf.len()` bytes at `addr` in process `pid`.
fn peek(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: local is our buffer; remote is only read by the kernel, checked.
    unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) == buf.len() as isize }
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
    // SAFETY: the kernel writes the remote process's memory, checked; local is only read.
    unsafe { libc::process_vm_writev(pid as i32, &local, 1, &remote, 1, 0) == buf.len() as isize }
}

fn answer(
    req: &libc::seccomp_notif,
    resp: &mut libc::seccomp_notif_resp,
    t: &Target,
    magic: &[u8],
) {
    let pid = req.pid;
    let mut code = [0u8; 16];
    if !peek(pid, t.handler, &mut code[..magic.len()]) || &code[..magic.len()] != magic {
        // Not a process of ours (it exec'd another program): let the call through.
        resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        return;
    }
    let (act, oact) = (req.data.args[1], req.data.args[2]);
    let words = |i: u64| {
        // SAFETY: the four words after the site counters, in our shared mapping, 8-aligned.
        unsafe { &*((t.program_action + 8 * i) as *const AtomicU64) }
    };
    let old: Vec<u8> = (0..4)
        .flat_map(|i| words(i).load(Ordering::Relaxed).to_le_bytes())
        .collect();
    if oact != 0 && !poke(pid, oact, &old) {
        resp.error = -libc::EFAULT;
        return;
    }
    if act != 0 {
        let mut new = [0u8; 32];
        if !peek(pid, act, &mut new) {
            resp.error = -libc::EFAULT;
            return;
        }
        for i in 0..4 {
            let w = u64::from_le_bytes(new[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            words(i as u64).store(w, Ordering::Relaxed);
        }
    }
}
