//! Faults: each ends the migration with a typed error on both sides, leaves the source guest
//! running with its memory intact, leaves nothing on the destination, and never hangs.

mod migration_support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use migration_support::*;
use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::migration::stream::HEADER_LEN;
use vballoon::migration::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(300);

/// One injected fault and the typed error each side must end with.
struct Case {
    what: &'static str,
    faults: Faults,
    /// Destination RAM size and populate budget (the source has 64 MiB).
    dst_size: u64,
    dst_budget: Option<u64>,
    dest: fn(&MigrationError) -> bool,
    source: fn(&MigrationError) -> bool,
}

/// A 64 MiB source with 8 MiB of data; runs one migration through a [`Faulty`] channel into a
/// destination, and checks the invariants every fault must keep and the errors `case` expects.
fn run_faulty(case: Case) {
    let guest = Workload::new(true);
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    populate(&src, 8, 0, 7);
    let before = checksum(&src);
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(case.dst_size, Backing::Anonymous).unwrap();
    let dcfg = DestConfig {
        max_resident_bytes: case.dst_budget,
        ..DestConfig::default()
    };
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let (s, d) = thread::scope(|s| {
        let d = s.spawn(|| Destination::new(&dst, dcfg).receive(b));
        let r = Source::new(&src, &log, &guest, cfg()).run(Faulty::new(a, case.faults));
        (r, d.join().unwrap())
    });
    let what = case.what;
    let source = s.expect_err("the source must fail");
    let dest = d.expect_err("the destination must fail");
    assert!((case.source)(&source), "{what}: source {source}");
    assert!((case.dest)(&dest), "{what}: destination {dest:?}");
    assert_eq!(checksum(&src), before, "{what}: source memory intact");
    assert_eq!(
        guest.pauses.load(Ordering::Relaxed),
        guest.resumes.load(Ordering::Relaxed),
        "{what}: a paused guest is resumed"
    );
    assert!(!guest.is_paused(), "{what}");
    assert_eq!(
        dst.resident_pages(GuestAddress(0), dst.size()).unwrap(),
        0,
        "{what}: destination discarded its partial state"
    );
}

fn cfg() -> MigrationConfig {
    MigrationConfig {
        bandwidth_bytes_per_s: 0,
        dirty_tracking: DirtyTracking::Explicit,
        io_timeout: TIMEOUT,
        ..MigrationConfig::default()
    }
}

/// Destination rejections a source may see as the rejection or as the connection closing
/// first (the destination hangs up right after its reply).
fn rejected_or_lost(e: &MigrationError, want: RejectReason) -> bool {
    match e {
        MigrationError::Rejected { reason, .. } => *reason == want,
        MigrationError::ConnectionLost { .. } => true,
        _ => false,
    }
}

#[test]
fn test_connection_drop_mid_stream() {
    run_faulty(Case {
        what: "drop after 3 MiB",
        faults: Faults {
            drop_after: Some(3 << 20),
            ..Faults::default()
        },
        dst_size: 64 * MIB,
        dst_budget: None,
        dest: |e| matches!(e, MigrationError::Stream(StreamError::Truncated { .. })),
        source: |e| matches!(e, MigrationError::ConnectionLost { .. }),
    });
}

#[test]
fn test_corruption_is_rejected() {
    type Check = fn(&MigrationError) -> bool;
    let cases: [(&str, u64, Check, Check); 2] = [
        (
            "a flipped bit in a batch",
            1 << 20,
            |e| {
                matches!(
                    e,
                    MigrationError::Stream(StreamError::ChecksumMismatch { what: "frame", .. })
                )
            },
            |e| rejected_or_lost(e, RejectReason::BadStream),
        ),
        (
            "a flipped bit in the header",
            3,
            |e| matches!(e, MigrationError::Stream(StreamError::BadMagic { .. })),
            // Refused before the source sent a page: the reply is always heard.
            |e| {
                matches!(
                    e,
                    MigrationError::Rejected {
                        reason: RejectReason::BadStream,
                        ..
                    }
                )
            },
        ),
    ];
    for (what, at, dest, source) in cases {
        let faults = Faults {
            corrupt_at: Some(at),
            ..Faults::default()
        };
        run_faulty(Case {
            what,
            faults,
            dst_size: 64 * MIB,
            dst_budget: None,
            dest,
            source,
        });
    }
}

#[test]
fn test_destination_too_small_or_full() {
    run_faulty(Case {
        what: "32 MiB destination",
        faults: Faults::default(),
        dst_size: 32 * MIB,
        dst_budget: None,
        dest: |e| {
            matches!(e, MigrationError::GuestTooLarge { source_size, dest_size }
                if *source_size == 64 * MIB && *dest_size == 32 * MIB)
        },
        source: |e| {
            matches!(e, MigrationError::Rejected { reason: RejectReason::TooLarge, detail }
                if *detail == 32 * MIB)
        },
    });
    run_faulty(Case {
        what: "4 MiB populate budget",
        faults: Faults::default(),
        dst_size: 64 * MIB,
        dst_budget: Some(4 * MIB),
        dest: |e| matches!(e, MigrationError::DestinationFull { budget: 1024, .. }),
        source: |e| rejected_or_lost(e, RejectReason::Full),
    });
}

#[test]
fn test_drop_during_stop_and_copy_resumes_the_guest() {
    // The link fails as soon as the guest is paused: the final round never completes.
    struct Flagging<'a>(&'a Workload, Arc<AtomicBool>);
    impl GuestControl for Flagging<'_> {
        fn pause(&self) {
            self.0.pause();
            self.1.store(true, Ordering::Release);
        }
        fn resume(&self) {
            self.0.resume();
        }
    }
    let wl = Workload::new(true);
    let flag = Arc::new(AtomicBool::new(false));
    let guest = Flagging(&wl, flag.clone());
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    populate(&src, 8, 0, 8);
    let before = checksum(&src);
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let faults = Faults {
        drop_when: Some(flag),
        ..Faults::default()
    };
    let (s, d) = thread::scope(|s| {
        let d = s.spawn(|| Destination::new(&dst, DestConfig::default()).receive(b));
        let r = Source::new(&src, &log, &guest, cfg()).run(Faulty::new(a, faults));
        (r, d.join().unwrap())
    });
    let e = s.unwrap_err();
    assert!(matches!(e, MigrationError::ConnectionLost { .. }), "{e}");
    assert!(d.is_err());
    assert_eq!(wl.pauses.load(Ordering::Relaxed), 1);
    assert_eq!(wl.resumes.load(Ordering::Relaxed), 1);
    assert!(!wl.is_paused());
    assert_eq!(checksum(&src), before);
    assert_eq!(dst.resident_pages(GuestAddress(0), dst.size()).unwrap(), 0);
}

#[test]
fn test_stalled_destination_times_out_the_source() {
    // A peer that accepts the connection and then neither reads nor answers.
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    populate(&src, 8, 0, 9);
    let before = checksum(&src);
    let log = DirtyLog::for_memory(&src);
    // The source's error must be a timeout; returns the operation that timed out.
    let timed_out = |a| {
        let cfg = MigrationConfig {
            io_timeout: SHORT,
            ..cfg()
        };
        match Source::new(&src, &log, &NoGuest, cfg).run(a) {
            Err(MigrationError::Timeout { op, .. }) => op,
            Err(e) => panic!("expected a timeout, got {e}"),
            Ok(_) => panic!("expected a timeout, the migration succeeded"),
        }
    };
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    assert_eq!(timed_out(a), "read reply");
    drop(b);
    assert_eq!(checksum(&src), before);

    // A peer that accepts, then stops reading mid-stream: the link writer times out.
    let (a, mut b) = in_process_pair(TIMEOUT).unwrap();
    let stalled = thread::spawn(move || {
        let mut h = [0u8; HEADER_LEN];
        b.read_exact(&mut h).unwrap();
        std::io::Write::write_all(
            &mut b,
            &vballoon::migration::stream::encode_reply(
                vballoon::migration::stream::ReplyCode::Accept,
                0,
            ),
        )
        .unwrap();
        thread::sleep(Duration::from_secs(2));
        drop(b);
    });
    assert_eq!(timed_out(a), "send stream");
    stalled.join().unwrap();
    assert_eq!(checksum(&src), before);
}

#[test]
fn test_stalled_source_times_out_the_destination() {
    let dst = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    let (mut a, b) = in_process_pair(TIMEOUT).unwrap();
    // A source that sends a valid header and one data page, then goes silent.
    let h = vballoon::migration::stream::Header {
        guest_size: 64 * MIB,
        flags: 0,
    };
    let mut w = vballoon::migration::stream::StreamWriter::new(&h);
    w.write_header(&mut a, &h).unwrap();
    w.round(&mut a, 1).unwrap();
    w.data(&mut a, 5, &[7u8; 4096]).unwrap();
    w.flush_batch(&mut a).unwrap();
    let dcfg = DestConfig {
        io_timeout: SHORT,
        ..DestConfig::default()
    };
    let e = Destination::new(&dst, dcfg).receive(b).unwrap_err();
    assert!(matches!(e, MigrationError::Timeout { .. }), "{e}");
    assert_eq!(dst.resident_pages(GuestAddress(0), dst.size()).unwrap(), 0);
    drop(a);
}
