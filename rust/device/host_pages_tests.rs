use super::*;
use crate::memory::page_ranges as ranges;

const HP: u64 = 512;

/// Applies `runs` to both the tracker and the balloon as the device does; returns the discards.
fn inflate(t: &mut HostPageTracker, set: &mut PageSet, runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    t.inflate(set, &ranges(runs), &mut out);
    for &(s, l) in runs {
        set.insert_range(s, l);
    }
    out.iter().map(|r| (r.start, r.len)).collect()
}

fn deflate(t: &mut HostPageTracker, set: &mut PageSet, runs: &[(u64, u64)]) {
    t.deflate(set, &ranges(runs));
    for &(s, l) in runs {
        set.remove_range(s, l);
    }
}

#[test]
fn test_no_tracker_for_4k_host_pages() {
    assert!(HostPageTracker::new(1024, PAGE_SIZE, HugePartial::Wait).is_none());
    assert!(HostPageTracker::new(1024, 3 * PAGE_SIZE, HugePartial::Wait).is_none());
    let t = HostPageTracker::new(4 * HP, 2 << 20, HugePartial::Wait).unwrap();
    assert_eq!(t.pages_per_host_page(), HP);
}

#[test]
fn test_wait_discards_a_host_page_once_every_4k_page_is_in() {
    let mut t = HostPageTracker::new(4 * HP, 2 << 20, HugePartial::Wait).unwrap();
    let mut set = PageSet::new(4 * HP);
    // Every other page of host page 1, then the rest: only the second batch frees it.
    let evens: Vec<(u64, u64)> = (0..HP / 2).map(|i| (HP + 2 * i, 1)).collect();
    assert!(inflate(&mut t, &mut set, &evens).is_empty());
    assert_eq!(t.count(1), HP / 2);
    assert_eq!(t.partial_host_pages(), 1);
    let odds: Vec<(u64, u64)> = (0..HP / 2).map(|i| (HP + 2 * i + 1, 1)).collect();
    assert_eq!(inflate(&mut t, &mut set, &odds), vec![(HP, HP)]);
    assert_eq!(t.full_host_pages(), 1);
    // Aligned whole pages in one run come back as one run; a partial tail does not.
    assert_eq!(
        inflate(&mut t, &mut set, &[(2 * HP, HP + 10)]),
        vec![(2 * HP, HP)]
    );
    assert_eq!(t.count(3), 10);
    // Pages inflated twice count once.
    assert!(inflate(&mut t, &mut set, &[(3 * HP, 10)]).is_empty());
    assert_eq!(t.count(3), 10);
}

#[test]
fn test_full_pages_join_into_one_run_and_reinflation_discards_again() {
    let mut t = HostPageTracker::new(4 * HP, 2 << 20, HugePartial::Wait).unwrap();
    let mut set = PageSet::new(4 * HP);
    assert!(inflate(&mut t, &mut set, &[(HP - 3, 3)]).is_empty());
    // Two runs in one batch filling pages 0 and 1: one joined discard.
    assert_eq!(
        inflate(&mut t, &mut set, &[(0, HP - 3), (HP, HP)]),
        vec![(0, 2 * HP)]
    );
    // The same full page inflated again (a buggy guest touched it) is discarded again.
    assert_eq!(inflate(&mut t, &mut set, &[(5, 1), (7, 1)]), vec![(0, HP)]);
    assert_eq!(t.full_host_pages(), 2);
}

#[test]
fn test_partial_deflate_of_a_full_page_and_refill() {
    let mut t = HostPageTracker::new(2 * HP, 2 << 20, HugePartial::Wait).unwrap();
    let mut set = PageSet::new(2 * HP);
    assert_eq!(inflate(&mut t, &mut set, &[(0, 2 * HP)]), vec![(0, 2 * HP)]);
    deflate(&mut t, &mut set, &[(HP + 100, 5), (HP + 200, 1)]);
    assert_eq!(t.count(1), HP - 6);
    assert_eq!(t.full_host_pages(), 1);
    // Pages not in the balloon deflated again change nothing.
    deflate(&mut t, &mut set, &[(HP + 100, 5)]);
    assert_eq!(t.count(1), HP - 6);
    assert!(inflate(&mut t, &mut set, &[(HP + 100, 5)]).is_empty());
    assert_eq!(inflate(&mut t, &mut set, &[(HP + 200, 1)]), vec![(HP, HP)]);
    assert_eq!(t.full_host_pages(), 2);
}

#[test]
fn test_split_passes_runs_through_and_still_counts() {
    let mut t = HostPageTracker::new(4 * HP, 2 << 20, HugePartial::Split).unwrap();
    let mut set = PageSet::new(4 * HP);
    assert_eq!(
        inflate(&mut t, &mut set, &[(3, 2), (9, 1)]),
        vec![(3, 2), (9, 1)]
    );
    assert_eq!(t.count(0), 3);
    assert_eq!(inflate(&mut t, &mut set, &[(HP, HP)]), vec![(HP, HP)]);
    assert_eq!(t.full_host_pages(), 1);
}

#[test]
fn test_short_last_host_page_and_rebuild() {
    // 2.5 host pages: the last holds 256 pages and is full at 256.
    let n = 2 * HP + HP / 2;
    let mut t = HostPageTracker::new(n, 2 << 20, HugePartial::Wait).unwrap();
    let mut set = PageSet::new(n);
    assert_eq!(
        inflate(&mut t, &mut set, &[(2 * HP, HP / 2)]),
        vec![(2 * HP, HP / 2)]
    );
    let mut u = HostPageTracker::new(n, 2 << 20, HugePartial::Wait).unwrap();
    set.insert_range(7, 9);
    u.rebuild(&set);
    assert_eq!(
        (u.count(0), u.count(2), u.full_host_pages()),
        (9, HP / 2, 1)
    );
}

#[test]
fn test_policy_names_parse() {
    for p in [HugePartial::Wait, HugePartial::Split] {
        assert_eq!(p.name().parse::<HugePartial>().unwrap(), p);
    }
    assert!("sometimes".parse::<HugePartial>().is_err());
}

#[test]
fn test_counts_match_the_balloon_after_random_inflates_and_deflates() {
    // A fixed xorshift stream of inflate/deflate batches over 6.5 host pages; after each the
    // counts equal a recount from the bitmap, and every Wait discard is a full host page.
    let n = 6 * HP + HP / 2;
    let mut t = HostPageTracker::new(n, 2 << 20, HugePartial::Wait).unwrap();
    let mut set = PageSet::new(n);
    let x = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15u64);
    let next = |m: u64| {
        let mut v = x.get();
        v ^= v << 13;
        v ^= v >> 7;
        v ^= v << 17;
        x.set(v);
        v % m
    };
    for _ in 0..2000 {
        let mut merged: Vec<PageRange> = Vec::new();
        for _ in 0..1 + next(4) {
            let len = 1 + next(if next(4) == 0 { 700 } else { 40 });
            let start = next(n - len);
            merged.push(PageRange::new(start, len));
        }
        crate::device::merge_runs(&mut merged);
        let runs: Vec<(u64, u64)> = merged.iter().map(|r| (r.start, r.len)).collect();
        if next(3) == 0 {
            deflate(&mut t, &mut set, &runs);
        } else {
            for (s, l) in inflate(&mut t, &mut set, &runs) {
                assert_eq!(s % HP, 0);
                assert_eq!(
                    set.count_range(s, l),
                    l,
                    "a discarded page is all ballooned"
                );
            }
        }
        let mut fresh = HostPageTracker::new(n, 2 << 20, HugePartial::Wait).unwrap();
        fresh.rebuild(&set);
        for hp in 0..7 {
            assert_eq!(t.count(hp), fresh.count(hp), "host page {hp}");
        }
        assert_eq!(t.full_host_pages(), fresh.full_host_pages());
    }
}
