//! The crate's error: one enum over every layer's error family.
//!
//! Each layer has its own typed error; this enum is what crosses layer boundaries that mix them
//! (the machine, the bindings), and what the Python bindings map to exception classes.

use crate::guest::GuestError;
use crate::memory::MemoryError;
use crate::virtq::VirtqError;

/// Any vballoon error, by family.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest model (page allocator, workload).
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A virtqueue: a ring the guest corrupted, a full queue, a notification failure.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// An argument given by a caller (not the guest) is invalid.
    #[error("{0}")]
    Config(String),
    /// A live migration, or one side of it.
    #[error(transparent)]
    Migration(#[from] crate::migration::MigrationError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
