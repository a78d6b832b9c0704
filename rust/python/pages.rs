//! Page sets (numpy views without copying) and the wire encodings, for scripts and tests.

use std::ffi::c_int;
use std::sync::{Arc, RwLock};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::buffer::{fill_view, release_view};
use super::errors::config_err;
use crate::pages::{self, Encoding, PageSet};

/// A set of guest pages (4 KiB PFNs in `[0, npages)`), stored as a dense bitmap of u64 words.
///
/// `numpy.frombuffer(s, dtype=numpy.uint64)` views the words without copying: bit `i` of word
/// `w` is page `64 * w + i`. Writes through the view change the set.
#[pyclass(name = "PageSet", module = "vballoon", frozen)]
pub struct PyPageSet {
    pub(crate) inner: Arc<RwLock<PageSet>>,
}

impl PyPageSet {
    /// Wraps a core page set.
    pub fn wrap(set: PageSet) -> PyPageSet {
        PyPageSet {
            inner: Arc::new(RwLock::new(set)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, PageSet> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PageSet> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, start: u64, length: u64) -> PyResult<()> {
        let n = self.read().npages();
        if start.checked_add(length).is_none_or(|end| end > n) {
            return Err(config_err(format!(
                "pages [{start}, +{length}) outside a set of {n} pages"
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl PyPageSet {
    #[new]
    #[pyo3(signature = (npages, runs = Vec::new()))]
    fn new(npages: u64, runs: Vec<(u64, u64)>) -> PyResult<Self> {
        let mut set = PageSet::try_new(npages)?;
        for (start, length) in runs {
            // The caller's runs, not a guest's message: a bad one is a ValueError.
            set.try_insert_range(start, length)
                .map_err(|e| config_err(format!("runs: {e}")))?;
        }
        Ok(PyPageSet::wrap(set))
    }

    /// Number of pages the set can hold.
    #[getter]
    fn npages(&self) -> u64 {
        self.read().npages()
    }

    /// Adds `[start, start + length)`.
    #[pyo3(signature = (start, length = 1))]
    fn add(&self, start: u64, length: u64) -> PyResult<()> {
        self.check(start, length)?;
        self.write().insert_range(start, length);
        Ok(())
    }

    /// Removes `[start, start + length)`.
    #[pyo3(signature = (start, length = 1))]
    fn discard(&self, start: u64, length: u64) -> PyResult<()> {
        self.check(start, length)?;
        self.write().remove_range(start, length);
        Ok(())
    }

    /// Number of pages in the set.
    fn count(&self) -> u64 {
        self.read().count()
    }

    /// Maximal runs `(start, length)`, lowest first.
    fn runs(&self) -> Vec<(u64, u64)> {
        self.read().runs().map(|r| (r.start, r.len)).collect()
    }

    fn __contains__(&self, pfn: u64) -> bool {
        self.read().contains(pfn)
    }

    fn __len__(&self) -> usize {
        self.read().count() as usize
    }

    fn __eq__(&self, other: &PyPageSet) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        let (a, b) = (self.read(), other.read());
        a.npages() == b.npages() && a.words() == b.words()
    }

    fn __repr__(&self) -> String {
        let s = self.read();
        format!(
            "PageSet(npages={}, count={}, runs={})",
            s.npages(),
            s.count(),
            s.runs().count()
        )
    }

    /// # Safety
    /// Called by CPython with a valid `Py_buffer`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = {
            let mut set = slf.get().write();
            let words = set.words_mut();
            (
                words.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(words),
            )
        };
        // SAFETY: the word vector never changes length after construction, so `ptr` stays valid
        // while `slf` (which owns the set through its Arc) is alive, which the view ensures.
        unsafe { fill_view(view, flags, ptr, len, false, (c"Q", 8), slf.into_any()) }
    }

    /// # Safety
    /// Called by CPython with a view filled by `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: CPython passes back the view we filled, once.
        unsafe { release_view(view) }
    }
}

fn encoding(name: &str) -> PyResult<Encoding> {
    name.parse::<Encoding>()
        .map_err(|e| config_err(e.to_string()))
}

/// Encodes a page set as `encoding` ("pfn", "bitmap", "extents" or "auto"): a list of
/// messages, each a list of segments (bytes), one virtqueue buffer per message.
#[pyfunction]
pub fn encode_pages<'py>(
    py: Python<'py>,
    encoding_name: &str,
    pages: &PyPageSet,
) -> PyResult<Vec<Vec<Bound<'py, PyBytes>>>> {
    let enc = encoding(encoding_name)?;
    let set = pages.read();
    let msgs = py.detach(|| pages::encode(enc, &*set))?;
    Ok(msgs
        .iter()
        .map(|m| m.segments.iter().map(|s| PyBytes::new(py, s)).collect())
        .collect())
}

/// Decodes one message (its segments) of `encoding` into a page set of `npages` pages;
/// hostile input raises `EncodingError` and yields nothing.
#[pyfunction]
pub fn decode_pages(
    encoding_name: &str,
    segments: Vec<Vec<u8>>,
    npages: u64,
) -> PyResult<PyPageSet> {
    let enc = encoding(encoding_name)?;
    let mut set = PageSet::try_new(npages)?;
    pages::decode_into(enc, &segments, &mut set)?;
    Ok(PyPageSet::wrap(set))
}
