//! Cutting a page source into the 32 GiB windows one bitmap message can cover.

use super::bitmap::WINDOW_PFNS;
use super::runs::{self, Runs, WORD_BITS};
use super::{PageRange, Pages, PagesError};

/// Words in one full window.
const WINDOW_WORDS: usize = (WINDOW_PFNS / WORD_BITS) as usize;

/// A stretch of at most [`WINDOW_PFNS`] pages, starting and ending on a 64-page boundary,
/// whose first and last words each hold a page.
pub(crate) struct Window<'a> {
    /// PFN of bit 0 of `words[0]`, a multiple of 64.
    pub(crate) start: u64,
    /// The bitmap of the window.
    pub(crate) words: &'a [u64],
    /// Bits at or past this offset from `start` are not pages (tail of a page set).
    pub(crate) nbits: u64,
}

impl Window<'_> {
    /// The window's maximal runs.
    pub(crate) fn runs(&self) -> Runs<'_> {
        Runs::new(self.words, self.start, 0, self.nbits)
    }

    /// Bytes of the window's bitmap.
    pub(crate) fn bmap_len(&self) -> usize {
        self.words.len() * 8
    }

    /// Appends the bitmap as the little-endian byte stream, masking non-page bits.
    pub(crate) fn write_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.bmap_len());
        for (i, w) in self.words.iter().enumerate() {
            let w = w & runs::valid_mask(i, self.nbits);
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
}

/// Checks that every page of `pages` lies below `limit` and that no run overflows.
pub(crate) fn check_below(pages: Pages<'_>, limit: u64) -> Result<(), PagesError> {
    match pages {
        Pages::Set(set) => match set.runs_in(limit, u64::MAX).next() {
            Some(r) => Err(PagesError::PfnTooLarge {
                pfn: r.start,
                limit,
            }),
            None => Ok(()),
        },
        Pages::Runs(list) => {
            for &PageRange { start: pfn, len } in list {
                let end = pfn
                    .checked_add(len)
                    .ok_or(PagesError::RunOverflow { pfn, len })?;
                if len > 0 && end > limit {
                    return Err(PagesError::PfnTooLarge {
                        pfn: pfn.max(limit),
                        limit,
                    });
                }
            }
            Ok(())
        }
    }
}

/// Calls `f` for each window of `pages`, lowest first.
///
/// Windows are greedy: each starts at the next page (rounded down to 64) and covers up to
/// [`WINDOW_PFNS`] pages, ending after its last page (rounded up to 64), so empty stretches
/// cost nothing. The caller has run [`check_below`] with a limit of at most 2^52.
pub(crate) fn for_each_window(pages: Pages<'_>, mut f: impl FnMut(&Window<'_>)) {
    match pages {
        Pages::Set(set) => {
            let words = set.words();
            let mut from = 0;
            while let Some(i) = set.next_nonzero_word(from) {
                // Word `i` holds a page, so the backward search stops at `i` at the latest.
                let j = set.prev_nonzero_word(i + WINDOW_WORDS).unwrap_or(i);
                let start = i as u64 * WORD_BITS;
                let end = ((j + 1) as u64 * WORD_BITS).min(set.npages());
                f(&Window {
                    start,
                    words: &words[i..=j],
                    nbits: end - start,
                });
                from = j + 1;
            }
        }
        Pages::Runs(list) => {
            let mut queue = merge(list).into_iter().peekable();
            let mut scratch: Vec<u64> = Vec::new();
            let mut inside: Vec<(u64, u64)> = Vec::new();
            let mut carry: Option<(u64, u64)> = None;
            loop {
                let Some(first) = carry.take().or_else(|| queue.next()) else {
                    return;
                };
                let start = first.0 & !(WORD_BITS - 1);
                let limit = start + WINDOW_PFNS;
                // Runs are disjoint and sorted, so only the last run taken can cross `limit`.
                inside.clear();
                let mut cur = Some(first);
                while let Some((s, e)) = cur {
                    if e > limit {
                        inside.push((s, limit));
                        carry = Some((limit, e));
                        break;
                    }
                    inside.push((s, e));
                    cur = queue.next_if(|r| r.0 < limit);
                }
                let last_end = inside.last().map_or(start, |r| r.1);
                let end = last_end.div_ceil(WORD_BITS) * WORD_BITS;
                scratch.clear();
                scratch.resize(((end - start) / WORD_BITS) as usize, 0);
                for &(s, e) in &inside {
                    runs::set_bits(&mut scratch, s - start, e - start);
                }
                f(&Window {
                    start,
                    words: &scratch,
                    nbits: end - start,
                });
            }
        }
    }
}

/// Sorts runs and joins the ones that overlap or touch, as `(start, end)` pairs.
fn merge(list: &[PageRange]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = list
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| (r.start, r.end()))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}
