//! The heap fail-nth allocator fails exactly the n-th allocation, and the
//! fallible helpers turn that into `AllocError` with nothing changed.

use fallible::testing::{self, FailingAlloc};
use fallible::{try_box, try_collect, TryMap, VecExt};

#[global_allocator]
static HEAP: FailingAlloc = FailingAlloc;

#[test]
fn the_nth_allocation_fails_and_the_helpers_report_it() {
    let mut v: Vec<u32> = Vec::new();
    testing::arm(1);
    assert!(v.try_push(1).is_err());
    assert_eq!(testing::disarm(), 1);
    assert!(v.is_empty());

    // A map insert fails cleanly at its growth, and succeeds once it has room.
    let mut m = TryMap::new();
    for k in 0..4u32 {
        m.try_insert(k, k).unwrap();
    }
    testing::arm(1);
    assert!(m.try_insert(10, 10).is_err());
    testing::disarm();
    assert_eq!(m.len(), 4);
    assert!(m.get(&10).is_none());

    // Counting: three boxes pass, the fourth fails.
    testing::arm(4);
    let (a, b, c) = (try_box(1u64), try_box(2u64), try_box(3u64));
    let d = try_box(4u64);
    assert_eq!(testing::disarm(), 4);
    assert!(a.is_ok() && b.is_ok() && c.is_ok() && d.is_err());

    testing::arm(1);
    assert!(try_collect(0..10).is_err());
    testing::arm(1);
    assert!(try_box([0u8; 64]).is_err());
    testing::disarm();

    testing::arm(1);
    let inside = testing::unarmed(|| Vec::<u8>::with_capacity(8).capacity());
    assert!(testing::armed());
    testing::disarm();
    assert_eq!(inside, 8);
}
