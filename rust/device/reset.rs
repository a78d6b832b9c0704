//! Device reset (virtio 1.2 §2.4, §3.1.1 step 1): when the driver writes 0 to the status
//! register, the device drops its queues, the negotiated features and encoding and what it held
//! from the old rings, and DEVICE_NEEDS_RESET is cleared with the status. The driver may then
//! negotiate again, with other features, and the device serves the new queues.
//!
//! The device learns of a reset from the transport's reset count, at its next entry point (a
//! kick, a stats or hint request, `activate`), before it touches a ring: nothing is ever written
//! into the rings of the old negotiation. The host's view of the balloon survives a reset, as
//! the host's memory does: those pages stay discarded until the guest deflates or reuses them.

use super::BalloonDevice;
use crate::device::error::BalloonError;
use crate::pages::Encoding;
use crate::transport::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};

impl BalloonDevice {
    /// Resets the device side: forgets the queues (and the stats and hint buffers it held in
    /// them), the negotiated features and the encoding; counters, errors and the host's view of
    /// the balloon stay. [`BalloonDevice::activate`] (or the driver's next DRIVER_OK, if the
    /// device was active when the driver reset it) starts it again.
    ///
    /// A driver's write of 0 to the status register does this by itself; call it directly only
    /// when the host resets the device without the driver (the transport stays as it is).
    pub fn reset(&mut self) {
        // The handlers go with their queues: what they held and their protocol state.
        self.slots.clear();
        self.features = None;
        self.encoding = Encoding::Pfn;
        self.used.clear();
        self.seen_resets = self.transport.resets();
    }

    /// Whether the driver reset the device since it last looked; if so, resets the device side.
    /// Returns whether it did.
    pub(super) fn notice_driver_reset(&mut self) -> bool {
        if self.transport.resets() == self.seen_resets {
            return false;
        }
        // Re-activate on the next DRIVER_OK only if the driver reset a running device: the
        // first negotiation is the owner's to activate (it may attach a log or sink first).
        self.rearm |= self.is_active();
        self.reset();
        true
    }

    /// Follows the driver: resets after its reset, and activates again once it set DRIVER_OK
    /// (§3.1.1 step 8) after renegotiating. An activation that fails is logged once.
    pub(super) fn follow_driver(&mut self) {
        self.notice_driver_reset();
        if !self.rearm || self.is_active() {
            return;
        }
        let status = self.transport.status();
        if status & VIRTIO_CONFIG_S_DRIVER_OK == 0 || status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        self.rearm = false;
        if let Err(e) = self.activate() {
            self.log(e);
        }
    }

    /// Restores queue `index`'s ring positions (next available entry to read, next used entry
    /// to write), as a migration destination resumes the rings where the source stopped.
    pub fn set_queue_indices(
        &mut self,
        index: u16,
        next_avail: u16,
        next_used: u16,
    ) -> Result<(), BalloonError> {
        match self.slots.get_mut(usize::from(index)) {
            Some(Some(s)) => {
                s.queue.set_indices(next_avail, next_used);
                Ok(())
            }
            _ => Err(BalloonError::NotReady {
                reason: format!("no queue {index}"),
            }),
        }
    }
}
