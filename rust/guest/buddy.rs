//! The guest's page allocator: a binary buddy allocator over guest page frames, orders 0..=10
//! as in Linux (`MAX_ORDER` = 11, so the largest block is 4 MiB of 4 KiB pages).
//!
//! Free blocks sit on one doubly-linked free list per order, so "which pages are free" is a walk
//! of real free lists, the way the balloon driver's unused-page scan walks Linux's buddy lists.
//! The lists are intrusive but live in side arrays indexed by page (never in guest RAM: writing
//! list links into free pages would dirty them and refault ballooned ones):
//!
//! | array | bytes per page | holds |
//! |---|---|---|
//! | `links` | 8 | next and previous block on the same free list, as page offsets (meaningful for free block heads; `prev` makes unlinking a buddy being merged O(1)) |
//! | `tag` | 1 | per block head: order, state (free / allocated / isolated), "reported" |
//!
//! So **9 bytes per 4 KiB page** (0.22%): 18 MiB for an 8 GiB guest, 288 MiB for 128 GiB.
//! Both links of a page share one `u64`, so unlinking touches one cache line; and the arrays
//! come zeroed from calloc, so setting up a guest of 4 MiB blocks faults in only every other
//! page of `links` (about 5 bytes per page of RSS until memory gets fragmented).
//! Pages inside a block carry tag 0; only a block's first page says what the block is.
//!
//! Behaviour follows Linux where it is visible to a balloon driver or a migration: an allocation
//! takes the first block of the lowest non-empty order at or above the one asked for and splits
//! it, keeping the lower half and putting upper halves back; a free coalesces with free buddies;
//! freed blocks go to the front of their list (hot pages are reused first). Nothing is random, so
//! a sequence of calls always gives the same pages.
//!
//! Free page reporting (Linux 5.7, `VIRTIO_BALLOON_F_REPORTING`): blocks of order ≥
//! [`PAGEBLOCK_ORDER`] can be isolated, handed to the device, then put back marked *reported*.
//! The mark is cleared when the block is allocated, split or merged. Reported blocks are kept at
//! the tail of their list, so finding unreported ones never rescans reported ones.

use super::error::GuestError;
use crate::memory::{GuestMemory, Pfn};

/// Number of block orders, as Linux's `MAX_ORDER` before 6.4: orders `0..MAX_ORDER`.
pub const MAX_ORDER: u8 = 11;
/// The largest block order (4 MiB). Free page hinting hands blocks of this order to the host
/// (`VIRTIO_BALLOON_HINT_BLOCK_ORDER`, protocol.md §2.5).
pub const MAX_PAGE_ORDER: u8 = MAX_ORDER - 1;
/// The smallest order free page reporting reports (2 MiB on x86, `pageblock_order`): smaller
/// blocks would break up transparent huge pages on the host (protocol.md §2.6).
pub const PAGEBLOCK_ORDER: u8 = 9;
/// Most page frames one allocator manages: frame indexes are 32-bit.
pub const MAX_PAGES: u64 = u32::MAX as u64;

/// End of a free list.
const NIL: u32 = u32::MAX;
/// Tag bits: the order of the block that starts here.
const ORDER_MASK: u8 = 0x0f;
/// Tag bits: the state of the block that starts here.
const STATE_MASK: u8 = 0x30;
/// Not the first page of a block (inside one).
const INTERIOR: u8 = 0x00;
/// First page of a free block, on the free list of its order.
const FREE: u8 = 0x10;
/// First page of an allocated block.
const ALLOCATED: u8 = 0x20;
/// First page of a block taken off the free lists for reporting (neither free nor allocated).
const ISOLATED: u8 = 0x30;
/// The free block has been reported to the host and not touched since.
const REPORTED: u8 = 0x40;

/// A buddy allocator over the guest page frames `[first_pfn, end_pfn)`.
///
/// Buddies are found by absolute PFN (`pfn ^ (1 << order)`), so a range that does not start on a
/// 4 MiB boundary simply has smaller blocks at its edges.
#[derive(Clone, Debug)]
pub struct BuddyAllocator {
    first: u64,
    end: u64,
    /// Per page: `next | prev << 32`, the neighbours of the free block starting there.
    links: Vec<u64>,
    tag: Vec<u8>,
    heads: [u32; MAX_ORDER as usize],
    tails: [u32; MAX_ORDER as usize],
    counts: [u64; MAX_ORDER as usize],
    /// Bit `o` set when the order-`o` list is not empty.
    nonempty: u16,
    free_pages: u64,
    isolated_pages: u64,
    reported_pages: u64,
}

/// Which end of a free list a block goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Front,
    Back,
}

impl BuddyAllocator {
    /// An allocator over page frames `[0, total_pages)`, all free, in blocks as large as
    /// alignment allows (order 10 for all but a tail that is not a multiple of 4 MiB).
    pub fn new(total_pages: u64) -> Result<BuddyAllocator, GuestError> {
        Self::with_range(Pfn(0), Pfn(total_pages))
    }

    /// An allocator over every page of `memory`, all free.
    pub fn for_memory(memory: &GuestMemory) -> Result<BuddyAllocator, GuestError> {
        Self::new(memory.pages())
    }

    /// An allocator over page frames `[first, end)`, all free.
    pub fn with_range(first: Pfn, end: Pfn) -> Result<BuddyAllocator, GuestError> {
        let pages = end.0.saturating_sub(first.0);
        if pages > MAX_PAGES {
            return Err(GuestError::TooManyPages {
                pages,
                max: MAX_PAGES,
            });
        }
        let n = pages as usize;
        // `vec![0; n]` comes from calloc: the kernel hands out zero pages lazily, so init only
        // pays for the entries it writes.
        let mut alloc = BuddyAllocator {
            first: first.0,
            end: first.0 + pages,
            links: vec![0; n],
            tag: vec![INTERIOR; n],
            heads: [NIL; MAX_ORDER as usize],
            tails: [NIL; MAX_ORDER as usize],
            counts: [0; MAX_ORDER as usize],
            nonempty: 0,
            free_pages: 0,
            isolated_pages: 0,
            reported_pages: 0,
        };
        let mut pfn = alloc.first;
        while pfn < alloc.end {
            let order = Self::largest_fitting_order(pfn, alloc.end - pfn);
            // Ascending addresses at the back: allocations start at the lowest frames.
            alloc.link((pfn - alloc.first) as u32, order, false, End::Back);
            pfn += 1 << order;
        }
        Ok(alloc)
    }

    /// The largest order whose block starts at `pfn` (aligned) and fits in `room` pages.
    fn largest_fitting_order(pfn: u64, room: u64) -> u8 {
        let align = pfn.trailing_zeros().min(MAX_PAGE_ORDER as u32);
        let fit = 63 - room.leading_zeros(); // room > 0
        align.min(fit) as u8
    }

    /// First page frame managed.
    pub fn first_pfn(&self) -> Pfn {
        Pfn(self.first)
    }

    /// One past the last page frame managed.
    pub fn end_pfn(&self) -> Pfn {
        Pfn(self.end)
    }

    /// Number of page frames managed.
    pub fn total_pages(&self) -> u64 {
        self.end - self.first
    }

    /// Pages on the free lists.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Pages isolated for free page reporting (neither free nor allocated), as Linux
    /// subtracts them from `NR_FREE_PAGES` while the device looks at them.
    pub fn isolated_pages(&self) -> u64 {
        self.isolated_pages
    }

    /// Pages allocated (including reserved ones).
    pub fn used_pages(&self) -> u64 {
        self.total_pages() - self.free_pages - self.isolated_pages
    }

    /// Free pages in blocks marked reported (the host has already discarded them).
    pub fn reported_pages(&self) -> u64 {
        self.reported_pages
    }

    /// Number of free blocks of `order` (0 for an order above [`MAX_PAGE_ORDER`]).
    pub fn free_blocks(&self, order: u8) -> u64 {
        self.counts.get(order as usize).copied().unwrap_or(0)
    }

    /// Number of free blocks of each order, `[order 0, …, order 10]` (like `/proc/buddyinfo`).
    pub fn free_block_counts(&self) -> [u64; MAX_ORDER as usize] {
        self.counts
    }

    /// The highest order with a free block, or `None` when nothing is free.
    pub fn largest_free_order(&self) -> Option<u8> {
        (self.nonempty != 0).then(|| 15 - self.nonempty.leading_zeros() as u8)
    }

    fn next(&self, i: u32) -> u32 {
        self.links[i as usize] as u32
    }

    fn prev(&self, i: u32) -> u32 {
        (self.links[i as usize] >> 32) as u32
    }

    fn set_links(&mut self, i: u32, next: u32, prev: u32) {
        self.links[i as usize] = next as u64 | (prev as u64) << 32;
    }

    fn set_next(&mut self, i: u32, next: u32) {
        let l = &mut self.links[i as usize];
        *l = (*l & !0xffff_ffff) | next as u64;
    }

    fn set_prev(&mut self, i: u32, prev: u32) {
        let l = &mut self.links[i as usize];
        *l = (*l & 0xffff_ffff) | (prev as u64) << 32;
    }

    fn index(&self, pfn: u64) -> u32 {
        (pfn - self.first) as u32
    }

    fn pfn_of(&self, i: u32) -> Pfn {
        Pfn(self.first + i as u64)
    }

    /// Puts block `i` of `order` on its free list and tags it free.
    fn link(&mut self, i: u32, order: u8, reported: bool, end: End) {
        let o = order as usize;
        let (iu, size) = (i as usize, 1u64 << order);
        self.tag[iu] = FREE | order | if reported { REPORTED } else { 0 };
        if end == End::Front || self.heads[o] == NIL {
            let h = self.heads[o];
            self.set_links(i, h, NIL);
            if h == NIL {
                self.tails[o] = i;
            } else {
                self.set_prev(h, i);
            }
            self.heads[o] = i;
        } else {
            let t = self.tails[o];
            self.set_links(i, NIL, t);
            self.set_next(t, i);
            self.tails[o] = i;
        }
        self.counts[o] += 1;
        self.nonempty |= 1 << order;
        self.free_pages += size;
        if reported {
            self.reported_pages += size;
        }
    }

    /// Takes free block `i` of `order` off its list; its tag becomes interior.
    fn unlink(&mut self, i: u32, order: u8) {
        let o = order as usize;
        let iu = i as usize;
        let size = 1u64 << order;
        let (n, p) = (self.next(i), self.prev(i));
        if p == NIL {
            self.heads[o] = n;
        } else {
            self.set_next(p, n);
        }
        if n == NIL {
            self.tails[o] = p;
        } else {
            self.set_prev(n, p);
        }
        if self.tag[iu] & REPORTED != 0 {
            self.reported_pages -= size;
        }
        self.tag[iu] = INTERIOR;
        self.counts[o] -= 1;
        if self.counts[o] == 0 {
            self.nonempty &= !(1 << order);
        }
        self.free_pages -= size;
    }

    /// Checks that `[pfn, pfn + 2^order)` is a possible block here and returns its index.
    fn check_block(&self, pfn: Pfn, order: u8) -> Result<u32, GuestError> {
        if order > MAX_PAGE_ORDER {
            return Err(GuestError::BadOrder {
                order,
                max: MAX_PAGE_ORDER,
            });
        }
        let inside = pfn
            .0
            .checked_add(1 << order)
            .is_some_and(|end| pfn.0 >= self.first && end <= self.end);
        if !inside {
            return Err(GuestError::OutOfRange {
                pfn: pfn.0,
                order,
                first: self.first,
                end: self.end,
            });
        }
        if pfn.0 & ((1 << order) - 1) != 0 {
            return Err(GuestError::Misaligned { pfn: pfn.0, order });
        }
        Ok(self.index(pfn.0))
    }

    /// Allocates a block of `2^order` pages, as `alloc_pages(order)`.
    ///
    /// Takes the first block of the lowest non-empty order ≥ `order`, keeps its lowest part and
    /// puts the upper halves back on the lower-order lists.
    pub fn alloc(&mut self, order: u8) -> Result<Pfn, GuestError> {
        if order > MAX_PAGE_ORDER {
            return Err(GuestError::BadOrder {
                order,
                max: MAX_PAGE_ORDER,
            });
        }
        let avail = self.nonempty >> order;
        if avail == 0 {
            return Err(GuestError::OutOfMemory { order });
        }
        let mut o = order + avail.trailing_zeros() as u8;
        let i = self.heads[o as usize];
        self.unlink(i, o);
        while o > order {
            o -= 1;
            self.link(i + (1 << o), o, false, End::Front);
        }
        self.tag[i as usize] = ALLOCATED | order;
        Ok(self.pfn_of(i))
    }

    /// Allocates up to `max` blocks of `order`, appending them to `out`; returns how many.
    ///
    /// Stops early when memory runs out (free page hinting takes order-10 blocks until the
    /// allocation fails, protocol.md §2.5).
    pub fn alloc_many(
        &mut self,
        order: u8,
        max: usize,
        out: &mut Vec<Pfn>,
    ) -> Result<usize, GuestError> {
        let mut n = 0;
        while n < max {
            match self.alloc(order) {
                Ok(pfn) => out.push(pfn),
                Err(GuestError::OutOfMemory { .. }) => break,
                Err(e) => return Err(e),
            }
            n += 1;
        }
        Ok(n)
    }

    /// Frees the block `[pfn, pfn + 2^order)` allocated earlier with the same order, merging it
    /// with its free buddies.
    pub fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), GuestError> {
        let i = self.check_allocated(pfn, order)?;
        self.tag[i as usize] = INTERIOR;
        self.merge_and_link(i, order, false);
        Ok(())
    }

    /// Checks that an allocated block starts at `pfn` with `order`; returns its index.
    fn check_allocated(&self, pfn: Pfn, order: u8) -> Result<u32, GuestError> {
        let i = self.check_block(pfn, order)?;
        let t = self.tag[i as usize];
        match t & STATE_MASK {
            ALLOCATED if t & ORDER_MASK == order => Ok(i),
            ALLOCATED => Err(GuestError::WrongOrder {
                pfn: pfn.0,
                order,
                allocated: t & ORDER_MASK,
            }),
            FREE => Err(GuestError::DoubleFree { pfn: pfn.0 }),
            INTERIOR if self.is_free(pfn) => Err(GuestError::DoubleFree { pfn: pfn.0 }),
            _ => Err(GuestError::NotAllocated { pfn: pfn.0 }),
        }
    }

    /// Links block `i` of `order` (tag already interior), merged with every free buddy.
    ///
    /// A block that merges is new free memory and loses any report mark; one that does not
    /// merge keeps `reported` and then goes to the tail of its list.
    fn merge_and_link(&mut self, mut i: u32, mut order: u8, reported: bool) {
        let mut merged = false;
        while order < MAX_PAGE_ORDER {
            let size = 1u64 << order;
            let buddy = (self.first + i as u64) ^ size;
            if buddy < self.first || buddy + size > self.end {
                break;
            }
            let b = self.index(buddy);
            if self.tag[b as usize] & (STATE_MASK | ORDER_MASK) != FREE | order {
                break;
            }
            self.unlink(b, order);
            i = i.min(b);
            order += 1;
            merged = true;
        }
        if reported && !merged {
            self.link(i, order, true, End::Back);
        } else {
            self.link(i, order, false, End::Front);
        }
    }

    /// The free block containing `pfn`, as (index of its head, order).
    fn containing_free_block(&self, pfn: u64) -> Option<(u32, u8)> {
        if pfn < self.first || pfn >= self.end {
            return None;
        }
        for k in 0..MAX_ORDER {
            let head = pfn & !((1u64 << k) - 1);
            if head < self.first {
                break;
            }
            let t = self.tag[(head - self.first) as usize];
            if t & STATE_MASK == FREE && t & ORDER_MASK >= k {
                return Some((self.index(head), t & ORDER_MASK));
            }
        }
        None
    }

    /// Whether page `pfn` lies in a free block (false outside the allocator's range).
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.containing_free_block(pfn.0).is_some()
    }

    /// The free block containing `pfn`, as (first page, order), or `None` if the page is not free.
    pub fn free_block_containing(&self, pfn: Pfn) -> Option<(Pfn, u8)> {
        self.containing_free_block(pfn.0)
            .map(|(i, o)| (self.pfn_of(i), o))
    }

    /// Whether page `pfn` lies in a free block marked reported.
    pub fn is_reported(&self, pfn: Pfn) -> bool {
        self.containing_free_block(pfn.0)
            .is_some_and(|(i, _)| self.tag[i as usize] & REPORTED != 0)
    }

    /// The order `pfn` was allocated with, if it is the first page of an allocated block.
    pub fn allocated_order(&self, pfn: Pfn) -> Option<u8> {
        if pfn.0 < self.first || pfn.0 >= self.end {
            return None;
        }
        let t = self.tag[self.index(pfn.0) as usize];
        (t & STATE_MASK == ALLOCATED).then_some(t & ORDER_MASK)
    }

    /// Takes up to `max_blocks` free blocks of order ≥ `min_order` that are not yet reported off
    /// the free lists, appending (first page, order) to `out`; returns how many.
    ///
    /// This is free page reporting's isolation step: the blocks are neither free nor allocated
    /// until [`BuddyAllocator::putback`] returns them. Lower orders are taken first, as Linux's
    /// `page_reporting_process_zone` walks orders upward.
    pub fn isolate_unreported(
        &mut self,
        min_order: u8,
        max_blocks: usize,
        out: &mut Vec<(Pfn, u8)>,
    ) -> usize {
        let mut n = 0;
        for order in min_order..MAX_ORDER {
            while n < max_blocks {
                // Reported blocks are kept behind unreported ones, so the head tells.
                let h = self.heads[order as usize];
                if h == NIL || self.tag[h as usize] & REPORTED != 0 {
                    break;
                }
                self.unlink(h, order);
                self.tag[h as usize] = ISOLATED | order;
                self.isolated_pages += 1 << order;
                out.push((self.pfn_of(h), order));
                n += 1;
            }
        }
        n
    }

    /// Returns an isolated block to the free lists, merging it with free buddies.
    ///
    /// With `reported` (the device has acknowledged it) the block is marked reported, unless it
    /// merged with a buddy freed meanwhile: the merged block holds unreported pages.
    pub fn putback(&mut self, pfn: Pfn, order: u8, reported: bool) -> Result<(), GuestError> {
        let i = self.check_block(pfn, order)?;
        if self.tag[i as usize] != ISOLATED | order {
            return Err(GuestError::NotIsolated { pfn: pfn.0, order });
        }
        self.isolated_pages -= 1 << order;
        self.tag[i as usize] = INTERIOR;
        self.merge_and_link(i, order, reported);
        Ok(())
    }

    /// The first pages of the free blocks of `order`, in list order.
    pub fn free_list(&self, order: u8) -> FreeList<'_> {
        let at = self.heads.get(order as usize).copied().unwrap_or(NIL);
        FreeList { alloc: self, at }
    }

    /// Calls `f(first page, order)` for every free block, walking the free lists from order 10
    /// down to 0.
    pub fn for_each_free_block(&self, mut f: impl FnMut(Pfn, u8)) {
        for order in (0..MAX_ORDER).rev() {
            for pfn in self.free_list(order) {
                f(pfn, order);
            }
        }
    }
}

/// Iterator over one free list: the first page of each free block of one order.
#[derive(Clone, Debug)]
pub struct FreeList<'a> {
    alloc: &'a BuddyAllocator,
    at: u32,
}

impl Iterator for FreeList<'_> {
    type Item = Pfn;

    fn next(&mut self) -> Option<Pfn> {
        if self.at == NIL {
            return None;
        }
        let pfn = self.alloc.pfn_of(self.at);
        self.at = self.alloc.next(self.at);
        Some(pfn)
    }
}

#[cfg(any(test, feature = "test-utils"))]
#[path = "buddy_check.rs"]
mod check;

#[path = "buddy_ranges.rs"]
mod ranges;

#[cfg(test)]
#[path = "buddy_tests.rs"]
mod tests;
