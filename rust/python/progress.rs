//! Progress of a long benchmark and per-round migration figures, for scripts and the CLI.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

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

    /// Where the bench is: `label`, `steps_done` of `steps_total`, bytes of the populate
    /// pass running now (`populate_done` of `populate_total`, 0 when none runs), and the
    /// migration running now (`round`, `pages_done` of `pages_total`, `bytes_sent`).
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.inner;
        let d = PyDict::new(py);
        d.set_item("label", p.label())?;
        d.set_item("steps_done", p.steps_done.load(Relaxed))?;
        d.set_item("steps_total", p.steps_total.load(Relaxed))?;
        d.set_item("populate_done", p.populate_done.load(Relaxed))?;
        d.set_item("populate_total", p.populate_total.load(Relaxed))?;
        let m = &p.migration;
        d.set_item("round", m.round.load(Relaxed))?;
        d.set_item("pages_done", m.pages_done.load(Relaxed))?;
        d.set_item("pages_total", m.pages_total.load(Relaxed))?;
        d.set_item("bytes_sent", m.bytes_sent.load(Relaxed))?;
        Ok(d)
    }
}

/// What one pre-copy round of a migration did.
#[pyclass(
    name = "RoundStats",
    module = "vballoon",
    frozen,
    get_all,
    skip_from_py_object
)]
#[derive(Clone)]
pub struct PyRoundStats {
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

#[pymethods]
impl PyRoundStats {
    /// The round as a plain dict (for JSON).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("round", self.round)?;
        d.set_item("stop_and_copy", self.stop_and_copy)?;
        d.set_item("pages_in_bitmap", self.pages_in_bitmap)?;
        d.set_item("hinted_pages", self.hinted_pages)?;
        d.set_item("unpopulated_pages", self.unpopulated_pages)?;
        d.set_item("zero_pages", self.zero_pages)?;
        d.set_item("data_pages", self.data_pages)?;
        d.set_item("bytes_sent", self.bytes_sent)?;
        d.set_item("secs", self.secs)?;
        d.set_item("dirty_after", self.dirty_after)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "RoundStats(round={}, {}{} data pages, {} bytes, {:.1} ms, {} dirty after)",
            self.round,
            if self.stop_and_copy {
                "stop-and-copy, "
            } else {
                ""
            },
            self.data_pages,
            self.bytes_sent,
            self.secs * 1e3,
            self.dirty_after
        )
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

/// The per-round figures as a list of dicts.
pub(super) fn round_dicts<'py>(
    py: Python<'py>,
    rounds: &[PyRoundStats],
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    rounds.iter().map(|r| r.to_dict(py)).collect()
}
