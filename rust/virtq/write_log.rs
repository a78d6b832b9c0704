//! The device end's log of its own writes into guest RAM (used ring, notification suppression
//! fields): what a VMM records of device DMA so a live migration re-sends those pages.

use std::sync::Arc;

use crate::memory::{GuestAddress, Pfn, PAGE_SIZE};

/// Called with (first page, pages) after the device wrote guest RAM; the same shape as the
/// guest model's `DirtyHook` and the balloon device's `WriteLog`, so one can be passed.
pub type WriteLog = Arc<dyn Fn(Pfn, u64) + Send + Sync>;

/// An optional [`WriteLog`] (printable, so [`DeviceQueue`](super::DeviceQueue) stays `Debug`).
#[derive(Clone, Default)]
pub(crate) struct WriteLogSlot(pub(crate) Option<WriteLog>);

impl std::fmt::Debug for WriteLogSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(log)"
        } else {
            "None"
        })
    }
}

impl WriteLogSlot {
    /// Logs a write of `[addr, addr + len)`; call it after the write, so a migration that
    /// clears its log in between still sees the page again.
    #[inline]
    pub(crate) fn wrote(&self, addr: GuestAddress, len: u64) {
        if let (Some(log), true) = (&self.0, len > 0) {
            let first = addr.raw() / PAGE_SIZE;
            let last = addr.raw().saturating_add(len - 1) / PAGE_SIZE;
            log(Pfn(first), last - first + 1);
        }
    }
}
