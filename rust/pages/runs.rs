//! Word-at-a-time bit helpers: setting and clearing bit ranges, and finding maximal runs.
//!
//! Bit `i` of word `w` stands for page `base + 64·w + i`, which is Linux `set_bit` order on
//! `unsigned long[]` and, with little-endian words, bit `i` of the byte stream.

use crate::memory::PageRange;

/// Bits per bitmap word.
pub const WORD_BITS: u64 = 64;

/// Words needed for `nbits` bits.
pub(crate) fn words_for(nbits: u64) -> u64 {
    nbits.div_ceil(WORD_BITS)
}

/// Mask of bits `[lo, hi)` of one word; needs `lo <= hi <= 64`.
fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= WORD_BITS {
        u64::MAX
    } else {
        (1u64 << hi) - 1
    };
    let lower = if lo >= WORD_BITS {
        u64::MAX
    } else {
        (1u64 << lo) - 1
    };
    upper & !lower
}

/// Mask of the bits of word `idx` that lie below bit `nbits`.
pub(crate) fn valid_mask(idx: usize, nbits: u64) -> u64 {
    let lo = idx as u64 * WORD_BITS;
    mask(0, nbits.saturating_sub(lo).min(WORD_BITS))
}

/// Sets bits `[start, end)`; the caller guarantees `end <= 64·words.len()`.
pub(crate) fn set_bits(words: &mut [u64], start: u64, end: u64) {
    apply_bits(words, start, end, |w, m| *w |= m);
}

/// Clears bits `[start, end)`; the caller guarantees `end <= 64·words.len()`.
pub(crate) fn clear_bits(words: &mut [u64], start: u64, end: u64) {
    apply_bits(words, start, end, |w, m| *w &= !m);
}

/// Number of set bits in `[start, end)`; the caller guarantees `end <= 64·words.len()`.
pub(crate) fn count_bits(words: &[u64], start: u64, end: u64) -> u64 {
    if start >= end {
        return 0;
    }
    let (sw, sb) = ((start / WORD_BITS) as usize, start % WORD_BITS);
    let (ew, eb) = (((end - 1) / WORD_BITS) as usize, (end - 1) % WORD_BITS + 1);
    let ones = |w: u64| u64::from(w.count_ones());
    if sw == ew {
        return ones(words[sw] & mask(sb, eb));
    }
    let middle: u64 = words[sw + 1..ew].iter().map(|&w| ones(w)).sum();
    ones(words[sw] & mask(sb, WORD_BITS)) + middle + ones(words[ew] & mask(0, eb))
}

fn apply_bits(words: &mut [u64], start: u64, end: u64, f: impl Fn(&mut u64, u64)) {
    if start >= end {
        return;
    }
    let (sw, sb) = ((start / WORD_BITS) as usize, start % WORD_BITS);
    let (ew, eb) = (((end - 1) / WORD_BITS) as usize, (end - 1) % WORD_BITS + 1);
    if sw == ew {
        f(&mut words[sw], mask(sb, eb));
        return;
    }
    f(&mut words[sw], mask(sb, WORD_BITS));
    // Whole words in the middle: one store per 64 pages.
    for w in &mut words[sw + 1..ew] {
        f(w, u64::MAX);
    }
    f(&mut words[ew], mask(0, eb));
}

/// Calls `f(start, len)` for each run of set bits inside one word whose bit 0 is page `base`.
///
/// Runs that touch the word's ends are reported cut at them; a [`Coalescer`] joins them.
///
/// [`Coalescer`]: super::Coalescer
#[inline]
pub(crate) fn word_runs(base: u64, mut w: u64, mut f: impl FnMut(u64, u64)) {
    while w != 0 {
        let tz = w.trailing_zeros();
        let ones = (w >> tz).trailing_ones();
        f(base + u64::from(tz), u64::from(ones));
        let done = tz + ones;
        w = if done >= 64 {
            0
        } else {
            w & (u64::MAX << done)
        };
    }
}

/// Iterator over the maximal runs of set bits in a word slice, as [`PageRange`]s.
///
/// Zero words are skipped whole and run ends are found with `trailing_zeros`/`trailing_ones`,
/// so the cost is one step per zero word plus one per run.
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    words: &'a [u64],
    /// Page of bit 0 of `words[0]`.
    base: u64,
    /// Index of the word `cur` came from.
    idx: usize,
    /// The bits of `words[idx]` not yet reported.
    cur: u64,
    /// Bits at or past this offset from `base` are ignored.
    nbits: u64,
}

impl<'a> Runs<'a> {
    /// Runs among bits `[from, nbits)` of `words`, reported as pages `base + bit`.
    pub(crate) fn new(words: &'a [u64], base: u64, from: u64, nbits: u64) -> Runs<'a> {
        let nbits = nbits.min(words.len() as u64 * WORD_BITS);
        if from >= nbits {
            return Runs {
                words,
                base,
                idx: words.len(),
                cur: 0,
                nbits,
            };
        }
        let idx = (from / WORD_BITS) as usize;
        let cur = words.get(idx).copied().unwrap_or(0) & mask(from % WORD_BITS, WORD_BITS);
        Runs {
            words,
            base,
            idx,
            cur,
            nbits,
        }
    }

    fn finish(&mut self) -> Option<PageRange> {
        self.idx = self.words.len();
        self.cur = 0;
        None
    }
}

impl Iterator for Runs<'_> {
    type Item = PageRange;

    fn next(&mut self) -> Option<PageRange> {
        while self.cur == 0 {
            self.idx += 1;
            match self.words.get(self.idx) {
                Some(&w) => self.cur = w,
                None => return self.finish(),
            }
        }
        let tz = u64::from(self.cur.trailing_zeros());
        let start = self.idx as u64 * WORD_BITS + tz;
        if start >= self.nbits {
            return self.finish();
        }
        let ones = u64::from((self.cur >> tz).trailing_ones());
        let mut end;
        if tz + ones < WORD_BITS {
            end = start + ones;
            self.cur &= u64::MAX << (tz + ones);
        } else {
            // The run reaches the end of this word: skip full words, then count into the next.
            // Only words below `nbits` are looked at, so a run cut short by `runs_in` costs
            // the words it covers, not the rest of the set.
            let words = usize::try_from(self.nbits.div_ceil(WORD_BITS)).unwrap_or(usize::MAX);
            let limit = words.min(self.words.len());
            self.idx += 1;
            while self.idx < limit && self.words[self.idx] == u64::MAX {
                self.idx += 1;
            }
            match self.words.get(self.idx) {
                Some(&w) if self.idx < limit => {
                    let t = w.trailing_ones();
                    end = self.idx as u64 * WORD_BITS + u64::from(t);
                    self.cur = w & (u64::MAX << t);
                }
                _ => {
                    end = self.idx as u64 * WORD_BITS;
                    self.cur = 0;
                }
            }
        }
        if end >= self.nbits {
            end = self.nbits;
            self.finish();
        }
        Some(PageRange::new(self.base + start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(words: &[u64], nbits: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in 0..nbits {
            if words[(b / 64) as usize] >> (b % 64) & 1 == 1 {
                match out.last_mut() {
                    Some((s, l)) if *s + *l == b => *l += 1,
                    _ => out.push((b, 1)),
                }
            }
        }
        out
    }

    #[test]
    fn test_runs_match_bit_by_bit_scan() {
        let patterns: [&[u64]; 6] = [
            &[],
            &[0, 0, 0],
            &[u64::MAX, u64::MAX, 1],
            &[1 << 63, u64::MAX, 0, 0x0f0f],
            &[0xaaaa_aaaa_aaaa_aaaa, 0x5555_5555_5555_5555],
            &[u64::MAX, u64::MAX, u64::MAX],
        ];
        for words in patterns {
            for nbits in [0, 1, 63, 64, 65, 100, 128, 150, 192] {
                let nbits = nbits.min(words.len() as u64 * 64);
                let got: Vec<_> = Runs::new(words, 0, 0, nbits)
                    .map(|r| (r.start, r.len))
                    .collect();
                assert_eq!(got, naive(words, nbits), "{words:x?} {nbits}");
            }
        }
    }

    #[test]
    fn test_runs_from_offset_and_base() {
        let words = [u64::MAX, u64::MAX];
        let got: Vec<_> = Runs::new(&words, 1000, 70, 128).collect();
        assert_eq!(got, vec![PageRange::new(1070, 58)]);
    }

    #[test]
    fn test_set_and_clear_bits_across_words() {
        let mut w = [0u64; 4];
        set_bits(&mut w, 3, 200);
        assert_eq!(naive(&w, 256), vec![(3, 197)]);
        clear_bits(&mut w, 64, 128);
        assert_eq!(naive(&w, 256), vec![(3, 61), (128, 72)]);
        set_bits(&mut w, 64, 64);
        assert_eq!(naive(&w, 256), vec![(3, 61), (128, 72)]);
        set_bits(&mut w, 255, 256);
        assert_eq!(w[3] >> 63, 1);
    }

    #[test]
    fn test_word_runs_reports_each_run() {
        let mut got = Vec::new();
        word_runs(64, 0x8000_0000_0000_00f1, |s, l| got.push((s, l)));
        assert_eq!(got, vec![(64, 1), (68, 4), (127, 1)]);
        got.clear();
        word_runs(0, u64::MAX, |s, l| got.push((s, l)));
        assert_eq!(got, vec![(0, 64)]);
    }
}
