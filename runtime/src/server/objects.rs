//! The objects the server serves (the program's text today; shared
//! libraries and `dlopen`ed objects to come): a set that only grows, each
//! with its page images, the same in every process that maps it.

use std::sync::Arc;

use super::bits::PageBits;
use super::mm::MmId;
use crate::image::TextImage;

/// An object whose text the server serves. Ids are given in the order
/// objects are added, from 0 (the program, added by [`Server::new`]), so
/// they match the loader's numbering of objects.
///
/// [`Server::new`]: super::Server::new
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub u32);

impl ObjectId {
    /// The program itself: the object [`Server::new`](super::Server::new) adds.
    pub const MAIN: ObjectId = ObjectId(0);
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

/// One object: its page images and which pages any process got.
pub(super) struct Object {
    pub(super) image: Arc<TextImage>,
    /// Pages installed by us in some process, at some time (for
    /// [`TextStats::served`](super::TextStats::served)).
    pub(super) ever: PageBits,
}

/// Every object added so far, indexed by id. Objects are never removed: an
/// id stays valid for the server's life, so a process's mappings can name
/// theirs without a lookup that could fail.
#[derive(Default)]
pub(super) struct Objects(Vec<Object>);

impl Objects {
    pub(super) fn add(&mut self, image: Arc<TextImage>) -> ObjectId {
        let id = ObjectId(u32::try_from(self.0.len()).unwrap_or(u32::MAX));
        let ever = PageBits::new(image.pages());
        self.0.push(Object { image, ever });
        id
    }

    pub(super) fn get(&self, id: ObjectId) -> Option<&Object> {
        self.0.get(id.0 as usize)
    }

    /// # Panics
    /// If `id` was not given by [`Objects::add`] (every mapping's is).
    pub(super) fn get_mut(&mut self, id: ObjectId) -> &mut Object {
        &mut self.0[id.0 as usize]
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Object> {
        self.0.iter_mut()
    }
}
