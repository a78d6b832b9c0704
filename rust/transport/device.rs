//! The one interface a transport drives a device through (virtio 1.2 §3.1, §2.4): activate
//! with the negotiated features and each queue's rings and notifiers, notify a queue after a
//! kick, reset, and config-space reads and writes. Interrupts leave through each queue's `call`
//! notifier and config-change notices through [`VirtioDevice::config_notifier`]; the transport
//! forwards them (the in-process model's eventfds, or a vhost-user frontend's call fds).
//!
//! It carries nothing device-specific, so one device serves any transport: queue addresses that
//! come from another process, memory in several regions (devices reach it only through
//! [`GuestMemory`](crate::memory::GuestMemory)), eventfd notifications, and a driver that resets
//! and negotiates again (a new [`VirtioDevice::activate`] after [`VirtioDevice::reset`]).

use crate::virtq::{Notifier, QueueLayout};

use super::TransportError;

/// One queue as the driver set it up.
#[derive(Clone, Debug)]
pub struct QueueActivation {
    /// Size and guest-physical ring addresses.
    pub layout: QueueLayout,
    /// Signalled by the driver side when it made buffers available (§2.7.13.3).
    pub kick: Notifier,
    /// Signalled by the device for used buffers (§2.7.14); the transport forwards it.
    pub call: Notifier,
}

/// What a driver's negotiation gives the device (§3.1.1 steps 5-8).
#[derive(Clone, Debug)]
pub struct Activation {
    /// The feature bits the driver accepted.
    pub features: u64,
    /// Every queue the features make present, by index.
    pub queues: Vec<QueueActivation>,
}

/// A virtio device as a transport sees it.
pub trait VirtioDevice {
    /// What the device's operations fail with.
    type Error: From<TransportError>;

    /// Feature bits offered (§2.2).
    fn offered_features(&self) -> u64;

    /// How many queues the features `features` make present.
    fn queues_for(&self, features: u64) -> u16;

    /// Starts serving after the driver's DRIVER_OK (§3.1.1 step 8): checks the features
    /// (a subset of the offer the device accepts) and takes over the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), Self::Error>;

    /// The driver kicked `queue`: serve it.
    fn notify(&mut self, queue: u16) -> Result<(), Self::Error>;

    /// Device reset (§2.4): forget the queues and the negotiation.
    fn reset(&mut self);

    /// Driver read of config space from byte `offset`.
    fn read_config(&self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError>;

    /// Driver write of whole le32 config fields from byte `offset` (only the fields the device
    /// lets the driver write).
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Result<(), TransportError>;

    /// Signalled on a config change or DEVICE_NEEDS_RESET (§4.2.2: the config interrupt).
    fn config_notifier(&self) -> Notifier;
}
