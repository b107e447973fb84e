//! The only writes of the fault server into a program's memory: one
//! `UFFDIO_COPY` of a run of an object's pages into one process, or of a
//! process's row page, and what each kernel answer means.
//!
//! Invariant (security): the server writes only through `UFFDIO_COPY`,
//! which the kernel confines to the ranges registered on that uffd, and
//! only at addresses from a mapping's image ranges plus its bias, or the
//! row page's: never at an address the program chose.

#![allow(unsafe_code)]

use super::mm::Page;
use super::{ServeError, Server};
use crate::uffd::{CopyOutcome, PAGE_SIZE};

impl Server {
    /// Copies the page at `addr` alone into mm `m` (a copy deferred by
    /// `EAGAIN`). Returns whether this call installed it; nothing happens
    /// if no mapping holds `addr` any more.
    pub(super) fn install_at(&mut self, m: usize, addr: u64) -> Result<bool, ServeError> {
        match self.mms[m].space.find(addr) {
            Some(page) => self.install_run(m, page, 1).map(|n| n > 0),
            None => Ok(false),
        }
    }

    /// Copies up to `max` pages from `at` on into mm `m`, in one
    /// `UFFDIO_COPY` (fault-around), waking whoever waits on them. Returns
    /// how many pages it installed.
    ///
    /// The run takes pages that are adjacent in the process and in the
    /// image. Pages that seem present are not left out: the program may
    /// have dropped them without telling us (drops are watched only for
    /// anonymous text), and the copy stops with `EEXIST` at the first page
    /// that really is present.
    pub(super) fn install_run(
        &mut self,
        m: usize,
        at: Page,
        max: usize,
    ) -> Result<usize, ServeError> {
        let mm = &mut self.mms[m];
        let Some(uffd) = &mm.uffd else {
            return Ok(0);
        };
        let mapping = mm.space.mapping_mut(at.slot);
        let object = self.objects.get_mut(mapping.object);
        let image = &object.image;
        let n = if max > 1 {
            image.run_length(at.index, max)
        } else {
            1
        };
        // `map` checked that every page's address plus the bias fits.
        let addr = image.page_addr(at.index).wrapping_add(mapping.bias);
        let len = n as u64 * PAGE_SIZE;
        let src = image.src(at.index);
        // SAFETY: `src` starts `n` pages of the image that are adjacent in
        // memory (run_length checked), each readable for PAGE_SIZE bytes
        // (TextImage::new's contract).
        let (outcome, bytes) = unsafe { uffd.copy_partial(addr, src, len, true) };
        let copied = (bytes / PAGE_SIZE) as usize;
        for j in at.index..at.index + copied {
            mapping.served.set(j);
            mapping.dropped.clear(j);
            if !object.ever.set(j) {
                self.stats.served += 1;
            }
        }
        let wake = || {
            let _ = uffd.wake(addr, len);
        };
        match outcome {
            CopyOutcome::Copied => {}
            // Someone else's fault installed a page first: make sure nobody
            // sleeps on the ones we did not copy.
            CopyOutcome::AlreadyPresent => wake(),
            // A remove/unmap is pending: read events first, then try again.
            CopyOutcome::Retry if copied == 0 => self.deferred.push((m, addr)),
            CopyOutcome::Retry => wake(),
            // The process exited or exec'd: nothing left to serve there.
            CopyOutcome::Gone => self.retire(m),
            // The run crosses a split of the text: serve the page alone.
            CopyOutcome::NotInOneMapping if copied == 0 && n > 1 => {
                return self.install_run(m, at, 1);
            }
            // The page left the mapping since it faulted (or the rest of the
            // run is past a split): its threads touch it again and meet
            // whatever is there now, as natively.
            CopyOutcome::NotInOneMapping => wake(),
            CopyOutcome::Failed(errno) => return Err(ServeError::Copy { addr, errno }),
        }
        Ok(copied)
    }

    /// Answers a process's touch of the row page with its row.
    pub(super) fn serve_row_page(&mut self, m: usize, at: u64, tid: u32) -> Result<(), ServeError> {
        let Some(rp) = &mut self.row_page else {
            return Ok(());
        };
        let words = rp.image(m, tid);
        let mut page = [0u8; PAGE_SIZE as usize];
        for (b, w) in page.chunks_exact_mut(8).zip(words) {
            b.copy_from_slice(&w.to_ne_bytes());
        }
        self.copy_page(m, at & !(PAGE_SIZE - 1), &page)
    }

    /// Copies one page of ours (`page`) to `addr` in mm `m` (a page
    /// registered there that no image serves: a row page,
    /// a doorbell), waking whoever waits on it.
    pub(super) fn copy_page(
        &mut self,
        m: usize,
        addr: u64,
        page: &[u8; PAGE_SIZE as usize],
    ) -> Result<(), ServeError> {
        let Some(uffd) = &self.mms[m].uffd else {
            return Ok(());
        };
        // SAFETY: `page` is a live, readable page-sized buffer.
        let (outcome, _) = unsafe { uffd.copy_partial(addr, page.as_ptr(), PAGE_SIZE, true) };
        match outcome {
            CopyOutcome::Copied => Ok(()),
            CopyOutcome::AlreadyPresent | CopyOutcome::Retry | CopyOutcome::NotInOneMapping => {
                let _ = uffd.wake(addr, PAGE_SIZE);
                Ok(())
            }
            CopyOutcome::Gone => {
                self.retire(m);
                Ok(())
            }
            CopyOutcome::Failed(errno) => Err(ServeError::Copy { addr, errno }),
        }
    }
}
