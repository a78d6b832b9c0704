//! Hostile input to the extents and auto encodings: each malformed message is rejected with its
//! own typed error before the sink sees a page.

mod pages_hostile_support;

use pages_hostile_support::*;
use vballoon::pages::auto::{self, AUTO_KIND_BITMAP, AUTO_KIND_EXTENTS};
use vballoon::pages::bitmap::BmapHeader;
use vballoon::pages::extents::{self, EXTENTS_MAX_MESSAGE_LEN, EXTENT_PFN_LIMIT};
use vballoon::pages::{Encoding, PageRange, PagesError};

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
        extents::encode(&[PageRange::new(EXTENT_PFN_LIMIT, 1)][..]),
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
    let bad_shift = BmapHeader {
        page_shift: 13,
        ..hdr(0, 0)
    };
    let cases = [
        (
            AUTO_KIND_BITMAP,
            bmap(bad_shift, &[]),
            PagesError::BadPageShift {
                page_shift: 13,
                expected: 12,
            },
        ),
        (
            AUTO_KIND_EXTENTS,
            le64s(&[(RAM << 12) | 1]),
            PagesError::PageOutsideRam {
                pfn: RAM,
                max_pfn: RAM,
            },
        ),
    ];
    for (kind, body, want) in cases {
        let segs: [&[u8]; 2] = [&auto::header(kind), &body];
        assert_eq!(
            try_decode(Encoding::Auto, &segs, RAM),
            Err(want),
            "kind {kind}"
        );
    }
}
