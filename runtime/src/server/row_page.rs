//! The per-process row page: a page, registered with every process's uffd,
//! whose first touch in each process is answered with that process's own
//! words: its pid and the address of its row of hit counters. Probe hits
//! read it, so they find their row without a system call; the page is wiped
//! on fork, so a child touches it afresh and gets its own.

use crate::uffd::PAGE_SIZE;

/// Gives process number `m` (in the order we met them) its row, from the
/// id of a thread of it: `(pid, row address)`, or None when none is left.
pub(super) type RowAssigner = Box<dyn FnMut(usize, u32) -> Option<(u64, u64)> + Send>;

/// The words of one row page.
pub(super) type RowPageImage = [u64; PAGE_SIZE as usize / 8];

pub(super) struct RowPage {
    /// Where it is, in every process: one page per probe area (each area's
    /// code reads the one within its reach); every one of them gets the
    /// same words in one process.
    pub(super) addrs: Vec<u64>,
    assign: RowAssigner,
    /// The answer given to each process, by process number.
    given: Vec<Option<(u64, u64)>>,
}

impl RowPage {
    /// The row page at `addr`, for a server that knows `processes` processes.
    pub(super) fn new(addr: u64, assign: RowAssigner, processes: usize) -> RowPage {
        RowPage {
            addrs: vec![addr],
            assign,
            given: vec![None; processes],
        }
    }

    /// A process was added (the next process number).
    pub(super) fn add_process(&mut self) {
        self.given.push(None);
    }

    /// Whether `addr` lies in a row page.
    pub(super) fn holds(&self, addr: u64) -> bool {
        self.addrs.contains(&(addr & !(PAGE_SIZE - 1)))
    }

    /// The page for process `m`, whose thread `tid` touched it: the answer
    /// given to `m` before, or a new one. A process without a row gets a
    /// page of zeros (its hits count in the overflow counters).
    pub(super) fn image(&mut self, m: usize, tid: u32) -> RowPageImage {
        let mut page = [0u64; PAGE_SIZE as usize / 8];
        let Some(given) = self.given.get_mut(m) else {
            return page;
        };
        if given.is_none() {
            *given = (self.assign)(m, tid);
        }
        if let Some((pid, row)) = *given {
            page[crate::area::ROW_PAGE_PID / 8] = pid;
            page[crate::area::ROW_PAGE_ROW / 8] = row;
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_is_asked_for_once_and_keeps_its_answer() {
        let (tx, rx) = std::sync::mpsc::channel();
        let assign = move |m: usize, tid: u32| {
            tx.send((m, tid)).unwrap();
            (m < 1).then_some((u64::from(tid), 0x5000 + m as u64))
        };
        let mut rp = RowPage::new(0x7000, Box::new(assign), 1);
        rp.add_process();
        assert!(rp.holds(0x7fff) && !rp.holds(0x8000));
        let first = rp.image(0, 42);
        assert_eq!(first[crate::area::ROW_PAGE_PID / 8], 42);
        assert_eq!(first[crate::area::ROW_PAGE_ROW / 8], 0x5000);
        assert_eq!(rp.image(0, 43), first, "a refault gets the same row");
        assert_eq!(rp.image(1, 50), [0; 512], "no row left");
        assert_eq!(rp.image(9, 1), [0; 512], "unknown process");
        let asked: Vec<_> = rx.try_iter().collect();
        assert_eq!(asked, [(0, 42), (1, 50)], "process 9 is not asked for");
    }
}
