//! [`BalloonDevice`] as a [`VirtioDevice`]: the interface the in-process transport and the
//! vhost-user backend both drive it through.

use std::sync::Arc;

use super::handler::Handler;
use super::serve::Slot;
use super::{BalloonDevice, QueueRole};
use crate::abi::{bit, encoding_for, BalloonFeatures, VIRTIO_BALLOON_F_MUST_TELL_HOST};
use crate::device::error::BalloonError;
use crate::transport::{Activation, TransportError, VirtioDevice};
use crate::virtq::defs::{has_feature, VIRTIO_F_VERSION_1};
use crate::virtq::{DeviceQueue, Notifier};

/// The device's rule for the features a driver may accept, on top of "a subset of the offer"
/// (checked by the transport at FEATURES_OK, and again at activation).
pub(super) fn accepts(features: u64, require_must_tell_host: bool) -> Result<(), String> {
    if !has_feature(features, VIRTIO_F_VERSION_1) {
        return Err("VIRTIO_F_VERSION_1 is required (no legacy interface)".into());
    }
    if require_must_tell_host && features & bit(VIRTIO_BALLOON_F_MUST_TELL_HOST) == 0 {
        return Err("VIRTIO_BALLOON_F_MUST_TELL_HOST is required".into());
    }
    Ok(())
}

impl VirtioDevice for BalloonDevice {
    type Error = BalloonError;

    fn offered_features(&self) -> u64 {
        self.transport.device_features()
    }

    fn queues_for(&self, features: u64) -> u16 {
        BalloonFeatures::new(features, self.cfg.abi).queues().count
    }

    fn activate(&mut self, activation: Activation) -> Result<(), BalloonError> {
        let Activation {
            features: bits,
            queues,
        } = activation;
        let offered = self.offered_features();
        let refused = |reason: String| TransportError::FeaturesRefused {
            features: bits,
            reason,
        };
        if bits & !offered != 0 {
            return Err(refused(format!("not a subset of the offer {offered:#x}")).into());
        }
        accepts(bits, self.cfg.require_must_tell_host).map_err(refused)?;
        let features = BalloonFeatures::new(bits, self.cfg.abi);
        let roles = QueueRole::table(&features.queues());
        if queues.len() < roles.len() {
            return Err(BalloonError::NotReady {
                reason: format!("{} queues set up, {} needed", queues.len(), roles.len()),
            });
        }
        let mut slots = Vec::with_capacity(roles.len());
        for (role, q) in roles.into_iter().zip(queues) {
            let mut queue =
                DeviceQueue::new(Arc::clone(&self.mem), q.layout, bits).map_err(|source| {
                    BalloonError::Queue {
                        queue: role,
                        source,
                    }
                })?;
            queue.set_notifiers(q.kick, q.call);
            queue.set_write_log(self.hints.dirty.clone());
            slots.push(Some(Slot {
                role,
                queue,
                handler: Handler::for_role(role),
            }));
        }
        self.slots = slots;
        self.features = Some(features);
        self.encoding = encoding_for(features);
        self.rearm = false;
        Ok(())
    }

    fn notify(&mut self, queue: u16) -> Result<(), BalloonError> {
        self.process_queue(queue).map(|_| ())
    }

    fn reset(&mut self) {
        BalloonDevice::reset(self);
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError> {
        self.transport.config().read(offset, buf)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Result<(), TransportError> {
        self.transport.driver_write_config(offset, data)
    }

    fn config_notifier(&self) -> Notifier {
        self.transport.config_notifier().clone()
    }
}
