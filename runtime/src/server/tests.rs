//! The server's object bookkeeping through its public API. A real uffd is
//! made for the first process, but nothing is registered or served: no
//! fault is involved.

use super::*;

const P: u64 = PAGE_SIZE;

fn image(ranges: &[(u64, usize)]) -> Arc<TextImage> {
    Arc::new(TextImage::zeros(ranges))
}

fn server() -> Server {
    let (uffd, _) = Uffd::create().expect("userfaultfd(2)");
    Server::new(image(&[(0x40_0000, 4)]), uffd)
}

#[test]
fn the_program_is_object_0_mapped_in_the_first_process() {
    let s = server();
    assert_eq!(s.processes().collect::<Vec<_>>(), [MmId::FIRST]);
    assert_eq!(
        s.object_at(MmId::FIRST, 0x40_2abc),
        Some((ObjectId::MAIN, 2))
    );
    assert_eq!(s.object_at(MmId::FIRST, 0x40_4000), None);
    assert_eq!(s.stats().pages, 4);
    assert!(!s.forked());
}

#[test]
fn objects_are_added_mapped_and_unmapped() {
    let mut s = server();
    let lib = s.add_object(image(&[(0, 2), (0x3000, 1)]));
    assert_eq!(lib, ObjectId(1));
    assert_eq!(s.stats().pages, 7);
    // Added is not mapped.
    assert_eq!(s.object_at(MmId::FIRST, 0x7f00_0000_0000), None);
    s.map_object(MmId::FIRST, lib, 0x7f00_0000_0000).unwrap();
    assert_eq!(s.object_at(MmId::FIRST, 0x7f00_0000_1000), Some((lib, 1)));
    assert_eq!(s.object_at(MmId::FIRST, 0x7f00_0000_3000), Some((lib, 2)));
    assert_eq!(
        s.object_at(MmId::FIRST, 0x40_0000),
        Some((ObjectId::MAIN, 0))
    );
    // A copy of each object's page waits for events to be read.
    s.deferred.push((0, 0x7f00_0000_0000));
    s.deferred.push((0, 0x40_1000));
    s.unmap_object(MmId::FIRST, lib).unwrap();
    assert_eq!(s.object_at(MmId::FIRST, 0x7f00_0000_1000), None);
    assert_eq!(
        s.deferred,
        [(0, 0x40_1000)],
        "the unmapped page's copy is dropped"
    );
    // And again, elsewhere.
    s.map_object(MmId::FIRST, lib, 0x10_0000).unwrap();
    assert_eq!(s.object_at(MmId::FIRST, 0x10_3000), Some((lib, 2)));
}

#[test]
fn mapping_names_what_is_wrong() {
    let mut s = server();
    let lib = s.add_object(image(&[(0, 1)]));
    let nowhere = ObjectId(9);
    assert_eq!(
        s.map_object(MmId::FIRST, nowhere, 0),
        Err(MapError::NoObject { object: nowhere })
    );
    assert_eq!(
        s.map_object(MmId(1), lib, 0),
        Err(MapError::NoProcess { mm: MmId(1) })
    );
    assert_eq!(
        s.map_object(MmId::FIRST, lib, 0x40_3000),
        Err(MapError::Overlap {
            object: lib,
            bias: 0x40_3000,
            at: 0x40_0000
        })
    );
    assert_eq!(
        s.unmap_object(MmId::FIRST, lib),
        Err(MapError::NotMapped {
            object: lib,
            mm: MmId::FIRST
        })
    );
    // A process that ended takes nothing.
    s.retire(0);
    assert_eq!(s.processes().count(), 0);
    assert_eq!(
        s.map_object(MmId::FIRST, lib, 16 * P),
        Err(MapError::NoProcess { mm: MmId::FIRST })
    );
}
