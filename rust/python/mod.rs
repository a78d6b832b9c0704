//! Python bindings (`vballoon._native`): the only module that imports pyo3.

use pyo3::prelude::*;

/// The native extension module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
