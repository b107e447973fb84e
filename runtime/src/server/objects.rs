//! The objects the server serves (the program's text today; shared
//! libraries and `dlopen`ed objects to come): a set that only grows, each
//! with its page images, the same in every process that maps it.

use std::sync::Arc;

use super::bits::PageBits;
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

/// One object: its page images and which pages any process got.
pub(super) struct Object {
    pub(super) image: Arc<TextImage>,
    /// Pages installed by us in some process, at some time (for
    /// [`TextStats::served`](super::TextStats::served)).
    pub(super) ever: PageBits,
    /// Pages some process faulted on (the touched page of each fault, not
    /// its fault-around neighbours): the touches that beat any install.
    pub(super) faulted: PageBits,
    /// This object's share of the server's figures (`pages` and `served`
    /// are filled in when asked for).
    pub(super) stats: super::TextStats,
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
        let faulted = PageBits::new(image.pages());
        self.0.push(Object {
            image,
            ever,
            faulted,
            stats: super::TextStats::default(),
        });
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
