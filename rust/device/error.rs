//! Errors of the balloon device: what a guest can get wrong in a buffer, and what can go wrong
//! on the host while serving it.

use super::role::QueueRole;
use crate::memory::MemoryError;
use crate::pages::PagesError;
use crate::transport::TransportError;
use crate::virtq::VirtqError;

/// A balloon device operation failed, or a guest buffer was refused.
///
/// Per-buffer errors (a bad message) leave the queue working: the buffer is returned used with
/// length 0. Queue errors ([`BalloonError::Queue`]) mean the ring itself is broken and the
/// device has set DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// A message on the inflate or deflate queue does not decode in the negotiated encoding
    /// (page outside guest RAM, page_shift other than 12, bmap_len disagreeing with the bytes
    /// that follow, a PFN array not a multiple of 4 bytes, ...).
    #[error("{queue} queue: bad {encoding} message: {source}")]
    Decode {
        /// Inflate or deflate.
        queue: QueueRole,
        /// The negotiated encoding's name.
        encoding: &'static str,
        /// What the decoder found.
        source: PagesError,
    },
    /// A device-writable buffer on a queue whose buffers the device only reads (§5.5.6).
    #[error("{queue} queue: device-writable buffer [{addr:#x}, +{len:#x}) in a request the device only reads (§5.5.6)")]
    WritableSegment {
        /// The queue.
        queue: QueueRole,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A message longer than its encoding allows; refused before a byte of it is read.
    #[error("{queue} queue: message of {len} bytes is longer than the {max} a {encoding} message may be")]
    MessageTooLong {
        /// The queue.
        queue: QueueRole,
        /// The encoding.
        encoding: &'static str,
        /// Readable bytes in the chain.
        len: u64,
        /// The most allowed.
        max: usize,
    },
    /// A stats buffer whose length is not a whole number of 10-byte entries (§5.5.6.3).
    #[error("stats buffer of {len} bytes is not a multiple of 10 (§5.5.6.3)")]
    StatsLength {
        /// Readable bytes in the buffer.
        len: u64,
    },
    /// A stats buffer longer than the device reads.
    #[error("stats buffer of {len} bytes is longer than the {max} allowed")]
    StatsTooLong {
        /// Readable bytes in the buffer.
        len: u64,
        /// The most allowed.
        max: usize,
    },
    /// The driver posted a second stats buffer while the device held one; the old one was
    /// returned (§5.5.6.3: one buffer is outstanding at a time).
    #[error("stats buffer {head} posted while buffer {held} was held; returned the old one")]
    StatsBufferAlreadyHeld {
        /// Head of the buffer that was held.
        held: u16,
        /// Head of the new buffer.
        head: u16,
    },
    /// The ring itself is broken; the device needs a reset (DEVICE_NEEDS_RESET, §2.1.2).
    #[error("{queue} queue is broken, device needs reset: {source}")]
    Queue {
        /// The queue.
        queue: QueueRole,
        /// The ring error.
        source: VirtqError,
    },
    /// A queue broke earlier (the cause is in the device's error log) and the device needs a
    /// reset (DEVICE_NEEDS_RESET, §2.1.2).
    #[error("{queue} queue needs reset (DEVICE_NEEDS_RESET)")]
    NeedsReset {
        /// The queue.
        queue: QueueRole,
    },
    /// A host memory operation (discard, populate) failed.
    #[error("host memory: {0}")]
    Memory(#[from] MemoryError),
    /// A transport register operation failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// A free page hint queue refused a buffer, or a hint request was out of protocol.
    #[error(transparent)]
    Hint(#[from] super::HintError),
    /// The device is not active (the driver has not set DRIVER_OK with ready queues), or a
    /// queue index has no handler.
    #[error("device not ready: {reason}")]
    NotReady {
        /// Why.
        reason: String,
    },
}

impl BalloonError {
    /// Whether this error broke a queue (as opposed to refusing one buffer).
    pub fn is_queue_broken(&self) -> bool {
        matches!(
            self,
            BalloonError::Queue { .. } | BalloonError::NeedsReset { .. }
        )
    }
}
