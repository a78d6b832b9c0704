//! The machine: wires one guest and one host together for benches, bindings and the CLI.

mod migrate;
mod migrate_bench;
mod migrate_guest;
mod migrate_hints;
mod ring_pump;
mod scenario;

pub use migrate::{
    listen, listen_on, migrate_local, send, LocalLink, MigrateOptions, MigrateReport,
    MigrationSummary,
};
pub use migrate_bench::{
    bench_migrate, format_table, measure_floors, BenchMigrateConfig, BenchMigrateRow, BenchVariant,
    MigrateFloors,
};
pub use migrate_guest::{GuestRunner, GuestState, WorkloadCounters};
pub use migrate_hints::{FreeListStandIn, HintMode, HintProvider};
pub use ring_pump::{pump_buffers, PumpConfig, PumpResult};
pub use scenario::{Scenario, ScenarioInfo};
