//! Huge-page-backed guest RAM on the real kernel: THP and hugetlbfs 2 MiB pages.
//!
//! Hugetlb tests reserve their pages through /proc/sys/vm/nr_hugepages for their run (as root)
//! and give them back; they skip, saying why, only where the kernel refuses.

use std::os::fd::{BorrowedFd, OwnedFd};

use vballoon::memory::{
    huge_pages_unavailable, Backing, GuestAddress, GuestMemory, HugetlbPool, HugetlbReservation,
    MemoryError, HUGE_PAGE_SIZE, PAGE_SIZE,
};

const MIB: u64 = 1 << 20;

/// A hugetlb guest of `bytes` with its pages reserved, or `None` (after saying why).
fn hugetlb_guest(bytes: u64) -> Option<(HugetlbReservation, GuestMemory)> {
    let res = match HugetlbReservation::new(bytes / HUGE_PAGE_SIZE) {
        Ok(r) => r,
        Err(e) if huge_pages_unavailable(&e) => {
            eprintln!("skipping: the kernel refused hugetlb pages: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let mem = GuestMemory::new(bytes, Backing::Hugetlb).unwrap();
    Some((res, mem))
}

#[test]
fn test_thp_guest_is_aligned_and_backed_by_huge_pages() {
    let mem = match GuestMemory::new(64 * MIB, Backing::Thp) {
        Ok(m) => m,
        Err(e) if huge_pages_unavailable(&e) => return eprintln!("skipping: {e}"),
        Err(e) => panic!("{e}"),
    };
    let base = mem.host_ptr(GuestAddress(0), 1).unwrap() as u64;
    assert_eq!(
        base % HUGE_PAGE_SIZE,
        0,
        "THP RAM starts on a 2 MiB boundary"
    );
    assert_eq!(mem.host_page_size(), HUGE_PAGE_SIZE);
    mem.fill(GuestAddress(0), 64 * MIB, 0x5a).unwrap();
    let before = mem.huge_page_stats().unwrap();
    assert!(before.huge_bytes >= 2 * HUGE_PAGE_SIZE, "{before:?}");
    assert_eq!(before.huge_bytes % HUGE_PAGE_SIZE, 0);
    assert!(before.rss_bytes >= before.huge_bytes);
    // A whole aligned huge page goes back in one call.
    let hp = GuestAddress(3 * HUGE_PAGE_SIZE);
    mem.discard(hp, HUGE_PAGE_SIZE).unwrap();
    let after = mem.huge_page_stats().unwrap();
    assert!(
        after.rss_bytes + HUGE_PAGE_SIZE <= before.rss_bytes,
        "{after:?}"
    );
    assert!(mem.is_zero(hp, HUGE_PAGE_SIZE).unwrap());
    // A 4 KiB discard inside another huge page zeroes exactly that page.
    let at = GuestAddress(5 * HUGE_PAGE_SIZE + 7 * PAGE_SIZE);
    mem.discard(at, PAGE_SIZE).unwrap();
    assert!(mem.is_zero(at, PAGE_SIZE).unwrap());
    assert_eq!(mem.read_u8(GuestAddress(at.0 - 1)).unwrap(), 0x5a);
    assert_eq!(mem.read_u8(GuestAddress(at.0 + PAGE_SIZE)).unwrap(), 0x5a);
}

#[test]
fn test_hugetlb_discard_frees_whole_pages_and_zeroes_partial_ones() {
    let Some((_res, mem)) = hugetlb_guest(16 * MIB) else {
        return;
    };
    assert_eq!(mem.backing(), Backing::Hugetlb);
    assert!(mem.memfd().is_some());
    mem.fill(GuestAddress(0), 16 * MIB, 0xc3).unwrap();
    let full = mem.huge_page_stats().unwrap();
    assert_eq!(full.huge_bytes, 16 * MIB, "{full:?}");
    assert_eq!(full.file_allocated_bytes, Some(16 * MIB));
    let pool_before = full.pool.unwrap().free;
    // Whole huge page: the pool gets it back.
    mem.discard(GuestAddress(2 * HUGE_PAGE_SIZE), HUGE_PAGE_SIZE)
        .unwrap();
    let st = mem.huge_page_stats().unwrap();
    assert_eq!(st.file_allocated_bytes, Some(14 * MIB));
    assert_eq!(st.huge_bytes, 14 * MIB);
    assert!(st.pool.unwrap().free > pool_before, "{st:?}");
    assert!(mem
        .is_zero(GuestAddress(2 * HUGE_PAGE_SIZE), HUGE_PAGE_SIZE)
        .unwrap());
    // A 4 KiB piece of a huge page reads back as zero, but nothing is freed.
    let at = GuestAddress(5 * HUGE_PAGE_SIZE + 3 * PAGE_SIZE);
    mem.discard(at, PAGE_SIZE).unwrap();
    assert!(mem.is_zero(at, PAGE_SIZE).unwrap());
    assert_eq!(mem.read_u8(GuestAddress(at.0 - 1)).unwrap(), 0xc3);
    assert_eq!(mem.read_u8(GuestAddress(at.0 + PAGE_SIZE)).unwrap(), 0xc3);
    // The read of the punched page faulted a fresh zero page back in.
    let st = mem.huge_page_stats().unwrap();
    assert_eq!(st.file_allocated_bytes, Some(16 * MIB));
}

#[test]
fn test_hugetlb_memfd_from_another_mapping_is_recognised() {
    let Some((_res, mem)) = hugetlb_guest(8 * MIB) else {
        return;
    };
    // SAFETY: the fd is `mem`'s memfd, open for the whole borrow.
    let dup: OwnedFd = unsafe { BorrowedFd::borrow_raw(mem.memfd().unwrap()) }
        .try_clone_to_owned()
        .unwrap();
    let other = GuestMemory::from_memfd(dup, 8 * MIB).unwrap();
    assert_eq!(other.backing(), Backing::Hugetlb);
    assert_eq!(other.host_page_size(), HUGE_PAGE_SIZE);
    mem.fill(GuestAddress(0), 8 * MIB, 7).unwrap();
    other
        .discard(GuestAddress(HUGE_PAGE_SIZE), HUGE_PAGE_SIZE)
        .unwrap();
    assert!(mem
        .is_zero(GuestAddress(HUGE_PAGE_SIZE), HUGE_PAGE_SIZE)
        .unwrap());
    assert_eq!(mem.read_u8(GuestAddress(0)).unwrap(), 7);
}

#[test]
fn test_huge_backings_refuse_sizes_that_are_not_whole_huge_pages() {
    for backing in [Backing::Thp, Backing::Hugetlb] {
        let e = GuestMemory::new(HUGE_PAGE_SIZE + PAGE_SIZE, backing).unwrap_err();
        assert!(
            matches!(e, MemoryError::NotHugeAligned { size, huge }
                if size == HUGE_PAGE_SIZE + PAGE_SIZE && huge == HUGE_PAGE_SIZE),
            "{backing:?}: {e}"
        );
    }
}

#[test]
fn test_hugetlb_without_enough_reserved_pages_is_a_typed_error() {
    let Ok(pool) = HugetlbPool::read() else {
        return eprintln!("skipping: no 2 MiB hugetlb pages in this kernel");
    };
    // Far more than any pool here holds (195 GiB): refused before anything is mapped.
    let want = (pool.total + 100_000) * HUGE_PAGE_SIZE;
    let e = GuestMemory::new(want, Backing::Hugetlb).unwrap_err();
    match e {
        MemoryError::HugePagesUnavailable { backing, reason } => {
            assert_eq!(backing, "hugetlb");
            assert!(reason.contains("nr_hugepages"), "{reason}");
        }
        other => panic!("expected HugePagesUnavailable, got {other}"),
    }
}

#[test]
fn test_backing_names_parse_back() {
    for b in [
        Backing::Anonymous,
        Backing::Memfd,
        Backing::Thp,
        Backing::Hugetlb,
    ] {
        assert_eq!(Backing::parse(b.name()), Some(b));
    }
    assert_eq!(Backing::Thp.host_page_size(), HUGE_PAGE_SIZE);
    assert_eq!(Backing::Memfd.host_page_size(), PAGE_SIZE);
    assert_eq!(Backing::parse("huge"), None);
}
