//! The library inside an embedding program: what a session does to the
//! process that spawns it (its signal handlers, its fds, its threads and
//! children), with the watchdog made before the program is planned.
//!
//! Each test looks at process-wide state (handlers, the process group,
//! the fd table, children), so they run one at a time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Held by each test: they look at process-wide state.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("uprobe-embedding-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Our children (of every thread) whose name is `comm`.
fn children_named(comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok())
        {
            let c = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if c.trim_end() == comm {
                out.push(k);
            }
        }
    }
    out
}

static HITS: AtomicU32 = AtomicU32::new(0);
static OTHER_PID: AtomicI64 = AtomicI64::new(0);
static OUR_PID: AtomicI64 = AtomicI64::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    HITS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: getpid(2) as a bare system call (no libc state).
    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
    if pid != OUR_PID.load(Ordering::SeqCst) {
        OTHER_PID.store(pid, Ordering::SeqCst);
    }
}

#[test]
fn a_signal_to_the_process_group_while_a_session_is_planned_runs_our_handler_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    OUR_PID.store(i64::from(std::process::id()), Ordering::SeqCst);
    // SAFETY: all-zero bytes are a valid sigaction (no handler, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_usr1 as *const () as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler only does atomic operations and a bare system call.
    let installed = unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) };
    assert_eq!(installed, 0);
    // Probes on every function of python, with no cache: the planning
    // takes tens of ms, while the watchdog waits for its order.
    let cache = scratch("signal");
    let spawner = std::thread::spawn(move || {
        uprobe_exec::Command::new("/usr/bin/python3.11")
            .args(["-c", "pass"])
            .env_list([
                format!("XDG_CACHE_HOME={}", cache.display()),
                "PATH=/usr/bin:/bin".into(),
            ])
            .probe("*")
            .spawn()
            .map(|s| s.wait().map(|r| r.exit))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let watchdog = loop {
        if let Some(&w) = children_named("uprobe-exec-wdp").first() {
            break w;
        }
        assert!(Instant::now() < deadline, "no waiting watchdog seen");
        std::thread::sleep(Duration::from_micros(200));
    };
    // What a signal to our process group (a terminal's SIGINT or SIGWINCH,
    // a supervisor's kill -- -PGID) does to the two of us.
    for pid in [std::process::id() as i32, watchdog] {
        // SAFETY: kill(2) of ourselves and of our watchdog.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
    let r = spawner.join().unwrap();
    assert!(
        matches!(r, Ok(Ok(uprobe_exec::Exit::Code(0)))),
        "the session: {r:?}"
    );
    let (hits, other) = (
        HITS.load(Ordering::SeqCst),
        OTHER_PID.load(Ordering::SeqCst),
    );
    assert!(
        hits == 1 && other == 0,
        "our SIGUSR1 handler ran {hits} times, also in process {other}"
    );
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn sessions_that_start_or_fail_leave_no_thread_fd_or_child() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (fds0, tasks0) = (count("/proc/self/fd"), count("/proc/self/task"));
    for i in 0..30 {
        match i % 3 {
            0 => {
                let r = uprobe_exec::Command::new("/bin/true")
                    .spawn()
                    .unwrap()
                    .wait()
                    .unwrap();
                assert_eq!(r.exit, uprobe_exec::Exit::Code(0));
            }
            // Failures before the watchdog's order: it must exit and be reaped.
            1 => assert!(uprobe_exec::Command::new("/no/such/program")
                .spawn()
                .is_err()),
            _ => assert!(uprobe_exec::Command::new("/bin/true")
                .probe("no_such_function")
                .spawn()
                .is_err()),
        }
    }
    let kids: usize = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum();
    // A joined thread can stay listed a moment after its join returns.
    let deadline = Instant::now() + Duration::from_secs(2);
    while count("/proc/self/task") > tasks0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (fds1, tasks1) = (count("/proc/self/fd"), count("/proc/self/task"));
    assert!(
        fds1 <= fds0 && tasks1 <= tasks0 && kids == 0,
        "fds {fds0} -> {fds1}, threads {tasks0} -> {tasks1}, children {kids}"
    );
}

#[test]
fn a_session_spawned_from_a_thread_that_ends_at_once_runs_to_its_end() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..5 {
        let session = std::thread::spawn(|| {
            uprobe_exec::Command::new("/bin/sh")
                .args(["-c", "sleep 0.05; exit 3"])
                .spawn()
                .expect("spawn")
        })
        .join()
        .unwrap();
        let r = session.wait().expect("wait");
        assert_eq!(r.exit, uprobe_exec::Exit::Code(3), "{r:?}");
    }
}

#[test]
fn sessions_from_several_threads_at_once_give_each_program_exactly_execve_s_fds() {
    // Other threads open fds (other sessions' channels, a file opened in a
    // loop) while a start is prepared: the program must get none of the
    // close-on-exec ones, as with fork and exec. The shell lists its own
    // fds (no exec of ls, which would close them for us).
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = scratch("fds");
    let list = |out: &std::path::Path, ours: bool| {
        let script = format!("ls -1 /proc/$$/fd > {}", out.display());
        if ours {
            let r = uprobe_exec::Command::new("/bin/sh")
                .args(["-c", &script])
                .spawn()
                .expect("spawn")
                .wait()
                .expect("wait");
            assert_eq!(r.exit, uprobe_exec::Exit::Code(0), "{r:?}");
        } else {
            let st = std::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::read_to_string(out).unwrap()
    };
    let native = list(&d.join("native"), false);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(std::fs::File::open("/dev/null"));
            }
        })
    };
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| list(&d.join(format!("ours-{t}-{i}")), true))
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let lists: Vec<Vec<String>> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for (t, runs) in lists.into_iter().enumerate() {
        for (i, l) in runs.into_iter().enumerate() {
            assert_eq!(l, native, "thread {t}, run {i}");
        }
    }
}
