//! Address kinds. A link-time address (as `nm`/`readelf` print it) becomes a
//! runtime address by adding the image's load bias; the two never mix.

use uprobe_runtime::PAGE_SIZE;

/// An address as the ELF file states it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct LinkAddr(pub u64);

/// An address in the target process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuntimeAddr(pub u64);

/// Where an image was placed: runtime = link + bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bias(pub u64);

impl Bias {
    /// The runtime address of a link-time address.
    #[must_use]
    pub fn apply(self, a: LinkAddr) -> RuntimeAddr {
        RuntimeAddr(a.0.wrapping_add(self.0))
    }
}

/// Rounds down to a page boundary.
#[must_use]
pub fn page_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

/// Rounds up to a page boundary.
#[must_use]
pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}
