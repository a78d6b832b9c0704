//! Python buffer-protocol helpers: zero-copy views for numpy (`numpy.frombuffer`).

use std::ffi::{c_int, c_void, CStr};
use std::ptr;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// Fills `view` to describe `len` bytes at `data`, owned by `owner`, with item format `format`.
///
/// # Safety
/// `view` must be the pointer CPython passed to `__getbuffer__`; `data` must stay valid for
/// `len` bytes for as long as `owner` is alive; `format` must be the struct-module code of
/// items of `itemsize` bytes, and `len` a multiple of it.
pub unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    data: *mut u8,
    len: usize,
    readonly: bool,
    (format, itemsize): (&'static CStr, usize),
    owner: Bound<'_, PyAny>,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("null Py_buffer"));
    }
    if readonly && (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
        return Err(PyBufferError::new_err("this buffer is read-only"));
    }
    // SAFETY: `view` is non-null and CPython hands us exclusive access to it for filling; the
    // shape and strides pointers point into the view itself, which CPython keeps alive with it.
    unsafe {
        (*view).obj = owner.into_ptr();
        (*view).buf = data.cast::<c_void>();
        (*view).len = len as isize;
        (*view).readonly = c_int::from(readonly);
        (*view).itemsize = itemsize as isize;
        (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
            format.as_ptr().cast_mut()
        } else {
            ptr::null_mut()
        };
        (*view).ndim = 1;
        // The element count lives in a small heap cell that `release_view` frees.
        let shape = Box::into_raw(Box::new((len / itemsize) as isize));
        (*view).internal = shape.cast::<c_void>();
        (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
            shape
        } else {
            ptr::null_mut()
        };
        (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
            &mut (*view).itemsize
        } else {
            ptr::null_mut()
        };
        (*view).suboffsets = ptr::null_mut();
    }
    Ok(())
}

/// Frees what [`fill_view`] allocated.
///
/// # Safety
/// `view` must be a view filled by [`fill_view`], released once.
pub unsafe fn release_view(view: *mut ffi::Py_buffer) {
    // SAFETY: `internal` was set by `fill_view` to a leaked `Box<isize>` and is freed only here.
    unsafe {
        let internal = (*view).internal.cast::<isize>();
        if !internal.is_null() {
            drop(Box::from_raw(internal));
            (*view).internal = ptr::null_mut();
        }
    }
}
