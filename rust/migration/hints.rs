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

use super::error::MigrationError;
use crate::memory::PageRange;
use crate::pages::PageSet;

/// A supplier of free page hints for one migration (the balloon's free page queue, later).
pub trait HintSource: Send {
    /// Asks the guest for the pages that are free now (a new command id) for `round`.
    fn start(&mut self, round: u32) -> Result<(), MigrationError>;

    /// Reports the hints that arrived since the last poll, one `out(run)` call per run of free
    /// pages.
    ///
    /// Must not block: the engine polls between chunks of the round it is sending.
    /// Returns `true` once the guest has finished reporting for this request.
    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError>;

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
    free: PageSet,
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
    pub fn new(free: PageSet) -> StaticHints {
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

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        if !self.active || !self.pending {
            return Ok(true);
        }
        let finished = report_runs(&self.free, &mut self.cursor, self.per_poll, out);
        self.pending = !finished;
        Ok(finished)
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

/// Hands `out` at most `limit` runs of `free` from page `*cursor` on, and moves the cursor past
/// them; true once no run is left (hints that trickle in over several polls of one set).
pub(crate) fn report_runs(
    free: &PageSet,
    cursor: &mut u64,
    limit: usize,
    out: &mut dyn FnMut(PageRange),
) -> bool {
    let mut runs = free.runs_in(*cursor, free.npages());
    for _ in 0..limit {
        let Some(run) = runs.next() else {
            return true;
        };
        out(run);
        *cursor = run.end();
    }
    false
}

/// `VIRTIO_BALLOON_CMD_ID_STOP`: the command id while no request is active (spec, balloon).
pub const CMD_ID_STOP: u32 = 0;
/// `VIRTIO_BALLOON_CMD_ID_DONE`: the command id once the migration no longer needs hints.
pub const CMD_ID_DONE: u32 = 1;
/// First command id handed out; ids wrap back to it (ids 0 and 1 are STOP and DONE).
pub const CMD_ID_MIN: u32 = 0x8000_0000;

#[derive(Debug)]
struct FeedState {
    cmd_id: u32,
    last_id: u32,
    /// Reported runs with the command id they came under.
    queue: Vec<(u32, PageRange)>,
    finished: bool,
    stale_pages: u64,
}

/// The device side of [`QueuedHints`]: where the balloon's free page queue pushes what the
/// guest reports, tagged with the command id the guest sent it under. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HintFeed {
    state: std::sync::Arc<std::sync::Mutex<FeedState>>,
}

impl HintFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        // A poisoned lock only means another thread panicked mid-push; the data is plain.
        crate::util::lock(&self.state)
    }

    /// The id the device currently asks for: a request id (≥ [`CMD_ID_MIN`]),
    /// [`CMD_ID_STOP`] or [`CMD_ID_DONE`] (what the config field would read).
    pub fn cmd_id(&self) -> u32 {
        self.lock().cmd_id
    }

    /// Queues the free pages `run` that the guest reported under `cmd_id`. Hints under any id
    /// but the current one are dropped when polled.
    pub fn report(&self, cmd_id: u32, run: PageRange) {
        self.lock().queue.push((cmd_id, run));
    }

    /// The guest has no more free pages to report for `cmd_id` (it sent STOP).
    pub fn finish(&self, cmd_id: u32) {
        let mut s = self.lock();
        if s.cmd_id == cmd_id {
            s.finished = true;
        }
    }

    /// Pages dropped so far because they came under a stale command id.
    pub fn stale_pages(&self) -> u64 {
        self.lock().stale_pages
    }
}

/// A [`HintSource`] fed asynchronously through a [`HintFeed`], with command ids as in
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT`: each `start` issues a new id, `stop` sets STOP, `done`
/// sets DONE, and `poll` hands out only hints carrying the current id.
#[derive(Debug)]
pub struct QueuedHints {
    feed: HintFeed,
}

impl QueuedHints {
    /// A source and the feed the device pushes into.
    pub fn new() -> (QueuedHints, HintFeed) {
        let feed = HintFeed {
            state: std::sync::Arc::new(std::sync::Mutex::new(FeedState {
                cmd_id: CMD_ID_STOP,
                last_id: CMD_ID_MIN - 1,
                queue: Vec::new(),
                finished: false,
                stale_pages: 0,
            })),
        };
        (QueuedHints { feed: feed.clone() }, feed)
    }
}

impl HintSource for QueuedHints {
    fn start(&mut self, _round: u32) -> Result<(), MigrationError> {
        let mut s = self.feed.lock();
        let id = match s.last_id.wrapping_add(1) {
            id if id < CMD_ID_MIN => CMD_ID_MIN,
            id => id,
        };
        s.last_id = id;
        s.cmd_id = id;
        s.finished = false;
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        let mut s = self.feed.lock();
        let current = s.cmd_id;
        let queue = std::mem::take(&mut s.queue);
        for (id, run) in queue {
            if id == current && current >= CMD_ID_MIN {
                out(run);
            } else {
                s.stale_pages = s.stale_pages.saturating_add(run.len);
            }
        }
        Ok(s.finished)
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        self.feed.lock().cmd_id = CMD_ID_STOP;
        Ok(())
    }

    fn done(&mut self) {
        let mut s = self.feed.lock();
        s.cmd_id = CMD_ID_DONE;
        s.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_queued_hints_follow_the_command_ids() {
        let (mut q, feed) = QueuedHints::new();
        assert_eq!(feed.cmd_id(), CMD_ID_STOP);
        q.start(1).unwrap();
        let id1 = feed.cmd_id();
        assert_eq!(id1, CMD_ID_MIN);
        feed.report(id1, PageRange::new(10, 5));
        feed.report(CMD_ID_STOP, PageRange::new(20, 5)); // never valid
        let mut got = Vec::new();
        assert!(!q.poll(&mut |r| got.push(r)).unwrap());
        assert_eq!(got, [PageRange::new(10, 5)]);
        feed.finish(id1);
        assert!(q.poll(&mut |_| {}).unwrap());
        q.stop().unwrap();
        assert_eq!(feed.cmd_id(), CMD_ID_STOP);
        feed.report(id1, PageRange::new(30, 1)); // late
        q.start(2).unwrap();
        assert_eq!(feed.cmd_id(), id1 + 1);
        got.clear();
        assert!(!q.poll(&mut |r| got.push(r)).unwrap());
        assert!(got.is_empty());
        assert_eq!(feed.stale_pages(), 6);
        q.done();
        assert_eq!(feed.cmd_id(), CMD_ID_DONE);
        // Ids wrap back to the minimum, never to STOP or DONE.
        feed.lock().last_id = u32::MAX;
        q.start(3).unwrap();
        assert_eq!(feed.cmd_id(), CMD_ID_MIN);
    }
}
