//! Errors of the virtqueue layer: one variant per way a queue can be misconfigured or misused.
//!
//! The device side treats everything the guest wrote as hostile: each protocol violation has its
//! own variant carrying the offending value, and puts the queue in the needs-reset state.

use std::io;

use crate::memory::MemoryError;

/// A virtqueue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VirtqError {
    // ---- setup ----
    /// The queue size is not a power of two in 1..=32768 (§2.7).
    #[error("queue size {size} is not a power of two in 1..=32768 (§2.7)")]
    InvalidQueueSize {
        /// The size asked for.
        size: u32,
    },
    /// A ring part does not start at the alignment the spec requires (§2.7).
    #[error("{part} at {addr:#x} is not {align}-byte aligned (§2.7)")]
    MisalignedRing {
        /// Which part: "descriptor table", "available ring", "used ring" or "indirect area".
        part: &'static str,
        /// Its guest address.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
    /// A ring part does not fit inside guest RAM.
    #[error("{part} [{addr:#x}, +{len:#x}) lies outside guest RAM")]
    RingOutsideMemory {
        /// Which part.
        part: &'static str,
        /// Its guest address.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
    /// A guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// An eventfd system call failed.
    #[error("eventfd {op} failed: {source}")]
    EventFd {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },

    // ---- device side: the guest broke the protocol ----
    /// The queue saw a protocol violation earlier and needs a reset (DEVICE_NEEDS_RESET, §2.1.2).
    #[error("virtqueue needs reset after an earlier driver error (DEVICE_NEEDS_RESET, §2.1.2)")]
    NeedsReset,
    /// The available index ran more than a queue size ahead of the device (§2.7.6, §2.7.13.3).
    #[error("avail idx {avail_idx} is more than queue size {size} ahead of next_avail {next_avail} (§2.7.13.3)")]
    AvailIndexAhead {
        /// The index the driver published.
        avail_idx: u16,
        /// The next ring entry the device will read.
        next_avail: u16,
        /// Queue size.
        size: u16,
    },
    /// An available ring entry names a descriptor past the end of the table (§2.7.6).
    #[error("chain head {head} is out of range for queue size {size} (§2.7.6)")]
    HeadOutOfRange {
        /// The head index read from the available ring.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor's `next` points past the end of its table (§2.7.5).
    #[error("descriptor next {next} is out of range for a table of {limit} entries (§2.7.5)")]
    NextOutOfRange {
        /// The `next` value.
        next: u16,
        /// Entries in the table being walked (the queue size, or an indirect table's length).
        limit: u32,
    },
    /// The chain loops or has more descriptors than the queue size (§2.7.5.2).
    #[error("descriptor chain loops or is longer than {limit} descriptors (§2.7.5.2)")]
    ChainTooLong {
        /// The most descriptors a chain may have.
        limit: u32,
    },
    /// A buffer's address plus length overflows 64 bits (§2.7.5).
    #[error("buffer at {addr:#x} of {len:#x} bytes overflows the address space (§2.7.5)")]
    BufferAddressOverflow {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A buffer does not lie inside guest RAM (§2.7.5: `addr` is guest-physical).
    #[error("buffer [{addr:#x}, +{len:#x}) lies outside guest RAM (§2.7.5)")]
    BufferOutsideMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The chain's buffers add up to more than 2^32 bytes (§2.7.5.2).
    #[error("descriptor chain holds {total:#x} bytes, more than 2^32 (§2.7.5.2)")]
    ChainBytesOverflow {
        /// Total bytes up to and including the descriptor that went over.
        total: u64,
    },
    /// A descriptor inside an indirect table sets INDIRECT again (§2.7.5.3.1).
    #[error(
        "indirect descriptor {index} inside an indirect table: nesting is forbidden (§2.7.5.3.1)"
    )]
    NestedIndirect {
        /// Index of the offending entry in the indirect table.
        index: u16,
    },
    /// A descriptor sets both INDIRECT and NEXT (§2.7.5.3.1).
    #[error("descriptor {index} sets both INDIRECT and NEXT (§2.7.5.3.1)")]
    IndirectWithNext {
        /// Index of the descriptor in the descriptor table.
        index: u16,
    },
    /// An indirect table's length is not a multiple of 16 bytes (§2.7.5.3).
    #[error("indirect table length {len} is not a multiple of 16 (§2.7.5.3)")]
    IndirectTableLength {
        /// The length in bytes.
        len: u32,
    },
    /// An indirect table has no descriptors (§2.7.5.3).
    #[error("indirect table at {addr:#x} is empty (§2.7.5.3)")]
    IndirectTableEmpty {
        /// The table's guest address.
        addr: u64,
    },
    /// A descriptor sets INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated (§2.7.5.3.1).
    #[error("descriptor {index} sets INDIRECT without VIRTIO_F_INDIRECT_DESC (§2.7.5.3.1)")]
    IndirectNotNegotiated {
        /// Index of the descriptor in the descriptor table.
        index: u16,
    },
    /// A device-readable descriptor follows a device-writable one (§2.7.4.2).
    #[error("readable descriptor {index} follows a writable one (§2.7.4.2)")]
    WritableBeforeReadable {
        /// Position of the readable descriptor in the chain (0 = head).
        index: u16,
    },
    /// The queue takes only device-readable buffers but got a device-writable one (§2.7.5).
    #[error("device-writable buffer [{addr:#x}, +{len:#x}) on a queue that only reads (§2.7.5)")]
    UnexpectedWritable {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },

    // ---- device side: the device's own misuse ----
    /// `add_used` was given a head the queue never handed out (§2.7.8).
    #[error("used head {head} is out of range for queue size {size} (§2.7.8)")]
    UsedHeadOutOfRange {
        /// The head passed in.
        head: u16,
        /// Queue size.
        size: u16,
    },

    // ---- driver side ----
    /// A chain needs at least one buffer (§2.7.13.1).
    #[error("a descriptor chain needs at least one buffer (§2.7.13.1)")]
    EmptyChain,
    /// Not enough free descriptors for the chain.
    #[error("chain needs {needed} descriptors but only {free} are free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: u32,
        /// Descriptors free.
        free: u16,
    },
    /// The chain has more buffers than this queue can describe (§2.7.5.2).
    #[error("chain of {segments} buffers is longer than the limit of {limit} (§2.7.5.2)")]
    TooManySegments {
        /// Buffers in the chain.
        segments: usize,
        /// The most this queue takes in one chain.
        limit: usize,
    },
    /// The device published a used index more than a queue size ahead (§2.7.8).
    #[error("used idx {used_idx} is more than queue size {size} ahead of {last_used} (§2.7.8)")]
    UsedIndexAhead {
        /// The index the device published.
        used_idx: u16,
        /// The driver's last seen used index.
        last_used: u16,
        /// Queue size.
        size: u16,
    },
    /// The device returned a used id that is not an outstanding chain head (§2.7.8).
    #[error("used id {id} is not the head of an outstanding chain (§2.7.8)")]
    UsedIdInvalid {
        /// The id the device wrote.
        id: u32,
    },
}

impl VirtqError {
    /// Whether this error means the guest driver broke the protocol, so the device queue must be
    /// reset (virtio DEVICE_NEEDS_RESET, §2.1.2) rather than retried.
    pub fn is_driver_violation(&self) -> bool {
        matches!(
            self,
            VirtqError::AvailIndexAhead { .. }
                | VirtqError::HeadOutOfRange { .. }
                | VirtqError::NextOutOfRange { .. }
                | VirtqError::ChainTooLong { .. }
                | VirtqError::BufferAddressOverflow { .. }
                | VirtqError::BufferOutsideMemory { .. }
                | VirtqError::ChainBytesOverflow { .. }
                | VirtqError::NestedIndirect { .. }
                | VirtqError::IndirectWithNext { .. }
                | VirtqError::IndirectTableLength { .. }
                | VirtqError::IndirectTableEmpty { .. }
                | VirtqError::IndirectNotNegotiated { .. }
                | VirtqError::WritableBeforeReadable { .. }
                | VirtqError::UnexpectedWritable { .. }
        )
    }
}

/// Result of a virtqueue operation.
pub type Result<T> = std::result::Result<T, VirtqError>;
