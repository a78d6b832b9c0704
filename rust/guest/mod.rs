//! The guest side: a modelled guest kernel whose buddy allocator hands out the pages of a real
//! mmap'd guest RAM, and workloads that allocate, write, free and dirty them.
//!
//! - [`buddy`]: the page allocator ([`BuddyAllocator`]), orders 0..=10 as Linux, with the free
//!   lists a balloon driver walks to answer "which pages are free", and the isolation and
//!   "reported" marks of free page reporting.
//! - [`kernel`]: [`Guest`], which owns the RAM handle and the allocator, routes every write
//!   through a dirty hook for live migration, and keeps the balloon statistics.
//! - [`workload`]: [`Workload`], reproducible scenarios: fill, free with stale data left behind,
//!   fragment, page cache, dirtying at a rate.

pub mod buddy;
pub mod driver;
mod error;
pub mod kernel;
pub mod workload;

pub use buddy::{BuddyAllocator, MAX_ORDER, MAX_PAGE_ORDER, PAGEBLOCK_ORDER};
pub use error::GuestError;
pub use kernel::{DirtyHook, Guest, GuestStats, Shrinker};
pub use workload::{Allocation, Fill, Workload};
