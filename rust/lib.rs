//! vballoon: virtio-balloon fast (de)inflation and free-page-hinted live migration, in userspace.
//!
//! Guest RAM is a real mmap'd region ([`memory`]); guest and host talk over spec-exact split
//! virtqueues laid out in it ([`virtq`]). Layers, lowest first: `memory`, `virtq`, `pages`,
//! `guest`, `device`, `migration`, `machine`, with `abi` (the wire vocabulary guest and device
//! share) and `util` (hash, rng) below them all; `python` holds the PyO3 bindings and is the
//! only module that knows about Python.

pub mod abi;
pub mod bench;
pub mod device;
pub mod error;
pub mod guest;
pub mod machine;
pub mod memory;
pub mod migration;
pub mod pages;
pub mod transport;
pub mod util;
pub mod vhost_user;
pub mod virtq;

#[cfg(feature = "python")]
mod python;
#[cfg(any(test, feature = "test-utils"))]
pub mod rig;
