//! A page bitmap many threads can mark at once: the dirty log of one migration round.

use std::sync::atomic::{AtomicU64, Ordering};

use super::runs::{self, WORD_BITS};
use super::PageSet;

/// A dense page bitmap over PFNs `[0, npages)` in atomic words.
///
/// Writers [`set`](AtomicPageBitmap::set) pages after changing them; the migration thread
/// calls [`take`](AtomicPageBitmap::take) once per round, which swaps each word with zero, so
/// a page marked during the take lands in this round or the next, never in neither.
///
/// Ordering: marks are `Release` and the swap is `AcqRel`, so a round that sees a page's bit
/// also sees the write that preceded the mark (on x86 this is the same `lock or`/`xchg` as
/// `Relaxed`). PFNs past the end are ignored, as in vm-memory's `AtomicBitmap`.
#[derive(Debug)]
pub struct AtomicPageBitmap {
    words: Box<[AtomicU64]>,
    npages: u64,
}

impl AtomicPageBitmap {
    /// An empty bitmap over `npages` pages.
    ///
    /// # Panics
    /// If the bitmap (`npages / 8` bytes) cannot be allocated.
    pub fn new(npages: u64) -> AtomicPageBitmap {
        let n = usize::try_from(runs::words_for(npages)).expect("page bitmap too large");
        AtomicPageBitmap {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
            npages,
        }
    }

    /// Number of pages the bitmap ranges over.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Marks `pfn`; ignored past the end.
    pub fn set(&self, pfn: u64) {
        if pfn < self.npages {
            let bit = 1u64 << (pfn % WORD_BITS);
            self.words[(pfn / WORD_BITS) as usize].fetch_or(bit, Ordering::Release);
        }
    }

    /// Marks pages `[start, start + len)`, a word at a time; the part past the end is ignored.
    pub fn set_range(&self, start: u64, len: u64) {
        let end = start.saturating_add(len).min(self.npages);
        if start >= end {
            return;
        }
        let (sw, ew) = (
            (start / WORD_BITS) as usize,
            ((end - 1) / WORD_BITS) as usize,
        );
        for (i, w) in self.words[sw..=ew].iter().enumerate() {
            let lo = (sw + i) as u64 * WORD_BITS;
            let from = start.saturating_sub(lo).min(WORD_BITS);
            let to = (end - lo).min(WORD_BITS);
            let m = runs::valid_mask(0, to) & !runs::valid_mask(0, from);
            w.fetch_or(m, Ordering::Release);
        }
    }

    /// Whether `pfn` is marked (false past the end).
    pub fn test(&self, pfn: u64) -> bool {
        pfn < self.npages
            && self.words[(pfn / WORD_BITS) as usize].load(Ordering::Acquire) >> (pfn % WORD_BITS)
                & 1
                == 1
    }

    /// Number of marked pages (a snapshot; marks may race with it).
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// The marked pages, without clearing them.
    pub fn snapshot(&self) -> PageSet {
        self.collect(|w| w.load(Ordering::Acquire))
    }

    /// The marked pages, clearing each word as it is read: one migration round.
    pub fn take(&self) -> PageSet {
        self.collect(|w| w.swap(0, Ordering::AcqRel))
    }

    /// Adds the marked pages to `out`, clearing each word as it is read: one migration round
    /// without allocating a new set.
    ///
    /// Clean words are only loaded, not swapped, so syncing an idle guest's log costs one read
    /// per 64 pages.
    ///
    /// # Panics
    /// If `out` ranges over a different page count.
    pub fn take_into(&self, out: &mut PageSet) {
        assert_eq!(out.npages(), self.npages, "page sets of different sizes");
        let n = self.words.len();
        for (i, (o, w)) in out
            .words_mut()
            .iter_mut()
            .zip(self.words.iter())
            .enumerate()
        {
            if w.load(Ordering::Relaxed) != 0 {
                let mut bits = w.swap(0, Ordering::AcqRel);
                if i + 1 == n {
                    bits &= runs::valid_mask(i, self.npages);
                }
                *o |= bits;
            }
        }
    }

    /// Clears every mark.
    pub fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }

    fn collect(&self, read: impl Fn(&AtomicU64) -> u64) -> PageSet {
        PageSet::from_words_sized(self.npages, self.words.iter().map(read).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_set_take_resets() {
        let b = AtomicPageBitmap::new(200);
        b.set(3);
        b.set(199);
        b.set(200);
        b.set_range(60, 70);
        b.set_range(190, 100);
        assert!(b.test(3) && b.test(129) && !b.test(130) && !b.test(200));
        assert_eq!(b.count(), 1 + 70 + 10);
        assert_eq!(b.snapshot().count(), 81);
        let round = b.take();
        assert_eq!(
            round.runs().collect::<Vec<_>>(),
            crate::memory::page_ranges(&[(3, 1), (60, 70), (190, 10)])
        );
        assert_eq!(b.count(), 0);
        assert!(b.take().is_empty());
        b.set_range(5, 2);
        let mut into = PageSet::from_runs(200, [(100, 1)]).unwrap();
        b.take_into(&mut into);
        assert_eq!(
            into.runs().collect::<Vec<_>>(),
            crate::memory::page_ranges(&[(5, 2), (100, 1)])
        );
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn test_concurrent_marks_are_all_seen() {
        let b = AtomicPageBitmap::new(1 << 16);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let b = &b;
                s.spawn(move || (0..1u64 << 14).for_each(|i| b.set(i * 4 + t)));
            }
        });
        assert_eq!(b.take().count(), 1 << 16);
    }
}
