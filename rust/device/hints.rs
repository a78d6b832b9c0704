//! Free page hints, host side: what the three guest-cooperative queues share.
//!
//! | queue | feature | who starts | what the device gets | module |
//! |---|---|---|---|---|
//! | misc (seed v3) | `VBALLOON_F_MISC_VQ` (17; 4 in v3 ABI mode) | host: `GET_UNUSED_PAGES` + request id into the guest's 16-byte in-buffer | 32-byte header + bitmap pieces per window, CONT then DONE (protocol.md §1.3) | `misc.rs` |
//! | free_page_vq | `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (3) | host: a new cmd id in config space | the 4-byte cmd id (start ack), 4 MiB in-buffers, STOP (§2.5) | `free_page.rs` |
//! | reporting_vq | `VIRTIO_BALLOON_F_REPORTING` (5) | guest | ≤ 32 in-buffers of free blocks of order ≥ 9, discarded on the host (§2.6) | `reporting.rs` |
//!
//! Hinted pages leave the device as [`HintEvent`]s through a [`HintSink`] (the migration's hint
//! feed); the device checks every reply and block before a page reaches the sink, and drops
//! what arrives under a request or command id that is not the current one (§4.2: hints under a
//! stale id are ignored). The device writes into guest RAM (the misc request, used rings):
//! with a [`WriteLog`] set, those writes are logged as a VMM logs device DMA.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::device::role::QueueRole;
use crate::memory::{GuestAddress, Pfn, PAGE_SIZE};
use crate::pages::PagesError;

/// Pages the guest says are free, or the end of its answer, as the device passes them on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintEvent {
    /// Pages `[pfn, pfn + npages)` are free, under request (misc) or command id `id`.
    Pages {
        /// The request id (misc queue) or command id (free page queue) they came under.
        id: u64,
        /// First page.
        pfn: u64,
        /// Number of pages.
        npages: u64,
    },
    /// The guest finished answering `id`: the misc reply flagged DONE, or the guest's STOP on
    /// the free page queue.
    Finished {
        /// The request or command id.
        id: u64,
    },
}

/// Where the device passes hinted pages (called on the thread that serves the queue).
pub type HintSink = Arc<dyn Fn(HintEvent) + Send + Sync>;

/// Called with (first page, pages) after the device wrote guest RAM: a migration's dirty log,
/// as a VMM logs device DMA (same shape as the guest's `DirtyHook`, so one can be passed).
pub type WriteLog = Arc<dyn Fn(Pfn, u64) + Send + Sync>;

/// Which hint queues a device offers, on top of [`DeviceConfig`](super::DeviceConfig)'s
/// inflate/deflate/stats features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HintOffer {
    /// The seed's misc queue (needs the stats queue, as in v3).
    pub misc: bool,
    /// Upstream FREE_PAGE_HINT (not in v3 ABI mode, where bit 3 is the page bitmap).
    pub free_page_hint: bool,
    /// Free page reporting.
    pub reporting: bool,
    /// Upstream PAGE_POISON (not a queue; not in v3 ABI mode): with a non-zero `poison_val`,
    /// reported pages are kept, not discarded (a real guest may poison its free pages).
    pub page_poison: bool,
}

impl HintOffer {
    /// Every hint queue (PAGE_POISON, not a queue, stays off).
    pub const ALL: HintOffer = HintOffer {
        misc: true,
        free_page_hint: true,
        reporting: true,
        page_poison: false,
    };
}

/// Free page hinting status, QEMU's names (protocol.md §4.2); the config field reads the
/// command id in `Requested`/`Start`, 0 in `Stop`, 1 in `Done`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FreePageStatus {
    /// No request active (initial state, or stopped by either side).
    #[default]
    Stop,
    /// The host wrote this id; the guest has not acknowledged it yet.
    Requested(u32),
    /// The guest acknowledged this id; blocks it sends now are hints.
    Start(u32),
    /// The host no longer needs hints: the guest may reuse the blocks it holds.
    Done,
}

/// A hint queue refused a buffer or a host call was out of protocol; each variant's doc line
/// is its message. The buffer is returned used with length 0 and nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    /// An unused-page reply under a request id that is not the current one (ignored).
    #[error("misc queue: reply for request {req_id:#x}, but the current request is {current:?}; ignored")]
    StaleReply {
        /// The reply's `req_id`.
        req_id: u64,
        /// The request the device is waiting for, if any.
        current: Option<u64>,
    },
    /// An unused-page reply that does not decode: bad header, pages outside guest RAM, ...
    #[error("misc queue: bad unused-page reply: {source}")]
    BadReply {
        /// What the decoder found.
        source: PagesError,
    },
    /// An unused-page reply longer than a header and one full bitmap; refused unread.
    #[error("misc queue: reply of {len} bytes is longer than the {max} one may be")]
    ReplyTooLong {
        /// Readable bytes in the chain.
        len: u64,
        /// The most allowed.
        max: u64,
    },
    /// The misc request buffer is not exactly 16 device-writable bytes.
    #[error("misc queue: request buffer of {len} bytes (expected {expected})")]
    RequestBufferLength {
        /// Writable bytes in the chain.
        len: u64,
        /// `struct balloon_req_hdr`'s size.
        expected: usize,
    },
    /// A second request buffer while the device held one; the old one was returned.
    #[error("misc queue: request buffer {head} posted while buffer {held} was held; returned the old one")]
    RequestBufferAlreadyHeld {
        /// Head of the buffer that was held.
        held: u16,
        /// Head of the new buffer.
        head: u16,
    },
    /// A buffer in the direction the protocol does not use here (an out-buffer where blocks
    /// must be in-buffers, or a chain mixing both).
    #[error("{queue} queue: buffer [{addr:#x}, +{len:#x}) is {found}, expected {expected}")]
    Direction {
        /// The queue.
        queue: QueueRole,
        /// First offending buffer.
        addr: u64,
        /// Its length.
        len: u32,
        /// "device-readable", "device-writable" or "mixed".
        found: &'static str,
        /// What the protocol wants there.
        expected: &'static str,
    },
    /// A free page hint out-buffer that is not a 4-byte command id.
    #[error("free-page queue: bad command id buffer: {source}")]
    BadCmdId {
        /// What the decoder found.
        source: PagesError,
    },
    /// A command id the device never issued (ignored).
    #[error(
        "free-page queue: command id {cmd_id:#x} was never issued (status {status:?}); ignored"
    )]
    UnknownCmdId {
        /// The id the guest sent.
        cmd_id: u32,
        /// The device's status then.
        status: FreePageStatus,
    },
    /// A block that is not whole pages inside guest RAM.
    #[error("{queue} queue: bad block: {source}")]
    BadBlock {
        /// The queue.
        queue: QueueRole,
        /// What the check found.
        source: PagesError,
    },
    /// The host asked for a hint protocol the driver did not negotiate.
    #[error("{feature} was not negotiated")]
    NotNegotiated {
        /// The feature's name.
        feature: &'static str,
    },
    /// The host picked a command id it may not use: 0 and 1 are STOP and DONE, and an id may
    /// not be issued again before the driver sent STOP for it (spec, Free Page Hinting).
    #[error("command id {cmd_id:#x} may not be issued now (reserved, or reused before the driver's STOP)")]
    CmdIdNotAllowed {
        /// The id.
        cmd_id: u32,
    },
}

crate::device::counters::counter_set! {
    "What the hint queues have done, a snapshot." HintCounters,
    "The live hint counters." SharedHintCounters {
    /// GET_UNUSED_PAGES requests written into the guest's request buffer.
    unused_requests,
    /// Unused-page reply buffers popped (good and bad).
    unused_replies,
    /// Replies dropped because their request id was not the current one.
    stale_replies,
    /// Pages hinted through unused-page replies.
    unused_pages,
    /// Requests the guest finished (DONE).
    unused_done,
    /// Command ids written into config space.
    cmd_ids_issued,
    /// Start acknowledgements that matched the requested id.
    cmd_id_acks,
    /// STOPs the guest sent.
    guest_stops,
    /// Command id buffers under an id that was not current (ignored).
    stale_cmd_ids,
    /// Blocks accepted as hints.
    hint_blocks,
    /// Pages in those blocks.
    hint_pages,
    /// Blocks that arrived while no command id was started (ignored, as the spec says).
    stale_blocks,
    /// Reporting buffers popped.
    reports,
    /// Blocks reported.
    reported_blocks,
    /// Pages reported (and discarded, unless poisoning forbids it).
    reported_pages,
    /// Discard calls for reported pages.
    report_discards,
    /// Hint-queue buffers refused with an error.
    bad_buffers,
}}

/// Most retired ids remembered (older ones count as unknown).
pub(crate) const RETIRED_IDS: usize = 64;

/// Everything the hint queues keep inside the device.
#[derive(Default)]
pub(crate) struct HintQueues {
    pub(crate) sink: Option<HintSink>,
    pub(crate) dirty: Option<WriteLog>,
    pub(crate) counters: Arc<SharedHintCounters>,
}

impl std::fmt::Debug for HintQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HintQueues")
            .field("sink", &self.sink.is_some())
            .field("dirty", &self.dirty.is_some())
            .finish()
    }
}

impl HintQueues {
    pub(crate) fn emit(&self, e: HintEvent) {
        if let Some(s) = &self.sink {
            s(e);
        }
    }

    /// Logs a device write of `[addr, addr + len)` into guest RAM.
    pub(crate) fn wrote(&self, addr: GuestAddress, len: u64) {
        if let (Some(hook), true) = (&self.dirty, len > 0) {
            let first = addr.raw() / PAGE_SIZE;
            let last = (addr.raw() + len - 1) / PAGE_SIZE;
            hook(Pfn(first), last - first + 1);
        }
    }
}

/// Keeps `id` among the last `RETIRED_IDS` ids issued.
pub(crate) fn remember<T: PartialEq>(list: &mut Vec<T>, id: T) {
    if list.len() == RETIRED_IDS {
        list.remove(0);
    }
    list.push(id);
}

impl super::BalloonDevice {
    /// Sets where hinted pages go (the migration's hint feed); `None` drops them.
    pub fn set_hint_sink(&mut self, sink: Option<HintSink>) {
        self.hints.sink = sink;
    }

    /// Sets the log of the device's own writes into guest RAM (used rings and notification
    /// fields of every queue, the misc request, discarded pages), as a VMM logs device DMA for a
    /// migration's dirty tracking.
    pub fn set_write_log(&mut self, log: Option<WriteLog>) {
        for s in self.slots.iter_mut().flatten() {
            s.queue.set_write_log(log.clone());
        }
        self.hints.dirty = log;
    }

    /// What the hint queues have done.
    pub fn hint_counters(&self) -> HintCounters {
        self.hints.counters.snapshot()
    }
}
