//! `Closeable`: the base of the classes that own threads or sockets (`Session`, `Guest`,
//! `VhostUserBackend`), so that `with` closes each of them the same way.

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{PyClass, PyClassInitializer};

/// An object that owns threads or a socket: `with obj:` calls `obj.close()` on exit, also when
/// the block raised (the exception then propagates).
#[pyclass(name = "Closeable", module = "vballoon", subclass, frozen)]
#[derive(Default)]
pub struct PyCloseable {}

#[pymethods]
impl PyCloseable {
    /// Returns the object itself, for `with`.
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Calls `close()`; returns False, so an exception raised in the block propagates.
    #[pyo3(signature = (*_exc))]
    fn __exit__(slf: &Bound<'_, Self>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        slf.call_method0("close")?;
        Ok(false)
    }
}

/// What a `#[new]` of a `Closeable` subclass returns: `obj` on top of its base.
pub(super) fn closeable<T: PyClass<BaseType = PyCloseable>>(obj: T) -> PyClassInitializer<T> {
    PyClassInitializer::from(PyCloseable::default()).add_subclass(obj)
}
