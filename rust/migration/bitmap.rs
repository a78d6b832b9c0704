//! Page bitmaps for migration: a plain dense one and an atomic one whose `take` is one round.
//!
//! Minimal on purpose; `pages::PageSet` and `pages::AtomicPageBitmap` will replace these once
//! they land. One bit per 4 KiB guest page in `u64` words, bit `i % 64` of word `i / 64`.
//! Indexes at or past the length are ignored, never panicked on (as vm-memory's `AtomicBitmap`).

use std::sync::atomic::{AtomicU64, Ordering};

const BITS: u64 = 64;

fn words_for(len: u64) -> usize {
    len.div_ceil(BITS) as usize
}

/// Mask of bits `[lo, hi)` within one word (`lo < hi <= 64`).
fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= BITS {
        u64::MAX
    } else {
        (1u64 << hi) - 1
    };
    upper & !((1u64 << lo) - 1)
}

/// Calls `f(word_index, mask)` for each word that `[start, start + n)` (clipped to `len`) touches.
fn for_each_word(len: u64, start: u64, n: u64, mut f: impl FnMut(usize, u64)) {
    let end = start.saturating_add(n).min(len);
    let mut at = start;
    while at < end {
        let w = at / BITS;
        let lo = at % BITS;
        let hi = (end - w * BITS).min(BITS);
        f(w as usize, mask(lo, hi));
        at = (w + 1) * BITS;
    }
}

/// A dense bitmap over guest pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageBitmap {
    words: Vec<u64>,
    len: u64,
}

impl PageBitmap {
    /// An empty bitmap over `len` pages.
    pub fn new(len: u64) -> PageBitmap {
        PageBitmap {
            words: vec![0; words_for(len)],
            len,
        }
    }

    /// A bitmap over `len` pages with every bit set.
    pub fn full(len: u64) -> PageBitmap {
        let mut b = PageBitmap::new(len);
        b.set_range(0, len);
        b
    }

    /// Number of pages the bitmap covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap covers no pages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The backing words (bits past `len` are always zero).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Whether bit `i` is set (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / BITS) as usize] & (1 << (i % BITS)) != 0
    }

    /// Sets bit `i` (ignored past the end).
    pub fn set(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / BITS) as usize] |= 1 << (i % BITS);
        }
    }

    /// Clears bit `i` (ignored past the end).
    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / BITS) as usize] &= !(1 << (i % BITS));
        }
    }

    /// Sets bits `[start, start + n)`, clipped to the bitmap.
    pub fn set_range(&mut self, start: u64, n: u64) {
        let words = &mut self.words;
        for_each_word(self.len, start, n, |w, m| words[w] |= m);
    }

    /// Clears bits `[start, start + n)`, clipped, and returns how many of them were set.
    pub fn clear_range(&mut self, start: u64, n: u64) -> u64 {
        let words = &mut self.words;
        let mut cleared = 0;
        for_each_word(self.len, start, n, |w, m| {
            cleared += u64::from((words[w] & m).count_ones());
            words[w] &= !m;
        });
        cleared
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Number of set bits in `[start, start + n)`, clipped.
    pub fn count_range(&self, start: u64, n: u64) -> u64 {
        let mut count = 0;
        for_each_word(self.len, start, n, |w, m| {
            count += u64::from((self.words[w] & m).count_ones())
        });
        count
    }

    /// Sets every bit that is set in `other` (bits past `self.len()` are dropped).
    pub fn or_assign(&mut self, other: &PageBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.trim();
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
    }

    fn trim(&mut self) {
        if self.len % BITS != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= mask(0, self.len % BITS);
            }
        }
    }

    /// Iterates over the set bits in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let base = wi as u64 * BITS;
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = u64::from(w.trailing_zeros());
                w &= w - 1;
                Some(base + b)
            })
        })
    }

    /// Iterates over maximal runs of set bits as `(first, count)`, ascending.
    pub fn runs(&self) -> Runs<'_> {
        Runs { map: self, at: 0 }
    }

    /// First set bit at or after `from`, if any.
    pub fn next_one(&self, from: u64) -> Option<u64> {
        if from >= self.len {
            return None;
        }
        let mut wi = (from / BITS) as usize;
        let mut w = self.words[wi] & !((1u64 << (from % BITS)) - 1);
        loop {
            if w != 0 {
                return Some(wi as u64 * BITS + u64::from(w.trailing_zeros()));
            }
            wi += 1;
            w = *self.words.get(wi)?;
        }
    }

    /// First clear bit at or after `from`, or `len` if there is none.
    pub fn next_zero(&self, from: u64) -> u64 {
        if from >= self.len {
            return self.len;
        }
        let mut wi = (from / BITS) as usize;
        let mut w = !self.words[wi] & !((1u64 << (from % BITS)) - 1);
        loop {
            if w != 0 {
                return (wi as u64 * BITS + u64::from(w.trailing_zeros())).min(self.len);
            }
            wi += 1;
            match self.words.get(wi) {
                Some(x) => w = !x,
                None => return self.len,
            }
        }
    }
}

/// Iterator over runs of set bits, from [`PageBitmap::runs`].
#[derive(Debug)]
pub struct Runs<'a> {
    map: &'a PageBitmap,
    at: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let first = self.map.next_one(self.at)?;
        let end = self.map.next_zero(first);
        self.at = end;
        Some((first, end - first))
    }
}

/// A bitmap that many threads set concurrently and one thread collects with [`take`].
///
/// Setting is a `fetch_or` with `Release`, collecting a `swap(0)` with `AcqRel`: whatever a
/// thread wrote before it set a bit is visible to the thread that takes that bit.
///
/// [`take`]: AtomicBitmap::take
#[derive(Debug)]
pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl AtomicBitmap {
    /// An empty bitmap over `len` pages.
    pub fn new(len: u64) -> AtomicBitmap {
        AtomicBitmap {
            words: (0..words_for(len)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    /// Number of pages the bitmap covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap covers no pages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets bits `[start, start + n)`, clipped to the bitmap.
    pub fn set_range(&self, start: u64, n: u64) {
        for_each_word(self.len, start, n, |w, m| {
            self.words[w].fetch_or(m, Ordering::Release);
        });
    }

    /// Whether bit `i` is set now.
    pub fn get(&self, i: u64) -> bool {
        i < self.len
            && self.words[(i / BITS) as usize].load(Ordering::Acquire) & (1 << (i % BITS)) != 0
    }

    /// Returns the set bits and clears them, word by word (get-and-reset: one migration round).
    pub fn take(&self) -> PageBitmap {
        let mut out = PageBitmap::new(self.len);
        self.take_into(&mut out);
        out
    }

    /// ORs the set bits into `out` and clears them.
    pub fn take_into(&self, out: &mut PageBitmap) {
        for (o, w) in out.words.iter_mut().zip(self.words.iter()) {
            // Skip the RMW on clean words so an idle guest's log costs a read per word.
            if w.load(Ordering::Relaxed) != 0 {
                *o |= w.swap(0, Ordering::AcqRel);
            }
        }
        out.trim();
    }

    /// Clears every bit.
    pub fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ranges_and_runs() {
        let mut b = PageBitmap::new(200);
        b.set_range(3, 5);
        b.set_range(60, 10);
        b.set(199);
        b.set(200); // ignored
        assert_eq!(b.count_ones(), 16);
        assert_eq!(
            b.runs().collect::<Vec<_>>(),
            vec![(3, 5), (60, 10), (199, 1)]
        );
        assert_eq!(b.count_range(62, 100), 8);
        assert_eq!(b.clear_range(0, 64), 9);
        assert_eq!(b.runs().collect::<Vec<_>>(), vec![(64, 6), (199, 1)]);
        assert_eq!(b.iter_ones().take(3).collect::<Vec<_>>(), vec![64, 65, 66]);
        assert_eq!(PageBitmap::full(130).count_ones(), 130);
        assert_eq!(
            PageBitmap::full(130).runs().collect::<Vec<_>>(),
            vec![(0, 130)]
        );
    }

    #[test]
    fn test_atomic_take_resets() {
        let a = AtomicBitmap::new(100);
        a.set_range(10, 70);
        a.set_range(99, 5);
        let t = a.take();
        assert_eq!(t.runs().collect::<Vec<_>>(), vec![(10, 70), (99, 1)]);
        assert_eq!(a.take().count_ones(), 0);
    }
}
