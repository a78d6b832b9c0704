//! Hostile input: every malformed message is rejected with its own typed error, before the
//! sink sees a page, and no input panics.

use proptest::prelude::*;
use vballoon::pages::auto::{self, AUTO_KIND_BITMAP, AUTO_KIND_EXTENTS};
use vballoon::pages::bitmap::{self, BmapHeader, ReqHeader, MAX_BMAP_LEN, WINDOW_PFNS};
use vballoon::pages::extents::{self, EXTENTS_MAX_MESSAGE_LEN, EXTENT_PFN_LIMIT};
use vballoon::pages::hint::{self, HintBlock, HINT_BLOCK_ORDER};
use vballoon::pages::pfn::{self, PFN_LIMIT};
use vballoon::pages::{decode, encode, Encoding, PageSet, PagesError};

const RAM: u64 = 1 << 18; // 1 GiB of pages

/// Decodes into a fresh recorder; asserts the sink saw nothing if the message was rejected.
fn try_decode(enc: Encoding, segs: &[&[u8]], max_pfn: u64) -> Result<Vec<(u64, u64)>, PagesError> {
    let mut seen = Vec::new();
    let r = decode(enc, segs, max_pfn, &mut seen);
    if r.is_err() {
        assert!(
            seen.is_empty(),
            "{enc}: sink saw {seen:?} from a rejected message"
        );
    }
    r.map(|_| seen)
}

fn le32s(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn le64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn bmap(h: BmapHeader, body: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn hdr(start_pfn: u64, bmap_len: u64) -> BmapHeader {
    BmapHeader {
        start_pfn,
        bmap_len,
        ..BmapHeader::RESIZE
    }
}

// ---- pfn arrays -----------------------------------------------------------------------------

#[test]
fn test_pfn_array_length_not_multiple_of_4() {
    let b = le32s(&[1, 2]);
    assert_eq!(
        try_decode(Encoding::Pfn, &[&b[..7]], RAM),
        Err(PagesError::PfnArrayLength { len: 7 })
    );
}

#[test]
fn test_pfn_array_with_257_pfns() {
    let b = le32s(&[1; 257]);
    assert_eq!(
        try_decode(Encoding::Pfn, &[&b], RAM),
        Err(PagesError::TooManyPfns {
            count: 257,
            max: 256
        })
    );
}

#[test]
fn test_pfn_outside_ram() {
    let b = le32s(&[1, RAM as u32, 2]);
    assert_eq!(
        try_decode(Encoding::Pfn, &[&b], RAM),
        Err(PagesError::PageOutsideRam {
            pfn: RAM,
            max_pfn: RAM
        })
    );
}

#[test]
fn test_pfn_past_sink_limit_even_if_inside_max_pfn() {
    let b = le32s(&[100]);
    let mut small = PageSet::new(100);
    assert_eq!(
        pfn::decode(&[&b], RAM, &mut small),
        Err(PagesError::PageOutsideRam {
            pfn: 100,
            max_pfn: 100
        })
    );
}

#[test]
fn test_pfn_encoder_refuses_pfn_of_2_pow_32() {
    let runs = [(5, 1), (PFN_LIMIT - 1, 2)];
    assert_eq!(
        encode(Encoding::Pfn, &runs[..]),
        Err(PagesError::PfnTooLarge {
            pfn: PFN_LIMIT,
            limit: PFN_LIMIT
        })
    );
}

#[test]
fn test_encoder_refuses_overflowing_run() {
    for enc in Encoding::ALL {
        assert_eq!(
            encode(enc, &[(u64::MAX - 1, 5)][..]),
            Err(PagesError::RunOverflow {
                pfn: u64::MAX - 1,
                len: 5
            }),
            "{enc}"
        );
    }
}

#[test]
fn test_empty_pfn_array_is_no_pages() {
    assert_eq!(try_decode(Encoding::Pfn, &[], RAM), Ok(vec![]));
}

// ---- v3 bitmap ------------------------------------------------------------------------------

#[test]
fn test_bitmap_header_truncated() {
    let b = bmap(hdr(0, 0), &[]);
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b[..20], &b[20..31]], RAM),
        Err(PagesError::BitmapHeaderTruncated { len: 31, need: 32 })
    );
}

#[test]
fn test_bitmap_page_shift_other_than_12() {
    let b = bmap(
        BmapHeader {
            page_shift: 16,
            ..hdr(0, 8)
        },
        &[1; 8],
    );
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], RAM),
        Err(PagesError::BadPageShift {
            page_shift: 16,
            expected: 12
        })
    );
}

#[test]
fn test_bitmap_unknown_cmd() {
    let b = bmap(
        BmapHeader {
            cmd: 3,
            ..hdr(0, 8)
        },
        &[1; 8],
    );
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], RAM),
        Err(PagesError::BadBitmapCommand { cmd: 3 })
    );
}

#[test]
fn test_bitmap_flag_neither_cont_nor_done() {
    let b = bmap(
        BmapHeader {
            flag: 2,
            ..hdr(0, 8)
        },
        &[1; 8],
    );
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], RAM),
        Err(PagesError::BadBitmapFlag { flag: 2 })
    );
}

#[test]
fn test_bitmap_len_longer_than_segments() {
    let h = hdr(0, 16).to_bytes();
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&h, &[0xff; 8]], RAM),
        Err(PagesError::BitmapLengthMismatch {
            bmap_len: 16,
            body_len: 8
        })
    );
}

#[test]
fn test_bitmap_len_shorter_than_segments() {
    let h = hdr(0, 8).to_bytes();
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&h, &[0xff; 8], &[0xff; 8]], RAM),
        Err(PagesError::BitmapLengthMismatch {
            bmap_len: 8,
            body_len: 16
        })
    );
}

#[test]
fn test_bitmap_len_past_32_pieces() {
    let h = hdr(0, u64::MAX).to_bytes();
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&h], RAM),
        Err(PagesError::BitmapTooLong {
            bmap_len: u64::MAX,
            max: MAX_BMAP_LEN
        })
    );
    // 33 real pieces are refused too, with bmap_len telling the truth.
    let body = vec![0u8; MAX_BMAP_LEN as usize + 8];
    let b = bmap(hdr(0, body.len() as u64), &body);
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], u64::MAX),
        Err(PagesError::BitmapTooLong {
            bmap_len: MAX_BMAP_LEN + 8,
            max: MAX_BMAP_LEN
        })
    );
}

#[test]
fn test_bitmap_bit_past_end_of_ram() {
    // The window's last word reaches 64 pages past RAM; a bit set in that padding is refused.
    let body = le64s(&[u64::MAX, 1 << 6]);
    let b = bmap(hdr(RAM - 64, 16), &body);
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], RAM),
        Err(PagesError::PageOutsideRam {
            pfn: RAM + 6,
            max_pfn: RAM
        })
    );
}

#[test]
fn test_bitmap_window_starting_past_ram() {
    let b = bmap(hdr(RAM + 64, 8), &[0, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], RAM),
        Err(PagesError::PageOutsideRam {
            pfn: RAM + 64 + 16,
            max_pfn: RAM
        })
    );
    // A zero bitmap there names no page and is harmless.
    let b = bmap(hdr(RAM + 64, 8), &[0; 8]);
    assert_eq!(try_decode(Encoding::Bitmap, &[&b], RAM), Ok(vec![]));
}

#[test]
fn test_bitmap_start_pfn_overflows() {
    let b = bmap(hdr(u64::MAX - 10, 8), &[0; 8]);
    assert_eq!(
        try_decode(Encoding::Bitmap, &[&b], u64::MAX),
        Err(PagesError::RunOverflow {
            pfn: u64::MAX - 10,
            len: 64
        })
    );
}

#[test]
fn test_bitmap_odd_splits_and_byte_lengths_decode() {
    // v3's unused-page path may send a bmap_len that is not a multiple of 8.
    let b = bmap(hdr(64, 3), &[0x80, 0x01, 0xff]);
    let segs: [&[u8]; 4] = [&b[..5], &b[5..33], &[], &b[33..]];
    assert_eq!(
        try_decode(Encoding::Bitmap, &segs, RAM),
        Ok(vec![(64 + 7, 2), (80, 8)])
    );
}

#[test]
fn test_req_header_wrong_length() {
    let b = ReqHeader::get_unused_pages(7).to_bytes();
    assert_eq!(
        ReqHeader::parse(&[&b[..], &[0]]),
        Err(PagesError::ReqHeaderLength {
            len: 17,
            expected: 16
        })
    );
    assert_eq!(
        ReqHeader::parse(&[&b[..15]]),
        Err(PagesError::ReqHeaderLength {
            len: 15,
            expected: 16
        })
    );
}

#[test]
fn test_bitmap_encoder_refuses_pfn_of_2_pow_52() {
    assert_eq!(
        encode(Encoding::Bitmap, &[(1 << 52, 1)][..]),
        Err(PagesError::PfnTooLarge {
            pfn: 1 << 52,
            limit: 1 << 52
        })
    );
}

// ---- extents --------------------------------------------------------------------------------

#[test]
fn test_extents_length_not_multiple_of_8() {
    let b = le64s(&[(5 << 12) | 1]);
    assert_eq!(
        try_decode(Encoding::Extents, &[&b, &[0; 4]], RAM),
        Err(PagesError::ExtentsLength { len: 12 })
    );
}

#[test]
fn test_extents_message_longer_than_32k() {
    let b = vec![0u8; EXTENTS_MAX_MESSAGE_LEN + 8];
    assert_eq!(
        try_decode(Encoding::Extents, &[&b], RAM),
        Err(PagesError::ExtentsTooLong {
            len: EXTENTS_MAX_MESSAGE_LEN + 8,
            max: EXTENTS_MAX_MESSAGE_LEN
        })
    );
}

#[test]
fn test_extents_long_record_without_length_word() {
    let b = le64s(&[(5 << 12) | 1, 9 << 12]);
    assert_eq!(
        try_decode(Encoding::Extents, &[&b], RAM),
        Err(PagesError::ExtentTruncated { offset: 8 })
    );
}

#[test]
fn test_extents_zero_length_long_record() {
    let b = le64s(&[(5 << 12) | 1, 9 << 12, 0]);
    assert_eq!(
        try_decode(Encoding::Extents, &[&b], RAM),
        Err(PagesError::ZeroLengthExtent { pfn: 9, offset: 8 })
    );
}

#[test]
fn test_extents_pfn_plus_len_overflows() {
    let pfn = EXTENT_PFN_LIMIT - 1;
    let b = le64s(&[pfn << 12, u64::MAX]);
    assert_eq!(
        try_decode(Encoding::Extents, &[&b], u64::MAX),
        Err(PagesError::RunOverflow { pfn, len: u64::MAX })
    );
}

#[test]
fn test_extents_run_past_end_of_ram() {
    let b = le64s(&[(5 << 12) | 1, ((RAM - 2) << 12) | 3]);
    assert_eq!(
        try_decode(Encoding::Extents, &[&b], RAM),
        Err(PagesError::PageOutsideRam {
            pfn: RAM,
            max_pfn: RAM
        })
    );
}

#[test]
fn test_extents_encoder_refuses_pfn_of_2_pow_52() {
    assert_eq!(
        extents::encode(&[(EXTENT_PFN_LIMIT, 1)][..]),
        Err(PagesError::PfnTooLarge {
            pfn: EXTENT_PFN_LIMIT,
            limit: EXTENT_PFN_LIMIT
        })
    );
}

#[test]
fn test_extents_non_canonical_long_record_is_accepted() {
    let b = le64s(&[7 << 12, 3]);
    assert_eq!(try_decode(Encoding::Extents, &[&b], RAM), Ok(vec![(7, 3)]));
}

// ---- auto -----------------------------------------------------------------------------------

#[test]
fn test_auto_header_truncated() {
    assert_eq!(
        try_decode(Encoding::Auto, &[&[AUTO_KIND_EXTENTS, 0, 0]], RAM),
        Err(PagesError::AutoHeaderTruncated { len: 3, need: 8 })
    );
}

#[test]
fn test_auto_unknown_kind() {
    assert_eq!(
        try_decode(Encoding::Auto, &[&auto::header(9)], RAM),
        Err(PagesError::UnknownAutoKind { kind: 9 })
    );
}

#[test]
fn test_auto_reserved_byte_set() {
    let mut h = auto::header(AUTO_KIND_EXTENTS);
    h[5] = 0x40;
    assert_eq!(
        try_decode(Encoding::Auto, &[&h], RAM),
        Err(PagesError::AutoReserved {
            offset: 5,
            value: 0x40
        })
    );
}

#[test]
fn test_auto_body_errors_are_the_body_decoders() {
    let body = bmap(
        BmapHeader {
            page_shift: 13,
            ..hdr(0, 0)
        },
        &[],
    );
    assert_eq!(
        try_decode(
            Encoding::Auto,
            &[&auto::header(AUTO_KIND_BITMAP), &body],
            RAM
        ),
        Err(PagesError::BadPageShift {
            page_shift: 13,
            expected: 12
        })
    );
    let body = le64s(&[(RAM << 12) | 1]);
    assert_eq!(
        try_decode(
            Encoding::Auto,
            &[&auto::header(AUTO_KIND_EXTENTS), &body],
            RAM
        ),
        Err(PagesError::PageOutsideRam {
            pfn: RAM,
            max_pfn: RAM
        })
    );
}

// ---- free page hint blocks ------------------------------------------------------------------

fn block(addr: u64, len: u64) -> HintBlock {
    HintBlock { addr, len }
}

#[test]
fn test_hint_block_address_not_page_aligned() {
    assert_eq!(
        hint::decode_block(block(0x1800, 0x1000), RAM),
        Err(PagesError::HintNotPageAligned {
            addr: 0x1800,
            len: 0x1000
        })
    );
}

#[test]
fn test_hint_block_length_not_page_aligned() {
    assert_eq!(
        hint::decode_block(block(0x1000, 0x1001), RAM),
        Err(PagesError::HintNotPageAligned {
            addr: 0x1000,
            len: 0x1001
        })
    );
}

#[test]
fn test_hint_block_empty() {
    assert_eq!(
        hint::decode_block(block(0x1000, 0), RAM),
        Err(PagesError::EmptyHint { addr: 0x1000 })
    );
}

#[test]
fn test_hint_block_overflows() {
    let addr = u64::MAX - 0xfff;
    assert_eq!(
        hint::decode_block(block(addr, 0x2000), u64::MAX),
        Err(PagesError::HintOverflow { addr, len: 0x2000 })
    );
}

#[test]
fn test_hint_block_outside_ram() {
    let bad = [block(0, 0x1000), block((RAM - 1) << 12, 0x2000)];
    let mut seen = Vec::new();
    assert_eq!(
        hint::decode_blocks(&bad, RAM, &mut seen),
        Err(PagesError::PageOutsideRam {
            pfn: RAM,
            max_pfn: RAM
        })
    );
    assert!(seen.is_empty());
}

#[test]
fn test_hint_cmd_id_wrong_length() {
    assert_eq!(
        hint::decode_cmd_id(&[[0u8; 8]]),
        Err(PagesError::CmdIdLength {
            len: 8,
            expected: 4
        })
    );
}

#[test]
fn test_hint_bad_block_orders() {
    let set = PageSet::new(10);
    assert_eq!(
        hint::blocks(&set, HINT_BLOCK_ORDER, 3).map(|_| ()),
        Err(PagesError::BadBlockOrder {
            min: 10,
            max: 3,
            limit: 40
        })
    );
    assert_eq!(
        hint::blocks(&set, 0, 41).map(|_| ()),
        Err(PagesError::BadBlockOrder {
            min: 0,
            max: 41,
            limit: 40
        })
    );
}

// ---- names and raw words --------------------------------------------------------------------

#[test]
fn test_unknown_encoding_name() {
    assert_eq!(
        "hybrid".parse::<Encoding>(),
        Err(PagesError::UnknownEncoding {
            name: "hybrid".into()
        })
    );
}

#[test]
fn test_page_set_from_wrong_word_count() {
    assert_eq!(
        PageSet::from_words(129, vec![0; 2]),
        Err(PagesError::WordCount {
            words: 2,
            npages: 129
        })
    );
}

#[test]
fn test_error_messages_carry_values() {
    let e = PagesError::PageOutsideRam {
        pfn: 0x40000,
        max_pfn: 0x40000,
    };
    assert_eq!(
        e.to_string(),
        "page 0x40000 lies outside guest RAM of 0x40000 pages"
    );
}

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
                    prop_assert!(seen.iter().all(|&(s, l)| l > 0 && s.checked_add(l).is_some_and(|e| e <= max_pfn)));
                    prop_assert_eq!(d.pages, seen.iter().map(|r| r.1).sum::<u64>());
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
        for enc in Encoding::ALL {
            for m in encode(enc, &runs).unwrap() {
                let mut bytes = m.concat();
                for &(at, x) in &flips {
                    let i = at % bytes.len();
                    bytes[i] ^= x;
                }
                let mut seen = Vec::new();
                if decode(enc, &[&bytes], max_pfn, &mut seen).is_ok() {
                    prop_assert!(seen.iter().all(|&(s, l)| s + l <= max_pfn));
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
            prop_assert!(seen.iter().all(|&(s, l)| s.checked_add(l).is_some_and(|e| e <= max_pfn)));
        } else {
            prop_assert!(seen.is_empty());
        }
    }
}

#[test]
fn test_window_sized_bitmap_in_guest_of_exactly_32_gib() {
    // A full window with every page set decodes as one run and stays inside RAM.
    let body = vec![0xffu8; MAX_BMAP_LEN as usize];
    let b = bmap(hdr(0, MAX_BMAP_LEN), &body);
    let pieces: Vec<&[u8]> = b[32..].chunks(32 << 10).collect();
    let mut segs: Vec<&[u8]> = vec![&b[..32]];
    segs.extend(pieces);
    assert_eq!(
        try_decode(Encoding::Bitmap, &segs, WINDOW_PFNS),
        Ok(vec![(0, WINDOW_PFNS)])
    );
    assert_eq!(
        try_decode(Encoding::Bitmap, &segs, WINDOW_PFNS - 1),
        Err(PagesError::PageOutsideRam {
            pfn: WINDOW_PFNS - 1,
            max_pfn: WINDOW_PFNS - 1
        })
    );
}

#[test]
fn test_bitmap_module_decode_returns_the_header() {
    let set = PageSet::from_runs(RAM, [(70, 3)]).unwrap();
    let msgs = bitmap::encode_unused_reply(&set, 42).unwrap();
    let mut back = PageSet::new(RAM);
    let h = bitmap::decode(&msgs[0].segments, RAM, &mut back).unwrap();
    assert_eq!((h.req_id, h.flag, h.start_pfn, h.bmap_len), (42, 1, 64, 8));
    assert_eq!(back, set);
}
