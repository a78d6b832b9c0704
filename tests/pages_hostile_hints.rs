//! Hostile free page hint blocks, encoding names and raw bitmap words: typed errors that carry
//! the offending values.

mod pages_hostile_support;

use pages_hostile_support::*;
use vballoon::pages::hint::{self, HintBlock, HINT_BLOCK_ORDER};
use vballoon::pages::{Encoding, PageSet, PagesError};

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
