//! Per-process state: which objects a process (mm) maps and where, and
//! which of their pages we served it. A fault's address is looked up here:
//! process → the mapping whose range holds it → page of that object.

use super::bits::PageBits;
use super::objects::ObjectId;
use crate::image::TextImage;
use crate::uffd::{Uffd, PAGE_SIZE};

/// A process (mm) of the program, numbered in the order the server met it:
/// 0 is the first, each fork the next number. The same number is passed to
/// the row assigner (see [`Server::set_row_page`](super::Server::set_row_page)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MmId(pub usize);

impl MmId {
    /// The program's first process.
    pub const FIRST: MmId = MmId(0);
}

/// Why an object cannot be mapped or unmapped in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The id was not given by `add_object`.
    #[error("object {} was never added to the fault server", object.0)]
    NoObject {
        /// The id asked for.
        object: ObjectId,
    },
    /// The process is not one the server knows, or it has ended.
    #[error("process {} is not served (unknown, or ended)", mm.0)]
    NoProcess {
        /// The process asked for.
        mm: MmId,
    },
    /// Each process maps an object at most once; unmap it first.
    #[error("object {} is mapped in process {} already", object.0, mm.0)]
    AlreadyMapped {
        /// The object.
        object: ObjectId,
        /// The process.
        mm: MmId,
    },
    /// Unmapping an object the process has not mapped.
    #[error("object {} is not mapped in process {}", object.0, mm.0)]
    NotMapped {
        /// The object.
        object: ObjectId,
        /// The process.
        mm: MmId,
    },
    /// The bias moves a page off a page boundary or past the end of the
    /// address space.
    #[error("object {} cannot be mapped with bias {bias:#x}: not page aligned, or past the end of the address space", object.0)]
    BadBias {
        /// The object.
        object: ObjectId,
        /// The bias asked for.
        bias: u64,
    },
    /// Part of the object would land on text the process already maps.
    #[error("object {} with bias {bias:#x} overlaps text mapped at {at:#x}", object.0)]
    Overlap {
        /// The object.
        object: ObjectId,
        /// The bias asked for.
        bias: u64,
        /// Start of the text already there.
        at: u64,
    },
}

/// One process we serve.
pub(super) struct Mm {
    /// None once the process is gone (the fd is closed then).
    pub(super) uffd: Option<Uffd>,
    pub(super) space: AddressSpace,
}

impl Mm {
    /// Whether the process exited or exec'd: nothing is served there.
    pub(super) fn gone(&self) -> bool {
        self.uffd.is_none()
    }
}

/// One object mapped in one process, and what we know of its pages there.
pub(super) struct Mapping {
    pub(super) object: ObjectId,
    /// Added to the image's page addresses to give the process's.
    pub(super) bias: u64,
    /// Pages of the object.
    pub(super) pages: usize,
    /// Pages served to this process.
    pub(super) served: PageBits,
    /// Served pages that a remove event dropped since: the next fault on
    /// one is a refault. (Several threads faulting on one page at once give
    /// several events for one missing page; only the first is served.)
    pub(super) dropped: PageBits,
    /// Next page the background prefetch installs here (`pages` when done).
    pub(super) prefetch_at: usize,
}

impl Mapping {
    /// Whether page `index` is in the process now (as far as we know).
    pub(super) fn present(&self, index: usize) -> bool {
        self.served.get(index) && !self.dropped.get(index)
    }
}

/// A page of a process's text: its mapping there, and its page in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Page {
    /// Which of the process's mappings.
    pub(super) slot: usize,
    /// Page index in the object's image.
    pub(super) index: usize,
}

/// A range of one mapping's pages, contiguous in the process.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
    slot: usize,
    /// Page index (in the object) of `start`.
    first: usize,
}

/// The objects one process maps, and where. Invariant: `spans` are sorted
/// by start and do not overlap, and every span's slot is a mapping.
#[derive(Default)]
pub(super) struct AddressSpace {
    mappings: Vec<Mapping>,
    spans: Vec<Span>,
}

impl AddressSpace {
    /// Maps `object` (whose image is `image`) at its image's addresses plus
    /// `bias`; the page bitmaps start empty.
    pub(super) fn map(
        &mut self,
        mm: MmId,
        object: ObjectId,
        image: &TextImage,
        bias: u64,
    ) -> Result<(), MapError> {
        if self.mappings.iter().any(|m| m.object == object) {
            return Err(MapError::AlreadyMapped { object, mm });
        }
        let bad = MapError::BadBias { object, bias };
        if !bias.is_multiple_of(PAGE_SIZE) {
            return Err(bad);
        }
        let slot = self.mappings.len();
        let mut spans = self.spans.clone();
        let mut first = 0;
        for r in image.ranges() {
            let start = r.start.checked_add(bias).ok_or(bad)?;
            let end = start.checked_add(r.end() - r.start).ok_or(bad)?;
            let at = spans.partition_point(|s| s.start < start);
            let clash = spans[..at].last().filter(|s| s.end > start);
            let clash = clash.or(spans.get(at).filter(|s| s.start < end));
            if let Some(s) = clash {
                let at = s.start;
                return Err(MapError::Overlap { object, bias, at });
            }
            spans.insert(
                at,
                Span {
                    start,
                    end,
                    slot,
                    first,
                },
            );
            first += r.pages;
        }
        self.spans = spans;
        self.mappings.push(Mapping {
            object,
            bias,
            pages: image.pages(),
            served: PageBits::new(image.pages()),
            dropped: PageBits::new(image.pages()),
            prefetch_at: 0,
        });
        Ok(())
    }

    /// Forgets the mapping of `object`, and what we knew of its pages.
    pub(super) fn unmap(&mut self, mm: MmId, object: ObjectId) -> Result<(), MapError> {
        let Some(slot) = self.mappings.iter().position(|m| m.object == object) else {
            return Err(MapError::NotMapped { object, mm });
        };
        self.mappings.remove(slot);
        self.spans.retain(|s| s.slot != slot);
        for s in &mut self.spans {
            if s.slot > slot {
                s.slot -= 1;
            }
        }
        Ok(())
    }

    /// The page at `addr`, if a mapping holds it.
    pub(super) fn find(&self, addr: u64) -> Option<Page> {
        let k = self
            .spans
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)?;
        let s = &self.spans[k];
        (addr < s.end).then(|| Page {
            slot: s.slot,
            index: s.first + ((addr - s.start) / PAGE_SIZE) as usize,
        })
    }

    pub(super) fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// # Panics
    /// If `slot` is not a mapping's (a [`Page`]'s slot is, until the next
    /// unmap).
    pub(super) fn mapping_mut(&mut self, slot: usize) -> &mut Mapping {
        &mut self.mappings[slot]
    }

    /// Every mapped range with its object, `(object, start, end)`, in
    /// address order.
    pub(super) fn ranges_of(&self) -> impl Iterator<Item = (ObjectId, u64, u64)> + '_ {
        self.spans
            .iter()
            .map(|s| (self.mappings[s.slot].object, s.start, s.end))
    }

    /// Every mapped range, `(start, end)`, in address order.
    pub(super) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.spans.iter().map(|s| (s.start, s.end))
    }

    /// Marks the served pages with an address in `[start & !(PAGE_SIZE - 1),
    /// end)` as dropped.
    pub(super) fn drop_pages(&mut self, start: u64, end: u64) {
        let start = start & !(PAGE_SIZE - 1);
        for s in &self.spans {
            let (from, to) = (s.start.max(start), s.end.min(end));
            let m = &mut self.mappings[s.slot];
            let mut a = from;
            while a < to {
                let index = s.first + ((a - s.start) / PAGE_SIZE) as usize;
                if m.served.get(index) {
                    m.dropped.set(index);
                }
                a += PAGE_SIZE;
            }
        }
    }

    /// The address space of a fork of this process: the same mappings,
    /// each with the pages present here (a fork copies them), none dropped,
    /// and the prefetch to start over. (As elsewhere, "present" is as far
    /// as we know: a page missing after all still faults and is served.)
    pub(super) fn fork(&self) -> AddressSpace {
        let mappings = self
            .mappings
            .iter()
            .map(|m| Mapping {
                object: m.object,
                bias: m.bias,
                pages: m.pages,
                served: m.served.minus(&m.dropped, m.pages),
                dropped: PageBits::new(m.pages),
                prefetch_at: 0,
            })
            .collect();
        AddressSpace {
            mappings,
            spans: self.spans.clone(),
        }
    }

    /// Frees the page bitmaps (the process is gone), keeping the layout: a
    /// fork event read after it still gives the child the same mappings.
    pub(super) fn release_pages(&mut self) {
        for m in &mut self.mappings {
            m.served.release();
            m.dropped.release();
        }
    }

    /// The object and page at `addr`, for callers outside the server.
    pub(super) fn object_at(&self, addr: u64) -> Option<(ObjectId, usize)> {
        self.find(addr)
            .map(|p| (self.mappings[p.slot].object, p.index))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const P: u64 = PAGE_SIZE;

    /// An image of `ranges` (start, pages) whose pages are zeros.
    fn image(ranges: &[(u64, usize)]) -> Arc<TextImage> {
        Arc::new(TextImage::zeros(ranges))
    }

    /// Two objects, as the server would add them: the program (two ranges
    /// with a gap) and a library (link addresses from 0).
    struct Objects {
        main: Arc<TextImage>,
        lib: Arc<TextImage>,
    }

    impl Objects {
        fn image(&self, id: ObjectId) -> &TextImage {
            if id == ObjectId::MAIN {
                &self.main
            } else {
                &self.lib
            }
        }
    }

    fn objects() -> (Objects, ObjectId, ObjectId) {
        let main = image(&[(0x40_0000, 2), (0x40_3000, 3)]);
        let lib = image(&[(0, 4)]);
        (Objects { main, lib }, ObjectId::MAIN, ObjectId(1))
    }

    fn page(slot: usize, index: usize) -> Option<Page> {
        Some(Page { slot, index })
    }

    #[test]
    fn an_address_finds_its_object_and_page() {
        let (objects, main, lib) = objects();
        let mut s = AddressSpace::default();
        s.map(MmId::FIRST, main, objects.image(main), 0).unwrap();
        s.map(MmId::FIRST, lib, objects.image(lib), 0x7f00_0000_0000)
            .unwrap();
        assert_eq!(s.find(0x40_0000), page(0, 0));
        assert_eq!(s.find(0x40_1fff), page(0, 1));
        assert_eq!(s.find(0x40_2000), None, "the gap between the ranges");
        assert_eq!(s.find(0x40_3000), page(0, 2), "pages count across ranges");
        assert_eq!(s.find(0x40_5fff), page(0, 4));
        assert_eq!(s.find(0x40_6000), None);
        assert_eq!(s.find(0x3f_ffff), None);
        assert_eq!(s.find(0x7f00_0000_3123), page(1, 3));
        assert_eq!(s.object_at(0x7f00_0000_1000), Some((lib, 1)));
        let ranges: Vec<_> = s.ranges().collect();
        assert_eq!(
            ranges,
            [
                (0x40_0000, 0x40_2000),
                (0x40_3000, 0x40_6000),
                (0x7f00_0000_0000, 0x7f00_0000_4000)
            ]
        );
    }

    #[test]
    fn mapping_refuses_overlaps_twice_mapped_and_bad_biases() {
        let (objects, main, lib) = objects();
        let mm = MmId(3);
        let mut s = AddressSpace::default();
        s.map(mm, main, objects.image(main), 0).unwrap();
        let lib_image = objects.image(lib);
        // Into the gap: the library's 4 pages do not fit in one page.
        assert_eq!(
            s.map(mm, lib, lib_image, 0x40_2000),
            Err(MapError::Overlap {
                object: lib,
                bias: 0x40_2000,
                at: 0x40_3000
            })
        );
        // Ending on the first page of the program.
        assert_eq!(
            s.map(mm, lib, lib_image, 0x3f_d000),
            Err(MapError::Overlap {
                object: lib,
                bias: 0x3f_d000,
                at: 0x40_0000
            })
        );
        let odd = MapError::BadBias {
            object: lib,
            bias: 0x123,
        };
        assert_eq!(s.map(mm, lib, lib_image, 0x123), Err(odd));
        let past_the_end = u64::MAX - P + 1;
        assert!(matches!(
            s.map(mm, lib, lib_image, past_the_end),
            Err(MapError::BadBias { .. })
        ));
        assert_eq!(
            s.map(mm, main, objects.image(main), 0x1000_0000),
            Err(MapError::AlreadyMapped { object: main, mm })
        );
        // Nothing of the refused attempts stayed.
        assert_eq!(s.ranges().count(), 2);
        assert_eq!(s.mappings().len(), 1);
        // Right after the program: fine.
        s.map(mm, lib, lib_image, 0x40_6000).unwrap();
        assert_eq!(s.find(0x40_6000), page(1, 0));
    }

    #[test]
    fn a_fork_inherits_the_mappings_and_the_present_pages() {
        let (objects, main, lib) = objects();
        let mut parent = AddressSpace::default();
        parent.map(MmId(0), main, objects.image(main), 0).unwrap();
        parent
            .map(MmId(0), lib, objects.image(lib), 0x10_0000)
            .unwrap();
        for index in [0, 2, 3] {
            parent.mapping_mut(0).served.set(index);
        }
        parent.mapping_mut(1).served.set(1);
        // The program dropped page 2 (at 0x40_3000) since.
        parent.drop_pages(0x40_3000, 0x40_3001);
        assert!(!parent.mappings()[0].present(2));
        let mut child = parent.fork();
        assert_eq!(child.find(0x40_4000), page(0, 3));
        assert_eq!(child.find(0x10_1000), page(1, 1));
        let present: Vec<usize> = (0..5).filter(|&i| child.mappings()[0].present(i)).collect();
        assert_eq!(present, [0, 3], "a fork copies the present pages only");
        assert!(child.mappings()[1].present(1));
        assert!(!child.mappings()[0].dropped.get(2));
        // The two go their own ways afterwards.
        child.unmap(MmId(1), lib).unwrap();
        assert_eq!(child.find(0x10_1000), None);
        assert_eq!(parent.find(0x10_1000), page(1, 1));
    }

    #[test]
    fn a_retired_process_keeps_its_layout_for_a_late_fork() {
        let (objects, main, _) = objects();
        let mut s = AddressSpace::default();
        s.map(MmId(0), main, objects.image(main), 0).unwrap();
        s.mapping_mut(0).served.set(0);
        s.release_pages();
        assert!(!s.mappings()[0].present(0));
        let child = s.fork();
        assert_eq!(child.find(0x40_0000), page(0, 0));
        assert!(!child.mappings()[0].present(0));
        // The child's bitmaps are whole again.
        assert_eq!(child.mappings()[0].served, PageBits::new(5));
    }

    #[test]
    fn after_an_unmap_the_rest_is_found_and_the_object_can_move() {
        let (objects, main, lib) = objects();
        let mm = MmId(0);
        let mut s = AddressSpace::default();
        s.map(mm, lib, objects.image(lib), 0x1000_0000).unwrap();
        s.map(mm, main, objects.image(main), 0).unwrap();
        assert_eq!(s.find(0x40_3000), page(1, 2));
        s.unmap(mm, lib).unwrap();
        assert_eq!(s.find(0x1000_0000), None);
        // The program's mapping is slot 0 now, and its lookups follow.
        assert_eq!(s.find(0x40_3000), page(0, 2));
        assert_eq!(
            s.unmap(mm, lib),
            Err(MapError::NotMapped { object: lib, mm })
        );
        // Mapped again somewhere else, with nothing served yet.
        s.map(mm, lib, objects.image(lib), 0x2000_0000).unwrap();
        assert_eq!(s.find(0x2000_2000), page(1, 2));
        assert_eq!(s.find(0x1000_2000), None);
        assert!(!s.mappings()[1].served.get(2));
    }

    #[test]
    fn drop_pages_marks_only_served_pages_in_the_range() {
        let (objects, main, _) = objects();
        let mut s = AddressSpace::default();
        s.map(MmId(0), main, objects.image(main), 0).unwrap();
        for index in 0..5 {
            s.mapping_mut(0).served.set(index);
        }
        s.mapping_mut(0).served.clear(3);
        // From the middle of page 1 (rounded down) to the start of page 4.
        s.drop_pages(0x40_1800, 0x40_5000);
        let dropped: Vec<usize> = (0..5).filter(|&i| s.mappings()[0].dropped.get(i)).collect();
        assert_eq!(dropped, [1, 2]);
    }
}
