//! The modelled guest kernel: guest RAM, the buddy allocator over its pages, a page cache, and
//! fault and dirty accounting.
//!
//! Every write the guest model makes to its RAM goes through [`Guest`], which calls the dirty
//! hook, if one is set, with the pages written: a live migration's dirty log plays the part of
//! KVM's dirty logging and must see every guest write.

use std::fmt;
use std::sync::Arc;

use super::buddy::BuddyAllocator;
use super::error::GuestError;
use crate::abi::{
    VIRTIO_BALLOON_S_AVAIL, VIRTIO_BALLOON_S_CACHES, VIRTIO_BALLOON_S_HTLB_PGALLOC,
    VIRTIO_BALLOON_S_HTLB_PGFAIL, VIRTIO_BALLOON_S_MAJFLT, VIRTIO_BALLOON_S_MEMFREE,
    VIRTIO_BALLOON_S_MEMTOT, VIRTIO_BALLOON_S_MINFLT, VIRTIO_BALLOON_S_NR,
    VIRTIO_BALLOON_S_SWAP_IN, VIRTIO_BALLOON_S_SWAP_OUT,
};
use crate::memory::{GuestAddress, GuestMemory, Pfn, PAGE_SIZE};
use crate::util::hash64;

/// Called with (first page, number of pages) after every write the guest model makes.
///
/// Called *after* the bytes are in guest RAM: a dirty-log consumer that clears a page's bit and
/// then copies the page either copies the new bytes or sees the bit set again, never neither.
pub type DirtyHook = Arc<dyn Fn(Pfn, u64) + Send + Sync>;

/// Gives memory back when an allocation fails, as Linux's shrinkers do (the balloon's free page
/// hint shrinker returns hinted blocks it holds): called with the allocator and the pages
/// wanted, returns the pages it freed.
pub type Shrinker = Arc<dyn Fn(&mut BuddyAllocator, u64) -> u64 + Send + Sync>;

/// What the guest knows about its memory, one field per balloon statistic (tags
/// `VIRTIO_BALLOON_S_*` in [`crate::abi`]). Sizes are in bytes, the rest are counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// `SWAP_IN` (tag 0): the model has no swap, so 0.
    pub swap_in: u64,
    /// `SWAP_OUT` (tag 1): 0.
    pub swap_out: u64,
    /// `MAJFLT` (tag 2): no disk-backed faults are modelled, so 0.
    pub major_faults: u64,
    /// `MINFLT` (tag 3): first writes to a page since the guest got it (or got it back from the
    /// host after a discard).
    pub minor_faults: u64,
    /// `MEMFREE` (tag 4): pages on the free lists × 4096.
    pub free_memory: u64,
    /// `MEMTOT` (tag 5): pages the guest manages × 4096.
    pub total_memory: u64,
    /// `AVAIL` (tag 6): free plus reclaimable page cache, × 4096.
    pub available_memory: u64,
    /// `CACHES` (tag 7): page cache × 4096.
    pub disk_caches: u64,
    /// `HTLB_PGALLOC` (tag 8): no hugetlbfs, so 0.
    pub hugetlb_allocations: u64,
    /// `HTLB_PGFAIL` (tag 9): 0.
    pub hugetlb_failures: u64,
}

impl GuestStats {
    /// The statistics as (tag, value) pairs in tag order, ready for the stats queue.
    pub fn entries(&self) -> [(u16, u64); VIRTIO_BALLOON_S_NR as usize] {
        [
            (VIRTIO_BALLOON_S_SWAP_IN, self.swap_in),
            (VIRTIO_BALLOON_S_SWAP_OUT, self.swap_out),
            (VIRTIO_BALLOON_S_MAJFLT, self.major_faults),
            (VIRTIO_BALLOON_S_MINFLT, self.minor_faults),
            (VIRTIO_BALLOON_S_MEMFREE, self.free_memory),
            (VIRTIO_BALLOON_S_MEMTOT, self.total_memory),
            (VIRTIO_BALLOON_S_AVAIL, self.available_memory),
            (VIRTIO_BALLOON_S_CACHES, self.disk_caches),
            (VIRTIO_BALLOON_S_HTLB_PGALLOC, self.hugetlb_allocations),
            (VIRTIO_BALLOON_S_HTLB_PGFAIL, self.hugetlb_failures),
        ]
    }
}

/// A guest: its RAM, its page allocator, a page cache, and the accounting a balloon driver
/// reports in its statistics.
///
/// The balloon driver takes pages from [`Guest::allocator_mut`]; a migration engine keeps a clone
/// of [`Guest::memory`] to read RAM and sets [`Guest::set_dirty_hook`] to log writes.
pub struct Guest {
    memory: Arc<GuestMemory>,
    allocator: BuddyAllocator,
    dirty_hook: Option<DirtyHook>,
    shrinker: Option<Shrinker>,
    /// One bit per page: written since the guest got it from the host (for `MINFLT`).
    touched: Vec<u64>,
    minor_faults: u64,
    /// Order-0 pages holding clean, droppable file cache.
    page_cache: Vec<Pfn>,
    managed_pages: u64,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("pages", &self.allocator.total_pages())
            .field("free_pages", &self.allocator.free_pages())
            .field("page_cache", &self.page_cache.len())
            .field("dirty_hook", &self.dirty_hook.is_some())
            .finish()
    }
}

impl Guest {
    /// A guest whose allocator manages every page of `memory`, all free and never touched.
    pub fn new(memory: Arc<GuestMemory>) -> Result<Guest, GuestError> {
        let allocator = BuddyAllocator::for_memory(&memory)?;
        let pages = allocator.total_pages();
        Ok(Guest {
            memory,
            allocator,
            dirty_hook: None,
            shrinker: None,
            touched: vec![0; pages.div_ceil(64) as usize],
            minor_faults: 0,
            page_cache: Vec::new(),
            managed_pages: pages,
        })
    }

    /// The guest's RAM.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// The page allocator.
    pub fn allocator(&self) -> &BuddyAllocator {
        &self.allocator
    }

    /// The page allocator, to allocate and free.
    pub fn allocator_mut(&mut self) -> &mut BuddyAllocator {
        &mut self.allocator
    }

    /// Sets (or with `None` removes) the hook called after every write; returns the old one.
    pub fn set_dirty_hook(&mut self, hook: Option<DirtyHook>) -> Option<DirtyHook> {
        std::mem::replace(&mut self.dirty_hook, hook)
    }

    /// Sets (or with `None` removes) the shrinker [`Guest::alloc`] runs when memory is
    /// exhausted; returns the old one.
    pub fn set_shrinker(&mut self, shrinker: Option<Shrinker>) -> Option<Shrinker> {
        std::mem::replace(&mut self.shrinker, shrinker)
    }

    /// Runs the shrinker (if any) for `pages` pages, as memory pressure would; returns the pages
    /// it freed.
    pub fn shrink(&mut self, pages: u64) -> u64 {
        match self.shrinker.clone() {
            Some(shrink) => shrink(&mut self.allocator, pages),
            None => 0,
        }
    }

    /// Allocates a block of `2^order` pages as `alloc_pages` does: when none is free, runs the
    /// shrinker (if any) and tries once more.
    pub fn alloc(&mut self, order: u8) -> Result<Pfn, GuestError> {
        match self.allocator.alloc(order) {
            Err(GuestError::OutOfMemory { .. }) if self.shrinker.is_some() => {
                self.shrink(1 << order);
                self.allocator.alloc(order)
            }
            r => r,
        }
    }

    /// The current dirty hook, for code that writes guest RAM without going through `Guest`
    /// (for example a driver writing its rings through the virtqueue layer).
    pub fn dirty_hook(&self) -> Option<&DirtyHook> {
        self.dirty_hook.as_ref()
    }

    /// Tells the dirty hook that `npages` pages from `pfn` were written.
    pub fn mark_dirty(&self, pfn: Pfn, npages: u64) {
        if let Some(hook) = &self.dirty_hook {
            if npages > 0 {
                hook(pfn, npages);
            }
        }
    }

    /// Accounts a write of `[addr, addr + len)`: first-touch faults, then the dirty hook.
    fn wrote(&mut self, addr: GuestAddress, len: u64) {
        if len == 0 {
            return;
        }
        let first = addr.pfn().0;
        let last = (addr.0 + len - 1) >> crate::memory::PAGE_SHIFT;
        for p in first..=last {
            let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            if let Some(w) = self.touched.get_mut(word) {
                if *w & bit == 0 {
                    *w |= bit;
                    self.minor_faults += 1;
                }
            }
        }
        self.mark_dirty(Pfn(first), last - first + 1);
    }

    /// Writes `buf` to guest RAM at `addr`.
    pub fn write(&mut self, addr: GuestAddress, buf: &[u8]) -> Result<(), GuestError> {
        self.memory.write(addr, buf)?;
        self.wrote(addr, buf.len() as u64);
        Ok(())
    }

    /// Sets `len` bytes of guest RAM at `addr` to `byte`.
    pub fn fill(&mut self, addr: GuestAddress, len: u64, byte: u8) -> Result<(), GuestError> {
        self.memory.fill(addr, len, byte)?;
        self.wrote(addr, len);
        Ok(())
    }

    /// Reads guest RAM at `addr` into `buf`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), GuestError> {
        Ok(self.memory.read(addr, buf)?)
    }

    /// A 64-bit hash of the contents of page `pfn`.
    pub fn page_checksum(&self, pfn: Pfn) -> Result<u64, GuestError> {
        let mut page = [0u8; PAGE_SIZE as usize];
        self.memory.read(pfn.addr(), &mut page)?;
        Ok(hash64(&page))
    }

    /// Notes that the host discarded `npages` pages from `pfn` (an acknowledged inflate): the
    /// next write to each is a first touch again.
    pub fn note_discarded(&mut self, pfn: Pfn, npages: u64) {
        let end = pfn
            .0
            .saturating_add(npages)
            .min(self.touched.len() as u64 * 64);
        for p in pfn.0..end {
            self.touched[(p / 64) as usize] &= !(1u64 << (p % 64));
        }
    }

    /// Adds the allocated order-0 page `pfn` to the page cache: it counts as reclaimable in
    /// `AVAIL` and [`Guest::drop_caches`] frees it.
    pub fn add_page_cache(&mut self, pfn: Pfn) -> Result<(), GuestError> {
        match self.allocator.allocated_order(pfn) {
            Some(0) => {
                self.page_cache.push(pfn);
                Ok(())
            }
            Some(allocated) => Err(GuestError::WrongOrder {
                pfn: pfn.0,
                order: 0,
                allocated,
            }),
            None => Err(GuestError::NotAllocated { pfn: pfn.0 }),
        }
    }

    /// Pages in the page cache.
    pub fn page_cache_pages(&self) -> u64 {
        self.page_cache.len() as u64
    }

    /// Frees the whole page cache (`echo 1 > /proc/sys/vm/drop_caches`, which the 2017 series
    /// proposed before migration); returns the pages freed. They keep their stale contents.
    pub fn drop_caches(&mut self) -> Result<u64, GuestError> {
        let n = self.page_cache.len() as u64;
        while let Some(pfn) = self.page_cache.pop() {
            if let Err(e) = self.allocator.free(pfn, 0) {
                self.page_cache.push(pfn);
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Changes the pages the guest counts as its own (`MEMTOT`), as Linux's
    /// `adjust_managed_page_count` does when a balloon without DEFLATE_ON_OOM takes pages.
    pub fn adjust_managed_pages(&mut self, delta: i64) {
        self.managed_pages = self.managed_pages.saturating_add_signed(delta);
    }

    /// The statistics a balloon driver sends on its stats queue.
    pub fn stats(&self) -> GuestStats {
        let free = self.allocator.free_pages();
        let cache = self.page_cache_pages();
        GuestStats {
            minor_faults: self.minor_faults,
            free_memory: free * PAGE_SIZE,
            total_memory: self.managed_pages * PAGE_SIZE,
            available_memory: (free + cache) * PAGE_SIZE,
            disk_caches: cache * PAGE_SIZE,
            ..GuestStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::guest::test_guest as guest;

    #[test]
    fn test_writes_call_the_hook_and_count_faults() {
        let mut g = guest(64);
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        g.set_dirty_hook(Some(Arc::new(move |p: Pfn, n| {
            sink.lock().unwrap().push((p.0, n))
        })));
        g.write(GuestAddress(4095), &[1, 2]).unwrap();
        g.fill(GuestAddress(3 * 4096), 4096, 7).unwrap();
        g.fill(GuestAddress(3 * 4096), 0, 7).unwrap();
        assert_eq!(*log.lock().unwrap(), vec![(0, 2), (3, 1)]);
        assert_eq!(g.stats().minor_faults, 3);
        g.write(GuestAddress(3 * 4096 + 5), &[9]).unwrap();
        assert_eq!(g.stats().minor_faults, 3);
        g.note_discarded(Pfn(3), 1);
        g.write(GuestAddress(3 * 4096 + 5), &[9]).unwrap();
        assert_eq!(g.stats().minor_faults, 4);
        assert!(g.write(GuestAddress(64 * 4096), &[0]).is_err());
    }

    #[test]
    fn test_stats_and_page_cache() {
        let mut g = guest(1024);
        let s = g.stats();
        assert_eq!(s.total_memory, 1024 * PAGE_SIZE);
        assert_eq!(s.free_memory, s.total_memory);
        let p = g.allocator_mut().alloc(0).unwrap();
        g.add_page_cache(p).unwrap();
        let q = g.allocator_mut().alloc(1).unwrap();
        assert!(matches!(
            g.add_page_cache(q),
            Err(GuestError::WrongOrder { .. })
        ));
        let s = g.stats();
        assert_eq!(s.free_memory, 1021 * PAGE_SIZE);
        assert_eq!(s.available_memory, 1022 * PAGE_SIZE);
        assert_eq!(s.disk_caches, PAGE_SIZE);
        assert_eq!(g.drop_caches().unwrap(), 1);
        assert_eq!(g.stats().disk_caches, 0);
        g.adjust_managed_pages(-24);
        assert_eq!(g.stats().total_memory, 1000 * PAGE_SIZE);
        let e = g.stats().entries();
        assert!(e.iter().enumerate().all(|(i, &(tag, _))| tag as usize == i));
        assert_eq!(e[VIRTIO_BALLOON_S_MEMTOT as usize].1, 1000 * PAGE_SIZE);
    }
}
