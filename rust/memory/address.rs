//! Guest-physical addresses and page frame numbers as distinct types.

use std::fmt;

/// Size of a guest page and of a balloon PFN unit (virtio spec §5.5.6: `VIRTIO_BALLOON_PFN_SHIFT`).
pub const PAGE_SHIFT: u32 = 12;
/// Bytes per guest page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// A guest-physical address: an offset from the start of guest RAM, never a host pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    pub fn checked_add(self, offset: u64) -> Option<GuestAddress> {
        self.0.checked_add(offset).map(GuestAddress)
    }

    /// The page frame this address lies in.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A guest page frame number in 4 KiB units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The first byte of this page.
    pub const fn addr(self) -> GuestAddress {
        GuestAddress(self.0 << PAGE_SHIFT)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// A run of guest pages: `len` pages from page frame `start`, i.e. `[start, start + len)`.
///
/// The one shape a run of pages has wherever it crosses a module (decoded balloon messages,
/// discards, hints, migration records), so that "(start, len)" and "(start, end)" cannot be
/// confused. `#[repr(C)]` with two `u64`s: as cheap to pass and store as the tuple it replaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct PageRange {
    /// First page frame number.
    pub start: u64,
    /// Number of pages.
    pub len: u64,
}

impl PageRange {
    /// `len` pages from `start`.
    pub const fn new(start: u64, len: u64) -> PageRange {
        PageRange { start, len }
    }

    /// The pages `[start, end)`; empty if `end <= start`.
    pub const fn from_bounds(start: u64, end: u64) -> PageRange {
        PageRange {
            start,
            len: end.saturating_sub(start),
        }
    }

    /// One past the last page; saturates rather than wrapping (a range near `u64::MAX` is
    /// refused by whoever checks it against guest RAM).
    pub const fn end(self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// Whether the range holds no page.
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The first page.
    pub const fn first(self) -> Pfn {
        Pfn(self.start)
    }

    /// Whether page `pfn` lies in the range.
    pub const fn contains(self, pfn: u64) -> bool {
        pfn >= self.start && pfn < self.end()
    }

    /// Guest-physical address of the first page, and length in bytes, or `None` if either
    /// overflows.
    pub fn byte_span(self) -> Option<(GuestAddress, u64)> {
        let addr = self.start.checked_mul(PAGE_SIZE)?;
        let bytes = self.len.checked_mul(PAGE_SIZE)?;
        addr.checked_add(bytes)?;
        Some((GuestAddress(addr), bytes))
    }
}

impl From<(u64, u64)> for PageRange {
    /// A `(start, len)` pair (never `(start, end)`).
    fn from((start, len): (u64, u64)) -> PageRange {
        PageRange { start, len }
    }
}

impl fmt::Display for PageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pages [{:#x}, {:#x})", self.start, self.end())
    }
}

/// Test shorthand: `(start, len)` pairs as page ranges.
#[cfg(test)]
pub(crate) fn page_ranges(v: &[(u64, u64)]) -> Vec<PageRange> {
    v.iter().map(|&(s, l)| PageRange::new(s, l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pfn_round_trip() {
        assert_eq!(GuestAddress(0x5123).pfn(), Pfn(5));
        assert_eq!(Pfn(5).addr(), GuestAddress(0x5000));
        assert!(GuestAddress(0x5000).is_aligned(PAGE_SIZE));
        assert!(!GuestAddress(0x5001).is_aligned(2));
        assert_eq!(GuestAddress(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn test_page_range_bounds_and_span() {
        let r = PageRange::from_bounds(3, 7);
        assert_eq!(r, PageRange::new(3, 4));
        assert_eq!(r.end(), 7);
        assert!(r.contains(3) && r.contains(6) && !r.contains(7) && !r.contains(2));
        assert!(PageRange::from_bounds(7, 3).is_empty());
        assert_eq!(r.byte_span(), Some((GuestAddress(0x3000), 0x4000)));
        assert_eq!(PageRange::new(u64::MAX, 1).byte_span(), None);
        assert_eq!(PageRange::new(u64::MAX, 2).end(), u64::MAX);
    }
}
