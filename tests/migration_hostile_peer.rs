//! A hostile migration source whose frames all pass the integrity checks (correct CRCs and
//! MACs): the destination must only ever return typed errors, never write a page no data record
//! carried, and never be held past its deadline by a peer that trickles bytes.

use std::io::Write;
use std::time::Duration;

use proptest::prelude::*;
use vballoon::memory::{Backing, GuestAddress, GuestMemory, PageRange, PAGE_SIZE};
use vballoon::migration::hostile::{self, Script};
use vballoon::migration::stream::{
    Header, StreamReader, StreamWriter, FLAG_HINTED, FRAME_HEADER_LEN, HEADER_LEN,
};
use vballoon::migration::{
    in_process_pair, DestConfig, Destination, MigrationError, RejectReason, StreamError,
};

const PAGES: u64 = 64;

fn fresh() -> GuestMemory {
    GuestMemory::new(PAGES * PAGE_SIZE, Backing::Anonymous).unwrap()
}

#[test]
fn test_seed_inputs_reach_the_end() {
    let mem = fresh();
    for (i, seed) in hostile::seed_inputs().iter().enumerate() {
        let o = hostile::run(seed, &mem);
        assert!(o.result.is_ok(), "seed {i}: {:?}", o.result);
        assert!(o.stray_pages.is_empty(), "seed {i}: {:?}", o.stray_pages);
    }
    // The first seed writes two pages of 0xab... and the harness saw them.
    let s = Script::from_bytes(&hostile::seed_inputs()[0], PAGES);
    assert_eq!(s.nonzero.len(), 1);
}

/// One batch of in-range zero runs whose counts add up past u64, with a correct CRC: a typed
/// overflow error from the reader, not a panic (this once panicked the destination).
#[test]
fn test_zero_runs_adding_past_u64_are_a_typed_error() {
    let h = Header {
        guest_size: 1 << 62,
        flags: 0,
    };
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&h);
    w.write_header(&mut out, &h).unwrap();
    // 2^14 runs of 2^50 pages, each the whole (announced) guest: 2^64 pages in one batch.
    for _ in 0..1 << 14 {
        w.zero_run(&mut out, PageRange::new(0, 1 << 50)).unwrap();
    }
    w.finish(&mut out).unwrap();
    let mut r: &[u8] = &out;
    let mut reader = StreamReader::start(&mut r, Duration::from_secs(1)).unwrap();
    let e = reader.next_frame(&mut r).unwrap_err();
    assert!(
        matches!(
            e,
            MigrationError::Stream(StreamError::CountOverflow {
                field: "zero pages",
                frame: 0
            })
        ),
        "{e}"
    );
    assert!(out.len() > HEADER_LEN + FRAME_HEADER_LEN);
}

#[test]
fn test_destination_requires_the_same_guest_size() {
    // Sizes differ: smaller is refused with a typed error, and nothing is written.
    let mem = fresh();
    let small = GuestMemory::new(32 * PAGE_SIZE, Backing::Anonymous).unwrap();
    let (mut a, b) = in_process_pair(Duration::from_secs(5)).unwrap();
    let h = Header {
        guest_size: small.size(),
        flags: FLAG_HINTED,
    };
    let t = std::thread::spawn(move || {
        let mut w = StreamWriter::new(&h);
        let _ = w.write_header(&mut a, &h);
        let _ = w.data(&mut a, 1, &[9u8; 4096]);
        let _ = w.finish(&mut a);
        let mut reply = [0u8; 16];
        let _ = std::io::Read::read_exact(&mut a, &mut reply);
        reply
    });
    let e = Destination::new(&mem, DestConfig::default())
        .receive(b)
        .unwrap_err();
    assert!(
        matches!(
            e,
            MigrationError::GuestSizeMismatch { source_size, dest_size }
                if source_size == 32 * PAGE_SIZE && dest_size == PAGES * PAGE_SIZE
        ),
        "{e}"
    );
    let reply = t.join().unwrap();
    assert_eq!(&reply[..4], b"VBRP");
    assert_eq!(u32::from_le_bytes(reply[4..8].try_into().unwrap()), 21);
    assert_eq!(
        RejectReason::SizeMismatch.to_string(),
        "guest size differs from the destination's"
    );
    assert!(mem.is_zero(GuestAddress(0), mem.size()).unwrap());
}

/// A peer that sends one byte every 50 ms never trips the 1 s per-read timeout, but the
/// destination's overall deadline (1.5 s) ends it anyway.
#[test]
fn test_trickling_peer_hits_the_deadline() {
    let mem = fresh();
    let (mut a, b) = in_process_pair(Duration::from_secs(5)).unwrap();
    let h = Header {
        guest_size: mem.size(),
        flags: 0,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut w = StreamWriter::new(&h);
        w.write_header(&mut bytes, &h).unwrap();
        w.round(&mut bytes, 1).unwrap();
        for pfn in 0..PAGES {
            w.data(&mut bytes, pfn, &[1u8; 4096]).unwrap();
        }
        w.finish(&mut bytes).unwrap();
        let mut sent = 0;
        for byte in bytes {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) || a.write_all(&[byte]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        sent
    });
    let cfg = DestConfig {
        io_timeout: Duration::from_secs(1),
        deadline: Duration::from_millis(1500),
        ..DestConfig::default()
    };
    let e = Destination::new(&mem, cfg).receive(b).unwrap_err();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = t.join().unwrap();
    assert!(
        matches!(e, MigrationError::DeadlineExceeded { after, .. } if after == Duration::from_millis(1500)),
        "{e}"
    );
    // It was a trickle, not a stall: many bytes arrived, each within the per-read timeout.
    assert!(sent > 5, "{sent}");
    assert!(mem.is_zero(GuestAddress(0), mem.size()).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Arbitrary structured frames with valid CRCs and MACs: only typed errors, and no page
    /// holds data no data record carried.
    #[test]
    fn test_hostile_frames_only_typed_errors(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let mem = fresh();
        let o = hostile::run(&data, &mem);
        prop_assert!(o.stray_pages.is_empty(), "{:?}", o.stray_pages);
        if o.result.is_err() {
            // On any error the destination gives all of its RAM back.
            let res = mem.residency(GuestAddress(0), mem.size()).unwrap();
            prop_assert!(res.iter().all(|r| r & 1 == 0));
        }
    }

    /// The seeds with bytes changed: mostly near-valid streams, where the deep checks run.
    #[test]
    fn test_mutated_seeds_only_typed_errors(
        which in 0usize..3,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut data = hostile::seed_inputs()[which].clone();
        for (at, v) in edits {
            let n = data.len();
            data[at % n] = v;
        }
        let mem = fresh();
        let o = hostile::run(&data, &mem);
        prop_assert!(o.stray_pages.is_empty(), "{:?}", o.stray_pages);
    }
}

/// Writes the seed inputs for the fuzz target:
/// `cargo test --no-default-features --test migration_hostile_peer write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/migration_dest");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in hostile::seed_inputs().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
    }
}
