//! Round trips and rejections of the stream codec: fixed streams, then property tests
//! (decode(encode(records)) == records; any corruption or truncation is a typed error).

use proptest::prelude::*;

use super::*;

fn page(b: u8) -> [u8; PAGE] {
    [b; PAGE]
}

/// A writer for a 64-page guest with `flags`, and its output up to the first round marker.
fn start(flags: u64) -> (StreamWriter, Vec<u8>) {
    let h = Header {
        guest_size: 64 * PAGE_SIZE,
        flags,
    };
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&h);
    w.write_header(&mut out, &h).unwrap();
    w.round(&mut out, 1).unwrap();
    (w, out)
}

fn sample() -> Vec<u8> {
    let (mut w, mut out) = start(FLAG_HINTED);
    w.data(&mut out, 3, &page(0xaa)).unwrap();
    w.zero_run(&mut out, PageRange::new(4, 60)).unwrap();
    w.round(&mut out, 2).unwrap();
    w.data(&mut out, 63, &page(1)).unwrap();
    let t = w.finish(&mut out).unwrap();
    assert_eq!(t.bytes + (FRAME_HEADER_LEN as u64 + 40), out.len() as u64);
    out
}

fn decode(mut bytes: &[u8]) -> Result<Vec<String>, MigrationError> {
    let r: &mut dyn Read = &mut bytes;
    let mut s = StreamReader::start(r, Duration::from_secs(1))?;
    let mut log = Vec::new();
    loop {
        match s.next_frame(r)? {
            Frame::Batch(b) => {
                for rec in b.records() {
                    log.push(match rec {
                        Record::Data { pfn, bytes } => {
                            assert!(bytes.iter().all(|&x| x == bytes[0]), "one byte per page");
                            format!("d{pfn}:{}", bytes[0])
                        }
                        Record::Zero(r) => format!("z{}+{}", r.start, r.len),
                    })
                }
            }
            Frame::Round(n) => log.push(format!("r{n}")),
            Frame::End(t) => {
                log.push(format!("end{}", t.data_pages));
                if s.header().flags & FLAG_VERIFY == 0 {
                    s.expect_eof(r)?;
                    return Ok(log);
                }
            }
            Frame::Verify(b) => {
                for run in b.runs() {
                    for (pfn, sum) in run.pages() {
                        log.push(format!("v{}:{sum}", pfn.0));
                    }
                }
            }
            Frame::VerifyEnd(n) => {
                log.push(format!("vend{n}"));
                s.expect_eof(r)?;
                return Ok(log);
            }
        }
    }
}

#[test]
fn test_round_trip() {
    assert_eq!(
        decode(&sample()).unwrap(),
        ["r1", "d3:170", "z4+60", "r2", "d63:1", "end2"]
    );
}

fn stream_err(bytes: &[u8]) -> StreamError {
    match decode(bytes) {
        Err(MigrationError::Stream(e)) => e,
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[test]
fn test_decoder_rejects_bad_input() {
    let good = sample();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(stream_err(&b), StreamError::BadMagic { .. }));
    let mut b = good.clone();
    b[8] = 2;
    assert!(matches!(
        stream_err(&b),
        StreamError::UnsupportedVersion { found: 2, .. }
    ));
    // A page size of 8192 with a recomputed header CRC.
    let mut b = good.clone();
    b[12..16].copy_from_slice(&8192u32.to_le_bytes());
    let crc = crc32c(&b[..36]);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        stream_err(&b),
        StreamError::BadPageSize { found: 8192, .. }
    ));
    // One flipped bit in the first data page.
    let mut b = good.clone();
    b[HEADER_LEN + 24 + FRAME_HEADER_LEN + 100] ^= 4;
    assert!(matches!(
        stream_err(&b),
        StreamError::ChecksumMismatch {
            what: "frame",
            frame: 1,
            ..
        }
    ));
    // Cut short anywhere: always a truncation, never a panic.
    for cut in [
        0,
        10,
        HEADER_LEN,
        HEADER_LEN + 5,
        HEADER_LEN + 30,
        good.len() - 1,
    ] {
        assert!(
            matches!(stream_err(&good[..cut]), StreamError::Truncated { .. }),
            "cut at {cut}"
        );
    }
    // Trailing garbage.
    let mut b = good.clone();
    b.push(0);
    assert_eq!(stream_err(&b), StreamError::TrailingBytes);
}

#[test]
fn test_decoder_rejects_pfn_outside_guest() {
    let (mut w, mut out) = start(0);
    w.zero_run(&mut out, PageRange::new(60, 5)).unwrap();
    w.finish(&mut out).unwrap();
    assert_eq!(
        stream_err(&out),
        StreamError::PfnOutOfRange {
            pfn: 60,
            count: 5,
            guest_pages: 64
        }
    );
}

fn with_trailer(flags: u64, sums: &[(u64, Vec<u64>)], forge: Option<VerifyTotals>) -> Vec<u8> {
    let (mut w, mut out) = start(flags);
    w.zero_run(&mut out, PageRange::new(0, 64)).unwrap();
    w.finish(&mut out).unwrap();
    for (first, s) in sums {
        w.verify_pages(&mut out, *first, s).unwrap();
    }
    if let Some(v) = forge {
        w.verify = v;
    }
    w.finish_verify(&mut out).unwrap();
    out
}

#[test]
fn test_verify_trailer_round_trip_and_rejections() {
    let sums = [(3, vec![7, 8]), (60, vec![9; 4])];
    let good = with_trailer(FLAG_VERIFY, &sums, None);
    assert_eq!(
        decode(&good).unwrap(),
        ["r1", "z0+64", "end0", "v3:7", "v4:8", "v60:9", "v61:9", "v62:9", "v63:9", "vend6"]
    );
    // Without the flag nothing may follow the end frame.
    let e = stream_err(&with_trailer(0, &sums, None));
    assert_eq!(e, StreamError::TrailingBytes);
    // Pages past the guest, and an end frame that miscounts.
    let e = stream_err(&with_trailer(FLAG_VERIFY, &[(62, vec![1; 3])], None));
    assert!(
        matches!(
            e,
            StreamError::PfnOutOfRange {
                pfn: 62,
                count: 3,
                ..
            }
        ),
        "{e:?}"
    );
    let e = stream_err(&with_trailer(
        FLAG_VERIFY,
        &sums,
        Some(VerifyTotals {
            pages: 5,
            frames: 1,
        }),
    ));
    assert!(matches!(e, StreamError::TotalsMismatch { .. }), "{e:?}");
    // Long runs are cut into records that fit a batch.
    let long = vec![(0, (0..64).collect::<Vec<u64>>())];
    assert_eq!(
        decode(&with_trailer(FLAG_VERIFY, &long, None))
            .unwrap()
            .len(),
        68
    );
}

#[test]
fn test_dropped_frame_is_caught_by_the_totals() {
    let good = sample();
    // Remove the second round marker (frame 2) entirely; each frame is still intact.
    let start = HEADER_LEN + 24 + FRAME_HEADER_LEN + DATA_RECORD_LEN + ZERO_RECORD_LEN;
    let mut b = good[..start].to_vec();
    b.extend_from_slice(&good[start + 24..]);
    let e = stream_err(&b);
    assert!(matches!(e, StreamError::TotalsMismatch { .. }), "{e:?}");
}

const PROP_PAGES: u64 = 1 << 20;

/// A record of a property test: a page filled with one byte, a zero run, a round marker.
#[derive(Clone, Debug)]
enum Rec {
    Data(u64, u8),
    Zero(u64, u64),
    Round,
}

fn rec() -> impl Strategy<Value = Rec> {
    prop_oneof![
        4 => (0..PROP_PAGES, any::<u8>()).prop_map(|(p, b)| Rec::Data(p, b)),
        4 => (0..PROP_PAGES - 1).prop_flat_map(|p| (Just(p), 1..=PROP_PAGES - p))
            .prop_map(|(p, n)| Rec::Zero(p, n)),
        1 => Just(Rec::Round),
    ]
}

/// The stream of `recs`, and what [`decode`] must log for it.
fn encode(recs: &[Rec]) -> (Vec<u8>, Vec<String>) {
    let h = Header {
        guest_size: PROP_PAGES * PAGE_SIZE,
        flags: 0,
    };
    let (mut out, mut log) = (Vec::new(), Vec::new());
    let mut w = StreamWriter::new(&h);
    w.write_header(&mut out, &h).unwrap();
    let (mut round, mut data) = (0, 0);
    for r in recs {
        match *r {
            Rec::Data(p, b) => {
                w.data(&mut out, p, &page(b)).unwrap();
                log.push(format!("d{p}:{b}"));
                data += 1;
            }
            Rec::Zero(p, n) => {
                w.zero_run(&mut out, PageRange::new(p, n)).unwrap();
                log.push(format!("z{p}+{n}"));
            }
            Rec::Round => {
                round += 1;
                w.round(&mut out, round).unwrap();
                log.push(format!("r{round}"));
            }
        }
    }
    w.finish(&mut out).unwrap();
    log.push(format!("end{data}"));
    (out, log)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(recs in proptest::collection::vec(rec(), 0..400)) {
        let (bytes, log) = encode(&recs);
        prop_assert_eq!(decode(&bytes).unwrap(), log);
    }

    #[test]
    fn prop_any_single_bit_flip_is_detected(
        recs in proptest::collection::vec(rec(), 1..50),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut b = encode(&recs).0;
        let at = pos.index(b.len());
        b[at] ^= 1 << bit;
        // CRC-32C catches every single-bit error: decoding must fail, with a typed error.
        prop_assert!(decode(&b).is_err());
    }

    #[test]
    fn prop_truncation_is_an_error(
        recs in proptest::collection::vec(rec(), 1..50),
        pos in any::<prop::sample::Index>(),
    ) {
        let b = encode(&recs).0;
        let cut = pos.index(b.len());
        let e = decode(&b[..cut]).unwrap_err();
        prop_assert!(matches!(e, MigrationError::Stream(_)), "{}", e);
    }

    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode(&bytes);
    }
}
