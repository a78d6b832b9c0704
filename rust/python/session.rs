//! A balloon session (guest, driver, device, queues) for scripts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::PyClassInitializer;

use super::closeable::{closeable, PyCloseable};
use super::convert::{backing_arg, name_arg, size_arg, timeout_arg};
use super::errors::{config_err, BalloonTimeout};
use super::memory::PyGuestMemory;
use super::pages::PyPageSet;
use super::records::record;
use super::results::PyDeviceCounters;
use super::stats::PyGuestStats;
use crate::device::DiscardPolicy;
use crate::guest::{Fill, Workload};
use crate::machine::{parse_abi, InflateReport, MachineConfig, RunMode, Session};
use crate::memory::PAGE_SIZE;
use crate::pages::Encoding;

record! {
    /// One balloon move, measured: where the time went and what it cost.
    pub struct PyInflateReport as "InflateReport" {
        /// `"settled"` or `"stuck"` (the guest had no more pages to give).
        outcome: String,
        /// Balloon target, pages.
        target_pages: u64,
        /// Balloon size before, pages.
        start_pages: u64,
        /// Balloon size after, pages.
        end_pages: u64,
        /// Pages put into the balloon.
        pages_inflated: u64,
        /// Pages taken out of the balloon.
        pages_deflated: u64,
        /// Wall time, seconds.
        total_secs: f64,
        /// Guest: taking pages from its allocator.
        alloc_secs: f64,
        /// Guest: encoding and sending (copy into buffers, add, kick).
        encode_send_secs: f64,
        /// Host: reading and decoding messages.
        decode_secs: f64,
        /// Host: discard calls.
        discard_secs: f64,
        /// Buffers sent.
        buffers: u64,
        /// Kicks sent.
        kicks: u64,
        /// Interrupts taken.
        interrupts: u64,
        /// Discard calls the host made.
        discard_calls: u64,
        /// Buffers the host refused.
        bad_buffers: u64,
        /// Resident bytes of guest RAM before.
        resident_before: u64,
        /// Resident bytes of guest RAM after.
        resident_after: u64,
    }
}

impl From<&InflateReport> for PyInflateReport {
    fn from(r: &InflateReport) -> Self {
        PyInflateReport {
            outcome: format!("{:?}", r.outcome).to_lowercase(),
            target_pages: r.target_pages,
            start_pages: r.start_pages,
            end_pages: r.end_pages,
            pages_inflated: r.pages_inflated,
            pages_deflated: r.pages_deflated,
            total_secs: r.total_secs,
            alloc_secs: r.alloc_secs,
            encode_send_secs: r.encode_send_secs,
            decode_secs: r.decode_secs,
            discard_secs: r.discard_secs,
            buffers: r.buffers,
            kicks: r.kicks,
            interrupts: r.interrupts,
            discard_calls: r.discard_calls,
            bad_buffers: r.bad_buffers,
            resident_before: r.resident_before * PAGE_SIZE,
            resident_after: r.resident_after * PAGE_SIZE,
        }
    }
}

struct State {
    session: Session,
    workload: Workload,
}

/// A guest with a balloon: guest RAM, the guest's page allocator and balloon driver, the host's
/// balloon device, and the virtqueues between them.
#[pyclass(name = "Session", module = "vballoon", frozen, extends = PyCloseable)]
pub struct PySession {
    state: Mutex<Option<State>>,
    memory: Py<PyGuestMemory>,
}

impl PySession {
    fn lock(&self) -> PyResult<MutexGuard<'_, Option<State>>> {
        let guard = crate::util::lock(&self.state);
        if guard.is_none() {
            return Err(config_err("the session is closed"));
        }
        Ok(guard)
    }

    /// A `BalloonTimeout` gets the balloon's target and actual size; other errors pass.
    fn with_balloon_size(&self, py: Python<'_>, e: PyErr) -> PyErr {
        if !e.is_instance_of::<BalloonTimeout>(py) {
            return e;
        }
        match self.with(|s| Ok((s.session.target_pages(), s.session.actual()))) {
            Ok((target, actual)) => super::errors::with_attrs(
                e,
                &[
                    ("target_pages", super::errors::Attr::U(target)),
                    ("actual_pages", super::errors::Attr::U(actual)),
                ],
            ),
            Err(_) => e,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> crate::error::Result<R>) -> PyResult<R> {
        let mut guard = self.lock()?;
        let state = guard
            .as_mut()
            .ok_or_else(|| config_err("the session is closed"))?;
        Ok(f(state)?)
    }
}

#[pymethods]
impl PySession {
    #[new]
    #[pyo3(signature = (
        guest_size = None, *, encoding = "bitmap", backing = "anonymous", mode = "sync",
        abi = "vballoon", discard = "coalesced", queue_size = 128, must_tell_host = true,
        deflate_on_oom = false, stats = true, alloc_order = 0, seed = 1
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        guest_size: Option<&Bound<'_, PyAny>>,
        encoding: &str,
        backing: &str,
        mode: &str,
        abi: &str,
        discard: &str,
        queue_size: u16,
        must_tell_host: bool,
        deflate_on_oom: bool,
        stats: bool,
        alloc_order: u8,
        seed: u64,
    ) -> PyResult<PyClassInitializer<Self>> {
        let mut cfg = MachineConfig::default();
        if let Some(size) = guest_size {
            cfg.guest_bytes = size_arg(size, "guest_size")?;
        }
        cfg.encoding = name_arg::<Encoding>("encoding", encoding)?;
        cfg.backing = backing_arg(backing)?;
        cfg.mode = name_arg::<RunMode>("mode", mode)?;
        cfg.abi = parse_abi(abi)?;
        cfg.discard = name_arg::<DiscardPolicy>("discard", discard)?;
        cfg.queue_size = queue_size;
        cfg.must_tell_host = must_tell_host;
        cfg.deflate_on_oom = deflate_on_oom;
        cfg.stats = stats;
        cfg.alloc_order = alloc_order;
        let session = py.detach(|| Session::new(cfg))?;
        let memory = Py::new(
            py,
            PyGuestMemory {
                inner: Arc::clone(session.memory()),
            },
        )?;
        let workload = Workload::new(seed).with_fill(Fill::Random);
        Ok(closeable(PySession {
            state: Mutex::new(Some(State { session, workload })),
            memory,
        }))
    }

    /// The guest's RAM (shared with the session).
    #[getter]
    fn memory(&self, py: Python<'_>) -> Py<PyGuestMemory> {
        self.memory.clone_ref(py)
    }

    /// Asks the guest to move the balloon to `size` (bytes, or a string such as `"6GiB"`).
    fn set_target(&self, size: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = size_arg(size, "size")?;
        self.with(|s| s.session.set_target_bytes(bytes))
    }

    /// Asks the guest to move the balloon to `pages` 4 KiB pages.
    fn set_target_pages(&self, pages: u64) -> PyResult<()> {
        self.with(|s| s.session.set_target_pages(pages))
    }

    /// Runs driver and device until the balloon reaches its target (or the guest is stuck).
    /// Raises `BalloonTimeout` (with `target_pages` and `actual_pages`) after `timeout` s.
    #[pyo3(signature = (timeout = 60.0))]
    fn run_until_settled(&self, py: Python<'_>, timeout: f64) -> PyResult<PyInflateReport> {
        let t = timeout_arg(timeout, "timeout")?;
        let report = py
            .detach(|| self.with(|s| s.session.run_until_settled(t)))
            .map_err(|e| self.with_balloon_size(py, e))?;
        Ok(PyInflateReport::from(&report))
    }

    /// Balloon target, pages.
    #[getter]
    fn target_pages(&self) -> PyResult<u64> {
        self.with(|s| Ok(s.session.target_pages()))
    }

    /// Balloon size the guest reports (`actual`), pages.
    #[getter]
    fn actual_pages(&self) -> PyResult<u64> {
        self.with(|s| Ok(s.session.actual()))
    }

    /// The pages in the balloon, as the host sees them.
    fn balloon_pages(&self) -> PyResult<PyPageSet> {
        self.with(|s| Ok(PyPageSet::wrap(s.session.balloon_set())))
    }

    /// Resident bytes of guest RAM (mincore).
    fn resident_bytes(&self) -> PyResult<u64> {
        self.with(|s| Ok(s.session.resident_pages()? * PAGE_SIZE))
    }

    /// The guest's statistics as the host last received them over the stats queue, after
    /// asking for a fresh sample; None without STATS_VQ.
    #[pyo3(signature = (timeout = 5.0))]
    fn stats(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<PyGuestStats>> {
        let t = timeout_arg(timeout, "timeout")?;
        let sample = py.detach(|| self.with(|s| s.session.stats(t)))?;
        Ok(sample.map(|s| PyGuestStats::from_tags(s.values.iter().map(|(t, v)| (*t, *v)))))
    }

    /// The guest allocates and fills `size` bytes (random data) and keeps them: the guest's
    /// "used" memory. Returns the pages allocated.
    #[pyo3(signature = (size, order = 0))]
    fn guest_fill(&self, py: Python<'_>, size: &Bound<'_, PyAny>, order: u8) -> PyResult<u64> {
        let bytes = size_arg(size, "size")?;
        py.detach(|| self.with(|s| Ok(s.workload.allocate(s.session.guest_mut(), bytes, order)?)))
    }

    /// The guest frees `share` (0..1) of what `guest_fill` allocated; freed pages keep their
    /// stale data. Returns the pages freed.
    fn guest_free(&self, share: f64) -> PyResult<u64> {
        self.with(|s| Ok(s.workload.free_share(s.session.guest_mut(), share)?))
    }

    /// Allocates one block of `2^order` pages as the guest's allocator would; with
    /// DEFLATE_ON_OOM, deflates the balloon first when memory is exhausted. Returns the PFN.
    #[pyo3(signature = (order = 0, timeout = 10.0))]
    fn guest_alloc(&self, order: u8, timeout: f64) -> PyResult<u64> {
        let t = timeout_arg(timeout, "timeout")?;
        self.with(|s| Ok(s.session.guest_alloc(order, t)?.0))
    }

    /// Checksums of the pages the workload holds: `{pfn: checksum}`.
    fn guest_checksums(&self) -> PyResult<BTreeMap<u64, u64>> {
        self.with(|s| {
            Ok(s.workload
                .checksums(s.session.guest())?
                .into_iter()
                .map(|(p, c)| (p.0, c))
                .collect())
        })
    }

    /// Free memory the guest's allocator has, bytes.
    #[getter]
    fn guest_free_bytes(&self) -> PyResult<u64> {
        self.with(|s| Ok(s.session.guest().allocator().free_pages() * PAGE_SIZE))
    }

    /// The device's counters (buffers, pages, discard calls, errors, ...).
    fn device_counters(&self) -> PyResult<PyDeviceCounters> {
        self.with(|s| Ok(PyDeviceCounters::from(&s.session.device_counters())))
    }

    /// Errors the device logged for refused guest buffers.
    fn device_errors(&self) -> PyResult<Vec<String>> {
        self.with(|s| Ok(s.session.device_errors()))
    }

    /// Stops the device thread (threaded mode) and releases the session.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let state = crate::util::lock(&self.state).take();
        if let Some(mut state) = state {
            py.detach(|| state.session.stop())?;
        }
        Ok(())
    }

    /// Whether `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        crate::util::lock(&self.state).is_none()
    }

    fn __repr__(&self) -> String {
        match crate::util::lock(&self.state).as_ref() {
            None => "Session(closed)".into(),
            Some(s) => {
                let c = s.session.config();
                format!(
                    "Session(guest={} MiB, encoding={}, mode={}, balloon={} pages)",
                    c.guest_bytes >> 20,
                    c.encoding.name(),
                    c.mode,
                    s.session.actual()
                )
            }
        }
    }
}
