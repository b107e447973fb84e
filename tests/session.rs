//! The live session API: `Session::counts`, `try_wait` and `kill`, on real
//! programs. Ground truth is the number of calls the program is told to
//! make (and prints), and the kernel's word on how it died.

use std::time::{Duration, Instant};

use uprobe_exec::{Command, Exit, ProbeHits, Report, Session};
use uprobe_exec_samples::{path as sample, Variant};

/// A session killed (and waited for) when dropped, so that a failing test
/// leaves no program running behind it.
struct Running(Option<Session>);

impl Running {
    fn spawn(cmd: &Command) -> Running {
        Running(Some(cmd.spawn().expect("spawn")))
    }

    fn session(&mut self) -> &mut Session {
        self.0.as_mut().expect("not waited for yet")
    }

    fn wait(mut self) -> Report {
        self.0
            .take()
            .expect("not waited for yet")
            .wait()
            .expect("wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// The hits of the probe on `symbol`.
fn hits(counts: &[ProbeHits], symbol: &str) -> u64 {
    counts
        .iter()
        .find(|p| p.symbol == symbol)
        .unwrap_or_else(|| panic!("no probe on {symbol} in {counts:?}"))
        .hits
}

#[test]
fn counts_rise_while_it_runs_and_kill_ends_it() {
    for v in [Variant::Pie, Variant::Static] {
        // spin calls tick() once per iteration: ten trillion of them take
        // hours, so it runs until killed.
        let mut run = Running::spawn(
            &Command::new(sample("spin", v))
                .arg("10000000000000")
                .probe("tick"),
        );
        let s = run.session();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = vec![hits(&s.counts().expect("counts"), "tick")];
        // Three rises in a row, each some time after the one before.
        while seen.windows(2).filter(|w| w[1] > w[0]).count() < 3 {
            assert!(
                Instant::now() < deadline,
                "{v:?}: counts did not rise: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                s.try_wait().expect("try_wait").is_none(),
                "{v:?}: ended by itself"
            );
            seen.push(hits(&s.counts().expect("counts"), "tick"));
            assert!(
                seen.windows(2).all(|w| w[1] >= w[0]),
                "{v:?}: counts went down: {seen:?}"
            );
        }
        s.kill().expect("kill");
        let report = loop {
            if let Some(r) = s.try_wait().expect("try_wait") {
                break r;
            }
            assert!(Instant::now() < deadline, "{v:?}: still running after kill");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(report.exit, Exit::Signal(libc::SIGKILL), "{v:?}");
        let last = *seen.last().expect("sampled");
        let total = hits(&report.probes, "tick");
        assert!(total >= last, "{v:?}: report {total} < live count {last}");
        // Once ended: the same report again, the final counts, and killing
        // what is dead already is no error.
        assert_eq!(s.try_wait().expect("try_wait").as_ref(), Some(&report));
        assert_eq!(s.counts().expect("counts"), report.probes);
        s.kill().expect("kill after the end");
        assert_eq!(run.wait(), report);
    }
}

#[test]
fn counts_reach_the_calls_the_program_made() {
    // probed basic N calls counted() exactly N times, then exits 0.
    const N: u64 = 200_000_000;
    let mut run = Running::spawn(
        &Command::new(sample("probed", Variant::Pie))
            .args(["basic", &N.to_string()])
            .probe("counted"),
    );
    let s = run.session();
    let mut last = 0;
    let report = loop {
        let now = hits(&s.counts().expect("counts"), "counted");
        assert!(now >= last && now <= N, "{now} after {last} (of {N})");
        last = now;
        if let Some(r) = s.try_wait().expect("try_wait") {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(report.exit, Exit::Code(0));
    assert_eq!(hits(&report.probes, "counted"), N);
    assert_eq!(hits(&s.counts().expect("counts"), "counted"), N);
    assert_eq!(run.wait().probes, report.probes);
}

#[test]
fn counts_without_probes_are_empty() {
    let mut run =
        Running::spawn(&Command::new(sample("hello", Variant::Pie)).args(["--exit", "3"]));
    assert_eq!(run.session().counts().expect("counts"), []);
    assert_eq!(run.wait().exit, Exit::Code(3));
}

#[test]
fn an_embedder_reads_each_traced_hit_with_its_arguments() {
    // The events sample's parent calls ev(i, 1, 0, …) 40 times, forks, and
    // its child calls ev(i, 2, 0, …) 40 times; each says its pid.
    let cmd = Command::new(sample("events", Variant::Pie))
        .args(["fork", "40"])
        .trace("ev(int, int, uint)");
    let mut run = Running::spawn(&cmd);
    let events = run.session().events().expect("a traced site");
    let info = run
        .session()
        .probe_info(uprobe_exec::events::ProbeId(0))
        .cloned()
        .expect("probe 0");
    assert_eq!(info.label, "ev");
    assert_eq!(
        info.args.as_deref(),
        Some(
            &[
                uprobe_exec::ArgType::Int,
                uprobe_exec::ArgType::Int,
                uprobe_exec::ArgType::Uint
            ][..]
        )
    );
    let reader = std::thread::spawn(move || events.iter().collect::<Vec<_>>());
    let report = run.wait();
    let got = reader.join().unwrap();
    assert_eq!(report.exit, Exit::Code(0));
    assert_eq!(
        report.events.map(|e| (e.delivered, e.dropped)),
        Some((80, 0))
    );
    let (parent, child): (Vec<_>, Vec<_>) = got.iter().partition(|e| e.args[1] == 1);
    assert_eq!(child.len(), 40);
    for (i, e) in parent.iter().enumerate() {
        assert_eq!((e.args[0], e.args[2], e.probe.0), (i as u64, 0, 0));
        assert_eq!(i64::from(e.pid), i64::from(run_pid(&report)));
    }
    assert!(child
        .iter()
        .all(|e| e.pid != parent[0].pid && e.tid == e.pid));
}

#[test]
fn a_stream_nobody_reads_is_given_up_and_its_events_counted_as_dropped() {
    // 40000 traced hits, a stream of 16384 events that nobody reads: the
    // drain waits a second for a reader, then counts what the stream cannot
    // hold as dropped. Every hit is delivered or dropped, and the run ends
    // (a hang detector, not a timing: one wait of a second, not one per
    // event the stream's slack still holds).
    let cmd = Command::new(sample("events", Variant::Pie))
        .args(["hitloop6", "40000"])
        .trace("ev(int)")
        .event_ring(65536);
    let mut run = Running::spawn(&cmd);
    let events = run.session().events().expect("a traced site");
    let t = std::time::Instant::now();
    let report = run.wait();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(report.exit, Exit::Code(0));
    let e = report.events.expect("events");
    assert_eq!(e.delivered + e.dropped, 40_000, "{e:?}");
    assert!(e.dropped > 0, "{e:?}");
    assert_eq!(events.len() as u64, e.delivered, "what the stream holds");
}

/// The program's first process, from the report.
fn run_pid(r: &Report) -> i32 {
    r.per_process[0].pid as i32
}
