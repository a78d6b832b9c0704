//! The benchmarks from Python: inflate (`bench_inflate_table`), huge pages (`bench_huge_table`,
//! I4) and migration (`bench_migrate_rows`, M1-M3). Each returns typed results.

use std::sync::Arc;

use pyo3::prelude::*;

use super::convert::{backing_arg, name_arg, opt_size_arg, rate_arg, size_arg};
use super::errors::config_err;
use super::progress::PyBenchProgress;
use super::results::{PyHugeTable, PyInflateTable, PyMigrateRow};
use crate::bench::{
    bench_huge, bench_inflate, bench_migrate, BenchMigrateConfig, Fragmentation, HugeBenchConfig,
    InflateBenchConfig, MigrateVariant,
};
use crate::machine::{RunMode, Scenario};

/// Each of `names` parsed by `parse`; a `ConfigError` names the first unknown one.
fn each<T>(what: &str, names: &[String], parse: fn(&str) -> Option<T>) -> PyResult<Vec<T>> {
    names
        .iter()
        .map(|n| parse(n).ok_or_else(|| config_err(format!("unknown {what} {n:?}"))))
        .collect()
}

/// `(guest, inflate)` in bytes: the default guest, and 7/8 of the guest unless given.
fn guest_and_inflate(
    guest: Option<&Bound<'_, PyAny>>,
    inflate: Option<&Bound<'_, PyAny>>,
    default_guest: u64,
) -> PyResult<(u64, u64)> {
    let guest = opt_size_arg(guest, "guest", default_guest)?;
    Ok((guest, opt_size_arg(inflate, "inflate", guest / 8 * 7)?))
}

/// Inflates `inflate` of a `guest`-sized guest whose pages were all touched, then deflates, for
/// each variant, interleaved over `rounds`, with the floors measured in the same run.
#[pyfunction]
#[pyo3(signature = (guest = None, inflate = None, *, rounds = 3, fragmentation = None, mode = "sync", backing = "anonymous", progress = None))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of a Python function
pub fn bench_inflate_table(
    py: Python<'_>,
    guest: Option<&Bound<'_, PyAny>>,
    inflate: Option<&Bound<'_, PyAny>>,
    rounds: usize,
    fragmentation: Option<f64>,
    mode: &str,
    backing: &str,
    progress: Option<PyRef<'_, PyBenchProgress>>,
) -> PyResult<PyInflateTable> {
    let mut cfg = InflateBenchConfig {
        progress: progress.map(|p| Arc::clone(&p.inner)),
        ..InflateBenchConfig::default()
    };
    (cfg.guest_bytes, cfg.inflate_bytes) = guest_and_inflate(guest, inflate, cfg.guest_bytes)?;
    cfg.rounds = rounds.max(1);
    cfg.mode = name_arg::<RunMode>("mode", mode)?;
    cfg.backing = backing_arg(backing)?;
    cfg.fragmentation = fragmentation.map(|knob| Fragmentation {
        knob,
        free_share: 0.5,
        seed: 7,
    });
    let table = py.detach(|| bench_inflate(&cfg))?;
    Ok(PyInflateTable::new(&table, fragmentation))
}

/// Bench I4: inflate `inflate` of a `guest`-sized guest on each huge-page backing (2 MiB
/// blocks, 4 KiB pages, the floor, the fragmented guest), host memory returned verified.
#[pyfunction]
#[pyo3(signature = (guest = None, inflate = None, *, rounds = 3, backings = None, fragmented = true, reserve = true))]
pub fn bench_huge_table(
    py: Python<'_>,
    guest: Option<&Bound<'_, PyAny>>,
    inflate: Option<&Bound<'_, PyAny>>,
    rounds: usize,
    backings: Option<Vec<String>>,
    fragmented: bool,
    reserve: bool,
) -> PyResult<PyHugeTable> {
    let mut cfg = HugeBenchConfig::default();
    (cfg.guest_bytes, cfg.inflate_bytes) = guest_and_inflate(guest, inflate, cfg.guest_bytes)?;
    if let Some(names) = backings {
        cfg.backings = names
            .iter()
            .map(|n| backing_arg(n))
            .collect::<PyResult<_>>()?;
    }
    cfg.rounds = rounds.max(1);
    cfg.fragmented = fragmented;
    cfg.reserve = reserve;
    let table = py.detach(|| bench_huge(&cfg))?;
    Ok(PyHugeTable::from(&table))
}

/// The migration benchmark: each scenario (`"m1"`, `"m2"`, `"m3"`: all three by default,
/// optionally scaled to `guest`) × each variant (`"off"`, `"skip"`, `"bitmap"`, `"upstream"`, `"reporting"`, or
/// `"<mode>+skip"`), interleaved, at `bandwidth`. Returns one row per pair.
#[pyfunction]
#[pyo3(signature = (scenarios = None, variants = None, *, guest = None, repetitions = 3, bandwidth = None, dirty_rate = None, progress = None))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of a Python function
pub fn bench_migrate_rows(
    py: Python<'_>,
    scenarios: Option<Vec<String>>,
    variants: Option<Vec<String>>,
    guest: Option<&Bound<'_, PyAny>>,
    repetitions: usize,
    bandwidth: Option<&Bound<'_, PyAny>>,
    dirty_rate: Option<&Bound<'_, PyAny>>,
    progress: Option<PyRef<'_, PyBenchProgress>>,
) -> PyResult<Vec<PyMigrateRow>> {
    let mut cfg = BenchMigrateConfig {
        progress: progress.map(|p| Arc::clone(&p.inner)),
        ..BenchMigrateConfig::default()
    };
    let guest_bytes = guest.map(|g| size_arg(g, "guest")).transpose()?;
    if let Some(names) = scenarios {
        cfg.scenarios = each("scenario", &names, Scenario::by_name)?;
    }
    if let Some(b) = guest_bytes {
        cfg.scenarios = cfg
            .scenarios
            .into_iter()
            .map(|s| s.with_guest_bytes(b))
            .collect();
    }
    if let Some(names) = variants {
        cfg.variants = each("variant", &names, MigrateVariant::parse)?;
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
    Ok(rows.iter().map(PyMigrateRow::from).collect())
}
