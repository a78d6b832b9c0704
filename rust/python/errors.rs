//! The one mapping from Rust errors to Python exceptions.
//!
//! Every error family of the core has its own exception class under `VBalloonError`; the
//! `From<Error> for PyErr` below is the only place that decides which.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::device::BalloonError as CoreBalloonError;
use crate::error::Error;
use crate::guest::driver::DriverError;
use crate::guest::GuestError as CoreGuestError;
use crate::memory::MemoryError;
use crate::migration::MigrationError as CoreMigrationError;
use crate::pages::PagesError;
use crate::transport::TransportError;
use crate::virtq::VirtqError;

create_exception!(
    vballoon,
    VBalloonError,
    PyException,
    "Base class of every vballoon error."
);

/// Declares the family exceptions (subclasses of `VBalloonError`) and registers them.
macro_rules! families {
    ($($name:ident: $doc:literal),* $(,)?) => {
        $(create_exception!(vballoon, $name, VBalloonError, $doc);)*

        /// Registers the exception classes on the module.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            m.add("VBalloonError", py.get_type::<VBalloonError>())?;
            $(m.add(stringify!($name), py.get_type::<$name>())?;)*
            Ok(())
        }
    };
}

families! {
    ConfigError: "An argument is invalid (size, name, range).",
    GuestMemoryError: "A guest-memory access or operation failed.",
    GuestError: "The guest model refused an operation (allocator, workload).",
    VirtqueueError: "A virtqueue operation failed or the guest broke the ring protocol.",
    EncodingError: "A page-set message is malformed or hostile.",
    BalloonError: "The balloon failed: transport negotiation, the device, or the guest driver.",
    MigrationError: "A live migration failed (stream, transport, timeout, destination).",
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let msg = err.to_string();
        match err {
            Error::Memory(_) => GuestMemoryError::new_err(msg),
            Error::Guest(_) => GuestError::new_err(msg),
            Error::Virtq(_) => VirtqueueError::new_err(msg),
            Error::Pages(_) => EncodingError::new_err(msg),
            Error::Transport(_) | Error::Balloon(_) | Error::Driver(_) => {
                BalloonError::new_err(msg)
            }
            Error::Migration(_) => MigrationError::new_err(msg),
            Error::Config(_) => ConfigError::new_err(msg),
        }
    }
}

/// Lets binding code use `?` on a layer's own error type.
macro_rules! via_crate_error {
    ($($ty:ty),*) => {
        $(impl From<$ty> for PyErr {
            fn from(err: $ty) -> PyErr {
                Error::from(err).into()
            }
        })*
    };
}

via_crate_error!(
    MemoryError,
    CoreGuestError,
    VirtqError,
    PagesError,
    CoreMigrationError,
    CoreBalloonError,
    DriverError,
    TransportError
);

/// A [`ConfigError`] with `msg`.
pub fn config_err(msg: impl Into<String>) -> PyErr {
    Error::Config(msg.into()).into()
}
