//! A guest that runs while it is migrated: [`GuestRunner`] owns the modelled guest and its
//! workload, runs a workload thread at a configured dirty rate, pauses it for stop-and-copy
//! ([`GuestControl`]), and routes every guest write into the migration's [`DirtyLog`].
//!
//! Everything that acts as the guest (the workload thread, a balloon driver) takes the guest
//! lock ([`GuestRunner::lock`]) for each step and checks [`GuestRunner::is_paused`] under it.
//! [`pause`](GuestControl::pause) sets the flag and then takes the lock once, so it returns only
//! when no guest step is in flight, and no step starts afterwards.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::guest::{Guest, Workload};
use crate::memory::{GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use crate::migration::{DirtyLog, GuestControl};
use crate::pages::PageSet;

/// Most pages one workload step dirties while holding the guest lock (bounds pause latency).
const MAX_STEP_PAGES: u64 = 256;
/// Share of a step's pages the workload gets by allocating fresh pages (and freeing as many
/// old blocks), rather than by rewriting pages it holds: memory churn that reuses free, maybe
/// hinted, pages.
const CHURN_SHARE: f64 = 0.25;
/// The longest the rate controller lets dirtying fall behind and then catch up.
const MAX_CREDIT: Duration = Duration::from_millis(10);

/// The guest and its workload, behind the runner's lock.
#[derive(Debug)]
pub struct GuestState {
    /// The modelled guest kernel (RAM, allocator, dirty hook).
    pub guest: Guest,
    /// What the guest's applications hold and write.
    pub workload: Workload,
}

/// What the workload thread did since the runner started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadCounters {
    /// Pages written (each write dirties one page: rewrites plus freshly allocated pages).
    pub pages_dirtied: u64,
    /// Blocks allocated and filled.
    pub allocations: u64,
    /// Blocks freed.
    pub frees: u64,
    /// Steps taken under the guest lock.
    pub steps: u64,
}

#[derive(Debug, Default)]
struct Counters {
    pages_dirtied: AtomicU64,
    allocations: AtomicU64,
    frees: AtomicU64,
    steps: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<GuestState>,
    paused: AtomicBool,
    stop: AtomicBool,
    dirty_rate: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, GuestState> {
        // A poisoned lock means a guest step panicked; the allocator's own checks still hold.
        crate::util::lock(&self.state)
    }
}

/// A guest with a workload thread, ready to be migrated.
pub struct GuestRunner {
    shared: Arc<Shared>,
    memory: Arc<GuestMemory>,
    log: Arc<DirtyLog>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for GuestRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRunner")
            .field("guest_bytes", &self.memory.size())
            .field("paused", &self.is_paused())
            .field("dirty_rate", &self.dirty_rate())
            .finish()
    }
}

impl GuestRunner {
    /// Takes over `guest` and `workload`; the guest's dirty hook now marks this runner's
    /// [`DirtyLog`]. The workload thread starts idle (dirty rate 0).
    pub fn new(mut guest: Guest, workload: Workload) -> GuestRunner {
        let memory = guest.memory().clone();
        let log = Arc::new(DirtyLog::for_memory(&memory));
        let hook_log = log.clone();
        guest.set_dirty_hook(Some(Arc::new(move |pfn: Pfn, n| hook_log.mark(pfn, n))));
        let shared = Arc::new(Shared {
            state: Mutex::new(GuestState { guest, workload }),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            dirty_rate: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vballoon-guest".into())
            .spawn(move || workload_thread(&worker))
            .ok();
        GuestRunner {
            shared,
            memory,
            log,
            thread: Mutex::new(thread),
        }
    }

    /// The guest's RAM.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// The dirty log every guest write marks (a migration's [`DirtyTracker`] starts it).
    ///
    /// [`DirtyTracker`]: crate::migration::DirtyTracker
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.log
    }

    /// Locks the guest for one step of guest activity (or to inspect it). Guest-side actors
    /// check [`is_paused`](Self::is_paused) under this lock before writing.
    pub fn lock(&self) -> MutexGuard<'_, GuestState> {
        self.shared.lock()
    }

    /// Whether the guest is paused (stop-and-copy, or stopped after a successful migration).
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Sets the workload's dirty rate in bytes per second (whole pages; 0 = idle).
    pub fn set_dirty_rate(&self, bytes_per_s: u64) {
        self.shared.dirty_rate.store(bytes_per_s, Ordering::Release);
        self.wake();
    }

    /// The workload's dirty rate in bytes per second.
    pub fn dirty_rate(&self) -> u64 {
        self.shared.dirty_rate.load(Ordering::Acquire)
    }

    /// What the workload thread did so far.
    pub fn counters(&self) -> WorkloadCounters {
        let c = &self.shared.counters;
        WorkloadCounters {
            pages_dirtied: c.pages_dirtied.load(Ordering::Relaxed),
            allocations: c.allocations.load(Ordering::Relaxed),
            frees: c.frees.load(Ordering::Relaxed),
            steps: c.steps.load(Ordering::Relaxed),
        }
    }

    fn wake(&self) {
        if let Some(t) = crate::util::lock(&self.thread).as_ref() {
            t.thread().unpark();
        }
    }

    /// The pages on the guest allocator's free lists now.
    pub fn free_pages(&self) -> PageSet {
        let st = self.lock();
        free_pages_of(&st.guest)
    }

    /// The pages the guest uses now: every page not on a free list. Pages a balloon holds
    /// unused (ballooned, hinted and held, isolated) are still in here; a
    /// [`HintProvider`](super::HintProvider) removes them for verification.
    pub fn used_pages(&self) -> PageSet {
        let st = self.lock();
        let mut used = free_pages_of(&st.guest);
        let all = PageSet::full(used.npages());
        let free = std::mem::replace(&mut used, all);
        used.difference_with(&free);
        used
    }

    /// The pages the host has populated now (resident or swapped out), one bit per page.
    ///
    /// Take it before a migration that may read never-touched pages (which maps the zero page
    /// and makes them resident), to undo that afterwards with
    /// [`restore_untouched`](Self::restore_untouched).
    pub fn resident_pages(&self) -> crate::error::Result<PageSet> {
        resident_set(&self.memory)
    }

    /// Discards the free pages that are resident now but were not in `before`: pages that a
    /// migration only read (mapping the zero page) go back to never-touched, so the next
    /// migration of this guest sees it as it was built. Free pages the workload touched since
    /// are discarded too (their contents are free memory's, not the guest's). Returns the pages
    /// discarded.
    ///
    /// Call it while the guest is paused or idle.
    pub fn restore_untouched(&self, before: &PageSet) -> crate::error::Result<u64> {
        let mut st = self.lock();
        let mut target = free_pages_of(&st.guest);
        target.intersect_with(&resident_set(&self.memory)?);
        target.difference_with(before);
        let mut n = 0;
        for PageRange { start: first, len } in target.runs() {
            self.memory
                .discard(GuestAddress(first * PAGE_SIZE), len * PAGE_SIZE)?;
            st.guest.note_discarded(Pfn(first), len);
            n += len;
        }
        Ok(n)
    }

    /// Stops the workload thread (also done on drop).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let t = crate::util::lock(&self.thread).take();
        if let Some(t) = t {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A handle on a runner's guest for guest-side actors on their own threads (a balloon driver's
/// worker): the runner's lock and pause flag, without keeping the guest alive.
#[derive(Clone, Debug)]
pub struct GuestHandle {
    shared: Weak<Shared>,
}

impl GuestHandle {
    /// Runs `f` on the guest under the runner's lock, telling it whether the guest is paused
    /// (then it must not act as the guest); `None` once the runner is gone.
    pub fn with<R>(&self, f: impl FnOnce(&mut GuestState, bool) -> R) -> Option<R> {
        let shared = self.shared.upgrade()?;
        let mut st = shared.lock();
        let paused = shared.paused.load(Ordering::SeqCst);
        Some(f(&mut st, paused))
    }

    /// Whether the guest is paused (`None` once the runner is gone).
    pub fn is_paused(&self) -> Option<bool> {
        let shared = self.shared.upgrade()?;
        Some(shared.paused.load(Ordering::SeqCst))
    }
}

impl GuestRunner {
    /// A handle on this guest for an actor on another thread; see [`GuestHandle`].
    pub fn handle(&self) -> GuestHandle {
        GuestHandle {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

impl GuestControl for GuestRunner {
    fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        // A step in flight holds the lock: taking it waits for the step to end, and every
        // later step sees the flag under the lock.
        drop(self.shared.lock());
    }

    fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.wake();
    }
}

impl Drop for GuestRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The free pages of `guest`'s allocator, as a set over all of its RAM.
pub(crate) fn free_pages_of(guest: &Guest) -> PageSet {
    let mut free = PageSet::new(guest.memory().pages());
    guest.allocator().for_each_free_block(|pfn, order| {
        free.insert_range(pfn.0, 1 << order);
    });
    free
}

/// The populated pages of `mem` (resident or swapped out) as a page set, 1 GiB at a time.
pub(crate) fn resident_set(mem: &GuestMemory) -> crate::error::Result<PageSet> {
    const STEP: u64 = 1 << 30;
    let mut set = PageSet::new(mem.pages());
    let mut at = 0;
    while at < mem.size() {
        let len = STEP.min(mem.size() - at);
        let v = mem.populated(GuestAddress(at), len)?;
        let base = at / PAGE_SIZE;
        let mut i = 0;
        while i < v.len() {
            if v[i] & 1 == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < v.len() && v[i] & 1 != 0 {
                i += 1;
            }
            set.insert_range(base + start as u64, (i - start) as u64);
        }
        at += len;
    }
    Ok(set)
}

/// The workload thread: dirties pages at the configured rate, a bounded step at a time.
fn workload_thread(shared: &Shared) {
    let mut last = Instant::now();
    let mut credit = 0.0f64; // bytes the thread may dirty now
    while !shared.stop.load(Ordering::SeqCst) {
        let rate = shared.dirty_rate.load(Ordering::Acquire);
        if rate == 0 || shared.paused.load(Ordering::SeqCst) {
            std::thread::park_timeout(Duration::from_millis(100));
            last = Instant::now();
            credit = 0.0;
            continue;
        }
        let now = Instant::now();
        credit += rate as f64 * now.duration_since(last).as_secs_f64();
        credit = credit.min(rate as f64 * MAX_CREDIT.as_secs_f64());
        last = now;
        let pages = ((credit / PAGE_SIZE as f64) as u64).min(MAX_STEP_PAGES);
        if pages == 0 {
            // Sleep until one page is due (at least 50 µs, so tiny rates do not spin).
            let wait = (PAGE_SIZE as f64 - credit) / rate as f64;
            std::thread::park_timeout(Duration::from_secs_f64(wait.clamp(50e-6, 0.1)));
            continue;
        }
        let done = {
            let mut st = shared.lock();
            if shared.paused.load(Ordering::SeqCst) {
                continue;
            }
            step(&mut st, pages, &shared.counters)
        };
        credit -= (done.max(1) * PAGE_SIZE) as f64;
    }
}

/// One bounded burst of guest activity: churn (allocate and fill, free as many blocks) and
/// rewrites of held pages; returns the pages dirtied. Allocation failures just mean less churn.
fn step(st: &mut GuestState, pages: u64, c: &Counters) -> u64 {
    let GuestState { guest, workload } = st;
    let churn = (pages as f64 * CHURN_SHARE) as u64;
    let mut dirtied = 0;
    if churn > 0 {
        let got = workload.allocate(guest, churn * PAGE_SIZE, 0).unwrap_or(0);
        dirtied += got;
        let held = workload.allocations().len();
        if got > 0 && held > 0 {
            let share = (got as f64 / held as f64).min(1.0);
            if let Ok(freed) = workload.free_share(guest, share) {
                c.frees.fetch_add(freed, Ordering::Relaxed);
            }
        }
        c.allocations.fetch_add(got, Ordering::Relaxed);
    }
    let rest = pages.saturating_sub(dirtied);
    dirtied += workload.dirty_pages(guest, rest).unwrap_or(0);
    c.pages_dirtied.fetch_add(dirtied, Ordering::Relaxed);
    c.steps.fetch_add(1, Ordering::Relaxed);
    dirtied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Backing;

    fn runner(pages: u64) -> GuestRunner {
        let mem = GuestMemory::new(pages * PAGE_SIZE, Backing::Anonymous).unwrap();
        let mut guest = Guest::new(Arc::new(mem)).unwrap();
        let mut w = Workload::new(7);
        w.allocate(&mut guest, 64 * PAGE_SIZE, 0).unwrap();
        GuestRunner::new(guest, w)
    }

    #[test]
    fn test_used_and_free_pages_partition_the_guest() {
        let r = runner(1024);
        let (used, free) = (r.used_pages(), r.free_pages());
        assert_eq!(used.count(), 64);
        assert_eq!(used.count() + free.count(), 1024);
        let mut both = used.clone();
        both.intersect_with(&free);
        assert!(both.is_empty());
    }

    #[test]
    fn test_writes_mark_the_log_and_pause_stops_them() {
        let r = runner(1024);
        r.dirty_log().start();
        r.set_dirty_rate(400 * PAGE_SIZE * 100); // 40k pages/s
        let t = Instant::now();
        while r.counters().pages_dirtied < 100 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        r.pause();
        let c = r.counters();
        assert!(
            c.pages_dirtied >= 100 && c.allocations > 0 && c.frees > 0,
            "{c:?}"
        );
        let marked = r.dirty_log().sync();
        assert!(!marked.is_empty());
        // Nothing moves while paused.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.counters(), c);
        assert!(r.dirty_log().sync().is_empty());
        r.resume();
        r.shutdown();
        r.lock().guest.allocator().check_invariants().unwrap();
    }

    #[test]
    fn test_restore_untouched_undoes_zero_page_reads() {
        let r = runner(1024);
        let before = r.resident_pages().unwrap();
        assert_eq!(before.count(), 64);
        for p in 500..600 {
            r.memory().read_u8(GuestAddress(p * PAGE_SIZE)).unwrap();
        }
        assert_eq!(r.resident_pages().unwrap().count(), 164);
        assert_eq!(r.restore_untouched(&before).unwrap(), 100);
        assert_eq!(r.resident_pages().unwrap(), before);
    }
}
