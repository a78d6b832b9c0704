//! Pre-copy live migration of guest RAM, with free page hints.
//!
//! The source ([`Source`]) sends guest RAM in rounds over a [`Channel`] (in-process socketpair
//! or TCP, rate-limited to the link's bandwidth); the destination ([`Destination`]) writes it
//! into its own [`GuestMemory`](crate::memory::GuestMemory). Writes during the migration are
//! caught by dirty tracking ([`DirtyLog`], or the kernel's own with [`DirtyTracking::Kernel`])
//! and resent; free pages the guest hints through a [`HintSource`] are skipped in the round
//! they were hinted for, with QEMU's ordering rules (reference/protocol.md §4). Pages the host
//! never populated are sent as zero runs without being read. [`verify`] checks the result.
//!
//! ```no_run
//! use std::time::Duration;
//! use vballoon::memory::{Backing, GuestMemory};
//! use vballoon::migration::*;
//!
//! let src = GuestMemory::new(1 << 30, Backing::Anonymous)?;
//! let log = DirtyLog::for_memory(&src); // the guest model marks it after each write
//! let dst = GuestMemory::new(1 << 30, Backing::Anonymous)?;
//! let (a, b) = in_process_pair(Duration::from_secs(10))?;
//! std::thread::scope(|s| {
//!     let d = s.spawn(|| Destination::new(&dst, DestConfig::default()).receive(b));
//!     let r = Source::new(&src, &log, &NoGuest, MigrationConfig::default()).run(a)?;
//!     d.join().expect("destination thread")?;
//!     println!("{:?} downtime {:?}", r.total_time, r.downtime);
//!     Ok::<_, MigrationError>(())
//! })?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub mod bitmap;
pub mod crc;
mod dest;
pub mod dirty;
mod error;
mod hints;
mod source;
pub mod stream;
pub mod transport;
mod uffd;

pub use bitmap::{AtomicBitmap, PageBitmap};
pub use dest::{verify, DestConfig, DestReport, Destination, VerifyReport};
pub use dirty::{DirtyBackend, DirtyLog, DirtyTracker, DirtyTracking, KernelTracker};
pub use error::{MigrationError, RejectReason, StreamError};
pub use hints::{HintGuard, HintSource, StaticHints};
pub use source::{GuestControl, MigrationConfig, MigrationResult, NoGuest, RoundStats, Source};
pub use transport::{
    in_process_pair, tcp_accept, tcp_connect, tcp_listen, Channel, RateLimited, TokenBucket,
    TEN_GBIT,
};
