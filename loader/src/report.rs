//! Report: what happened, as the JSON file of `--report-json` and the
//! figures of `--stats`. The schema is documented in the README.

use serde::Serialize;
use uprobe_runtime::TextStats;

/// How the program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The shell's view: the code, or 128 + the signal.
    #[must_use]
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Text-serving figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Text {
    /// Text pages of the program.
    pub pages: u64,
    /// Distinct pages installed by us.
    pub served: u64,
    /// Page-fault events handled.
    pub faults: u64,
    /// Faults on pages served to the same process before.
    pub refaults: u64,
    /// Pages installed without a fault: all of them in user-mode-only mode,
    /// and the rest of the text for processes that outlive the first one.
    pub populated: u64,
}

impl From<TextStats> for Text {
    fn from(s: TextStats) -> Text {
        Text {
            pages: s.pages,
            served: s.served,
            faults: s.faults,
            refaults: s.refaults,
            populated: s.populated,
        }
    }
}

/// How faithfully the program was handed its address space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Handoff {
    /// `full` or `user-mode-only` (see the README).
    pub uffd_mode: String,
    /// `/proc/self/exe`, cmdline, environ, auxv and brk were set to the
    /// program's with `PR_SET_MM_MAP`.
    pub mm_map: bool,
    /// The hand-off code removed itself (no extra mapping remains).
    pub clean_exit: bool,
    /// What differs from a native execve in this run, one sentence each.
    pub limits: Vec<String>,
}

/// One probe site and its hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeHits {
    /// The spec it came from.
    pub spec: String,
    /// The function (demangled).
    pub symbol: String,
    /// Offset in the function.
    pub offset: u64,
    /// Link-time address, as `nm` prints it (`0x…`).
    pub address: String,
    /// Hits, in every process of the program.
    pub hits: u64,
    /// How the site is displaced: `int3`.
    pub kind: String,
}

/// The hits of one process of the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessHits {
    /// Its pid.
    pub pid: i64,
    /// Hits by probe (`symbol` or `symbol+0xoff`); probes it never hit are left out.
    pub hits: std::collections::BTreeMap<String, u64>,
}

/// Widest name column of the count table, in characters.
pub const NAME_COLUMN: usize = 48;

/// Everything reported at exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The ELF file that ran (the interpreter of a `#!` script).
    pub program: String,
    /// Its argv.
    pub args: Vec<String>,
    /// How it ended.
    pub exit: Exit,
    /// Probe sites and their hits.
    pub probes: Vec<ProbeHits>,
    /// The same hits, process by process (the first 256 processes that hit a probe).
    pub per_process: Vec<ProcessHits>,
    /// Text-serving figures.
    pub text: Text,
    /// Processes we served: the first and its forks.
    pub processes: u64,
    /// How the program was set up.
    pub handoff: Handoff,
    /// Things the user must know about this run's results (printed at exit).
    pub warnings: Vec<String>,
    /// Traced hits: how many became events, and how many did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventCounts>,
}

/// What became of traced hits. `delivered + dropped` is the traced sites'
/// hits, exactly, unless a process was killed inside a probe (`lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Handed to the session's event stream.
    pub delivered: u64,
    /// Not: the ring or the stream was full.
    pub dropped: u64,
    /// Reserved in the ring by a process killed before it wrote them.
    pub lost: u64,
}

impl Report {
    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The count table printed at exit, like bcc's funccount: busiest first.
    #[must_use]
    pub fn count_table(&self) -> String {
        let mut rows: Vec<(String, u64)> = self
            .probes
            .iter()
            .map(|p| {
                (
                    if p.offset == 0 {
                        p.symbol.clone()
                    } else {
                        format!("{}+{:#x}", p.symbol, p.offset)
                    },
                    p.hits,
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        // As funccount: a name column of bounded width; a longer name keeps
        // its start and its end (C++ overloads differ at the end).
        let width = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(4, NAME_COLUMN);
        // Every tactic but the int3 is a jump (`jump-padding`, `jump-short-…`).
        let traps = self.probes.iter().filter(|p| p.kind == "int3").count();
        let mut s = format!(
            "uprobe-exec: {} probe sites: {} jump, {traps} int3\n",
            self.probes.len(),
            self.probes.len() - traps
        );
        s.push_str(&format!("{:<width$} {:>12}\n", "FUNC", "COUNT"));
        for (f, c) in rows {
            let f = crate::probes::short(&f, width);
            s.push_str(&format!("{f:<width$} {c:>12}\n"));
        }
        s
    }

    /// The `--stats` lines.
    #[must_use]
    pub fn stats_text(&self) -> String {
        let t = &self.text;
        let mut s = format!(
            "uprobe-exec: text pages {}, served {}, faults {}, refaults {}, populated {}, processes {} (uffd {})\n",
            t.pages, t.served, t.faults, t.refaults, t.populated, self.processes, self.handoff.uffd_mode
        );
        for l in &self.handoff.limits {
            s.push_str(&format!("uprobe-exec: note: {l}\n"));
        }
        s
    }
}
