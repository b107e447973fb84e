//! Installing pages before they fault: the background prefetch (a run at a
//! time, whenever no event waits) and the eager population of every page
//! (when forks cannot be followed, and at the hand-over when the first
//! process ends while others live on).

use super::mm::Page;
use super::{ServeError, Server};
use crate::uffd::empty_msgs;

/// Pages per copy of the background prefetch: small, so that a fault
/// arriving meanwhile waits little.
const PREFETCH_RUN: usize = 64;

/// Pages per copy of the eager population.
const POPULATE_RUN: usize = 256;

impl Server {
    /// Installs the next run of missing pages for the prefetch; false when
    /// no process has any left.
    pub(super) fn prefetch_step(&mut self) -> Result<bool, ServeError> {
        if !self.prefetch_pending {
            return Ok(false);
        }
        if self.wanted_step()? {
            return Ok(true);
        }
        if !self.prefetch {
            self.prefetch_pending = false;
            return Ok(false);
        }
        for m in 0..self.mms.len() {
            for slot in 0..self.mms[m].space.mappings().len() {
                let mm = &mut self.mms[m];
                let gone = mm.gone();
                let mapping = mm.space.mapping_mut(slot);
                let pages = mapping.pages;
                let mut index = mapping.prefetch_at;
                while index < pages && !gone && mapping.present(index) {
                    index += 1;
                }
                if index >= pages || gone {
                    mapping.prefetch_at = pages;
                    continue;
                }
                let n = self.install_run(m, Page { slot, index }, PREFETCH_RUN)?;
                self.count_populated(m, slot, n);
                self.mms[m].space.mapping_mut(slot).prefetch_at = index + n.max(1);
                return Ok(true);
            }
        }
        self.prefetch_pending = false;
        Ok(false)
    }

    /// Installs the next run of the wanted pages (see [`Server::set_wanted`])
    /// not yet in the first process; false when none is left.
    fn wanted_step(&mut self) -> Result<bool, ServeError> {
        let (object, ref pages, at) = self.wanted;
        if at >= pages.len() || self.mms.first().is_none_or(|p| p.gone()) {
            return Ok(false);
        }
        let Some(slot) = self.mms[0]
            .space
            .mappings()
            .iter()
            .position(|m| m.object == object)
        else {
            self.wanted.2 = pages.len();
            return Ok(false);
        };
        let mapping = &self.mms[0].space.mappings()[slot];
        // The run of wanted pages adjacent from here.
        let index = pages[at];
        let mut run = 1;
        while at + run < pages.len() && pages[at + run] == index + run && run < PREFETCH_RUN {
            run += 1;
        }
        if index >= mapping.pages {
            self.wanted.2 = pages.len();
            return Ok(false);
        }
        if mapping.present(index) {
            self.wanted.2 = at + 1;
            return Ok(true);
        }
        let n = self.install_run(0, Page { slot, index }, run)?;
        self.count_populated(0, slot, n);
        self.wanted.2 = at + n.max(1);
        Ok(true)
    }

    /// Installs every page not yet served in every live process, without
    /// waiting for faults. Used when forks cannot be followed (user-mode-only
    /// uffd) and when the first process has ended while others live on.
    pub fn populate_all(&mut self) -> Result<(), ServeError> {
        self.populate_once()?;
        // Copies deferred by EAGAIN: retry while their madvise callers resume.
        for _ in 0..1000 {
            if self.deferred.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            let mut msgs = empty_msgs::<32>();
            for m in 0..self.mms.len() {
                self.drain(m, &mut msgs)?;
            }
            self.retry_deferred()?;
        }
        Ok(())
    }

    /// Installs every page of `object` not yet in process `mm`, without
    /// waiting for faults (an object whose text is all run at once, such
    /// as the dynamic loader's at start).
    pub fn populate_object(
        &mut self,
        mm: super::MmId,
        object: super::ObjectId,
    ) -> Result<(), ServeError> {
        let m = mm.0;
        if self.mms.get(m).is_none_or(|p| p.gone()) {
            return Ok(());
        }
        for slot in 0..self.mms[m].space.mappings().len() {
            if self.mms[m].space.mappings()[slot].object == object {
                self.populate_mapping(m, slot)?;
            }
        }
        Ok(())
    }

    fn populate_once(&mut self) -> Result<(), ServeError> {
        for m in 0..self.mms.len() {
            for slot in 0..self.mms[m].space.mappings().len() {
                self.populate_mapping(m, slot)?;
            }
            // Wake anyone who faulted while we were installing without waking.
            self.wake(m);
        }
        Ok(())
    }

    /// Installs the pages of mapping `slot` of mm `m` that are not there.
    fn populate_mapping(&mut self, m: usize, slot: usize) -> Result<(), ServeError> {
        let pages = self.mms[m].space.mappings()[slot].pages;
        let mut index = 0;
        while index < pages && !self.mms[m].gone() {
            if self.mms[m].space.mappings()[slot].present(index) {
                index += 1;
                continue;
            }
            let n = self.install_run(m, Page { slot, index }, POPULATE_RUN)?;
            self.count_populated(m, slot, n);
            index += n.max(1);
        }
        Ok(())
    }
}
