//! The balloon device, host side (virtio 1.2 §5.5, plus the 2016 seed's encodings).
//!
//! - [`BalloonDevice`]: features and config space over a [`Transport`](crate::transport),
//!   driven by any transport through [`VirtioDevice`](crate::transport::VirtioDevice)
//!   (activate with features and rings, notify, reset, config), every guest-supplied byte
//!   validated.
//! - One protocol handler per queue, routed by [`QueueRole`] (inflate/deflate, stats, misc,
//!   free-page hint, reporting: `pages_handler.rs`, `stats_queue.rs`, `misc.rs`,
//!   `free_page.rs`, `reporting.rs`), each a state machine with no I/O of its own: it reads a
//!   popped chain and returns the used length and what to do (inflate or deflate these runs,
//!   discard these reported runs, pass on these hints). One serve loop (`serve.rs`) pops a
//!   bounded number of chains, applies the effects, adds used entries, interrupts, and puts a
//!   broken ring into needs-reset.
//! - [`DeviceConfig`]: what it offers and how it frees memory ([`DiscardPolicy`]).
//! - Inflate turns each batch of buffers into maximal runs, coalesced across buffers (in a run
//!   buffer of at most [`BATCH_RUNS`], applied whenever it fills), and discards each run once
//!   (`MADV_DONTNEED` for anonymous RAM, `PUNCH_HOLE` for memfd), or page by page as QEMU does
//!   ([`DiscardPolicy::PerPage`]), or up to 1024 runs per `process_madvise` call
//!   ([`DiscardPolicy::Vectored`]).
//! - On RAM with 2 MiB host pages (THP, hugetlbfs) the device also counts ballooned pages per
//!   host page ([`HostPageTracker`]) and discards a host page once all of it is ballooned.
//! - Deflate is bookkeeping: a discarded page faults back in, zeroed, when the guest touches
//!   it. Deflating a page that is not in the balloon is counted
//!   ([`DeviceCounters::pages_stray_deflated`]) and ignored, not an error: it harms only the
//!   guest, and the rest of the message is still applied.
//! - The device keeps the host's view of the balloon ([`BalloonDevice::balloon`]) for the
//!   migration engine, and [`DeviceCounters`].
//! - A driver reset (status 0) drops queues, features and encoding; the device follows the
//!   driver's renegotiation (`reset.rs`). Every write into guest RAM is logged
//!   ([`BalloonDevice::set_write_log`]) for a migration's dirty tracking.
//! - The harnesses the fuzz targets and the hostile-guest tests share are in `crate::rig`
//!   (feature `test-utils`).

#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod balloon;
mod config;
mod counters;
mod error;
mod host_pages;
mod role;

pub use crate::abi::StatsSample;
pub use balloon::{merge_runs, BalloonDevice, QueueRole, QueueRun, BATCH_RUNS, ERROR_LOG_LEN};
pub use balloon::{
    FreePageStatus, HintCounters, HintError, HintEvent, HintOffer, HintSink, WriteLog,
};
pub use config::{
    DeviceConfig, DiscardPolicy, PARALLEL_DISCARD_MIN_PAGES, PARALLEL_DISCARD_MIN_RUN_PAGES,
    PARALLEL_DISCARD_THREADS,
};
pub use counters::{DeviceCounters, SharedCounters};
pub use error::BalloonError;
pub use host_pages::{HostPageTracker, HugePartial};
