//! The balloon device (host side): queue handlers for inflate, deflate and stats over the
//! queues the negotiated features make present, turning page sets into coalesced discards.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::config::{
    DeviceConfig, DiscardPolicy, PARALLEL_DISCARD_MIN_PAGES, PARALLEL_DISCARD_MIN_RUN_PAGES,
    PARALLEL_DISCARD_THREADS,
};
use super::counters::{add, DeviceCounters, SharedCounters};
use super::error::BalloonError;
use super::stats::{self, StatsSample, STATS_MAX_LEN};
use super::vectored::SelfMadvise;
use crate::abi::{
    bit, BalloonFeatures, QueueIndexes, CONFIG_ACTUAL, CONFIG_NUM_PAGES, CONFIG_POISON_VAL,
    STATS_ENTRY_SIZE, VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_ID_BALLOON,
};
use crate::memory::{Backing, GuestMemory, MemoryError, Pfn, PAGE_SIZE};
use crate::pages::{decode, Encoding, PageSet};
use crate::transport::wire::{encoding_for, max_message_len};
use crate::transport::{
    status_names, FeatureCheck, Transport, TransportConfig, VIRTIO_CONFIG_S_DRIVER_OK,
};
use crate::virtq::defs::{has_feature, VIRTIO_F_VERSION_1};
use crate::virtq::{DescriptorChain, DeviceQueue, VirtqError};

// ---- free page hints: misc, free-page and reporting queues (one file each) ----
#[path = "free_page.rs"]
mod free_page;
#[path = "hints.rs"]
mod hints;
#[path = "balloon_huge.rs"]
mod huge;
#[path = "misc.rs"]
mod misc;
#[path = "reporting.rs"]
mod reporting;
pub use hints::{
    FreePageStatus, HintCounters, HintError, HintEvent, HintOffer, HintSink, WriteLog,
};
// ---- end free page hints ----

/// Errors the device keeps for inspection (the oldest are dropped; all are counted).
pub const ERROR_LOG_LEN: usize = 32;

/// What a queue is for, by the balloon's numbering (§5.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueRole {
    /// inflateq.
    Inflate,
    /// deflateq.
    Deflate,
    /// statsq.
    Stats,
    /// The seed's misc queue (`misc.rs`).
    Misc,
    /// free_page_vq (`free_page.rs`).
    FreePage,
    /// reporting_vq (`reporting.rs`).
    Reporting,
}

impl QueueRole {
    /// Lower-case name, used in errors.
    pub fn name(self) -> &'static str {
        match self {
            QueueRole::Inflate => "inflate",
            QueueRole::Deflate => "deflate",
            QueueRole::Stats => "stats",
            QueueRole::Misc => "misc",
            QueueRole::FreePage => "free-page",
            QueueRole::Reporting => "reporting",
        }
    }

    /// The role of each present queue, by index.
    pub fn table(q: &QueueIndexes) -> Vec<QueueRole> {
        let mut roles = vec![QueueRole::Inflate; usize::from(q.count)];
        roles[usize::from(q.deflate)] = QueueRole::Deflate;
        let optional = [
            (q.stats, QueueRole::Stats),
            (q.misc, QueueRole::Misc),
            (q.free_page, QueueRole::FreePage),
            (q.reporting, QueueRole::Reporting),
        ];
        for (idx, role) in optional {
            if let Some(i) = idx {
                roles[usize::from(i)] = role;
            }
        }
        roles
    }
}

/// What one run of a queue handler did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Buffers popped.
    pub buffers: u64,
    /// Buffers refused (returned used with length 0).
    pub bad_buffers: u64,
    /// Pages moved in or out of the balloon.
    pub pages: u64,
    /// Whether an interrupt was sent.
    pub interrupted: bool,
}

struct Handler {
    role: QueueRole,
    queue: DeviceQueue,
}

/// The stats queue's state: the buffer the device holds until it wants a sample (QEMU's model).
#[derive(Debug, Default)]
struct StatsState {
    held: Option<u16>,
    sample: StatsSample,
}

/// A virtio-balloon device over one guest's RAM.
///
/// Created with its [`Transport`], which the driver side probes. Once the driver set
/// DRIVER_OK, [`BalloonDevice::activate`] builds the device end of every present queue; from
/// then on [`BalloonDevice::process_queue`] serves a queue after a kick.
///
/// Every byte the device reads from guest RAM is validated: buffers must lie in guest RAM
/// (virtq layer), messages must decode in the negotiated encoding with every page below the
/// guest's page count (pages layer), and the device adds the checks on chain shape and length.
/// A message is copied into host memory once before it is validated, so the guest cannot change
/// it between check and use, and the device only ever discards pages inside guest RAM.
pub struct BalloonDevice {
    cfg: DeviceConfig,
    mem: Arc<GuestMemory>,
    transport: Arc<Transport>,
    features: Option<BalloonFeatures>,
    encoding: Encoding,
    handlers: Vec<Option<Handler>>,
    balloon: PageSet,
    counters: Arc<SharedCounters>,
    stats: StatsState,
    hints: hints::HintQueues,
    errors: VecDeque<BalloonError>,
    errors_total: u64,
    /// For [`DiscardPolicy::Vectored`]: our pidfd, and whether the kernel took it so far.
    self_madvise: Option<SelfMadvise>,
    vectored_ok: bool,
    /// RAM on 2 MiB host pages: which host pages are full (see `host_pages`).
    huge: Option<huge::HugeState>,
    // Reused per batch so the hot path does not allocate.
    chain: DescriptorChain,
    scratch: Vec<u8>,
    runs: Vec<(u64, u64)>,
    heads: Vec<u16>,
}

impl std::fmt::Debug for BalloonDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonDevice")
            .field("cfg", &self.cfg)
            .field("features", &self.features)
            .field("encoding", &self.encoding)
            .field("balloon_pages", &self.balloon.count())
            .field("errors_total", &self.errors_total)
            .finish()
    }
}

/// Config-space bytes the driver may write: `actual` (4..8) and `poison_val` (12..16).
const DRIVER_WRITABLE: u16 = (0xf << CONFIG_ACTUAL) | (0xf << CONFIG_POISON_VAL);

impl BalloonDevice {
    /// A device for `mem` configured by `cfg`, and the transport the driver probes.
    pub fn new(mem: Arc<GuestMemory>, cfg: DeviceConfig) -> Result<BalloonDevice, BalloonError> {
        let device_features = cfg.device_features();
        let offered = BalloonFeatures::new(device_features, cfg.abi);
        let require_mth = cfg.require_must_tell_host;
        let check: FeatureCheck = Arc::new(move |f| {
            if !has_feature(f, VIRTIO_F_VERSION_1) {
                return Err("VIRTIO_F_VERSION_1 is required (no legacy interface)".into());
            }
            if require_mth && f & bit(VIRTIO_BALLOON_F_MUST_TELL_HOST) == 0 {
                return Err("VIRTIO_BALLOON_F_MUST_TELL_HOST is required".into());
            }
            Ok(())
        });
        let transport = Transport::new(TransportConfig {
            device_id: VIRTIO_ID_BALLOON,
            device_features,
            num_queues: offered.queues().count,
            queue_max_size: cfg.queue_max_size,
            notify: cfg.notify,
            driver_writable: DRIVER_WRITABLE,
            feature_check: Some(check),
        })?;
        let pages = mem.pages();
        let huge = huge::HugeState::for_memory(&mem, &cfg);
        Ok(BalloonDevice {
            cfg,
            mem,
            transport,
            features: None,
            encoding: Encoding::Pfn,
            handlers: Vec::new(),
            balloon: PageSet::new(pages),
            counters: Arc::new(SharedCounters::default()),
            stats: StatsState::default(),
            hints: hints::HintQueues::default(),
            errors: VecDeque::new(),
            errors_total: 0,
            self_madvise: None,
            vectored_ok: true,
            huge,
            chain: DescriptorChain::new(),
            scratch: Vec::new(),
            runs: Vec::new(),
            heads: Vec::new(),
        })
    }

    /// The transport the driver side uses.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Guest RAM.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The negotiated features, once active.
    pub fn features(&self) -> Option<BalloonFeatures> {
        self.features
    }

    /// The inflate/deflate encoding in use (PFN arrays until active).
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Whether [`BalloonDevice::activate`] succeeded and no reset happened since.
    pub fn is_active(&self) -> bool {
        self.features.is_some()
    }

    /// The live counters, for another thread to read.
    pub fn shared_counters(&self) -> Arc<SharedCounters> {
        Arc::clone(&self.counters)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> DeviceCounters {
        self.counters.snapshot()
    }

    /// The host's view of the balloon: the pages inflated and not deflated. A migration skips
    /// them (they read as zero).
    pub fn balloon(&self) -> &PageSet {
        &self.balloon
    }

    /// Pages in the balloon, by the host's view.
    pub fn balloon_pages(&self) -> u64 {
        self.balloon.count()
    }

    /// The most recent errors, oldest first (at most [`ERROR_LOG_LEN`]).
    pub fn errors(&self) -> impl Iterator<Item = &BalloonError> {
        self.errors.iter()
    }

    /// Errors seen in total.
    pub fn errors_total(&self) -> u64 {
        self.errors_total
    }

    /// Removes and returns the logged errors.
    pub fn take_errors(&mut self) -> Vec<BalloonError> {
        self.errors.drain(..).collect()
    }

    fn log(&mut self, e: BalloonError) {
        self.errors_total += 1;
        if self.errors.len() == ERROR_LOG_LEN {
            self.errors.pop_front();
        }
        self.errors.push_back(e);
    }

    // ---- config space ----

    /// Sets `num_pages`, the balloon size the host wants, and notifies the driver.
    pub fn set_num_pages(&self, pages: u32) -> Result<(), BalloonError> {
        Ok(self
            .transport
            .device_write_config_u32(CONFIG_NUM_PAGES, pages)?)
    }

    /// `num_pages` as last set.
    pub fn num_pages(&self) -> u32 {
        self.transport
            .read_config_u32(CONFIG_NUM_PAGES)
            .unwrap_or(0)
    }

    /// `actual`, the balloon size the driver says it reached (guest-written, untrusted).
    pub fn actual(&self) -> u32 {
        self.transport.read_config_u32(CONFIG_ACTUAL).unwrap_or(0)
    }

    // ---- lifecycle ----

    /// Builds the device end of every present queue from what the driver set up, once it set
    /// DRIVER_OK. Queue indexes follow the negotiated features ([`BalloonFeatures::queues`]).
    pub fn activate(&mut self) -> Result<(), BalloonError> {
        let status = self.transport.status();
        let not_ready = |reason: String| BalloonError::NotReady { reason };
        if status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            return Err(not_ready(format!(
                "status is {}, DRIVER_OK not set",
                status_names(status)
            )));
        }
        let bits = self
            .transport
            .negotiated_features()
            .ok_or_else(|| not_ready("features not negotiated".into()))?;
        let features = BalloonFeatures::new(bits, self.cfg.abi);
        let roles = QueueRole::table(&features.queues());
        let mut handlers = Vec::with_capacity(roles.len());
        for (i, role) in roles.into_iter().enumerate() {
            let index = i as u16;
            let setup = self.transport.queue(index)?;
            let layout = match (setup.ready, setup.layout) {
                (true, Some(l)) => l,
                _ => {
                    return Err(not_ready(format!(
                        "{} queue {index} not ready",
                        role.name()
                    )))
                }
            };
            let mut queue =
                DeviceQueue::new(Arc::clone(&self.mem), layout, bits).map_err(|source| {
                    BalloonError::Queue {
                        queue: role.name(),
                        source,
                    }
                })?;
            queue.set_notifiers(
                self.transport.kick_notifier(index)?,
                self.transport.interrupt_notifier(index)?,
            );
            handlers.push(Some(Handler { role, queue }));
        }
        self.handlers = handlers;
        self.features = Some(features);
        self.encoding = encoding_for(features);
        Ok(())
    }

    /// Forgets the queues and the held stats buffer (after the driver reset the device). The
    /// host's view of the balloon stays: the pages are still discarded until deflated or
    /// touched again.
    pub fn reset(&mut self) {
        self.handlers.clear();
        self.features = None;
        self.encoding = Encoding::Pfn;
        self.stats.held = None;
        self.hints.reset();
    }

    /// Number of queues the device serves (0 before activation).
    pub fn num_queues(&self) -> u16 {
        self.handlers.len() as u16
    }

    /// The role of queue `index`, if present.
    pub fn queue_role(&self, index: u16) -> Option<QueueRole> {
        self.handlers
            .get(usize::from(index))
            .and_then(|h| h.as_ref())
            .map(|h| h.role)
    }

    /// Serves every queue whose kick notifier fired since the last call; returns the number
    /// of queues served. This is what a kick does in synchronous mode.
    pub fn process_kicked(&mut self) -> Result<u32, BalloonError> {
        let mut served = 0;
        for i in 0..self.num_queues() {
            let kicked = match &self.handlers[usize::from(i)] {
                Some(h) => {
                    h.queue
                        .kick_notifier()
                        .take()
                        .map_err(|source| BalloonError::Queue {
                            queue: h.role.name(),
                            source,
                        })?
                }
                None => 0,
            };
            if kicked > 0 {
                self.process_queue(i)?;
                served += 1;
            }
        }
        Ok(served)
    }

    /// Serves queue `index`: pops every available buffer and handles it by the queue's role.
    ///
    /// Bad buffers are logged ([`BalloonDevice::errors`]) and returned used with length 0; the
    /// call still succeeds. If the ring itself is broken the queue goes to needs-reset, the
    /// device logs the cause, sets DEVICE_NEEDS_RESET and returns [`BalloonError::NeedsReset`].
    pub fn process_queue(&mut self, index: u16) -> Result<QueueRun, BalloonError> {
        let Some(Some(h)) = self.handlers.get_mut(usize::from(index)) else {
            return Err(BalloonError::NotReady {
                reason: format!("no queue {index}"),
            });
        };
        let role = h.role;
        add(&self.counters.queue_runs, 1);
        let result = match role {
            QueueRole::Inflate | QueueRole::Deflate => self.process_pages(index, role),
            QueueRole::Stats => self.process_stats(index),
            QueueRole::Misc => self.process_misc(index),
            QueueRole::FreePage => self.process_free_page(index),
            QueueRole::Reporting => self.process_reporting(index),
        };
        match result {
            Err(e) if e.is_queue_broken() => {
                // Log the cause once; later calls on the dead queue only say it needs reset.
                let first = !matches!(
                    e,
                    BalloonError::Queue {
                        source: VirtqError::NeedsReset,
                        ..
                    }
                );
                if first {
                    add(&self.counters.queue_errors, 1);
                    self.log(e);
                    self.transport.set_needs_reset()?;
                }
                Err(BalloonError::NeedsReset { queue: role.name() })
            }
            r => r,
        }
    }

    /// Pops queue `index`'s next chain into `chain`, unless `served` buffers (a queue's worth)
    /// were already taken in this run: a guest that keeps adding cannot keep the device here.
    fn pop_bounded(
        &mut self,
        index: u16,
        served: u64,
        chain: &mut DescriptorChain,
    ) -> Result<bool, VirtqError> {
        let queue = self.queue(index);
        if served >= u64::from(queue.size()) {
            return Ok(false);
        }
        queue.pop_into(chain)
    }

    fn queue(&mut self, index: u16) -> &mut DeviceQueue {
        // Callers only pass indexes `process_queue` found a handler for.
        &mut self.handlers[usize::from(index)]
            .as_mut()
            .expect("handler checked by process_queue")
            .queue
    }

    /// Inflate or deflate: pop every buffer, decode each, coalesce the runs of the whole batch,
    /// apply them, then return every buffer and interrupt once.
    fn process_pages(&mut self, index: u16, role: QueueRole) -> Result<QueueRun, BalloonError> {
        let qname = role.name();
        let enc = self.encoding;
        let max_len = max_message_len(enc);
        let max_pfn = self.mem.pages();
        let broken = |source| BalloonError::Queue {
            queue: qname,
            source,
        };
        let mut run = QueueRun::default();
        self.runs.clear();
        self.heads.clear();
        let mut chain = std::mem::take(&mut self.chain);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut runs = std::mem::take(&mut self.runs);
        let t0 = Instant::now();
        let popped = loop {
            match self.pop_bounded(index, self.heads.len() as u64, &mut chain) {
                Ok(false) => break Ok(()),
                Ok(true) => {}
                Err(e) => break Err(broken(e)),
            }
            run.buffers += 1;
            self.heads.push(chain.head());
            let before = runs.len();
            if let Err(e) = Self::decode_chain(
                &self.mem,
                &chain,
                qname,
                enc,
                max_len,
                max_pfn,
                &mut scratch,
                &mut runs,
                &self.counters,
            ) {
                runs.truncate(before);
                run.bad_buffers += 1;
                self.log(e);
            }
        };
        add(&self.counters.decode_ns, t0.elapsed().as_nanos() as u64);
        self.chain = chain;
        self.scratch = scratch;
        // Apply what decoded even if the ring broke after it: those buffers were valid.
        merge_runs(&mut runs);
        run.pages = match role {
            QueueRole::Inflate => self.inflate(&runs),
            _ => self.deflate(&runs),
        };
        self.runs = runs;
        let c = &self.counters;
        add(&c.buffers, run.buffers);
        add(&c.bad_buffers, run.bad_buffers);
        let per_role = if role == QueueRole::Inflate {
            &c.inflate_buffers
        } else {
            &c.deflate_buffers
        };
        add(per_role, run.buffers);
        popped?;
        // Every buffer goes back, good or bad (len 0: the device wrote nothing).
        for i in 0..self.heads.len() {
            let head = self.heads[i];
            self.queue(index).add_used(head, 0).map_err(broken)?;
        }
        if run.buffers > 0 {
            run.interrupted = self.queue(index).signal_used().map_err(broken)?;
            if run.interrupted {
                add(&self.counters.interrupts, 1);
            }
        }
        Ok(run)
    }

    /// Reads one inflate/deflate chain into host memory and decodes it, appending its runs.
    #[allow(clippy::too_many_arguments)]
    fn decode_chain(
        mem: &GuestMemory,
        chain: &DescriptorChain,
        queue: &'static str,
        enc: Encoding,
        max_len: usize,
        max_pfn: u64,
        scratch: &mut Vec<u8>,
        runs: &mut Vec<(u64, u64)>,
        counters: &SharedCounters,
    ) -> Result<(), BalloonError> {
        // §5.5.6: the driver's inflate and deflate requests are device-readable only. A
        // writable buffer is refused like any other bad message (the ring itself is fine).
        if let Some(s) = chain.writable().first() {
            return Err(BalloonError::WritableSegment {
                queue,
                addr: s.addr.raw(),
                len: s.len,
            });
        }
        let len = chain.readable_len();
        if len > max_len as u64 {
            return Err(BalloonError::MessageTooLong {
                queue,
                encoding: enc.name(),
                len,
                max: max_len,
            });
        }
        scratch.clear();
        // Copy first, then validate the copy: the guest cannot change a message under us.
        chain
            .read_into(mem, scratch)
            .map_err(|source| BalloonError::Queue { queue, source })?;
        add(&counters.bytes, len);
        decode(enc, &[scratch.as_slice()], max_pfn, runs).map_err(|source| {
            BalloonError::Decode {
                queue,
                encoding: enc.name(),
                source,
            }
        })?;
        Ok(())
    }

    /// Discards `runs` (sorted, disjoint) per the policy and adds them to the balloon; returns
    /// the pages newly inflated.
    fn inflate(&mut self, runs: &[(u64, u64)]) -> u64 {
        if self.huge.is_some() {
            return self.inflate_host_pages(runs);
        }
        let t0 = Instant::now();
        let (mut calls, mut fresh, mut again) = (0u64, 0u64, 0u64);
        for &(start, len) in runs {
            let already = count_in(&self.balloon, start, start + len);
            again += already;
            fresh += len - already;
            self.balloon.insert_range(start, len);
            match self.cfg.discard {
                DiscardPolicy::Never | DiscardPolicy::Vectored | DiscardPolicy::Parallel => {}
                DiscardPolicy::Coalesced => {
                    calls += 1;
                    self.discard(start, len);
                }
                DiscardPolicy::PerPage => {
                    for p in start..start + len {
                        calls += 1;
                        self.discard(p, 1);
                    }
                }
            }
        }
        match self.cfg.discard {
            DiscardPolicy::Vectored => calls += self.discard_vectored(runs),
            DiscardPolicy::Parallel => calls += self.discard_parallel(runs),
            _ => {}
        }
        let c = &self.counters;
        add(&c.discard_ns, t0.elapsed().as_nanos() as u64);
        add(&c.discard_calls, calls);
        add(&c.runs, runs.len() as u64);
        add(&c.pages_inflated, fresh);
        add(&c.pages_reinflated, again);
        fresh
    }

    /// Discards `runs` with one `process_madvise` per 1024 runs where the kernel allows it,
    /// otherwise (memfd RAM, an older kernel) one discard per run; returns the calls made.
    fn discard_vectored(&mut self, runs: &[(u64, u64)]) -> u64 {
        let mut calls = 0u64;
        let mut from = 0usize;
        if matches!(self.mem.backing(), Backing::Anonymous | Backing::Thp) && self.vectored_ok {
            if self.self_madvise.is_none() {
                self.self_madvise = SelfMadvise::open();
            }
            match &self.self_madvise {
                Some(m) => match m.discard(&self.mem, runs, &mut calls) {
                    Ok(()) => from = runs.len(),
                    Err((done, _)) => {
                        // Not supported here (or partial): finish run by run from now on.
                        from = done;
                        self.vectored_ok = false;
                    }
                },
                None => self.vectored_ok = false,
            }
        }
        for &(start, len) in &runs[from..] {
            calls += 1;
            self.discard(start, len);
        }
        calls
    }

    /// Discards `runs` split into page-balanced shares, one per thread; returns the calls made.
    ///
    /// Only long runs gain: many small `madvise` calls from several threads fight over the
    /// mmap lock and TLB shootdowns (measured 5x slower than one thread on a fragmented
    /// balloon), so a batch of short runs goes to the vectored path instead.
    fn discard_parallel(&mut self, runs: &[(u64, u64)]) -> u64 {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        if total < PARALLEL_DISCARD_MIN_RUN_PAGES.saturating_mul(runs.len() as u64) {
            return self.discard_vectored(runs);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.min(PARALLEL_DISCARD_THREADS);
        if threads < 2 || total < PARALLEL_DISCARD_MIN_PAGES {
            for &(start, len) in runs {
                self.discard(start, len);
            }
            return runs.len() as u64;
        }
        let shares = split_runs(runs, threads);
        let mem = &self.mem;
        let results: Vec<Vec<MemoryError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = shares
                .iter()
                .map(|share| {
                    scope.spawn(move || {
                        // Same bounds as `discard`: decoded pages, checked again by GuestMemory.
                        share
                            .iter()
                            .filter_map(|&(s, l)| mem.discard(Pfn(s).addr(), l * PAGE_SIZE).err())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        for e in results.into_iter().flatten() {
            add(&self.counters.discard_errors, 1);
            self.log(e.into());
        }
        shares.iter().map(|s| s.len() as u64).sum()
    }

    fn discard(&mut self, start: u64, len: u64) {
        // The decoder bounded every page by the guest's page count, and GuestMemory checks the
        // range again: nothing outside guest RAM can be discarded.
        if let Err(e) = self.mem.discard(Pfn(start).addr(), len * PAGE_SIZE) {
            add(&self.counters.discard_errors, 1);
            self.log(e.into());
        }
    }

    /// Takes `runs` out of the balloon; pages not in it are counted and ignored (a guest that
    /// deflates pages it never inflated only confuses itself). Returns the pages deflated.
    fn deflate(&mut self, runs: &[(u64, u64)]) -> u64 {
        let (mut moved, mut stray) = (0u64, 0u64);
        let t0 = Instant::now();
        let mut inside = Vec::new();
        self.deflate_host_pages(runs);
        for &(start, len) in runs {
            let n = count_in(&self.balloon, start, start + len);
            moved += n;
            stray += len - n;
            if self.cfg.populate_on_deflate {
                inside.clear();
                runs_within(&self.balloon, start, start + len, |s, l| {
                    inside.push((s, l))
                });
                for &(s, l) in &inside {
                    if let Err(e) = self.mem.populate(Pfn(s).addr(), l * PAGE_SIZE) {
                        self.log(e.into());
                    }
                }
            }
            self.balloon.remove_range(start, len);
        }
        let c = &self.counters;
        if self.cfg.populate_on_deflate {
            add(&c.discard_ns, t0.elapsed().as_nanos() as u64);
        }
        add(&c.pages_deflated, moved);
        add(&c.pages_stray_deflated, stray);
        moved
    }

    // ---- stats (§5.5.6.3) ----

    fn process_stats(&mut self, index: u16) -> Result<QueueRun, BalloonError> {
        let broken = |source| BalloonError::Queue {
            queue: "stats",
            source,
        };
        let mut run = QueueRun::default();
        let mut returned = 0u32;
        let mut chain = std::mem::take(&mut self.chain);
        loop {
            match self.pop_bounded(index, run.buffers, &mut chain) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    self.chain = chain;
                    return Err(broken(e));
                }
            }
            run.buffers += 1;
            add(&self.counters.stats_buffers, 1);
            let head = chain.head();
            if let Some(held) = self.stats.held.replace(head) {
                // One buffer is outstanding at a time; give the old one back, lose nothing.
                self.log(BalloonError::StatsBufferAlreadyHeld { held, head });
                if let Err(e) = self.queue(index).add_used(held, 0) {
                    self.chain = chain;
                    return Err(broken(e));
                }
                returned += 1;
            }
            if let Err(e) = self.parse_stats(&chain) {
                run.bad_buffers += 1;
                self.log(e);
            }
        }
        self.chain = chain;
        if returned > 0 {
            run.interrupted = self.queue(index).signal_used().map_err(broken)?;
            if run.interrupted {
                add(&self.counters.interrupts, 1);
            }
        }
        Ok(run)
    }

    fn parse_stats(&mut self, chain: &DescriptorChain) -> Result<(), BalloonError> {
        if let Some(s) = chain.writable().first() {
            return Err(BalloonError::WritableSegment {
                queue: "stats",
                addr: s.addr.raw(),
                len: s.len,
            });
        }
        let len = chain.readable_len();
        if len > STATS_MAX_LEN as u64 {
            return Err(BalloonError::StatsTooLong {
                len,
                max: STATS_MAX_LEN,
            });
        }
        if len % STATS_ENTRY_SIZE as u64 != 0 {
            return Err(BalloonError::StatsLength { len });
        }
        self.scratch.clear();
        chain
            .read_into(&self.mem, &mut self.scratch)
            .map_err(|source| BalloonError::Queue {
                queue: "stats",
                source,
            })?;
        let unknown = stats::parse_into(&self.scratch, &mut self.stats.sample);
        add(&self.counters.stats_unknown_tags, unknown);
        Ok(())
    }

    /// Asks the guest for fresh statistics by returning the buffer the device holds; returns
    /// whether it held one. The driver refills it and adds it again; the next
    /// [`BalloonDevice::process_queue`] on the stats queue parses it.
    pub fn request_stats(&mut self) -> Result<bool, BalloonError> {
        let Some(index) = self.features.and_then(|f| f.queues().stats) else {
            return Ok(false);
        };
        let Some(head) = self.stats.held.take() else {
            return Ok(false);
        };
        add(&self.counters.stats_requests, 1);
        let broken = |source| BalloonError::Queue {
            queue: "stats",
            source,
        };
        self.queue(index).add_used(head, 0).map_err(broken)?;
        if self.queue(index).signal_used().map_err(broken)? {
            add(&self.counters.interrupts, 1);
        }
        Ok(true)
    }

    /// The guest's statistics as last received.
    pub fn stats(&self) -> &StatsSample {
        &self.stats.sample
    }

    /// Whether the device holds a stats buffer (it can ask for a sample).
    pub fn holds_stats_buffer(&self) -> bool {
        self.stats.held.is_some()
    }
}

/// Mask of the bits of word `w` that stand for pages in `[start, end)`.
fn word_mask(w: u64, start: u64, end: u64) -> u64 {
    let lo = (w * 64).max(start) - w * 64;
    let hi = ((w + 1) * 64).min(end) - w * 64;
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

/// Pages of `set` in `[start, end)`, in O((end - start) / 64): the device calls this once per
/// run, so it must not depend on the size of the set.
fn count_in(set: &PageSet, start: u64, end: u64) -> u64 {
    let end = end.min(set.npages());
    if start >= end {
        return 0;
    }
    let words = set.words();
    (start / 64..end.div_ceil(64))
        .map(|w| u64::from((words[w as usize] & word_mask(w, start, end)).count_ones()))
        .sum()
}

/// Calls `f(first, len)` for each maximal run of `set` inside `[start, end)`, cut at the bounds.
fn runs_within(set: &PageSet, start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
    let end = end.min(set.npages());
    if start >= end {
        return;
    }
    let words = set.words();
    let mut cur: Option<(u64, u64)> = None;
    for w in start / 64..end.div_ceil(64) {
        let mut b = words[w as usize] & word_mask(w, start, end);
        while b != 0 {
            let tz = u64::from(b.trailing_zeros());
            let ones = u64::from((b >> tz).trailing_ones());
            let (s, l) = (w * 64 + tz, ones);
            cur = match cur {
                Some((cs, cl)) if cs + cl == s => Some((cs, cl + l)),
                Some((cs, cl)) => {
                    f(cs, cl);
                    Some((s, l))
                }
                None => Some((s, l)),
            };
            if tz + ones >= 64 {
                break;
            }
            b &= u64::MAX << (tz + ones);
        }
    }
    if let Some((s, l)) = cur {
        f(s, l);
    }
}

/// Sorts runs and merges those that overlap or touch, in place.
pub fn merge_runs(runs: &mut Vec<(u64, u64)>) {
    if runs.len() < 2 {
        return;
    }
    if !runs.windows(2).all(|w| w[0].0 <= w[1].0) {
        runs.sort_unstable();
    }
    let mut out = 0;
    for i in 1..runs.len() {
        let (s, l) = runs[i];
        let (ps, pl) = runs[out];
        if s <= ps + pl {
            runs[out].1 = (s + l).max(ps + pl) - ps;
        } else {
            out += 1;
            runs[out] = (s, l);
        }
    }
    runs.truncate(out + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_count_and_runs_within_bounds() {
        let set = PageSet::from_runs(300, [(3, 5), (62, 4), (100, 1), (200, 100)]).unwrap();
        for (s, e) in [(0, 300), (4, 64), (63, 101), (150, 299), (7, 7), (299, 400)] {
            let want: u64 = set.runs_in(s, e).map(|r| r.1).sum();
            assert_eq!(count_in(&set, s, e), want, "[{s}, {e})");
            let mut got = Vec::new();
            runs_within(&set, s, e, |a, l| got.push((a, l)));
            let want: Vec<(u64, u64)> = set.runs_in(s, e).collect();
            assert_eq!(got, want, "[{s}, {e})");
        }
    }

    #[test]
    fn test_merge_runs_joins_overlapping_and_touching() {
        let mut r = vec![(10, 2), (0, 4), (4, 1), (11, 5), (30, 1)];
        merge_runs(&mut r);
        assert_eq!(r, vec![(0, 5), (10, 6), (30, 1)]);
        let mut one = vec![(3, 1)];
        merge_runs(&mut one);
        assert_eq!(one, vec![(3, 1)]);
    }
}

/// Cuts sorted, disjoint `runs` into `n` lists of about equal page counts (a run may be split).
fn split_runs(runs: &[(u64, u64)], n: usize) -> Vec<Vec<(u64, u64)>> {
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let per = total.div_ceil(n as u64).max(1);
    let mut out: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut share = Vec::new();
    let mut room = per;
    for &(mut start, mut len) in runs {
        while len > 0 {
            if room == 0 {
                out.push(std::mem::take(&mut share));
                room = per;
            }
            let take = len.min(room);
            share.push((start, take));
            start += take;
            len -= take;
            room -= take;
        }
    }
    out.push(share);
    out
}

#[cfg(test)]
mod split_tests {
    use super::split_runs;

    #[test]
    fn test_split_runs_balances_pages_and_loses_nothing() {
        let runs = [(0, 10), (20, 3), (100, 50)];
        for n in 1..6 {
            let shares = split_runs(&runs, n);
            assert!(shares.len() <= n);
            let mut flat: Vec<(u64, u64)> = shares.iter().flatten().copied().collect();
            flat.sort();
            let pages: Vec<u64> = flat.iter().flat_map(|&(s, l)| s..s + l).collect();
            let want: Vec<u64> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
            assert_eq!(pages, want);
            let per = 63u64.div_ceil(n as u64);
            assert!(shares
                .iter()
                .all(|s| s.iter().map(|r| r.1).sum::<u64>() <= per));
        }
    }
}
