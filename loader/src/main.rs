//! `uprobe-exec`: a thin command-line client of the `uprobe_exec` library.
//!
//! `no_main`: Rust's runtime would open `/dev/null` on closed fds 0, 1 and 2
//! before `main`, and the program would inherit them open. We start from
//! glibc's `main` instead and do the two things of that runtime we need
//! ourselves (see [`main`]); `std::env::args` still works, since glibc hands
//! the arguments to std through `.init_array`.

#![no_main]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::Parser;

/// Run PROGRAM as execve would, with its executable text served page by page
/// through userfaultfd by uprobe-exec's own ELF loader, and count probe hits.
#[derive(Parser, Debug)]
#[command(name = "uprobe-exec", version, about, long_about = None)]
struct Cli {
    /// Probe a function: SYMBOL, SYMBOL+OFFSET, 0xADDR (link-time, as nm
    /// prints it) or a glob such as 'PyList_*'. OBJECT:SPEC names a shared
    /// object's function (libc.so.6:malloc, 'libssl*:SSL_*'); one mapped
    /// later (dlopen) is probed when it is mapped. Repeatable.
    #[arg(long = "probe", short = 'p', value_name = "SPEC")]
    probes: Vec<String>,

    /// Trace a function: every hit becomes an event with its time, pid/tid
    /// and arguments. SPEC as for --probe, then optionally the types of the
    /// first arguments (rdi, rsi, rdx, rcx, r8, r9): int, uint, hex or str,
    /// e.g. 'fopen(str, str)'. Each str costs one process_vm_readv system
    /// call per hit (it never faults the program). A traced function is
    /// counted too. 'SPEC%return' or 'SPEC%return(TYPE)' traces its returns
    /// instead: the value (rax, hex by default) and the call's duration,
    /// shown as 'f() = VALUE <SECONDS>'; the function is timed as by
    /// --latency. Repeatable.
    #[arg(long = "trace", short = 't', value_name = "SPEC[(TYPE, ...)]")]
    traces: Vec<String>,

    /// Time each call of a function, entry to return: at exit, stderr gets
    /// each function's calls, average, p50, p99 and maximum, and a log2
    /// histogram of durations in ns (as bcc's funclatency). SPEC as for
    /// --probe, naming functions. The stack is never changed: longjmp,
    /// exceptions and backtraces work as natively; a call left without a
    /// return is counted, not timed. Repeatable.
    #[arg(long = "latency", value_name = "SPEC")]
    latencies: Vec<String>,

    /// Write the events to FILE instead of stderr.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,

    /// Write a timeline to FILE (Chrome trace-event JSON, which
    /// ui.perfetto.dev and chrome://tracing open): each call of a --latency
    /// or %return function is a slice from entry to return, nested per
    /// thread; other traced hits are instants. Event lines are then written
    /// only with -o.
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,

    /// How events are written: one line each, as text (seconds since the
    /// start, pid/tid, the probe and its arguments) or as JSON.
    #[arg(long, value_enum, default_value_t = Format::Text, value_name = "FORMAT")]
    format: Format,

    /// Records the event ring holds (rounded up to a power of two): a traced
    /// hit that finds it full is dropped, and counted in the report.
    #[arg(long, value_name = "RECORDS", default_value_t = uprobe_exec::DEFAULT_EVENT_RING)]
    event_ring: usize,

    /// List the program's functions (matching --probe patterns, if any):
    /// address, size, name; 'OBJECT:PATTERN' lists a shared object's, and
    /// without patterns stderr names the objects the program maps at start.
    /// Runs nothing.
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

    /// Print nothing of ours to stderr at exit (no count table, no warnings;
    /// the report has them).
    #[arg(long, short = 'q')]
    quiet: bool,

    /// Install up to PAGES neighbouring pages with each faulting page, in one
    /// copy (0: serve strictly the pages touched).
    #[arg(long, value_name = "PAGES", default_value_t = uprobe_exec::DEFAULT_FAULT_AROUND)]
    fault_around: usize,

    /// Install text pages before their first touch: all of them, in the
    /// background once the program runs (--prefetch, --prefetch=all: the
    /// default), so debuggers and core dumps see it; or the pages a run of
    /// the same program file with the same probes served before (its working
    /// set, kept in the user's cache), in the background from the start,
    /// before anything else, and the rest on first touch (--prefetch=recorded)
    #[arg(
        long,
        value_enum,
        value_name = "WHICH",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "all",
        overrides_with = "no_prefetch"
    )]
    prefetch: Option<PrefetchArg>,

    /// Serve text pages only when they are first touched.
    #[arg(long, overrides_with = "prefetch")]
    no_prefetch: bool,

    /// Write the program's functions to /tmp/perf-PID.map for profilers.
    #[arg(long)]
    perf_map: bool,

    /// Which text of the shared objects to serve: the pages that hold probe
    /// sites of OBJECT:SPEC probes (probed; every other page is the file's,
    /// mapped by the kernel), or the whole text of every object the dynamic
    /// loader maps, probed or not, as the program's is (all; root only)
    #[arg(long, value_enum, value_name = "WHICH", default_value = "probed")]
    serve_objects: Serving,

    /// Which of the program's text is served: only the pages that hold probe
    /// sites, the others mapped from the file by the kernel as natively
    /// (probed), or every page (all)
    #[arg(long, value_enum, value_name = "WHICH", default_value = "probed")]
    serve_text: Serving,

    /// Write a JSON report to FILE when the program ends.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,

    /// Print text-serving figures to stderr when the program ends, and how
    /// long each step of the start took.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Auto,
    Int3,
    Jump,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PrefetchArg {
    All,
    Recorded,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Serving {
    Probed,
    All,
}

fn fail(msg: impl std::fmt::Display, code: u8) -> u8 {
    eprintln!("uprobe-exec: {msg}");
    code
}

fn list(program: &OsString, patterns: &[String]) -> u8 {
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
                    "{:#018x} {:>8} {}",
                    f.addr.0,
                    f.size,
                    f.display_name()
                ));
                if let Some(why) = &f.unprobeable {
                    out.push_str(&format!("  (cannot be probed: {why})"));
                }
                match &f.tactic {
                    Some(Ok(kind)) => out.push_str(&format!("  [{kind}]")),
                    Some(Err(why)) => out.push_str(&format!("  [int3 only: {why}]")),
                    None => {}
                }
                out.push('\n');
            }
            // The objects it maps at start, which OBJECT:PATTERN lists.
            if patterns.is_empty() {
                if let Ok(objects) = uprobe_exec::shared_objects(program) {
                    for o in objects {
                        eprintln!(
                            "uprobe-exec: maps at start: {} ({}): --list -p '{}:*' lists its functions",
                            o.name,
                            o.path.display(),
                            o.short_name()
                        );
                    }
                }
            }
            // A reader that stops early (`| head`) is no failure.
            match std::io::stdout().lock().write_all(out.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    fail(format!("writing the list: {e}"), 125)
                }
                _ => 0,
            }
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

/// A `sigset_t` of `signals`.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is an array of integers, for which all-zero bytes are
    // a valid (empty) value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t on our stack.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

fn forwarded_set() -> libc::sigset_t {
    sigset(&FORWARDED)
}

/// Blocks the forwarded signals in this (the only) thread; returns the mask
/// we were given, bit n-1 for signal n.
fn block_forwarded() -> u64 {
    let set = forwarded_set();
    let mut old = sigset(&[]);
    // SAFETY: changes our own thread's mask; reads `set` and writes `old`,
    // both valid sigset_t on our stack. Blocking signals is memory-safe.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    (1..=64)
        // SAFETY: `old` is a valid sigset_t, only read.
        .filter(|&s| unsafe { libc::sigismember(&old, s) } == 1)
        .fold(0u64, |acc, s| acc | 1 << (s - 1))
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
                // SAFETY: siginfo_t is plain data (integers and unions of
                // them), for which all-zero bytes are a valid value.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: reads `set` and fills `info`, both valid and ours.
                let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
                if sig > 0 && info.si_code != libc::SI_KERNEL {
                    // SAFETY: kill(2) touches no memory of ours.
                    unsafe { libc::kill(pid, sig) };
                }
            }
        });
}

/// SIGPIPE was ignored when we started: the program inherits that, as across execve.
static SIGPIPE_IGNORED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Entered from glibc's start code with the process as execve left it.
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    hold_closed_std_fds();
    // One malloc arena for all our threads: otherwise each thread's first
    // allocation makes its own (a large reservation, trimmed, then fresh
    // pages to fault in), which every start paid for on its critical path.
    // Our threads allocate little once the program runs (start-up 0.96×
    // with it, side by side; event throughput unchanged).
    // SAFETY: mallopt(3) before any other thread exists; it only sets a
    // limit of the allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // As Rust's runtime does: a write to a closed pipe is an error, not death.
    // The program gets the disposition we were started with (see run).
    // SAFETY: setting a disposition before any other thread exists.
    let sigpipe = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    SIGPIPE_IGNORED.store(
        sigpipe == libc::SIG_IGN,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Unwinding out of an `extern "C"` function would abort: a panic of
    // ours (already reported by the panic hook) is a failure of ours.
    let code = std::panic::catch_unwind(run).unwrap_or(125);
    // std's exit flushes stdout, as returning from a Rust main would.
    std::process::exit(i32::from(code))
}

/// Opens `/dev/null` close-on-exec on each of fds 0, 1 and 2 we were started
/// without, so that no fd of ours lands there and our messages to a closed
/// stderr go nowhere, as with Rust's runtime. Being close-on-exec, they are
/// closed in the child before the program starts, like every close-on-exec
/// fd of ours: the program gets exactly the fds it was given.
fn hold_closed_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the flags of an fd number; a closed
        // one gives -1.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: opening /dev/null takes the lowest free number, which
            // is `fd`, as the lower ones are open (or were just filled) by
            // now; the fd stays open for good, owned by nobody.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        }
    }
}

fn run() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return 0;
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
        .prefetch_mode(match (cli.no_prefetch, cli.prefetch) {
            (true, _) => uprobe_exec::Prefetch::None,
            (false, Some(PrefetchArg::Recorded)) => uprobe_exec::Prefetch::Recorded,
            (false, _) => uprobe_exec::Prefetch::All,
        })
        .perf_map(cli.perf_map)
        .serve_objects(match cli.serve_objects {
            Serving::Probed => uprobe_exec::ObjectServing::Probed,
            Serving::All => uprobe_exec::ObjectServing::All,
        })
        .serve_text(match cli.serve_text {
            Serving::Probed => uprobe_exec::TextServing::Probed,
            Serving::All => uprobe_exec::TextServing::All,
        })
        .event_ring(cli.event_ring)
        .blocked_signals(given)
        .sigpipe_ignored(SIGPIPE_IGNORED.load(std::sync::atomic::Ordering::Relaxed));
    for p in &cli.probes {
        cmd = cmd.probe(p);
    }
    for t in &cli.traces {
        cmd = cmd.trace(t);
    }
    for l in &cli.latencies {
        // A timeline needs each call's return as an event.
        cmd = if cli.perfetto.is_some() {
            cmd.latency_events(l)
        } else {
            cmd.latency(l)
        };
    }
    if cli.perfetto.is_some() && cli.latencies.is_empty() && cli.traces.is_empty() {
        return fail(
            "--perfetto draws the calls of --latency and --trace functions: give one (see uprobe-exec --help)",
            125,
        );
    }
    if cli.perfetto.is_some() && cli.perfetto == cli.output {
        return fail("-o and --perfetto name the same file", 125);
    }
    let out: Option<Box<dyn Write + Send>> = match (&cli.output, &cli.perfetto) {
        (Some(path), _) => match std::fs::File::create(path) {
            Ok(f) => Some(Box::new(f)),
            Err(e) => return fail(format!("cannot write {}: {e}", path.display()), 125),
        },
        (None, None) => Some(Box::new(std::io::stderr())),
        (None, Some(_)) => None,
    };
    let timeline = match &cli.perfetto {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some((std::io::BufWriter::with_capacity(1 << 16, f), path.clone())),
            Err(e) => return fail(format!("cannot write {}: {e}", path.display()), 125),
        },
        None => None,
    };
    let name = std::path::Path::new(program)
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let session = match cmd.spawn() {
        Ok(s) => s,
        Err(e) => {
            // No run, no timeline: not an empty file that is no JSON.
            if let Some(path) = &cli.perfetto {
                let _ = std::fs::remove_file(path);
            }
            return fail(&e, e.exit_code() as u8);
        }
    };
    forward_signals(session.pid());
    let events = session.events();
    let mut timeline = timeline;
    if events.is_none() {
        // Nothing was traced or timed (a pattern passed over every
        // function): a timeline with no events.
        if let Some((f, path)) = timeline.take() {
            let empty = uprobe_exec::events::perfetto::Timeline::new(f, &name, 0, Vec::new())
                .and_then(uprobe_exec::events::perfetto::Timeline::finish);
            if let Err(e) = empty {
                eprintln!("uprobe-exec: writing {}: {e}", path.display());
            }
        }
    }
    let printer = events.map(|events| {
        let info = session.probe_table();
        let (start, format) = (session.started_ns(), cli.format);
        std::thread::spawn(move || {
            let timeline = match timeline {
                Some((f, path)) => {
                    let t =
                        uprobe_exec::events::perfetto::Timeline::new(f, &name, start, info.clone())
                            .map_err(|e| (e, Some(path.clone())))?;
                    Some((t, path))
                }
                None => None,
            };
            print_events(&events, &info, start, format, out, timeline)
        })
    });
    let report = session.wait();
    // The stream ends with the session: the printer has written it all.
    if let Some(Err((e, path))) = printer.map(|p| p.join().unwrap_or(Ok(()))) {
        let what = path.map_or_else(|| "the events".to_string(), |p| p.display().to_string());
        eprintln!("uprobe-exec: writing {what}: {e}");
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(&e, e.exit_code() as u8),
    };
    // --quiet leaves the program's stderr to the program: warnings are in
    // the report.
    for w in report.warnings.iter().filter(|_| !cli.quiet) {
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
    let probed = !cli.probes.is_empty() || !cli.traces.is_empty() || !cli.latencies.is_empty();
    if probed && !cli.quiet {
        eprint!("{}", report.count_table());
        eprint!("{}", report.latency_text());
    }
    if cli.stats {
        eprint!("{}", report.stats_text());
    } else if !cli.quiet && probed && report.handoff.uffd_mode == "user-mode-only" {
        // Unprivileged, a run differs from a native one in ways a user must
        // know: one line with the count table, the details under --stats.
        // Without probes our stderr stays the program's own.
        let n = report.handoff.limits.len();
        eprintln!(
            "uprobe-exec: note: unprivileged (uffd user-mode-only): {n} limit{} of this run, --stats lists {}",
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" }
        );
    }
    match report.exit {
        uprobe_exec::Exit::Code(c) => c.clamp(0, 255) as u8,
        uprobe_exec::Exit::Signal(sig) => die_of(sig),
    }
}

/// A timeline being written, and its file's name.
type Timeline = (
    uprobe_exec::events::perfetto::Timeline<std::io::BufWriter<std::fs::File>>,
    PathBuf,
);

/// Writes each event of `events` as `format` says to `out`, and to the
/// timeline, until the stream ends. An error names the timeline's file
/// when it is the timeline's.
fn print_events(
    events: &crossbeam_channel::Receiver<uprobe_exec::events::Event>,
    info: &uprobe_exec::events::ProbeTable,
    start_ns: u64,
    format: Format,
    out: Option<Box<dyn Write + Send>>,
    timeline: Option<Timeline>,
) -> Result<(), (std::io::Error, Option<PathBuf>)> {
    use uprobe_exec::events::format::{append_json, append_text};
    // Lines gather here while more events wait, and go out when none does
    // (a person watching sees each at once) or at about FLUSH bytes (a
    // busy stream takes few writes).
    const FLUSH: usize = 1 << 19;
    let (mut timeline, path) = timeline.map_or((None, None), |(t, p)| (Some(t), Some(p)));
    let in_timeline = |e: std::io::Error| (e, path.clone());
    let mut out = out;
    let mut buf = Vec::with_capacity(FLUSH + 4096);
    while let Ok(first) = events.recv() {
        let mut next = Some(first);
        while let Some(e) = next {
            if let Some(t) = &mut timeline {
                t.add(&e).map_err(in_timeline)?;
            }
            if let (Some(p), Some(_)) = (info.get(e.probe), &out) {
                let types = p.types(&e);
                match format {
                    Format::Text => append_text(&mut buf, &e, &p.label, types, start_ns),
                    Format::Json => {
                        append_json(&mut buf, &e, &p.label, types).map_err(|e| (e, None))?
                    }
                }
            }
            next = if buf.len() < FLUSH {
                events.try_recv().ok()
            } else {
                None
            };
        }
        if let Some(out) = &mut out {
            out.write_all(&buf).map_err(|e| (e, None))?;
        }
        buf.clear();
    }
    if let Some(t) = timeline {
        t.finish().map_err(in_timeline)?;
    }
    match &mut out {
        Some(out) => out.flush().map_err(|e| (e, None)),
        None => Ok(()),
    }
}

/// Dies of `sig`, as the program did, so that our parent sees the same wait
/// status (`WIFSIGNALED`, same signal) and a shell or `subprocess` reacts to
/// it as to the program's own death (strace does the same). The report is
/// written by then. No core of ours: the program's crash is not ours.
fn die_of(sig: i32) -> ! {
    // No core dump, the default action for `sig`, then the signal to this
    // thread, unblocked. A signal whose default action is to terminate ends
    // the process here.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    // SAFETY: SIG_DFL installs no handler of ours: nothing of ours runs on
    // the signal.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
    // SAFETY: raise(3) only sends a signal to this thread, whose action is
    // now the default.
    unsafe { libc::raise(sig) };
    let set = sigset(&[sig]);
    // SAFETY: reads `set`, a valid sigset_t; a null old mask is not
    // written. Unblocking a signal with its default action is memory-safe.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    // Only a signal that cannot kill gets here (the program did not die of
    // it, so this is unreachable in practice): the shell's convention.
    std::process::exit(128 + sig)
}
