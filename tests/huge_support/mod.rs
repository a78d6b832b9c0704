//! Huge-page set-up shared by the balloon and migration tests: reserve what a backing needs and
//! map the guests, or skip, saying why, where the kernel refuses huge pages.

use vballoon::memory::{
    huge_pages_unavailable, Backing, GuestMemory, HugetlbReservation, HUGE_PAGE_SIZE,
};

/// `count` guests of `bytes` RAM each on `backing`, with the hugetlb reservation they need (held
/// for as long as the caller keeps it); `None`, after saying why, where the kernel refuses.
pub fn guests_on(
    backing: Backing,
    bytes: u64,
    count: u64,
) -> Option<(Option<HugetlbReservation>, Vec<GuestMemory>)> {
    let res = if backing == Backing::Hugetlb {
        match HugetlbReservation::new(count * bytes / HUGE_PAGE_SIZE) {
            Ok(r) => Some(r),
            Err(e) if huge_pages_unavailable(&e) => {
                eprintln!("skipping {backing:?}: the kernel refused hugetlb pages: {e}");
                return None;
            }
            Err(e) => panic!("{e}"),
        }
    } else {
        None
    };
    let mut guests = Vec::new();
    for _ in 0..count {
        match GuestMemory::new(bytes, backing) {
            Ok(m) => guests.push(m),
            Err(e) if huge_pages_unavailable(&e) => {
                eprintln!("skipping {backing:?}: {e}");
                return None;
            }
            Err(e) => panic!("{e}"),
        }
    }
    Some((res, guests))
}
