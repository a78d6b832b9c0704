//! The guest side: a modelled guest kernel whose buddy allocator hands out the pages of a real
//! mmap'd guest RAM, and workloads that allocate, write, free and dirty them.
//!
//! - `buddy.rs`: the page allocator ([`BuddyAllocator`]), orders 0..=10 as Linux, with the free
//!   lists a balloon driver walks to answer "which pages are free", and the isolation and
//!   "reported" marks of free page reporting.
//! - `kernel.rs`: [`Guest`], which owns the RAM handle and the allocator, routes every write
//!   through a dirty hook for live migration, and keeps the balloon statistics.
//! - `workload.rs`: [`Workload`], reproducible scenarios: fill, free with stale data left behind,
//!   fragment, page cache, dirtying at a rate.

mod buddy;
mod driver;
mod error;
mod kernel;
mod workload;

pub use buddy::{BuddyAllocator, FreeList, MAX_ORDER, MAX_PAGES, MAX_PAGE_ORDER, PAGEBLOCK_ORDER};
pub use driver::{
    BalloonDriver, BufferArea, DriverCounters, DriverError, DriverOptions, HintArea,
    HintDriverCounters, HintOptions, HintStep, Step, HUGE_PAGE_ORDER, MIN_QUEUE_SIZE_SG,
    OOM_DEFLATE_PAGES, PFN_BATCH_PAGES,
};
pub use error::GuestError;
pub use kernel::{DirtyHook, Guest, GuestStats, Shrinker};
pub use workload::{
    fragment_max_order, free_blocks_above, Allocation, Fill, Workload, DIRTY_WRITE_BYTES,
};

/// A guest of `pages` anonymous pages, for the unit tests of this layer.
#[cfg(test)]
fn test_guest(pages: u64) -> Guest {
    let bytes = pages * crate::memory::PAGE_SIZE;
    let mem = crate::memory::GuestMemory::new(bytes, crate::memory::Backing::Anonymous).unwrap();
    Guest::new(std::sync::Arc::new(mem)).unwrap()
}
