//! Inflate for guest RAM on host pages larger than 4 KiB (THP, hugetlbfs): the balloon is
//! kept in 4 KiB pages as always, and the [`HostPageTracker`] decides which runs to discard.

use std::time::Instant;

use super::super::host_pages::{HostPageTracker, HugePartial};
use super::discard::count_in;
use super::{BalloonDevice, DeviceConfig};
use crate::device::config::DiscardPolicy;
use crate::device::counters::{add, nanos};
use crate::memory::{Backing, GuestMemory};

/// The device's host-page state: the tracker and a reused buffer of runs to discard.
#[derive(Debug)]
pub(super) struct HugeState {
    tracker: HostPageTracker,
    discard: Vec<(u64, u64)>,
}

impl HugeState {
    /// State for `mem` if its host pages are larger than 4 KiB. Hugetlbfs cannot free part of
    /// a page, so it always waits for whole pages; THP follows `cfg.huge_partial`.
    pub(super) fn for_memory(mem: &GuestMemory, cfg: &DeviceConfig) -> Option<HugeState> {
        let policy = match mem.backing() {
            Backing::Hugetlb => HugePartial::Wait,
            _ => cfg.huge_partial,
        };
        HostPageTracker::new(mem.pages(), mem.host_page_size(), policy).map(|tracker| HugeState {
            tracker,
            discard: Vec::new(),
        })
    }
}

impl BalloonDevice {
    /// The per-host-page view of the balloon, for RAM on host pages larger than 4 KiB.
    pub fn host_pages(&self) -> Option<&HostPageTracker> {
        self.huge.as_ref().map(|h| &h.tracker)
    }

    /// [`BalloonDevice::inflate`] for huge-page RAM: adds `runs` (sorted, disjoint) to the
    /// balloon and discards what the tracker says gives memory back; returns the new pages.
    pub(super) fn inflate_host_pages(&mut self, runs: &[(u64, u64)]) -> u64 {
        let Some(mut huge) = self.huge.take() else {
            return 0;
        };
        let t0 = Instant::now();
        let full_before = huge.tracker.full_host_pages();
        let mut discard = std::mem::take(&mut huge.discard);
        discard.clear();
        huge.tracker.inflate(&self.balloon, runs, &mut discard);
        let (mut fresh, mut again) = (0u64, 0u64);
        for &(start, len) in runs {
            let already = count_in(&self.balloon, start, start + len);
            again += already;
            fresh += len - already;
            self.balloon.insert_range(start, len);
        }
        let per_host = huge.tracker.pages_per_host_page();
        let mut calls = 0u64;
        match self.cfg.discard {
            DiscardPolicy::Never => {}
            DiscardPolicy::Coalesced => {
                for &(start, len) in &discard {
                    calls += 1;
                    self.discard(start, len);
                }
            }
            DiscardPolicy::PerPage => {
                // One call per host page: the smallest unit that frees anything here.
                let unit = match huge.tracker.policy() {
                    HugePartial::Wait => per_host,
                    HugePartial::Split => 1,
                };
                for &(start, len) in &discard {
                    let mut p = start;
                    while p < start + len {
                        let n = unit.min(start + len - p);
                        calls += 1;
                        self.discard(p, n);
                        p += n;
                    }
                }
            }
            DiscardPolicy::Vectored => calls += self.discard_vectored(&discard),
            // Wait-mode runs are whole host pages: keep each thread's share on host-page
            // boundaries, or a page cut in two would only be zeroed (hugetlbfs), never freed.
            DiscardPolicy::Parallel if huge.tracker.policy() == HugePartial::Wait => {
                calls += self.discard_split(&discard, per_host);
            }
            DiscardPolicy::Parallel => calls += self.discard_parallel(&discard),
        }
        let c = &self.counters;
        add(&c.discard_ns, nanos(t0.elapsed()));
        add(&c.discard_calls, calls);
        add(&c.runs, runs.len() as u64);
        add(&c.pages_inflated, fresh);
        add(&c.pages_reinflated, again);
        let filled = huge.tracker.full_host_pages().saturating_sub(full_before);
        add(&c.host_pages_filled, filled);
        huge.discard = discard;
        self.huge = Some(huge);
        fresh
    }

    /// Updates the host-page counts for `runs` about to leave the balloon.
    pub(super) fn deflate_host_pages(&mut self, runs: &[(u64, u64)]) {
        if let Some(h) = self.huge.as_mut() {
            h.tracker.deflate(&self.balloon, runs);
        }
    }
}
