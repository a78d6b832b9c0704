//! Where a split virtqueue's three parts live in guest memory, and how big they are (§2.7).

use crate::memory::{GuestAddress, GuestMemory};

use super::defs::{
    AVAIL_ELEM_SIZE, AVAIL_RING_ALIGN, DESC_SIZE, DESC_TABLE_ALIGN, EVENT_FIELD_SIZE,
    MAX_QUEUE_SIZE, RING_HEADER_SIZE, USED_ELEM_SIZE, USED_RING_ALIGN,
};
use super::error::{Result, VirtqError};

/// Checks that `size` is a power of two in 1..=32768 (§2.7).
pub fn check_queue_size(size: u16) -> Result<()> {
    if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
        return Err(VirtqError::InvalidQueueSize {
            size: u32::from(size),
        });
    }
    Ok(())
}

/// Bytes of the descriptor table of a queue of `size` entries: 16·N (§2.7).
pub const fn desc_table_bytes(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// Bytes of the available ring including `used_event`: 6 + 2·N (§2.7).
pub const fn avail_ring_bytes(size: u16) -> u64 {
    RING_HEADER_SIZE + AVAIL_ELEM_SIZE * size as u64 + EVENT_FIELD_SIZE
}

/// Bytes of the used ring including `avail_event`: 6 + 8·N (§2.7).
pub const fn used_ring_bytes(size: u16) -> u64 {
    RING_HEADER_SIZE + USED_ELEM_SIZE * size as u64 + EVENT_FIELD_SIZE
}

/// Bytes of a legacy contiguous ring of `num` entries with used-ring alignment `align` (a power
/// of two), as Linux's `vring_size()` computes it: the descriptor table and available ring
/// rounded up to `align`, then the used ring (§2.7.2).
///
/// The spec's legacy `virtq_size()` also rounds the used ring up to `align`; this returns the
/// bytes actually touched, which is what `vring_size()` in `<linux/virtio_ring.h>` returns.
pub const fn vring_size(num: u32, align: u64) -> u64 {
    let num = num as u64;
    let front = DESC_SIZE * num + AVAIL_ELEM_SIZE * (3 + num);
    ((front + align - 1) & !(align - 1)) + AVAIL_ELEM_SIZE * 3 + USED_ELEM_SIZE * num
}

const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Guest addresses of one split virtqueue's descriptor table, available ring and used ring.
///
/// The three parts may live anywhere (virtio 1.x addresses them separately); constructors check
/// the queue size and alignments, and [`QueueLayout::check_memory`] checks they lie in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
}

impl QueueLayout {
    /// A layout from three separately chosen addresses (virtio 1.x, §2.7).
    pub fn new(
        size: u16,
        desc_table: GuestAddress,
        avail_ring: GuestAddress,
        used_ring: GuestAddress,
    ) -> Result<QueueLayout> {
        check_queue_size(size)?;
        for (part, addr, align) in [
            ("descriptor table", desc_table, DESC_TABLE_ALIGN),
            ("available ring", avail_ring, AVAIL_RING_ALIGN),
            ("used ring", used_ring, USED_RING_ALIGN),
        ] {
            if !addr.is_aligned(align) {
                return Err(VirtqError::MisalignedRing {
                    part,
                    addr: addr.raw(),
                    align,
                });
            }
        }
        let layout = QueueLayout {
            size,
            desc_table,
            avail_ring,
            used_ring,
        };
        // Reject layouts whose end does not fit in 64 bits, so address helpers never wrap.
        for (part, addr, len) in layout.parts() {
            if addr.checked_add(len).is_none() {
                return Err(VirtqError::RingOutsideMemory {
                    part,
                    addr: addr.raw(),
                    len,
                });
            }
        }
        Ok(layout)
    }

    /// Packs a queue of `size` entries tightly from `base` (16-byte aligned): the descriptor
    /// table, the available ring right after it, then the used ring at the next 4-byte boundary.
    pub fn place(base: GuestAddress, size: u16) -> Result<QueueLayout> {
        check_queue_size(size)?;
        let overflow = || VirtqError::RingOutsideMemory {
            part: "queue",
            addr: base.raw(),
            len: u64::MAX,
        };
        let avail = base
            .raw()
            .checked_add(desc_table_bytes(size))
            .ok_or_else(overflow)?;
        let used = avail
            .checked_add(avail_ring_bytes(size))
            .and_then(|end| align_up(end, USED_RING_ALIGN))
            .ok_or_else(overflow)?;
        QueueLayout::new(size, base, GuestAddress(avail), GuestAddress(used))
    }

    /// The legacy contiguous layout Linux's `vring_init(vr, num, p, align)` produces: descriptor
    /// table at `base`, available ring after it, used ring at the next multiple of `align`
    /// (§2.7.2). `align` must be a power of two of at least 4.
    pub fn legacy(base: GuestAddress, size: u16, align: u64) -> Result<QueueLayout> {
        check_queue_size(size)?;
        if !align.is_power_of_two() || align < USED_RING_ALIGN {
            return Err(VirtqError::MisalignedRing {
                part: "legacy used ring",
                addr: base.raw(),
                align,
            });
        }
        let overflow = || VirtqError::RingOutsideMemory {
            part: "queue",
            addr: base.raw(),
            len: u64::MAX,
        };
        let avail = base
            .raw()
            .checked_add(desc_table_bytes(size))
            .ok_or_else(overflow)?;
        let used = avail
            .checked_add(avail_ring_bytes(size))
            .and_then(|end| align_up(end, align))
            .ok_or_else(overflow)?;
        QueueLayout::new(size, base, GuestAddress(avail), GuestAddress(used))
    }

    /// Bytes [`QueueLayout::place`] uses for a queue of `size` entries, event fields included
    /// (they are always reserved, whether or not EVENT_IDX is negotiated).
    pub fn placed_bytes(size: u16) -> u64 {
        let used = align_up(
            desc_table_bytes(size) + avail_ring_bytes(size),
            USED_RING_ALIGN,
        )
        .unwrap_or(u64::MAX);
        used + used_ring_bytes(size)
    }

    /// Queue size (number of descriptors).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest address of the descriptor table (Descriptor Area).
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// Guest address of the available ring (Driver Area).
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// Guest address of the used ring (Device Area).
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// The three parts as (name, address, bytes including event fields).
    pub fn parts(&self) -> [(&'static str, GuestAddress, u64); 3] {
        [
            (
                "descriptor table",
                self.desc_table,
                desc_table_bytes(self.size),
            ),
            (
                "available ring",
                self.avail_ring,
                avail_ring_bytes(self.size),
            ),
            ("used ring", self.used_ring, used_ring_bytes(self.size)),
        ]
    }

    /// One past the highest byte any part uses.
    pub fn end(&self) -> GuestAddress {
        let end = self
            .parts()
            .iter()
            .map(|(_, a, len)| a.raw().saturating_add(*len))
            .max()
            .unwrap_or(0);
        GuestAddress(end)
    }

    /// Bytes from the lowest part's start to [`QueueLayout::end`] (for a placed queue, its
    /// total footprint).
    pub fn total_bytes(&self) -> u64 {
        let start = self
            .parts()
            .iter()
            .map(|(_, a, _)| a.raw())
            .min()
            .unwrap_or(0);
        self.end().raw() - start
    }

    /// Checks that every part lies inside `mem`.
    pub fn check_memory(&self, mem: &GuestMemory) -> Result<()> {
        for (part, addr, len) in self.parts() {
            if !mem.contains(addr, len) {
                return Err(VirtqError::RingOutsideMemory {
                    part,
                    addr: addr.raw(),
                    len,
                });
            }
        }
        Ok(())
    }

    // Field addresses. Constructors guarantee each part's end fits in 64 bits, and `index` is
    // reduced modulo the size by callers, so these additions cannot overflow.

    /// Address of descriptor `index` (< size).
    #[inline]
    pub fn desc(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc_table.0 + DESC_SIZE * u64::from(index))
    }

    /// Address of `avail.flags`.
    #[inline]
    pub fn avail_flags(&self) -> GuestAddress {
        self.avail_ring
    }

    /// Address of `avail.idx`.
    #[inline]
    pub fn avail_idx(&self) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 2)
    }

    /// Address of `avail.ring[slot]` (slot < size).
    #[inline]
    pub fn avail_entry(&self, slot: u16) -> GuestAddress {
        ring_entry(self.avail_ring, AVAIL_ELEM_SIZE, slot)
    }

    /// Address of `used_event` (`avail.ring[size]`, §2.7.6).
    #[inline]
    pub fn used_event(&self) -> GuestAddress {
        ring_entry(self.avail_ring, AVAIL_ELEM_SIZE, self.size)
    }

    /// Address of `used.flags`.
    #[inline]
    pub fn used_flags(&self) -> GuestAddress {
        self.used_ring
    }

    /// Address of `used.idx`.
    #[inline]
    pub fn used_idx(&self) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 2)
    }

    /// Address of `used.ring[slot]` (slot < size).
    #[inline]
    pub fn used_elem(&self, slot: u16) -> GuestAddress {
        ring_entry(self.used_ring, USED_ELEM_SIZE, slot)
    }

    /// Address of `avail_event` (just past `used.ring[size]`, §2.7.8).
    #[inline]
    pub fn avail_event(&self) -> GuestAddress {
        ring_entry(self.used_ring, USED_ELEM_SIZE, self.size)
    }
}

/// Address of entry `i` of the avail or used ring at `ring` with `elem`-byte entries; `i ==
/// size` is the event word that follows the last entry (§2.7.6, §2.7.8).
#[inline]
fn ring_entry(ring: GuestAddress, elem: u64, i: u16) -> GuestAddress {
    GuestAddress(ring.0 + RING_HEADER_SIZE + elem * u64::from(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_queue_sizes() {
        for size in [1u16, 2, 4, 256, 32768] {
            check_queue_size(size).unwrap();
        }
        for size in [0u16, 3, 100, 32767, 65535] {
            assert!(matches!(
                check_queue_size(size),
                Err(VirtqError::InvalidQueueSize { .. })
            ));
        }
    }

    #[test]
    fn test_part_sizes() {
        assert_eq!(desc_table_bytes(256), 4096);
        assert_eq!(avail_ring_bytes(256), 6 + 512);
        assert_eq!(used_ring_bytes(256), 6 + 2048);
    }

    #[test]
    fn test_place_packs_at_spec_alignments() {
        let l = QueueLayout::place(GuestAddress(0x1000), 1).unwrap();
        assert_eq!(l.desc_table(), GuestAddress(0x1000));
        assert_eq!(l.avail_ring(), GuestAddress(0x1010));
        // avail ring of size 1 ends at 0x1010 + 8; already 4-aligned.
        assert_eq!(l.used_ring(), GuestAddress(0x1018));
        assert_eq!(l.total_bytes(), 16 + 8 + 14);
        let l = QueueLayout::place(GuestAddress(0), 2).unwrap();
        // avail ends at 32 + 10 = 42, rounded to 44.
        assert_eq!(l.used_ring(), GuestAddress(44));
        assert_eq!(l.end(), GuestAddress(44 + 22));
        assert_eq!(QueueLayout::placed_bytes(2), 66);
    }

    #[test]
    fn test_field_addresses() {
        let l = QueueLayout::place(GuestAddress(0), 4).unwrap();
        assert_eq!(l.desc(3), GuestAddress(48));
        assert_eq!(l.avail_idx(), GuestAddress(66));
        assert_eq!(l.avail_entry(1), GuestAddress(70));
        assert_eq!(l.used_event(), GuestAddress(64 + 4 + 8));
        assert_eq!(l.used_ring(), GuestAddress(80));
        assert_eq!(l.used_elem(2), GuestAddress(80 + 4 + 16));
        assert_eq!(l.avail_event(), GuestAddress(80 + 4 + 32));
    }

    #[test]
    fn test_misaligned_parts_rejected() {
        let bad = QueueLayout::new(8, GuestAddress(8), GuestAddress(256), GuestAddress(512));
        assert!(matches!(
            bad,
            Err(VirtqError::MisalignedRing { align: 16, .. })
        ));
        let bad = QueueLayout::new(8, GuestAddress(0), GuestAddress(257), GuestAddress(512));
        assert!(matches!(
            bad,
            Err(VirtqError::MisalignedRing { align: 2, .. })
        ));
        let bad = QueueLayout::new(8, GuestAddress(0), GuestAddress(256), GuestAddress(514));
        assert!(matches!(
            bad,
            Err(VirtqError::MisalignedRing { align: 4, .. })
        ));
        let bad = QueueLayout::place(GuestAddress(u64::MAX - 15), 8);
        assert!(matches!(bad, Err(VirtqError::RingOutsideMemory { .. })));
    }

    #[test]
    fn test_vring_size_known_values() {
        // 256 entries, 4096 align: 4096 + 518 -> 8192, + 6 + 2048.
        assert_eq!(vring_size(256, 4096), 8192 + 2054);
        assert_eq!(vring_size(1, 4), 24 + 14);
        let l = QueueLayout::legacy(GuestAddress(0), 256, 4096).unwrap();
        assert_eq!(l.used_ring(), GuestAddress(8192));
        assert_eq!(l.end().raw(), vring_size(256, 4096));
    }
}
