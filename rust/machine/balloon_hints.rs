//! [`BalloonHints`]: the [`HintProvider`] whose hints come from a virtio balloon on the
//! migrating guest, over real virtqueues, answered by the guest's own driver from its own free
//! lists. The host never looks at the guest's allocator: every hinted page crossed a queue.
//!
//! On first use for a [`GuestRunner`] the provider plugs a balloon into that guest: a device
//! offering the hint queues ([`HintOffer`]), and the guest's [`BalloonDriver`], whose rings and
//! buffers come from the guest's allocator. Then two threads run beside the guest's workload:
//!
//! | thread | plays | wakes on | does, under the guest lock and only while the guest runs |
//! |---|---|---|---|
//! | `vb-hint-device` | the VMM's I/O thread | queue kicks | serves the queues ([`BalloonDevice::process_queue`]); a paused VM's devices are stopped |
//! | `vb-hint-guest` | the guest's balloon worker | config changes, interrupts | [`BalloonDriver::service_hints`], and reporting while asked to |
//!
//! ([`HintRun::Inline`] runs both steps inside the source's calls instead, for deterministic
//! tests.) The sources it hands the engine, by [`HintMode`]:
//!
//! | mode | `start(round)` | `poll` | `stop` | `done` |
//! |---|---|---|---|---|
//! | Bitmap | a GET_UNUSED_PAGES request with a new id (round 1 waits for the answer, as the seed's QEMU RFC did, at most [`BalloonHintsConfig::bitmap_wait`]) | pages the device took from replies under the current id | later replies are dropped | - |
//! | Upstream | a new command id in config space | blocks the device took under the current id | STOP in config | DONE in config: the guest frees its held blocks |
//! | Reporting | - | nothing (the engine skips discarded pages as unpopulated) | - | - |
//!
//! For Reporting the guest reports its free blocks of order ≥ 9 before the migration (one full
//! pass, outside the timed migration, as a guest with reporting on has long done) and keeps
//! reporting while the migration runs. Reporting is on only around Reporting-mode migrations,
//! so that interleaved benchmark variants see the same guest ([`BalloonHints::unreport`]
//! puts stale data back afterwards).
//!
//! Keep one provider per guest and pass it to every migration of that guest (the balloon stays
//! plugged in between them, as a real one would); [`BalloonHints::detach`], or dropping the
//! provider, gives the guest back the rings, buffers and blocks the balloon took.
//!
//! Ids are unique over the provider's life (the device must not reuse a command id before the
//! driver's STOP, and the driver only starts on an id it has not started on); each migration's
//! [`QueuedHints`] filters what arrives under any but the current one.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::migrate_guest::{GuestHandle, GuestRunner};
use super::migrate_hints::{HintMode, HintProvider};
use crate::abi::{AbiMode, VIRTIO_BALLOON_CMD_ID_MIN};
use crate::device::{BalloonDevice, DeviceConfig, HintCounters, HintEvent, HintOffer};
use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::guest::{BalloonDriver, DriverOptions, HintDriverCounters, HintOptions, HintStep};
use crate::memory::{GuestAddress, GuestMemory, PageRange, PAGE_SIZE};
use crate::migration::{HintFeed, HintSource, MigrationError, QueuedHints};
use crate::pages::PageSet;
use crate::util::lock;
use crate::virtq::{EventFd, Notifier, NotifyMode};

#[path = "balloon_hints_source.rs"]
mod source;
#[path = "balloon_hints_threads.rs"]
mod threads;
use threads::spawn_threads;

#[cfg(test)]
#[path = "balloon_hints_tests.rs"]
mod tests;

/// Who runs the balloon's device and the guest's driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HintRun {
    /// Their own threads, woken by eventfds (as a VMM and a guest kernel).
    #[default]
    Threaded,
    /// Inside the hint source's calls, in turn (deterministic; for tests).
    Inline,
    /// Only when the caller says so ([`BalloonHints::step_guest`],
    /// [`BalloonHints::step_device`]): tests choose every interleaving.
    Manual,
}

/// How [`BalloonHints`] sets the balloon up and drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonHintsConfig {
    /// The hint queues the device offers (all three by default; the driver takes them all).
    pub offer: HintOffer,
    /// Feature numbering (v3 mode has the misc queue at bit 4 and no upstream hinting).
    pub abi: AbiMode,
    /// Size of every balloon queue (QEMU's free page queue has 1024 entries).
    pub queue_size: u16,
    /// Threads or inline.
    pub run: HintRun,
    /// Bitmap mode, round 1: how long `start` waits for the guest's whole answer.
    pub bitmap_wait: Duration,
    /// Before a migration: how long to wait for the balloon to settle from the last one
    /// (hinted blocks freed after DONE, a late reply finished).
    pub settle_timeout: Duration,
    /// Reporting mode: run a full reporting pass before the migration (at most this long; zero
    /// skips it).
    pub report_before: Duration,
    /// How often the guest's balloon worker looks again without being woken (and reports,
    /// while reporting is on).
    pub worker_interval: Duration,
    /// The driver's hint options (reply timeout, blocks per step).
    pub driver: HintOptions,
}

impl Default for BalloonHintsConfig {
    fn default() -> Self {
        BalloonHintsConfig {
            offer: HintOffer::ALL,
            abi: AbiMode::Vballoon,
            queue_size: 256,
            run: HintRun::Threaded,
            bitmap_wait: Duration::from_secs(1),
            settle_timeout: Duration::from_secs(2),
            report_before: Duration::from_secs(30),
            worker_interval: Duration::from_millis(20),
            driver: HintOptions::default(),
        }
    }
}

/// What the provider's balloon has done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonHintsStats {
    /// Whether a balloon is plugged into a guest.
    pub attached: bool,
    /// Negotiated: the misc queue, upstream hinting, reporting.
    pub misc: bool,
    /// Upstream FREE_PAGE_HINT negotiated.
    pub free_page_hint: bool,
    /// REPORTING negotiated.
    pub reporting: bool,
    /// The device's hint counters.
    pub device: HintCounters,
    /// The driver's hint counters.
    pub driver: HintDriverCounters,
    /// The last pre-migration reporting pass: wall time and pages reported.
    pub last_report_pass: Option<(Duration, u64)>,
    /// Errors the balloon threads met (device errors are in the device's log).
    pub errors: Vec<String>,
}

/// The first request and command id (QEMU's `VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN`).
const FIRST_ID: u32 = 0x8000_0000;
const _: () = assert!(FIRST_ID >= VIRTIO_BALLOON_CMD_ID_MIN);

fn hint_err(e: impl std::fmt::Display) -> MigrationError {
    MigrationError::Hint(e.to_string())
}

/// Where the device's hint events go: the current migration's feed, ids translated from the
/// device's (unique over the provider's life) to the feed's (per migration).
#[derive(Default)]
struct Route {
    feed: Option<HintFeed>,
    /// (device id, feed id) of this migration's requests.
    ids: Vec<(u64, u32)>,
}

/// What the balloon threads and the sources share.
struct Shared {
    guest: GuestHandle,
    memory: Arc<GuestMemory>,
    device: Mutex<BalloonDevice>,
    driver: Mutex<BalloonDriver>,
    route: Mutex<Route>,
    next_id: AtomicU32,
    /// The last device id the guest finished answering.
    finished: AtomicU64,
    /// Reporting: on while a Reporting-mode migration runs; passes asked for and done.
    reporting_on: AtomicBool,
    report_asked: AtomicU64,
    report_done: AtomicU64,
    errors: Mutex<Vec<String>>,
    last_report_pass: Mutex<Option<(Duration, u64)>>,
}

impl Shared {
    fn new_id(&self) -> u32 {
        // 0 and 1 are STOP and DONE: wrap to the bottom of the id space QEMU uses.
        let next = |id: u32| Some(id.checked_add(1).unwrap_or(FIRST_ID));
        match self
            .next_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, next)
        {
            Ok(id) | Err(id) => id,
        }
    }

    fn record(&self, e: impl std::fmt::Display) {
        let mut v = lock(&self.errors);
        if v.len() < 64 {
            v.push(e.to_string());
        }
    }

    /// One step of the guest's balloon worker: the hint queues, and reporting while it is on
    /// or a pass is asked for.
    fn guest_step(&self, guest: &mut Guest) -> std::result::Result<HintStep, MigrationError> {
        let mut drv = lock(&self.driver);
        let mut step = drv.service_hints(guest).map_err(hint_err)?;
        let asked = self.report_asked.load(Ordering::Acquire);
        if asked > self.report_done.load(Ordering::Acquire)
            || self.reporting_on.load(Ordering::Acquire)
        {
            let r = drv.report_free_pages(guest).map_err(hint_err)?;
            if r == HintStep::Idle {
                self.report_done.store(asked, Ordering::Release);
            }
            step = step.max(r);
        }
        Ok(step)
    }

    /// Guest steps and device steps in turn until both are idle (inline mode); nothing while
    /// the guest is paused.
    fn pump(&self, max: usize) -> std::result::Result<(), MigrationError> {
        let r = self
            .guest
            .with(|st, paused| -> std::result::Result<(), MigrationError> {
                if paused {
                    return Ok(());
                }
                for _ in 0..max {
                    let step = self.guest_step(&mut st.guest)?;
                    let served = lock(&self.device).process_kicked().map_err(hint_err)?;
                    if step == HintStep::Idle && served == 0 {
                        break;
                    }
                }
                Ok(())
            });
        r.unwrap_or(Ok(()))
    }

    fn settled(&self) -> bool {
        let d = lock(&self.driver);
        !d.hints_busy() && d.held_hint_pages() == 0
    }
}

struct Threads {
    stop: EventFd,
    handles: Vec<JoinHandle<()>>,
}

struct Attached {
    shared: Arc<Shared>,
    threads: Option<Threads>,
    run: HintRun,
}

impl Attached {
    fn stop_threads(&mut self) {
        if let Some(t) = self.threads.take() {
            let _ = t.stop.signal();
            for h in t.handles {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.stop_threads();
        // If the guest lives on, give back what the balloon holds of it.
        let s = &self.shared;
        s.guest.with(|st, _| {
            let mut drv = lock(&s.driver);
            if let Err(e) = drv.unplug_hints(&mut st.guest) {
                s.record(e);
            }
            // The rings and request buffers go back too (nothing serves them any more).
            if let Err(e) = drv.area().release(&mut st.guest) {
                s.record(e);
            }
        });
    }
}

/// The balloon-backed [`HintProvider`]; see the module docs.
///
/// ```no_run
/// use std::sync::Arc;
/// use vballoon::machine::{migrate_local, BalloonHints, HintMode, MigrateOptions, Scenario};
/// let (guest, _) = Scenario::m1().build()?;
/// let opts = MigrateOptions {
///     hints: HintMode::Bitmap,
///     hint_provider: Some(Arc::new(BalloonHints::default())),
///     ..MigrateOptions::default()
/// };
/// let report = migrate_local(&guest, &opts)?;
/// # Ok::<_, vballoon::Error>(())
/// ```
pub struct BalloonHints {
    cfg: BalloonHintsConfig,
    attached: Mutex<Option<Attached>>,
}

impl std::fmt::Debug for BalloonHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonHints")
            .field("cfg", &self.cfg)
            .field("attached", &lock(&self.attached).is_some())
            .finish()
    }
}

impl Default for BalloonHints {
    fn default() -> Self {
        BalloonHints::new(BalloonHintsConfig::default())
    }
}

impl BalloonHints {
    /// A provider that plugs a balloon configured by `cfg` into the guests it is used with.
    pub fn new(cfg: BalloonHintsConfig) -> BalloonHints {
        BalloonHints {
            cfg,
            attached: Mutex::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BalloonHintsConfig {
        &self.cfg
    }

    /// Plugs the balloon into `guest` now (otherwise the first migration does): probes the
    /// driver, activates the device, starts the threads. A balloon plugged into another guest
    /// is unplugged first.
    pub fn attach(&self, guest: &GuestRunner) -> Result<()> {
        if let Some(att) = lock(&self.attached).as_ref() {
            if Arc::ptr_eq(&att.shared.memory, guest.memory()) {
                return Ok(());
            }
        }
        // Unplug and plug without holding our lock: both take the guest's.
        self.detach();
        let new = self.plug(guest)?;
        *lock(&self.attached) = Some(new);
        Ok(())
    }

    /// Unplugs the balloon: stops its threads and gives the guest its hinted blocks back.
    pub fn detach(&self) {
        let old = lock(&self.attached).take();
        drop(old);
    }

    fn plug(&self, runner: &GuestRunner) -> Result<Attached> {
        let cfg = &self.cfg;
        let notify = match cfg.run {
            HintRun::Threaded => NotifyMode::EventFd,
            HintRun::Inline | HintRun::Manual => NotifyMode::Polling,
        };
        let memory = Arc::clone(runner.memory());
        let mut device = BalloonDevice::new(
            Arc::clone(&memory),
            DeviceConfig {
                abi: cfg.abi,
                stats: true,
                hints: cfg.offer,
                queue_max_size: cfg.queue_size,
                notify,
                ..DeviceConfig::default()
            },
        )?;
        let driver = {
            let mut st = runner.lock();
            let opts = DriverOptions {
                abi: cfg.abi,
                queue_size: cfg.queue_size,
                ..DriverOptions::default()
            };
            let mut d = BalloonDriver::probe(Arc::clone(device.transport()), &mut st.guest, opts)?;
            d.set_hint_options(cfg.driver);
            device.set_write_log(st.guest.dirty_hook().cloned());
            d
        };
        device.activate()?;
        device.process_kicked()?;
        let shared = Arc::new(Shared {
            guest: runner.handle(),
            memory,
            device: Mutex::new(device),
            driver: Mutex::new(driver),
            route: Mutex::new(Route::default()),
            next_id: AtomicU32::new(FIRST_ID),
            finished: AtomicU64::new(0),
            reporting_on: AtomicBool::new(false),
            report_asked: AtomicU64::new(0),
            report_done: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            last_report_pass: Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        lock(&shared.device).set_hint_sink(Some(Arc::new(move |e: HintEvent| {
            let Some(s) = weak.upgrade() else { return };
            route_event(&s, e);
        })));
        let threads = match cfg.run {
            HintRun::Inline | HintRun::Manual => None,
            HintRun::Threaded => Some(spawn_threads(&shared, cfg.worker_interval)?),
        };
        Ok(Attached {
            shared,
            threads,
            run: cfg.run,
        })
    }

    fn shared_for(&self, guest: &GuestRunner) -> Result<(Arc<Shared>, HintRun)> {
        self.attach(guest)?;
        let a = lock(&self.attached);
        let att = a
            .as_ref()
            .ok_or_else(|| Error::Config("balloon not attached".into()))?;
        Ok((Arc::clone(&att.shared), att.run))
    }

    /// What the balloon has done so far.
    pub fn stats(&self) -> BalloonHintsStats {
        let a = lock(&self.attached);
        let Some(att) = a.as_ref() else {
            return BalloonHintsStats::default();
        };
        let s = &att.shared;
        let (device, f) = {
            let d = lock(&s.device);
            (d.hint_counters(), d.features())
        };
        let driver = lock(&s.driver).hint_counters();
        let last_report_pass = *lock(&s.last_report_pass);
        let errors = lock(&s.errors).clone();
        BalloonHintsStats {
            attached: true,
            misc: f.is_some_and(|f| f.misc_vq()),
            free_page_hint: f.is_some_and(|f| f.free_page_hint()),
            reporting: f.is_some_and(|f| f.reporting()),
            device,
            driver,
            last_report_pass,
            errors,
        }
    }

    /// Device errors logged so far, as messages, oldest first.
    pub fn device_errors(&self) -> Vec<String> {
        lock(&self.attached)
            .as_ref()
            .map(|a| {
                lock(&a.shared.device)
                    .errors()
                    .map(|e| e.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// [`HintRun::Manual`]: one step of the guest's balloon worker on `guest` (nothing while
    /// it is paused). Other run modes step on their own; this adds a step.
    pub fn step_guest(&self, guest: &GuestRunner) -> Result<HintStep> {
        let (s, _) = self.shared_for(guest)?;
        let r = s.guest.with(|st, paused| {
            if paused {
                return Ok(HintStep::Idle);
            }
            s.guest_step(&mut st.guest)
        });
        Ok(r.unwrap_or(Ok(HintStep::Idle))?)
    }

    /// [`HintRun::Manual`]: serves every kicked queue of the device once; returns the queues
    /// served (nothing while the guest is paused).
    pub fn step_device(&self, guest: &GuestRunner) -> Result<u32> {
        let (s, _) = self.shared_for(guest)?;
        let r = s.guest.with(|_, paused| {
            if paused {
                return Ok(0);
            }
            lock(&s.device).process_kicked()
        });
        Ok(r.unwrap_or(Ok(0))?)
    }

    /// Runs one full reporting pass in the guest (its balloon worker isolates, reports and puts
    /// back every unreported free block of order ≥ 9) and waits for it, at most `timeout`;
    /// returns the pages reported.
    pub fn report_now(&self, guest: &GuestRunner, timeout: Duration) -> Result<u64> {
        let (s, run) = self.shared_for(guest)?;
        report_pass(&s, run, timeout)
    }

    /// Puts back what reporting took from `guest` (see [`HintProvider::reset_guest`]): free
    /// pages that were resident in `resident_before` and were discarded since get stale
    /// (non-zero) data again, and blocks marked reported lose the mark. Returns the pages
    /// refilled. Call it with the guest paused or idle.
    pub fn unreport(&self, guest: &GuestRunner, resident_before: &PageSet) -> Result<u64> {
        let resident = guest.resident_pages()?;
        let mut st = guest.lock();
        let g = &mut st.guest;
        let mut blocks = Vec::new();
        g.allocator().for_each_free_block(|p, o| {
            if g.allocator().is_reported(p) {
                blocks.push((p, o));
            }
        });
        let mut refilled = 0;
        for (p, o) in blocks {
            // Allocating the block clears its mark; freeing it puts it back unreported.
            g.allocator_mut().alloc_at(p, o)?;
            let mut lost = PageSet::new(resident_before.npages());
            for r in resident_before.runs_in(p.0, p.0 + (1 << o)) {
                lost.insert_range(r.start, r.len);
            }
            lost.difference_with(&resident);
            for r in lost.runs() {
                g.fill(GuestAddress(r.start * PAGE_SIZE), r.len * PAGE_SIZE, 0xa5)?;
                refilled += r.len;
            }
            g.allocator_mut().free(p, o)?;
        }
        Ok(refilled)
    }
}

impl Drop for BalloonHints {
    fn drop(&mut self) {
        self.detach();
    }
}

fn route_event(s: &Shared, e: HintEvent) {
    let r = lock(&s.route);
    let (id, finished) = match e {
        HintEvent::Pages { id, .. } => (id, false),
        HintEvent::Finished { id } => (id, true),
    };
    if finished {
        s.finished.store(id, Ordering::Release);
    }
    let Some(feed) = &r.feed else { return };
    // An id of another migration (or none) maps to STOP, which the feed never accepts.
    let fid = r
        .ids
        .iter()
        .rev()
        .find(|(d, _)| *d == id)
        .map_or(0, |&(_, f)| f);
    match e {
        HintEvent::Pages { pfn, npages, .. } => feed.report(fid, PageRange::new(pfn, npages)),
        HintEvent::Finished { .. } => feed.finish(fid),
    }
}

/// Asks the guest's worker for a full reporting pass and waits for it.
fn report_pass(s: &Arc<Shared>, run: HintRun, timeout: Duration) -> Result<u64> {
    if !lock(&s.driver).features().reporting() {
        return Ok(0);
    }
    let before = lock(&s.driver).hint_counters().reported_pages;
    let t = Instant::now();
    let want = s.report_asked.fetch_add(1, Ordering::AcqRel) + 1;
    while s.report_done.load(Ordering::Acquire) < want {
        if t.elapsed() > timeout {
            return Err(Error::Config(format!(
                "reporting pass did not finish within {timeout:?}"
            )));
        }
        match run {
            HintRun::Inline | HintRun::Manual => s.pump(1 << 16)?,
            HintRun::Threaded => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    let pages = lock(&s.driver).hint_counters().reported_pages - before;
    *lock(&s.last_report_pass) = Some((t.elapsed(), pages));
    Ok(pages)
}
