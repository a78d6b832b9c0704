//! Pre-copy live migration (wip).

pub mod bitmap;
pub mod crc;
pub mod dirty;
pub mod error;
mod uffd;
