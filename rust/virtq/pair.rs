//! A connected driver and device over the same rings: the setup later layers start from.

use std::sync::Arc;

use crate::memory::{GuestAddress, GuestMemory};

use super::defs::{has_feature, DESC_TABLE_ALIGN, VIRTIO_F_INDIRECT_DESC};
use super::device::DeviceQueue;
use super::driver::{DriverQueue, IndirectArea};
use super::error::{Result, VirtqError};
use super::layout::QueueLayout;
use super::notify::Notifier;

/// Indirect table slots [`pair`] reserves per queue entry when VIRTIO_F_INDIRECT_DESC is on.
pub const DEFAULT_INDIRECT_ENTRIES: u16 = 16;

/// How the two ends of a pair notify each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotifyMode {
    /// Kick and interrupt are eventfds: each side can block on the other.
    #[default]
    EventFd,
    /// Kick and interrupt are counters: for deterministic single-thread scripts.
    Polling,
}

/// Everything [`pair_with`] needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairConfig {
    /// Where the queue starts (16-byte aligned); see [`PairConfig::footprint`].
    pub base: GuestAddress,
    /// Queue size, a power of two in 1..=32768.
    pub size: u16,
    /// Negotiated feature bits.
    pub features: u64,
    /// Notification mechanism.
    pub notify: NotifyMode,
    /// Indirect table slots per entry (used only with VIRTIO_F_INDIRECT_DESC; 0 or 1: none).
    pub indirect_entries: u16,
}

impl PairConfig {
    /// Eventfd notifications and [`DEFAULT_INDIRECT_ENTRIES`].
    pub fn new(base: GuestAddress, size: u16, features: u64) -> PairConfig {
        PairConfig {
            base,
            size,
            features,
            notify: NotifyMode::EventFd,
            indirect_entries: DEFAULT_INDIRECT_ENTRIES,
        }
    }

    fn uses_indirect(&self) -> bool {
        self.indirect_entries > 1 && has_feature(self.features, VIRTIO_F_INDIRECT_DESC)
    }

    /// Offset of the indirect area from `base`: the rings, rounded up to 16 bytes.
    fn indirect_offset(&self) -> u64 {
        QueueLayout::placed_bytes(self.size).next_multiple_of(DESC_TABLE_ALIGN)
    }

    /// Bytes of guest memory from `base` the pair uses: the rings packed by
    /// [`QueueLayout::place`], then the indirect area if any.
    pub fn footprint(&self) -> u64 {
        if self.uses_indirect() {
            self.indirect_offset() + IndirectArea::bytes(self.size, self.indirect_entries)
        } else {
            QueueLayout::placed_bytes(self.size)
        }
    }
}

/// A driver and a device end over one queue at `base` in `mem`, connected by kick and interrupt
/// eventfds, with [`DEFAULT_INDIRECT_ENTRIES`]-entry indirect slots after the rings when
/// VIRTIO_F_INDIRECT_DESC is in `features`.
pub fn pair(
    mem: Arc<GuestMemory>,
    base: GuestAddress,
    size: u16,
    features: u64,
) -> Result<(DriverQueue, DeviceQueue)> {
    pair_with(mem, &PairConfig::new(base, size, features))
}

/// [`pair`] with every choice spelled out.
pub fn pair_with(mem: Arc<GuestMemory>, cfg: &PairConfig) -> Result<(DriverQueue, DeviceQueue)> {
    let layout = QueueLayout::place(cfg.base, cfg.size)?;
    let end = cfg.base.checked_add(cfg.footprint());
    if end.is_none_or(|e| e.raw() > mem.size()) {
        return Err(VirtqError::RingOutsideMemory {
            part: "queue",
            addr: cfg.base.raw(),
            len: cfg.footprint(),
        });
    }
    let mut driver = DriverQueue::new(Arc::clone(&mem), layout, cfg.features)?;
    if cfg.uses_indirect() {
        driver.set_indirect_area(IndirectArea {
            base: GuestAddress(cfg.base.raw() + cfg.indirect_offset()),
            entries_per_chain: cfg.indirect_entries,
        })?;
    }
    let mut device = DeviceQueue::new(mem, layout, cfg.features)?;
    let (kick, interrupt) = match cfg.notify {
        NotifyMode::EventFd => (Notifier::eventfd()?, Notifier::eventfd()?),
        NotifyMode::Polling => (Notifier::polling(), Notifier::polling()),
    };
    driver.set_notifiers(kick.clone(), interrupt.clone());
    device.set_notifiers(kick, interrupt);
    Ok((driver, device))
}
