//! Guest memory: the mmap'd region that is the guest's RAM.
//!
//! Anonymous private or memfd shared backing, guest-physical address newtypes, bounds-checked
//! copies and atomics (no references into guest RAM), discard, populate and residency.

mod address;
mod error;
mod pagemap_scan;
mod region;
mod residency;
mod seal;

pub use address::{GuestAddress, Pfn, PAGE_SHIFT, PAGE_SIZE};
pub use error::MemoryError;
pub use region::{
    is_zero_raw, process_peak_rss_bytes, process_rss_bytes, Backing, GuestMemory, MAX_GUEST_SIZE,
};

#[cfg(test)]
mod tests;
