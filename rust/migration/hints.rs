//! Free page hints: how the guest tells the migration which pages it need not send.
//!
//! The engine drives a [`HintSource`] with the ordering QEMU uses for
//! `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (reference/protocol.md §4):
//! 1. dirty logging is on before the first [`start`](HintSource::start) (new command id);
//! 2. hints are applied only to the bitmap of the round being sent, before each chunk is sent;
//! 3. [`stop`](HintSource::stop) comes before every dirty-log sync, and the engine never calls
//!    [`poll`](HintSource::poll) between `stop` and the next `start`; hints under a stale
//!    command id are the implementation's to drop;
//! 4. [`done`](HintSource::done) is called exactly once at the end, on success, error and
//!    cancellation alike (through [`HintGuard`]).
//!
//! A page hinted free and then written by the guest before the next sync is caught by the dirty
//! log and sent in the next round; the guest keeps hinted pages until `done` in any case.

use super::bitmap::PageBitmap;
use super::error::MigrationError;

/// A supplier of free page hints for one migration (the balloon's free page queue, later).
pub trait HintSource: Send {
    /// Asks the guest for the pages that are free now (a new command id) for `round`.
    fn start(&mut self, round: u32) -> Result<(), MigrationError>;

    /// Reports the hints that arrived since the last poll as `out(first_pfn, npages)` calls.
    ///
    /// Returns `true` once the guest has finished reporting for this request.
    fn poll(&mut self, out: &mut dyn FnMut(u64, u64)) -> Result<bool, MigrationError>;

    /// Stops the current request (the guest may still send; those hints are to be dropped).
    fn stop(&mut self) -> Result<(), MigrationError>;

    /// The migration is over: the guest may reuse the pages it hinted.
    fn done(&mut self);
}

/// Calls [`HintSource::done`] when dropped, so every exit path of the engine ends the hints.
pub struct HintGuard<'a> {
    inner: Option<&'a mut dyn HintSource>,
}

impl std::fmt::Debug for HintGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HintGuard")
            .field("active", &self.inner.is_some())
            .finish()
    }
}

impl<'a> HintGuard<'a> {
    /// Guards `inner` (or nothing).
    pub fn new(inner: Option<&'a mut dyn HintSource>) -> HintGuard<'a> {
        HintGuard { inner }
    }

    /// The guarded source, if any.
    pub fn source(&mut self) -> Option<&mut (dyn HintSource + 'a)> {
        self.inner.as_deref_mut()
    }
}

impl Drop for HintGuard<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.inner.take() {
            h.done();
        }
    }
}

/// Hints given up front as a bitmap of free pages (for example from the guest's free lists).
///
/// Valid for the first request only: later rounds get no hints, because pages free when the
/// bitmap was computed may have been reused since. The caller must compute the bitmap from a
/// state the guest cannot leave without its writes being logged (dirty logging on, or the
/// guest not allocating from those pages before the migration starts).
#[derive(Debug)]
pub struct StaticHints {
    free: PageBitmap,
    rounds: u32,
    active: bool,
    pending: bool,
    requests: u32,
    done_calls: u32,
    /// Runs reported per `poll` call (so hints trickle in while the round is sent).
    per_poll: usize,
    cursor: u64,
}

impl StaticHints {
    /// Hints `free` in the first round.
    pub fn new(free: PageBitmap) -> StaticHints {
        StaticHints {
            free,
            rounds: 1,
            active: false,
            pending: false,
            requests: 0,
            done_calls: 0,
            per_poll: usize::MAX,
            cursor: 0,
        }
    }

    /// Reports at most `runs` runs per poll instead of all at once.
    pub fn trickle(mut self, runs: usize) -> StaticHints {
        self.per_poll = runs.max(1);
        self
    }

    /// Number of `start` calls seen.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Number of `done` calls seen (1 after any migration).
    pub fn done_calls(&self) -> u32 {
        self.done_calls
    }
}

impl HintSource for StaticHints {
    fn start(&mut self, round: u32) -> Result<(), MigrationError> {
        self.requests += 1;
        self.active = true;
        self.pending = round <= self.rounds;
        self.cursor = 0;
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(u64, u64)) -> Result<bool, MigrationError> {
        if !self.active || !self.pending {
            return Ok(true);
        }
        let mut n = 0;
        while n < self.per_poll {
            let Some(first) = self.free.next_one(self.cursor) else {
                self.pending = false;
                return Ok(true);
            };
            let end = self.free.next_zero(first);
            out(first, end - first);
            self.cursor = end;
            n += 1;
        }
        Ok(false)
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        self.active = false;
        Ok(())
    }

    fn done(&mut self) {
        self.active = false;
        self.done_calls += 1;
    }
}
