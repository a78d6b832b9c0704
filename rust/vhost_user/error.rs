//! Errors of the vhost-user backend: what a frontend can get wrong, and what can fail on the host.

use std::io;

use crate::device::BalloonError;
use crate::memory::MemoryError;
use crate::transport::TransportError;
use crate::virtq::VirtqError;

/// A vhost-user operation failed. Frontend mistakes carry the offending values; the connection
/// that made one is answered with an error or, if the protocol cannot go on, disconnected.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// A queue index past the queues the device has.
    #[error("queue {index} does not exist (the device has {count})")]
    NoSuchQueue {
        /// The index the frontend sent.
        index: u32,
        /// Queues the device offers.
        count: u16,
    },
    /// SET_VRING_NUM with a size that is zero, not a power of two, or above the maximum.
    #[error("queue {index}: size {num} is not a power of two in 1..={max}")]
    QueueSize {
        /// Queue index.
        index: u32,
        /// Size sent.
        num: u32,
        /// Largest size the backend takes.
        max: u16,
    },
    /// A ring address that lies in no region the frontend shared (or crosses a region's end).
    #[error(
        "queue {index}: {part} at frontend address {addr:#x} (+{len:#x}) is in no shared region"
    )]
    RingAddress {
        /// Queue index.
        index: u32,
        /// "descriptor table", "available ring" or "used ring".
        part: &'static str,
        /// The frontend's userspace address.
        addr: u64,
        /// Bytes the part takes at the queue's size.
        len: u64,
    },
    /// SET_VRING_BASE with a non-zero index: the device starts queues at index 0 only.
    #[error("queue {index}: base {base} not supported (queues start at 0)")]
    VringBase {
        /// Queue index.
        index: u32,
        /// Base sent.
        base: u32,
    },
    /// A memory table the backend cannot map.
    #[error("memory table: {reason}")]
    MemoryTable {
        /// What is wrong, with the values.
        reason: String,
    },
    /// A ring message before SET_MEM_TABLE.
    #[error("{op} before SET_MEM_TABLE")]
    NoMemory {
        /// The message.
        op: &'static str,
    },
    /// Features the backend did not offer.
    #[error("features {features:#x} include bits not offered ({offered:#x})")]
    FeaturesNotOffered {
        /// What the frontend set.
        features: u64,
        /// What the backend offered.
        offered: u64,
    },
    /// A config access outside the balloon's config space, or to a read-only field.
    #[error("config access [{offset}, +{len}) not allowed: {reason}")]
    Config {
        /// Byte offset.
        offset: u32,
        /// Length.
        len: u32,
        /// Why.
        reason: &'static str,
    },
    /// A message on the front channel the backend does not accept (bad size, flags, fds).
    #[error("bad {op} message: {reason}")]
    BadMessage {
        /// The request.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The backend request channel failed or the frontend refused a notice.
    #[error("backend channel: {reason}")]
    BackendChannel {
        /// What happened.
        reason: String,
    },
    /// A bad argument from the host side (Python, CLI).
    #[error("{0}")]
    Argument(String),
    /// The device refused or failed.
    #[error(transparent)]
    Device(#[from] BalloonError),
    /// The in-process transport refused a step of the negotiation.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An eventfd of the device failed.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// Mapping or discarding the frontend's memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The vhost crate reported a protocol error.
    #[error("vhost-user protocol: {0}")]
    Protocol(String),
}

impl VhostUserError {
    pub(crate) fn os(op: &'static str) -> VhostUserError {
        VhostUserError::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// The errno the vhost crate sends back to the frontend for this error.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            VhostUserError::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            VhostUserError::Memory(_) => libc::EFAULT,
            _ => libc::EINVAL,
        }
    }
}

/// vhost crate handler results carry an errno; ours keep the typed error in the log.
pub(crate) fn to_vhost(e: &VhostUserError) -> vhost::vhost_user::Error {
    vhost::vhost_user::Error::ReqHandlerError(io::Error::from_raw_os_error(e.errno()))
}
