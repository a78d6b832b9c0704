//! Every byte the balloon device writes into guest RAM is dirty-logged: a live migration with
//! the explicit dirty log (no kernel tracking) runs while a balloon on the guest inflates and
//! deflates over and over, and the destination's RAM comes out byte-identical to the source's,
//! used and free pages alike. Without the device's log, used-ring updates and discarded pages
//! (stale data on the destination, zeros on the source) would differ.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vballoon::device::{BalloonDevice, DeviceConfig, DiscardPolicy};
use vballoon::guest::{BalloonDriver, DriverOptions, Step};
use vballoon::machine::{migrate_local, GuestRunner, MigrateOptions, Scenario};
use vballoon::migration::{DirtyTracking, GuestControl};
use vballoon::pages::Encoding;
use vballoon::virtq::NotifyMode;

const MIB: u64 = 1 << 20;
/// The balloon swings between 0 and this many pages (16 MiB).
const SWING: u32 = 4096;

/// 64 MiB guest after a heavy workload: most pages free but holding stale data, so a page
/// discarded after it was sent would differ on the destination unless logged.
fn guest() -> GuestRunner {
    Scenario::m2().with_guest_bytes(64 * MIB).build().unwrap().0
}

struct Balloon {
    device: Mutex<BalloonDevice>,
    driver: Mutex<BalloonDriver>,
    /// Completed swings (inflate to SWING or deflate to 0).
    swings: AtomicU64,
}

fn plug(guest: &GuestRunner, enc: Encoding) -> Arc<Balloon> {
    let mut device = BalloonDevice::new(
        Arc::clone(guest.memory()),
        DeviceConfig {
            encoding: enc,
            discard: DiscardPolicy::Coalesced,
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let driver = {
        let mut st = guest.lock();
        let d = BalloonDriver::probe(
            Arc::clone(device.transport()),
            &mut st.guest,
            DriverOptions {
                // Small batches: many ring updates and discards while the migration runs.
                max_batch_pages: 256,
                ..DriverOptions::default()
            },
        )
        .unwrap();
        device.set_write_log(st.guest.dirty_hook().cloned());
        d
    };
    device.activate().unwrap();
    Arc::new(Balloon {
        device: Mutex::new(device),
        driver: Mutex::new(driver),
        swings: AtomicU64::new(0),
    })
}

/// Drives driver and device as the guest and the VMM would, never while the guest is paused
/// (stop-and-copy): a VMM stops device emulation with the vCPUs.
fn run_balloon(guest: &GuestRunner, b: &Balloon, stop: &AtomicBool) {
    let handle = guest.handle();
    let mut target = SWING;
    b.device.lock().unwrap().set_num_pages(target).unwrap();
    while !stop.load(Ordering::SeqCst) {
        let acted = handle.with(|st, paused| {
            if paused {
                return false;
            }
            let mut drv = b.driver.lock().unwrap();
            let mut dev = b.device.lock().unwrap();
            let step = drv.advance(&mut st.guest).unwrap();
            dev.process_kicked().unwrap();
            if step == Step::Settled {
                target = if target == 0 { SWING } else { 0 };
                dev.set_num_pages(target).unwrap();
                b.swings.fetch_add(1, Ordering::SeqCst);
            }
            true
        });
        match acted {
            Some(true) => thread::yield_now(),
            Some(false) => thread::sleep(Duration::from_millis(1)),
            None => return,
        }
    }
}

fn migrate_while_ballooning(enc: Encoding) {
    let guest = guest();
    let b = plug(&guest, enc);
    let stop = AtomicBool::new(false);
    let opts = MigrateOptions {
        dirty_tracking: DirtyTracking::Explicit,
        // About 0.3 s per pass over the guest: several swings land inside each round.
        bandwidth_bytes_per_s: 200_000_000,
        skip_unpopulated: false,
        verify: true,
        ..MigrateOptions::default()
    };
    let report = thread::scope(|s| {
        s.spawn(|| run_balloon(&guest, &b, &stop));
        // Let the balloon get going before the first round starts.
        while b.swings.load(Ordering::SeqCst) < 2 {
            thread::sleep(Duration::from_millis(1));
        }
        let before = b.device.lock().unwrap().counters();
        let r = migrate_local(&guest, &opts);
        stop.store(true, Ordering::SeqCst);
        let after = b.device.lock().unwrap().counters();
        (r, before, after)
    });
    let (r, before, after) = report;
    let r = r.unwrap();
    // The balloon really worked during the migration.
    assert!(
        after.pages_inflated > before.pages_inflated
            && after.pages_deflated > before.pages_deflated,
        "{enc}: {before:?} -> {after:?}"
    );
    let v = r.verify.as_ref().expect("verified");
    assert_eq!(v.used_mismatched, 0, "{enc}: {v:?}");
    // Free pages too: nothing was hinted or skipped, so the whole RAM is identical.
    assert_eq!(v.free_differ, 0, "{enc}: {v:?}");
    assert!(r.result.rounds >= 2, "{enc}: {:?}", r.result);
    let dev = b.device.lock().unwrap();
    assert_eq!(
        dev.errors_total(),
        0,
        "{:?}",
        dev.errors().collect::<Vec<_>>()
    );
    drop(dev);
    guest.resume();
}

#[test]
fn test_migration_while_ballooning_arrives_byte_identical_bitmap() {
    migrate_while_ballooning(Encoding::Bitmap);
}

#[test]
fn test_migration_while_ballooning_arrives_byte_identical_pfn() {
    migrate_while_ballooning(Encoding::Pfn);
}
