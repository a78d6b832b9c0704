//! The guest side: a modelled guest kernel whose buddy allocator hands out the pages of a real
//! mmap'd guest RAM, and workloads that allocate, write, free and dirty them.
//!
//! - [`buddy`]: the page allocator ([`BuddyAllocator`]), orders 0..=10 as Linux, with the free
//!   lists a balloon driver walks to answer "which pages are free", and the isolation and
//!   "reported" marks of free page reporting.

pub mod buddy;
mod error;
pub mod hash;
pub mod rng;

pub use buddy::{BuddyAllocator, MAX_ORDER, MAX_PAGE_ORDER, PAGEBLOCK_ORDER};
pub use error::GuestError;
pub use rng::Rng;
