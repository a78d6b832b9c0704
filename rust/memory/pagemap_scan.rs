//! `PAGEMAP_SCAN` (Linux 6.7): the populated stretches of an address range in a few regions.
//!
//! The ioctl walks the page tables once and returns coalesced `[start, end)` regions with the
//! categories asked for, skipping empty page tables at the PMD level, so it costs per region,
//! where reading `/proc/self/pagemap` costs 8 bytes per page. The structure and constants come
//! from `linux/fs.h`, written out here because the `libc` crate does not carry them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::address::PAGE_SIZE;
use super::error::MemoryError;
use super::pagemap_abi::{
    PageRegion, PmScanArg, PAGEMAP_SCAN, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN,
};
use super::residency::{os_err, read_entries};

/// Regions fetched per call.
const REGIONS: usize = 1024;

/// Cleared once the kernel turns the ioctl down (before 6.7), so it is not tried again.
static SUPPORTED: AtomicBool = AtomicBool::new(true);

/// Marks the populated pages of `out` (one byte per page from host address `host`). Returns
/// false, leaving `out` untouched, where the kernel has no `PAGEMAP_SCAN`.
pub(super) fn populated(pagemap: &File, host: u64, out: &mut [u8]) -> Result<bool, MemoryError> {
    if !SUPPORTED.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let end = host + out.len() as u64 * PAGE_SIZE;
    let mut regions = vec![PageRegion::default(); REGIONS];
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        start: host,
        end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: REGIONS as u64,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_WRITTEN,
        ..PmScanArg::default()
    };
    let mut first = true;
    while arg.start < end {
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `REGIONS` writable
        // page_region entries that outlive the call; the ioctl only reads our own page tables.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if first && matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) {
                SUPPORTED.store(false, Ordering::Relaxed);
                return Ok(false);
            }
            return Err(os_err("ioctl(PAGEMAP_SCAN)", e));
        }
        first = false;
        for r in &regions[..n as usize] {
            let (lo, hi) = (
                ((r.start.max(host) - host) / PAGE_SIZE) as usize,
                ((r.end.min(end) - host) / PAGE_SIZE) as usize,
            );
            if hi <= lo {
                continue;
            }
            let present = r.categories & PAGE_IS_PRESENT != 0;
            let unprotected_swap =
                r.categories & PAGE_IS_SWAPPED != 0 && r.categories & PAGE_IS_WRITTEN != 0;
            if present || unprotected_swap {
                out[lo..hi].fill(1);
            } else {
                // Write-protected swap entries: real swap, or uffd-wp markers on never
                // populated pages. The entries themselves tell them apart.
                read_entries(pagemap, host + lo as u64 * PAGE_SIZE, &mut out[lo..hi])?;
            }
        }
        if arg.walk_end <= arg.start {
            break; // no progress: nothing more to report
        }
        arg.start = arg.walk_end;
    }
    Ok(true)
}
