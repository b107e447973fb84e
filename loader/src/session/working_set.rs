//! A run's working set of the program's text, kept for the next run
//! (`--prefetch=recorded`): the pages of the text served in a run, kept in
//! the user's cache (`workingset/`) under a key of the program file's
//! identity (device, inode, size, modification and change times), its
//! number of text pages, the probes and this uprobe-exec's own identity;
//! installed in the background from the start of the next run of the same program with
//! the same probes starts. A changed file has another key: its record is
//! never read, and the run serves its text on first touch and records
//! anew.
//!
//! ```text
//!  run n:    faults (and their fault-around) ─▶ pages served ─▶ record
//!  run n+1:  record ─▶ installed from the start ─▶ the rest on first touch ─▶ record
//! ```

use std::fmt::Write as _;
use std::fs::File;

/// The cache's kind.
const KIND: &str = "workingset";

/// The record of one program (file, text pages, probes).
pub(super) struct Record {
    material: Vec<u8>,
    pages: usize,
}

impl Record {
    /// The record of the program open as `file`, whose text has `pages`
    /// pages, run with the probes `probes` (their specs and mode, as
    /// words): None when the file's identity cannot be read.
    pub(super) fn new(file: &File, pages: usize, probes: &str) -> Option<Record> {
        let id = crate::cache::identity(&file.metadata().ok()?);
        let material = format!("workingset 1\n{id:?}\n{pages}\n{probes}\n--\n");
        Some(Record {
            material: material.into_bytes(),
            pages,
        })
    }

    /// The recorded pages (indices, in order), if there is a whole record.
    pub(super) fn read(&self) -> Option<Vec<usize>> {
        let bytes = crate::cache::read_keyed(KIND, &self.material)?;
        decode(&String::from_utf8(bytes).ok()?, self.pages)
    }

    /// Keeps `served` (page indices, in order) as the record.
    pub(super) fn write(&self, served: &[usize]) {
        crate::cache::write_keyed(KIND, &self.material, encode(served).as_bytes());
    }
}

/// Page indices in order as runs, a line each: `START COUNT`.
fn encode(pages: &[usize]) -> String {
    let mut text = String::new();
    let mut i = 0;
    while i < pages.len() {
        let start = pages[i];
        let mut n = 1;
        while i + n < pages.len() && pages[i + n] == start + n {
            n += 1;
        }
        let _ = writeln!(text, "{start} {n}");
        i += n;
    }
    text
}

/// The page indices of [`encode`]'s text, if every run is in order and
/// below `pages`.
fn decode(text: &str, pages: usize) -> Option<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for line in text.lines() {
        let (start, n) = line.split_once(' ')?;
        let (start, n): (usize, usize) = (start.parse().ok()?, n.parse().ok()?);
        let end = start.checked_add(n).filter(|&e| e <= pages && n > 0)?;
        if out.last().is_some_and(|&l| l >= start) {
            return None;
        }
        out.extend(start..end);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_read_back_as_written() {
        let pages = [1, 2, 3, 7, 9, 10];
        assert_eq!(encode(&pages), "1 3\n7 1\n9 2\n");
        assert_eq!(decode(&encode(&pages), 100), Some(pages.to_vec()));
        assert_eq!(decode("", 100), Some(Vec::new()));
    }

    #[test]
    fn a_record_out_of_order_or_past_the_text_is_none() {
        assert_eq!(decode("5 1\n3 1\n", 100), None);
        assert_eq!(decode("98 3\n", 100), None);
        assert_eq!(decode("1 0\n", 100), None);
        assert_eq!(decode("x 1\n", 100), None);
    }
}
