//! `GuestMemory` and zero-copy views of it for Python.

use std::ffi::c_int;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffer::{fill_view, release_view};
use super::convert::{backing_arg, size_arg};
use super::errors::config_err;
use super::results::PyHugePageStats;
use crate::memory::{self, GuestAddress, GuestMemory};

/// Largest `read` (it copies into a new bytes object): 1 GiB; `view` has no limit.
const MAX_READ: usize = 1 << 30;

/// The guest's RAM: one mmap'd region, guest-physical address 0 at its start.
#[pyclass(name = "GuestMemory", module = "vballoon", frozen)]
pub struct PyGuestMemory {
    pub(crate) inner: Arc<GuestMemory>,
}

#[pymethods]
impl PyGuestMemory {
    #[new]
    #[pyo3(signature = (size, backing = "anonymous"))]
    fn new(py: Python<'_>, size: &Bound<'_, PyAny>, backing: &str) -> PyResult<Self> {
        let size = size_arg(size, "size")?;
        let backing = backing_arg(backing)?;
        let mem = py.detach(|| GuestMemory::new(size, backing))?;
        Ok(PyGuestMemory {
            inner: Arc::new(mem),
        })
    }

    /// Maps an existing memfd (for example one inherited from another process) as guest RAM.
    #[staticmethod]
    fn from_memfd(fd: i32, size: &Bound<'_, PyAny>) -> PyResult<Self> {
        let size = size_arg(size, "size")?;
        if fd < 0 {
            return Err(config_err(format!(
                "fd must be a valid file descriptor, not {fd}"
            )));
        }
        // SAFETY: we only borrow the caller's descriptor long enough to duplicate it.
        let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| config_err(format!("cannot duplicate fd {fd}: {e}")))?;
        Ok(PyGuestMemory {
            inner: Arc::new(GuestMemory::from_memfd(owned, size)?),
        })
    }

    /// Size of guest RAM in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }

    /// Number of 4 KiB pages.
    #[getter]
    fn pages(&self) -> u64 {
        self.inner.pages()
    }

    /// `"anonymous"` or `"memfd"`.
    #[getter]
    fn backing(&self) -> &'static str {
        self.inner.backing().name()
    }

    /// Host page size the device gives memory back in: 2 MiB for "thp" and "hugetlb".
    #[getter]
    fn host_page_size(&self) -> u64 {
        self.inner.host_page_size()
    }

    /// How much of guest RAM is resident and on huge pages (smaps; hugetlb pool and memfd).
    fn huge_page_stats(&self) -> PyResult<PyHugePageStats> {
        Ok(PyHugePageStats::from(&self.inner.huge_page_stats()?))
    }

    /// The memfd behind memfd-backed RAM, else None. Borrowed: the GuestMemory owns and closes
    /// it (`os.dup` it to keep it); it is sealed against shrinking (`F_SEAL_SHRINK`), so an
    /// `ftruncate` of it fails instead of crashing guest access.
    #[getter]
    fn memfd(&self) -> Option<i32> {
        self.inner.memfd()
    }

    /// Copies `length` bytes at `addr` out of guest RAM (at most 1 GiB; `view` for more).
    fn read<'py>(
        &self,
        py: Python<'py>,
        addr: u64,
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if !self.inner.contains(GuestAddress(addr), length as u64) {
            // Produce the typed out-of-range error before allocating.
            self.inner.host_ptr(GuestAddress(addr), length as u64)?;
        }
        if length > MAX_READ {
            return Err(config_err(format!(
                "read: {length} bytes is more than one read returns ({MAX_READ}); \
                 use view() for zero-copy access to large ranges"
            )));
        }
        PyBytes::new_with(py, length, |buf| {
            Ok(self.inner.read(GuestAddress(addr), buf)?)
        })
    }

    /// Copies `data` into guest RAM at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> PyResult<()> {
        Ok(self.inner.write(GuestAddress(addr), data)?)
    }

    /// The byte at `addr`.
    fn read_u8(&self, addr: u64) -> PyResult<u8> {
        Ok(self.inner.read_u8(GuestAddress(addr))?)
    }
    /// The little-endian u16 at `addr` (2-byte aligned).
    fn read_u16(&self, addr: u64) -> PyResult<u16> {
        Ok(self.inner.read_u16(GuestAddress(addr))?)
    }
    /// The little-endian u32 at `addr` (4-byte aligned).
    fn read_u32(&self, addr: u64) -> PyResult<u32> {
        Ok(self.inner.read_u32(GuestAddress(addr))?)
    }
    /// The little-endian u64 at `addr` (8-byte aligned).
    fn read_u64(&self, addr: u64) -> PyResult<u64> {
        Ok(self.inner.read_u64(GuestAddress(addr))?)
    }
    /// Stores the byte `value` at `addr`.
    fn write_u8(&self, addr: u64, value: u8) -> PyResult<()> {
        Ok(self.inner.write_u8(GuestAddress(addr), value)?)
    }
    /// Stores `value` as a little-endian u16 at `addr` (2-byte aligned).
    fn write_u16(&self, addr: u64, value: u16) -> PyResult<()> {
        Ok(self.inner.write_u16(GuestAddress(addr), value)?)
    }
    /// Stores `value` as a little-endian u32 at `addr` (4-byte aligned).
    fn write_u32(&self, addr: u64, value: u32) -> PyResult<()> {
        Ok(self.inner.write_u32(GuestAddress(addr), value)?)
    }
    /// Stores `value` as a little-endian u64 at `addr` (8-byte aligned).
    fn write_u64(&self, addr: u64, value: u64) -> PyResult<()> {
        Ok(self.inner.write_u64(GuestAddress(addr), value)?)
    }

    /// Sets `[addr, addr + length)` to `byte`.
    #[pyo3(signature = (addr, length, byte = 0))]
    fn fill(&self, py: Python<'_>, addr: u64, length: &Bound<'_, PyAny>, byte: u8) -> PyResult<()> {
        let length = size_arg(length, "length")?;
        Ok(py.detach(|| self.inner.fill(GuestAddress(addr), length, byte))?)
    }

    /// Gives `[addr, addr + length)` back to the host (whole pages); it reads as zero after.
    fn discard(&self, py: Python<'_>, addr: u64, length: &Bound<'_, PyAny>) -> PyResult<()> {
        let length = size_arg(length, "length")?;
        Ok(py.detach(|| self.inner.discard(GuestAddress(addr), length))?)
    }

    /// Faults `[addr, addr + length)` in (whole pages).
    fn populate(&self, py: Python<'_>, addr: u64, length: &Bound<'_, PyAny>) -> PyResult<()> {
        let length = size_arg(length, "length")?;
        Ok(py.detach(|| self.inner.populate(GuestAddress(addr), length))?)
    }

    /// Pages of `[addr, addr + length)` resident on the host (mincore); all RAM by default.
    #[pyo3(signature = (addr = 0, length = None))]
    fn resident_pages(
        &self,
        py: Python<'_>,
        addr: u64,
        length: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let length = match length {
            Some(l) => size_arg(l, "length")?,
            None => self.inner.size().saturating_sub(addr),
        };
        Ok(py.detach(|| self.inner.resident_pages(GuestAddress(addr), length))?)
    }

    /// Whether every byte of `[addr, addr + length)` is zero.
    fn is_zero(&self, py: Python<'_>, addr: u64, length: &Bound<'_, PyAny>) -> PyResult<bool> {
        let length = size_arg(length, "length")?;
        Ok(py.detach(|| self.inner.is_zero(GuestAddress(addr), length))?)
    }

    /// A writable zero-copy view of `[addr, addr + length)` (buffer protocol, for numpy).
    fn view(&self, addr: u64, length: &Bound<'_, PyAny>) -> PyResult<GuestView> {
        let length = size_arg(length, "length")?;
        let ptr = self.inner.host_ptr(GuestAddress(addr), length)?;
        let len = usize::try_from(length).map_err(|_| config_err("view too large"))?;
        Ok(GuestView {
            _mem: Arc::clone(&self.inner),
            ptr: ptr as usize,
            len,
            addr,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "GuestMemory(size={}, backing={:?}, resident={})",
            self.inner.size(),
            self.inner.backing().name(),
            self.inner
                .resident_pages(GuestAddress(0), self.inner.size())
                .unwrap_or(0)
                * memory::PAGE_SIZE
        )
    }

    fn __len__(&self) -> usize {
        self.inner.size() as usize
    }
}

/// A zero-copy view of a range of guest RAM, usable with `memoryview` and `numpy.frombuffer`.
///
/// Writes through it bypass the guest model, so the explicit dirty log does not see them; the
/// kernel dirty tracker (userfaultfd write-protect) does.
#[pyclass(name = "GuestView", module = "vballoon", frozen)]
pub struct GuestView {
    /// Keeps the mapping alive while Python holds the view or a buffer of it.
    _mem: Arc<GuestMemory>,
    ptr: usize,
    len: usize,
    addr: u64,
}

#[pymethods]
impl GuestView {
    /// Guest-physical address of the first byte.
    #[getter]
    fn addr(&self) -> u64 {
        self.addr
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// # Safety
    /// Called by CPython with a valid `Py_buffer`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = (slf.get().ptr as *mut u8, slf.get().len);
        // SAFETY: `ptr..ptr+len` is inside the mapping, which `slf` keeps alive through its Arc
        // for as long as the buffer holds a reference to `slf`.
        unsafe { fill_view(view, flags, ptr, len, false, (c"B", 1), slf.into_any()) }
    }

    /// # Safety
    /// Called by CPython with a view filled by `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: CPython passes back the view we filled, once.
        unsafe { release_view(view) }
    }

    fn __repr__(&self) -> String {
        format!("GuestView(addr={:#x}, length={})", self.addr, self.len)
    }
}

/// Resident set size of this process in bytes.
#[pyfunction]
pub fn rss_bytes() -> PyResult<u64> {
    Ok(memory::process_rss_bytes()?)
}

/// Peak resident set size of this process in bytes.
#[pyfunction]
pub fn peak_rss_bytes() -> PyResult<u64> {
    Ok(memory::process_peak_rss_bytes()?)
}

/// Parses a size such as `"8GiB"` into bytes.
#[pyfunction]
pub fn parse_size(size: &Bound<'_, PyAny>) -> PyResult<u64> {
    size_arg(size, "size")
}
