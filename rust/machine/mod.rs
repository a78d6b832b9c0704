//! The machine: wires one guest and one host together for the bindings, the CLI and the benches.
//!
//! - [`Session`]: guest RAM, the guest (allocator + balloon driver) and the balloon device over
//!   a transport, run synchronously or with the device on its own thread ([`MachineConfig`]).
//! - [`InflateReport`]: one move of the balloon with its stage breakdown.
//! - [`Scenario`], [`GuestRunner`], [`migrate_local`], [`listen`]/[`send`]: live migration of
//!   a running guest, in one process or two.
//!
//! The benchmark drivers built on it are in [`crate::bench`](mod@crate::bench).

mod balloon_hints;
mod config;
mod migrate;
mod migrate_guest;
mod migrate_hints;
mod report;
mod scenario;
mod session;

pub use balloon_hints::{BalloonHints, BalloonHintsConfig, BalloonHintsStats, HintRun};
pub use config::{parse_abi, MachineConfig, RunMode};
pub use migrate::{
    listen, listen_on, migrate_local, send, LocalLink, MigrateOptions, MigrateReport,
    MigrationSummary,
};
pub use migrate_guest::{GuestHandle, GuestRunner, GuestState, WorkloadCounters};
pub use migrate_hints::{FreeListStandIn, HintMode, HintProvider};
pub use report::{InflateReport, Outcome};
pub use scenario::{Scenario, ScenarioInfo};
pub use session::Session;
