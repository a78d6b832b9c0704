//! `struct virtq_desc`: one 16-byte entry of a descriptor table (§2.7.5).

use crate::memory::{GuestAddress, GuestMemory, MemoryError};

use super::defs::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// A split-ring descriptor with the spec's field order and sizes (§2.7.5).
///
/// Fields hold host-order values; [`Descriptor::to_le_bytes`] and
/// [`Descriptor::from_le_bytes`] convert to and from the little-endian bytes in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` bits.
    pub flags: u16,
    /// Next descriptor of the chain when `flags` has NEXT.
    pub next: u16,
}

impl Descriptor {
    /// A descriptor with the given fields.
    pub const fn new(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    /// Decodes the 16 little-endian bytes of a descriptor.
    #[inline]
    pub fn from_le_bytes(b: [u8; 16]) -> Descriptor {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
        Descriptor {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }

    /// Encodes the descriptor as the 16 little-endian bytes the spec lays out.
    #[inline]
    pub fn to_le_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// Reads the descriptor at `addr` of guest memory.
    #[inline]
    pub fn read_from(mem: &GuestMemory, addr: GuestAddress) -> Result<Descriptor, MemoryError> {
        let mut b = [0u8; 16];
        mem.read(addr, &mut b)?;
        Ok(Descriptor::from_le_bytes(b))
    }

    /// Writes the descriptor at `addr` of guest memory.
    #[inline]
    pub fn write_to(&self, mem: &GuestMemory, addr: GuestAddress) -> Result<(), MemoryError> {
        mem.write(addr, &self.to_le_bytes())
    }

    /// Whether the chain continues at `next`.
    #[inline]
    pub fn has_next(&self) -> bool {
        self.flags & VIRTQ_DESC_F_NEXT != 0
    }

    /// Whether the buffer is device write-only.
    #[inline]
    pub fn is_write_only(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }

    /// Whether the buffer is an indirect descriptor table.
    #[inline]
    pub fn is_indirect(&self) -> bool {
        self.flags & VIRTQ_DESC_F_INDIRECT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn test_layout_matches_spec() {
        assert_eq!(size_of::<Descriptor>(), 16);
        assert_eq!(align_of::<Descriptor>(), 8);
        assert_eq!(offset_of!(Descriptor, addr), 0);
        assert_eq!(offset_of!(Descriptor, len), 8);
        assert_eq!(offset_of!(Descriptor, flags), 12);
        assert_eq!(offset_of!(Descriptor, next), 14);
    }

    #[test]
    fn test_bytes_are_little_endian_in_field_order() {
        let d = Descriptor::new(0x0807_0605_0403_0201, 0x0c0b_0a09, 0x0e0d, 0x100f);
        let b = d.to_le_bytes();
        assert_eq!(b, core::array::from_fn(|i| u8::try_from(i + 1).unwrap()));
        assert_eq!(Descriptor::from_le_bytes(b), d);
    }

    #[test]
    fn test_flags() {
        let d = Descriptor::new(0, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
        assert!(d.has_next() && d.is_write_only() && !d.is_indirect());
        assert!(Descriptor::new(0, 16, VIRTQ_DESC_F_INDIRECT, 0).is_indirect());
    }

    proptest::proptest! {
        #[test]
        fn prop_decode_encode_round_trips(addr: u64, len: u32, flags: u16, next: u16) {
            let d = Descriptor::new(addr, len, flags, next);
            proptest::prop_assert_eq!(Descriptor::from_le_bytes(d.to_le_bytes()), d);
        }
    }
}
