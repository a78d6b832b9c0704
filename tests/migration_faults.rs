//! Faults: each ends the migration with a typed error on both sides, leaves the source guest
//! running with its memory intact, leaves nothing on the destination, and never hangs.

mod migration_support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use migration_support::*;
use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::migration::stream::HEADER_LEN;
use vballoon::migration::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(300);

struct Outcome {
    source: MigrationError,
    dest: Option<MigrationError>,
}

/// A 64 MiB source with 8 MiB of data; runs one migration through `wrap(source end)` into a
/// destination of `dst_size` with `dcfg`, and checks the invariants every fault must keep.
fn run_faulty<C: Channel>(
    dst_size: u64,
    cfg: MigrationConfig,
    dcfg: DestConfig,
    guest: &Workload,
    wrap: impl FnOnce(std::os::unix::net::UnixStream) -> C,
) -> Outcome {
    let src = GuestMemory::new(64 * MIB, Backing::Anonymous).unwrap();
    populate(&src, 8, 0, 7);
    let before = checksum(&src);
    let log = DirtyLog::for_memory(&src);
    let dst = GuestMemory::new(dst_size, Backing::Anonymous).unwrap();
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let t = Instant::now();
    let (s, d) = thread::scope(|s| {
        let d = s.spawn(|| Destination::new(&dst, dcfg).receive(b));
        let r = Source::new(&src, &log, guest, cfg).run(wrap(a));
        (r, d.join().unwrap())
    });
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    let source = s.expect_err("the source must fail");
    assert_eq!(checksum(&src), before, "source memory intact");
    assert_eq!(
        guest.pauses.load(Ordering::Relaxed),
        guest.resumes.load(Ordering::Relaxed),
        "a paused guest is resumed"
    );
    assert!(!guest.is_paused());
    let dest = d.err();
    assert_eq!(
        dst.resident_pages(GuestAddress(0), dst.size()).unwrap(),
        0,
        "destination discarded its partial state"
    );
    Outcome { source, dest }
}

fn cfg() -> MigrationConfig {
    MigrationConfig {
        bandwidth_bytes_per_s: 0,
        dirty_tracking: DirtyTracking::Explicit,
        io_timeout: TIMEOUT,
        ..MigrationConfig::default()
    }
}

#[test]
fn test_connection_drop_mid_stream() {
    let wl = Workload::new(true);
    let faults = Faults {
        drop_after: Some(3 << 20),
        ..Faults::default()
    };
    let o = run_faulty(64 * MIB, cfg(), DestConfig::default(), &wl, |a| {
        Faulty::new(a, faults)
    });
    assert!(
        matches!(o.source, MigrationError::ConnectionLost { .. }),
        "{}",
        o.source
    );
    assert!(
        matches!(
            o.dest,
            Some(MigrationError::Stream(StreamError::Truncated { .. }))
        ),
        "{:?}",
        o.dest
    );
}

#[test]
fn test_corrupted_batch_is_rejected() {
    let wl = Workload::new(true);
    let faults = Faults {
        corrupt_at: Some(1 << 20),
        ..Faults::default()
    };
    let o = run_faulty(64 * MIB, cfg(), DestConfig::default(), &wl, |a| {
        Faulty::new(a, faults)
    });
    assert!(
        matches!(
            o.dest,
            Some(MigrationError::Stream(StreamError::ChecksumMismatch {
                what: "frame",
                ..
            }))
        ),
        "{:?}",
        o.dest
    );
    assert!(
        matches!(
            o.source,
            MigrationError::Rejected {
                reason: RejectReason::BadStream,
                ..
            } | MigrationError::ConnectionLost { .. }
        ),
        "{}",
        o.source
    );
}

#[test]
fn test_corrupted_header_is_rejected() {
    let wl = Workload::new(true);
    let faults = Faults {
        corrupt_at: Some(3),
        ..Faults::default()
    };
    let o = run_faulty(64 * MIB, cfg(), DestConfig::default(), &wl, |a| {
        Faulty::new(a, faults)
    });
    assert!(
        matches!(
            o.dest,
            Some(MigrationError::Stream(StreamError::BadMagic { .. }))
        ),
        "{:?}",
        o.dest
    );
    assert!(
        matches!(
            o.source,
            MigrationError::Rejected {
                reason: RejectReason::BadStream,
                ..
            }
        ),
        "{}",
        o.source
    );
}

#[test]
fn test_destination_smaller_than_source() {
    let wl = Workload::new(true);
    let o = run_faulty(32 * MIB, cfg(), DestConfig::default(), &wl, |a| a);
    assert!(
        matches!(
            o.dest,
            Some(MigrationError::GuestTooLarge {
                source_size,
                dest_size
            }) if source_size == 64 * MIB && dest_size == 32 * MIB
        ),
        "{:?}",
        o.dest
    );
    assert!(
        matches!(
            o.source,
            MigrationError::Rejected {
                reason: RejectReason::TooLarge,
                detail
            } if detail == 32 * MIB
        ),
        "{}",
        o.source
    );
}

#[test]
fn test_destination_runs_out_of_memory() {
    let wl = Workload::new(true);
    let dcfg = DestConfig {
        max_resident_bytes: Some(4 * MIB),
        ..DestConfig::default()
    };
    let o = run_faulty(64 * MIB, cfg(), dcfg, &wl, |a| a);
    assert!(
        matches!(
            o.dest,
            Some(MigrationError::DestinationFull { budget: 1024, .. })
        ),
        "{:?}",
        o.dest
    );
    assert!(
        matches!(
            o.source,
            MigrationError::Rejected {
                reason: RejectReason::Full,
                ..
            } | MigrationError::ConnectionLost { .. }
        ),
        "{}",
        o.source
    );
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
    let (a, b) = in_process_pair(TIMEOUT).unwrap();
    let cfg = MigrationConfig {
        io_timeout: SHORT,
        ..cfg()
    };
    let t = Instant::now();
    let e = Source::new(&src, &log, &NoGuest, cfg).run(a).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(
            e,
            MigrationError::Timeout {
                op: "read reply",
                ..
            }
        ),
        "{e}"
    );
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
    let cfg2 = MigrationConfig {
        io_timeout: SHORT,
        ..self::cfg()
    };
    let t = Instant::now();
    let e = Source::new(&src, &log, &NoGuest, cfg2).run(a).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(
            e,
            MigrationError::Timeout {
                op: "send stream",
                ..
            }
        ),
        "{e}"
    );
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
    let t = Instant::now();
    let e = Destination::new(&dst, dcfg).receive(b).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, MigrationError::Timeout { .. }), "{e}");
    assert_eq!(dst.resident_pages(GuestAddress(0), dst.size()).unwrap(), 0);
    drop(a);
}
