//! Workloads: what a guest does with its memory before and during a balloon or a migration.
//!
//! A [`Workload`] allocates pages from the guest's allocator and fills them, remembers what it
//! holds, frees some of it again (freed pages keep their stale bytes, as after a memory-heavy
//! job ended: the published M2 scenario), fragments free memory on purpose, fills a page cache,
//! and dirties its pages while a migration runs. Pages it never allocates stay never touched.
//! Everything is driven by a seeded [`Rng`], so a scenario reproduces exactly.

use super::buddy::{BuddyAllocator, MAX_PAGE_ORDER};
use super::error::GuestError;
use super::kernel::Guest;
use crate::memory::{GuestAddress, Pfn, PAGE_SIZE};
use crate::util::Rng;

/// Bytes one [`Workload::dirty_pages`] write changes: a cache line.
pub const DIRTY_WRITE_BYTES: u64 = 64;

/// A block a workload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allocation {
    /// First page.
    pub pfn: Pfn,
    /// Order: the block is `2^order` pages.
    pub order: u8,
}

impl Allocation {
    /// Pages in the block.
    pub fn pages(&self) -> u64 {
        1 << self.order
    }
}

/// What a workload writes into the pages it allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Random, incompressible bytes (never a zero page).
    Random,
    /// Every byte the same value (0 gives zero pages, which a migration may detect and skip).
    Byte(u8),
}

/// The free-block order [`Workload::fragment`] leaves at most, for a knob in `[0, 1]`:
/// `round((1 - knob) × 10)`, so 0.0 keeps 4 MiB blocks and 1.0 leaves only single pages.
pub fn fragment_max_order(knob: f64) -> u8 {
    ((1.0 - knob.clamp(0.0, 1.0)) * MAX_PAGE_ORDER as f64).round() as u8
}

/// A reproducible guest workload and the memory it holds.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: Rng,
    fill: Fill,
    allocations: Vec<Allocation>,
    pages: u64,
}

impl Workload {
    /// A workload seeded with `seed` that fills its pages with random bytes.
    pub fn new(seed: u64) -> Workload {
        Workload {
            rng: Rng::new(seed),
            fill: Fill::Random,
            allocations: Vec::new(),
            pages: 0,
        }
    }

    /// The same workload, filling pages with `fill` instead.
    pub fn with_fill(mut self, fill: Fill) -> Workload {
        self.fill = fill;
        self
    }

    /// The blocks the workload holds.
    pub fn allocations(&self) -> &[Allocation] {
        &self.allocations
    }

    /// Pages the workload holds.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The workload's random generator (for callers that want to pick from the same stream).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Writes `self.fill` into `npages` pages from `pfn`.
    fn fill_pages(&mut self, guest: &mut Guest, pfn: Pfn, npages: u64) -> Result<(), GuestError> {
        match self.fill {
            Fill::Byte(b) => guest.fill(pfn.addr(), npages * PAGE_SIZE, b),
            Fill::Random => {
                let mut page = [0u8; PAGE_SIZE as usize];
                for p in pfn.0..pfn.0 + npages {
                    self.rng.fill(&mut page);
                    guest.write(Pfn(p).addr(), &page)?;
                }
                Ok(())
            }
        }
    }

    /// Allocates `bytes` (rounded up to whole blocks) in blocks of `order`, fills every page and
    /// keeps them; returns the pages allocated.
    ///
    /// When memory runs out the blocks already allocated are kept and the error is returned.
    pub fn allocate(
        &mut self,
        guest: &mut Guest,
        bytes: u64,
        order: u8,
    ) -> Result<u64, GuestError> {
        let block = PAGE_SIZE << order.min(MAX_PAGE_ORDER);
        let blocks = bytes.div_ceil(block);
        for _ in 0..blocks {
            // Through the guest, so a shrinker may give memory back first (hinted blocks).
            let pfn = guest.alloc(order)?;
            self.fill_pages(guest, pfn, 1 << order)?;
            self.allocations.push(Allocation { pfn, order });
            self.pages += 1 << order;
        }
        Ok(blocks << order)
    }

    /// Allocates `bytes` of page cache in single pages, fills them and hands them to the guest's
    /// page cache (they count as reclaimable, and [`Guest::drop_caches`] frees them); returns the
    /// pages cached. The workload does not hold them.
    pub fn fill_page_cache(&mut self, guest: &mut Guest, bytes: u64) -> Result<u64, GuestError> {
        let pages = bytes.div_ceil(PAGE_SIZE);
        for _ in 0..pages {
            let pfn = guest.allocator_mut().alloc(0)?;
            self.fill_pages(guest, pfn, 1)?;
            guest.add_page_cache(pfn)?;
        }
        Ok(pages)
    }

    /// Frees a random `share` (`0.0..=1.0`) of the blocks the workload holds; returns the pages
    /// freed. Their bytes stay as they were: free memory now holds stale data.
    pub fn free_share(&mut self, guest: &mut Guest, share: f64) -> Result<u64, GuestError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(GuestError::BadParameter {
                name: "share",
                value: share.to_string(),
            });
        }
        let n = (self.allocations.len() as f64 * share).round() as usize;
        // A partial Fisher–Yates: the chosen blocks end up at the tail.
        let len = self.allocations.len();
        for k in 0..n {
            let i = len - 1 - k;
            let j = self.rng.below(i as u64 + 1) as usize;
            self.allocations.swap(i, j);
        }
        self.free_tail(guest, len - n)
    }

    /// Frees every block the workload holds; returns the pages freed.
    pub fn free_all(&mut self, guest: &mut Guest) -> Result<u64, GuestError> {
        self.free_tail(guest, 0)
    }

    /// Frees `allocations[keep..]`.
    fn free_tail(&mut self, guest: &mut Guest, keep: usize) -> Result<u64, GuestError> {
        let mut freed = 0;
        while self.allocations.len() > keep {
            let Some(&a) = self.allocations.last() else {
                break;
            };
            guest.allocator_mut().free(a.pfn, a.order)?;
            self.allocations.pop();
            self.pages -= a.pages();
            freed += a.pages();
        }
        Ok(freed)
    }

    /// Fragments `bytes` of free memory: allocates them page by page and fills them, then frees
    /// a `free_share` of them in scattered blocks no larger than
    /// [`fragment_max_order`]`(knob)`; returns the pages freed. The rest stays held.
    ///
    /// With maximum order `k < 10`, memory is cut into aligned chunks of `2^(k+1)` pages that the
    /// workload holds entirely, and one random half of a chunk is freed with probability
    /// `2 × free_share`; its other half stays allocated, so the freed half cannot merge past
    /// order `k`. So `free_share` is at most 0.5 for `knob > 0.05`. With `k = 10` whole 4 MiB
    /// blocks are freed with probability `free_share`. Chunks the workload does not wholly hold
    /// (at the edges of what it got) are never freed from.
    pub fn fragment(
        &mut self,
        guest: &mut Guest,
        bytes: u64,
        free_share: f64,
        knob: f64,
    ) -> Result<u64, GuestError> {
        if !(0.0..=1.0).contains(&knob) {
            return Err(GuestError::BadParameter {
                name: "knob",
                value: knob.to_string(),
            });
        }
        let k = fragment_max_order(knob);
        let (chunk_order, p) = if k == MAX_PAGE_ORDER {
            (k, free_share)
        } else {
            (k + 1, 2.0 * free_share)
        };
        if !(0.0..=1.0).contains(&p) {
            return Err(GuestError::BadParameter {
                name: "free_share",
                value: free_share.to_string(),
            });
        }
        let pages = bytes.div_ceil(PAGE_SIZE);
        let mut pfns = Vec::with_capacity(pages.min(guest.allocator().free_pages()) as usize);
        for _ in 0..pages {
            let pfn = guest.allocator_mut().alloc(0)?;
            self.fill_pages(guest, pfn, 1)?;
            pfns.push(pfn);
        }
        pfns.sort_unstable();
        let chunk = 1usize << chunk_order;
        let mut freed = 0;
        let mut i = 0;
        while i < pfns.len() {
            let start = pfns[i].0 & !(chunk as u64 - 1);
            let whole = i + chunk <= pfns.len()
                && pfns[i].0 == start
                && pfns[i + chunk - 1].0 == start + chunk as u64 - 1;
            if !whole {
                self.hold(Allocation {
                    pfn: pfns[i],
                    order: 0,
                });
                i += 1;
                continue;
            }
            let free_range = if self.rng.chance(p) {
                if chunk_order == k {
                    0..chunk
                } else if self.rng.chance(0.5) {
                    0..chunk / 2
                } else {
                    chunk / 2..chunk
                }
            } else {
                0..0
            };
            for (j, &pfn) in pfns[i..i + chunk].iter().enumerate() {
                if free_range.contains(&j) {
                    guest.allocator_mut().free(pfn, 0)?;
                    freed += 1;
                } else {
                    self.hold(Allocation { pfn, order: 0 });
                }
            }
            i += chunk;
        }
        Ok(freed)
    }

    fn hold(&mut self, a: Allocation) {
        self.allocations.push(a);
        self.pages += a.pages();
    }

    /// Writes [`DIRTY_WRITE_BYTES`] random bytes into each of `count` pages picked at random
    /// among those the workload holds (a page may be picked twice); returns the writes made.
    ///
    /// Each write goes through [`Guest::write`], so the guest's dirty hook sees every one. A
    /// block is picked uniformly, then a page in it.
    pub fn dirty_pages(&mut self, guest: &mut Guest, count: u64) -> Result<u64, GuestError> {
        if self.allocations.is_empty() {
            return Ok(0);
        }
        let mut buf = [0u8; DIRTY_WRITE_BYTES as usize];
        for _ in 0..count {
            let a = self.allocations[self.rng.below(self.allocations.len() as u64) as usize];
            let page = a.pfn.0 + self.rng.below(a.pages());
            let line = self.rng.below(PAGE_SIZE / DIRTY_WRITE_BYTES) * DIRTY_WRITE_BYTES;
            self.rng.fill(&mut buf);
            guest.write(
                GuestAddress((page << crate::memory::PAGE_SHIFT) + line),
                &buf,
            )?;
        }
        Ok(count)
    }

    /// The checksum of every page the workload holds, in allocation order.
    pub fn checksums(&self, guest: &Guest) -> Result<Vec<(Pfn, u64)>, GuestError> {
        let mut sums = Vec::with_capacity(self.pages as usize);
        for a in &self.allocations {
            for p in a.pfn.0..a.pfn.0 + a.pages() {
                sums.push((Pfn(p), guest.page_checksum(Pfn(p))?));
            }
        }
        Ok(sums)
    }

    /// The pages among `sums` whose checksum differs now.
    pub fn changed_pages(guest: &Guest, sums: &[(Pfn, u64)]) -> Result<Vec<Pfn>, GuestError> {
        let mut changed = Vec::new();
        for &(pfn, sum) in sums {
            if guest.page_checksum(pfn)? != sum {
                changed.push(pfn);
            }
        }
        Ok(changed)
    }
}

/// Free blocks above order `max_order`, as (first page, order): empty when memory is fragmented
/// to at most that order.
pub fn free_blocks_above(alloc: &BuddyAllocator, max_order: u8) -> Vec<(Pfn, u8)> {
    let mut v = Vec::new();
    alloc.for_each_free_block(|pfn, order| {
        if order > max_order {
            v.push((pfn, order));
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::guest::test_guest as guest;

    // Guests here stay small (a few hundred KiB touched): unit tests share a process with tests
    // that measure its RSS. Big scenarios live in tests/guest_workload.rs.

    #[test]
    fn test_allocate_free_leaves_stale_data() {
        let mut g = guest(512);
        let mut w = Workload::new(1);
        assert_eq!(w.allocate(&mut g, 100 * PAGE_SIZE + 1, 0).unwrap(), 101);
        let before = w.checksums(&g).unwrap();
        assert_eq!(w.free_share(&mut g, 0.5).unwrap(), 51);
        assert_eq!(g.allocator().free_pages(), 512 - 50);
        // Held pages are unchanged; freed ones still hold their bytes.
        assert!(Workload::changed_pages(&g, &before).unwrap().is_empty());
        let freed: Vec<_> = before
            .iter()
            .filter(|(p, _)| g.allocator().is_free(*p))
            .collect();
        assert_eq!(freed.len(), 51);
        assert!(!g.memory().is_zero(freed[0].0.addr(), PAGE_SIZE).unwrap());
        assert_eq!(w.free_all(&mut g).unwrap(), 50);
        assert_eq!(g.allocator().free_block_counts()[9], 1);
        g.allocator().check_invariants().unwrap();
    }

    #[test]
    fn test_allocate_out_of_memory_keeps_what_it_got() {
        let mut g = guest(64);
        let mut w = Workload::new(2).with_fill(Fill::Byte(0xaa));
        let e = w.allocate(&mut g, 100 * PAGE_SIZE, 2);
        assert!(matches!(e, Err(GuestError::OutOfMemory { order: 2 })));
        assert_eq!(w.pages(), 64);
        assert_eq!(g.memory().read_u8(GuestAddress(63 * 4096)).unwrap(), 0xaa);
    }

    #[test]
    fn test_fragment_single_pages() {
        let mut g = guest(256);
        let mut w = Workload::new(3).with_fill(Fill::Byte(1));
        assert_eq!(w.fragment(&mut g, 256 * PAGE_SIZE, 0.5, 1.0).unwrap(), 128);
        assert_eq!(g.allocator().free_block_counts()[0], 128);
        assert!(free_blocks_above(g.allocator(), 0).is_empty());
        g.allocator().check_invariants().unwrap();
        assert_eq!(fragment_max_order(1.0), 0);
        assert_eq!(fragment_max_order(0.5), 5);
        assert_eq!(fragment_max_order(0.0), 10);
        assert!(Workload::new(0).fragment(&mut g, 4096, 0.6, 1.0).is_err());
        assert!(Workload::new(0).fragment(&mut g, 4096, 0.1, 1.5).is_err());
        assert!(Workload::new(0)
            .fragment(&mut g, 4096, f64::NAN, 0.5)
            .is_err());
    }

    #[test]
    fn test_dirty_pages_calls_the_hook() {
        let mut g = guest(256);
        let mut w = Workload::new(4);
        w.allocate(&mut g, 16 * PAGE_SIZE, 2).unwrap();
        let sums = w.checksums(&g).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        g.set_dirty_hook(Some(Arc::new(move |p: Pfn, n| {
            assert!(p.0 < 16 && n == 1);
            c.fetch_add(n, Ordering::Relaxed);
        })));
        assert_eq!(w.dirty_pages(&mut g, 40).unwrap(), 40);
        assert_eq!(count.load(Ordering::Relaxed), 40);
        assert!(!Workload::changed_pages(&g, &sums).unwrap().is_empty());
    }

    #[test]
    fn test_page_cache_is_reclaimable() {
        let mut g = guest(256);
        let mut w = Workload::new(5);
        assert_eq!(w.fill_page_cache(&mut g, 10 * PAGE_SIZE).unwrap(), 10);
        let s = g.stats();
        assert_eq!(s.disk_caches, 10 * PAGE_SIZE);
        assert_eq!(s.available_memory, 256 * PAGE_SIZE);
        assert_eq!(s.free_memory, 246 * PAGE_SIZE);
        assert_eq!(g.drop_caches().unwrap(), 10);
        assert_eq!(g.allocator().free_pages(), 256);
    }
}
