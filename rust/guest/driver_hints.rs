//! The guest side of the hint queues: answering the seed's unused-page requests, upstream free
//! page hinting, and free page reporting (protocol.md §1.3, §2.5, §2.6).
//!
//! [`BalloonDriver::service_hints`] is the balloon worker's step: it never blocks, and does
//! whatever the three queues ask for now:
//!
//! - **misc** (seed v3): when the device uses the 16-byte request buffer with
//!   `GET_UNUSED_PAGES`, the driver walks its free lists *once* into a page set (pages it holds,
//!   ballooned or hinted, are allocated and so not on them), then answers window by window:
//!   one out-buffer per window (32-byte header, `req_id` echoed, CONT / DONE, then the bitmap
//!   pieces), the next only after the device acknowledged the last, each ack awaited at most
//!   [`HintOptions::reply_timeout`]. Then it posts the request buffer again. v3 rescanned every
//!   free list once per window; Dave Hansen's review asked for one pass.
//! - **free page hint** (upstream): when config space shows a new command id, the driver sends
//!   it back as a 4-byte out-buffer (the start ack), then allocates order-10 blocks one by one
//!   and posts each as a device-writable 4 MiB in-buffer, always keeping one descriptor free for
//!   a command id; when no block is left, or the host moved on (STOP, DONE, another id), it sends
//!   STOP (0). Hinted blocks stay allocated until config shows DONE (so they are not reused
//!   during the round); under memory pressure a [`Shrinker`] gives them back early, and the
//!   writes that follow are caught by dirty logging.
//! - **reporting**: [`BalloonDriver::report_free_pages`] isolates up to 32 unreported free
//!   blocks of order ≥ 9 and posts them as in-buffers of one request; once the device used it
//!   (after discarding them), they go back on the free lists marked reported. With
//!   [`HintOptions::auto_report`] the worker step does this whenever unreported blocks exist.
//!
//! The driver's buffers for the misc replies and command ids come from the guest's allocator
//! (a [`HintArea`] next to the driver's [`BufferArea`](super::BufferArea)); reporting and hinting
//! hand the free blocks themselves to the device.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{serviced, BalloonDriver, DriverError};
use crate::abi::{
    CONFIG_FREE_PAGE_HINT_CMD_ID, PAGE_REPORTING_CAPACITY, PAGE_REPORTING_MIN_ORDER,
    VIRTIO_BALLOON_CMD_ID_DONE, VIRTIO_BALLOON_CMD_ID_STOP, VIRTIO_BALLOON_HINT_BLOCK_ORDER,
};
use crate::guest::{BuddyAllocator, Guest, GuestError, Shrinker};
use crate::memory::{GuestAddress, Pfn, PAGE_SIZE};
use crate::pages::bitmap::{
    encode_unused_reply, ReqHeader, BALLOON_BMAP_COUNT, BALLOON_BMAP_SIZE,
    BALLOON_GET_UNUSED_PAGES, BMAP_HEADER_LEN, REQ_HEADER_LEN,
};
use crate::pages::hint::{encode_cmd_id, CMD_ID_LEN};
use crate::pages::{Message, PageSet};
use crate::util::lock;
use crate::virtq::{QueueLayout, Segment};

/// Order of a hinted block (4 MiB).
const HINT_ORDER: u8 = VIRTIO_BALLOON_HINT_BLOCK_ORDER as u8;
/// Bytes of a hinted block.
const HINT_BYTES: u64 = PAGE_SIZE << HINT_ORDER;
/// Command id slots in the hint area (a STOP and a start can be in flight together).
const CMD_SLOTS: usize = 32;
/// Where the misc request buffer, the reply header and the command ids sit in the first page.
const REQ_OFFSET: u64 = 0;
const REPLY_HEADER_OFFSET: u64 = 64;
const CMD_OFFSET: u64 = 128;

/// How the guest side of the hint queues behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintOptions {
    /// How long the driver waits for the device to acknowledge one unused-page reply before it
    /// gives the request up (v3 busy-waited forever).
    pub reply_timeout: Duration,
    /// Most blocks one step allocates and posts (bounds the time a step holds the guest).
    pub max_blocks_per_step: usize,
    /// Report free blocks whenever unreported ones exist, in every [`BalloonDriver::service_hints`].
    pub auto_report: bool,
}

impl Default for HintOptions {
    fn default() -> Self {
        HintOptions {
            reply_timeout: Duration::from_secs(5),
            max_blocks_per_step: 256,
            auto_report: false,
        }
    }
}

/// What one hint step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HintStep {
    /// Nothing to do and nothing in flight.
    Idle,
    /// Buffers are in flight: run the device, or wait for its interrupt.
    Waiting,
    /// Something was sent or completed: call again.
    Progress,
}

/// What the guest side of the hint queues has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintDriverCounters {
    /// Unused-page requests received.
    pub unused_requests: u64,
    /// Reply windows sent.
    pub unused_replies: u64,
    /// Pages named free in replies.
    pub unused_pages: u64,
    /// Free-list walks (one per request).
    pub free_list_walks: u64,
    /// Replies given up because the device did not acknowledge in time.
    pub reply_timeouts: u64,
    /// New command ids seen (start acks sent).
    pub cmd_ids: u64,
    /// STOPs sent.
    pub stops: u64,
    /// Blocks hinted.
    pub hint_blocks: u64,
    /// Hinted blocks given back on DONE.
    pub done_blocks: u64,
    /// Hinted blocks given back early by the shrinker.
    pub shrunk_blocks: u64,
    /// Reporting requests completed.
    pub reports: u64,
    /// Blocks reported.
    pub reported_blocks: u64,
    /// Pages reported.
    pub reported_pages: u64,
}

/// The guest memory the hint queues use: the misc request buffer, the reply header and the
/// command id slots in one page, then the bitmap pieces of one reply window.
#[derive(Clone, Copy, Debug)]
pub struct HintArea {
    /// First page.
    pub pfn: Pfn,
    /// Pages reserved.
    pub pages: u64,
    /// Bitmap pieces (32 KiB each): enough for the guest's pages, at most 32 (one window).
    pub pieces: usize,
}

impl HintArea {
    /// Takes one page plus `pieces` × 32 KiB from the guest's allocator.
    fn reserve(guest: &mut Guest, pieces: usize) -> Result<HintArea, DriverError> {
        let pages = 1 + (pieces * BALLOON_BMAP_SIZE) as u64 / PAGE_SIZE;
        let pfn = guest.allocator_mut().alloc_pages(pages)?;
        Ok(HintArea { pfn, pages, pieces })
    }

    fn at(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.pfn.addr().raw() + offset)
    }

    fn piece(&self, i: usize) -> GuestAddress {
        self.at(PAGE_SIZE + (i * BALLOON_BMAP_SIZE) as u64)
    }
}

/// Pieces one reply window needs for a guest of `pages` pages (v3's `extend_page_bitmap`:
/// `ALIGN(max_pfn, 64) / 8` bytes in 32 KiB pieces, at most 32).
fn pieces_for(pages: u64) -> usize {
    // A window starts on a multiple of 64 pages at or after 0 and ends at the next multiple of
    // 64 past its last page, so no window is longer than the whole guest rounded up to 64.
    let bytes = pages.div_ceil(64) * 8;
    (bytes.div_ceil(BALLOON_BMAP_SIZE as u64) as usize).clamp(1, BALLOON_BMAP_COUNT)
}

/// Hinted blocks the guest holds until DONE; shared with the shrinker.
#[derive(Debug, Default)]
struct Held {
    blocks: Vec<Pfn>,
    shrunk: u64,
}

#[derive(Debug)]
struct Reply {
    req_id: u64,
    messages: VecDeque<Message>,
    in_flight: Option<(u16, Instant)>,
}

#[derive(Debug, Default)]
struct MiscSide {
    queue: u16,
    req_head: Option<u16>,
    reply: Option<Reply>,
    /// Heads of replies given up on after a timeout (their late ack is dropped).
    orphans: HashSet<u16>,
}

#[derive(Debug)]
struct FreePageSide {
    queue: u16,
    /// The id the driver last started on (`cmd_id_active`).
    active: u32,
    hinting: bool,
    pending: VecDeque<u32>,
    next_slot: usize,
    cmd_heads: HashSet<u16>,
    block_heads: HashSet<u16>,
}

impl FreePageSide {
    /// A queue set up but not hinting: no command id started yet (§5.5.6.7).
    fn new(queue: u16) -> FreePageSide {
        FreePageSide {
            queue,
            active: VIRTIO_BALLOON_CMD_ID_STOP,
            hinting: false,
            pending: VecDeque::new(),
            next_slot: 0,
            cmd_heads: HashSet::new(),
            block_heads: HashSet::new(),
        }
    }
}

#[derive(Debug)]
struct ReportingSide {
    queue: u16,
    in_flight: Option<(u16, Vec<(Pfn, u8)>)>,
}

/// The driver's hint state (one field of [`BalloonDriver`]).
#[derive(Debug, Default)]
pub(super) struct HintDriver {
    opts: HintOptions,
    area: Option<HintArea>,
    misc: Option<MiscSide>,
    free_page: Option<FreePageSide>,
    reporting: Option<ReportingSide>,
    held: Arc<Mutex<Held>>,
    counters: HintDriverCounters,
}

impl BalloonDriver {
    /// Sets up the hint queues the features made present (called by `probe` after DRIVER_OK):
    /// reserves the hint area, posts the misc request buffer, installs the shrinker.
    pub(super) fn setup_hints(&mut self, guest: &mut Guest) -> Result<(), DriverError> {
        let q = self.indexes;
        if q.misc.is_none() && q.free_page.is_none() && q.reporting.is_none() {
            return Ok(());
        }
        let pieces = if q.misc.is_some() {
            pieces_for(guest.memory().pages())
        } else {
            0
        };
        if let Some(i) = q.misc {
            let size = self.queues[usize::from(i)].size();
            if usize::from(size) < pieces + 1 {
                return Err(DriverError::QueueTooSmall {
                    max: size,
                    need: pieces as u16 + 1,
                });
            }
        }
        if q.misc.is_some() || q.free_page.is_some() {
            self.hints.area = Some(HintArea::reserve(guest, pieces)?);
        }
        if let Some(queue) = q.free_page {
            self.hints.free_page = Some(FreePageSide::new(queue));
            guest.set_shrinker(Some(self.hint_shrinker()));
        }
        if let Some(queue) = q.reporting {
            self.hints.reporting = Some(ReportingSide {
                queue,
                in_flight: None,
            });
        }
        if let Some(queue) = q.misc {
            self.hints.misc = Some(MiscSide {
                queue,
                ..MiscSide::default()
            });
            self.post_request_buffer(guest)?;
        }
        Ok(())
    }

    /// The hint options.
    pub fn hint_options(&self) -> HintOptions {
        self.hints.opts
    }

    /// Changes the hint options.
    pub fn set_hint_options(&mut self, opts: HintOptions) {
        self.hints.opts = opts;
    }

    /// What the guest side of the hint queues has done.
    pub fn hint_counters(&self) -> HintDriverCounters {
        let mut c = self.hints.counters;
        c.shrunk_blocks = lock(&self.hints.held).shrunk;
        c
    }

    /// The guest memory the hint queues use, if any hint queue is present.
    pub fn hint_area(&self) -> Option<HintArea> {
        self.hints.area
    }

    /// The hinted blocks (order 10) the guest holds until DONE.
    pub fn held_hint_blocks(&self) -> Vec<Pfn> {
        lock(&self.hints.held).blocks.clone()
    }

    /// Pages in the hinted blocks the guest holds.
    pub fn held_hint_pages(&self) -> u64 {
        lock(&self.hints.held).blocks.len() as u64 * (1 << HINT_ORDER)
    }

    /// Blocks isolated for a report in flight, as (first page, order).
    pub fn reporting_blocks(&self) -> Vec<(Pfn, u8)> {
        self.hints
            .reporting
            .as_ref()
            .and_then(|r| r.in_flight.as_ref())
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }

    /// Adds the pages the driver holds that the guest does not use: ballooned pages, hinted
    /// blocks held until DONE, blocks isolated for reporting.
    pub fn unused_pages_into(&self, out: &mut PageSet) {
        for (pfn, order) in self.ballooned_blocks() {
            out.insert_range(pfn.0, 1 << order);
        }
        for pfn in self.held_hint_blocks() {
            out.insert_range(pfn.0, 1 << HINT_ORDER);
        }
        for (pfn, order) in self.reporting_blocks() {
            out.insert_range(pfn.0, 1 << order);
        }
    }

    /// The unused-page request the driver is answering, if any.
    pub fn answering_unused_request(&self) -> Option<u64> {
        self.hints
            .misc
            .as_ref()
            .and_then(|m| m.reply.as_ref())
            .map(|r| r.req_id)
    }

    /// Whether an unused-page reply or a report is in flight, or blocks are being hinted.
    pub fn hints_busy(&self) -> bool {
        let h = &self.hints;
        h.misc.as_ref().is_some_and(|m| m.reply.is_some())
            || h.free_page
                .as_ref()
                .is_some_and(|f| f.hinting || !f.pending.is_empty())
            || h.reporting.as_ref().is_some_and(|r| r.in_flight.is_some())
    }

    /// The shrinker that gives hinted blocks back under memory pressure (most recent first),
    /// as Linux's balloon shrinker does; `probe` installs it in the guest.
    pub fn hint_shrinker(&self) -> Shrinker {
        let held = Arc::clone(&self.hints.held);
        Arc::new(move |alloc: &mut BuddyAllocator, want: u64| {
            let mut h = lock(&held);
            let mut freed = 0;
            while freed < want {
                let Some(pfn) = h.blocks.pop() else { break };
                if alloc.free(pfn, HINT_ORDER).is_ok() {
                    freed += 1 << HINT_ORDER;
                    h.shrunk += 1;
                }
            }
            freed
        })
    }

    /// Gives every held hinted block back to the guest's allocator (what DONE does); returns
    /// the pages given back.
    pub fn return_hinted_blocks(&mut self, guest: &mut Guest) -> Result<u64, DriverError> {
        let blocks = std::mem::take(&mut lock(&self.hints.held).blocks);
        let alloc = guest.allocator_mut();
        for &pfn in &blocks {
            alloc.free(pfn, HINT_ORDER)?;
        }
        self.hints.counters.done_blocks += blocks.len() as u64;
        Ok(blocks.len() as u64 * (1 << HINT_ORDER))
    }

    /// Gives the guest back everything the hint side holds, for a driver being removed (the
    /// device must no longer serve it): held hinted blocks, blocks isolated for a report, the
    /// hint area; the shrinker is removed. The hint queues do nothing afterwards.
    pub fn unplug_hints(&mut self, guest: &mut Guest) -> Result<(), DriverError> {
        self.return_hinted_blocks(guest)?;
        guest.set_shrinker(None);
        if let Some((_, blocks)) = self.hints.reporting.take().and_then(|r| r.in_flight) {
            for (pfn, order) in blocks {
                guest.allocator_mut().putback(pfn, order, false)?;
            }
        }
        self.hints.misc = None;
        self.hints.free_page = None;
        if let Some(a) = self.hints.area.take() {
            guest.allocator_mut().free_range(a.pfn, a.pages)?;
        }
        Ok(())
    }

    /// One step of every hint queue: acknowledgements, requests, command ids, blocks, reports.
    pub fn service_hints(&mut self, guest: &mut Guest) -> Result<HintStep, DriverError> {
        self.check_device()?;
        let misc = self.service_misc(guest)?;
        let fph = self.service_free_page(guest)?;
        let rep = self.service_reporting(guest, self.hints.opts.auto_report)?;
        Ok(misc.max(fph).max(rep))
    }

    /// One reporting step: finishes the report in flight, or isolates up to 32 unreported free
    /// blocks of order ≥ 9 and sends them. `Idle` when there is nothing left to report.
    pub fn report_free_pages(&mut self, guest: &mut Guest) -> Result<HintStep, DriverError> {
        self.check_device()?;
        if self.hints.reporting.is_none() {
            return Err(DriverError::NotReady(
                "free page reporting was not negotiated",
            ));
        }
        self.service_reporting(guest, true)
    }

    /// Logs the driver's writes to queue `queue`'s rings and to the hint area.
    fn mark_hint_writes(&self, guest: &Guest, queue: u16) {
        if let Some(l) = self.area.rings.get(usize::from(queue)) {
            mark_layout(guest, l);
        }
    }

    fn post_request_buffer(&mut self, guest: &Guest) -> Result<(), DriverError> {
        let (Some(m), Some(area)) = (&mut self.hints.misc, self.hints.area) else {
            return Ok(());
        };
        let q = &mut self.queues[usize::from(m.queue)];
        let head = q.add(&[Segment::writable(
            area.at(REQ_OFFSET),
            REQ_HEADER_LEN as u32,
        )])?;
        m.req_head = Some(head);
        if q.kick()? {
            self.counters.kicks += 1;
        }
        let queue = m.queue;
        self.mark_hint_writes(guest, queue);
        Ok(())
    }

    // ---- reporting queue ----

    fn service_reporting(
        &mut self,
        guest: &mut Guest,
        start: bool,
    ) -> Result<HintStep, DriverError> {
        let Some(r) = &mut self.hints.reporting else {
            return Ok(HintStep::Idle);
        };
        let qi = r.queue;
        let q = serviced(&mut self.queues, &mut self.counters, qi)?;
        let mut step = HintStep::Idle;
        while let Some(used) = q.pop_used()? {
            match r.in_flight.take() {
                Some((head, blocks)) if head == used.head => {
                    let c = &mut self.hints.counters;
                    for &(pfn, order) in &blocks {
                        guest.allocator_mut().putback(pfn, order, true)?;
                        // The host discarded it: the next write is a first touch again.
                        guest.note_discarded(pfn, 1 << order);
                        c.reported_pages += 1 << order;
                    }
                    c.reported_blocks += blocks.len() as u64;
                    c.reports += 1;
                    step = HintStep::Progress;
                }
                other => {
                    r.in_flight = other;
                    return Err(DriverError::UnexpectedUsed {
                        queue: qi,
                        head: used.head,
                    });
                }
            }
        }
        if r.in_flight.is_some() {
            return Ok(step.max(HintStep::Waiting));
        }
        if !start {
            return Ok(step);
        }
        let cap = PAGE_REPORTING_CAPACITY.min(usize::from(q.num_free()));
        let mut blocks = Vec::with_capacity(cap);
        guest
            .allocator_mut()
            .isolate_unreported(PAGE_REPORTING_MIN_ORDER as u8, cap, &mut blocks);
        if blocks.is_empty() {
            return Ok(step);
        }
        let segs: Vec<Segment> = blocks
            .iter()
            .map(|&(pfn, order)| Segment::writable(pfn.addr(), (PAGE_SIZE << order) as u32))
            .collect();
        let head = match q.add(&segs) {
            Ok(h) => h,
            Err(e) => {
                // Not sent: the blocks go back as they were.
                for &(pfn, order) in &blocks {
                    guest.allocator_mut().putback(pfn, order, false)?;
                }
                return Err(e.into());
            }
        };
        r.in_flight = Some((head, blocks));
        if q.kick()? {
            self.counters.kicks += 1;
        }
        self.mark_hint_writes(guest, qi);
        Ok(HintStep::Progress)
    }
}

/// Marks the pages of one queue's rings dirty.
fn mark_layout(guest: &Guest, l: &QueueLayout) {
    let start = l.desc_table().raw();
    let end = start + QueueLayout::placed_bytes(l.size());
    let first = start / PAGE_SIZE;
    guest.mark_dirty(Pfn(first), end.div_ceil(PAGE_SIZE) - first);
}

#[path = "driver_hints_free_page.rs"]
mod free_page;
#[path = "driver_hints_misc.rs"]
mod misc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pieces_cover_one_window() {
        assert_eq!(pieces_for(4096), 1);
        // 8 GiB: 2 Mi pages, 256 KiB of bitmap, 8 pieces.
        assert_eq!(pieces_for(2 << 20), 8);
        assert_eq!(pieces_for((2 << 20) + 1), 9);
        assert_eq!(pieces_for(1 << 40), BALLOON_BMAP_COUNT);
    }
}
