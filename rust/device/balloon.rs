//! The balloon device (host side): one handler per queue the negotiated features make present
//! (routed by [`QueueRole`]), served by one loop (`serve.rs`), turning page sets into coalesced
//! discards.

use std::collections::VecDeque;
use std::sync::Arc;

use super::config::DeviceConfig;
use super::counters::{DeviceCounters, SharedCounters};
use super::error::BalloonError;
use crate::abi::StatsSample;
use crate::abi::{
    bit, BalloonFeatures, CONFIG_ACTUAL, CONFIG_NUM_PAGES, CONFIG_POISON_VAL,
    VIRTIO_BALLOON_F_PAGE_POISON, VIRTIO_ID_BALLOON,
};
use crate::memory::GuestMemory;
use crate::pages::{Encoding, PageSet};
use crate::transport::{
    status_names, Activation, FeatureCheck, Transport, TransportConfig, VirtioDevice,
    VIRTIO_CONFIG_S_DRIVER_OK,
};
use crate::virtq::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use crate::virtq::DescriptorChain;

pub use super::role::QueueRole;

// The memory helper's file (issue #8 item 3 moves it into memory/, where its casts are checked).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#[path = "discard.rs"]
mod discard;
pub use runs::merge_runs;
#[path = "free_page.rs"]
mod free_page;
#[path = "handler.rs"]
mod handler;
#[path = "hints.rs"]
mod hints;
#[path = "balloon_huge.rs"]
mod huge;
#[path = "misc.rs"]
mod misc;
#[path = "pages_handler.rs"]
mod pages_handler;
#[path = "reporting.rs"]
mod reporting;
#[path = "reset.rs"]
mod reset;
#[path = "runs.rs"]
mod runs;
#[path = "serve.rs"]
mod serve;
#[path = "stats_queue.rs"]
mod stats_queue;
#[path = "virtio.rs"]
mod virtio;
pub use hints::{
    FreePageStatus, HintCounters, HintError, HintEvent, HintOffer, HintSink, WriteLog,
};
pub use pages_handler::BATCH_RUNS;
pub use serve::QueueRun;

/// Errors the device keeps for inspection (the oldest are dropped; all are counted).
pub const ERROR_LOG_LEN: usize = 32;

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
    /// The present queues by index, each with its handler (`serve.rs`).
    slots: Vec<Option<serve::Slot>>,
    balloon: PageSet,
    counters: Arc<SharedCounters>,
    /// The guest's statistics as last received.
    stats: StatsSample,
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
    used: Vec<(u16, u32)>,
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
        let check = FeatureCheck::new(move |f| virtio::accepts(f, require_mth));
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
            slots: Vec::new(),
            balloon: PageSet::new(pages),
            counters: Arc::new(SharedCounters::default()),
            stats: StatsSample::default(),
            hints: hints::HintQueues::default(),
            errors: VecDeque::new(),
            errors_total: 0,
            huge,
            seen_resets,
            rearm: false,
            chain: DescriptorChain::new(),
            used: Vec::new(),
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
        // The in-process transport's registers, as any transport hands them over.
        let roles = QueueRole::table(&BalloonFeatures::new(bits, self.cfg.abi).queues());
        let mut queues = Vec::with_capacity(roles.len());
        for (index, role) in (0u16..).zip(roles) {
            let q = self.transport.queue_activation(index)?;
            queues.push(q.ok_or_else(|| not_ready(format!("{role} queue {index} not ready")))?);
        }
        VirtioDevice::activate(
            self,
            Activation {
                features: bits,
                queues,
            },
        )
    }

    /// Number of queues the device serves (0 before activation).
    pub fn num_queues(&self) -> u16 {
        // At most the transport's queue count, a u16.
        u16::try_from(self.slots.len()).unwrap_or(u16::MAX)
    }

    /// The role of queue `index`, if present.
    pub fn queue_role(&self, index: u16) -> Option<QueueRole> {
        self.slots
            .get(usize::from(index))
            .and_then(|s| s.as_ref())
            .map(|s| s.role)
    }
}
