//! Memory (issue 16, item 4): what the program's text costs in memory, as
//! the kernel accounts it (proportional set size, `Pss` in
//! `/proc/PID/smaps`, of python's executable mappings), for 16 processes
//! of python: forked by one python in one run, and 16 runs side by side;
//! natively, with every page served (`--serve-text all`) and with only the
//! probed pages served (the default).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::Section;

const PY: &str = "/usr/bin/python3.11";

/// Some work in C code (json, re), as each process does before it is measured.
const WORK: &str = "import json, re, os, sys, time
def work():
    json.loads(json.dumps({'a': [1, 2, 3], 'b': 'x' * 100}))
    re.sub('a+', 'b', 'caaat' * 10)
    sorted(range(1000), key=lambda x: -x)
";

/// Pss in kB of the executable mappings of python's text in `smaps` (the
/// file's, or ours: the text file we serve is named after it).
pub const PSS: &str = "def pss(pid):
    n, take = 0, False
    for l in open(f'/proc/{pid}/smaps'):
        f = l.split()
        if '-' in f[0] and len(f) >= 5:
            take = f[1] == 'r-xp' and 'python3.11' in l
        elif take and f[0] == 'Pss:':
            n += int(f[1])
    return n
";

/// One python that forks 16 children, each working, and sums the Pss of
/// their text and its own.
fn forked_script() -> String {
    format!(
        "{WORK}{PSS}r, w = os.pipe()
kids = []
for i in range(16):
    pid = os.fork()
    if pid == 0:
        work(); os.write(w, b'x'); time.sleep(30); os._exit(0)
    kids.append(pid)
work()
for _ in kids: os.read(r, 1)
print(f'pss_kb={{pss(os.getpid()) + sum(pss(k) for k in kids)}}', flush=True)
for k in kids: os.kill(k, 9); os.waitpid(k, 0)
"
    )
}

/// The Pss the forked workload prints, under `prefix` (uprobe-exec and its
/// options, or nothing).
fn forked(prefix: &[&str]) -> Option<u64> {
    let script = forked_script();
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([PY, "-c", &script]);
    crate::printed(&argv, "pss_kb=").map(|kb| kb as u64)
}

/// Pss in kB of python's text in process `pid`, read here.
fn pss_of(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let mut n = 0;
    let mut take = false;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first().is_some_and(|a| a.contains('-')) && f.len() >= 5 {
            take = f[1] == "r-xp" && l.contains("python3.11");
        } else if take && f.first() == Some(&"Pss:") {
            n += f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    n
}

/// The pids of the pythons whose command line holds `mark` (not the
/// uprobe-exec processes that run them).
fn marked(mark: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.starts_with(PY.as_bytes()) && String::from_utf8_lossy(&c).contains(mark)
            })
        })
        .collect()
}

/// 16 runs of python side by side under `prefix`: each works, says it is
/// ready and sleeps; the sum of their text's Pss once all are ready.
fn side_by_side(prefix: &[&str]) -> Option<u64> {
    let mark = format!("pss-mark-{}", std::process::id());
    let script = format!("{WORK}work()\nprint('ready', flush=True)\ntime.sleep(30)\n# {mark}\n");
    let mut children = Vec::new();
    for _ in 0..16 {
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend([PY, "-c", &script]);
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        children.push(child);
    }
    for c in &mut children {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut()?)
            .read_line(&mut line)
            .ok()?;
    }
    let pids = marked(&mark);
    let total = (pids.len() == 16).then(|| pids.iter().map(|&p| pss_of(p)).sum());
    for c in &mut children {
        let _ = c.kill();
    }
    // Ours end their program when they die; natively the child is python.
    for pid in pids {
        // SAFETY: SIGKILL to a python of ours, by pid, which may be gone.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    for mut c in children {
        let _ = c.wait();
    }
    total
}

/// The section, and its goal: probed-only serving costs no more memory
/// than natively, within 5%.
pub fn section(ux: &str, runs: usize) -> Section {
    let setups: [(&str, Vec<&str>); 3] = [
        ("native", Vec::new()),
        (
            "uprobe-exec `--serve-text all -p PyList_Append` (every page served)",
            vec![ux, "-q", "--serve-text", "all", "-p", "PyList_Append"],
        ),
        (
            "uprobe-exec `-p PyList_Append` (the default: the probed pages served)",
            vec![ux, "-q", "-p", "PyList_Append"],
        ),
    ];
    let mut md = String::new();
    let _ = writeln!(md, "## 11. Memory: the text's proportional set size\n");
    let _ = writeln!(md, "Pss (kB, `/proc/PID/smaps`) of python3.11's executable mappings summed over 16 processes of python that each ran some json and re: one python that forked 16 children (17 processes) in one run, and 16 runs started side by side. Medians of {runs} measurements.\n");
    let _ = writeln!(md, "| setup | one run, 16 forks | 16 runs |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let mut rows = Vec::new();
    for (name, prefix) in &setups {
        let f: Vec<f64> = (0..runs)
            .filter_map(|_| forked(prefix))
            .map(|v| v as f64)
            .collect();
        let s: Vec<f64> = (0..runs)
            .filter_map(|_| side_by_side(prefix))
            .map(|v| v as f64)
            .collect();
        let cell = |v: &[f64]| {
            if v.is_empty() {
                "failed".to_string()
            } else {
                format!("{:.0}", crate::median(v))
            }
        };
        let _ = writeln!(md, "| {name} | {} | {} |", cell(&f), cell(&s));
        rows.push((
            (!f.is_empty()).then(|| crate::median(&f)),
            (!s.is_empty()).then(|| crate::median(&s)),
        ));
    }
    let mut goals = Vec::new();
    if let (Some(native), Some(probed)) = (rows[0].1, rows[2].1) {
        let all = rows[1].1.unwrap_or(f64::NAN);
        goals.push((
            "16 runs of python with a probe hold no more text than natively (Pss within 1.05×; default options)".to_string(),
            format!(
                "{:.2}× (every page served: {:.2}×)",
                probed / native,
                all / native
            ),
            probed / native <= 1.05,
        ));
    }
    let _ = writeln!(md, "\nServed pages are each process's own (anonymous) copies: forks share those installed before they forked, separate runs share none. The pages left to the file are the page cache's, shared by every process as natively.");
    Section { md, goals }
}
