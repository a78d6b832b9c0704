//! Extents: `{pfn | length}` ranges, the v6 format (reference/protocol.md §2.2).
//!
//! # Wire format
//! A message is one segment of little-endian u64 records, at most
//! [`EXTENTS_MAX_MESSAGE_LEN`] (32 KiB, the size of one v3 bitmap piece) bytes:
//! - short record, 8 bytes: `(pfn << 12) | npages` for `1 <= npages < 4096`;
//! - long record, 16 bytes: `(pfn << 12) | 0`, then `npages` as a second u64.
//!
//! `pfn` has 52 bits. The encoder writes one record per maximal run of a page set (or per
//! given run) and starts a new message when the next record would not fit; a run is never cut,
//! since a long record holds any length. The decoder reads the concatenation of the segments
//! (virtio §2.6.4), checks every record, then hands the runs to the sink in message order,
//! joining runs that touch. Records may overlap or come in any order; a long record may hold a
//! short length.

use super::decoder::decoder;
use super::outbuf::OutBuf;
use super::sink::Coalescer;
use super::stream::Stream;
use super::window;
use super::{Message, PageRange, PageSink, Pages, PagesError};

/// Width of the length field of a record (`VIRTIO_BALLOON_NR_PFN_BITS`, despite its name).
pub const EXTENT_LEN_BITS: u32 = 12;
/// Longest run a short record holds: 4095 pages.
pub const EXTENT_SHORT_MAX: u64 = (1 << EXTENT_LEN_BITS) - 1;
/// Length field value that escapes to a long record.
pub const EXTENT_LEN_ESCAPE: u64 = 0;
/// Bytes of a short record.
pub const EXTENT_SHORT_LEN: usize = 8;
/// Bytes of a long record.
pub const EXTENT_LONG_LEN: usize = 16;
/// Runs must start below 2^52: the start PFN is the top 52 bits of a record.
pub const EXTENT_PFN_LIMIT: u64 = 1 << (64 - EXTENT_LEN_BITS);
/// Longest message in bytes (32 KiB: 4096 short or 2048 long records).
pub const EXTENTS_MAX_MESSAGE_LEN: usize = 32 * 1024;

/// Bytes the record for a run of `len` pages takes.
pub fn record_len(len: u64) -> usize {
    if len <= EXTENT_SHORT_MAX {
        EXTENT_SHORT_LEN
    } else {
        EXTENT_LONG_LEN
    }
}

/// Appends the record for `len` pages at `pfn` (`len >= 1`, `pfn < 2^52`).
pub(crate) fn push_record(buf: &mut Vec<u8>, pfn: u64, len: u64) {
    if len <= EXTENT_SHORT_MAX {
        buf.extend_from_slice(&((pfn << EXTENT_LEN_BITS) | len).to_le_bytes());
    } else {
        buf.extend_from_slice(&((pfn << EXTENT_LEN_BITS) | EXTENT_LEN_ESCAPE).to_le_bytes());
        buf.extend_from_slice(&len.to_le_bytes());
    }
}

/// Encodes `pages` as extents messages, one segment of at most 32 KiB each.
pub fn encode<'a>(pages: impl Into<Pages<'a>>) -> Result<Vec<Message>, PagesError> {
    Message::collect(|emit| encode_with(pages.into(), emit))
}

/// Like [`encode`], but hands each message to `emit`, reusing one buffer.
///
/// A page set is sent as its maximal runs, lowest first; [`Pages::Runs`] as given, without
/// zero-length runs. Nothing is emitted unless every run starts below 2^52.
pub fn encode_with(pages: Pages<'_>, emit: &mut dyn FnMut(&[&[u8]])) -> Result<(), PagesError> {
    match pages {
        Pages::Set(_) => window::check_below(pages, EXTENT_PFN_LIMIT)?,
        Pages::Runs(list) => {
            for &PageRange { start: pfn, len } in list {
                pfn.checked_add(len)
                    .ok_or(PagesError::RunOverflow { pfn, len })?;
                if len > 0 && pfn >= EXTENT_PFN_LIMIT {
                    return Err(PagesError::PfnTooLarge {
                        pfn,
                        limit: EXTENT_PFN_LIMIT,
                    });
                }
            }
        }
    }
    OutBuf::new(EXTENTS_MAX_MESSAGE_LEN, emit).encode_runs(pages, |out, pfn, len| {
        if len > 0 {
            push_record(out.room(record_len(len)), pfn, len);
        }
    })
}

decoder! {
    /// Decodes one extents message, handing its runs to `sink` in message order.
    ///
    /// `max_pfn` is the number of guest pages; a page at or past it (or past `sink.limit()`) is an
    /// error. The whole message is checked before `sink` sees a page.
    pub fn decode -> ();
    /// Decodes an extents message from the rest of `st`.
    fn decode_stream(st, max_pfn, sink) {
        let len = st.remaining();
        if len > EXTENTS_MAX_MESSAGE_LEN {
            return Err(PagesError::ExtentsTooLong {
                len,
                max: EXTENTS_MAX_MESSAGE_LEN,
            });
        }
        if len % EXTENT_SHORT_LEN != 0 {
            return Err(PagesError::ExtentsLength { len });
        }
        let limit = max_pfn.min(sink.limit());
        // Pass 1 checks every record, pass 2 hands them over.
        for_each_record(st.clone(), |pfn, n, offset| {
            if n == 0 {
                return Err(PagesError::ZeroLengthExtent { pfn, offset });
            }
            let end = pfn
                .checked_add(n)
                .ok_or(PagesError::RunOverflow { pfn, len: n })?;
            if end > limit {
                return Err(PagesError::PageOutsideRam {
                    pfn: pfn.max(limit),
                    max_pfn: limit,
                });
            }
            Ok(())
        })?;
        for_each_record(st, |pfn, n, _| {
            sink.run(pfn, n);
            Ok(())
        })?;
        sink.flush();
        Ok(())
    }
}

/// Calls `f(pfn, npages, byte_offset)` for each record of the rest of `st`.
fn for_each_record<S: AsRef<[u8]>>(
    mut st: Stream<'_, S>,
    mut f: impl FnMut(u64, u64, usize) -> Result<(), PagesError>,
) -> Result<(), PagesError> {
    let base = st.pos();
    loop {
        let offset = st.pos() - base;
        let Some(b) = st.read::<8>() else {
            return Ok(());
        };
        let word = u64::from_le_bytes(b);
        let pfn = word >> EXTENT_LEN_BITS;
        let mut n = word & EXTENT_SHORT_MAX;
        if n == EXTENT_LEN_ESCAPE {
            let b = st
                .read::<8>()
                .ok_or(PagesError::ExtentTruncated { offset })?;
            n = u64::from_le_bytes(b);
        }
        f(pfn, n, offset)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::PageSet;

    #[test]
    fn test_short_and_long_records() {
        let set = PageSet::from_runs(1 << 20, [(5, 1), (100, 4095), (10000, 4096)]).unwrap();
        let msgs = encode(&set).unwrap();
        assert_eq!(msgs.len(), 1);
        let b = &msgs[0].segments[0];
        assert_eq!(b.len(), 8 + 8 + 16);
        assert_eq!(&b[0..8], &((5u64 << 12) | 1).to_le_bytes());
        assert_eq!(&b[8..16], &((100u64 << 12) | 4095).to_le_bytes());
        assert_eq!(&b[16..24], &(10000u64 << 12).to_le_bytes());
        assert_eq!(&b[24..32], &4096u64.to_le_bytes());
        let mut back = PageSet::new(1 << 20);
        decode(&msgs[0].segments, 1 << 20, &mut back).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn test_messages_split_at_32k_between_records() {
        let runs: Vec<PageRange> = (0..5000).map(|i| PageRange::new(i * 2, 1)).collect();
        let msgs = encode(&runs[..]).unwrap();
        let lens: Vec<_> = msgs.iter().map(|m| m.segments[0].len()).collect();
        assert_eq!(lens, vec![32768, (5000 - 4096) * 8]);
    }
}
