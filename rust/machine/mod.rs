//! The machine: wires one guest and one host together for benches, bindings and the CLI.
//!
//! - [`Session`]: guest RAM, the guest (allocator + balloon driver) and the balloon device over
//!   a transport, run synchronously or with the device on its own thread ([`MachineConfig`]).
//! - [`InflateReport`]: one move of the balloon with its stage breakdown.
//! - [`bench_inflate`]: the seed's headline measurement (inflate 7 GiB of an 8 GiB guest),
//!   every variant interleaved with the floors measured in the same run.
//! - [`pump_buffers`]: buffers through a bare queue pair (the ring benchmark).

mod bench;
mod config;
mod report;
mod ring_pump;
mod session;

pub use bench::{
    bench_inflate, BenchVariant, Fragmentation, InflateBenchConfig, InflateBenchRow,
    InflateBenchTable,
};
pub use config::{parse_abi, MachineConfig, RunMode};
pub use report::{InflateReport, Outcome};
pub use ring_pump::{pump_buffers, PumpConfig, PumpResult};
pub use session::Session;
