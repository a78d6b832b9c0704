//! Inflate for guest RAM on host pages larger than 4 KiB (THP, hugetlbfs): the balloon is
//! kept in 4 KiB pages as always, and the [`HostPageTracker`] decides which runs to discard.

use std::time::Instant;

use super::super::host_pages::{HostPageTracker, HugePartial};
use super::{BalloonDevice, DeviceConfig};
use crate::device::counters::add;
use crate::memory::{Backing, GuestMemory, PageRange};

/// The device's host-page state: the tracker and a reused buffer of runs to discard.
#[derive(Debug)]
pub(super) struct HugeState {
    tracker: HostPageTracker,
    discard: Vec<PageRange>,
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
    pub(super) fn inflate_host_pages(&mut self, runs: &[PageRange]) -> u64 {
        let Some(mut huge) = self.huge.take() else {
            return 0;
        };
        let t0 = Instant::now();
        let full_before = huge.tracker.full_host_pages();
        let mut discard = std::mem::take(&mut huge.discard);
        discard.clear();
        huge.tracker.inflate(&self.balloon, runs, &mut discard);
        let (fresh, again) = self.add_to_balloon(runs);
        // Wait-mode runs are whole host pages, the smallest unit that frees anything: one call
        // per host page, and each thread's share on host-page boundaries (a hugetlb page cut
        // in two would only be zeroed, never freed).
        let unit = match huge.tracker.policy() {
            HugePartial::Wait => huge.tracker.pages_per_host_page(),
            HugePartial::Split => 1,
        };
        let calls = match self.cfg.discard.mode(unit) {
            Some(mode) => self.discard(&discard, mode),
            None => 0,
        };
        self.count_inflate(t0, calls, runs.len(), fresh, again);
        let filled = huge.tracker.full_host_pages().saturating_sub(full_before);
        add(&self.counters.host_pages_filled, filled);
        huge.discard = discard;
        self.huge = Some(huge);
        fresh
    }

    /// Updates the host-page counts for `runs` about to leave the balloon.
    pub(super) fn deflate_host_pages(&mut self, runs: &[PageRange]) {
        if let Some(h) = self.huge.as_mut() {
            h.tracker.deflate(&self.balloon, runs);
        }
    }
}
