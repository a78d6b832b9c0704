//! Giving guest pages back to the host: the one discard backend the balloon device and free
//! page reporting share.
//!
//! The backing decides the call (see [`Region::discard`](super::region::Region)): private
//! anonymous RAM `MADV_DONTNEED`, a shared memfd or file `fallocate(PUNCH_HOLE)` (or
//! `MADV_REMOVE`). A [`DiscardMode`] decides how many calls a batch of runs costs.

use super::address::{GuestAddress, PageRange};
use super::error::MemoryError;
use super::guest::GuestMemory;

/// Average run length, in pages, below which a [`DiscardMode::Parallel`] batch goes vectored.
pub const PARALLEL_DISCARD_MIN_RUN_PAGES: u64 = 512;
/// Most threads a [`DiscardMode::Parallel`] batch uses (bounded by the host's cores).
pub const PARALLEL_DISCARD_THREADS: usize = 4;
/// Smallest batch, in pages, worth splitting across threads (64 MiB).
pub const PARALLEL_DISCARD_MIN_PAGES: u64 = 16384;

/// How a batch of runs is discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardMode {
    /// One call per run.
    PerRun,
    /// One call per `unit` pages of each run (1: per 4 KiB page, as QEMU does; a huge page's
    /// worth where only whole host pages free anything).
    PerPage {
        /// Pages per call.
        unit: u64,
    },
    /// Up to 1024 runs per `process_madvise(MADV_DONTNEED)` on private anonymous RAM (one TLB
    /// flush per call instead of per run); one call per run where the kernel refuses or the
    /// RAM is a file.
    Vectored,
    /// Split by page count across up to [`PARALLEL_DISCARD_THREADS`] threads, each share a
    /// whole number of `unit` pages (a hugetlb page cut in two would only be zeroed). With
    /// `unit` 1, a batch of short runs (average below [`PARALLEL_DISCARD_MIN_RUN_PAGES`]) goes
    /// [`DiscardMode::Vectored`] instead: many small `madvise` calls from several threads fight
    /// over the mmap lock and TLB shootdowns (measured 5x slower than one thread).
    Parallel {
        /// Pages per indivisible unit.
        unit: u64,
    },
}

impl GuestMemory {
    /// Gives the pages in `[addr, addr + len)` (whole pages inside one region) back to the
    /// host; they read back as zero.
    ///
    /// Anonymous RAM uses `MADV_DONTNEED`; memfd RAM punches a hole in the file
    /// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), which every mapping of it sees at once.
    pub fn discard(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let (r, off) = self.locate_pages(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        r.discard(off, len)
    }

    /// [`discard`](GuestMemory::discard) of a run of pages.
    pub fn discard_pages(&self, run: PageRange) -> Result<(), MemoryError> {
        let (addr, len) = run.byte_span().ok_or_else(|| self.overflowing(run))?;
        self.discard(addr, len)
    }

    /// The error for a run whose byte span overflows a u64.
    fn overflowing(&self, run: PageRange) -> MemoryError {
        MemoryError::OutOfRange {
            addr: run.start,
            len: run.len,
            size: self.size(),
        }
    }

    /// Discards `runs` as `mode` says, passing each failure to `failed` (the runs come from a
    /// guest: one outside guest RAM is refused, the others still discarded); returns the
    /// system calls made.
    pub fn discard_runs(
        &self,
        runs: &[PageRange],
        mode: DiscardMode,
        failed: &mut dyn FnMut(MemoryError),
    ) -> u64 {
        match mode {
            DiscardMode::PerRun => self.discard_each(runs, failed),
            DiscardMode::PerPage { unit } => {
                let unit = unit.max(1);
                let mut calls = 0;
                for r in runs {
                    if r.byte_span().is_none() {
                        calls += 1;
                        failed(self.overflowing(*r));
                        continue;
                    }
                    let mut p = r.start;
                    while p < r.end() {
                        let n = unit.min(r.end() - p);
                        calls += 1;
                        if let Err(e) = self.discard_pages(PageRange::new(p, n)) {
                            failed(e);
                        }
                        p += n;
                    }
                }
                calls
            }
            DiscardMode::Vectored => self.discard_vectored(runs, failed),
            DiscardMode::Parallel { unit } => {
                let total: u64 = runs.iter().map(|r| r.len).sum();
                let short = PARALLEL_DISCARD_MIN_RUN_PAGES.saturating_mul(runs.len() as u64);
                if unit <= 1 && total < short {
                    return self.discard_vectored(runs, failed);
                }
                self.discard_split(runs, unit, failed)
            }
        }
    }

    /// One call per run.
    fn discard_each(&self, runs: &[PageRange], failed: &mut dyn FnMut(MemoryError)) -> u64 {
        for &r in runs {
            if let Err(e) = self.discard_pages(r) {
                failed(e);
            }
        }
        runs.len() as u64
    }

    /// One `process_madvise` per 1024 runs where the kernel allows it, otherwise one call per
    /// run from the first run not done.
    fn discard_vectored(&self, runs: &[PageRange], failed: &mut dyn FnMut(MemoryError)) -> u64 {
        let mut calls = 0u64;
        let mut from = 0usize;
        if let Some(m) = self.vectored.get().filter(|_| self.is_private()) {
            match m.discard(self, runs, &mut calls) {
                Ok(()) => from = runs.len(),
                Err((done, _, kernel)) => {
                    // Unsupported here (or partial): finish run by run, and from now on.
                    from = done;
                    if kernel {
                        self.vectored.refuse();
                    }
                }
            }
        }
        calls + self.discard_each(&runs[from..], failed)
    }

    /// Splits `runs` into page-balanced shares of whole `unit`s, one per thread; small batches
    /// stay on this thread, one call per run.
    fn discard_split(
        &self,
        runs: &[PageRange],
        unit: u64,
        failed: &mut dyn FnMut(MemoryError),
    ) -> u64 {
        let total: u64 = runs.iter().map(|r| r.len).sum();
        let threads = cores().min(PARALLEL_DISCARD_THREADS);
        if threads < 2 || total < PARALLEL_DISCARD_MIN_PAGES {
            return self.discard_each(runs, failed);
        }
        let shares = split_runs(runs, threads, unit);
        let errors: Vec<Vec<MemoryError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = shares
                .iter()
                .map(|share| {
                    scope.spawn(move || {
                        share
                            .iter()
                            .filter_map(|&r| self.discard_pages(r).err())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        errors.into_iter().flatten().for_each(failed);
        shares.iter().map(|s| s.len() as u64).sum()
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
fn split_runs(runs: &[PageRange], n: usize, unit: u64) -> Vec<Vec<PageRange>> {
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let unit = unit.max(1);
    let per = total.div_ceil(n as u64).div_ceil(unit).max(1) * unit;
    let mut out: Vec<Vec<PageRange>> = Vec::new();
    let mut share = Vec::new();
    let mut room = per;
    for &PageRange { mut start, mut len } in runs {
        while len > 0 {
            if room == 0 {
                out.push(std::mem::take(&mut share));
                room = per;
            }
            let take = len.min(room);
            share.push(PageRange::new(start, take));
            start += take;
            len -= take;
            room -= take;
        }
    }
    out.push(share);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::page_ranges as ranges;
    use crate::memory::{Backing, PAGE_SIZE};

    #[test]
    fn test_split_runs_balances_pages_and_loses_nothing() {
        let runs = ranges(&[(0, 10), (20, 3), (100, 50)]);
        for n in 1..6 {
            let shares = split_runs(&runs, n, 1);
            assert!(shares.len() <= n);
            let mut flat: Vec<PageRange> = shares.iter().flatten().copied().collect();
            flat.sort();
            let pages: Vec<u64> = flat.iter().flat_map(|r| r.start..r.end()).collect();
            let want: Vec<u64> = runs.iter().flat_map(|r| r.start..r.end()).collect();
            assert_eq!(pages, want);
            let per = 63u64.div_ceil(n as u64);
            assert!(shares
                .iter()
                .all(|s| s.iter().map(|r| r.len).sum::<u64>() <= per));
        }
    }

    #[test]
    fn test_every_mode_zeroes_exactly_the_runs_and_reports_bad_ones() {
        let modes = [
            DiscardMode::PerRun,
            DiscardMode::PerPage { unit: 1 },
            DiscardMode::PerPage { unit: 2 },
            DiscardMode::Vectored,
            DiscardMode::Parallel { unit: 1 },
            DiscardMode::Parallel { unit: 4 },
        ];
        for backing in [Backing::Anonymous, Backing::Memfd] {
            for mode in modes {
                let mem = GuestMemory::new(64 * PAGE_SIZE, backing).unwrap();
                mem.fill(GuestAddress(0), mem.size(), 9).unwrap();
                let runs = ranges(&[(1, 2), (10, 4), (63, 1), (64, 1), (u64::MAX, 1)]);
                let mut bad = Vec::new();
                let calls = mem.discard_runs(&runs, mode, &mut |e| bad.push(e));
                assert!(calls >= 1, "{backing:?} {mode:?}");
                assert_eq!(bad.len(), 2, "{backing:?} {mode:?}: {bad:?}");
                for p in 0..64u64 {
                    let zero = runs.iter().any(|r| r.contains(p));
                    let b = mem.read_u8(GuestAddress(p * PAGE_SIZE + 7)).unwrap();
                    assert_eq!(b == 0, zero, "{backing:?} {mode:?} page {p}");
                }
            }
        }
    }

    #[test]
    fn test_per_page_calls_count_units() {
        let mem = GuestMemory::new(64 * PAGE_SIZE, Backing::Anonymous).unwrap();
        let runs = ranges(&[(0, 5), (10, 1)]);
        let mut none = |e: MemoryError| panic!("{e}");
        assert_eq!(
            mem.discard_runs(&runs, DiscardMode::PerPage { unit: 1 }, &mut none),
            6
        );
        assert_eq!(
            mem.discard_runs(&runs, DiscardMode::PerPage { unit: 2 }, &mut none),
            4
        );
        assert_eq!(mem.discard_runs(&runs, DiscardMode::PerRun, &mut none), 2);
    }
}
