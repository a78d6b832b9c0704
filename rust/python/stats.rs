//! `GuestStats`: one statistics sample from the guest's stats queue, as typed attributes.
//!
//! The tags are virtio 1.2 section 5.5.6.3 (tags 10 to 15 are Linux's later additions); an
//! attribute is None when the guest did not send that tag. `to_dict()` holds the tags sent,
//! under the attribute names (Linux's).

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Declares the class with one `Option<u64>` attribute per tag, in tag order.
macro_rules! guest_stats {
    ($($tag:literal $name:ident: $doc:literal),* $(,)?) => {
        /// One statistics sample the guest sent on its stats queue (virtio 1.2, 5.5.6.3); an
        /// attribute is None when the guest did not send that tag.
        #[pyclass(name = "GuestStats", module = "vballoon", frozen, skip_from_py_object)]
        #[derive(Clone, Default)]
        pub struct PyGuestStats {
            values: [Option<u64>; TAGS],
        }

        /// Attribute names by tag.
        const NAMES: [&str; TAGS] = [$(stringify!($name)),*];

        #[pymethods]
        impl PyGuestStats {
            $(
                #[doc = $doc]
                #[getter]
                fn $name(&self) -> Option<u64> {
                    self.values[$tag]
                }
            )*

            /// The tags the guest sent, as a dict keyed by the attribute names.
            fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let d = PyDict::new(py);
                for (name, v) in NAMES.iter().zip(self.values) {
                    if let Some(v) = v {
                        d.set_item(name, v)?;
                    }
                }
                Ok(d)
            }

            fn __repr__(&self) -> String {
                let sent: Vec<String> = NAMES
                    .iter()
                    .zip(self.values)
                    .filter_map(|(name, v)| Some(format!("{name}={}", v?)))
                    .collect();
                format!("GuestStats({})", sent.join(", "))
            }
        }
    };
}

/// Tags the class knows (0..16).
const TAGS: usize = 16;

guest_stats! {
    0 swap_in: "Memory swapped in, bytes.",
    1 swap_out: "Memory swapped out, bytes.",
    2 major_faults: "Major page faults.",
    3 minor_faults: "Minor page faults.",
    4 free_memory: "Free memory, bytes.",
    5 total_memory: "Total memory, bytes.",
    6 available_memory: "Available memory, bytes.",
    7 disk_caches: "Disk caches, bytes.",
    8 hugetlb_allocations: "Huge page allocations.",
    9 hugetlb_failures: "Huge page allocation failures.",
    10 oom_kills: "OOM kills.",
    11 alloc_stalls: "Allocation stalls.",
    12 async_scans: "Pages scanned by kswapd.",
    13 direct_scans: "Pages scanned directly.",
    14 async_reclaims: "Pages reclaimed by kswapd.",
    15 direct_reclaims: "Pages reclaimed directly.",
}

impl PyGuestStats {
    /// A sample from `(tag, value)` pairs; tags the class does not know are left out.
    pub(super) fn from_tags(tags: impl IntoIterator<Item = (u16, u64)>) -> Self {
        let mut s = PyGuestStats::default();
        for (tag, v) in tags {
            if let Some(slot) = s.values.get_mut(usize::from(tag)) {
                *slot = Some(v);
            }
        }
        s
    }

    /// A sample from `(name, value)` pairs named as the attributes.
    pub(super) fn from_names<'a>(named: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let tags = named.into_iter().filter_map(|(n, v)| {
            let tag = NAMES.iter().position(|k| *k == n)?;
            Some((u16::try_from(tag).ok()?, v))
        });
        PyGuestStats::from_tags(tags)
    }
}
