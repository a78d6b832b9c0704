//! Errors of the guest-memory layer.

use std::io;

/// A guest-memory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The access does not lie inside guest RAM.
    #[error("guest access [{addr:#x}, +{len:#x}) is outside guest RAM of {size:#x} bytes")]
    OutOfRange {
        /// First guest-physical byte asked for.
        addr: u64,
        /// Length asked for.
        len: u64,
        /// Size of guest RAM.
        size: u64,
    },
    /// The access lies inside guest RAM's span but not inside one region (it is in a hole or
    /// crosses from one region into the next).
    #[error("guest access [{addr:#x}, +{len:#x}) does not lie inside one region of guest RAM")]
    NotInOneRegion {
        /// First guest-physical byte asked for.
        addr: u64,
        /// Length asked for.
        len: u64,
    },
    /// A region of a multi-region guest is malformed.
    #[error("guest RAM region at {guest_base:#x} of {size:#x} bytes: {reason}")]
    BadRegion {
        /// Its guest-physical base.
        guest_base: u64,
        /// Its size.
        size: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An atomic access was not naturally aligned.
    #[error("guest address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// The address.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
    /// A page operation was given a range that is not whole pages.
    #[error("range [{addr:#x}, +{len:#x}) is not page aligned")]
    NotPageAligned {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Guest RAM size is zero, not a multiple of 4 KiB, or too large.
    #[error("guest RAM size {size:#x} must be a positive multiple of 4 KiB up to 1 TiB")]
    BadSize {
        /// The size asked for.
        size: u64,
    },
    /// A huge-page backing cannot be used here (no THP, no hugetlb pages reserved, ...).
    #[error("{backing} backing unavailable: {reason}")]
    HugePagesUnavailable {
        /// The backing asked for.
        backing: &'static str,
        /// What is missing.
        reason: String,
    },
    /// Huge-page-backed guest RAM must be a whole number of huge pages.
    #[error("guest RAM size {size:#x} is not a multiple of the {huge:#x}-byte huge page")]
    NotHugeAligned {
        /// The size asked for.
        size: u64,
        /// The huge page size.
        huge: u64,
    },
    /// A memfd could not be sealed against shrinking, so a truncation could crash the process.
    #[error(
        "memfd {fd} cannot be sealed against shrinking ({source}): guest RAM must be a memfd \
         created with MFD_ALLOW_SEALING (os.MFD_ALLOW_SEALING), so that nobody can truncate it \
         under the mapping"
    )]
    Unsealable {
        /// The descriptor.
        fd: i32,
        /// Why sealing failed.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}
