//! The machine: wires one guest and one host together for benches, bindings and the CLI.
//!
//! - [`Session`]: guest RAM, the guest (allocator + balloon driver) and the balloon device over
//!   a transport, run synchronously or with the device on its own thread ([`MachineConfig`]).
//! - [`InflateReport`]: one move of the balloon with its stage breakdown.
//! - [`bench_inflate`]: the seed's headline measurement (inflate 7 GiB of an 8 GiB guest),
//!   every variant interleaved with the floors measured in the same run.
//! - [`Scenario`], [`GuestRunner`], [`migrate_local`], [`listen`]/[`send`]: live migration of
//!   a running guest, in one process or two, and [`bench_migrate`] (rows M1-M3).
//! - [`pump_buffers`]: buffers through a bare queue pair (the ring benchmark).

mod balloon_hints;
mod bench;
mod config;
mod huge_bench;
mod migrate;
mod migrate_bench;
mod migrate_guest;
mod migrate_hints;
mod progress;
mod report;
mod ring_pump;
mod scenario;
mod session;

pub use balloon_hints::{BalloonHints, BalloonHintsConfig, BalloonHintsStats, HintRun};
pub use bench::{
    bench_inflate, BenchVariant as InflateVariant, Fragmentation, InflateBenchConfig,
    InflateBenchRow, InflateBenchTable,
};
pub use config::{parse_abi, MachineConfig, RunMode};
pub use huge_bench::{bench_huge, HugeBenchConfig, HugeBenchRow, HugeBenchTable};
pub use migrate::{
    listen, listen_on, migrate_local, send, LocalLink, MigrateOptions, MigrateReport,
    MigrationSummary,
};
pub use migrate_bench::{
    bench_migrate, format_migrate_table, measure_floors, BenchMigrateConfig, BenchMigrateRow,
    MigrateFloors, MigrateVariant,
};
pub use migrate_guest::{GuestHandle, GuestRunner, GuestState, WorkloadCounters};
pub use migrate_hints::{FreeListStandIn, HintMode, HintProvider};
pub use progress::BenchProgress;
pub use report::{InflateReport, Outcome};
pub use ring_pump::{pump_buffers, PumpConfig, PumpResult};
pub use scenario::{Scenario, ScenarioInfo};
pub use session::Session;
