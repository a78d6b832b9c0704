//! A dense set of guest pages: one bit per PFN in `[0, npages)`, kept in u64 words.

use std::fmt;

use super::runs::{self, Runs, WORD_BITS};
use super::{PageRange, PagesError};

/// A dense page bitmap over PFNs `[0, npages)`.
///
/// Bit `i` of word `w` stands for PFN `64·w + i`, so on a little-endian host the words viewed
/// as bytes ([`as_bytes`](PageSet::as_bytes)) are the Linux `set_bit` byte stream the v3
/// bitmap carries. Bits at or past `npages` in the last word are ignored by every reader, so
/// raw writes through [`words_mut`](PageSet::words_mut) cannot add pages outside the set.
#[derive(Clone, Default)]
pub struct PageSet {
    words: Vec<u64>,
    npages: u64,
}

/// Iterator over the PFNs in a [`PageSet`], lowest first.
#[derive(Clone, Debug)]
pub struct Pfns<'a> {
    words: &'a [u64],
    idx: usize,
    cur: u64,
    npages: u64,
}

impl Iterator for Pfns<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.cur == 0 {
            self.idx += 1;
            self.cur = *self.words.get(self.idx)?;
        }
        let pfn = self.idx as u64 * WORD_BITS + u64::from(self.cur.trailing_zeros());
        self.cur &= self.cur - 1;
        if pfn >= self.npages {
            self.idx = self.words.len();
            self.cur = 0;
            return None;
        }
        Some(pfn)
    }
}

impl PageSet {
    /// An empty set over `npages` pages.
    ///
    /// # Panics
    /// If the bitmap (`npages / 8` bytes) cannot be allocated.
    pub fn new(npages: u64) -> PageSet {
        let n = usize::try_from(runs::words_for(npages)).expect("page set too large");
        PageSet {
            words: vec![0; n],
            npages,
        }
    }

    /// An empty set over `npages` pages, for a size a caller chose: refuses sets over
    /// [`MAX_SET_PAGES`](Self::MAX_SET_PAGES) and reports a failed allocation instead of
    /// aborting.
    pub fn try_new(npages: u64) -> Result<PageSet, PagesError> {
        let too_large = PagesError::SetTooLarge {
            npages,
            max: Self::MAX_SET_PAGES,
        };
        if npages > Self::MAX_SET_PAGES {
            return Err(too_large);
        }
        let n = usize::try_from(runs::words_for(npages)).map_err(|_| too_large)?;
        let mut words = Vec::new();
        if words.try_reserve_exact(n).is_err() {
            return Err(PagesError::SetTooLarge {
                npages,
                max: Self::MAX_SET_PAGES,
            });
        }
        words.resize(n, 0);
        Ok(PageSet { words, npages })
    }

    /// The most pages [`try_new`](Self::try_new) accepts: 2^32, as many as the 32-bit
    /// `num_pages` of the balloon's config space can describe (a 512 MiB bitmap).
    pub const MAX_SET_PAGES: u64 = 1 << 32;

    /// A set holding every page in `[0, npages)`.
    pub fn full(npages: u64) -> PageSet {
        let mut set = PageSet::new(npages);
        set.insert_range(0, npages);
        set
    }

    /// A set over `npages` pages holding the given runs (page ranges, or `(start, len)`
    /// pairs).
    ///
    /// Zero-length runs are skipped; runs may overlap and come in any order.
    pub fn from_runs(
        npages: u64,
        runs: impl IntoIterator<Item = impl Into<PageRange>>,
    ) -> Result<PageSet, PagesError> {
        let mut set = PageSet::try_new(npages)?;
        for r in runs {
            let PageRange { start, len } = r.into();
            set.try_insert_range(start, len)?;
        }
        Ok(set)
    }

    /// A set over `npages` pages from raw words (bit `i` of word `w` = PFN `64·w + i`).
    ///
    /// `words` must be exactly `ceil(npages / 64)` long; bits past `npages` are cleared.
    pub fn from_words(npages: u64, words: Vec<u64>) -> Result<PageSet, PagesError> {
        if words.len() as u64 != runs::words_for(npages) {
            return Err(PagesError::WordCount {
                words: words.len(),
                npages,
            });
        }
        Ok(PageSet::from_words_sized(npages, words))
    }

    /// A set from words already known to be `ceil(npages / 64)` long; clears the tail bits.
    pub(crate) fn from_words_sized(npages: u64, mut words: Vec<u64>) -> PageSet {
        debug_assert_eq!(words.len() as u64, runs::words_for(npages));
        let n = words.len();
        if let Some(last) = words.last_mut() {
            *last &= runs::valid_mask(n - 1, npages);
        }
        PageSet { words, npages }
    }

    /// Number of pages the set ranges over (the exclusive PFN bound).
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// The raw words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The raw words, writable. Bits at or past [`npages`](PageSet::npages) are ignored.
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// The words as bytes: on this little-endian host, bit `i` of the stream is PFN `i`.
    #[cfg(target_endian = "little")]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: u64 has no padding and every byte pattern is a valid u8; the slice covers
        // exactly the words' memory and borrows `self`, so it cannot outlive or alias a write.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        }
    }

    /// A little-endian byte copy of the words, bits past `npages` cleared.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.words.len() * 8);
        for i in 0..self.words.len() {
            out.extend_from_slice(&self.word(i).to_le_bytes());
        }
        out
    }

    /// Word `i` with bits past `npages` masked off.
    pub(crate) fn word(&self, i: usize) -> u64 {
        let w = self.words[i];
        if i + 1 == self.words.len() {
            w & runs::valid_mask(i, self.npages)
        } else {
            w
        }
    }

    /// Index of the first word at or after `from` that holds a page.
    pub(crate) fn next_nonzero_word(&self, from: usize) -> Option<usize> {
        let i = from + self.words.get(from..)?.iter().position(|&w| w != 0)?;
        if self.word(i) != 0 {
            Some(i)
        } else {
            None // only the masked last word can be non-zero yet empty
        }
    }

    /// Index of the last word before `to` that holds a page.
    pub(crate) fn prev_nonzero_word(&self, to: usize) -> Option<usize> {
        let to = to.min(self.words.len());
        let i = self.words[..to].iter().rposition(|&w| w != 0)?;
        if self.word(i) != 0 {
            Some(i)
        } else {
            self.words[..i].iter().rposition(|&w| w != 0)
        }
    }

    /// Whether `pfn` is in the set (false for PFNs past the end).
    pub fn contains(&self, pfn: u64) -> bool {
        pfn < self.npages && self.words[(pfn / WORD_BITS) as usize] >> (pfn % WORD_BITS) & 1 == 1
    }

    /// Adds `pfn`; returns whether it was absent.
    ///
    /// # Panics
    /// If `pfn >= npages`.
    pub fn insert(&mut self, pfn: u64) -> bool {
        assert!(
            pfn < self.npages,
            "pfn {pfn:#x} outside page set of {:#x}",
            self.npages
        );
        let w = &mut self.words[(pfn / WORD_BITS) as usize];
        let bit = 1u64 << (pfn % WORD_BITS);
        let was = *w & bit;
        *w |= bit;
        was == 0
    }

    /// Removes `pfn`; returns whether it was present. PFNs past the end are never present.
    pub fn remove(&mut self, pfn: u64) -> bool {
        if pfn >= self.npages {
            return false;
        }
        let w = &mut self.words[(pfn / WORD_BITS) as usize];
        let bit = 1u64 << (pfn % WORD_BITS);
        let was = *w & bit;
        *w &= !bit;
        was != 0
    }

    /// Adds pages `[start, start + len)`, a word at a time.
    ///
    /// # Panics
    /// If the range reaches past `npages`.
    pub fn insert_range(&mut self, start: u64, len: u64) {
        if let Err(e) = self.try_insert_range(start, len) {
            panic!("{e}");
        }
    }

    /// Adds pages `[start, start + len)`, or says why the range does not fit.
    pub fn try_insert_range(&mut self, start: u64, len: u64) -> Result<(), PagesError> {
        let end = self.check_range(start, len)?;
        runs::set_bits(&mut self.words, start, end);
        Ok(())
    }

    /// Removes pages `[start, start + len)`; the part past `npages` is ignored.
    pub fn remove_range(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len).min(self.npages);
        runs::clear_bits(&mut self.words, start, end);
    }

    /// Number of pages of `[start, start + len)` in the set; the part past `npages` is ignored.
    pub fn count_range(&self, start: u64, len: u64) -> u64 {
        let end = start.saturating_add(len).min(self.npages);
        runs::count_bits(&self.words, start, end)
    }

    fn check_range(&self, start: u64, len: u64) -> Result<u64, PagesError> {
        let end = start
            .checked_add(len)
            .ok_or(PagesError::RunOverflow { pfn: start, len })?;
        if len > 0 && end > self.npages {
            let pfn = start.max(self.npages);
            return Err(PagesError::PageOutsideRam {
                pfn,
                max_pfn: self.npages,
            });
        }
        Ok(end)
    }

    /// Removes every page.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Number of pages in the set.
    pub fn count(&self) -> u64 {
        let Some(last) = self.words.len().checked_sub(1) else {
            return 0;
        };
        let body: u64 = self.words[..last]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        body + u64::from(self.word(last).count_ones())
    }

    /// Whether the set holds no page.
    pub fn is_empty(&self) -> bool {
        self.first().is_none()
    }

    /// Lowest PFN in the set.
    pub fn first(&self) -> Option<u64> {
        self.iter().next()
    }

    /// Highest PFN in the set.
    pub fn last(&self) -> Option<u64> {
        let i = self.prev_nonzero_word(self.words.len())?;
        Some(i as u64 * WORD_BITS + 63 - u64::from(self.word(i).leading_zeros()))
    }

    /// The PFNs in the set, lowest first.
    pub fn iter(&self) -> Pfns<'_> {
        let cur = self.words.first().copied().unwrap_or(0);
        Pfns {
            words: &self.words,
            idx: 0,
            cur,
            npages: self.npages,
        }
    }

    /// The maximal runs `(start_pfn, len)` of the set, lowest first.
    pub fn runs(&self) -> Runs<'_> {
        Runs::new(&self.words, 0, 0, self.npages)
    }

    /// The maximal runs of the set cut to PFNs `[start, end)`, lowest first.
    pub fn runs_in(&self, start: u64, end: u64) -> Runs<'_> {
        Runs::new(&self.words, 0, start, end.min(self.npages))
    }

    /// Adds every page of `other`.
    ///
    /// # Panics
    /// If the two sets range over different page counts.
    pub fn union_with(&mut self, other: &PageSet) {
        self.zip_with(other, |a, b| *a |= b);
    }

    /// Removes every page of `other`.
    ///
    /// # Panics
    /// If the two sets range over different page counts.
    pub fn difference_with(&mut self, other: &PageSet) {
        self.zip_with(other, |a, b| *a &= !b);
    }

    /// Keeps only the pages also in `other`.
    ///
    /// # Panics
    /// If the two sets range over different page counts.
    pub fn intersect_with(&mut self, other: &PageSet) {
        self.zip_with(other, |a, b| *a &= b);
    }

    fn zip_with(&mut self, other: &PageSet, f: impl Fn(&mut u64, u64)) {
        assert_eq!(self.npages, other.npages, "page sets of different sizes");
        for (a, &b) in self.words.iter_mut().zip(&other.words) {
            f(a, b);
        }
    }
}

impl PartialEq for PageSet {
    fn eq(&self, other: &PageSet) -> bool {
        let Some(last) = self.words.len().checked_sub(1) else {
            return self.npages == other.npages;
        };
        self.npages == other.npages
            && self.words[..last] == other.words[..last]
            && self.word(last) == other.word(last)
    }
}

impl Eq for PageSet {}

impl fmt::Debug for PageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let runs: Vec<_> = self.runs().take(SHOWN + 1).collect();
        write!(
            f,
            "PageSet {{ npages: {:#x}, count: {}, runs: [",
            self.npages,
            self.count()
        )?;
        for (i, r) in runs.iter().take(SHOWN).enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{:#x}+{}", r.start, r.len)?;
        }
        if runs.len() > SHOWN {
            write!(f, ", ...")?;
        }
        write!(f, "] }}")
    }
}

impl<'a> IntoIterator for &'a PageSet {
    type Item = u64;
    type IntoIter = Pfns<'a>;

    fn into_iter(self) -> Pfns<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_insert_remove_contains() {
        let mut s = PageSet::new(130);
        assert!(s.insert(0) && s.insert(129) && !s.insert(129));
        assert!(s.contains(129) && !s.contains(128) && !s.contains(130));
        assert!(s.remove(0) && !s.remove(0) && !s.remove(1000));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![129]);
        assert_eq!((s.count(), s.first(), s.last()), (1, Some(129), Some(129)));
    }

    #[test]
    fn test_ranges_and_runs() {
        let mut s = PageSet::new(1000);
        s.insert_range(10, 500);
        s.remove_range(100, 28);
        s.remove_range(990, 100);
        assert_eq!(
            s.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
            vec![(10, 90), (128, 382)]
        );
        assert_eq!(
            s.runs_in(50, 200).collect::<Vec<_>>(),
            crate::memory::page_ranges(&[(50, 50), (128, 72)])
        );
        assert_eq!(s.count(), 472);
        assert_eq!(s.count_range(0, 1000), 472);
        assert_eq!(s.count_range(95, 40), 5 + 7);
        assert_eq!(s.count_range(128, 1), 1);
        assert_eq!(s.count_range(500, u64::MAX), 10);
        assert_eq!(s.count_range(2000, 5), 0);
        assert_eq!(s, PageSet::from_runs(1000, s.runs()).unwrap());
    }

    #[test]
    fn test_tail_bits_past_npages_are_ignored() {
        let mut s = PageSet::new(70);
        s.words_mut()[1] = u64::MAX;
        assert_eq!(s.count(), 6);
        assert_eq!(
            s.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
            vec![(64, 6)]
        );
        assert_eq!(s.iter().count(), 6);
        assert_eq!(s.last(), Some(69));
        assert_eq!(s, PageSet::from_runs(70, [(64, 6)]).unwrap());
        assert_eq!(s.to_le_bytes()[8], 0x3f);
    }

    #[test]
    fn test_byte_view_is_set_bit_order() {
        let mut s = PageSet::new(128);
        s.insert(0);
        s.insert(9);
        s.insert(127);
        let bytes = s.to_le_bytes();
        assert_eq!((bytes[0], bytes[1], bytes[15]), (0x01, 0x02, 0x80));
        #[cfg(target_endian = "little")]
        assert_eq!(s.as_bytes(), &bytes[..]);
    }

    #[test]
    fn test_set_algebra() {
        let a = PageSet::from_runs(200, [(0, 100)]).unwrap();
        let b = PageSet::from_runs(200, [(50, 100)]).unwrap();
        let mut u = a.clone();
        u.union_with(&b);
        let mut d = a.clone();
        d.difference_with(&b);
        let mut i = a.clone();
        i.intersect_with(&b);
        assert_eq!(
            u.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
            vec![(0, 150)]
        );
        assert_eq!(
            d.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
            vec![(0, 50)]
        );
        assert_eq!(
            i.runs().map(|r| (r.start, r.len)).collect::<Vec<_>>(),
            vec![(50, 50)]
        );
    }

    #[test]
    fn test_from_runs_rejects_out_of_range() {
        assert_eq!(
            PageSet::from_runs(100, [(90, 20)]),
            Err(PagesError::PageOutsideRam {
                pfn: 100,
                max_pfn: 100
            })
        );
        assert_eq!(
            PageSet::from_runs(100, [(u64::MAX, 2)]),
            Err(PagesError::RunOverflow {
                pfn: u64::MAX,
                len: 2
            })
        );
        assert_eq!(
            PageSet::from_words(65, vec![0]),
            Err(PagesError::WordCount {
                words: 1,
                npages: 65
            })
        );
        let s = PageSet::from_words(65, vec![0, u64::MAX]).unwrap();
        assert_eq!(s.words(), &[0, 1]);
    }
}
