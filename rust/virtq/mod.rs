//! Split virtqueues (virtio 1.2 §2.7), laid out in guest memory, both ends.
//!
//! - [`DriverQueue`]: the guest's end: add chains (directly or through an indirect table),
//!   publish them, decide whether to kick, reclaim used chains, suppress interrupts.
//! - [`DeviceQueue`]: the VMM's end: pop validated chains from a hostile guest, return them
//!   used, decide whether to interrupt, suppress kicks.
//! - [`Notifier`] / [`EventFd`]: kicks and interrupts across threads or processes, or a
//!   polling counter for single-thread scripts.
//! - [`pair`]: both ends over one queue, connected.
//!
//! Rings are little-endian (virtio 1.x); every ring field shared with the other side goes
//! through atomics on guest memory with the ordering the spec asks for (§2.7.13), and no
//! reference into guest RAM is ever made. Section numbers (§) are those of virtio 1.2.

#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod accessors;
mod chain;
pub mod defs;
mod desc;
mod device;
mod driver;
mod error;
mod event_idx;
mod layout;
mod notify;
mod pair;
mod write_log;

pub use chain::{DescriptorChain, Segment, INLINE_SEGMENTS};
pub use desc::Descriptor;
pub use device::DeviceQueue;
pub use driver::{DriverQueue, IndirectArea, UsedElem};
pub use error::{Result, VirtqError};
pub use event_idx::need_event;
pub use layout::{
    avail_ring_bytes, check_queue_size, desc_table_bytes, used_ring_bytes, vring_size, QueueLayout,
};
pub use notify::{EventFd, Notifier};
pub use pair::{pair, pair_with, NotifyMode, PairConfig, DEFAULT_INDIRECT_ENTRIES};
pub use write_log::WriteLog;

#[cfg(test)]
mod tests;
