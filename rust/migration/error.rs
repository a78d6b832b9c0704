//! Errors of the migration layer: the stream decoder's and the engine's.

use std::io;
use std::time::Duration;

pub use super::auth::AuthError;
use crate::memory::MemoryError;

/// The migration stream is malformed. Every variant carries the offending values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// The stream does not start with the vballoon migration magic.
    #[error("bad stream magic {found:#018x} (expected {expected:#018x})")]
    BadMagic {
        /// The 8 bytes found, read as a little-endian u64.
        found: u64,
        /// The magic expected.
        expected: u64,
    },
    /// The stream's format version is not one this build understands.
    #[error("unsupported stream version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// The version this build speaks.
        supported: u32,
    },
    /// The stream's page size is not 4096.
    #[error("unsupported page size {found} (expected {expected})")]
    BadPageSize {
        /// The page size in the header.
        found: u32,
        /// The page size expected.
        expected: u32,
    },
    /// The header's guest size is zero or not a multiple of the page size.
    #[error("bad guest size {size:#x} in the stream header")]
    BadGuestSize {
        /// The size in the header.
        size: u64,
    },
    /// The header has flag bits this build does not know.
    #[error("unknown header flags {flags:#x}")]
    UnknownFlags {
        /// The unknown bits.
        flags: u64,
    },
    /// A header or frame checksum does not match its contents.
    #[error(
        "{what} checksum mismatch at frame {frame}: stored {stored:#010x}, computed {computed:#010x}"
    )]
    ChecksumMismatch {
        /// Which checksum (header, batch N, stream).
        what: &'static str,
        /// Index of the frame it belongs to (0 for the header).
        frame: u64,
        /// The checksum carried by the stream.
        stored: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// A frame has a type byte this build does not know.
    #[error("unknown frame type {kind} in frame {frame}")]
    UnknownFrame {
        /// The type byte.
        kind: u8,
        /// Index of the frame.
        frame: u64,
    },
    /// A frame's reserved bytes are not zero.
    #[error("frame {frame} has non-zero reserved bytes")]
    ReservedNotZero {
        /// Index of the frame.
        frame: u64,
    },
    /// A frame's payload length is larger than the format allows, or wrong for its type.
    #[error("frame {frame} has payload length {len} (allowed: {min}..={max})")]
    BadFrameLength {
        /// Index of the frame.
        frame: u64,
        /// The length declared.
        len: u32,
        /// Smallest length allowed for this frame type.
        min: u32,
        /// Largest length allowed for this frame type.
        max: u32,
    },
    /// A record in a batch has an unknown kind.
    #[error("record at payload offset {offset} of frame {frame} has unknown kind {kind}")]
    BadRecordKind {
        /// The kind byte.
        kind: u8,
        /// Index of the frame.
        frame: u64,
        /// Offset of the record in the payload.
        offset: usize,
    },
    /// A record names pages outside guest RAM.
    #[error("pages [{pfn:#x}, +{count}) lie outside a guest of {guest_pages} pages")]
    PfnOutOfRange {
        /// First page of the record.
        pfn: u64,
        /// Number of pages.
        count: u64,
        /// Pages in the guest.
        guest_pages: u64,
    },
    /// A zero run of length zero.
    #[error("zero run at pfn {pfn:#x} has length 0")]
    EmptyZeroRun {
        /// First page of the run.
        pfn: u64,
    },
    /// A verify record covers no page.
    #[error("verify record at pfn {pfn:#x} covers no page")]
    EmptyVerifyRun {
        /// First page of the record.
        pfn: u64,
    },
    /// A batch's records do not add up to its declared count or length.
    #[error("frame {frame} declares {declared} records but holds {found}")]
    RecordCountMismatch {
        /// Index of the frame.
        frame: u64,
        /// Records declared by the frame header.
        declared: u32,
        /// Records actually decoded before the payload ended.
        found: u32,
    },
    /// The stream ended in the middle of a structure.
    #[error("stream truncated in {what}: needed {needed} bytes, got {got}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Round markers are not consecutive.
    #[error("round marker {found} out of order (expected {expected})")]
    RoundOutOfOrder {
        /// The round number found.
        found: u32,
        /// The round number expected.
        expected: u32,
    },
    /// The end record's totals disagree with what was received.
    #[error("end record says {field} = {stored}, but {received} were received")]
    TotalsMismatch {
        /// Which total.
        field: &'static str,
        /// The total carried by the end record.
        stored: u64,
        /// The total counted by the receiver.
        received: u64,
    },
    /// Bytes follow the end record.
    #[error("trailing bytes after the end record")]
    TrailingBytes,
    /// A running total the stream drives (pages, rounds) would overflow its counter.
    #[error("{field} overflow in frame {frame}")]
    CountOverflow {
        /// Which total.
        field: &'static str,
        /// Index of the frame.
        frame: u64,
    },
}

/// A live migration, or one side of it, failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The stream received is malformed.
    #[error("invalid migration stream: {0}")]
    Stream(#[from] StreamError),
    /// A guest-memory operation failed.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// The peer did not make progress within the configured timeout.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation that stalled.
        op: &'static str,
        /// The timeout in force.
        after: Duration,
    },
    /// The connection was closed or reset by the peer.
    #[error("connection lost during {op}: {source}")]
    ConnectionLost {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another I/O operation failed.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The destination refused or aborted the migration and said why.
    #[error("the destination rejected the migration: {reason} (detail {detail:#x})")]
    Rejected {
        /// The reason code the destination sent, decoded.
        reason: RejectReason,
        /// A value that goes with the reason (for example the destination's RAM size).
        detail: u64,
    },
    /// The peer sent a reply this side did not expect.
    #[error("unexpected reply from the peer: magic {magic:#010x}, code {code}")]
    BadReply {
        /// The reply's magic.
        magic: u32,
        /// The reply's code.
        code: u32,
    },
    /// The source guest is larger than the destination's RAM.
    #[error(
        "source guest of {source_size:#x} bytes does not fit destination RAM of {dest_size:#x}"
    )]
    GuestTooLarge {
        /// Guest size announced by the source.
        source_size: u64,
        /// RAM size of the destination.
        dest_size: u64,
    },
    /// The source guest is smaller than the destination's RAM (the sizes must be equal).
    #[error(
        "source guest of {source_size:#x} bytes differs from destination RAM of {dest_size:#x}"
    )]
    GuestSizeMismatch {
        /// Guest size announced by the source.
        source_size: u64,
        /// RAM size of the destination.
        dest_size: u64,
    },
    /// Authentication of the peer or of the stream failed.
    #[error("authentication: {0}")]
    Auth(#[from] AuthError),
    /// The destination's overall deadline passed before the migration ended.
    #[error("{op}: the migration's overall deadline of {after:?} passed")]
    DeadlineExceeded {
        /// The operation in progress.
        op: &'static str,
        /// The deadline, from the connection's start.
        after: Duration,
    },
    /// Listening on a non-loopback address without a key was not allowed explicitly.
    #[error(
        "refusing to listen on {addr} without a key: anyone who can reach it could write guest \
         RAM; give a key file (--key-file / key=) or allow it explicitly (--insecure / insecure=True)"
    )]
    InsecureListener {
        /// The address bound.
        addr: String,
    },
    /// The destination ran out of the memory it may populate.
    #[error("destination full: {needed} pages needed, budget is {budget} pages")]
    DestinationFull {
        /// Distinct pages that had to be written so far.
        needed: u64,
        /// Pages the destination may populate.
        budget: u64,
    },
    /// The kernel dirty tracker was asked for explicitly but cannot be used here.
    #[error("kernel dirty tracking unavailable: {reason}")]
    KernelTrackingUnavailable {
        /// Why (missing kernel feature, permission, ...).
        reason: String,
    },
    /// The kernel dirty tracker failed while running.
    #[error("kernel dirty tracking: {op} failed: {source}")]
    KernelTracking {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The hint source failed.
    #[error("free page hint source: {0}")]
    Hint(String),
    /// The migration was cancelled by its owner.
    #[error("migration cancelled")]
    Cancelled,
}

/// Why the destination refused or aborted a migration (the code in its reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The source guest does not fit (detail: destination RAM size in bytes).
    TooLarge,
    /// The stream was malformed.
    BadStream,
    /// The destination ran out of memory (detail: page budget).
    Full,
    /// Some other error on the destination.
    Failed,
    /// The source did not authenticate (no key, another key, or a replayed stream).
    Unauthenticated,
    /// The source guest is smaller than the destination's RAM (detail: destination RAM size).
    SizeMismatch,
    /// A code this build does not know.
    Unknown(u32),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::TooLarge => write!(f, "guest does not fit"),
            RejectReason::BadStream => write!(f, "malformed stream"),
            RejectReason::Full => write!(f, "destination out of memory"),
            RejectReason::Failed => write!(f, "destination failed"),
            RejectReason::Unauthenticated => write!(f, "not authenticated (check the key)"),
            RejectReason::SizeMismatch => write!(f, "guest size differs from the destination's"),
            RejectReason::Unknown(c) => write!(f, "unknown reason code {c}"),
        }
    }
}

impl MigrationError {
    /// The reason code a destination sends back for this error.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            MigrationError::GuestTooLarge { .. } => RejectReason::TooLarge,
            MigrationError::Stream(_) => RejectReason::BadStream,
            MigrationError::DestinationFull { .. } => RejectReason::Full,
            MigrationError::GuestSizeMismatch { .. } => RejectReason::SizeMismatch,
            MigrationError::Auth(_) => RejectReason::Unauthenticated,
            _ => RejectReason::Failed,
        }
    }
}
