//! Huge-page RAM from Python: bench I4 (`bench_huge_table`) and the stats dict of
//! `GuestMemory.huge_page_stats()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::size_arg;
use super::errors::config_err;
use crate::bench::{bench_huge, HugeBenchConfig};
use crate::memory::{Backing, HugePageStats};

/// The message every Python entry point gives for an unknown backing.
pub(crate) const BACKINGS: &str = "'anonymous', 'memfd', 'thp' or 'hugetlb'";

/// `stats` as a dict (bytes; `pool` is None except for hugetlb).
pub(crate) fn stats_dict<'py>(py: Python<'py>, st: &HugePageStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("backing", st.backing.map(|b| b.name()))?;
    d.set_item("host_page_size", st.host_page_size)?;
    d.set_item("rss_bytes", st.rss_bytes)?;
    d.set_item("huge_bytes", st.huge_bytes)?;
    d.set_item("file_allocated_bytes", st.file_allocated_bytes)?;
    match st.pool {
        Some(p) => {
            let pd = PyDict::new(py);
            pd.set_item("total", p.total)?;
            pd.set_item("free", p.free)?;
            pd.set_item("reserved", p.reserved)?;
            pd.set_item("surplus", p.surplus)?;
            d.set_item("pool", pd)?;
        }
        None => d.set_item("pool", py.None())?,
    }
    Ok(d)
}

/// Bench I4: inflate `inflate` of a `guest`-sized guest on each huge-page backing (2 MiB
/// blocks, 4 KiB pages, the floor, the fragmented guest), host memory returned verified.
/// Returns `{"rows": [...], "text": markdown, ...}`.
#[pyfunction]
#[pyo3(signature = (guest = None, inflate = None, *, rounds = 3, backings = None, fragmented = true, reserve = true))]
pub fn bench_huge_table<'py>(
    py: Python<'py>,
    guest: Option<&Bound<'_, PyAny>>,
    inflate: Option<&Bound<'_, PyAny>>,
    rounds: usize,
    backings: Option<Vec<String>>,
    fragmented: bool,
    reserve: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let mut cfg = HugeBenchConfig::default();
    if let Some(g) = guest {
        cfg.guest_bytes = size_arg(g, "guest")?;
    }
    cfg.inflate_bytes = match inflate {
        Some(i) => size_arg(i, "inflate")?,
        None => cfg.guest_bytes / 8 * 7,
    };
    if let Some(names) = backings {
        cfg.backings = names
            .iter()
            .map(|n| {
                Backing::parse(n)
                    .ok_or_else(|| config_err(format!("backing must be {BACKINGS}, not {n:?}")))
            })
            .collect::<PyResult<_>>()?;
    }
    cfg.rounds = rounds.max(1);
    cfg.fragmented = fragmented;
    cfg.reserve = reserve;
    let table = py.detach(|| bench_huge(&cfg))?;
    let out = PyDict::new(py);
    out.set_item("guest_bytes", table.guest_bytes)?;
    out.set_item("inflate_bytes", table.inflate_bytes)?;
    out.set_item("rounds", table.rounds)?;
    out.set_item("text", table.to_string())?;
    let rows = table
        .rows
        .iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("backing", &r.backing)?;
            d.set_item("variant", &r.variant)?;
            d.set_item("samples", r.samples)?;
            d.set_item("secs", r.secs)?;
            d.set_item("ballooned_bytes", r.ballooned_bytes)?;
            d.set_item("returned_bytes", r.returned_bytes)?;
            d.set_item("gib_per_s", r.gib_per_s)?;
            d.set_item("discard_calls", r.discard_calls)?;
            d.set_item("huge_share_before", r.huge_share_before)?;
            d.set_item("memfree_gain_bytes", r.memfree_gain_bytes)?;
            d.set_item("thp_partially_mapped", r.thp_partially_mapped)?;
            d.set_item("ratio_to_floor", r.ratio_to_floor)?;
            d.set_item("verified", r.verified)?;
            d.set_item("note", &r.note)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    out.set_item("rows", rows)?;
    Ok(out)
}
