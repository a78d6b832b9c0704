//! Errors of the transport: a side used the registers out of order or out of range.

use crate::virtq::VirtqError;

/// A transport register access failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A status write would clear bits; only a reset (writing 0) may (§2.1.1).
    #[error("status write {new:#04x} clears bits of {old:#04x}; only a reset may (§2.1.1)")]
    StatusCleared {
        /// Status before.
        old: u8,
        /// Value written.
        new: u8,
    },
    /// DRIVER_OK without FEATURES_OK (§3.1.1).
    #[error("status {status:#04x} sets DRIVER_OK without FEATURES_OK (§3.1.1)")]
    DriverOkWithoutFeatures {
        /// Value written.
        status: u8,
    },
    /// The driver accepted features the device did not offer (§2.2.1).
    #[error("driver features {features:#x} include bits the device did not offer ({offered:#x}) (§2.2.1)")]
    FeaturesNotOffered {
        /// Features written.
        features: u64,
        /// Features offered.
        offered: u64,
    },
    /// Features written after FEATURES_OK (§3.1.1).
    #[error("driver features written after FEATURES_OK (§3.1.1)")]
    FeaturesAfterOk,
    /// The device refused the driver's features: FEATURES_OK did not stick (§3.1.1 step 6).
    #[error("device refused features {features:#x}: {reason}")]
    FeaturesRefused {
        /// Features the driver asked for.
        features: u64,
        /// Why.
        reason: String,
    },
    /// A config access is not a whole le32 field inside the 16-byte config space.
    #[error("config access at offset {offset} is not a le32 field inside the config space")]
    ConfigOffset {
        /// The offset.
        offset: usize,
    },
    /// The driver wrote a config field only the device may write.
    #[error("config field at offset {offset} is read-only for the driver")]
    ConfigReadOnly {
        /// The offset.
        offset: usize,
    },
    /// A queue index past the device's queues.
    #[error("queue {index} does not exist (the device has {count})")]
    NoSuchQueue {
        /// Index asked for.
        index: u16,
        /// Number of queues.
        count: u16,
    },
    /// A queue size above `QueueNumMax` (or not a power of two).
    #[error("queue {index} size {size} is invalid (a power of two up to {max})")]
    QueueSize {
        /// Queue index.
        index: u16,
        /// Size asked for.
        size: u16,
        /// Largest size.
        max: u16,
    },
    /// A queue was changed after DRIVER_OK.
    #[error("queue {index} set up after DRIVER_OK")]
    QueueAfterDriverOk {
        /// Queue index.
        index: u16,
    },
    /// A ready queue was changed.
    #[error("queue {index} changed while ready")]
    QueueAlreadyReady {
        /// Queue index.
        index: u16,
    },
    /// A queue was made ready before its rings were given.
    #[error("queue {index} made ready before its rings were set")]
    QueueNotSetUp {
        /// Queue index.
        index: u16,
    },
    /// The device is not in the state the operation needs.
    #[error("device status is {status}, expected {expected}")]
    BadState {
        /// Status now, by name.
        status: String,
        /// What was needed.
        expected: &'static str,
    },
    /// A notifier failed.
    #[error(transparent)]
    Notify(#[from] VirtqError),
}
