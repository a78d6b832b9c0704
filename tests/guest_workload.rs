//! Guest workloads on real guest RAM: the scenarios the balloon and migration benchmarks start
//! from, checked for what they promise (stale data, untouched memory, fragmentation, checksums,
//! a dirty log that sees every write).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vballoon::guest::{fragment_max_order, free_blocks_above};
use vballoon::guest::{Fill, Guest, GuestError, Workload, MAX_PAGE_ORDER};
use vballoon::memory::{Backing, GuestAddress, GuestMemory, Pfn, PAGE_SIZE};

const MIB: u64 = 1 << 20;

fn guest(bytes: u64, backing: Backing) -> Guest {
    Guest::new(Arc::new(GuestMemory::new(bytes, backing).unwrap())).unwrap()
}

/// `g` after a workload seeded `seed` allocated `bytes` in blocks of `order`, with the
/// checksums of what it wrote.
fn allocated(mut g: Guest, seed: u64, bytes: u64, order: u8) -> (Guest, Workload, Vec<(Pfn, u64)>) {
    let mut w = Workload::new(seed);
    w.allocate(&mut g, bytes, order).unwrap();
    let sums = w.checksums(&g).unwrap();
    (g, w, sums)
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn test_guest_can_move_to_a_vcpu_thread() {
    assert_send_sync::<Guest>();
    let mut g = guest(4 * MIB, Backing::Anonymous);
    let mem = g.memory().clone();
    let h = std::thread::spawn(move || {
        let mut w = Workload::new(1).with_fill(Fill::Byte(0x5a));
        w.allocate(&mut g, MIB, 0).unwrap();
        g
    });
    let g = h.join().unwrap();
    assert_eq!(mem.read_u8(Pfn(10).addr()).unwrap(), 0x5a);
    assert_eq!(g.allocator().used_pages(), 256);
}

/// The M2 scenario in small: a memory-heavy job ran and ended, so most free memory holds stale
/// data, and memory never used stays never touched.
#[test]
fn test_memory_heavy_job_leaves_stale_free_pages_and_untouched_rest() {
    let (mut g, mut w, sums) = allocated(guest(64 * MIB, Backing::Memfd), 7, 40 * MIB, 0);
    w.free_share(&mut g, 0.9).unwrap();
    let a = g.allocator();
    assert_eq!(a.used_pages(), w.pages());
    // What is still held is byte-identical; what was freed still holds its bytes.
    let (mut stale, mut held) = (0, 0);
    for &(pfn, sum) in &sums {
        assert_eq!(g.page_checksum(pfn).unwrap(), sum, "{pfn}");
        if a.is_free(pfn) {
            stale += 1;
        } else {
            held += 1;
        }
    }
    assert_eq!(held, w.pages());
    assert_eq!(stale, 9216);
    // The 24 MiB never allocated were never written: no host memory behind them.
    let top = GuestAddress(g.memory().size() - 24 * MIB);
    assert_eq!(g.memory().resident_pages(top, 24 * MIB).unwrap(), 0);
    let s = g.stats();
    assert_eq!(s.minor_faults, 40 * MIB / PAGE_SIZE);
    assert_eq!(s.free_memory, g.allocator().free_pages() * PAGE_SIZE);
}

#[test]
fn test_fragmentation_knob_bounds_free_block_order() {
    for (knob, share) in [
        (0.0, 0.4),
        (0.25, 0.4),
        (0.5, 0.25),
        (0.75, 0.4),
        (0.9, 0.1),
        (1.0, 0.5),
    ] {
        let mut g = guest(32 * MIB, Backing::Anonymous);
        let mut w = Workload::new(11).with_fill(Fill::Byte(0xee));
        let all = g.allocator().free_pages() * PAGE_SIZE;
        let freed = w.fragment(&mut g, all, share, knob).unwrap();
        let k = fragment_max_order(knob);
        assert!(
            free_blocks_above(g.allocator(), k).is_empty(),
            "knob {knob}"
        );
        assert!(g.allocator().largest_free_order().unwrap_or(0) <= k);
        // Free pages are scattered: the share freed is near what was asked.
        let got = freed as f64 / (all / PAGE_SIZE) as f64;
        let slack = if k == MAX_PAGE_ORDER { 0.3 } else { 0.1 };
        assert!(
            (got - share).abs() < slack,
            "knob {knob}: freed share {got}"
        );
        if knob == 1.0 {
            // Every other page, exactly: all free blocks are single pages.
            assert_eq!(freed, all / PAGE_SIZE / 2);
            assert_eq!(g.allocator().free_blocks(0), freed);
        }
        // The allocator's own free-list walk agrees with the workload's view.
        let mut walked = 0;
        g.allocator()
            .for_each_free_block(|_, o| walked += 1u64 << o);
        assert_eq!(walked, freed);
        assert_eq!(w.pages() + freed, all / PAGE_SIZE);
        g.allocator().check_invariants().unwrap();
    }
}

#[test]
fn test_dirty_hook_sees_every_write_and_checksums_catch_them() {
    let (mut g, mut w, sums) = allocated(guest(16 * MIB, Backing::Anonymous), 3, 8 * MIB, 3);
    let dirty = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let writes = Arc::new(AtomicU64::new(0));
    let (d, n) = (dirty.clone(), writes.clone());
    g.set_dirty_hook(Some(Arc::new(move |pfn: Pfn, pages| {
        n.fetch_add(1, Ordering::Relaxed);
        let mut d = d.lock().unwrap();
        for p in pfn.0..pfn.0 + pages {
            d.insert(p);
        }
    })));
    w.dirty_pages(&mut g, 500).unwrap();
    assert_eq!(writes.load(Ordering::Relaxed), 500);
    let changed = Workload::changed_pages(&g, &sums).unwrap();
    let dirty = dirty.lock().unwrap();
    // Every changed page was logged, and nothing outside the workload's pages was.
    assert!(changed.iter().all(|p| dirty.contains(&p.0)));
    assert_eq!(changed.len(), dirty.len());
    assert!(dirty.iter().all(|&p| !g.allocator().is_free(Pfn(p))));
    // Allocating and freeing other pages does not change held data.
    let again = w.checksums(&g).unwrap();
    let p = g.allocator_mut().alloc(5).unwrap();
    g.allocator_mut().free(p, 5).unwrap();
    assert!(Workload::changed_pages(&g, &again).unwrap().is_empty());
}

#[test]
fn test_same_seed_same_scenario() {
    let run = || {
        let mut g = guest(8 * MIB, Backing::Anonymous);
        let mut w = Workload::new(42);
        w.allocate(&mut g, 4 * MIB, 0).unwrap();
        w.free_share(&mut g, 0.3).unwrap();
        w.dirty_pages(&mut g, 100).unwrap();
        (w.allocations().to_vec(), w.checksums(&g).unwrap())
    };
    assert_eq!(run(), run());
}

#[test]
fn test_bad_parameters_are_errors() {
    let mut g = guest(MIB, Backing::Anonymous);
    let mut w = Workload::new(0);
    assert!(matches!(
        w.free_share(&mut g, 1.5),
        Err(GuestError::BadParameter { name: "share", .. })
    ));
    assert!(matches!(
        w.fragment(&mut g, MIB, 0.5, -0.1),
        Err(GuestError::BadParameter { name: "knob", .. })
    ));
    assert!(matches!(
        w.allocate(&mut g, 2 * MIB, 0),
        Err(GuestError::OutOfMemory { .. })
    ));
}

/// Workload speeds on a 1 GiB guest. Not a timed test: run it by hand in release,
/// `cargo test --release --no-default-features --test guest_workload -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_workload_speeds() {
    use std::time::Instant;
    let mut g = guest(1 << 30, Backing::Anonymous);
    let mut w = Workload::new(1).with_fill(Fill::Byte(1));
    let t = Instant::now();
    let pages = w.allocate(&mut g, 128 * MIB, 0).unwrap();
    eprintln!(
        "byte fill {:.2} µs/page",
        t.elapsed().as_secs_f64() / pages as f64 * 1e6
    );
    let mut w = Workload::new(1);
    let t = Instant::now();
    let pages = w.allocate(&mut g, 768 * MIB, 0).unwrap();
    let fill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let sums = w.checksums(&g).unwrap();
    let sum = t.elapsed().as_secs_f64();
    let t = Instant::now();
    w.free_share(&mut g, 0.5).unwrap();
    let free = t.elapsed().as_secs_f64();
    let t = Instant::now();
    w.dirty_pages(&mut g, 100_000).unwrap();
    let dirty = t.elapsed().as_secs_f64();
    eprintln!(
        "{pages} pages: allocate + random fill {:.2} µs/page (incl. first-touch fault), checksum \
         {:.2} µs/page, free half {:.0} ns/block, dirty {:.2} µs/write",
        fill / pages as f64 * 1e6,
        sum / sums.len() as f64 * 1e6,
        free / (pages / 2) as f64 * 1e9,
        dirty / 1e5 * 1e6
    );
}
