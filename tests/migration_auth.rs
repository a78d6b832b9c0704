//! Pre-shared key authentication of a migration connection: a keyed migration arrives intact;
//! a peer with another key, or none, is refused before any page is written; a recording of an
//! earlier session replayed to a new listener is refused; a listener on a non-loopback address
//! needs a key or an explicit `insecure`.

mod migration_support;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vballoon::machine;
use vballoon::memory::{Backing, GuestAddress, GuestMemory, PAGE_SIZE};
use vballoon::migration::{
    in_process_pair, tcp_accept, tcp_connect, tcp_listen, AuthError, DestConfig, DestReport,
    Destination, DirtyLog, MigrationConfig, MigrationError, MigrationKey, MigrationResult, NoGuest,
    RejectReason, Source,
};
use vballoon::Error;

use migration_support::{Faults, Faulty};

const PAGES: u64 = 256;
const T: Duration = Duration::from_secs(10);

fn key(b: u8) -> Option<MigrationKey> {
    Some(MigrationKey::new(&[b; 32]).unwrap())
}

fn source_guest() -> GuestMemory {
    let m = GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap();
    for pfn in (0..PAGES).step_by(3) {
        m.write(GuestAddress(pfn * PAGE_SIZE), &[pfn as u8 | 1; 4096])
            .unwrap();
    }
    m
}

fn untouched(m: &GuestMemory) -> bool {
    let res = m.residency(GuestAddress(0), m.size()).unwrap();
    res.iter().all(|r| r & 1 == 0) && m.is_zero(GuestAddress(0), m.size()).unwrap()
}

fn migrate(
    src: &GuestMemory,
    dst: &GuestMemory,
    src_key: Option<MigrationKey>,
    dst_key: Option<MigrationKey>,
    record: Option<Arc<Mutex<Vec<u8>>>>,
) -> (
    Result<MigrationResult, MigrationError>,
    Result<DestReport, MigrationError>,
) {
    let (a, b) = in_process_pair(T).unwrap();
    let log = DirtyLog::for_memory(src);
    let cfg = MigrationConfig {
        key: src_key,
        bandwidth_bytes_per_s: 0,
        ..MigrationConfig::default()
    };
    let dcfg = DestConfig {
        key: dst_key,
        ..DestConfig::default()
    };
    std::thread::scope(|s| {
        let d = s.spawn(|| Destination::new(dst, dcfg).receive(b));
        let source = Source::new(src, &log, &NoGuest, cfg);
        let r = match record {
            Some(log) => source.run(Faulty::new(
                a,
                Faults {
                    record: Some(log),
                    ..Faults::default()
                },
            )),
            None => source.run(a),
        };
        (r, d.join().unwrap())
    })
}

#[test]
fn test_keyed_migration_arrives_intact() {
    let (src, dst) = (
        source_guest(),
        GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap(),
    );
    let (r, d) = migrate(&src, &dst, key(1), key(1), None);
    r.unwrap();
    let d = d.unwrap();
    assert_eq!(d.data_pages, PAGES.div_ceil(3));
    let (mut a, mut b) = (
        vec![0u8; src.size() as usize],
        vec![0u8; dst.size() as usize],
    );
    src.read(GuestAddress(0), &mut a).unwrap();
    dst.read(GuestAddress(0), &mut b).unwrap();
    assert!(a == b, "keyed migration differs");
}

/// A migration with mismatched keys: both sides fail as `dest` and `source` expect, and the
/// destination holds no page.
fn refused(
    src_key: Option<MigrationKey>,
    dst_key: Option<MigrationKey>,
    dest: fn(&MigrationError) -> bool,
    source: fn(&MigrationError) -> bool,
) {
    let (src, dst) = (
        source_guest(),
        GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap(),
    );
    let (r, d) = migrate(&src, &dst, src_key, dst_key, None);
    let (r, d) = (r.unwrap_err(), d.unwrap_err());
    assert!(dest(&d), "destination: {d}");
    assert!(source(&r), "source: {r}");
    assert!(untouched(&dst));
}

#[test]
fn test_wrong_key_is_refused_before_any_page() {
    refused(
        key(1),
        key(2),
        |d| matches!(d, MigrationError::Auth(AuthError::BadMac { seq: 0 })),
        |r| {
            let want = RejectReason::Unauthenticated;
            matches!(r, MigrationError::Auth(AuthError::Refused { reason }) if *reason == want)
        },
    );
}

#[test]
fn test_keyless_source_is_refused_by_a_keyed_destination() {
    refused(
        None,
        key(1),
        |d| {
            matches!(
                d,
                MigrationError::Auth(AuthError::PeerUnauthenticated { .. })
            )
        },
        |r| {
            let want = RejectReason::Unauthenticated;
            matches!(r, MigrationError::Rejected { reason, detail: 0 } if *reason == want)
        },
    );
}

#[test]
fn test_keyed_source_to_keyless_destination_says_so() {
    refused(
        key(1),
        None,
        |d| matches!(d, MigrationError::Auth(AuthError::PeerHasKey)),
        |r| matches!(r, MigrationError::Auth(AuthError::Refused { .. })),
    );
}

/// The bytes of a real keyed session, replayed to a new listener with the same key: refused at
/// the first record (the new listener's nonce makes new keys), and no page written.
#[test]
fn test_replayed_session_is_refused() {
    let (src, dst) = (
        source_guest(),
        GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap(),
    );
    let rec = Arc::new(Mutex::new(Vec::new()));
    let (r, d) = migrate(&src, &dst, key(1), key(1), Some(rec.clone()));
    r.unwrap();
    d.unwrap();
    let recording = rec.lock().unwrap().clone();
    assert!(
        recording.len() as u64 > PAGES / 3 * PAGE_SIZE,
        "{}",
        recording.len()
    );

    // Replay over TCP to a fresh keyed listener.
    let fresh = GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap();
    let listener = tcp_listen("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let replayer = std::thread::spawn(move || {
        let mut c = tcp_connect(addr, T).unwrap();
        // The listener stops reading at the first bad record: the rest may not go out.
        let _ = c.write_all(&recording);
        let mut heard = Vec::new();
        let _ = c.read_to_end(&mut heard);
        heard
    });
    let conn = tcp_accept(&listener, T).unwrap();
    let dcfg = DestConfig {
        key: key(1),
        ..DestConfig::default()
    };
    let e = Destination::new(&fresh, dcfg).receive(conn).unwrap_err();
    assert!(
        matches!(e, MigrationError::Auth(AuthError::BadMac { seq: 0 })),
        "{e}"
    );
    let heard = replayer.join().unwrap();
    // The listener's nonce (40 bytes), then a rejection; never its RAM size.
    assert_eq!(&heard[..8], b"VBAUTH1S");
    assert_eq!(heard.len(), 40 + 16, "{heard:?}");
    assert_eq!(&heard[40..44], b"VBRP");
    assert_eq!(heard[48..56], [0u8; 8], "the rejection carries no detail");
    assert!(untouched(&fresh));
}

#[test]
fn test_non_loopback_listener_needs_a_key_or_insecure() {
    let cfg = DestConfig {
        accept_timeout: Duration::from_millis(50),
        ..DestConfig::default()
    };
    let e = machine::listen("0.0.0.0:0", 1 << 20, Backing::Anonymous, cfg.clone()).unwrap_err();
    match e {
        Error::Migration(MigrationError::InsecureListener { addr }) => {
            assert!(addr.starts_with("0.0.0.0:"), "{addr}")
        }
        e => panic!("expected InsecureListener, got {e}"),
    }
    assert!(e_msg_mentions_key(&cfg));
    // With a key, or insecure, it listens (and times out waiting: nobody connects).
    for cfg in [
        DestConfig {
            key: key(3),
            ..cfg.clone()
        },
        DestConfig {
            insecure: true,
            ..cfg.clone()
        },
    ] {
        let e = machine::listen("0.0.0.0:0", 1 << 20, Backing::Anonymous, cfg).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Migration(MigrationError::Timeout { op: "accept", .. })
            ),
            "{e}"
        );
    }
    // Loopback needs neither.
    let e = machine::listen("127.0.0.1:0", 1 << 20, Backing::Anonymous, cfg).unwrap_err();
    assert!(
        matches!(e, Error::Migration(MigrationError::Timeout { .. })),
        "{e}"
    );
}

fn e_msg_mentions_key(cfg: &DestConfig) -> bool {
    let e = machine::listen("0.0.0.0:0", 1 << 20, Backing::Anonymous, cfg.clone()).unwrap_err();
    let msg = e.to_string();
    msg.contains("--key-file") && msg.contains("--insecure")
}

#[test]
fn test_key_file_and_short_keys() {
    let dir = std::env::temp_dir().join(format!("vb-key-{}", std::process::id()));
    std::fs::write(&dir, b"0123456789abcdef0123456789abcdef\n").unwrap();
    let k = MigrationKey::from_file(&dir).unwrap();
    assert_eq!(format!("{k:?}"), "MigrationKey(<32 bytes>)");
    std::fs::write(&dir, b"short\n").unwrap();
    assert!(matches!(
        MigrationKey::from_file(&dir),
        Err(AuthError::KeyTooShort { len: 5, min: 16 })
    ));
    std::fs::remove_file(&dir).unwrap();
    assert!(matches!(
        MigrationKey::from_file(&dir),
        Err(AuthError::KeyFile { .. })
    ));
}
