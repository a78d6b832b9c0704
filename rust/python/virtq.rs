//! A connected virtqueue pair for scripting: driver and device ends, and the ring pump.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::opt_timeout_arg;
use super::errors::config_err;
use super::memory::PyGuestMemory;
use super::records::record;
use super::results::PyPumpResult;
use crate::bench::{pump_buffers, PumpConfig};
use crate::memory::GuestAddress;
use crate::util::lock;
use crate::virtq::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtq::{
    pair_with, DescriptorChain, DeviceQueue, DriverQueue, NotifyMode, PairConfig, QueueLayout,
    Segment,
};

fn segments(readable: Vec<(u64, u32)>, writable: Vec<(u64, u32)>) -> Vec<Segment> {
    let r = readable
        .into_iter()
        .map(|(a, l)| Segment::readable(GuestAddress(a), l));
    let w = writable
        .into_iter()
        .map(|(a, l)| Segment::writable(GuestAddress(a), l));
    r.chain(w).collect()
}

record! {
    /// Where a queue's three parts sit in guest memory.
    pub struct PyQueueLayout as "QueueLayout" {
        /// Queue size.
        size: u16,
        /// Guest address of the descriptor table.
        desc_table: u64,
        /// Guest address of the available ring.
        avail_ring: u64,
        /// Guest address of the used ring.
        used_ring: u64,
    }
}

impl From<&QueueLayout> for PyQueueLayout {
    fn from(l: &QueueLayout) -> Self {
        PyQueueLayout {
            size: l.size(),
            desc_table: l.desc_table().raw(),
            avail_ring: l.avail_ring().raw(),
            used_ring: l.used_ring().raw(),
        }
    }
}

/// The guest's end of a virtqueue.
#[pyclass(name = "VirtqDriver", module = "vballoon", frozen)]
pub struct PyVirtqDriver {
    inner: Mutex<DriverQueue>,
}

#[pymethods]
impl PyVirtqDriver {
    /// Publishes a chain (device-readable segments, then device-writable ones); returns its head.
    #[pyo3(signature = (readable = Vec::new(), writable = Vec::new()))]
    fn add(&self, readable: Vec<(u64, u32)>, writable: Vec<(u64, u32)>) -> PyResult<u16> {
        Ok(lock(&self.inner).add(&segments(readable, writable))?)
    }

    /// Notifies the device if it asked to be notified; returns whether it did.
    fn kick(&self) -> PyResult<bool> {
        Ok(lock(&self.inner).kick()?)
    }

    /// Reclaims one used chain: `(head, length written)`, or None.
    fn pop_used(&self) -> PyResult<Option<(u16, u32)>> {
        Ok(lock(&self.inner).pop_used()?.map(|u| (u.head, u.len)))
    }

    /// Asks the device for interrupts; returns whether used buffers are already pending.
    fn enable_interrupts(&self) -> PyResult<bool> {
        Ok(lock(&self.inner).enable_interrupts()?)
    }

    /// Asks the device not to interrupt.
    fn disable_interrupts(&self) -> PyResult<()> {
        Ok(lock(&self.inner).disable_interrupts()?)
    }

    /// Waits up to `timeout` seconds for an interrupt; returns how many were taken (0: timeout).
    #[pyo3(signature = (timeout = None))]
    fn wait_interrupt(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        let t = opt_timeout_arg(timeout, "timeout")?;
        let notifier = lock(&self.inner).interrupt_notifier().clone();
        Ok(py.detach(|| notifier.wait(t))?)
    }

    /// Free descriptors.
    #[getter]
    fn num_free(&self) -> u16 {
        lock(&self.inner).num_free()
    }

    /// Where the rings are.
    #[getter]
    fn layout(&self) -> PyQueueLayout {
        PyQueueLayout::from(lock(&self.inner).layout())
    }
}

/// One validated descriptor chain, as the device popped it.
#[pyclass(name = "Chain", module = "vballoon", frozen)]
pub struct PyChain {
    chain: DescriptorChain,
    device: Py<PyVirtqDevice>,
}

#[pymethods]
impl PyChain {
    /// Head descriptor index (the id for `add_used`).
    #[getter]
    fn head(&self) -> u16 {
        self.chain.head()
    }

    /// `(addr, length, writable)` for each buffer, in chain order.
    #[getter]
    fn segments(&self) -> Vec<(u64, u32, bool)> {
        self.chain
            .segments()
            .iter()
            .map(|s| (s.addr.raw(), s.len, s.writable))
            .collect()
    }

    /// All device-readable bytes, concatenated.
    fn read<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let dev = self.device.get();
        let mem = Arc::clone(lock(&dev.inner).mem());
        Ok(PyBytes::new(py, &self.chain.read_all(&mem)?))
    }

    /// Writes `data` across the device-writable buffers; returns bytes written.
    fn write(&self, data: &[u8]) -> PyResult<u32> {
        let dev = self.device.get();
        let mem = Arc::clone(lock(&dev.inner).mem());
        Ok(self.chain.write_all(&mem, data)?)
    }

    fn __repr__(&self) -> String {
        format!(
            "Chain(head={}, segments={:?})",
            self.chain.head(),
            self.segments()
        )
    }
}

/// The VMM's end of a virtqueue: treats everything the guest wrote as hostile.
#[pyclass(name = "VirtqDevice", module = "vballoon", frozen)]
pub struct PyVirtqDevice {
    inner: Mutex<DeviceQueue>,
}

#[pymethods]
impl PyVirtqDevice {
    /// Pops the next validated chain, or None. A protocol violation raises `VirtqueueError` and
    /// marks the queue as needing reset.
    fn pop(slf: &Bound<'_, Self>) -> PyResult<Option<PyChain>> {
        let chain = lock(&slf.get().inner).pop()?;
        Ok(chain.map(|chain| PyChain {
            chain,
            device: slf.clone().unbind(),
        }))
    }

    /// Returns a chain to the driver with `length` bytes written.
    #[pyo3(signature = (head, length = 0))]
    fn add_used(&self, head: u16, length: u32) -> PyResult<()> {
        Ok(lock(&self.inner).add_used(head, length)?)
    }

    /// Interrupts the driver if it asked for it; returns whether it did.
    fn signal_used(&self) -> PyResult<bool> {
        Ok(lock(&self.inner).signal_used()?)
    }

    /// Whether the driver wants an interrupt now.
    fn needs_interrupt(&self) -> PyResult<bool> {
        Ok(lock(&self.inner).needs_interrupt()?)
    }

    /// Asks for kicks; returns whether buffers arrived meanwhile.
    fn enable_notifications(&self) -> PyResult<bool> {
        Ok(lock(&self.inner).enable_notifications()?)
    }

    /// Asks the driver not to kick.
    fn disable_notifications(&self) -> PyResult<()> {
        Ok(lock(&self.inner).disable_notifications()?)
    }

    /// Waits up to `timeout` seconds for a kick; returns how many were taken (0: timeout).
    #[pyo3(signature = (timeout = None))]
    fn wait_kick(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        let t = opt_timeout_arg(timeout, "timeout")?;
        let notifier = lock(&self.inner).kick_notifier().clone();
        Ok(py.detach(|| notifier.wait(t))?)
    }

    /// Whether a protocol violation put the queue in DEVICE_NEEDS_RESET.
    #[getter]
    fn needs_reset(&self) -> bool {
        lock(&self.inner).needs_reset()
    }

    /// Clears the queue state (after a guest reset).
    fn reset(&self) {
        lock(&self.inner).reset()
    }

    /// Where the rings are.
    #[getter]
    fn layout(&self) -> PyQueueLayout {
        PyQueueLayout::from(lock(&self.inner).layout())
    }
}

fn features(event_idx: bool, indirect: bool) -> u64 {
    let mut f = feature(VIRTIO_F_VERSION_1);
    if event_idx {
        f |= feature(VIRTIO_F_EVENT_IDX);
    }
    if indirect {
        f |= feature(VIRTIO_F_INDIRECT_DESC);
    }
    f
}

/// Lays out a split virtqueue at `base` in `memory` and returns its connected driver and device.
#[pyfunction]
#[pyo3(signature = (memory, base = 0, size = 256, *, event_idx = false, indirect = false, notify = "polling"))]
pub fn virtqueue_pair(
    memory: &PyGuestMemory,
    base: u64,
    size: u16,
    event_idx: bool,
    indirect: bool,
    notify: &str,
) -> PyResult<(PyVirtqDriver, PyVirtqDevice)> {
    let mut cfg = PairConfig::new(GuestAddress(base), size, features(event_idx, indirect));
    cfg.notify = match notify {
        "polling" => NotifyMode::Polling,
        "eventfd" => NotifyMode::EventFd,
        other => {
            return Err(config_err(format!(
                "notify must be 'polling' or 'eventfd', not {other:?}"
            )))
        }
    };
    let (drv, dev) = pair_with(Arc::clone(&memory.inner), &cfg)?;
    Ok((
        PyVirtqDriver {
            inner: Mutex::new(drv),
        },
        PyVirtqDevice {
            inner: Mutex::new(dev),
        },
    ))
}

/// Sends `buffers` chains through a fresh queue pair at address 0 of `memory`; returns what
/// it measured.
#[pyfunction]
#[pyo3(signature = (memory, buffers = 1_000_000, *, segments = 1, queue_size = 256, threaded = false, event_idx = true, indirect = false))]
#[allow(clippy::too_many_arguments)]
pub fn pump_queue(
    py: Python<'_>,
    memory: &PyGuestMemory,
    buffers: u64,
    segments: u16,
    queue_size: u16,
    threaded: bool,
    event_idx: bool,
    indirect: bool,
) -> PyResult<PyPumpResult> {
    let cfg = PumpConfig {
        buffers,
        segments,
        queue_size,
        threaded,
        event_idx,
        indirect,
    };
    let mem = Arc::clone(&memory.inner);
    let r = py.detach(|| pump_buffers(mem, cfg))?;
    Ok(PyPumpResult::from(&r))
}
