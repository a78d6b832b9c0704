//! The balloon on huge-page-backed guest RAM (THP and hugetlbfs 2 MiB), end to end: the guest
//! gives 2 MiB blocks first, the device discards a host page once all of it is ballooned, host
//! memory really comes back (smaps, hugetlb pool), and deflating part of a discarded huge page
//! loses nothing.
//!
//! Hugetlb tests reserve their pages through /proc/sys/vm/nr_hugepages for their run and give
//! them back; they skip, saying why, only where the kernel refuses.

mod huge_support;

use std::sync::Arc;
use std::time::Duration;

use huge_support::guests_on;
use vballoon::device::HugePartial;
use vballoon::guest::HUGE_PAGE_ORDER;
use vballoon::machine::{MachineConfig, Session};
use vballoon::memory::{
    Backing, GuestAddress, GuestMemory, HugetlbReservation, PageRange, Pfn, HUGE_PAGE_PAGES,
    HUGE_PAGE_SIZE, PAGE_SIZE,
};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
const GUEST: u64 = 64 * MIB;

/// Guest RAM on `backing`, all of it touched, and the reservation it needs (hugetlb).
fn memory(backing: Backing) -> Option<(Option<HugetlbReservation>, Arc<GuestMemory>)> {
    let (res, mut guests) = guests_on(backing, GUEST, 1)?;
    let mem = guests.pop()?;
    mem.fill(GuestAddress(0), GUEST, 0x6b).unwrap();
    Some((res, Arc::new(mem)))
}

fn session(mem: &Arc<GuestMemory>, order: u8, partial: HugePartial) -> Session {
    let cfg = MachineConfig {
        alloc_order: order,
        huge_partial: partial,
        ..MachineConfig::default()
    };
    Session::with_memory(Arc::clone(mem), cfg).unwrap()
}

/// Host memory behind guest RAM: smaps-resident bytes, and the file's blocks for hugetlb.
fn host_bytes(mem: &GuestMemory) -> u64 {
    let st = mem.huge_page_stats().unwrap();
    st.file_allocated_bytes.unwrap_or(st.rss_bytes)
}

/// Runs `f` on guest RAM of each huge-page backing the kernel gives us (THP, hugetlbfs),
/// skipping those it refuses.
fn for_each_huge_backing(mut f: impl FnMut(Backing, &Arc<GuestMemory>)) {
    for backing in [Backing::Thp, Backing::Hugetlb] {
        if let Some((_res, mem)) = memory(backing) {
            f(backing, &mem);
        }
    }
}

#[test]
fn test_inflate_in_2mib_blocks_returns_whole_huge_pages() {
    for_each_huge_backing(|backing, mem| {
        let mut s = session(mem, HUGE_PAGE_ORDER, HugePartial::Wait);
        let before = host_bytes(mem);
        s.set_target_bytes(48 * MIB).unwrap();
        s.run_until_settled(T).unwrap();
        let c = s.device_counters();
        assert_eq!(c.pages_inflated, 48 * MIB / PAGE_SIZE, "{backing:?}");
        assert_eq!(c.host_pages_filled, 24, "{backing:?}");
        // Every ballooned huge page went back in few calls (runs of whole pages).
        assert!(c.discard_calls <= 24, "{backing:?}: {c:?}");
        let after = host_bytes(mem);
        assert!(
            before - after >= 48 * MIB,
            "{backing:?}: {before} -> {after}"
        );
        let set = s.balloon_set();
        for PageRange { start, len } in set.runs() {
            assert_eq!(
                start % HUGE_PAGE_PAGES,
                0,
                "{backing:?}: 2 MiB-aligned blocks"
            );
            assert!(mem.is_zero(Pfn(start).addr(), len * PAGE_SIZE).unwrap());
        }
        s.set_target_pages(0).unwrap();
        s.run_until_settled(T).unwrap();
        assert_eq!(s.device().host_pages().unwrap().full_host_pages(), 0);
        s.stop().unwrap();
    });
}

#[test]
fn test_fragmented_guest_gets_memory_back_only_when_huge_pages_fill() {
    for_each_huge_backing(|backing, mem| {
        let mut s = session(mem, 0, HugePartial::Wait);
        // The guest holds every other 4 KiB page: no 2 MiB block is free.
        let free = s.guest().allocator().free_pages();
        let mut held = Vec::new();
        for _ in 0..free {
            held.push(s.guest_mut().allocator_mut().alloc(0).unwrap());
        }
        held.sort_unstable();
        let (odd, even): (Vec<Pfn>, Vec<Pfn>) = held.iter().partition(|p| p.0 % 2 == 1);
        for p in &odd {
            s.guest_mut().allocator_mut().free(*p, 0).unwrap();
        }
        let before = host_bytes(mem);
        s.set_target_pages(odd.len() as u64).unwrap();
        s.run_until_settled(T).unwrap();
        assert_eq!(s.balloon_pages(), odd.len() as u64);
        assert_eq!(s.device_counters().host_pages_filled, 0, "{backing:?}");
        let mid = host_bytes(mem);
        assert!(
            mid + HUGE_PAGE_SIZE > before,
            "{backing:?}: nothing whole to free"
        );
        // The guest frees the other half of one region; ballooning it fills those huge pages.
        let region: Vec<Pfn> = even
            .iter()
            .copied()
            .filter(|p| p.0 >= 4 * HUGE_PAGE_PAGES && p.0 < 8 * HUGE_PAGE_PAGES)
            .collect();
        for p in &region {
            s.guest_mut().allocator_mut().free(*p, 0).unwrap();
        }
        s.set_target_pages((odd.len() + region.len()) as u64)
            .unwrap();
        s.run_until_settled(T).unwrap();
        assert_eq!(s.device_counters().host_pages_filled, 4, "{backing:?}");
        let end = host_bytes(mem);
        assert!(
            mid - end >= 4 * HUGE_PAGE_SIZE,
            "{backing:?}: {mid} -> {end}"
        );
        assert!(mem
            .is_zero(Pfn(4 * HUGE_PAGE_PAGES).addr(), 4 * HUGE_PAGE_SIZE)
            .unwrap());
        // The pages the guest kept between the ballooned ones were never touched by a discard.
        let kept = even.iter().find(|p| p.0 < 4 * HUGE_PAGE_PAGES).unwrap();
        assert_eq!(mem.read_u8(kept.addr()).unwrap(), 0x6b, "{backing:?}");
        s.stop().unwrap();
    });
}

#[test]
fn test_deflating_part_of_a_discarded_huge_page_loses_nothing() {
    for_each_huge_backing(|backing, mem| {
        let mut s = session(mem, HUGE_PAGE_ORDER, HugePartial::Wait);
        s.set_target_bytes(8 * MIB).unwrap();
        s.run_until_settled(T).unwrap();
        assert_eq!(s.device_counters().host_pages_filled, 4);
        let low = host_bytes(mem);
        // Give back 100 pages: the driver splits one 2 MiB block.
        s.set_target_pages(8 * MIB / PAGE_SIZE - 100).unwrap();
        s.run_until_settled(T).unwrap();
        assert_eq!(s.balloon_pages(), 8 * MIB / PAGE_SIZE - 100);
        let set = s.balloon_set();
        let hp = (0..GUEST / HUGE_PAGE_SIZE)
            .find(|hp| {
                let n = set.count_range(hp * HUGE_PAGE_PAGES, HUGE_PAGE_PAGES);
                n > 0 && n < HUGE_PAGE_PAGES
            })
            .expect("one huge page partly deflated");
        {
            let dev = s.device();
            let t = dev.host_pages().unwrap();
            assert_eq!(t.count(hp), HUGE_PAGE_PAGES - 100, "{backing:?}");
            assert_eq!(t.full_host_pages(), 3);
        }
        // The guest gets its pages back zeroed and uses them; the ballooned rest stays zero.
        let first = (hp * HUGE_PAGE_PAGES..(hp + 1) * HUGE_PAGE_PAGES)
            .find(|p| !set.contains(*p))
            .unwrap();
        assert!(mem.is_zero(Pfn(first).addr(), PAGE_SIZE).unwrap());
        mem.fill(Pfn(first).addr(), PAGE_SIZE, 0x11).unwrap();
        assert!(host_bytes(mem) >= low + PAGE_SIZE, "{backing:?}: refaulted");
        assert_eq!(mem.read_u8(Pfn(first).addr()).unwrap(), 0x11);
        // Inflating again: the counts still match the balloon, page for page, and every full
        // huge page is given back (the guest's allocator picks which pages it balloons).
        s.set_target_bytes(12 * MIB).unwrap();
        s.run_until_settled(T).unwrap();
        let set = s.balloon_set();
        let dev = s.device();
        let t = dev.host_pages().unwrap();
        let mut full = 0;
        for hp in 0..GUEST / HUGE_PAGE_SIZE {
            let n = set.count_range(hp * HUGE_PAGE_PAGES, HUGE_PAGE_PAGES);
            assert_eq!(t.count(hp), n, "{backing:?}: host page {hp}");
            if n == HUGE_PAGE_PAGES {
                full += 1;
                let at = GuestAddress(hp * HUGE_PAGE_SIZE);
                assert!(mem.is_zero(at, HUGE_PAGE_SIZE).unwrap());
            }
        }
        assert!(full >= 5, "{backing:?}: {full}");
        assert_eq!(t.full_host_pages(), full);
        assert_eq!(dev.counters().discard_errors, 0);
        drop(dev);
        // Reading the zeroed pages faulted some back in; what stays out is every full page.
        for hp in 0..GUEST / HUGE_PAGE_SIZE {
            if set.count_range(hp * HUGE_PAGE_PAGES, HUGE_PAGE_PAGES) == HUGE_PAGE_PAGES {
                mem.discard(GuestAddress(hp * HUGE_PAGE_SIZE), HUGE_PAGE_SIZE)
                    .unwrap();
            }
        }
        assert!(
            host_bytes(mem) <= GUEST - full * HUGE_PAGE_SIZE,
            "{backing:?}"
        );
        s.stop().unwrap();
    });
}

#[test]
fn test_thp_split_policy_frees_partial_huge_pages_now() {
    let Some((_, mem)) = memory(Backing::Thp) else {
        return;
    };
    let mut s = session(&mem, 0, HugePartial::Split);
    // Ballooning 100 scattered 4 KiB pages drops them from RSS right away (the huge page splits).
    let pfns: Vec<Pfn> = (0..100)
        .map(|_| s.guest_mut().allocator_mut().alloc(0).unwrap())
        .collect();
    let before = mem.huge_page_stats().unwrap().rss_bytes;
    for p in &pfns {
        s.guest_mut().allocator_mut().free(*p, 0).unwrap();
    }
    s.set_target_pages(100).unwrap();
    s.run_until_settled(T).unwrap();
    assert_eq!(s.device_counters().host_pages_filled, 0);
    let after = mem.huge_page_stats().unwrap().rss_bytes;
    assert!(before - after >= 100 * PAGE_SIZE, "{before} -> {after}");
    s.stop().unwrap();
}

#[test]
fn test_parallel_discards_on_hugetlb_free_every_full_page() {
    // 51 huge pages split over two threads: a share boundary must not cut a huge page in two
    // (a cut hugetlb page is only zeroed, never freed).
    const BIG: u64 = 128 * MIB;
    let _res = match HugetlbReservation::new(BIG / HUGE_PAGE_SIZE) {
        Ok(r) => r,
        Err(e) => return eprintln!("skipping: the kernel refused hugetlb pages: {e}"),
    };
    let mem = Arc::new(GuestMemory::new(BIG, Backing::Hugetlb).unwrap());
    mem.fill(GuestAddress(0), BIG, 1).unwrap();
    let cfg = MachineConfig {
        alloc_order: HUGE_PAGE_ORDER,
        discard: vballoon::device::DiscardPolicy::Parallel,
        ..MachineConfig::default()
    };
    let mut s = Session::with_memory(Arc::clone(&mem), cfg).unwrap();
    let before = host_bytes(&mem);
    s.set_target_bytes(51 * HUGE_PAGE_SIZE).unwrap();
    s.run_until_settled(T).unwrap();
    assert_eq!(s.device_counters().host_pages_filled, 51);
    assert_eq!(before - host_bytes(&mem), 51 * HUGE_PAGE_SIZE);
    s.stop().unwrap();
}
