//! Python bindings (`vballoon._native`): the only module that imports pyo3.
//!
//! Each wrapper converts arguments, calls the core with the GIL released for long work, and maps
//! errors through the one `From<Error> for PyErr` in `errors.rs`. Results are typed classes
//! (`records.rs`, `results.rs`, `stats.rs`); a dict comes only from a result's `to_dict()`.

mod bench;
mod buffer;
mod convert;
mod errors;
mod memory;
mod migrate;
mod pages;
mod progress;
mod records;
mod results;
mod session;
mod stats;
mod vhost;
mod virtq;

use pyo3::prelude::*;

/// The native extension module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_QUEUE_SIZE", crate::abi::DEFAULT_QUEUE_SIZE)?;
    errors::register(m)?;
    m.add_class::<memory::PyGuestMemory>()?;
    m.add_class::<memory::GuestView>()?;
    m.add_function(wrap_pyfunction!(memory::rss_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(memory::peak_rss_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(memory::parse_size, m)?)?;
    m.add_class::<vhost::PyVhostUserBackend>()?;
    m.add_class::<vhost::PyVhostStatus>()?;
    m.add_class::<virtq::PyQueueLayout>()?;
    m.add_class::<virtq::PyVirtqDriver>()?;
    m.add_class::<virtq::PyVirtqDevice>()?;
    m.add_class::<virtq::PyChain>()?;
    m.add_function(wrap_pyfunction!(virtq::virtqueue_pair, m)?)?;
    m.add_function(wrap_pyfunction!(virtq::pump_queue, m)?)?;
    m.add_class::<pages::PyPageSet>()?;
    m.add_function(wrap_pyfunction!(pages::encode_pages, m)?)?;
    m.add_function(wrap_pyfunction!(pages::decode_pages, m)?)?;
    m.add_class::<session::PySession>()?;
    m.add_class::<session::PyInflateReport>()?;
    m.add_class::<migrate::PyGuest>()?;
    m.add_class::<migrate::PyMigrationResult>()?;
    m.add_function(wrap_pyfunction!(migrate::listen_migration, m)?)?;
    m.add_function(wrap_pyfunction!(bench::bench_inflate_table, m)?)?;
    m.add_function(wrap_pyfunction!(bench::bench_huge_table, m)?)?;
    m.add_function(wrap_pyfunction!(bench::bench_migrate_rows, m)?)?;
    m.add_class::<progress::PyBenchProgress>()?;
    m.add_class::<progress::PyRoundStats>()?;
    m.add_class::<stats::PyGuestStats>()?;
    m.add_class::<results::PyPumpResult>()?;
    m.add_class::<results::PyInflateRow>()?;
    m.add_class::<results::PyInflateTable>()?;
    m.add_class::<results::PyHugeRow>()?;
    m.add_class::<results::PyHugeTable>()?;
    m.add_class::<results::PyMigrateRow>()?;
    m.add_class::<results::PyDestReport>()?;
    m.add_class::<results::PyMigrationProgress>()?;
    m.add_class::<results::PyBenchSnapshot>()?;
    m.add_class::<results::PyGuestInfo>()?;
    m.add_class::<results::PyHugetlbPool>()?;
    m.add_class::<results::PyHugePageStats>()?;
    m.add_class::<results::PyDeviceCounters>()?;
    Ok(())
}
