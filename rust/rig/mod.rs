//! Scaffolding for tests, fuzz targets and benches (the `test-utils` feature; not in a release
//! build): the one driver start-up sequence every rig plays against a [`BalloonDevice`], and
//! the hostile-guest harnesses the fuzz targets and tests share ([`hostile`]: every queue,
//! [`hostile_lifecycle`]: the device's whole life).
//!
//! The real guest driver ([`crate::guest::BalloonDriver::probe`]) masks features and
//! reserves its buffer area between the steps; a rig wants only the bare sequence of virtio 1.2
//! §3.1.1 with its rings where it says, so that is written here once.

// The harnesses' casts are on their own sizes (a few pages of guest RAM, one-page buffers),
// not on values the guest chooses.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub mod hostile;
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub mod hostile_lifecycle;

use std::sync::Arc;

use crate::device::BalloonDevice;
use crate::error::Result;
use crate::guest::DriverError;
use crate::memory::{GuestAddress, GuestMemory};
use crate::transport::{
    Transport, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use crate::virtq::{DriverQueue, QueueLayout};

/// The driver's side of initialisation (virtio 1.2 §3.1.1), with ring `i` of `queue_size`
/// entries at `ring_base + i * ring_stride`.
#[derive(Clone, Copy, Debug)]
pub struct DriverStart {
    /// Features to accept; `None` accepts everything the device offers.
    pub features: Option<u64>,
    /// Queues to set up; `None` sets up every queue the transport has.
    pub queues: Option<u16>,
    /// Guest address of ring 0.
    pub ring_base: u64,
    /// Bytes between consecutive rings.
    pub ring_stride: u64,
    /// Entries in each ring.
    pub queue_size: u16,
    /// Write status 0 (a reset) first, as a driver taking over a used device does.
    pub reset: bool,
    /// Carry on to DRIVER_OK even if the device refused the features (a hostile driver).
    pub ignore_refusal: bool,
}

impl DriverStart {
    /// Every offered feature, every queue, rings of `queue_size` entries `ring_stride` bytes
    /// apart from address 0, no reset.
    pub fn new(queue_size: u16, ring_stride: u64) -> DriverStart {
        DriverStart {
            features: None,
            queues: None,
            ring_base: 0,
            ring_stride,
            queue_size,
            reset: false,
            ignore_refusal: false,
        }
    }

    /// Guest address of ring `index`.
    pub fn ring_addr(&self, index: u16) -> GuestAddress {
        GuestAddress(self.ring_base + u64::from(index) * self.ring_stride)
    }

    /// Negotiates and places every ring, up to and including DRIVER_OK; returns the features
    /// written and the ring layouts. A rig whose input bytes are the rings stops here.
    pub fn negotiate(&self, t: &Transport) -> Result<(u64, Vec<QueueLayout>)> {
        self.run(t, |_, _| Ok(()))
    }

    /// [`DriverStart::negotiate`], with a [`DriverQueue`] over each ring, its notifiers wired.
    pub fn driver_queues(&self, t: &Transport, mem: &Arc<GuestMemory>) -> Result<Vec<DriverQueue>> {
        let mut queues = Vec::new();
        self.run(t, |features, layout| {
            let index = queues.len() as u16;
            let mut q = DriverQueue::new(Arc::clone(mem), layout, features)?;
            q.set_notifiers(t.kick_notifier(index)?, t.interrupt_notifier(index)?);
            queues.push(q);
            Ok(())
        })?;
        Ok(queues)
    }

    /// The whole start-up against `dev`: [`DriverStart::driver_queues`], then activation.
    pub fn start(&self, dev: &mut BalloonDevice) -> Result<Vec<DriverQueue>> {
        let t = Arc::clone(dev.transport());
        let mem = Arc::clone(dev.memory());
        let queues = self.driver_queues(&t, &mem)?;
        dev.activate()?;
        Ok(queues)
    }

    /// The sequence itself; `each` sees every ring before it is made ready.
    fn run(
        &self,
        t: &Transport,
        mut each: impl FnMut(u64, QueueLayout) -> Result<()>,
    ) -> Result<(u64, Vec<QueueLayout>)> {
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        if self.reset {
            t.set_status(0)?;
        }
        t.set_status(s)?;
        let features = self.features.unwrap_or_else(|| t.device_features());
        t.set_driver_features(features)?;
        let ok = t.set_status(s | VIRTIO_CONFIG_S_FEATURES_OK)?;
        if ok & VIRTIO_CONFIG_S_FEATURES_OK == 0 && !self.ignore_refusal {
            return Err(DriverError::FeaturesRefused { features }.into());
        }
        let n = self.queues.unwrap_or_else(|| t.num_queues());
        let mut layouts = Vec::with_capacity(usize::from(n));
        for i in 0..n {
            let layout = QueueLayout::place(self.ring_addr(i), self.queue_size)?;
            each(features, layout)?;
            t.set_queue(i, layout)?;
            t.set_queue_ready(i, true)?;
            layouts.push(layout);
        }
        t.set_status(s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)?;
        Ok((features, layouts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceConfig;
    use crate::memory::{Backing, PAGE_SIZE};
    use crate::virtq::NotifyMode;

    fn device() -> BalloonDevice {
        let mem = Arc::new(GuestMemory::new(256 * PAGE_SIZE, Backing::Anonymous).unwrap());
        let cfg = DeviceConfig {
            notify: NotifyMode::Polling,
            ..DeviceConfig::default()
        };
        BalloonDevice::new(mem, cfg).unwrap()
    }

    #[test]
    fn test_start_sets_up_every_queue_and_driver_ok() {
        let mut dev = device();
        let queues = DriverStart::new(16, 0x1000).start(&mut dev).unwrap();
        let t = dev.transport();
        assert_eq!(queues.len(), usize::from(t.num_queues()));
        assert_ne!(t.status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_eq!(t.driver_features(), t.device_features());
        assert!(dev.is_active());
    }

    #[test]
    fn test_features_not_offered_are_an_error() {
        let dev = device();
        let start = DriverStart {
            features: Some(u64::MAX),
            ..DriverStart::new(16, 0x1000)
        };
        assert!(start.negotiate(dev.transport()).is_err());
        assert_eq!(dev.transport().status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    }
}
