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
}
