//! `VhostUserBackend` and `VhostStatus`: the vhost-user balloon backend for Python (the
//! interface in VHOST_CONTRACT.md). Every call that can block runs with the GIL released.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::timeout_arg;
use super::errors::{config_err, BalloonError};
use crate::vhost_user::{VhostStatus, VhostUserBackend, VhostUserError, DEFAULT_FEATURES};

fn to_py(e: VhostUserError) -> PyErr {
    match e {
        VhostUserError::Argument(m) => config_err(m),
        VhostUserError::Os { op, source } => PyOSError::new_err((
            source.raw_os_error().unwrap_or(libc::EIO),
            format!("{op}: {source}"),
        )),
        other => BalloonError::new_err(other.to_string()),
    }
}

/// A vhost-user balloon backend serving frontends on a Unix socket.
#[pyclass(name = "VhostUserBackend", module = "vballoon")]
pub struct PyVhostUserBackend {
    inner: Mutex<Option<VhostUserBackend>>,
    queue_size: u16,
}

impl PyVhostUserBackend {
    fn lock(&self) -> MutexGuard<'_, Option<VhostUserBackend>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut VhostUserBackend) -> Result<T, VhostUserError> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        py.detach(|| match self.lock().as_mut() {
            Some(b) => f(b),
            None => Err(VhostUserError::Argument("the backend is closed".into())),
        })
        .map_err(to_py)
    }
}

#[pymethods]
impl PyVhostUserBackend {
    #[new]
    #[pyo3(signature = (socket, *, features=None, queue_size=256))]
    fn new(
        py: Python<'_>,
        socket: std::path::PathBuf,
        features: Option<Vec<String>>,
        queue_size: u32,
    ) -> PyResult<Self> {
        let qs = u16::try_from(queue_size)
            .map_err(|_| config_err(format!("queue_size {queue_size} is too large")))?;
        let names: Vec<String> =
            features.unwrap_or_else(|| DEFAULT_FEATURES.iter().map(|s| s.to_string()).collect());
        let b = py
            .detach(|| {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                VhostUserBackend::new(&socket, &refs, qs)
            })
            .map_err(to_py)?;
        Ok(PyVhostUserBackend {
            inner: Mutex::new(Some(b)),
            queue_size: qs,
        })
    }

    /// Changes the offered features (before the connected frontend negotiated).
    fn set_features(&self, py: Python<'_>, features: Vec<String>) -> PyResult<()> {
        let qs = self.queue_size;
        self.with(py, |b| {
            let refs: Vec<&str> = features.iter().map(String::as_str).collect();
            b.set_features(&refs, qs)
        })
    }

    /// Sets num_pages (4 KiB pages the guest should give up) and notifies the guest.
    fn set_target(&self, py: Python<'_>, pages: i64) -> PyResult<()> {
        let p = u32::try_from(pages)
            .map_err(|_| config_err(format!("target {pages} pages is not in 0..2**32")))?;
        self.with(py, |b| b.set_target(p))
    }

    /// Returns the held stats buffer to the guest (one poll); False if none is held.
    fn request_stats(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |b| b.request_stats())
    }

    /// The last stats sample from the guest, by Linux tag names.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let v = self.with(py, |b| Ok(b.stats()))?;
        let d = PyDict::new(py);
        for (k, val) in v {
            d.set_item(k, val)?;
        }
        Ok(d)
    }

    /// Free page hinting: a new command id (>= 2) in config, notified; returns it.
    fn start_hinting(&self, py: Python<'_>) -> PyResult<u32> {
        self.with(py, |b| b.start_hinting())
    }

    /// Writes VIRTIO_BALLOON_CMD_ID_DONE (1) into config and notifies.
    fn stop_hinting(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |b| b.stop_hinting())
    }

    /// A snapshot of the backend.
    fn status(&self, py: Python<'_>) -> PyResult<PyVhostStatus> {
        let st = self.with(py, |b| Ok(b.status()))?;
        Ok(PyVhostStatus::from(st))
    }

    /// Blocks (GIL released) until the condition holds or `timeout` seconds pass.
    #[pyo3(signature = (*, actual_pages=None, connected=None, timeout))]
    fn wait_for(
        &self,
        py: Python<'_>,
        actual_pages: Option<i64>,
        connected: Option<bool>,
        timeout: f64,
    ) -> PyResult<bool> {
        // Bounded like every other wait (a week at most): 1e300 s would be a hang, not a wait.
        let t = timeout_arg(timeout, "timeout")?;
        let a = actual_pages
            .map(u32::try_from)
            .transpose()
            .map_err(|_| config_err("actual_pages is not in 0..2**32"))?;
        // Not under `with`: the wait must not hold the lock close() needs.
        let view = self.lock().as_ref().map(|b| b.status_view());
        match view {
            Some(v) => Ok(py.detach(|| v.wait_for(a, connected, t))),
            None => Err(to_py(VhostUserError::Argument(
                "the backend is closed".into(),
            ))),
        }
    }

    /// Stops the threads, closes and unlinks the socket; idempotent.
    fn close(&self, py: Python<'_>) {
        let b = self.lock().take();
        py.detach(move || drop(b));
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
    ) -> bool {
        self.close(py);
        false
    }
}

/// A snapshot of a `VhostUserBackend`.
#[pyclass(name = "VhostStatus", module = "vballoon", frozen, get_all)]
pub struct PyVhostStatus {
    connected: bool,
    frontends_served: u64,
    negotiated_features: Vec<String>,
    driver_ok: bool,
    target_pages: u32,
    actual_pages: u32,
    inflated_pages: u64,
    pages_discarded: u64,
    discard_calls: u64,
    pages_reported: u64,
    pages_hinted: u64,
    hint_cmd_id: u32,
    hint_guest_cmd_id: u32,
    inflate_buffers: u64,
    deflate_buffers: u64,
    stats_updates: u64,
    ram_bytes: u64,
    ram_backed_bytes: u64,
    errors: Vec<String>,
}

impl From<VhostStatus> for PyVhostStatus {
    fn from(s: VhostStatus) -> Self {
        PyVhostStatus {
            connected: s.connected,
            frontends_served: s.frontends_served,
            negotiated_features: s
                .negotiated_features
                .iter()
                .map(|n| n.to_string())
                .collect(),
            driver_ok: s.driver_ok,
            target_pages: s.target_pages,
            actual_pages: s.actual_pages,
            inflated_pages: s.inflated_pages,
            pages_discarded: s.totals.pages_discarded,
            discard_calls: s.totals.discard_calls,
            pages_reported: s.totals.pages_reported,
            pages_hinted: s.totals.pages_hinted,
            hint_cmd_id: s.hint_cmd_id,
            hint_guest_cmd_id: s.hint_guest_cmd_id,
            inflate_buffers: s.totals.inflate_buffers,
            deflate_buffers: s.totals.deflate_buffers,
            stats_updates: s.totals.stats_updates,
            ram_bytes: s.ram_bytes,
            ram_backed_bytes: s.ram_backed_bytes,
            errors: s.errors,
        }
    }
}

#[pymethods]
impl PyVhostStatus {
    /// Every field as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("connected", self.connected)?;
        d.set_item("frontends_served", self.frontends_served)?;
        d.set_item("negotiated_features", self.negotiated_features.clone())?;
        d.set_item("driver_ok", self.driver_ok)?;
        d.set_item("target_pages", self.target_pages)?;
        d.set_item("actual_pages", self.actual_pages)?;
        d.set_item("inflated_pages", self.inflated_pages)?;
        d.set_item("pages_discarded", self.pages_discarded)?;
        d.set_item("discard_calls", self.discard_calls)?;
        d.set_item("pages_reported", self.pages_reported)?;
        d.set_item("pages_hinted", self.pages_hinted)?;
        d.set_item("hint_cmd_id", self.hint_cmd_id)?;
        d.set_item("hint_guest_cmd_id", self.hint_guest_cmd_id)?;
        d.set_item("inflate_buffers", self.inflate_buffers)?;
        d.set_item("deflate_buffers", self.deflate_buffers)?;
        d.set_item("stats_updates", self.stats_updates)?;
        d.set_item("ram_bytes", self.ram_bytes)?;
        d.set_item("ram_backed_bytes", self.ram_backed_bytes)?;
        d.set_item("errors", self.errors.clone())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "VhostStatus(connected={}, driver_ok={}, target_pages={}, actual_pages={}, \
             inflated_pages={}, pages_discarded={})",
            self.connected,
            self.driver_ok,
            self.target_pages,
            self.actual_pages,
            self.inflated_pages,
            self.pages_discarded
        )
    }
}
