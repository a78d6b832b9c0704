//! The pages a destination has written, with a summary tree over the bitmap so that clearing
//! the written pages under a zero run costs O(log₆₄ n) per page found plus one search, never a
//! walk over the run: a 16-byte zero run may name the whole guest, and a batch holds 65536.

use crate::memory::PageRange;

/// A page set with summary levels: bit `i` of level `k + 1` is set when word `i` of level `k`
/// is not zero. The top level is one word.
///
/// Sized for this host's own guest RAM (the header's size was checked against it), so every
/// word index fits a usize.
#[derive(Debug)]
pub(crate) struct WrittenPages {
    levels: Vec<Vec<u64>>,
    count: u64,
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "word indices of bitmaps held in memory fit a usize"
)]
impl WrittenPages {
    /// An empty set over `npages` pages.
    pub(crate) fn new(npages: u64) -> WrittenPages {
        let mut levels = vec![vec![0u64; npages.div_ceil(64).max(1) as usize]];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let n = last.len().div_ceil(64);
            levels.push(vec![0u64; n]);
        }
        WrittenPages { levels, count: 0 }
    }

    /// Pages in the set.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Whether `pfn` (inside the set's range) is in the set.
    pub(crate) fn contains(&self, pfn: u64) -> bool {
        self.levels[0][(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    /// Adds `pfn` (inside the set's range); true if it was not there.
    pub(crate) fn insert(&mut self, pfn: u64) -> bool {
        let mut at = pfn;
        for (k, level) in self.levels.iter_mut().enumerate() {
            let w = &mut level[(at / 64) as usize];
            let was = *w;
            *w |= 1 << (at % 64);
            if k == 0 {
                if was == *w {
                    return false;
                }
                self.count += 1;
            }
            if was != 0 {
                break;
            }
            at /= 64;
        }
        true
    }

    fn remove(&mut self, pfn: u64) {
        let mut at = pfn;
        for level in self.levels.iter_mut() {
            let w = &mut level[(at / 64) as usize];
            *w &= !(1 << (at % 64));
            if *w != 0 {
                break;
            }
            at /= 64;
        }
    }

    /// The first page ≥ `from` in the set.
    fn next(&self, from: u64) -> Option<u64> {
        let (mut k, mut at) = (0, from);
        // Climb until a word holds a set bit at or after `at`.
        loop {
            let level = self.levels.get(k)?;
            let i = (at / 64) as usize;
            let word = *level.get(i)?;
            let masked = word & (!0u64 << (at % 64));
            if masked != 0 {
                at = i as u64 * 64 + u64::from(masked.trailing_zeros());
                break;
            }
            // Nothing left in this word: look at the next words, one level up.
            at = i as u64 + 1;
            k += 1;
        }
        // Descend to the lowest set bit under it.
        while k > 0 {
            k -= 1;
            let word = self.levels[k][at as usize];
            at = at * 64 + u64::from(word.trailing_zeros());
        }
        Some(at)
    }

    /// Removes every page of `range` (inside the set's range), handing each run of consecutive
    /// pages removed to `f` in order.
    pub(crate) fn take_runs<E>(
        &mut self,
        range: PageRange,
        mut f: impl FnMut(PageRange) -> Result<(), E>,
    ) -> Result<(), E> {
        let (mut at, end) = (range.start, range.end());
        while let Some(p) = self.next(at).filter(|&p| p < end) {
            let mut n = 0;
            while p + n < end && self.contains(p + n) {
                self.remove(p + n);
                n += 1;
            }
            self.count -= n;
            f(PageRange::new(p, n))?;
            at = p + n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::PageSet;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn test_matches_a_plain_set(
            npages in 1u64..20_000,
            ops in prop::collection::vec((any::<bool>(), any::<u64>(), 1u64..5000), 1..200),
        ) {
            let mut w = WrittenPages::new(npages);
            let mut s = PageSet::new(npages);
            for (insert, a, len) in ops {
                let a = a % npages;
                if insert {
                    prop_assert_eq!(w.insert(a), s.insert(a));
                } else {
                    let end = a.saturating_add(len).min(npages);
                    let mut got = Vec::new();
                    w.take_runs(PageRange::from_bounds(a, end), |r| { got.push(r); Ok::<_, ()>(()) }).unwrap();
                    let want: Vec<_> = s.runs_in(a, end).collect();
                    prop_assert_eq!(got, want);
                    s.remove_range(a, end - a);
                }
                prop_assert_eq!(w.count(), s.count());
            }
        }
    }
}
