//! Guest memory: the mmap'd region that is the guest's RAM.
//!
//! Anonymous private or memfd shared backing, each also on huge pages (THP, hugetlbfs), guest-physical address newtypes, bounds-checked
//! copies and atomics (no references into guest RAM), discard, populate and residency.

mod address;
mod error;
mod huge;
mod huge_pool;
pub(crate) mod pagemap_abi;
mod pagemap_scan;
mod region;
mod residency;
mod rss;
mod seal;

pub use address::{GuestAddress, PageRange, Pfn, PAGE_SHIFT, PAGE_SIZE};
pub use error::MemoryError;
pub use huge::{thp_mode, HugePageStats, HugetlbPool, HUGE_PAGE_PAGES, HUGE_PAGE_SIZE};
pub use huge_pool::{is_unavailable as huge_pages_unavailable, HugetlbReservation};
pub use region::{is_zero_raw, Backing, GuestMemory, MAX_GUEST_SIZE};
pub use rss::{process_peak_rss_bytes, process_rss_bytes};

#[cfg(test)]
mod tests;
