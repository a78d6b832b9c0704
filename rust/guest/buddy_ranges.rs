//! The buddy allocator's placed allocations: a given block, a range of pages, a split block.

use super::*;

impl BuddyAllocator {
    /// Allocates the specific block `[pfn, pfn + 2^order)`, which must be free, carving it out of
    /// the free block that holds it.
    pub fn alloc_at(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        let i = self.check_block(pfn, order)?;
        let (mut head, mut o) = match self.containing_free_block(pfn.0) {
            Some((h, o)) if o >= order => (h, o),
            _ => {
                let busy = (pfn.0..pfn.0 + (1 << order))
                    .find(|&p| !self.is_free(Pfn(p)))
                    .unwrap_or(pfn.0);
                return Err(GuestError::Busy { pfn: busy });
            }
        };
        self.unlink(head, o);
        while o > order {
            o -= 1;
            let half = 1u32 << o;
            if i >= head + half {
                self.link(head, o, false, End::Front);
                head += half;
            } else {
                self.link(head + half, o, false, End::Front);
            }
        }
        self.tag[i as usize] = ALLOCATED | order;
        Ok(())
    }

    /// Marks the `npages` pages from `pfn` used, each as an order-0 allocation, e.g. for the
    /// virtqueue rings and buffers a driver places at fixed guest addresses.
    ///
    /// All or nothing: if any page is not free, nothing changes and the first busy page is
    /// reported. Undo with [`BuddyAllocator::free_range`] (or page by page with order 0).
    pub fn reserve_range(&mut self, pfn: Pfn, npages: u64) -> Result<(), GuestError> {
        let end = self.check_range(pfn, npages)?;
        let mut p = pfn.0;
        while p < end {
            match self.containing_free_block(p) {
                Some((h, o)) => p = self.first + h as u64 + (1 << o),
                None => return Err(GuestError::Busy { pfn: p }),
            }
        }
        let mut p = pfn.0;
        while p < end {
            let order = Self::largest_fitting_order(p, end - p);
            self.alloc_at(Pfn(p), order)?;
            let i = self.index(p) as usize;
            self.tag[i..i + (1 << order)].fill(ALLOCATED);
            p += 1 << order;
        }
        Ok(())
    }

    /// Frees the `npages` pages from `pfn`, each of which must be an order-0 allocation (as
    /// [`BuddyAllocator::reserve_range`] makes them). All or nothing.
    pub fn free_range(&mut self, pfn: Pfn, npages: u64) -> Result<(), GuestError> {
        let end = self.check_range(pfn, npages)?;
        for p in pfn.0..end {
            self.check_allocated(Pfn(p), 0)?;
        }
        for p in pfn.0..end {
            self.free(Pfn(p), 0)?;
        }
        Ok(())
    }

    /// Checks that `[pfn, pfn + npages)` lies inside the allocator; returns its end.
    fn check_range(&self, pfn: Pfn, npages: u64) -> Result<u64, GuestError> {
        match pfn.0.checked_add(npages) {
            Some(end) if pfn.0 >= self.first && end <= self.end => Ok(end),
            _ => Err(GuestError::OutOfRange {
                pfn: pfn.0,
                order: 0,
                first: self.first,
                end: self.end,
            }),
        }
    }

    /// Turns the allocated block at `pfn` of `order` into `2^order` order-0 allocations, as
    /// Linux's `split_page`, so its pages can be freed one by one.
    pub fn split_allocation(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        let i = self.check_allocated(pfn, order)? as usize;
        self.tag[i..i + (1 << order)].fill(ALLOCATED);
        Ok(())
    }

    /// Allocates `pages` contiguous pages as order-0 allocations: one block of the covering
    /// order, split, its unused tail given back (how a driver reserves its buffer areas).
    pub fn alloc_pages(&mut self, pages: u64) -> Result<Pfn, GuestError> {
        let order = pages.next_power_of_two().trailing_zeros() as u8;
        let pfn = self.alloc(order)?;
        self.split_allocation(pfn, order)?;
        for p in pfn.0 + pages..pfn.0 + (1 << order) {
            self.free(Pfn(p), 0)?;
        }
        Ok(pfn)
    }
}
