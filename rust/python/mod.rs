//! Python bindings (`vballoon._native`): the only module that imports pyo3.
//!
//! Each wrapper converts arguments, calls the core with the GIL released for long work, and maps
//! errors through the one `From<Error> for PyErr` in `errors.rs`. Results are typed classes
//! (`records.rs`, `results.rs`, `stats.rs`); a dict comes only from a result's `to_dict()`.

mod bench;
mod buffer;
mod closeable;
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

/// Adds each class and function to the module (pyo3 also lists them in `__all__`).
macro_rules! export {
    ($m:ident: classes [$($class:ty),* $(,)?] functions [$($function:path),* $(,)?]) => {
        $($m.add_class::<$class>()?;)*
        $($m.add_function(wrap_pyfunction!($function, $m)?)?;)*
    };
}

/// The native extension module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_QUEUE_SIZE", crate::abi::DEFAULT_QUEUE_SIZE)?;
    errors::register(m)?;
    export!(m: classes [
        closeable::PyCloseable, memory::PyGuestMemory, memory::GuestView,
        vhost::PyVhostUserBackend, vhost::PyVhostStatus, virtq::PyQueueLayout,
        virtq::PyVirtqDriver, virtq::PyVirtqDevice, virtq::PyChain, pages::PyPageSet,
        session::PySession, session::PyInflateReport, migrate::PyGuest,
        migrate::PyMigrationResult, progress::PyBenchProgress, progress::PyRoundStats,
        stats::PyGuestStats, results::PyPumpResult, results::PyInflateRow,
        results::PyInflateTable, results::PyHugeRow, results::PyHugeTable,
        results::PyMigrateRow, results::PyDestReport, results::PyMigrationProgress,
        results::PyBenchSnapshot, results::PyGuestInfo, results::PyHugetlbPool,
        results::PyHugePageStats, results::PyDeviceCounters,
    ] functions [
        memory::rss_bytes, memory::peak_rss_bytes, memory::parse_size, virtq::virtqueue_pair,
        virtq::pump_queue, pages::encode_pages, pages::decode_pages, migrate::listen_migration,
        bench::bench_inflate_table, bench::bench_huge_table, bench::bench_migrate_rows,
    ]);
    Ok(())
}
