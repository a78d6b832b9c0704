//! The buddy allocator against a page-state model, under random operation sequences.

use proptest::prelude::*;
use vballoon::guest::{BuddyAllocator, GuestError, MAX_ORDER, MAX_PAGE_ORDER, PAGEBLOCK_ORDER};
use vballoon::memory::Pfn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Free,
    Held,
    Isolated,
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u8),
    Free(usize),
    FreeWrongOrder(usize),
    AllocAt(u64, u8),
    Reserve(u64, u64),
    Split(usize),
    Isolate(usize),
    Putback(usize, bool),
    DoubleFree(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![4 => 0u8..=2, 2 => 0u8..=MAX_PAGE_ORDER, 1 => Just(11u8)].prop_map(Op::Alloc),
        5 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::FreeWrongOrder),
        1 => (any::<u64>(), 0u8..=4).prop_map(|(p, o)| Op::AllocAt(p, o)),
        1 => (any::<u64>(), 1u64..40).prop_map(|(p, n)| Op::Reserve(p, n)),
        1 => any::<usize>().prop_map(Op::Split),
        1 => (1usize..4).prop_map(Op::Isolate),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::Putback(i, r)),
        1 => any::<u64>().prop_map(Op::DoubleFree),
    ]
}

/// The allocator, a model of every page's state, and the blocks the "user" holds.
struct Harness {
    a: BuddyAllocator,
    first: u64,
    end: u64,
    pages: Vec<Page>,
    held: Vec<(Pfn, u8)>,
    isolated: Vec<(Pfn, u8)>,
    initial: Vec<(u64, u8)>,
}

impl Harness {
    fn new(first: u64, len: u64) -> Harness {
        let a = BuddyAllocator::with_range(Pfn(first), Pfn(first + len)).unwrap();
        let initial = free_blocks(&a);
        Harness {
            a,
            first,
            end: first + len,
            pages: vec![Page::Free; len as usize],
            held: Vec::new(),
            isolated: Vec::new(),
            initial,
        }
    }

    fn set(&mut self, pfn: Pfn, order: u8, from: Page, to: Page) {
        for p in pfn.0..pfn.0 + (1 << order) {
            let s = &mut self.pages[(p - self.first) as usize];
            assert_eq!(*s, from, "page {p:#x} handed out twice or lost");
            *s = to;
        }
    }

    /// Whether the model has an aligned, wholly free block of `order` in range.
    fn model_has_free_block(&self, order: u8) -> bool {
        let size = 1u64 << order;
        let mut p = self.first.next_multiple_of(size);
        while p + size <= self.end {
            let i = (p - self.first) as usize;
            if self.pages[i..i + size as usize]
                .iter()
                .all(|&s| s == Page::Free)
            {
                return true;
            }
            p += size;
        }
        false
    }

    fn apply(&mut self, op: Op) {
        let len = self.end - self.first;
        match op {
            Op::Alloc(order) => match self.a.alloc(order) {
                Ok(pfn) => {
                    assert!(order <= MAX_PAGE_ORDER);
                    assert_eq!(pfn.0 % (1 << order), 0);
                    self.set(pfn, order, Page::Free, Page::Held);
                    self.held.push((pfn, order));
                }
                Err(GuestError::BadOrder { .. }) => assert!(order > MAX_PAGE_ORDER),
                Err(GuestError::OutOfMemory { .. }) => {
                    assert!(!self.model_has_free_block(order), "OOM with a free block");
                }
                Err(e) => panic!("alloc: {e}"),
            },
            Op::Free(i) if !self.held.is_empty() => {
                let (pfn, order) = self.held.swap_remove(i % self.held.len());
                self.a.free(pfn, order).unwrap();
                self.set(pfn, order, Page::Held, Page::Free);
            }
            Op::FreeWrongOrder(i) if !self.held.is_empty() => {
                let (pfn, order) = self.held[i % self.held.len()];
                let wrong = if order == 0 { 1 } else { order - 1 };
                let e = self.a.free(pfn, wrong).unwrap_err();
                assert!(
                    matches!(
                        e,
                        GuestError::WrongOrder { .. }
                            | GuestError::Misaligned { .. }
                            | GuestError::OutOfRange { .. }
                    ),
                    "{e}"
                );
            }
            Op::AllocAt(p, order) => {
                let pfn = Pfn(self.first + p % len);
                let want = pfn.0 % (1 << order) == 0 && pfn.0 + (1 << order) <= self.end && {
                    let i = (pfn.0 - self.first) as usize;
                    self.pages[i..i + (1 << order)]
                        .iter()
                        .all(|&s| s == Page::Free)
                };
                match self.a.alloc_at(pfn, order) {
                    Ok(()) => {
                        assert!(want);
                        self.set(pfn, order, Page::Free, Page::Held);
                        self.held.push((pfn, order));
                    }
                    Err(e) => assert!(!want, "alloc_at refused a free block: {e}"),
                }
            }
            Op::Reserve(p, n) => {
                let pfn = Pfn(self.first + p % len);
                let n = n.min(self.end - pfn.0);
                let i = (pfn.0 - self.first) as usize;
                let want = self.pages[i..i + n as usize]
                    .iter()
                    .all(|&s| s == Page::Free);
                let before = self.a.free_pages();
                match self.a.reserve_range(pfn, n) {
                    Ok(()) => {
                        assert!(want);
                        for q in pfn.0..pfn.0 + n {
                            self.set(Pfn(q), 0, Page::Free, Page::Held);
                            self.held.push((Pfn(q), 0));
                        }
                    }
                    Err(GuestError::Busy { pfn: busy }) => {
                        assert!(!want);
                        assert_ne!(self.pages[(busy - self.first) as usize], Page::Free);
                        assert_eq!(
                            self.a.free_pages(),
                            before,
                            "a failed reserve changed state"
                        );
                    }
                    Err(e) => panic!("reserve: {e}"),
                }
            }
            Op::Split(i) if !self.held.is_empty() => {
                let (pfn, order) = self.held.swap_remove(i % self.held.len());
                self.a.split_allocation(pfn, order).unwrap();
                for q in pfn.0..pfn.0 + (1 << order) {
                    self.held.push((Pfn(q), 0));
                }
            }
            Op::Isolate(max) => {
                let mut out = Vec::new();
                let n = self.a.isolate_unreported(PAGEBLOCK_ORDER, max, &mut out);
                assert_eq!(n, out.len());
                for (pfn, order) in out {
                    assert!(order >= PAGEBLOCK_ORDER);
                    self.set(pfn, order, Page::Free, Page::Isolated);
                    self.isolated.push((pfn, order));
                }
            }
            Op::Putback(i, reported) if !self.isolated.is_empty() => {
                let (pfn, order) = self.isolated.swap_remove(i % self.isolated.len());
                self.a.putback(pfn, order, reported).unwrap();
                self.set(pfn, order, Page::Isolated, Page::Free);
            }
            Op::DoubleFree(p) => {
                let pfn = Pfn(self.first + p % len);
                if self.pages[(pfn.0 - self.first) as usize] == Page::Free {
                    assert!(matches!(
                        self.a.free(pfn, 0),
                        Err(GuestError::DoubleFree { .. })
                    ));
                }
            }
            _ => {}
        }
    }

    fn check(&self) {
        self.a.check_invariants().unwrap();
        let count = |s| self.pages.iter().filter(|&&x| x == s).count() as u64;
        assert_eq!(self.a.free_pages(), count(Page::Free));
        assert_eq!(self.a.isolated_pages(), count(Page::Isolated));
        assert_eq!(self.a.used_pages(), count(Page::Held));
        // The free-list walk is exactly the complement of what is held or isolated.
        let mut walked = vec![false; self.pages.len()];
        self.a.for_each_free_block(|pfn, order| {
            for p in pfn.0..pfn.0 + (1 << order) {
                let w = &mut walked[(p - self.first) as usize];
                assert!(!*w, "page {p:#x} on two free lists");
                *w = true;
            }
        });
        for (i, (&w, &s)) in walked.iter().zip(&self.pages).enumerate() {
            assert_eq!(w, s == Page::Free, "page {:#x}", self.first + i as u64);
            assert_eq!(self.a.is_free(Pfn(self.first + i as u64)), w);
        }
        let counts = self.a.free_block_counts();
        for order in 0..MAX_ORDER {
            assert_eq!(
                counts[order as usize],
                self.a.free_list(order).count() as u64
            );
        }
    }

    fn release_all(&mut self) {
        while let Some((pfn, order)) = self.isolated.pop() {
            self.a.putback(pfn, order, true).unwrap();
        }
        while let Some((pfn, order)) = self.held.pop() {
            self.a.free(pfn, order).unwrap();
        }
    }
}

fn free_blocks(a: &BuddyAllocator) -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    a.for_each_free_block(|p, o| v.push((p.0, o)));
    v.sort_unstable();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_random_sequences_keep_every_invariant(
        first in prop_oneof![Just(0u64), 0u64..3000],
        len in prop_oneof![Just(4096u64), 1u64..5000],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut h = Harness::new(first, len);
        for (k, op) in ops.into_iter().enumerate() {
            h.apply(op);
            if k % 8 == 0 {
                h.check();
            }
        }
        h.check();
        h.release_all();
        h.a.check_invariants().unwrap();
        // Everything coalesces back into exactly the blocks it started as.
        prop_assert_eq!(free_blocks(&h.a), h.initial.clone());
        prop_assert_eq!(h.a.free_pages(), len);
    }
}

#[test]
fn test_two_frees_of_one_page_are_caught_after_a_merge() {
    let mut a = BuddyAllocator::new(1024).unwrap();
    let p = a.alloc(0).unwrap();
    let q = a.alloc(0).unwrap();
    a.free(p, 0).unwrap();
    a.free(q, 0).unwrap();
    // Both pages are now inside one merged block, whose head is not `q`.
    assert!(matches!(
        a.free(q, 0),
        Err(GuestError::DoubleFree { pfn: 1 })
    ));
    assert!(matches!(
        a.free(p, 0),
        Err(GuestError::DoubleFree { pfn: 0 })
    ));
    assert_eq!(a.free_block_counts()[10], 1);
}

#[test]
fn test_many_order0_allocations_then_free_in_random_order_coalesce() {
    let pages = 1 << 16;
    let mut a = BuddyAllocator::new(pages).unwrap();
    let mut v = Vec::new();
    assert_eq!(a.alloc_many(0, usize::MAX, &mut v).unwrap(), pages as usize);
    let mut sorted = v.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), pages as usize, "a page was handed out twice");
    let mut rng = vballoon::util::Rng::new(9);
    rng.shuffle(&mut v);
    for p in v {
        a.free(p, 0).unwrap();
    }
    assert_eq!(a.free_block_counts()[10], pages / 1024);
    a.check_invariants().unwrap();
}

#[test]
fn test_hinting_takes_whole_max_order_blocks_until_it_fails() {
    let mut a = BuddyAllocator::new(10 * 1024).unwrap();
    a.alloc(0).unwrap(); // breaks one 4 MiB block
    let mut blocks = Vec::new();
    a.alloc_many(MAX_PAGE_ORDER, usize::MAX, &mut blocks)
        .unwrap();
    assert_eq!(blocks.len(), 9);
    assert!(blocks.iter().all(|p| p.0 % 1024 == 0));
    assert_eq!(a.free_blocks(MAX_PAGE_ORDER), 0);
    for p in blocks {
        a.free(p, MAX_PAGE_ORDER).unwrap();
    }
    assert_eq!(a.free_blocks(MAX_PAGE_ORDER), 9);
}

#[test]
fn test_reporting_never_rereports_and_marks_clear_on_allocation() {
    let mut a = BuddyAllocator::new(64 * 1024).unwrap();
    let mut out = Vec::new();
    // Report everything in passes of 5 blocks, as the 2 s reporting worker would.
    loop {
        out.clear();
        if a.isolate_unreported(PAGEBLOCK_ORDER, 5, &mut out) == 0 {
            break;
        }
        for &(p, o) in &out {
            a.putback(p, o, true).unwrap();
        }
    }
    assert_eq!(a.reported_pages(), 64 * 1024);
    let mut held = Vec::new();
    a.alloc_many(PAGEBLOCK_ORDER, 10, &mut held).unwrap();
    // The 10 order-9 blocks came from 5 reported order-10 blocks; their buddies are unreported.
    assert_eq!(a.reported_pages(), 59 * 1024);
    for p in &held {
        assert!(!a.is_reported(*p));
    }
    out.clear();
    assert_eq!(a.isolate_unreported(PAGEBLOCK_ORDER, 100, &mut out), 0);
    for p in held {
        a.free(p, PAGEBLOCK_ORDER).unwrap();
    }
    out.clear();
    assert_eq!(a.isolate_unreported(PAGEBLOCK_ORDER, 100, &mut out), 5);
    assert!(out.iter().all(|&(_, o)| o == MAX_PAGE_ORDER));
    a.check_invariants().unwrap();
}

#[test]
fn test_too_many_pages_is_an_error() {
    assert!(matches!(
        BuddyAllocator::new(1 << 33),
        Err(GuestError::TooManyPages { .. })
    ));
}

/// Speeds and memory of big allocators. Not a timed test: run it by hand in release,
/// `cargo test --release --no-default-features --test guest_buddy -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_big_guests() {
    use std::time::Instant;
    let pages_8g = 8u64 << 18;
    let mut best = [f64::MAX; 3];
    let mut cold = 0.0;
    for round in 0..5 {
        let t = Instant::now();
        let mut a = BuddyAllocator::new(pages_8g).unwrap();
        let init = t.elapsed().as_secs_f64();
        if round == 0 {
            // Fresh memory from the OS: includes the page faults of the side arrays.
            cold = init;
        }
        best[0] = best[0].min(init);
        let n = 1_800_000usize;
        let mut v = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            v.push(a.alloc(0).unwrap());
        }
        best[1] = best[1].min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for &p in &v {
            a.free(p, 0).unwrap();
        }
        best[2] = best[2].min(t.elapsed().as_secs_f64());
        assert_eq!(a.free_blocks(MAX_PAGE_ORDER), 2048);
    }
    eprintln!(
        "8 GiB ({pages_8g} pages): init {:.2} ms cold, {:.2} ms warm; best of 5: 1.8 M order-0 \
         allocs {:.1} ms, frees {:.1} ms",
        cold * 1e3,
        best[0] * 1e3,
        best[1] * 1e3,
        best[2] * 1e3
    );
    // Frees in random order: the cache-unfriendly case.
    let mut a = BuddyAllocator::new(pages_8g).unwrap();
    let mut v = Vec::new();
    a.alloc_many(0, 1_800_000, &mut v).unwrap();
    vballoon::util::Rng::new(1).shuffle(&mut v);
    let t = Instant::now();
    for &p in &v {
        a.free(p, 0).unwrap();
    }
    eprintln!(
        "  1.8 M order-0 frees in random order {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mut n = 0u64;
    a.for_each_free_block(|_, o| n += 1 << o);
    eprintln!(
        "  free-list walk {:.2} ms ({n} pages)",
        t.elapsed().as_secs_f64() * 1e3
    );

    let rss0 = vballoon::memory::process_rss_bytes().unwrap();
    let pages_128g = 128u64 << 18;
    let t = Instant::now();
    let mut a = BuddyAllocator::new(pages_128g).unwrap();
    let init = t.elapsed();
    let rss1 = vballoon::memory::process_rss_bytes().unwrap();
    let mut v = Vec::new();
    let t = Instant::now();
    a.alloc_many(0, usize::MAX, &mut v).unwrap();
    let fill = t.elapsed();
    let rss2 = vballoon::memory::process_rss_bytes().unwrap();
    let vec_bytes = v.capacity() * std::mem::size_of::<Pfn>();
    eprintln!(
        "128 GiB ({pages_128g} pages): init {:.1} ms, RSS +{} MiB after init, +{} MiB fully \
         allocated (allocator only, {:.2} B/page); allocating all 33.5 M pages {:.0} ms",
        init.as_secs_f64() * 1e3,
        (rss1 - rss0) >> 20,
        (rss2 - rss0 - vec_bytes as u64) >> 20,
        (rss2 - rss0 - vec_bytes as u64) as f64 / pages_128g as f64,
        fill.as_secs_f64() * 1e3
    );
}
