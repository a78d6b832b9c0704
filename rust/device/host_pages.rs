//! The balloon seen in host pages: for guest RAM on 2 MiB pages (THP, hugetlbfs), which
//! discards give memory back.
//!
//! The guest balloons 4 KiB pages (virtio spec §5.5.6: PFNs are 4 KiB units whatever the host
//! page size). A 2 MiB host page only returns memory once all 512 of its 4 KiB pages are in the
//! balloon (hugetlbfs cannot free part of a page at all; THP can only by splitting it). The
//! tracker keeps one `u16` count of ballooned pages per host page (1 KiB per GiB of guest RAM),
//! updated in O(1) per balloon page from the balloon bitmap before each change, and turns each
//! batch of inflated runs into the runs to discard:
//!
//! - [`HugePartial::Wait`]: whole host pages only, each once it is full (the only choice on
//!   hugetlbfs). A fully ballooned 2 MiB page goes back in one call; partial ones wait.
//! - [`HugePartial::Split`] (THP only): the runs as inflated, so the kernel zaps whole aligned
//!   huge pages in one call and splits partial ones to free their 4 KiB pieces now.
//!
//! Deflate only updates the counts: a discarded page faults back in, zeroed, when the guest
//! touches it, and if the guest later balloons the rest of it again it is discarded again.

use crate::util::named_enum;
use std::str::FromStr;

use crate::memory::{PageRange, PAGE_SIZE};
use crate::pages::PageSet;

/// What the device does with a THP huge page only part of which is in the balloon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HugePartial {
    /// Discard a huge page only once all of it is in the balloon (no split, no memory back
    /// from partly ballooned pages until they fill up). Always the case on hugetlbfs.
    #[default]
    Wait,
    /// Discard the 4 KiB pieces at once (`MADV_DONTNEED` splits the huge page).
    Split,
}

named_enum!(HugePartial {
    Wait => "wait" | "whole",
    Split => "split" | "now",
});

impl FromStr for HugePartial {
    type Err = String;

    fn from_str(s: &str) -> Result<HugePartial, String> {
        HugePartial::parse(s)
            .ok_or_else(|| format!("unknown huge-page policy {s:?} (expected wait or split)"))
    }
}

/// Per-host-page balloon counts for guest RAM on host pages larger than 4 KiB.
#[derive(Clone, Debug)]
pub struct HostPageTracker {
    /// log2(4 KiB pages per host page).
    shift: u32,
    guest_pages: u64,
    counts: Vec<u16>,
    policy: HugePartial,
    full: u64,
}

impl HostPageTracker {
    /// A tracker for `guest_pages` 4 KiB pages on host pages of `host_page_size` bytes, or
    /// `None` when host pages are 4 KiB (every discard then returns memory already) or the size
    /// is not a power of two up to 256 MiB (a `u16` count per host page).
    pub fn new(guest_pages: u64, host_page_size: u64, policy: HugePartial) -> Option<Self> {
        let per = host_page_size / PAGE_SIZE;
        if per <= 1 || !per.is_power_of_two() || per > 1 << 15 {
            return None;
        }
        let shift = per.trailing_zeros();
        Some(HostPageTracker {
            shift,
            guest_pages,
            counts: vec![0; usize::try_from(guest_pages.div_ceil(per)).ok()?],
            policy,
            full: 0,
        })
    }

    /// 4 KiB pages per host page.
    pub fn pages_per_host_page(&self) -> u64 {
        1 << self.shift
    }

    /// The policy for partly ballooned host pages.
    pub fn policy(&self) -> HugePartial {
        self.policy
    }

    /// Host pages all of whose 4 KiB pages are in the balloon.
    pub fn full_host_pages(&self) -> u64 {
        self.full
    }

    /// Host pages with some but not all of their pages in the balloon.
    pub fn partial_host_pages(&self) -> u64 {
        let n = self.counts.iter().filter(|c| **c > 0).count() as u64;
        n - self.full
    }

    /// Ballooned 4 KiB pages in host page `hp` (0 past the end).
    pub fn count(&self, hp: u64) -> u64 {
        self.counts.get(slot(hp)).map_or(0, |c| u64::from(*c))
    }

    /// 4 KiB pages host page `hp` covers (the last one may be short).
    fn capacity(&self, hp: u64) -> u64 {
        let start = hp << self.shift;
        (1u64 << self.shift).min(self.guest_pages.saturating_sub(start))
    }

    /// Calls `f(hp, lo, hi)` for each host page `[start, start + len)` touches, cut to the run.
    fn each(&self, start: u64, len: u64, mut f: impl FnMut(u64, u64, u64)) {
        let end = start.saturating_add(len).min(self.guest_pages);
        let mut lo = start;
        while lo < end {
            let hp = lo >> self.shift;
            let hi = ((hp + 1) << self.shift).min(end);
            f(hp, lo, hi);
            lo = hi;
        }
    }

    /// Accounts for `runs` (sorted, disjoint, inside guest RAM) about to enter `balloon`, and
    /// appends to `discard` the runs that give memory back (see [`HugePartial`]). Must be
    /// called before the runs are inserted: the bitmap says which pages are new.
    pub fn inflate(&mut self, balloon: &PageSet, runs: &[PageRange], discard: &mut Vec<PageRange>) {
        for &PageRange { start, len } in runs {
            let mut counts = std::mem::take(&mut self.counts);
            let mut full = self.full;
            self.each(start, len, |hp, lo, hi| {
                let fresh = (hi - lo) - balloon.count_range(lo, hi - lo);
                let cap = self.capacity(hp);
                let c = &mut counts[slot(hp)];
                let was_full = u64::from(*c) == cap;
                // Bounded by `cap` (fits u16): the bitmap never counts a page twice.
                *c = count16((u64::from(*c) + fresh).min(cap));
                let now_full = u64::from(*c) == cap;
                if now_full && !was_full {
                    full += 1;
                }
                // A full host page covered again is discarded again (the guest may have
                // touched it while it was in the balloon), as 4 KiB pages are.
                if now_full && self.policy == HugePartial::Wait {
                    push_run(discard, hp << self.shift, cap);
                }
            });
            self.counts = counts;
            self.full = full;
            if self.policy == HugePartial::Split {
                push_run(discard, start, len);
            }
        }
    }

    /// Accounts for `runs` about to leave `balloon` (call before removing them).
    pub fn deflate(&mut self, balloon: &PageSet, runs: &[PageRange]) {
        for &PageRange { start, len } in runs {
            let mut counts = std::mem::take(&mut self.counts);
            let mut full = self.full;
            self.each(start, len, |hp, lo, hi| {
                let gone = balloon.count_range(lo, hi - lo);
                let cap = self.capacity(hp);
                let c = &mut counts[slot(hp)];
                if gone > 0 && u64::from(*c) == cap {
                    full -= 1;
                }
                *c = count16(u64::from(*c).saturating_sub(gone));
            });
            self.counts = counts;
            self.full = full;
        }
    }

    /// Recounts from `balloon` (after the balloon changed without the tracker).
    pub fn rebuild(&mut self, balloon: &PageSet) {
        self.full = 0;
        for (i, hp) in (0..self.counts.len()).zip(0u64..) {
            let cap = self.capacity(hp);
            let n = balloon.count_range(hp << self.shift, cap);
            self.counts[i] = count16(n);
            if n == cap {
                self.full += 1;
            }
        }
    }
}

/// Appends `(start, len)` to sorted `runs`, joining it to the last run if they touch.
fn push_run(runs: &mut Vec<PageRange>, start: u64, len: u64) {
    if let Some(last) = runs.last_mut() {
        let end = last.end();
        if start <= end {
            // Touching, or the same host page again within one batch.
            last.len = end.max(start + len) - last.start;
            return;
        }
    }
    runs.push(PageRange::new(start, len));
}

#[cfg(test)]
#[path = "host_pages_tests.rs"]
mod tests;

/// Host page `hp` as an index of `counts`: a host page of guest RAM, which is mapped in this
/// process, so its number fits a `usize` (an impossible one indexes nothing).
fn slot(hp: u64) -> usize {
    usize::try_from(hp).unwrap_or(usize::MAX)
}

/// A per-host-page count: at most the pages per host page, 1 << 15 (checked in `new`).
fn count16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
