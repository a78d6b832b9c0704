//! The v3 scatter-gather page bitmap (reference/protocol.md §1.2–1.4), byte-exact.
//!
//! # Wire format
//! One message is one out-buffer: a 32-byte [`BmapHeader`] (all fields little-endian, as with
//! VERSION_1), then `bmap_len` bytes of bitmap in up to [`BALLOON_BMAP_COUNT`] pieces of
//! [`BALLOON_BMAP_SIZE`] (32 KiB) bytes, each piece its own segment, the last one holding the
//! remainder. Bit `i` of the byte stream stands for page `start_pfn + i` (Linux `set_bit`
//! order on little-endian `unsigned long[]`). One message covers at most [`WINDOW_PFNS`]
//! pages (32 GiB); a larger set is sent as several messages.
//!
//! The misc virtqueue (§1.3) adds the host's 16-byte [`ReqHeader`] and the guest's replies to
//! `BALLOON_GET_UNUSED_PAGES`: the same message with `cmd = BALLOON_GET_UNUSED_PAGES`,
//! `req_id` = the request's `param`, and `flag = BALLOON_FLAG_CONT` on every message but the
//! last, which says `BALLOON_FLAG_DONE`.
//!
//! # Where this differs from the v3 driver
//! - **Piece count rounds up.** v3's `tell_host()` computes the number of pieces as
//!   `nr_pfn / PFNS_PER_BMAP` (floor), so a range shorter than 1 GiB sent only the header.
//!   Here a message carries `ceil(bmap_len / 32 KiB)` pieces, the last one the remainder.
//! - **Bits crossing a piece boundary are set.** v3's `get_unused_pages()` used an
//!   uninitialised, never-advanced `pos` for a free block spanning two 32 KiB pieces. Here
//!   the window is one contiguous bitmap that is only cut into pieces for sending, so a run
//!   across a boundary is set on both sides.
//! - **Windows are greedy.** Each message starts at the lowest page not yet sent (rounded down
//!   to 64) and ends after its last page (rounded up to 64), so stretches without pages cost no
//!   message; v3's misc path walked fixed windows from PFN 0 to `max_pfn`.
//! - **The decoder is framing-agnostic** (virtio §2.6.4): it reads the concatenation of the
//!   segments, so header and pieces may be split anywhere, and it accepts any `bmap_len` in
//!   bytes up to 1 MiB (v3's unused-page path truncates `nr_pfn / 8`).

use super::decoder::decoder;
use super::sink::Coalescer;
use super::stream::Stream;
use super::window::{self, Window};
use super::{runs, Message, PageSink, Pages, PagesError};

/// Length of [`BmapHeader`] on the wire (`struct balloon_bmap_hdr`).
pub const BMAP_HEADER_LEN: usize = 32;
/// Length of [`ReqHeader`] on the wire (`struct balloon_req_hdr`).
pub const REQ_HEADER_LEN: usize = 16;
/// Bytes per bitmap piece: 8 × 4 KiB pages (`BALLOON_BMAP_SIZE`).
pub const BALLOON_BMAP_SIZE: usize = 8 * 4096;
/// Pages one piece covers: 262,144 pages = 1 GiB (`PFNS_PER_BMAP`).
pub const PFNS_PER_BMAP: u64 = BALLOON_BMAP_SIZE as u64 * 8;
/// Most pieces one message may carry (`BALLOON_BMAP_COUNT`).
pub const BALLOON_BMAP_COUNT: usize = 32;
/// Pages one message covers at most: 32 pieces = 8,388,608 pages = 32 GiB.
pub const WINDOW_PFNS: u64 = PFNS_PER_BMAP * BALLOON_BMAP_COUNT as u64;
/// Longest bitmap one message may carry, in bytes (1 MiB).
pub const MAX_BMAP_LEN: u64 = (BALLOON_BMAP_SIZE * BALLOON_BMAP_COUNT) as u64;
/// The only `page_shift` accepted: bits stand for 4 KiB balloon pages (`PAGE_SHIFT` on x86).
#[allow(clippy::cast_possible_truncation)] // 12: fits.
pub const BMAP_PAGE_SHIFT: u16 = super::BALLOON_PFN_SHIFT as u16;
/// `cmd` of an inflate or deflate message (v3 leaves it zero).
pub const BMAP_CMD_RESIZE: u16 = 0;
/// `cmd` of the only misc-queue request, and of the replies to it (`BALLOON_GET_UNUSED_PAGES`).
pub const BALLOON_GET_UNUSED_PAGES: u16 = 0;
/// `flag` of a reply that more replies to the same request follow (`BALLOON_FLAG_CONT`).
pub const BALLOON_FLAG_CONT: u16 = 0;
/// `flag` of the last reply to a request (`BALLOON_FLAG_DONE`).
pub const BALLOON_FLAG_DONE: u16 = 1;
/// Encoders refuse pages at or past 2^52: a 4 KiB page's address must fit in 64 bits.
pub const BITMAP_PFN_LIMIT: u64 = 1 << 52;

/// `struct balloon_bmap_hdr` (v3 patch 2/7): the first 32 bytes of a bitmap message.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BmapHeader {
    /// Request type: 0 on inflate/deflate, [`BALLOON_GET_UNUSED_PAGES`] in misc replies.
    pub cmd: u16,
    /// log2 of the page size one bit stands for; always [`BMAP_PAGE_SHIFT`].
    pub page_shift: u16,
    /// [`BALLOON_FLAG_CONT`] or [`BALLOON_FLAG_DONE`] in misc replies; 0 otherwise.
    pub flag: u16,
    /// Zero; ignored by the decoder.
    pub reserved: u16,
    /// Echo of the host request's `param` (0 for inflate/deflate).
    pub req_id: u64,
    /// Page that bit 0 of the bitmap stands for.
    pub start_pfn: u64,
    /// Bitmap length in bytes, over all following pieces.
    pub bmap_len: u64,
}

impl BmapHeader {
    /// The header of an inflate or deflate message, before `start_pfn`/`bmap_len` are known.
    pub const RESIZE: BmapHeader = BmapHeader {
        cmd: BMAP_CMD_RESIZE,
        page_shift: BMAP_PAGE_SHIFT,
        flag: 0,
        reserved: 0,
        req_id: 0,
        start_pfn: 0,
        bmap_len: 0,
    };

    /// The 32 wire bytes, little-endian.
    pub fn to_bytes(&self) -> [u8; BMAP_HEADER_LEN] {
        let mut b = [0u8; BMAP_HEADER_LEN];
        b[0..2].copy_from_slice(&self.cmd.to_le_bytes());
        b[2..4].copy_from_slice(&self.page_shift.to_le_bytes());
        b[4..6].copy_from_slice(&self.flag.to_le_bytes());
        b[6..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..16].copy_from_slice(&self.req_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.start_pfn.to_le_bytes());
        b[24..32].copy_from_slice(&self.bmap_len.to_le_bytes());
        b
    }

    /// Reads the 32 wire bytes as they are, without checking any field.
    pub fn from_bytes(b: &[u8; BMAP_HEADER_LEN]) -> BmapHeader {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        BmapHeader {
            cmd: u16_at(0),
            page_shift: u16_at(2),
            flag: u16_at(4),
            reserved: u16_at(6),
            req_id: u64_at(8),
            start_pfn: u64_at(16),
            bmap_len: u64_at(24),
        }
    }

    /// Checks `page_shift`, `cmd` and `flag`.
    pub fn validate(&self) -> Result<(), PagesError> {
        if self.page_shift != BMAP_PAGE_SHIFT {
            let (page_shift, expected) = (self.page_shift, BMAP_PAGE_SHIFT);
            return Err(PagesError::BadPageShift {
                page_shift,
                expected,
            });
        }
        // BMAP_CMD_RESIZE and BALLOON_GET_UNUSED_PAGES are both 0: nothing else exists.
        if self.cmd != BMAP_CMD_RESIZE {
            return Err(PagesError::BadBitmapCommand { cmd: self.cmd });
        }
        if self.flag != BALLOON_FLAG_CONT && self.flag != BALLOON_FLAG_DONE {
            return Err(PagesError::BadBitmapFlag { flag: self.flag });
        }
        Ok(())
    }

    /// Whether this is the last reply to a request.
    pub fn is_done(&self) -> bool {
        self.flag == BALLOON_FLAG_DONE
    }
}

/// `struct balloon_req_hdr` (v3 patch 6/7): the host's request on the misc virtqueue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReqHeader {
    /// Request id; [`BALLOON_GET_UNUSED_PAGES`] is the only one.
    pub cmd: u16,
    /// Zero.
    pub reserved: [u16; 3],
    /// Request parameter: for GET_UNUSED_PAGES, the id every reply echoes as `req_id`.
    pub param: u64,
}

impl ReqHeader {
    /// A GET_UNUSED_PAGES request whose replies will carry `req_id`.
    pub fn get_unused_pages(req_id: u64) -> ReqHeader {
        ReqHeader {
            cmd: BALLOON_GET_UNUSED_PAGES,
            reserved: [0; 3],
            param: req_id,
        }
    }

    /// The 16 wire bytes, little-endian.
    pub fn to_bytes(&self) -> [u8; REQ_HEADER_LEN] {
        let mut b = [0u8; REQ_HEADER_LEN];
        b[0..2].copy_from_slice(&self.cmd.to_le_bytes());
        for (i, r) in self.reserved.iter().enumerate() {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&r.to_le_bytes());
        }
        b[8..16].copy_from_slice(&self.param.to_le_bytes());
        b
    }

    /// Reads a request from a buffer that must be exactly 16 bytes (v3 ignores any other).
    ///
    /// Fields are returned as they are; the guest decides what an unknown `cmd` means.
    pub fn parse<S: AsRef<[u8]>>(segments: &[S]) -> Result<ReqHeader, PagesError> {
        let mut st = Stream::new(segments);
        let len = st.remaining();
        let b = match st.read::<REQ_HEADER_LEN>() {
            Some(b) if len == REQ_HEADER_LEN => b,
            _ => {
                return Err(PagesError::ReqHeaderLength {
                    len,
                    expected: REQ_HEADER_LEN,
                })
            }
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let mut param = [0u8; 8];
        param.copy_from_slice(&b[8..16]);
        Ok(ReqHeader {
            cmd: u16_at(0),
            reserved: [u16_at(2), u16_at(4), u16_at(6)],
            param: u64::from_le_bytes(param),
        })
    }
}

/// Encodes `pages` as inflate/deflate bitmap messages, one per 32 GiB window with pages.
///
/// Each message is `[header (32 B), piece 0, …, piece n-1]`, pieces of 32 KiB but the last.
pub fn encode<'a>(pages: impl Into<Pages<'a>>) -> Result<Vec<Message>, PagesError> {
    Message::collect(|emit| encode_with(pages.into(), emit))
}

/// Like [`encode`], but hands each message to `emit` as borrowed segments, reusing buffers.
///
/// Nothing is emitted unless every page is encodable.
pub fn encode_with(pages: Pages<'_>, emit: &mut dyn FnMut(&[&[u8]])) -> Result<(), PagesError> {
    window::check_below(pages, BITMAP_PFN_LIMIT)?;
    let mut buf = Vec::new();
    window::for_each_window(pages, |w| {
        emit_window(w, BmapHeader::RESIZE, &[], &mut buf, emit)
    });
    Ok(())
}

/// Encodes `pages` as the replies to GET_UNUSED_PAGES request `req_id`.
///
/// Every message but the last has `flag = CONT`; the last has `flag = DONE`. An empty set is
/// one header-only DONE message (`start_pfn = 0`, `bmap_len = 0`), so the host always learns
/// that the request finished.
pub fn encode_unused_reply<'a>(
    pages: impl Into<Pages<'a>>,
    req_id: u64,
) -> Result<Vec<Message>, PagesError> {
    Message::collect(|emit| encode_unused_reply_with(pages.into(), req_id, emit))
}

/// Like [`encode_unused_reply`], but hands each message to `emit` as borrowed segments.
pub fn encode_unused_reply_with(
    pages: Pages<'_>,
    req_id: u64,
    emit: &mut dyn FnMut(&[&[u8]]),
) -> Result<(), PagesError> {
    window::check_below(pages, BITMAP_PFN_LIMIT)?;
    let hdr = BmapHeader {
        cmd: BALLOON_GET_UNUSED_PAGES,
        req_id,
        ..BmapHeader::RESIZE
    };
    // Hold each window back until the next one shows it was not the last.
    let mut held: Option<(u64, Vec<u8>)> = None;
    let mut send = |start: u64, bytes: &[u8], flag: u16| {
        let h = BmapHeader {
            start_pfn: start,
            bmap_len: bytes.len() as u64,
            flag,
            ..hdr
        };
        emit_bytes(&h, &[], bytes, emit);
    };
    window::for_each_window(pages, |w| {
        let mut bytes = Vec::new();
        w.write_bytes(&mut bytes);
        if let Some((start, prev)) = held.replace((w.start, bytes)) {
            send(start, &prev, BALLOON_FLAG_CONT);
        }
    });
    match held {
        Some((start, bytes)) => send(start, &bytes, BALLOON_FLAG_DONE),
        None => send(0, &[], BALLOON_FLAG_DONE),
    }
    Ok(())
}

/// Emits one window as a bitmap message after the `prefix` segments.
pub(crate) fn emit_window(
    w: &Window<'_>,
    hdr: BmapHeader,
    prefix: &[&[u8]],
    buf: &mut Vec<u8>,
    emit: &mut dyn FnMut(&[&[u8]]),
) {
    buf.clear();
    w.write_bytes(buf);
    let h = BmapHeader {
        start_pfn: w.start,
        bmap_len: buf.len() as u64,
        ..hdr
    };
    emit_bytes(&h, prefix, buf, emit);
}

fn emit_bytes(h: &BmapHeader, prefix: &[&[u8]], bytes: &[u8], emit: &mut dyn FnMut(&[&[u8]])) {
    let head = h.to_bytes();
    let mut segs: Vec<&[u8]> = Vec::with_capacity(prefix.len() + 1 + BALLOON_BMAP_COUNT);
    segs.extend_from_slice(prefix);
    segs.push(&head);
    segs.extend(bytes.chunks(BALLOON_BMAP_SIZE));
    emit(&segs);
}

decoder! {
    /// Decodes one bitmap message, handing its pages to `sink` as maximal runs, lowest first.
    ///
    /// `max_pfn` is the number of guest pages; a set bit at or past it (or past `sink.limit()`)
    /// is an error. The whole message is checked before `sink` sees a page. Returns the header.
    pub fn decode -> BmapHeader;
    /// Decodes a bitmap message from the rest of `st`.
    fn decode_stream(mut st, max_pfn, sink) {
        let raw = st.read_header::<BMAP_HEADER_LEN>(|len, need| {
            PagesError::BitmapHeaderTruncated { len, need }
        })?;
        let h = BmapHeader::from_bytes(&raw);
        h.validate()?;
        // Bound the length before trusting it: a hostile bmap_len must not size anything.
        if h.bmap_len > MAX_BMAP_LEN {
            return Err(PagesError::BitmapTooLong {
                bmap_len: h.bmap_len,
                max: MAX_BMAP_LEN,
            });
        }
        let body_len = st.remaining();
        if body_len as u64 != h.bmap_len {
            return Err(PagesError::BitmapLengthMismatch {
                bmap_len: h.bmap_len,
                body_len,
            });
        }
        let nbits = h.bmap_len * 8;
        if h.start_pfn.checked_add(nbits).is_none() {
            return Err(PagesError::RunOverflow {
                pfn: h.start_pfn,
                len: nbits,
            });
        }
        let limit = max_pfn.min(sink.limit());
        // Pass 1: no set bit may lie at or past `limit`.
        for_each_word(st.clone(), |off, w| {
            let base = h.start_pfn + off;
            let first_bad = limit.saturating_sub(base);
            let bad = if first_bad >= runs::WORD_BITS {
                0
            } else {
                w & (u64::MAX << first_bad)
            };
            if bad != 0 {
                let pfn = base + u64::from(bad.trailing_zeros());
                return Err(PagesError::PageOutsideRam {
                    pfn,
                    max_pfn: limit,
                });
            }
            Ok(())
        })?;
        // Pass 2: the message is valid; hand over its runs.
        for_each_word(st, |off, w| {
            runs::word_runs(h.start_pfn + off, w, |s, l| sink.run(s, l));
            Ok(())
        })?;
        sink.flush();
        Ok(h)
    }
}

/// Calls `f(bit_offset, word)` for each little-endian word of the rest of `st`; a short last
/// word is padded with zero bytes.
fn for_each_word<S: AsRef<[u8]>>(
    mut st: Stream<'_, S>,
    mut f: impl FnMut(u64, u64) -> Result<(), PagesError>,
) -> Result<(), PagesError> {
    let mut off = 0u64;
    while let Some(b) = st.read::<8>() {
        f(off, u64::from_le_bytes(b))?;
        off += runs::WORD_BITS;
    }
    let mut tail = [0u8; 8];
    if st.read_into(&mut tail) > 0 {
        f(off, u64::from_le_bytes(tail))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::pages::PageSet;

    /// Asserts the wire layout: `$ty` is `$len` bytes with each field at its offset.
    macro_rules! assert_layout {
        ($ty:ty, $len:expr, { $($field:ident: $off:expr),+ $(,)? }) => {
            assert_eq!(size_of::<$ty>(), $len);
            $(assert_eq!(offset_of!($ty, $field), $off, stringify!($field));)+
        };
    }

    #[test]
    fn test_bmap_header_layout() {
        assert_layout!(BmapHeader, BMAP_HEADER_LEN, {
            cmd: 0, page_shift: 2, flag: 4, reserved: 6, req_id: 8, start_pfn: 16, bmap_len: 24,
        });
        let h = BmapHeader {
            cmd: 0x0102,
            page_shift: 12,
            flag: 1,
            reserved: 0x0708,
            req_id: 0x1112_1314_1516_1718,
            start_pfn: 0x2122_2324_2526_2728,
            bmap_len: 0x3132_3334_3536_3738,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[0x02, 0x01, 12, 0, 1, 0, 0x08, 0x07]);
        assert_eq!(&b[8..16], &0x1112_1314_1516_1718u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x2122_2324_2526_2728u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x3132_3334_3536_3738u64.to_le_bytes());
        assert_eq!(BmapHeader::from_bytes(&b), h);
    }

    #[test]
    fn test_req_header_layout() {
        assert_layout!(ReqHeader, REQ_HEADER_LEN, { cmd: 0, reserved: 2, param: 8 });
        let r = ReqHeader::get_unused_pages(0xdead_beef);
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[0; 8]);
        assert_eq!(&b[8..], &0xdead_beefu64.to_le_bytes());
        assert_eq!(ReqHeader::parse(&[&b[..3], &b[3..]]), Ok(r));
    }

    #[test]
    fn test_window_constants() {
        assert_eq!(PFNS_PER_BMAP, 262_144);
        assert_eq!(WINDOW_PFNS << 12, 32 << 30);
        assert_eq!(MAX_BMAP_LEN, 1 << 20);
    }

    #[test]
    fn test_short_range_sends_its_piece() {
        // v3 floor division would send zero pieces here.
        let set = PageSet::from_runs(1000, [(64, 1)]).unwrap();
        let msgs = encode(&set).unwrap();
        assert_eq!(msgs.len(), 1);
        let segs = &msgs[0].segments;
        assert_eq!(segs.len(), 2);
        let h = BmapHeader::from_bytes(segs[0].as_slice().try_into().unwrap());
        assert_eq!((h.start_pfn, h.bmap_len), (64, 8));
        assert_eq!(segs[1], vec![1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn test_run_across_piece_boundary_sets_both_sides() {
        let runs = [(0, 1), (PFNS_PER_BMAP - 2, 4)];
        let set = PageSet::from_runs(2 * PFNS_PER_BMAP, runs).unwrap();
        let msgs = encode(&set).unwrap();
        let segs = &msgs[0].segments;
        let h = BmapHeader::from_bytes(segs[0].as_slice().try_into().unwrap());
        assert_eq!((h.start_pfn, h.bmap_len), (0, BALLOON_BMAP_SIZE as u64 + 8));
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[1].len(), BALLOON_BMAP_SIZE);
        assert_eq!(segs[1][BALLOON_BMAP_SIZE - 1], 0xc0);
        assert_eq!(segs[2], vec![0x03, 0, 0, 0, 0, 0, 0, 0]);
        let ranges = runs.map(|(s, l)| crate::memory::PageRange::new(s, l));
        assert_eq!(encode(&ranges[..]).unwrap(), msgs);
    }
}
