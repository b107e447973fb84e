//! A fixed-size bit set over the pages of one object.

/// One bit per page of an object. An empty set (no words) answers false
/// everywhere and ignores writes: that is what a retired process keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PageBits(Vec<u64>);

impl PageBits {
    pub(super) fn new(pages: usize) -> PageBits {
        PageBits(vec![0; pages.div_ceil(64)])
    }

    /// Sets bit `i`; returns whether it was set before.
    pub(super) fn set(&mut self, i: usize) -> bool {
        let b = 1u64 << (i % 64);
        self.0.get_mut(i / 64).is_some_and(|w| {
            let was = *w & b != 0;
            *w |= b;
            was
        })
    }

    /// How many bits are set.
    pub(super) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub(super) fn get(&self, i: usize) -> bool {
        self.0
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Clears bit `i`; returns whether it was set.
    pub(super) fn clear(&mut self, i: usize) -> bool {
        let b = 1u64 << (i % 64);
        self.0.get_mut(i / 64).is_some_and(|w| {
            let was = *w & b != 0;
            *w &= !b;
            was
        })
    }

    /// The bits of `self` that are not in `other`, in a set of `pages` bits
    /// (zero where either set has no words).
    pub(super) fn minus(&self, other: &PageBits, pages: usize) -> PageBits {
        let mut out = PageBits::new(pages);
        if self.0.len() == out.0.len() && other.0.len() == out.0.len() {
            for (o, (a, b)) in out.0.iter_mut().zip(self.0.iter().zip(&other.0)) {
                *o = a & !b;
            }
        }
        out
    }

    /// Forgets every bit and frees the memory.
    pub(super) fn release(&mut self) {
        self.0 = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear() {
        let mut b = PageBits::new(130);
        assert!(!b.set(129));
        assert!(b.set(129));
        assert!(b.get(129) && !b.get(128));
        assert!(b.clear(129));
        assert!(!b.clear(129));
    }

    #[test]
    fn a_released_set_is_empty_and_stays_so() {
        let mut b = PageBits::new(10);
        b.set(3);
        b.release();
        assert!(!b.get(3));
        assert!(!b.set(3));
        assert!(!b.get(3));
    }

    #[test]
    fn minus_keeps_what_the_other_lacks() {
        let (mut a, mut d) = (PageBits::new(100), PageBits::new(100));
        a.set(1);
        a.set(70);
        d.set(70);
        let p = a.minus(&d, 100);
        assert!(p.get(1) && !p.get(70));
        // From a released set: nothing.
        d.release();
        assert_eq!(a.minus(&d, 100), PageBits::new(100));
    }
}
