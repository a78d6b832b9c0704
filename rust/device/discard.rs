//! Applying one chunk of a batch: inflate adds its runs to the host's view of the balloon and
//! has the memory layer discard them per the [`DiscardPolicy`], deflate takes them out; plus
//! the run helpers both use (counting and walking the balloon inside a run, merging runs).
//!
//! The discarding itself (one call per run or page, vectored, parallel; by backing) is
//! [`GuestMemory::discard_runs`](crate::memory::GuestMemory::discard_runs): the device keeps
//! only the bookkeeping.

use std::time::Instant;

use super::{BalloonDevice, ERROR_LOG_LEN};
use crate::device::config::DiscardPolicy;
use crate::device::counters::add;
use crate::memory::{DiscardMode, MemoryError, PageRange};
use crate::pages::PageSet;

impl DiscardPolicy {
    /// How the memory layer discards a batch under this policy, host pages of `unit` 4 KiB
    /// pages being the smallest that free anything; `None` for [`DiscardPolicy::Never`].
    pub(super) fn mode(self, unit: u64) -> Option<DiscardMode> {
        match self {
            DiscardPolicy::Never => None,
            DiscardPolicy::Coalesced => Some(DiscardMode::PerRun),
            DiscardPolicy::PerPage => Some(DiscardMode::PerPage { unit }),
            DiscardPolicy::Vectored => Some(DiscardMode::Vectored),
            DiscardPolicy::Parallel => Some(DiscardMode::Parallel { unit }),
        }
    }
}

impl BalloonDevice {
    /// Discards `runs` (sorted, disjoint) per the policy and adds them to the balloon; returns
    /// the pages newly inflated.
    pub(super) fn inflate(&mut self, runs: &[PageRange]) -> u64 {
        if self.huge.is_some() {
            return self.inflate_host_pages(runs);
        }
        let t0 = Instant::now();
        let (fresh, again) = self.add_to_balloon(runs);
        let mut calls = 0;
        if let Some(mode) = self.cfg.discard.mode(1) {
            calls = self.discard(runs, mode);
            // A discarded page reads back as zeros: a write as far as a migration is concerned.
            for r in runs {
                self.hints
                    .wrote(r.first().addr(), r.len * crate::memory::PAGE_SIZE);
            }
        }
        self.count_inflate(t0, calls, runs.len(), fresh, again);
        fresh
    }

    /// Inserts `runs` into the balloon; returns (pages new to it, pages already in it).
    pub(super) fn add_to_balloon(&mut self, runs: &[PageRange]) -> (u64, u64) {
        let (mut fresh, mut again) = (0u64, 0u64);
        for r in runs {
            let already = count_in(&self.balloon, r.start, r.end());
            again += already;
            fresh += r.len - already;
            self.balloon.insert_range(r.start, r.len);
        }
        (fresh, again)
    }

    /// Adds one applied inflate chunk to the counters.
    pub(super) fn count_inflate(
        &self,
        t0: Instant,
        calls: u64,
        runs: usize,
        fresh: u64,
        again: u64,
    ) {
        let c = &self.counters;
        add(&c.discard_ns, t0.elapsed().as_nanos() as u64);
        add(&c.discard_calls, calls);
        add(&c.runs, runs as u64);
        add(&c.pages_inflated, fresh);
        add(&c.pages_reinflated, again);
    }

    /// Has the memory layer discard `runs` in `mode`, counting and logging failures; returns
    /// the system calls made.
    pub(super) fn discard(&mut self, runs: &[PageRange], mode: DiscardMode) -> u64 {
        // The decoders bounded every page by the guest's page count, and GuestMemory checks each
        // run again: nothing outside guest RAM can be discarded.
        let mut failed: Vec<MemoryError> = Vec::new();
        let calls = self.mem.discard_runs(runs, mode, &mut |e| failed.push(e));
        for e in failed {
            add(&self.counters.discard_errors, 1);
            self.log(e.into());
        }
        calls
    }

    /// Takes `runs` out of the balloon; pages not in it are counted and ignored (a guest that
    /// deflates pages it never inflated only confuses itself). Returns the pages deflated.
    pub(super) fn deflate(&mut self, runs: &[PageRange]) -> u64 {
        let (mut moved, mut stray) = (0u64, 0u64);
        let t0 = Instant::now();
        self.deflate_host_pages(runs);
        for &PageRange { start, len } in runs {
            let n = count_in(&self.balloon, start, start + len);
            moved += n;
            stray += len - n;
            if self.cfg.populate_on_deflate && n > 0 {
                // Populate straight from the walk: no list of the runs inside, whose length
                // the guest would choose (a fragmented balloon has one per page).
                let mem = &self.mem;
                let mut failed: Vec<MemoryError> = Vec::new();
                runs_within(&self.balloon, start, start + len, |r| {
                    if let Err(e) = mem.populate(r.first().addr(), r.len * crate::memory::PAGE_SIZE)
                    {
                        if failed.len() < ERROR_LOG_LEN {
                            failed.push(e);
                        }
                    }
                });
                for e in failed {
                    self.log(e.into());
                }
            }
            self.balloon.remove_range(start, len);
        }
        let c = &self.counters;
        if self.cfg.populate_on_deflate {
            add(&c.discard_ns, t0.elapsed().as_nanos() as u64);
        }
        add(&c.pages_deflated, moved);
        add(&c.pages_stray_deflated, stray);
        moved
    }
}

/// Mask of the bits of word `w` that stand for pages in `[start, end)`.
fn word_mask(w: u64, start: u64, end: u64) -> u64 {
    let lo = (w * 64).max(start) - w * 64;
    let hi = ((w + 1) * 64).min(end) - w * 64;
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

/// Pages of `set` in `[start, end)`, in O((end - start) / 64): the device calls this once per
/// run, so it must not depend on the size of the set.
pub(super) fn count_in(set: &PageSet, start: u64, end: u64) -> u64 {
    let end = end.min(set.npages());
    if start >= end {
        return 0;
    }
    let words = set.words();
    (start / 64..end.div_ceil(64))
        .map(|w| u64::from((words[w as usize] & word_mask(w, start, end)).count_ones()))
        .sum()
}

/// Calls `f` for each maximal run of `set` inside `[start, end)`, cut at the bounds.
fn runs_within(set: &PageSet, start: u64, end: u64, mut f: impl FnMut(PageRange)) {
    let end = end.min(set.npages());
    if start >= end {
        return;
    }
    let words = set.words();
    let mut cur: Option<PageRange> = None;
    for w in start / 64..end.div_ceil(64) {
        let mut b = words[w as usize] & word_mask(w, start, end);
        while b != 0 {
            let tz = u64::from(b.trailing_zeros());
            let ones = u64::from((b >> tz).trailing_ones());
            let next = PageRange::new(w * 64 + tz, ones);
            cur = match cur {
                Some(c) if c.end() == next.start => Some(PageRange::new(c.start, c.len + ones)),
                Some(c) => {
                    f(c);
                    Some(next)
                }
                None => Some(next),
            };
            if tz + ones >= 64 {
                break;
            }
            b &= u64::MAX << (tz + ones);
        }
    }
    if let Some(c) = cur {
        f(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_count_and_runs_within_bounds() {
        let set = PageSet::from_runs(300, [(3, 5), (62, 4), (100, 1), (200, 100)]).unwrap();
        for (s, e) in [(0, 300), (4, 64), (63, 101), (150, 299), (7, 7), (299, 400)] {
            let want: u64 = set.runs_in(s, e).map(|r| r.len).sum();
            assert_eq!(count_in(&set, s, e), want, "[{s}, {e})");
            let mut got = Vec::new();
            runs_within(&set, s, e, |r| got.push(r));
            let want: Vec<PageRange> = set.runs_in(s, e).collect();
            assert_eq!(got, want, "[{s}, {e})");
        }
    }
}
