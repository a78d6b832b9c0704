//! The crate's error: one enum over every layer's error family.
//!
//! Each layer has its own typed error; this enum is what crosses layer boundaries that mix them
//! (the machine, the bindings), and what the Python bindings map to exception classes.

use crate::device::BalloonError;
use crate::guest::DriverError;
use crate::guest::GuestError;
use crate::memory::MemoryError;
use crate::migration::MigrationError;
use crate::pages::PagesError;
use crate::transport::TransportError;
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
    /// A page-set encoding: a malformed or hostile message.
    #[error(transparent)]
    Pages(#[from] PagesError),
    /// Live migration.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// The virtio transport: status, feature negotiation, config space, queue setup.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The balloon device (host side): a refused guest buffer, a broken queue, a host error.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
    /// The balloon driver (guest side): negotiation, queue setup, a device that misbehaves.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// An argument given by a caller (not the guest) is invalid.
    #[error("{0}")]
    Config(String),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
