//! vballoon: virtio-balloon fast (de)inflation and free-page-hinted live migration, in userspace.
//!
//! Guest RAM is a real mmap'd region ([`GuestMemory`]); guest and host talk over spec-exact
//! split virtqueues laid out in it. A [`Session`] wires one modelled guest (a buddy allocator
//! and the balloon driver, [`BalloonDriver`]) to one [`BalloonDevice`] over an in-process
//! transport; moving the balloon gives guest pages back to the host with real `madvise` /
//! `fallocate` calls. Pages travel as [`PageSet`]s in one of several [`Encoding`]s (PFN arrays,
//! the v3 bitmap, extents, auto). A running guest migrates with [`migrate_local`] or
//! [`listen`] / [`send`] across processes ([`Source`], [`Destination`] underneath).
//!
//! ```no_run
//! use std::time::Duration;
//! use vballoon::{MachineConfig, Session};
//!
//! let mut s = Session::new(MachineConfig::default())?;
//! s.set_target_bytes(128 << 20)?;
//! let report = s.run_until_settled(Duration::from_secs(10))?;
//! println!("{report}");
//! # Ok::<_, vballoon::Error>(())
//! ```
//!
//! The crate root re-exports what a user calls; the modules are the namespaces behind it.
//! Layers, lowest first: [`memory`], [`virtq`], [`transport`], [`pages`], [`guest`] and
//! [`device`] (which meet only through [`abi`], the balloon's wire vocabulary, and the layers
//! below), [`migration`], [`machine`], [`bench`](mod@bench); [`vhost_user`] serves the device to another
//! process; [`util`] holds the general helpers (hash, rng, median).
//!
//! Cargo features: `python` (default) builds the PyO3 bindings, the only code that knows about
//! Python; `test-utils` adds the scaffolding tests, fuzz targets and benches share (`rig`,
//! the hostile-guest harnesses), never part of a release build.

pub mod abi;
pub mod bench;
pub mod device;
mod error;
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

pub use abi::{AbiMode, BalloonFeatures};
pub use device::{BalloonDevice, BalloonError, DeviceConfig, DiscardPolicy, HintOffer};
pub use error::{Error, Result};
pub use guest::{BalloonDriver, DriverError, DriverOptions, Guest, GuestError, Workload};
pub use machine::{
    listen, migrate_local, send, GuestRunner, InflateReport, MachineConfig, MigrateOptions,
    MigrateReport, Outcome, RunMode, Scenario, Session,
};
pub use memory::{Backing, GuestAddress, GuestMemory, MemoryError, PageRange, Pfn, PAGE_SIZE};
pub use migration::{
    DestConfig, Destination, MigrationConfig, MigrationError, MigrationKey, MigrationResult, Source,
};
pub use pages::{decode, encode, Encoding, PageSet, PagesError};
pub use vhost_user::{VhostUserBackend, VhostUserError};
