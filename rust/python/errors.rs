//! The one mapping from Rust errors to Python exceptions.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::Error;
use crate::memory::MemoryError;

create_exception!(
    vballoon,
    VBalloonError,
    PyException,
    "Base class of every vballoon error."
);
create_exception!(
    vballoon,
    ConfigError,
    VBalloonError,
    "An argument is invalid (size, name, range)."
);
create_exception!(
    vballoon,
    GuestMemoryError,
    VBalloonError,
    "A guest-memory access or operation failed."
);

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("VBalloonError", py.get_type::<VBalloonError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("GuestMemoryError", py.get_type::<GuestMemoryError>())?;
    m.add("GuestError", py.get_type::<GuestError>())?;
    Ok(())
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let msg = err.to_string();
        match err {
            Error::Memory(_) => GuestMemoryError::new_err(msg),
            Error::Guest(_) => GuestError::new_err(msg),
            Error::Config(_) => ConfigError::new_err(msg),
        }
    }
}

impl From<MemoryError> for PyErr {
    fn from(err: MemoryError) -> PyErr {
        Error::from(err).into()
    }
}

/// A [`ConfigError`] with `msg`.
pub fn config_err(msg: impl Into<String>) -> PyErr {
    Error::Config(msg.into()).into()
}
