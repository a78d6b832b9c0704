//! Auto: per 32 GiB window, the smaller of a v3 bitmap and extents (device-specific).
//!
//! Dave Hansen suggested a hybrid that picks bitmap or extents from what the page lists hold;
//! Liang Li found it more complex than expected and it was never built (reference/protocol.md
//! §2.1). This is that hybrid, as a vballoon-specific format, not an upstream one.
//!
//! # Wire format
//! Every message starts with an 8-byte [`AUTO_HEADER_LEN`] header in its own segment:
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | body kind: [`AUTO_KIND_BITMAP`] (1) or [`AUTO_KIND_EXTENTS`] (2) |
//! | 1..8 | reserved, zero (the decoder rejects anything else, so they can be given a meaning later) |
//!
//! The body follows: for a bitmap, a whole [`bitmap`] message (32-byte header,
//! then the pieces, `cmd = 0`); for extents, one [`extents`] segment. The
//! header keeps the body 8-byte aligned when a sender lays the message out in one buffer.
//!
//! # Choice
//! The set is cut into the same greedy windows as the bitmap encoding. For each window the
//! encoder compares body sizes, `32 + bmap_len` against the sum of its extent records, and
//! sends the smaller (bitmap on a tie). An extents body longer than 32 KiB goes out as several
//! messages, each with its own header.

use super::bitmap::{self, BmapHeader, BITMAP_PFN_LIMIT, BMAP_HEADER_LEN};
use super::decoder::decoder;
use super::extents::{self, EXTENTS_MAX_MESSAGE_LEN};
use super::sink::Coalescer;
use super::stream::Stream;
use super::window;
use super::{Message, PageRange, PageSink, Pages, PagesError};

/// Bytes of the auto header.
pub const AUTO_HEADER_LEN: usize = 8;
/// Kind byte of a message whose body is a v3 bitmap message.
pub const AUTO_KIND_BITMAP: u8 = 1;
/// Kind byte of a message whose body is extents.
pub const AUTO_KIND_EXTENTS: u8 = 2;
/// Auto refuses pages at or past 2^52, the bound of both bodies.
pub const AUTO_PFN_LIMIT: u64 = BITMAP_PFN_LIMIT;

/// The auto header for a body of `kind`.
pub fn header(kind: u8) -> [u8; AUTO_HEADER_LEN] {
    let mut h = [0u8; AUTO_HEADER_LEN];
    h[0] = kind;
    h
}

/// Encodes `pages`, each window as whichever of bitmap or extents is smaller.
pub fn encode<'a>(pages: impl Into<Pages<'a>>) -> Result<Vec<Message>, PagesError> {
    Message::collect(|emit| encode_with(pages.into(), emit))
}

/// Like [`encode`], but hands each message to `emit` as borrowed segments, reusing buffers.
///
/// Nothing is emitted unless every page is below 2^52.
pub fn encode_with(pages: Pages<'_>, emit: &mut dyn FnMut(&[&[u8]])) -> Result<(), PagesError> {
    window::check_below(pages, AUTO_PFN_LIMIT)?;
    let bitmap_head = header(AUTO_KIND_BITMAP);
    let extents_head = header(AUTO_KIND_EXTENTS);
    let mut buf = Vec::new();
    window::for_each_window(pages, |w| {
        let bitmap_len = BMAP_HEADER_LEN + w.bmap_len();
        let mut extents_len = 0;
        for r in w.runs() {
            extents_len += extents::record_len(r.len);
            if extents_len >= bitmap_len {
                break;
            }
        }
        if extents_len >= bitmap_len {
            bitmap::emit_window(w, BmapHeader::RESIZE, &[&bitmap_head], &mut buf, emit);
            return;
        }
        buf.clear();
        for PageRange { start: pfn, len } in w.runs() {
            if buf.len() + extents::record_len(len) > EXTENTS_MAX_MESSAGE_LEN {
                emit(&[&extents_head, &buf]);
                buf.clear();
            }
            extents::push_record(&mut buf, pfn, len);
        }
        emit(&[&extents_head, &buf]);
    });
    Ok(())
}

decoder! {
    /// Decodes one auto message, handing its pages to `sink` as runs.
    ///
    /// Returns the bitmap header when the body was a bitmap. `max_pfn` and the all-or-nothing
    /// check are as for the body's own decoder.
    pub fn decode -> Option<BmapHeader>;
    /// Decodes an auto message from the rest of `st`.
    fn decode_stream(mut st, max_pfn, sink) {
        let h = st.read_header::<AUTO_HEADER_LEN>(|len, need| PagesError::AutoHeaderTruncated {
            len,
            need,
        })?;
        if let Some(offset) = (1..AUTO_HEADER_LEN).find(|&i| h[i] != 0) {
            return Err(PagesError::AutoReserved {
                offset,
                value: h[offset],
            });
        }
        match h[0] {
            AUTO_KIND_BITMAP => bitmap::decode_stream(st, max_pfn, sink).map(Some),
            AUTO_KIND_EXTENTS => extents::decode_stream(st, max_pfn, sink).map(|()| None),
            kind => Err(PagesError::UnknownAutoKind { kind }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::{PageRange, PageSet};

    fn kinds(msgs: &[Message]) -> Vec<u8> {
        msgs.iter().map(|m| m.segments[0][0]).collect()
    }

    #[test]
    fn test_picks_extents_for_long_runs_and_bitmap_for_scatter() {
        let dense = PageSet::from_runs(1 << 21, [(0, 1 << 20)]).unwrap();
        assert_eq!(kinds(&encode(&dense).unwrap()), vec![AUTO_KIND_EXTENTS]);
        let scattered: Vec<PageRange> = (0..4096).map(|i| PageRange::new(i * 2, 1)).collect();
        let msgs = encode(&scattered[..]).unwrap();
        assert_eq!(kinds(&msgs), vec![AUTO_KIND_BITMAP]);
        let mut back = PageSet::new(1 << 21);
        decode(&msgs[0].segments, 1 << 21, &mut back).unwrap();
        assert_eq!(back, PageSet::from_runs(1 << 21, scattered).unwrap());
    }
}
