//! Live migration from Python: a running guest, `migrate(...)`, two-process send/listen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::PyClassInitializer;

use super::closeable::{closeable, PyCloseable};
use super::convert::{backing_arg, rate_arg, size_arg, timeout_arg};
use super::errors::{config_err, with_attrs, Attr, MigrationError};
use super::memory::PyGuestMemory;
use super::pages::PyPageSet;
use super::progress::{rounds, PyRoundStats};
use super::records::record;
use super::results::{PyDestReport, PyGuestInfo, PyMigrationProgress};
use crate::machine::{
    listen, send, BalloonHints, GuestRunner, HintMode, HintProvider, LocalLink, MigrateOptions,
    MigrationSummary, Scenario, ScenarioInfo,
};
use crate::memory::GuestAddress;
use crate::migration::{
    DestConfig, DirtyTracking, GuestControl, MigrationKey, MigrationResult, Progress, RoundStats,
};

/// A duration argument: seconds as a number, or a string like `"300ms"` / `"2s"`.
fn duration_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str()?.trim().to_ascii_lowercase();
        let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = s.strip_suffix("us") {
            (n, 1e-6)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1.0)
        } else {
            (s.as_str(), 1.0)
        };
        let v: f64 = num
            .trim()
            .parse()
            .map_err(|_| config_err(format!("{what}: cannot parse {s:?}")))?;
        return timeout_arg(v * scale, what);
    }
    let v: f64 = obj
        .extract()
        .map_err(|_| config_err(format!("{what}: seconds or a string like '300ms'")))?;
    timeout_arg(v, what)
}

/// One of a fixed set of names, parsed by `parse`; the error lists `choices`.
fn choice_arg<T>(
    what: &str,
    name: &str,
    parse: fn(&str) -> Option<T>,
    choices: &str,
) -> PyResult<T> {
    parse(name).ok_or_else(|| config_err(format!("{what} must be {choices}, not {name:?}")))
}

record! {
    /// What a migration did, as the source saw it (and the destination, when it ran here).
    pub struct PyMigrationResult as "MigrationResult" {
        /// Hint mode: "off", "bitmap", "upstream" or "reporting".
        hints: String,
        /// Whether pages the host never populated were skipped without reading.
        skip_unpopulated: bool,
        /// Total time, seconds.
        total_secs: f64,
        /// Guest paused until the destination had everything, seconds.
        downtime_secs: f64,
        /// Pre-copy rounds, including stop-and-copy.
        rounds: u32,
        /// Whether the dirty set fit the downtime target before max rounds.
        converged: bool,
        /// Bytes written to the link.
        bytes_sent: u64,
        /// Pages sent as data.
        pages_sent: u64,
        /// Pages sent as zero markers.
        zero_pages: u64,
        /// Pages skipped because the guest hinted them free.
        hinted_pages: u64,
        /// Pages skipped because the host never populated them.
        unpopulated_pages: u64,
        /// Pages the source read.
        pages_read: u64,
        /// Peak RSS of this process, bytes.
        peak_rss_bytes: u64,
        /// Used pages found byte-identical on the destination (None: not verified).
        verified_pages: Option<u64>,
        /// Used pages that differ (must be 0).
        mismatched_pages: Option<u64>,
        /// Free pages that differ (allowed: their contents are not the guest's).
        free_pages_differing: Option<u64>,
        /// Pages the guest's workload dirtied during the migration.
        workload_pages_dirtied: u64,
        /// The dirty tracking used ("explicit", or the kernel's, with the fallback reason).
        dirty_backend: String,
        /// What each round did (the stop-and-copy round last).
        per_round: Vec<PyRoundStats>,
    }
}

impl PyMigrationResult {
    fn new(s: &MigrationSummary, dirty_backend: String, per_round: &[RoundStats]) -> Self {
        PyMigrationResult {
            hints: s.hints.clone(),
            skip_unpopulated: s.skip_unpopulated,
            total_secs: s.total_ms / 1e3,
            downtime_secs: s.downtime_ms / 1e3,
            rounds: s.rounds,
            converged: s.converged,
            bytes_sent: s.bytes_sent,
            pages_sent: s.pages_sent,
            zero_pages: s.zero_pages,
            hinted_pages: s.hinted_pages,
            unpopulated_pages: s.unpopulated_pages,
            pages_read: s.pages_read,
            peak_rss_bytes: s.peak_rss_bytes,
            verified_pages: s.verified_pages,
            mismatched_pages: s.mismatched_pages,
            free_pages_differing: s.free_pages_differing,
            workload_pages_dirtied: s.workload_pages_dirtied,
            dirty_backend,
            per_round: rounds(per_round),
        }
    }

    fn from_remote(r: &MigrationResult, hints: HintMode, skip: bool) -> Self {
        let mut s = MigrationSummary::from_result(r);
        s.hints = hints.name().to_string();
        s.skip_unpopulated = skip;
        if let Some(v) = &r.remote_verify {
            s.verified_pages = Some(v.pages_checked);
            s.mismatched_pages = Some(v.mismatched);
        }
        PyMigrationResult::new(&s, r.dirty_backend.to_string(), &r.per_round)
    }
}

/// A running guest to migrate: its RAM, page allocator and a workload that can keep writing
/// (at `dirty_rate` bytes/s) while it migrates.
///
/// `scenario` builds a published setup (`"m1"`, `"m2"`, `"m3"`), scaled to `size` if given;
/// otherwise the guest is `size` with `used` bytes allocated and filled, of which `free_share`
/// is freed again (those free pages keep stale data); the workload allocates in blocks of
/// `2**order` pages, so `order=10` frees whole 4 MiB blocks and `order=0` scatters free pages.
#[pyclass(name = "Guest", module = "vballoon", frozen, extends = PyCloseable)]
pub struct PyGuest {
    runner: Arc<GuestRunner>,
    /// Set by `close()`: the workload thread is stopped, migrations are refused.
    closed: AtomicBool,
    /// The balloon that answers hint requests, plugged into this guest on first use.
    hints: Arc<BalloonHints>,
    progress: Arc<Progress>,
    info: ScenarioInfo,
    memory: Py<PyGuestMemory>,
}

#[pymethods]
impl PyGuest {
    #[new]
    #[pyo3(signature = (size = None, *, scenario = None, used = None, free_share = 0.0, order = 0, backing = "anonymous", seed = 1))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of a Python constructor
    fn new(
        py: Python<'_>,
        size: Option<&Bound<'_, PyAny>>,
        scenario: Option<&str>,
        used: Option<&Bound<'_, PyAny>>,
        free_share: f64,
        order: u8,
        backing: &str,
        seed: u64,
    ) -> PyResult<PyClassInitializer<Self>> {
        let mut sc = match scenario {
            Some(name) => Scenario::by_name(name).ok_or_else(|| {
                config_err(format!("scenario must be m1, m2 or m3, not {name:?}"))
            })?,
            None => Scenario {
                name: "custom".into(),
                free_share,
                alloc_order: order,
                seed,
                ..Scenario::m1()
            },
        };
        if let Some(size) = size {
            sc = sc.with_guest_bytes(size_arg(size, "size")?);
        } else if scenario.is_none() {
            return Err(config_err("give a size or a scenario"));
        }
        if let Some(used) = used {
            sc.workload_bytes = size_arg(used, "used")?;
        }
        sc = sc.with_backing(backing_arg(backing)?);
        let (runner, info) = py.detach(|| sc.build())?;
        let memory = Py::new(
            py,
            PyGuestMemory {
                inner: Arc::clone(runner.memory()),
            },
        )?;
        Ok(closeable(PyGuest {
            runner: Arc::new(runner),
            closed: AtomicBool::new(false),
            hints: Arc::default(),
            progress: Arc::default(),
            info,
            memory,
        }))
    }

    /// The guest's RAM.
    #[getter]
    fn memory(&self, py: Python<'_>) -> Py<PyGuestMemory> {
        self.memory.clone_ref(py)
    }

    /// What was built: used, stale-free and untouched bytes, free blocks by order.
    fn info(&self) -> PyGuestInfo {
        PyGuestInfo::from(&self.info)
    }

    /// Pages free in the guest's allocator.
    fn free_pages(&self) -> PyPageSet {
        PyPageSet::wrap(self.runner.free_pages())
    }

    /// Pages the guest uses (not free).
    fn used_pages(&self) -> PyPageSet {
        PyPageSet::wrap(self.runner.used_pages())
    }

    /// The pages written since the dirty log was last synced (a snapshot; does not reset it).
    fn dirty_pages(&self) -> PyPageSet {
        PyPageSet::wrap(self.runner.dirty_log().snapshot())
    }

    /// Writes `data` at `addr` as the guest (the dirty log sees it).
    fn write(&self, addr: u64, data: &[u8]) -> PyResult<()> {
        Ok(self.runner.lock().guest.write(GuestAddress(addr), data)?)
    }

    /// Marks `[pfn, pfn + count)` dirty: for writes a script made through a raw memory view,
    /// which only the kernel tracker (`dirty_tracking="kernel"`) sees by itself.
    #[pyo3(signature = (pfn, count = 1))]
    fn mark_dirty(&self, pfn: u64, count: u64) -> PyResult<()> {
        if pfn
            .checked_add(count)
            .is_none_or(|end| end > self.runner.memory().pages())
        {
            return Err(config_err("pages outside guest RAM"));
        }
        self.runner.dirty_log().mark(crate::memory::Pfn(pfn), count);
        Ok(())
    }

    /// Progress of the migration running now (or the last one): round, pages done of the
    /// round, total pages, bytes sent, and whether stop-and-copy has begun.
    fn progress(&self) -> PyMigrationProgress {
        PyMigrationProgress::from(&*self.progress)
    }

    /// Lets the guest run again after `migrate(resume=False)` left it paused.
    fn resume(&self) {
        GuestControl::resume(&*self.runner);
    }

    /// Stops the guest's workload thread and unplugs its hint balloon; idempotent. A closed
    /// guest refuses `migrate` (its memory stays readable).
    fn close(&self, py: Python<'_>) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let (hints, runner) = (&self.hints, &self.runner);
            py.detach(|| {
                hints.detach();
                runner.shutdown();
            });
        }
    }

    /// Whether the guest is paused: after `migrate(resume=False)`, until `resume()`.
    #[getter]
    fn paused(&self) -> bool {
        self.runner.is_paused()
    }

    /// Whether `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Migrates the guest, its workload running at `dirty_rate` meanwhile. With `to`
    /// (`"host:port"`, a destination started by `listen_migration` or `vballoon migrate
    /// listen`), over TCP to that process; otherwise to a fresh destination in this process
    /// (over a socketpair, or TCP loopback with `link="tcp"`, into `dest_backing` RAM).
    /// With `verify`, every used page is checked on the destination. The guest runs again
    /// after the migration unless `resume=False` (then it stays paused until `resume()`). A
    /// `MigrationError` carries the `round` the source was in.
    #[pyo3(signature = (
        *, to = None, hints = "off", bandwidth = None, downtime = None, dirty_rate = None,
        skip_unpopulated = false, dirty_tracking = "explicit", link = "socketpair",
        verify = true, max_rounds = 30, dest_backing = "anonymous", timeout = 30.0, key = None,
        resume = true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn migrate(
        &self,
        py: Python<'_>,
        to: Option<&str>,
        hints: &str,
        bandwidth: Option<&Bound<'_, PyAny>>,
        downtime: Option<&Bound<'_, PyAny>>,
        dirty_rate: Option<&Bound<'_, PyAny>>,
        skip_unpopulated: bool,
        dirty_tracking: &str,
        link: &str,
        verify: bool,
        max_rounds: u32,
        dest_backing: &str,
        timeout: f64,
        key: Option<&[u8]>,
        resume: bool,
    ) -> PyResult<PyMigrationResult> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(config_err("the guest is closed"));
        }
        let mut opts = MigrateOptions {
            hints: choice_arg(
                "hints",
                hints,
                HintMode::parse,
                "off, bitmap, upstream or reporting",
            )?,
            skip_unpopulated,
            verify,
            max_rounds,
            ..MigrateOptions::default()
        };
        if let Some(b) = bandwidth {
            opts.bandwidth_bytes_per_s = rate_arg(b, "bandwidth")?;
        }
        if let Some(d) = downtime {
            opts.downtime_target = duration_arg(d, "downtime")?;
        }
        if let Some(r) = dirty_rate {
            opts.dirty_rate_bytes_per_s = rate_arg(r, "dirty_rate")?;
        }
        let tracking = "explicit, kernel or auto";
        opts.dirty_tracking = choice_arg(
            "dirty_tracking",
            dirty_tracking,
            DirtyTracking::parse,
            tracking,
        )?;
        opts.io_timeout = timeout_arg(timeout, "timeout")?;
        opts.key = key_arg(key)?;
        opts.progress = Some(self.fresh_progress());
        if opts.hints != HintMode::Off {
            opts.hint_provider = Some(Arc::clone(&self.hints) as Arc<dyn HintProvider>);
        }
        opts.link = choice_arg("link", link, local_link, "'socketpair' or 'tcp'")?;
        opts.dest_backing = backing_arg(dest_backing)?;
        let runner = Arc::clone(&self.runner);
        let result = py
            .detach(|| match to {
                Some(addr) => send(addr, &runner, &opts).map(|r| {
                    PyMigrationResult::from_remote(&r, opts.hints, opts.skips_unpopulated())
                }),
                None => crate::machine::migrate_local(&runner, &opts).map(|report| {
                    let backend = report.result.dirty_backend.to_string();
                    PyMigrationResult::new(&report.summary(), backend, &report.result.per_round)
                }),
            })
            .map_err(|e| self.with_round(py, e.into()));
        // A failed migration has resumed the guest already; a finished one left it paused.
        if result.is_ok() && resume {
            GuestControl::resume(&*self.runner);
        }
        result
    }

    fn __repr__(&self) -> String {
        format!(
            "Guest({}: {} MiB, used {} MiB, stale free {} MiB, untouched {} MiB)",
            self.info.name,
            self.info.guest_bytes >> 20,
            self.info.used_bytes >> 20,
            self.info.stale_free_bytes >> 20,
            self.info.untouched_bytes >> 20
        )
    }
}

impl PyGuest {
    /// A `MigrationError` gets the round the source was in; other errors pass.
    fn with_round(&self, py: Python<'_>, e: PyErr) -> PyErr {
        if !e.is_instance_of::<MigrationError>(py) {
            return e;
        }
        let round = self.progress.round.load(Ordering::Relaxed);
        with_attrs(e, &[("round", Attr::U(round))])
    }

    /// Zeroes the shared progress counters for a new migration and hands them out.
    fn fresh_progress(&self) -> Arc<Progress> {
        let p = &self.progress;
        for c in [&p.round, &p.pages_done, &p.pages_total, &p.bytes_sent] {
            c.store(0, Ordering::Relaxed);
        }
        p.stop_and_copy.store(false, Ordering::Relaxed);
        Arc::clone(p)
    }
}

impl Drop for PyGuest {
    fn drop(&mut self) {
        self.runner.shutdown();
    }
}

/// The local link a name asks for (`"inprocess"` is the socketpair's old name).
fn local_link(name: &str) -> Option<LocalLink> {
    match name {
        "socketpair" | "inprocess" => Some(LocalLink::SocketPair),
        "tcp" => Some(LocalLink::Tcp),
        _ => None,
    }
}

/// The pre-shared key given as `key=` (bytes, at least 16).
fn key_arg(key: Option<&[u8]>) -> PyResult<Option<MigrationKey>> {
    key.map(MigrationKey::new)
        .transpose()
        .map_err(|e| config_err(format!("key: {e}")))
}

/// Receives one migration on `address` (`"0.0.0.0:4444"`) into fresh guest RAM of `size`
/// bytes; returns what the destination received. Any error discards the partial guest. With `key`,
/// only a source holding the same key is accepted; a non-loopback address needs a key or
/// `insecure=True`. `deadline` bounds the whole migration, in seconds.
#[pyfunction]
#[pyo3(signature = (address, size, *, backing = "memfd", timeout = 60.0, key = None, insecure = false, deadline = 3600.0))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of a Python function
pub fn listen_migration(
    py: Python<'_>,
    address: &str,
    size: &Bound<'_, PyAny>,
    backing: &str,
    timeout: f64,
    key: Option<&[u8]>,
    insecure: bool,
    deadline: f64,
) -> PyResult<PyDestReport> {
    let bytes = size_arg(size, "size")?;
    let backing = backing_arg(backing)?;
    let t = timeout_arg(timeout, "timeout")?;
    let deadline = timeout_arg(deadline, "deadline")?;
    let cfg = DestConfig {
        accept_timeout: t,
        io_timeout: t,
        key: key_arg(key)?,
        insecure,
        deadline,
        ..DestConfig::default()
    };
    let addr = address.to_string();
    let report = py.detach(|| listen(addr.as_str(), bytes, backing, cfg))?;
    Ok(PyDestReport::from(&report))
}
