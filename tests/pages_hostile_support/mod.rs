//! Shared helpers of the hostile-input tests of the page encodings (`pages_hostile*.rs`).
#![allow(dead_code)]

use vballoon::pages::bitmap::BmapHeader;
use vballoon::pages::{decode, Encoding, PageRange, PagesError};

/// Guest RAM the tests decode against: 1 GiB of pages.
pub const RAM: u64 = 1 << 18;

/// Decodes into a fresh recorder; asserts the sink saw nothing if the message was rejected.
pub fn try_decode(
    enc: Encoding,
    segs: &[&[u8]],
    max_pfn: u64,
) -> Result<Vec<(u64, u64)>, PagesError> {
    let mut seen: Vec<PageRange> = Vec::new();
    let r = decode(enc, segs, max_pfn, &mut seen);
    if r.is_err() {
        assert!(
            seen.is_empty(),
            "{enc}: sink saw {seen:?} from a rejected message"
        );
    }
    r.map(|_| seen.iter().map(|r| (r.start, r.len)).collect())
}

pub fn le32s(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

pub fn le64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub fn bmap(h: BmapHeader, body: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

pub fn hdr(start_pfn: u64, bmap_len: u64) -> BmapHeader {
    BmapHeader {
        start_pfn,
        bmap_len,
        ..BmapHeader::RESIZE
    }
}
