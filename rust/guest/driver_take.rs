//! Which pages the driver takes for the balloon and gives back: blocks of
//! [`DriverOptions::alloc_order`](super::DriverOptions::alloc_order) first (2 MiB-aligned
//! with [`HUGE_PAGE_ORDER`], so a host on 2 MiB pages can give whole pages back), falling back
//! to 4 KiB pages; deflate splits a block when it needs only part of it.

use std::time::Instant;

use super::{pack, unpack, BalloonDriver, Dir, DriverError};
use crate::guest::{Guest, GuestError};
use crate::memory::Pfn;

/// Order of a 2 MiB block of 4 KiB pages: the host page of THP and hugetlbfs RAM on x86-64.
/// Buddy blocks are naturally aligned, so each such block is one whole host huge page.
pub const HUGE_PAGE_ORDER: u8 = 9;

impl BalloonDriver {
    /// Takes up to `want` pages from the allocator and sends the first message.
    pub(super) fn start_inflate(
        &mut self,
        guest: &mut Guest,
        want: u64,
    ) -> Result<u64, DriverError> {
        let t0 = Instant::now();
        let mut order = self.opts.alloc_order.min(crate::guest::MAX_PAGE_ORDER);
        let mut blocks = Vec::with_capacity(want.min(1 << 24) as usize);
        let mut got = 0u64;
        let alloc = guest.allocator_mut();
        while got < want {
            let o = if want - got >= 1 << order { order } else { 0 };
            match alloc.alloc(o) {
                Ok(pfn) => {
                    blocks.push(pack(pfn, o));
                    got += 1 << o;
                }
                // No block of that order left: 4 KiB pages from here on.
                Err(GuestError::OutOfMemory { .. }) if o > 0 => order = 0,
                Err(GuestError::OutOfMemory { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.counters.alloc_ns += t0.elapsed().as_nanos() as u64;
        if got == 0 {
            self.counters.alloc_failures += 1;
            return Ok(0);
        }
        self.start_batch(guest, Dir::Inflate, blocks, got)?;
        Ok(got)
    }

    /// Takes `want` pages (most recently inflated first) out of the balloon and sends the first
    /// message; without MUST_TELL_HOST the pages are given back right away. A block larger than
    /// what is still wanted is split into 4 KiB pages first (as Linux's `split_page`), so a
    /// deflate can take part of a 2 MiB block.
    pub(super) fn start_deflate(
        &mut self,
        guest: &mut Guest,
        want: u64,
    ) -> Result<(), DriverError> {
        let mut got = 0u64;
        let mut cut = self.ballooned.len();
        while got < want && cut > 0 {
            let (pfn, order) = unpack(self.ballooned[cut - 1]);
            if got + (1 << order) > want {
                guest.allocator_mut().split_allocation(pfn, order)?;
                // The block becomes its pages, lowest last so they leave lowest first.
                let n = 1u64 << order;
                let pages = (0..n).rev().map(|i| pack(Pfn(pfn.0 + i), 0));
                self.ballooned.splice(cut - 1..cut, pages);
                // The last `need` of the block's pages join the blocks already taken after it.
                let need = want - got;
                got += need;
                cut = cut - 1 + (n - need) as usize;
                break;
            }
            got += 1 << order;
            cut -= 1;
        }
        let blocks = self.ballooned.split_off(cut);
        self.start_batch(guest, Dir::Deflate, blocks, got)
    }
}
