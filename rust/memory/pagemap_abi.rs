//! The `PAGEMAP_SCAN` ioctl's ABI (`linux/fs.h`, Linux 6.7), shared by residency and the kernel
//! dirty tracker; written out here because the `libc` crate does not carry it.

/// `struct pm_scan_arg` (`linux/fs.h`, Linux 6.7): the `PAGEMAP_SCAN` request.
#[repr(C)]
#[derive(Default)]
pub(crate) struct PmScanArg {
    /// `sizeof(struct pm_scan_arg)`.
    pub(crate) size: u64,
    /// `PM_SCAN_*` flags.
    pub(crate) flags: u64,
    /// First address to scan.
    pub(crate) start: u64,
    /// End of the range (exclusive).
    pub(crate) end: u64,
    /// Out: where the walk stopped (equals `end` when the whole range was scanned).
    pub(crate) walk_end: u64,
    /// Address of a `page_region` array.
    pub(crate) vec: u64,
    /// Entries in that array.
    pub(crate) vec_len: u64,
    /// Stop after this many pages (0 = no limit).
    pub(crate) max_pages: u64,
    /// Categories to invert before matching.
    pub(crate) category_inverted: u64,
    /// A page matches if all of these categories (after inversion) are set ...
    pub(crate) category_mask: u64,
    /// ... and at least one of these (0 = no condition).
    pub(crate) category_anyof_mask: u64,
    /// Categories to report in each region.
    pub(crate) return_mask: u64,
}
/// `struct page_region { __u64 start; __u64 end; __u64 categories; }`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct PageRegion {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) categories: u64,
}
/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`.
pub(crate) const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;
/// `PM_SCAN_WP_MATCHING`: write-protect the pages that match, in the same walk.
pub(crate) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail with EPERM unless the range is registered async-WP.
pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `PAGE_IS_WRITTEN`: written since it was last userfaultfd write-protected (or never WP'd).
pub(crate) const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `PAGE_IS_PRESENT`: mapped in RAM.
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: a swap-format entry (swapped out, migrating, or a PTE marker).
pub(crate) const PAGE_IS_SWAPPED: u64 = 1 << 4;

const _: () = assert!(size_of::<PageRegion>() == 24);
const _: () = assert!(size_of::<PmScanArg>() == 96);
