//! The benchmark drivers: each builds its machine ([`crate::machine`]), runs every variant
//! interleaved with the floors measured in the same run, and returns rows the CLI, the Python
//! bindings and `benches/` print. They stay in the release library because `vballoon bench`
//! runs them.
//!
//! - [`bench_inflate`]: the seed's headline measurement (inflate 7 GiB of an 8 GiB guest).
//! - [`bench_huge`]: the same on huge-page-backed guest RAM (THP and hugetlbfs).
//! - [`bench_migrate`]: live migration of the published scenarios (rows M1-M3).
//! - [`pump_buffers`]: buffers through a bare queue pair (the ring benchmark).
//! - [`BenchProgress`]: where a long run is, for a progress display on another thread.

mod huge;
mod inflate;
mod migrate;
mod progress;
mod ring;

pub use huge::{bench_huge, HugeBenchConfig, HugeBenchRow, HugeBenchTable};
pub use inflate::{
    bench_inflate, BenchVariant as InflateVariant, Fragmentation, InflateBenchConfig,
    InflateBenchRow, InflateBenchTable,
};
pub use migrate::{
    bench_migrate, format_migrate_table, measure_floors, BenchMigrateConfig, BenchMigrateRow,
    MigrateFloors, MigrateVariant,
};
pub use progress::BenchProgress;
pub use ring::{pump_buffers, PumpConfig, PumpResult};

/// The median of a bench's samples (see [`util::median`](crate::util::median)).
fn median(samples: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = samples.into_iter().collect();
    crate::util::median(&mut v)
}
