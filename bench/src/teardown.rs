//! Teardown of a fork storm: how long until every process of the program is
//! gone, when uprobe-exec's monitor is killed (its watchdog then kills the
//! program), against the kernel killing the same storm natively with one
//! `killpg`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Live (not zombie) members of process group `pgid`.
fn members(pgid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // After the command's closing parenthesis: state, ppid, pgrp.
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
                return false;
            };
            let mut f = rest.split(' ');
            let state = f.next().unwrap_or("");
            let pgrp = f.nth(1).and_then(|p| p.parse::<i32>().ok());
            state != "Z" && pgrp == Some(pgid)
        })
        .count()
}

/// Starts `argv` in its own process group and waits for its "ready" line.
fn start(argv: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "ready\n", "{argv:?}");
    child
}

/// Milliseconds from the kill until the group is empty.
fn gone_after(mut child: Child, kill: impl FnOnce(i32)) -> f64 {
    let pgid = i32::try_from(child.id()).expect("pid");
    let t = Instant::now();
    kill(pgid);
    let _ = child.wait();
    while members(pgid) > 0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// Medians in ms of `runs` alternating teardowns of a storm of `n`
/// processes: (native `killpg`, uprobe-exec's monitor killed).
pub fn storm(ux: &str, harm: &str, n: usize, runs: usize) -> (f64, f64) {
    let n = n.to_string();
    let (mut native, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let c = start(&[harm, "storm", &n]);
        // SAFETY: signalling the process group of our own child.
        native.push(gone_after(c, |g| unsafe {
            libc::killpg(g, libc::SIGKILL);
        }));
        let c = start(&[ux, "-q", "-p", "hit", harm, "storm", &n]);
        // SAFETY: signalling our own child, the monitor, only.
        ours.push(gone_after(c, |g| unsafe {
            libc::kill(g, libc::SIGKILL);
        }));
    }
    (crate::median(&native), crate::median(&ours))
}
