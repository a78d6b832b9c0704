//! Legacy PFN arrays: the baseline inflate/deflate format (virtio spec, balloon device).
//!
//! # Wire format
//! One message is one buffer of little-endian u32 PFNs in 4 KiB units, at most
//! [`VIRTIO_BALLOON_ARRAY_PFNS_MAX`] (256) of them, so 1 MiB of pages per message. The encoder
//! sends the pages lowest first, 256 per message. The decoder reads the concatenation of the
//! segments (virtio §2.6.4), checks every PFN, then hands the pages to the sink sorted, without
//! duplicates, as maximal runs: a guest may list pages in any order, the host discards runs.
//!
//! Legacy devices take guest-endian PFNs; like the rest of vballoon this is little-endian only.

use super::decoder::decoder;
use super::outbuf::OutBuf;
use super::sink::Coalescer;
use super::stream::Stream;
use super::window;
use super::{Message, PageSink, Pages, PagesError};

/// Most PFNs one buffer may carry (`VIRTIO_BALLOON_ARRAY_PFNS_MAX`).
pub const VIRTIO_BALLOON_ARRAY_PFNS_MAX: usize = 256;
/// Bytes per PFN entry (a `__virtio32`).
pub const PFN_ENTRY_LEN: usize = 4;
/// Longest PFN buffer in bytes (1 KiB).
pub const PFN_ARRAY_MAX_LEN: usize = VIRTIO_BALLOON_ARRAY_PFNS_MAX * PFN_ENTRY_LEN;
/// PFNs at or past 2^32 (16 TiB) do not fit a 32-bit entry.
pub const PFN_LIMIT: u64 = 1 << 32;

/// Encodes `pages` as PFN arrays, lowest page first, 256 PFNs per single-segment message.
pub fn encode<'a>(pages: impl Into<Pages<'a>>) -> Result<Vec<Message>, PagesError> {
    Message::collect(|emit| encode_with(pages.into(), emit))
}

/// Like [`encode`], but hands each message to `emit`, reusing one buffer.
///
/// A [`Pages::Runs`] source is sent in the order given, duplicates included. Nothing is
/// emitted unless every page is below 2^32.
pub fn encode_with(pages: Pages<'_>, emit: &mut dyn FnMut(&[&[u8]])) -> Result<(), PagesError> {
    window::check_below(pages, PFN_LIMIT)?;
    OutBuf::new(PFN_ARRAY_MAX_LEN, emit).encode_runs(pages, |out, start, len| {
        for pfn in start..start + len {
            // check_below: pfn < 2^32.
            #[allow(clippy::cast_possible_truncation)]
            out.room(4).extend_from_slice(&(pfn as u32).to_le_bytes());
        }
    })
}

decoder! {
    /// Decodes one PFN array, handing its pages to `sink` sorted, deduplicated, as maximal runs.
    ///
    /// `max_pfn` is the number of guest pages; a PFN at or past it (or past `sink.limit()`) is an
    /// error. The whole array is checked before `sink` sees a page.
    pub fn decode -> ();
    /// Decodes a PFN array from the rest of `st`.
    fn decode_stream(mut st, max_pfn, sink) {
        let len = st.remaining();
        if len % PFN_ENTRY_LEN != 0 {
            return Err(PagesError::PfnArrayLength { len });
        }
        let count = len / PFN_ENTRY_LEN;
        if count > VIRTIO_BALLOON_ARRAY_PFNS_MAX {
            return Err(PagesError::TooManyPfns {
                count,
                max: VIRTIO_BALLOON_ARRAY_PFNS_MAX,
            });
        }
        let limit = max_pfn.min(sink.limit());
        let mut pfns = [0u32; VIRTIO_BALLOON_ARRAY_PFNS_MAX];
        for slot in &mut pfns[..count] {
            let b = st
                .read::<PFN_ENTRY_LEN>()
                .ok_or(PagesError::PfnArrayLength { len })?;
            *slot = u32::from_le_bytes(b);
            if u64::from(*slot) >= limit {
                return Err(PagesError::PageOutsideRam {
                    pfn: u64::from(*slot),
                    max_pfn: limit,
                });
            }
        }
        let pfns = &mut pfns[..count];
        pfns.sort_unstable();
        let mut prev = None;
        for &pfn in pfns.iter() {
            if prev != Some(pfn) {
                sink.run(u64::from(pfn), 1);
                prev = Some(pfn);
            }
        }
        sink.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::PageSet;

    #[test]
    fn test_256_pfns_per_message() {
        let set = PageSet::from_runs(1000, [(0, 600)]).unwrap();
        let msgs = encode(&set).unwrap();
        let lens: Vec<_> = msgs.iter().map(|m| m.segments[0].len()).collect();
        assert_eq!(lens, vec![1024, 1024, 352]);
        assert_eq!(&msgs[1].segments[0][..4], &256u32.to_le_bytes());
    }

    #[test]
    fn test_decode_sorts_and_dedups() {
        let pfns: Vec<u8> = [7u32, 5, 6, 6, 1]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        let mut runs = Vec::new();
        decode(&[&pfns], 8, &mut runs).unwrap();
        assert_eq!(runs, crate::memory::page_ranges(&[(1, 1), (5, 3)]));
    }
}
