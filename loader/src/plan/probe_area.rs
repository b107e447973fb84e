//! The probe area's place in the plan: its address is decided from the
//! draft (near the text), then the code generated for that address is
//! mapped there. See `uprobe_runtime::area` for what is inside.

use rustix::mm::MprotectFlags;
use uprobe_runtime::area::CodeLayout;
use uprobe_runtime::{TextRange, PAGE_SIZE};

use super::{Draft, Reservation};
use crate::error::{Error, Result};

/// The probe area: handler code, trap table and out-of-line slots, mapped
/// read+exec in the monitor before the fork (the child inherits it), within
/// ±2 GiB of the text. Dropping it unmaps the monitor's copy.
pub struct ProbeArea {
    /// The area (its mapping replaced the reservation's placeholder).
    pub reservation: Reservation,
    /// The SIGTRAP handler's address.
    pub handler: u64,
    /// The `rt_sigreturn` restorer's address.
    pub restorer: u64,
    /// The row page: read+write, private to each process, after the code
    /// (see `uprobe_runtime::area`).
    pub cache: u64,
}

/// The lowest address a mapping may have (`vm.mmap_min_addr`'s default).
const MMAP_MIN_ADDR: u64 = 0x10000;

/// Farthest a rel32 reaches, with a margin.
const REACH: u64 = (1 << 31) - (1 << 20);

impl Draft {
    /// Reserves room for a probe area laid out as `layout` near the text
    /// (every rel32 between them reaches): its address is decided here,
    /// before its code is generated for it.
    pub fn probe_room(&self, layout: &CodeLayout) -> Result<Reservation> {
        let len = layout.len() as u64;
        let lo = self
            .text
            .iter()
            .map(|t| t.start)
            .min()
            .unwrap_or(self.program.reservation.addr());
        let hi = self
            .text
            .iter()
            .map(TextRange::end)
            .max()
            .unwrap_or(self.program.reservation.end());
        // Just below the program, out of brk's way as the kernel keeps its
        // mmaps; failing that, far enough above for a 1 GiB heap.
        let below = self
            .program
            .reservation
            .addr()
            .checked_sub(len)
            .filter(|&a| a >= MMAP_MIN_ADDR)
            .and_then(|a| Reservation::fixed(a, len).ok())
            .filter(|r| hi.saturating_sub(r.addr()) < REACH);
        match below {
            Some(r) => Ok(r),
            None => [
                self.program.reservation.end() + (1 << 30),
                self.program.reservation.end() + (64 << 20),
            ]
            .into_iter()
            .filter_map(|hint| Reservation::anywhere(len, PAGE_SIZE, hint).ok())
            .find(|r| r.end().saturating_sub(lo) < REACH && hi.saturating_sub(r.addr()) < REACH)
            .ok_or_else(|| Error::NoProbeRoom {
                path: self.program.image.path.clone(),
            }),
        }
    }

    /// Maps the probe area over `room` (from [`Draft::probe_room`] with the
    /// same `layout`): `code` is its code pages, mapped read+exec; the row
    /// page after them is read+write and private to each process. The
    /// child inherits the mapping.
    pub fn map_probe_area(
        &self,
        mut room: Reservation,
        layout: &CodeLayout,
        code: &[u8],
    ) -> Result<ProbeArea> {
        let len = layout.len() as u64;
        let code_len = layout.row_page() as u64;
        assert!(room.len() == len && code.len() as u64 <= code_len);
        room.fill(code)
            .map_err(|e| self.fail("mapping the probe area", e))?;
        room.protect(0, code_len, MprotectFlags::READ | MprotectFlags::EXEC)
            .map_err(|e| self.fail("protecting the probe area", e))?;
        // The row page (pid, row) starts empty in every forked process,
        // which then faults it in from the monitor (see the fault server).
        room.wipe_on_fork(code_len, PAGE_SIZE)
            .map_err(|e| self.fail("MADV_WIPEONFORK on the probe area", e))?;
        room.name(&crate::vma::anon_name("probes", &self.program.image.path));
        Ok(ProbeArea {
            handler: room.addr() + layout.handler() as u64,
            restorer: room.addr() + layout.restorer() as u64,
            cache: room.addr() + code_len,
            reservation: room,
        })
    }

    fn fail(&self, what: &str, source: std::io::Error) -> Error {
        Error::Layout {
            path: self.program.image.path.clone(),
            what: what.into(),
            source,
        }
    }
}
