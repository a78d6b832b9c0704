//! Machine-level migrations of built scenarios: in-process over a socketpair and TCP, with the
//! guest's workload running, hints from the free-list stand-in, unpopulated skipping,
//! verification, reuse of one built guest across migrations, and the verify trailer.

use std::thread;
use std::time::Duration;

use std::sync::Arc;

use vballoon::machine::*;
use vballoon::memory::{Backing, PAGE_SIZE};
use vballoon::migration::{tcp_listen, DestConfig, GuestControl};
use vballoon::Error;

const MIB: u64 = 1 << 20;

fn opts(hints: HintMode, skip: bool) -> MigrateOptions {
    MigrateOptions {
        hints,
        hint_provider: Some(Arc::new(FreeListStandIn::default())),
        skip_unpopulated: skip,
        bandwidth_bytes_per_s: 400_000_000,
        downtime_target: Duration::from_millis(20),
        io_timeout: Duration::from_secs(20),
        ..MigrateOptions::default()
    }
}

#[test]
fn test_m2_modes_with_a_running_workload_keep_every_used_page() {
    let (guest, info) = Scenario::m2().with_guest_bytes(64 * MIB).build().unwrap();
    let pages = 64 * MIB / PAGE_SIZE;
    assert!(info.stale_free_bytes > 50 * MIB, "{info:?}");
    for (hints, skip, link) in [
        (HintMode::Off, false, LocalLink::SocketPair),
        (HintMode::Off, true, LocalLink::Tcp),
        (HintMode::Bitmap, false, LocalLink::SocketPair),
        (HintMode::Upstream, true, LocalLink::Tcp),
    ] {
        let before = guest.resident_pages().unwrap();
        let o = MigrateOptions {
            link,
            dirty_rate_bytes_per_s: 20 * MIB,
            ..opts(hints, skip)
        };
        let r = migrate_local(&guest, &o).unwrap();
        let v = r.verify.as_ref().unwrap();
        assert!(v.ok(), "{hints:?} skip={skip}: {v:?}");
        assert!(guest.is_paused(), "the source stays paused after success");
        let s = r.summary();
        assert_eq!(s.mismatched_pages, Some(0));
        assert!(s.rounds >= 2);
        assert!(s.workload_pages_dirtied > 0, "{s:?}");
        if hints == HintMode::Off {
            assert_eq!(s.hinted_pages, 0);
            assert!(v.free_differ == 0 || skip, "{v:?}");
        } else {
            // Nearly all of the stale free memory is skipped in round 1.
            assert!(
                r.result.per_round[0].hinted_pages * PAGE_SIZE > info.stale_free_bytes * 9 / 10,
                "{:?}",
                r.result.per_round[0]
            );
            assert!(v.free_differ > 0);
        }
        if !skip && hints == HintMode::Off {
            assert!(
                r.result.per_round[0].data_pages + r.result.per_round[0].zero_pages >= pages - 1
            );
        }
        assert_eq!(r.result.bytes_sent, r.dest.bytes_received);
        let json = s.to_json();
        assert!(
            json.starts_with("{\"hints\":\"") && json.ends_with('}'),
            "{json}"
        );
        guest.resume();
        guest.set_dirty_rate(0);
        guest.pause();
        guest.restore_untouched(&before).unwrap();
        guest.resume();
    }
    guest.lock().guest.allocator().check_invariants().unwrap();
}

#[test]
fn test_idle_m1_reused_keeps_its_untouched_memory() {
    let (guest, info) = Scenario::m1().with_guest_bytes(128 * MIB).build().unwrap();
    let resident = guest.resident_pages().unwrap();
    assert_eq!(resident.count() * PAGE_SIZE, info.used_bytes);
    // No hints, no skipping: every page is read (never-touched ones map the zero page).
    let r = migrate_local(&guest, &opts(HintMode::Off, false)).unwrap();
    assert_eq!(r.result.pages_read, 128 * MIB / PAGE_SIZE);
    assert!(guest.resident_pages().unwrap().count() > resident.count());
    guest.restore_untouched(&resident).unwrap();
    assert_eq!(guest.resident_pages().unwrap(), resident);
    guest.resume();
    // Unpopulated skipping now reads only the used pages.
    let r = migrate_local(&guest, &opts(HintMode::Off, true)).unwrap();
    assert_eq!(r.result.pages_read * PAGE_SIZE, info.used_bytes);
    assert!(r.verify.unwrap().ok());
}

#[test]
fn test_hint_modes_need_a_provider_that_has_them() {
    let (guest, _) = Scenario::m1().with_guest_bytes(16 * MIB).build().unwrap();
    let no_provider = MigrateOptions {
        hints: HintMode::Upstream,
        ..MigrateOptions::default()
    };
    assert!(matches!(
        migrate_local(&guest, &no_provider),
        Err(Error::Config(_))
    ));
    // The stand-in does not do reporting.
    let e = migrate_local(&guest, &opts(HintMode::Reporting, false)).unwrap_err();
    assert!(e.to_string().contains("reporting"), "{e}");
    assert!(!guest.is_paused(), "nothing started");
    assert_eq!(HintMode::parse("seed"), Some(HintMode::Bitmap));
    assert!(HintMode::ALL
        .iter()
        .all(|m| HintMode::parse(m.name()) == Some(*m)));
}

/// A guest of `bytes` of memfd-backed RAM built as `s` says.
fn memfd_guest(s: Scenario, bytes: u64) -> (GuestRunner, ScenarioInfo) {
    s.with_guest_bytes(bytes)
        .with_backing(Backing::Memfd)
        .build()
        .unwrap()
}

#[test]
fn test_send_and_listen_verify_through_the_trailer() {
    let (guest, info) = memfd_guest(Scenario::m2(), 32 * MIB);
    let listener = tcp_listen("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let o = MigrateOptions {
        dirty_rate_bytes_per_s: 10 * MIB,
        dest_backing: Backing::Memfd,
        ..opts(HintMode::Bitmap, true)
    };
    let (r, d) = thread::scope(|s| {
        let d = s.spawn(|| listen_on(&listener, 32 * MIB, Backing::Memfd, DestConfig::default()));
        let r = send(addr, &guest, &o);
        (r.unwrap(), d.join().unwrap().unwrap())
    });
    let rv = r.remote_verify.clone().unwrap();
    let dv = d.verify.clone().unwrap();
    assert!(rv.ok() && dv.ok(), "{rv:?} {dv:?}");
    assert_eq!(rv.pages_checked, dv.pages_checked);
    assert_eq!(dv.pages_checked, guest.used_pages().count());
    assert!(dv.pages_checked * PAGE_SIZE >= info.used_bytes / 2);
    assert_eq!(r.bytes_sent, d.bytes_received);
    assert!(guest.is_paused());
}

#[test]
fn test_no_hints_pass_over_a_memfd_guest_does_not_populate_its_holes() {
    let (guest, info) = memfd_guest(Scenario::m1(), 64 * MIB);
    let before = guest.resident_pages().unwrap();
    let r = migrate_local(&guest, &opts(HintMode::Off, false)).unwrap();
    // Every page was read (holes through the file), none of the holes got allocated.
    assert_eq!(r.result.pages_read, 64 * MIB / PAGE_SIZE);
    assert_eq!(r.result.data_pages * PAGE_SIZE, info.used_bytes);
    assert_eq!(guest.resident_pages().unwrap(), before);
    assert!(r.verify.unwrap().ok());
}
