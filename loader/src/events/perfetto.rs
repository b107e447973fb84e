//! A timeline of the events in the Chrome trace-event JSON format, which
//! ui.perfetto.dev and chrome://tracing open (`--perfetto FILE`).
//!
//! ```text
//! {"traceEvents":[
//! {"ph":"M","name":"process_name","pid":4242,"tid":4242,"args":{"name":"app"}},
//! {"ph":"M","name":"thread_name","pid":4242,"tid":4243,"args":{"name":"worker"}},
//! {"ph":"X","name":"fib","cat":"call","ts":12.345,"dur":0.020,"pid":4242,"tid":4242,"args":{"ret":"0x1"}},
//! {"ph":"i","s":"t","name":"open","cat":"hit","ts":13.001,"pid":4242,"tid":4243,"args":{"args":["a.txt"]}},
//! ],"displayTimeUnit":"ns"}
//! ```
//!
//! - A call whose return is traced (`--latency` under `--perfetto`, or
//!   `f%return`) is a complete event (`X`): `ts` its entry and `dur` its
//!   duration, in microseconds from the program's start (three decimals:
//!   nanoseconds), `args.ret` the value returned. When its entry is traced
//!   too (`--trace 'f(int)'`), the entry's arguments are `args.args`.
//!   Nested calls of a thread nest, and render as its flame chart.
//! - A hit of a probe whose returns are not traced is an instant event
//!   (`i`, thread-scoped) with its arguments. So is a traced entry whose
//!   call was left without a return (`longjmp`, an exception): its
//!   `args.left` is true. A return whose entry was not timed is an instant
//!   event too, with `args.ret`.
//! - Each process and thread gets its name once, from `/proc` while the
//!   program runs (the program's name when it is gone).
//! - The events are in the order the drain read them (entries and returns
//!   of one thread in order); the format does not ask for more.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use super::format::{json_args, json_ret, json_str};
use super::{Event, ProbeId};

/// A traced entry waiting for its return.
struct Open {
    probe: ProbeId,
    time_ns: u64,
    /// Its arguments, as a JSON array.
    args: Vec<u8>,
}

/// A timeline being written.
pub struct Timeline<W: Write> {
    out: W,
    /// What each process and thread is named when `/proc` has no name.
    program: String,
    start_ns: u64,
    /// Events written so far (a comma goes before every one but the first).
    written: u64,
    named: HashSet<(u32, u32)>,
    /// Each thread's entries waiting for their returns, innermost last.
    open: HashMap<(u32, u32), Vec<Open>>,
    /// Every probe, by its id.
    info: super::ProbeTable,
    line: Vec<u8>,
}

impl<W: Write> Timeline<W> {
    /// Starts a timeline in `out` for `program` (its name), whose times
    /// count from `start_ns` (`CLOCK_MONOTONIC`), of the probes `info`
    /// (by [`ProbeId`]).
    pub fn new(
        mut out: W,
        program: &str,
        start_ns: u64,
        info: impl Into<super::ProbeTable>,
    ) -> io::Result<Timeline<W>> {
        out.write_all(b"{\"traceEvents\":[\n")?;
        Ok(Timeline {
            out,
            program: program.to_string(),
            start_ns,
            written: 0,
            named: HashSet::new(),
            open: HashMap::new(),
            info: info.into(),
            line: Vec::with_capacity(256),
        })
    }

    /// Adds `event`, a hit or a return (of a probe of the timeline's).
    pub fn add(&mut self, event: &Event) -> io::Result<()> {
        let infos = self.info.clone();
        let Some(info) = infos.get(event.probe) else {
            return Ok(());
        };
        self.name(event.pid, event.tid)?;
        let thread = (event.pid, event.tid);
        let types = info.types(event);
        let Some(ret) = event.ret else {
            let mut args = Vec::with_capacity(64);
            json_args(&mut args, event, types)?;
            if info.ret.is_some() {
                // Its call will end as one complete event.
                self.open.entry(thread).or_default().push(Open {
                    probe: event.probe,
                    time_ns: event.time_ns,
                    args,
                });
                return Ok(());
            }
            let args = object(&[(b"args", &args)]);
            return self.event(b"i", &info.label, thread, event.time_ns, None, &args);
        };
        // The call's own entry, if traced: the innermost of its probe
        // that came before the call began (an entry event is written just
        // before its call's timing starts; the entries of calls a
        // `longjmp` abandoned came after). Calls above it were left.
        let began = ret.duration_ns.map(|d| event.time_ns.saturating_sub(d));
        let mut entry = None;
        if let Some(stack) = self.open.get_mut(&thread) {
            let own = |o: &Open| o.probe == event.probe && began.is_none_or(|b| o.time_ns <= b);
            if let Some(k) = stack.iter().rposition(own) {
                let left: Vec<Open> = stack.drain(k + 1..).collect();
                entry = stack.pop();
                self.left(thread, left)?;
            }
        }
        let mut value = Vec::with_capacity(32);
        json_ret(&mut value, event, types)?;
        let args = match &entry {
            Some(e) => object(&[(b"args", &e.args), (b"ret", &value)]),
            None => object(&[(b"ret", &value)]),
        };
        match ret.duration_ns {
            Some(dur) => {
                let start = event.time_ns.saturating_sub(dur);
                self.event(b"X", &info.label, thread, start, Some(dur), &args)
            }
            None => self.event(b"i", &info.label, thread, event.time_ns, None, &args),
        }
    }

    /// Ends the timeline: entries still waiting are instant events (their
    /// calls never returned while traced). Gives the writer back, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        let open: Vec<((u32, u32), Vec<Open>)> = self.open.drain().collect();
        for (thread, calls) in open {
            self.left(thread, calls)?;
        }
        self.out.write_all(b"\n],\"displayTimeUnit\":\"ns\"}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Entries whose calls were left (no return of theirs came).
    fn left(&mut self, thread: (u32, u32), left: Vec<Open>) -> io::Result<()> {
        for o in left {
            let label = self
                .info
                .get(o.probe)
                .map_or_else(String::new, |p| p.label.clone());
            let args = object(&[(b"args", &o.args), (b"left", b"true")]);
            self.event(b"i", &label, thread, o.time_ns, None, &args)?;
        }
        Ok(())
    }

    /// One event: `ph`, its name, the thread (pid, tid), when (and for how
    /// long), `args` (a JSON object).
    fn event(
        &mut self,
        ph: &[u8],
        label: &str,
        (pid, tid): (u32, u32),
        time_ns: u64,
        dur_ns: Option<u64>,
        args: &[u8],
    ) -> io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.extend_from_slice(b"{\"ph\":\"");
        line.extend_from_slice(ph);
        line.extend_from_slice(b"\",");
        if dur_ns.is_none() {
            line.extend_from_slice(b"\"s\":\"t\",\"cat\":\"hit\",");
        } else {
            line.extend_from_slice(b"\"cat\":\"call\",");
        }
        line.extend_from_slice(b"\"name\":");
        json_str(&mut line, label.as_bytes())?;
        line.extend_from_slice(b",\"ts\":");
        micros(&mut line, time_ns.saturating_sub(self.start_ns));
        if let Some(d) = dur_ns {
            line.extend_from_slice(b",\"dur\":");
            micros(&mut line, d);
        }
        line.extend_from_slice(b",\"pid\":");
        itoap::write_to_vec(&mut line, pid);
        line.extend_from_slice(b",\"tid\":");
        itoap::write_to_vec(&mut line, tid);
        line.extend_from_slice(b",\"args\":");
        line.extend_from_slice(args);
        line.push(b'}');
        let r = self.write(&line);
        self.line = line;
        r
    }

    /// Names the process and the thread, the first time either is seen.
    fn name(&mut self, pid: u32, tid: u32) -> io::Result<()> {
        for (key, what, path) in [
            ((pid, 0), "process_name", format!("/proc/{pid}/comm")),
            (
                (pid, tid),
                "thread_name",
                format!("/proc/{pid}/task/{tid}/comm"),
            ),
        ] {
            if !self.named.insert(key) {
                continue;
            }
            let name = std::fs::read_to_string(&path)
                .map(|n| n.trim_end().to_string())
                .unwrap_or_else(|_| self.program.clone());
            let mut line = b"{\"ph\":\"M\",\"name\":\"".to_vec();
            line.extend_from_slice(what.as_bytes());
            line.extend_from_slice(b"\",\"pid\":");
            itoap::write_to_vec(&mut line, pid);
            line.extend_from_slice(b",\"tid\":");
            itoap::write_to_vec(&mut line, tid);
            line.extend_from_slice(b",\"args\":{\"name\":");
            json_str(&mut line, name.as_bytes())?;
            line.extend_from_slice(b"}}");
            self.write(&line)?;
        }
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.written > 0 {
            self.out.write_all(b",\n")?;
        }
        self.written += 1;
        self.out.write_all(line)
    }
}

/// A JSON object of keys and values (JSON already).
fn object(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut o = Vec::with_capacity(64);
    o.push(b'{');
    for (k, (key, value)) in fields.iter().enumerate() {
        if k > 0 {
            o.push(b',');
        }
        o.push(b'"');
        o.extend_from_slice(key);
        o.extend_from_slice(b"\":");
        o.extend_from_slice(value);
    }
    o.push(b'}');
    o
}

/// `ns` as microseconds with three decimals.
fn micros(line: &mut Vec<u8>, ns: u64) {
    itoap::write_to_vec(line, ns / 1000);
    let point = line.len();
    itoap::write_to_vec(line, 1000 + ns % 1000);
    line[point] = b'.';
}
