//! Applying one chunk of a batch: inflate discards its runs per the [`DiscardPolicy`] and adds
//! them to the host's view of the balloon, deflate takes them out; plus the run helpers both
//! use (counting and walking the balloon inside a run, merging and splitting runs).

use std::time::Instant;

use super::{BalloonDevice, ERROR_LOG_LEN};
use crate::device::config::{
    DiscardPolicy, PARALLEL_DISCARD_MIN_PAGES, PARALLEL_DISCARD_MIN_RUN_PAGES,
    PARALLEL_DISCARD_THREADS,
};
use crate::device::counters::add;
use crate::device::vectored::SelfMadvise;
use crate::memory::{Backing, MemoryError, Pfn, PAGE_SIZE};
use crate::pages::PageSet;

impl BalloonDevice {
    /// Discards `runs` (sorted, disjoint) per the policy and adds them to the balloon; returns
    /// the pages newly inflated.
    pub(super) fn inflate(&mut self, runs: &[(u64, u64)]) -> u64 {
        if self.huge.is_some() {
            return self.inflate_host_pages(runs);
        }
        let t0 = Instant::now();
        let (mut calls, mut fresh, mut again) = (0u64, 0u64, 0u64);
        for &(start, len) in runs {
            let already = count_in(&self.balloon, start, start + len);
            again += already;
            fresh += len - already;
            self.balloon.insert_range(start, len);
            match self.cfg.discard {
                DiscardPolicy::Never | DiscardPolicy::Vectored | DiscardPolicy::Parallel => {}
                DiscardPolicy::Coalesced => {
                    calls += 1;
                    self.discard(start, len);
                }
                DiscardPolicy::PerPage => {
                    for p in start..start + len {
                        calls += 1;
                        self.discard(p, 1);
                    }
                }
            }
        }
        match self.cfg.discard {
            DiscardPolicy::Vectored => calls += self.discard_vectored(runs),
            DiscardPolicy::Parallel => calls += self.discard_parallel(runs),
            _ => {}
        }
        if self.cfg.discard != DiscardPolicy::Never {
            // A discarded page reads back as zeros: a write as far as a migration is concerned.
            for &(start, len) in runs {
                self.hints.wrote(Pfn(start).addr(), len * PAGE_SIZE);
            }
        }
        let c = &self.counters;
        add(&c.discard_ns, t0.elapsed().as_nanos() as u64);
        add(&c.discard_calls, calls);
        add(&c.runs, runs.len() as u64);
        add(&c.pages_inflated, fresh);
        add(&c.pages_reinflated, again);
        fresh
    }

    /// Discards `runs` with one `process_madvise` per 1024 runs where the kernel allows it,
    /// otherwise (memfd RAM, an older kernel) one discard per run; returns the calls made.
    pub(super) fn discard_vectored(&mut self, runs: &[(u64, u64)]) -> u64 {
        let mut calls = 0u64;
        let mut from = 0usize;
        if matches!(self.mem.backing(), Backing::Anonymous | Backing::Thp) && self.vectored_ok {
            if self.self_madvise.is_none() {
                self.self_madvise = SelfMadvise::open();
            }
            match &self.self_madvise {
                Some(m) => match m.discard(&self.mem, runs, &mut calls) {
                    Ok(()) => from = runs.len(),
                    Err((done, _)) => {
                        // Not supported here (or partial): finish run by run from now on.
                        from = done;
                        self.vectored_ok = false;
                    }
                },
                None => self.vectored_ok = false,
            }
        }
        for &(start, len) in &runs[from..] {
            calls += 1;
            self.discard(start, len);
        }
        calls
    }

    /// Discards `runs` split into page-balanced shares, one per thread; returns the calls made.
    ///
    /// Only long runs gain: many small `madvise` calls from several threads fight over the
    /// mmap lock and TLB shootdowns (measured 5x slower than one thread on a fragmented
    /// balloon), so a batch of short runs goes to the vectored path instead.
    pub(super) fn discard_parallel(&mut self, runs: &[(u64, u64)]) -> u64 {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        if total < PARALLEL_DISCARD_MIN_RUN_PAGES.saturating_mul(runs.len() as u64) {
            return self.discard_vectored(runs);
        }
        self.discard_split(runs, 1)
    }

    /// Discards `runs` on up to [`PARALLEL_DISCARD_THREADS`] threads, each share a whole number
    /// of `unit` pages (a host page: a hugetlb page cut in two would only be zeroed); returns
    /// the calls made. Small batches stay on this thread.
    pub(super) fn discard_split(&mut self, runs: &[(u64, u64)], unit: u64) -> u64 {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        let cores = cores();
        let threads = cores.min(PARALLEL_DISCARD_THREADS);
        if threads < 2 || total < PARALLEL_DISCARD_MIN_PAGES {
            for &(start, len) in runs {
                self.discard(start, len);
            }
            return runs.len() as u64;
        }
        let shares = split_runs(runs, threads, unit);
        let mem = &self.mem;
        let results: Vec<Vec<MemoryError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = shares
                .iter()
                .map(|share| {
                    scope.spawn(move || {
                        // Same bounds as `discard`: decoded pages, checked again by GuestMemory.
                        share
                            .iter()
                            .filter_map(|&(s, l)| mem.discard(Pfn(s).addr(), l * PAGE_SIZE).err())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        for e in results.into_iter().flatten() {
            add(&self.counters.discard_errors, 1);
            self.log(e.into());
        }
        shares.iter().map(|s| s.len() as u64).sum()
    }

    pub(super) fn discard(&mut self, start: u64, len: u64) {
        // The decoder bounded every page by the guest's page count, and GuestMemory checks the
        // range again: nothing outside guest RAM can be discarded.
        if let Err(e) = self.mem.discard(Pfn(start).addr(), len * PAGE_SIZE) {
            add(&self.counters.discard_errors, 1);
            self.log(e.into());
        }
    }

    /// Takes `runs` out of the balloon; pages not in it are counted and ignored (a guest that
    /// deflates pages it never inflated only confuses itself). Returns the pages deflated.
    pub(super) fn deflate(&mut self, runs: &[(u64, u64)]) -> u64 {
        let (mut moved, mut stray) = (0u64, 0u64);
        let t0 = Instant::now();
        self.deflate_host_pages(runs);
        for &(start, len) in runs {
            let n = count_in(&self.balloon, start, start + len);
            moved += n;
            stray += len - n;
            if self.cfg.populate_on_deflate && n > 0 {
                // Populate straight from the walk: no list of the runs inside, whose length
                // the guest would choose (a fragmented balloon has one per page).
                let mem = &self.mem;
                let mut failed: Vec<MemoryError> = Vec::new();
                runs_within(&self.balloon, start, start + len, |s, l| {
                    if let Err(e) = mem.populate(Pfn(s).addr(), l * PAGE_SIZE) {
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

/// Calls `f(first, len)` for each maximal run of `set` inside `[start, end)`, cut at the bounds.
fn runs_within(set: &PageSet, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
    let end = end.min(set.npages());
    if start >= end {
        return;
    }
    let words = set.words();
    let mut cur: Option<(u64, u64)> = None;
    for w in start / 64..end.div_ceil(64) {
        let mut b = words[w as usize] & word_mask(w, start, end);
        while b != 0 {
            let tz = u64::from(b.trailing_zeros());
            let ones = u64::from((b >> tz).trailing_ones());
            let (s, l) = (w * 64 + tz, ones);
            cur = match cur {
                Some((cs, cl)) if cs + cl == s => Some((cs, cl + l)),
                Some((cs, cl)) => {
                    f(cs, cl);
                    Some((s, l))
                }
                None => Some((s, l)),
            };
            if tz + ones >= 64 {
                break;
            }
            b &= u64::MAX << (tz + ones);
        }
    }
    if let Some((s, l)) = cur {
        f(s, l);
    }
}

/// Sorts runs and merges those that overlap or touch, in place.
pub fn merge_runs(runs: &mut Vec<(u64, u64)>) {
    if runs.len() < 2 {
        return;
    }
    if !runs.windows(2).all(|w| w[0].0 <= w[1].0) {
        runs.sort_unstable();
    }
    let mut out = 0;
    for i in 1..runs.len() {
        let (s, l) = runs[i];
        let (ps, pl) = runs[out];
        if s <= ps + pl {
            runs[out].1 = (s + l).max(ps + pl) - ps;
        } else {
            out += 1;
            runs[out] = (s, l);
        }
    }
    runs.truncate(out + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_count_and_runs_within_bounds() {
        let set = PageSet::from_runs(300, [(3, 5), (62, 4), (100, 1), (200, 100)]).unwrap();
        for (s, e) in [(0, 300), (4, 64), (63, 101), (150, 299), (7, 7), (299, 400)] {
            let want: u64 = set.runs_in(s, e).map(|r| r.1).sum();
            assert_eq!(count_in(&set, s, e), want, "[{s}, {e})");
            let mut got = Vec::new();
            runs_within(&set, s, e, |a, l| got.push((a, l)));
            let want: Vec<(u64, u64)> = set.runs_in(s, e).collect();
            assert_eq!(got, want, "[{s}, {e})");
        }
    }

    #[test]
    fn test_merge_runs_joins_overlapping_and_touching() {
        let mut r = vec![(10, 2), (0, 4), (4, 1), (11, 5), (30, 1)];
        merge_runs(&mut r);
        assert_eq!(r, vec![(0, 5), (10, 6), (30, 1)]);
        let mut one = vec![(3, 1)];
        merge_runs(&mut one);
        assert_eq!(one, vec![(3, 1)]);
    }
}

/// The CPUs this process may use, read once: `available_parallelism` reads cgroup files on
/// every call, which showed up per batch in fuzz profiles.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Cuts sorted, disjoint `runs` into at most `n` lists of about equal page counts, each a
/// multiple of `unit` pages but the last (a run may be split, at a `unit` boundary when the
/// runs are `unit`-aligned).
fn split_runs(runs: &[(u64, u64)], n: usize, unit: u64) -> Vec<Vec<(u64, u64)>> {
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let unit = unit.max(1);
    let per = total.div_ceil(n as u64).div_ceil(unit).max(1) * unit;
    let mut out: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut share = Vec::new();
    let mut room = per;
    for &(mut start, mut len) in runs {
        while len > 0 {
            if room == 0 {
                out.push(std::mem::take(&mut share));
                room = per;
            }
            let take = len.min(room);
            share.push((start, take));
            start += take;
            len -= take;
            room -= take;
        }
    }
    out.push(share);
    out
}

#[cfg(test)]
mod split_tests {
    use super::split_runs;

    #[test]
    fn test_split_runs_balances_pages_and_loses_nothing() {
        let runs = [(0, 10), (20, 3), (100, 50)];
        for n in 1..6 {
            let shares = split_runs(&runs, n, 1);
            assert!(shares.len() <= n);
            let mut flat: Vec<(u64, u64)> = shares.iter().flatten().copied().collect();
            flat.sort();
            let pages: Vec<u64> = flat.iter().flat_map(|&(s, l)| s..s + l).collect();
            let want: Vec<u64> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
            assert_eq!(pages, want);
            let per = 63u64.div_ceil(n as u64);
            assert!(shares
                .iter()
                .all(|s| s.iter().map(|r| r.1).sum::<u64>() <= per));
        }
    }
}
