//! The page images the fault server copies from: for one object (the
//! program's text), one per text page, either a run of the object file's
//! mapping or a patched copy of the page (probe sites), the same in every
//! process that maps the object.

#![allow(unsafe_code)]

use std::sync::Arc;

use crate::uffd::PAGE_SIZE;

/// Where the bytes of one served page come from.
#[derive(Clone, Copy, Debug)]
enum PageSrc {
    /// A page-sized, readable run of bytes that lives as long as the image.
    Bytes(*const u8),
    /// A page past the end of the file: zeros.
    Zero,
}

/// One contiguous run of an object's text, at the image's addresses (the
/// program's are its runtime addresses: the server maps it with bias 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextRange {
    /// Address of the first page (page aligned).
    pub start: u64,
    /// Number of pages.
    pub pages: usize,
}

impl TextRange {
    /// One past the last byte.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.start + self.pages as u64 * PAGE_SIZE
    }
}

/// The page images of one object, at the image's addresses: a process that
/// maps the object at a bias has page `i` at `page_addr(i) + bias`.
pub struct TextImage {
    ranges: Vec<TextRange>,
    /// Index of each range's first page in `srcs`.
    first: Vec<usize>,
    srcs: Vec<PageSrc>,
    /// Patched page images (probe sites), which some `srcs` point into.
    _patched: Vec<Box<[u8]>>,
    /// Keeps the memory the other `srcs` point into alive (a file mapping).
    _owner: Arc<dyn Send + Sync>,
}

// SAFETY: the raw pointers in `srcs` point into memory owned by `_owner`,
// which is immutable and shared; reading it from any thread is sound.
unsafe impl Send for TextImage {}
// SAFETY: as above; the image is never mutated after construction.
unsafe impl Sync for TextImage {}

static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

impl TextImage {
    /// Builds an image from `(range, bytes)` pairs: page `i` of a range is
    /// `bytes[i*4096..(i+1)*4096]`, zero-filled past the end of `bytes`,
    /// except the pages in `patched` (page address, page image),
    /// which are served from those images.
    ///
    /// # Safety
    /// Every `bytes` slice must stay valid and unchanged as long as `owner`
    /// lives, and must be readable up to the next multiple of the page size
    /// past its end (true of a file mapping, whose last page is zero-filled
    /// by the kernel).
    pub unsafe fn new(
        parts: &[(TextRange, &[u8])],
        patched: Vec<(u64, Box<[u8]>)>,
        owner: Arc<dyn Send + Sync>,
    ) -> TextImage {
        let mut ranges = Vec::with_capacity(parts.len());
        let mut first = Vec::with_capacity(parts.len());
        let mut srcs = Vec::new();
        for (range, bytes) in parts {
            first.push(srcs.len());
            ranges.push(*range);
            for i in 0..range.pages {
                let off = i * PAGE_SIZE as usize;
                srcs.push(if off < bytes.len() {
                    // SAFETY: off < bytes.len(), so the pointer is in bounds.
                    PageSrc::Bytes(unsafe { bytes.as_ptr().add(off) })
                } else {
                    PageSrc::Zero
                });
            }
        }
        let mut image = TextImage {
            ranges,
            first,
            srcs,
            _patched: Vec::new(),
            _owner: owner,
        };
        for (addr, page) in patched {
            assert_eq!(
                page.len(),
                PAGE_SIZE as usize,
                "a patched page image is one page"
            );
            if let Some(i) = image.index_of(addr) {
                image.srcs[i] = PageSrc::Bytes(page.as_ptr());
                image._patched.push(page);
            }
        }
        image
    }

    /// An image with nothing to serve (a placeholder).
    #[must_use]
    pub fn empty() -> TextImage {
        TextImage {
            ranges: Vec::new(),
            first: Vec::new(),
            srcs: Vec::new(),
            _patched: Vec::new(),
            _owner: Arc::new(()),
        }
    }

    /// An image of `ranges` (start, pages) whose every page is zeros: the
    /// bookkeeping tests' objects.
    #[cfg(test)]
    pub(crate) fn zeros(ranges: &[(u64, usize)]) -> TextImage {
        let parts: Vec<(TextRange, &[u8])> = ranges
            .iter()
            .map(|&(start, pages)| (TextRange { start, pages }, &[][..]))
            .collect();
        // SAFETY: empty slices: no byte is read from them, every page is
        // the zero page.
        unsafe { TextImage::new(&parts, Vec::new(), Arc::new(())) }
    }

    /// The served ranges, in the order given.
    #[must_use]
    pub fn ranges(&self) -> &[TextRange] {
        &self.ranges
    }

    /// Total pages served.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.srcs.len()
    }

    /// The image of page `index` (pages are numbered across the ranges, in
    /// order).
    ///
    /// # Panics
    /// If `index` is not below [`TextImage::pages`].
    #[must_use]
    pub fn page(&self, index: usize) -> &[u8] {
        // SAFETY: every source is a readable page that lives as long as the
        // image (see `new`); the slice borrows the image.
        unsafe { std::slice::from_raw_parts(self.src(index), PAGE_SIZE as usize) }
    }

    /// The page index of an address, if it lies in one of the ranges.
    pub(crate) fn index_of(&self, addr: u64) -> Option<usize> {
        self.ranges.iter().zip(&self.first).find_map(|(r, first)| {
            (addr >= r.start && addr < r.end())
                .then(|| first + ((addr - r.start) / PAGE_SIZE) as usize)
        })
    }

    pub(crate) fn page_addr(&self, index: usize) -> u64 {
        let k = self.first.partition_point(|&f| f <= index) - 1;
        self.ranges[k].start + (index - self.first[k]) as u64 * PAGE_SIZE
    }

    pub(crate) fn src(&self, index: usize) -> *const u8 {
        match self.srcs[index] {
            PageSrc::Bytes(p) => p,
            PageSrc::Zero => ZERO_PAGE.as_ptr(),
        }
    }

    /// How many pages from `index` on can go in one copy: up to `max`,
    /// adjacent in the image's addresses (so in any mapping of it, which
    /// moves them all by one bias) and in memory.
    pub(crate) fn run_length(&self, index: usize, max: usize) -> usize {
        let (addr, src) = (self.page_addr(index), self.src(index));
        let mut n = 1;
        while n < max && index + n < self.pages() {
            let j = index + n;
            let step = n as u64 * PAGE_SIZE;
            if self.page_addr(j) != addr + step || self.src(j) as u64 != src as u64 + step {
                break;
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = PAGE_SIZE as usize;

    #[test]
    fn pages_are_numbered_across_ranges_and_runs_stop_where_either_side_breaks() {
        // Two ranges adjacent in addresses and in the bytes, then one after
        // a gap in addresses; page 5 is patched (its image lives elsewhere).
        let bytes: &'static [u8] = Box::leak(vec![7u8; 8 * P].into_boxed_slice());
        let r = |start, pages| TextRange { start, pages };
        let parts = [
            (r(0x1000, 2), &bytes[..2 * P]),
            (r(0x3000, 2), &bytes[2 * P..4 * P]),
            (r(0x9000, 4), &bytes[4 * P..]),
        ];
        let patched = vec![(0xa000, vec![1u8; P].into_boxed_slice())];
        // SAFETY: `bytes` is leaked: it lives and stays unchanged forever.
        let image = unsafe { TextImage::new(&parts, patched, Arc::new(())) };
        assert_eq!(image.pages(), 8);
        assert_eq!(image.index_of(0x3fff), Some(2));
        assert_eq!(image.index_of(0x5000), None);
        assert_eq!(image.page_addr(4), 0x9000);
        assert_eq!(image.page(5)[0], 1);
        assert_eq!(image.page(6)[0], 7);
        // Pages 0-3 are adjacent on both sides, across two ranges; page 4
        // follows page 3 in the bytes, not in addresses.
        assert_eq!(image.run_length(0, 64), 4);
        assert_eq!(image.run_length(0, 3), 3);
        assert_eq!(image.run_length(2, 64), 2);
        // The patched page 5 is adjacent in addresses, not in memory.
        assert_eq!(image.run_length(4, 64), 1);
        assert_eq!(image.run_length(6, 64), 2);
        assert_eq!(image.run_length(6, 1), 1);
    }
}
