//! Settings of a migration's source, and its live progress.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::auth::MigrationKey;
use super::dirty::DirtyTracking;
use super::source::CHUNK_PAGES;
use super::transport::TEN_GBIT;

/// Settings of one migration.
#[derive(Clone, Debug)]
pub struct MigrationConfig {
    /// Link bandwidth in bytes per second, enforced on the stream (0 = unlimited).
    pub bandwidth_bytes_per_s: u64,
    /// Largest pause the guest may see: stop-and-copy starts when the dirty bytes left would
    /// take at most this long at the link rate.
    pub downtime_target: Duration,
    /// Rounds after which stop-and-copy is forced even if the guest dirties too fast.
    pub max_rounds: u32,
    /// Which dirty tracking to use.
    pub dirty_tracking: DirtyTracking,
    /// Send all-zero pages as zero runs instead of data.
    pub zero_detection: bool,
    /// Send pages never populated or discarded (not merely swapped out: see
    /// [`GuestMemory::populated`](crate::memory::GuestMemory::populated)) as zero runs without
    /// reading them.
    pub skip_unpopulated: bool,
    /// Timeout of every read and write on the channel (a stalled peer fails after this).
    pub io_timeout: Duration,
    /// Set to true to cancel the migration (checked between chunks).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Live progress for a watcher (a progress bar), updated after every chunk.
    pub progress: Option<Arc<Progress>>,
    /// Pages per chunk of a round: hints are polled, residency checked and cancellation seen
    /// once per chunk ([`CHUNK_PAGES`] by default).
    pub chunk_pages: u64,
    /// The pre-shared key to authenticate the stream with (the destination must hold it too).
    pub key: Option<MigrationKey>,
}

impl Default for MigrationConfig {
    fn default() -> MigrationConfig {
        MigrationConfig {
            bandwidth_bytes_per_s: TEN_GBIT,
            downtime_target: Duration::from_millis(300),
            max_rounds: 30,
            dirty_tracking: DirtyTracking::Auto,
            zero_detection: true,
            skip_unpopulated: true,
            io_timeout: Duration::from_secs(10),
            cancel: None,
            progress: None,
            chunk_pages: CHUNK_PAGES,
            key: None,
        }
    }
}

/// A migration's progress, readable from another thread while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Current round (1-based; 0 before the first).
    pub round: AtomicU64,
    /// Pages of guest RAM the current round has walked past.
    pub pages_done: AtomicU64,
    /// Pages of guest RAM.
    pub pages_total: AtomicU64,
    /// Bytes handed to the link so far.
    pub bytes_sent: AtomicU64,
    /// Set once the stop-and-copy round has started.
    pub stop_and_copy: AtomicBool,
}

impl Progress {
    pub(super) fn update(&self, round: u32, done: u64, total: u64, bytes: u64) {
        self.round.store(u64::from(round), Ordering::Relaxed);
        self.pages_done.store(done, Ordering::Relaxed);
        self.pages_total.store(total, Ordering::Relaxed);
        self.bytes_sent.store(bytes, Ordering::Relaxed);
    }
}
