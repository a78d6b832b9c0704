//! The driver's guest memory: rings and request buffers, taken from the guest's own allocator
//! so workloads never see them (Linux kmallocs them).
//!
//! | part | size |
//! |---|---|
//! | one ring area per present queue | `QueueLayout::placed_bytes(size)`, rounded to 4 KiB |
//! | stats buffer | 4 KiB |
//! | small segments (auto and bitmap headers) | 4 KiB, 64-byte slots |
//! | large segments (PFN array, extents, bitmap pieces) | 32 × 32 KiB |

use crate::memory::{GuestAddress, GuestMemory, Pfn, PAGE_SIZE};
use crate::pages::bitmap::{BALLOON_BMAP_COUNT, BALLOON_BMAP_SIZE};
use crate::virtq::{QueueLayout, Segment};

use super::error::DriverError;
use crate::guest::{Guest, GuestError};

/// Bytes of one small-segment slot.
pub const SMALL_SLOT: usize = 64;
/// Small slots (one page).
pub const SMALL_SLOTS: usize = PAGE_SIZE as usize / SMALL_SLOT;
/// Bytes of one large-segment slot: one v3 bitmap piece.
pub const LARGE_SLOT: usize = BALLOON_BMAP_SIZE;
/// Large slots: the pieces of one full bitmap message.
pub const LARGE_SLOTS: usize = BALLOON_BMAP_COUNT;

/// Where the driver's rings and buffers are in guest RAM.
#[derive(Clone, Debug)]
pub struct BufferArea {
    /// First page.
    pub pfn: Pfn,
    /// Pages reserved.
    pub pages: u64,
    /// Ring layout per present queue, by queue index.
    pub rings: Vec<QueueLayout>,
    /// The stats buffer.
    pub stats: GuestAddress,
    small: GuestAddress,
    large: GuestAddress,
}

impl BufferArea {
    /// Takes the pages for `queues` rings of `queue_size` from the guest's allocator: one block
    /// of the covering order, its unused tail given back.
    pub fn reserve(
        guest: &mut Guest,
        queues: u16,
        queue_size: u16,
    ) -> Result<BufferArea, DriverError> {
        let ring_pages = QueueLayout::placed_bytes(queue_size).div_ceil(PAGE_SIZE);
        let large_pages = (LARGE_SLOTS * LARGE_SLOT) as u64 / PAGE_SIZE;
        let pages = ring_pages * u64::from(queues) + 2 + large_pages;
        let pfn = guest.allocator_mut().alloc_pages(pages)?;
        let base = pfn.addr().raw();
        let mut rings = Vec::with_capacity(usize::from(queues));
        for i in 0..u64::from(queues) {
            let at = GuestAddress(base + i * ring_pages * PAGE_SIZE);
            rings.push(QueueLayout::place(at, queue_size)?);
        }
        let after_rings = base + u64::from(queues) * ring_pages * PAGE_SIZE;
        Ok(BufferArea {
            pfn,
            pages,
            rings,
            stats: GuestAddress(after_rings),
            small: GuestAddress(after_rings + PAGE_SIZE),
            large: GuestAddress(after_rings + 2 * PAGE_SIZE),
        })
    }

    /// Gives the pages back to the guest's allocator.
    pub fn release(&self, guest: &mut Guest) -> Result<(), GuestError> {
        guest.allocator_mut().free_range(self.pfn, self.pages)
    }

    /// Copies a message's segments into the request buffers and describes them as readable
    /// buffers in `out`. Segments of up to 64 bytes go to small slots, the rest (up to 32 KiB
    /// each) to large slots.
    pub fn place(
        &self,
        mem: &GuestMemory,
        segments: &[Vec<u8>],
        out: &mut Vec<Segment>,
    ) -> Result<(), DriverError> {
        out.clear();
        let (mut small, mut large) = (0usize, 0usize);
        for s in segments {
            let addr = if s.len() <= SMALL_SLOT && small < SMALL_SLOTS {
                small += 1;
                GuestAddress(self.small.raw() + ((small - 1) * SMALL_SLOT) as u64)
            } else {
                // Encoders never make a segment over 32 KiB or more than 32 large ones.
                if s.len() > LARGE_SLOT || large == LARGE_SLOTS {
                    return Err(DriverError::SegmentTooLarge { len: s.len() });
                }
                large += 1;
                GuestAddress(self.large.raw() + ((large - 1) * LARGE_SLOT) as u64)
            };
            mem.write(addr, s).map_err(GuestError::from)?;
            out.push(Segment::readable(addr, s.len() as u32));
        }
        Ok(())
    }
}
