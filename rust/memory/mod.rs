//! Guest memory: the mmap'd regions that are the guest's RAM.
//!
//! Anonymous private or memfd shared backing, each also on huge pages (THP, hugetlbfs), one
//! region or several (a vhost-user frontend's memory table), guest-physical address newtypes,
//! bounds-checked copies and atomics (no references into guest RAM), discard (the one backend
//! the device and free page reporting share), populate and residency.

mod access;
mod address;
mod backing;
mod discard;
mod error;
mod guest;
mod huge;
mod huge_pool;
pub(crate) mod pagemap_abi;
mod pagemap_scan;
mod region;
mod residency;
mod rss;
mod seal;
mod vectored;

pub use access::is_zero_raw;
#[cfg(test)]
pub(crate) use address::page_ranges;
pub use address::{GuestAddress, PageRange, Pfn, PAGE_SHIFT, PAGE_SIZE};
pub use backing::Backing;
pub use discard::{
    DiscardMode, PARALLEL_DISCARD_MIN_PAGES, PARALLEL_DISCARD_MIN_RUN_PAGES,
    PARALLEL_DISCARD_THREADS,
};
pub use error::MemoryError;
pub use guest::{GuestMemory, RegionInfo, RegionSpec, MAX_GUEST_SIZE, MAX_REGIONS};
pub use huge::{thp_mode, HugePageStats, HugetlbPool, HUGE_PAGE_PAGES, HUGE_PAGE_SIZE};
pub use huge_pool::{is_unavailable as huge_pages_unavailable, HugetlbReservation};
pub use rss::{process_peak_rss_bytes, process_rss_bytes};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod regions_tests;
