//! What a virtio transport gives both sides, modelled on virtio-mmio's registers (virtio 1.2
//! §4.2.2): device status, feature negotiation, a config space with a generation counter and a
//! config-change notification, per-queue setup, and per-queue kick and interrupt notifiers.
//!
//! Guest (driver) and host (device) share one [`Transport`] through an `Arc`, in the same
//! process. Every register is an atomic or sits behind a short lock, so either side may run on
//! its own thread. The device creates the transport with what it offers
//! ([`TransportConfig`]); the driver walks the initialisation sequence of §3.1.1:
//!
//! 1. reset, ACKNOWLEDGE, DRIVER;
//! 2. read the device features, write the subset it accepts ([`Transport::set_driver_features`]);
//! 3. set FEATURES_OK and re-read the status: the device may refuse ([`Transport::set_status`]);
//! 4. set up each queue (size, ring addresses, ready);
//! 5. DRIVER_OK.
//!
//! Nothing here is balloon-specific: the balloon's wire vocabulary (which encoding the
//! negotiated features select, how long a message may be) is in [`crate::abi`]. A transport
//! drives a device through [`VirtioDevice`].

mod config;
mod device;
mod error;
mod status;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub use config::{ConfigSpace, CONFIG_SPACE_SIZE};
pub use device::{Activation, QueueActivation, VirtioDevice};
pub use error::TransportError;
pub use status::*;

use crate::util::lock;
use crate::virtq::defs::MAX_QUEUE_SIZE;
use crate::virtq::{check_queue_size, Notifier, NotifyMode, QueueLayout};

/// Decides whether the device accepts the features a driver wrote (checked at FEATURES_OK):
/// `Err` says why not.
#[derive(Clone)]
pub struct FeatureCheck(Arc<dyn Fn(u64) -> Result<(), String> + Send + Sync>);

impl FeatureCheck {
    /// A check that runs `rule` on the driver's features.
    pub fn new(rule: impl Fn(u64) -> Result<(), String> + Send + Sync + 'static) -> FeatureCheck {
        FeatureCheck(Arc::new(rule))
    }

    /// Runs the rule on `features`.
    pub fn check(&self, features: u64) -> Result<(), String> {
        (self.0)(features)
    }
}

impl std::fmt::Debug for FeatureCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeatureCheck(..)")
    }
}

/// What the device puts in the transport when it creates it.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Device ID (5 for the balloon).
    pub device_id: u32,
    /// Feature bits the device offers.
    pub device_features: u64,
    /// Queues the device can have (the driver sets up those its features make present).
    pub num_queues: u16,
    /// Largest queue size the device takes (virtio-mmio `QueueNumMax`).
    pub queue_max_size: u16,
    /// Eventfds (threads) or polling counters (one thread) for kicks, interrupts and config
    /// changes.
    pub notify: NotifyMode,
    /// Config-space byte offsets the driver may write, as a bit mask (bit `i`: byte `i`).
    pub driver_writable: u16,
    /// Extra acceptance rule for the driver's features; `None` accepts any subset of the offer.
    pub feature_check: Option<FeatureCheck>,
}

/// One queue's registers as the driver set them (virtio-mmio `QueueNum`, `QueueDesc*`,
/// `QueueDriver*`, `QueueDevice*`, `QueueReady`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSetup {
    /// Where the rings are and the queue size, once the driver wrote them.
    pub layout: Option<QueueLayout>,
    /// `QueueReady`: the driver finished setting this queue up.
    pub ready: bool,
}

struct QueueSlot {
    setup: Mutex<QueueSetup>,
    kick: Notifier,
    interrupt: Notifier,
}

/// The registers both sides of one virtio device share; see the module docs.
pub struct Transport {
    /// What the device set up (its `num_queues` is `queues.len()`).
    cfg: TransportConfig,
    driver_features: AtomicU64,
    status: AtomicU8,
    /// Resets so far (driver writes of 0 and [`Transport::reset`]), for the device to notice.
    resets: AtomicU64,
    /// Serialises status transitions so the FEATURES_OK check and a reset cannot interleave.
    status_lock: Mutex<()>,
    config: ConfigSpace,
    config_change: Notifier,
    queues: Vec<QueueSlot>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("cfg", &self.cfg)
            .field(
                "driver_features",
                &format_args!("{:#x}", self.driver_features()),
            )
            .field("status", &format_args!("{:#04x}", self.status()))
            .field("queues", &self.queues.len())
            .finish()
    }
}

fn notifier(mode: NotifyMode) -> Result<Notifier, TransportError> {
    Ok(match mode {
        NotifyMode::EventFd => Notifier::eventfd()?,
        NotifyMode::Polling => Notifier::polling(),
    })
}

impl Transport {
    /// A transport in the reset state (status 0) offering `cfg`.
    pub fn new(cfg: TransportConfig) -> Result<Arc<Transport>, TransportError> {
        check_queue_size(cfg.queue_max_size).map_err(|_| TransportError::QueueSize {
            index: 0,
            size: cfg.queue_max_size,
            max: MAX_QUEUE_SIZE,
        })?;
        let mut queues = Vec::with_capacity(usize::from(cfg.num_queues));
        for _ in 0..cfg.num_queues {
            queues.push(QueueSlot {
                setup: Mutex::new(QueueSetup::default()),
                kick: notifier(cfg.notify)?,
                interrupt: notifier(cfg.notify)?,
            });
        }
        Ok(Arc::new(Transport {
            config_change: notifier(cfg.notify)?,
            cfg,
            driver_features: AtomicU64::new(0),
            status: AtomicU8::new(0),
            resets: AtomicU64::new(0),
            status_lock: Mutex::new(()),
            config: ConfigSpace::new(),
            queues,
        }))
    }

    /// Device ID (`DeviceID`).
    pub fn device_id(&self) -> u32 {
        self.cfg.device_id
    }

    /// How notifications are delivered.
    pub fn notify_mode(&self) -> NotifyMode {
        self.cfg.notify
    }

    // ---- status (§2.1) ----

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }

    /// Whether every bit of `bits` is set in the status.
    pub fn has_status(&self, bits: u8) -> bool {
        self.status() & bits == bits
    }

    /// Driver write of the status register (§2.1, §3.1.1).
    ///
    /// Writing 0 resets the device (features, queues and config-written state are cleared).
    /// Bits may only be added, never cleared except by reset (§2.1.1). When FEATURES_OK is newly
    /// set the device checks the driver's features; if it refuses, FEATURES_OK stays clear and
    /// the driver sees that when it re-reads the status (§3.1.1 step 6).
    pub fn set_status(&self, value: u8) -> Result<u8, TransportError> {
        let _g = lock(&self.status_lock);
        if value == 0 {
            self.reset_locked();
            return Ok(0);
        }
        let old = self.status();
        if old & !value != 0 {
            return Err(TransportError::StatusCleared { old, new: value });
        }
        let mut new = value;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && old & VIRTIO_CONFIG_S_FEATURES_OK == 0
            && self.check_features(self.driver_features()).is_err()
        {
            new &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return Err(TransportError::DriverOkWithoutFeatures { status: new });
        }
        self.status.store(new, Ordering::Release);
        Ok(new)
    }

    /// Device side: sets DEVICE_NEEDS_RESET (§2.1.2) and sends a config-change notification.
    pub fn set_needs_reset(&self) -> Result<(), TransportError> {
        {
            let _g = lock(&self.status_lock);
            self.status
                .fetch_or(VIRTIO_CONFIG_S_NEEDS_RESET, Ordering::AcqRel);
        }
        self.config_change.notify()?;
        Ok(())
    }

    /// Resets the device (what a driver's write of 0 does).
    pub fn reset(&self) {
        let _g = lock(&self.status_lock);
        self.reset_locked();
    }

    /// How many resets happened since the transport was created: the device compares it with
    /// the count it last acted on to learn of a driver reset (§2.4, §3.1.1 step 1).
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    fn reset_locked(&self) {
        self.status.store(0, Ordering::Release);
        self.driver_features.store(0, Ordering::Release);
        for q in &self.queues {
            *lock(&q.setup) = QueueSetup::default();
            // Stale notifications of the old queue must not wake the new one.
            let _ = q.kick.take();
            let _ = q.interrupt.take();
        }
        // Last, so a device that sees the new count also sees the cleared registers.
        self.resets.fetch_add(1, Ordering::AcqRel);
    }

    // ---- features (§2.2) ----

    /// Feature bits the device offers (`DeviceFeatures`).
    pub fn device_features(&self) -> u64 {
        self.cfg.device_features
    }

    /// Feature bits the driver accepted (`DriverFeatures`); final once FEATURES_OK is set.
    pub fn driver_features(&self) -> u64 {
        self.driver_features.load(Ordering::Acquire)
    }

    /// The features in force: the driver's, once the device accepted them (FEATURES_OK).
    pub fn negotiated_features(&self) -> Option<u64> {
        self.has_status(VIRTIO_CONFIG_S_FEATURES_OK)
            .then(|| self.driver_features())
    }

    /// Driver write of `DriverFeatures`: only before FEATURES_OK (§3.1.1), and only bits the
    /// device offered (§2.2.1: "MUST NOT accept a feature which the device did not offer").
    pub fn set_driver_features(&self, features: u64) -> Result<(), TransportError> {
        let _g = lock(&self.status_lock);
        if self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            return Err(TransportError::FeaturesAfterOk);
        }
        let extra = features & !self.cfg.device_features;
        if extra != 0 {
            return Err(TransportError::FeaturesNotOffered {
                features,
                offered: self.cfg.device_features,
            });
        }
        self.driver_features.store(features, Ordering::Release);
        Ok(())
    }

    fn check_features(&self, features: u64) -> Result<(), String> {
        if features & !self.cfg.device_features != 0 {
            return Err(format!("{features:#x} has bits not offered"));
        }
        match &self.cfg.feature_check {
            Some(check) => check.check(features),
            None => Ok(()),
        }
    }

    // ---- config space (§2.5) ----

    /// The config space.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// Driver read of a le32 config field, consistent with the generation counter (§2.5.1).
    pub fn read_config_u32(&self, offset: usize) -> Result<u32, TransportError> {
        self.config.read_u32(offset)
    }

    /// Driver write of a le32 config field; only the fields the device made writable.
    pub fn driver_write_config_u32(&self, offset: usize, value: u32) -> Result<(), TransportError> {
        if offset % 4 != 0 || offset + 4 > CONFIG_SPACE_SIZE {
            return Err(TransportError::ConfigOffset { offset });
        }
        let mask = 0xfu32 << offset;
        if u32::from(self.cfg.driver_writable) & mask != mask {
            return Err(TransportError::ConfigReadOnly { offset });
        }
        self.config.write_u32(offset, value)
    }

    /// Device write of a le32 config field: bumps the generation and notifies the driver
    /// (§4.2.2: the config-change interrupt).
    pub fn device_write_config_u32(&self, offset: usize, value: u32) -> Result<(), TransportError> {
        self.config.write_u32_generation(offset, value)?;
        self.config_change.notify()?;
        Ok(())
    }

    /// The config-change notifier (device to driver).
    pub fn config_notifier(&self) -> &Notifier {
        &self.config_change
    }

    // ---- queues (§4.2.3.2) ----

    /// Number of queue slots.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Largest size the driver may give a queue (`QueueNumMax`).
    pub fn queue_max_size(&self) -> u16 {
        self.cfg.queue_max_size
    }

    fn slot(&self, index: u16) -> Result<&QueueSlot, TransportError> {
        self.queues
            .get(usize::from(index))
            .ok_or(TransportError::NoSuchQueue {
                index,
                count: self.num_queues(),
            })
    }

    /// Driver write of a queue's size and ring addresses; only while the queue is not ready
    /// and before DRIVER_OK.
    pub fn set_queue(&self, index: u16, layout: QueueLayout) -> Result<(), TransportError> {
        if layout.size() > self.cfg.queue_max_size {
            return Err(TransportError::QueueSize {
                index,
                size: layout.size(),
                max: self.cfg.queue_max_size,
            });
        }
        if self.has_status(VIRTIO_CONFIG_S_DRIVER_OK) {
            return Err(TransportError::QueueAfterDriverOk { index });
        }
        let mut s = lock(&self.slot(index)?.setup);
        if s.ready {
            return Err(TransportError::QueueAlreadyReady { index });
        }
        s.layout = Some(layout);
        Ok(())
    }

    /// Driver write of `QueueReady`.
    pub fn set_queue_ready(&self, index: u16, ready: bool) -> Result<(), TransportError> {
        let mut s = lock(&self.slot(index)?.setup);
        if ready && s.layout.is_none() {
            return Err(TransportError::QueueNotSetUp { index });
        }
        s.ready = ready;
        Ok(())
    }

    /// What the driver set for queue `index`.
    pub fn queue(&self, index: u16) -> Result<QueueSetup, TransportError> {
        Ok(*lock(&self.slot(index)?.setup))
    }

    /// Queue `index` as the driver set it up, for [`VirtioDevice::activate`]; `None` if it is
    /// not ready.
    pub fn queue_activation(&self, index: u16) -> Result<Option<QueueActivation>, TransportError> {
        let slot = self.slot(index)?;
        let setup = *lock(&slot.setup);
        Ok(match (setup.ready, setup.layout) {
            (true, Some(layout)) => Some(QueueActivation {
                layout,
                kick: slot.kick.clone(),
                call: slot.interrupt.clone(),
            }),
            _ => None,
        })
    }

    /// Driver write of whole le32 config fields from byte `offset`.
    pub fn driver_write_config(&self, offset: usize, data: &[u8]) -> Result<(), TransportError> {
        if data.len() % 4 != 0 || data.is_empty() {
            return Err(TransportError::ConfigOffset { offset });
        }
        for (i, w) in data.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let at = offset
                .checked_add(4 * i)
                .ok_or(TransportError::ConfigOffset { offset })?;
            self.driver_write_config_u32(at, v)?;
        }
        Ok(())
    }

    /// The notifier the driver signals for queue `index` (`QueueNotify`).
    pub fn kick_notifier(&self, index: u16) -> Result<Notifier, TransportError> {
        Ok(self.slot(index)?.kick.clone())
    }

    /// The notifier the device signals for used buffers of queue `index`.
    pub fn interrupt_notifier(&self, index: u16) -> Result<Notifier, TransportError> {
        Ok(self.slot(index)?.interrupt.clone())
    }
}

#[cfg(test)]
mod tests;
