//! Live migration of guest RAM on each backing, huge pages included: a writer running during
//! the migration, kernel dirty tracking where the kernel supports it on that backing (else a
//! clean, stated fallback), zero and unpopulated detection; the destination ends byte-identical.
//!
//! Hugetlb guests reserve their pages through /proc/sys/vm/nr_hugepages for the run and give
//! them back; they skip, saying why, only where the kernel refuses.

mod huge_support;
mod migration_support;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use huge_support::guests_on;
use migration_support::*;
use vballoon::memory::{Backing, GuestAddress, GuestMemory, HugetlbReservation, HUGE_PAGE_SIZE};
use vballoon::migration::*;
use vballoon::pages::PageSet;

const TIMEOUT: Duration = Duration::from_secs(20);
const GUEST: u64 = 64 * MIB;
const BACKINGS: [Backing; 4] = [
    Backing::Anonymous,
    Backing::Memfd,
    Backing::Thp,
    Backing::Hugetlb,
];

/// Source and destination RAM on `backing` (and the hugetlb pages they need), or `None`.
fn pair(backing: Backing) -> Option<(Option<HugetlbReservation>, GuestMemory, GuestMemory)> {
    let (res, mut guests) = guests_on(backing, GUEST, 2)?;
    let (dst, src) = (guests.pop()?, guests.pop()?);
    Some((res, src, dst))
}

/// Runs `f` with source and destination RAM on each of `backings` this host can provide.
fn on_each(backings: &[Backing], mut f: impl FnMut(Backing, &GuestMemory, &GuestMemory)) {
    for &backing in backings {
        if let Some((_res, src, dst)) = pair(backing) {
            f(backing, &src, &dst);
        }
    }
}

/// Source and destination hold the same bytes, compared 1 MiB at a time.
fn assert_same(src: &GuestMemory, dst: &GuestMemory, backing: Backing) {
    let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    for at in (0..src.size()).step_by(MIB as usize) {
        src.read(GuestAddress(at), &mut a).unwrap();
        dst.read(GuestAddress(at), &mut b).unwrap();
        assert!(a == b, "{backing:?}: RAM differs in the MiB at {at:#x}");
    }
}

fn config(tracking: DirtyTracking) -> MigrationConfig {
    MigrationConfig {
        // Hugetlb's kernel tracker reports whole 2 MiB pages dirty (512x the data of a 4 KiB
        // write): a 50 ms downtime lets it converge instead of running out of rounds.
        bandwidth_bytes_per_s: 2_000_000_000,
        downtime_target: Duration::from_millis(50),
        dirty_tracking: tracking,
        io_timeout: TIMEOUT,
        ..MigrationConfig::default()
    }
}

/// Migrates with a writer that does (`mark`) or does not mark the explicit log.
fn migrate_with_writer(
    src: &GuestMemory,
    dst: &GuestMemory,
    tracking: DirtyTracking,
    mark: bool,
) -> Result<MigrationResult, MigrationError> {
    let g = populate(src, 8, 4, 11);
    let log = DirtyLog::for_memory(src);
    let wl = Workload::new(mark);
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let (r, dr) = thread::scope(|s| {
        s.spawn(|| wl.run(src, &log, &g.used, Duration::from_micros(200)));
        let d = s.spawn(|| Destination::new(dst, DestConfig::default()).receive(b));
        let r = Source::new(src, &log, &wl, config(tracking)).run(a);
        wl.stop();
        (r, d.join().unwrap())
    });
    let r = r?;
    dr.unwrap();
    assert!(wl.writes.load(Ordering::Relaxed) > 0);
    Ok(r)
}

#[test]
fn test_migration_with_a_writer_is_byte_identical_on_each_backing() {
    on_each(&BACKINGS, |backing, src, dst| {
        // Auto: the kernel tracker where this backing allows it, else the explicit log.
        let r = migrate_with_writer(src, dst, DirtyTracking::Auto, true).unwrap();
        eprintln!(
            "{backing:?}: dirty tracking {}, {} rounds, {} bytes sent",
            r.dirty_backend, r.rounds, r.bytes_sent
        );
        assert_same(src, dst, backing);
        assert!(r.rounds >= 2, "{backing:?}: {:?}", r.per_round);
    });
}

#[test]
fn test_kernel_tracking_on_huge_pages_is_exact_or_refused_cleanly() {
    on_each(&[Backing::Thp, Backing::Hugetlb], |backing, src, dst| {
        // The writer does not mark the log: only the kernel can see its writes. A tracker that
        // reports whole 2 MiB pages dirty sends more, never less, so the copy is still exact.
        match migrate_with_writer(src, dst, DirtyTracking::Kernel, false) {
            Err(MigrationError::KernelTrackingUnavailable { reason }) => {
                eprintln!("{backing:?}: kernel tracking refused: {reason}");
                assert!(!reason.is_empty());
            }
            Err(e) => panic!("{backing:?}: {e}"),
            Ok(r) => {
                assert_eq!(r.dirty_backend, DirtyBackend::Kernel, "{backing:?}");
                assert_same(src, dst, backing);
            }
        }
    });
}

#[test]
fn test_zero_and_unpopulated_detection_on_each_backing() {
    on_each(&BACKINGS, |backing, src, dst| {
        // One huge page of data, one of written zeros, the rest never touched.
        src.fill(GuestAddress(0), HUGE_PAGE_SIZE, 0x3c).unwrap();
        src.fill(GuestAddress(8 * HUGE_PAGE_SIZE), HUGE_PAGE_SIZE, 0)
            .unwrap();
        let resident = src.resident_pages(GuestAddress(0), src.size()).unwrap();
        assert!(resident >= 2 * HUGE_PAGE_SIZE / 4096, "{backing:?}");
        let log = DirtyLog::for_memory(src);
        let cfg = unthrottled(DirtyTracking::Explicit, true);
        let r = migrate_ok(Source::new(src, &log, &NoGuest, cfg), dst);
        let pages = src.pages();
        assert_eq!(r.unpopulated_pages, pages - resident, "{backing:?}");
        assert_eq!(r.pages_read, resident, "{backing:?}");
        assert_eq!(r.data_pages, HUGE_PAGE_SIZE / 4096, "{backing:?}");
        assert_eq!(r.data_pages + r.zero_pages + r.unpopulated_pages, pages);
        // Skipping read nothing new: residency is what it was.
        assert_eq!(
            src.resident_pages(GuestAddress(0), src.size()).unwrap(),
            resident,
            "{backing:?}"
        );
        assert_same(src, dst, backing);
    });
}

#[test]
fn test_kernel_tracker_granularity_per_backing() {
    on_each(&BACKINGS, |backing, mem, _dst| {
        mem.fill(GuestAddress(0), GUEST, 1).unwrap();
        let mut k = match KernelTracker::new(mem) {
            Ok(k) => k,
            Err(reason) => {
                eprintln!("{backing:?}: no kernel tracker here: {reason}");
                return;
            }
        };
        let mut dirty = PageSet::new(mem.pages());
        k.sync(&mut dirty).unwrap();
        dirty.clear();
        // One byte in the middle of the fourth huge page.
        let page = 3 * 512 + 77;
        mem.write(GuestAddress(page * 4096 + 5), &[9]).unwrap();
        k.sync(&mut dirty).unwrap();
        assert!(
            dirty.contains(page),
            "{backing:?}: the written page is reported"
        );
        // Never more than the huge page around it: hugetlb reports whole 2 MiB pages.
        assert_eq!(
            dirty.count_range(3 * 512, 512),
            dirty.count(),
            "{backing:?}"
        );
        eprintln!(
            "{backing:?}: one write reports {} pages dirty",
            dirty.count()
        );
        if backing == Backing::Hugetlb {
            assert!(
                dirty.count() == 1 || dirty.count() == 512,
                "{}",
                dirty.count()
            );
        }
    });
}
