//! Events: what a `--trace` probe records at each hit, as the monitor hands
//! it on, and how it is shown (`format`: strace-style text, JSON lines;
//! `perfetto`: a timeline).

pub mod format;
pub mod perfetto;

use crate::probes::ARG_REGISTERS;

/// A probe of the session, as events name it: its index in the session's
/// probe list; [`crate::Session::probe_info`] gives its label and argument
/// types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub usize);

/// Every probe of a session, by [`ProbeId`]: the program's are known when
/// it starts; a shared object's are filled in when the object is first
/// mapped (`dlopen`), before any of its events can come. Clones share one
/// table.
#[derive(Clone, Debug, Default)]
pub struct ProbeTable(std::sync::Arc<[std::sync::OnceLock<ProbeInfo>]>);

impl ProbeTable {
    /// A table of `n` probes, the first ones `known`, the rest to come.
    #[must_use]
    pub fn new(known: Vec<ProbeInfo>, n: usize) -> ProbeTable {
        let n = n.max(known.len());
        let mut known = known.into_iter();
        ProbeTable(
            (0..n)
                .map(|_| {
                    let cell = std::sync::OnceLock::new();
                    if let Some(p) = known.next() {
                        let _ = cell.set(p);
                    }
                    cell
                })
                .collect(),
        )
    }

    /// Probe `id`, once it is known.
    #[must_use]
    pub fn get(&self, id: ProbeId) -> Option<&ProbeInfo> {
        self.0.get(id.0)?.get()
    }

    /// Makes probe `id` known (once: a later call changes nothing).
    pub(crate) fn set(&self, id: ProbeId, info: ProbeInfo) {
        if let Some(cell) = self.0.get(id.0) {
            let _ = cell.set(info);
        }
    }

    /// Whether any probe, known now, is traced or has its returns traced.
    #[must_use]
    pub fn any_traced(&self) -> bool {
        self.0
            .iter()
            .filter_map(|c| c.get())
            .any(|p| p.args.is_some() || p.ret.is_some())
    }
}

impl From<Vec<ProbeInfo>> for ProbeTable {
    fn from(v: Vec<ProbeInfo>) -> ProbeTable {
        let n = v.len();
        ProbeTable::new(v, n)
    }
}

/// One hit of a traced probe, as read from the shared ring. It holds only
/// plain values (no pointers into the program), so it can be sent to
/// another thread and outlive the program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// When the probe was hit: `CLOCK_MONOTONIC`, in nanoseconds.
    pub time_ns: u64,
    /// The process that hit it.
    pub pid: u32,
    /// The thread that hit it.
    pub tid: u32,
    /// Which probe.
    pub probe: ProbeId,
    /// The raw argument registers, in [`ARG_REGISTERS`] order (rdi, rsi,
    /// rdx, rcx, r8, r9), whatever the probe's types.
    pub args: [u64; ARG_REGISTERS.len()],
    /// For each `str` argument, the bytes read from where it points, up to
    /// and without the NUL; `None` when the pointer is NULL or could not be
    /// read (`args` tells which). One entry per argument register when the
    /// probe has a `str` argument; empty otherwise (no allocation: most
    /// events have none, and an event is moved twice on its way).
    pub strings: Vec<Option<Vec<u8>>>,
    /// For each `str` argument, whether the string went on past the bytes
    /// read (no NUL within the monitor's limit).
    pub truncated: [bool; ARG_REGISTERS.len()],
    /// A return probe's event (`--trace 'f%return'`): the function
    /// returned, at `time_ns`. `args` are then all 0, and a `str` value's
    /// bytes are `strings[0]`.
    pub ret: Option<Return>,
}

/// What a return event says of the call that ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Return {
    /// The value returned (rax); `None` when the call ended in a tail
    /// call (a `jmp` to another function), whose callee returns the value
    /// later, unseen.
    pub value: Option<u64>,
    /// How long the call took, entry to return, in ns; `None` when its
    /// entry was not timed (see the report's `untimed`).
    pub duration_ns: Option<u64>,
}

/// A probe as its events name it: its label (`sym` or `sym+0x..`, as the
/// report's entries) and the types of the arguments it records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeInfo {
    /// The label.
    pub label: String,
    /// Its arguments' types, in register order; `None`: not traced.
    pub args: Option<Vec<crate::probes::ArgType>>,
    /// Its returns are traced (`f%return(TYPE)`), the value shown as this
    /// type: events with `ret` are these.
    pub ret: Option<crate::probes::ArgType>,
}

impl ProbeInfo {
    /// The types `event` (one of this probe's) is shown with: the
    /// arguments' for a hit, the value's (`f%return(TYPE)`) for a return.
    #[must_use]
    pub fn types(&self, event: &Event) -> &[crate::probes::ArgType] {
        match (&event.ret, &self.ret) {
            (Some(_), Some(t)) => std::slice::from_ref(t),
            (Some(_), None) => &[],
            (None, _) => self.args.as_deref().unwrap_or(&[]),
        }
    }
}

impl Event {
    /// The event of a ring record (its fields and its string room), at
    /// CLOCK_MONOTONIC time `time_ns`.
    #[must_use]
    pub fn from_record(
        body: &uprobe_runtime::events::RecordBody,
        strings: &[u8],
        time_ns: u64,
    ) -> Event {
        use crate::probes::emit_flags::{IS_STR, UNREADABLE};
        use uprobe_runtime::events::STR_BYTES;
        use uprobe_runtime::events::{FLAG_RETURN, FLAG_TAIL, FLAG_UNTIMED};
        let mut e = Event {
            time_ns,
            pid: body.pid,
            tid: body.tid,
            probe: ProbeId(body.probe as usize),
            args: body.args,
            ..Event::default()
        };
        if body.flags & (1 << FLAG_RETURN) != 0 {
            let flag = |f: u32| body.flags & (1 << f) != 0;
            e.ret = Some(Return {
                value: (!flag(FLAG_TAIL)).then_some(body.args[0]),
                // The entry, on the drain's clock (see `session::events`).
                duration_ns: (!flag(FLAG_UNTIMED)).then(|| time_ns.saturating_sub(body.args[1])),
            });
            // Only the string of the value (argument 0's room) stays.
            e.args = [0; ARG_REGISTERS.len()];
        }
        if body.flags >> IS_STR & 0x3f != 0 {
            e.strings = vec![None; ARG_REGISTERS.len()];
        }
        for i in 0..ARG_REGISTERS.len() {
            if body.flags & (1 << (IS_STR + i as u32)) == 0 {
                continue;
            }
            e.truncated[i] = body.flags & (1 << i) != 0;
            if body.flags & (1 << (UNREADABLE + i as u32)) != 0 {
                continue;
            }
            let room = strings
                .get(i * STR_BYTES..(i + 1) * STR_BYTES)
                .unwrap_or(&[]);
            let len = room.iter().position(|&b| b == 0).unwrap_or(room.len());
            e.strings[i] = Some(room[..len].to_vec());
        }
        e
    }
}
