//! End-to-end migrations of real guest memory: in-process and over TCP loopback, with a
//! workload writing during the migration, hints, unpopulated skipping, and the hint ordering.

mod migration_support;

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use migration_support::*;
use vballoon::memory::{Backing, GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use vballoon::migration::*;
use vballoon::pages::PageSet;

const TIMEOUT: Duration = Duration::from_secs(10);

fn config(tracking: DirtyTracking) -> MigrationConfig {
    MigrationConfig {
        bandwidth_bytes_per_s: 200_000_000,
        downtime_target: Duration::from_millis(5),
        dirty_tracking: tracking,
        io_timeout: TIMEOUT,
        ..MigrationConfig::default()
    }
}

/// A 256 MiB source on `backing` populated by `populate(used_mib, stale_mib, seed)`, its dirty
/// log, and an empty anonymous destination of the same size.
fn source_and_dest(
    backing: Backing,
    used_mib: u64,
    stale_mib: u64,
    seed: u64,
) -> (GuestMemory, TestGuest, DirtyLog, GuestMemory) {
    let src = GuestMemory::new(256 * MIB, backing).unwrap();
    let g = populate(&src, used_mib, stale_mib, seed);
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(256 * MIB, Backing::Anonymous).unwrap();
    (src, g, log, dst)
}

#[test]
fn test_in_process_migration_with_writer_and_hints_is_exact() {
    let (src, g, log, dst) = source_and_dest(Backing::Anonymous, 24, 16, 1);
    let wl = Workload::new(true);
    let mut hints = StaticHints::new(free_bitmap(&g.used)).trickle(8);
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let (r, dr) = thread::scope(|s| {
        s.spawn(|| wl.run(&src, &log, &g.used, Duration::from_micros(200)));
        let d = s.spawn(|| Destination::new(&dst, DestConfig::default()).receive(b));
        let r = Source::new(&src, &log, &wl, config(DirtyTracking::Explicit))
            .with_hints(&mut hints)
            .run(a);
        wl.stop();
        (r, d.join().unwrap())
    });
    let (r, dr) = (r.unwrap(), dr.unwrap());
    assert!(wl.is_paused(), "on success the source guest stays paused");
    assert_eq!(wl.resumes.load(Ordering::Relaxed), 0);
    assert!(wl.writes.load(Ordering::Relaxed) > 0);
    let v = verify(&src, &dst, &g.used).unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.used_pages, g.used.count());
    // Stale free pages were hinted, so not sent: they differ, and that is allowed.
    assert!(
        v.free_differ > 0 && v.free_differ <= g.free_stale.count(),
        "{v:?}"
    );
    assert!(r.hinted_pages > 0);
    assert!(r.rounds >= 2, "{:?}", r.per_round);
    assert!(r.per_round.last().unwrap().stop_and_copy);
    assert_eq!(r.data_pages, dr.data_pages);
    assert_eq!(r.bytes_sent, dr.bytes_received);
    assert_eq!(hints.done_calls(), 1);
    assert_eq!(r.dirty_backend, DirtyBackend::Explicit { fallback: None });
}

#[test]
fn test_tcp_migration_with_kernel_tracking_catches_unmarked_writes() {
    // The workload does not mark the log: only the kernel tracker can see its writes.
    let (src, g, log, dst) = source_and_dest(Backing::Memfd, 16, 0, 2);
    let wl = Workload::new(false);
    let listener = tcp_listen("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (r, dr) = thread::scope(|s| {
        s.spawn(|| wl.run(&src, &log, &g.used, Duration::from_micros(200)));
        let d = s.spawn(|| {
            let c = tcp_accept(&listener, TIMEOUT)?;
            Destination::new(&dst, DestConfig::default()).receive(c)
        });
        let c = tcp_connect(addr, TIMEOUT).unwrap();
        let r = Source::new(&src, &log, &wl, config(DirtyTracking::Kernel)).run(c);
        wl.stop();
        (r, d.join().unwrap())
    });
    let r = match r {
        Err(MigrationError::KernelTrackingUnavailable { reason }) => {
            eprintln!("skipping: {reason}");
            return;
        }
        r => r.unwrap(),
    };
    dr.unwrap();
    assert_eq!(r.dirty_backend, DirtyBackend::Kernel);
    assert!(wl.writes.load(Ordering::Relaxed) > 0);
    let v = verify(&src, &dst, &g.used).unwrap();
    assert!(v.ok(), "{v:?}");
}

#[test]
fn test_unpopulated_pages_are_never_read() {
    let src = GuestMemory::new(256 * MIB, Backing::Anonymous).unwrap();
    let g = populate(&src, 8, 0, 3);
    let resident = src.resident_pages(GuestAddress(0), src.size()).unwrap();
    let log = DirtyLog::for_memory(&src);
    for skip in [true, false] {
        let dst = GuestMemory::new(256 * MIB, Backing::Anonymous).unwrap();
        let cfg = unthrottled(DirtyTracking::Explicit, skip);
        let r = migrate_ok(Source::new(&src, &log, &NoGuest, cfg), &dst);
        assert!(verify(&src, &dst, &g.used).unwrap().ok());
        if skip {
            assert_eq!(r.pages_read, resident);
            assert_eq!(r.unpopulated_pages, src.pages() - resident);
            // Nothing was read, so no zero page got mapped: residency is unchanged.
            assert_eq!(
                src.resident_pages(GuestAddress(0), src.size()).unwrap(),
                resident
            );
            // Runs of zeros cost bytes, not pages: the stream is about the data alone.
            assert!(r.bytes_sent < (r.data_pages + 64) * (PAGE_SIZE + 8) + (1 << 20));
        } else {
            assert_eq!(r.pages_read, src.pages());
            assert_eq!(r.unpopulated_pages, 0);
        }
        assert_eq!(
            r.data_pages + r.zero_pages + r.unpopulated_pages,
            src.pages()
        );
    }
}

#[test]
fn test_zero_detection_off_sends_zero_pages_as_data() {
    let src = GuestMemory::new(32 * MIB, Backing::Anonymous).unwrap();
    src.fill(GuestAddress(0), MIB, 0).unwrap(); // populated zeros
    src.fill(GuestAddress(MIB), MIB, 3).unwrap();
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(32 * MIB, Backing::Memfd).unwrap();
    let cfg = MigrationConfig {
        bandwidth_bytes_per_s: 0,
        zero_detection: false,
        ..MigrationConfig::default()
    };
    let r = migrate_ok(Source::new(&src, &log, &NoGuest, cfg), &dst);
    assert_eq!(r.data_pages, 512);
    assert_eq!(r.zero_pages, 0);
    let mut used = PageSet::new(src.pages());
    used.insert_range(0, 512);
    assert!(verify(&src, &dst, &used).unwrap().ok());
}

/// A guest that hints a page free, then reuses and writes it before the next sync.
struct ReusingHints<'a> {
    mem: &'a GuestMemory,
    log: &'a DirtyLog,
    page: u64,
    fired: bool,
}

impl HintSource for ReusingHints<'_> {
    fn start(&mut self, _round: u32) -> Result<(), MigrationError> {
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        if !self.fired {
            self.fired = true;
            out(PageRange::new(self.page, 1));
            // The guest takes the page back (shrinker) and writes it, marking the log.
            self.mem
                .fill(Pfn(self.page).addr(), PAGE_SIZE, 0x5a)
                .unwrap();
            self.log.mark(Pfn(self.page), 1);
        }
        Ok(true)
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        Ok(())
    }

    fn done(&mut self) {}
}

#[test]
fn test_page_written_after_its_hint_arrives() {
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let page = src.pages() - 3; // in the last chunk: hinted before round 1 reaches it
    src.fill(Pfn(page).addr(), PAGE_SIZE, 0x11).unwrap();
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let mut hints = ReusingHints {
        mem: &src,
        log: &log,
        page,
        fired: false,
    };
    let cfg = MigrationConfig {
        dirty_tracking: DirtyTracking::Explicit,
        ..MigrationConfig::default()
    };
    let r = migrate_ok(
        Source::new(&src, &log, &NoGuest, cfg).with_hints(&mut hints),
        &dst,
    );
    assert_eq!(r.per_round[0].hinted_pages, 1, "skipped in round 1");
    assert_eq!(r.per_round[0].dirty_after, 1, "caught by the dirty log");
    assert_eq!(dst.read_u8(Pfn(page).addr()).unwrap(), 0x5a);
    let mut used = PageSet::new(src.pages());
    used.insert(page);
    assert!(verify(&src, &dst, &used).unwrap().ok());
}

/// Records every call with the dirty log's sync count at that moment.
struct RecordingHints<'a> {
    log: &'a DirtyLog,
    events: &'a Mutex<Vec<(String, u64)>>,
    free: PageSet,
}

impl RecordingHints<'_> {
    fn record(&self, what: String) {
        self.events.lock().unwrap().push((what, self.log.syncs()));
    }
}

impl HintSource for RecordingHints<'_> {
    fn start(&mut self, round: u32) -> Result<(), MigrationError> {
        self.record(format!("start{round}"));
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        self.record("poll".into());
        for PageRange { start: s, len: n } in self.free.runs() {
            out(PageRange::new(s, n));
        }
        Ok(false) // keeps "reporting": the engine must still stop polling at stop()
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        self.record("stop".into());
        Ok(())
    }

    fn done(&mut self) {
        self.record("done".into());
    }
}

fn check_hint_order(events: &[(String, u64)]) {
    assert_eq!(events.last().unwrap().0, "done");
    assert_eq!(events.iter().filter(|e| e.0 == "done").count(), 1);
    let mut active: Option<u64> = None;
    let mut last_stop: Option<u64> = None;
    for (what, syncs) in events {
        match what.as_str() {
            w if w.starts_with("start") => {
                assert!(active.is_none(), "{events:?}");
                if let Some(s) = last_stop {
                    assert!(*syncs > s, "a sync comes between stop and the next start");
                }
                active = Some(*syncs);
            }
            "poll" => assert_eq!(active, Some(*syncs), "polls only while started: {events:?}"),
            "stop" => {
                assert_eq!(
                    active.take(),
                    Some(*syncs),
                    "stop before the sync: {events:?}"
                );
                last_stop = Some(*syncs);
            }
            _ => {}
        }
    }
}

#[test]
fn test_hint_ordering_rules_hold_on_success_and_failure() {
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let g = populate(&src, 4, 4, 4);
    let log = DirtyLog::for_memory(&src);
    let wl = Workload::new(true);
    // Success, with a workload so there are several rounds.
    let events = Mutex::new(Vec::new());
    let mut hints = RecordingHints {
        log: &log,
        events: &events,
        free: free_bitmap(&g.used),
    };
    let dst = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let cfg = MigrationConfig {
        bandwidth_bytes_per_s: 20_000_000,
        downtime_target: Duration::from_millis(1),
        max_rounds: 4,
        dirty_tracking: DirtyTracking::Explicit,
        ..MigrationConfig::default()
    };
    let r = thread::scope(|s| {
        s.spawn(|| wl.run(&src, &log, &g.used, Duration::from_micros(100)));
        let d = s.spawn(|| Destination::new(&dst, DestConfig::default()).receive(b));
        let r = Source::new(&src, &log, &wl, cfg.clone())
            .with_hints(&mut hints)
            .run(a)
            .unwrap();
        wl.stop();
        d.join().unwrap().unwrap();
        r
    });
    let ev = events.lock().unwrap().clone();
    check_hint_order(&ev);
    let starts = ev.iter().filter(|e| e.0.starts_with("start")).count() as u32;
    assert_eq!(
        starts,
        r.rounds - 1,
        "one request per live round, none while paused"
    );
    assert!(verify(&src, &dst, &g.used).unwrap().ok());

    // Failure: the destination vanishes. DONE still comes, exactly once.
    let events = Mutex::new(Vec::new());
    let mut hints = RecordingHints {
        log: &log,
        events: &events,
        free: free_bitmap(&g.used),
    };
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    drop(b);
    let e = Source::new(&src, &log, &NoGuest, cfg)
        .with_hints(&mut hints)
        .run(a)
        .unwrap_err();
    assert!(matches!(e, MigrationError::ConnectionLost { .. }), "{e}");
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["done"]
    );
}

#[test]
fn test_cancel_stops_the_migration_and_resumes_nothing_unpaused() {
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    populate(&src, 8, 0, 5);
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cfg = MigrationConfig {
        cancel: Some(cancel),
        ..MigrationConfig::default()
    };
    let wl = Workload::new(true);
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let (e, de) = thread::scope(|s| {
        let d = s.spawn(|| Destination::new(&dst, DestConfig::default()).receive(b));
        let e = Source::new(&src, &log, &wl, cfg).run(a).unwrap_err();
        (e, d.join().unwrap().unwrap_err())
    });
    assert!(matches!(e, MigrationError::Cancelled), "{e}");
    assert!(
        matches!(de, MigrationError::Stream(StreamError::Truncated { .. })),
        "{de}"
    );
    assert_eq!(wl.pauses.load(Ordering::Relaxed), 0);
    assert_eq!(dst.resident_pages(GuestAddress(0), dst.size()).unwrap(), 0);
}

/// A guest whose hint for a page arrives after STOP, under the old command id, when the page
/// was already rewritten: the id check must drop it, or the page would be skipped in round 2.
struct LateGuest<'a> {
    inner: QueuedHints,
    feed: HintFeed,
    mem: &'a GuestMemory,
    log: &'a DirtyLog,
    page: u64,
    round: u32,
    first_id: u32,
}

impl HintSource for LateGuest<'_> {
    fn start(&mut self, round: u32) -> Result<(), MigrationError> {
        self.inner.start(round)?;
        self.round = round;
        if round == 1 {
            self.first_id = self.feed.cmd_id();
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        self.inner.poll(out)
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        self.inner.stop()?;
        if self.round == 1 {
            self.mem
                .fill(Pfn(self.page).addr(), PAGE_SIZE, 0x77)
                .unwrap();
            self.log.mark(Pfn(self.page), 1);
            self.feed
                .report(self.first_id, PageRange::new(self.page, 1)); // in flight, now stale
        }
        Ok(())
    }

    fn done(&mut self) {
        self.inner.done()
    }
}

#[test]
fn test_hints_under_a_stale_command_id_are_ignored() {
    let src = GuestMemory::new(32 * MIB, Backing::Anonymous).unwrap();
    let page = 100;
    src.fill(Pfn(page).addr(), PAGE_SIZE, 0x11).unwrap();
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(32 * MIB, Backing::Anonymous).unwrap();
    let (inner, feed) = QueuedHints::new();
    let mut hints = LateGuest {
        inner,
        feed: feed.clone(),
        mem: &src,
        log: &log,
        page,
        round: 0,
        first_id: 0,
    };
    let cfg = MigrationConfig {
        bandwidth_bytes_per_s: 0,
        downtime_target: Duration::ZERO, // one dirty page is enough for a second live round
        dirty_tracking: DirtyTracking::Explicit,
        ..MigrationConfig::default()
    };
    let r = migrate_ok(
        Source::new(&src, &log, &NoGuest, cfg).with_hints(&mut hints),
        &dst,
    );
    assert!(r.rounds >= 3, "{:?}", r.per_round);
    assert!(!r.per_round[1].stop_and_copy);
    assert_eq!(feed.stale_pages(), 1, "the late hint was dropped");
    assert_eq!(r.hinted_pages, 0);
    assert_eq!(feed.cmd_id(), CMD_ID_DONE);
    assert_eq!(dst.read_u8(Pfn(page).addr()).unwrap(), 0x77);
}
