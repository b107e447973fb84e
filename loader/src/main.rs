//! `uprobe-exec`: a thin command-line client of the `uprobe_exec` library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Run PROGRAM as execve would, with its executable text served page by page
/// through userfaultfd by uprobe-exec's own ELF loader, and count probe hits.
#[derive(Parser, Debug)]
#[command(name = "uprobe-exec", version, about, long_about = None)]
struct Cli {
    /// Probe a function: SYMBOL, SYMBOL+OFFSET, 0xADDR (link-time, as nm
    /// prints it) or a glob such as 'PyList_*'. Repeatable.
    #[arg(long = "probe", short = 'p', value_name = "SPEC")]
    probes: Vec<String>,

    /// List the program's functions (matching --probe patterns, if any):
    /// address, size, name. Runs nothing.
    #[arg(long, short = 'l')]
    list: bool,

    /// How probe sites are displaced: a jump to a trampoline where that is
    /// safe and an int3 elsewhere (auto), always an int3, or always a jump
    /// (an error where it is not safe).
    #[arg(long, value_enum, default_value_t = Mode::Auto, value_name = "MODE")]
    probe_mode: Mode,

    /// Allow 0xADDR probes outside every known function.
    #[arg(long = "unsafe")]
    unsafe_addrs: bool,

    /// Do not print the probe count table at exit.
    #[arg(long, short = 'q')]
    quiet: bool,

    /// Install up to PAGES neighbouring pages with each faulting page, in one
    /// copy (0: serve strictly the pages touched).
    #[arg(long, value_name = "PAGES", default_value_t = uprobe_exec::DEFAULT_FAULT_AROUND)]
    fault_around: usize,

    /// Install the rest of the text in the background once the program runs
    /// (the default), so debuggers and core dumps see it.
    #[arg(long, overrides_with = "no_prefetch")]
    prefetch: bool,

    /// Serve text pages only when they are first touched.
    #[arg(long, overrides_with = "prefetch")]
    no_prefetch: bool,

    /// Write the program's functions to /tmp/perf-PID.map for profilers.
    #[arg(long)]
    perf_map: bool,

    /// Write a JSON report to FILE when the program ends.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,

    /// Print text-serving figures to stderr when the program ends.
    #[arg(long)]
    stats: bool,

    /// The program (looked up in PATH when it has no slash) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Auto,
    Int3,
    Jump,
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("uprobe-exec: {msg}");
    ExitCode::from(code)
}

fn list(program: &OsString, patterns: &[String]) -> ExitCode {
    match uprobe_exec::functions(program, patterns) {
        Ok(fs) if fs.is_empty() && !patterns.is_empty() => fail(
            format!(
                "no function of {} matches {}",
                program.to_string_lossy(),
                patterns.join(" ")
            ),
            125,
        ),
        Ok(fs) => {
            let mut out = String::new();
            for f in fs {
                out.push_str(&format!(
                    "{:#018x} {:>8} {}\n",
                    f.addr.0,
                    f.size,
                    f.display_name()
                ));
            }
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, e.exit_code() as u8),
    }
}

/// Signals forwarded to the program.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn forwarded_set() -> libc::sigset_t {
    // SAFETY: building a sigset_t in a local with the libc helpers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the forwarded signals in this (the only) thread; returns the mask
/// we were given, bit n-1 for signal n.
fn block_forwarded() -> u64 {
    let set = forwarded_set();
    // SAFETY: changing our own thread's mask; `old` is a local.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        (1..=64)
            .filter(|&s| libc::sigismember(&old, s) == 1)
            .fold(0u64, |acc, s| acc | 1 << (s - 1))
    }
}

/// Forwards the blocked signals to `pid`, except those a terminal sent to
/// the whole foreground process group (Ctrl-C, Ctrl-\, hang-up): the
/// program got its own copy of those.
fn forward_signals(pid: i32) {
    let _ = std::thread::Builder::new()
        .name("uprobe-exec-signals".into())
        .spawn(move || {
            let set = forwarded_set();
            loop {
                // SAFETY: sigwaitinfo fills a local siginfo_t.
                let (sig, code) = unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let sig = libc::sigwaitinfo(&set, &mut info);
                    (sig, info.si_code)
                };
                if sig > 0 && code != libc::SI_KERNEL {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        });
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, ours: clap's first line without its "error: ".
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines
                .next()
                .unwrap_or("bad usage")
                .trim_start_matches("error: ")
                .to_string();
            if first.ends_with(':') {
                first = format!("{first} {}", lines.next().unwrap_or(""));
            }
            return fail(format!("{first} (see uprobe-exec --help)"), 125);
        }
    };
    let (program, args) = cli.command.split_first().expect("clap requires PROGRAM");
    if cli.list {
        return list(program, &cli.probes);
    }
    // Signals sent to uprobe-exec are the program's: block them here (every
    // thread we start inherits that) and forward them from one thread. The
    // program starts with the mask we were given.
    let given = block_forwarded();
    let mut cmd = uprobe_exec::Command::new(program)
        .args(args)
        .allow_unsafe_addresses(cli.unsafe_addrs)
        .fault_around(cli.fault_around)
        .probe_mode(match cli.probe_mode {
            Mode::Auto => uprobe_exec::ProbeMode::Auto,
            Mode::Int3 => uprobe_exec::ProbeMode::Int3,
            Mode::Jump => uprobe_exec::ProbeMode::Jump,
        })
        .prefetch(!cli.no_prefetch)
        .perf_map(cli.perf_map)
        .blocked_signals(given);
    for p in &cli.probes {
        cmd = cmd.probe(p);
    }
    let session = match cmd.spawn() {
        Ok(s) => s,
        Err(e) => return fail(&e, e.exit_code() as u8),
    };
    forward_signals(session.pid());
    let report = match session.wait() {
        Ok(r) => r,
        Err(e) => return fail(&e, e.exit_code() as u8),
    };
    for w in &report.warnings {
        eprintln!("uprobe-exec: warning: {w}");
    }
    if let Some(path) = &cli.report_json {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!(
                "uprobe-exec: cannot write the report to {}: {e}",
                path.display()
            );
        }
    }
    if !cli.probes.is_empty() && !cli.quiet {
        eprint!("{}", report.count_table());
    }
    if cli.stats {
        eprint!("{}", report.stats_text());
    }
    ExitCode::from(report.exit.status().clamp(0, 255) as u8)
}
