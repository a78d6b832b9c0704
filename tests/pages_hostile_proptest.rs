//! No input panics: junk, mutated messages and hostile hint blocks fed to every decoder.

mod pages_hostile_support;

use pages_hostile_support::*;
use proptest::prelude::*;
use vballoon::pages::auto::{self, AUTO_KIND_BITMAP, AUTO_KIND_EXTENTS};
use vballoon::pages::bitmap::ReqHeader;
use vballoon::pages::hint::{self, HintBlock};
use vballoon::pages::{decode, encode, Encoding, PageRange};

// ---- no input panics ------------------------------------------------------------------------

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Segments of arbitrary bytes, sometimes starting with a plausible header.
fn junk() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let head = prop_oneof![
        Just(vec![]),
        Just(auto::header(AUTO_KIND_BITMAP).to_vec()),
        Just(auto::header(AUTO_KIND_EXTENTS).to_vec()),
        (0u64..4096, 0u64..200).prop_map(|(s, l)| hdr(s, l).to_bytes().to_vec()),
    ];
    (
        head,
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..5),
    )
        .prop_map(|(h, mut segs)| {
            segs.insert(0, h);
            segs
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn prop_junk_never_panics_and_accepted_pages_are_in_ram(
        segs in junk(),
        max_pfn in prop_oneof![0u64..5000, Just(u64::MAX)],
    ) {
        for enc in Encoding::ALL {
            let mut seen = Vec::new();
            match decode(enc, &segs, max_pfn, &mut seen) {
                Ok(d) => {
                    prop_assert!(seen.iter().all(|r: &PageRange| r.len > 0 && r.start.checked_add(r.len).is_some_and(|e| e <= max_pfn)));
                    prop_assert_eq!(d.pages, seen.iter().map(|r| r.len).sum::<u64>());
                }
                Err(_) => prop_assert!(seen.is_empty()),
            }
        }
        let _ = ReqHeader::parse(&segs);
        let _ = hint::decode_cmd_id(&segs);
    }

    #[test]
    fn prop_mutated_messages_never_panic(
        runs in prop::collection::vec((0u64..3000, 1u64..5000), 1..6),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        max_pfn in 0u64..9000,
    ) {
        let ranges: Vec<PageRange> = runs.iter().map(|&r| r.into()).collect();
        for enc in Encoding::ALL {
            for m in encode(enc, &ranges).unwrap() {
                let mut bytes = m.concat();
                for &(at, x) in &flips {
                    let i = at % bytes.len();
                    bytes[i] ^= x;
                }
                let mut seen = Vec::new();
                if decode(enc, &[&bytes], max_pfn, &mut seen).is_ok() {
                    prop_assert!(seen.iter().all(|r: &PageRange| r.end() <= max_pfn));
                } else {
                    prop_assert!(seen.is_empty());
                }
            }
        }
    }

    #[test]
    fn prop_hostile_hint_blocks_never_panic(
        blocks in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        max_pfn in prop_oneof![0u64..5000, Just(u64::MAX)],
    ) {
        let blocks: Vec<HintBlock> = blocks.into_iter().map(HintBlock::from).collect();
        let mut seen = Vec::new();
        if hint::decode_blocks(&blocks, max_pfn, &mut seen).is_ok() {
            prop_assert!(seen.iter().all(|r: &PageRange| r.start.checked_add(r.len).is_some_and(|e| e <= max_pfn)));
        } else {
            prop_assert!(seen.is_empty());
        }
    }
}
