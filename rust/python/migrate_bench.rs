//! `bench_migrate_rows`: the migration bench (M1-M3, every hint mode) from Python.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{rate_arg, size_arg};
use super::errors::config_err;
use super::progress::PyBenchProgress;
use crate::bench::{bench_migrate, BenchMigrateConfig, BenchMigrateRow, MigrateVariant};
use crate::machine::Scenario;

fn row<'py>(py: Python<'py>, r: &BenchMigrateRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("scenario", &r.scenario)?;
    d.set_item("variant", &r.variant)?;
    d.set_item("hints", r.hints.name())?;
    d.set_item("hint_provider", &r.hint_provider)?;
    d.set_item("skip_unpopulated", r.skip_unpopulated)?;
    d.set_item("skipped", &r.skipped)?;
    d.set_item("guest_bytes", r.guest_bytes)?;
    d.set_item("used_bytes", r.used_bytes)?;
    d.set_item("stale_free_bytes", r.stale_free_bytes)?;
    d.set_item("untouched_bytes", r.untouched_bytes)?;
    d.set_item("runs", r.runs)?;
    d.set_item("total_ms", r.total_ms)?;
    d.set_item("total_ms_range", r.total_ms_range)?;
    d.set_item("downtime_ms", r.downtime_ms)?;
    d.set_item("bytes_sent", r.bytes_sent)?;
    d.set_item("pages_read", r.pages_read)?;
    d.set_item("data_pages", r.data_pages)?;
    d.set_item("hinted_pages", r.hinted_pages)?;
    d.set_item("unpopulated_pages", r.unpopulated_pages)?;
    d.set_item("rounds", r.rounds)?;
    d.set_item("peak_rss_bytes", r.peak_rss_bytes)?;
    d.set_item("floor_ms", r.floor_ms)?;
    d.set_item("ratio_to_floor", r.ratio_to_floor)?;
    d.set_item("ratio_to_link", r.ratio_to_link)?;
    d.set_item("speedup_vs_no_hints", r.speedup_vs_no_hints)?;
    d.set_item("verified", r.verified)?;
    Ok(d)
}

/// The migration benchmark: each scenario (`"m1"`, `"m2"`, `"m3"`, optionally scaled to
/// `guest`) × each variant (`"off"`, `"skip"`, `"bitmap"`, `"upstream"`, `"reporting"`, or
/// `"<mode>+skip"`), interleaved, at `bandwidth`. Returns a list of row dicts.
#[pyfunction]
#[pyo3(signature = (scenarios = vec!["m1".to_string()], variants = None, *, guest = None, repetitions = 3, bandwidth = None, dirty_rate = None, progress = None))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of a Python function
pub fn bench_migrate_rows<'py>(
    py: Python<'py>,
    scenarios: Vec<String>,
    variants: Option<Vec<String>>,
    guest: Option<&Bound<'_, PyAny>>,
    repetitions: usize,
    bandwidth: Option<&Bound<'_, PyAny>>,
    dirty_rate: Option<&Bound<'_, PyAny>>,
    progress: Option<PyRef<'_, PyBenchProgress>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let mut cfg = BenchMigrateConfig {
        progress: progress.map(|p| Arc::clone(&p.inner)),
        ..BenchMigrateConfig::default()
    };
    let guest_bytes = guest.map(|g| size_arg(g, "guest")).transpose()?;
    cfg.scenarios = scenarios
        .iter()
        .map(|n| {
            let s = Scenario::by_name(n)
                .ok_or_else(|| config_err(format!("unknown scenario {n:?}")))?;
            Ok(match guest_bytes {
                Some(b) => s.with_guest_bytes(b),
                None => s,
            })
        })
        .collect::<PyResult<_>>()?;
    if let Some(v) = variants {
        cfg.variants = v
            .iter()
            .map(|n| {
                MigrateVariant::parse(n).ok_or_else(|| config_err(format!("unknown variant {n:?}")))
            })
            .collect::<PyResult<_>>()?;
    }
    cfg.repetitions = repetitions.max(1);
    cfg.repetitions_large = cfg.repetitions_large.min(cfg.repetitions);
    if let Some(b) = bandwidth {
        cfg.bandwidth_bytes_per_s = rate_arg(b, "bandwidth")?;
    }
    if let Some(r) = dirty_rate {
        cfg.dirty_rate_bytes_per_s = rate_arg(r, "dirty_rate")?;
    }
    let rows = py.detach(|| bench_migrate(&cfg))?;
    rows.iter().map(|r| row(py, r)).collect()
}
