//! State the serving thread shares with the host's control side (Python, the CLI): the target,
//! counters that outlive one negotiation, the last stats sample, the error log.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::device::DeviceCounters;
use crate::device::HintCounters;
pub(crate) use crate::util::lock;

/// Errors kept for [`VhostStatus::errors`].
pub const ERROR_LOG: usize = 64;

/// Counters summed over every device instance (each negotiation builds a fresh one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Pages discarded (inflate, reporting, hints).
    pub pages_discarded: u64,
    /// Discard calls made.
    pub discard_calls: u64,
    /// Pages reported.
    pub pages_reported: u64,
    /// Pages hinted.
    pub pages_hinted: u64,
    /// Inflate buffers.
    pub inflate_buffers: u64,
    /// Deflate buffers.
    pub deflate_buffers: u64,
    /// Stats buffers received.
    pub stats_updates: u64,
}

impl Totals {
    /// Totals of one device's counters (`hint_discarded`: pages our hint sink discarded, one
    /// call per hinted block; `reported_kept`: reported pages not discarded because the guest
    /// poisons free pages).
    pub fn of(
        d: &DeviceCounters,
        h: &HintCounters,
        hint_discarded: u64,
        reported_kept: u64,
    ) -> Totals {
        let hint_calls = if hint_discarded > 0 { h.hint_blocks } else { 0 };
        Totals {
            pages_discarded: d.pages_inflated
                + d.pages_reinflated
                + h.reported_pages.saturating_sub(reported_kept)
                + hint_discarded,
            discard_calls: d.discard_calls + h.report_discards + hint_calls,
            pages_reported: h.reported_pages,
            pages_hinted: h.hint_pages,
            inflate_buffers: d.inflate_buffers,
            deflate_buffers: d.deflate_buffers,
            stats_updates: d.stats_buffers,
        }
    }

    /// Field-wise sum.
    pub fn plus(self, o: Totals) -> Totals {
        Totals {
            pages_discarded: self.pages_discarded + o.pages_discarded,
            discard_calls: self.discard_calls + o.discard_calls,
            pages_reported: self.pages_reported + o.pages_reported,
            pages_hinted: self.pages_hinted + o.pages_hinted,
            inflate_buffers: self.inflate_buffers + o.inflate_buffers,
            deflate_buffers: self.deflate_buffers + o.deflate_buffers,
            stats_updates: self.stats_updates + o.stats_updates,
        }
    }
}

/// A snapshot of the backend (see the contract's `VhostStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VhostStatus {
    /// A frontend is connected.
    pub connected: bool,
    /// Frontends that connected since start.
    pub frontends_served: u64,
    /// Negotiated balloon feature names (empty before negotiation).
    pub negotiated_features: Vec<&'static str>,
    /// The device is active (all its queues started).
    pub driver_ok: bool,
    /// `num_pages` in config.
    pub target_pages: u32,
    /// The guest's `actual`.
    pub actual_pages: u32,
    /// Pages in the balloon by the host's view.
    pub inflated_pages: u64,
    /// Sums over every device instance.
    pub totals: Totals,
    /// The host's free page hint command id (0 none, 1 done).
    pub hint_cmd_id: u32,
    /// The last command id the guest sent back.
    pub hint_guest_cmd_id: u32,
    /// Bytes in the frontend's regions.
    pub ram_bytes: u64,
    /// Bytes of the RAM file still allocated.
    pub ram_backed_bytes: u64,
    /// Recent errors, oldest first.
    pub errors: Vec<String>,
}

/// Shared between the serving thread and the control side.
#[derive(Debug, Default)]
pub struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) connected: AtomicBool,
    pub(crate) frontends: AtomicU64,
    pub(crate) target: AtomicU32,
    pub(crate) hint_cmd_id: AtomicU32,
    pub(crate) retired: Mutex<Totals>,
    pub(crate) stats: Mutex<Vec<(&'static str, u64)>>,
    pub(crate) errors: Mutex<VecDeque<String>>,
}

impl Shared {
    /// Logs an error (bounded).
    pub fn log(&self, e: impl std::fmt::Display) {
        let mut q = lock(&self.errors);
        if q.len() == ERROR_LOG {
            q.pop_front();
        }
        q.push_back(e.to_string());
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}
