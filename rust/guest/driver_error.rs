//! Errors of the balloon driver (guest side).

use crate::pages::PagesError;
use crate::transport::TransportError;
use crate::virtq::VirtqError;

use crate::guest::GuestError;

/// A balloon driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The device refused the features the driver accepted (FEATURES_OK did not stick).
    #[error("device refused driver features {features:#x} (FEATURES_OK not set)")]
    FeaturesRefused {
        /// The features the driver accepted.
        features: u64,
    },
    /// The device is not a balloon.
    #[error("device id {id} is not a balloon (5)")]
    WrongDevice {
        /// The device id read.
        id: u32,
    },
    /// The device offers a queue size the driver cannot use.
    #[error("device takes queues of at most {max} entries; the driver needs {need}")]
    QueueTooSmall {
        /// `QueueNumMax`.
        max: u16,
        /// Entries the driver needs (one bitmap message is 33 buffers).
        need: u16,
    },
    /// The device used a buffer the driver did not have in flight, or wrote into one it
    /// must only read.
    #[error("device returned unexpected buffer {head} on queue {queue}")]
    UnexpectedUsed {
        /// Queue index.
        queue: u16,
        /// Head index returned.
        head: u16,
    },
    /// The device did not answer in time.
    #[error("device did not answer on queue {queue} within {millis} ms")]
    Timeout {
        /// Queue index.
        queue: u16,
        /// The timeout.
        millis: u64,
    },
    /// The device set DEVICE_NEEDS_RESET.
    #[error("device needs reset")]
    DeviceNeedsReset,
    /// The driver is not initialised (call `probe`), or an operation needs a feature that was
    /// not negotiated.
    #[error("driver not ready: {0}")]
    NotReady(&'static str),
    /// An encoded message does not fit the driver's request buffers.
    #[error("message segment of {len} bytes does not fit the request buffers")]
    SegmentTooLarge {
        /// Segment length.
        len: usize,
    },
    /// Encoding a page set failed.
    #[error(transparent)]
    Pages(#[from] PagesError),
    /// The guest model (allocator, RAM).
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A virtqueue operation failed.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// A transport register access failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}
