//! A balloon machine: one guest (RAM, allocator, balloon driver) and one host (balloon device)
//! joined by a transport and split virtqueues in guest RAM.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::{MachineConfig, RunMode};
use super::report::{InflateReport, Outcome};
use crate::device::{BalloonDevice, BalloonError, DeviceConfig, DeviceCounters, StatsSample};
use crate::error::{Error, Result};
use crate::guest::{
    BalloonDriver, DriverCounters, DriverError, DriverOptions, Step, OOM_DEFLATE_PAGES,
};
use crate::guest::{Guest, GuestError};
use crate::memory::{process_rss_bytes, GuestAddress, GuestMemory, Pfn, PAGE_SIZE};
use crate::pages::PageSet;
use crate::transport::Transport;
use crate::util::lock;
use crate::virtq::{EventFd, NotifyMode};

/// How long the device thread sleeps in `poll` before looking again (a lost wake-up costs at
/// most this; none is expected).
const DEVICE_POLL_MS: i32 = 200;
/// Longest single wait for an interrupt in threaded mode, so deadlines are checked.
const WAIT_SLICE: Duration = Duration::from_millis(50);

struct DeviceThread {
    stop: EventFd,
    handle: JoinHandle<()>,
}

/// One guest and one balloon device, wired together; see [`MachineConfig`].
///
/// In [`RunMode::Synchronous`] every kick runs the device's handler inline on the caller's
/// thread; in [`RunMode::Threaded`] the device runs on its own thread, woken by eventfds.
pub struct Session {
    cfg: MachineConfig,
    mem: Arc<GuestMemory>,
    guest: Guest,
    driver: BalloonDriver,
    device: Arc<Mutex<BalloonDevice>>,
    transport: Arc<Transport>,
    thread: Option<DeviceThread>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cfg", &self.cfg)
            .field("driver", &self.driver)
            .field("threaded", &self.thread.is_some())
            .finish()
    }
}

impl Session {
    /// Maps fresh guest RAM and builds the machine.
    pub fn new(cfg: MachineConfig) -> Result<Session> {
        cfg.validate()?;
        let mem = Arc::new(GuestMemory::new(cfg.guest_bytes, cfg.backing)?);
        Session::with_memory(mem, cfg)
    }

    /// Builds the machine over existing guest RAM (its contents and residency are kept:
    /// benchmarks reuse one populated guest); `cfg.guest_bytes` and `cfg.backing` are taken
    /// from `mem`.
    pub fn with_memory(mem: Arc<GuestMemory>, mut cfg: MachineConfig) -> Result<Session> {
        cfg.guest_bytes = mem.size();
        cfg.backing = mem.backing();
        cfg.validate()?;
        let mut guest = Guest::new(Arc::clone(&mem))?;
        let notify = match cfg.mode {
            RunMode::Synchronous => NotifyMode::Polling,
            RunMode::Threaded => NotifyMode::EventFd,
        };
        let dcfg = DeviceConfig {
            abi: cfg.abi,
            encoding: cfg.encoding,
            must_tell_host: cfg.must_tell_host,
            require_must_tell_host: false,
            stats: cfg.stats,
            deflate_on_oom: cfg.deflate_on_oom,
            discard: cfg.discard,
            populate_on_deflate: cfg.populate_on_deflate,
            queue_max_size: cfg.queue_size,
            notify,
            hints: Default::default(),
            huge_partial: cfg.huge_partial,
        };
        let mut device = BalloonDevice::new(Arc::clone(&mem), dcfg)?;
        let transport = Arc::clone(device.transport());
        let opts = DriverOptions {
            abi: cfg.abi,
            feature_mask: cfg.driver_feature_mask,
            queue_size: cfg.queue_size,
            alloc_order: cfg.alloc_order,
            ..DriverOptions::default()
        };
        let driver = BalloonDriver::probe(Arc::clone(&transport), &mut guest, opts)?;
        device.activate()?;
        let device = Arc::new(Mutex::new(device));
        let mut s = Session {
            cfg,
            mem,
            guest,
            driver,
            device,
            transport,
            thread: None,
        };
        match cfg.mode {
            RunMode::Synchronous => {
                s.pump()?;
            }
            RunMode::Threaded => s.thread = Some(s.spawn_device()?),
        }
        Ok(s)
    }

    fn spawn_device(&self) -> Result<DeviceThread> {
        let stop = EventFd::new()?;
        let stop_rx = stop.try_clone()?;
        let device = Arc::clone(&self.device);
        let n = lock(&device).num_queues();
        let mut kicks = Vec::with_capacity(usize::from(n));
        for i in 0..n {
            let k = self.transport.kick_notifier(i)?;
            let fd = k
                .raw_fd()
                .ok_or_else(|| Error::Config("threaded mode needs eventfds".into()))?;
            kicks.push((i, k, fd));
        }
        let handle = std::thread::Builder::new()
            .name("vballoon-device".into())
            .spawn(move || device_loop(device, kicks, stop_rx))
            .map_err(|e| Error::Config(format!("spawning the device thread: {e}")))?;
        Ok(DeviceThread { stop, handle })
    }

    /// Stops the device thread (threaded mode) and waits for it; idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(t) = self.thread.take() {
            t.stop.signal()?;
            t.handle
                .join()
                .map_err(|_| Error::Config("the device thread panicked".into()))?;
        }
        Ok(())
    }

    /// Whether the device thread is running.
    pub fn is_threaded(&self) -> bool {
        self.thread.is_some()
    }

    /// Synchronous mode: runs the device for every queue kicked since the last call.
    fn pump(&mut self) -> Result<u32> {
        if self.thread.is_some() {
            return Ok(0);
        }
        Ok(lock(&self.device).process_kicked()?)
    }

    /// Lets the device use the buffer the driver waits for on `queue`: runs it inline
    /// (synchronous) or waits for its interrupt (threaded). Errors past `deadline`.
    fn wait_device(&mut self, queue: u16, deadline: Instant, timeout: Duration) -> Result<()> {
        if self.thread.is_none() {
            if self.pump()? == 0 {
                // The driver never suppresses kicks, so this only happens if the device did
                // nothing with the kick; serve the queue directly so nothing hangs.
                lock(&self.device).process_queue(queue)?;
            }
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DriverError::Timeout {
                queue,
                millis: timeout.as_millis() as u64,
            }
            .into());
        }
        self.driver.wait(queue, WAIT_SLICE.min(deadline - now))?;
        Ok(())
    }

    // ---- the host's controls ----

    /// Sets the balloon target in 4 KiB pages (`num_pages`).
    pub fn set_target_pages(&mut self, pages: u64) -> Result<()> {
        let p = u32::try_from(pages)
            .map_err(|_| Error::Config(format!("target {pages} pages does not fit num_pages")))?;
        lock(&self.device).set_num_pages(p)?;
        Ok(())
    }

    /// Sets the balloon target in bytes (rounded down to whole pages).
    pub fn set_target_bytes(&mut self, bytes: u64) -> Result<()> {
        self.set_target_pages(bytes / PAGE_SIZE)
    }

    /// The target, `num_pages`.
    pub fn target_pages(&self) -> u64 {
        u64::from(lock(&self.device).num_pages())
    }

    /// `actual` as the driver last wrote it.
    pub fn actual(&self) -> u64 {
        u64::from(lock(&self.device).actual())
    }

    /// Runs the driver (and in synchronous mode the device) until the balloon reaches its
    /// target or the guest has nothing left to give; fails after `timeout`.
    pub fn run_until_settled(&mut self, timeout: Duration) -> Result<InflateReport> {
        let deadline = Instant::now() + timeout;
        let drv0 = self.driver.counters();
        let dev0 = self.device_counters();
        let resident_before = self.resident_pages()?;
        let rss_before = process_rss_bytes()?;
        let start_pages = self.driver.balloon_pages();
        let t0 = Instant::now();
        let outcome = loop {
            match self.driver.advance(&mut self.guest)? {
                Step::Progress | Step::Idle => {
                    if self.thread.is_none() {
                        self.pump()?;
                    }
                }
                Step::Waiting(q) => self.wait_device(q, deadline, timeout)?,
                Step::Settled => break Outcome::Settled,
                Step::Stuck => break Outcome::Stuck,
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    queue: 0,
                    millis: timeout.as_millis() as u64,
                }
                .into());
            }
        };
        let total_secs = t0.elapsed().as_secs_f64();
        let drv = self.driver.counters().since(&drv0);
        let dev = self.device_counters().since(&dev0);
        Ok(InflateReport {
            outcome,
            target_pages: self.target_pages(),
            start_pages,
            end_pages: self.driver.balloon_pages(),
            total_secs,
            rss_before,
            rss_after: process_rss_bytes()?,
            resident_before,
            resident_after: self.resident_pages()?,
            ..InflateReport::default()
        }
        .with_counters(&drv, &dev))
    }

    /// Finishes whatever the driver has in flight without starting anything new.
    fn drain(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.driver.service(&mut self.guest)? {
                Step::Idle => return Ok(()),
                Step::Waiting(q) => self.wait_device(q, deadline, timeout)?,
                _ => {
                    if self.thread.is_none() {
                        self.pump()?;
                    }
                }
            }
        }
    }

    /// Allocates a block of `2^order` pages for the guest as its page allocator would, and
    /// with DEFLATE_ON_OOM, when memory is exhausted, first deflates the balloon (256 pages at
    /// a time, telling the host) until the allocation succeeds or the balloon is empty.
    pub fn guest_alloc(&mut self, order: u8, timeout: Duration) -> Result<Pfn> {
        loop {
            match self.guest.allocator_mut().alloc(order) {
                Ok(p) => return Ok(p),
                Err(GuestError::OutOfMemory { order }) => {
                    self.drain(timeout)?;
                    let n = self
                        .driver
                        .start_oom_deflate(&mut self.guest, OOM_DEFLATE_PAGES)?;
                    if n == 0 {
                        return Err(GuestError::OutOfMemory { order }.into());
                    }
                    self.drain(timeout)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Asks the guest for fresh statistics (the device returns the stats buffer it holds) and
    /// waits for them; `None` if STATS_VQ was not negotiated.
    pub fn stats(&mut self, timeout: Duration) -> Result<Option<StatsSample>> {
        let Some(q) = self.driver.queue_indexes().stats else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        let before = lock(&self.device).stats().generation;
        let mut requested = false;
        loop {
            self.driver.service(&mut self.guest)?;
            if self.thread.is_none() {
                self.pump()?;
            }
            {
                let mut d = lock(&self.device);
                if requested && d.stats().generation > before && d.holds_stats_buffer() {
                    return Ok(Some(d.stats().clone()));
                }
                // The device may not hold the buffer yet (threaded: it is still popping it).
                if !requested {
                    requested = d.request_stats()?;
                }
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    queue: q,
                    millis: timeout.as_millis() as u64,
                }
                .into());
            }
            if self.thread.is_some() {
                // The refilled buffer is held, not used, so no interrupt tells us it arrived.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    // ---- what there is to look at ----

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Guest RAM.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The guest (to run workloads).
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// The guest, mutable (to run workloads). Allocations through it do not deflate on OOM;
    /// use [`Session::guest_alloc`] for that.
    pub fn guest_mut(&mut self) -> &mut Guest {
        &mut self.guest
    }

    /// The balloon driver.
    pub fn driver(&self) -> &BalloonDriver {
        &self.driver
    }

    /// The transport both sides share.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The device, locked (the device thread waits meanwhile).
    pub fn device(&self) -> MutexGuard<'_, BalloonDevice> {
        lock(&self.device)
    }

    /// The device's counters.
    pub fn device_counters(&self) -> DeviceCounters {
        lock(&self.device).counters()
    }

    /// The driver's counters.
    pub fn driver_counters(&self) -> DriverCounters {
        self.driver.counters()
    }

    /// Pages in the balloon, by the host's view.
    pub fn balloon_pages(&self) -> u64 {
        lock(&self.device).balloon_pages()
    }

    /// The host's view of the balloon, as a page set (a migration skips these pages).
    pub fn balloon_set(&self) -> PageSet {
        lock(&self.device).balloon().clone()
    }

    /// Resident pages of guest RAM (mincore), unaffected by other allocations of the process.
    pub fn resident_pages(&self) -> Result<u64> {
        Ok(self.mem.resident_pages(GuestAddress(0), self.mem.size())?)
    }

    /// Device errors logged so far, as messages, oldest first.
    pub fn device_errors(&self) -> Vec<String> {
        lock(&self.device).errors().map(|e| e.to_string()).collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The device's I/O thread: sleeps in `poll` on the queues' kick eventfds and a stop eventfd,
/// and serves each kicked queue.
fn device_loop(
    device: Arc<Mutex<BalloonDevice>>,
    kicks: Vec<(u16, crate::virtq::Notifier, i32)>,
    stop: EventFd,
) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
        .chain(kicks.iter().map(|k| k.2))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        for p in &mut fds {
            p.revents = 0;
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, DEVICE_POLL_MS) };
        if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (i, (index, kick, _)) in kicks.iter().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            if kick.take().is_err() {
                return;
            }
            // Errors are logged by the device; a broken queue has set DEVICE_NEEDS_RESET,
            // which the driver sees. Keep serving the other queues.
            let r: std::result::Result<_, BalloonError> = lock(&device).process_queue(*index);
            let _ = r;
        }
    }
}
