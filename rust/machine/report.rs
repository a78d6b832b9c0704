//! What a balloon run measured.

use std::fmt;

use crate::device::DeviceCounters;
use crate::guest::DriverCounters;
use crate::memory::PAGE_SIZE;

/// How a [`Session::run_until_settled`](super::Session::run_until_settled) ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// `actual` reached `num_pages`.
    #[default]
    Settled,
    /// The guest ran out of pages to give before reaching the target.
    Stuck,
}

/// One move of the balloon toward its target, with the stage breakdown the seed reported
/// (allocation, sending, the host's work, discard).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InflateReport {
    /// How it ended.
    pub outcome: Outcome,
    /// `num_pages` during the run.
    pub target_pages: u64,
    /// Balloon pages before.
    pub start_pages: u64,
    /// Balloon pages after (what `actual` says).
    pub end_pages: u64,
    /// Pages inflated.
    pub pages_inflated: u64,
    /// Pages deflated.
    pub pages_deflated: u64,
    /// Wall time.
    pub total_secs: f64,
    /// Guest: taking pages from the allocator.
    pub alloc_secs: f64,
    /// Guest: encoding, copying into the request buffers, adding, kicking.
    pub encode_send_secs: f64,
    /// Guest: finishing acknowledged batches (fault accounting, freeing deflated pages).
    pub complete_secs: f64,
    /// Host: reading and decoding messages.
    pub decode_secs: f64,
    /// Host: discard calls.
    pub discard_secs: f64,
    /// Inflate and deflate buffers sent.
    pub buffers: u64,
    /// Kicks sent.
    pub kicks: u64,
    /// Interrupts taken by the driver.
    pub interrupts: u64,
    /// Discard calls the host made.
    pub discard_calls: u64,
    /// Buffers the host refused.
    pub bad_buffers: u64,
    /// Process RSS before, bytes.
    pub rss_before: u64,
    /// Process RSS after, bytes.
    pub rss_after: u64,
    /// Resident pages of guest RAM before (mincore).
    pub resident_before: u64,
    /// Resident pages of guest RAM after.
    pub resident_after: u64,
}

impl InflateReport {
    /// Fills the per-stage fields from counter deltas.
    pub(crate) fn with_counters(mut self, drv: &DriverCounters, dev: &DeviceCounters) -> Self {
        self.pages_inflated = drv.pages_inflated;
        self.pages_deflated = drv.pages_deflated;
        self.alloc_secs = drv.alloc_ns as f64 * 1e-9;
        self.encode_send_secs = drv.encode_ns as f64 * 1e-9;
        self.complete_secs = drv.complete_ns as f64 * 1e-9;
        self.decode_secs = dev.decode_secs();
        self.discard_secs = dev.discard_secs();
        self.buffers = drv.buffers;
        self.kicks = drv.kicks;
        self.interrupts = drv.interrupts;
        self.discard_calls = dev.discard_calls;
        self.bad_buffers = dev.bad_buffers;
        self
    }

    /// Time not in any stage above: ring round trips, waiting, bookkeeping.
    pub fn other_secs(&self) -> f64 {
        (self.total_secs
            - self.alloc_secs
            - self.encode_send_secs
            - self.complete_secs
            - self.decode_secs
            - self.discard_secs)
            .max(0.0)
    }

    /// Bytes of guest RAM that stopped being resident (negative: became resident).
    pub fn resident_drop_bytes(&self) -> i64 {
        (self.resident_before as i64 - self.resident_after as i64) * PAGE_SIZE as i64
    }
}

impl fmt::Display for InflateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: {} -> {} pages (target {}) in {:.3} s [alloc {:.3}, encode+send {:.3}, \
             decode {:.3}, discard {:.3}, complete {:.3}, other {:.3}]; {} buffers, {} kicks, \
             {} interrupts, {} discard calls; guest resident {} -> {} pages",
            self.outcome,
            self.start_pages,
            self.end_pages,
            self.target_pages,
            self.total_secs,
            self.alloc_secs,
            self.encode_send_secs,
            self.decode_secs,
            self.discard_secs,
            self.complete_secs,
            self.other_secs(),
            self.buffers,
            self.kicks,
            self.interrupts,
            self.discard_calls,
            self.resident_before,
            self.resident_after,
        )
    }
}
