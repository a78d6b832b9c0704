//! Hostile input: every malformed message is rejected with its own typed error, before the
//! sink sees a page, and no input panics. This file: PFN arrays and the v3 bitmap; extents and auto
//! in `pages_hostile_extents.rs`, hint blocks and names in `pages_hostile_hints.rs`, the no-panic
//! properties in `pages_hostile_proptest.rs`.

mod pages_hostile_support;

use pages_hostile_support::*;
use vballoon::pages::bitmap::{self, BmapHeader, ReqHeader, MAX_BMAP_LEN, WINDOW_PFNS};
use vballoon::pages::pfn::{self, PFN_LIMIT};
use vballoon::pages::{encode, Encoding, PageRange, PageSet, PagesError};

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
    let runs = [PageRange::new(5, 1), PageRange::new(PFN_LIMIT - 1, 2)];
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
            encode(enc, &[PageRange::new(u64::MAX - 1, 5)][..]),
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

/// A header field other than the one value v3 allows: page_shift, cmd, flag.
#[test]
fn test_bitmap_header_field_out_of_range() {
    let ok = hdr(0, 8);
    let cases = [
        (
            BmapHeader {
                page_shift: 16,
                ..ok
            },
            PagesError::BadPageShift {
                page_shift: 16,
                expected: 12,
            },
        ),
        (
            BmapHeader { cmd: 3, ..ok },
            PagesError::BadBitmapCommand { cmd: 3 },
        ),
        (
            BmapHeader { flag: 2, ..ok },
            PagesError::BadBitmapFlag { flag: 2 },
        ),
    ];
    for (h, want) in cases {
        let b = bmap(h, &[1; 8]);
        assert_eq!(try_decode(Encoding::Bitmap, &[&b], RAM), Err(want), "{h:?}");
    }
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
        encode(Encoding::Bitmap, &[PageRange::new(1 << 52, 1)][..]),
        Err(PagesError::PfnTooLarge {
            pfn: 1 << 52,
            limit: 1 << 52
        })
    );
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
