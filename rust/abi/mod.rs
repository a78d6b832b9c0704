//! The balloon's wire constants, shared by the guest driver and the host device.
//!
//! Virtio spec §5.5 (Traditional Memory Balloon Device) plus the 2016 seed's extensions. Both
//! sides import this module and nothing of each other.

mod features;
mod layout;
mod stats;
mod stats_codec;
mod wire;

pub use features::*;
pub use layout::*;
pub use stats::*;
pub use stats_codec::*;
pub use wire::{encoding_for, max_message_len};
