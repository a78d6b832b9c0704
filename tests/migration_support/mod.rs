//! Shared helpers of the migration integration tests: a guest with a workload thread, a
//! fault-injecting channel, checksums.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vballoon::guest::Guest;
use vballoon::machine::{BalloonHints, GuestRunner, HintMode, HintProvider};
use vballoon::memory::{GuestAddress, GuestMemory, PageRange, Pfn, PAGE_SIZE};
use vballoon::migration::crc32c_append;
use vballoon::migration::{
    in_process_pair, Channel, ChannelLayer, DestConfig, DestReport, Destination, DirtyLog,
    DirtyTracking, GuestControl, HintSource, MigrationConfig, MigrationError, MigrationResult,
    Source,
};
use vballoon::pages::PageSet;

pub const MIB: u64 = 1 << 20;

/// splitmix64: small, fast, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A guest laid out for tests: used pages (random data, some zero-filled but populated),
/// free pages holding stale data, and never-touched pages.
pub struct TestGuest {
    pub used: PageSet,
    pub free_stale: PageSet,
}

/// Fills `mem`: `used_mib` of used data in 64 KiB extents, `stale_mib` of free-but-written
/// extents, 1 in 8 used extents zero-filled (populated zeros).
pub fn populate(mem: &GuestMemory, used_mib: u64, stale_mib: u64, seed: u64) -> TestGuest {
    let pages = mem.pages();
    let mut rng = Rng(seed);
    let mut used = PageSet::new(pages);
    let mut free_stale = PageSet::new(pages);
    let mut buf = vec![0u8; 16 * PAGE_SIZE as usize];
    for (target, mib) in [(0, used_mib), (1, stale_mib)] {
        let mut left = mib * MIB / PAGE_SIZE;
        while left > 0 {
            let first = rng.below(pages / 16) * 16;
            if used.count_range(first, 16) + free_stale.count_range(first, 16) > 0 {
                continue;
            }
            let zero = target == 0 && rng.below(8) == 0;
            if zero {
                buf.fill(0);
            } else {
                rng.fill(&mut buf);
            }
            mem.write(Pfn(first).addr(), &buf).unwrap();
            if target == 0 {
                used.insert_range(first, 16);
            } else {
                free_stale.insert_range(first, 16);
            }
            left = left.saturating_sub(16);
        }
    }
    TestGuest { used, free_stale }
}

/// The guest's free pages: everything not used.
pub fn free_bitmap(used: &PageSet) -> PageSet {
    let mut free = PageSet::full(used.npages());
    for PageRange { start: s, len: n } in used.runs() {
        free.remove_range(s, n);
    }
    free
}

/// CRC of all of guest RAM (reads every page).
pub fn checksum(mem: &GuestMemory) -> u32 {
    let mut buf = vec![0u8; MIB as usize];
    let mut crc = 0;
    for at in (0..mem.size()).step_by(MIB as usize) {
        let n = (mem.size() - at).min(MIB) as usize;
        mem.read(GuestAddress(at), &mut buf[..n]).unwrap();
        crc = crc32c_append(crc, &buf[..n]);
    }
    crc
}

/// A workload thread's controls: writes random used pages until stopped; paused through
/// [`GuestControl`] (pause returns only when no write is in flight).
pub struct Workload {
    gate: Mutex<bool>,
    stop: AtomicBool,
    pub writes: AtomicU64,
    pub pauses: AtomicU32,
    pub resumes: AtomicU32,
    /// Whether writes are marked in the dirty log (false: only kernel tracking sees them).
    pub mark: bool,
}

impl Workload {
    pub fn new(mark: bool) -> Workload {
        Workload {
            gate: Mutex::new(false),
            stop: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            pauses: AtomicU32::new(0),
            resumes: AtomicU32::new(0),
            mark,
        }
    }

    /// Runs the workload until [`Workload::stop`]: one page of `used` every `period`.
    pub fn run(&self, mem: &GuestMemory, log: &DirtyLog, used: &PageSet, period: Duration) {
        let pages: Vec<u64> = used.iter().collect();
        let mut rng = Rng(0x5eed);
        let mut page = vec![0u8; PAGE_SIZE as usize];
        while !self.stop.load(Ordering::Acquire) {
            {
                let paused = self.gate.lock().unwrap();
                if !*paused {
                    let pfn = pages[rng.below(pages.len() as u64) as usize];
                    rng.fill(&mut page);
                    mem.write(Pfn(pfn).addr(), &page).unwrap();
                    if self.mark {
                        log.mark(Pfn(pfn), 1); // after the write
                    }
                    self.writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(period);
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn is_paused(&self) -> bool {
        *self.gate.lock().unwrap()
    }
}

impl GuestControl for Workload {
    fn pause(&self) {
        *self.gate.lock().unwrap() = true;
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    fn resume(&self) {
        *self.gate.lock().unwrap() = false;
        self.resumes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `source` into `dst` (default destination settings) over an in-process socket pair;
/// returns both sides' results.
pub fn migrate(
    source: Source<'_>,
    dst: &GuestMemory,
) -> (
    Result<MigrationResult, MigrationError>,
    Result<DestReport, MigrationError>,
) {
    let (a, b) = in_process_pair(Duration::from_secs(20)).unwrap();
    std::thread::scope(|s| {
        let d = s.spawn(|| Destination::new(dst, DestConfig::default()).receive(b));
        (source.run(a), d.join().unwrap())
    })
}

/// Settings of a test migration over an unlimited link with `tracking`; never-populated pages
/// are sent unread if `skip_unpopulated`.
pub fn unthrottled(tracking: DirtyTracking, skip_unpopulated: bool) -> MigrationConfig {
    MigrationConfig {
        bandwidth_bytes_per_s: 0,
        skip_unpopulated,
        dirty_tracking: tracking,
        ..MigrationConfig::default()
    }
}

/// [`migrate`], where both sides must succeed.
pub fn migrate_ok(source: Source<'_>, dst: &GuestMemory) -> MigrationResult {
    let (r, d) = migrate(source, dst);
    d.unwrap();
    r.unwrap()
}

/// Where a [`Hooked`] hint source calls its hook: around the engine's calls into the inner one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    BeforeStart,
    AfterStart,
    BeforePoll,
    BeforeStop,
    AfterStop,
}

/// A hint source that lets a test act (the guest allocating, writing, hinting) at each point
/// where the engine calls into the inner source: a script becomes one exact interleaving of
/// guest activity with hint requests, chunk sends and dirty-log syncs.
pub struct Hooked<'a, H> {
    pub inner: Box<dyn HintSource + 'a>,
    pub hook: H,
}

impl<H: FnMut(Call) + Send> HintSource for Hooked<'_, H> {
    fn start(&mut self, round: u32) -> Result<(), MigrationError> {
        (self.hook)(Call::BeforeStart);
        self.inner.start(round)?;
        (self.hook)(Call::AfterStart);
        Ok(())
    }

    fn poll(&mut self, out: &mut dyn FnMut(PageRange)) -> Result<bool, MigrationError> {
        (self.hook)(Call::BeforePoll);
        self.inner.poll(out)
    }

    fn stop(&mut self) -> Result<(), MigrationError> {
        (self.hook)(Call::BeforeStop);
        self.inner.stop()?;
        (self.hook)(Call::AfterStop);
        Ok(())
    }

    fn done(&mut self) {
        self.inner.done();
    }
}

/// What a test puts around each hint source the balloon hands out (see [`Wrapped`]).
pub trait WrapHints: Send + Sync {
    /// The provider's name in reports.
    fn name(&self) -> &str;
    /// Wraps `inner`, the balloon's source for one migration of `guest`.
    fn wrap<'a>(
        &'a self,
        balloon: &'a BalloonHints,
        inner: Box<dyn HintSource + 'a>,
        guest: &'a GuestRunner,
    ) -> Box<dyn HintSource + 'a>;
}

/// The balloon's hint provider, every source it hands out wrapped by `wrap`; the rest is the
/// balloon's.
pub struct Wrapped<W> {
    pub balloon: Arc<BalloonHints>,
    pub wrap: W,
}

impl<W: WrapHints> HintProvider for Wrapped<W> {
    fn name(&self) -> &str {
        self.wrap.name()
    }
    fn supports(&self, mode: HintMode) -> bool {
        self.balloon.supports(mode)
    }
    fn hint_source<'a>(
        &'a self,
        mode: HintMode,
        guest: &'a GuestRunner,
    ) -> Result<Option<Box<dyn HintSource + 'a>>, MigrationError> {
        let source = self.balloon.hint_source(mode, guest)?;
        Ok(source.map(|inner| self.wrap.wrap(&self.balloon, inner, guest)))
    }
    fn unused_pages(&self, guest: &Guest, out: &mut PageSet) {
        self.balloon.unused_pages(guest, out);
    }
}

/// How a [`Faulty`] channel misbehaves.
#[derive(Clone, Default)]
pub struct Faults {
    /// Drop the connection (shut the socket down) once this many bytes were written.
    pub drop_after: Option<u64>,
    /// Flip one bit of the written byte at this stream offset.
    pub corrupt_at: Option<u64>,
    /// Drop the connection at the first write after this flag is set.
    pub drop_when: Option<Arc<AtomicBool>>,
    /// Not a fault: append every byte written through the channel here.
    pub record: Option<Arc<Mutex<Vec<u8>>>>,
}

/// A channel that injects [`Faults`] into what is written through it.
pub struct Faulty<C> {
    pub inner: C,
    pub faults: Faults,
    pub written: u64,
}

impl<C: Channel> Faulty<C> {
    pub fn new(inner: C, faults: Faults) -> Faulty<C> {
        Faulty {
            inner,
            faults,
            written: 0,
        }
    }

    fn dropped(&self) -> io::Error {
        let _ = self.inner.shutdown();
        io::Error::new(io::ErrorKind::BrokenPipe, "injected connection drop")
    }
}

impl<C: Channel> Read for Faulty<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<C: Channel> Write for Faulty<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(flag) = &self.faults.drop_when {
            if flag.load(Ordering::Acquire) {
                return Err(self.dropped());
            }
        }
        let mut n = buf.len();
        if let Some(limit) = self.faults.drop_after {
            if self.written >= limit {
                return Err(self.dropped());
            }
            n = n.min((limit - self.written) as usize);
        }
        let n = match self.faults.corrupt_at {
            Some(at) if at >= self.written && at < self.written + n as u64 => {
                let mut copy = buf[..n].to_vec();
                copy[(at - self.written) as usize] ^= 0x10;
                self.inner.write(&copy)?
            }
            _ => self.inner.write(&buf[..n])?,
        };
        if let Some(log) = &self.faults.record {
            log.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<C: Channel> ChannelLayer for Faulty<C> {
    type Inner = C;

    fn inner(&self) -> &C {
        &self.inner
    }
}
