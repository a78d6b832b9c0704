//! Unit tests of the buddy allocator: splitting, typed errors, reservations, reporting marks.

use super::*;

fn blocks(a: &BuddyAllocator) -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    a.for_each_free_block(|p, o| v.push((p.0, o)));
    v
}

#[test]
fn test_new_is_max_order_blocks() {
    let a = BuddyAllocator::new(4096).unwrap();
    assert_eq!(a.free_pages(), 4096);
    assert_eq!(a.free_block_counts()[10], 4);
    assert_eq!(a.largest_free_order(), Some(10));
    assert_eq!(
        blocks(&a),
        vec![(0, 10), (1024, 10), (2048, 10), (3072, 10)]
    );
    a.check_invariants().unwrap();
}

#[test]
fn test_odd_range_has_small_edge_blocks() {
    let a = BuddyAllocator::with_range(Pfn(3), Pfn(1030)).unwrap();
    assert_eq!(a.free_pages(), 1027);
    let mut b = blocks(&a);
    b.sort();
    // 3 | 4..8 | 8..16 | ... | 512..1024 | 1024..1028 | 1028..1030
    assert_eq!(b[0], (3, 0));
    assert_eq!(b[1], (4, 2));
    assert_eq!(*b.last().unwrap(), (1028, 1));
    a.check_invariants().unwrap();
}

#[test]
fn test_alloc_splits_lowest_first() {
    let mut a = BuddyAllocator::new(2048).unwrap();
    assert_eq!(a.alloc(0).unwrap(), Pfn(0));
    assert_eq!(a.alloc(0).unwrap(), Pfn(1));
    assert_eq!(a.alloc(1).unwrap(), Pfn(2));
    assert_eq!(a.alloc(0).unwrap(), Pfn(4));
    assert_eq!(a.free_pages(), 2048 - 5);
    a.check_invariants().unwrap();
    for (p, o) in [(0, 0), (1, 0), (2, 1), (4, 0)] {
        a.free(Pfn(p), o).unwrap();
        a.check_invariants().unwrap();
    }
    assert_eq!(a.free_block_counts()[10], 2);
}

#[test]
fn test_alloc_pages_gives_back_the_tail() {
    let mut a = BuddyAllocator::new(1024).unwrap();
    let p = a.alloc_pages(5).unwrap();
    assert_eq!(a.free_pages(), 1024 - 5);
    for i in 0..5 {
        assert_eq!(
            a.allocated_order(Pfn(p.0 + i)),
            Some(0),
            "page {i} is its own allocation"
        );
    }
    assert!((5..8).all(|i| a.is_free(Pfn(p.0 + i))));
    a.check_invariants().unwrap();
    a.free_range(p, 5).unwrap();
    assert_eq!(a.free_pages(), 1024);
}

#[test]
fn test_free_errors_are_typed() {
    let mut a = BuddyAllocator::new(1024).unwrap();
    let p = a.alloc(2).unwrap();
    assert!(matches!(
        a.free(p, 11),
        Err(GuestError::BadOrder { order: 11, .. })
    ));
    assert!(matches!(
        a.free(Pfn(1024), 0),
        Err(GuestError::OutOfRange { .. })
    ));
    assert!(matches!(
        a.free(Pfn(u64::MAX), 3),
        Err(GuestError::OutOfRange { .. })
    ));
    assert!(matches!(
        a.free(Pfn(2), 2),
        Err(GuestError::Misaligned { .. })
    ));
    assert!(matches!(
        a.free(p, 1),
        Err(GuestError::WrongOrder { allocated: 2, .. })
    ));
    assert!(matches!(
        a.free(Pfn(1), 0),
        Err(GuestError::NotAllocated { pfn: 1 })
    ));
    assert!(matches!(
        a.free(Pfn(4), 0),
        Err(GuestError::DoubleFree { pfn: 4 })
    ));
    a.free(p, 2).unwrap();
    assert!(matches!(a.free(p, 2), Err(GuestError::DoubleFree { .. })));
    assert!(matches!(a.alloc(11), Err(GuestError::BadOrder { .. })));
    a.check_invariants().unwrap();
}

#[test]
fn test_out_of_memory() {
    let mut a = BuddyAllocator::new(8).unwrap();
    assert!(matches!(
        a.alloc(4),
        Err(GuestError::OutOfMemory { order: 4 })
    ));
    let mut v = Vec::new();
    assert_eq!(a.alloc_many(0, 100, &mut v).unwrap(), 8);
    assert!(a.alloc(0).is_err());
    assert_eq!(a.largest_free_order(), None);
}

#[test]
fn test_alloc_at_and_reserve() {
    let mut a = BuddyAllocator::new(2048).unwrap();
    a.alloc_at(Pfn(1000), 3).unwrap();
    assert!(!a.is_free(Pfn(1003)));
    assert!(a.is_free(Pfn(999)) && a.is_free(Pfn(1008)));
    assert!(matches!(
        a.alloc_at(Pfn(1004), 2),
        Err(GuestError::Busy { pfn: 1004 })
    ));
    a.check_invariants().unwrap();
    assert!(matches!(
        a.reserve_range(Pfn(990), 20),
        Err(GuestError::Busy { pfn: 1000 })
    ));
    assert_eq!(a.free_pages(), 2040);
    a.reserve_range(Pfn(1100), 37).unwrap();
    assert_eq!(a.free_pages(), 2003);
    a.check_invariants().unwrap();
    a.free(Pfn(1110), 0).unwrap();
    assert!(matches!(
        a.free_range(Pfn(1100), 37),
        Err(GuestError::DoubleFree { pfn: 1110 })
    ));
    a.free_range(Pfn(1100), 10).unwrap();
    a.free_range(Pfn(1111), 26).unwrap();
    a.free(Pfn(1000), 3).unwrap();
    assert_eq!(a.free_block_counts()[10], 2);
    a.check_invariants().unwrap();
}

#[test]
fn test_split_allocation() {
    let mut a = BuddyAllocator::new(1024).unwrap();
    let p = a.alloc(3).unwrap();
    a.split_allocation(p, 3).unwrap();
    for k in (0..8).rev() {
        a.free(Pfn(p.0 + k), 0).unwrap();
    }
    assert_eq!(a.free_block_counts()[10], 1);
    a.check_invariants().unwrap();
}

#[test]
fn test_reporting_marks() {
    let mut a = BuddyAllocator::new(4096).unwrap();
    let mut iso = Vec::new();
    assert_eq!(a.isolate_unreported(PAGEBLOCK_ORDER, 3, &mut iso), 3);
    assert_eq!(a.isolated_pages(), 3 * 1024);
    assert_eq!(a.free_pages(), 1024);
    for &(p, o) in &iso {
        assert!(!a.is_free(p));
        assert!(matches!(a.free(p, o), Err(GuestError::NotAllocated { .. })));
        a.putback(p, o, true).unwrap();
    }
    a.check_invariants().unwrap();
    assert_eq!(a.reported_pages(), 3 * 1024);
    iso.clear();
    // Only the one never reported is left to report.
    assert_eq!(a.isolate_unreported(PAGEBLOCK_ORDER, 10, &mut iso), 1);
    a.putback(iso[0].0, iso[0].1, true).unwrap();
    iso.clear();
    assert_eq!(a.isolate_unreported(PAGEBLOCK_ORDER, 10, &mut iso), 0);
    // Allocating splits a reported block; the pieces are no longer reported.
    let p = a.alloc(0).unwrap();
    assert_eq!(a.reported_pages(), 3 * 1024);
    assert!(!a.is_reported(Pfn(p.0 + 512)));
    a.check_invariants().unwrap();
    assert_eq!(a.isolate_unreported(PAGEBLOCK_ORDER, 10, &mut iso), 1);
    assert_eq!(iso[0].1, 9);
    a.putback(iso[0].0, 9, true).unwrap();
    a.free(p, 0).unwrap();
    // The merge back to order 10 absorbed a reported order-9 block: unreported again.
    assert_eq!(a.reported_pages(), 3 * 1024);
    assert_eq!(a.free_block_counts()[10], 4);
    a.check_invariants().unwrap();
    assert!(matches!(
        a.putback(Pfn(0), 10, true),
        Err(GuestError::NotIsolated { .. })
    ));
}
