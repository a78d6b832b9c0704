//! The balloon device (host side): queue handlers for inflate, deflate and stats over the
//! queues the negotiated features make present, turning page sets into coalesced discards.

use std::collections::VecDeque;
use std::sync::Arc;

use super::config::DeviceConfig;
use super::counters::{add, DeviceCounters, SharedCounters};
use super::error::BalloonError;
use super::stats::StatsSample;
use crate::abi::{
    bit, BalloonFeatures, QueueIndexes, CONFIG_ACTUAL, CONFIG_NUM_PAGES, CONFIG_POISON_VAL,
    VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_PAGE_POISON, VIRTIO_ID_BALLOON,
};
use crate::memory::GuestMemory;
use crate::pages::{Encoding, PageSet};
use crate::transport::wire::encoding_for;
use crate::transport::{
    status_names, FeatureCheck, Transport, TransportConfig, VIRTIO_CONFIG_S_DRIVER_OK,
};
use crate::virtq::defs::{
    feature, has_feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use crate::virtq::{DescriptorChain, DeviceQueue, VirtqError};

// ---- inflate/deflate batches (bounded run buffer) and applying them ----
#[path = "batch.rs"]
mod batch;
#[path = "discard.rs"]
mod discard;
pub use batch::BATCH_RUNS;
pub use discard::merge_runs;
// ---- end batches ----
#[path = "reset.rs"]
mod reset;
#[path = "stats_queue.rs"]
mod stats_queue;

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
    /// RAM on 2 MiB host pages: which host pages are full (see `host_pages`).
    huge: Option<huge::HugeState>,
    /// The transport's reset count the device last acted on (`reset.rs`).
    seen_resets: u64,
    /// Whether to activate again at the driver's next DRIVER_OK (it reset a running device).
    rearm: bool,
    // Reused per batch so the hot path does not allocate.
    chain: DescriptorChain,
    scratch: Vec<u8>,
    runs: Vec<crate::memory::PageRange>,
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
        Self::with_extra_features(mem, cfg, 0)
    }

    /// Like [`BalloonDevice::new`], also offering the features in `extra` that the device
    /// implements but [`DeviceConfig`] does not offer: VIRTIO_F_INDIRECT_DESC (§2.7.5.3),
    /// VIRTIO_F_EVENT_IDX (§2.7.10) and, outside v3 ABI mode, VIRTIO_BALLOON_F_PAGE_POISON
    /// (§5.5.3). Other bits are ignored.
    pub fn with_extra_features(
        mem: Arc<GuestMemory>,
        cfg: DeviceConfig,
        extra: u64,
    ) -> Result<BalloonDevice, BalloonError> {
        let mut allowed = feature(VIRTIO_F_INDIRECT_DESC) | feature(VIRTIO_F_EVENT_IDX);
        if cfg.abi.has_upstream_hinting() {
            allowed |= bit(VIRTIO_BALLOON_F_PAGE_POISON);
        }
        let device_features = cfg.device_features() | (extra & allowed);
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
        let seen_resets = transport.resets();
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
            huge,
            seen_resets,
            rearm: false,
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
        self.notice_driver_reset();
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
            queue.set_write_log(self.hints.dirty.clone());
            handlers.push(Some(Handler { role, queue }));
        }
        self.handlers = handlers;
        self.features = Some(features);
        self.encoding = encoding_for(features);
        self.rearm = false;
        Ok(())
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
        self.follow_driver();
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
        self.follow_driver();
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
}
