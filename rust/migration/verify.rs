//! Local verification: the destination's RAM against the source's, page by page.
//!
//! Residency comes from [`GuestMemory::populated`] (pagemap / SEEK_DATA), never from mincore,
//! which calls a swapped-out page non-resident. And no page is taken as equal on the strength
//! of that answer alone: a page unpopulated on both sides is still read (through the file for
//! memfd RAM, or faulted in read-only and dropped again for anonymous RAM), so a residency bug
//! that made the source skip data shows up here as a mismatch instead of hiding.

use super::error::MigrationError;
use super::PAGE;
use crate::memory::{GuestAddress, GuestMemory, PAGE_SIZE};
use crate::pages::PageSet;

/// How a destination's RAM compares with the source's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Pages the guest uses (the `used` bitmap).
    pub used_pages: u64,
    /// Used pages byte-identical on both sides.
    pub used_identical: u64,
    /// Used pages that differ (or lie past the end of the destination).
    pub used_mismatched: u64,
    /// Up to 16 mismatching used pages, for the error message.
    pub first_mismatches: Vec<u64>,
    /// Free pages (not in `used`).
    pub free_pages: u64,
    /// Free pages that differ; allowed, since free pages need not be sent.
    pub free_differ: u64,
}

impl VerifyReport {
    /// Whether every used page arrived intact.
    pub fn ok(&self) -> bool {
        self.used_mismatched == 0
    }

    fn count(&mut self, pfn: u64, used: bool, same: bool) {
        if used {
            self.used_pages += 1;
            if same {
                self.used_identical += 1;
            } else {
                self.used_mismatched += 1;
                if self.first_mismatches.len() < 16 {
                    self.first_mismatches.push(pfn);
                }
            }
        } else {
            self.free_pages += 1;
            self.free_differ += u64::from(!same);
        }
    }
}

/// Compares `src` and `dst` page by page: every page in `used` must be byte-identical; free
/// pages are counted as identical or different.
///
/// A page populated on one side only is compared with zero on the other, which is not read
/// (reading would populate it). A page populated on neither side is checked to read as zero
/// on both, without leaving it populated. Call it while nothing writes either RAM (the source
/// guest paused): that check drops the zero-page mappings its reads create.
pub fn verify(
    src: &GuestMemory,
    dst: &GuestMemory,
    used: &PageSet,
) -> Result<VerifyReport, MigrationError> {
    const CHUNK: u64 = 4096;
    let pages = src.pages();
    let common = pages.min(dst.pages());
    let mut r = VerifyReport::default();
    let mut a = vec![0u8; PAGE];
    let mut b = vec![0u8; PAGE];
    let mut scratch = Vec::new();
    let mut chunk = 0;
    while chunk < common {
        let end = (chunk + CHUNK).min(common);
        let (at, len) = (GuestAddress(chunk * PAGE_SIZE), (end - chunk) * PAGE_SIZE);
        let (pa, pb) = (src.populated(at, len)?, dst.populated(at, len)?);
        let mut p = chunk;
        while p < end {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "an offset into `pa`, a byte per page of the chunk"
            )]
            let i = (p - chunk) as usize;
            let addr = GuestAddress(p * PAGE_SIZE);
            if pa[i] == 0 && pb[i] == 0 {
                // A stretch unpopulated on both sides: one check per side for all of it.
                let n = pa[i..]
                    .iter()
                    .zip(&pb[i..])
                    .take_while(|(x, y)| **x == 0 && **y == 0)
                    .count() as u64;
                let bytes = n * PAGE_SIZE;
                let both_zero = src.unpopulated_reads_zero(addr, bytes, &mut scratch)?
                    && dst.unpopulated_reads_zero(addr, bytes, &mut scratch)?;
                for q in p..p + n {
                    let same = both_zero || page_equal(src, dst, q, &mut a, &mut b)?;
                    r.count(q, used.contains(q), same);
                }
                p += n;
                continue;
            }
            let same = match (pa[i] != 0, pb[i] != 0) {
                (true, false) => src.is_zero(addr, PAGE_SIZE)?,
                (false, true) => dst.is_zero(addr, PAGE_SIZE)?,
                _ => page_equal(src, dst, p, &mut a, &mut b)?,
            };
            r.count(p, used.contains(p), same);
            p += 1;
        }
        chunk = end;
    }
    // Pages the destination does not have at all.
    let missing_used = used.count_range(common, pages - common);
    r.used_pages += missing_used;
    r.used_mismatched += missing_used;
    r.free_pages += (pages - common) - missing_used;
    Ok(r)
}

/// Whether page `pfn` holds the same bytes in both RAMs (read through the mappings).
fn page_equal(
    src: &GuestMemory,
    dst: &GuestMemory,
    pfn: u64,
    a: &mut [u8],
    b: &mut [u8],
) -> Result<bool, MigrationError> {
    let addr = GuestAddress(pfn * PAGE_SIZE);
    src.read(addr, a)?;
    dst.read(addr, b)?;
    Ok(a == b)
}
