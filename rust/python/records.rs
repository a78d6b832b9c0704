//! Typed result classes: one macro declares a frozen pyclass with read-only attributes, its
//! `to_dict()` (the one place a result becomes a dict, for JSON) and a dataclass-like repr.

use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::IntoPyObjectExt;

/// A value a result's `to_dict()` can hold: a plain Python value, or a nested result's dict.
pub(super) trait DictValue {
    /// The value as a Python object (nested results as dicts, lists as lists).
    fn dict_value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
}

/// Plain values: what `into_pyobject` makes of them.
macro_rules! plain_dict_values {
    ($($t:ty),*) => {
        $(impl DictValue for $t {
            fn dict_value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                self.clone().into_bound_py_any(py)
            }
        })*
    };
}

plain_dict_values!(bool, u16, u32, u64, i64, usize, f64, String, (f64, f64));

impl<T: DictValue> DictValue for Option<T> {
    fn dict_value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Some(v) => v.dict_value(py),
            None => Ok(py.None().into_bound(py)),
        }
    }
}

impl<T: DictValue> DictValue for Vec<T> {
    fn dict_value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let items = self
            .iter()
            .map(|v| v.dict_value(py))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.into_any())
    }
}

/// Declares a result class: `struct Rust as "PyName" { /// doc field: Type, ... }` (invoked
/// from the sibling binding modules: the expansion names `super::records`).
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident as $pyname:literal {
            $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[pyclass(name = $pyname, module = "vballoon", frozen, get_all, skip_from_py_object)]
        #[derive(Clone)]
        pub struct $name {
            $($(#[$fmeta])* pub(crate) $field: $ty,)*
        }

        #[pymethods]
        impl $name {
            /// Every attribute as a plain dict (for JSON), keyed by the attribute names.
            pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, ::pyo3::types::PyDict>> {
                let d = ::pyo3::types::PyDict::new(py);
                $(d.set_item(stringify!($field), super::records::DictValue::dict_value(&self.$field, py)?)?;)*
                Ok(d)
            }

            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                let fields: Vec<String> = vec![$(format!(
                    "{}={}",
                    stringify!($field),
                    super::records::DictValue::dict_value(&self.$field, py)?.repr()?
                ),)*];
                Ok(format!("{}({})", $pyname, fields.join(", ")))
            }
        }

        impl super::records::DictValue for $name {
            fn dict_value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                Ok(self.to_dict(py)?.into_any())
            }
        }
    };
}

pub(super) use record;
