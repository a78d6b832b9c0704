//! `VhostUserBackend` and `VhostStatus`: the vhost-user balloon backend for Python (the
//! interface in VHOST_CONTRACT.md). Every call that can block runs with the GIL released.

use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::PyClassInitializer;

use super::closeable::{closeable, PyCloseable};
use super::convert::timeout_arg;
use super::errors::{config_err, BalloonError};
use super::records::record;
use super::stats::PyGuestStats;
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
#[pyclass(name = "VhostUserBackend", module = "vballoon", frozen, extends = PyCloseable)]
pub struct PyVhostUserBackend {
    inner: Mutex<Option<VhostUserBackend>>,
    queue_size: u16,
}

impl PyVhostUserBackend {
    fn lock(&self) -> MutexGuard<'_, Option<VhostUserBackend>> {
        crate::util::lock(&self.inner)
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
    ) -> PyResult<PyClassInitializer<Self>> {
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
        Ok(closeable(PyVhostUserBackend {
            inner: Mutex::new(Some(b)),
            queue_size: qs,
        }))
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

    /// The last stats sample from the guest.
    fn stats(&self, py: Python<'_>) -> PyResult<PyGuestStats> {
        let v = self.with(py, |b| Ok(b.stats()))?;
        Ok(PyGuestStats::from_names(v))
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
}

record! {
    /// A snapshot of a `VhostUserBackend`.
    pub struct PyVhostStatus as "VhostStatus" {
        /// Whether a frontend is connected.
        connected: bool,
        /// Frontends served so far (this one included).
        frontends_served: u64,
        /// Features the connected guest negotiated, by name.
        negotiated_features: Vec<String>,
        /// Whether the guest's driver set DRIVER_OK.
        driver_ok: bool,
        /// num_pages: the balloon target, 4 KiB pages.
        target_pages: u32,
        /// actual: the balloon size the guest reports, pages.
        actual_pages: u32,
        /// Pages in the balloon as the device counts them.
        inflated_pages: u64,
        /// Pages given back to the host.
        pages_discarded: u64,
        /// Discard calls made.
        discard_calls: u64,
        /// Pages the guest reported free (free page reporting).
        pages_reported: u64,
        /// Pages the guest hinted free (free page hinting).
        pages_hinted: u64,
        /// The host's free page hint command id.
        hint_cmd_id: u32,
        /// The last command id the guest sent back.
        hint_guest_cmd_id: u32,
        /// Inflate buffers received.
        inflate_buffers: u64,
        /// Deflate buffers received.
        deflate_buffers: u64,
        /// Stats buffers received.
        stats_updates: u64,
        /// Guest RAM the frontend shared, bytes.
        ram_bytes: u64,
        /// Of it, bytes backed on the host.
        ram_backed_bytes: u64,
        /// Errors the device logged (bounded, oldest dropped).
        errors: Vec<String>,
    }
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
