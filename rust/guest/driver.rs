//! The balloon driver (guest side), as Linux's `virtio_balloon` plus the seed's v3 bitmap path.
//!
//! [`BalloonDriver::probe`] walks the transport's initialisation sequence: it accepts the
//! subset of the device's features it supports (in v3 ABI mode with the v3 rule: without
//! STATS_VQ, PAGE_BITMAP and MISC_VQ are cleared), takes the guest memory for its rings and
//! request buffers from the guest's own allocator, sets up every queue the negotiated features
//! make present (indexes from [`BalloonFeatures::queues`]), posts the first stats buffer and
//! sets DRIVER_OK.
//!
//! The driver never blocks. [`BalloonDriver::advance`] does one step toward `num_pages`:
//! it handles a used buffer, sends the next message, or starts a new batch; the caller runs the
//! device in between (synchronous mode) or waits for an interrupt ([`BalloonDriver::wait`],
//! threaded mode). A batch is what Linux's `fill_balloon`/`leak_balloon` move in one go:
//!
//! | encoding | batch | messages in flight |
//! |---|---|---|
//! | PFN arrays | 256 pages, one 1 KiB array | one (Linux: `tell_host` waits for the ack) |
//! | bitmap (v3) | the whole difference | one message (≤ 32 pieces, one 32 GiB window) at a time |
//! | extents, auto | the whole difference | one message at a time |
//!
//! Inflate takes order-0 pages from the allocator (as Linux; [`DriverOptions::alloc_order`]
//! takes larger blocks for speed, [`HUGE_PAGE_ORDER`] 2 MiB-aligned ones first for RAM on
//! huge pages), and only after the ack calls [`Guest::note_discarded`] for
//! them and updates `actual`. Deflate gives pages back: with MUST_TELL_HOST only after the ack
//! (§5.5.6.1), without it right away. With DEFLATE_ON_OOM the driver does not shrink the
//! guest's managed pages, and [`BalloonDriver::start_oom_deflate`] gives pages back when an
//! allocation fails.

#[path = "driver_area.rs"]
mod area;
#[path = "driver_error.rs"]
mod error;
#[path = "driver_hints.rs"]
mod hints;
#[path = "driver_probe.rs"]
mod probe;
#[path = "driver_stats.rs"]
mod stats;
#[path = "driver_take.rs"]
mod take;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use area::BufferArea;
pub use error::DriverError;
pub use hints::{HintArea, HintDriverCounters, HintOptions, HintStep};
pub use take::HUGE_PAGE_ORDER;

use super::{Guest, GuestError};
use crate::abi::encoding_for;
use crate::abi::{
    bit, AbiMode, BalloonFeatures, QueueIndexes, CONFIG_ACTUAL, CONFIG_NUM_PAGES,
    VBALLOON_F_MISC_VQ, VBALLOON_F_PAGE_AUTO, VBALLOON_F_PAGE_BITMAP, VBALLOON_F_PAGE_EXTENTS,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
    VIRTIO_ID_BALLOON,
};
use crate::memory::{GuestMemory, PageRange, Pfn, PAGE_SIZE};
use crate::pages::{encode_with, Encoding, Message, Pages};
use crate::transport::{
    Transport, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use crate::virtq::defs::{feature, VIRTIO_F_VERSION_1};
use crate::virtq::{DriverQueue, Segment};

/// Pages one PFN-array request carries (`VIRTIO_BALLOON_ARRAY_PFNS_MAX`).
pub const PFN_BATCH_PAGES: u64 = crate::pages::pfn::VIRTIO_BALLOON_ARRAY_PFNS_MAX as u64;
/// Pages an out-of-memory deflate gives back per round (Linux's OOM notifier: 256).
pub const OOM_DEFLATE_PAGES: u64 = 256;
/// Smallest queue the bitmap and auto encodings can use: one message is up to 34 buffers.
pub const MIN_QUEUE_SIZE_SG: u16 = 64;

/// How the driver behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverOptions {
    /// Feature numbering on the wire.
    pub abi: AbiMode,
    /// Only features in this mask are accepted (`u64::MAX`: all the driver supports).
    pub feature_mask: u64,
    /// Queue size to set up (at most the device's `QueueNumMax`).
    pub queue_size: u16,
    /// Order of the blocks taken for the balloon: 0 as Linux; larger is faster to allocate
    /// and encode, and falls back to order 0 when no such block is left.
    pub alloc_order: u8,
    /// Most pages one batch moves with the bitmap, extents and auto encodings (v3 moves the
    /// whole difference at once).
    pub max_batch_pages: u64,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            abi: AbiMode::Vballoon,
            feature_mask: u64::MAX,
            queue_size: crate::abi::DEFAULT_QUEUE_SIZE,
            alloc_order: 0,
            max_batch_pages: u64::from(u32::MAX),
        }
    }
}

impl DriverOptions {
    /// The features this driver understands in `abi` mode.
    pub fn supported_features(abi: AbiMode) -> u64 {
        let common = feature(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_BALLOON_F_MUST_TELL_HOST)
            | bit(VIRTIO_BALLOON_F_STATS_VQ)
            | bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
        // Hint queues (driver_hints.rs): the misc queue in either numbering, upstream hinting
        // only where bit 3 means it, reporting (bit 5) in both.
        let hints = bit(abi.misc_vq_bit()) | bit(VIRTIO_BALLOON_F_REPORTING);
        match abi {
            AbiMode::Vballoon => {
                common
                    | bit(VBALLOON_F_PAGE_BITMAP)
                    | bit(VBALLOON_F_PAGE_EXTENTS)
                    | bit(VBALLOON_F_PAGE_AUTO)
                    | hints
                    | bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT)
            }
            AbiMode::V3 => common | bit(abi.page_bitmap_bit()) | hints,
        }
    }
}

/// What one driver step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sent a buffer or finished a batch: call again.
    Progress,
    /// A buffer is in flight on this queue: run the device, or wait for its interrupt.
    Waiting(u16),
    /// Nothing in flight ([`BalloonDriver::service`] only).
    Idle,
    /// `actual` equals `num_pages` and nothing is in flight.
    Settled,
    /// The balloon is below target but the guest has no page left to give it.
    Stuck,
}

/// What the driver has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Inflate and deflate buffers sent.
    pub buffers: u64,
    /// Kicks sent (after notification suppression).
    pub kicks: u64,
    /// Interrupts taken.
    pub interrupts: u64,
    /// Pages the host acknowledged inflating.
    pub pages_inflated: u64,
    /// Pages given back to the guest by deflating.
    pub pages_deflated: u64,
    /// Nanoseconds spent taking pages from the allocator.
    pub alloc_ns: u64,
    /// Nanoseconds spent encoding messages, copying them into guest RAM and adding them.
    pub encode_ns: u64,
    /// Nanoseconds spent finishing acknowledged batches (fault accounting, freeing pages).
    pub complete_ns: u64,
    /// Inflate batches that found no free page.
    pub alloc_failures: u64,
    /// Out-of-memory deflates started.
    pub oom_deflates: u64,
    /// Stats buffers sent.
    pub stats_sent: u64,
    /// Batches finished.
    pub batches: u64,
}

impl DriverCounters {
    /// The counts accumulated since `earlier` (a copy taken before).
    pub fn since(&self, earlier: &DriverCounters) -> DriverCounters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        DriverCounters {
            buffers: d(self.buffers, earlier.buffers),
            kicks: d(self.kicks, earlier.kicks),
            interrupts: d(self.interrupts, earlier.interrupts),
            pages_inflated: d(self.pages_inflated, earlier.pages_inflated),
            pages_deflated: d(self.pages_deflated, earlier.pages_deflated),
            alloc_ns: d(self.alloc_ns, earlier.alloc_ns),
            encode_ns: d(self.encode_ns, earlier.encode_ns),
            complete_ns: d(self.complete_ns, earlier.complete_ns),
            alloc_failures: d(self.alloc_failures, earlier.alloc_failures),
            oom_deflates: d(self.oom_deflates, earlier.oom_deflates),
            stats_sent: d(self.stats_sent, earlier.stats_sent),
            batches: d(self.batches, earlier.batches),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Inflate,
    Deflate,
}

/// Blocks are kept packed: `pfn << 8 | order`.
fn pack(pfn: Pfn, order: u8) -> u64 {
    pfn.0 << 8 | u64::from(order)
}

fn unpack(b: u64) -> (Pfn, u8) {
    (Pfn(b >> 8), (b & 0xff) as u8)
}

struct Batch {
    dir: Dir,
    queue: u16,
    blocks: Vec<u64>,
    pages: u64,
    messages: VecDeque<Message>,
    in_flight: Option<u16>,
    /// Deflated pages already given back (no MUST_TELL_HOST).
    released: bool,
}

/// The guest's balloon driver; see the module docs.
pub struct BalloonDriver {
    transport: Arc<Transport>,
    mem: Arc<GuestMemory>,
    opts: DriverOptions,
    features: BalloonFeatures,
    encoding: Encoding,
    indexes: QueueIndexes,
    queues: Vec<DriverQueue>,
    area: BufferArea,
    ballooned: Vec<u64>,
    balloon_pages: u64,
    batch: Option<Batch>,
    stats_in_flight: Option<u16>,
    counters: DriverCounters,
    runs: Vec<PageRange>,
    segs: Vec<Segment>,
    hints: hints::HintDriver,
}

/// Queue `index`, its interrupts counted first: how every queue's service starts.
fn serviced<'q>(
    queues: &'q mut [DriverQueue],
    counters: &mut DriverCounters,
    index: u16,
) -> Result<&'q mut DriverQueue, DriverError> {
    let q = &mut queues[usize::from(index)];
    counters.interrupts += q.interrupt_notifier().take()?;
    Ok(q)
}

impl std::fmt::Debug for BalloonDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonDriver")
            .field("features", &self.features)
            .field("encoding", &self.encoding)
            .field("balloon_pages", &self.balloon_pages)
            .field("busy", &self.batch.is_some())
            .finish()
    }
}

impl BalloonDriver {
    /// The negotiated features.
    pub fn features(&self) -> BalloonFeatures {
        self.features
    }

    /// The inflate/deflate encoding in use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Where each queue is.
    pub fn queue_indexes(&self) -> QueueIndexes {
        self.indexes
    }

    /// The driver end of queue `index`.
    pub fn queue(&self, index: u16) -> Option<&DriverQueue> {
        self.queues.get(usize::from(index))
    }

    /// The guest memory the driver took for rings and buffers.
    pub fn area(&self) -> &BufferArea {
        &self.area
    }

    /// What the driver has done.
    pub fn counters(&self) -> DriverCounters {
        self.counters
    }

    /// Pages in the balloon, acknowledged by the host (what `actual` says).
    pub fn balloon_pages(&self) -> u64 {
        self.balloon_pages
    }

    /// Whether a batch is in flight.
    pub fn busy(&self) -> bool {
        self.batch.is_some()
    }

    /// `num_pages`: the balloon size the host asks for.
    pub fn target(&self) -> u64 {
        u64::from(
            self.transport
                .read_config_u32(CONFIG_NUM_PAGES)
                .unwrap_or(0),
        )
    }

    fn write_actual(&self) -> Result<(), DriverError> {
        let actual = u32::try_from(self.balloon_pages).unwrap_or(u32::MAX);
        Ok(self
            .transport
            .driver_write_config_u32(CONFIG_ACTUAL, actual)?)
    }

    fn check_device(&self) -> Result<(), DriverError> {
        if self.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return Err(DriverError::DeviceNeedsReset);
        }
        Ok(())
    }

    /// One step toward the target: finish or continue the batch in flight, or start one.
    pub fn advance(&mut self, guest: &mut Guest) -> Result<Step, DriverError> {
        match self.service(guest)? {
            Step::Idle => {}
            s => return Ok(s),
        }
        let target = self.target();
        let actual = self.balloon_pages;
        let limit = match self.encoding {
            Encoding::Pfn => PFN_BATCH_PAGES,
            _ => self.opts.max_batch_pages.max(1),
        };
        if target > actual {
            if self.start_inflate(guest, (target - actual).min(limit))? == 0 {
                return Ok(Step::Stuck);
            }
            Ok(Step::Progress)
        } else if target < actual {
            self.start_deflate(guest, (actual - target).min(limit))?;
            Ok(Step::Progress)
        } else {
            Ok(Step::Settled)
        }
    }

    /// Handles used buffers (the batch in flight, the stats buffer) without starting a batch.
    pub fn service(&mut self, guest: &mut Guest) -> Result<Step, DriverError> {
        self.check_device()?;
        self.service_stats(guest)?;
        let Some(b) = &mut self.batch else {
            return Ok(Step::Idle);
        };
        let q = b.queue;
        let queue = serviced(&mut self.queues, &mut self.counters, q)?;
        let Some(used) = queue.pop_used()? else {
            return Ok(Step::Waiting(q));
        };
        if b.in_flight != Some(used.head) {
            return Err(DriverError::UnexpectedUsed {
                queue: q,
                head: used.head,
            });
        }
        b.in_flight = None;
        if let Some(msg) = b.messages.pop_front() {
            let head = self.send(q, &msg, guest)?;
            if let Some(b) = &mut self.batch {
                b.in_flight = Some(head);
            }
            return Ok(Step::Progress);
        }
        self.complete(guest)?;
        Ok(Step::Progress)
    }

    /// Waits up to `timeout` for an interrupt on `queue` (threaded mode); returns whether one
    /// came. Interrupts are never suppressed, so one that came before the call is not lost.
    pub fn wait(&mut self, queue: u16, timeout: Duration) -> Result<bool, DriverError> {
        let q = self
            .queues
            .get(usize::from(queue))
            .ok_or(DriverError::NotReady("no such queue"))?;
        let n = q.wait_interrupt(Some(timeout))?;
        self.counters.interrupts += n;
        Ok(n > 0)
    }

    /// Turns blocks into runs in the order given, joining neighbours.
    fn runs_of(blocks: &[u64], runs: &mut Vec<PageRange>) {
        runs.clear();
        for &b in blocks {
            let (pfn, order) = unpack(b);
            let len = 1u64 << order;
            match runs.last_mut() {
                Some(r) if r.end() == pfn.0 => r.len += len,
                _ => runs.push(PageRange::new(pfn.0, len)),
            }
        }
    }

    fn encode(&mut self, blocks: &[u64]) -> Result<VecDeque<Message>, DriverError> {
        let mut runs = std::mem::take(&mut self.runs);
        Self::runs_of(blocks, &mut runs);
        let mut out = VecDeque::new();
        let r = encode_with(self.encoding, Pages::Runs(&runs), &mut |segs| {
            out.push_back(Message::from_segments(segs))
        });
        self.runs = runs;
        r?;
        Ok(out)
    }

    fn start_batch(
        &mut self,
        guest: &mut Guest,
        dir: Dir,
        blocks: Vec<u64>,
        pages: u64,
    ) -> Result<(), DriverError> {
        let t0 = Instant::now();
        let queue = match dir {
            Dir::Inflate => self.indexes.inflate,
            Dir::Deflate => self.indexes.deflate,
        };
        let mut messages = self.encode(&blocks)?;
        let mut batch = Batch {
            dir,
            queue,
            blocks,
            pages,
            messages: VecDeque::new(),
            in_flight: None,
            released: false,
        };
        if dir == Dir::Deflate && !self.features.must_tell_host() {
            // Without MUST_TELL_HOST the deflate is a courtesy: reuse may start now.
            Self::release(guest, &batch.blocks)?;
            batch.released = true;
        }
        let first = messages.pop_front();
        batch.messages = messages;
        self.batch = Some(batch);
        self.counters.encode_ns += t0.elapsed().as_nanos() as u64;
        match first {
            Some(msg) => {
                let head = self.send(queue, &msg, guest)?;
                if let Some(b) = &mut self.batch {
                    b.in_flight = Some(head);
                }
            }
            None => self.complete(guest)?,
        }
        Ok(())
    }

    /// Copies `msg` into the request buffers, adds it to `queue` and kicks.
    fn send(&mut self, queue: u16, msg: &Message, guest: &Guest) -> Result<u16, DriverError> {
        let t0 = Instant::now();
        let mut segs = std::mem::take(&mut self.segs);
        self.area.place(&self.mem, &msg.segments, &mut segs)?;
        let q = &mut self.queues[usize::from(queue)];
        let head = q.add(&segs);
        self.segs = segs;
        let head = head?;
        // The buffers and the ring were written behind the guest model's back.
        guest.mark_dirty(self.area.pfn, self.area.pages);
        if q.kick()? {
            self.counters.kicks += 1;
        }
        self.counters.buffers += 1;
        self.counters.encode_ns += t0.elapsed().as_nanos() as u64;
        Ok(head)
    }

    fn release(guest: &mut Guest, blocks: &[u64]) -> Result<(), DriverError> {
        let alloc = guest.allocator_mut();
        for &b in blocks {
            let (pfn, order) = unpack(b);
            alloc.free(pfn, order)?;
        }
        Ok(())
    }

    /// The last message of the batch was acknowledged.
    fn complete(&mut self, guest: &mut Guest) -> Result<(), DriverError> {
        let t0 = Instant::now();
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let delta = i64::try_from(b.pages).unwrap_or(i64::MAX);
        let oom = self.features.deflate_on_oom();
        match b.dir {
            Dir::Inflate => {
                let mut runs = std::mem::take(&mut self.runs);
                Self::runs_of(&b.blocks, &mut runs);
                for r in &runs {
                    guest.note_discarded(r.first(), r.len);
                }
                self.runs = runs;
                self.ballooned.extend_from_slice(&b.blocks);
                self.balloon_pages += b.pages;
                self.counters.pages_inflated += b.pages;
                if !oom {
                    guest.adjust_managed_pages(-delta);
                }
            }
            Dir::Deflate => {
                if !b.released {
                    Self::release(guest, &b.blocks)?;
                }
                self.balloon_pages -= b.pages;
                self.counters.pages_deflated += b.pages;
                if !oom {
                    guest.adjust_managed_pages(delta);
                }
            }
        }
        self.counters.batches += 1;
        self.write_actual()?;
        self.counters.complete_ns += t0.elapsed().as_nanos() as u64;
        Ok(())
    }

    /// Starts deflating up to `pages` pages because the guest ran out of memory
    /// (DEFLATE_ON_OOM); returns the pages being deflated (0 if the balloon is empty or the
    /// feature was not negotiated). The caller finishes it with [`BalloonDriver::service`].
    pub fn start_oom_deflate(&mut self, guest: &mut Guest, pages: u64) -> Result<u64, DriverError> {
        if !self.features.deflate_on_oom() || self.balloon_pages == 0 {
            return Ok(0);
        }
        if self.batch.is_some() {
            return Err(DriverError::NotReady("a batch is in flight"));
        }
        let n = pages.min(self.balloon_pages);
        self.counters.oom_deflates += 1;
        self.start_deflate(guest, n)?;
        Ok(n)
    }

    /// Pages the balloon holds, as (first page, order) blocks, oldest first.
    pub fn ballooned_blocks(&self) -> impl Iterator<Item = (Pfn, u8)> + '_ {
        self.ballooned.iter().map(|&b| unpack(b))
    }

    /// Bytes of guest RAM the balloon holds.
    pub fn balloon_bytes(&self) -> u64 {
        self.balloon_pages * PAGE_SIZE
    }
}
