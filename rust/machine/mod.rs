//! The machine: wires one guest and one host together for benches, bindings and the CLI.

mod ring_pump;

pub use ring_pump::{pump_buffers, PumpConfig, PumpResult};
