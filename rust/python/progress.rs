//! Progress of a long benchmark and per-round migration figures, for scripts and the CLI.

use std::sync::Arc;

use pyo3::prelude::*;

use super::records::record;
use super::results::PyBenchSnapshot;
use crate::bench::BenchProgress;
use crate::migration::RoundStats;

/// Counters a benchmark updates while it runs with the GIL released: pass one as
/// `progress=` to `bench_inflate_table` or `bench_migrate_rows` and poll `snapshot()` from
/// another thread.
#[pyclass(name = "BenchProgress", module = "vballoon", frozen)]
#[derive(Default)]
pub struct PyBenchProgress {
    pub(super) inner: Arc<BenchProgress>,
}

#[pymethods]
impl PyBenchProgress {
    #[new]
    fn new() -> Self {
        PyBenchProgress::default()
    }

    /// Where the bench is: its label, steps, the populate pass and the migration running now.
    fn snapshot(&self) -> PyBenchSnapshot {
        PyBenchSnapshot::from(&*self.inner)
    }
}

record! {
    /// What one pre-copy round of a migration did.
    pub struct PyRoundStats as "RoundStats" {
        /// Round number (1-based; the stop-and-copy round is the last).
        round: u32,
        /// Whether the guest was paused (stop-and-copy).
        stop_and_copy: bool,
        /// Pages in the round's dirty bitmap when it started.
        pages_in_bitmap: u64,
        /// Pages not sent because a hint cleared them.
        hinted_pages: u64,
        /// Pages sent as zero without being read.
        unpopulated_pages: u64,
        /// Pages read and found zero.
        zero_pages: u64,
        /// Pages sent with their contents.
        data_pages: u64,
        /// Stream bytes the round produced.
        bytes_sent: u64,
        /// Wall time of the round, seconds.
        secs: f64,
        /// Pages found dirty at the sync that ended the round.
        dirty_after: u64,
    }
}

/// The per-round figures of a migration, as Python objects.
pub(super) fn rounds(stats: &[RoundStats]) -> Vec<PyRoundStats> {
    stats
        .iter()
        .map(|r| PyRoundStats {
            round: r.round,
            stop_and_copy: r.stop_and_copy,
            pages_in_bitmap: r.pages_in_bitmap,
            hinted_pages: r.hinted_pages,
            unpopulated_pages: r.unpopulated_pages,
            zero_pages: r.zero_pages,
            data_pages: r.data_pages,
            bytes_sent: r.bytes,
            secs: r.duration.as_secs_f64(),
            dirty_after: r.dirty_after,
        })
        .collect()
}
