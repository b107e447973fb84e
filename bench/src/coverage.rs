//! Jump coverage: of the functions a pattern matches and that can be
//! probed at all, how many take a jump in `auto` mode, by tactic. Counted
//! from the reports' `kind` fields: the sites of an `auto` run against
//! those of an `int3` run (which places a probe wherever one can go).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use uprobe_exec_samples::{path, Variant, NAMES};

/// The sites of one run, by kind.
fn kinds(ux: &str, mode: &str, spec: &str, argv: &[&str]) -> BTreeMap<String, usize> {
    let dir = std::env::temp_dir().join(format!("uprobe-exec-bench-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let report = dir.join("r.json");
    let _ = Command::new(ux)
        .args(["--probe-mode", mode, "-q", "--report-json"])
        .arg(&report)
        .args(["-p", spec])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = BTreeMap::new();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    for p in r["probes"].as_array().into_iter().flatten() {
        *out.entry(p["kind"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    out
}

/// One row: a binary, its pattern, how many sites in `int3` mode, and the
/// `auto` run's sites by kind.
struct Row {
    what: String,
    spec: &'static str,
    all: usize,
    auto: BTreeMap<String, usize>,
}

impl Row {
    fn measure(ux: &str, what: &str, spec: &'static str, argv: &[&str]) -> Row {
        Row {
            what: what.to_string(),
            spec,
            all: kinds(ux, "int3", spec, argv).values().sum(),
            auto: kinds(ux, "auto", spec, argv),
        }
    }

    fn of(&self, kind: &str) -> usize {
        self.auto.get(kind).copied().unwrap_or(0)
    }

    /// Sites of every kind that starts with `prefix`.
    fn prefixed(&self, prefix: &str) -> usize {
        self.auto
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    fn jumps(&self) -> usize {
        self.prefixed("jump")
    }

    fn percent(&self) -> f64 {
        100.0 * self.jumps() as f64 / self.all.max(1) as f64
    }
}

/// The coverage section of RESULTS.md, and python3.11 `Py*`'s coverage
/// in percent (for the goals).
pub fn section(ux: &str) -> (String, Option<f64>) {
    let mut rows = Vec::new();
    for (what, spec, argv) in [
        (
            "python3.11",
            "Py*",
            &["/usr/bin/python3.11", "-c", "pass"][..],
        ),
        ("bash", "*", &["/usr/bin/bash", "-c", "true"][..]),
        ("perl", "*", &["/usr/bin/perl", "-e", "1"][..]),
        (
            "sqlite3",
            "*",
            &["/usr/bin/sqlite3", ":memory:", "select 1"][..],
        ),
    ] {
        if std::path::Path::new(argv[0]).exists() {
            rows.push(Row::measure(ux, what, spec, argv));
        }
    }
    for name in NAMES {
        let p = path(name, Variant::Pie);
        let p = p.to_str().expect("utf-8 path");
        rows.push(Row::measure(ux, &format!("sample {name} (pie)"), "*", &[p]));
    }
    let mut md = String::new();
    let _ = writeln!(md, "\n## 5. Jump coverage\n");
    let _ = writeln!(md, "Sites that take a jump in `auto` mode, of those `--probe-mode int3` places (every matched function that can be probed at all), from the reports' `kind`: `jump` (5 bytes over whole instructions), `jump-padding` (over a short function's last instructions and the padding after it), `short` (a 2-byte jump to a 5-byte one nearby: `jump-short-padding`, `-displaced`, `-evicted`), `pun` (`jump-pun`: a jump whose rel32 ends in the bytes after the site). The rest are skipped in `auto` mode.\n");
    let _ = writeln!(
        md,
        "| binary | pattern | sites | jump | jump-padding | short | pun | skipped | coverage |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &rows {
        if r.all == 0 {
            let _ = writeln!(
                md,
                "| {} | `{}` | 0 (its code is in shared libraries, not probed yet) | – | – | – | – | – | – |",
                r.what, r.spec
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {:.1}% |",
            r.what,
            r.spec,
            r.all,
            r.of("jump"),
            r.of("jump-padding"),
            r.prefixed("jump-short-"),
            r.of("jump-pun"),
            r.all.saturating_sub(r.jumps()),
            r.percent()
        );
    }
    let python = rows
        .iter()
        .find(|r| r.what == "python3.11" && r.all > 0)
        .map(Row::percent);
    (md, python)
}
