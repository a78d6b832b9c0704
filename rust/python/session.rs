//! A balloon session (guest, driver, device, queues) and the inflate benchmark, for scripts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{size_arg, timeout_arg};
use super::errors::config_err;
use super::memory::PyGuestMemory;
use super::pages::PyPageSet;
use super::progress::PyBenchProgress;
use crate::abi::stat_name;
use crate::bench::{bench_inflate, Fragmentation, InflateBenchConfig};
use crate::device::DiscardPolicy;
use crate::guest::{Fill, Workload};
use crate::machine::{parse_abi, InflateReport, MachineConfig, RunMode, Session};
use crate::memory::{Backing, PAGE_SIZE};
use crate::pages::Encoding;

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| config_err(format!("{what}: {e}")))
}

/// One balloon move, measured: where the time went and what it cost.
#[pyclass(name = "InflateReport", module = "vballoon", frozen, get_all)]
pub struct PyInflateReport {
    /// `"settled"` or `"stuck"` (the guest had no more pages to give).
    outcome: String,
    /// Balloon target, pages.
    target_pages: u64,
    /// Balloon size before and after, pages.
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
    /// Resident bytes of guest RAM before and after.
    resident_before: u64,
    /// Resident bytes of guest RAM after.
    resident_after: u64,
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

#[pymethods]
impl PyInflateReport {
    /// The report as a plain dict (for JSON), keyed by the attribute names.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("outcome", &self.outcome)?;
        for (k, v) in [
            ("target_pages", self.target_pages),
            ("start_pages", self.start_pages),
            ("end_pages", self.end_pages),
            ("pages_inflated", self.pages_inflated),
            ("pages_deflated", self.pages_deflated),
            ("buffers", self.buffers),
            ("kicks", self.kicks),
            ("interrupts", self.interrupts),
            ("discard_calls", self.discard_calls),
            ("bad_buffers", self.bad_buffers),
            ("resident_before", self.resident_before),
            ("resident_after", self.resident_after),
        ] {
            d.set_item(k, v)?;
        }
        for (k, v) in [
            ("total_secs", self.total_secs),
            ("alloc_secs", self.alloc_secs),
            ("encode_send_secs", self.encode_send_secs),
            ("decode_secs", self.decode_secs),
            ("discard_secs", self.discard_secs),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "InflateReport(outcome={:?}, pages {}→{}, {:.1} ms: alloc {:.1}, encode+send {:.1}, \
             decode {:.1}, discard {:.1}; {} buffers, {} kicks, {} discard calls)",
            self.outcome,
            self.start_pages,
            self.end_pages,
            self.total_secs * 1e3,
            self.alloc_secs * 1e3,
            self.encode_send_secs * 1e3,
            self.decode_secs * 1e3,
            self.discard_secs * 1e3,
            self.buffers,
            self.kicks,
            self.discard_calls
        )
    }
}

struct State {
    session: Session,
    workload: Workload,
}

/// A guest with a balloon: guest RAM, the guest's page allocator and balloon driver, the host's
/// balloon device, and the virtqueues between them.
#[pyclass(name = "Session", module = "vballoon", frozen)]
pub struct PySession {
    state: Mutex<Option<State>>,
    memory: Py<PyGuestMemory>,
}

impl PySession {
    fn lock(&self) -> PyResult<MutexGuard<'_, Option<State>>> {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(config_err("the session is closed"));
        }
        Ok(guard)
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
        abi = "vballoon", discard = "coalesced", queue_size = 256, must_tell_host = true,
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
    ) -> PyResult<Self> {
        let mut cfg = MachineConfig::default();
        if let Some(size) = guest_size {
            cfg.guest_bytes = size_arg(size, "guest_size")?;
        }
        cfg.encoding = parse::<Encoding>("encoding", encoding)?;
        cfg.backing = Backing::parse(backing).ok_or_else(|| {
            config_err(format!(
                "backing must be {}, not {backing:?}",
                super::huge::BACKINGS
            ))
        })?;
        cfg.mode = parse::<RunMode>("mode", mode)?;
        cfg.abi = parse_abi(abi)?;
        cfg.discard = parse::<DiscardPolicy>("discard", discard)?;
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
        Ok(PySession {
            state: Mutex::new(Some(State { session, workload })),
            memory,
        })
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
    #[pyo3(signature = (timeout = 60.0))]
    fn run_until_settled(&self, py: Python<'_>, timeout: f64) -> PyResult<PyInflateReport> {
        let t = timeout_arg(timeout, "timeout")?;
        let report = py.detach(|| self.with(|s| s.session.run_until_settled(t)))?;
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

    /// The guest's statistics as the host last received them over the stats queue
    /// (`{"free-memory": bytes, ...}`), after asking for a fresh sample; None without STATS_VQ.
    #[pyo3(signature = (timeout = 5.0))]
    fn stats<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let t = timeout_arg(timeout, "timeout")?;
        let sample = py.detach(|| self.with(|s| s.session.stats(t)))?;
        let Some(sample) = sample else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        for (tag, value) in &sample.values {
            match stat_name(*tag) {
                Some(name) => d.set_item(name, value)?,
                None => d.set_item(format!("tag-{tag}"), value)?,
            }
        }
        Ok(Some(d))
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
    fn device_counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.with(|s| Ok(s.session.device_counters()))?;
        let d = PyDict::new(py);
        for (k, v) in c.fields() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Errors the device logged for refused guest buffers.
    fn device_errors(&self) -> PyResult<Vec<String>> {
        self.with(|s| Ok(s.session.device_errors()))
    }

    /// Stops the device thread (threaded mode) and releases the session.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut state) = state {
            py.detach(|| state.session.stop())?;
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
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

/// Inflates `inflate` of a `guest`-sized guest whose pages were all touched, then deflates, for
/// each variant, interleaved over `rounds`, with the floors measured in the same run. Returns
/// `{"rows": [...], "floor_secs": ..., ...}`.
#[pyfunction]
#[pyo3(signature = (guest = None, inflate = None, *, rounds = 3, fragmentation = None, mode = "sync", backing = "anonymous", progress = None))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of a Python function
pub fn bench_inflate_table<'py>(
    py: Python<'py>,
    guest: Option<&Bound<'_, PyAny>>,
    inflate: Option<&Bound<'_, PyAny>>,
    rounds: usize,
    fragmentation: Option<f64>,
    mode: &str,
    backing: &str,
    progress: Option<PyRef<'_, PyBenchProgress>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut cfg = InflateBenchConfig {
        progress: progress.map(|p| Arc::clone(&p.inner)),
        ..InflateBenchConfig::default()
    };
    if let Some(g) = guest {
        cfg.guest_bytes = size_arg(g, "guest")?;
    }
    cfg.inflate_bytes = match inflate {
        Some(i) => size_arg(i, "inflate")?,
        None => cfg.guest_bytes / 8 * 7,
    };
    cfg.rounds = rounds.max(1);
    cfg.mode = parse::<RunMode>("mode", mode)?;
    cfg.backing = Backing::parse(backing)
        .ok_or_else(|| config_err("backing: anonymous, memfd, thp or hugetlb"))?;
    if let Some(knob) = fragmentation {
        cfg.fragmentation = Some(Fragmentation {
            knob,
            free_share: 0.5,
            seed: 7,
        });
    }
    let table = py.detach(|| bench_inflate(&cfg))?;
    let out = PyDict::new(py);
    out.set_item("guest_bytes", table.guest_bytes)?;
    out.set_item("inflate_bytes", table.inflate_bytes)?;
    out.set_item("rounds", table.rounds)?;
    out.set_item("floor_secs", table.floor_secs)?;
    out.set_item("populate_secs", table.populate_secs)?;
    out.set_item("fragmentation", fragmentation)?;
    out.set_item("text", table.to_string())?;
    let rows = table
        .rows
        .iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("name", &r.name)?;
            d.set_item("encoding", r.encoding.map(|e| e.name()))?;
            d.set_item("discard", r.discard.name())?;
            d.set_item("samples", r.samples)?;
            d.set_item("inflate_secs", r.inflate_secs)?;
            d.set_item("min_secs", r.min_secs)?;
            d.set_item("max_secs", r.max_secs)?;
            d.set_item("deflate_secs", r.deflate_secs)?;
            d.set_item("alloc_secs", r.alloc_secs)?;
            d.set_item("encode_send_secs", r.encode_send_secs)?;
            d.set_item("decode_secs", r.decode_secs)?;
            d.set_item("discard_secs", r.discard_secs)?;
            d.set_item("buffers", r.buffers)?;
            d.set_item("kicks", r.kicks)?;
            d.set_item("discard_calls", r.discard_calls)?;
            d.set_item("pages", r.pages)?;
            d.set_item("rss_drop_bytes", r.rss_drop_bytes)?;
            d.set_item("ratio_to_pfn", r.ratio_to_pfn)?;
            d.set_item("ratio_to_floor", r.ratio_to_floor)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    out.set_item("rows", rows)?;
    Ok(out)
}
