//! Property tests of the migration stream: decode(encode(records)) == records, and arbitrary
//! corruption or truncation is a typed error, never a panic.

use std::io::Read;
use std::time::Duration;

use proptest::prelude::*;
use vballoon::memory::PageRange;
use vballoon::migration::stream::{Frame, Header, Record, StreamReader, StreamWriter};
use vballoon::migration::MigrationError;

const GUEST_PAGES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    Data(u64, u8),
    Zero(u64, u64),
    Round,
}

fn rec() -> impl Strategy<Value = Rec> {
    prop_oneof![
        4 => (0..GUEST_PAGES, any::<u8>()).prop_map(|(p, b)| Rec::Data(p, b)),
        4 => (0..GUEST_PAGES - 1).prop_flat_map(|p| (Just(p), 1..=GUEST_PAGES - p))
            .prop_map(|(p, n)| Rec::Zero(p, n)),
        1 => Just(Rec::Round),
    ]
}

fn encode(recs: &[Rec]) -> Vec<u8> {
    let h = Header {
        guest_size: GUEST_PAGES * 4096,
        flags: 0,
    };
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&h);
    w.write_header(&mut out, &h).unwrap();
    let mut round = 0;
    for r in recs {
        match *r {
            Rec::Data(p, b) => w.data(&mut out, p, &[b; 4096]).unwrap(),
            Rec::Zero(p, n) => w.zero_run(&mut out, PageRange::new(p, n)).unwrap(),
            Rec::Round => {
                round += 1;
                w.round(&mut out, round).unwrap()
            }
        }
    }
    w.finish(&mut out).unwrap();
    out
}

fn decode(mut bytes: &[u8]) -> Result<Vec<Rec>, MigrationError> {
    let r: &mut dyn Read = &mut bytes;
    let mut s = StreamReader::start(r, Duration::from_secs(1))?;
    let mut out = Vec::new();
    loop {
        match s.next_frame(r)? {
            Frame::Batch(b) => {
                for rec in b.records() {
                    out.push(match rec {
                        Record::Data { pfn, bytes } => {
                            assert!(bytes.iter().all(|&x| x == bytes[0]));
                            Rec::Data(pfn, bytes[0])
                        }
                        Record::Zero(r) => Rec::Zero(r.start, r.len),
                    })
                }
            }
            Frame::Round(_) => out.push(Rec::Round),
            Frame::End(_) => {
                s.expect_eof(r)?;
                return Ok(out);
            }
            // Streams without the verify flag never carry these.
            Frame::Verify(_) | Frame::VerifyEnd(_) => unreachable!("no verify trailer"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(recs in proptest::collection::vec(rec(), 0..400)) {
        prop_assert_eq!(decode(&encode(&recs)).unwrap(), recs);
    }

    #[test]
    fn prop_any_single_bit_flip_is_detected(
        recs in proptest::collection::vec(rec(), 1..50),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut b = encode(&recs);
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
        let b = encode(&recs);
        let cut = pos.index(b.len());
        let e = decode(&b[..cut]).unwrap_err();
        prop_assert!(matches!(e, MigrationError::Stream(_)), "{}", e);
    }

    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode(&bytes);
    }
}
