//! Live migration with free page hints from a balloon on the migrating guest
//! ([`BalloonHints`]): every mode verifies byte-identical used pages, with and without a
//! workload writing meanwhile, a page written right after it was hinted is sent again, and a
//! balloon that offers no hint feature gives no hints without breaking anything.

mod migration_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use migration_support::{WrapHints, Wrapped};
use vballoon::abi::AbiMode;
use vballoon::device::HintOffer;
use vballoon::guest::Guest;
use vballoon::machine::{
    migrate_local, BalloonHints, BalloonHintsConfig, GuestRunner, HintMode, HintProvider, HintRun,
    MigrateOptions, MigrateReport, Scenario,
};
use vballoon::memory::{PageRange, Pfn, PAGE_SIZE};
use vballoon::migration::{GuestControl, HintSource, MigrationError};
use vballoon::pages::PageSet;

const MIB: u64 = 1 << 20;

/// 64 MiB: 48 MiB allocated in 4 MiB blocks and filled, 95% of the blocks freed again (their
/// pages keep stale data), the rest never touched.
fn stale_guest() -> GuestRunner {
    let s = Scenario {
        alloc_order: 10,
        ..Scenario::m2().with_guest_bytes(64 * MIB)
    };
    s.build().unwrap().0
}

fn opts(mode: HintMode, provider: &Arc<BalloonHints>) -> MigrateOptions {
    let p: Arc<dyn HintProvider> = provider.clone();
    MigrateOptions {
        hints: mode,
        hint_provider: (mode != HintMode::Off).then_some(p),
        // A link slow enough (about 130 ms for the guest) that hints racing the first round
        // (upstream, as in QEMU) arrive before it ends even on a loaded machine.
        bandwidth_bytes_per_s: 500_000_000,
        chunk_pages: 256,
        ..MigrateOptions::default()
    }
}

fn check(r: &MigrateReport) {
    let v = r.verify.as_ref().expect("verified");
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.used_mismatched, 0);
}

fn run(guest: &GuestRunner, o: &MigrateOptions) -> MigrateReport {
    let r = migrate_local(guest, o).unwrap();
    check(&r);
    guest.resume();
    r
}

#[test]
fn test_every_mode_migrates_used_pages_intact_and_skips_free_ones() {
    for run_mode in [HintRun::Threaded, HintRun::Inline] {
        let guest = stale_guest();
        let p = Arc::new(BalloonHints::new(BalloonHintsConfig {
            run: run_mode,
            ..BalloonHintsConfig::default()
        }));
        let free = guest.free_pages().count();
        let off = run(&guest, &opts(HintMode::Off, &p));
        for mode in [HintMode::Bitmap, HintMode::Upstream, HintMode::Reporting] {
            let r = run(&guest, &opts(mode, &p));
            let s = r.result.clone();
            match mode {
                HintMode::Reporting => {
                    assert!(r.skip_unpopulated);
                    // Stale free blocks were reported and discarded: not read.
                    assert!(s.unpopulated_pages >= free * 9 / 10, "{mode}: {s:?}");
                }
                // Upstream hints race the first round (as in QEMU): on a loaded machine the
                // guest's worker can post its last blocks after the engine passed them.
                HintMode::Upstream => {
                    assert!(s.hinted_pages >= free * 3 / 4, "{mode} {run_mode:?}: {s:?}");
                }
                _ => {
                    assert!(
                        s.hinted_pages >= free * 9 / 10,
                        "{mode} {run_mode:?}: {s:?}"
                    );
                }
            }
            assert!(
                s.pages_read < off.result.pages_read / 2,
                "{mode}: read {} vs {} without hints",
                s.pages_read,
                off.result.pages_read
            );
        }
        let st = p.stats();
        assert!(st.attached && st.misc && st.free_page_hint && st.reporting);
        assert!(st.errors.is_empty(), "{:?}", st.errors);
        assert!(p.device_errors().is_empty(), "{:?}", p.device_errors());
        assert_eq!(st.driver.free_list_walks, st.driver.unused_requests);
        assert!(st.last_report_pass.is_some_and(|(_, pages)| pages > 0));
    }
}

#[test]
fn test_every_mode_with_a_workload_writing_during_migration() {
    let guest = stale_guest();
    let p = Arc::new(BalloonHints::default());
    for mode in [HintMode::Bitmap, HintMode::Upstream, HintMode::Reporting] {
        let o = MigrateOptions {
            // Slow enough for several live rounds while the guest churns and rewrites.
            bandwidth_bytes_per_s: 200_000_000,
            dirty_rate_bytes_per_s: 40_000_000,
            downtime_target: Duration::from_millis(20),
            ..opts(mode, &p)
        };
        let r = run(&guest, &o);
        assert!(r.workload.pages_dirtied > 0, "{mode}");
        assert!(r.result.rounds >= 2, "{mode}: {:?}", r.result.rounds);
        guest.set_dirty_rate(0);
    }
    assert!(p.stats().errors.is_empty(), "{:?}", p.stats().errors);
}

#[test]
fn test_repeated_migrations_get_fresh_hints_and_blocks_back() {
    let guest = stale_guest();
    let p = Arc::new(BalloonHints::default());
    let o = opts(HintMode::Upstream, &p);
    let a = run(&guest, &o);
    let b = run(&guest, &o);
    // Hints race the first round (as in QEMU), so the two need not skip exactly as much.
    assert!(a.result.hinted_pages > 0 && b.result.hinted_pages > 0);
    // DONE gave the blocks back: once the guest ran, the balloon holds nothing.
    let t = std::time::Instant::now();
    loop {
        let mut held = PageSet::new(guest.memory().pages());
        p.unused_pages(&guest.lock().guest, &mut held);
        if held.is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "blocks still held");
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = p.stats();
    assert!(st.device.cmd_ids_issued >= 2);
    // Every block the guest hinted came back at DONE; the engine skipped what it had not
    // passed yet when each hint arrived.
    assert_eq!(st.driver.done_blocks * 1024, st.device.hint_pages);
    assert!(st.device.hint_pages >= a.result.hinted_pages + b.result.hinted_pages);
}

#[test]
fn test_no_hint_features_no_hints_and_migration_still_works() {
    let guest = stale_guest();
    let p = Arc::new(BalloonHints::new(BalloonHintsConfig {
        offer: HintOffer::default(),
        ..BalloonHintsConfig::default()
    }));
    for mode in [HintMode::Bitmap, HintMode::Upstream, HintMode::Reporting] {
        let r = run(&guest, &opts(mode, &p));
        assert_eq!(r.result.hinted_pages, 0, "{mode}");
    }
    let st = p.stats();
    assert!(st.attached && !st.misc && !st.free_page_hint && !st.reporting);
    assert_eq!(st.device.unused_requests + st.device.cmd_ids_issued, 0);
}

#[test]
fn test_bitmap_mode_in_v3_abi() {
    let guest = stale_guest();
    let p = Arc::new(BalloonHints::new(BalloonHintsConfig {
        abi: AbiMode::V3,
        ..BalloonHintsConfig::default()
    }));
    let r = run(&guest, &opts(HintMode::Bitmap, &p));
    assert!(r.result.hinted_pages > 0);
    // No upstream hinting in v3 numbering: that mode hints nothing.
    let r = run(&guest, &opts(HintMode::Upstream, &p));
    assert_eq!(r.result.hinted_pages, 0);
}

/// Wraps the balloon's source: right after the engine took the first hints of round 1, the
/// guest allocates one hinted page and writes it (for upstream hinting, after memory pressure
/// made the balloon give the block back). The page must reach the destination anyway.
struct WriteAfterHint {
    written: Arc<Mutex<Option<u64>>>,
}

struct WriteAfterHintSource<'a> {
    inner: Box<dyn HintSource + 'a>,
    guest: &'a GuestRunner,
    written: Arc<Mutex<Option<u64>>>,
    round: u32,
}

impl WrapHints for WriteAfterHint {
    fn name(&self) -> &str {
        "write-after-hint"
    }
    fn wrap<'a>(
        &'a self,
        _balloon: &'a BalloonHints,
        inner: Box<dyn HintSource + 'a>,
        guest: &'a GuestRunner,
    ) -> Box<dyn HintSource + 'a> {
        Box::new(WriteAfterHintSource {
            inner,
            guest,
            written: Arc::clone(&self.written),
            round: 0,
        })
    }
}

impl HintSource for WriteAfterHintSource<'_> {
    fn start(&mut self, round: u32) -> Result<(), MigrationError> {
        self.round = round;
        self.inner.start(round)
    }
    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        let mut hinted = Vec::new();
        let done = self.inner.poll(&mut |r| {
            hinted.push(r);
            out(r);
        })?;
        let mut w = self.written.lock().unwrap();
        if self.round == 1 && w.is_none() && !hinted.is_empty() {
            let mut st = self.guest.lock();
            let g = &mut st.guest;
            let free = |g: &Guest| {
                hinted
                    .iter()
                    .flat_map(|r| r.start..r.end())
                    .find(|&p| g.allocator().is_free(Pfn(p)))
            };
            if free(g).is_none() {
                // Upstream: the hinted blocks are held; memory pressure gets one back.
                g.shrink(1);
            }
            if let Some(p) = free(g) {
                g.allocator_mut().alloc_at(Pfn(p), 0).unwrap();
                g.fill(Pfn(p).addr(), PAGE_SIZE, 0x5a).unwrap();
                *w = Some(p);
            }
        }
        Ok(done)
    }
    fn stop(&mut self) -> Result<(), MigrationError> {
        self.inner.stop()
    }
    fn done(&mut self) {
        self.inner.done()
    }
}

#[test]
fn test_page_written_right_after_it_was_hinted_is_sent_again() {
    for mode in [HintMode::Bitmap, HintMode::Upstream] {
        let guest = stale_guest();
        let inner = Arc::new(BalloonHints::new(BalloonHintsConfig {
            run: HintRun::Inline,
            ..BalloonHintsConfig::default()
        }));
        let written = Arc::new(Mutex::new(None));
        let p: Arc<dyn HintProvider> = Arc::new(Wrapped {
            balloon: inner,
            wrap: WriteAfterHint {
                written: Arc::clone(&written),
            },
        });
        let o = MigrateOptions {
            hints: mode,
            hint_provider: Some(p),
            bandwidth_bytes_per_s: 0,
            chunk_pages: 256,
            ..MigrateOptions::default()
        };
        let r = migrate_local(&guest, &o).unwrap();
        check(&r);
        let page = written.lock().unwrap().expect("a hinted page was written");
        assert!(guest.used_pages().contains(page), "{mode}");
        // Sent in a later round: the dirty log caught the write the hint had cleared.
        let later: u64 = r.result.per_round[1..].iter().map(|x| x.data_pages).sum();
        assert!(later >= 1, "{mode}: {:?}", r.result.per_round);
        guest.resume();
    }
}

#[test]
fn test_detach_gives_the_guest_everything_back() {
    let guest = stale_guest();
    let used = guest.used_pages();
    let p = Arc::new(BalloonHints::default());
    run(&guest, &opts(HintMode::Upstream, &p));
    // The rings and buffers came from the guest; hinted blocks may still be held.
    assert!(guest.used_pages().count() > used.count());
    p.detach();
    assert_eq!(guest.used_pages(), used);
    guest.lock().guest.allocator().check_invariants().unwrap();
    // And it plugs in again on the next migration.
    let r = run(&guest, &opts(HintMode::Bitmap, &p));
    assert!(r.result.hinted_pages > 0);
}
