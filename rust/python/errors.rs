//! The one mapping from Rust errors to Python exceptions.
//!
//! Every error family of the core has its own exception class under `VBalloonError`; the
//! `From<Error> for PyErr` below is the only place that decides which.

use std::ffi::CStr;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTimeoutError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyTuple, PyType};
use pyo3::IntoPyObjectExt;

use crate::device::BalloonError as CoreBalloonError;
use crate::error::Error;
use crate::guest::DriverError;
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

/// Declares the family exceptions (subclasses of `VBalloonError`).
macro_rules! families {
    ($($name:ident: $doc:literal),* $(,)?) => {
        $(create_exception!(vballoon, $name, VBalloonError, $doc);)*
    };
}

families! {
    GuestMemoryError: "A guest-memory access or operation failed.",
    GuestError: "The guest model refused an operation (allocator, workload).",
    VirtqueueError: "A virtqueue operation failed or the guest broke the ring protocol.",
    EncodingError: "A page-set message is malformed or hostile.",
    BalloonError: "The balloon failed: transport negotiation, the device, or the guest driver.",
    MigrationError: "A live migration failed (stream, transport, timeout, destination).",
}

/// Declares exceptions with two bases (a vballoon family and a builtin), which pyo3's
/// `create_exception!` cannot express: so that `except ValueError` / `except TimeoutError`
/// catch them as well as `except VBalloonError`.
macro_rules! two_base_exceptions {
    ($($name:ident($family:ty, $builtin:ty): $doc:literal),* $(,)?) => {
        $(
            #[doc = $doc]
            pub struct $name;

            // SAFETY: `type_object_raw` returns a live exception type object (kept alive by the
            // static below, or a family type pyo3 keeps alive) and never a dangling pointer.
            unsafe impl PyTypeInfo for $name {
                const NAME: &'static str = stringify!($name);
                const MODULE: Option<&'static str> = Some("vballoon");

                fn type_object_raw(py: Python<'_>) -> *mut ffi::PyTypeObject {
                    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                    let ty = TYPE.get_or_init(py, || {
                        two_base_type(
                            py,
                            CStr::from_bytes_with_nul(
                                concat!("vballoon.", stringify!($name), "\0").as_bytes(),
                            )
                            .unwrap_or(c"vballoon.Error"),
                            CStr::from_bytes_with_nul(concat!($doc, "\0").as_bytes()).ok(),
                            &py.get_type::<$family>(),
                            &py.get_type::<$builtin>(),
                        )
                        // Creating a type only fails without memory: fall back to the family.
                        .unwrap_or_else(|_| py.get_type::<$family>().unbind())
                    });
                    ty.as_ptr().cast()
                }
            }

            impl $name {
                /// A lazily built exception of this class with `msg`.
                pub fn new_err(msg: String) -> PyErr {
                    PyErr::new::<$name, _>(msg)
                }
            }
        )*

        /// Registers every exception class on the module.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            m.add("VBalloonError", py.get_type::<VBalloonError>())?;
            m.add("GuestMemoryError", py.get_type::<GuestMemoryError>())?;
            m.add("GuestError", py.get_type::<GuestError>())?;
            m.add("VirtqueueError", py.get_type::<VirtqueueError>())?;
            m.add("EncodingError", py.get_type::<EncodingError>())?;
            m.add("BalloonError", py.get_type::<BalloonError>())?;
            m.add("MigrationError", py.get_type::<MigrationError>())?;
            $(m.add(stringify!($name), py.get_type::<$name>())?;)*
            for (class, names) in CLASS_ATTRS {
                let ty = m.getattr(*class)?;
                for name in *names {
                    ty.setattr(*name, py.None())?;
                }
            }
            Ok(())
        }
    };
}

two_base_exceptions! {
    ConfigError(VBalloonError, PyValueError):
        "An argument is invalid (size, count, name, range, timeout), or the object is closed.",
    GuestAddressError(GuestMemoryError, PyValueError):
        "An address, length or size given for guest RAM is out of range or misaligned.",
    BalloonTimeout(BalloonError, PyTimeoutError):
        "The balloon device or the guest driver did not answer within the timeout.",
    MigrationTimeout(MigrationError, PyTimeoutError):
        "A migration peer made no progress within the timeout.",
}

/// `class name(family, builtin)`, made with `PyErr_NewExceptionWithDoc` and a tuple of bases.
fn two_base_type(
    py: Python<'_>,
    name: &CStr,
    doc: Option<&CStr>,
    family: &Bound<'_, PyType>,
    builtin: &Bound<'_, PyType>,
) -> PyResult<Py<PyType>> {
    let bases = PyTuple::new(py, [family, builtin])?;
    let doc = doc.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `name` and `doc` are NUL-terminated; `bases` is a live tuple of exception types;
    // a NULL dict is allowed. The result is a new reference (or NULL with an exception set).
    let raw = unsafe {
        ffi::PyErr_NewExceptionWithDoc(name.as_ptr(), doc, bases.as_ptr(), std::ptr::null_mut())
    };
    if raw.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `raw` is a new, non-null reference to a type object.
    Ok(unsafe { Bound::from_owned_ptr(py, raw).cast_into_unchecked::<PyType>() }.unbind())
}

/// An attribute value an exception carries.
pub(super) enum Attr {
    /// An integer (addresses, lengths, pages, rounds).
    U(u64),
    /// Seconds.
    Secs(f64),
    /// A name (the phase a migration was in).
    S(&'static str),
}

/// Attributes every instance of a class has (None unless the error knows the value).
const CLASS_ATTRS: &[(&str, &[&str])] = &[
    (
        "GuestAddressError",
        &["address", "length", "size", "alignment"],
    ),
    (
        "BalloonTimeout",
        &["queue", "timeout", "target_pages", "actual_pages"],
    ),
    ("MigrationError", &["phase", "round", "timeout"]),
];

/// Sets `attrs` on the exception instance of `err` (kept when the value cannot be set).
pub(super) fn with_attrs(err: PyErr, attrs: &[(&str, Attr)]) -> PyErr {
    Python::attach(|py| {
        let value = err.value(py);
        for (name, attr) in attrs {
            let obj = match attr {
                Attr::U(v) => v.into_bound_py_any(py),
                Attr::Secs(v) => v.into_bound_py_any(py),
                Attr::S(v) => v.into_bound_py_any(py),
            };
            // Setting an attribute on a fresh exception only fails without memory.
            if let Ok(obj) = obj {
                let _ = value.setattr(*name, obj);
            }
        }
    });
    err
}

/// The attributes a core error carries into Python.
fn attrs_of(err: &Error) -> Vec<(&'static str, Attr)> {
    use Attr::{Secs, S, U};
    match err {
        Error::Memory(MemoryError::OutOfRange { addr, len, size }) => {
            vec![
                ("address", U(*addr)),
                ("length", U(*len)),
                ("size", U(*size)),
            ]
        }
        Error::Memory(MemoryError::Misaligned { addr, align }) => {
            vec![("address", U(*addr)), ("alignment", U(*align))]
        }
        Error::Memory(MemoryError::NotPageAligned { addr, len }) => {
            vec![("address", U(*addr)), ("length", U(*len))]
        }
        Error::Memory(MemoryError::BadSize { size }) => vec![("size", U(*size))],
        Error::Driver(DriverError::Timeout { queue, millis }) => vec![
            ("queue", U(u64::from(*queue))),
            ("timeout", Secs(*millis as f64 / 1e3)),
        ],
        Error::Migration(CoreMigrationError::Timeout { op, after }) => {
            vec![("phase", S(op)), ("timeout", Secs(after.as_secs_f64()))]
        }
        Error::Migration(CoreMigrationError::DeadlineExceeded { op, after }) => {
            vec![("phase", S(op)), ("timeout", Secs(after.as_secs_f64()))]
        }
        Error::Migration(
            CoreMigrationError::ConnectionLost { op, .. }
            | CoreMigrationError::Io { op, .. }
            | CoreMigrationError::KernelTracking { op, .. },
        ) => vec![("phase", S(op))],
        _ => Vec::new(),
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let msg = err.to_string();
        let attrs = attrs_of(&err);
        let py_err = match err {
            Error::Memory(
                MemoryError::OutOfRange { .. }
                | MemoryError::Misaligned { .. }
                | MemoryError::NotPageAligned { .. }
                | MemoryError::BadSize { .. },
            ) => GuestAddressError::new_err(msg),
            Error::Memory(MemoryError::Unsealable { .. }) => ConfigError::new_err(msg),
            Error::Memory(_) => GuestMemoryError::new_err(msg),
            // Orders, shares and sizes the caller passed to the guest model.
            Error::Guest(
                CoreGuestError::BadOrder { .. }
                | CoreGuestError::BadParameter { .. }
                | CoreGuestError::TooManyPages { .. },
            ) => ConfigError::new_err(msg),
            Error::Guest(_) => GuestError::new_err(msg),
            Error::Virtq(_) => VirtqueueError::new_err(msg),
            Error::Pages(PagesError::SetTooLarge { .. }) => ConfigError::new_err(msg),
            Error::Pages(_) => EncodingError::new_err(msg),
            Error::Driver(DriverError::Timeout { .. }) => BalloonTimeout::new_err(msg),
            Error::Transport(_) | Error::Balloon(_) | Error::Driver(_) => {
                BalloonError::new_err(msg)
            }
            Error::Migration(CoreMigrationError::Timeout { .. }) => MigrationTimeout::new_err(msg),
            Error::Migration(_) => MigrationError::new_err(msg),
            Error::Config(_) => ConfigError::new_err(msg),
        };
        if attrs.is_empty() {
            py_err
        } else {
            with_attrs(py_err, &attrs)
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
