//! Pre-copy live migration of guest RAM, with free page hints.
//!
//! The source ([`Source`]) sends guest RAM in rounds over a [`Channel`] (in-process socketpair
//! or TCP, rate-limited to the link's bandwidth); the destination ([`Destination`]) writes it
//! into its own [`GuestMemory`](crate::memory::GuestMemory). Writes during the migration are
//! caught by dirty tracking ([`DirtyLog`], or the kernel's own with [`DirtyTracking::Kernel`])
//! and resent; free pages the guest hints through a [`HintSource`] are skipped in the round
//! they were hinted for, with QEMU's ordering rules (reference/protocol.md §4). Pages the host
//! never populated are sent as zero runs without being read. [`verify`] checks the result in
//! one process; across processes the stream's verify trailer ([`Source::with_remote_verify`])
//! has the destination compare checksums of every used page. Page sets (the round's bitmap,
//! the dirty log, hints) are [`PageSet`](crate::pages::PageSet)s and
//! [`AtomicPageBitmap`](crate::pages::AtomicPageBitmap)s.
//!
//! The machine layer ([`crate::machine`]) runs this engine on a modelled guest with a workload
//! (`migrate_local`, `listen`/`send`, `bench_migrate`); use it unless you drive the guest
//! yourself.
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
//!
//! Across two processes (or machines) over TCP, start the destination first:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use vballoon::memory::{Backing, GuestMemory};
//! # use vballoon::migration::*;
//! // destination process
//! let dst = GuestMemory::new(8 << 30, Backing::Anonymous)?;
//! let listener = tcp_listen("0.0.0.0:4444")?;
//! let conn = tcp_accept(&listener, Duration::from_secs(60))?;
//! let report = Destination::new(&dst, DestConfig::default()).receive(conn)?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! ```no_run
//! # use std::time::Duration;
//! # use vballoon::memory::{Backing, GuestMemory};
//! # use vballoon::migration::*;
//! # let src = GuestMemory::new(8 << 30, Backing::Anonymous)?;
//! # let log = DirtyLog::for_memory(&src);
//! // source process
//! let conn = tcp_connect("dest-host:4444", Duration::from_secs(10))?;
//! let result = Source::new(&src, &log, &NoGuest, MigrationConfig::default()).run(conn)?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! Across machines give both sides the same key ([`DestConfig::key`],
//! [`MigrationConfig::key`]): every byte is then authenticated both ways ([`AuthChannel`]). The
//! destination treats the stream as untrusted either way: typed errors only, an overall
//! [`DestConfig::deadline`], the announced guest size must equal its own.
//!
//! The bandwidth limit is applied by the source to the bytes it writes, on any channel.
//! [`DirtyTracking::Auto`] (the default) uses the kernel tracker where the kernel has it
//! (Linux 6.7+): it also catches writes that bypass the log, at a setup cost of roughly
//! 50-100 ms per 8 GiB (write-protect markers for every page), and falls back to the
//! explicit log with the reason recorded in [`MigrationResult::dirty_backend`].

#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod auth;
mod config;
mod crc;
mod deadline;
mod dest;
mod dirty;
mod error;
mod hints;
#[cfg(any(test, feature = "test-utils"))]
pub mod hostile;
mod source;
pub mod stream;
mod transport;
mod uffd;
mod verify;
mod written;

pub use auth::{check_listen_address, AuthChannel, MigrationKey, RecordKeys, Role, MAX_RECORD};
pub use crc::{crc32c, crc32c_append};
pub use deadline::{Deadline, DeadlinePassed};
pub use dest::{DestConfig, DestReport, Destination, RemoteVerify};
pub use dirty::{DirtyBackend, DirtyLog, DirtyTracker, DirtyTracking, KernelTracker};
pub use error::{AuthError, MigrationError, RejectReason, StreamError};
pub(crate) use hints::report_runs;
pub use hints::{
    HintFeed, HintGuard, HintSource, QueuedHints, StaticHints, CMD_ID_DONE, CMD_ID_MIN, CMD_ID_STOP,
};
pub use source::{
    GuestControl, MigrationConfig, MigrationResult, NoGuest, Progress, RoundStats, Source,
    CHUNK_PAGES,
};
pub use transport::{
    in_process_pair, tcp_accept, tcp_connect, tcp_listen, Channel, ChannelLayer, RateLimited,
    TokenBucket, TEN_GBIT,
};
pub use verify::{verify, VerifyReport};

/// Bytes of a guest page as a buffer length ([`PAGE_SIZE`](crate::memory::PAGE_SIZE) is a u64).
const PAGE: usize = 1 << crate::memory::PAGE_SHIFT;
/// Bytes of a guest page as the stream's u32 header field.
const PAGE_U32: u32 = 1 << crate::memory::PAGE_SHIFT;
